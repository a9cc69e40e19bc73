//! `--announce`: the server advertises itself on the local network with DNS-SD over
//! multicast DNS, as a `_pool._tcp` service, so that clients with
//! `servers = "discover"` find it (and `avahi-browse -r _pool._tcp` lists it). The
//! records carry what a client needs to choose ([`pool_common::discovery`]): release,
//! protocol version, workers, and whether a token is required; never the token.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context;
use mdns_sd::{ServiceDaemon, ServiceInfo};
use pool_common::discovery::{SERVICE_TYPE, TXT_PROTOCOL, TXT_TOKEN, TXT_VERSION, TXT_WORKERS};
use pool_common::protocol::PROTOCOL_VERSION;

/// How long the goodbye (the records withdrawn) may take when the server stops.
const GOODBYE_WAIT: Duration = Duration::from_secs(1);

/// A server's announcement, withdrawn by [`Announcement::withdraw`] (or, less
/// politely, when the process ends and the records expire).
pub struct Announcement {
    daemon: ServiceDaemon,
    fullname: String,
}

impl Announcement {
    /// Announces the server listening on `address` with `workers` workers. A server
    /// listening on every interface (0.0.0.0) announces each interface's address on
    /// that interface; one bound to an address announces that address. Its service
    /// and host names carry a random tag besides the machine's name, so two servers
    /// never claim one name, even on machines cloned with the same host name.
    pub fn start(
        address: SocketAddr,
        workers: usize,
        token_required: bool,
    ) -> anyhow::Result<Announcement> {
        anyhow::ensure!(
            !address.ip().is_loopback(),
            "--announce tells the local network where this server is, but it listens on {address}, \
             which only this machine can reach: give --bind 0.0.0.0 or a LAN address"
        );
        let machine = machine_name();
        let tag = format!("{:04x}", rand::random::<u16>());
        let instance = format!("pool on {machine} port {} ({tag})", address.port());
        let host = format!("{machine}-pool-{tag}.local.");
        let workers = workers.to_string();
        let protocol = PROTOCOL_VERSION.to_string();
        let properties = [
            (TXT_VERSION, env!("CARGO_PKG_VERSION")),
            (TXT_PROTOCOL, protocol.as_str()),
            (TXT_WORKERS, workers.as_str()),
            (TXT_TOKEN, if token_required { "required" } else { "none" }),
        ];
        let ip = if address.ip().is_unspecified() {
            String::new()
        } else {
            address.ip().to_string()
        };
        let mut info = ServiceInfo::new(
            SERVICE_TYPE,
            &instance,
            &host,
            ip,
            address.port(),
            &properties[..],
        )
        .context("cannot build the announcement")?;
        if address.ip().is_unspecified() {
            info = info.enable_addr_auto();
        }
        let fullname = info.get_fullname().to_string();
        let daemon = ServiceDaemon::new().context("cannot start multicast DNS")?;
        daemon
            .register(info)
            .context("cannot announce the server")?;
        Ok(Announcement { daemon, fullname })
    }

    /// The service's full DNS-SD name, as browsers list it.
    pub fn fullname(&self) -> &str {
        &self.fullname
    }

    /// Withdraws the records (a goodbye clients see at once) and stops announcing.
    pub async fn withdraw(self) {
        if let Ok(done) = self.daemon.unregister(&self.fullname) {
            let _ = tokio::time::timeout(GOODBYE_WAIT, done.recv_async()).await;
        }
        let _ = self.daemon.shutdown();
    }
}

/// This machine's host name, as it calls itself.
fn machine_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|name| name.trim().to_string())
        .filter(|name| !name.is_empty())
        .unwrap_or_else(|| "pool-server".to_string())
}
