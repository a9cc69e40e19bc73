//! What a run prints: the comparison table, or one JSON document for scripts.

use std::fmt::Write as _;
use std::time::Duration;

use pool_common::jobs::PartResult;
use serde_json::json;

use crate::dispatch::PoolRun;

/// The ways to run the same parts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, clap::ValueEnum)]
pub enum Mode {
    /// One thread, parts in order.
    Sequential,
    /// One OS thread per part.
    Threaded,
    /// One child process per part.
    #[value(name = "processes", alias = "multi-process")]
    MultiProcess,
    /// The parts sent to pool servers.
    Pool,
}

impl Mode {
    /// Every mode, in the order they run and are shown.
    pub const ALL: [Mode; 4] = [
        Mode::Sequential,
        Mode::Threaded,
        Mode::MultiProcess,
        Mode::Pool,
    ];

    /// The mode's name in reports.
    pub fn name(self) -> &'static str {
        match self {
            Mode::Sequential => "sequential",
            Mode::Threaded => "threaded",
            Mode::MultiProcess => "multi-process",
            Mode::Pool => "pool",
        }
    }
}

/// One mode's run.
#[derive(Debug, Clone)]
pub struct ModeRun {
    /// Which mode.
    pub mode: Mode,
    /// Threads, processes or server workers that computed at once.
    pub workers: usize,
    /// Parts computed.
    pub parts: usize,
    /// Wall-clock time on the client's monotonic clock.
    pub elapsed: Duration,
    /// The combined result.
    pub result: PartResult,
}

/// Everything a run produced.
#[derive(Debug, Clone)]
pub struct Report {
    /// The job kind.
    pub kind: String,
    /// The job file.
    pub job_file: String,
    /// Parts per mode.
    pub parts: usize,
    /// Each mode that ran, in [`Mode::ALL`] order.
    pub runs: Vec<ModeRun>,
    /// The pool mode's details, if it ran.
    pub pool: Option<PoolRun>,
}

impl Report {
    /// The result every mode is checked against: the sequential one, or else the first.
    pub fn reference(&self) -> PartResult {
        self.runs
            .iter()
            .find(|r| r.mode == Mode::Sequential)
            .unwrap_or(&self.runs[0])
            .result
    }

    /// Whether every mode's result equals the reference.
    pub fn all_match(&self) -> bool {
        self.runs.iter().all(|r| r.result == self.reference())
    }

    fn sequential_elapsed(&self) -> Option<Duration> {
        self.runs
            .iter()
            .find(|r| r.mode == Mode::Sequential)
            .map(|r| r.elapsed)
    }

    fn label(&self, run: &ModeRun) -> String {
        match (&self.pool, run.mode) {
            (Some(pool), Mode::Pool) => format!("pool ({} servers)", pool.servers.len()),
            _ => run.mode.name().to_string(),
        }
    }

    /// The report as a human-readable table, with the pool's parts above it.
    pub fn table(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "job: {} ({}), {} parts",
            self.kind, self.job_file, self.parts
        );
        if let Some(pool) = &self.pool {
            let _ = writeln!(
                out,
                "\n{:>4}  {:<22} {:>10} {:>11}",
                "part", "server", "compute", "round trip"
            );
            for part in &pool.parts {
                let _ = writeln!(
                    out,
                    "{:>4}  {:<22} {:>10} {:>11}",
                    part.part,
                    part.computed_by.to_string(),
                    seconds(part.reply.compute),
                    seconds(part.reply.round_trip)
                );
            }
            let retried: Vec<_> = pool.retried().collect();
            if !retried.is_empty() {
                let _ = writeln!(out, "\nretried parts:");
                for part in retried {
                    for failed in &part.failed_attempts {
                        let _ = writeln!(
                            out,
                            "  part {} failed on {}: {}",
                            part.part, failed.server, failed.error
                        );
                    }
                    let _ = writeln!(out, "  part {} computed by {}", part.part, part.computed_by);
                }
            }
        }
        let _ = writeln!(
            out,
            "\n{:<18} {:>7} {:>6} {:>10} {:>8}  result",
            "mode", "workers", "parts", "elapsed", "speedup"
        );
        let reference = self.reference();
        for run in &self.runs {
            let speedup = self.sequential_elapsed().map_or("-".to_string(), |s| {
                format!("{:.2}x", s.as_secs_f64() / run.elapsed.as_secs_f64())
            });
            let check = if run.result == reference {
                "ok"
            } else {
                "MISMATCH"
            };
            let _ = writeln!(
                out,
                "{:<18} {:>7} {:>6} {:>10} {:>8}  {check}",
                self.label(run),
                run.workers,
                run.parts,
                seconds(run.elapsed),
                speedup
            );
        }
        let _ = writeln!(out, "\nresult: {reference}");
        out
    }

    /// The report as one JSON document. Results are strings: they may exceed 2^53.
    pub fn json(&self) -> serde_json::Value {
        let sequential = self.sequential_elapsed();
        let reference = self.reference();
        let modes: Vec<_> = self
            .runs
            .iter()
            .map(|run| {
                json!({
                    "mode": run.mode.name(),
                    "label": self.label(run),
                    "workers": run.workers,
                    "parts": run.parts,
                    "elapsed_s": run.elapsed.as_secs_f64(),
                    "speedup": sequential.map(|s| s.as_secs_f64() / run.elapsed.as_secs_f64()),
                    "result": run.result.to_string(),
                    "ok": run.result == reference,
                })
            })
            .collect();
        let pool = self.pool.as_ref().map(|pool| {
            json!({
                "servers": pool.servers.iter().map(|s| json!({
                    "address": s.address,
                    "workers": s.workers,
                    "connect_s": s.connect.map(|c| c.as_secs_f64()),
                    "failure": s.failure,
                })).collect::<Vec<_>>(),
                "parts": pool.parts.iter().map(|p| json!({
                    "part": p.part,
                    "server": p.computed_by.to_string(),
                    "failed_attempts": p.failed_attempts.iter().map(|f| json!({
                        "server": f.server,
                        "error": f.error,
                    })).collect::<Vec<_>>(),
                    "send_s": p.reply.send.as_secs_f64(),
                    "compute_s": p.reply.compute.as_secs_f64(),
                    "round_trip_s": p.reply.round_trip.as_secs_f64(),
                })).collect::<Vec<_>>(),
            })
        });
        json!({
            "job": self.kind,
            "job_file": self.job_file,
            "parts": self.parts,
            "result": reference.to_string(),
            "ok": self.all_match(),
            "modes": modes,
            "pool": pool,
        })
    }
}

/// A duration for a table: seconds with two decimals, or milliseconds or microseconds
/// for short ones.
fn seconds(d: Duration) -> String {
    let s = d.as_secs_f64();
    if s >= 1.0 {
        format!("{s:.2} s")
    } else if s >= 1e-3 {
        format!("{:.1} ms", s * 1e3)
    } else {
        format!("{:.0} µs", s * 1e6)
    }
}
