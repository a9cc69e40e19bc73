//! The messages of the pool protocol.
//!
//! A connection starts with a handshake: the client sends [`Frame::Hello`], the server
//! answers [`Frame::Welcome`] or [`Frame::Refused`]. All three carry [`MAGIC`] and
//! [`PROTOCOL_VERSION`] in a fixed layout that never changes between versions, so a
//! version mismatch is always reported as such rather than as garbage. The client
//! speaks first, so a server of another version refuses it by name instead of both
//! waiting.
//!
//! A server started with a token answers the Hello with [`Frame::Challenge`] instead:
//! a random nonce, to which the client answers with [`Frame::Proof`], an HMAC of the
//! nonce keyed with the token ([`crate::auth`]). Then comes the Welcome, or a refusal
//! for a wrong answer. The token itself never travels.
//!
//! The client need not wait for the Welcome: requests may follow the Hello (or the
//! proof) at once, and the server reads them after welcoming the client. A server that
//! refuses the connection instead closes it without reading what followed.
//!
//! After the handshake the client sends [`Request`]s and [`Frame::Data`] chunks, and the
//! server answers each part with exactly one [`Reply`]: [`Reply::PartDone`],
//! [`Reply::PartDoneLarge`] (whose result follows in data frames) or
//! [`Reply::PartFailed`]. Parts are identified by a `part_id` the client chooses;
//! several parts may be in flight on one connection, and [`Request::Cancel`] withdraws
//! one of them without touching the others. A job whose parts all read the same inputs
//! (a program's files) ships them first, once, with [`Request::Share`].
//!
//! [`Frame::Hello`]: crate::codec::Frame::Hello
//! [`Frame::Welcome`]: crate::codec::Frame::Welcome
//! [`Frame::Refused`]: crate::codec::Frame::Refused
//! [`Frame::Challenge`]: crate::codec::Frame::Challenge
//! [`Frame::Proof`]: crate::codec::Frame::Proof
//! [`Frame::Data`]: crate::codec::Frame::Data

use serde::{Deserialize, Serialize};
use std::fmt;

use crate::jobs::{PartResult, PartTask, KIND_NAMES};

/// The first four bytes of every handshake frame: tells a pool peer from anything else.
pub const MAGIC: [u8; 4] = *b"POOL";

/// Bumped by hand whenever a message's encoding changes.
///
/// 1: the first release. 2: job kinds from one list, `Request::Cancel`,
/// `Reply::PartDoneLarge`, `ErrorCode::Cancelled`, `ServerStatus::workers_busy` and
/// `parts_in_flight`. 3: `ServerStatus` reports cores, load, memory and speed.
/// 4: matrix parts carry their element type, and matrix results are integers or
/// exact float sums. 5: `Request::Share` (a job's shared inputs, shipped once per
/// connection) and `ErrorCode::NotPermitted`. 6: challenge-response authentication
/// (`Hello` carries no token; the challenge and proof frames).
pub const MESSAGES_REVISION: u16 = 6;

/// The version both sides announce in the handshake: [`MESSAGES_REVISION`] times 100
/// plus the number of job kinds. A new kind is appended to the list (its index is its
/// wire tag in [`PartTask`] and [`PartResult`]), which changes the version by itself,
/// so a client and a server built with different kinds refuse each other by name
/// instead of misreading parts.
pub const PROTOCOL_VERSION: u16 = MESSAGES_REVISION * 100 + KIND_NAMES.len() as u16;

/// A result whose encoding is longer than this travels after its reply in data frames
/// ([`Reply::PartDoneLarge`]) instead of inside it.
pub const INLINE_RESULT_BYTES: usize = 64 << 10;

/// What the client says after the magic and version when it connects. It carries no
/// secret: a server with a token challenges the client instead (see the module
/// documentation).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hello {
    /// The client program and its version, for the server's log.
    pub client: String,
}

/// The server's acceptance of a handshake.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Welcome {
    /// The server program and its version.
    pub server: String,
    /// How many parts the server computes at once (its `--workers`).
    pub workers: u32,
}

/// What a client asks of a server once connected.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Request {
    /// Compute one part. If `task` takes input bytes, exactly that many follow in
    /// [`Frame::Data`](crate::codec::Frame::Data) frames carrying the same `part_id`.
    RunPart {
        /// Chosen by the client, unique among its parts in flight on this connection.
        part_id: u64,
        /// What to compute.
        task: PartTask,
    },
    /// Ship one of the job's shared inputs
    /// ([`SharedInput`](crate::jobs::SharedInput)): `bytes` bytes follow in
    /// [`Frame::Data`](crate::codec::Frame::Data) frames carrying `input_id`. Every share
    /// comes before the connection's first part, and every part computed on the
    /// connection reads them. Not answered: a share the server will not keep (over its
    /// size limit) makes it refuse the connection's parts, saying why.
    Share {
        /// Chosen by the client, unique among the connection's shares and parts.
        input_id: u64,
        /// A relative path in the job's work folder
        /// ([`check_input_name`](crate::jobs::inputs::check_input_name)).
        name: String,
        /// The input's length.
        bytes: u64,
        /// Whether the input is a program the job runs.
        executable: bool,
    },
    /// Ask how the server is doing; answered at once with [`Reply::Status`], without
    /// waiting for the executor, so it works even while every worker is busy.
    Status,
    /// The client no longer wants this part (it timed out, or another server answered
    /// first). The server stops its kernel and frees the worker; the part is still
    /// answered once, with [`ErrorCode::Cancelled`] unless its result was already on
    /// its way. A cancel for a part not in flight is ignored (it may have just been
    /// answered).
    Cancel {
        /// The part to withdraw.
        part_id: u64,
    },
}

/// What a server answers to one part.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Reply {
    /// The part was computed.
    PartDone {
        /// The part this answers.
        part_id: u64,
        /// The part's result.
        result: PartResult,
        /// Time the server spent computing this part, in nanoseconds. A duration on the
        /// server's clock, never compared with the client's clock.
        compute_nanos: u64,
    },
    /// The part was computed, and its result is longer than [`INLINE_RESULT_BYTES`]:
    /// its bincode encoding follows in [`Frame::Data`](crate::codec::Frame::Data)
    /// frames carrying the same `part_id`, `result_bytes` in all.
    PartDoneLarge {
        /// The part this answers.
        part_id: u64,
        /// The length of the encoded result that follows.
        result_bytes: u64,
        /// Time the server spent computing this part, in nanoseconds.
        compute_nanos: u64,
    },
    /// The part could not be computed.
    PartFailed {
        /// The part this answers.
        part_id: u64,
        /// Why.
        error: RemoteError,
    },
    /// The server ends the whole connection (e.g. a malformed request); the reason
    /// applies to every part still in flight on it.
    Closing {
        /// Why.
        error: RemoteError,
    },
    /// The answer to [`Request::Status`].
    Status(ServerStatus),
}

/// A server's state at one moment, for `pool-client status` and for placing parts by
/// load. Readings the server's system cannot give are `None`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServerStatus {
    /// The server program and its version.
    pub server: String,
    /// Cores the server's machine offers this process.
    pub cores: u32,
    /// How many parts it computes at once (its `--workers`).
    pub workers: u32,
    /// Worker threads computing right now.
    pub workers_busy: u32,
    /// Parts accepted and not yet answered, on every connection (queued or computing).
    pub parts_in_flight: u32,
    /// Parts answered with a result since the server started.
    pub parts_served: u64,
    /// Time since the server started, in nanoseconds (a duration on its clock).
    pub uptime_nanos: u64,
    /// The machine's 1-minute load average, in thousandths.
    pub load_average_milli: Option<u32>,
    /// The share of the machine's CPU time that was idle over the last sampling
    /// interval (about a second), in thousandths.
    pub cpu_idle_milli: Option<u32>,
    /// Memory the machine can give new work without swapping, in bytes.
    pub memory_available_bytes: Option<u64>,
    /// The loop kernel's speed on one worker, measured at start-up: picoseconds per
    /// iteration (`None` until measured, a few milliseconds after start).
    pub loop_picos_per_iteration: Option<u64>,
}

/// An error reported by a server, shown to the user by the client.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RemoteError {
    /// What kind of failure, so a client can decide whether a retry elsewhere may help.
    pub code: ErrorCode,
    /// A sentence a person can act on.
    pub message: String,
}

impl RemoteError {
    /// Builds an error from a code and a message.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        RemoteError {
            code,
            message: message.into(),
        }
    }
}

impl fmt::Display for RemoteError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}: {}", self.code, self.message)
    }
}

impl std::error::Error for RemoteError {}

/// The kinds of error a server reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ErrorCode {
    /// The request was malformed or inconsistent (a bug or a hostile peer).
    BadRequest,
    /// The request exceeds one of the server's limits; the message names the flag.
    LimitExceeded,
    /// The server is shutting down and did not compute the part.
    ShuttingDown,
    /// The client cancelled the part ([`Request::Cancel`]).
    Cancelled,
    /// The server does not run this part's program: it was started without
    /// `--allow-commands`, or its allowlist lacks the program. The message names the
    /// flag.
    NotPermitted,
    /// Something went wrong inside the server.
    Internal,
}
