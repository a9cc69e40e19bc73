//! The pool mode: parts to servers, concurrently, and the results gathered.
//!
//! Each server that gets a part gets one connection; all parts are sent at once and
//! each server computes as many at a time as it has workers. The job fails, naming the
//! server and what happened, as soon as any server fails (retrying elsewhere is a later
//! step); nothing waits without a bound.

use std::time::{Duration, Instant};

use futures::future::try_join_all;
use pool_common::jobfile::Placement;
use pool_common::jobs::{combine_all, Part, PartResult};
use rand::rngs::StdRng;

use crate::connection::{PartReply, ServerConnection, ServerError, Timeouts};
use crate::progress::{placement_counts, NoProgress, PoolObserver};
use crate::servers::place;
use crate::wire;

/// What happened to one part in the pool mode.
#[derive(Debug, Clone)]
pub struct PartRecord {
    /// The part's index in the job.
    pub part: usize,
    /// The server that computed it.
    pub server: String,
    /// The server's answer and its timings.
    pub reply: PartReply,
    /// When sending the part began, from the start of the pool run (client clock).
    pub start: Duration,
    /// Bytes sent for the part: its request and data frames.
    pub bytes_sent: u64,
    /// Bytes of the server's reply.
    pub bytes_received: u64,
}

/// One server's share of a pool run.
#[derive(Debug, Clone)]
pub struct ServerRecord {
    /// The server's address.
    pub address: String,
    /// Worker threads the server reported.
    pub workers: u32,
    /// Time to connect and complete the handshake.
    pub connect: Duration,
}

/// The outcome of running a job's parts on the pool.
#[derive(Debug, Clone)]
pub struct PoolRun {
    /// The combined result.
    pub result: PartResult,
    /// From the first connection attempt to the last result (client clock).
    pub elapsed: Duration,
    /// Every part, in part order.
    pub parts: Vec<PartRecord>,
    /// Every server that got a part, in the order of the server list.
    pub servers: Vec<ServerRecord>,
}

impl PoolRun {
    /// Total worker threads on the servers used.
    pub fn workers(&self) -> u32 {
        self.servers.iter().map(|s| s.workers).sum()
    }
}

/// Runs `parts` on `servers`, placed by `placement` with `rng`.
pub async fn run_pool(
    parts: &[Part],
    servers: &[String],
    placement: Placement,
    rng: &mut StdRng,
    timeouts: Timeouts,
) -> Result<PoolRun, ServerError> {
    run_pool_observed(parts, servers, placement, rng, timeouts, &NoProgress).await
}

/// [`run_pool`], telling `observer` where parts go and when each is sent and done.
pub async fn run_pool_observed(
    parts: &[Part],
    servers: &[String],
    placement: Placement,
    rng: &mut StdRng,
    timeouts: Timeouts,
    observer: &dyn PoolObserver,
) -> Result<PoolRun, ServerError> {
    let placed = place(parts.len(), servers.len(), placement, rng);
    observer.placed(&placement_counts(servers, &placed));
    let started = Instant::now();

    let used: Vec<usize> = (0..servers.len()).filter(|s| placed.contains(s)).collect();
    let connections = try_join_all(used.iter().map(|&s| async move {
        let connect_started = Instant::now();
        let connection = ServerConnection::connect(&servers[s], timeouts).await?;
        Ok::<_, ServerError>((s, connection, connect_started.elapsed()))
    }))
    .await?;
    let connection_of = |server: usize| {
        connections
            .iter()
            .find(|(s, _, _)| *s == server)
            .map(|(_, c, _)| c)
            .expect("every used server is connected")
    };

    let records = try_join_all(parts.iter().zip(&placed).map(|(part, &server)| async move {
        let connection = connection_of(server);
        let start = started.elapsed();
        let bytes = part.task.input_bytes().unwrap_or(0);
        let reply = connection
            .run_part_with(part, || observer.part_sent(connection.address(), bytes))
            .await?;
        observer.part_done(connection.address());
        // Part ids are per connection; the part's index stands in for its id, which
        // encodes to about the same size.
        let id = part.index as u64;
        Ok::<_, ServerError>(PartRecord {
            part: part.index,
            server: connection.address().to_string(),
            start,
            bytes_sent: wire::request_bytes(id, part),
            bytes_received: wire::reply_bytes(id, reply.result, reply.compute.as_nanos() as u64),
            reply,
        })
    }))
    .await?;
    let elapsed = started.elapsed();

    let result = combine_all(records.iter().map(|r| r.reply.result))
        .expect("servers answered every part with a result of the job's kind");
    Ok(PoolRun {
        result,
        elapsed,
        parts: records,
        servers: connections
            .iter()
            .map(|(_, connection, connect)| ServerRecord {
                address: connection.address().to_string(),
                workers: connection.welcome().workers,
                connect: *connect,
            })
            .collect(),
    })
}
