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
use pool_common::jobs::{Part, PartResult};
use pool_common::protocol::{Hello, RemoteError, Reply, Request, Welcome};
use tokio::io::AsyncWriteExt;
use tokio::net::tcp::OwnedWriteHalf;
use tokio::net::TcpStream;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio_util::codec::{FramedRead, FramedWrite};

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

/// How long a client waits for each step of talking to a server.
#[derive(Debug, Clone, Copy)]
pub struct Timeouts {
    /// For the TCP connection to be made.
    pub connect: Duration,
    /// For the server to answer the handshake.
    pub handshake: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            connect: Duration::from_secs(5),
            handshake: Duration::from_secs(5),
        }
    }
}

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
    reader: JoinHandle<()>,
}

impl ServerConnection {
    /// Connects to `address` (`host:port`) and completes the handshake.
    pub async fn connect(
        address: &str,
        timeouts: Timeouts,
    ) -> Result<ServerConnection, ServerError> {
        let timeout = |what, timeout| ServerError::Timeout {
            address: address.to_string(),
            what,
            timeout,
        };
        let socket = tokio::time::timeout(timeouts.connect, TcpStream::connect(address))
            .await
            .map_err(|_| timeout("connect", timeouts.connect))?
            .map_err(|e| ServerError::Connect {
                address: address.to_string(),
                reason: e.to_string(),
            })?;
        let _ = socket.set_nodelay(true);
        let (read_half, write_half) = socket.into_split();
        let mut reader = FramedRead::new(read_half, FrameCodec::new());
        let mut writer = FramedWrite::new(write_half, FrameCodec::new());

        let protocol = |e: FrameError| ServerError::Protocol {
            address: address.to_string(),
            source: Arc::new(e),
        };
        let hello = Hello {
            client: format!("pool-client {}", env!("CARGO_PKG_VERSION")),
        };
        let answer = tokio::time::timeout(timeouts.handshake, async {
            writer.send(Frame::Hello(hello)).await?;
            reader.next().await.transpose()
        })
        .await
        .map_err(|_| timeout("handshake", timeouts.handshake))?
        .map_err(protocol)?;
        let welcome = match answer {
            Some(Frame::Welcome(welcome)) => welcome,
            Some(Frame::Refused(reason)) => {
                return Err(ServerError::Refused {
                    address: address.to_string(),
                    reason,
                })
            }
            Some(_) => {
                return Err(protocol(FrameError::Decode(
                    "expected a handshake answer".into(),
                )))
            }
            None => {
                return Err(ServerError::Closed {
                    address: address.to_string(),
                    reason: "closed during the handshake".into(),
                })
            }
        };

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

    /// Sends `part` (its task and its data) and waits for the server's answer.
    pub async fn run_part(&self, part: &Part) -> Result<PartReply, ServerError> {
        let part_id = self.next_part_id.fetch_add(1, Ordering::Relaxed);
        let (reply_tx, reply_rx) = oneshot::channel();
        {
            let mut waiting = self.waiting.lock().expect("waiting lock poisoned");
            if let Some(error) = &waiting.failed {
                return Err(error.clone());
            }
            waiting.parts.insert(part_id, reply_tx);
        }
        let started = Instant::now();
        self.send_part(part_id, part).await.inspect_err(|_| {
            self.waiting
                .lock()
                .expect("waiting lock poisoned")
                .parts
                .remove(&part_id);
        })?;
        let send = started.elapsed();
        let reply = reply_rx.await.unwrap_or_else(|_| {
            Err(ServerError::Closed {
                address: self.address.clone(),
                reason: "the connection's reader stopped".into(),
            })
        })?;
        let round_trip = started.elapsed();
        match reply {
            Reply::PartDone { result, .. } if !part.task.produces(&result) => {
                Err(ServerError::Protocol {
                    address: self.address.clone(),
                    source: Arc::new(FrameError::Decode(format!(
                        "a result of the wrong kind for part {}",
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
            Some(Ok(Frame::Reply(reply))) => {
                let part_id = match &reply {
                    Reply::PartDone { part_id, .. } | Reply::PartFailed { part_id, .. } => *part_id,
                    Reply::Closing { .. } => unreachable!("handled above"),
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
    let mut waiting = waiting.lock().expect("waiting lock poisoned");
    for (_, waiter) in waiting.parts.drain() {
        let _ = waiter.send(Err(failure.clone()));
    }
    waiting.failed = Some(failure);
}
