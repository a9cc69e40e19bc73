//! `pool-client` as a library: run a job file's parts on pool servers and compare with
//! local runs of the same parts.
//!
//! * [`connection`]: one connection to a server, shared by the parts sent there.
//! * [`servers`]: placing parts on servers; servers started locally for one run.
//! * [`dispatch`]: the pool mode: parts out, results in.
//! * [`local`]: the sequential, threaded and multi-process baselines.
//! * [`report`]: the comparison table and JSON.
//!
//! [`run`] ties them together as the `pool-client` binary does.

pub mod connection;
pub mod dispatch;
pub mod local;
pub mod report;
pub mod servers;

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{bail, Context};
use pool_common::jobfile::JobFile;
use pool_common::jobs::CancelFlag;
use rand::rngs::StdRng;
use rand::SeedableRng;

use connection::ConnectOptions;
use dispatch::FaultPolicy;
use report::{Mode, ModeRun, Report};
use servers::LocalServers;

/// Everything a run needs besides the job file.
#[derive(Debug, Clone)]
pub struct RunOptions {
    /// Modes to run; they run in [`Mode::ALL`] order whatever the order here.
    pub modes: Vec<Mode>,
    /// Servers to use instead of the job file's.
    pub servers: Option<Vec<String>>,
    /// Start this many local servers instead of using the job file's servers.
    pub local_servers: Option<usize>,
    /// Seed for the choice of servers, instead of the job file's.
    pub seed: Option<u64>,
    /// The `pool-client` executable, run as worker processes (`part`) and local servers
    /// (`serve`).
    pub exe: PathBuf,
    /// Set to stop the local modes' kernels (on Ctrl-C); the pool mode stops when its
    /// future is dropped.
    pub cancel: Arc<CancelFlag>,
}

/// Loads the job, runs each mode on the same parts, and checks every result against the
/// sequential one (or the first mode's).
///
/// Fails if a mode fails; a mismatch is not a failure here but shows in the
/// [`Report`] (see [`Report::all_match`]).
pub async fn run(job_file: &JobFile, options: &RunOptions) -> anyhow::Result<Report> {
    let mut modes = options.modes.clone();
    modes.sort();
    modes.dedup();
    if modes.is_empty() {
        bail!("no modes to run");
    }

    // The job's data first (a CSV may be malformed), then the servers: every mistake in
    // the job file shows before any server is started or contacted.
    let job = job_file.load_job()?;
    let local_count = options.local_servers.or(if options.servers.is_some() {
        None
    } else {
        job_file.local_servers
    });
    let mut local_servers = None;
    let servers: Vec<String> = if !modes.contains(&Mode::Pool) {
        Vec::new()
    } else if let Some(count) = local_count {
        let exe = options.exe.clone();
        let started =
            tokio::task::spawn_blocking(move || LocalServers::start(count, 1, &exe)).await??;
        let addresses = started.addresses().to_vec();
        local_servers = Some(started);
        addresses
    } else if let Some(servers) = &options.servers {
        servers.clone()
    } else if !job_file.servers.is_empty() {
        job_file.servers.clone()
    } else {
        bail!(
            "{}: no servers: add `servers = [\"host:port\", ...]`, `servers_file = \"servers.txt\"` or `local = 3` \
             to the job file, or pass --servers host:port,... or --local 3",
            job_file.path.display()
        );
    };

    let parts = job.split(job_file.parts);
    let cancelled = || anyhow::anyhow!("interrupted");
    let mut runs = Vec::new();
    let mut pool = None;
    for mode in modes {
        let run = match mode {
            Mode::Sequential => {
                let (parts, cancel) = (parts.clone(), Arc::clone(&options.cancel));
                let run =
                    tokio::task::spawn_blocking(move || local::sequential(&parts, &cancel)).await?;
                mode_run(mode, 1, job_file.parts, run.map_err(|_| cancelled())?)
            }
            Mode::Threaded => {
                let (parts, cancel) = (parts.clone(), Arc::clone(&options.cancel));
                let run =
                    tokio::task::spawn_blocking(move || local::threaded(&parts, &cancel)).await?;
                mode_run(
                    mode,
                    job_file.parts,
                    job_file.parts,
                    run.map_err(|_| cancelled())?,
                )
            }
            Mode::MultiProcess => {
                let (parts, exe, cancel) = (
                    parts.clone(),
                    options.exe.clone(),
                    Arc::clone(&options.cancel),
                );
                let run = tokio::task::spawn_blocking(move || {
                    local::multi_process(&parts, &exe, &cancel)
                })
                .await??;
                mode_run(mode, job_file.parts, job_file.parts, run)
            }
            Mode::Pool => {
                let rng = match options.seed.or(job_file.seed) {
                    Some(seed) => StdRng::seed_from_u64(seed),
                    None => rand::make_rng(),
                };
                let policy = FaultPolicy {
                    max_attempts: job_file.client.max_attempts,
                    fallback: job_file.client.fallback,
                };
                let connect = ConnectOptions::from_settings(&job_file.client);
                let pool_run =
                    dispatch::run_pool(&parts, &servers, job_file.placement, rng, &connect, policy)
                        .await
                        .context("the pool mode failed")?;
                let run = ModeRun {
                    mode,
                    workers: pool_run.workers() as usize,
                    parts: parts.len(),
                    elapsed: pool_run.elapsed,
                    result: pool_run.result,
                };
                pool = Some(pool_run);
                run
            }
        };
        runs.push(run);
    }
    drop(local_servers);
    Ok(Report {
        kind: job.kind().to_string(),
        job_file: job_file.path.display().to_string(),
        parts: parts.len(),
        runs,
        pool,
    })
}

fn mode_run(mode: Mode, workers: usize, parts: usize, run: local::LocalRun) -> ModeRun {
    ModeRun {
        mode,
        workers,
        parts,
        elapsed: run.elapsed,
        result: run.result,
    }
}
