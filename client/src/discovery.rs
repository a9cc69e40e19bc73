//! `servers = "discover"`: the servers that announce themselves on the local network
//! (`pool-server --announce`), found with DNS-SD over multicast DNS. The browse goes
//! on for the whole job, so a server announced later joins it and one that withdraws
//! (stopped with Ctrl-C or SIGTERM) leaves it.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use mdns_sd::{ResolvedService, ServiceDaemon, ServiceEvent};
use pool_common::discovery::{SERVICE_TYPE, TXT_PROTOCOL};
use pool_common::jobfile::ServerEntry;
use pool_common::protocol::PROTOCOL_VERSION;
use tokio::time::Instant;

/// Servers found on the local network so far, by service name.
pub struct Discovery {
    daemon: ServiceDaemon,
    found: Arc<Mutex<BTreeMap<String, ServerEntry>>>,
    /// When the first answers have had their window to arrive.
    window_ends: Instant,
    window: Duration,
}

impl Discovery {
    /// Starts looking for servers; those that answer within `window` make the first
    /// list. Needs a tokio runtime.
    pub fn start(window: Duration) -> anyhow::Result<Discovery> {
        let daemon = ServiceDaemon::new().context("cannot start multicast DNS")?;
        let events = daemon
            .browse(SERVICE_TYPE)
            .context("cannot look for servers on the local network")?;
        let found = Arc::new(Mutex::new(BTreeMap::new()));
        let record = Arc::clone(&found);
        tokio::spawn(async move {
            while let Ok(event) = events.recv_async().await {
                let mut found = record.lock().expect("discovery lock poisoned");
                match event {
                    ServiceEvent::ServiceResolved(service) => match server_of(&service) {
                        Ok(entry) => {
                            tracing::info!(service = service.get_fullname(), server = %entry.address, "found");
                            found.insert(service.get_fullname().to_string(), entry);
                        }
                        Err(why) => {
                            tracing::warn!(service = service.get_fullname(), "skipped: {why}")
                        }
                    },
                    ServiceEvent::ServiceRemoved(_, name) if found.remove(&name).is_some() => {
                        tracing::info!(service = name, "withdrawn");
                    }
                    _ => {}
                }
            }
        });
        Ok(Discovery {
            daemon,
            found,
            window_ends: Instant::now() + window,
            window,
        })
    }

    /// The servers announced now, once the first window is over; what to do if none
    /// is.
    pub async fn servers(&self) -> anyhow::Result<Vec<ServerEntry>> {
        tokio::time::sleep_until(self.window_ends).await;
        let servers: Vec<ServerEntry> = self
            .found
            .lock()
            .expect("discovery lock poisoned")
            .values()
            .cloned()
            .collect();
        anyhow::ensure!(
            !servers.is_empty(),
            "no pool server announced itself on the local network within {:?}: start servers with \
             `pool-server --announce` on this network (multicast must reach them), wait longer \
             (discover_window), or list them",
            self.window
        );
        Ok(servers)
    }
}

impl Drop for Discovery {
    fn drop(&mut self) {
        let _ = self.daemon.shutdown();
    }
}

/// The server an announcement stands for: its IPv4 address (the lowest, if it has
/// several) or else its IPv6 one, and its port; or why it is not one to use.
fn server_of(service: &ResolvedService) -> Result<ServerEntry, String> {
    match service.get_property_val_str(TXT_PROTOCOL) {
        Some(version) if version == PROTOCOL_VERSION.to_string() => {}
        Some(version) => {
            return Err(format!(
                "it speaks protocol version {version}, this client {PROTOCOL_VERSION}: run the same pool release on both"
            ))
        }
        None => return Err("its announcement has no protocol version".into()),
    }
    let ip: IpAddr = match service.get_addresses_v4().into_iter().min() {
        Some(v4) => v4.into(),
        None => service
            .get_addresses()
            .iter()
            .map(|scoped| scoped.to_ip_addr())
            .min()
            .ok_or("its announcement has no address")?,
    };
    let address = std::net::SocketAddr::new(ip, service.get_port()).to_string();
    Ok(ServerEntry::parse(&address).expect("an IP address and a port make an address"))
}
