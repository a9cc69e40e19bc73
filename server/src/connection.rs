//! One connection's life: handshake, requests, data, replies, and cleanup.
//!
//! A connection is served by a single task that owns all of its state, so nothing here
//! needs a lock. The task waits on three things at once: the next frame from the
//! client, the next kernel computation finishing on the executor, and shutdown. What
//! each event means for the connection's parts is decided by its [`PartTable`], a
//! state machine without I/O; this loop only carries out what it asks (hand a chunk to
//! the executor, send a reply). When the client goes away, every part still running is
//! cancelled, so the worker threads are free again within about 100 ms.
//!
//! What the connection buffers of its client's input is charged to the server's
//! [`BufferBudget`](crate::budget::BufferBudget): its frames by the [`FrameReader`],
//! and the job's shared inputs here, claimed when announced and held while the
//! connection lives. While a claim waits, the connection reads nothing more but goes on
//! answering the parts it has.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::stream::FuturesUnordered;
use futures::{FutureExt, SinkExt, StreamExt};
use pool_common::auth;
use pool_common::codec::{Frame, FrameCodec, FrameError};
use pool_common::jobs::{compute_chunk, CancelFlag, Chunk, JobInputs, PartTask};
use pool_common::protocol::{
    ErrorCode, RemoteError, Reply, Request, ServerStatus, Welcome, PROTOCOL_VERSION,
};
use pool_common::tls::{ReadHalf, WriteHalf};
use pool_common::wire::result_frames;
use tokio_util::codec::FramedWrite;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, info_span, warn};

use crate::budget::{Account, Charge, Claim};
use crate::executor::WorkLost;
use crate::parts::{Action, ChunkOutcome, PartLimits, PartTable, Violation};
use crate::reader::FrameReader;
use crate::Shared;

/// Why a connection ended early; logged by the listener.
#[derive(Debug, thiserror::Error)]
pub enum ConnectionError {
    /// The peer sent something that is not a valid frame.
    #[error("bad frame: {0}")]
    Frame(#[from] FrameError),
    /// The peer did not complete the handshake in time.
    #[error("no handshake within {0:?}")]
    HandshakeTimeout(Duration),
    /// The peer did not prove it knows the server's token.
    #[error("refused: {0}")]
    BadToken(&'static str),
    /// The peer sent nothing (or read nothing) for too long while the server waited on it.
    #[error("idle for {0:?}")]
    Idle(Duration),
    /// The server stopped the connection: its shutdown grace period ran out.
    #[error("server stopped after the grace period")]
    ForcedStop,
    /// The peer broke the protocol.
    #[error("protocol violation: {0}")]
    Protocol(String),
}

/// A chunk computation finished on the executor.
struct Computed {
    part_id: u64,
    outcome: ChunkOutcome,
    elapsed: Duration,
}

/// Serves one accepted connection until the client leaves, the server shuts down, or the
/// client breaks the protocol.
pub struct Connection {
    reader: FrameReader,
    writer: FramedWrite<WriteHalf, FrameCodec>,
    shared: Arc<Shared>,
    shutdown: CancellationToken,
    parts: PartTable,
    /// This connection's share of the server's buffer budget (the reader's too).
    account: Account,
    /// A shared input announced and kept, whose memory the budget has not granted yet:
    /// its data is not read before.
    share_claim: Option<Claim>,
    /// The memory of the shared inputs kept, for the connection's life.
    share_charges: Vec<Charge>,
    /// Parts this connection counts in `shared.parts_in_flight`.
    counted_in_flight: usize,
    computations: FuturesUnordered<futures::future::BoxFuture<'static, Computed>>,
    parts_served: u64,
}

impl Connection {
    /// Wraps an accepted connection's two directions (plain TCP, or TLS once its
    /// handshake is done).
    pub fn new(
        (read_half, write_half): (ReadHalf, WriteHalf),
        shared: Arc<Shared>,
        shutdown: CancellationToken,
    ) -> Self {
        let config = &shared.config;
        let limits = PartLimits {
            max_part_bytes: config.max_part_bytes,
            max_part_work: config.max_part_work,
            max_parts: config.max_parts_per_connection,
            max_buffer_memory: config.max_buffer_memory,
        };
        let account = shared.buffers.account();
        Connection {
            reader: FrameReader::new(read_half, account.clone()),
            writer: FramedWrite::new(write_half, FrameCodec::new()),
            shutdown,
            parts: PartTable::new(limits),
            account,
            share_claim: None,
            share_charges: Vec::new(),
            counted_in_flight: 0,
            computations: FuturesUnordered::new(),
            parts_served: 0,
            shared,
        }
    }

    /// Runs the connection to its end and returns the parts it answered with a result.
    /// Parts still running are cancelled on return (see the `Drop` impl). Run it inside
    /// a span naming the peer: every log line of the connection carries it.
    pub async fn run(mut self) -> Result<u64, ConnectionError> {
        self.serve().await.map(|()| self.parts_served)
    }

    async fn serve(&mut self) -> Result<(), ConnectionError> {
        self.handshake().await?;
        let config = &self.shared.config;
        let idle_timeout = config.idle_timeout;
        let max_pending_chunks = config.workers.max(2) * 2;
        let mut shutting_down = false;
        loop {
            // Stop reading while many data chunks wait for the executor: the client then
            // waits on TCP, and this connection's memory stays bounded. Parts without
            // data hold no buffer (their number is bounded by the parts limit), so they
            // do not count: reading them ahead keeps the executor from idling between
            // small parts. A shared input's data waits until the budget has room for it.
            let can_read = self.parts.data_chunks_computing() < max_pending_chunks
                && self.share_claim.is_none();
            // With nothing computing, and nothing waiting for the budget, the server is
            // waiting on the client (for a request, or for the rest of a part's data);
            // silence then must not last forever.
            let idle = self.computations.is_empty()
                && !self.reader.is_claiming()
                && self.share_claim.is_none();
            tokio::select! {
                frame = self.reader.next(), if can_read => match frame {
                    None => return Ok(()),
                    Some(frame) => self.on_frame(frame?, shutting_down).await?,
                },
                charge = granted(&mut self.share_claim) => {
                    self.share_claim = None;
                    self.share_charges.push(charge);
                }
                Some(done) = self.computations.next() => self.on_computed(done).await?,
                () = self.shutdown.cancelled(), if !shutting_down => {
                    shutting_down = true;
                    if self.parts.is_empty() {
                        return Ok(());
                    }
                }
                () = tokio::time::sleep(idle_timeout), if idle => {
                    return Err(ConnectionError::Idle(idle_timeout));
                }
                () = self.shared.force_stop.cancelled() => return Err(ConnectionError::ForcedStop),
            }
            // Answer every computation already finished, then write all queued replies
            // in one go: one write call for a burst of small parts, not one per part.
            while let Some(Some(done)) = self.computations.next().now_or_never() {
                self.on_computed(done).await?;
            }
            if !self.writer.write_buffer().is_empty() {
                tokio::time::timeout(idle_timeout, self.writer.flush())
                    .await
                    .map_err(|_| ConnectionError::Idle(idle_timeout))??;
            }
            if shutting_down && self.parts.is_empty() {
                return Ok(());
            }
        }
    }

    /// Reads the Hello, challenges a client of a server with a token, and welcomes it;
    /// all of it within the handshake timeout, so a peer that stops answering (or
    /// reading) midway cannot hold the connection.
    async fn handshake(&mut self) -> Result<(), ConnectionError> {
        let timeout = self.shared.config.handshake_timeout;
        tokio::time::timeout(timeout, self.shake_hands())
            .await
            .map_err(|_| ConnectionError::HandshakeTimeout(timeout))?
    }

    async fn shake_hands(&mut self) -> Result<(), ConnectionError> {
        let hello = match self.reader.next().await {
            Some(Ok(Frame::Hello(hello))) => hello,
            Some(Err(FrameError::VersionMismatch { peer })) => {
                let reason = format!(
                    "this server speaks pool protocol version {PROTOCOL_VERSION}, the client version {peer}: \
                     run the same pool release on both sides"
                );
                return self
                    .refuse(reason, FrameError::VersionMismatch { peer }.into())
                    .await;
            }
            Some(Err(FrameError::TooLong { len, .. })) if crate::tls::is_tls_record(len) => {
                // The client, expecting TLS, reads this as a corrupt record and stops at
                // once; the reason is for the log.
                let reason = "a TLS handshake, but this server was started without TLS: start \
                              it with --tls self-signed (or --tls-cert and --tls-key), or remove \
                              tls = true from the job file";
                return self
                    .refuse(reason.into(), ConnectionError::Protocol(reason.into()))
                    .await;
            }
            Some(Err(FrameError::TooLong { len, max })) => {
                let reason = format!(
                    "a first frame of {len} bytes, where a pool handshake takes at most {max}: \
                     is this a pool client of the same release?"
                );
                return self
                    .refuse(reason, FrameError::TooLong { len, max }.into())
                    .await;
            }
            Some(Err(e)) => return Err(e.into()),
            Some(Ok(other)) => return Err(unexpected("a handshake", &other)),
            None => {
                return Err(ConnectionError::Protocol(
                    "closed before the handshake".into(),
                ))
            }
        };
        debug!(client = %hello.client, "handshake");
        let shared = Arc::clone(&self.shared);
        if let Some(token) = &shared.config.token {
            let nonce = auth::nonce();
            self.writer.send(Frame::Challenge(nonce)).await?;
            match self.reader.next().await {
                Some(Ok(Frame::Proof(proof))) if auth::verify(token, &nonce, &proof) => {}
                Some(Ok(Frame::Proof(_))) => {
                    let reason = "wrong token: check `token` in the job file or POOL_TOKEN";
                    return self
                        .refuse(reason.into(), ConnectionError::BadToken(reason))
                        .await;
                }
                Some(Err(e)) => return Err(e.into()),
                Some(Ok(other)) => {
                    return Err(unexpected("the answer to the token challenge", &other))
                }
                None => {
                    return Err(ConnectionError::BadToken(
                        "closed without answering the token challenge (a client without the token)",
                    ))
                }
            }
        }
        let welcome = Welcome {
            server: format!("pool-server {}", env!("CARGO_PKG_VERSION")),
            workers: self.shared.executor.workers() as u32,
        };
        self.writer.send(Frame::Welcome(welcome)).await?;
        self.reader.handshake_done();
        Ok(())
    }

    /// Refuses the handshake, telling the peer `reason`, and ends with `error`.
    async fn refuse(
        &mut self,
        reason: String,
        error: ConnectionError,
    ) -> Result<(), ConnectionError> {
        let _ = self.writer.send(Frame::Refused(reason)).await;
        Err(error)
    }

    async fn on_frame(&mut self, frame: Frame, shutting_down: bool) -> Result<(), ConnectionError> {
        let actions = match frame {
            Frame::Request(Request::RunPart { part_id, task }) => {
                info_span!("part", id = part_id).in_scope(|| debug!(?task, "part requested"));
                let refusal = if shutting_down {
                    Some(RemoteError::new(
                        ErrorCode::ShuttingDown,
                        "the server is shutting down",
                    ))
                } else {
                    task.program()
                        .and_then(|program| self.shared.config.commands.refusal(&program))
                };
                self.parts.run_part(part_id, task, refusal)
            }
            Frame::Request(Request::Share {
                input_id,
                name,
                bytes,
                executable,
            }) => {
                debug!(input_id, %name, bytes, "shared input announced");
                self.parts
                    .share(input_id, name, bytes, executable)
                    .map(|kept| {
                        if kept && bytes > 0 {
                            // At most the budget (the table refuses more), so it can be
                            // granted once other connections give memory back.
                            self.share_claim = Some(self.account.claim(bytes as usize));
                        }
                        Vec::new()
                    })
            }
            Frame::Data { part_id, bytes } => self.parts.data(part_id, bytes),
            Frame::Request(Request::Cancel { part_id }) => {
                debug!(part_id, "cancel requested");
                Ok(self.parts.cancel(part_id))
            }
            Frame::Request(Request::Status) => {
                let status = self.status();
                return self.send(Frame::Reply(Reply::Status(status))).await;
            }
            other => {
                return Err(ConnectionError::Protocol(format!(
                    "unexpected {} frame",
                    frame_name(&other)
                )))
            }
        };
        match actions {
            Ok(actions) => self.carry_out(actions).await,
            Err(Violation(reason)) => self.close_with(reason).await,
        }
    }

    async fn on_computed(&mut self, done: Computed) -> Result<(), ConnectionError> {
        let actions = self
            .parts
            .computed(done.part_id, done.outcome, done.elapsed);
        self.carry_out(actions).await
    }

    /// Does what the part table asked: hands chunks to the executor, sends replies.
    async fn carry_out(&mut self, actions: Vec<Action>) -> Result<(), ConnectionError> {
        for action in actions {
            match action {
                Action::Compute {
                    part_id,
                    task,
                    offset,
                    chunk,
                    cancel,
                    inputs,
                } => self.submit(part_id, task, (offset, chunk), cancel, inputs),
                Action::Done {
                    part_id,
                    result,
                    compute,
                } => {
                    info_span!("part", id = part_id).in_scope(|| info!(?compute, "part done"));
                    self.parts_served += 1;
                    self.shared.parts_served.fetch_add(1, Ordering::Relaxed);
                    let nanos = compute.as_nanos().min(u64::MAX as u128) as u64;
                    for frame in result_frames(part_id, result, nanos)? {
                        self.send(frame).await?;
                    }
                }
                Action::Failed { part_id, error } => {
                    info_span!("part", id = part_id).in_scope(|| {
                        if error.code == ErrorCode::Cancelled {
                            info!(%error, "part cancelled");
                        } else {
                            warn!(%error, "part failed");
                        }
                    });
                    self.send(Frame::Reply(Reply::PartFailed { part_id, error }))
                        .await?;
                }
            }
        }
        self.count_in_flight();
        Ok(())
    }

    /// Keeps the server-wide count of parts in flight (for status) in step with this
    /// connection's table.
    fn count_in_flight(&mut self) {
        let now = self.parts.unanswered();
        let in_flight = &self.shared.parts_in_flight;
        if now > self.counted_in_flight {
            in_flight.fetch_add(now - self.counted_in_flight, Ordering::Relaxed);
        } else {
            in_flight.fetch_sub(self.counted_in_flight - now, Ordering::Relaxed);
        }
        self.counted_in_flight = now;
    }

    /// Hands one chunk of a part, with its offset in the part's input, to the executor.
    fn submit(
        &mut self,
        part_id: u64,
        task: Arc<PartTask>,
        (offset, chunk): (u64, Bytes),
        cancel: Arc<CancelFlag>,
        inputs: Arc<JobInputs>,
    ) {
        let work = self.shared.executor.run(move || {
            let started = Instant::now();
            let chunk = Chunk {
                offset,
                bytes: &chunk,
            };
            let result = compute_chunk(&task, chunk, &inputs, &cancel);
            (result, started.elapsed())
        });
        self.computations.push(Box::pin(async move {
            let (outcome, elapsed) = match work.await {
                Ok((result, elapsed)) => (ChunkOutcome::from(result), elapsed),
                Err(WorkLost) => (ChunkOutcome::Lost, Duration::ZERO),
            };
            Computed {
                part_id,
                outcome,
                elapsed,
            }
        }));
    }

    /// The answer to a status request: counters and readings, nothing that waits.
    fn status(&self) -> ServerStatus {
        let shared = &self.shared;
        ServerStatus {
            server: format!("pool-server {}", env!("CARGO_PKG_VERSION")),
            cores: std::thread::available_parallelism().map_or(1, |n| n.get()) as u32,
            workers: shared.executor.workers() as u32,
            workers_busy: shared.executor.busy() as u32,
            parts_in_flight: shared.parts_in_flight.load(Ordering::Relaxed) as u32,
            parts_served: shared.parts_served.load(Ordering::Relaxed),
            uptime_nanos: shared.started.elapsed().as_nanos().min(u64::MAX as u128) as u64,
            load_average_milli: crate::load::load_average_milli(),
            cpu_idle_milli: shared.load.cpu_idle_milli(),
            memory_available_bytes: crate::load::memory_available_bytes(),
            loop_picos_per_iteration: shared.load.loop_picos_per_iteration(),
        }
    }

    /// Queues a frame; the serve loop flushes once nothing else is ready. Both give up
    /// (ending the connection) if the client does not read its replies in time.
    async fn send(&mut self, frame: Frame) -> Result<(), ConnectionError> {
        let timeout = self.shared.config.idle_timeout;
        tokio::time::timeout(timeout, self.writer.feed(frame))
            .await
            .map_err(|_| ConnectionError::Idle(timeout))??;
        Ok(())
    }

    /// Tells the client why the connection ends, then ends it.
    async fn close_with(&mut self, reason: String) -> Result<(), ConnectionError> {
        let error = RemoteError::new(ErrorCode::BadRequest, reason.clone());
        let closing = self.writer.send(Frame::Reply(Reply::Closing { error }));
        // A client that reads nothing must not hold the connection open.
        let _ = tokio::time::timeout(self.shared.config.idle_timeout, closing).await;
        Err(ConnectionError::Protocol(reason))
    }
}

impl Drop for Connection {
    /// However the connection ends (even if its task is dropped), no kernel keeps
    /// computing for it.
    fn drop(&mut self) {
        self.parts.cancel_all();
        self.shared
            .parts_in_flight
            .fetch_sub(self.counted_in_flight, Ordering::Relaxed);
    }
}

/// Waits for the budget to grant `claim`; never resolves without one.
async fn granted(claim: &mut Option<Claim>) -> Charge {
    match claim {
        Some(claim) => claim.await,
        None => std::future::pending().await,
    }
}

/// The error for a handshake that went on with `frame` where `expected` was due.
fn unexpected(expected: &str, frame: &Frame) -> ConnectionError {
    ConnectionError::Protocol(format!("expected {expected}, got {}", frame_name(frame)))
}

fn frame_name(frame: &Frame) -> &'static str {
    match frame {
        Frame::Hello(_) => "Hello",
        Frame::Welcome(_) => "Welcome",
        Frame::Refused(_) => "Refused",
        Frame::Challenge(_) => "Challenge",
        Frame::Proof(_) => "Proof",
        Frame::Request(_) => "Request",
        Frame::Reply(_) => "Reply",
        Frame::Data { .. } => "Data",
    }
}
