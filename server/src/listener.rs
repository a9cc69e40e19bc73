//! The accept loop: one task per connection, a limit on connections, and graceful
//! shutdown.
//!
//! The limit is a semaphore with `max_connections` permits: a connection accepted
//! when none is left is told why in a handshake refusal and closed at once, so its
//! client can report it (or try another server) instead of waiting. Shutdown is a [`CancellationToken`]: the loop stops
//! accepting, every connection stops taking new parts and finishes the ones it has, and
//! the server waits for them up to the grace period before the executor is stopped.

use std::sync::Arc;
use std::time::Duration;

use futures::SinkExt;
use pool_common::codec::{Frame, FrameCodec};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_util::codec::Framed;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{error, info, info_span, warn, Instrument};

use crate::connection::Connection;
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
        let Ok(permit) = Arc::clone(&limit).try_acquire_owned() else {
            let max = shared.config.max_connections;
            warn!(%peer, max, "connection refused: at the connection limit");
            connections.spawn(refuse(
                socket,
                format!(
                    "the server is at its limit of {max} connections (raise it with pool-server --max-connections)"
                ),
            ));
            continue;
        };
        let shared = Arc::clone(&shared);
        let shutdown = shutdown.clone();
        let serve = async move {
            info!("connection opened");
            match Connection::new(socket, shared, shutdown).run().await {
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

/// Sends a handshake refusal and closes, within a second whatever the peer does.
async fn refuse(socket: TcpStream, reason: String) {
    let mut framed = Framed::new(socket, FrameCodec::new());
    let _ = tokio::time::timeout(Duration::from_secs(1), framed.send(Frame::Refused(reason))).await;
}
