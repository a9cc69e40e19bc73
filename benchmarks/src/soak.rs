//! `pool-bench soak --minutes N`: one pool server, driven for N minutes by a bounded mix
//! of what a long-lived server meets, while its resident memory, open file descriptors
//! and threads are sampled from `/proc`:
//!
//! * normal jobs of every kind, one or two at a time, each result checked against the
//!   same job computed here once at the start;
//! * hostile connections: every stream of [`pool_client::hostile::streams`] in turn;
//! * clients gone mid-part: a connection dropped while its part computes or while its
//!   data is half sent, and a client process (`pool-bench soak-client`) killed with
//!   SIGKILL;
//! * stalled connections: half a frame, before or after the handshake, then silence.
//!
//! When the time is up the load stops, every connection closes, and the server gets a
//! while to close its side. The run fails on any wrong or failed job, a hostile
//! connection the server never closed, or more descriptors at the end than at the start
//! (beyond [`FD_MARGIN`]). Memory and threads are reported (start, end, peak, slope),
//! not judged: a long run's figures are for a person to read.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use bytes::Bytes;
use clap::Args;
use pool_client::connection::{ConnectOptions, ServerConnection};
use pool_client::hostile::{self, data, hello, request};
use pool_client::report::Mode;
use pool_client::RunOptions;
use pool_common::jobfile::{self, JobFile};
use pool_common::jobs::loop_sum::LoopPart;
use pool_common::jobs::matrix_sum::{Element, MatrixPart};
use pool_common::jobs::{CancelFlag, Part, PartResult, PartTask};
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};
use serde_json::json;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::task::JoinSet;

use crate::procs::{self, Helper};

/// Options of `pool-bench soak`.
#[derive(Args, Debug)]
pub struct SoakArgs {
    /// How long to drive the server, in minutes (0.5 is 30 seconds).
    #[arg(long)]
    minutes: f64,

    /// Seconds between two samples of the server's memory, descriptors and threads.
    #[arg(long, default_value_t = 5.0)]
    every: f64,

    /// Where to write the samples, as CSV (one line per sample, written as it is taken).
    #[arg(long, default_value = "soak.csv")]
    csv: PathBuf,

    /// Print the summary as one JSON document instead of text.
    #[arg(long)]
    json: bool,

    /// Seed of the choices (which job, which hostile stream, how long a stall lasts).
    #[arg(long, default_value_t = 1)]
    seed: u64,
}

/// Descriptors the server may hold at the end beyond those it held at the start (a
/// lazily opened file, say) before the run counts them as leaked.
pub const FD_MARGIN: u64 = 4;

/// Normal jobs at once (the server has two workers).
const JOBS_AT_ONCE: usize = 2;

/// Hostile, dropped, killed and stalled connections at once.
const MISCHIEF_AT_ONCE: usize = 6;

/// The server's idle timeout, in seconds: stalled connections meet it.
const IDLE_TIMEOUT_S: u64 = 10;

/// A bound on every activity: one that takes longer is stuck, and counted as a failure.
const ACTIVITY_GUARD: Duration = Duration::from_secs(120);

/// How long, after the load, the server's descriptors get to come back to their start.
const SETTLE: Duration = Duration::from_secs(30);

/// A long part (about a minute of loop on one core), always interrupted.
const LONG_LOOP: PartTask = PartTask::Loop(LoopPart { lo: 0, hi: 1 << 36 });

/// What a stall, a killed client or a dropped connection waits at most before acting.
const MAX_STALL: Duration = Duration::from_secs(15);

/// What happened during the run, counted as it happens.
#[derive(Default)]
struct Counters {
    jobs: AtomicU64,
    wrong: AtomicU64,
    failed: AtomicU64,
    hostile: AtomicU64,
    hostile_not_closed: AtomicU64,
    dropped_mid_part: AtomicU64,
    killed_clients: AtomicU64,
    stalls: AtomicU64,
    stalls_closed_by_server: AtomicU64,
    /// The first few failures, for the report.
    errors: Mutex<Vec<String>>,
    /// Jobs run, by job name.
    by_job: Mutex<std::collections::BTreeMap<String, u64>>,
}

impl Counters {
    fn error(&self, counter: &AtomicU64, message: String) {
        counter.fetch_add(1, Ordering::SeqCst);
        let mut errors = self.errors.lock().expect("errors lock");
        if errors.len() < 20 {
            eprintln!("soak: {message}");
            errors.push(message);
        }
    }
}

/// One job of the mix, with the result computed here.
struct Spec {
    name: String,
    job: JobFile,
    expected: PartResult,
}

/// One reading of the server's `/proc` entries.
#[derive(Debug, Clone, Copy)]
struct Sample {
    seconds: f64,
    rss_kib: u64,
    fds: u64,
    threads: u64,
    jobs: u64,
    wrong: u64,
    failed: u64,
}

/// The body of `pool-bench soak`.
pub async fn run(args: SoakArgs) -> anyhow::Result<()> {
    if !(args.minutes > 0.0 && args.minutes.is_finite()) {
        bail!("--minutes must be a positive number of minutes (0.5 is 30 seconds)");
    }
    if !(args.every > 0.0 && args.every.is_finite()) {
        bail!("--every must be a positive number of seconds");
    }
    let duration = Duration::from_secs_f64(args.minutes * 60.0);
    let folder = SoakFolder::new()?;
    let specs = Arc::new(job_specs(&folder.0).await?);
    let idle = IDLE_TIMEOUT_S.to_string();
    let server = Helper::pool_server_with(&[
        "--workers",
        "2",
        "--allow-commands",
        "--idle-timeout",
        &idle,
    ])?;
    let pid = server.pid();
    let mut csv = std::fs::File::create(&args.csv)
        .with_context(|| format!("cannot write the samples to {}", args.csv.display()))?;
    writeln!(
        csv,
        "seconds,rss_kib,fds,threads,jobs_done,wrong_results,failed_jobs"
    )?;
    let load_at_start = load_average();
    let counters = Arc::new(Counters::default());
    let started = Instant::now();
    let take = |counters: &Counters| sample(pid, started, counters);
    let first = take(&counters)?;
    let mut samples = vec![first];
    write_sample(&mut csv, &first)?;

    let deadline = tokio::time::Instant::now() + duration;
    let exe = procs::self_exe()?;
    let address = server.addr.clone();
    let jobs = tokio::spawn(drive(
        JOBS_AT_ONCE,
        deadline,
        args.seed,
        Arc::clone(&counters),
        {
            let (specs, address, exe) = (Arc::clone(&specs), address.clone(), exe.clone());
            move |rng, counters| {
                let spec = rng.random_range(0..specs.len());
                let (specs, address, exe) = (Arc::clone(&specs), address.clone(), exe.clone());
                async move { run_job(&specs[spec], &address, &exe, &counters).await }
            }
        },
    ));
    let mischief = tokio::spawn(drive(
        MISCHIEF_AT_ONCE,
        deadline,
        args.seed + 1,
        Arc::clone(&counters),
        {
            let (address, exe) = (address.clone(), exe.clone());
            let streams = Arc::new(hostile::streams());
            move |rng, counters| {
                let what = rng.random_range(0..5u8);
                let wait =
                    Duration::from_millis(rng.random_range(50..MAX_STALL.as_millis() as u64));
                let short = Duration::from_millis(rng.random_range(20..500));
                let stream = rng.random_range(0..streams.len());
                let (address, exe, streams) = (address.clone(), exe.clone(), Arc::clone(&streams));
                async move {
                    match what {
                        0 => send_hostile(&address, &streams[stream], &counters).await,
                        1 => drop_mid_part(&address, short, &counters).await,
                        2 => drop_mid_data(&address, &counters).await,
                        3 => kill_client(&address, &exe, short, &counters).await,
                        _ => stall(&address, stream % 2 == 0, wait, &counters).await,
                    }
                }
            }
        },
    ));

    let every = Duration::from_secs_f64(args.every);
    let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
    while tokio::time::Instant::now() < deadline {
        ticks.tick().await;
        let now = take(&counters)?;
        write_sample(&mut csv, &now)?;
        samples.push(now);
    }
    jobs.await?;
    mischief.await?;
    let loaded = samples.clone();

    // The load is over and every connection of this side is closed: the server's
    // descriptors come back to where they started (as it notices each connection
    // closed), or they leaked.
    let settle_until = Instant::now() + SETTLE;
    let last = loop {
        let now = take(&counters)?;
        if now.fds <= first.fds || Instant::now() >= settle_until {
            break now;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    write_sample(&mut csv, &last)?;
    samples.push(last);
    let summary = summarize(
        &args,
        &server.addr,
        pid,
        &samples,
        &loaded,
        &counters,
        &load_at_start,
    );
    drop(server);
    if args.json {
        println!("{}", serde_json::to_string_pretty(&summary)?);
    } else {
        print_summary(&summary);
    }

    let mut problems = Vec::new();
    let count = |c: &AtomicU64| c.load(Ordering::SeqCst);
    if count(&counters.wrong) > 0 {
        problems.push(format!("{} wrong results", count(&counters.wrong)));
    }
    if count(&counters.failed) > 0 {
        problems.push(format!("{} jobs failed", count(&counters.failed)));
    }
    if count(&counters.hostile_not_closed) > 0 {
        problems.push(format!(
            "{} hostile connections the server did not close",
            count(&counters.hostile_not_closed)
        ));
    }
    if last.fds > first.fds + FD_MARGIN {
        problems.push(format!(
            "the server holds {} file descriptors after the load, {} at the start",
            last.fds, first.fds
        ));
    }
    if !problems.is_empty() {
        bail!("the soak found: {}", problems.join("; "));
    }
    Ok(())
}

/// Keeps `at_once` activities from `start` running until `deadline`, then waits for
/// those under way. Each gets its own choices from a generator seeded with `seed`.
async fn drive<F, Fut>(
    at_once: usize,
    deadline: tokio::time::Instant,
    seed: u64,
    counters: Arc<Counters>,
    start: F,
) where
    F: Fn(&mut StdRng, Arc<Counters>) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let mut rng = StdRng::seed_from_u64(seed);
    let mut running = JoinSet::new();
    loop {
        while running.len() < at_once && tokio::time::Instant::now() < deadline {
            let activity = start(&mut rng, Arc::clone(&counters));
            let counters = Arc::clone(&counters);
            running.spawn(async move {
                if tokio::time::timeout(ACTIVITY_GUARD, activity)
                    .await
                    .is_err()
                {
                    counters.error(
                        &counters.failed,
                        format!("an activity took more than {ACTIVITY_GUARD:?}"),
                    );
                }
            });
        }
        match running.join_next().await {
            Some(Ok(())) => {}
            Some(Err(e)) => counters.error(&counters.failed, format!("an activity panicked: {e}")),
            None => return,
        }
    }
}

/// A temporary folder for the command job's script, removed when dropped.
struct SoakFolder(PathBuf);

impl SoakFolder {
    fn new() -> anyhow::Result<SoakFolder> {
        let dir = std::env::temp_dir().join(format!("pool-soak-{}", std::process::id()));
        std::fs::create_dir_all(&dir)
            .with_context(|| format!("cannot create {}", dir.display()))?;
        Ok(SoakFolder(dir))
    }
}

impl Drop for SoakFolder {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The mix of normal jobs: every kind, small, with their results computed here.
async fn job_specs(folder: &Path) -> anyhow::Result<Vec<Spec>> {
    // The command job's program: the sum of the integers in [lo, hi).
    std::fs::write(
        folder.join("sum.sh"),
        "echo $(( ($2 - $1) * ($1 + $2 - 1) / 2 ))\n",
    )?;
    let jobs = [
        ("loop", "parts = 4\n[job]\nkind = \"loop\"\niterations = 40_000_000\n"),
        (
            "matrix-sum i64",
            "parts = 3\n[job]\nkind = \"matrix-sum\"\nrows = 600\ncols = 500\nseed = 3\n",
        ),
        (
            "matrix-sum f64",
            "parts = 5\n[job]\nkind = \"matrix-sum\"\nelement = \"f64\"\nrows = 300\ncols = 700\nseed = 4\n",
        ),
        (
            "sum-of-squares",
            "parts = 3\n[job]\nkind = \"sum-of-squares\"\ncount = 30_000_000\n",
        ),
        ("primes", "parts = 4\n[job]\nkind = \"primes\"\nbelow = 3_000_000\n"),
        (
            "mandelbrot",
            "parts = 4\n[job]\nkind = \"mandelbrot\"\nwidth = 160\nheight = 120\nmax_iter = 300\n",
        ),
        ("matmul", "parts = 4\n[job]\nkind = \"matmul\"\nn = 160\nseed = 5\n"),
        (
            "command",
            "parts = 4\n[job]\nkind = \"command\"\ncommand = [\"sh\", \"sum.sh\", \"{lo}\", \"{hi}\"]\nrange = 100_000\nfiles = [\"sum.sh\"]\ncombine = \"sum\"\n",
        ),
    ];
    let mut specs = Vec::new();
    for (name, text) in jobs {
        let job = jobfile::parse(text, &folder.join(format!("{name}.toml")))
            .with_context(|| format!("the soak's {name} job"))?;
        let parts = job.load_job()?.split(job.parts);
        let expected = tokio::task::spawn_blocking(move || {
            pool_client::local::sequential(&parts, &CancelFlag::new(), &|| {})
        })
        .await?
        .map_err(|_| anyhow::anyhow!("the {name} job's reference was cancelled"))?
        .result;
        specs.push(Spec {
            name: name.to_string(),
            job,
            expected,
        });
    }
    Ok(specs)
}

/// Runs a normal job in the pool mode and checks its result.
async fn run_job(spec: &Spec, address: &str, exe: &Path, counters: &Counters) {
    let options = RunOptions {
        modes: vec![Mode::Pool],
        servers: Some(vec![address.to_string()]),
        seed: Some(1),
        ..RunOptions::new(exe.to_path_buf())
    };
    match pool_client::run(&spec.job, &options).await {
        Ok(report) => {
            counters.jobs.fetch_add(1, Ordering::SeqCst);
            *counters
                .by_job
                .lock()
                .expect("by_job lock")
                .entry(spec.name.clone())
                .or_default() += 1;
            let got = &report.runs[0].result;
            if *got != spec.expected {
                counters.error(
                    &counters.wrong,
                    format!(
                        "{}: result {got}, computed here {}",
                        spec.name, spec.expected
                    ),
                );
            }
        }
        Err(e) => counters.error(&counters.failed, format!("{}: {e:#}", spec.name)),
    }
}

/// Sends a hostile stream and reads until the server closes the connection.
async fn send_hostile(address: &str, stream: &(&'static str, Vec<u8>), counters: &Counters) {
    counters.hostile.fetch_add(1, Ordering::SeqCst);
    let (name, bytes) = stream;
    let closed = tokio::time::timeout(ACTIVITY_GUARD / 2, async {
        let mut socket = TcpStream::connect(address).await?;
        // The server may close before it has read everything: a failed write is fine.
        let _ = socket.write_all(bytes).await;
        let mut answer = Vec::new();
        let _ = socket.read_to_end(&mut answer).await;
        anyhow::Ok(())
    })
    .await;
    match closed {
        Ok(Ok(())) => {}
        Ok(Err(e)) => counters.error(&counters.failed, format!("hostile {name:?}: {e}")),
        Err(_) => counters.error(
            &counters.hostile_not_closed,
            format!("hostile {name:?}: the server did not close the connection"),
        ),
    }
}

/// Sends a long part and leaves after `after`, while it computes.
async fn drop_mid_part(address: &str, after: Duration, counters: &Counters) {
    match ServerConnection::connect(address, &ConnectOptions::default()).await {
        Ok(connection) => {
            let part = Part::new(0, LONG_LOOP, Bytes::new());
            let _ = tokio::time::timeout(after, connection.run_part(&part)).await;
            counters.dropped_mid_part.fetch_add(1, Ordering::SeqCst);
        }
        Err(e) => counters.error(&counters.failed, format!("connecting to drop a part: {e}")),
    }
}

/// Sends a matrix part and the first of its two data frames, then leaves.
async fn drop_mid_data(address: &str, counters: &Counters) {
    const HALF: usize = 256 << 10;
    let task = PartTask::MatrixSum(MatrixPart {
        first_row: 0,
        rows: 2 * HALF as u64 / 8,
        cols: 1,
        element: Element::I64,
    });
    let sent = async {
        let mut socket = TcpStream::connect(address).await?;
        socket
            .write_all(&[hello(), request(task), data(1, HALF)].concat())
            .await?;
        socket.flush().await?;
        anyhow::Ok(())
    };
    match sent.await {
        Ok(()) => {
            counters.dropped_mid_part.fetch_add(1, Ordering::SeqCst);
        }
        Err(e) => counters.error(&counters.failed, format!("sending half a part: {e}")),
    }
}

/// Starts a client process (`pool-bench soak-client`) that sends a long part, and
/// kills it with SIGKILL `after` it said it sent it.
async fn kill_client(address: &str, exe: &Path, after: Duration, counters: &Counters) {
    let mut child = match tokio::process::Command::new(exe)
        .args(["soak-client", address])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
    {
        Ok(child) => child,
        Err(e) => {
            counters.error(&counters.failed, format!("starting a client: {e}"));
            return;
        }
    };
    let stdout = child.stdout.take().expect("piped");
    let mut line = String::new();
    let said = BufReader::new(stdout).read_line(&mut line).await;
    if !matches!(said, Ok(n) if n > 0) {
        counters.error(
            &counters.failed,
            format!("the client process did not send its part: {said:?}"),
        );
    } else {
        tokio::time::sleep(after).await;
        counters.killed_clients.fetch_add(1, Ordering::SeqCst);
    }
    // SIGKILL, by the child's process id.
    let _ = child.start_kill();
    let _ = child.wait().await;
}

/// The body of `pool-bench soak-client ADDRESS`: connects, sends a long part, says so
/// on standard output, and waits for a result that never comes before it is killed.
pub async fn client_main(address: String) -> anyhow::Result<()> {
    let connection = ServerConnection::connect(&address, &ConnectOptions::default()).await?;
    let part = Part::new(0, LONG_LOOP, Bytes::new());
    let reply = connection.run_part(&part);
    tokio::pin!(reply);
    // Give the request a moment to be written before saying it was sent.
    if tokio::time::timeout(Duration::from_millis(20), &mut reply)
        .await
        .is_ok()
    {
        bail!("the long part ended at once");
    }
    println!("sent");
    std::io::stdout().flush()?;
    reply.await?;
    bail!("the long part ended before this client was killed")
}

/// Opens a connection, sends half a frame (a Hello before the handshake, or a data
/// frame after it), and sits for `wait` or until the server closes it.
async fn stall(address: &str, before_handshake: bool, wait: Duration, counters: &Counters) {
    counters.stalls.fetch_add(1, Ordering::SeqCst);
    let half = if before_handshake {
        let hello = hello();
        hello[..hello.len() / 2].to_vec()
    } else {
        let task = PartTask::MatrixSum(MatrixPart {
            first_row: 0,
            rows: 64,
            cols: 1,
            element: Element::I64,
        });
        let data = data(1, 512);
        [hello(), request(task), data[..data.len() / 2].to_vec()].concat()
    };
    let stalled = async {
        let mut socket = TcpStream::connect(address).await?;
        socket.write_all(&half).await?;
        let mut answer = Vec::new();
        // Returns when the server closes the connection.
        let _ = socket.read_to_end(&mut answer).await;
        anyhow::Ok(())
    };
    match tokio::time::timeout(wait, stalled).await {
        Ok(Ok(())) => {
            counters
                .stalls_closed_by_server
                .fetch_add(1, Ordering::SeqCst);
        }
        Ok(Err(e)) => counters.error(&counters.failed, format!("a stall: {e}")),
        Err(_) => {}
    }
}

/// Reads the server's resident memory, descriptors and threads.
fn sample(pid: u32, started: Instant, counters: &Counters) -> anyhow::Result<Sample> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("reading /proc/{pid}/status (did the server exit?)"))?;
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|rest| rest.split_whitespace().next()?.parse().ok())
            .with_context(|| format!("no {name} in /proc/{pid}/status"))
    };
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .with_context(|| format!("reading /proc/{pid}/fd"))?
        .count() as u64;
    Ok(Sample {
        seconds: started.elapsed().as_secs_f64(),
        rss_kib: field("VmRSS:")?,
        fds,
        threads: field("Threads:")?,
        jobs: counters.jobs.load(Ordering::SeqCst),
        wrong: counters.wrong.load(Ordering::SeqCst),
        failed: counters.failed.load(Ordering::SeqCst),
    })
}

fn write_sample(csv: &mut std::fs::File, s: &Sample) -> anyhow::Result<()> {
    writeln!(
        csv,
        "{:.1},{},{},{},{},{},{}",
        s.seconds, s.rss_kib, s.fds, s.threads, s.jobs, s.wrong, s.failed
    )?;
    csv.flush()?;
    Ok(())
}

/// The least-squares slope of `value` over time, per minute.
fn slope_per_minute(samples: &[Sample], value: impl Fn(&Sample) -> u64) -> f64 {
    let n = samples.len() as f64;
    if samples.len() < 2 {
        return 0.0;
    }
    let mean_t = samples.iter().map(|s| s.seconds).sum::<f64>() / n;
    let mean_v = samples.iter().map(|s| value(s) as f64).sum::<f64>() / n;
    let (mut num, mut den) = (0.0, 0.0);
    for s in samples {
        let dt = s.seconds - mean_t;
        num += dt * (value(s) as f64 - mean_v);
        den += dt * dt;
    }
    if den == 0.0 {
        0.0
    } else {
        num / den * 60.0
    }
}

/// The run's figures: each series' start, end (after the load), peak and slope (over
/// the loaded samples), and the counts.
fn summarize(
    args: &SoakArgs,
    address: &str,
    pid: u32,
    samples: &[Sample],
    loaded: &[Sample],
    counters: &Counters,
    load_at_start: &str,
) -> serde_json::Value {
    let series = |value: fn(&Sample) -> u64| {
        json!({
            "start": value(&samples[0]),
            "end": value(samples.last().expect("samples")),
            "peak": samples.iter().map(value).max(),
            "slope_per_minute": (slope_per_minute(loaded, value) * 100.0).round() / 100.0,
        })
    };
    let count = |c: &AtomicU64| c.load(Ordering::SeqCst);
    json!({
        "command": std::env::args().collect::<Vec<_>>(),
        "minutes": args.minutes,
        "elapsed_s": samples.last().map(|s| s.seconds),
        "server": address,
        "server_pid": pid,
        "load_average_start": load_at_start,
        "load_average_end": load_average(),
        "samples": samples.len(),
        "csv": args.csv.display().to_string(),
        "rss_kib": series(|s| s.rss_kib),
        "fds": series(|s| s.fds),
        "fd_margin": FD_MARGIN,
        "threads": series(|s| s.threads),
        "jobs_done": count(&counters.jobs),
        "jobs_by_kind": *counters.by_job.lock().expect("by_job lock"),
        "wrong_results": count(&counters.wrong),
        "failed": count(&counters.failed),
        "hostile": count(&counters.hostile),
        "hostile_not_closed": count(&counters.hostile_not_closed),
        "dropped_mid_part": count(&counters.dropped_mid_part),
        "killed_clients": count(&counters.killed_clients),
        "stalls": count(&counters.stalls),
        "stalls_closed_by_server": count(&counters.stalls_closed_by_server),
        "errors": *counters.errors.lock().expect("errors lock"),
    })
}

fn print_summary(s: &serde_json::Value) {
    println!(
        "soak: {} min on {} (pid {}), {} samples in {}; load average {} at start, {} at end",
        s["minutes"],
        s["server"],
        s["server_pid"],
        s["samples"],
        s["csv"].as_str().unwrap_or(""),
        s["load_average_start"].as_str().unwrap_or(""),
        s["load_average_end"].as_str().unwrap_or(""),
    );
    println!(
        "jobs: {} done ({}), {} wrong results, {} failures",
        s["jobs_done"], s["jobs_by_kind"], s["wrong_results"], s["failed"]
    );
    println!(
        "mischief: {} hostile connections ({} not closed by the server), {} dropped mid-part, {} client processes killed, {} stalls ({} closed by the server)",
        s["hostile"], s["hostile_not_closed"], s["dropped_mid_part"], s["killed_clients"],
        s["stalls"], s["stalls_closed_by_server"]
    );
    println!(
        "{:<12} {:>10} {:>10} {:>10} {:>12}",
        "server", "start", "end", "peak", "slope/min"
    );
    for (name, key) in [
        ("rss (KiB)", "rss_kib"),
        ("fds", "fds"),
        ("threads", "threads"),
    ] {
        let v = &s[key];
        println!(
            "{name:<12} {:>10} {:>10} {:>10} {:>12}",
            v["start"], v["end"], v["peak"], v["slope_per_minute"]
        );
    }
}

/// The machine's load average (1, 5, 15 minutes).
fn load_average() -> String {
    crate::machine()["load_average"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}
