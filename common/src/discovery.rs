//! What a server announces on the local network with DNS-SD over multicast DNS
//! (`pool-server --announce`), and what a client looking for servers reads
//! (`servers = "discover"`). `avahi-browse -r _pool._tcp` shows the same records.

/// The DNS-SD service type pool servers announce.
pub const SERVICE_TYPE: &str = "_pool._tcp.local.";

/// TXT key: the server's release (`pool-server --version`).
pub const TXT_VERSION: &str = "version";
/// TXT key: the protocol version it speaks ([`PROTOCOL_VERSION`]); a client skips
/// servers that speak another.
///
/// [`PROTOCOL_VERSION`]: crate::protocol::PROTOCOL_VERSION
pub const TXT_PROTOCOL: &str = "protocol";
/// TXT key: its worker threads.
pub const TXT_WORKERS: &str = "workers";
/// TXT key: `required` if it was started with a token, `none` if not (never the token).
pub const TXT_TOKEN: &str = "token";
