//! The pool mode: parts to servers, failures survived, results gathered.
//!
//! Each part starts on the server its placement chose. One connection per server is
//! opened on first use and shared by every part sent there. When an attempt fails (the
//! server refuses, resets, times out or reports an error), the server is marked failed
//! and avoided for the rest of the job, and the part is resent to a server drawn at
//! random among the healthy ones; failed servers are tried again only when no healthy
//! one is left. A part is in flight on one server at a time and its result is taken
//! once, so nothing is lost or counted twice. Parts that fail `max_attempts` times are
//! computed locally if the job file says `fallback = "local"`; otherwise the job fails
//! with what happened on each server.

use std::fmt;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::future::join_all;
use pool_common::jobfile::{Fallback, Placement};
use pool_common::jobs::{combine_all, CancelFlag, Part, PartResult};
use pool_common::wire::{frames_len, part_frames, result_frames};
use rand::rngs::StdRng;
use rand::seq::IndexedRandom;
use rand::SeedableRng;

use crate::connection::{ConnectOptions, PartReply, ServerConnection, ServerError};
use crate::progress::{placement_counts, NoProgress, PoolObserver};
use crate::servers::place;

/// A failed attempt at a part.
#[derive(Debug, Clone)]
pub struct FailedAttempt {
    /// The server tried.
    pub server: String,
    /// What went wrong there.
    pub error: String,
}

/// Where a part's result came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ComputedBy {
    /// A server, by its address.
    Server(String),
    /// The client itself, after every attempt on servers failed (`fallback = "local"`).
    LocalFallback,
}

impl fmt::Display for ComputedBy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ComputedBy::Server(address) => f.write_str(address),
            ComputedBy::LocalFallback => f.write_str("local (fallback)"),
        }
    }
}

/// What happened to one part in the pool mode.
#[derive(Debug, Clone)]
pub struct PartRecord {
    /// The part's index in the job.
    pub part: usize,
    /// Who computed it.
    pub computed_by: ComputedBy,
    /// The answer and its timings.
    pub reply: PartReply,
    /// The attempts that failed before the one that counted, in order.
    pub failed_attempts: Vec<FailedAttempt>,
    /// When sending the part began on the attempt that counted, from the start of the
    /// pool run (client clock).
    pub start: Duration,
    /// Bytes sent for the part on the attempt that counted: its request and data frames.
    pub bytes_sent: u64,
    /// Bytes of the server's reply.
    pub bytes_received: u64,
}

impl PartRecord {
    /// The number of the attempt that counted, from 1.
    pub fn attempt(&self) -> usize {
        self.failed_attempts.len() + 1
    }
}

/// One server's share of a pool run.
#[derive(Debug, Clone)]
pub struct ServerRecord {
    /// The server's address.
    pub address: String,
    /// Worker threads the server reported (0 if it never answered).
    pub workers: u32,
    /// Time to connect and complete the handshake, if it ever did.
    pub connect: Option<Duration>,
    /// The last failure seen on this server, if any.
    pub failure: Option<String>,
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
    /// Every server that was tried, in the order of the server list.
    pub servers: Vec<ServerRecord>,
}

impl PoolRun {
    /// Total worker threads on the servers that answered.
    pub fn workers(&self) -> u32 {
        self.servers.iter().map(|s| s.workers).sum()
    }

    /// The parts that needed more than one attempt.
    pub fn retried(&self) -> impl Iterator<Item = &PartRecord> {
        self.parts.iter().filter(|p| !p.failed_attempts.is_empty())
    }
}

/// How the pool copes with failures.
#[derive(Debug, Clone, Copy)]
pub struct FaultPolicy {
    /// Attempts per part, on different servers where possible.
    pub max_attempts: u32,
    /// What to do with parts that failed every attempt.
    pub fallback: Fallback,
}

/// Parts no server could compute, and what happened on each server.
#[derive(Debug, Clone, thiserror::Error)]
pub struct PoolError {
    /// The parts that failed every attempt.
    pub failed_parts: Vec<usize>,
    /// Each server tried, with its last failure (`None`: it worked).
    pub servers: Vec<(String, Option<String>)>,
    /// Attempts each part was given.
    pub attempts: u32,
}

impl fmt::Display for PoolError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} of the job's parts failed on every server tried ({} attempts each); the servers:",
            self.failed_parts.len(),
            self.attempts
        )?;
        for (address, failure) in &self.servers {
            match failure {
                Some(failure) => write!(f, "\n  {address}: {failure}")?,
                None => write!(f, "\n  {address}: ok")?,
            }
        }
        write!(
            f,
            "\n(add fallback = \"local\" to the job file to compute such parts on this machine)"
        )
    }
}

/// Runs `parts` on `servers`, placed by `placement` with `rng`, surviving failures as
/// `policy` says.
pub async fn run_pool(
    parts: &[Part],
    servers: &[String],
    placement: Placement,
    rng: &mut StdRng,
    options: &ConnectOptions,
    policy: FaultPolicy,
) -> Result<PoolRun, PoolError> {
    run_pool_observed(parts, servers, placement, rng, options, policy, &NoProgress).await
}

/// [`run_pool`], telling `observer` where parts go and when each is sent and done.
pub async fn run_pool_observed(
    parts: &[Part],
    servers: &[String],
    placement: Placement,
    rng: &mut StdRng,
    options: &ConnectOptions,
    policy: FaultPolicy,
    observer: &dyn PoolObserver,
) -> Result<PoolRun, PoolError> {
    let placed = place(parts.len(), servers.len(), placement, rng);
    observer.placed(&placement_counts(servers, &placed));
    let started = Instant::now();
    let pool = Pool {
        slots: servers.iter().map(|a| Slot::new(a)).collect(),
        rng: Mutex::new(StdRng::from_rng(rng)),
        options,
        max_attempts: policy.max_attempts.max(1),
        started,
        observer,
    };
    let outcomes = join_all(
        parts
            .iter()
            .zip(&placed)
            .map(|(part, &server)| pool.run_part(part, server)),
    )
    .await;

    let mut records = Vec::with_capacity(parts.len());
    let mut failed = Vec::new();
    for (part, outcome) in parts.iter().zip(outcomes) {
        match outcome {
            Ok(record) => records.push(record),
            Err(attempts) => failed.push((part, attempts)),
        }
    }
    if !failed.is_empty() {
        if policy.fallback != Fallback::Local {
            return Err(PoolError {
                failed_parts: failed.iter().map(|(part, _)| part.index).collect(),
                servers: pool
                    .slots
                    .iter()
                    .filter(|s| s.was_tried())
                    .map(|s| (s.address.clone(), s.failure()))
                    .collect(),
                attempts: pool.max_attempts,
            });
        }
        let fallback_parts: Vec<Part> = failed.iter().map(|(part, _)| (*part).clone()).collect();
        let fallback_start = started.elapsed();
        let computed = tokio::task::spawn_blocking(move || compute_locally(&fallback_parts))
            .await
            .expect("local fallback computation panicked");
        for ((part, failed_attempts), reply) in failed.into_iter().zip(computed) {
            records.push(PartRecord {
                part: part.index,
                computed_by: ComputedBy::LocalFallback,
                reply,
                failed_attempts,
                start: fallback_start,
                bytes_sent: 0,
                bytes_received: 0,
            });
        }
        records.sort_by_key(|r| r.part);
    }
    let elapsed = started.elapsed();
    let result = combine_all(records.iter().map(|r| r.reply.result.clone()))
        .expect("every result was checked to be of its part's kind");
    Ok(PoolRun {
        result,
        elapsed,
        parts: records,
        servers: pool
            .slots
            .iter()
            .filter(|s| s.was_tried())
            .map(Slot::record)
            .collect(),
    })
}

/// Computes parts on this machine, one thread each, timed like a server would.
fn compute_locally(parts: &[Part]) -> Vec<PartReply> {
    let cancel = CancelFlag::new();
    std::thread::scope(|scope| {
        let handles: Vec<_> = parts
            .iter()
            .map(|part| {
                scope.spawn(|| {
                    let started = Instant::now();
                    let result = part.compute(&cancel).expect("never cancelled");
                    let took = started.elapsed();
                    PartReply {
                        result,
                        send: Duration::ZERO,
                        round_trip: took,
                        compute: took,
                    }
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("a kernel thread panicked"))
            .collect()
    })
}

/// One server of the list and what the job has learnt about it.
struct Slot {
    address: String,
    /// The open connection; replaced when it breaks and the server is needed again.
    connection: tokio::sync::Mutex<Option<Arc<ServerConnection>>>,
    connect_time: Mutex<Option<Duration>>,
    workers: AtomicU32,
    failure: Mutex<Option<String>>,
    /// Set when connecting failed; the server is not tried again in this job.
    connect_error: Mutex<Option<ServerError>>,
    tried: std::sync::atomic::AtomicBool,
}

impl Slot {
    fn new(address: &str) -> Slot {
        Slot {
            address: address.to_string(),
            connection: tokio::sync::Mutex::new(None),
            connect_time: Mutex::new(None),
            workers: AtomicU32::new(0),
            failure: Mutex::new(None),
            connect_error: Mutex::new(None),
            tried: Default::default(),
        }
    }

    fn failure(&self) -> Option<String> {
        self.failure.lock().expect("slot lock poisoned").clone()
    }

    fn is_healthy(&self) -> bool {
        self.failure.lock().expect("slot lock poisoned").is_none()
    }

    fn was_tried(&self) -> bool {
        self.tried.load(Ordering::Relaxed)
    }

    fn record(&self) -> ServerRecord {
        ServerRecord {
            address: self.address.clone(),
            workers: self.workers.load(Ordering::Relaxed),
            connect: *self.connect_time.lock().expect("slot lock poisoned"),
            failure: self.failure(),
        }
    }
}

struct Pool<'a> {
    slots: Vec<Slot>,
    /// Draws the servers for retries.
    rng: Mutex<StdRng>,
    options: &'a ConnectOptions,
    max_attempts: u32,
    /// When the pool run started, for each part's start offset.
    started: Instant,
    observer: &'a dyn PoolObserver,
}

impl Pool<'_> {
    /// Runs one part, moving it to another server after each failure. Returns the
    /// failed attempts if all of them failed.
    async fn run_part(
        &self,
        part: &Part,
        first_server: usize,
    ) -> Result<PartRecord, Vec<FailedAttempt>> {
        let mut server = first_server;
        let mut failed_attempts = Vec::new();
        for attempt in 1..=self.max_attempts {
            let start = self.started.elapsed();
            match self.attempt(part, server).await {
                Ok(reply) => {
                    let address = &self.slots[server].address;
                    self.observer.part_done(address);
                    // Part ids are per connection; the part's index stands in for its
                    // id, which encodes to about the same size.
                    let id = part.index as u64;
                    let compute_nanos = reply.compute.as_nanos() as u64;
                    let received =
                        result_frames(id, reply.result.clone(), compute_nanos).unwrap_or_default();
                    return Ok(PartRecord {
                        part: part.index,
                        computed_by: ComputedBy::Server(address.clone()),
                        failed_attempts,
                        start,
                        bytes_sent: frames_len(part_frames(id, &part.task, &part.input)),
                        bytes_received: frames_len(&received),
                        reply,
                    });
                }
                Err(error) => {
                    tracing::info!(part = part.index, attempt, %error, "attempt failed");
                    *self.slots[server]
                        .failure
                        .lock()
                        .expect("slot lock poisoned") = Some(error.to_string());
                    failed_attempts.push(FailedAttempt {
                        server: self.slots[server].address.clone(),
                        error: error.to_string(),
                    });
                    server = self.next_server(server);
                }
            }
        }
        Err(failed_attempts)
    }

    async fn attempt(&self, part: &Part, server: usize) -> Result<PartReply, ServerError> {
        let connection = self.connection(server).await?;
        let bytes = part.task.input_bytes().unwrap_or(0);
        connection
            .run_part_with(part, || {
                self.observer.part_sent(connection.address(), bytes)
            })
            .await
    }

    /// The server's connection, opened (or reopened, if it broke) on demand. Parts
    /// asking at the same time share one connection attempt.
    async fn connection(&self, server: usize) -> Result<Arc<ServerConnection>, ServerError> {
        let slot = &self.slots[server];
        slot.tried.store(true, Ordering::Relaxed);
        let mut connection = slot.connection.lock().await;
        if let Some(open) = connection.as_ref().filter(|c| !c.is_broken()) {
            return Ok(Arc::clone(open));
        }
        // A server that could not be connected to is not tried again in this job, so
        // the parts queued behind a dead or unresponsive server fail over at once
        // instead of each waiting out its own connect timeout.
        if let Some(error) = slot
            .connect_error
            .lock()
            .expect("slot lock poisoned")
            .clone()
        {
            return Err(error);
        }
        let started = Instant::now();
        let opened = match ServerConnection::connect(&slot.address, self.options).await {
            Ok(opened) => Arc::new(opened),
            Err(error) => {
                *slot.connect_error.lock().expect("slot lock poisoned") = Some(error.clone());
                return Err(error);
            }
        };
        slot.connect_time
            .lock()
            .expect("slot lock poisoned")
            .get_or_insert(started.elapsed());
        slot.workers
            .store(opened.welcome().workers, Ordering::Relaxed);
        *connection = Some(Arc::clone(&opened));
        Ok(opened)
    }

    /// A server for a part's next attempt: a random healthy one other than the one that
    /// just failed; else any other; else the same.
    fn next_server(&self, failed: usize) -> usize {
        let healthy: Vec<usize> = (0..self.slots.len())
            .filter(|&s| s != failed && self.slots[s].is_healthy())
            .collect();
        let others: Vec<usize> = (0..self.slots.len()).filter(|&s| s != failed).collect();
        let mut rng = self.rng.lock().expect("rng lock poisoned");
        healthy
            .choose(&mut *rng)
            .or_else(|| others.choose(&mut *rng))
            .copied()
            .unwrap_or(failed)
    }
}
