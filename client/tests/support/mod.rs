//! Helpers shared by the integration tests: real servers on 127.0.0.1 port 0, and the
//! pool-client binary.

#![allow(dead_code)] // each test file uses its own subset

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use pool_client::connection::Timeouts;
use pool_client::report::Mode;
use pool_client::RunOptions;
use pool_common::jobfile::{self, JobFile};
use pool_server::{ServerConfig, ServerHandle};

/// The pool-client binary built for these tests.
pub fn client_exe() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_pool-client"))
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
        timeouts: Timeouts::default(),
        repeat: 1,
        warmup: 0,
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
