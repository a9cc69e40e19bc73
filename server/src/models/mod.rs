//! The ways a server can serve its connections (`pool-server --model`), side by side.
//!
//! | model       | how it serves                                   | what it reproduces |
//! |-------------|-------------------------------------------------|--------------------|
//! | `async`     | tokio tasks on a few threads ([`crate::listener`]) | the default: holds many clients cheaply |
//! | `threads`   | OS threads per connection, blocking I/O ([`threads`]) | the classic thread-per-client server |
//! | `iterative` | one connection at a time ([`iterative`])        | the textbook's first server |
//! | `fork`      | a child process per connection ([`fork`])      | an inetd-style superserver: fork/exec per connection |
//!
//! Every model speaks the same protocol over the same part logic: the handshake, the
//! frame limits, the part table and the executor are shared ([`crate::session`]); the
//! three blocking models also share [`crate::blocking`], which serves one connection,
//! and differ only in their accept loops, each in its own small file. Only the async
//! model serves TLS.

pub mod fork;
pub mod iterative;
pub mod threads;

use std::net::{SocketAddr, TcpStream};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use pool_common::codec::{write_frame_blocking, Frame};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{error, warn};

use crate::{listener, ServerConfig, Shared};

/// How a server serves its connections. See the module documentation.
#[derive(clap::ValueEnum, Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum ServerModel {
    /// Tokio tasks: many connections on a few threads (the default).
    #[default]
    Async,
    /// An OS thread per connection, with blocking I/O.
    Threads,
    /// One connection at a time; the next waits in the listen backlog.
    Iterative,
    /// A child process per connection (the server's own program, run again).
    Fork,
}

impl std::fmt::Display for ServerModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            ServerModel::Async => "async",
            ServerModel::Threads => "threads",
            ServerModel::Iterative => "iterative",
            ServerModel::Fork => "fork",
        })
    }
}

/// Serves `listener` in `config`'s model until `shutdown` is cancelled; the task ends
/// once the server has stopped. Refuses (`InvalidInput`) what the model cannot do.
pub(crate) fn serve(
    listener: TcpListener,
    config: ServerConfig,
    shutdown: CancellationToken,
) -> std::io::Result<JoinHandle<()>> {
    let model = config.model;
    let invalid = |message: String| std::io::Error::new(std::io::ErrorKind::InvalidInput, message);
    if model != ServerModel::Async && config.tls.is_some() {
        return Err(invalid(format!(
            "--model {model} serves plain TCP only: TLS (--tls, --tls-cert) needs --model async"
        )));
    }
    Ok(match model {
        ServerModel::Async => {
            let shared = Shared::new(config);
            tokio::spawn(listener::run(listener, shared, shutdown))
        }
        ServerModel::Threads | ServerModel::Iterative => {
            let shared = Shared::new(config);
            let force_stop = shared.force_stop.clone();
            let grace = shared.config.shutdown_grace;
            in_thread(
                listener,
                shutdown,
                grace,
                force_stop,
                move |listener, shutdown| {
                    if model == ServerModel::Threads {
                        threads::run(&listener, &shared, &shutdown);
                    } else {
                        iterative::run(&listener, &shared, &shutdown);
                    }
                },
            )?
        }
        ServerModel::Fork => {
            let command = config.serve_command.clone().ok_or_else(|| {
                invalid(
                    "--model fork runs the server's program once per connection: start it \
                     from the command line (pool-server --model fork)"
                        .into(),
                )
            })?;
            // The parent computes nothing: its children stop themselves after the grace
            // period, and the parent kills those that do not.
            let grace = config.shutdown_grace;
            in_thread(
                listener,
                shutdown,
                grace,
                CancellationToken::new(),
                move |listener, shutdown| fork::run(&listener, &config, &command, &shutdown),
            )?
        }
    })
}

/// Runs a blocking accept loop on its own thread, and a task that wakes it when
/// `shutdown` is cancelled and cancels `force_stop` once the grace period is over. The
/// returned task ends when the loop has.
fn in_thread(
    listener: TcpListener,
    shutdown: CancellationToken,
    grace: Duration,
    force_stop: CancellationToken,
    run: impl FnOnce(std::net::TcpListener, CancellationToken) + Send + 'static,
) -> std::io::Result<JoinHandle<()>> {
    let listener = listener.into_std()?;
    listener.set_nonblocking(false)?;
    let wake = loopback(listener.local_addr()?);
    let (finished, done) = tokio::sync::oneshot::channel::<()>();
    let stop = shutdown.clone();
    std::thread::Builder::new()
        .name("pool-accept".into())
        .spawn(move || {
            run(listener, stop);
            let _ = finished.send(());
        })?;
    let mut done = done;
    Ok(tokio::spawn(async move {
        tokio::select! {
            _ = &mut done => return,
            () = shutdown.cancelled() => {}
        }
        // A blocking accept returns only with a connection: make one.
        let _ = tokio::net::TcpStream::connect(wake).await;
        if tokio::time::timeout(grace, &mut done).await.is_err() {
            warn!(
                ?grace,
                "parts still running after the grace period; cancelling them"
            );
            force_stop.cancel();
            let _ = done.await;
        }
    }))
}

/// The address to reach a listener on `address` from this machine.
fn loopback(address: SocketAddr) -> SocketAddr {
    let ip = match address.ip() {
        ip if !ip.is_unspecified() => ip,
        std::net::IpAddr::V4(_) => std::net::Ipv4Addr::LOCALHOST.into(),
        std::net::IpAddr::V6(_) => std::net::Ipv6Addr::LOCALHOST.into(),
    };
    SocketAddr::new(ip, address.port())
}

/// Accepts connections until `shutdown` is cancelled, handing each to `serve`. A
/// failed accept (out of file descriptors, a connection reset before it) is retried
/// after 100 ms: it is no reason to stop serving the others.
fn accept_until(
    listener: &std::net::TcpListener,
    shutdown: &CancellationToken,
    mut serve: impl FnMut(TcpStream, SocketAddr),
) {
    while !shutdown.is_cancelled() {
        match listener.accept() {
            Ok(_) if shutdown.is_cancelled() => return,
            Ok((socket, peer)) => {
                let _ = socket.set_nodelay(true);
                serve(socket, peer);
            }
            Err(e) => {
                error!(error = %e, "accept failed; retrying in 100 ms");
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }
}

/// Tells a connection over `--max-connections` why it is refused, and closes it.
fn refuse(mut socket: TcpStream, max: usize) {
    warn!(max, "connection refused: at the connection limit");
    let _ = socket.set_write_timeout(Some(Duration::from_secs(1)));
    let _ = write_frame_blocking(
        &mut socket,
        &Frame::Refused(crate::session::over_the_limit(max)),
    );
}

/// The connections being served, at most `max` at once.
struct Connections {
    max: usize,
    open: Mutex<usize>,
    changed: Condvar,
}

/// A place among the [`Connections`], given back when dropped.
struct Place(Arc<Connections>);

impl Connections {
    fn new(max: usize) -> Arc<Connections> {
        Arc::new(Connections {
            max,
            open: Mutex::new(0),
            changed: Condvar::new(),
        })
    }

    fn open(&self) -> std::sync::MutexGuard<'_, usize> {
        self.open.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A place for one more connection, unless `max` are open.
    fn enter(self: &Arc<Self>) -> Option<Place> {
        let mut open = self.open();
        (*open < self.max).then(|| {
            *open += 1;
            Place(Arc::clone(self))
        })
    }

    /// Connections open now.
    fn count(&self) -> usize {
        *self.open()
    }

    /// Waits until every connection has ended, or `limit` (if any) has passed;
    /// whether they all ended.
    fn wait_all(&self, limit: Option<Duration>) -> bool {
        let open = self.open();
        let open = match limit {
            Some(limit) => {
                self.changed
                    .wait_timeout_while(open, limit, |open| *open > 0)
                    .unwrap_or_else(|p| p.into_inner())
                    .0
            }
            None => self
                .changed
                .wait_while(open, |open| *open > 0)
                .unwrap_or_else(|p| p.into_inner()),
        };
        *open == 0
    }
}

impl Drop for Place {
    fn drop(&mut self) {
        *self.0.open() -= 1;
        self.0.changed.notify_all();
    }
}
