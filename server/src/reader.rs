//! Reading a connection's frames within the server's [`BufferBudget`].
//!
//! A frame's length prefix is read first and checked against the connection's limit
//! (a handshake's few kilobytes until the handshake is done, a data chunk after); a
//! frame longer than [`SMALL_FRAME_BYTES`] then waits for the budget to grant it a
//! [`FrameBuffer`] before any of its body is read, and the buffer goes wherever the
//! frame's bytes go. So a connection holds at most its read-ahead and one small frame
//! beyond what the budget granted it, and while the budget is spent its client waits
//! on TCP.
//!
//! [`FrameReader::next`] keeps its progress in the reader, so a `select!` may drop it
//! at any await and call it again without losing a byte. [`BlockingFrameReader`] does
//! the same for the server models that read with blocking calls (see
//! [`crate::models`]), waiting on the budget's claims in the reading thread.
//!
//! [`BufferBudget`]: crate::budget::BufferBudget

use bytes::Bytes;
use pool_common::codec::{
    check_frame_len, decode_body, Frame, FrameError, MAX_FRAME_BYTES, MAX_HANDSHAKE_FRAME_BYTES,
};
use pool_common::tls::ReadHalf;
use std::io::Read;
use std::mem::MaybeUninit;
use std::net::TcpStream;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{ready, Context, Poll};
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncReadExt, ReadBuf};

use crate::budget::{Account, Claim, FrameBuffer};

/// Frames up to this length are read without a claim: requests, cancels and status
/// requests get through while the budget is spent. Each connection reads one at a
/// time, so they add a bounded few kilobytes per connection.
pub const SMALL_FRAME_BYTES: usize = MAX_HANDSHAKE_FRAME_BYTES;

/// Bytes read from the socket at once ahead of the frame being decoded (a burst of
/// small requests in one read call). Larger frames' bodies are read past it.
const READ_AHEAD_BYTES: usize = 4 << 10;

/// Reads one connection's frames, each claimed from the budget before its body is read.
pub struct FrameReader {
    socket: ReadAhead,
    account: Account,
    max_frame: usize,
    state: State,
}

/// Where the reader is in the current frame.
enum State {
    /// Reading a length prefix: `filled` of its bytes have arrived.
    Prefix { prefix: [u8; 4], filled: usize },
    /// The prefix announced `len` bytes; waiting for the budget to grant a buffer.
    Claiming { len: usize, claim: Claim },
    /// Reading a body of `len` bytes: `filled` of them have arrived.
    Body {
        body: Body,
        len: usize,
        filled: usize,
    },
}

/// Where a frame's body is read.
enum Body {
    /// A small frame's, from the general allocator.
    Small(Vec<u8>),
    /// A larger frame's, granted by the budget.
    Granted(FrameBuffer),
}

const NEW_FRAME: State = State::Prefix {
    prefix: [0; 4],
    filled: 0,
};

/// A frame's body in its buffer, which goes back to the budget once the last slice of
/// the frame is dropped.
struct Granted {
    buffer: FrameBuffer,
    len: usize,
}

impl AsRef<[u8]> for Granted {
    fn as_ref(&self) -> &[u8] {
        &self.buffer[..self.len]
    }
}

impl FrameReader {
    /// Reads `socket` (plain TCP or TLS) for a connection that has not shaken hands
    /// yet, charging `account`.
    pub fn new(socket: ReadHalf, account: Account) -> FrameReader {
        FrameReader {
            socket: ReadAhead {
                inner: socket,
                kept: Vec::new(),
                taken: 0,
            },
            account,
            max_frame: MAX_HANDSHAKE_FRAME_BYTES,
            state: NEW_FRAME,
        }
    }

    /// Raises the frame limit to [`MAX_FRAME_BYTES`]: the peer completed the handshake.
    pub fn handshake_done(&mut self) {
        self.max_frame = MAX_FRAME_BYTES;
    }

    /// Whether the reader waits for the budget to grant a frame's memory.
    pub fn is_claiming(&self) -> bool {
        matches!(self.state, State::Claiming { .. })
    }

    /// The next frame; `None` at a clean end of stream (between frames). Cancel-safe.
    pub async fn next(&mut self) -> Option<Result<Frame, FrameError>> {
        self.next_frame().await.transpose()
    }

    async fn next_frame(&mut self) -> Result<Option<Frame>, FrameError> {
        loop {
            match &mut self.state {
                State::Prefix { prefix, filled } => {
                    let n = self.socket.read(&mut prefix[*filled..]).await?;
                    if n == 0 {
                        return match *filled {
                            0 => Ok(None),
                            _ => Err(FrameError::Truncated),
                        };
                    }
                    *filled += n;
                    if *filled == prefix.len() {
                        let len = u32::from_be_bytes(*prefix) as usize;
                        check_frame_len(len, self.max_frame)?;
                        self.state = if len > SMALL_FRAME_BYTES {
                            State::Claiming {
                                len,
                                claim: self.account.claim_frame(),
                            }
                        } else {
                            body(len, Body::Small(vec![0; len]))
                        };
                    }
                }
                State::Claiming { len, claim } => {
                    let buffer = FrameBuffer::new(claim.await)?;
                    self.state = body(*len, Body::Granted(buffer));
                }
                State::Body { body, len, filled } if *filled < *len => {
                    match self
                        .socket
                        .read(&mut body.bytes_mut(*len)[*filled..])
                        .await?
                    {
                        0 => return Err(FrameError::Truncated),
                        n => *filled += n,
                    }
                }
                State::Body { .. } => {
                    let State::Body { body, len, .. } =
                        std::mem::replace(&mut self.state, NEW_FRAME)
                    else {
                        unreachable!("matched above")
                    };
                    return body.decode(len).map(Some);
                }
            }
        }
    }
}

impl Body {
    /// A body for a frame of `len` bytes: small ones at once, larger ones once
    /// `granted` returns their memory from the budget.
    fn new(
        len: usize,
        granted: impl FnOnce() -> Result<FrameBuffer, std::io::Error>,
    ) -> Result<Body, std::io::Error> {
        Ok(if len > SMALL_FRAME_BYTES {
            Body::Granted(granted()?)
        } else {
            Body::Small(vec![0; len])
        })
    }

    /// The first `len` bytes, where the next read goes.
    fn bytes_mut(&mut self, len: usize) -> &mut [u8] {
        match self {
            Body::Small(bytes) => &mut bytes[..len],
            Body::Granted(buffer) => &mut buffer[..len],
        }
    }

    /// The frame in the body's first `len` bytes.
    fn decode(self, len: usize) -> Result<Frame, FrameError> {
        let bytes = match self {
            Body::Small(bytes) => Bytes::from(bytes),
            Body::Granted(buffer) => Bytes::from_owner(Granted { buffer, len }),
        };
        decode_body(bytes)
    }
}

/// A read-ahead that holds memory only while it holds bytes, so an idle connection
/// keeps none. A small read lands first in a buffer of [`READ_AHEAD_BYTES`] on the
/// polling thread's stack; what the caller asked for is copied out, and only the rest
/// is kept, on the heap, until it is consumed. (tokio's `BufReader` zeroes its buffer
/// when it is made, so each connection kept all of it resident for its whole life:
/// half of an idle connection's memory, pool-bench scenario 4.)
struct ReadAhead {
    inner: ReadHalf,
    /// Bytes read ahead, of which the first `taken` were asked for; freed once all are.
    kept: Vec<u8>,
    taken: usize,
}

impl AsyncRead for ReadAhead {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        out: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        if this.taken < this.kept.len() {
            let n = out.remaining().min(this.kept.len() - this.taken);
            out.put_slice(&this.kept[this.taken..this.taken + n]);
            this.taken += n;
            if this.taken == this.kept.len() {
                this.kept = Vec::new();
                this.taken = 0;
            }
            return Poll::Ready(Ok(()));
        }
        if out.remaining() >= READ_AHEAD_BYTES {
            return Pin::new(&mut this.inner).poll_read(cx, out);
        }
        let mut stack = [MaybeUninit::<u8>::uninit(); READ_AHEAD_BYTES];
        let mut ahead = ReadBuf::uninit(&mut stack);
        ready!(Pin::new(&mut this.inner).poll_read(cx, &mut ahead))?;
        let read = ahead.filled();
        let n = out.remaining().min(read.len());
        out.put_slice(&read[..n]);
        this.kept = read[n..].to_vec();
        Poll::Ready(Ok(()))
    }
}

/// How long a [`BlockingFrameReader`] waits for its peer.
#[derive(Debug, Clone, Copy)]
pub enum Patience<'a> {
    /// Until this instant (the handshake's deadline).
    Until(Instant),
    /// `idle` at a time, again and again while `busy` says the connection has work of
    /// its own in progress (a part computing).
    WhileBusy {
        /// Whether the connection is busy.
        busy: &'a AtomicBool,
        /// How long the peer may stay silent while the connection is not.
        idle: Duration,
    },
}

/// Reads one connection's frames with blocking calls, each claimed from the budget
/// before its body is read. A read that waits beyond the reader's [`Patience`] fails
/// with an error of kind `TimedOut` or `WouldBlock`.
pub struct BlockingFrameReader {
    socket: std::io::BufReader<TcpStream>,
    account: Account,
    max_frame: usize,
    /// The socket's read timeout, as last set.
    timeout: Option<Duration>,
}

impl BlockingFrameReader {
    /// Reads `socket` for a connection that has not shaken hands yet, charging
    /// `account`.
    pub fn new(socket: TcpStream, account: Account) -> BlockingFrameReader {
        BlockingFrameReader {
            socket: std::io::BufReader::with_capacity(READ_AHEAD_BYTES, socket),
            account,
            max_frame: MAX_HANDSHAKE_FRAME_BYTES,
            timeout: None,
        }
    }

    /// Raises the frame limit to [`MAX_FRAME_BYTES`]: the peer completed the handshake.
    pub fn handshake_done(&mut self) {
        self.max_frame = MAX_FRAME_BYTES;
    }

    /// The next frame; `None` at a clean end of stream (between frames).
    pub fn next(&mut self, patience: Patience<'_>) -> Option<Result<Frame, FrameError>> {
        self.next_frame(patience).transpose()
    }

    fn next_frame(&mut self, patience: Patience<'_>) -> Result<Option<Frame>, FrameError> {
        let mut prefix = [0u8; 4];
        let mut filled = 0;
        while filled < prefix.len() {
            match self.read(&mut prefix[filled..], patience)? {
                0 if filled == 0 => return Ok(None),
                0 => return Err(FrameError::Truncated),
                n => filled += n,
            }
        }
        let len = u32::from_be_bytes(prefix) as usize;
        check_frame_len(len, self.max_frame)?;
        let account = &self.account;
        let mut body = Body::new(len, || {
            FrameBuffer::new(futures::executor::block_on(account.claim_frame()))
        })?;
        let mut filled = 0;
        while filled < len {
            match self.read(&mut body.bytes_mut(len)[filled..], patience)? {
                0 => return Err(FrameError::Truncated),
                n => filled += n,
            }
        }
        body.decode(len).map(Some)
    }

    /// Reads what has arrived into `buf`, waiting as `patience` says.
    fn read(&mut self, buf: &mut [u8], patience: Patience<'_>) -> std::io::Result<usize> {
        loop {
            let timeout = match patience {
                Patience::Until(deadline) => deadline
                    .checked_duration_since(Instant::now())
                    .filter(|left| !left.is_zero())
                    .ok_or(std::io::ErrorKind::TimedOut)?,
                Patience::WhileBusy { idle, .. } => idle,
            };
            if self.timeout != Some(timeout) {
                self.socket.get_ref().set_read_timeout(Some(timeout))?;
                self.timeout = Some(timeout);
            }
            match self.socket.read(buf) {
                Ok(n) => return Ok(n),
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) if is_timeout(&e) => match patience {
                    Patience::Until(_) => {}
                    Patience::WhileBusy { busy, .. } if busy.load(Ordering::Relaxed) => {}
                    Patience::WhileBusy { .. } => return Err(e),
                },
                Err(e) => return Err(e),
            }
        }
    }
}

/// Whether a blocking call failed because its timeout passed (`WouldBlock` on Unix,
/// `TimedOut` elsewhere).
pub fn is_timeout(error: &std::io::Error) -> bool {
    matches!(
        error.kind(),
        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
    )
}

/// The state for reading a body of `len` bytes into `body`.
fn body(len: usize, body: Body) -> State {
    State::Body {
        body,
        len,
        filled: 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::budget::BufferBudget;
    use bytes::BytesMut;
    use pool_common::codec::encode_frame;
    use pool_common::protocol::Request;
    use pool_common::tls::plain_halves;
    use tokio::io::AsyncWriteExt;
    use tokio::net::{TcpListener, TcpStream};

    /// Frames written in pieces of every size, cut anywhere (a prefix split, many frames
    /// in one read, a frame longer than the read-ahead), come out whole and in order,
    /// and a reader with nothing left to read keeps no bytes.
    #[tokio::test]
    async fn frames_cut_anywhere_come_out_whole_and_an_idle_reader_keeps_nothing() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mut client = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (server, _) = listener.accept().await.unwrap();
        let (read_half, _write_half) = plain_halves(server);
        let budget = BufferBudget::new(64 << 20);
        let mut reader = FrameReader::new(read_half, budget.account());
        reader.handshake_done();

        let frames: Vec<Frame> = (0..500)
            .map(|part_id| match part_id % 100 {
                99 => Frame::Data {
                    part_id,
                    bytes: Bytes::from(vec![part_id as u8; 3 * READ_AHEAD_BYTES + 5]),
                },
                _ => Frame::Request(Request::Cancel { part_id }),
            })
            .collect();
        let mut stream = BytesMut::new();
        for frame in &frames {
            encode_frame(frame, &mut stream).unwrap();
        }
        let writer = tokio::spawn(async move {
            // Half the stream in pieces of 1, 98, 195, ... 4,075 bytes, the rest at once.
            let mut sent = 0;
            for piece in (1..READ_AHEAD_BYTES + 4).step_by(97) {
                let end = (sent + piece).min(stream.len() / 2);
                client.write_all(&stream[sent..end]).await.unwrap();
                client.flush().await.unwrap();
                tokio::task::yield_now().await;
                sent = end;
            }
            client.write_all(&stream[sent..]).await.unwrap();
            client
        });
        for expected in &frames {
            let frame = reader.next().await.unwrap().unwrap();
            assert_eq!(&frame, expected);
        }
        let client = writer.await.unwrap();
        assert_eq!(reader.socket.kept.capacity(), 0, "bytes kept while idle");
        drop(client);
        assert!(reader.next().await.is_none(), "a clean end of stream");
    }
}
