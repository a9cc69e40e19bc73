//! `pool-client`: runs a job file's parts on pool servers, beside local sequential,
//! threaded and multi-process runs of the same parts, and prints the comparison.

use std::io::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Parser, Subcommand, ValueEnum};
use pool_client::connection::ConnectOptions;
use pool_client::membership::Membership;
use pool_client::progress::{self, Progress};
use pool_client::report::Mode;
use pool_client::ssh::{self, Ssh, UpState};
use pool_client::stats::Repeat;
use pool_client::tls::ClientTls;
use pool_client::{chart, environment, local, run_with_progress, status, timeline, RunOptions};
use pool_common::jobfile::{self, JobFileError};
use pool_common::sshhosts;
use pool_common::tls::{read_certificates, Fingerprint, TlsTrust};
use pool_server::cli::ServerArgs;

/// Exit code for a bad job file or command line.
const EXIT_USAGE: u8 = 2;
/// Exit code when interrupted by Ctrl-C.
const EXIT_INTERRUPTED: u8 = 130;

/// Split a job into parts, run them on pool servers, and compare the time with
/// sequential, threaded and multi-process runs of the same parts on this machine.
///
/// Exit codes: 0 success; 1 the job failed (parts that no server could compute, results
/// that do not match; for `status`, a server unreachable); 2 a bad job file or command
/// line; 130 interrupted.
#[derive(Parser, Debug)]
#[command(version, args_conflicts_with_subcommands = true)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,

    #[command(flatten)]
    run: RunArgs,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Ask servers how they are doing: reachable or not, version, workers, parts
    /// running and served, uptime, round-trip time. Exits 1 if any is unreachable.
    Status(StatusArgs),
    /// Start a pool server on each host of a hosts file with ssh (one
    /// `[N/][user@]host[:port]` per line, as GNU parallel's --sshlogin), copying the
    /// server program to hosts that lack it, all requiring a token drawn for them.
    /// What runs is recorded beside the hosts file (HOSTS.pool-up). Exits 1 if any
    /// host failed.
    Up(UpArgs),
    /// Stop the servers `pool-client up HOSTS` started. Exits 1 if any could not be
    /// stopped (it stays recorded, for another try).
    Down(DownArgs),
    /// Run a pool server: the same server as the pool-server program.
    Serve(ServerArgs),
    /// Compute one part read from standard input (the multi-process modes' worker).
    #[command(hide = true)]
    Part(PartArgs),
}

/// Options of `pool-client up`.
#[derive(Args, Debug)]
struct UpArgs {
    /// The hosts file: one ssh destination per line, `[N/][user@]host[:port]` (N: the
    /// server's workers; port: ssh's); `#` starts a comment.
    hosts: PathBuf,

    /// An ssh configuration file, given to ssh as `-F FILE` (users, identities, known
    /// hosts, jump hosts...); without it, ssh reads ~/.ssh/config.
    #[arg(long, value_name = "FILE")]
    ssh_config: Option<PathBuf>,

    /// The port the servers listen on.
    #[arg(long, short, default_value_t = jobfile::DEFAULT_PORT)]
    port: u16,

    /// The server program to copy to hosts that lack it or have another version
    /// [default: pool-server beside this pool-client, else this pool-client].
    #[arg(long, value_name = "FILE")]
    server_binary: Option<PathBuf>,
}

/// Options of `pool-client down`.
#[derive(Args, Debug)]
struct DownArgs {
    /// The hosts file given to `pool-client up`.
    hosts: PathBuf,

    /// An ssh configuration file, instead of the one `up` was given.
    #[arg(long, value_name = "FILE")]
    ssh_config: Option<PathBuf>,
}

/// Where a worker process finds its part's data, if not on standard input.
#[derive(Args, Debug)]
struct PartArgs {
    /// An inherited memfd holding the part's data (the shared-memory mode).
    #[arg(long, requires = "shared_at")]
    shared_fd: Option<i32>,
    /// Where the part's data starts in it.
    #[arg(long, requires = "shared_fd")]
    shared_at: Option<u64>,
}

#[derive(Args, Debug)]
struct RunArgs {
    /// The job file (see the README's job file reference).
    job: Option<PathBuf>,

    /// Servers to use instead of the job file's, as host:port,host:port...
    #[arg(long, value_delimiter = ',')]
    servers: Option<Vec<String>>,

    /// Start this many servers on 127.0.0.1 for the run instead (one worker each).
    #[arg(long, conflicts_with = "servers", value_parser = clap::value_parser!(u16).range(1..=64))]
    local: Option<u16>,

    /// Modes to run, comma-separated.
    #[arg(long, value_enum, value_delimiter = ',', default_values_t = Mode::ALL)]
    modes: Vec<Mode>,

    /// Recorded runs of each mode (1 to 1000), or `auto`: until the median's 95%
    /// interval is within ±2% of it (at least 5 runs, at most 200), or the mode has used
    /// --repeat-budget. With more than one run the table shows the median, its 95%
    /// interval and the range, and says which modes cannot be told apart.
    #[arg(long, default_value = "1", value_name = "N|auto")]
    repeat: Repeat,

    /// With --repeat auto: seconds one mode's recorded runs may take before it stops
    /// short of its ±2% interval [default: 60].
    #[arg(long, value_name = "SECONDS", value_parser = positive_seconds)]
    repeat_budget: Option<Duration>,

    /// Unrecorded runs of each mode before the recorded ones (warm caches, started
    /// threads, memory faulted in).
    #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u32).range(0..=1000))]
    warmup: u32,

    /// Output: a table for people, one JSON document (with the machine and settings,
    /// to reproduce and compare runs), CSV with one line per mode, or the tables as
    /// Markdown or LaTeX (booktabs) to paste into a report.
    #[arg(long, value_enum, default_value_t = Format::Table)]
    format: Format,

    /// Write the output to FILE instead of standard output.
    #[arg(long, short, value_name = "FILE")]
    output: Option<PathBuf>,

    /// Write a per-part log of the pool mode to FILE: tab-separated, one line per part
    /// and attempt of every recorded run (run, part, server, attempt, start_s,
    /// duration_s, bytes_sent, bytes_received, status).
    #[arg(long, value_name = "FILE")]
    log: Option<PathBuf>,

    /// Draw the modes' times (with min-max whiskers) and the pool's per-server
    /// breakdown as an SVG chart in FILE.
    #[arg(long, value_name = "FILE.svg")]
    chart: Option<PathBuf>,

    /// Draw the pool run closest to the median as a timeline in FILE: one row per
    /// server, one bar per attempt at a part, retries and speculative copies marked.
    #[arg(long, value_name = "FILE.svg")]
    timeline: Option<PathBuf>,

    /// Seed for the random choice of servers, instead of the job file's (without
    /// either, one is drawn and recorded in the JSON output).
    #[arg(long)]
    seed: Option<u64>,

    /// No progress bars. (They are drawn on standard error, and only when standard
    /// output is a terminal.)
    #[arg(long, short)]
    quiet: bool,
}

#[derive(Args, Debug)]
struct StatusArgs {
    /// A job file whose servers to ask (its `servers` or `servers_file`), with its
    /// `token` and TLS settings.
    job: Option<PathBuf>,

    /// Servers to ask, as host:port,host:port... (instead of a job file's).
    #[arg(long, value_delimiter = ',')]
    servers: Option<Vec<String>>,

    /// Ask the servers announced on the local network (`pool-server --announce`) that
    /// answer within SECONDS [default: 2].
    #[arg(long, num_args = 0..=1, require_equals = true, default_missing_value = "2", value_name = "SECONDS", conflicts_with_all = ["servers", "job"])]
    discover: Option<f64>,

    /// Speak TLS, accepting only server certificates with these SHA-256 fingerprints
    /// (as pool-server --tls prints them, comma-separated), instead of the job file's
    /// TLS settings.
    #[arg(
        long,
        value_name = "SHA256",
        value_delimiter = ',',
        conflicts_with = "tls_ca"
    )]
    tls_fingerprint: Option<Vec<String>>,

    /// Speak TLS, accepting servers whose certificate this authority (PEM) signed,
    /// instead of the job file's TLS settings.
    #[arg(long, value_name = "FILE")]
    tls_ca: Option<PathBuf>,

    /// Output: a table, or one JSON array with an object per server.
    #[arg(long, value_enum, default_value_t = StatusFormat::Table)]
    format: StatusFormat,

    /// Seconds to wait for each server to connect and to answer.
    #[arg(long, value_name = "SECONDS", default_value = "5", value_parser = positive_seconds)]
    timeout: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Format {
    Table,
    Json,
    Csv,
    /// The tables as Markdown, to paste into a report.
    Markdown,
    /// The tables as LaTeX (booktabs), to paste into a report.
    Latex,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum StatusFormat {
    Table,
    Json,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Some(Command::Serve(args)) => {
            pool_server::cli::init_logging("info");
            exit_on_error(tokio_runtime().and_then(|rt| rt.block_on(pool_server::cli::run(args))))
        }
        Some(Command::Part(args)) => {
            let shared = args
                .shared_fd
                .zip(args.shared_at)
                .map(|(fd, offset)| local::SharedDataAt { fd, offset });
            exit_on_error(local::worker_process_main(shared))
        }
        Some(Command::Up(args)) => {
            pool_server::cli::init_logging("warn");
            run_up(args)
        }
        Some(Command::Down(args)) => {
            pool_server::cli::init_logging("warn");
            let ssh = args.ssh_config.map(|config| Ssh {
                config: Some(config),
            });
            let mut stdout = std::io::stdout();
            exit_with(ssh::down(&args.hosts, ssh, &mut stdout))
        }
        Some(Command::Status(args)) => {
            pool_server::cli::init_logging("warn");
            run_status(args)
        }
        None => {
            pool_server::cli::init_logging("warn");
            run_job(cli.run)
        }
    }
}

fn run_job(args: RunArgs) -> ExitCode {
    let Some(job_path) = args.job else {
        eprintln!("error: give a job file, e.g. pool-client examples/quickstart.toml (see --help)");
        return ExitCode::from(EXIT_USAGE);
    };
    let repeat = match (args.repeat, args.repeat_budget) {
        (Repeat::Auto { budget }, given) => Repeat::Auto {
            budget: given.unwrap_or(budget),
        },
        (times, None) => times,
        (_, Some(_)) => {
            eprintln!("error: --repeat-budget is for --repeat auto; add it, or drop the budget");
            return ExitCode::from(EXIT_USAGE);
        }
    };
    let mut job_file = match jobfile::read(&job_path) {
        Ok(job_file) => job_file,
        Err(e) => return usage_error(&e),
    };
    if job_file.client.token.is_none() {
        job_file.client.token = std::env::var("POOL_TOKEN").ok().filter(|t| !t.is_empty());
    }
    let servers = match args
        .servers
        .as_deref()
        .map(jobfile::command_line_servers)
        .transpose()
    {
        Ok(servers) => servers,
        Err(message) => {
            eprintln!("error: --servers: {message}");
            return ExitCode::from(EXIT_USAGE);
        }
    };
    for (flag, path) in [("--chart", &args.chart), ("--timeline", &args.timeline)] {
        if let Some(path) = path {
            if path.extension().and_then(|e| e.to_str()) != Some("svg") {
                eprintln!(
                    "error: {flag} {}: charts are SVG; name the file *.svg",
                    path.display()
                );
                return ExitCode::from(EXIT_USAGE);
            }
        }
    }
    for (flag, given, what) in [
        ("--timeline", args.timeline.is_some(), "draws"),
        ("--log", args.log.is_some(), "logs the parts of"),
    ] {
        if given && !args.modes.contains(&Mode::Pool) {
            eprintln!("error: {flag} {what} the pool mode; add pool to --modes");
            return ExitCode::from(EXIT_USAGE);
        }
    }
    // Files to write are checked before the run, so a typo does not waste a long job.
    for path in [&args.output, &args.log, &args.chart, &args.timeline]
        .into_iter()
        .flatten()
    {
        if let Err(e) = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
        {
            eprintln!("error: cannot write {}: {e}", path.display());
            return ExitCode::from(EXIT_USAGE);
        }
    }
    let exe = match std::env::current_exe().context("cannot find this program's own path") {
        Ok(exe) => exe,
        Err(e) => return exit_on_error(Err(e)),
    };
    if environment::build_profile() == "debug" {
        eprintln!(
            "warning: this pool-client is a debug build, so its timings mean little; \
             build it with `cargo build --release` (or `cargo run --release -p pool-client -- ...`)"
        );
    }
    let options = RunOptions {
        modes: args.modes,
        servers,
        local_servers: args.local.map(usize::from),
        seed: args.seed,
        repeat,
        warmup: args.warmup as usize,
        ..RunOptions::new(exe)
    };
    let runtime = match tokio_runtime() {
        Ok(runtime) => runtime,
        Err(e) => return exit_on_error(Err(e)),
    };
    let progress = Progress::new(!args.quiet && progress::stdout_is_terminal());
    let outcome = runtime.block_on(async {
        tokio::select! {
            report = run_with_progress(&job_file, &options, &progress) => Some(report),
            _ = tokio::signal::ctrl_c() => None,
        }
    });
    // On Ctrl-C the run's future was dropped above: its connections are closed and its
    // local servers stopped. The cancel flag stops local kernels and worker processes.
    options.cancel.cancel();
    runtime.shutdown_timeout(Duration::from_secs(2));
    drop(progress);
    let report = match outcome {
        None => {
            eprintln!("interrupted");
            return ExitCode::from(EXIT_INTERRUPTED);
        }
        Some(Err(e)) => match e.downcast_ref::<JobFileError>() {
            Some(job_error) => return usage_error(job_error),
            None => return exit_on_error(Err(e)),
        },
        Some(Ok(report)) => report,
    };
    // The table prints its warnings; other formats are read by programs or pasted, so
    // the person running them hears of them here.
    if args.format != Format::Table {
        for warning in &report.warnings {
            eprintln!("warning: {warning}");
        }
    }
    let text = match args.format {
        Format::Table => report.table(),
        Format::Json => format!(
            "{}\n",
            serde_json::to_string_pretty(&report.json()).expect("JSON values serialize")
        ),
        Format::Csv => report.csv(),
        Format::Markdown => report.markdown(),
        Format::Latex => report.latex(),
    };
    let written = write_output(args.output.as_deref(), &text)
        .and_then(|()| match &args.log {
            Some(path) => write_file(path, &report.part_log()),
            None => Ok(()),
        })
        .and_then(|()| match &args.chart {
            Some(path) => write_file(path, &chart::svg(&report)?),
            None => Ok(()),
        })
        .and_then(|()| match (&args.timeline, &report.pool) {
            (Some(path), Some(pool)) => write_file(path, &timeline::svg(pool, &report.job_file)?),
            _ => Ok(()),
        });
    if let Err(e) = written {
        return exit_on_error(Err(e));
    }
    if report.all_match() {
        ExitCode::SUCCESS
    } else {
        if report.runs_programs {
            eprintln!(
                "error: the job's program printed different results for the same parts in \
                 different modes; pool combines what it prints, so make it deterministic \
                 (for example, seed any randomness from {{part}} or {{lo}})"
            );
        } else {
            eprintln!("error: the modes' results differ; this is a bug in pool, please report it");
        }
        ExitCode::FAILURE
    }
}

/// Reads a command-line duration: a positive number of seconds.
fn positive_seconds(text: &str) -> Result<Duration, String> {
    match text.parse::<f64>().map(Duration::try_from_secs_f64) {
        Ok(Ok(duration)) if !duration.is_zero() => Ok(duration),
        _ => Err(format!("{text:?}: give a positive number of seconds")),
    }
}

fn run_up(args: UpArgs) -> ExitCode {
    if args.port == 0 {
        eprintln!("error: --port must be between 1 and 65535");
        return ExitCode::from(EXIT_USAGE);
    }
    if let Err(e) = sshhosts::read_hosts_file(&args.hosts) {
        return usage_error(&e);
    }
    let exe = match std::env::current_exe().context("cannot find this program's own path") {
        Ok(exe) => exe,
        Err(e) => return exit_on_error(Err(e)),
    };
    let ssh = Ssh {
        config: args.ssh_config,
    };
    let mut stdout = std::io::stdout();
    exit_with(ssh::up(
        &args.hosts,
        ssh,
        args.server_binary.as_deref(),
        args.port,
        &exe,
        &mut stdout,
    ))
}

/// Exits 0 for `Ok(true)`, 1 for `Ok(false)` (some host failed, as reported) or an
/// error.
fn exit_with(result: anyhow::Result<bool>) -> ExitCode {
    match result {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => exit_on_error(Err(e)),
    }
}

fn run_status(args: StatusArgs) -> ExitCode {
    let job_file = match args.job.as_deref().map(jobfile::read).transpose() {
        Ok(job_file) => job_file,
        Err(e) => return usage_error(&e),
    };
    let mut up_token = None;
    let (servers, discover) = match (&args.servers, &job_file, args.discover) {
        (_, _, Some(seconds)) => match Duration::try_from_secs_f64(seconds) {
            Ok(window) if !window.is_zero() => (Vec::new(), Some(window)),
            _ => {
                eprintln!("error: --discover must be a positive number of seconds");
                return ExitCode::from(EXIT_USAGE);
            }
        },
        (Some(servers), _, _) => match jobfile::command_line_servers(servers) {
            Ok(servers) if servers == [jobfile::DISCOVER] => {
                (Vec::new(), Some(jobfile::DEFAULT_DISCOVER_WINDOW))
            }
            Ok(servers) => (servers, None),
            Err(message) => {
                eprintln!("error: --servers: {message}");
                return ExitCode::from(EXIT_USAGE);
            }
        },
        (None, Some(job_file), _) if job_file.discover.is_some() => (Vec::new(), job_file.discover),
        (None, Some(job_file), _) if job_file.ssh.as_ref().is_some_and(|s| !s.launch) => {
            let hosts_file = &job_file.ssh.as_ref().expect("checked").hosts_file;
            match UpState::require(hosts_file) {
                Ok(state) => {
                    up_token = Some(state.token.clone());
                    (state.addresses(), None)
                }
                Err(e) => return exit_on_error(Err(e)),
            }
        }
        (None, Some(job_file), _) if !job_file.servers.is_empty() => {
            (job_file.servers.clone(), None)
        }
        (None, Some(job_file), _) => {
            eprintln!(
                "error: {} names no running servers (`local = N` and `launch = \"ssh\"` servers live only during a run): \
                 give --servers host:port,...",
                job_file.path.display()
            );
            return ExitCode::from(EXIT_USAGE);
        }
        (None, None, None) => {
            eprintln!(
                "error: give a job file, --servers host:port,... or --discover (see pool-client status --help)"
            );
            return ExitCode::from(EXIT_USAGE);
        }
    };
    let settings = job_file.map(|job_file| job_file.client).unwrap_or_default();
    let trust = match (&args.tls_fingerprint, &args.tls_ca) {
        (Some(fingerprints), _) => fingerprints
            .iter()
            .map(|text| Fingerprint::parse(text))
            .collect::<Result<Vec<_>, _>>()
            .map(|pinned| Some(TlsTrust::Pinned(pinned)))
            .map_err(|e| format!("--tls-fingerprint: {e}")),
        (None, Some(path)) => read_certificates(path)
            .map(|certificates| {
                Some(TlsTrust::Ca {
                    path: path.clone(),
                    certificates,
                })
            })
            .map_err(|e| format!("--tls-ca: {e}")),
        (None, None) => Ok(settings.tls),
    };
    let tls = match trust.and_then(|trust| trust.as_ref().map(ClientTls::new).transpose()) {
        Ok(tls) => tls,
        Err(message) => {
            eprintln!("error: {message}");
            return ExitCode::from(EXIT_USAGE);
        }
    };
    let entries = servers
        .iter()
        .map(|s| jobfile::ServerEntry::parse(s).expect("checked when read"))
        .collect();
    let wait = args.timeout;
    let options = ConnectOptions {
        connect_timeout: wait,
        handshake_timeout: wait,
        part_timeout: None,
        token: up_token
            .or(settings.token)
            .or_else(|| std::env::var("POOL_TOKEN").ok().filter(|t| !t.is_empty())),
        tls,
    };
    let runtime = match tokio_runtime() {
        Ok(runtime) => runtime,
        Err(e) => return exit_on_error(Err(e)),
    };
    let membership = async {
        match discover {
            Some(window) => Membership::new(entries, None).with_discovery(window),
            None => Ok(Membership::new(entries, None)),
        }?
        .resolve()
        .await
    };
    let servers = match runtime.block_on(membership) {
        Ok(servers) => servers.into_iter().map(|s| s.address).collect::<Vec<_>>(),
        Err(e) => return exit_on_error(Err(e)),
    };
    let states = runtime.block_on(status::query_all(&servers, &options));
    match args.format {
        StatusFormat::Table => print!("{}", status::table(&states)),
        StatusFormat::Json => println!(
            "{}",
            serde_json::to_string_pretty(&status::json(&states)).expect("JSON values serialize")
        ),
    }
    if states.iter().all(|s| s.answer.is_ok()) {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// Writes the run's output to `path`, or to standard output without one.
fn write_output(path: Option<&std::path::Path>, text: &str) -> anyhow::Result<()> {
    match path {
        Some(path) => write_file(path, text),
        None => {
            let mut stdout = std::io::stdout().lock();
            stdout
                .write_all(text.as_bytes())
                .and_then(|()| stdout.flush())
                .context("cannot write to standard output")
        }
    }
}

fn write_file(path: &std::path::Path, text: &str) -> anyhow::Result<()> {
    std::fs::write(path, text).with_context(|| format!("cannot write {}", path.display()))
}

fn tokio_runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")
}

fn usage_error(error: &JobFileError) -> ExitCode {
    eprintln!("error: {error}");
    ExitCode::from(EXIT_USAGE)
}

fn exit_on_error(result: anyhow::Result<()>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
