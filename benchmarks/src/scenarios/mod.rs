//! The scenarios, one file each, and what they share.

pub mod connections;
pub mod float_sum;
pub mod kernels;
pub mod lan;
pub mod matmul;
pub mod models;
pub mod overhead;
pub mod paper;
pub mod peers;
pub mod scaling;
pub mod shipping;
pub mod skewed;
pub mod spawning;

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use bytes::Bytes;
use futures::stream::{self, StreamExt, TryStreamExt};
use pool_client::connection::{ConnectOptions, ServerConnection};
use pool_client::dispatch::{run_pool, FaultPolicy, PoolRun, Scheduling};
use pool_common::jobfile::{Fallback, ServerEntry};
use pool_common::jobs::loop_sum::LoopPart;
use pool_common::jobs::{CancelFlag, Part, PartResult, PartTask};
use rand::rngs::StdRng;
use rand::SeedableRng;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// What every scenario needs to know about this run.
#[derive(Debug, Clone, Copy)]
pub struct Settings {
    /// The short version: small sizes, one run, a few seconds in all.
    pub quick: bool,
    /// Repetitions of each scenario (heavy scenarios use at most 3).
    pub runs: usize,
    /// Cores of this machine.
    pub cores: usize,
}

impl Settings {
    /// Runs for a scenario that takes tens of seconds per repetition.
    pub fn heavy_runs(&self) -> usize {
        self.runs.min(3)
    }
}

/// Parts in flight per connection when many are sent at once.
pub const WINDOW: usize = 256;

/// `n` parts that do nothing: loop parts over an empty range, without data.
pub fn empty_parts(n: usize) -> Vec<Part> {
    (0..n)
        .map(|index| {
            Part::new(
                index,
                PartTask::Loop(LoopPart { lo: 0, hi: 0 }),
                Bytes::new(),
            )
        })
        .collect()
}

/// Connects to every address (handshake included).
pub async fn connect_all(addrs: &[&str]) -> anyhow::Result<Vec<ServerConnection>> {
    let mut conns = Vec::new();
    for addr in addrs {
        conns.push(ServerConnection::connect(addr, &ConnectOptions::default()).await?);
    }
    Ok(conns)
}

/// Sends `parts` over `conns` (part i to connection i mod len) with at most [`WINDOW`]
/// in flight per connection; returns the elapsed time and the combined result.
pub async fn run_windowed(
    conns: &[ServerConnection],
    parts: &[Part],
) -> anyhow::Result<(Duration, PartResult)> {
    let started = Instant::now();
    let per_conn = conns.iter().enumerate().map(|(c, conn)| {
        let mine = parts.iter().skip(c).step_by(conns.len());
        stream::iter(mine)
            .map(move |part| conn.run_part(part))
            .buffer_unordered(WINDOW)
            .map_ok(|reply| reply.result)
            .try_fold(None, |acc: Option<PartResult>, r| async move {
                Ok(Some(match acc {
                    None => r,
                    Some(a) => a.combine(r).expect("same kind"),
                }))
            })
    });
    let results = futures::future::try_join_all(per_conn).await?;
    let elapsed = started.elapsed();
    let result = results
        .into_iter()
        .flatten()
        .reduce(|a, b| a.combine(b).expect("same kind"))
        .context("no parts")?;
    Ok((elapsed, result))
}

/// The product's pool mode ([`run_pool`]) on `addrs` with the job file's default
/// scheduling: elapsed time (connecting included) and the result.
pub async fn pool_mode(parts: &[Part], addrs: &[&str]) -> anyhow::Result<(Duration, PartResult)> {
    let run = pool_run(parts, addrs, &Scheduling::default()).await?;
    Ok((run.elapsed, run.result))
}

/// The product's pool mode on `addrs`, scheduled as `scheduling` says, with the seed
/// fixed so runs place alike.
pub async fn pool_run(
    parts: &[Part],
    addrs: &[&str],
    scheduling: &Scheduling,
) -> anyhow::Result<PoolRun> {
    pool_run_with(parts, addrs, scheduling, &ConnectOptions::default()).await
}

/// [`pool_run`], connecting with `options` (the token of servers that require one).
pub async fn pool_run_with(
    parts: &[Part],
    addrs: &[&str],
    scheduling: &Scheduling,
    options: &ConnectOptions,
) -> anyhow::Result<PoolRun> {
    let servers: Vec<ServerEntry> = addrs
        .iter()
        .map(|a| ServerEntry::parse(a).map_err(anyhow::Error::msg))
        .collect::<anyhow::Result<_>>()?;
    let mut rng = StdRng::seed_from_u64(1);
    let run = run_pool(
        parts,
        &servers,
        scheduling,
        &mut rng,
        options,
        FaultPolicy {
            max_attempts: 1,
            fallback: Fallback::None,
        },
    )
    .await?;
    Ok(run)
}

/// Sends `parts`' bytes to raw TCP sinks (`pool-bench sink`) as the pool client ships
/// them: the same chunks, part i to sink i mod the number of sinks, every sink's
/// connection at once. Returns the time from the first connect to the last
/// acknowledgement, once each sink has counted every byte it was sent.
pub async fn raw_transfer(sinks: &[&str], parts: &[Part]) -> anyhow::Result<Duration> {
    let started = Instant::now();
    let sends = sinks.iter().enumerate().map(|(i, addr)| async move {
        let mine: Vec<&Part> = parts.iter().skip(i).step_by(sinks.len()).collect();
        let expected: usize = mine.iter().map(|p| p.input.len()).sum();
        let mut socket = TcpStream::connect(addr).await?;
        socket.set_nodelay(true)?;
        for part in mine {
            for chunk in part.chunks() {
                socket.write_all(&chunk).await?;
            }
        }
        socket.shutdown().await?;
        let mut ack = [0u8; 8];
        socket.read_exact(&mut ack).await?;
        let received = u64::from_le_bytes(ack);
        if received != expected as u64 {
            bail!("the sink {addr} received {received} of {expected} bytes");
        }
        anyhow::Ok(())
    });
    futures::future::try_join_all(sends).await?;
    Ok(started.elapsed())
}

/// Fails unless `got` equals `want`.
pub fn check(what: &str, got: PartResult, want: PartResult) -> anyhow::Result<()> {
    if got != want {
        bail!("{what}: result {got} differs from the reference {want}");
    }
    Ok(())
}

/// Nanoseconds per iteration of the loop kernel on one core, from a short run.
pub fn loop_ns_per_iteration(iterations: u64) -> f64 {
    let started = Instant::now();
    let sum = LoopPart {
        lo: 0,
        hi: iterations,
    }
    .compute(&CancelFlag::new())
    .expect("never cancelled");
    std::hint::black_box(sum);
    started.elapsed().as_nanos() as f64 / iterations as f64
}

/// Runs a blocking closure off the async threads.
pub async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> T + Send + 'static,
) -> anyhow::Result<T> {
    Ok(tokio::task::spawn_blocking(f).await?)
}

/// Seconds as f64.
pub fn secs(d: Duration) -> f64 {
    d.as_secs_f64()
}

/// Milliseconds as f64.
pub fn millis(d: Duration) -> f64 {
    d.as_nanos() as f64 / 1e6
}

/// Microseconds as f64.
pub fn micros(d: Duration) -> f64 {
    d.as_nanos() as f64 / 1000.0
}

/// A C program compiled with `gcc -O3` for this run: the yardstick for one of our
/// kernels. It prints an integer result (checked against ours) and a measurement.
pub struct CProgram {
    exe: PathBuf,
}

impl CProgram {
    /// Compiles `source` as `name` with `gcc -O3` and `flags`; `None` (and a note on
    /// stderr) without a working gcc.
    pub fn build(name: &str, source: &str, flags: &[&str]) -> Option<CProgram> {
        let dir = std::env::temp_dir().join(format!("pool-bench-{}-{name}", std::process::id()));
        let source_file = dir.join(format!("{name}.c"));
        let exe = dir.join(name);
        let built = std::fs::create_dir_all(&dir)
            .and_then(|()| std::fs::write(&source_file, source))
            .and_then(|()| {
                Command::new("gcc")
                    .arg("-O3")
                    .args(flags)
                    .arg("-o")
                    .arg(&exe)
                    .arg(&source_file)
                    .status()
            });
        match built {
            Ok(status) if status.success() => Some(CProgram { exe }),
            _ => {
                eprintln!("note: no C baseline (gcc -O3 could not build {name}.c)");
                None
            }
        }
    }

    /// Runs the program with `args`: its result and its measurement.
    pub fn run(&self, args: &[String]) -> anyhow::Result<(u64, f64)> {
        let out = Command::new(&self.exe).args(args).output()?;
        let name = self.exe.display();
        if !out.status.success() {
            bail!("{name} failed");
        }
        let text = String::from_utf8_lossy(&out.stdout);
        let mut words = text.split_whitespace();
        let result = words
            .next()
            .with_context(|| format!("{name}: no output"))?
            .parse()?;
        let measured = words
            .next()
            .with_context(|| format!("{name}: one number only"))?
            .parse()?;
        Ok((result, measured))
    }
}

impl Drop for CProgram {
    fn drop(&mut self) {
        if let Some(dir) = self.exe.parent() {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}
