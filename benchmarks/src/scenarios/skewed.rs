//! Scenario 7: the skewed pool. Three one-worker servers; in the skewed runs one of
//! them is held to a quarter of a core by a real cgroup CPU quota (not by sleeps in our
//! code). Each way of scheduling runs the same 9 loop parts, and its makespan is put
//! beside the ideal: the total work over the sum of the servers' speeds (work items
//! per second of compute, as they showed them in the same repetition). Also: a 7/1/1 static deal on an even pool, as in the background study,
//! and a server frozen with SIGSTOP against the same job on the other two.

use std::time::Duration;

use pool_client::dispatch::{PoolRun, Scheduling};
use pool_client::servers::CpuQuota;
use pool_common::jobfile::{Placement, Schedule};
use pool_common::jobs::{CancelFlag, Job, Part, PartResult};

use super::{blocking, check, loop_ns_per_iteration, pool_run, secs, Settings};
use crate::figures::{Figure, Goal};
use crate::procs::Helper;

const SCENARIO: &str = "7 skewed pool (3 servers, one at 25% of a core)";

/// The ideal's name in the table.
const IDEAL: &str = "ideal (work / speeds seen)";

/// The slowed server's share of a core.
const SLOW_SHARE: f64 = 0.25;
const PARTS: usize = 9;

fn scheduling(schedule: Schedule, placement: Placement, speculate: bool) -> Scheduling {
    Scheduling {
        schedule,
        placement,
        speculate,
        ..Scheduling::default()
    }
}

/// The ways of scheduling compared, by name.
fn ways() -> Vec<(&'static str, Scheduling)> {
    use Placement::*;
    use Schedule::*;
    vec![
        ("static random", scheduling(Static, Random, false)),
        ("static shuffle", scheduling(Static, Shuffle, false)),
        ("dynamic random", scheduling(Dynamic, Random, false)),
        (
            "dynamic round-robin",
            scheduling(Dynamic, RoundRobin, false),
        ),
        (
            "dynamic two-choices",
            scheduling(Dynamic, TwoChoices, false),
        ),
        (
            "dynamic least-loaded",
            scheduling(Dynamic, LeastLoaded, false),
        ),
        (
            "dynamic least-loaded + speculation (default)",
            scheduling(Dynamic, LeastLoaded, true),
        ),
    ]
}

/// Runs the scenario and returns its figures; with `timeline_dir`, also draws the
/// timelines of the last skewed static shuffle and default runs there.
pub async fn run(
    s: &Settings,
    timeline_dir: Option<&std::path::Path>,
) -> anyhow::Result<Vec<Figure>> {
    let quota = match CpuQuota::new(SLOW_SHARE) {
        Ok(quota) => quota,
        Err(e) => {
            eprintln!("scenario 7 skipped: {e:#}");
            return Ok(Vec::new());
        }
    };
    let part_secs = if s.quick { 0.02 } else { 0.3 };
    let ns = blocking(|| loop_ns_per_iteration(1 << 26)).await?;
    let per_part = (part_secs * 1e9 / ns) as u64;
    let job = Job::Loop(PARTS as u64 * per_part);
    let parts = job.split(PARTS);
    let whole = job.split(1);
    let reference = blocking(move || {
        whole[0]
            .compute(&CancelFlag::new())
            .expect("never cancelled")
    })
    .await?;
    let servers: Vec<Helper> = (0..3)
        .map(|_| Helper::pool_server(1))
        .collect::<anyhow::Result<_>>()?;
    let addrs: Vec<&str> = servers.iter().map(|h| h.addr.as_str()).collect();
    let default = Scheduling::default();
    let mut figures = Vec::new();

    // The even pool first: no regression against a static shuffle, and the study's
    // 7/1/1 deal (seven parts on one server) against the dynamic default.
    let unbalanced: Vec<String> = addrs
        .iter()
        .zip([7, 1, 1])
        .map(|(a, w)| format!("{w}/{a}"))
        .collect();
    let unbalanced: Vec<&str> = unbalanced.iter().map(String::as_str).collect();
    let static_least = scheduling(Schedule::Static, Placement::LeastLoaded, false);
    let static_shuffle = scheduling(Schedule::Static, Placement::Shuffle, false);
    let (mut even_dynamic, mut even_shuffle, mut deal_711) = (vec![], vec![], vec![]);
    for _ in 0..s.heavy_runs() {
        even_dynamic.push(timed(&parts, &addrs, &default, &reference).await?.0);
        even_shuffle.push(timed(&parts, &addrs, &static_shuffle, &reference).await?.0);
        deal_711.push(
            timed(&parts, &unbalanced, &static_least, &reference)
                .await?
                .0,
        );
    }
    figures.push(
        Figure::against(
            SCENARIO,
            "even pool: dynamic default",
            "s",
            &even_dynamic,
            "static shuffle",
            &even_shuffle,
        )
        .goal(Goal::RatioAtMost(1.05)),
    );
    figures.push(Figure::against(
        SCENARIO,
        "even pool: dynamic default",
        "s",
        &even_dynamic,
        "static 7/1/1 deal",
        &deal_711,
    ));

    // The frozen server: the same job with one server stopped just after it got its
    // parts, against the job on the other two.
    let (mut frozen, mut two) = (vec![], vec![]);
    for _ in 0..s.heavy_runs() {
        two.push(timed(&parts, &addrs[1..], &default, &reference).await?.0);
        let stop = servers[0].pid();
        let freezer = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(50)).await;
            signal(stop, "STOP");
        });
        let outcome = timed(&parts, &addrs, &default, &reference).await;
        let _ = freezer.await;
        signal(servers[0].pid(), "CONT");
        frozen.push(outcome?.0);
    }
    let extra: Vec<f64> = frozen.iter().zip(&two).map(|(f, t)| f - t).collect();
    figures.push(Figure::against(
        SCENARIO,
        "one server frozen (SIGSTOP)",
        "s",
        &frozen,
        "the same job on the other two",
        &two,
    ));
    figures.push(
        Figure::plain(SCENARIO, "time a frozen server adds", "s", &extra).goal(Goal::AtMost(3.0)),
    );

    // The skewed runs. Each server's speed is what it showed in them: work items
    // over compute time, summed over every way's run in the same repetition, so the
    // ideal sees the same contention as the runs it is compared with.
    quota.add(servers[0].pid())?;
    let mut ideal = Vec::new();
    let mut makespans: Vec<Vec<f64>> = vec![Vec::new(); ways().len()];
    let mut last_runs: Vec<Option<PoolRun>> = vec![None; ways().len()];
    for _ in 0..s.heavy_runs() {
        let mut done = vec![(0.0f64, 0.0f64); addrs.len()];
        for (i, (_, way)) in ways().iter().enumerate() {
            let (t, run) = timed(&parts, &addrs, way, &reference).await?;
            for record in &run.parts {
                let server = addrs
                    .iter()
                    .position(|a| record.computed_by.to_string() == *a)
                    .expect("computed by one of the servers");
                done[server].0 += parts[record.part].task.work_items() as f64;
                done[server].1 += secs(record.reply.compute);
            }
            makespans[i].push(t);
            last_runs[i] = Some(run);
        }
        let items_per_second: f64 = done
            .iter()
            .filter(|(_, seconds)| *seconds > 0.0)
            .map(|(items, seconds)| items / seconds)
            .sum();
        let total: f64 = parts.iter().map(|p| p.task.work_items() as f64).sum();
        ideal.push(total / items_per_second);
    }
    let random = makespans[0].clone();
    for (i, (name, _)) in ways().iter().enumerate() {
        let mut figure = Figure::against(
            SCENARIO,
            format!("skewed: {name}"),
            "s",
            &makespans[i],
            IDEAL,
            &ideal,
        );
        if i == ways().len() - 1 {
            figure = figure.goal(Goal::RatioAtMost(1.2));
        }
        figures.push(figure);
    }
    let default_index = ways().len() - 1;
    figures.push(
        Figure::against(
            SCENARIO,
            "skewed: dynamic default",
            "s",
            &makespans[default_index],
            "static random",
            &random,
        )
        .goal(Goal::RatioAtMost(0.65)),
    );
    if let Some(dir) = timeline_dir {
        std::fs::create_dir_all(dir)?;
        for (index, file) in [
            (1, "skewed-static-shuffle.svg"),
            (default_index, "skewed-dynamic.svg"),
        ] {
            if let Some(run) = &last_runs[index] {
                let title = format!("skewed pool, {}", ways()[index].0);
                std::fs::write(dir.join(file), pool_client::timeline::svg(run, &title)?)?;
            }
        }
    }
    Ok(figures)
}

/// One pool run of `parts` on `addrs`: its makespan in seconds, checked exact.
async fn timed(
    parts: &[Part],
    addrs: &[&str],
    scheduling: &Scheduling,
    reference: &PartResult,
) -> anyhow::Result<(f64, PoolRun)> {
    let run = pool_run(parts, addrs, scheduling).await?;
    check("pool", run.result.clone(), reference.clone())?;
    Ok((secs(run.elapsed), run))
}

/// Sends a signal by name to a process this program started.
fn signal(pid: u32, name: &str) {
    let _ = std::process::Command::new("kill")
        .args([format!("-{name}"), pid.to_string()])
        .status();
}
