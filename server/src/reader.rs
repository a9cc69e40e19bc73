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
//! at any await and call it again without losing a byte.
//!
//! [`BufferBudget`]: crate::budget::BufferBudget

use bytes::Bytes;
use pool_common::codec::{
    check_frame_len, decode_body, Frame, FrameError, MAX_FRAME_BYTES, MAX_HANDSHAKE_FRAME_BYTES,
};
use pool_common::tls::ReadHalf;
use tokio::io::{AsyncReadExt, BufReader};

use crate::budget::{Account, Claim, FrameBuffer};

/// Frames up to this length are read without a claim: requests, cancels and status
/// requests get through while the budget is spent. Each connection reads one at a
/// time, so they add a bounded few kilobytes per connection.
pub const SMALL_FRAME_BYTES: usize = MAX_HANDSHAKE_FRAME_BYTES;

/// Bytes read from the socket ahead of the frame being decoded.
const READ_AHEAD_BYTES: usize = 8 << 10;

/// Reads one connection's frames, each claimed from the budget before its body is read.
pub struct FrameReader {
    socket: BufReader<ReadHalf>,
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
            socket: BufReader::with_capacity(READ_AHEAD_BYTES, socket),
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
                    let unread = match body {
                        Body::Small(bytes) => &mut bytes[*filled..*len],
                        Body::Granted(buffer) => &mut buffer[*filled..*len],
                    };
                    match self.socket.read(unread).await? {
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
                    let bytes = match body {
                        Body::Small(bytes) => Bytes::from(bytes),
                        Body::Granted(buffer) => Bytes::from_owner(Granted { buffer, len }),
                    };
                    return decode_body(bytes).map(Some);
                }
            }
        }
    }
}

/// The state for reading a body of `len` bytes into `body`.
fn body(len: usize, body: Body) -> State {
    State::Body {
        body,
        len,
        filled: 0,
    }
}
