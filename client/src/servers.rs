//! Servers started on this machine: the ones `local = N` starts for one run, and the
//! helpers that start a server process (on loopback, or in a network namespace of a
//! [`netlab`](crate::netlab)) and read the address it listens on.

use std::io::{BufRead, BufReader};
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{anyhow, bail, Context};

/// Servers started on 127.0.0.1 for one run, stopped when this is dropped (also on an
/// error or Ctrl-C). Each is a real process running the pool server; should this
/// process die without dropping it, the servers see their standard input close and
/// exit by themselves.
pub struct LocalServers {
    children: Vec<Child>,
    addresses: Vec<String>,
    token: Option<String>,
}

impl LocalServers {
    /// Starts `count` servers with `workers` worker threads each, by running
    /// `exe serve` (this program, whose `serve` is the pool server). With
    /// `run_programs`, for a job that runs the user's program, they run programs
    /// (`--allow-commands`) for this run's clients only: each gets a token drawn for
    /// the run, passed in its environment rather than on a command line others can
    /// read.
    pub fn start(
        count: usize,
        workers: usize,
        exe: &Path,
        run_programs: bool,
    ) -> anyhow::Result<LocalServers> {
        let token = run_programs.then(pool_common::auth::random_token);
        let mut servers = LocalServers {
            children: Vec::with_capacity(count),
            addresses: Vec::with_capacity(count),
            token,
        };
        let workers = workers.to_string();
        let mut args = vec!["--workers", workers.as_str()];
        let mut env = Vec::new();
        if let Some(token) = &servers.token {
            args.push("--allow-commands");
            env.push(("POOL_TOKEN", token.as_str()));
        }
        for _ in 0..count {
            let (child, address) =
                spawn_server_in(None, (Ipv4Addr::LOCALHOST, 0).into(), exe, &args, &env)?;
            servers.children.push(child);
            servers.addresses.push(address);
        }
        Ok(servers)
    }

    /// The servers' addresses, `127.0.0.1:PORT`.
    pub fn addresses(&self) -> &[String] {
        &self.addresses
    }

    /// The token the servers require, if they were started with one.
    pub fn token(&self) -> Option<&str> {
        self.token.as_deref()
    }
}

/// How long stopped servers get to exit by themselves (and remove what their jobs left
/// on disk, a command job's work folder) before they are killed.
const LOCAL_SERVER_EXIT_GRACE: Duration = Duration::from_secs(2);

impl Drop for LocalServers {
    fn drop(&mut self) {
        // Closing their standard input asks them to stop, as Ctrl-C would.
        for child in &mut self.children {
            drop(child.stdin.take());
        }
        let deadline = std::time::Instant::now() + LOCAL_SERVER_EXIT_GRACE;
        for child in &mut self.children {
            while matches!(child.try_wait(), Ok(None)) && std::time::Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(10));
            }
            let _ = child.kill();
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
    spawn_server_in(None, (Ipv4Addr::LOCALHOST, 0).into(), exe, extra_args, &[])
}

/// [`spawn_server`], said in full: the server runs in the network namespace
/// `namespace` if one is given (through `ip netns exec`, as
/// [`netlab`](crate::netlab)'s hosts do), listens on `listen` (port 0: an OS-chosen
/// port), and gets `env` added to its environment (a token, say, which a command line would
/// show to every user of the machine).
pub fn spawn_server_in(
    namespace: Option<&str>,
    listen: SocketAddr,
    exe: &Path,
    extra_args: &[&str],
    env: &[(&str, &str)],
) -> anyhow::Result<(Child, String)> {
    let (bind, port) = (listen.ip().to_string(), listen.port().to_string());
    let mut args = vec![
        "serve",
        "--bind",
        &bind,
        "--port",
        &port,
        "--exit-with-stdin",
    ];
    args.extend_from_slice(extra_args);
    spawn_listening_in(namespace, exe, &args, env).with_context(|| match namespace {
        Some(namespace) => format!("starting a server in the network namespace {namespace}"),
        None => "starting a local server".to_string(),
    })
}

/// Runs `exe args` with piped standard input and output (and `RUST_LOG` passed on,
/// `warn` by default), and returns it with the address of its
/// [`listening_line`](pool_server::cli::listening_line), read within 10 s. If it prints
/// anything else first, or nothing, it is killed.
pub fn spawn_listening(exe: &Path, args: &[&str]) -> anyhow::Result<(Child, String)> {
    spawn_listening_in(None, exe, args, &[])
}

/// [`spawn_listening`], in the network namespace `namespace` if one is given (through
/// [`netlab::exec_in`](crate::netlab::exec_in)), with `env` added. The one place a
/// listening process is started: `ip netns exec` replaces itself with `exe`, so the
/// child is the program itself either way, and killing it kills the program.
pub fn spawn_listening_in(
    namespace: Option<&str>,
    exe: &Path,
    args: &[&str],
    env: &[(&str, &str)],
) -> anyhow::Result<(Child, String)> {
    let mut command = match namespace {
        Some(namespace) => crate::netlab::exec_in(namespace, exe),
        None => Command::new(exe),
    };
    let mut child = command
        .args(args)
        .envs(env.iter().copied())
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

/// A Linux control group (the cgroup v1 `cpu` controller) that holds the processes put
/// in it to a share of one core, whatever else the machine runs: a real slow server
/// for the tests and benchmarks of scheduling. Removed when dropped, its processes
/// moved back to the root group.
pub struct CpuQuota {
    dir: PathBuf,
}

/// Where the `cpu` controller of cgroup v1 is mounted.
const CPU_CGROUP_ROOT: &str = "/sys/fs/cgroup/cpu";

impl CpuQuota {
    /// A new group allowed `share` of one core (e.g. 0.25), or why the machine does
    /// not allow it (no cgroup v1 `cpu` controller, or not root).
    pub fn new(share: f64) -> anyhow::Result<CpuQuota> {
        static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let period_us = 100_000u64;
        let quota_us = ((share * period_us as f64) as u64).max(1_000);
        let dir = Path::new(CPU_CGROUP_ROOT).join(format!(
            "pool-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        ));
        std::fs::create_dir(&dir).with_context(|| {
            format!(
                "cannot create the cgroup {} (needs cgroup v1's cpu controller and root)",
                dir.display()
            )
        })?;
        let quota = CpuQuota { dir };
        quota.write("cpu.cfs_period_us", &period_us.to_string())?;
        quota.write("cpu.cfs_quota_us", &quota_us.to_string())?;
        Ok(quota)
    }

    /// Puts the process `pid`, with all its threads, in the group.
    pub fn add(&self, pid: u32) -> anyhow::Result<()> {
        self.write("cgroup.procs", &pid.to_string())
    }

    fn write(&self, file: &str, value: &str) -> anyhow::Result<()> {
        let path = self.dir.join(file);
        std::fs::write(&path, value).with_context(|| format!("cannot write {}", path.display()))
    }
}

impl Drop for CpuQuota {
    fn drop(&mut self) {
        if let Ok(procs) = std::fs::read_to_string(self.dir.join("cgroup.procs")) {
            for pid in procs.lines() {
                let _ = std::fs::write(Path::new(CPU_CGROUP_ROOT).join("cgroup.procs"), pid);
            }
        }
        let _ = std::fs::remove_dir(&self.dir);
    }
}
