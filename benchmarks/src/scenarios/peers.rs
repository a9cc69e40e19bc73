//! Scenario 12: pool beside its peers, in the same run. Three workloads, each with 2
//! workers on this machine: the loop (2^31 iterations), 10,000 tiny tasks, and 512 MiB
//! shipped to the workers and summed. Pool runs them on 2 one-worker servers; Python's
//! multiprocessing, Dask and Ray run `benchmarks/peers/peers.py`, Open MPI runs
//! `benchmarks/peers/mpi_peers.c`. Every peer's result is checked against pool's.
//!
//! The peers are not needed to build or test pool: `benchmarks/peers/install.sh`
//! installs them (a Python virtual environment beside the script, and Debian's Open
//! MPI). A peer that is not installed is skipped with a note naming what to run. In
//! `--quick` runs the peers are skipped (they start interpreters and clusters) and
//! pool runs the workloads at small sizes.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context};
use bytes::Bytes;
use pool_common::jobs::loop_sum::LoopPart;
use pool_common::jobs::matrix_sum::{Element, Matrix, MatrixTotal};
use pool_common::jobs::{Job, Part, PartResult, PartTask};

use super::{blocking, empty_parts, pool_mode, secs, Settings};
use crate::figures::Figure;
use crate::procs::Helper;

const SCENARIO: &str = "12 peers (2 workers each)";

/// The workloads, as the peers' programs name them.
const WORKLOADS: [&str; 3] = ["loop", "tiny", "ship"];

/// Where the peers' programs and their virtual environment are.
fn peers_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("peers")
}

/// The sizes of the workloads: the issue's, or small ones for `--quick`.
struct Sizes {
    loop_iterations: u64,
    tiny_tasks: usize,
    ship_rows: u64,
}

/// Runs the scenario and returns its figures.
pub async fn run(s: &Settings) -> anyhow::Result<Vec<Figure>> {
    let sizes = if s.quick {
        Sizes {
            loop_iterations: 1 << 24,
            tiny_tasks: 100,
            ship_rows: 128,
        }
    } else {
        Sizes {
            loop_iterations: 1 << 31,
            tiny_tasks: 10_000,
            ship_rows: 8192,
        }
    };
    let servers = [Helper::pool_server(1)?, Helper::pool_server(1)?];
    let addrs: Vec<&str> = servers.iter().map(|h| h.addr.as_str()).collect();
    let half = sizes.loop_iterations / 2;
    let loop_parts: Vec<Part> = [(0, half), (half, sizes.loop_iterations)]
        .into_iter()
        .enumerate()
        .map(|(index, (lo, hi))| {
            Part::new(index, PartTask::Loop(LoopPart { lo, hi }), Bytes::new())
        })
        .collect();
    let rows = sizes.ship_rows;
    let matrix = blocking(move || Matrix::generate(rows, 8192, 0, Element::I64)).await?;
    let ship_parts = Job::MatrixSum(matrix).split(2);
    let tiny_parts = empty_parts(sizes.tiny_tasks);

    let peers = if s.quick {
        eprintln!("scenario 12: peers skipped in --quick runs");
        Vec::new()
    } else {
        find_peers()
    };
    let mut figures = Vec::new();
    for (workload, parts) in WORKLOADS
        .into_iter()
        .zip([&loop_parts, &tiny_parts, &ship_parts])
    {
        let mut pool_times = Vec::new();
        let mut peer_times: Vec<Vec<f64>> = vec![Vec::new(); peers.len()];
        for _ in 0..s.heavy_runs() {
            let (elapsed, result) = pool_mode(parts, &addrs).await?;
            pool_times.push(secs(elapsed));
            let expected = wrapping_u64(&result);
            for (peer, times) in peers.iter().zip(&mut peer_times) {
                let (seconds, result) = peer.run(workload)?;
                if result != expected {
                    bail!(
                        "{} ({workload}): result {result} differs from pool's {expected}",
                        peer.name
                    );
                }
                times.push(seconds);
            }
        }
        let what = describe(workload, &sizes);
        figures.push(Figure::plain(
            SCENARIO,
            format!("{what}: pool"),
            "s",
            &pool_times,
        ));
        for (peer, times) in peers.iter().zip(&peer_times) {
            figures.push(Figure::against(
                SCENARIO,
                format!("{what}: {}", peer.name),
                "s",
                times,
                "pool",
                &pool_times,
            ));
        }
    }
    Ok(figures)
}

/// A workload in words, for the figures' names.
fn describe(workload: &str, sizes: &Sizes) -> String {
    match workload {
        "loop" => format!(
            "loop of 2^{} iterations",
            sizes.loop_iterations.trailing_zeros()
        ),
        "tiny" => format!("{} tiny tasks", sizes.tiny_tasks),
        _ => format!(
            "{} MiB shipped and summed",
            (sizes.ship_rows * 8192 * 8) >> 20
        ),
    }
}

/// A result as the peers print theirs: an unsigned 64-bit number, the exact matrix sum
/// reduced mod 2^64.
fn wrapping_u64(result: &PartResult) -> u64 {
    match result {
        PartResult::Loop(sum) => *sum,
        PartResult::MatrixSum(MatrixTotal::Integer(sum)) => *sum as u64,
        _ => 0,
    }
}

/// A peer's arguments for a workload, by the workload's name.
type PeerArgs = Box<dyn Fn(&str) -> Vec<String>>;

/// A peer that can run the workloads.
struct Peer {
    name: &'static str,
    program: PathBuf,
    args: PeerArgs,
}

impl Peer {
    /// Runs `workload` and returns its seconds and result.
    fn run(&self, workload: &str) -> anyhow::Result<(f64, u64)> {
        let output = Command::new(&self.program)
            .args((self.args)(workload))
            .output()
            .with_context(|| format!("cannot run {}", self.name))?;
        if !output.status.success() {
            bail!(
                "{} ({workload}) failed: {}",
                self.name,
                String::from_utf8_lossy(&output.stderr)
            );
        }
        let stdout = String::from_utf8_lossy(&output.stdout);
        let line = stdout
            .lines()
            .rev()
            .find(|l| l.starts_with('{'))
            .with_context(|| format!("{} ({workload}) printed no result: {stdout}", self.name))?;
        let answer: serde_json::Value = serde_json::from_str(line)?;
        let seconds = answer["seconds"]
            .as_f64()
            .context("no seconds in the answer")?;
        let result = answer["result"]
            .as_str()
            .and_then(|r| r.parse().ok())
            .context("no result in the answer")?;
        Ok((seconds, result))
    }
}

/// The peers installed here; a note on stderr for each that is not.
fn find_peers() -> Vec<Peer> {
    let mut peers = Vec::new();
    let dir = peers_dir();
    let python = dir.join(".venv/bin/python");
    let script = dir.join("peers.py").display().to_string();
    for (name, framework, module) in [
        ("Python multiprocessing + numpy", "multiprocessing", "numpy"),
        ("Dask", "dask", "dask.distributed"),
        ("Ray", "ray", "ray"),
    ] {
        let importable = Command::new(&python)
            .args(["-c", &format!("import numpy, {module}")])
            .output()
            .is_ok_and(|o| o.status.success());
        if importable {
            let script = script.clone();
            peers.push(Peer {
                name,
                program: python.clone(),
                args: Box::new(move |workload| {
                    vec![script.clone(), framework.into(), workload.into()]
                }),
            });
        } else {
            eprintln!(
                "scenario 12: {name} skipped: not installed in {} (run benchmarks/peers/install.sh)",
                python.display()
            );
        }
    }
    match build_mpi(&dir) {
        Ok(exe) => peers.push(Peer {
            name: "Open MPI (C, -O3)",
            program: "mpirun".into(),
            // The loop runs on both ranks; the task farm and the shipping have a
            // master rank and 2 workers.
            args: Box::new(move |workload| {
                let ranks = if workload == "loop" { "2" } else { "3" };
                [
                    "--allow-run-as-root",
                    "--oversubscribe",
                    "--bind-to",
                    "none",
                    "-np",
                    ranks,
                ]
                .map(String::from)
                .into_iter()
                .chain([exe.display().to_string(), workload.to_string()])
                .collect()
            }),
        }),
        Err(why) => eprintln!("scenario 12: Open MPI skipped: {why:#}"),
    }
    peers
}

/// Compiles `mpi_peers.c` with `mpicc -O3` into a temporary folder.
fn build_mpi(dir: &Path) -> anyhow::Result<PathBuf> {
    let out = std::env::temp_dir().join(format!("pool-bench-{}-mpi", std::process::id()));
    std::fs::create_dir_all(&out)?;
    let exe = out.join("mpi_peers");
    let built = Command::new("mpicc")
        .args(["-O3", "-o"])
        .arg(&exe)
        .arg(dir.join("mpi_peers.c"))
        .output()
        .context("mpicc is not installed (run benchmarks/peers/install.sh)")?;
    if !built.status.success() {
        bail!(
            "mpicc failed: {}",
            String::from_utf8_lossy(&built.stderr).trim()
        );
    }
    Ok(exe)
}
