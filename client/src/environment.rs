//! Where a run happened: the machine, the build and the settings, so that a result
//! saved as JSON can be reproduced and compared with another one later.

use pool_common::jobfile::JobFile;
use serde_json::{json, Value};

/// The machine and build a run happened on.
#[derive(Debug, Clone)]
pub struct Environment {
    /// The CPU model, as the operating system names it (`unknown` if it does not say).
    pub cpu_model: String,
    /// Logical cores this process may use.
    pub cores: usize,
    /// The operating system, its release where known, and the architecture.
    pub os: String,
    /// `release` or `debug`: debug builds of the client time a different program.
    pub build_profile: &'static str,
    /// pool's version.
    pub pool_version: &'static str,
    /// When the run started, in seconds since the Unix epoch (for ordering saved runs).
    pub started_unix_s: u64,
}

impl Environment {
    /// Describes this machine and this build, now.
    pub fn detect() -> Environment {
        Environment {
            cpu_model: cpu_model().unwrap_or_else(|| "unknown".to_string()),
            cores: std::thread::available_parallelism().map_or(1, |n| n.get()),
            os: os_description(),
            build_profile: build_profile(),
            pool_version: env!("CARGO_PKG_VERSION"),
            started_unix_s: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
        }
    }

    /// The environment as JSON.
    pub fn json(&self) -> Value {
        json!({
            "cpu_model": self.cpu_model,
            "cores": self.cores,
            "os": self.os,
            "build_profile": self.build_profile,
            "pool_version": self.pool_version,
            "started_unix_s": self.started_unix_s,
        })
    }
}

/// `debug` when this binary was built without optimisation checks turned off, which is
/// what `cargo build` without `--release` gives.
pub fn build_profile() -> &'static str {
    if cfg!(debug_assertions) {
        "debug"
    } else {
        "release"
    }
}

/// The job file's seeds: what makes its data (and, with the placement seed recorded
/// beside it, its placement) the same on a rerun.
pub fn job_seeds(job_file: &JobFile) -> Value {
    // As strings: JSON readers that take numbers for doubles would round 64-bit seeds.
    job_file
        .job
        .seeds()
        .into_iter()
        .map(|(name, seed)| (name.to_string(), Value::String(seed.to_string())))
        .collect::<serde_json::Map<_, _>>()
        .into()
}

fn cpu_model() -> Option<String> {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").ok()?;
    cpuinfo
        .lines()
        .find(|l| l.starts_with("model name") || l.starts_with("Model"))
        .and_then(|l| l.split_once(':'))
        .map(|(_, model)| model.trim().to_string())
}

fn os_description() -> String {
    let pretty = std::fs::read_to_string("/etc/os-release")
        .ok()
        .and_then(|text| {
            text.lines()
                .find_map(|l| l.strip_prefix("PRETTY_NAME="))
                .map(|name| name.trim_matches('"').to_string())
        });
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .ok()
        .map(|k| k.trim().to_string());
    let mut parts = vec![std::env::consts::OS.to_string()];
    parts.extend(pretty);
    parts.extend(kernel);
    format!("{} ({})", parts.join(" "), std::env::consts::ARCH)
}
