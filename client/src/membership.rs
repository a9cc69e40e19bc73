//! Which servers a job runs on, and how that changes while it runs.
//!
//! A job's servers come from a list (`servers` in the job file, or `--servers`), a
//! servers file, or Slurm's node list. Two of these can change during a job:
//!
//! * a servers file (`servers_file`) is read again, as GNU parallel reads its
//!   `--slf` file again, so a line added is a server that joins and a line removed
//!   one that leaves;
//! * a `dns:name:port` entry stands for every address the name resolves to, and is
//!   looked up again, as a Kubernetes headless Service's name changes with its pods;
//! * `servers = "discover"` takes the servers announced on the local network
//!   ([`Discovery`]), as they come and go.
//!
//! [`Membership::watch`] looks every [`MEMBERSHIP_CHECK`] and publishes the servers
//! when they change; the scheduler gives parts to servers that join and no new part
//! to servers that leave (see [`dispatch`](crate::dispatch)).

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use pool_common::jobfile::{merge_duplicate_servers, read_servers_file, ServerEntry};
use tokio::sync::watch;

use crate::discovery::Discovery;

/// How often a servers file is read and `dns:` names looked up again during a job.
pub const MEMBERSHIP_CHECK: Duration = Duration::from_secs(1);

/// Where a job's servers come from.
pub struct Membership {
    /// Entries given in a list (a servers file's are read on each look).
    listed: Vec<ServerEntry>,
    /// A servers file, read again on each look.
    file: Option<PathBuf>,
    /// Servers announced on the local network.
    discovery: Option<Discovery>,
}

/// The servers of a job as they change: the current list is
/// [`borrow`](watch::Receiver::borrow)ed, and [`changed`](watch::Receiver::changed)
/// wakes when a server joins or leaves.
pub type ServerUpdates = watch::Receiver<Vec<ServerEntry>>;

impl Membership {
    /// Servers from `listed` entries and, if given, a servers file.
    pub fn new(listed: Vec<ServerEntry>, file: Option<PathBuf>) -> Membership {
        Membership {
            listed,
            file,
            discovery: None,
        }
    }

    /// These servers and those announced on the local network: the ones that answer
    /// within `window`, then any that come later. Needs a tokio runtime.
    pub fn with_discovery(self, window: Duration) -> anyhow::Result<Membership> {
        Ok(Membership {
            discovery: Some(Discovery::start(window)?),
            ..self
        })
    }

    /// Whether the servers can change during a job: a servers file, a `dns:` name, or
    /// discovery.
    pub fn can_change(&self) -> bool {
        self.file.is_some()
            || self.discovery.is_some()
            || self.listed.iter().any(|entry| entry.every_address)
    }

    /// The servers now: the file read, every `dns:` name resolved to its addresses, an
    /// address listed twice kept once.
    pub async fn resolve(&self) -> anyhow::Result<Vec<ServerEntry>> {
        Ok(self.look().await?.0)
    }

    /// The servers now, and a warning for each address listed twice: its entries are
    /// merged (see [`merge_duplicate_servers`]). An address a `dns:` name also
    /// resolves to is kept once, silently: a name standing for servers listed
    /// by address too is not a mistake.
    async fn look(&self) -> anyhow::Result<(Vec<ServerEntry>, Vec<String>)> {
        let mut entries = self.listed.clone();
        if let Some(discovery) = &self.discovery {
            entries.extend(discovery.servers().await?);
        }
        if let Some(file) = &self.file {
            let lines = read_servers_file(file)?;
            for line in lines {
                entries.push(ServerEntry::parse(&line).map_err(anyhow::Error::msg)?);
            }
        }
        let (entries, warnings) = merge_duplicate_servers(entries);
        let mut servers: Vec<ServerEntry> = Vec::with_capacity(entries.len());
        for entry in entries {
            let found = if entry.every_address {
                resolve_name(&entry.address)
                    .await?
                    .into_iter()
                    .map(|address| entry.at(address))
                    .collect()
            } else {
                vec![entry]
            };
            for server in found {
                if !servers.iter().any(|s| s.address == server.address) {
                    servers.push(server);
                }
            }
        }
        Ok((servers, warnings))
    }

    /// The servers now, then, if they can change, each change as it is seen; and the
    /// first look's warnings. A look that fails (the file half-written, the name not
    /// resolving) keeps the last list and logs why. The watching stops when every
    /// receiver is dropped.
    pub async fn watch(self) -> anyhow::Result<(ServerUpdates, Vec<String>)> {
        let (servers, warnings) = self.look().await?;
        let (sender, receiver) = watch::channel(servers);
        if self.can_change() {
            tokio::spawn(async move {
                loop {
                    tokio::select! {
                        () = sender.closed() => return,
                        () = tokio::time::sleep(MEMBERSHIP_CHECK) => {}
                    }
                    match self.resolve().await {
                        Ok(servers) => {
                            sender.send_if_modified(|current| {
                                let changed = *current != servers;
                                if changed {
                                    *current = servers;
                                }
                                changed
                            });
                        }
                        Err(error) => tracing::warn!("keeping the servers as they were: {error:#}"),
                    }
                }
            });
        }
        Ok((receiver, warnings))
    }
}

/// Every address `name:port` resolves to, as `ip:port`, in the resolver's order.
async fn resolve_name(name: &str) -> anyhow::Result<Vec<String>> {
    let addresses = tokio::net::lookup_host(name)
        .await
        .with_context(|| format!("dns:{name}: cannot resolve the name"))?;
    let mut found: Vec<String> = Vec::new();
    for address in addresses {
        let address = address.to_string();
        if !found.contains(&address) {
            found.push(address);
        }
    }
    anyhow::ensure!(!found.is_empty(), "dns:{name}: the name has no address");
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(text: &str) -> ServerEntry {
        ServerEntry::parse(text).unwrap()
    }

    #[tokio::test]
    async fn a_dns_entry_stands_for_each_address_and_duplicates_are_kept_once() {
        let membership = Membership::new(
            vec![
                entry("127.0.0.1:7001"),
                entry("2/dns:localhost:7001"),
                entry("127.0.0.1:7001"),
            ],
            None,
        );
        assert!(membership.can_change());
        let (servers, warnings) = membership.look().await.unwrap();
        assert_eq!(warnings.len(), 1, "{warnings:?}");
        assert!(
            warnings[0].starts_with("server 127.0.0.1:7001 is listed 2 times"),
            "{warnings:?}"
        );
        assert_eq!(servers[0], entry("127.0.0.1:7001"));
        // localhost resolves to 127.0.0.1, already listed, and perhaps to ::1.
        assert!(servers[1..]
            .iter()
            .all(|s| s.address == "[::1]:7001" && s.slots == Some(2) && !s.every_address));
    }

    #[tokio::test]
    async fn a_name_that_does_not_resolve_is_named() {
        let membership = Membership::new(vec![entry("dns:no-such-host.invalid:7000")], None);
        let error = membership.resolve().await.unwrap_err();
        assert!(
            format!("{error:#}").starts_with("dns:no-such-host.invalid:7000: cannot resolve"),
            "{error:#}"
        );
    }

    #[tokio::test]
    async fn a_servers_file_is_read_again_on_each_look() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("servers.txt");
        std::fs::write(&file, "127.0.0.1:7001\n").unwrap();
        let membership = Membership::new(Vec::new(), Some(file.clone()));
        let (mut updates, _) = membership.watch().await.unwrap();
        assert_eq!(*updates.borrow_and_update(), [entry("127.0.0.1:7001")]);
        std::fs::write(&file, "127.0.0.1:7002\n2/127.0.0.1:7003\n").unwrap();
        updates.changed().await.unwrap();
        assert_eq!(
            *updates.borrow_and_update(),
            [entry("127.0.0.1:7002"), entry("2/127.0.0.1:7003")]
        );
    }
}
