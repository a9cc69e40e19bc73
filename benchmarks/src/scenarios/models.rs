//! Scenario 13: the server models side by side (`pool-server --model async | threads |
//! iterative | fork`, issue 13).
//!
//! For each model, a fresh server (`--workers` = the cores) meets 1, 10, 100 and 1,000
//! clients at once (1, 10 and 50 with `--quick`). Each client connects and runs
//! [`SMALL_PARTS`] small parts one after the other; then, in a second load, 1, 10 and
//! 100 clients each run one CPU-bound part. Every result is checked. Measured: parts
//! per second over the whole load, the p50 and p99 latency of a part as its client sees
//! it (a client's first part includes its connect and handshake, which is where the
//! iterative model's queue and the fork model's process start show), and, sampled
//! every 20 ms from `/proc`, the server's peak resident memory, processes and threads,
//! children included (the fork model's are its children). One run per point: the
//! figures show what each model costs, not a small difference. Each load is bounded
//! by [`LOAD_LIMIT`]; a load that fails or exceeds it is reported as such.

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use futures::future::try_join_all;
use plotters::prelude::*;
use pool_client::chart::palette;
use pool_client::connection::{ConnectOptions, ServerConnection};
use pool_common::jobs::loop_sum::LoopPart;
use pool_common::jobs::{CancelFlag, Part, PartTask};
use pool_common::text::counted;

use super::{millis, Settings};
use crate::figures::{percentile, Figure};
use crate::procs::Helper;

const SCENARIO: &str = "13 server models";

/// The models, in the order they are shown.
pub const MODELS: [&str; 4] = ["async", "threads", "iterative", "fork"];

/// Small parts each client runs, one after the other.
const SMALL_PARTS: usize = 5;

/// Iterations of a small part (about a microsecond of work).
const SMALL_ITERATIONS: u64 = 1000;

/// Iterations of a CPU-bound part (tens of milliseconds on one core).
const CPU_ITERATIONS: u64 = 30_000_000;

/// The longest one load may take; beyond it the load is reported as not finished.
const LOAD_LIMIT: Duration = Duration::from_secs(240);

/// How often the server's memory, processes and threads are sampled.
const SAMPLE_INTERVAL: Duration = Duration::from_millis(20);

/// What one load on one model measured.
#[derive(Debug, Clone)]
pub struct Row {
    /// The model.
    pub model: &'static str,
    /// `small` or `cpu`.
    pub load: &'static str,
    /// Clients at once.
    pub clients: usize,
    /// What was measured, or why the load did not finish.
    pub outcome: Result<Measured, String>,
}

/// The figures of a load that finished.
#[derive(Debug, Clone, Copy)]
pub struct Measured {
    /// Parts per second over the whole load.
    pub parts_per_s: f64,
    /// Latency of a part as its client sees it, milliseconds.
    pub p50_ms: f64,
    /// The same, 99th percentile.
    pub p99_ms: f64,
    /// The server's peak resident memory, children included, MiB.
    pub peak_rss_mib: f64,
    /// The most processes the server had at once (itself and its children).
    pub peak_processes: usize,
    /// The most threads the server had at once, children's included.
    pub peak_threads: usize,
}

/// Runs the scenario and returns its figures; draws `models.svg` in `chart_dir`.
pub async fn run(s: &Settings, chart_dir: Option<&Path>) -> anyhow::Result<Vec<Figure>> {
    let small: &[usize] = if s.quick {
        &[1, 10, 50]
    } else {
        &[1, 10, 100, 1000]
    };
    let cpu: &[usize] = if s.quick { &[1, 10] } else { &[1, 10, 100] };
    let most = small.iter().max().copied().unwrap_or(1);
    // Each client holds a socket here, and one in the server.
    raise_open_files_limit(2 * most as u64 + 256)?;
    let workers = s.cores.to_string();
    let mut rows = Vec::new();
    for model in MODELS {
        for (load, counts) in [("small", small), ("cpu", cpu)] {
            for &clients in counts {
                let server = Helper::pool_server_with(&[
                    "--model",
                    model,
                    "--workers",
                    &workers,
                    "--max-connections",
                    "4096",
                ])?;
                let outcome = measure(&server, load, clients).await;
                if let Err(e) = &outcome {
                    eprintln!(
                        "note: {model}, {load} parts, {}: {e}",
                        counted(clients, "client", "clients")
                    );
                }
                rows.push(Row {
                    model,
                    load,
                    clients,
                    outcome: outcome.map_err(|e| format!("{e:#}")),
                });
            }
        }
    }
    if let Some(dir) = chart_dir {
        std::fs::create_dir_all(dir)?;
        let note = format!(
            "one pool-server per point, --workers {} on {} cores; small parts: {SMALL_PARTS} per client, {SMALL_ITERATIONS} iterations each; memory sampled every 20 ms, children included",
            s.cores, s.cores
        );
        std::fs::write(dir.join("models.svg"), chart(&rows, &note)?)?;
    }
    Ok(figures(&rows))
}

/// One load on a fresh server: `clients` at once, each with its parts.
async fn measure(server: &Helper, load: &str, clients: usize) -> anyhow::Result<Measured> {
    let sampler = Sampler::start(server.pid());
    let options = ConnectOptions {
        connect_timeout: LOAD_LIMIT,
        handshake_timeout: LOAD_LIMIT,
        part_timeout: Some(LOAD_LIMIT),
        ..ConnectOptions::default()
    };
    let (parts, iterations) = match load {
        "small" => (SMALL_PARTS, SMALL_ITERATIONS),
        _ => (1, CPU_ITERATIONS),
    };
    let started = Instant::now();
    let runs = (0..clients).map(|client| {
        let options = &options;
        async move {
            let mut latencies = Vec::with_capacity(parts);
            let mut since = Instant::now();
            let connection = ServerConnection::connect(&server.addr, options).await?;
            for k in 0..parts {
                let lo = (client * parts + k) as u64 * iterations;
                let part = Part::new(
                    k,
                    PartTask::Loop(LoopPart {
                        lo,
                        hi: lo + iterations,
                    }),
                    bytes::Bytes::new(),
                );
                let reply = connection.run_part(&part).await?;
                latencies.push(millis(since.elapsed()));
                let want = part.compute(&CancelFlag::new()).expect("never cancelled");
                if reply.result != want {
                    bail!("client {client}, part {k}: a wrong result");
                }
                since = Instant::now();
            }
            anyhow::Ok(latencies)
        }
    });
    let latencies = tokio::time::timeout(LOAD_LIMIT, try_join_all(runs))
        .await
        .map_err(|_| anyhow::anyhow!("not finished within {LOAD_LIMIT:?}"))??;
    let elapsed = started.elapsed();
    let peak = sampler.stop();
    let mut latencies: Vec<f64> = latencies.into_iter().flatten().collect();
    Ok(Measured {
        parts_per_s: latencies.len() as f64 / elapsed.as_secs_f64(),
        p50_ms: percentile(&mut latencies, 50.0),
        p99_ms: percentile(&mut latencies, 99.0),
        peak_rss_mib: peak.rss_kib as f64 / 1024.0,
        peak_processes: peak.processes,
        peak_threads: peak.threads,
    })
}

/// The server's processes, threads and resident memory at one moment.
#[derive(Debug, Clone, Copy, Default)]
struct Sample {
    rss_kib: u64,
    processes: usize,
    threads: usize,
}

/// Samples a process and its descendants from `/proc` until stopped, keeping the peaks.
struct Sampler {
    stop: Arc<AtomicBool>,
    thread: std::thread::JoinHandle<Sample>,
}

impl Sampler {
    fn start(pid: u32) -> Sampler {
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = Arc::clone(&stop);
        let thread = std::thread::spawn(move || {
            let mut peak = Sample::default();
            loop {
                let now = sample(pid);
                peak.rss_kib = peak.rss_kib.max(now.rss_kib);
                peak.processes = peak.processes.max(now.processes);
                peak.threads = peak.threads.max(now.threads);
                if stopped.load(Ordering::Relaxed) {
                    return peak;
                }
                std::thread::sleep(SAMPLE_INTERVAL);
            }
        });
        Sampler { stop, thread }
    }

    /// The peaks seen, one last sample included.
    fn stop(self) -> Sample {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.join().unwrap_or_default()
    }
}

/// `pid` and its descendants now.
fn sample(pid: u32) -> Sample {
    let mut total = Sample::default();
    let mut pending = vec![pid];
    while let Some(pid) = pending.pop() {
        let Ok(status) = std::fs::read_to_string(format!("/proc/{pid}/status")) else {
            continue;
        };
        let field = |name: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .and_then(|rest| rest.split_whitespace().next()?.parse::<u64>().ok())
                .unwrap_or(0)
        };
        total.rss_kib += field("VmRSS:");
        total.threads += field("Threads:") as usize;
        total.processes += 1;
        let tasks = std::fs::read_dir(format!("/proc/{pid}/task"))
            .into_iter()
            .flatten();
        for task in tasks.flatten() {
            let children =
                std::fs::read_to_string(task.path().join("children")).unwrap_or_default();
            pending.extend(
                children
                    .split_whitespace()
                    .filter_map(|c| c.parse::<u32>().ok()),
            );
        }
    }
    total
}

/// Raises this process's soft limit on open files to `wanted` (within the hard limit):
/// the clients' sockets, and the servers' (started from here, they inherit it).
fn raise_open_files_limit(wanted: u64) -> anyhow::Result<()> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit and setrlimit only read and write the struct passed.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) != 0 {
            return Err(std::io::Error::last_os_error()).context("getrlimit");
        }
        if limit.rlim_cur < wanted {
            let raised = wanted.min(limit.rlim_max);
            eprintln!(
                "note: raising the open files limit from {} to {raised}",
                limit.rlim_cur
            );
            limit.rlim_cur = raised;
            if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) != 0 {
                return Err(std::io::Error::last_os_error()).context("setrlimit");
            }
        }
    }
    if limit.rlim_cur < wanted {
        bail!(
            "{wanted} open files are needed and the hard limit is {}: raise it (ulimit -Hn)",
            limit.rlim_max
        );
    }
    Ok(())
}

/// The rows as figures: for each model and load, throughput, latency, memory and
/// processes or threads.
fn figures(rows: &[Row]) -> Vec<Figure> {
    let mut figures = Vec::new();
    for row in rows {
        let what = format!(
            "{} {} parts, {}",
            row.model,
            row.load,
            counted(row.clients, "client", "clients")
        );
        let m = match &row.outcome {
            Ok(m) => m,
            Err(e) => {
                figures.push(Figure::plain(
                    SCENARIO,
                    format!("{what}: did not finish ({e})"),
                    "",
                    &[f64::NAN],
                ));
                continue;
            }
        };
        let put = |figures: &mut Vec<Figure>, name: &str, unit, value: f64| {
            figures.push(Figure::plain(
                SCENARIO,
                format!("{what}: {name}"),
                unit,
                &[value],
            ));
        };
        put(&mut figures, "throughput", "parts/s", m.parts_per_s);
        put(&mut figures, "latency p50", "ms", m.p50_ms);
        put(&mut figures, "latency p99", "ms", m.p99_ms);
        put(&mut figures, "peak RSS", "MiB", m.peak_rss_mib);
        put(&mut figures, "peak processes", "", m.peak_processes as f64);
        put(&mut figures, "peak threads", "", m.peak_threads as f64);
    }
    figures
}

fn colour(model: &str) -> RGBColor {
    match model {
        "async" => palette::BLUE,
        "threads" => palette::ORANGE,
        "iterative" => palette::VERMILLION,
        _ => palette::GREEN,
    }
}

fn err(e: impl std::fmt::Display) -> anyhow::Error {
    anyhow::anyhow!("cannot draw the chart: {e}")
}

/// A log axis's label: a whole number where the value is one, else its shortest form
/// (plotters would print `100000.0`).
fn plain_number(y: f64) -> String {
    if y >= 1.0 && y.fract() == 0.0 {
        format!("{y:.0}")
    } else {
        format!("{y}")
    }
}

/// Three panels against the number of clients (small parts): throughput, p99 latency
/// and peak memory, one line per model.
fn chart(rows: &[Row], note: &str) -> anyhow::Result<String> {
    type Get = fn(&Measured) -> f64;
    let panels: [(&str, Get); 3] = [
        ("small parts per second", |m| m.parts_per_s),
        ("p99 latency of a small part (ms)", |m| m.p99_ms),
        ("server peak RSS, children included (MiB)", |m| {
            m.peak_rss_mib
        }),
    ];
    let mut out = String::new();
    {
        let root = SVGBackend::with_string(&mut out, (1200, 440)).into_drawing_area();
        root.fill(&WHITE).map_err(err)?;
        let (area, footer) = root.split_vertically(415);
        let area = area
            .titled(
                "pool-server --model: the same protocol served four ways",
                ("sans-serif", 18),
            )
            .map_err(err)?;
        let clients: Vec<f64> = {
            let mut c: Vec<f64> = rows
                .iter()
                .filter(|r| r.load == "small")
                .map(|r| r.clients as f64)
                .collect();
            c.sort_by(f64::total_cmp);
            c.dedup();
            c
        };
        let x_range = (clients.first().copied().unwrap_or(1.0) / 1.5)
            ..(clients.last().copied().unwrap_or(10.0) * 1.5);
        for (panel, (desc, get)) in area.split_evenly((1, 3)).iter().zip(panels) {
            let series: Vec<(&str, Vec<(f64, f64)>)> = MODELS
                .iter()
                .map(|&model| {
                    let points = rows
                        .iter()
                        .filter(|r| r.model == model && r.load == "small")
                        .filter_map(|r| Some((r.clients as f64, get(r.outcome.as_ref().ok()?))))
                        .filter(|(_, y)| *y > 0.0)
                        .collect();
                    (model, points)
                })
                .collect();
            let ys = series.iter().flat_map(|(_, p)| p.iter().map(|(_, y)| *y));
            let (low, high) = ys.fold((f64::INFINITY, 0.0f64), |(l, h), y| (l.min(y), h.max(y)));
            let (low, high) = if low.is_finite() {
                (low / 2.0, high * 4.0)
            } else {
                (0.1, 10.0)
            };
            let mut chart = ChartBuilder::on(panel)
                .margin(12)
                .x_label_area_size(40)
                .y_label_area_size(60)
                .build_cartesian_2d(x_range.clone().log_scale(), (low..high).log_scale())
                .map_err(err)?;
            chart
                .configure_mesh()
                .light_line_style(BLACK.mix(0.05))
                .x_desc("clients at once")
                .y_desc(desc)
                .x_label_formatter(&|x| format!("{x:.0}"))
                .y_label_formatter(&|y| plain_number(*y))
                .label_style(("sans-serif", 12))
                .axis_desc_style(("sans-serif", 13))
                .draw()
                .map_err(err)?;
            for (model, points) in series {
                let c = colour(model);
                chart
                    .draw_series(LineSeries::new(points.iter().copied(), c.stroke_width(2)))
                    .map_err(err)?
                    .label(model)
                    .legend(move |(x, y)| {
                        PathElement::new(vec![(x, y), (x + 20, y)], c.stroke_width(2))
                    });
                chart
                    .draw_series(points.iter().map(|&p| Circle::new(p, 3, c.filled())))
                    .map_err(err)?;
            }
            chart
                .configure_series_labels()
                .position(SeriesLabelPosition::UpperLeft)
                .label_font(("sans-serif", 12))
                .background_style(WHITE.mix(0.9))
                .border_style(BLACK)
                .draw()
                .map_err(err)?;
        }
        footer
            .draw_text(
                note,
                &("sans-serif", 11).into_font().color(&BLACK.mix(0.7)),
                (15, 3),
            )
            .map_err(err)?;
        root.present().map_err(err)?;
    }
    Ok(out)
}
