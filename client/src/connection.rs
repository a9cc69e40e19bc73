//! A client's connection to one server, shared by every part sent there.
//!
//! Parts are multiplexed: each gets an id, its request and data frames are written under
//! a lock (so one part's chunks are never interleaved with another's), and a reader task
//! routes each reply to the part waiting for it. If the connection fails, every part
//! still waiting on it gets the error, so nothing waits forever.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::{SinkExt, StreamExt};
use pool_common::codec::{encode_data_header, Frame, FrameCodec, FrameError};
use pool_common::jobfile::ClientSettings;
use pool_common::jobs::{Part, PartResult};
use pool_common::protocol::{Hello, RemoteError, Reply, Request, Welcome};
use tokio::io::AsyncWriteExt;
use tokio::net::tcp::OwnedWriteHalf;
use tokio::net::TcpStream;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio_util::codec::{Framed, FramedRead, FramedWrite};

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
    /// The connection broke.
    #[error("server {address} closed the connection: {reason}")]
    Closed {
        /// The server.
        address: String,
        /// Why, if known.
        reason: String,
    },
}

/// What a connection needs besides the address: how long to wait for each step, and
/// the token to present. The default is the job file's defaults.
#[derive(Clone)]
pub struct ConnectOptions {
    /// For the TCP connection to be made.
    pub connect_timeout: Duration,
    /// For the server to answer the handshake.
    pub handshake_timeout: Duration,
    /// For a part's result, from the start of sending it; `None` derives it from the
    /// work queued on the connection (see [`ServerConnection::run_part`]).
    pub part_timeout: Option<Duration>,
    /// The shared secret for servers started with `--token`.
    pub token: Option<String>,
}

impl ConnectOptions {
    /// The options a job file asks for.
    pub fn from_settings(settings: &ClientSettings) -> Self {
        ConnectOptions {
            connect_timeout: settings.connect_timeout,
            handshake_timeout: settings.handshake_timeout,
            part_timeout: settings.part_timeout,
            token: settings.token.clone(),
        }
    }
}

impl Default for ConnectOptions {
    fn default() -> Self {
        ConnectOptions::from_settings(&ClientSettings::default())
    }
}

/// The least time a part is given when its timeout is derived.
const PART_TIMEOUT_BASE: Duration = Duration::from_secs(30);

/// A pessimistic compute time per work item (loop iteration or matrix element): several
/// times what a slow core needs, so a derived timeout fires only on a server that is
/// gone or stuck, never on one that is merely busy.
const PESSIMISTIC_NANOS_PER_ITEM: u64 = 10;

/// A server's answer to one part, with the times that explain it.
#[derive(Debug, Clone, Copy)]
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

type Waiter = oneshot::Sender<Result<Reply, ServerError>>;

#[derive(Default)]
struct Waiting {
    parts: HashMap<u64, Waiter>,
    /// Set once the connection has failed; later parts fail at once with it.
    failed: Option<ServerError>,
}

/// An open, handshaken connection to one server.
pub struct ServerConnection {
    address: String,
    welcome: Welcome,
    writer: tokio::sync::Mutex<FramedWrite<OwnedWriteHalf, FrameCodec>>,
    waiting: Arc<Mutex<Waiting>>,
    next_part_id: AtomicU64,
    /// Pessimistic compute time, in nanoseconds, of the parts in flight here.
    queued_nanos: AtomicU64,
    part_timeout: Option<Duration>,
    reader: JoinHandle<()>,
}

impl ServerConnection {
    /// Connects to `address` (`host:port`) and completes the handshake.
    pub async fn connect(
        address: &str,
        options: &ConnectOptions,
    ) -> Result<ServerConnection, ServerError> {
        let (framed, welcome) = open(address, options, "").await?;
        // Split the socket so replies are read while parts are written; bytes the
        // handshake's reader already holds move along with it.
        let parts = framed.into_parts();
        let (read_half, write_half) = parts.io.into_split();
        let mut reader = FramedRead::new(read_half, FrameCodec::new());
        reader.read_buffer_mut().extend_from_slice(&parts.read_buf);
        let writer = FramedWrite::new(write_half, FrameCodec::new());

        let waiting = Arc::new(Mutex::new(Waiting::default()));
        let reader = tokio::spawn(route_replies(
            reader,
            Arc::clone(&waiting),
            address.to_string(),
        ));
        Ok(ServerConnection {
            address: address.to_string(),
            welcome,
            writer: tokio::sync::Mutex::new(writer),
            waiting,
            next_part_id: AtomicU64::new(0),
            queued_nanos: AtomicU64::new(0),
            part_timeout: options.part_timeout,
            reader,
        })
    }

    /// The server's address as given.
    pub fn address(&self) -> &str {
        &self.address
    }

    /// What the server said about itself in the handshake.
    pub fn welcome(&self) -> &Welcome {
        &self.welcome
    }

    /// Whether the connection has failed; a failed connection fails every part at once.
    pub fn is_broken(&self) -> bool {
        self.waiting
            .lock()
            .expect("waiting lock poisoned")
            .failed
            .is_some()
    }

    /// Sends `part` (its task and its data) and waits for the server's answer.
    ///
    /// Without a fixed part timeout, the part is given [`PART_TIMEOUT_BASE`] plus a
    /// pessimistic compute time for itself and every part in flight before it on this
    /// connection, since the server may compute those first.
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
        let queued = self
            .queued_nanos
            .fetch_add(estimate, Ordering::Relaxed)
            .saturating_add(estimate);
        let timeout = self
            .part_timeout
            .unwrap_or(PART_TIMEOUT_BASE.saturating_add(Duration::from_nanos(queued)));
        let outcome = tokio::time::timeout(timeout, self.send_and_wait(part, on_sent)).await;
        self.queued_nanos.fetch_sub(estimate, Ordering::Relaxed);
        outcome.unwrap_or_else(|_| {
            let error = ServerError::Timeout {
                address: self.address.clone(),
                what: "a part's result",
                timeout,
            };
            // The part may have been cut off mid-send, and a server this late is not to
            // be trusted with more: give up on the whole connection.
            fail_all(&self.waiting, error.clone());
            self.reader.abort();
            Err(error)
        })
    }

    async fn send_and_wait(
        &self,
        part: &Part,
        on_sent: impl FnOnce(),
    ) -> Result<PartReply, ServerError> {
        let part_id = self.next_part_id.fetch_add(1, Ordering::Relaxed);
        let (reply_tx, reply_rx) = oneshot::channel();
        {
            let mut waiting = self.waiting.lock().expect("waiting lock poisoned");
            if let Some(error) = &waiting.failed {
                return Err(error.clone());
            }
            waiting.parts.insert(part_id, reply_tx);
        }
        let _forget_on_exit = ForgetWaiter {
            waiting: &self.waiting,
            part_id,
        };
        let started = Instant::now();
        self.send_part(part_id, part).await?;
        let send = started.elapsed();
        on_sent();
        let reply = reply_rx.await.unwrap_or_else(|_| {
            Err(ServerError::Closed {
                address: self.address.clone(),
                reason: "the connection's reader stopped".into(),
            })
        })?;
        let round_trip = started.elapsed();
        match reply {
            Reply::PartDone { result, .. } if !part.task.could_produce(&result) => {
                Err(ServerError::Protocol {
                    address: self.address.clone(),
                    source: Arc::new(FrameError::Decode(format!(
                        "a result part {} could not have produced (wrong kind or out of range)",
                        part.index
                    ))),
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
                    address: self.address.clone(),
                    error,
                })
            }
            Reply::Status(_) => unreachable!("the reader routes only part replies"),
        }
    }

    async fn send_part(&self, part_id: u64, part: &Part) -> Result<(), ServerError> {
        let mut writer = self.writer.lock().await;
        let request = Frame::Request(Request::RunPart {
            part_id,
            task: part.task.clone(),
        });
        let result = async {
            writer.feed(request).await?;
            for bytes in part.chunks() {
                // The header goes through the codec's buffer; the bytes go from the
                // job's memory straight to the socket, not copied into that buffer.
                encode_data_header(part_id, bytes.len(), writer.write_buffer_mut())?;
                writer.flush().await?;
                writer.get_mut().write_all(&bytes).await?;
            }
            writer.flush().await
        }
        .await;
        result.map_err(|e| ServerError::Closed {
            address: self.address.clone(),
            reason: format!("sending part {}: {e}", part.index),
        })
    }
}

/// Connects to `address` and completes the handshake, within the options' timeouts.
/// `purpose` is appended to the client's name in the server's log (e.g. " (status)").
pub async fn open(
    address: &str,
    options: &ConnectOptions,
    purpose: &str,
) -> Result<(Framed<TcpStream, FrameCodec>, Welcome), ServerError> {
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
    let mut framed = Framed::new(socket, FrameCodec::new());
    let protocol = |e: FrameError| ServerError::Protocol {
        address: address.to_string(),
        source: Arc::new(e),
    };
    let hello = Hello {
        client: format!("pool-client {}{purpose}", env!("CARGO_PKG_VERSION")),
        token: options.token.clone(),
    };
    let answer = tokio::time::timeout(options.handshake_timeout, async {
        framed.send(Frame::Hello(hello)).await?;
        framed.next().await.transpose()
    })
    .await
    .map_err(|_| timeout("handshake", options.handshake_timeout))?
    .map_err(protocol)?;
    match answer {
        Some(Frame::Welcome(welcome)) => Ok((framed, welcome)),
        Some(Frame::Refused(reason)) => Err(ServerError::Refused {
            address: address.to_string(),
            reason,
        }),
        Some(_) => Err(protocol(FrameError::Decode(
            "expected a handshake answer".into(),
        ))),
        None => Err(ServerError::Closed {
            address: address.to_string(),
            reason: "closed during the handshake".into(),
        }),
    }
}

impl Drop for ServerConnection {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

/// Reads replies until the connection ends, handing each to the part waiting for it.
async fn route_replies(
    mut reader: FramedRead<tokio::net::tcp::OwnedReadHalf, FrameCodec>,
    waiting: Arc<Mutex<Waiting>>,
    address: String,
) {
    let failure = loop {
        let reason = match reader.next().await {
            Some(Ok(Frame::Reply(Reply::Closing { error }))) => {
                break ServerError::Remote { address, error };
            }
            // This connection never asks for a status, so a status reply is unexpected.
            Some(Ok(Frame::Reply(Reply::Status(_)))) => {
                "the server sent an unexpected status reply".to_string()
            }
            Some(Ok(Frame::Reply(reply))) => {
                let part_id = match &reply {
                    Reply::PartDone { part_id, .. } | Reply::PartFailed { part_id, .. } => *part_id,
                    Reply::Closing { .. } | Reply::Status(_) => unreachable!("handled above"),
                };
                let waiter = waiting
                    .lock()
                    .expect("waiting lock poisoned")
                    .parts
                    .remove(&part_id);
                if let Some(waiter) = waiter {
                    let _ = waiter.send(Ok(reply));
                }
                continue;
            }
            Some(Ok(_)) => "the server sent an unexpected frame".to_string(),
            Some(Err(e)) => e.to_string(),
            None => "the connection ended".to_string(),
        };
        break ServerError::Closed { address, reason };
    };
    fail_all(&waiting, failure);
}

/// Marks the connection failed: every part waiting on it, and every later one, gets
/// `failure`.
fn fail_all(waiting: &Mutex<Waiting>, failure: ServerError) {
    let mut waiting = waiting.lock().expect("waiting lock poisoned");
    for (_, waiter) in waiting.parts.drain() {
        let _ = waiter.send(Err(failure.clone()));
    }
    waiting.failed.get_or_insert(failure);
}

/// Removes a part's waiter however its wait ends (answer, error or timeout), so a late
/// reply finds no one and is dropped.
struct ForgetWaiter<'a> {
    waiting: &'a Mutex<Waiting>,
    part_id: u64,
}

impl Drop for ForgetWaiter<'_> {
    fn drop(&mut self) {
        if let Ok(mut waiting) = self.waiting.lock() {
            waiting.parts.remove(&self.part_id);
        }
    }
}
