//! The servers a job runs on: the static list, how parts are placed on it, and the
//! servers `local = N` starts on this machine for one run.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{anyhow, bail, Context};
use pool_common::jobfile::Placement;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::RngExt;

/// Chooses a server (an index into the list of `servers`) for each of `parts` parts.
pub fn place(parts: usize, servers: usize, placement: Placement, rng: &mut StdRng) -> Vec<usize> {
    assert!(servers > 0, "no servers to place parts on");
    match placement {
        Placement::Shuffle => {
            let mut order: Vec<usize> = (0..servers).collect();
            order.shuffle(rng);
            (0..parts).map(|i| order[i % servers]).collect()
        }
        Placement::Random => (0..parts).map(|_| rng.random_range(0..servers)).collect(),
    }
}

/// Servers started on 127.0.0.1 for one run, stopped when this is dropped (also on an
/// error or Ctrl-C). Each is a real process running the pool server; should this
/// process die without dropping it, the servers see their standard input close and
/// exit by themselves.
pub struct LocalServers {
    children: Vec<Child>,
    addresses: Vec<String>,
}

impl LocalServers {
    /// Starts `count` servers with `workers` worker threads each, by running
    /// `exe serve` (this program, whose `serve` is the pool server).
    pub fn start(count: usize, workers: usize, exe: &Path) -> anyhow::Result<LocalServers> {
        let mut servers = LocalServers {
            children: Vec::with_capacity(count),
            addresses: Vec::with_capacity(count),
        };
        for _ in 0..count {
            let (child, address) = spawn_server(exe, &["--workers", &workers.to_string()])?;
            servers.children.push(child);
            servers.addresses.push(address);
        }
        Ok(servers)
    }

    /// The servers' addresses, `127.0.0.1:PORT`.
    pub fn addresses(&self) -> &[String] {
        &self.addresses
    }
}

impl Drop for LocalServers {
    fn drop(&mut self) {
        for child in &mut self.children {
            let _ = child.kill();
        }
        for child in &mut self.children {
            let _ = child.wait();
        }
    }
}

/// Starts one server process on 127.0.0.1 with an OS-chosen port, by running
/// `exe serve` with `extra_args`, and returns it with its address once it listens.
///
/// The server exits when its standard input closes, that is when the returned `Child`
/// is dropped or this process dies, so it cannot outlive its parent.
pub fn spawn_server(exe: &Path, extra_args: &[&str]) -> anyhow::Result<(Child, String)> {
    let mut args = vec![
        "serve",
        "--bind",
        "127.0.0.1",
        "--port",
        "0",
        "--exit-with-stdin",
    ];
    args.extend_from_slice(extra_args);
    spawn_listening(exe, &args).context("starting a local server")
}

/// Runs `exe args` with piped standard input and output (and `RUST_LOG` passed on,
/// `warn` by default), and returns it with the address of its
/// [`listening_line`](pool_server::cli::listening_line), read within 10 s. If it prints
/// anything else first, or nothing, it is killed.
pub fn spawn_listening(exe: &Path, args: &[&str]) -> anyhow::Result<(Child, String)> {
    let mut child = Command::new(exe)
        .args(args)
        .env(
            "RUST_LOG",
            std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".into()),
        )
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .with_context(|| format!("cannot start {}", exe.display()))?;
    let stdout = child.stdout.take().expect("piped");
    match read_listen_address(stdout) {
        Ok(address) => Ok((child, address)),
        Err(e) => {
            let _ = child.kill();
            let _ = child.wait();
            Err(e)
        }
    }
}

/// Reads a [`listening_line`](pool_server::cli::listening_line), within a bound.
fn read_listen_address(stdout: std::process::ChildStdout) -> anyhow::Result<String> {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut line = String::new();
        let _ = tx.send(BufReader::new(stdout).read_line(&mut line).map(|_| line));
    });
    let line = rx
        .recv_timeout(Duration::from_secs(10))
        .map_err(|_| anyhow!("the process did not start listening within 10 s"))?
        .context("reading the process's address")?;
    let Some(address) = pool_server::cli::parse_listening_line(&line) else {
        bail!("the process did not start listening (it printed {line:?})");
    };
    Ok(address.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn shuffle_balances_and_seeds_reproduce() {
        let mut rng = StdRng::seed_from_u64(1);
        let placed = place(7, 3, Placement::Shuffle, &mut rng);
        let mut counts = [0; 3];
        for &s in &placed {
            counts[s] += 1;
        }
        counts.sort();
        assert_eq!(counts, [2, 2, 3]);
        assert_eq!(
            placed,
            place(7, 3, Placement::Shuffle, &mut StdRng::seed_from_u64(1))
        );
        assert!(place(50, 3, Placement::Random, &mut rng)
            .iter()
            .all(|&s| s < 3));
    }
}
