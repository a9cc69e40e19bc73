//! The fork model: a child process per connection, as an inetd-style superserver.
//!
//! The parent only accepts. For each connection it starts the server's own program
//! again (fork, then exec: safe in a process with threads, and the fork/exec-per-request
//! design) with the accepted socket inherited and named by the hidden `--serve-fd`
//! flag. The child builds a whole server (its own executor of `--workers` threads, its
//! own buffer budget) and serves that one connection with [`crate::blocking::run`],
//! then exits. So a child that crashes takes only its own client with it, and each
//! connection pays for a process start, which the `models` benchmark measures.
//!
//! The parent counts its children against `--max-connections`, reaps them as they
//! exit, and on shutdown passes SIGTERM on to them: each finishes its parts within the
//! grace period as a server does, and the parent kills those still running after it.
//! A status request answers for the child serving it: its workers, its parts.

use std::ffi::OsString;
use std::os::fd::{AsRawFd, FromRawFd, RawFd};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use super::{accept_until, refuse, Connections, Place};
use crate::{ServerConfig, Shared};

/// How often the parent looks for children that have exited.
const REAP_INTERVAL: Duration = Duration::from_millis(20);

/// Time children get after the grace period (theirs) to exit before they are killed.
const EXIT_MARGIN: Duration = Duration::from_secs(2);

/// How to start a process that serves one connection: the server's program and its
/// arguments, to which `--serve-fd N` is added.
#[derive(Debug, Clone)]
pub struct ServeCommand {
    /// The program.
    pub program: PathBuf,
    /// Its arguments, the server's options among them.
    pub args: Vec<OsString>,
}

impl ServeCommand {
    /// This process's own program and arguments: a child started with them (and
    /// `--serve-fd`) has the parent's options.
    pub fn this_process() -> std::io::Result<ServeCommand> {
        Ok(ServeCommand {
            program: std::env::current_exe()?,
            args: std::env::args_os().skip(1).collect(),
        })
    }

    /// Starts a child serving `socket`, which it inherits.
    fn spawn(&self, socket: &std::net::TcpStream) -> std::io::Result<Child> {
        let fd = socket.as_raw_fd();
        let mut command = Command::new(&self.program);
        command
            .args(&self.args)
            .arg(format!("--serve-fd={fd}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null());
        // SAFETY: between fork and exec, the closure only calls fcntl, which is
        // async-signal-safe, on a descriptor the parent keeps open until `spawn`
        // returns.
        unsafe {
            command.pre_exec(move || {
                // Rust opens sockets close-on-exec; this one must survive the exec.
                if libc::fcntl(fd, libc::F_SETFD, 0) == -1 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        command.spawn()
    }
}

/// Serves `listener`, a child per connection, until `shutdown` is cancelled; then
/// passes the shutdown on to the children and waits for them.
pub fn run(
    listener: &std::net::TcpListener,
    config: &ServerConfig,
    command: &ServeCommand,
    shutdown: &CancellationToken,
) {
    let max = config.max_connections;
    let connections = Connections::new(max);
    let children: Arc<Mutex<Vec<(Child, Place)>>> = Arc::default();
    let stop_reaping = CancellationToken::new();
    let reaper = {
        let (children, stop) = (Arc::clone(&children), stop_reaping.clone());
        std::thread::Builder::new()
            .name("pool-reaper".into())
            .spawn(move || {
                while !stop.is_cancelled() {
                    std::thread::sleep(REAP_INTERVAL);
                    reap(&children);
                }
            })
    };
    if let Err(e) = &reaper {
        error!(error = %e, "cannot start the thread that reaps children");
        return;
    }
    accept_until(listener, shutdown, |socket, peer| {
        reap(&children);
        let Some(place) = connections.enter() else {
            return refuse(socket, max);
        };
        match command.spawn(&socket) {
            Ok(child) => {
                info!(%peer, pid = child.id(), "connection handed to a child process");
                lock(&children).push((child, place));
            }
            Err(e) => error!(error = %e, %peer, "cannot start a child process; connection closed"),
        }
    });
    for (child, _) in lock(&children).iter() {
        signal(child, libc::SIGTERM);
    }
    if !connections.wait_all(Some(config.shutdown_grace + EXIT_MARGIN)) {
        warn!(
            children = connections.count(),
            "children still running after the grace period; killing them"
        );
        for (child, _) in lock(&children).iter_mut() {
            let _ = child.kill();
        }
        connections.wait_all(None);
    }
    stop_reaping.cancel();
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}

/// Waits for the children that have exited, which gives back their places.
fn reap(children: &Mutex<Vec<(Child, Place)>>) {
    lock(children).retain_mut(|(child, _)| match child.try_wait() {
        Ok(None) => true,
        Ok(Some(status)) => {
            if !status.success() {
                warn!(pid = child.id(), %status, "child process ended abnormally");
            }
            false
        }
        Err(e) => {
            warn!(pid = child.id(), error = %e, "cannot wait for a child process");
            false
        }
    });
}

fn signal(child: &Child, signal: libc::c_int) {
    if let Ok(pid) = libc::pid_t::try_from(child.id()) {
        // SAFETY: kill has no memory effects; the pid is a child not yet reaped.
        unsafe {
            libc::kill(pid, signal);
        }
    }
}

/// A child's life: serves the one connection on the inherited socket `fd` with a
/// server of `config`, until it ends or `shutdown` is cancelled (then the connection
/// finishes its parts within the grace period).
pub async fn serve_inherited(
    fd: RawFd,
    config: ServerConfig,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    // SAFETY: the parent passes the socket it accepted, inherited by this process;
    // nothing else here owns the descriptor. A descriptor that is not a socket fails
    // at `peer_addr`.
    let socket = unsafe { std::net::TcpStream::from_raw_fd(fd) };
    let peer = socket.peer_addr()?;
    socket.set_nonblocking(false)?;
    let shared = Shared::new(config);
    let (finished, mut done) = tokio::sync::oneshot::channel::<()>();
    {
        let (shared, shutdown) = (Arc::clone(&shared), shutdown.clone());
        std::thread::Builder::new()
            .name("pool-conn".into())
            .spawn(move || {
                crate::blocking::run(socket, peer, &shared, &shutdown);
                shared.executor.shutdown();
                let _ = finished.send(());
            })?;
    }
    tokio::select! {
        _ = &mut done => return Ok(()),
        () = shutdown.cancelled() => {}
    }
    let grace = shared.config.shutdown_grace;
    if tokio::time::timeout(grace, &mut done).await.is_err() {
        shared.force_stop.cancel();
        let _ = done.await;
    }
    Ok(())
}
