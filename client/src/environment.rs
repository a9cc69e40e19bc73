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
    /// How busy the machine was when the run started.
    pub load_at_start: MachineLoad,
    /// How busy it was when the last mode ended (the run's own work included).
    pub load_at_end: Option<MachineLoad>,
}

/// How busy the machine was at one moment: what makes two runs' times comparable, or
/// not.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MachineLoad {
    /// The one-minute load average: processes running or waiting for a core.
    pub load_average: Option<f64>,
    /// The cores' mean clock frequency in MHz, where the system reports it.
    pub cpu_mhz: Option<f64>,
}

impl MachineLoad {
    /// The load average and clock frequency now.
    pub fn now() -> MachineLoad {
        MachineLoad {
            load_average: std::fs::read_to_string("/proc/loadavg")
                .ok()
                .and_then(|text| text.split_whitespace().next()?.parse().ok()),
            cpu_mhz: cpu_mhz(),
        }
    }

    /// Whether the load average shows other work than one run's: above half a core
    /// per core.
    pub fn busy(&self, cores: usize) -> bool {
        self.load_average
            .is_some_and(|load| load > cores.max(1) as f64 / 2.0)
    }

    /// The reading as JSON.
    pub fn json(&self) -> Value {
        json!({ "load_average_1m": self.load_average, "cpu_mhz": self.cpu_mhz })
    }
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
            load_at_start: MachineLoad::now(),
            load_at_end: None,
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
            "load_at_start": self.load_at_start.json(),
            "load_at_end": self.load_at_end.as_ref().map(MachineLoad::json),
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

/// The mean of the cores' current frequencies: cpufreq's, else /proc/cpuinfo's
/// `cpu MHz` (which virtual machines often report as a constant).
fn cpu_mhz() -> Option<f64> {
    let from_cpufreq: Vec<f64> = (0..1024)
        .map_while(|cpu| {
            std::fs::read_to_string(format!(
                "/sys/devices/system/cpu/cpu{cpu}/cpufreq/scaling_cur_freq"
            ))
            .ok()
        })
        .filter_map(|khz| khz.trim().parse::<f64>().ok().map(|khz| khz / 1000.0))
        .collect();
    let readings = if from_cpufreq.is_empty() {
        std::fs::read_to_string("/proc/cpuinfo")
            .ok()?
            .lines()
            .filter(|l| l.starts_with("cpu MHz"))
            .filter_map(|l| l.split_once(':')?.1.trim().parse().ok())
            .collect()
    } else {
        from_cpufreq
    };
    (!readings.is_empty()).then(|| readings.iter().sum::<f64>() / readings.len() as f64)
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
