//! `pool-server`: computes parts of jobs for `pool-client`s.
//!
//! * [`models`]: the ways a server can serve its connections (`--model`): [`listener`]
//!   and [`connection`] are the default, async one; [`blocking`] serves a connection for
//!   the others.
//! * [`listener`]: the async accept loop, the connection limit and graceful shutdown.
//! * [`connection`]: one connection's life on the async model, from handshake to the
//!   last reply.
//! * [`blocking`]: one connection's life with blocking I/O (threads, iterative, fork).
//! * [`session`]: what a connection does with each frame, whatever model serves it.
//! * [`reader`]: reading a connection's frames, each claimed from the [`budget`] for
//!   buffered input before its body is read.
//! * [`parts`]: the rules for a connection's parts, as a state machine without I/O.
//! * [`executor`]: the bounded pool of OS threads where kernels run.
//! * [`load`]: the machine's load and the server's speed, for status replies.
//! * [`commands`]: whether, and which, user programs the server runs.
//! * [`tls`]: the server's certificate and the TLS handshake, when it has one.
//! * [`cli`]: the command line, shared by `pool-server` and `pool-client serve`.
//! * [`announce`]: `--announce`, the server advertised on the local network.
//!
//! To embed a server (tests do), call [`start`] inside a tokio runtime.

pub mod announce;
pub mod blocking;
pub mod budget;
pub mod cli;
pub mod commands;
pub mod connection;
pub mod executor;
pub mod listener;
pub mod load;
pub mod models;
pub mod parts;
pub mod reader;
pub mod session;
pub mod tls;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::net::{TcpListener, ToSocketAddrs};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use executor::Executor;
pub use models::ServerModel;
use pool_common::protocol::ServerStatus;

/// A server's limits and sizes. [`ServerConfig::default`] has the documented defaults.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Threads computing parts at once.
    pub workers: usize,
    /// Connections served at once; further clients wait in the accept queue.
    pub max_connections: usize,
    /// Parts one connection may have in flight.
    pub max_parts_per_connection: usize,
    /// Input bytes one part may ship (a matrix block).
    pub max_part_bytes: u64,
    /// Work items one part may declare (loop iterations, matrix elements).
    pub max_part_work: u64,
    /// Bytes of the clients' input the whole server buffers at once: data frames not
    /// yet computed, and the jobs' shared inputs (see [`budget`]). At least
    /// [`MIN_BUFFER_MEMORY`].
    pub max_buffer_memory: u64,
    /// The shared secret clients must prove they know, if any.
    pub token: Option<String>,
    /// The certificate for TLS connections; `None` serves plain TCP only.
    pub tls: Option<tls::ServerTls>,
    /// Which of the users' programs the server runs (`--allow-commands`).
    pub commands: commands::CommandPolicy,
    /// Time a new connection has for its handshake (each: TLS's, then pool's).
    pub handshake_timeout: Duration,
    /// Time a connection may stay silent while the server waits on it (no part
    /// computing), and time a reply may take to be written.
    pub idle_timeout: Duration,
    /// On shutdown, how long parts in flight may take to finish.
    pub shutdown_grace: Duration,
    /// How connections are served (`--model`).
    pub model: ServerModel,
    /// How to start a process that serves one connection, for the fork model: the
    /// server's own program and arguments (see [`models::fork`]).
    pub serve_command: Option<models::fork::ServeCommand>,
}

impl ServerConfig {
    /// Data chunks one connection may have waiting for the executor before it stops
    /// reading, so its memory stays bounded while its client waits on TCP.
    pub fn max_pending_chunks(&self) -> usize {
        self.workers.max(2) * 2
    }
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            workers: std::thread::available_parallelism().map_or(1, |n| n.get()),
            max_connections: 1024,
            max_parts_per_connection: 1024,
            max_part_bytes: 1 << 30,
            max_part_work: 1_000_000_000_000,
            max_buffer_memory: 512 << 20,
            token: None,
            tls: None,
            commands: commands::CommandPolicy::default(),
            handshake_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(300),
            shutdown_grace: Duration::from_secs(30),
            model: ServerModel::Async,
            serve_command: None,
        }
    }
}

/// The least `max_buffer_memory` a server starts with: two data frames, so one
/// connection's next chunk can be read while its previous one is computed.
pub const MIN_BUFFER_MEMORY: u64 = 2 * pool_common::codec::MAX_FRAME_BYTES as u64;

/// State shared by every connection of one server.
pub struct Shared {
    /// The configuration the server was started with.
    pub config: ServerConfig,
    /// Where kernels run.
    pub executor: Executor,
    /// The memory the server's buffered input may take.
    pub buffers: Arc<budget::BufferBudget>,
    /// Parts answered with a result since start.
    pub parts_served: AtomicU64,
    /// Parts accepted and not yet answered, on every connection.
    pub parts_in_flight: AtomicUsize,
    /// When the server started.
    pub started: Instant,
    /// The idle CPU share and the calibrated speed, sampled in the background.
    pub load: Arc<load::LoadMonitor>,
    /// Cancelled when the shutdown grace period is over: connections still open end
    /// and their parts are cancelled.
    pub force_stop: CancellationToken,
}

impl Shared {
    /// The state of a new server with `config`: its executor's threads start now.
    pub fn new(config: ServerConfig) -> Arc<Shared> {
        Arc::new(Shared {
            executor: Executor::new(config.workers),
            buffers: budget::BufferBudget::new(
                usize::try_from(config.max_buffer_memory).unwrap_or(usize::MAX),
            ),
            config,
            parts_served: AtomicU64::new(0),
            parts_in_flight: AtomicUsize::new(0),
            started: Instant::now(),
            load: load::LoadMonitor::start(),
            force_stop: CancellationToken::new(),
        })
    }

    /// The answer to a status request: counters and readings, nothing that waits.
    pub fn status(&self) -> ServerStatus {
        ServerStatus {
            server: format!("pool-server {}", env!("CARGO_PKG_VERSION")),
            cores: std::thread::available_parallelism().map_or(1, |n| n.get()) as u32,
            workers: self.executor.workers() as u32,
            workers_busy: self.executor.busy() as u32,
            parts_in_flight: self.parts_in_flight.load(Ordering::Relaxed) as u32,
            parts_served: self.parts_served.load(Ordering::Relaxed),
            uptime_nanos: self.started.elapsed().as_nanos().min(u64::MAX as u128) as u64,
            load_average_milli: load::load_average_milli(),
            cpu_idle_milli: self.load.cpu_idle_milli(),
            memory_available_bytes: load::memory_available_bytes(),
            loop_picos_per_iteration: self.load.loop_picos_per_iteration(),
        }
    }
}

/// A running server, as returned by [`start`].
pub struct ServerHandle {
    local_addr: SocketAddr,
    shutdown: CancellationToken,
    task: JoinHandle<()>,
}

impl ServerHandle {
    /// The address the server listens on (with the port the OS chose for port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Stops accepting, lets parts in flight finish (within the grace period), and
    /// waits until the server has stopped.
    pub async fn shutdown(self) {
        self.shutdown.cancel();
        let _ = self.task.await;
    }

    /// A token that starts the graceful shutdown when cancelled.
    pub fn shutdown_token(&self) -> CancellationToken {
        self.shutdown.clone()
    }
}

/// Connections that may wait, connected but not yet accepted, before the kernel drops
/// new ones (it caps this at `net.core.somaxconn`, 4096 on current kernels). Tokio's
/// default, 1024, overflowed when 1,000 clients connected at once (scenario 13): the
/// dropped handshakes were retried by the clients' kernels after 1 s, 3 s, 7 s.
pub const LISTEN_BACKLOG: u32 = 4096;

/// Binds the first of `addr`'s addresses that can be bound, with [`LISTEN_BACKLOG`].
pub async fn listen(addr: impl ToSocketAddrs) -> std::io::Result<TcpListener> {
    let mut last_error = None;
    for addr in tokio::net::lookup_host(addr).await? {
        let socket = if addr.is_ipv4() {
            tokio::net::TcpSocket::new_v4()?
        } else {
            tokio::net::TcpSocket::new_v6()?
        };
        socket.set_reuseaddr(true)?;
        match socket
            .bind(addr)
            .and_then(|()| socket.listen(LISTEN_BACKLOG))
        {
            Ok(listener) => return Ok(listener),
            Err(e) => last_error = Some(e),
        }
    }
    Err(last_error.unwrap_or_else(|| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "the address resolved to nothing",
        )
    }))
}

/// Binds `addr` and serves on the current tokio runtime, in the configured
/// [`ServerModel`], until shut down. Refuses to run users' programs for anyone who
/// reaches a port beyond loopback without a token, a buffer budget below
/// [`MIN_BUFFER_MEMORY`], and what the model does not support (errors of kind
/// `InvalidInput`, whose message says what to change).
pub async fn start(
    addr: impl ToSocketAddrs,
    config: ServerConfig,
) -> std::io::Result<ServerHandle> {
    if config.max_buffer_memory < MIN_BUFFER_MEMORY {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!(
                "--max-buffer-memory {} is below the least a server needs, {MIN_BUFFER_MEMORY} \
                 bytes (two data frames)",
                config.max_buffer_memory
            ),
        ));
    }
    let listener = listen(addr).await?;
    let local_addr = listener.local_addr()?;
    if config.commands.runs_programs() && config.token.is_none() && !local_addr.ip().is_loopback() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!(
                "--allow-commands while listening on {local_addr} without --token would let \
                 anyone who reaches the port run programs on this machine: add --token \
                 (or POOL_TOKEN), or listen on loopback only with --bind 127.0.0.1"
            ),
        ));
    }
    let shutdown = CancellationToken::new();
    let task = models::serve(listener, config, shutdown.clone())?;
    Ok(ServerHandle {
        local_addr,
        shutdown,
        task,
    })
}
