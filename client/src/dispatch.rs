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
use crate::servers::place;

/// What happened to one part in the pool mode.
#[derive(Debug, Clone)]
pub struct PartRecord {
    /// The part's index in the job.
    pub part: usize,
    /// The server that computed it.
    pub server: String,
    /// The server's answer and its timings.
    pub reply: PartReply,
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
    let placed = place(parts.len(), servers.len(), placement, rng);
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
        let reply = connection.run_part(part).await?;
        Ok::<_, ServerError>(PartRecord {
            part: part.index,
            server: connection.address().to_string(),
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
