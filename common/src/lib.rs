//! Everything `pool-client` and `pool-server` must agree on.
//!
//! * [`protocol`]: the messages exchanged over a connection and the protocol version.
//! * [`codec`]: how those messages are framed on a byte stream (TCP or a pipe).
//! * [`jobs`]: the job kinds: how a job splits into parts, the kernel that computes one
//!   part, and how partial results combine.
//! * [`jobfile`]: the `job.toml` schema and its validation.

pub mod codec;
pub mod jobfile;
pub mod jobs;
pub mod protocol;
