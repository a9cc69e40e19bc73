//! The pool mode: parts to servers, failures survived, stragglers copied, results
//! gathered.
//!
//! One connection per server is opened and shared by every part sent there. How parts
//! reach the servers is the job file's `schedule`:
//!
//! * **dynamic** (the default): each server holds at most its slots (its workers, or
//!   the weight written in the list) plus a few read-ahead parts ([`read_ahead`]: one,
//!   or for parts shorter than a round trip, enough to cover it), and the next part
//!   goes out as soon as one of them is done, to the server the `placement` policy
//!   picks among those with a free slot. Fast servers thus take more parts than slow
//!   ones.
//! * **static**: every part is dealt at the start, as in the original paper, and the
//!   job waits for the slowest server.
//!
//! When an attempt fails (the server refuses, resets, times out or reports an error),
//! the server is avoided for the rest of the job while healthy ones are left, and the
//! part is sent again elsewhere; parts that fail `max_attempts` times are computed
//! locally if the job file says `fallback = "local"`, and otherwise fail the job with
//! what happened on each server.
//!
//! Under the dynamic schedule two more mechanisms keep one server from holding the job
//! back ([`Scheduling::speculate`]):
//!
//! * **speculation**: once no part is left to hand out, a part that has run much
//!   longer than parts of its size took on the other servers gets a copy on an idle
//!   server;
//! * **liveness**: every server is asked for its status each [`PROBE_INTERVAL`] (which
//!   also feeds `least-loaded` placement); one that holds parts and leaves a request
//!   unanswered for `liveness_timeout` is suspect: it gets no new parts, and its parts
//!   get copies at once.
//!
//! The first result of a part wins, the other copy is cancelled by id, and the result
//! is counted once; the report shows the server time the losing copies cost.

use std::collections::{BTreeMap, VecDeque};
use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use futures::stream::FuturesUnordered;
use futures::{FutureExt, StreamExt};
use pool_common::jobfile::{Fallback, JobFile, Placement, Schedule, ServerEntry};
use pool_common::jobs::{combine_all, CancelFlag, JobInputs, Part, PartResult};
use pool_common::protocol::ServerStatus;
use pool_common::text::counted;
use pool_common::wire::{frames_len, part_frames, result_frames};
use rand::rngs::StdRng;
use rand::seq::IndexedRandom;
use rand::SeedableRng;
use tokio::sync::oneshot;

use crate::connection::{ConnectOptions, PartReply, ServerConnection, ServerError};
use crate::membership::ServerUpdates;
use crate::placement::{Choice, Placer};
use crate::progress::{NoProgress, PoolObserver};

/// Parts a server may hold beyond its slots under the dynamic schedule: the next part
/// is already there when a worker frees up, so no server idles for a round trip.
pub const READ_AHEAD: usize = 1;

/// The most parts a server may hold beyond its slots, however short the parts.
const MAX_READ_AHEAD: usize = 64;

/// Parts a server should hold beyond its slots so that its workers never wait for the
/// next part: enough to cover what a round trip adds to a part's compute
/// (`overhead_nanos`: the least it has added on this server) with parts of
/// `compute_nanos` each (as fast as its answered parts were), between [`READ_AHEAD`]
/// and [`MAX_READ_AHEAD`]; [`READ_AHEAD`] until the server has answered. Parts that
/// take longer than a round trip get [`READ_AHEAD`], so balance between servers is
/// not traded for anything; tiny parts get many, so a server does not compute one
/// and then wait a round trip for the next.
pub fn read_ahead(overhead_nanos: Option<f64>, compute_nanos: Option<f64>) -> usize {
    match (overhead_nanos, compute_nanos) {
        (Some(overhead), Some(compute)) => {
            let parts = (overhead / compute.max(1.0)).ceil();
            (parts as usize).clamp(READ_AHEAD, MAX_READ_AHEAD)
        }
        _ => READ_AHEAD,
    }
}

/// How often each server is asked for its status while a job runs.
pub const PROBE_INTERVAL: Duration = Duration::from_secs(1);

/// How often stragglers are looked for.
const SPECULATION_CHECK: Duration = Duration::from_millis(50);

/// A part is a straggler once it has run this many times the time parts of its size
/// took on the servers that answered...
const STRAGGLER_FACTOR: f64 = 1.5;

/// ...and at least this much longer, so that tiny parts with noisy timings are not
/// copied for nothing.
const STRAGGLER_SLACK: Duration = Duration::from_millis(50);

/// How the pool hands parts to servers: the job file's `schedule`, `placement`,
/// `speculate` and `liveness_timeout`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Scheduling {
    /// When parts go out.
    pub schedule: Schedule,
    /// Which server each part goes to.
    pub placement: Placement,
    /// Whether stragglers and the parts of unresponsive servers get copies.
    pub speculate: bool,
    /// How long a server holding parts may leave a status request unanswered.
    pub liveness_timeout: Duration,
}

impl Scheduling {
    /// What a job file asks for.
    pub fn from_job_file(job_file: &JobFile) -> Scheduling {
        Scheduling {
            schedule: job_file.schedule,
            placement: job_file.placement,
            speculate: job_file.speculate,
            liveness_timeout: job_file.client.liveness_timeout,
        }
    }
}

impl Default for Scheduling {
    /// The job file's defaults.
    fn default() -> Self {
        Scheduling {
            schedule: Schedule::default(),
            placement: Placement::default(),
            speculate: true,
            liveness_timeout: pool_common::jobfile::ClientSettings::default().liveness_timeout,
        }
    }
}

/// Why an attempt at a part was made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttemptKind {
    /// The part's first attempt.
    First,
    /// After an attempt failed.
    Retry,
    /// A copy of a part still running elsewhere, whose server was slow or silent.
    Copy,
}

impl AttemptKind {
    /// A word for logs and charts.
    pub fn name(self) -> &'static str {
        match self {
            AttemptKind::First => "first",
            AttemptKind::Retry => "retry",
            AttemptKind::Copy => "copy",
        }
    }
}

/// How an attempt ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AttemptOutcome {
    /// Its result is the part's result.
    Won,
    /// It failed, for this reason (the message names the server).
    Failed(String),
    /// Another attempt at the part answered first: this one was cancelled, or its
    /// result arrived late and was dropped. While both ran, the part's server time
    /// was spent twice.
    Lost,
}

impl AttemptOutcome {
    /// A word for logs and charts: `won`, `failed` or `lost`.
    pub fn name(&self) -> &'static str {
        match self {
            AttemptOutcome::Won => "won",
            AttemptOutcome::Failed(_) => "failed",
            AttemptOutcome::Lost => "lost",
        }
    }
}

/// One attempt at a part on a server.
#[derive(Debug, Clone)]
pub struct AttemptRecord {
    /// The server tried.
    pub server: String,
    /// Why this attempt was made.
    pub kind: AttemptKind,
    /// Why this server: the placement policy's reason, or what made the copy.
    pub reason: String,
    /// When sending began, from the start of the pool run (client clock).
    pub start: Duration,
    /// When it ended (answered, failed or cancelled), on the same clock.
    pub end: Duration,
    /// How it ended.
    pub outcome: AttemptOutcome,
}

impl AttemptRecord {
    /// Why it failed, if it did.
    pub fn error(&self) -> Option<&str> {
        match &self.outcome {
            AttemptOutcome::Failed(error) => Some(error),
            _ => None,
        }
    }

    /// From its start to its end.
    pub fn duration(&self) -> Duration {
        self.end.saturating_sub(self.start)
    }
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
    /// Every attempt on a server, in the order they started; the one that counted is
    /// [`AttemptOutcome::Won`] (none is, for a part computed by the local fallback).
    pub attempts: Vec<AttemptRecord>,
    /// When sending began on the attempt that counted, from the start of the pool run
    /// (client clock).
    pub start: Duration,
    /// Bytes sent for the part on the attempt that counted: its request and data frames.
    pub bytes_sent: u64,
    /// Bytes of the server's reply.
    pub bytes_received: u64,
}

impl PartRecord {
    /// The number of the attempt that counted, from 1, in the order attempts started.
    pub fn attempt(&self) -> usize {
        self.attempts
            .iter()
            .position(|a| a.outcome == AttemptOutcome::Won)
            .unwrap_or(self.attempts.len())
            + 1
    }

    /// The attempts that failed, in order.
    pub fn failed_attempts(&self) -> impl Iterator<Item = &AttemptRecord> {
        self.attempts
            .iter()
            .filter(|a| matches!(a.outcome, AttemptOutcome::Failed(_)))
    }

    /// The time its lost attempts ran beside its winning one (see
    /// [`PoolRun::time_spent_twice`]).
    pub fn time_spent_twice(&self) -> Duration {
        let Some(won) = self
            .attempts
            .iter()
            .find(|a| a.outcome == AttemptOutcome::Won)
        else {
            return Duration::ZERO;
        };
        self.attempts
            .iter()
            .filter(|a| a.outcome == AttemptOutcome::Lost)
            .map(|lost| {
                lost.end
                    .min(won.end)
                    .saturating_sub(lost.start.max(won.start))
            })
            .sum()
    }
}

/// One server's share of a pool run.
#[derive(Debug, Clone)]
pub struct ServerRecord {
    /// The server's address.
    pub address: String,
    /// Worker threads the server reported (0 if it never answered).
    pub workers: u32,
    /// Parts it could compute at once, for placement: the weight in the server list,
    /// or else its workers.
    pub slots: u32,
    /// Time to connect and complete the handshake, if it ever did.
    pub connect: Option<Duration>,
    /// The last failure seen on this server, if any.
    pub failure: Option<String>,
    /// Whether it ever left a status request unanswered past the liveness timeout
    /// while holding parts.
    pub suspected: bool,
    /// The last status it reported during the run.
    pub status: Option<ServerStatus>,
    /// The job's shared inputs shipped to it, if the job has any and it was connected.
    pub shared: Option<ShareRecord>,
    /// When it joined the server list, from the start of the run, if it joined during
    /// the run.
    pub joined: Option<Duration>,
    /// When it left the server list, from the start of the run, if it did.
    pub left: Option<Duration>,
}

/// The job's shared inputs shipped to one server: once per connection, before its
/// first part (again only if the connection broke and was opened anew).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ShareRecord {
    /// When shipping began, from the start of the pool run.
    pub start: Duration,
    /// Time spent writing them, summed over connections.
    pub duration: Duration,
    /// Bytes written, frames included, summed over connections.
    pub bytes: u64,
}

/// The outcome of running a job's parts on the pool.
#[derive(Debug, Clone)]
pub struct PoolRun {
    /// The combined result.
    pub result: PartResult,
    /// From the first connection attempt to the last result (client clock).
    pub elapsed: Duration,
    /// How parts were handed out.
    pub scheduling: Scheduling,
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

    /// The parts that needed more than one attempt because one failed.
    pub fn retried(&self) -> impl Iterator<Item = &PartRecord> {
        self.parts
            .iter()
            .filter(|p| p.failed_attempts().next().is_some())
    }

    /// Every attempt that lost the race to another copy of its part.
    pub fn lost_attempts(&self) -> impl Iterator<Item = &AttemptRecord> {
        self.parts
            .iter()
            .flat_map(|p| &p.attempts)
            .filter(|a| a.outcome == AttemptOutcome::Lost)
    }

    /// Server time spent twice on a part: the price of speculation. For each attempt
    /// that lost, the time it ran beside the attempt that won; what it ran before the
    /// winner began (a part on a server that went silent, waiting for its copy) was
    /// the part's only attempt then, and is not counted. So this never exceeds the
    /// winning copies' time, nor the servers' slots times the run.
    pub fn time_spent_twice(&self) -> Duration {
        self.parts.iter().map(PartRecord::time_spent_twice).sum()
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
            "{} of the job's parts failed on every server tried ({} each); the servers:",
            self.failed_parts.len(),
            counted(self.attempts as usize, "attempt", "attempts")
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

/// Runs `parts` on `servers` as `scheduling` says, drawing every random choice from
/// `rng`, and surviving failures as `policy` says.
pub async fn run_pool(
    parts: &[Part],
    servers: &[ServerEntry],
    scheduling: &Scheduling,
    rng: &mut StdRng,
    options: &ConnectOptions,
    policy: FaultPolicy,
) -> Result<PoolRun, PoolError> {
    run_pool_observed(
        parts,
        servers,
        None,
        scheduling,
        rng,
        options,
        policy,
        &NoProgress,
    )
    .await
}

/// [`run_pool`], telling `observer` where parts go and when each is sent and done.
/// With `updates`, servers that join the list during the run get parts (under the
/// dynamic schedule) and servers that leave it get no new ones; `servers` is then the
/// list as it was when the run began.
#[allow(clippy::too_many_arguments)]
pub async fn run_pool_observed(
    parts: &[Part],
    servers: &[ServerEntry],
    updates: Option<ServerUpdates>,
    scheduling: &Scheduling,
    rng: &mut StdRng,
    options: &ConnectOptions,
    policy: FaultPolicy,
    observer: &dyn PoolObserver,
) -> Result<PoolRun, PoolError> {
    assert!(!servers.is_empty(), "no servers to run parts on");
    let started = Instant::now();
    let pool = Pool {
        options,
        started,
        observer,
        shared: parts
            .first()
            .map(|part| Arc::clone(&part.shared))
            .unwrap_or_default(),
    };
    let mut rng = StdRng::from_rng(rng);
    let placer = Placer::new(scheduling.placement, servers.len(), &mut rng);
    let mut run = Scheduler {
        pool: &pool,
        parts,
        scheduling: *scheduling,
        max_attempts: policy.max_attempts.max(1),
        rng,
        placer,
        slots: servers.iter().map(|s| Arc::new(Slot::new(s))).collect(),
        updates,
        servers: (0..servers.len()).map(|_| ServerState::default()).collect(),
        states: (0..parts.len()).map(|_| PartState::default()).collect(),
        settled_before: 0,
        pending: VecDeque::new(),
        copies: VecDeque::new(),
        next_attempt: 0,
        attempts: FuturesUnordered::new(),
        connects: FuturesUnordered::new(),
        probes: FuturesUnordered::new(),
    };
    run.run().await;
    let Scheduler {
        states,
        servers,
        slots,
        ..
    } = run;

    let mut records = Vec::with_capacity(parts.len());
    let mut failed = Vec::new();
    for (part, state) in parts.iter().zip(states) {
        match state.record {
            Some(record) => records.push(PartRecord {
                attempts: state.finished,
                ..record
            }),
            None => failed.push((part, state.finished)),
        }
    }
    if !failed.is_empty() {
        if policy.fallback != Fallback::Local {
            return Err(PoolError {
                failed_parts: failed.iter().map(|(part, _)| part.index).collect(),
                servers: slots
                    .iter()
                    .filter(|s| s.was_tried())
                    .map(|s| (s.address.clone(), s.failure()))
                    .collect(),
                attempts: policy.max_attempts.max(1),
            });
        }
        let fallback_parts: Vec<Part> = failed.iter().map(|(part, _)| (*part).clone()).collect();
        let fallback_start = started.elapsed();
        let computed = tokio::task::spawn_blocking(move || compute_locally(&fallback_parts))
            .await
            .expect("local fallback computation panicked");
        for ((part, attempts), reply) in failed.into_iter().zip(computed) {
            records.push(PartRecord {
                part: part.index,
                computed_by: ComputedBy::LocalFallback,
                reply,
                attempts,
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
        scheduling: *scheduling,
        parts: records,
        servers: slots
            .iter()
            .zip(&servers)
            .filter(|(slot, _)| slot.was_tried())
            .map(|(slot, state)| slot.record(state))
            .collect(),
    })
}

/// The next list of servers from `updates`, if there are updates; pending for ever
/// if there are none or their sender is gone.
async fn next_list(updates: &mut Option<ServerUpdates>) -> Option<Vec<ServerEntry>> {
    if let Some(receiver) = updates {
        if receiver.changed().await.is_ok() {
            return Some(receiver.borrow_and_update().clone());
        }
    }
    std::future::pending().await
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

/// One server of the list and its connection, shared with the attempts in flight.
struct Slot {
    address: String,
    /// The weight written in the server list, if any.
    listed_slots: Option<u32>,
    /// The open connection; replaced when it breaks and the server is needed again.
    connection: tokio::sync::Mutex<Option<Arc<ServerConnection>>>,
    connect_time: Mutex<Option<Duration>>,
    workers: AtomicU32,
    failure: Mutex<Option<String>>,
    /// Set when connecting failed; the server is not tried again in this job.
    connect_error: Mutex<Option<ServerError>>,
    tried: AtomicBool,
    shared: Mutex<Option<ShareRecord>>,
}

impl Slot {
    fn new(entry: &ServerEntry) -> Slot {
        Slot {
            address: entry.address.clone(),
            listed_slots: entry.slots,
            connection: tokio::sync::Mutex::new(None),
            connect_time: Mutex::new(None),
            workers: AtomicU32::new(0),
            failure: Mutex::new(None),
            connect_error: Mutex::new(None),
            tried: AtomicBool::new(false),
            shared: Mutex::new(None),
        }
    }

    fn failure(&self) -> Option<String> {
        self.failure.lock().expect("slot lock poisoned").clone()
    }

    fn set_failure(&self, failure: Option<String>) {
        *self.failure.lock().expect("slot lock poisoned") = failure;
    }

    fn is_healthy(&self) -> bool {
        self.failure.lock().expect("slot lock poisoned").is_none()
    }

    fn was_tried(&self) -> bool {
        self.tried.load(Ordering::Relaxed)
    }

    /// Parts the server computes at once: its weight in the list, else the workers it
    /// reported (1 until it has).
    fn slots(&self) -> u32 {
        self.listed_slots
            .unwrap_or_else(|| self.workers.load(Ordering::Relaxed))
            .max(1)
    }

    /// The server's connection if it is open and nobody is opening it right now.
    fn open_connection(&self) -> Option<Arc<ServerConnection>> {
        let connection = self.connection.try_lock().ok()?;
        connection.as_ref().filter(|c| !c.is_broken()).cloned()
    }

    fn record(&self, state: &ServerState) -> ServerRecord {
        ServerRecord {
            address: self.address.clone(),
            workers: self.workers.load(Ordering::Relaxed),
            slots: self.slots(),
            connect: *self.connect_time.lock().expect("slot lock poisoned"),
            shared: *self.shared.lock().expect("slot lock poisoned"),
            failure: self.failure(),
            suspected: state.suspected,
            status: state.status.clone(),
            joined: state.joined,
            left: state.left,
        }
    }
}

/// What the attempts in flight share: how to reach the servers.
struct Pool<'a> {
    options: &'a ConnectOptions,
    /// When the pool run started, for each attempt's start and end.
    started: Instant,
    observer: &'a dyn PoolObserver,
    /// The job's shared inputs, shipped on every connection before its first part.
    shared: Arc<JobInputs>,
}

impl Pool<'_> {
    async fn attempt(&self, part: &Part, slot: &Slot) -> Result<PartReply, ServerError> {
        let connection = self.connection(slot).await?;
        let bytes = part.task.input_bytes().unwrap_or(0);
        connection
            .run_part_with(part, || {
                self.observer.part_sent(connection.address(), bytes)
            })
            .await
    }

    /// The server's connection, opened (or reopened, if it broke) on demand. Parts
    /// asking at the same time share one connection attempt.
    async fn connection(&self, slot: &Slot) -> Result<Arc<ServerConnection>, ServerError> {
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
        let remember = |error: ServerError| {
            *slot.connect_error.lock().expect("slot lock poisoned") = Some(error.clone());
            error
        };
        let started = Instant::now();
        let opened = Arc::new(
            ServerConnection::connect(&slot.address, self.options)
                .await
                .map_err(remember)?,
        );
        // Answered already: connecting waited for the welcome, which tells how many
        // parts the server takes at once.
        let welcome = opened.welcome().await.map_err(remember)?;
        slot.connect_time
            .lock()
            .expect("slot lock poisoned")
            .get_or_insert(started.elapsed());
        // The lock on the slot's connection is held until the shares are out, so no
        // part goes ahead of them.
        if !self.shared.inputs().is_empty() {
            let start = self.started.elapsed();
            let sharing = Instant::now();
            let bytes = opened.share(&self.shared).await.map_err(remember)?;
            let mut record = slot.shared.lock().expect("slot lock poisoned");
            let record = record.get_or_insert(ShareRecord {
                start,
                duration: Duration::ZERO,
                bytes: 0,
            });
            record.duration += sharing.elapsed();
            record.bytes += bytes;
        }
        slot.workers.store(welcome.workers, Ordering::Relaxed);
        *connection = Some(Arc::clone(&opened));
        Ok(opened)
    }
}

/// What the scheduler knows of one server during a run.
#[derive(Default)]
struct ServerState {
    /// Connected (under the dynamic schedule, a server takes parts only once it is).
    connected: bool,
    /// Its first connection is being opened.
    connecting: bool,
    /// Attempts in flight there, by id (so the first is the oldest): when each was sent
    /// and its work items.
    in_flight: BTreeMap<u64, (Instant, u64)>,
    /// Nanoseconds per work item its answered parts took (a moving average).
    nanos_per_item: Option<f64>,
    /// The least a round trip to it has added to a part's compute, in nanoseconds:
    /// the network and the per-part cost, without waiting in its queue.
    overhead_nanos: Option<f64>,
    /// Its last status reply.
    status: Option<ServerStatus>,
    /// A status request is waiting for its answer.
    probing: bool,
    /// When it was last asked for its status.
    last_probe: Option<Instant>,
    /// It left a status request unanswered past the liveness timeout, and has not
    /// answered one since.
    suspect: bool,
    /// It was suspect at some point of the run.
    suspected: bool,
    /// When it last ended an attempt (answered or failed).
    last_answer: Option<Instant>,
    /// When it joined the list, from the start of the run, if it was not there then.
    joined: Option<Duration>,
    /// When it left the list, from the start of the run, if it has (it then gets no
    /// new parts; those it holds may finish), or said it was shutting down.
    left: Option<Duration>,
    /// It said it was shutting down: it stays gone, whatever the list says.
    shutting_down: bool,
}

impl ServerState {
    fn running(&self) -> usize {
        self.in_flight.len()
    }
}

/// An attempt in flight.
struct Running {
    id: u64,
    server: usize,
    kind: AttemptKind,
    reason: String,
    start: Duration,
    /// Dropped or fired to cancel the attempt.
    cancel: oneshot::Sender<()>,
}

impl Running {
    /// The attempt's record, ended at `end` with `outcome`.
    fn record(&self, server: &str, end: Duration, outcome: AttemptOutcome) -> AttemptRecord {
        AttemptRecord {
            server: server.to_string(),
            kind: self.kind,
            reason: self.reason.clone(),
            start: self.start,
            end,
            outcome,
        }
    }
}

/// What the scheduler knows of one part.
#[derive(Default)]
struct PartState {
    running: Vec<Running>,
    /// Attempts that have ended, in the order they started.
    finished: Vec<AttemptRecord>,
    failures: u32,
    /// Its result, once one attempt has won.
    record: Option<PartRecord>,
    /// Every attempt it was allowed has failed.
    given_up: bool,
}

impl PartState {
    fn settled(&self) -> bool {
        self.record.is_some() || self.given_up
    }

    /// Files an ended attempt in start order.
    fn file(&mut self, record: AttemptRecord) {
        let at = self.finished.partition_point(|a| a.start <= record.start);
        self.finished.insert(at, record);
    }
}

/// An attempt that has ended: `None` if it was cancelled.
struct Ended {
    part: usize,
    id: u64,
    outcome: Option<Result<PartReply, ServerError>>,
}

/// A server's answer to a status probe: `None` if it gave none in time.
type ProbeAnswer = Result<Option<ServerStatus>, ServerError>;

/// Hands out parts, reacts to their answers, and watches the servers; one per run.
struct Scheduler<'a> {
    pool: &'a Pool<'a>,
    parts: &'a [Part],
    scheduling: Scheduling,
    max_attempts: u32,
    rng: StdRng,
    placer: Placer,
    /// The servers, in the order they were listed or joined.
    slots: Vec<Arc<Slot>>,
    /// Servers joining and leaving during the run, if the list can change.
    updates: Option<ServerUpdates>,
    servers: Vec<ServerState>,
    states: Vec<PartState>,
    /// Every part before this index is settled (see [`Scheduler::all_settled`]).
    settled_before: usize,
    /// Parts waiting for their first attempt or a retry, in order.
    pending: VecDeque<(usize, AttemptKind)>,
    /// Parts waiting for a copy, with what made it.
    copies: VecDeque<(usize, String)>,
    next_attempt: u64,
    attempts: FuturesUnordered<BoxFuture<'a, Ended>>,
    connects: FuturesUnordered<BoxFuture<'a, (usize, Result<(), ServerError>)>>,
    probes: FuturesUnordered<BoxFuture<'a, (usize, ProbeAnswer)>>,
}

impl<'a> Scheduler<'a> {
    async fn run(&mut self) {
        match self.scheduling.schedule {
            Schedule::Static => self.deal(),
            Schedule::Dynamic => {
                self.pending
                    .extend((0..self.parts.len()).map(|p| (p, AttemptKind::First)));
                self.pool.observer.placed(
                    &self
                        .slots
                        .iter()
                        .map(|s| (s.address.clone(), None))
                        .collect::<Vec<_>>(),
                );
                for server in 0..self.slots.len() {
                    self.connect(server);
                }
            }
        }
        let mut tick = tokio::time::interval(SPECULATION_CHECK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            self.hand_out();
            if self.all_settled() {
                return;
            }
            tokio::select! {
                Some(ended) = self.attempts.next(), if !self.attempts.is_empty() => {
                    self.ended(ended);
                }
                Some((server, result)) = self.connects.next(), if !self.connects.is_empty() => {
                    let state = &mut self.servers[server];
                    state.connecting = false;
                    match result {
                        Ok(()) => state.connected = true,
                        Err(error) => self.slots[server].set_failure(Some(error.to_string())),
                    }
                }
                Some((server, answer)) = self.probes.next(), if !self.probes.is_empty() => {
                    self.probed(server, answer);
                }
                Some(servers) = next_list(&mut self.updates) => {
                    self.servers_changed(servers);
                }
                _ = tick.tick() => {
                    if self.scheduling.schedule == Schedule::Dynamic {
                        self.probe_servers();
                        if self.scheduling.speculate {
                            self.find_stragglers();
                        }
                    }
                }
            }
        }
    }

    /// Whether every part is settled. A part settles for good, so the parts known to
    /// be are not looked at again: checked after every event, a scan of every part
    /// made a job of 10,000 tiny parts quadratic.
    fn all_settled(&mut self) -> bool {
        while self
            .states
            .get(self.settled_before)
            .is_some_and(PartState::settled)
        {
            self.settled_before += 1;
        }
        self.settled_before == self.states.len()
    }

    /// Opens the connection to `server`, which takes parts once it is open (the
    /// dynamic schedule).
    fn connect(&mut self, server: usize) {
        self.servers[server].connecting = true;
        // Tried from now on, whether or not its connection is polled before the last
        // part is done (a busy run's first servers can finish everything first).
        self.slots[server].tried.store(true, Ordering::Relaxed);
        let (pool, slot) = (self.pool, Arc::clone(&self.slots[server]));
        self.connects
            .push(async move { (server, pool.connection(&slot).await.map(|_| ())) }.boxed());
    }

    /// Takes in the servers' list as it now is: a server new to it joins (under the
    /// dynamic schedule it is connected to and gets parts like the others; under the
    /// static one, only retries), and one no longer in it leaves: it gets no new part,
    /// and the parts it holds may finish there.
    fn servers_changed(&mut self, listed: Vec<ServerEntry>) {
        let now = self.pool.started.elapsed();
        for (server, slot) in self.slots.iter().enumerate() {
            let state = &mut self.servers[server];
            let listed = listed.iter().any(|e| e.address == slot.address);
            if !listed && state.left.is_none() {
                tracing::info!(server = %slot.address, "left the server list: no new parts");
                state.left = Some(now);
            } else if listed && state.left.is_some() && !state.shutting_down {
                tracing::info!(server = %slot.address, "back in the server list");
                state.left = None;
            }
        }
        for entry in listed {
            if self.slots.iter().any(|s| s.address == entry.address) {
                continue;
            }
            tracing::info!(server = %entry.address, "joined the server list");
            let server = self.slots.len();
            self.slots.push(Arc::new(Slot::new(&entry)));
            self.servers.push(ServerState {
                joined: Some(now),
                ..ServerState::default()
            });
            self.placer.add_server(server);
            if self.scheduling.schedule == Schedule::Dynamic {
                self.pool.observer.placed(&[(entry.address, None)]);
                self.connect(server);
            }
        }
    }

    /// The static schedule: every part's first attempt goes out now, to the server the
    /// policy dealt it.
    fn deal(&mut self) {
        let slots: Vec<u32> = self.slots.iter().map(|s| s.slots()).collect();
        let dealt = self.placer.deal(self.parts.len(), &slots, &mut self.rng);
        let mut counts = vec![0usize; slots.len()];
        for choice in &dealt {
            counts[choice.server] += 1;
        }
        self.pool.observer.placed(
            &self
                .slots
                .iter()
                .zip(counts)
                .filter(|(_, n)| *n > 0)
                .map(|(s, n)| (s.address.clone(), Some(n)))
                .collect::<Vec<_>>(),
        );
        for (part, choice) in dealt.into_iter().enumerate() {
            self.launch(part, AttemptKind::First, choice);
        }
    }

    /// Sends waiting copies and parts to servers with a free slot (dynamic schedule),
    /// and retries at once (static schedule).
    fn hand_out(&mut self) {
        if self.scheduling.schedule == Schedule::Static {
            while let Some((part, kind)) = self.pending.pop_front() {
                let choice = self.retry_server(part);
                self.launch(part, kind, choice);
            }
            return;
        }
        while let Some((part, reason)) = self.copies.front().cloned() {
            let state = &self.states[part];
            if state.settled() || state.running.len() != 1 {
                self.copies.pop_front();
                continue;
            }
            let held_by = state.running[0].server;
            let candidates: Vec<usize> = self
                .candidates(part)
                .into_iter()
                .filter(|&s| s != held_by)
                .collect();
            let Some(choice) = self.choose(part, &candidates) else {
                break;
            };
            self.copies.pop_front();
            let choice = Choice {
                server: choice.server,
                reason: format!("{reason}; {}", choice.reason),
            };
            self.launch(part, AttemptKind::Copy, choice);
        }
        while let Some(&(part, kind)) = self.pending.front() {
            if self.states[part].settled() {
                self.pending.pop_front();
                continue;
            }
            let mut candidates = self.candidates(part);
            // A retry goes elsewhere than where the part failed, if it can.
            let fresh: Vec<usize> = candidates
                .iter()
                .copied()
                .filter(|&s| {
                    !self.states[part]
                        .finished
                        .iter()
                        .any(|a| a.server == self.slots[s].address)
                })
                .collect();
            if !fresh.is_empty() {
                candidates = fresh;
            }
            let Some(choice) = self.choose(part, &candidates) else {
                break;
            };
            self.pending.pop_front();
            self.launch(part, kind, choice);
        }
    }

    /// Servers that may take `part` now: connected, healthy, not suspect, with a free
    /// worker slot; or, when no server has one and none is still connecting, a free
    /// read-ahead slot (so a few parts are not piled on the first server to answer).
    /// When no healthy server is left, the failed ones are tried again (an attempt on
    /// a server that cannot be reached fails at once).
    fn candidates(&self, part: usize) -> Vec<usize> {
        let listed = |s: &usize| self.servers[*s].left.is_none();
        let any_healthy = (0..self.servers.len()).filter(listed).any(|s| {
            self.slots[s].is_healthy() && (self.servers[s].connected || self.servers[s].connecting)
        });
        let usable: Vec<usize> = (0..self.servers.len())
            .filter(listed)
            .filter(|&s| !self.servers[s].suspect)
            .filter(|&s| {
                if any_healthy {
                    self.servers[s].connected && self.slots[s].is_healthy()
                } else {
                    !self.servers[s].connecting
                }
            })
            .collect();
        let with_room = |extra: &dyn Fn(usize) -> usize| -> Vec<usize> {
            usable
                .iter()
                .copied()
                .filter(|&s| self.servers[s].running() < self.slots[s].slots() as usize + extra(s))
                .collect()
        };
        let workers_free = with_room(&|_| 0);
        if !workers_free.is_empty() || self.servers.iter().any(|s| s.connecting) {
            return workers_free;
        }
        let items = self.parts[part].task.work_items().max(1) as f64;
        with_room(&|s| {
            let server = &self.servers[s];
            read_ahead(
                server.overhead_nanos,
                server.nanos_per_item.map(|rate| items * rate),
            )
        })
    }

    fn choose(&mut self, part: usize, candidates: &[usize]) -> Option<Choice> {
        let items = self.parts[part].task.work_items().max(1) as f64;
        let estimates: Vec<f64> = (0..self.servers.len())
            .map(|s| self.finish_estimate(s, items))
            .collect();
        self.placer
            .choose(candidates, |s| estimates[s], &mut self.rng)
    }

    /// A static retry: a random healthy server other than the ones the part failed
    /// on; else any other; else the same.
    fn retry_server(&mut self, part: usize) -> Choice {
        let tried: Vec<&str> = self.states[part]
            .finished
            .iter()
            .map(|a| a.server.as_str())
            .collect();
        let untried = |s: &usize| {
            !tried.contains(&self.slots[*s].address.as_str()) && self.servers[*s].left.is_none()
        };
        let all: Vec<usize> = (0..self.slots.len()).collect();
        let healthy: Vec<usize> = all
            .iter()
            .copied()
            .filter(|s| untried(s) && self.slots[*s].is_healthy())
            .collect();
        let others: Vec<usize> = all.iter().copied().filter(untried).collect();
        let server = healthy
            .choose(&mut self.rng)
            .or_else(|| others.choose(&mut self.rng))
            .or_else(|| all.choose(&mut self.rng))
            .copied()
            .expect("there is at least one server");
        Choice {
            server,
            reason: "random healthy server".into(),
        }
    }

    fn launch(&mut self, part: usize, kind: AttemptKind, choice: Choice) {
        let (cancel, cancelled) = oneshot::channel::<()>();
        let id = self.next_attempt;
        self.next_attempt += 1;
        let server = choice.server;
        tracing::debug!(part, server = %self.slots[server].address, kind = kind.name(), reason = %choice.reason, "part sent");
        let items = self.parts[part].task.work_items();
        self.servers[server]
            .in_flight
            .insert(id, (Instant::now(), items));
        self.states[part].running.push(Running {
            id,
            server,
            kind,
            reason: choice.reason,
            start: self.pool.started.elapsed(),
            cancel,
        });
        let (pool, slot) = (self.pool, Arc::clone(&self.slots[server]));
        let job_part = &self.parts[part];
        self.attempts.push(
            async move {
                let outcome = tokio::select! {
                    outcome = pool.attempt(job_part, &slot) => Some(outcome),
                    _ = cancelled => None,
                };
                Ended { part, id, outcome }
            }
            .boxed(),
        );
    }

    /// Takes in an ended attempt: the part's result, or a failure to retry. An attempt
    /// cancelled because another copy won was filed as lost then, and its late end is
    /// ignored.
    fn ended(&mut self, ended: Ended) {
        let Ended { part, id, outcome } = ended;
        let Some(index) = self.states[part].running.iter().position(|r| r.id == id) else {
            return;
        };
        let outcome = outcome.expect("only attempts no longer running are cancelled");
        let running = self.states[part].running.remove(index);
        self.servers[running.server].in_flight.remove(&id);
        self.servers[running.server].last_answer = Some(Instant::now());
        let slot = &self.slots[running.server];
        let end = self.pool.started.elapsed();
        match outcome {
            Ok(reply) => {
                self.pool.observer.part_done(&slot.address);
                let items = self.parts[part].task.work_items().max(1) as f64;
                let observed = reply.compute.as_nanos() as f64 / items;
                let server = &mut self.servers[running.server];
                let rate = &mut server.nanos_per_item;
                *rate = Some(rate.map_or(observed, |old| (old + observed) / 2.0));
                let overhead = reply.round_trip.saturating_sub(reply.compute).as_nanos() as f64;
                let least = &mut server.overhead_nanos;
                *least = Some(least.map_or(overhead, |old| old.min(overhead)));
                // A server that answers is healthy again.
                slot.set_failure(None);
                let record = self.part_record(part, &running, reply);
                let state = &mut self.states[part];
                state.file(running.record(&slot.address, end, AttemptOutcome::Won));
                state.record = Some(record);
                // The other copy is no longer wanted.
                for other in std::mem::take(&mut state.running) {
                    let address = &self.slots[other.server].address;
                    state.file(other.record(address, end, AttemptOutcome::Lost));
                    self.servers[other.server].in_flight.remove(&other.id);
                    let _ = other.cancel.send(());
                }
            }
            Err(error) => {
                tracing::info!(part, server = %slot.address, %error, "attempt failed");
                slot.set_failure(Some(error.to_string()));
                // A server that is shutting down is gone for this job, even if the
                // parts it still holds answer and make it look healthy again.
                if error.is_shutting_down() {
                    let state = &mut self.servers[running.server];
                    state.shutting_down = true;
                    state.left.get_or_insert(end);
                }
                let state = &mut self.states[part];
                let failed = AttemptOutcome::Failed(error.to_string());
                state.file(running.record(&slot.address, end, failed));
                // A copy still running elsewhere may yet answer.
                if !state.running.is_empty() {
                    return;
                }
                state.failures += 1;
                if state.failures >= self.max_attempts {
                    state.given_up = true;
                } else {
                    self.pending.push_front((part, AttemptKind::Retry));
                }
            }
        }
    }

    fn part_record(&self, part: usize, running: &Running, reply: PartReply) -> PartRecord {
        let job_part = &self.parts[part];
        // Part ids are per connection; the part's index stands in for its id, which
        // encodes to about the same size.
        let id = job_part.index as u64;
        let compute_nanos = reply.compute.as_nanos() as u64;
        let received = result_frames(id, reply.result.clone(), compute_nanos).unwrap_or_default();
        PartRecord {
            part: job_part.index,
            computed_by: ComputedBy::Server(self.slots[running.server].address.clone()),
            // Filled in from the part's attempts when the run is over.
            attempts: Vec::new(),
            start: running.start,
            bytes_sent: frames_len(part_frames(id, &job_part.task, &job_part.input)),
            bytes_received: frames_len(&received),
            reply,
        }
    }

    /// How long, in seconds, a part of `items` work items sent to `server` now would
    /// take to be done there: the work already there plus its own, at the speed the
    /// server has shown, over its slots. Parts other clients run there count too.
    fn finish_estimate(&self, server: usize, items: f64) -> f64 {
        let state = &self.servers[server];
        let ours = state.running() as f64 * items;
        let others = state.status.as_ref().map_or(0.0, |s| {
            (s.parts_in_flight as usize).saturating_sub(state.running()) as f64 * items
        });
        let slots = f64::from(self.slots[server].slots());
        (ours + others + items) * self.nanos_per_item(server) / slots / 1e9
    }

    /// The speed `server` has shown on this job's parts, in nanoseconds per work item:
    /// its answered parts, and at least what its oldest part in flight has taken so far.
    /// A server with no answer yet is assumed as fast as the others, scaled by the
    /// calibrated speeds the servers report, when both report one.
    fn nanos_per_item(&self, server: usize) -> f64 {
        let calibrated = |s: usize| {
            self.servers[s]
                .status
                .as_ref()
                .and_then(|st| st.loop_picos_per_iteration)
                .map(|p| p as f64)
        };
        let own = self.servers[server].nanos_per_item.or_else(|| {
            let observed: Vec<(usize, f64)> = (0..self.servers.len())
                .filter_map(|s| self.servers[s].nanos_per_item.map(|r| (s, r)))
                .collect();
            let (reference, rate) = *observed.iter().min_by(|a, b| a.1.total_cmp(&b.1))?;
            Some(match (calibrated(server), calibrated(reference)) {
                (Some(mine), Some(theirs)) => rate * mine / theirs,
                _ => rate,
            })
        });
        let oldest = self.servers[server]
            .in_flight
            .first_key_value()
            .map_or(0.0, |(_, (sent, items))| {
                sent.elapsed().as_nanos() as f64 / (*items).max(1) as f64
            });
        own.unwrap_or(1.0).max(oldest)
    }

    /// Asks every connected server for its status once per [`PROBE_INTERVAL`], one
    /// request at a time.
    fn probe_servers(&mut self) {
        for server in 0..self.servers.len() {
            let state = &mut self.servers[server];
            if state.probing
                || state
                    .last_probe
                    .is_some_and(|at| at.elapsed() < PROBE_INTERVAL)
            {
                continue;
            }
            let Some(connection) = self.slots[server].open_connection() else {
                continue;
            };
            state.probing = true;
            state.last_probe = Some(Instant::now());
            let timeout = self.scheduling.liveness_timeout;
            self.probes
                .push(async move { (server, connection.probe(timeout).await) }.boxed());
        }
    }

    fn probed(&mut self, server: usize, answer: ProbeAnswer) {
        let state = &mut self.servers[server];
        state.probing = false;
        match answer {
            Ok(Some(status)) => {
                if state.suspect {
                    tracing::info!(server = %self.slots[server].address, "answering again");
                }
                state.suspect = false;
                state.status = Some(status);
            }
            Ok(None) if state.running() > 0 && !state.suspect => {
                tracing::warn!(
                    server = %self.slots[server].address,
                    timeout = ?self.scheduling.liveness_timeout,
                    "no answer to a status request: its parts get copies elsewhere"
                );
                state.suspect = true;
                state.suspected = true;
                if self.scheduling.speculate {
                    let held: Vec<usize> = (0..self.states.len())
                        .filter(|&p| {
                            let running = &self.states[p].running;
                            running.len() == 1 && running[0].server == server
                        })
                        .collect();
                    for part in held {
                        self.copies
                            .push_back((part, "copy: its server did not answer".into()));
                    }
                }
            }
            // Silent but holding nothing of ours: nothing to rescue. A failed
            // connection fails its parts, which are retried.
            Ok(None) | Err(_) => {}
        }
    }

    /// Once no part waits to be handed out and a server is idle, copies the part whose
    /// copy would gain the most. A part is copied when either
    ///
    /// * it has run more than [`STRAGGLER_FACTOR`] times as long as parts of its size
    ///   took (the median compute time per work item of the answered parts, plus, for a
    ///   part with data, the median time per byte their data took to send), and
    ///   [`STRAGGLER_SLACK`] longer; or
    /// * its server's own speed on this job says it will finish later than a copy
    ///   started now on the fastest idle server would, by a fifth and the slack.
    ///
    /// A part's time computing starts when it was sent or when its server last
    /// answered, whichever is later, so a part queued behind another is not taken for
    /// a straggler; while queued, it is expected to need at least a whole part's time.
    fn find_stragglers(&mut self) {
        if !self.pending.is_empty() || !self.copies.is_empty() {
            return;
        }
        let idle: Vec<usize> = (0..self.servers.len())
            .filter(|&s| {
                let state = &self.servers[s];
                state.connected
                    && state.running() == 0
                    && !state.suspect
                    && state.left.is_none()
                    && self.slots[s].is_healthy()
            })
            .collect();
        if idle.is_empty() {
            return;
        }
        let mut rates: Vec<f64> = self
            .states
            .iter()
            .zip(self.parts)
            .filter_map(|(state, part)| {
                let record = state.record.as_ref()?;
                (record.computed_by != ComputedBy::LocalFallback).then(|| {
                    record.reply.compute.as_nanos() as f64 / part.task.work_items().max(1) as f64
                })
            })
            .collect();
        if rates.is_empty() {
            return;
        }
        rates.sort_by(f64::total_cmp);
        let typical = rates[rates.len() / 2];
        // A part still being shipped at the pace its data crosses the network is not
        // straggling: a copy would send the same bytes over the same client link.
        let mut send_rates: Vec<f64> = self
            .states
            .iter()
            .zip(self.parts)
            .filter_map(|(state, part)| {
                let record = state.record.as_ref()?;
                let bytes = part.task.input_bytes().filter(|&b| b > 0)?;
                (record.computed_by != ComputedBy::LocalFallback)
                    .then(|| record.reply.send.as_nanos() as f64 / bytes as f64)
            })
            .collect();
        send_rates.sort_by(f64::total_cmp);
        let typical_send = send_rates.get(send_rates.len() / 2).copied().unwrap_or(0.0);
        let rate_of = |s: usize| self.servers[s].nanos_per_item.unwrap_or(typical);
        let fastest_idle = idle
            .iter()
            .map(|&s| rate_of(s))
            .fold(f64::INFINITY, f64::min);
        let slack = STRAGGLER_SLACK.as_secs_f64();
        let best = self
            .states
            .iter()
            .zip(self.parts)
            .enumerate()
            .filter(|(_, (state, _))| !state.settled() && state.running.len() == 1)
            .filter_map(|(index, (state, part))| {
                let items = part.task.work_items().max(1) as f64;
                let running = &state.running[0];
                let server = &self.servers[running.server];
                let (sent, _) = server.in_flight[&running.id];
                let could_start = server.last_answer.map_or(sent, |answer| answer.max(sent));
                let ran = could_start.elapsed().as_secs_f64();
                let bytes = part.task.input_bytes().unwrap_or(0) as f64;
                let expected = (typical * items + typical_send * bytes) / 1e9;
                let own = rate_of(running.server) * items / 1e9;
                let queued = server
                    .in_flight
                    .first_key_value()
                    .is_some_and(|(oldest, _)| *oldest < running.id);
                let left = if queued { own } else { (own - ran).max(0.0) };
                let copy = fastest_idle * items / 1e9;
                let straggling =
                    !queued && ran > expected * STRAGGLER_FACTOR && ran > expected + slack;
                let slower = left > copy * 1.2 + slack;
                (straggling || slower).then(|| {
                    let reason = if straggling {
                        format!("copy: ran {ran:.2} s, parts like it took {expected:.2} s")
                    } else {
                        format!("copy: its server needs {left:.2} s more, an idle one {copy:.2} s")
                    };
                    (index, left.max(ran - expected) - copy, reason)
                })
            })
            .max_by(|a, b| a.1.total_cmp(&b.1));
        if let Some((part, _, reason)) = best {
            self.copies.push_back((part, reason));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn read_ahead_covers_the_round_trip_with_short_parts_only() {
        let micros = |us: f64| Some(us * 1e3);
        // Until the server has answered: one.
        assert_eq!(read_ahead(None, micros(1.0)), READ_AHEAD);
        assert_eq!(read_ahead(micros(40.0), None), READ_AHEAD);
        // Parts longer than the round trip adds: one.
        assert_eq!(read_ahead(micros(40.0), micros(50.0)), 1);
        assert_eq!(read_ahead(micros(40.0), micros(40.0)), 1);
        // Shorter: enough to cover it, rounded up.
        assert_eq!(read_ahead(micros(40.0), micros(10.0)), 4);
        assert_eq!(read_ahead(micros(40.0), micros(9.0)), 5);
        // Empty parts: the cap.
        assert_eq!(read_ahead(micros(40.0), Some(0.0)), MAX_READ_AHEAD);
        assert_eq!(read_ahead(micros(40.0), micros(0.1)), MAX_READ_AHEAD);
    }

    fn attempt(kind: AttemptKind, start: f64, end: f64, outcome: AttemptOutcome) -> AttemptRecord {
        AttemptRecord {
            server: "server".into(),
            kind,
            reason: String::new(),
            start: Duration::from_secs_f64(start),
            end: Duration::from_secs_f64(end),
            outcome,
        }
    }

    fn part(attempts: Vec<AttemptRecord>) -> PartRecord {
        PartRecord {
            part: 0,
            computed_by: ComputedBy::Server("server".into()),
            reply: PartReply {
                result: PartResult::Loop(0),
                send: Duration::ZERO,
                round_trip: Duration::ZERO,
                compute: Duration::ZERO,
            },
            attempts,
            start: Duration::ZERO,
            bytes_sent: 0,
            bytes_received: 0,
        }
    }

    #[test]
    fn time_spent_twice_is_the_time_a_lost_attempt_ran_beside_the_winner() {
        use AttemptKind::{Copy, First};
        use AttemptOutcome::{Lost, Won};
        let ms = |d: Duration| d.as_millis();
        // A server went silent holding the part from 0 s; its copy ran from 3.8 s and
        // won at 8.5 s: 4.7 s were spent twice, not the silent attempt's 8.5 s.
        let rescued = part(vec![
            attempt(First, 0.0, 8.5, Lost),
            attempt(Copy, 3.8, 8.5, Won),
        ]);
        assert_eq!(ms(rescued.time_spent_twice()), 4700);
        // A straggler finished first after all: its copy's whole life was spent twice.
        let straggler = part(vec![
            attempt(First, 0.0, 2.0, Won),
            attempt(Copy, 1.5, 2.0, Lost),
        ]);
        assert_eq!(ms(straggler.time_spent_twice()), 500);
        // No winner (the local fallback computed it), or no loser: nothing twice.
        let failed = AttemptOutcome::Failed("reset".into());
        assert_eq!(
            part(vec![attempt(First, 0.0, 1.0, failed)]).time_spent_twice(),
            Duration::ZERO
        );
        assert_eq!(
            part(vec![attempt(First, 0.0, 1.0, Won)]).time_spent_twice(),
            Duration::ZERO
        );
    }
}
