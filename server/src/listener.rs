//! The accept loop: one task per connection, a limit on connections, and graceful
//! shutdown.
//!
//! The limit is a semaphore with `max_connections` permits: a connection accepted
//! when none is left is told why in a handshake refusal and closed at once, so its
//! client can report it (or try another server) instead of waiting. On a server with TLS,
//! each connection's task runs the TLS handshake first (see [`crate::tls`]). Shutdown is
//! a [`CancellationToken`]: the loop stops
//! accepting, every connection stops taking new parts and finishes the ones it has, and
//! the server waits for them up to the grace period before the executor is stopped.

use std::sync::Arc;
use std::time::Duration;

use futures::SinkExt;
use pool_common::codec::{Frame, FrameCodec};
use pool_common::tls::{plain_halves, ReadHalf, WriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_util::codec::FramedWrite;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{error, info, info_span, warn, Instrument};

use crate::connection::Connection;
use crate::tls::AcceptError;
use crate::Shared;

/// Accepts connections until `shutdown` is cancelled, then drains them.
pub async fn run(listener: TcpListener, shared: Arc<Shared>, shutdown: CancellationToken) {
    let limit = Arc::new(Semaphore::new(shared.config.max_connections));
    let connections = TaskTracker::new();
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            () = shutdown.cancelled() => break,
        };
        let (socket, peer) = match accepted {
            Ok(accepted) => accepted,
            Err(e) => {
                // Out of file descriptors, or a connection reset before accept: neither is
                // a reason to stop serving the others.
                error!(error = %e, "accept failed; retrying in 100 ms");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let _ = socket.set_nodelay(true);
        let permit = Arc::clone(&limit).try_acquire_owned().ok();
        let shared = Arc::clone(&shared);
        let shutdown = shutdown.clone();
        let serve = async move {
            // A connection over the limit is only told why, and gets a second for it.
            let timeout = match permit {
                Some(_) => shared.config.handshake_timeout,
                None => Duration::from_secs(1),
            };
            let Some(halves) = open(socket, &shared, timeout).await else {
                return;
            };
            let Some(permit) = permit else {
                let max = shared.config.max_connections;
                warn!(max, "connection refused: at the connection limit");
                return refuse(halves.1, crate::session::over_the_limit(max)).await;
            };
            info!("connection opened");
            match Connection::new(halves, Arc::clone(&shared), shutdown)
                .run()
                .await
            {
                Ok(parts) => info!(parts, "connection closed"),
                Err(e) => warn!(error = %e, "connection closed"),
            }
            drop(permit);
        };
        connections.spawn(serve.instrument(info_span!("connection", %peer)));
    }
    drop(listener);
    connections.close();
    let grace = shared.config.shutdown_grace;
    if tokio::time::timeout(grace, connections.wait())
        .await
        .is_err()
    {
        warn!(
            ?grace,
            "parts still running after the grace period; cancelling them"
        );
        shared.force_stop.cancel();
        connections.wait().await;
    }
    let executor_owner = Arc::clone(&shared);
    // Queued work was cancelled with its connection, so this returns promptly unless a
    // kernel ignores its cancel flag.
    let _ = tokio::task::spawn_blocking(move || executor_owner.executor.shutdown()).await;
    info!("server stopped");
}

/// The connection's two directions: the socket's own, or, on a server with TLS, those
/// of the TLS session once its handshake is done within `timeout`. `None` when nothing
/// came of it (logged); a client without TLS is first told what to change.
async fn open(
    socket: TcpStream,
    shared: &Shared,
    timeout: Duration,
) -> Option<(ReadHalf, WriteHalf)> {
    let Some(tls) = &shared.config.tls else {
        return Some(plain_halves(socket));
    };
    match tokio::time::timeout(timeout, tls.accept(socket)).await {
        Ok(Ok(halves)) => Some(halves),
        Ok(Err(AcceptError::Plain(socket))) => {
            warn!("connection refused: a client without TLS");
            let reason = "this server takes TLS connections only: set tls = true in the job file, \
                          with tls_fingerprint = the line pool-server printed at start (or \
                          tls_ca = the authority that signed its certificate)";
            refuse(plain_halves(socket).1, reason.into()).await;
            None
        }
        Ok(Err(e)) => {
            warn!(error = %e, "connection closed");
            None
        }
        Err(_) => {
            warn!(?timeout, "connection closed: no TLS handshake in time");
            None
        }
    }
}

/// Sends a handshake refusal and closes, within a second whatever the peer does.
async fn refuse(writer: WriteHalf, reason: String) {
    let mut framed = FramedWrite::new(writer, FrameCodec::new());
    let _ = tokio::time::timeout(Duration::from_secs(1), framed.send(Frame::Refused(reason))).await;
}
