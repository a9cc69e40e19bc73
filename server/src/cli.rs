//! The server's command line, shared by `pool-server` and `pool-client serve`.

use std::io::{IsTerminal, Read, Write};
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::announce::Announcement;
use crate::commands::{AllowedPrograms, CommandPolicy, DEFAULT_MAX_OUTPUT_BYTES};
use crate::models::fork::{serve_inherited, ServeCommand};
use crate::tls::ServerTls;
use crate::{start, ServerConfig, ServerModel};

/// Options of a pool server.
#[derive(clap::Args, Debug, Clone)]
pub struct ServerArgs {
    /// Address to listen on: 0.0.0.0 for every interface, 127.0.0.1 for this machine only.
    #[arg(long, default_value = "0.0.0.0")]
    pub bind: String,

    /// TCP port to listen on; 0 lets the OS choose a free one (printed at start).
    #[arg(long, short, default_value_t = 7000)]
    pub port: u16,

    /// Parts computed at once, each on its own OS thread [default: number of cores].
    #[arg(long)]
    pub workers: Option<usize>,

    /// Connections served at once; one more is refused with a message naming this flag.
    #[arg(long, default_value_t = 1024)]
    pub max_connections: usize,

    /// Parts one connection may have in flight.
    #[arg(long, default_value_t = 1024)]
    pub max_parts_per_connection: usize,

    /// Input bytes one part may ship (a matrix block); larger parts are refused.
    #[arg(long, default_value_t = ServerConfig::default().max_part_bytes)]
    pub max_part_bytes: u64,

    /// Bytes of the clients' input the server buffers at once, all connections
    /// together: data not yet computed and the jobs' shared inputs. When it is reached,
    /// the connections holding the most are not read until memory frees up.
    #[arg(long, default_value_t = ServerConfig::default().max_buffer_memory)]
    pub max_buffer_memory: u64,

    /// Work items one part may declare (loop iterations, matrix elements); the
    /// default is about half an hour of loop on one core.
    #[arg(long, default_value_t = ServerConfig::default().max_part_work)]
    pub max_part_work: u64,

    /// Seconds a connection may stay silent while the server waits for it.
    #[arg(long, default_value_t = ServerConfig::default().idle_timeout.as_secs())]
    pub idle_timeout: u64,

    /// A shared secret clients must prove they know (job file key `token`, or
    /// POOL_TOKEN on the client); it never goes on the wire. Without it, anyone who
    /// can reach the port can use this machine's CPUs.
    #[arg(long, env = "POOL_TOKEN", hide_env_values = true)]
    pub token: Option<String>,

    /// Encrypt connections with TLS under a certificate made at start-up (new at every
    /// start); its fingerprint is printed as a job file line for clients to pin.
    #[arg(long, value_enum, value_name = "MODE", conflicts_with = "tls_cert")]
    pub tls: Option<TlsMode>,

    /// Encrypt connections with TLS under this certificate (PEM: the server's own
    /// first, then any intermediates); needs --tls-key.
    #[arg(long, value_name = "FILE", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,

    /// The private key of --tls-cert (PEM).
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,

    /// Run the users' programs (`kind = "command"` jobs): `--allow-commands` for any
    /// program, `--allow-commands=python3,./sim` for only these (matched against the
    /// command's first word). Anyone who reaches the port can then run programs as
    /// this server's user, so beyond loopback it needs --token.
    #[arg(long, num_args = 0..=1, require_equals = true, default_missing_value = "", value_name = "PROGRAMS")]
    pub allow_commands: Option<String>,

    /// Standard output one command part may keep, in bytes.
    #[arg(long, default_value_t = DEFAULT_MAX_OUTPUT_BYTES)]
    pub max_output_bytes: u64,

    /// Seconds that parts in flight get to finish after Ctrl-C or SIGTERM.
    #[arg(long, default_value_t = 30)]
    pub shutdown_grace: u64,

    /// Announce the server on the local network (DNS-SD over multicast DNS, service
    /// `_pool._tcp`), with its release, workers and whether it needs a token, so that
    /// clients with `servers = "discover"` find it.
    #[arg(long)]
    pub announce: bool,

    /// How connections are served: `async` (tokio tasks, the default), `threads` (an
    /// OS thread per connection, blocking I/O), `iterative` (one connection at a time)
    /// or `fork` (a child process per connection). Only `async` serves TLS.
    #[arg(long, value_enum, default_value_t = ServerModel::Async)]
    pub model: ServerModel,

    /// Serve only the connection on this inherited socket, then exit: how the fork
    /// model starts its children.
    #[arg(long, hide = true, value_name = "FD")]
    pub serve_fd: Option<i32>,

    /// Shut down when standard input closes: lets a parent process (pool-client's
    /// `local = N`) be sure its servers never outlive it.
    #[arg(long, hide = true)]
    pub exit_with_stdin: bool,
}

/// Where a server's TLS certificate comes from, besides files.
#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum TlsMode {
    /// A certificate and key made at start-up, kept in memory only.
    SelfSigned,
}

/// Sends logs to standard error; the level comes from `RUST_LOG`, else `default_level`
/// (`info` for servers, `warn` for the client).
pub fn init_logging(default_level: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_level));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
}

/// Runs a server until Ctrl-C, SIGTERM (or the end of standard input, if asked), then
/// shuts it down gracefully. Prints [`listening_line`] on standard output
/// once it accepts connections, then, with TLS, the job file line that pins its
/// certificate.
pub async fn run(args: ServerArgs) -> anyhow::Result<()> {
    let config = config(&args)?;
    if let Some(fd) = args.serve_fd {
        let stop = CancellationToken::new();
        let serving = serve_inherited(fd, config, stop.clone());
        tokio::pin!(serving);
        tokio::select! {
            served = &mut serving => return Ok(served?),
            _ = shutdown_signal() => stop.cancel(),
        }
        return Ok(serving.await?);
    }
    let workers = config.workers;
    let model = config.model;
    let open_to_all = config.token.is_none();
    let fingerprint = config.tls.as_ref().map(ServerTls::fingerprint);
    let commands = config.commands.allowed.clone();
    let server = start((args.bind.as_str(), args.port), config)
        .await
        .with_context(|| format!("cannot serve on {}:{}", args.bind, args.port))?;
    let mut lines = format!(
        "{} with {}{}\n",
        listening_line("pool-server", server.local_addr()),
        pool_common::text::counted(workers, "worker", "workers"),
        match model {
            ServerModel::Async => String::new(),
            other => format!(", --model {other}"),
        }
    );
    if let Some(fingerprint) = fingerprint {
        lines.push_str(&pin_line(&fingerprint));
        lines.push('\n');
    }
    // One write, so a parent reading the first line finds the second beside it.
    let mut stdout = std::io::stdout();
    stdout.write_all(lines.as_bytes())?;
    stdout.flush()?;
    info!(addr = %server.local_addr(), workers, %model, "listening");
    match &commands {
        AllowedPrograms::None => {}
        AllowedPrograms::Any if server.local_addr().ip().is_loopback() => {
            info!("running any program clients send (--allow-commands)")
        }
        AllowedPrograms::Any => warn!("running any program clients send (--allow-commands)"),
        AllowedPrograms::Only(names) => {
            info!(programs = %names.join(","), "running only these programs")
        }
    }
    if !server.local_addr().ip().is_loopback() {
        if open_to_all {
            warn!(
                "no --token set and listening on {}: anyone who can reach this port can use this machine's CPUs",
                server.local_addr()
            );
        } else if fingerprint.is_none() {
            warn!(
                "listening on {} without TLS: the token stays secret, but anyone on the network path \
                 can read the parts, their data and their results; add --tls self-signed (or \
                 --tls-cert and --tls-key)",
                server.local_addr()
            );
        }
    }

    let announcement = if args.announce {
        let announcement = Announcement::start(server.local_addr(), workers, !open_to_all)?;
        info!(
            service = announcement.fullname(),
            "announced on the local network"
        );
        Some(announcement)
    } else {
        None
    };

    let stop = server.shutdown_token();
    if args.exit_with_stdin {
        watch_stdin(stop.clone());
    }
    tokio::select! {
        () = stop.cancelled() => info!("standard input closed; shutting down"),
        signal = shutdown_signal() => info!(signal, "shutting down; parts in flight may finish"),
    }
    if let Some(announcement) = announcement {
        announcement.withdraw().await;
    }
    server.shutdown().await;
    Ok(())
}

/// The server's configuration from its options.
fn config(args: &ServerArgs) -> anyhow::Result<ServerConfig> {
    let defaults = ServerConfig::default();
    let tls = match (&args.tls, &args.tls_cert, &args.tls_key) {
        (Some(TlsMode::SelfSigned), _, _) => Some(ServerTls::self_signed()),
        (None, Some(cert), Some(key)) => Some(ServerTls::from_pem_files(cert, key)),
        _ => None,
    }
    .transpose()
    .map_err(anyhow::Error::msg)?;
    let config = ServerConfig {
        workers: args.workers.unwrap_or(defaults.workers).max(1),
        max_connections: args.max_connections.max(1),
        max_parts_per_connection: args.max_parts_per_connection.max(1),
        max_part_bytes: args.max_part_bytes,
        max_part_work: args.max_part_work,
        max_buffer_memory: args.max_buffer_memory,
        idle_timeout: Duration::from_secs(args.idle_timeout.max(1)),
        token: args.token.clone().filter(|t| !t.is_empty()),
        tls,
        commands: CommandPolicy {
            allowed: args
                .allow_commands
                .as_deref()
                .map_or(AllowedPrograms::None, AllowedPrograms::parse),
            max_output_bytes: args.max_output_bytes,
        },
        shutdown_grace: Duration::from_secs(args.shutdown_grace),
        model: args.model,
        serve_command: match args.model {
            ServerModel::Fork => {
                Some(ServeCommand::this_process().context("cannot find the server's own program")?)
            }
            _ => None,
        },
        ..defaults
    };
    Ok(config)
}

/// The line a program that listens prints on standard output once it accepts
/// connections (`pool-server listening on 127.0.0.1:7000`, then anything); whoever
/// started it reads the address back with [`parse_listening_line`].
pub fn listening_line(program: &str, address: impl std::fmt::Display) -> String {
    format!("{program} listening on {address}")
}

/// The line a server with TLS prints after [`listening_line`]: the job file line that
/// pins its certificate, to paste as it is.
pub fn pin_line(fingerprint: &pool_common::tls::Fingerprint) -> String {
    format!("tls_fingerprint = \"{fingerprint}\"")
}

/// The address in a line printed by [`listening_line`], if it is one.
pub fn parse_listening_line(line: &str) -> Option<&str> {
    let (_, rest) = line.split_once(" listening on ")?;
    rest.split_whitespace().next()
}

/// Cancels `stop` when standard input reaches its end (the parent went away).
fn watch_stdin(stop: CancellationToken) {
    // A plain thread: tokio's stdin would keep the runtime from shutting down.
    std::thread::spawn(move || {
        let mut sink = [0u8; 64];
        let mut stdin = std::io::stdin();
        while matches!(stdin.read(&mut sink), Ok(n) if n > 0) {}
        stop.cancel();
    });
}

/// Waits for Ctrl-C or (on Unix) SIGTERM and says which.
async fn shutdown_signal() -> &'static str {
    #[cfg(unix)]
    {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("cannot listen for SIGTERM");
        tokio::select! {
            _ = tokio::signal::ctrl_c() => "SIGINT",
            _ = term.recv() => "SIGTERM",
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
        "Ctrl-C"
    }
}
