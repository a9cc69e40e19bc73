//! Scenario 10: the matmul kernel of issue 10 §4 on one core, in GOP/s (2 n³ integer
//! operations over the time), beside numpy's `int64` matmul of the same matrices in the
//! same run, whose sum of C must equal ours.
//!
//! * this kernel ([`multiply_rows`]: B packed, then all n rows), best of 3;
//! * the shape first suggested for it, i-k-j in `u64` with a widening `u32` multiply
//!   that LLVM vectorises, tiled (64 k × 1024 columns), best of 3 (1 at n = 2048);
//! * the textbook i-j-k triple loop (n ≤ 1024), once;
//! * numpy's `int64` matmul, which does not use BLAS (a plain loop in C), timed inside
//!   Python with `time.perf_counter`, best of 3 (once at n = 2048, where one product
//!   takes well over a minute); the baseline of every ratio;
//! * for information, this kernel beside numpy's `float64` matmul (BLAS, held to one
//!   thread), which is exact here: every partial sum is an integer below 2^53.
//!
//! Without numpy (`pip install numpy`), the numpy lines are skipped with a message on
//! stderr and the others are reported alone.
//!
//! Then the `matmul` job itself across n = 256 to 4096, against local sequential in the
//! same run: the pool of one server per core (one worker each, on loopback), with two
//! parts per server, B shipped to each server once and A's rows once in all; and the
//! threaded mode with as many threads. The crossover is the smallest n at which the
//! pool beats sequential, per run.

use std::collections::BTreeMap;
use std::process::Command;
use std::time::Instant;

use anyhow::{bail, ensure, Context};
use pool_client::local;
use pool_common::jobs::matmul::kernel::{
    fill_a_rows, fill_b, multiply_rows, multiply_rows_naive, row_block_sum_closed_form, sum_rows,
};
use pool_common::jobs::matmul::{MatmulJob, Product};
use pool_common::jobs::{CancelFlag, Job, PartResult};

use super::{blocking, check, millis, pool_mode, secs, Settings};
use crate::figures::Figure;
use crate::procs::Helper;

const SCENARIO: &str = "10 matmul kernel (one core)";

const JOB_SCENARIO: &str = "10 matmul job, pool and local across n";

/// The matrices' seed (any would do; the sums are checked, not compared with constants).
const SEED: u64 = 10;

/// The largest n the textbook triple loop runs at (it takes seconds at 1024).
const NAIVE_MAX_N: usize = 1024;

/// Runs the scenario and returns its figures.
pub async fn run(s: &Settings) -> anyhow::Result<Vec<Figure>> {
    let sizes: &[usize] = if s.quick { &[256] } else { &[512, 1024, 2048] };
    let numpy = match numpy_version() {
        Ok(version) => Some(version),
        Err(why) => {
            eprintln!(
                "scenario 10: numpy lines skipped: {why}; `pip install numpy` (for python3) adds them"
            );
            None
        }
    };
    let mut m: BTreeMap<(usize, &str), Vec<f64>> = BTreeMap::new();
    for _ in 0..s.heavy_runs() {
        for &n in sizes {
            let gops = |seconds: f64| 2.0 * (n as f64).powi(3) / seconds / 1e9;
            let expected = blocking(move || row_block_sum_closed_form(SEED, n, 0, n)).await?;
            let repeats = if n >= 2048 { 1 } else { 3 };

            let (seconds, sum) = blocking(move || time_rust(n, 3, Kernel::Ours)).await?;
            ensure!(
                sum == expected,
                "n = {n}: this kernel's sum {sum}, expected {expected}"
            );
            m.entry((n, "ours")).or_default().push(gops(seconds));

            let (seconds, sum) = blocking(move || time_rust(n, repeats, Kernel::Tiled)).await?;
            ensure!(
                sum == expected,
                "n = {n}: the tiled i-k-j sum {sum}, expected {expected}"
            );
            m.entry((n, "tiled")).or_default().push(gops(seconds));

            if n <= NAIVE_MAX_N {
                let (seconds, sum) = blocking(move || time_rust(n, 1, Kernel::Naive)).await?;
                ensure!(
                    sum == expected,
                    "n = {n}: the triple loop's sum {sum}, expected {expected}"
                );
                m.entry((n, "naive")).or_default().push(gops(seconds));
            }

            if numpy.is_some() {
                let np = blocking(move || run_numpy(n, repeats)).await??;
                ensure!(
                    np.int_sum == expected && np.float_sum == expected,
                    "n = {n}: numpy's sums of C (int64 {}, float64 {}) differ from ours ({expected})",
                    np.int_sum,
                    np.float_sum
                );
                eprintln!(
                    "scenario 10: n = {n}: sum of C = {expected}, the same from this kernel, numpy int64, numpy float64 and the closed form"
                );
                m.entry((n, "numpy"))
                    .or_default()
                    .push(gops(np.int_seconds));
                m.entry((n, "numpy_f64"))
                    .or_default()
                    .push(gops(np.float_seconds));
            }
        }
    }

    let v = |n: usize, k: &str| m.get(&(n, k)).cloned().unwrap_or_default();
    let (numpy_int, numpy_float) = match &numpy {
        Some(version) => {
            let numpy = version.split(',').next().unwrap_or(version);
            (
                format!("{numpy} int64 matmul"),
                format!("{version}, float64 matmul, 1 thread"),
            )
        }
        None => Default::default(),
    };
    let mut figures = Vec::new();
    for &n in sizes {
        let line = |name: String, key: &str| match numpy {
            Some(_) => Figure::against(
                SCENARIO,
                name,
                "GOP/s",
                &v(n, key),
                &numpy_int,
                &v(n, "numpy"),
            ),
            None => Figure::plain(SCENARIO, name, "GOP/s", &v(n, key)),
        };
        let ours = if cfg!(target_arch = "x86_64") {
            "this kernel (SSE2 pmaddwd, packed B)"
        } else {
            "this kernel (packed B, plain-Rust micro-kernel)"
        };
        figures.push(line(format!("n = {n}, {ours}"), "ours"));
        figures.push(line(
            format!("n = {n}, i-k-j u64 tiled, auto-vectorised"),
            "tiled",
        ));
        if n <= NAIVE_MAX_N {
            figures.push(line(
                format!("n = {n}, textbook i-j-k triple loop"),
                "naive",
            ));
        }
        if numpy.is_some() {
            figures.push(Figure::against(
                SCENARIO,
                format!("n = {n}, this kernel, against BLAS (informational)"),
                "GOP/s",
                &v(n, "ours"),
                &numpy_float,
                &v(n, "numpy_f64"),
            ));
        }
    }
    figures.extend(job_across_n(s).await?);
    Ok(figures)
}

/// The `matmul` job across n: pool and threaded against sequential, and the crossover.
async fn job_across_n(s: &Settings) -> anyhow::Result<Vec<Figure>> {
    let sizes: &[u64] = if s.quick {
        &[64, 256]
    } else {
        &[256, 512, 1024, 2048, 4096]
    };
    let servers: Vec<Helper> = (0..s.cores)
        .map(|_| Helper::pool_server(1))
        .collect::<anyhow::Result<_>>()?;
    let addrs: Vec<&str> = servers.iter().map(|h| h.addr.as_str()).collect();
    let parts = 2 * s.cores;
    let mut m: BTreeMap<(u64, &str), Vec<f64>> = BTreeMap::new();
    let mut crossovers = Vec::new();
    for _ in 0..s.heavy_runs() {
        let mut crossover = f64::NAN;
        for &n in sizes {
            let job = blocking(move || Job::Matmul(MatmulJob::generate(n, SEED))).await?;
            let expected =
                blocking(move || row_block_sum_closed_form(SEED, n as usize, 0, n as usize))
                    .await?;
            let reference = PartResult::Matmul(Product {
                sum: expected,
                rows: None,
            });
            let split = job.split(parts);
            let p = split.clone();
            let seq = blocking(move || {
                local::sequential(&p, &CancelFlag::new(), &|| {}).expect("never cancelled")
            })
            .await?;
            check("sequential", seq.result, reference.clone())?;
            let p = split.clone();
            let thr = blocking(move || {
                local::threaded(&p, &CancelFlag::new(), &|| {}).expect("never cancelled")
            })
            .await?;
            check("threaded", thr.result, reference.clone())?;
            let (pool, result) = pool_mode(&split, &addrs).await?;
            check("pool", result, reference)?;
            if crossover.is_nan() && pool < seq.elapsed {
                crossover = n as f64;
            }
            m.entry((n, "seq")).or_default().push(millis(seq.elapsed));
            m.entry((n, "thr")).or_default().push(millis(thr.elapsed));
            m.entry((n, "pool")).or_default().push(millis(pool));
        }
        crossovers.push(crossover);
    }
    let v = |n: u64, k: &str| m.get(&(n, k)).cloned().unwrap_or_default();
    let c = s.cores;
    let mut figures = Vec::new();
    for &n in sizes {
        figures.push(Figure::against(
            JOB_SCENARIO,
            format!("n = {n}, pool of {c} servers, {parts} parts"),
            "ms",
            &v(n, "pool"),
            "sequential",
            &v(n, "seq"),
        ));
        figures.push(Figure::against(
            JOB_SCENARIO,
            format!("n = {n}, threaded, {parts} parts on {c} cores"),
            "ms",
            &v(n, "thr"),
            "sequential",
            &v(n, "seq"),
        ));
    }
    figures.push(Figure::plain(
        JOB_SCENARIO,
        format!(
            "crossover: the smallest n of {sizes:?} where the pool beats sequential (NaN: none)"
        ),
        "n",
        &crossovers,
    ));
    Ok(figures)
}

/// Which Rust kernel [`time_rust`] times.
#[derive(Debug, Clone, Copy)]
enum Kernel {
    /// The product's kernel.
    Ours,
    /// [`multiply_tiled_ikj`].
    Tiled,
    /// The textbook triple loop.
    Naive,
}

/// The best of `repeats` times of one kernel computing all of C for n (the matrices
/// generated beforehand, B packed inside the time), and the sum of C.
fn time_rust(n: usize, repeats: usize, kernel: Kernel) -> (f64, u128) {
    let (a, b) = (fill_a_rows(SEED, n, 0, n), fill_b(SEED, n));
    let mut c = vec![0u64; n * n];
    let mut best = f64::INFINITY;
    for _ in 0..repeats {
        let started = Instant::now();
        match kernel {
            Kernel::Ours => {
                multiply_rows(&a, &b, n, &mut c, &CancelFlag::new()).expect("never cancelled")
            }
            Kernel::Tiled => multiply_tiled_ikj(&a, &b, n, &mut c),
            Kernel::Naive => multiply_rows_naive(&a, &b, n, &mut c),
        }
        best = best.min(secs(started.elapsed()));
        std::hint::black_box(&mut c);
    }
    (best, sum_rows(&c))
}

/// Columns and values of k per tile of [`multiply_tiled_ikj`] (the best of five
/// tilings tried at n = 1024 and 2048).
const TILE_COLS: usize = 1024;
const TILE_K: usize = 64;

/// C = A · B in i-k-j order, tiled so a tile of B (64 rows of 1024 columns, 512 KiB)
/// stays in L2, with an inner loop over j that LLVM vectorises: a widening `u32`
/// multiply (`pmuludq`, two products per instruction) added into `u64`.
fn multiply_tiled_ikj(a: &[u16], b: &[u16], n: usize, c: &mut [u64]) {
    c.fill(0);
    for j0 in (0..n).step_by(TILE_COLS) {
        let j1 = (j0 + TILE_COLS).min(n);
        for k0 in (0..n).step_by(TILE_K) {
            let k1 = (k0 + TILE_K).min(n);
            for (a_row, c_row) in a.chunks_exact(n).zip(c.chunks_exact_mut(n)) {
                let c_row = &mut c_row[j0..j1];
                for k in k0..k1 {
                    let x = u64::from(a_row[k]);
                    for (c, &y) in c_row.iter_mut().zip(&b[k * n + j0..k * n + j1]) {
                        *c = c.wrapping_add(x * u64::from(y));
                    }
                }
            }
        }
    }
}

/// numpy's version and the BLAS it calls for floats ("numpy 2.4.6, scipy-openblas
/// 0.3.31"), or why python3 cannot import numpy.
fn numpy_version() -> Result<String, String> {
    let out = Command::new("python3")
        .args(["-c", NUMPY_VERSION_SCRIPT])
        .output()
        .map_err(|e| format!("cannot run python3 ({e})"))?;
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        let last = stderr.lines().last().unwrap_or("no message");
        return Err(format!("python3 cannot import numpy ({last})"));
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// Prints numpy's version and, where numpy says (1.26 and later), its BLAS.
const NUMPY_VERSION_SCRIPT: &str = r#"
import numpy
try:
    blas = numpy.show_config(mode="dicts")["Build Dependencies"]["blas"]
    blas = ", %s %s" % (blas["name"], ".".join(str(blas.get("version", "")).split(".")[:3]))
except Exception:
    blas = ""
print("numpy %s%s" % (numpy.__version__, blas))
"#;

/// What the numpy script measured for one n.
struct NumpyRun {
    int_sum: u128,
    int_seconds: f64,
    float_sum: u128,
    float_seconds: f64,
}

/// Runs [`NUMPY_SCRIPT`] for n: numpy's int64 matmul best of `repeats`, float64 best
/// of 3, BLAS held to one thread.
fn run_numpy(n: usize, repeats: usize) -> anyhow::Result<NumpyRun> {
    let out = Command::new("python3")
        .args(["-c", NUMPY_SCRIPT])
        .args([
            n.to_string(),
            SEED.to_string(),
            repeats.to_string(),
            "3".into(),
        ])
        .env("OPENBLAS_NUM_THREADS", "1")
        .env("OMP_NUM_THREADS", "1")
        .env("MKL_NUM_THREADS", "1")
        .output()
        .context("cannot run python3")?;
    if !out.status.success() {
        bail!(
            "the numpy script failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let line = |name: &str| -> anyhow::Result<(u128, f64)> {
        let mut words = text
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .with_context(|| format!("the numpy script printed no {name:?} line: {text}"))?
            .split_whitespace();
        let sum = words.next().context("no sum")?.parse()?;
        let seconds = words.next().context("no time")?.parse()?;
        Ok((sum, seconds))
    };
    let (int_sum, int_seconds) = line("int64 ")?;
    let (float_sum, float_seconds) = line("float64 ")?;
    Ok(NumpyRun {
        int_sum,
        int_seconds,
        float_sum,
        float_seconds,
    })
}

/// A and B from the seed exactly as the kernel makes them (splitmix64 on uint64, which
/// numpy wraps), then `numpy.matmul` on int64 and on float64, each timed with
/// `time.perf_counter` (best of the given counts). Prints each sum of C, exact (row sums
/// in int64, which cannot overflow for these sizes, added as Python integers), and the
/// time. Arguments: n, seed, int64 repeats, float64 repeats.
const NUMPY_SCRIPT: &str = r#"
import sys, time
import numpy as np
n, seed, int_repeats, float_repeats = map(int, sys.argv[1:5])
mask = (1 << 64) - 1
def splitmix64(x):
    z = x + np.uint64(0x9E3779B97F4A7C15)
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))
with np.errstate(over="ignore"):
    k = np.arange(n * n, dtype=np.uint64)
    a = (splitmix64(k + np.uint64(seed & mask)) >> np.uint64(48)).astype(np.int64).reshape(n, n)
    b = (splitmix64(k + np.uint64((seed + n * n) & mask)) >> np.uint64(48)).astype(np.int64).reshape(n, n)
def best(x, y, repeats):
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        c = np.matmul(x, y)
        times.append(time.perf_counter() - started)
    return c, min(times)
c, t = best(a, b, int_repeats)
print("int64", sum(int(s) for s in c.sum(axis=1)), t)
c, t = best(a.astype(np.float64), b.astype(np.float64), float_repeats)
print("float64", sum(int(s) for s in c.astype(np.int64).sum(axis=1)), t)
"#;
