//! The threads model: an OS thread per connection, with blocking I/O.
//!
//! The classic thread-per-client server (the paper's): the accept loop starts a thread
//! for each connection, which serves it with [`crate::blocking::run`] (and starts one
//! more to read its socket); kernels run on the server's executor, as on every model.
//! A connection over `--max-connections` is refused with a message naming the flag.
//! Each client costs its threads' stacks and kernel state, which the `models`
//! benchmark measures.

use std::sync::Arc;

use tokio_util::sync::CancellationToken;
use tracing::error;

use super::{accept_until, refuse, Connections};
use crate::Shared;

/// Serves `listener` until `shutdown` is cancelled, then waits for the connections to
/// finish their parts (the grace period is enforced through `shared.force_stop`).
pub fn run(listener: &std::net::TcpListener, shared: &Arc<Shared>, shutdown: &CancellationToken) {
    let max = shared.config.max_connections;
    let connections = Connections::new(max);
    accept_until(listener, shutdown, |socket, peer| {
        let Some(place) = connections.enter() else {
            return refuse(socket, max);
        };
        let (shared, shutdown) = (Arc::clone(shared), shutdown.clone());
        let started = std::thread::Builder::new()
            .name("pool-conn".into())
            .spawn(move || {
                crate::blocking::run(socket, peer, &shared, &shutdown);
                drop(place);
            });
        if let Err(e) = started {
            error!(error = %e, %peer, "cannot start a thread for the connection; closed");
        }
    });
    connections.wait_all(None);
    shared.executor.shutdown();
}
