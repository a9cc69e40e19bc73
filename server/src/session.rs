//! What a connection does with what it reads, whatever model serves it.
//!
//! Every server model (see [`crate::models`]) speaks the same protocol over the same
//! part logic; only the way bytes move differs (tokio tasks, or blocking threads and
//! processes). This module holds everything in between that is not I/O: how the
//! handshake answers a first frame and a token's proof, what each later frame means
//! for the connection's [`PartTable`], which frames answer a finished part, and the
//! work a chunk computation is. A [`Session`] owns one connection's table and keeps the
//! server-wide counters in step with it; dropping it cancels every part still running.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use pool_common::auth;
use pool_common::codec::{Frame, FrameError};
use pool_common::jobs::{compute_chunk, CancelFlag, Chunk, JobInputs, PartTask};
use pool_common::protocol::{ErrorCode, Hello, RemoteError, Reply, Request, PROTOCOL_VERSION};
use pool_common::wire::result_frames;
use tracing::{debug, info, info_span, warn};

use crate::connection::ConnectionError;
use crate::executor::WorkLost;
use crate::parts::{Action, ChunkOutcome, PartLimits, PartTable, Violation};
use crate::Shared;

/// A handshake the server ends: what to tell the peer first (if anything), and why.
#[derive(Debug)]
pub struct Refusal {
    /// The reason sent in a [`Frame::Refused`], when the peer can read one.
    pub tell: Option<String>,
    /// What the connection ends with, for the log.
    pub error: ConnectionError,
}

impl Refusal {
    fn silent(error: ConnectionError) -> Refusal {
        Refusal { tell: None, error }
    }

    fn told(reason: String, error: ConnectionError) -> Refusal {
        Refusal {
            tell: Some(reason),
            error,
        }
    }
}

/// The client's Hello from the connection's first read, or why the handshake ends.
pub fn hello(first: Option<Result<Frame, FrameError>>) -> Result<Hello, Refusal> {
    match first {
        Some(Ok(Frame::Hello(hello))) => {
            debug!(client = %hello.client, "handshake");
            Ok(hello)
        }
        Some(Err(FrameError::VersionMismatch { peer })) => Err(Refusal::told(
            format!(
                "this server speaks pool protocol version {PROTOCOL_VERSION}, the client version {peer}: \
                 run the same pool release on both sides"
            ),
            FrameError::VersionMismatch { peer }.into(),
        )),
        Some(Err(FrameError::TooLong { len, .. })) if crate::tls::is_tls_record(len) => {
            // The client, expecting TLS, reads this as a corrupt record and stops at
            // once; the reason is for the log.
            let reason = "a TLS handshake, but this server was started without TLS: start \
                          it with --tls self-signed (or --tls-cert and --tls-key), or remove \
                          tls = true from the job file";
            Err(Refusal::told(
                reason.into(),
                ConnectionError::Protocol(reason.into()),
            ))
        }
        Some(Err(FrameError::TooLong { len, max })) => Err(Refusal::told(
            format!(
                "a first frame of {len} bytes, where a pool handshake takes at most {max}: \
                 is this a pool client of the same release?"
            ),
            FrameError::TooLong { len, max }.into(),
        )),
        Some(Err(e)) => Err(Refusal::silent(e.into())),
        Some(Ok(other)) => Err(Refusal::silent(unexpected("a handshake", &other))),
        None => Err(Refusal::silent(ConnectionError::Protocol(
            "closed before the handshake".into(),
        ))),
    }
}

/// Checks the client's answer to the token challenge `nonce`.
pub fn proof(
    token: &str,
    nonce: &auth::Nonce,
    answer: Option<Result<Frame, FrameError>>,
) -> Result<(), Refusal> {
    match answer {
        Some(Ok(Frame::Proof(proof))) if auth::verify(token, nonce, &proof) => Ok(()),
        Some(Ok(Frame::Proof(_))) => {
            let reason = "wrong token: check `token` in the job file or POOL_TOKEN";
            Err(Refusal::told(
                reason.into(),
                ConnectionError::BadToken(reason),
            ))
        }
        Some(Err(e)) => Err(Refusal::silent(e.into())),
        Some(Ok(other)) => Err(Refusal::silent(unexpected(
            "the answer to the token challenge",
            &other,
        ))),
        None => Err(Refusal::silent(ConnectionError::BadToken(
            "closed without answering the token challenge (a client without the token)",
        ))),
    }
}

/// The reason a connection over `--max-connections` is refused with.
pub fn over_the_limit(max: usize) -> String {
    format!(
        "the server is at its limit of {max} connections (raise it with pool-server --max-connections)"
    )
}

/// What the connection must do after a frame.
pub enum Step {
    /// Carry these out, in order.
    Do(Vec<Outgoing>),
    /// A shared input of this many bytes is kept: its memory must be granted by the
    /// budget before its data is read.
    Keep(u64),
    /// The client broke the protocol: tell it this reason, then end the connection.
    Close(String),
}

/// One thing the connection does for its parts.
pub enum Outgoing {
    /// Run this on the executor, then report it with [`Session::computed`].
    Compute(Compute),
    /// Send this frame.
    Send(Frame),
}

/// A chunk of a part to compute, as the part table asked.
pub struct Compute {
    part_id: u64,
    task: Arc<PartTask>,
    offset: u64,
    chunk: Bytes,
    cancel: Arc<CancelFlag>,
    inputs: Arc<JobInputs>,
}

impl Compute {
    /// The part the chunk belongs to.
    pub fn part_id(&self) -> u64 {
        self.part_id
    }

    /// Whether the part is tiny ([`pool_common::jobs::Kind::is_tiny`]): cheaper to
    /// compute where it arrived than on an executor thread.
    pub fn is_tiny(&self) -> bool {
        self.task.is_tiny()
    }

    /// Computes the chunk; runs on an executor thread, or for a tiny part where it is.
    pub fn run(self) -> Computed {
        let started = Instant::now();
        let chunk = Chunk {
            offset: self.offset,
            bytes: &self.chunk,
        };
        let result = compute_chunk(&self.task, chunk, &self.inputs, &self.cancel);
        Computed {
            part_id: self.part_id,
            outcome: ChunkOutcome::from(result),
            elapsed: started.elapsed(),
        }
    }
}

/// A chunk computation that finished on the executor, or was lost there.
pub struct Computed {
    part_id: u64,
    outcome: ChunkOutcome,
    elapsed: Duration,
}

impl Computed {
    /// What the executor's answer for `part_id`'s chunk means: its computation, or a
    /// lost chunk (the kernel panicked, or the executor stopped).
    pub fn from_executor(part_id: u64, result: Result<Computed, WorkLost>) -> Computed {
        result.unwrap_or(Computed {
            part_id,
            outcome: ChunkOutcome::Lost,
            elapsed: Duration::ZERO,
        })
    }
}

/// One connection's parts, and its share of the server's counters.
pub struct Session {
    parts: PartTable,
    shared: Arc<Shared>,
    /// Parts this connection counts in `shared.parts_in_flight`.
    counted_in_flight: usize,
    parts_served: u64,
}

impl Session {
    /// A connection's session on a server with these limits.
    pub fn new(shared: Arc<Shared>) -> Session {
        let config = &shared.config;
        let limits = PartLimits {
            max_part_bytes: config.max_part_bytes,
            max_part_work: config.max_part_work,
            max_parts: config.max_parts_per_connection,
            max_buffer_memory: config.max_buffer_memory,
        };
        Session {
            parts: PartTable::new(limits),
            shared,
            counted_in_flight: 0,
            parts_served: 0,
        }
    }

    /// The connection's part table.
    pub fn parts(&self) -> &PartTable {
        &self.parts
    }

    /// Parts answered with a result on this connection.
    pub fn parts_served(&self) -> u64 {
        self.parts_served
    }

    /// The frame that welcomes a client whose handshake succeeded.
    pub fn welcome(&self) -> Frame {
        Frame::Welcome(pool_common::protocol::Welcome {
            server: format!("pool-server {}", env!("CARGO_PKG_VERSION")),
            workers: self.shared.executor.workers() as u32,
        })
    }

    /// What a frame after the handshake means. While `shutting_down`, new parts are
    /// refused.
    pub fn on_frame(&mut self, frame: Frame, shutting_down: bool) -> Result<Step, ConnectionError> {
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
                return Ok(match self.parts.share(input_id, name, bytes, executable) {
                    // At most the budget (the table refuses more), so it can be granted
                    // once other connections give memory back.
                    Ok(true) if bytes > 0 => Step::Keep(bytes),
                    Ok(_) => Step::Do(Vec::new()),
                    Err(Violation(reason)) => Step::Close(reason),
                });
            }
            Frame::Data { part_id, bytes } => self.parts.data(part_id, bytes),
            Frame::Request(Request::Cancel { part_id }) => {
                debug!(part_id, "cancel requested");
                Ok(self.parts.cancel(part_id))
            }
            Frame::Request(Request::Status) => {
                let status = self.shared.status();
                return Ok(Step::Do(vec![Outgoing::Send(Frame::Reply(Reply::Status(
                    status,
                )))]));
            }
            other => {
                return Err(ConnectionError::Protocol(format!(
                    "unexpected {} frame",
                    frame_name(&other)
                )))
            }
        };
        match actions {
            Ok(actions) => self.carry_out(actions).map(Step::Do),
            Err(Violation(reason)) => Ok(Step::Close(reason)),
        }
    }

    /// What a chunk computation's end means.
    pub fn computed(&mut self, done: Computed) -> Result<Vec<Outgoing>, ConnectionError> {
        let actions = self
            .parts
            .computed(done.part_id, done.outcome, done.elapsed);
        self.carry_out(actions)
    }

    /// The part table's actions as computations to start and frames to send, counted.
    fn carry_out(&mut self, actions: Vec<Action>) -> Result<Vec<Outgoing>, ConnectionError> {
        let mut outgoing = Vec::with_capacity(actions.len());
        for action in actions {
            match action {
                Action::Compute {
                    part_id,
                    task,
                    offset,
                    chunk,
                    cancel,
                    inputs,
                } => outgoing.push(Outgoing::Compute(Compute {
                    part_id,
                    task,
                    offset,
                    chunk,
                    cancel,
                    inputs,
                })),
                Action::Done {
                    part_id,
                    result,
                    compute,
                } => {
                    info_span!("part", id = part_id).in_scope(|| info!(?compute, "part done"));
                    self.parts_served += 1;
                    self.shared.parts_served.fetch_add(1, Ordering::Relaxed);
                    let nanos = compute.as_nanos().min(u64::MAX as u128) as u64;
                    let frames = result_frames(part_id, result, nanos)?;
                    outgoing.extend(frames.into_iter().map(Outgoing::Send));
                }
                Action::Failed { part_id, error } => {
                    info_span!("part", id = part_id).in_scope(|| {
                        if error.code == ErrorCode::Cancelled {
                            info!(%error, "part cancelled");
                        } else {
                            warn!(%error, "part failed");
                        }
                    });
                    outgoing.push(Outgoing::Send(Frame::Reply(Reply::PartFailed {
                        part_id,
                        error,
                    })));
                }
            }
        }
        self.count_in_flight();
        Ok(outgoing)
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
}

impl Drop for Session {
    /// However the connection ends, no kernel keeps computing for it.
    fn drop(&mut self) {
        self.parts.cancel_all();
        self.shared
            .parts_in_flight
            .fetch_sub(self.counted_in_flight, Ordering::Relaxed);
    }
}

/// The frame that tells a client why its connection ends after it broke the protocol.
pub fn closing(reason: &str) -> Frame {
    let error = RemoteError::new(ErrorCode::BadRequest, reason.to_owned());
    Frame::Reply(Reply::Closing { error })
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
