//! Everything `pool-client` and `pool-server` must agree on.
//!
//! * [`protocol`]: the messages exchanged over a connection and the protocol version.
//! * [`auth`]: the challenge and answer that prove a client knows the server's token.
//! * [`tls`]: the fingerprint that pins a server's certificate, and reading PEM files.
//! * [`codec`]: how those messages are framed on a byte stream (TCP or a pipe).
//! * [`discovery`]: what servers announce on the local network, for clients to find them.
//! * [`wire`]: which frames carry a part out and its result back, and the checks on
//!   what arrives.
//! * [`jobs`]: the job kinds: how a job splits into parts, the kernel that computes one
//!   part, and how partial results combine.
//! * [`jobfile`]: the `job.toml` schema and its validation.
//! * [`sshhosts`]: the hosts file of servers started over ssh.
//! * [`splitmix`]: the mixing function the kernels and generated data share.
//! * [`exact_sum`]: the exact accumulator that makes float sums independent of the
//!   split.
//! * [`text`]: words for messages people read (`1 worker`, `2 workers`).
//!
//! The modules depend on each other in one direction only: `jobs`, `splitmix` and
//! `exact_sum` need none of the others (nor do `auth` and `tls`), `protocol` names the jobs' types, `codec` frames the
//! protocol, `wire` sequences frames, and `jobfile` reads the kinds' parameters.

pub mod auth;
pub mod codec;
pub mod discovery;
pub mod exact_sum;
pub mod hostlist;
pub mod jobfile;
pub mod jobs;
pub mod protocol;
pub mod splitmix;
pub mod sshhosts;
pub mod text;
pub mod tls;
pub mod wire;
