//! Scenario 6: the paper's table. Three parts of the loop job, each sized like the
//! paper's single run (about 4 s): one part alone; three sequential; three threaded;
//! three processes; three servers (one worker each). Beside each, the paper's figure
//! (Python, on their machine).

use std::collections::BTreeMap;

use pool_client::local::{self, DataPath};
use pool_common::jobs::CancelFlag;
use pool_common::jobs::Job;

use super::{blocking, check, loop_ns_per_iteration, pool_mode, secs, Settings};
use crate::figures::Figure;
use crate::procs::{self_exe, Helper};

const SCENARIO: &str = "6 the paper's table (3 parts of ~4 s)";

/// The paper's figures, seconds: one run, 3 sequential, 3 threads, 3 processes each
/// talking to one server.
pub const PAPER: [(&str, Option<f64>); 5] = [
    ("one part alone", Some(4.3)),
    ("three sequential", Some(11.55)),
    ("three threaded", Some(10.62)),
    ("three processes", None),
    ("three servers", Some(5.83)),
];

/// Runs the scenario and returns its figures.
pub async fn run(s: &Settings) -> anyhow::Result<Vec<Figure>> {
    let part_secs = if s.quick { 0.02 } else { 4.0 };
    let ns = blocking(|| loop_ns_per_iteration(1 << 26)).await?;
    let per_part = (part_secs * 1e9 / ns) as u64;
    let parts = Job::Loop(3 * per_part).split(3);
    let exe = self_exe()?;
    let servers: Vec<Helper> = (0..3)
        .map(|_| Helper::pool_server(1))
        .collect::<anyhow::Result<_>>()?;
    let addrs: Vec<&str> = servers.iter().map(|h| h.addr.as_str()).collect();
    let mut m: BTreeMap<&str, Vec<f64>> = BTreeMap::new();

    for _ in 0..s.heavy_runs() {
        let p = parts.clone();
        let one = blocking(move || {
            local::sequential(&p[..1], &CancelFlag::new(), &|| {}).expect("never cancelled")
        })
        .await?;
        let p = parts.clone();
        let seq = blocking(move || {
            local::sequential(&p, &CancelFlag::new(), &|| {}).expect("never cancelled")
        })
        .await?;
        let p = parts.clone();
        let thr = blocking(move || {
            local::threaded(&p, &CancelFlag::new(), &|| {}).expect("never cancelled")
        })
        .await?;
        check("threaded", thr.result, seq.result.clone())?;
        let (p, e) = (parts.clone(), exe.clone());
        let mp = blocking(move || {
            local::multi_process(&p, &e, DataPath::Pipe, &CancelFlag::new(), &|| {})
        })
        .await??;
        check("multi-process", mp.result, seq.result.clone())?;
        let (pool, result) = pool_mode(&parts, &addrs).await?;
        check("pool", result, seq.result)?;
        for (k, t) in [
            ("one part alone", one.elapsed),
            ("three sequential", seq.elapsed),
            ("three threaded", thr.elapsed),
            ("three processes", mp.elapsed),
            ("three servers", pool),
        ] {
            m.entry(k).or_default().push(secs(t));
        }
    }

    let one = m["one part alone"].clone();
    Ok(PAPER
        .iter()
        .map(|(name, paper)| {
            let label = match paper {
                Some(p) => format!("{name} (paper: {p} s = {:.2}x)", p / 4.3),
                None => format!("{name} (paper: none)"),
            };
            Figure::against(SCENARIO, label, "s", &m[name], "one part alone", &one)
        })
        .collect())
}
