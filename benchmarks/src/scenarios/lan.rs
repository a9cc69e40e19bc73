//! Scenario 11: over a LAN. Three one-worker pool servers and the client, each in a
//! network namespace of its own, joined by a bridge whose links are held to 1 Gbit/s
//! each way (`pool_client::netlab`). The two lessons of the tool, measured:
//!
//! * **Shipping data.** The matrix sum at sizes from 128 KiB to 128 MiB, the pool over
//!   the link against the local sequential sum of the same parts: summing costs a
//!   fraction of a nanosecond per element, the link 67 ns, so the pool cannot win at
//!   any size; the figures give the work per element a kernel would need to break even.
//! * **Compute.** The loop at sizes from 10^5 to 10^9 iterations, the pool on three
//!   and on two servers against local sequential: past a crossover of a few
//!   milliseconds of work the pool's fixed cost (connecting, a round trip per part) is
//!   paid back and the servers' cores do the rest.
//!
//! This machine has two cores, shared with the client: three one-worker servers
//! share them, so no pool can be more than about twice as fast as one core here,
//! whatever the link.
//!
//! The harness itself stays in the machine's namespace. Its measuring thread moves
//! into the client's namespace (setns) and builds the client's runtime there, whose
//! threads inherit it; the servers, and raw TCP sinks (`pool-bench sink`) for the
//! link's own speed, run in the server namespaces. Nothing crosses the machine's own
//! network.

mod chart;

use std::path::Path;

use anyhow::{bail, Context};
use pool_client::connection::ConnectOptions;
use pool_client::dispatch::Scheduling;
use pool_client::local;
use pool_client::netlab::{LabConfig, NetLab};
use pool_common::jobs::matrix_sum::{Element, Matrix};
use pool_common::jobs::{CancelFlag, Job, Part, PartResult};

use super::{blocking, check, pool_run_with, raw_transfer, secs, Settings};
use crate::figures::{median, short, Figure};
use crate::procs::Helper;

const SCENARIO: &str = "11 over a LAN (1 Gbit/s links between network namespaces)";

/// Servers in the lab, one worker each.
const SERVERS: usize = 3;
/// Parts per job: two per server, so shipping and computing overlap.
const PARTS: usize = 6;
/// Columns of every matrix: a row is 8 KiB.
const COLS: u64 = 1024;
/// Bytes per matrix element.
const ELEMENT_BYTES: f64 = 8.0;

/// What was measured in the client's namespace, every list one value per repetition.
#[derive(Debug, Default)]
struct Measured {
    /// Raw TCP, the client to the three server namespaces at once, in MB/s.
    link_mb_s: Vec<f64>,
    /// The matrix sum, one row per size, smallest first.
    matrix: Vec<Row>,
    /// The loop, one row per size, smallest first.
    loops: Vec<Row>,
}

/// One job size: its size (bytes or iterations), local sequential, and the pool on
/// three and (for the loop) two servers, in seconds.
#[derive(Debug, Default, Clone)]
struct Row {
    size: f64,
    sequential: Vec<f64>,
    pool3: Vec<f64>,
    pool2: Vec<f64>,
}

/// A crossover between the pool and local sequential, from the medians.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Crossover {
    /// The pool was faster already at the smallest size.
    BelowSmallest,
    /// The pool became faster between two measured sizes: here, by interpolation on
    /// logarithmic scales.
    At(f64),
    /// The pool was slower at every size measured.
    Never,
}

/// Runs the scenario and returns its figures; with `chart_dir`, also draws
/// `lan-matrix.svg` and `lan-loop.svg` there.
pub async fn run(s: &Settings, chart_dir: Option<&Path>) -> anyhow::Result<Vec<Figure>> {
    let config = LabConfig {
        servers: SERVERS,
        ..LabConfig::default()
    };
    let Some(lab) = NetLab::new_or_skip("scenario 11", &config)? else {
        return Ok(Vec::new());
    };
    let servers = (0..SERVERS)
        .map(|i| Helper::pool_server_in(&lab, i, 1))
        .collect::<anyhow::Result<Vec<Helper>>>()?;
    let sinks = (0..SERVERS)
        .map(|i| Helper::sink_in(&lab, i))
        .collect::<anyhow::Result<Vec<Helper>>>()?;
    let (matrix_rows, loop_sizes): (Vec<u64>, Vec<u64>) = if s.quick {
        (vec![16, 64], vec![100_000, 10_000_000])
    } else {
        (
            vec![16, 64, 256, 1024, 4096, 16384],
            vec![100_000, 1_000_000, 10_000_000, 100_000_000, 1_000_000_000],
        )
    };
    let matrices: Vec<Vec<Part>> = blocking(move || {
        matrix_rows
            .iter()
            .map(|&rows| {
                Job::MatrixSum(Matrix::generate(rows, COLS, 11, Element::I64)).split(PARTS)
            })
            .collect()
    })
    .await?;
    let loops: Vec<Vec<Part>> = loop_sizes
        .iter()
        .map(|&n| Job::Loop(n).split(PARTS))
        .collect();
    let plan = Plan {
        runs: s.runs,
        addresses: servers.iter().map(|h| h.addr.clone()).collect(),
        sinks: sinks.iter().map(|h| h.addr.clone()).collect(),
        token: lab.token().to_string(),
        matrices,
        loops,
    };
    let namespace = lab.client().namespace.clone();
    let measured = in_namespace(namespace, move || measure(plan)).await?;
    // Stopped by their id before the lab, which would otherwise kill them.
    drop(sinks);
    drop(servers);

    let link = median(&measured.link_mb_s);
    let figures = figures(&measured);
    if let Some(dir) = chart_dir {
        std::fs::create_dir_all(dir)?;
        let note = format!(
            "{} one-worker servers and the client in network namespaces, links 1 Gbit/s (tc tbf; raw TCP {link:.0} MB/s), {} cores shared by all; medians of {} runs",
            SERVERS, s.cores, s.runs
        );
        std::fs::write(
            dir.join("lan-matrix.svg"),
            chart::matrix(&chart_series(&measured.matrix), link, &note)?,
        )?;
        std::fs::write(
            dir.join("lan-loop.svg"),
            chart::loops(
                &chart_series(&measured.loops),
                crossover(&measured.loops, |r| &r.pool3),
                &note,
            )?,
        )?;
    }
    Ok(figures)
}

/// The jobs to run and where, moved into the client's namespace.
struct Plan {
    /// Repetitions.
    runs: usize,
    /// The pool servers, `address:port`.
    addresses: Vec<String>,
    /// The raw TCP sinks, one per server host.
    sinks: Vec<String>,
    /// The lab's token, which its servers require.
    token: String,
    /// Each matrix size's parts, smallest first.
    matrices: Vec<Vec<Part>>,
    /// Each loop size's parts, smallest first.
    loops: Vec<Vec<Part>>,
}

/// Every measurement, in the client's namespace, repetitions interleaved so that the
/// machine's noise falls on every size alike.
async fn measure(plan: Plan) -> anyhow::Result<Measured> {
    let all: Vec<&str> = plan.addresses.iter().map(String::as_str).collect();
    let two = &all[..2];
    let options = ConnectOptions {
        token: Some(plan.token.clone()),
        ..ConnectOptions::default()
    };
    let mut measured = Measured {
        matrix: plan
            .matrices
            .iter()
            .map(|parts| Row {
                size: parts.iter().map(|p| p.input.len() as f64).sum(),
                ..Row::default()
            })
            .collect(),
        loops: plan
            .loops
            .iter()
            .map(|parts| Row {
                size: parts.iter().map(|p| p.task.work_items() as f64).sum(),
                ..Row::default()
            })
            .collect(),
        ..Measured::default()
    };
    let largest = plan.matrices.last().context("no matrix sizes")?;
    let largest_bytes: usize = largest.iter().map(|p| p.input.len()).sum();
    let sinks: Vec<&str> = plan.sinks.iter().map(String::as_str).collect();
    for _ in 0..plan.runs {
        let took = raw_transfer(&sinks, largest).await?;
        measured
            .link_mb_s
            .push(largest_bytes as f64 / secs(took) / 1e6);
        for (parts, row) in plan.matrices.iter().zip(&mut measured.matrix) {
            let (t, reference) = sequential(parts).await?;
            row.sequential.push(t);
            row.pool3
                .push(pool(parts, &all, &options, &reference).await?);
        }
        for (parts, row) in plan.loops.iter().zip(&mut measured.loops) {
            let (t, reference) = sequential(parts).await?;
            row.sequential.push(t);
            row.pool3
                .push(pool(parts, &all, &options, &reference).await?);
            row.pool2
                .push(pool(parts, two, &options, &reference).await?);
        }
    }
    Ok(measured)
}

/// The local sequential run of `parts`: seconds and the result.
async fn sequential(parts: &[Part]) -> anyhow::Result<(f64, PartResult)> {
    let parts = parts.to_vec();
    let run = blocking(move || local::sequential(&parts, &CancelFlag::new(), &|| {}))
        .await?
        .map_err(|_| anyhow::anyhow!("cancelled"))?;
    Ok((secs(run.elapsed), run.result))
}

/// One pool run of `parts` on `addresses` (connecting included, as a one-off job
/// pays it), checked exact against `reference`: seconds.
async fn pool(
    parts: &[Part],
    addresses: &[&str],
    options: &ConnectOptions,
    reference: &PartResult,
) -> anyhow::Result<f64> {
    let run = pool_run_with(parts, addresses, &Scheduling::default(), options).await?;
    check("pool over the LAN", run.result, reference.clone())?;
    Ok(secs(run.elapsed))
}

/// The figures: the link, each size's pool against local, the crossovers, and what a
/// kernel must cost per element for shipping to pay.
fn figures(m: &Measured) -> Vec<Figure> {
    let mut figures = vec![Figure::plain(
        SCENARIO,
        format!("raw TCP over the link, client to {SERVERS} servers at once (1 Gbit/s = 125 MB/s)"),
        "MB/s",
        &m.link_mb_s,
    )];
    for row in &m.matrix {
        figures.push(Figure::against(
            SCENARIO,
            format!(
                "matrix-sum {}: pool, {SERVERS} servers",
                size_name(row.size)
            ),
            "ms",
            &ms(&row.pool3),
            "local sequential",
            &ms(&row.sequential),
        ));
    }
    figures.push(crossover_figure(
        "matrix-sum: the pool overtakes local at",
        "MiB",
        (1 << 20) as f64,
        &m.matrix,
        |r| &r.pool3,
    ));
    // Past the fixed costs the pool's time per byte is the link's; local's is the sum's.
    if let Some(row) = m.matrix.last() {
        let elements = row.size / ELEMENT_BYTES;
        let link_ns: Vec<f64> = m
            .link_mb_s
            .iter()
            .map(|mb_s| ELEMENT_BYTES / (mb_s * 1e6) * 1e9)
            .collect();
        let kernel_ns: Vec<f64> = row.sequential.iter().map(|t| t / elements * 1e9).collect();
        figures.push(Figure::against(
            SCENARIO,
            "work per element for the pool to break even (8 B over the link)",
            "ns",
            &link_ns,
            "matrix-sum's work per element",
            &kernel_ns,
        ));
        let pool_mb_s: Vec<f64> = row.pool3.iter().map(|t| row.size / t / 1e6).collect();
        figures.push(Figure::against(
            SCENARIO,
            format!("matrix-sum {}: pool throughput", size_name(row.size)),
            "MB/s",
            &pool_mb_s,
            "raw TCP over the link",
            &m.link_mb_s,
        ));
    }
    for row in &m.loops {
        let name = format!("loop {}: pool", iterations_name(row.size));
        figures.push(Figure::against(
            SCENARIO,
            format!("{name}, {SERVERS} servers"),
            "ms",
            &ms(&row.pool3),
            "local sequential",
            &ms(&row.sequential),
        ));
        figures.push(Figure::against(
            SCENARIO,
            format!("{name}, 2 servers"),
            "ms",
            &ms(&row.pool2),
            "local sequential",
            &ms(&row.sequential),
        ));
    }
    figures.push(crossover_figure(
        &format!("loop: the pool on {SERVERS} servers overtakes local at"),
        "M iterations",
        1e6,
        &m.loops,
        |r| &r.pool3,
    ));
    figures.push(crossover_figure(
        "loop: the pool on 2 servers overtakes local at",
        "M iterations",
        1e6,
        &m.loops,
        |r| &r.pool2,
    ));
    figures
}

/// Where the pool's median time falls below local sequential's, over `rows` in size
/// order.
fn crossover(rows: &[Row], pool: impl Fn(&Row) -> &Vec<f64>) -> Crossover {
    let ratio = |r: &Row| median(pool(r)) / median(&r.sequential);
    match rows.iter().position(|r| ratio(r) < 1.0) {
        None => Crossover::Never,
        Some(0) => Crossover::BelowSmallest,
        Some(i) => {
            let (a, b) = (&rows[i - 1], &rows[i]);
            let (ra, rb) = (ratio(a).ln(), ratio(b).ln());
            let (xa, xb) = (a.size.ln(), b.size.ln());
            Crossover::At((xa + (xb - xa) * ra / (ra - rb)).exp())
        }
    }
}

/// A crossover as a figure: the size (over `scale`, in `unit`) where the pool's median
/// fell below local's; "n/a" with a note in its name if it never did.
fn crossover_figure(
    name: &str,
    unit: &'static str,
    scale: f64,
    rows: &[Row],
    pool: impl Fn(&Row) -> &Vec<f64>,
) -> Figure {
    let c = crossover(rows, pool);
    let (name, value) = match c {
        Crossover::At(x) => (name.to_string(), x / scale),
        Crossover::BelowSmallest => (
            format!("{name} (or below: faster at the smallest size)"),
            rows.first().map_or(f64::NAN, |r| r.size) / scale,
        ),
        Crossover::Never => (
            format!("{name} (never: slower at every size measured)"),
            f64::NAN,
        ),
    };
    Figure::plain(SCENARIO, name, unit, &[value])
}

/// Each row's size and medians, for the charts.
fn chart_series(rows: &[Row]) -> Vec<chart::Point> {
    rows.iter()
        .map(|r| chart::Point {
            size: r.size,
            sequential: median(&r.sequential),
            pool3: median(&r.pool3),
            pool2: (!r.pool2.is_empty()).then(|| median(&r.pool2)),
        })
        .collect()
}

/// Seconds as milliseconds.
fn ms(seconds: &[f64]) -> Vec<f64> {
    seconds.iter().map(|s| s * 1e3).collect()
}

/// `128 KiB`, `8 MiB`.
fn size_name(bytes: f64) -> String {
    let (value, unit) = if bytes >= (1 << 20) as f64 {
        (bytes / (1 << 20) as f64, "MiB")
    } else {
        (bytes / 1024.0, "KiB")
    };
    if value.fract() == 0.0 {
        format!("{value:.0} {unit}")
    } else {
        format!("{} {unit}", short(value))
    }
}

/// `1e8 iterations`.
fn iterations_name(n: f64) -> String {
    format!("1e{} iterations", n.log10().round())
}

/// Runs `f` on a thread of its own moved into `namespace`'s network namespace, with a
/// tokio runtime built there (its threads inherit the namespace), and waits for it
/// without holding up the caller's runtime.
async fn in_namespace<T, F>(
    namespace: String,
    f: impl FnOnce() -> F + Send + 'static,
) -> anyhow::Result<T>
where
    T: Send + 'static,
    F: std::future::Future<Output = anyhow::Result<T>>,
{
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name(format!("in {namespace}"))
        .spawn(move || {
            let outcome = enter_namespace(&namespace).and_then(|()| {
                tokio::runtime::Builder::new_multi_thread()
                    .enable_all()
                    .build()
                    .context("cannot start a runtime in the client's namespace")?
                    .block_on(f())
            });
            let _ = tx.send(outcome);
        })?;
    rx.await
        .context("the thread in the client's namespace died")?
}

/// Moves the calling thread into the network namespace `ip netns` calls `namespace`.
/// Threads it starts afterwards are born there too.
fn enter_namespace(namespace: &str) -> anyhow::Result<()> {
    use std::os::fd::AsRawFd;
    let path = format!("/run/netns/{namespace}");
    let file = std::fs::File::open(&path).with_context(|| format!("cannot open {path}"))?;
    // SAFETY: setns reads the descriptor, which `file` keeps open across the call, and
    // changes only this thread's network namespace.
    let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
    if rc != 0 {
        bail!("setns({path}): {}", std::io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(size: f64, sequential: f64, pool: f64) -> Row {
        Row {
            size,
            sequential: vec![sequential],
            pool3: vec![pool],
            pool2: Vec::new(),
        }
    }

    #[test]
    fn crossovers_are_found_between_sizes_on_log_scales() {
        let pool: fn(&Row) -> &Vec<f64> = |r| &r.pool3;
        // Ratios 10, 1/10 at sizes 1e2 and 1e4: ln-ratio crosses 0 half way, at 1e3.
        let rows = [row(1e2, 1.0, 10.0), row(1e4, 10.0, 1.0)];
        match crossover(&rows, pool) {
            Crossover::At(x) => assert!((x - 1e3).abs() < 1e-6, "{x}"),
            other => panic!("{other:?}"),
        }
        assert_eq!(
            crossover(&[row(1.0, 2.0, 1.0)], pool),
            Crossover::BelowSmallest
        );
        assert_eq!(
            crossover(&[row(1.0, 1.0, 2.0), row(2.0, 2.0, 4.0)], pool),
            Crossover::Never
        );
    }
}
