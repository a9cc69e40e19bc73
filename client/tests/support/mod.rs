//! Helpers shared by the integration tests: real servers on 127.0.0.1 port 0, and the
//! pool-client binary.

#![allow(dead_code)] // each test file uses its own subset

pub mod netns;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use std::sync::Arc;

use pool_client::report::Mode;
use pool_client::stats::Repeat;
use pool_client::RunOptions;
use pool_common::jobfile::{self, JobFile};
use pool_common::jobs::CancelFlag;
use pool_server::{ServerConfig, ServerHandle};

/// The pool-client binary built for these tests.
pub fn client_exe() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_pool-client"))
}

/// An empty folder for one test's files, `pool-test-NAME-PID` in the system's
/// temporary folder (emptied if a previous run left it), removed when dropped, so a
/// passing test leaves nothing behind (a failing one may: its files help).
pub fn temp_dir(name: &str) -> TestDir {
    let dir = std::env::temp_dir().join(format!("pool-test-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    TestDir(dir)
}

/// A test's folder from [`temp_dir`]: a path, removed with its content on drop.
pub struct TestDir(PathBuf);

impl std::ops::Deref for TestDir {
    type Target = Path;

    fn deref(&self) -> &Path {
        &self.0
    }
}

impl AsRef<Path> for TestDir {
    fn as_ref(&self) -> &Path {
        &self.0
    }
}

impl Drop for TestDir {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

/// The workspace's examples folder.
pub fn examples_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples")
}

/// Starts `count` in-process servers with `workers` workers each on 127.0.0.1 port 0.
pub async fn start_servers(count: usize, workers: usize) -> Vec<ServerHandle> {
    let mut servers = Vec::new();
    for _ in 0..count {
        let config = ServerConfig {
            workers,
            ..ServerConfig::default()
        };
        servers.push(
            pool_server::start("127.0.0.1:0", config)
                .await
                .expect("bind 127.0.0.1:0"),
        );
    }
    servers
}

/// The servers' addresses as `host:port` strings.
pub fn addresses(servers: &[ServerHandle]) -> Vec<String> {
    servers.iter().map(|s| s.local_addr().to_string()).collect()
}

/// Parses a job file written inline (relative file names resolve against `examples/`).
pub fn job_file(text: &str) -> JobFile {
    jobfile::parse(text, &examples_dir().join("inline-test.toml")).expect("valid test job file")
}

/// Options running every mode on `servers`.
pub fn options(servers: Vec<String>) -> RunOptions {
    RunOptions {
        modes: Mode::ALL.to_vec(),
        servers: Some(servers),
        local_servers: None,
        seed: Some(1),
        exe: client_exe(),
        cancel: Arc::new(CancelFlag::new()),
        repeat: Repeat::Times(1),
        warmup: 0,
    }
}

/// Options running only the pool mode on `servers`.
pub fn pool_only(servers: Vec<String>) -> RunOptions {
    RunOptions {
        modes: vec![Mode::Pool],
        ..options(servers)
    }
}

/// Runs the pool-client binary with `args` and returns what it did.
pub fn run_client(args: &[&str]) -> Output {
    Command::new(client_exe())
        .args(args)
        .env("RUST_LOG", "warn")
        .output()
        .expect("run pool-client")
}

/// The standard output of a finished command, as text.
pub fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// The standard error of a finished command, as text.
pub fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// A real server process (`pool-client serve`) on 127.0.0.1, killed when dropped.
pub struct ServerProcess {
    child: std::process::Child,
    /// Its `host:port`.
    pub address: String,
}

impl ServerProcess {
    /// Starts a server process with these extra `serve` options.
    pub fn start(extra_args: &[&str]) -> ServerProcess {
        let (child, address) =
            pool_client::servers::spawn_server(&client_exe(), extra_args).expect("start a server");
        ServerProcess { child, address }
    }

    /// Starts the pool-client binary with `args` (`serve` and options that make it
    /// listen on 127.0.0.1), with `env` added to its environment.
    pub fn start_with(args: &[&str], env: &[(&str, &str)]) -> ServerProcess {
        let (child, address) =
            pool_client::servers::spawn_listening_in(None, &client_exe(), args, env)
                .expect("start a server");
        ServerProcess { child, address }
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Kills the process with SIGKILL, as a crash or a power cut would.
    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Sends a signal by name (e.g. "TERM") to the process.
    pub fn signal(&self, name: &str) {
        let status = Command::new("kill")
            .args([&format!("-{name}"), &self.pid().to_string()])
            .status()
            .expect("run kill");
        assert!(status.success());
    }

    /// Stops the process with SIGSTOP, as a hung machine or a cut link looks, and
    /// returns once the kernel reports it stopped (a signal is delivered
    /// asynchronously; a test that sends a part right after must find it frozen).
    pub fn freeze(&self) {
        self.signal("STOP");
        let stat = format!("/proc/{}/stat", self.pid());
        for _ in 0..500 {
            let state = std::fs::read_to_string(&stat).unwrap_or_default();
            // The state follows the command name's closing parenthesis.
            if state
                .rsplit(')')
                .next()
                .is_some_and(|rest| rest.trim_start().starts_with('T'))
            {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(2));
        }
        panic!("process {} did not stop", self.pid());
    }

    /// Waits for the process to exit, at most `limit`; `None` if it is still running.
    pub fn wait_exit(&mut self, limit: std::time::Duration) -> Option<std::process::ExitStatus> {
        let deadline = std::time::Instant::now() + limit;
        while std::time::Instant::now() < deadline {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return Some(status);
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        None
    }

    /// The process's peak and current resident memory in KiB (VmHWM, VmRSS).
    pub fn memory_kib(&self) -> (u64, u64) {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid()))
            .expect("read /proc status");
        let field = |name: &str| {
            status
                .lines()
                .find(|l| l.starts_with(name))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
                .expect("memory field")
        };
        (field("VmHWM:"), field("VmRSS:"))
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// Sends `bytes` to `address` and reads until the server closes the connection
/// (within a minute, or the test fails).
pub async fn send_and_read_to_close(
    address: impl tokio::net::ToSocketAddrs,
    bytes: Vec<u8>,
) -> Vec<u8> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    tokio::time::timeout(std::time::Duration::from_secs(60), async move {
        let mut socket = tokio::net::TcpStream::connect(address).await.unwrap();
        let _ = socket.write_all(&bytes).await;
        let mut answer = Vec::new();
        let _ = socket.read_to_end(&mut answer).await;
        answer
    })
    .await
    .expect("the server must close a hostile connection")
}

/// The default connection options with `token` (none for `None`).
pub fn with_token(token: Option<&str>) -> pool_client::connection::ConnectOptions {
    pool_client::connection::ConnectOptions {
        token: token.map(String::from),
        ..Default::default()
    }
}

/// A loopback address where nothing listens (a port that was free a moment ago).
pub fn dead_address() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().to_string()
}

/// The reference result of a job file's job, computed here with the threaded kernel.
pub fn reference_result(job: &JobFile) -> pool_common::jobs::PartResult {
    let parts = job.load_job().unwrap().split(job.parts);
    pool_client::local::threaded(&parts, &CancelFlag::new(), &|| {})
        .unwrap()
        .result
}

/// Writes a NumPy `.npy` file (format 1.0) as `np.save` would: a header naming `descr`
/// (e.g. `<f8`) and `shape` (e.g. `(7, 3)`), padded to 64 bytes, then `data`.
pub fn write_npy(path: &Path, descr: &str, shape: &str, data: &[u8]) {
    let mut header = format!("{{'descr': '{descr}', 'fortran_order': False, 'shape': {shape}, }}");
    while (10 + header.len() + 1) % 64 != 0 {
        header.push(' ');
    }
    header.push('\n');
    let mut file = b"\x93NUMPY\x01\x00".to_vec();
    file.extend_from_slice(&(header.len() as u16).to_le_bytes());
    file.extend_from_slice(header.as_bytes());
    file.extend_from_slice(data);
    std::fs::write(path, file).expect("write the .npy file");
}
