//! One connection's life with blocking I/O: the threads, iterative and fork models
//! (see [`crate::models`]).
//!
//! The protocol and the part rules are the async model's (a [`Session`] over the
//! connection's part table); only the waiting differs. Two threads serve a connection.
//! The one that calls [`run`] shakes hands, then owns the session and the writing side:
//! it waits on one channel for what happens (a frame read, a chunk computed on the
//! executor), carries out what the session asks, and writes the replies. A reading
//! thread reads frames with blocking calls and sends them on the channel. It reads at
//! most [`FRAMES_AHEAD`] frames ahead of the session and none while many data chunks
//! wait for the executor, and every frame beyond a few kilobytes is first claimed from
//! the server's buffer budget, so the connection's memory stays bounded as on the
//! async model. Kernels run on the server's executor, never on these threads, so a
//! cancel is read and carried out while its part computes.

use std::io::{BufWriter, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use pool_common::auth;
use pool_common::codec::{write_frame_blocking, Frame, FrameError};
use tokio_util::sync::CancellationToken;
use tracing::{info, info_span, warn};

use crate::budget::{Account, Charge};
use crate::connection::ConnectionError;
use crate::reader::{is_timeout, BlockingFrameReader, Patience};
use crate::session::{self, Computed, Outgoing, Refusal, Session, Step};
use crate::Shared;

/// Frames the reading thread may read before the session has taken them.
pub const FRAMES_AHEAD: usize = 16;

/// How often a connection waiting for its client looks whether the server is shutting
/// down.
const STOP_POLL: Duration = Duration::from_millis(50);

/// Events handled before the replies they caused are written out.
const EVENTS_PER_WRITE: usize = 64;

/// Serves one accepted connection on the calling thread until the client leaves, the
/// server shuts down (`shutdown`, then its `force_stop`), or the client breaks the
/// protocol; logs how it ended.
pub fn run(
    socket: TcpStream,
    peer: SocketAddr,
    shared: &Arc<Shared>,
    shutdown: &CancellationToken,
) {
    let span = info_span!("connection", %peer);
    let _entered = span.enter();
    info!("connection opened");
    match serve(socket, shared, shutdown) {
        Ok(parts) => info!(parts, "connection closed"),
        Err(e) => warn!(error = %e, "connection closed"),
    }
}

/// What the serving thread waits for.
enum Event {
    /// The reading thread's next frame (or the end of the stream, or why reading failed).
    Read(Option<Result<Frame, FrameError>>),
    /// A chunk computation finished on the executor.
    Computed(Computed),
}

fn serve(
    socket: TcpStream,
    shared: &Arc<Shared>,
    shutdown: &CancellationToken,
) -> Result<u64, ConnectionError> {
    let config = &shared.config;
    let _ = socket.set_nodelay(true);
    let account = shared.buffers.account();
    let mut reader = BlockingFrameReader::new(
        socket.try_clone().map_err(FrameError::from)?,
        account.clone(),
    );
    let mut writer = Writer {
        out: BufWriter::new(socket.try_clone().map_err(FrameError::from)?),
        limit: config.handshake_timeout,
        timed_out: ConnectionError::HandshakeTimeout,
    };
    socket
        .set_write_timeout(Some(config.handshake_timeout))
        .map_err(FrameError::from)?;
    let mut session = Session::new(Arc::clone(shared));
    handshake(&mut reader, &mut writer, &session, shared)?;
    reader.handshake_done();
    socket
        .set_write_timeout(Some(config.idle_timeout))
        .map_err(FrameError::from)?;
    writer.limit = config.idle_timeout;
    writer.timed_out = ConnectionError::Idle;

    let (events, received) = mpsc::channel();
    let gate = Arc::new(Gate::default());
    let busy = Arc::new(AtomicBool::new(false));
    {
        let (events, gate, busy) = (events.clone(), Arc::clone(&gate), Arc::clone(&busy));
        let idle = config.idle_timeout;
        // Not joined: a read blocked on the budget ends when the budget grants it, and
        // a read on the socket when the socket is shut down below.
        std::thread::Builder::new()
            .name("pool-conn-reader".into())
            .spawn(move || {
                while gate.wait_to_read() {
                    let patience = Patience::WhileBusy { busy: &busy, idle };
                    let frame = reader.next(patience);
                    let last = !matches!(frame, Some(Ok(_)));
                    if events.send(Event::Read(frame)).is_err() || last {
                        return;
                    }
                }
            })
            .map_err(FrameError::from)?;
    }
    let mut driver = Driver {
        session: &mut session,
        writer,
        events,
        computing: 0,
        account,
        share_charges: Vec::new(),
        shared,
    };
    let ended = driver.serve(&received, &gate, &busy, shutdown);
    gate.end();
    let _ = socket.shutdown(Shutdown::Both);
    ended.map(|()| session.parts_served())
}

/// Reads the Hello, challenges a client of a server with a token, and welcomes it;
/// all of it before the handshake's deadline.
fn handshake(
    reader: &mut BlockingFrameReader,
    writer: &mut Writer,
    session: &Session,
    shared: &Shared,
) -> Result<(), ConnectionError> {
    let timeout = shared.config.handshake_timeout;
    let patience = Patience::Until(Instant::now() + timeout);
    let sent = |e: ConnectionError| Refusal {
        tell: None,
        error: e,
    };
    let shaken = (|| {
        session::hello(reader.next(patience))?;
        if let Some(token) = &shared.config.token {
            let nonce = auth::nonce();
            writer.send(&Frame::Challenge(nonce)).map_err(sent)?;
            writer.flush().map_err(sent)?;
            session::proof(token, &nonce, reader.next(patience))?;
        }
        writer.send(&session.welcome()).map_err(sent)?;
        writer.flush().map_err(sent)
    })();
    let Err(Refusal { tell, error }) = shaken else {
        return Ok(());
    };
    if let Some(reason) = tell {
        let _ = writer
            .send(&Frame::Refused(reason))
            .and_then(|()| writer.flush());
    }
    Err(match error {
        ConnectionError::Frame(FrameError::Io(e)) if is_timeout(&e) => {
            ConnectionError::HandshakeTimeout(timeout)
        }
        other => other,
    })
}

/// The writing side of a connection, whose socket has a write timeout.
struct Writer {
    out: BufWriter<TcpStream>,
    /// The socket's write timeout.
    limit: Duration,
    /// What a write that times out ends the connection with.
    timed_out: fn(Duration) -> ConnectionError,
}

impl Writer {
    /// Queues a frame (written once the buffer fills, or at [`Writer::flush`]).
    fn send(&mut self, frame: &Frame) -> Result<(), ConnectionError> {
        write_frame_blocking(&mut self.out, frame).map_err(|e| self.failed(e))
    }

    fn flush(&mut self) -> Result<(), ConnectionError> {
        self.out.flush().map_err(|e| self.failed(e.into()))
    }

    fn failed(&self, error: FrameError) -> ConnectionError {
        match error {
            FrameError::Io(e) if is_timeout(&e) => (self.timed_out)(self.limit),
            other => other.into(),
        }
    }
}

/// The serving thread's state once the handshake is done.
struct Driver<'a> {
    session: &'a mut Session,
    writer: Writer,
    /// Where computations report; the reading thread has its own sender.
    events: mpsc::Sender<Event>,
    /// Chunk computations handed to the executor and not reported yet.
    computing: usize,
    /// This connection's share of the server's buffer budget (the reader's too).
    account: Account,
    /// The memory of the shared inputs kept, for the connection's life.
    share_charges: Vec<Charge>,
    shared: &'a Arc<Shared>,
}

impl Driver<'_> {
    fn serve(
        &mut self,
        received: &mpsc::Receiver<Event>,
        gate: &Gate,
        busy: &AtomicBool,
        shutdown: &CancellationToken,
    ) -> Result<(), ConnectionError> {
        let config = &self.shared.config;
        let max_pending_chunks = config.max_pending_chunks();
        let mut shutting_down = false;
        loop {
            // As on the async model: no reading ahead while many data chunks wait for
            // the executor, and no idle timeout while a part computes.
            gate.set_open(self.session.parts().data_chunks_computing() < max_pending_chunks);
            busy.store(self.computing > 0, Ordering::Relaxed);
            let mut next = match received.recv_timeout(STOP_POLL) {
                Ok(event) => Some(event),
                Err(RecvTimeoutError::Timeout) => None,
                Err(RecvTimeoutError::Disconnected) => unreachable!("the driver holds a sender"),
            };
            let mut handled = 0;
            while let Some(event) = next {
                match event {
                    Event::Read(None) => return Ok(()),
                    Event::Read(Some(Err(FrameError::Io(e)))) if is_timeout(&e) => {
                        return Err(ConnectionError::Idle(config.idle_timeout))
                    }
                    Event::Read(Some(Err(e))) => return Err(e.into()),
                    Event::Read(Some(Ok(frame))) => {
                        gate.taken();
                        self.on_frame(frame, shutting_down)?;
                    }
                    Event::Computed(done) => {
                        self.computing -= 1;
                        let outgoing = self.session.computed(done)?;
                        self.carry_out(outgoing)?;
                    }
                }
                handled += 1;
                next = (handled < EVENTS_PER_WRITE)
                    .then(|| received.try_recv().ok())
                    .flatten();
            }
            // All replies of a burst in one write.
            self.writer.flush()?;
            if shutdown.is_cancelled() {
                shutting_down = true;
            }
            if self.shared.force_stop.is_cancelled() {
                return Err(ConnectionError::ForcedStop);
            }
            if shutting_down && self.session.parts().is_empty() {
                return Ok(());
            }
        }
    }

    fn on_frame(&mut self, frame: Frame, shutting_down: bool) -> Result<(), ConnectionError> {
        match self.session.on_frame(frame, shutting_down)? {
            Step::Do(outgoing) => self.carry_out(outgoing),
            Step::Keep(bytes) => {
                // Shares come before the connection's first part, so nothing of this
                // connection waits while the budget makes room.
                let claim = self.account.claim(bytes as usize);
                self.share_charges.push(futures::executor::block_on(claim));
                Ok(())
            }
            Step::Close(reason) => {
                let _ = self
                    .writer
                    .send(&session::closing(&reason))
                    .and_then(|()| self.writer.flush());
                Err(ConnectionError::Protocol(reason))
            }
        }
    }

    /// Does what the session asked: hands chunks to the executor, queues replies.
    fn carry_out(&mut self, outgoing: Vec<Outgoing>) -> Result<(), ConnectionError> {
        for next in outgoing {
            match next {
                Outgoing::Compute(compute) => {
                    self.computing += 1;
                    let part_id = compute.part_id();
                    let events = self.events.clone();
                    self.shared.executor.submit(
                        move || compute.run(),
                        move |result| {
                            let done = Computed::from_executor(part_id, result);
                            let _ = events.send(Event::Computed(done));
                        },
                    );
                }
                Outgoing::Send(frame) => self.writer.send(&frame)?,
            }
        }
        Ok(())
    }
}

/// When the reading thread may read its next frame.
#[derive(Default)]
struct Gate {
    state: Mutex<GateState>,
    changed: Condvar,
}

#[derive(Default)]
struct GateState {
    /// Frames read and not yet taken by the session.
    queued: usize,
    /// Whether the session wants more data now.
    closed: bool,
    /// Whether the connection has ended.
    ended: bool,
}

impl Gate {
    fn state(&self) -> std::sync::MutexGuard<'_, GateState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Waits until a frame may be read, and counts it; `false` once the connection
    /// has ended.
    fn wait_to_read(&self) -> bool {
        let mut state = self.state();
        while !state.ended && (state.closed || state.queued >= FRAMES_AHEAD) {
            state = self.changed.wait(state).unwrap_or_else(|p| p.into_inner());
        }
        state.queued += 1;
        !state.ended
    }

    /// The session took a frame.
    fn taken(&self) {
        self.state().queued -= 1;
        self.changed.notify_all();
    }

    fn set_open(&self, open: bool) {
        let mut state = self.state();
        if state.closed == open {
            state.closed = !open;
            self.changed.notify_all();
        }
    }

    fn end(&self) {
        self.state().ended = true;
        self.changed.notify_all();
    }
}
