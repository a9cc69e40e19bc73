//! `pool-client` as a library: run a job file's parts on pool servers and compare with
//! local runs of the same parts.
//!
//! * [`connection`]: one connection to a server, shared by the parts sent there.
//! * [`tls`]: whom the client trusts under TLS, and the TLS handshake.
//! * [`servers`]: servers started locally for one run.
//! * [`ssh`]: servers started on other hosts with ssh (`pool-client up`, `launch =
//!   "ssh"`).
//! * [`hostile`]: byte streams a server must refuse, for tests and the soak.
//! * [`netlab`]: several hosts on one machine (network namespaces), for tests and
//!   benchmarks.
//! * [`placement`]: which server a part goes to.
//! * [`dispatch`]: the pool mode: parts out as servers free up, stragglers copied,
//!   results in.
//! * [`local`]: the sequential, threaded and multi-process baselines.
//! * [`report`]: the comparison table and JSON.
//! * [`table`]: a table as text, Markdown or LaTeX.
//!
//! [`run`] ties them together as the `pool-client` binary does.

pub mod chart;
pub mod connection;
pub mod discovery;
pub mod dispatch;
pub mod environment;
pub mod hostile;
pub mod local;
pub mod membership;
pub mod netlab;
pub mod placement;
pub mod progress;
pub mod report;
pub mod servers;
pub mod ssh;
pub mod stats;
pub mod status;
pub mod table;
pub mod timeline;
pub mod tls;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{bail, Context};
use pool_common::jobfile::{JobFile, ServerEntry, DEFAULT_DISCOVER_WINDOW, DISCOVER};
use pool_common::jobs::{CancelFlag, Part};
use rand::rngs::StdRng;
use rand::SeedableRng;

use connection::ConnectOptions;
use dispatch::{FaultPolicy, Scheduling};
use environment::{Environment, MachineLoad};
use local::{DataPath, LocalRun, SharedData};
use membership::Membership;
use progress::Progress;
use report::{Mode, ModeRun, Report, RunSettings};
use servers::LocalServers;
use ssh::{LaunchedServers, UpState};
use stats::Repeat;

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
    /// How many runs of each mode to record.
    pub repeat: Repeat,
    /// Unrecorded runs of each mode before the recorded ones (to warm caches, start
    /// the servers' threads, and fault in memory).
    pub warmup: usize,
}

impl RunOptions {
    /// Options for every mode, once, with no warm-up, on the job file's servers.
    pub fn new(exe: PathBuf) -> RunOptions {
        RunOptions {
            modes: Mode::ALL.to_vec(),
            servers: None,
            local_servers: None,
            seed: None,
            exe,
            cancel: Arc::new(CancelFlag::new()),
            repeat: Repeat::Times(1),
            warmup: 0,
        }
    }
}

/// Loads the job, runs each mode on the same parts, and checks every result against the
/// sequential one (or the first mode's).
///
/// Fails if a mode fails; a mismatch is not a failure here but shows in the
/// [`Report`] (see [`Report::all_match`]).
pub async fn run(job_file: &JobFile, options: &RunOptions) -> anyhow::Result<Report> {
    run_with_progress(job_file, options, &Progress::hidden()).await
}

/// [`run`], showing each mode's progress on `progress`.
pub async fn run_with_progress(
    job_file: &JobFile,
    options: &RunOptions,
    progress: &Progress,
) -> anyhow::Result<Report> {
    let mut modes = options.modes.clone();
    modes.sort();
    modes.dedup();
    if modes.is_empty() {
        bail!("no modes to run");
    }
    let mut environment = Environment::detect();

    // The job's data first (a CSV may be malformed), then the servers: every mistake in
    // the job file shows before any server is started or contacted.
    let job = job_file.load_job()?;
    let parts = job.split(job_file.parts);
    // A part that runs a program is a process of its own in every mode, so the
    // threaded mode would only be the multi-process mode again.
    let runs_programs = parts.iter().any(|part| part.task.program().is_some());
    // Without data, sharing it is the multi-process mode again; asked for alone, it
    // still runs.
    let carries_data = parts.iter().any(|part| !part.input.is_empty());
    if !carries_data && modes.len() > 1 {
        modes.retain(|&mode| mode != Mode::SharedMemory);
    }
    // The shared-memory mode's data is placed once, before any run, as the data of
    // every mode was loaded before it; every mode then reads the parts from there.
    let (shared_data, parts) = if modes.contains(&Mode::SharedMemory) {
        let (placed, parts) =
            tokio::task::spawn_blocking(move || SharedData::place(&parts)).await??;
        (Some(Arc::new(placed)), parts)
    } else {
        (None, parts)
    };
    let mut not_run = Vec::new();
    if runs_programs && modes.contains(&Mode::Threaded) {
        modes.retain(|&mode| mode != Mode::Threaded);
        not_run.push((
            Mode::Threaded,
            "the same as multi-process here: each part runs the job's program as a process of its own"
                .to_string(),
        ));
        if modes.is_empty() {
            bail!(
                "a {} job has no threaded mode (each part is a process of its own): \
                 use --modes multi-process",
                job.kind()
            );
        }
    }
    let local_count = options.local_servers.or(if options.servers.is_some() {
        None
    } else {
        job_file.local_servers
    });
    let mut local_servers = None;
    // Servers started over ssh for this run, stopped when this is dropped, and the
    // token of those (or of the ones `pool-client up` started).
    let mut ssh_servers = None;
    let mut ssh_token = None;
    let parse_all = |entries: &[String]| {
        entries
            .iter()
            .map(|entry| ServerEntry::parse(entry).map_err(anyhow::Error::msg))
            .collect::<anyhow::Result<Vec<_>>>()
    };
    let membership = if !modes.contains(&Mode::Pool) {
        Membership::new(Vec::new(), None)
    } else if let Some(count) = local_count {
        let exe = options.exe.clone();
        let started =
            tokio::task::spawn_blocking(move || LocalServers::start(count, 1, &exe, runs_programs))
                .await??;
        let addresses = started.addresses().to_vec();
        local_servers = Some(started);
        Membership::new(parse_all(&addresses)?, None)
    } else if options.servers.as_deref() == Some(&[DISCOVER.to_string()]) {
        let window = job_file.discover.unwrap_or(DEFAULT_DISCOVER_WINDOW);
        Membership::new(Vec::new(), None).with_discovery(window)?
    } else if let Some(servers) = &options.servers {
        Membership::new(parse_all(servers)?, None)
    } else if let Some(settings) = job_file.ssh.as_ref().filter(|s| s.launch) {
        let (settings, exe) = (settings.clone(), options.exe.clone());
        let started =
            tokio::task::spawn_blocking(move || LaunchedServers::start(&settings, &exe)).await??;
        let addresses = started.addresses();
        ssh_token = Some(started.token().to_string());
        ssh_servers = Some(started);
        Membership::new(parse_all(&addresses)?, None)
    } else if let Some(settings) = &job_file.ssh {
        let state = UpState::require(&settings.hosts_file)?;
        ssh_token = Some(state.token.clone());
        Membership::new(parse_all(&state.addresses())?, None)
    } else if let Some(window) = job_file.discover {
        Membership::new(Vec::new(), None).with_discovery(window)?
    } else if let Some(file) = &job_file.servers_file {
        Membership::new(Vec::new(), Some(file.clone()))
    } else if !job_file.servers.is_empty() {
        Membership::new(parse_all(&job_file.servers)?, None)
    } else {
        return Err(pool_common::jobfile::JobFileError {
            path: job_file.path.display().to_string(),
            location: None,
            message: "no servers: add `servers = [\"host:port\", ...]`, `servers_file = \"servers.txt\"`, \
                      `servers = \"discover\"`, `ssh_hosts = \"hosts.txt\"` or `local = 3` to the job file, or pass --servers host:port,... or --local 3"
                .into(),
        }
        .into());
    };
    let changing = membership.can_change();
    let (updates, warnings) = membership.watch().await?;
    let servers: Vec<String> = updates.borrow().iter().map(|s| s.address.clone()).collect();

    // Without a seed, draw one and record it: the JSON then says how to replay the
    // same placement.
    let placement_seed = options.seed.or(job_file.seed).unwrap_or_else(rand::random);
    let mut rng = StdRng::seed_from_u64(placement_seed);
    let policy = FaultPolicy {
        max_attempts: job_file.client.max_attempts,
        fallback: job_file.client.fallback,
    };
    let mut connect =
        ConnectOptions::from_settings(&job_file.client).map_err(anyhow::Error::msg)?;
    if let Some(local) = &local_servers {
        // Servers started for the run listen on loopback, without TLS.
        connect.tls = None;
        if let Some(token) = local.token() {
            connect.token = Some(token.to_string());
        }
    }
    if let Some(token) = ssh_token {
        connect.token = Some(token);
    }
    let scheduling = Scheduling::from_job_file(job_file);

    let input_bytes: u64 = parts
        .iter()
        .map(|p| p.task.input_bytes().unwrap_or(0))
        .sum();
    let mut runs = Vec::new();
    let mut pool_runs = Vec::new();
    for mode in modes {
        let mut samples = Vec::new();
        let mut results = Vec::new();
        let mut part_times = Vec::new();
        let mut workers = parts.len();
        let mut recording_since = None;
        for attempt in 0.. {
            let label = if attempt < options.warmup {
                format!("{} warm-up {}/{}", mode.name(), attempt + 1, options.warmup)
            } else {
                let since = *recording_since.get_or_insert_with(Instant::now);
                if options.repeat.enough(&samples, since.elapsed()) {
                    break;
                }
                let run = attempt - options.warmup + 1;
                match options.repeat {
                    Repeat::Times(times) => format!("{} run {run}/{times}", mode.name()),
                    Repeat::Auto { .. } => format!("{} run {run} (auto)", mode.name()),
                }
            };
            let shipped = if mode == Mode::Pool { input_bytes } else { 0 };
            let bars = progress.mode(&label, parts.len() as u64, shipped);
            let (elapsed, result) = match mode {
                Mode::Pool => {
                    let mut run_updates = updates.clone();
                    let servers_now = run_updates.borrow_and_update().clone();
                    let pool_run = dispatch::run_pool_observed(
                        &parts,
                        &servers_now,
                        changing.then_some(run_updates),
                        &scheduling,
                        &mut rng,
                        &connect,
                        policy,
                        &bars,
                    )
                    .await
                    .context("the pool mode failed")?;
                    if let Some((server, error)) = pool_run
                        .parts
                        .iter()
                        .find_map(|p| Some((&p.computed_by, p.reply.result.user_error()?)))
                    {
                        bail!("the job's program failed on {server}: {error}");
                    }
                    workers = pool_run.workers() as usize;
                    let outcome = (pool_run.elapsed, pool_run.result.clone());
                    if attempt >= options.warmup {
                        pool_runs.push(pool_run);
                    }
                    outcome
                }
                local_mode => {
                    if local_mode == Mode::Sequential {
                        workers = 1;
                    }
                    let run = run_local(
                        local_mode,
                        &parts,
                        shared_data.clone(),
                        options,
                        bars.parts_bar(),
                    )
                    .await?;
                    if let Some(error) = run.result.user_error() {
                        bail!(
                            "the job's program failed in the {} mode: {error}",
                            local_mode.name()
                        );
                    }
                    if attempt >= options.warmup {
                        part_times.extend(run.part_times);
                    }
                    (run.elapsed, run.result)
                }
            };
            drop(bars);
            if attempt >= options.warmup {
                samples.push(elapsed);
                results.push(result);
            }
        }
        let mut run = ModeRun::new(mode, workers, parts.len(), samples, results);
        run.part_times = part_times;
        runs.push(run);
    }
    drop(local_servers);
    environment.load_at_end = Some(MachineLoad::now());
    drop(ssh_servers);
    let pool = stats::median_index(&pool_runs.iter().map(|r| r.elapsed).collect::<Vec<_>>())
        .map(|i| pool_runs[i].clone());
    let mut report = Report {
        kind: job.kind().to_string(),
        job_file: job_file.path.display().to_string(),
        parts: parts.len(),
        runs,
        pool,
        pool_runs,
        environment,
        settings: RunSettings {
            repeat: options.repeat,
            warmup: options.warmup,
            placement_seed,
            job_seeds: environment::job_seeds(job_file),
            servers,
            local_servers: local_count.filter(|_| options.modes.contains(&Mode::Pool)),
            input_bytes,
        },
        saved: Vec::new(),
        not_run,
        runs_programs,
        warnings,
    };
    let measurement = report.measurement_warnings();
    report.warnings.extend(measurement);
    // Files are written from a result every mode agreed on, never from a disputed one.
    if report.all_match() {
        report.saved = job
            .save(report.reference())
            .map_err(|message| anyhow::anyhow!("{}: {message}", job_file.path.display()))?;
    }
    Ok(report)
}

/// Runs one local mode once, off the async threads.
async fn run_local(
    mode: Mode,
    parts: &[Part],
    shared_data: Option<Arc<SharedData>>,
    options: &RunOptions,
    bar: indicatif::ProgressBar,
) -> anyhow::Result<LocalRun> {
    let (parts, exe, cancel) = (
        parts.to_vec(),
        options.exe.clone(),
        Arc::clone(&options.cancel),
    );
    tokio::task::spawn_blocking(move || {
        let on_part_done = || bar.inc(1);
        let interrupted = |_| anyhow::anyhow!("interrupted");
        match mode {
            Mode::Sequential => {
                local::sequential(&parts, &cancel, &on_part_done).map_err(interrupted)
            }
            Mode::Threaded => local::threaded(&parts, &cancel, &on_part_done).map_err(interrupted),
            Mode::MultiProcess => {
                local::multi_process(&parts, &exe, DataPath::Pipe, &cancel, &on_part_done)
            }
            Mode::SharedMemory => {
                let shared = shared_data.as_deref().expect("placed before the runs");
                local::multi_process(
                    &parts,
                    &exe,
                    DataPath::SharedMemory(shared),
                    &cancel,
                    &on_part_done,
                )
            }
            Mode::Pool => unreachable!("the pool is not a local mode"),
        }
    })
    .await?
}
