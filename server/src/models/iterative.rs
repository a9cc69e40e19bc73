//! The iterative model: one connection at a time.
//!
//! The textbook's first server: accept a connection, serve it to its end with
//! [`crate::blocking::run`], accept the next. Clients that connect meanwhile wait in
//! the listen backlog, unanswered, however idle the server's workers are (a client
//! with several parts still gets them computed in parallel on the executor).
//! `--max-connections` does not apply: one is served, the others wait.

use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use super::accept_until;
use crate::Shared;

/// Serves `listener` one connection at a time until `shutdown` is cancelled; the
/// connection in progress then finishes its parts (the grace period is enforced
/// through `shared.force_stop`).
pub fn run(listener: &std::net::TcpListener, shared: &Arc<Shared>, shutdown: &CancellationToken) {
    accept_until(listener, shutdown, |socket, peer| {
        crate::blocking::run(socket, peer, shared, shutdown);
    });
    shared.executor.shutdown();
}
