//! A client's connection to one server, shared by every part sent there.
//!
//! Parts are multiplexed: each gets an id, its request and data frames are written under
//! a lock (so one part's chunks are never interleaved with another's), and a reader task
//! routes each reply to the part waiting for it, assembling large results that follow
//! their reply in data frames. A part no longer wanted is cancelled by id, and the
//! others go on. If the connection fails, every part still waiting on it gets the
//! error, so nothing waits forever.
//!
//! A connection may be used before the server has answered its Hello
//! ([`ServerConnection::start`]): the first requests then travel right behind the
//! handshake instead of a round trip later, and a refusal reaches every part sent
//! meanwhile as the server's reason.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::{SinkExt, StreamExt};
use pool_common::auth;
use pool_common::codec::{encode_data_header, Frame, FrameCodec, FrameError};
use pool_common::jobfile::ClientSettings;
use pool_common::jobs::{JobInputs, Part, PartResult, PartTask};
use pool_common::protocol::{ErrorCode, Hello, RemoteError, Reply, Request, ServerStatus, Welcome};
use pool_common::tls::{plain_halves, ReadHalf, WriteHalf};
use pool_common::wire::{frames_len, part_frames, share_frames, IncomingResult};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;
use tokio_util::codec::{FramedRead, FramedWrite};

use crate::tls::ClientTls;

/// What went wrong with a server. Every message names the server.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ServerError {
    /// No TCP connection could be made.
    #[error("cannot connect to server {address}: {reason} (is pool-server running there, and can this machine reach its port?)")]
    Connect {
        /// The server as the user wrote it.
        address: String,
        /// Why.
        reason: String,
    },
    /// The server did not answer in time.
    #[error("server {address} did not answer within {timeout:?} ({what})")]
    Timeout {
        /// The server.
        address: String,
        /// What we waited for.
        what: &'static str,
        /// How long we waited.
        timeout: Duration,
    },
    /// The TLS handshake failed: the server's certificate is not the one trusted, or the
    /// server does not speak TLS.
    #[error("TLS with server {address} failed: {reason}")]
    Tls {
        /// The server.
        address: String,
        /// Why, and what to change.
        reason: String,
    },
    /// The server refused the handshake (e.g. another protocol version).
    #[error("server {address} refused the connection: {reason}")]
    Refused {
        /// The server.
        address: String,
        /// The server's reason.
        reason: String,
    },
    /// The peer is not a pool server, or speaks another protocol version.
    #[error("server {address}: {source}")]
    Protocol {
        /// The server.
        address: String,
        /// What was wrong.
        source: Arc<FrameError>,
    },
    /// The server reported an error for a part or the connection.
    #[error("server {address} reported {error}")]
    Remote {
        /// The server.
        address: String,
        /// The server's error.
        error: RemoteError,
    },
    /// The server sent a result its part could not have produced (the wrong kind, or
    /// out of range): it is broken or hostile.
    #[error("server {address} sent a result part {part} could not have produced (wrong kind or out of range)")]
    BadResult {
        /// The server.
        address: String,
        /// The part's index in the job.
        part: usize,
    },
    /// The connection broke.
    #[error("server {address} closed the connection: {reason}")]
    Closed {
        /// The server.
        address: String,
        /// Why, if known.
        reason: String,
    },
}

impl ServerError {
    /// The server said it is shutting down (SIGTERM or Ctrl-C): it finishes what it
    /// holds but takes nothing new, so it is no place for another part.
    pub fn is_shutting_down(&self) -> bool {
        matches!(self, ServerError::Remote { error, .. } if error.code == ErrorCode::ShuttingDown)
    }
}

/// What a connection needs besides the address: how long to wait for each step, the
/// token whose knowledge the client proves when a server challenges it, and whether to
/// speak TLS. The default is the job file's defaults.
#[derive(Clone)]
pub struct ConnectOptions {
    /// For the TCP connection to be made.
    pub connect_timeout: Duration,
    /// For the server to answer the handshake.
    pub handshake_timeout: Duration,
    /// For a part's result, from the start of sending it; `None` derives it from the
    /// work queued on the connection (see [`ServerConnection::run_part`]).
    pub part_timeout: Option<Duration>,
    /// The shared secret for servers started with `--token`; it never goes on the wire.
    pub token: Option<String>,
    /// TLS for every connection (servers started with `--tls`); `None` for plain TCP.
    pub tls: Option<ClientTls>,
}

impl ConnectOptions {
    /// The options a job file asks for. Fails only for a `tls_ca` file whose
    /// certificates rustls cannot use (the message names it).
    pub fn from_settings(settings: &ClientSettings) -> Result<Self, String> {
        Ok(ConnectOptions {
            connect_timeout: settings.connect_timeout,
            handshake_timeout: settings.handshake_timeout,
            part_timeout: settings.part_timeout,
            token: settings.token.clone(),
            tls: settings.tls.as_ref().map(ClientTls::new).transpose()?,
        })
    }
}

impl Default for ConnectOptions {
    fn default() -> Self {
        ConnectOptions::from_settings(&ClientSettings::default()).expect("no TLS to set up")
    }
}

/// The least time a part is given when its timeout is derived.
const PART_TIMEOUT_BASE: Duration = Duration::from_secs(30);

/// A pessimistic compute time per work item (loop iteration or matrix element): several
/// times what a slow core needs, so a derived timeout fires only on a server that is
/// gone or stuck, never on one that is merely busy.
const PESSIMISTIC_NANOS_PER_ITEM: u64 = 10;

/// A server's answer to one part, with the times that explain it.
#[derive(Debug, Clone)]
pub struct PartReply {
    /// The part's result.
    pub result: PartResult,
    /// Time to write the request and the part's data (client clock).
    pub send: Duration,
    /// From the start of sending to the reply (client clock).
    pub round_trip: Duration,
    /// Time the server spent computing (server clock, a duration only).
    pub compute: Duration,
}

/// A part waiting for its answer, as the reader task sees it.
struct PartWaiter {
    /// The task, to bound and check a large result as it arrives.
    task: PartTask,
    /// A large result arriving in data frames, once its reply announced it.
    incoming: Option<(IncomingResult, u64)>,
    answer: oneshot::Sender<Result<Reply, ServerError>>,
}

#[derive(Default)]
struct Waiting {
    parts: HashMap<u64, PartWaiter>,
    /// Status requests in the order they were sent; the server answers in order.
    status: VecDeque<oneshot::Sender<ServerStatus>>,
    /// Set once the connection has failed; later parts fail at once with it.
    failed: Option<ServerError>,
}

/// Where a connection's handshake stands.
#[derive(Clone)]
enum Handshake {
    /// The server's answer to the Hello has not been read yet.
    Pending,
    /// The server welcomed the client, or refused it, or the connection failed first.
    Answered(Result<Welcome, ServerError>),
}

/// The state a connection's reader and its parts share.
struct Shared {
    address: String,
    writer: tokio::sync::Mutex<FramedWrite<WriteHalf, FrameCodec>>,
    waiting: Mutex<Waiting>,
    reader: Mutex<Option<JoinHandle<()>>>,
    /// Set by the reader once the server answers the Hello, or by a failure before.
    handshake: watch::Sender<Handshake>,
}

impl Shared {
    fn waiting(&self) -> std::sync::MutexGuard<'_, Waiting> {
        self.waiting.lock().expect("waiting lock poisoned")
    }

    /// Marks the connection failed: every part waiting on it, and every later one, gets
    /// `failure`, and nothing more is read from it.
    fn fail(&self, failure: ServerError) {
        let mut waiting = self.waiting();
        for (_, waiter) in waiting.parts.drain() {
            let _ = waiter.answer.send(Err(failure.clone()));
        }
        waiting.status.clear();
        let failure = waiting.failed.get_or_insert(failure).clone();
        drop(waiting);
        self.handshake.send_if_modified(|handshake| {
            let pending = matches!(handshake, Handshake::Pending);
            if pending {
                *handshake = Handshake::Answered(Err(failure));
            }
            pending
        });
        if let Some(reader) = self.reader.lock().expect("reader lock poisoned").take() {
            reader.abort();
        }
    }

    fn failure(&self) -> Option<ServerError> {
        self.waiting().failed.clone()
    }

    fn closed(&self, reason: impl Into<String>) -> ServerError {
        ServerError::Closed {
            address: self.address.clone(),
            reason: reason.into(),
        }
    }

    /// The server's answer to the Hello, once it is read (or the connection fails).
    async fn welcome(&self) -> Result<Welcome, ServerError> {
        let mut handshake = self.handshake.subscribe();
        let answered = handshake
            .wait_for(|handshake| matches!(handshake, Handshake::Answered(_)))
            .await
            .map_err(|_| self.closed("the connection's reader stopped"))?;
        match &*answered {
            Handshake::Answered(answer) => answer.clone(),
            Handshake::Pending => unreachable!("waited for an answer"),
        }
    }

    /// The error for a write that failed with `error` while sending `what`. A server
    /// that refuses the handshake closes without reading what followed the Hello, so a
    /// write may fail before the refusal is read: the refusal is then the reason.
    async fn write_failed(&self, what: String, error: FrameError) -> ServerError {
        match self.welcome().await {
            Err(refused) => refused,
            Ok(_) => self.closed(format!("{what}: {error}")),
        }
    }

    /// Writes `frame` and flushes it.
    async fn send_frame(&self, frame: Frame) -> Result<(), FrameError> {
        let mut writer = self.writer.lock().await;
        writer.send(frame).await
    }
}

/// An open connection to one server.
pub struct ServerConnection {
    shared: Arc<Shared>,
    next_part_id: AtomicU64,
    /// Pessimistic compute time, in nanoseconds, of the parts in flight here.
    queued_nanos: AtomicU64,
    part_timeout: Option<Duration>,
    /// How long a liveness probe may wait for the server's status.
    probe_timeout: Duration,
}

impl ServerConnection {
    /// Connects to `address` (`host:port`) and completes the handshake.
    pub async fn connect(
        address: &str,
        options: &ConnectOptions,
    ) -> Result<ServerConnection, ServerError> {
        let connection = ServerConnection::start(address, options).await?;
        connection.welcome().await?;
        Ok(connection)
    }

    /// Connects to `address` (`host:port`) and sends the Hello (and, to a server that
    /// challenges it, the token's proof), without waiting for the server's welcome:
    /// requests made at once travel right behind the Hello, saving a round trip. If the
    /// server refuses the connection instead, every part sent meanwhile fails with its
    /// reason, as does [`ServerConnection::welcome`].
    pub async fn start(
        address: &str,
        options: &ConnectOptions,
    ) -> Result<ServerConnection, ServerError> {
        let ((reader, writer), answer) = begin_handshake(address, options, "").await?;
        let shared = Arc::new(Shared {
            address: address.to_string(),
            writer: tokio::sync::Mutex::new(writer),
            waiting: Mutex::new(Waiting::default()),
            reader: Mutex::new(None),
            handshake: watch::Sender::new(Handshake::Pending),
        });
        let task = tokio::spawn(route_replies(
            reader,
            Arc::clone(&shared),
            answer,
            options.handshake_timeout,
        ));
        *shared.reader.lock().expect("reader lock poisoned") = Some(task);
        Ok(ServerConnection {
            shared,
            next_part_id: AtomicU64::new(0),
            queued_nanos: AtomicU64::new(0),
            part_timeout: options.part_timeout,
            probe_timeout: options.handshake_timeout,
        })
    }

    /// The server's address as given.
    pub fn address(&self) -> &str {
        &self.shared.address
    }

    /// What the server said about itself in the handshake, once it has said it; the
    /// server's refusal (or why the connection failed first) otherwise.
    pub async fn welcome(&self) -> Result<Welcome, ServerError> {
        self.shared.welcome().await
    }

    /// Whether the connection has failed; a failed connection fails every part at once.
    pub fn is_broken(&self) -> bool {
        self.shared.failure().is_some()
    }

    /// Asks the server how it is doing, on this connection. A server that does not
    /// answer within the handshake timeout, counted from when the request is written
    /// (it may wait behind another part's upload), is taken for dead: the connection
    /// fails.
    pub async fn status(&self) -> Result<ServerStatus, ServerError> {
        match self.probe(self.probe_timeout).await? {
            Some(status) => Ok(status),
            None => {
                let error = ServerError::Timeout {
                    address: self.address().to_string(),
                    what: "a status request",
                    timeout: self.probe_timeout,
                };
                self.shared.fail(error.clone());
                Err(error)
            }
        }
    }

    /// Asks the server how it is doing and waits up to `timeout` for the answer,
    /// counted from when the request is written. `None` if it did not answer in time:
    /// the connection stays open, and a late answer is dropped.
    pub async fn probe(&self, timeout: Duration) -> Result<Option<ServerStatus>, ServerError> {
        let (tx, rx) = oneshot::channel();
        {
            let mut writer = self.shared.writer.lock().await;
            {
                // Registered under the writer's lock, so waiters and requests stay in
                // the same order, and only once nothing can fail before the write.
                let mut waiting = self.shared.waiting();
                if let Some(error) = &waiting.failed {
                    return Err(error.clone());
                }
                waiting.status.push_back(tx);
            }
            if let Err(e) = writer.send(Frame::Request(Request::Status)).await {
                let error = self.shared.closed(format!("asking for its status: {e}"));
                self.shared.fail(error.clone());
                return Err(error);
            }
        }
        let answered = async {
            rx.await.map_err(|_| {
                self.shared
                    .failure()
                    .unwrap_or_else(|| self.shared.closed("the connection's reader stopped"))
            })
        };
        match tokio::time::timeout(timeout, answered).await {
            Ok(answer) => answer.map(Some),
            Err(_) => Ok(None),
        }
    }

    /// Sends `part` (its task and its data) and waits for the server's answer.
    ///
    /// Without a fixed part timeout, the part is given [`PART_TIMEOUT_BASE`] plus a
    /// pessimistic compute time for itself and every part in flight before it on this
    /// connection, since the server may compute those first.
    ///
    /// A part that times out, or whose future is dropped (its result is no longer
    /// wanted), is cancelled on the server by id; the connection's other parts go on.
    /// After a timeout the server must still answer a status request, or the whole
    /// connection is failed: a server that answers nothing at all is gone.
    pub async fn run_part(&self, part: &Part) -> Result<PartReply, ServerError> {
        self.run_part_with(part, || {}).await
    }

    /// [`ServerConnection::run_part`], calling `on_sent` once the part's last byte is
    /// written (progress bars count bytes shipped with it).
    pub async fn run_part_with(
        &self,
        part: &Part,
        on_sent: impl FnOnce(),
    ) -> Result<PartReply, ServerError> {
        let estimate = part
            .task
            .work_items()
            .saturating_mul(PESSIMISTIC_NANOS_PER_ITEM);
        let queued = QueuedEstimate::add(&self.queued_nanos, estimate);
        let timeout = self
            .part_timeout
            .unwrap_or(PART_TIMEOUT_BASE.saturating_add(Duration::from_nanos(queued.total)));
        let outcome = tokio::time::timeout(timeout, self.send_and_wait(part, on_sent)).await;
        drop(queued);
        match outcome {
            Ok(answer) => answer,
            Err(_) => {
                // The part was cancelled as its future was dropped; whether the
                // server is alive at all decides the fate of the rest.
                let _ = self.status().await;
                Err(ServerError::Timeout {
                    address: self.address().to_string(),
                    what: "a part's result",
                    timeout,
                })
            }
        }
    }

    async fn send_and_wait(
        &self,
        part: &Part,
        on_sent: impl FnOnce(),
    ) -> Result<PartReply, ServerError> {
        let part_id = self.next_part_id.fetch_add(1, Ordering::Relaxed);
        let (answer, reply) = oneshot::channel();
        {
            let mut waiting = self.shared.waiting();
            if let Some(error) = &waiting.failed {
                return Err(error.clone());
            }
            let waiter = PartWaiter {
                task: part.task.clone(),
                incoming: None,
                answer,
            };
            waiting.parts.insert(part_id, waiter);
        }
        let mut in_flight = InFlight {
            shared: &self.shared,
            part_id,
            stage: Stage::Queued,
        };
        let started = Instant::now();
        self.send_part(part_id, part, &mut in_flight.stage).await?;
        let send = started.elapsed();
        on_sent();
        let reply = reply
            .await
            .unwrap_or_else(|_| Err(self.shared.closed("the connection's reader stopped")));
        // Answered, or its connection failed: either way nothing is left to cancel.
        in_flight.stage = Stage::Answered;
        let reply = reply?;
        let round_trip = started.elapsed();
        match reply {
            Reply::PartDone { result, .. } if !part.task.could_produce(&result) => {
                Err(ServerError::BadResult {
                    address: self.address().to_string(),
                    part: part.index,
                })
            }
            Reply::PartDone {
                result,
                compute_nanos,
                ..
            } => Ok(PartReply {
                result,
                send,
                round_trip,
                compute: Duration::from_nanos(compute_nanos),
            }),
            Reply::PartFailed { error, .. } | Reply::Closing { error } => {
                Err(ServerError::Remote {
                    address: self.address().to_string(),
                    error,
                })
            }
            Reply::PartDoneLarge { .. } | Reply::Status(_) => {
                unreachable!("the reader assembles large results and routes status replies")
            }
        }
    }

    /// Writes the part's frames once the writer is free, moving `stage` from queued to
    /// sending to sent.
    ///
    /// A part without data is only queued in the writer's buffer; the part then lets
    /// the other parts ready to go queue theirs (one yield to the runtime) before it
    /// flushes, so a burst of parts leaves in one write rather than one each. A part
    /// dropped at that point is withdrawn by a cancel, whose write flushes it too.
    async fn send_part(
        &self,
        part_id: u64,
        part: &Part,
        stage: &mut Stage,
    ) -> Result<(), ServerError> {
        let what = || format!("sending part {}", part.index);
        let batched = part.input.is_empty();
        {
            let mut writer = self.shared.writer.lock().await;
            if let Some(error) = self.shared.failure() {
                return Err(error);
            }
            *stage = Stage::Sending;
            let frames = part_frames(part_id, &part.task, &part.input);
            let flush = if batched { Flush::Later } else { Flush::Now };
            write_frames(&self.shared, &mut writer, frames, flush, &what).await?;
            *stage = Stage::Sent;
        }
        if batched {
            tokio::task::yield_now().await;
            let mut writer = self.shared.writer.lock().await;
            // Empty if a part queued after this one has flushed it already.
            if !writer.write_buffer().is_empty() {
                write_frames(
                    &self.shared,
                    &mut writer,
                    std::iter::empty(),
                    Flush::Now,
                    &what,
                )
                .await?;
            }
        }
        Ok(())
    }

    /// Ships the job's shared inputs. Call it once, before the connection's first part:
    /// the server refuses shares after a part. Returns the bytes written.
    pub async fn share(&self, inputs: &JobInputs) -> Result<u64, ServerError> {
        let mut writer = self.shared.writer.lock().await;
        let mut sent = 0;
        for input in inputs.inputs() {
            let input_id = self.next_part_id.fetch_add(1, Ordering::Relaxed);
            sent += frames_len(share_frames(input_id, input));
            write_frames(
                &self.shared,
                &mut writer,
                share_frames(input_id, input),
                Flush::Now,
                &|| format!("sending the job's file {:?}", input.name),
            )
            .await?;
        }
        Ok(sent)
    }
}

/// Whether [`write_frames`] flushes what it wrote.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Flush {
    /// Before returning.
    Now,
    /// Not: the caller flushes soon (the writer may still flush a full buffer).
    Later,
}

/// Writes `frames` and, as `flush` says, flushes them (and whatever the writer held
/// before), stopping if the connection fails meanwhile. Data frames' payloads go from
/// the job's memory straight to the socket, not copied into the codec's buffer. A
/// failure to write fails the connection, saying `what` was being sent.
async fn write_frames(
    shared: &Shared,
    writer: &mut FramedWrite<WriteHalf, FrameCodec>,
    frames: impl Iterator<Item = Frame>,
    flush: Flush,
    what: &(dyn Fn() -> String + Sync),
) -> Result<(), ServerError> {
    let written = async {
        for frame in frames {
            // A connection that failed meanwhile takes nothing more.
            if let Some(error) = shared.failure() {
                return Err(SendError::Failed(error));
            }
            match frame {
                Frame::Data { part_id, bytes } => {
                    encode_data_header(part_id, bytes.len(), writer.write_buffer_mut())?;
                    writer.flush().await?;
                    writer.get_mut().write_all(&bytes).await?;
                }
                other => writer.feed(other).await?,
            }
        }
        if flush == Flush::Now {
            writer.flush().await?;
        }
        Ok(())
    }
    .await;
    match written {
        Ok(()) => Ok(()),
        Err(SendError::Failed(error)) => Err(error),
        Err(SendError::Frame(e)) => Err(shared.write_failed(what(), e).await),
    }
}

/// Why a part's frames were not all written.
#[derive(Debug, thiserror::Error)]
enum SendError {
    /// The connection failed meanwhile, for this reason.
    #[error("{0}")]
    Failed(ServerError),
    /// Writing failed.
    #[error("{0}")]
    Frame(#[from] FrameError),
}

impl From<std::io::Error> for SendError {
    fn from(e: std::io::Error) -> Self {
        SendError::Frame(e.into())
    }
}

/// A part's pessimistic compute time, counted among the connection's queued work for
/// as long as the part is in flight, however its wait ends.
struct QueuedEstimate<'a> {
    counter: &'a AtomicU64,
    estimate: u64,
    /// The connection's queued work, this part's included, when it was added.
    total: u64,
}

impl<'a> QueuedEstimate<'a> {
    fn add(counter: &'a AtomicU64, estimate: u64) -> Self {
        let total = counter
            .fetch_add(estimate, Ordering::Relaxed)
            .saturating_add(estimate);
        QueuedEstimate {
            counter,
            estimate,
            total,
        }
    }
}

impl Drop for QueuedEstimate<'_> {
    fn drop(&mut self) {
        self.counter.fetch_sub(self.estimate, Ordering::Relaxed);
    }
}

/// How far a part has got on its connection, for [`InFlight`]'s clean-up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stage {
    /// Waiting for the writer (other parts are being written); nothing sent yet.
    Queued,
    /// Its frames are being written.
    Sending,
    /// Written whole; no answer yet.
    Sent,
    /// Answered.
    Answered,
}

/// Cleans up after a part however its wait ends: answered, failed, timed out, or its
/// future dropped because its result is no longer wanted.
struct InFlight<'a> {
    shared: &'a Arc<Shared>,
    part_id: u64,
    stage: Stage,
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.shared.waiting().parts.remove(&self.part_id);
        match self.stage {
            Stage::Queued | Stage::Answered => {}
            // Cut off mid-frame, the byte stream can no longer be parsed by the server.
            Stage::Sending => self.shared.fail(
                self.shared
                    .closed("a part was abandoned while it was being sent"),
            ),
            Stage::Sent => {
                // Withdraw it so its worker is freed; a late answer finds no waiter and
                // is dropped.
                if let Ok(runtime) = tokio::runtime::Handle::try_current() {
                    let shared = Arc::clone(self.shared);
                    let part_id = self.part_id;
                    runtime.spawn(async move {
                        let _ = shared
                            .send_frame(Frame::Request(Request::Cancel { part_id }))
                            .await;
                    });
                }
            }
        }
    }
}

/// A connection's frames coming in, and its frames going out.
pub type Frames = (
    FramedRead<ReadHalf, FrameCodec>,
    FramedWrite<WriteHalf, FrameCodec>,
);

/// Connects to `address` and completes the handshakes (TLS's, if the options ask for
/// it, then pool's), each within the options' handshake timeout. Returns the
/// connection's frames in and out, and the server's welcome. `purpose` is appended to
/// the client's name in the server's log (e.g. " (status)").
pub async fn open(
    address: &str,
    options: &ConnectOptions,
    purpose: &str,
) -> Result<(Frames, Welcome), ServerError> {
    let ((mut reader, writer), answer) = begin_handshake(address, options, purpose).await?;
    let welcome = finish_handshake(address, &mut reader, answer, options.handshake_timeout).await?;
    Ok(((reader, writer), welcome))
}

/// The server's answer to the handshake, as [`begin_handshake`] leaves it.
enum Answer {
    /// Already read (a server without a token answered the Hello of a client with one).
    Read(Option<Frame>),
    /// Still to be read: the client may write requests meanwhile.
    Due,
}

/// Connects to `address`, completes TLS's handshake if the options ask for it, and
/// sends the Hello; to a server that challenges it, a client with a token answers
/// with the proof. What is left is the server's welcome or refusal, which
/// [`finish_handshake`] reads. Each step is bounded by the options' timeouts.
async fn begin_handshake(
    address: &str,
    options: &ConnectOptions,
    purpose: &str,
) -> Result<(Frames, Answer), ServerError> {
    let timeout = |what, timeout| ServerError::Timeout {
        address: address.to_string(),
        what,
        timeout,
    };
    let socket = tokio::time::timeout(options.connect_timeout, TcpStream::connect(address))
        .await
        .map_err(|_| timeout("connect", options.connect_timeout))?
        .map_err(|e| ServerError::Connect {
            address: address.to_string(),
            reason: e.to_string(),
        })?;
    let _ = socket.set_nodelay(true);
    let (read_half, write_half) = match &options.tls {
        None => plain_halves(socket),
        Some(tls) => tokio::time::timeout(options.handshake_timeout, tls.connect(socket, address))
            .await
            .map_err(|_| timeout("TLS handshake", options.handshake_timeout))??,
    };
    let mut reader = FramedRead::new(read_half, FrameCodec::handshake());
    let mut writer = FramedWrite::new(write_half, FrameCodec::new());
    let hello = Hello {
        client: format!("pool-client {}{purpose}", env!("CARGO_PKG_VERSION")),
    };
    let answer = tokio::time::timeout(options.handshake_timeout, async {
        writer.send(Frame::Hello(hello)).await?;
        let Some(token) = &options.token else {
            return Ok(Answer::Due);
        };
        match reader.next().await.transpose()? {
            // The token proves itself without travelling (see pool_common::auth).
            Some(Frame::Challenge(nonce)) => {
                writer
                    .send(Frame::Proof(auth::prove(token, &nonce)))
                    .await?;
                Ok(Answer::Due)
            }
            answer => Ok(Answer::Read(answer)),
        }
    })
    .await
    .map_err(|_| timeout("handshake", options.handshake_timeout))?
    .map_err(|e| handshake_error(address, e))?;
    Ok(((reader, writer), answer))
}

/// Reads the server's answer to the handshake (unless it was read already), within
/// `timeout`: its welcome, or why there is none.
async fn finish_handshake(
    address: &str,
    reader: &mut FramedRead<ReadHalf, FrameCodec>,
    answer: Answer,
    timeout: Duration,
) -> Result<Welcome, ServerError> {
    let answer = match answer {
        Answer::Read(answer) => answer,
        Answer::Due => tokio::time::timeout(timeout, reader.next())
            .await
            .map_err(|_| ServerError::Timeout {
                address: address.to_string(),
                what: "handshake",
                timeout,
            })?
            .transpose()
            .map_err(|e| handshake_error(address, e))?,
    };
    match answer {
        Some(Frame::Welcome(welcome)) => {
            reader.decoder_mut().handshake_done();
            Ok(welcome)
        }
        Some(Frame::Refused(reason)) => Err(ServerError::Refused {
            address: address.to_string(),
            reason,
        }),
        Some(Frame::Challenge(_)) => Err(ServerError::Refused {
            address: address.to_string(),
            reason: "this server requires a token: set `token` in the job file or POOL_TOKEN"
                .into(),
        }),
        Some(_) => Err(handshake_error(
            address,
            FrameError::Decode("expected a handshake answer".into()),
        )),
        None => Err(ServerError::Closed {
            address: address.to_string(),
            reason: "closed during the handshake".into(),
        }),
    }
}

/// The error for a handshake the peer's bytes broke off: not a pool server, or another
/// version of the protocol.
fn handshake_error(address: &str, error: FrameError) -> ServerError {
    ServerError::Protocol {
        address: address.to_string(),
        source: Arc::new(error),
    }
}

impl Drop for ServerConnection {
    fn drop(&mut self) {
        if let Some(reader) = self
            .shared
            .reader
            .lock()
            .expect("reader lock poisoned")
            .take()
        {
            reader.abort();
        }
    }
}

/// Reads the server's answer to the handshake (`answer`, within `handshake_timeout`),
/// then replies until the connection ends, handing each to the part waiting for it.
async fn route_replies(
    mut reader: FramedRead<ReadHalf, FrameCodec>,
    shared: Arc<Shared>,
    answer: Answer,
    handshake_timeout: Duration,
) {
    let failure =
        match finish_handshake(&shared.address, &mut reader, answer, handshake_timeout).await {
            Err(refused) => refused,
            Ok(welcome) => {
                shared
                    .handshake
                    .send_replace(Handshake::Answered(Ok(welcome)));
                loop {
                    let frame = match reader.next().await {
                        Some(Ok(frame)) => frame,
                        Some(Err(e)) => break shared.closed(e.to_string()),
                        None => break shared.closed("the connection ended"),
                    };
                    if let Err(failure) = route(&shared, frame) {
                        break failure;
                    }
                }
            }
        };
    shared.fail(failure);
}

/// Hands one frame from the server to whoever waits for it.
fn route(shared: &Shared, frame: Frame) -> Result<(), ServerError> {
    let protocol = |reason: String| ServerError::Protocol {
        address: shared.address.clone(),
        source: Arc::new(FrameError::Decode(reason)),
    };
    let mut waiting = shared.waiting();
    let (part_id, answer) = match frame {
        Frame::Reply(Reply::Closing { error }) => {
            return Err(ServerError::Remote {
                address: shared.address.clone(),
                error,
            })
        }
        Frame::Reply(Reply::Status(status)) => {
            let Some(waiter) = waiting.status.pop_front() else {
                return Err(protocol("a status reply nobody asked for".into()));
            };
            // A probe that gave up waiting has dropped its receiver; the answer is
            // dropped with it.
            let _ = waiter.send(status);
            return Ok(());
        }
        Frame::Reply(Reply::PartDoneLarge {
            part_id,
            result_bytes,
            compute_nanos,
        }) => {
            // A part no longer waited for may still send its result: it is read and
            // dropped below.
            if let Some(waiter) = waiting.parts.get_mut(&part_id) {
                let incoming = IncomingResult::new(&waiter.task, result_bytes)
                    .map_err(|e| protocol(format!("part id {part_id}: {e}")))?;
                waiter.incoming = Some((incoming, compute_nanos));
            }
            return Ok(());
        }
        Frame::Data { part_id, bytes } => {
            let Some(waiter) = waiting.parts.get_mut(&part_id) else {
                return Ok(());
            };
            let Some((incoming, compute_nanos)) = &mut waiter.incoming else {
                return Err(protocol(format!(
                    "data for part id {part_id} before its reply"
                )));
            };
            let compute_nanos = *compute_nanos;
            match incoming.accept(&bytes).map_err(protocol)? {
                None => return Ok(()),
                Some(result) => (
                    part_id,
                    Reply::PartDone {
                        part_id,
                        result,
                        compute_nanos,
                    },
                ),
            }
        }
        Frame::Reply(reply @ Reply::PartDone { part_id, .. })
        | Frame::Reply(reply @ Reply::PartFailed { part_id, .. }) => (part_id, reply),
        Frame::Hello(_)
        | Frame::Welcome(_)
        | Frame::Refused(_)
        | Frame::Challenge(_)
        | Frame::Proof(_)
        | Frame::Request(_) => {
            return Err(protocol("an unexpected frame".into()));
        }
    };
    if let Some(waiter) = waiting.parts.remove(&part_id) {
        let _ = waiter.answer.send(Ok(answer));
    }
    Ok(())
}
