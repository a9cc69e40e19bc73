//! Scenario 2: compute scaling. The loop job sized so that sequential takes about 5 s,
//! on 1..C servers (one worker each, C = cores) with as many parts, beside threaded
//! and multi-process runs of the same parts; and the loop kernel beside the same loop
//! in C compiled with gcc -O3, when gcc is there.

use std::collections::BTreeMap;

use pool_client::local::{self, DataPath};
use pool_common::jobs::loop_sum::LoopPart;
use pool_common::jobs::{CancelFlag, Job, PartResult};

use super::{blocking, check, loop_ns_per_iteration, pool_mode, secs, CProgram, Settings};
use crate::figures::{Figure, Goal};
use crate::procs::{self_exe, Helper};

const SCENARIO: &str = "2 compute scaling (loop job)";

/// Runs the scenario and returns its figures.
pub async fn run(s: &Settings) -> anyhow::Result<Vec<Figure>> {
    let target_secs = if s.quick { 0.05 } else { 5.0 };
    let ns = blocking(|| loop_ns_per_iteration(1 << 26)).await?;
    let iterations = (target_secs * 1e9 / ns) as u64;
    let c = s.cores;
    let exe = self_exe()?;
    let servers: Vec<Helper> = (0..c)
        .map(|_| Helper::pool_server(1))
        .collect::<anyhow::Result<_>>()?;
    let addrs: Vec<&str> = servers.iter().map(|h| h.addr.as_str()).collect();
    let job = Job::Loop(iterations);
    let c_kernel = CProgram::build("loop", C_LOOP, &[]);
    let mut m: BTreeMap<String, Vec<f64>> = BTreeMap::new();
    let mut put = |k: String, v: f64| m.entry(k).or_default().push(v);

    for _ in 0..s.heavy_runs() {
        let parts = job.split(c);
        let seq = blocking(move || {
            local::sequential(&parts, &CancelFlag::new(), &|| {}).expect("never cancelled")
        })
        .await?;
        let reference = seq.result;
        put("seq".into(), secs(seq.elapsed));
        put("seq_ns".into(), secs(seq.elapsed) * 1e9 / iterations as f64);
        for k in 1..=c {
            let parts = job.split(k);
            let p = parts.clone();
            let thr = blocking(move || {
                local::threaded(&p, &CancelFlag::new(), &|| {}).expect("never cancelled")
            })
            .await?;
            check("threaded", thr.result, reference.clone())?;
            let (p, e) = (parts.clone(), exe.clone());
            let mp = blocking(move || {
                local::multi_process(&p, &e, DataPath::Pipe, &CancelFlag::new(), &|| {})
            })
            .await??;
            check("multi-process", mp.result, reference.clone())?;
            let (pool, result) = pool_mode(&parts, &addrs[..k]).await?;
            check("pool", result, reference.clone())?;
            put(format!("thr{k}"), secs(thr.elapsed));
            put(format!("mp{k}"), secs(mp.elapsed));
            put(format!("pool{k}"), secs(pool));
        }
        if let Some(kernel) = &c_kernel {
            let n = iterations / 4;
            let (c_sum, c_ns) = kernel.run(&[n.to_string()])?;
            let ours = blocking(move || {
                let started = std::time::Instant::now();
                let sum = LoopPart { lo: 0, hi: n }
                    .compute(&CancelFlag::new())
                    .expect("never cancelled");
                (started.elapsed(), sum)
            })
            .await?;
            check("C loop", PartResult::Loop(c_sum), PartResult::Loop(ours.1))?;
            put("c_ns".into(), c_ns);
            put("our_ns".into(), secs(ours.0) * 1e9 / n as f64);
        }
    }

    let v = |k: &str| m.get(k).cloned().unwrap_or_default();
    let seq = v("seq");
    let speedups = |k: &str| -> Vec<f64> { seq.iter().zip(v(k)).map(|(s, t)| s / t).collect() };
    let mut figures = vec![Figure::plain(
        SCENARIO,
        format!("sequential, {iterations} iterations"),
        "s",
        &seq,
    )];
    for k in 1..=c {
        let eff = |key: &str| -> Vec<f64> { speedups(key).iter().map(|x| x / k as f64).collect() };
        let pool_eff = Figure::against(
            SCENARIO,
            format!("pool efficiency, {k} server(s), {k} part(s)"),
            "",
            &eff(&format!("pool{k}")),
            "threaded efficiency",
            &eff(&format!("thr{k}")),
        );
        figures.push(if k == c {
            pool_eff.goal(Goal::AtLeast(0.95))
        } else {
            pool_eff
        });
        figures.push(Figure::against(
            SCENARIO,
            format!("multi-process efficiency, {k} process(es)"),
            "",
            &eff(&format!("mp{k}")),
            "threaded efficiency",
            &eff(&format!("thr{k}")),
        ));
        let pool_time = Figure::against(
            SCENARIO,
            format!("pool elapsed, {k} server(s)"),
            "s",
            &v(&format!("pool{k}")),
            "threaded elapsed",
            &v(&format!("thr{k}")),
        );
        figures.push(if k == c {
            pool_time.goal(Goal::RatioAtMost(1.03))
        } else {
            pool_time
        });
        figures.push(Figure::plain(
            SCENARIO,
            format!("pool speedup over sequential, {k} server(s)"),
            "x",
            &speedups(&format!("pool{k}")),
        ));
    }
    if c_kernel.is_some() {
        figures.push(Figure::against(
            SCENARIO,
            "loop kernel, one core",
            "ns/iter",
            &v("our_ns"),
            "same loop in C, gcc -O3",
            &v("c_ns"),
        ));
    }
    Ok(figures)
}

/// The loop kernel written in C: the yardstick for ours.
const C_LOOP: &str = r#"
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
static inline uint64_t splitmix64(uint64_t x) {
    uint64_t z = x + 0x9E3779B97F4A7C15ULL;
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
    return z ^ (z >> 31);
}
int main(int argc, char **argv) {
    uint64_t n = strtoull(argv[1], 0, 10), sum = 0;
    struct timespec a, b;
    clock_gettime(CLOCK_MONOTONIC, &a);
    for (uint64_t i = 0; i < n; i++) sum += splitmix64(i);
    clock_gettime(CLOCK_MONOTONIC, &b);
    double ns = (b.tv_sec - a.tv_sec) * 1e9 + (b.tv_nsec - a.tv_nsec);
    printf("%llu %.6f\n", (unsigned long long)sum, ns / (double)n);
    return 0;
}
"#;
