//! The hosts file of `pool-client up hosts.txt` and of a job file's `ssh_hosts`: the
//! machines to start servers on with `ssh`, one per line, written as GNU parallel's
//! `--sshlogin` writes them.
//!
//! ```text
//! # lab machines
//! lab1                  # ssh's defaults (user, port) or its config's
//! alice@lab2:2222       # user alice, ssh port 2222
//! 4/lab3                # a server with 4 workers (parallel's "4 jobs on lab3")
//! [fe80::1%eth0]:22     # an IPv6 address goes in brackets when a port follows
//! ```

use std::path::Path;

use crate::jobfile::{listed_lines, JobFileError};

/// One line of a hosts file: where ssh logs in, and how many workers the server gets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SshHost {
    /// The entry as written (`4/alice@lab2:2222`): how reports name the host.
    pub entry: String,
    /// What ssh is given as the destination: `[user@]host`, without the port.
    pub login: String,
    /// The host alone, as ssh's configuration may rename it (`HostName`).
    pub host: String,
    /// The ssh port (`-p`), when the entry gives one.
    pub port: Option<u16>,
    /// The server's `--workers`, when the entry gives `N/` (else the host's cores).
    pub workers: Option<u32>,
}

impl SshHost {
    /// Reads `[N/][user@]host[:port]`, saying what to fix if it is not that.
    pub fn parse(entry: &str) -> Result<SshHost, String> {
        if entry.is_empty() || entry.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(format!(
                "{entry:?}: one host per line, written [N/][user@]host[:port], without spaces"
            ));
        }
        let (workers, rest) = match entry.split_once('/') {
            None => (None, entry),
            Some((n, rest)) => match n.parse::<u32>() {
                Ok(n) if n >= 1 => (Some(n), rest),
                _ => {
                    return Err(format!(
                        "{entry:?}: the workers before `/` must be a whole number of at least 1, as in \"4/lab1\""
                    ))
                }
            },
        };
        let (user, address) = match rest.rsplit_once('@') {
            Some((user, address)) if !user.is_empty() => (Some(user), address),
            Some(_) => return Err(format!("{entry:?}: an empty user name before `@`")),
            None => (None, rest),
        };
        let (host, port) = if let Some(bracketed) = address.strip_prefix('[') {
            let Some((host, after)) = bracketed.split_once(']') else {
                return Err(format!("{entry:?}: a `[` without its `]`"));
            };
            match after {
                "" => (host, None),
                _ => match after.strip_prefix(':') {
                    Some(port) => (host, Some(port)),
                    None => return Err(format!("{entry:?}: after `]` comes `:port` or nothing")),
                },
            }
        } else {
            match address.split_once(':') {
                Some((_, port)) if port.contains(':') => {
                    return Err(format!(
                        "{entry:?}: write an IPv6 address in brackets, as in \"[2001:db8::1]:22\""
                    ))
                }
                Some((host, port)) => (host, Some(port)),
                None => (address, None),
            }
        };
        // An argument that starts with `-` would be an option to ssh, not a host.
        if host.is_empty() || host.starts_with('-') || user.is_some_and(|u| u.starts_with('-')) {
            return Err(format!(
                "{entry:?}: not a host name; write [N/][user@]host[:port], as in \"alice@lab1:22\""
            ));
        }
        let port = match port {
            None => None,
            Some(port) => match port.parse::<u16>() {
                Ok(p) if p != 0 => Some(p),
                _ => {
                    return Err(format!(
                        "{entry:?}: the ssh port must be between 1 and 65535"
                    ))
                }
            },
        };
        Ok(SshHost {
            entry: entry.to_string(),
            login: match user {
                Some(user) => format!("{user}@{host}"),
                None => host.to_string(),
            },
            host: host.to_string(),
            port,
            workers,
        })
    }
}

/// Reads a hosts file: one [`SshHost`] per line; `#` starts a comment; blank lines are
/// skipped. A line that does not parse is an error naming it; a host listed twice too,
/// since one port cannot take two servers.
pub fn read_hosts_file(path: &Path) -> Result<Vec<SshHost>, JobFileError> {
    let shown = path.display().to_string();
    let error = |location, message| JobFileError {
        path: shown.clone(),
        location,
        message,
    };
    let text = std::fs::read_to_string(path)
        .map_err(|e| error(None, format!("cannot read the hosts file: {e}")))?;
    let mut hosts: Vec<SshHost> = Vec::new();
    for (location, entry) in listed_lines(&text) {
        let at = Some(location);
        let host = SshHost::parse(entry).map_err(|message| error(at, message))?;
        if let Some(twin) = hosts
            .iter()
            .find(|h| (&h.login, h.port) == (&host.login, host.port))
        {
            return Err(error(
                at,
                format!(
                    "{entry:?} is listed twice (also as {:?}): one server per host",
                    twin.entry
                ),
            ));
        }
        hosts.push(host);
    }
    if hosts.is_empty() {
        return Err(error(
            None,
            "no hosts listed: write one [user@]host[:port] per line".into(),
        ));
    }
    Ok(hosts)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::jobfile::Location;

    #[test]
    fn entries_parse_as_gnu_parallel_writes_them() {
        let host = SshHost::parse("4/alice@lab2:2222").unwrap();
        assert_eq!(
            (
                host.login.as_str(),
                host.host.as_str(),
                host.port,
                host.workers
            ),
            ("alice@lab2", "lab2", Some(2222), Some(4))
        );
        let host = SshHost::parse("lab1").unwrap();
        assert_eq!(
            (host.login.as_str(), host.port, host.workers),
            ("lab1", None, None)
        );
        let host = SshHost::parse("root@[fe80::1%eth0]:22").unwrap();
        assert_eq!(
            (host.login.as_str(), host.host.as_str(), host.port),
            ("root@fe80::1%eth0", "fe80::1%eth0", Some(22))
        );
        assert_eq!(SshHost::parse("[::1]").unwrap().login, "::1");
        for (bad, why) in [
            ("-oProxyCommand=x", "not a host name"),
            ("bob@-F", "not a host name"),
            ("lab1:0", "between 1 and 65535"),
            ("lab1:ssh", "between 1 and 65535"),
            ("::1", "in brackets"),
            ("0/lab1", "at least 1"),
            ("@lab1", "empty user"),
            ("lab 1", "without spaces"),
            ("[::1", "without its `]`"),
        ] {
            let error = SshHost::parse(bad).unwrap_err();
            assert!(error.contains(why), "{bad}: {error}");
        }
    }

    #[test]
    fn a_hosts_file_names_the_line_to_fix() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("hosts.txt");
        std::fs::write(&path, "# lab\nlab1   # first\n\n  alice@lab2:2222\n").unwrap();
        let hosts = read_hosts_file(&path).unwrap();
        assert_eq!(
            hosts.iter().map(|h| h.entry.as_str()).collect::<Vec<_>>(),
            ["lab1", "alice@lab2:2222"]
        );
        std::fs::write(&path, "lab1\n\n  lab2:99999\n").unwrap();
        let error = read_hosts_file(&path).unwrap_err();
        assert_eq!(error.location, Some(Location { line: 3, column: 3 }));
        assert!(error.message.contains("between 1 and 65535"), "{error}");
        std::fs::write(&path, "lab1\n2/lab1\n").unwrap();
        assert_eq!(
            read_hosts_file(&path).unwrap_err().to_string(),
            format!(
                "{}:2:1: \"2/lab1\" is listed twice (also as \"lab1\"): one server per host",
                path.display()
            )
        );
        std::fs::write(&path, "# nobody\n").unwrap();
        assert!(read_hosts_file(&path)
            .unwrap_err()
            .to_string()
            .ends_with("no hosts listed: write one [user@]host[:port] per line"));
    }
}
