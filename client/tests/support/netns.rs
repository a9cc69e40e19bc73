//! The multi-host tests' side of [`pool_client::netlab`]: a lab or a clear skip, server
//! processes in its server namespaces, and the pool-client binary in its client
//! namespace.

use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use pool_client::netlab::{LabConfig, NetLab};

use super::{client_exe, ServerProcess};

/// A lab as `config` says, or `None` after printing `<test> skipped: <what is
/// missing>` where this machine cannot have one (not root, no iproute2). Where it
/// could, a lab that fails to build fails the test.
pub fn lab_or_skip(test: &str, config: &LabConfig) -> Option<NetLab> {
    NetLab::new_or_skip(test, config).unwrap_or_else(|e| panic!("{e:#}"))
}

impl ServerProcess {
    /// Starts `pool-client serve` in `lab`'s server namespace `index`, on its address,
    /// with these extra options. Killing it kills the server itself (`ip netns exec`
    /// replaces itself with the program).
    pub fn start_in(lab: &NetLab, index: usize, extra_args: &[&str]) -> ServerProcess {
        Self::start_in_at(lab, index, 0, extra_args)
    }

    /// [`ServerProcess::start_in`], on port `port` (0: one the OS chooses).
    pub fn start_in_at(
        lab: &NetLab,
        index: usize,
        port: u16,
        extra_args: &[&str],
    ) -> ServerProcess {
        let (child, address) = lab
            .spawn_server_at(index, port, &client_exe(), extra_args)
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
pub fn client_command(lab: &NetLab, args: &[&str]) -> Command {
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

/// Returns once the server at `address` holds a part, asked from the client namespace
/// (the test process itself has no route to the lab). Fails if `client`, the job
/// that should give it one, ends first.
pub fn wait_until_holding(lab: &NetLab, address: &str, client: &mut Child) {
    loop {
        let status = status_in(lab, address, Duration::from_secs(2));
        if status["parts_in_flight"].as_u64().unwrap_or(0) > 0 {
            return;
        }
        if let Some(exit) = client.try_wait().expect("try_wait") {
            panic!("the job ended ({exit}) before the server {address} held a part");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}
