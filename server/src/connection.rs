//! One connection's life: handshake, requests, data, replies, and cleanup.
//!
//! A connection is served by a single task that owns all of its state, so nothing here
//! needs a lock. The task waits on three things at once: the next frame from the
//! client, the next kernel computation finishing on the executor, and shutdown. Every
//! part moves through the same steps: the request is checked against the limits, its
//! input chunks (if any) are handed to the executor as they arrive, and when all of its
//! input has arrived and every chunk is computed, the chunk results are combined and
//! sent back. When the client goes away, every part still running is cancelled, so the
//! worker threads are free again within about 100 ms.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::stream::FuturesUnordered;
use futures::{FutureExt, SinkExt, StreamExt};
use pool_common::codec::{Frame, FrameCodec, FrameError};
use pool_common::jobs::{compute_chunk, CancelFlag, Cancelled, PartResult, PartTask};
use pool_common::protocol::{
    ErrorCode, RemoteError, Reply, Request, ServerStatus, Welcome, PROTOCOL_VERSION,
};
use tokio::net::TcpStream;
use tokio_util::codec::Framed;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::executor::WorkLost;
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
    /// The peer sent nothing (or read nothing) for too long while the server waited on it.
    #[error("idle for {0:?}")]
    Idle(Duration),
    /// The peer broke the protocol.
    #[error("protocol violation: {0}")]
    Protocol(String),
}

/// A chunk computation finished on the executor.
struct Computed {
    part_id: u64,
    /// Whether the computation held a data chunk (counted against the read-ahead cap).
    had_data: bool,
    outcome: Result<Result<PartResult, Cancelled>, WorkLost>,
    elapsed: Duration,
}

/// A part accepted on this connection and not yet answered.
struct PartState {
    task: Arc<PartTask>,
    /// Input bytes still to arrive.
    remaining_input: u64,
    /// Chunk computations submitted and not yet finished.
    pending: usize,
    /// The chunk results combined so far.
    partial: Option<PartResult>,
    /// Time the executor spent on this part's chunks.
    compute: Duration,
    cancel: Arc<CancelFlag>,
    /// Set when the part was refused but its input is still arriving: the input is read
    /// and dropped, and no reply is sent on completion (the refusal was the reply).
    refused: bool,
}

/// Serves one accepted connection until the client leaves, the server shuts down, or the
/// client breaks the protocol.
pub struct Connection {
    framed: Framed<TcpStream, FrameCodec>,
    peer: SocketAddr,
    shared: Arc<Shared>,
    shutdown: CancellationToken,
    parts: HashMap<u64, PartState>,
    computations: FuturesUnordered<futures::future::BoxFuture<'static, Computed>>,
    /// Computations submitted with a data chunk and not yet finished.
    data_chunks_pending: usize,
    parts_served: u64,
}

impl Connection {
    /// Wraps an accepted socket.
    pub fn new(
        socket: TcpStream,
        peer: SocketAddr,
        shared: Arc<Shared>,
        shutdown: CancellationToken,
    ) -> Self {
        Connection {
            framed: Framed::new(socket, FrameCodec::new()),
            peer,
            shared,
            shutdown,
            parts: HashMap::new(),
            computations: FuturesUnordered::new(),
            data_chunks_pending: 0,
            parts_served: 0,
        }
    }

    /// Runs the connection to its end. Parts still running are cancelled on return
    /// (see the `Drop` impl).
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
            // small parts.
            let can_read = self.data_chunks_pending < max_pending_chunks;
            // With nothing computing, the server is waiting on the client (for a request,
            // or for the rest of a part's data); silence then must not last forever.
            let idle = self.computations.is_empty();
            tokio::select! {
                frame = self.framed.next(), if can_read => match frame {
                    None => return Ok(()),
                    Some(frame) => self.on_frame(frame?, shutting_down).await?,
                },
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
                () = self.shared.force_stop.cancelled() => {
                    return Err(ConnectionError::Protocol("server stopped after the grace period".into()));
                }
            }
            // Answer every computation already finished, then write all queued replies
            // in one go: one write call for a burst of small parts, not one per part.
            while let Some(Some(done)) = self.computations.next().now_or_never() {
                self.on_computed(done).await?;
            }
            if !self.framed.write_buffer().is_empty() {
                tokio::time::timeout(idle_timeout, self.framed.flush())
                    .await
                    .map_err(|_| ConnectionError::Idle(idle_timeout))??;
            }
            if shutting_down && self.parts.is_empty() {
                return Ok(());
            }
        }
    }

    async fn handshake(&mut self) -> Result<(), ConnectionError> {
        let timeout = self.shared.config.handshake_timeout;
        let first = tokio::time::timeout(timeout, self.framed.next())
            .await
            .map_err(|_| ConnectionError::HandshakeTimeout(timeout))?;
        match first {
            Some(Ok(Frame::Hello(hello))) => {
                if let Some(expected) = &self.shared.config.token {
                    let presented = hello.token.as_deref().unwrap_or("");
                    if !constant_time_eq(presented.as_bytes(), expected.as_bytes()) {
                        let reason = if hello.token.is_none() {
                            "this server requires a token: set `token` in the job file or POOL_TOKEN"
                        } else {
                            "wrong token: check `token` in the job file or POOL_TOKEN"
                        };
                        let _ = self.framed.send(Frame::Refused(reason.into())).await;
                        return Err(ConnectionError::Protocol(format!("refused: {reason}")));
                    }
                }
                debug!(peer = %self.peer, client = %hello.client, "handshake");
                let welcome = Welcome {
                    server: format!("pool-server {}", env!("CARGO_PKG_VERSION")),
                    workers: self.shared.executor.workers() as u32,
                };
                self.framed.send(Frame::Welcome(welcome)).await?;
                Ok(())
            }
            Some(Err(FrameError::VersionMismatch { peer })) => {
                let reason = format!(
                    "this server speaks pool protocol version {PROTOCOL_VERSION}, the client version {peer}: \
                     run the same pool release on both sides"
                );
                let _ = self.framed.send(Frame::Refused(reason)).await;
                Err(ConnectionError::Frame(FrameError::VersionMismatch { peer }))
            }
            Some(Err(e)) => Err(e.into()),
            Some(Ok(other)) => Err(ConnectionError::Protocol(format!(
                "expected a handshake, got {}",
                frame_name(&other)
            ))),
            None => Err(ConnectionError::Protocol(
                "closed before the handshake".into(),
            )),
        }
    }

    async fn on_frame(&mut self, frame: Frame, shutting_down: bool) -> Result<(), ConnectionError> {
        match frame {
            Frame::Request(Request::RunPart { part_id, task }) => {
                self.on_run_part(part_id, task, shutting_down).await
            }
            Frame::Data { part_id, bytes } => self.on_data(part_id, bytes),
            Frame::Request(Request::Status) => self.send(Reply::Status(self.status())).await,
            other => Err(ConnectionError::Protocol(format!(
                "unexpected {} frame",
                frame_name(&other)
            ))),
        }
    }

    async fn on_run_part(
        &mut self,
        part_id: u64,
        task: PartTask,
        shutting_down: bool,
    ) -> Result<(), ConnectionError> {
        if self.parts.contains_key(&part_id) {
            return self
                .close_with(format!("part id {part_id} is already in flight"))
                .await;
        }
        let Some(input_bytes) = task.input_bytes() else {
            return self
                .close_with(format!("part {part_id}: its input size overflows"))
                .await;
        };
        let config = &self.shared.config;
        let refusal = if shutting_down {
            Some(RemoteError::new(
                ErrorCode::ShuttingDown,
                "the server is shutting down",
            ))
        } else if let Err(reason) = task.validate() {
            Some(RemoteError::new(ErrorCode::BadRequest, reason))
        } else if input_bytes > config.max_part_bytes {
            Some(RemoteError::new(
                ErrorCode::LimitExceeded,
                format!(
                    "the part ships {input_bytes} bytes, over this server's limit of {} \
                     (use more parts, or raise pool-server --max-part-bytes)",
                    config.max_part_bytes
                ),
            ))
        } else if task.work_items() > config.max_part_work {
            Some(RemoteError::new(
                ErrorCode::LimitExceeded,
                format!(
                    "the part declares {} work items, over this server's limit of {} \
                     (use more parts, or raise pool-server --max-part-work)",
                    task.work_items(),
                    config.max_part_work
                ),
            ))
        } else if self.parts.len() >= config.max_parts_per_connection {
            Some(RemoteError::new(
                ErrorCode::LimitExceeded,
                format!(
                    "more than {} parts in flight on one connection (raise the server's --max-parts-per-connection)",
                    config.max_parts_per_connection
                ),
            ))
        } else {
            None
        };
        let cancel = Arc::new(CancelFlag::new());
        let mut state = PartState {
            task: Arc::new(task),
            remaining_input: input_bytes,
            pending: 0,
            partial: None,
            compute: Duration::ZERO,
            cancel,
            refused: refusal.is_some(),
        };
        if let Some(error) = refusal {
            info!(peer = %self.peer, part_id, %error, "part refused");
            self.send(Reply::PartFailed { part_id, error }).await?;
            if input_bytes > 0 {
                self.parts.insert(part_id, state);
            }
            return Ok(());
        }
        debug!(peer = %self.peer, part_id, task = ?state.task, "part accepted");
        if input_bytes == 0 {
            self.submit(part_id, &mut state, Bytes::new());
        }
        self.parts.insert(part_id, state);
        Ok(())
    }

    fn on_data(&mut self, part_id: u64, bytes: Bytes) -> Result<(), ConnectionError> {
        let Some(mut state) = self.parts.remove(&part_id) else {
            return Err(ConnectionError::Protocol(format!(
                "data for part {part_id}, which is not in flight"
            )));
        };
        let len = bytes.len() as u64;
        if len > state.remaining_input {
            return Err(ConnectionError::Protocol(format!(
                "part {part_id}: {len} bytes of data where {} remained",
                state.remaining_input
            )));
        }
        if let Err(reason) = state.task.check_chunk(bytes.len()) {
            return Err(ConnectionError::Protocol(format!(
                "part {part_id}: {reason}"
            )));
        }
        state.remaining_input -= len;
        if state.refused {
            if state.remaining_input > 0 {
                self.parts.insert(part_id, state);
            }
            return Ok(());
        }
        self.submit(part_id, &mut state, bytes);
        self.parts.insert(part_id, state);
        Ok(())
    }

    /// Hands one chunk of a part to the executor.
    fn submit(&mut self, part_id: u64, state: &mut PartState, chunk: Bytes) {
        let had_data = !chunk.is_empty();
        self.data_chunks_pending += usize::from(had_data);
        let task = Arc::clone(&state.task);
        let cancel = Arc::clone(&state.cancel);
        let work = self.shared.executor.run(move || {
            let started = Instant::now();
            let result = compute_chunk(&task, &chunk, &cancel);
            (result, started.elapsed())
        });
        state.pending += 1;
        self.computations.push(Box::pin(async move {
            match work.await {
                Ok((result, elapsed)) => Computed {
                    part_id,
                    had_data,
                    outcome: Ok(result),
                    elapsed,
                },
                Err(lost) => Computed {
                    part_id,
                    had_data,
                    outcome: Err(lost),
                    elapsed: Duration::ZERO,
                },
            }
        }));
    }

    async fn on_computed(&mut self, done: Computed) -> Result<(), ConnectionError> {
        self.data_chunks_pending -= usize::from(done.had_data);
        let Some(state) = self.parts.get_mut(&done.part_id) else {
            return Ok(()); // already answered with an error
        };
        state.pending -= 1;
        state.compute += done.elapsed;
        let failure = match done.outcome {
            Ok(Ok(result)) => match state.partial.map_or(Some(result), |p| p.combine(result)) {
                Some(combined) => {
                    state.partial = Some(combined);
                    None
                }
                None => Some(RemoteError::new(
                    ErrorCode::Internal,
                    "chunk results of different kinds",
                )),
            },
            Ok(Err(Cancelled)) => Some(RemoteError::new(
                ErrorCode::ShuttingDown,
                "the part was cancelled",
            )),
            Err(WorkLost) => Some(RemoteError::new(
                ErrorCode::Internal,
                "the kernel failed (see the server log)",
            )),
        };
        let part_id = done.part_id;
        if let Some(error) = failure {
            warn!(peer = %self.peer, part_id, %error, "part failed");
            let state = self.parts.get_mut(&part_id).expect("present");
            state.refused = true;
            state.cancel.cancel();
            if state.remaining_input == 0 && state.pending == 0 {
                self.parts.remove(&part_id);
            }
            return self.send(Reply::PartFailed { part_id, error }).await;
        }
        if state.remaining_input > 0 || state.pending > 0 {
            return Ok(());
        }
        let state = self.parts.remove(&part_id).expect("present");
        if state.refused {
            return Ok(());
        }
        let result = state.partial.expect("a finished part has a result");
        info!(peer = %self.peer, part_id, task = ?state.task, compute = ?state.compute, "part done");
        self.parts_served += 1;
        self.shared
            .parts_served
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.send(Reply::PartDone {
            part_id,
            result,
            compute_nanos: state.compute.as_nanos().min(u64::MAX as u128) as u64,
        })
        .await
    }

    /// The answer to a status request: counters only, nothing that waits.
    fn status(&self) -> ServerStatus {
        let shared = &self.shared;
        ServerStatus {
            server: format!("pool-server {}", env!("CARGO_PKG_VERSION")),
            workers: shared.executor.workers() as u32,
            parts_running: shared.executor.busy() as u32,
            parts_served: shared
                .parts_served
                .load(std::sync::atomic::Ordering::Relaxed),
            uptime_nanos: shared.started.elapsed().as_nanos().min(u64::MAX as u128) as u64,
        }
    }

    /// Queues a reply; the serve loop flushes once nothing else is ready. Both give up
    /// (ending the connection) if the client does not read its replies in time.
    async fn send(&mut self, reply: Reply) -> Result<(), ConnectionError> {
        let timeout = self.shared.config.idle_timeout;
        tokio::time::timeout(timeout, self.framed.feed(Frame::Reply(reply)))
            .await
            .map_err(|_| ConnectionError::Idle(timeout))??;
        Ok(())
    }

    /// Tells the client why the connection ends, then ends it.
    async fn close_with(&mut self, reason: String) -> Result<(), ConnectionError> {
        let error = RemoteError::new(ErrorCode::BadRequest, reason.clone());
        let _ = self
            .framed
            .send(Frame::Reply(Reply::Closing { error }))
            .await;
        Err(ConnectionError::Protocol(reason))
    }
}

impl Drop for Connection {
    /// However the connection ends (even if its task is dropped), no kernel keeps
    /// computing for it.
    fn drop(&mut self) {
        for part in self.parts.values() {
            part.cancel.cancel();
        }
    }
}

/// Compares two secrets in time that depends on their lengths only, not on where they
/// first differ, so the token cannot be guessed byte by byte from response times.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    let length_differs = a.len() != b.len();
    let mut difference = 0u8;
    for (i, expected) in b.iter().enumerate() {
        difference |= expected ^ a.get(i).copied().unwrap_or(!expected);
    }
    !length_differs && difference == 0
}

fn frame_name(frame: &Frame) -> &'static str {
    match frame {
        Frame::Hello(_) => "Hello",
        Frame::Welcome(_) => "Welcome",
        Frame::Refused(_) => "Refused",
        Frame::Request(_) => "Request",
        Frame::Reply(_) => "Reply",
        Frame::Data { .. } => "Data",
    }
}

#[cfg(test)]
mod tests {
    use super::constant_time_eq;

    #[test]
    fn tokens_compare_exactly() {
        assert!(constant_time_eq(b"secret", b"secret"));
        assert!(!constant_time_eq(b"secreT", b"secret"));
        assert!(!constant_time_eq(b"secret1", b"secret"));
        assert!(!constant_time_eq(b"secre", b"secret"));
        assert!(!constant_time_eq(b"", b"secret"));
    }
}
