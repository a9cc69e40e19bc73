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

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;
use std::time::Duration;

use futures::stream::FuturesUnordered;
use futures::{FutureExt, SinkExt, StreamExt};
use pool_common::auth;
use pool_common::codec::{Frame, FrameCodec, FrameError};
use pool_common::tls::{ReadHalf, WriteHalf};
use tokio_util::codec::FramedWrite;
use tokio_util::sync::CancellationToken;

use crate::budget::{Account, Charge, Claim};
use crate::executor::WorkLost;
use crate::reader::FrameReader;
use crate::session::{self, Computed, Outgoing, Refusal, Session, Step};
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

/// The most frames one pass of the serve loop takes from what is already read before
/// it writes the replies: a burst of small parts is answered in one write, and the
/// other events (a computation done, shutdown) wait at most this many frames.
const BURST_FRAMES: usize = 64;

/// Serves one accepted connection until the client leaves, the server shuts down, or the
/// client breaks the protocol.
pub struct Connection {
    reader: FrameReader,
    writer: FramedWrite<WriteHalf, FrameCodec>,
    shared: Arc<Shared>,
    shutdown: CancellationToken,
    session: Session,
    /// This connection's share of the server's buffer budget (the reader's too).
    account: Account,
    /// A shared input announced and kept, whose memory the budget has not granted yet:
    /// its data is not read before.
    share_claim: Option<Claim>,
    /// The memory of the shared inputs kept, for the connection's life.
    share_charges: Vec<Charge>,
    computations: FuturesUnordered<futures::future::BoxFuture<'static, Computed>>,
}

impl Connection {
    /// Wraps an accepted connection's two directions (plain TCP, or TLS once its
    /// handshake is done).
    pub fn new(
        (read_half, write_half): (ReadHalf, WriteHalf),
        shared: Arc<Shared>,
        shutdown: CancellationToken,
    ) -> Self {
        let account = shared.buffers.account();
        Connection {
            reader: FrameReader::new(read_half, account.clone()),
            writer: lazy_writer(write_half),
            shutdown,
            session: Session::new(Arc::clone(&shared)),
            account,
            share_claim: None,
            share_charges: Vec::new(),
            computations: FuturesUnordered::new(),
            shared,
        }
    }

    /// Runs the connection to its end and returns the parts it answered with a result.
    /// Parts still running are cancelled on return (when the [`Session`] is dropped).
    /// Run it inside a span naming the peer: every log line of the connection carries
    /// it.
    pub async fn run(mut self) -> Result<u64, ConnectionError> {
        self.serve().await.map(|()| self.session.parts_served())
    }

    async fn serve(&mut self) -> Result<(), ConnectionError> {
        self.handshake().await?;
        let config = &self.shared.config;
        let idle_timeout = config.idle_timeout;
        let mut shutting_down = false;
        loop {
            let can_read = self.can_read();
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
                    if self.session.parts().is_empty() {
                        return Ok(());
                    }
                }
                () = tokio::time::sleep(idle_timeout), if idle => {
                    return Err(ConnectionError::Idle(idle_timeout));
                }
                () = self.shared.force_stop.cancelled() => return Err(ConnectionError::ForcedStop),
            }
            // Take the frames already read (a burst of requests), answer every
            // computation already finished, then write all queued replies in one go:
            // one write call for a burst of small parts, not one per part.
            for _ in 1..BURST_FRAMES {
                if !self.can_read() {
                    break;
                }
                match self.reader.next().now_or_never() {
                    Some(Some(frame)) => self.on_frame(frame?, shutting_down).await?,
                    Some(None) => return Ok(()),
                    None => break,
                }
            }
            while let Some(Some(done)) = self.computations.next().now_or_never() {
                self.on_computed(done).await?;
            }
            if !self.writer.write_buffer().is_empty() {
                tokio::time::timeout(idle_timeout, self.writer.flush())
                    .await
                    .map_err(|_| ConnectionError::Idle(idle_timeout))??;
            }
            if shutting_down && self.session.parts().is_empty() {
                return Ok(());
            }
        }
    }

    /// Reads the Hello, challenges a client of a server with a token, and welcomes it;
    /// all of it within the handshake timeout, so a peer that stops answering (or
    /// reading) midway cannot hold the connection.
    async fn handshake(&mut self) -> Result<(), ConnectionError> {
        let timeout = self.shared.config.handshake_timeout;
        let shaken = tokio::time::timeout(timeout, self.shake_hands())
            .await
            .map_err(|_| ConnectionError::HandshakeTimeout(timeout))?;
        match shaken {
            Ok(()) => Ok(()),
            Err(Refusal { tell, error }) => {
                if let Some(reason) = tell {
                    let _ = tokio::time::timeout(timeout, self.writer.send(Frame::Refused(reason)))
                        .await;
                }
                Err(error)
            }
        }
    }

    async fn shake_hands(&mut self) -> Result<(), Refusal> {
        let sent = |e: FrameError| Refusal {
            tell: None,
            error: e.into(),
        };
        session::hello(self.reader.next().await)?;
        let shared = Arc::clone(&self.shared);
        if let Some(token) = &shared.config.token {
            let nonce = auth::nonce();
            self.writer
                .send(Frame::Challenge(nonce))
                .await
                .map_err(sent)?;
            session::proof(token, &nonce, self.reader.next().await)?;
        }
        self.writer
            .send(self.session.welcome())
            .await
            .map_err(sent)?;
        self.reader.handshake_done();
        Ok(())
    }

    /// Whether to read the next frame now. Not while many data chunks wait for the
    /// executor: the client then waits on TCP, and this connection's memory stays
    /// bounded. Parts without data hold no buffer (their number is bounded by the parts
    /// limit), so they do not count: reading them ahead keeps the executor from idling
    /// between small parts. A shared input's data waits until the budget has room.
    fn can_read(&self) -> bool {
        self.session.parts().data_chunks_computing() < self.shared.config.max_pending_chunks()
            && self.share_claim.is_none()
    }

    async fn on_frame(&mut self, frame: Frame, shutting_down: bool) -> Result<(), ConnectionError> {
        match self.session.on_frame(frame, shutting_down)? {
            Step::Do(outgoing) => self.carry_out(outgoing).await,
            Step::Keep(bytes) => {
                self.share_claim = Some(self.account.claim(bytes as usize));
                Ok(())
            }
            Step::Close(reason) => self.close_with(reason).await,
        }
    }

    async fn on_computed(&mut self, done: Computed) -> Result<(), ConnectionError> {
        let outgoing = self.session.computed(done)?;
        self.carry_out(outgoing).await
    }

    /// Does what the session asked: hands chunks to the executor, sends replies.
    async fn carry_out(&mut self, outgoing: Vec<Outgoing>) -> Result<(), ConnectionError> {
        for next in outgoing {
            match next {
                // The one computation on the runtime: a part too small to be worth two
                // thread wake-ups, answered with the replies this pass of the loop sends.
                Outgoing::Compute(compute) if compute.is_tiny() => {
                    let part_id = compute.part_id();
                    let done =
                        catch_unwind(AssertUnwindSafe(|| compute.run())).map_err(|_| WorkLost);
                    self.computations
                        .push(Box::pin(std::future::ready(Computed::from_executor(
                            part_id, done,
                        ))));
                }
                Outgoing::Compute(compute) => {
                    let part_id = compute.part_id();
                    let work = self.shared.executor.run(move || compute.run());
                    self.computations.push(Box::pin(async move {
                        Computed::from_executor(part_id, work.await)
                    }));
                }
                Outgoing::Send(frame) => self.send(frame).await?,
            }
        }
        Ok(())
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
        let closing = self.writer.send(session::closing(&reason));
        // A client that reads nothing must not hold the connection open.
        let _ = tokio::time::timeout(self.shared.config.idle_timeout, closing).await;
        Err(ConnectionError::Protocol(reason))
    }
}

/// A frame writer whose buffer is allocated at its first frame and grows to what the
/// replies need, rather than 8 KiB up front: an idle connection holds a few bytes
/// (tokio-util's default capacity was most of an idle connection's memory). Frames are
/// still gathered up to 8 KiB before the writer flushes on its own.
fn lazy_writer(write_half: WriteHalf) -> FramedWrite<WriteHalf, FrameCodec> {
    let mut writer = FramedWrite::with_capacity(write_half, FrameCodec::new(), 0);
    writer.set_backpressure_boundary(8 << 10);
    writer
}

/// Waits for the budget to grant `claim`; never resolves without one.
async fn granted(claim: &mut Option<Claim>) -> Charge {
    match claim {
        Some(claim) => claim.await,
        None => std::future::pending().await,
    }
}
