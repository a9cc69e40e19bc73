//! Scenario 5: spawning versus keeping. N empty parts computed by one process per part
//! (the multi-process mode) against the persistent pool (2 servers already running),
//! and against a pool started for the run (servers started, used, stopped). pool-server
//! has no process-per-part mode, so that line does not exist here.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use pool_client::local::{self, DataPath};
use pool_common::jobs::CancelFlag;
use pool_common::jobs::{Part, PartResult};

use super::{blocking, check, connect_all, empty_parts, run_windowed, secs, Settings};
use crate::figures::{median, Figure};
use crate::procs::{self_exe, Helper};

const SCENARIO: &str = "5 spawning versus keeping (empty parts)";
/// At most this many worker processes at once (the multi-process mode starts one per
/// part all at once; 10,000 at once would exhaust the machine).
const PROCESS_BATCH: usize = 256;

/// Runs the scenario and returns its figures.
pub async fn run(s: &Settings) -> anyhow::Result<Vec<Figure>> {
    let counts: &[usize] = if s.quick {
        &[10, 40]
    } else {
        &[10, 100, 1000, 10_000]
    };
    let exe = self_exe()?;
    let servers = [Helper::pool_server(1)?, Helper::pool_server(1)?];
    let addrs: Vec<&str> = servers.iter().map(|h| h.addr.as_str()).collect();
    let mut m: BTreeMap<(usize, &str), Vec<f64>> = BTreeMap::new();

    for _ in 0..s.heavy_runs() {
        for &n in counts {
            let parts = empty_parts(n);
            let (p, e) = (parts.clone(), exe.clone());
            let processes = blocking(move || -> anyhow::Result<Duration> {
                let started = Instant::now();
                for batch in p.chunks(PROCESS_BATCH) {
                    let run = local::multi_process(
                        batch,
                        &e,
                        DataPath::Pipe,
                        &CancelFlag::new(),
                        &|| {},
                    )?;
                    check("multi-process", run.result, PartResult::Loop(0))?;
                }
                Ok(started.elapsed())
            })
            .await??;
            m.entry((n, "processes"))
                .or_default()
                .push(secs(processes) * 1e3);
            m.entry((n, "warm"))
                .or_default()
                .push(secs(warm_pool(&addrs, &parts).await?) * 1e3);
            m.entry((n, "cold"))
                .or_default()
                .push(secs(cold_pool(&parts).await?) * 1e3);
        }
    }

    let mut figures = Vec::new();
    for &n in counts {
        let v = |k: &str| m[&(n, k)].clone();
        figures.push(Figure::against(
            SCENARIO,
            format!("{n} parts: one process per part"),
            "ms",
            &v("processes"),
            "persistent pool (2 servers)",
            &v("warm"),
        ));
        figures.push(Figure::against(
            SCENARIO,
            format!("{n} parts: pool started for the run"),
            "ms",
            &v("cold"),
            "persistent pool (2 servers)",
            &v("warm"),
        ));
    }
    // Straight lines through the smallest and largest counts: fixed cost + per-part cost.
    let (lo, hi) = (counts[0], counts[counts.len() - 1]);
    let line = |k: &str| {
        let (tl, th) = (median(&m[&(lo, k)]), median(&m[&(hi, k)]));
        let per_part = (th - tl) / (hi - lo) as f64;
        (tl - per_part * lo as f64, per_part)
    };
    let (proc_fixed, proc_per) = line("processes");
    let (warm_fixed, warm_per) = line("warm");
    let (cold_fixed, cold_per) = line("cold");
    figures.push(Figure::against(
        SCENARIO,
        "per-part cost: one process per part",
        "us",
        &[proc_per * 1e3],
        "persistent pool",
        &[warm_per * 1e3],
    ));
    figures.push(Figure::plain(
        SCENARIO,
        "fixed cost: one process per part",
        "ms",
        &[proc_fixed],
    ));
    figures.push(Figure::plain(
        SCENARIO,
        "fixed cost: persistent pool (connect)",
        "ms",
        &[warm_fixed],
    ));
    figures.push(Figure::plain(
        SCENARIO,
        "fixed cost: pool started for the run",
        "ms",
        &[cold_fixed],
    ));
    // Where the fitted lines cross; below one part, the pool is cheaper from the first.
    let crossing = |fixed_a: f64, per_a: f64, fixed_b: f64, per_b: f64| {
        ((fixed_b - fixed_a) / (per_a - per_b)).max(1.0)
    };
    figures.push(Figure::plain(
        SCENARIO,
        "parts from which a started pool beats a process per part",
        "parts",
        &[crossing(proc_fixed, proc_per, cold_fixed, cold_per)],
    ));
    figures.push(Figure::plain(
        SCENARIO,
        "parts from which the persistent pool beats a process per part",
        "parts",
        &[crossing(proc_fixed, proc_per, warm_fixed, warm_per)],
    ));
    Ok(figures)
}

/// Connects to running servers and runs the parts.
async fn warm_pool(addrs: &[&str], parts: &[Part]) -> anyhow::Result<Duration> {
    let started = Instant::now();
    let conns = connect_all(addrs).await?;
    let (_, result) = run_windowed(&conns, parts).await?;
    check("pool", result, PartResult::Loop(0))?;
    drop(conns);
    Ok(started.elapsed())
}

/// Starts 2 servers, connects, runs the parts, stops the servers.
async fn cold_pool(parts: &[Part]) -> anyhow::Result<Duration> {
    let started = Instant::now();
    let servers =
        blocking(|| anyhow::Ok([Helper::pool_server(1)?, Helper::pool_server(1)?])).await??;
    let addrs: Vec<&str> = servers.iter().map(|h| h.addr.as_str()).collect();
    let conns = connect_all(&addrs).await?;
    let (_, result) = run_windowed(&conns, parts).await?;
    check("pool", result, PartResult::Loop(0))?;
    drop(conns);
    blocking(move || drop(servers)).await?;
    Ok(started.elapsed())
}
