//! Helper processes the harness starts and stops: pool servers, a raw TCP echo server
//! and a raw TCP sink (the baselines), on 127.0.0.1 port 0 (or, for the LAN scenario,
//! on a lab host's address in its network namespace), all children of this program, so
//! their memory can be read from `/proc/PID/status`.

use std::io::Read;
use std::net::IpAddr;
use std::path::PathBuf;
use std::process::Child;

use anyhow::{anyhow, Context};
use pool_client::netlab::NetLab;
use pool_common::tls::Fingerprint;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// A child process listening on 127.0.0.1 (or a lab host's address), killed and reaped
/// when dropped. It also exits by itself when its standard input closes, so it never
/// outlives the harness.
pub struct Helper {
    child: Child,
    /// `127.0.0.1:PORT`, or the lab host's `address:PORT`.
    pub addr: String,
}

impl Helper {
    /// A pool server (`pool-bench serve`, the very server of `pool-server`).
    pub fn pool_server(workers: usize) -> anyhow::Result<Helper> {
        Helper::pool_server_with(&["--workers", &workers.to_string()])
    }

    /// A pool server started with these options (as `pool-server` takes them).
    pub fn pool_server_with(args: &[&str]) -> anyhow::Result<Helper> {
        let (child, addr) = pool_client::servers::spawn_server(&self_exe()?, args)?;
        Ok(Helper { child, addr })
    }

    /// A pool server with TLS, under a certificate made here for it, and that
    /// certificate's fingerprint.
    pub fn pool_server_tls(workers: usize) -> anyhow::Result<(Helper, Fingerprint)> {
        let made = rcgen::generate_simple_self_signed(vec!["localhost".to_string()])?;
        let dir = tempfile::tempdir()?;
        let (cert, key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
        std::fs::write(&cert, made.cert.pem())?;
        std::fs::write(&key, made.key_pair.serialize_pem())?;
        let workers = workers.to_string();
        let (child, addr) = pool_client::servers::spawn_server(
            &self_exe()?,
            &[
                "--workers",
                &workers,
                "--tls-cert",
                &cert.display().to_string(),
                "--tls-key",
                &key.display().to_string(),
            ],
        )?;
        Ok((Helper { child, addr }, Fingerprint::of(made.cert.der())))
    }

    /// A pool server with `workers` workers on `lab`'s server host `index`, requiring
    /// the lab's token.
    pub fn pool_server_in(lab: &NetLab, index: usize, workers: usize) -> anyhow::Result<Helper> {
        let workers = workers.to_string();
        let (child, addr) = lab.spawn_server(index, &self_exe()?, &["--workers", &workers])?;
        Ok(Helper { child, addr })
    }

    /// A raw TCP echo server (the floor for a round trip).
    pub fn echo() -> anyhow::Result<Helper> {
        Helper::spawn(&["echo"])
    }

    /// A raw TCP sink: reads until the end of the stream, then answers the byte count.
    pub fn sink() -> anyhow::Result<Helper> {
        Helper::spawn(&["sink"])
    }

    /// A raw TCP sink on `lab`'s server host `index`, on its address.
    pub fn sink_in(lab: &NetLab, index: usize) -> anyhow::Result<Helper> {
        let host = lab
            .servers()
            .get(index)
            .with_context(|| format!("the lab has no server {index}"))?;
        let bind = host.address.to_string();
        let (child, addr) = pool_client::servers::spawn_listening_in(
            Some(&host.namespace),
            &self_exe()?,
            &["sink", "--bind", &bind],
            &[],
        )?;
        Ok(Helper { child, addr })
    }

    fn spawn(args: &[&str]) -> anyhow::Result<Helper> {
        let (child, addr) = pool_client::servers::spawn_listening(&self_exe()?, args)?;
        Ok(Helper { child, addr })
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Resident memory now, in KiB.
    pub fn rss_kib(&self) -> anyhow::Result<u64> {
        status_kib(self.pid(), "VmRSS:")
    }

    /// Peak resident memory since start, in KiB.
    pub fn peak_rss_kib(&self) -> anyhow::Result<u64> {
        status_kib(self.pid(), "VmHWM:")
    }
}

impl Drop for Helper {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// This program's path: helpers and worker processes run it again.
pub fn self_exe() -> anyhow::Result<PathBuf> {
    std::env::current_exe().context("cannot find this program's own path")
}

fn status_kib(pid: u32, field: &str) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("reading /proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|kib| kib.parse().ok())
        .ok_or_else(|| anyhow!("no {field} in /proc/{pid}/status"))
}

/// Exits this process when standard input closes (the harness went away).
fn exit_with_stdin() {
    std::thread::spawn(|| {
        let mut sink = [0u8; 64];
        let mut stdin = std::io::stdin();
        while matches!(stdin.read(&mut sink), Ok(n) if n > 0) {}
        std::process::exit(0);
    });
}

/// Listens on `bind` with an OS-chosen port and says so on standard output.
async fn listen(what: &str, bind: IpAddr) -> anyhow::Result<TcpListener> {
    // The server's own listen call, so the baselines' backlog is the server's.
    let listener = pool_server::listen((bind, 0)).await?;
    println!(
        "{}",
        pool_server::cli::listening_line(what, listener.local_addr()?)
    );
    exit_with_stdin();
    Ok(listener)
}

/// The body of `pool-bench echo`: echoes every byte back, one task per connection,
/// on the same multi-threaded tokio runtime a pool server uses.
pub async fn echo_main() -> anyhow::Result<()> {
    let listener = listen("echo", std::net::Ipv4Addr::LOCALHOST.into()).await?;
    loop {
        let (mut socket, _) = listener.accept().await?;
        socket.set_nodelay(true)?;
        tokio::spawn(async move {
            let mut buf = vec![0u8; 64 << 10];
            loop {
                match socket.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => {
                        if socket.write_all(&buf[..n]).await.is_err() {
                            return;
                        }
                    }
                }
            }
        });
    }
}

/// The body of `pool-bench sink`: listens on `bind`, reads each connection to its end,
/// discarding the bytes, then writes their count (u64 little-endian).
pub async fn sink_main(bind: IpAddr) -> anyhow::Result<()> {
    let listener = listen("sink", bind).await?;
    loop {
        let (mut socket, _) = listener.accept().await?;
        socket.set_nodelay(true)?;
        tokio::spawn(async move {
            let mut buf = vec![0u8; 1 << 20];
            let mut total = 0u64;
            loop {
                match socket.read(&mut buf).await {
                    Ok(0) => break,
                    Ok(n) => total += n as u64,
                    Err(_) => return,
                }
            }
            let _ = socket.write_all(&total.to_le_bytes()).await;
        });
    }
}
