//! The multi-host tests' side of [`pool_client::netlab`]: a lab or a clear skip, server
//! processes in its server namespaces, and the pool-client binary in its client
//! namespace.

use std::io::Write as _;
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use pool_client::netlab::{LabConfig, LabError, NetLab};

use super::{client_exe, ServerProcess};

/// Set (to anything) to make a missing lab a failure instead of a skip: CI sets it,
/// so the multi-host tests cannot pass there without running.
pub const REQUIRED_VAR: &str = "POOL_NETNS_REQUIRED";

/// A lab as `config` says, or `None` after printing why this machine cannot have one
/// (`<test> skipped: needs root and iproute2 (ip netns): ...`). A lab that fails to
/// build where namespaces work is a failure, never a skip.
pub fn lab_or_skip(test: &str, config: &LabConfig) -> Option<NetLab> {
    match NetLab::new(config) {
        Ok(lab) => {
            eprintln!("{test}: {}", lab.describe());
            Some(lab)
        }
        Err(e @ LabError::Unavailable(_)) => {
            let message = format!("{test} skipped: {e}");
            if std::env::var_os(REQUIRED_VAR).is_some() {
                panic!("{message} (and {REQUIRED_VAR} is set)");
            }
            // Straight to standard error, past the test harness's capture: a skip must
            // show in a plain `cargo test`.
            let _ = writeln!(std::io::stderr(), "{message}");
            None
        }
        Err(e) => panic!("{test}: building the lab failed: {e:#}"),
    }
}

impl ServerProcess {
    /// Starts `pool-client serve` in `lab`'s server namespace `index`, on its address,
    /// with these extra options. Killing it kills the server itself (`ip netns exec`
    /// replaces itself with the program).
    pub fn start_in(lab: &NetLab, index: usize, extra_args: &[&str]) -> ServerProcess {
        let (child, address) = lab
            .spawn_server(index, &client_exe(), extra_args)
            .expect("start a server in its namespace");
        ServerProcess { child, address }
    }

    /// Whether the process still runs.
    pub fn is_running(&mut self) -> bool {
        self.child.try_wait().expect("try_wait").is_none()
    }
}

/// One one-worker server in each of `lab`'s server namespaces.
pub fn one_worker_servers(lab: &NetLab) -> Vec<ServerProcess> {
    (0..lab.servers().len())
        .map(|i| ServerProcess::start_in(lab, i, &["--workers", "1"]))
        .collect()
}

/// The pool-client binary with `args`, in `lab`'s client namespace.
fn client_command(lab: &NetLab, args: &[&str]) -> Command {
    let mut command = lab.command(lab.client(), client_exe());
    command.args(args).env("RUST_LOG", "warn");
    command
}

/// Runs the pool-client binary with `args` in `lab`'s client namespace to its end.
pub fn run_client_in(lab: &NetLab, args: &[&str]) -> Output {
    client_command(lab, args)
        .output()
        .expect("run pool-client in the client namespace")
}

/// Starts the pool-client binary with `args` in `lab`'s client namespace; collect it
/// with `wait_with_output`.
pub fn spawn_client_in(lab: &NetLab, args: &[&str]) -> Child {
    client_command(lab, args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start pool-client in the client namespace")
}

/// `pool-client status` of one server, asked from the client namespace: its JSON
/// object (with `reachable` false if it did not answer within `timeout`).
pub fn status_in(lab: &NetLab, address: &str, timeout: Duration) -> serde_json::Value {
    let output = run_client_in(
        lab,
        &[
            "status",
            "--servers",
            address,
            "--format",
            "json",
            "--timeout",
            &timeout.as_secs_f64().to_string(),
        ],
    );
    let answer: serde_json::Value =
        serde_json::from_slice(&output.stdout).expect("status prints JSON");
    answer[0].clone()
}

/// Returns once the server at `address` holds a part (asked from the client
/// namespace, as the test process itself has no route to the lab).
pub fn wait_until_holding(lab: &NetLab, address: &str) {
    for _ in 0..300 {
        let status = status_in(lab, address, Duration::from_secs(2));
        if status["parts_in_flight"].as_u64().unwrap_or(0) > 0 {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    panic!("the server {address} never got a part");
}

/// A folder for one test's job files, removed when dropped.
pub struct JobDir {
    dir: PathBuf,
}

impl JobDir {
    /// A new, empty folder named after the test.
    pub fn new(test: &str) -> JobDir {
        let dir = std::env::temp_dir().join(format!("pool-{test}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("create the job folder");
        JobDir { dir }
    }

    /// Writes `text` as the job file `name` and returns its path as text.
    pub fn job(&self, name: &str, text: &str) -> String {
        let path = self.dir.join(name);
        std::fs::write(&path, text).expect("write the job file");
        path.to_string_lossy().into_owned()
    }
}

impl Drop for JobDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
