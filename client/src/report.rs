//! What a run prints: the comparison table with the pool's per-server breakdown, one
//! JSON document or CSV for scripts, and the per-part log.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use pool_common::jobs::PartResult;
use serde_json::json;

use crate::dispatch::{AttemptKind, AttemptOutcome, ComputedBy, PartRecord, PoolRun, ShareRecord};
use crate::environment::Environment;
use crate::stats::{
    Interval, Repeat, Summary, AUTO_MAX_RUNS, AUTO_TARGET, BOOTSTRAP_RESAMPLES, OUTLIER_SCORE,
};
use crate::table::Table;
use pool_common::text::counted;

/// The ways to run the same parts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, clap::ValueEnum)]
pub enum Mode {
    /// One thread, parts in order.
    Sequential,
    /// One OS thread per part.
    Threaded,
    /// One child process per part (`processes` is accepted too).
    #[value(name = "multi-process", alias = "processes")]
    MultiProcess,
    /// One child process per part, the data read in place from shared memory.
    #[value(name = "shared-memory")]
    SharedMemory,
    /// The parts sent to pool servers.
    Pool,
}

impl Mode {
    /// Every mode, in the order they run and are shown.
    pub const ALL: [Mode; 5] = [
        Mode::Sequential,
        Mode::Threaded,
        Mode::MultiProcess,
        Mode::SharedMemory,
        Mode::Pool,
    ];

    /// The mode's name in reports.
    pub fn name(self) -> &'static str {
        match self {
            Mode::Sequential => "sequential",
            Mode::Threaded => "threaded",
            Mode::MultiProcess => "multi-process",
            Mode::SharedMemory => "multi-process (shared memory)",
            Mode::Pool => "pool",
        }
    }
}

/// One mode's recorded runs.
#[derive(Debug, Clone)]
pub struct ModeRun {
    /// Which mode.
    pub mode: Mode,
    /// Threads, processes or server workers that computed at once.
    pub workers: usize,
    /// Parts computed per run.
    pub parts: usize,
    /// The median of the recorded runs' wall-clock times (client's monotonic clock).
    pub elapsed: Duration,
    /// The combined result of the first recorded run.
    pub result: PartResult,
    /// Whether every recorded run gave the same result.
    pub consistent: bool,
    /// Every recorded run's wall-clock time, in the order they ran.
    pub samples: Vec<Duration>,
    /// The samples summarised.
    pub summary: Summary,
    /// Every part's time on its own, over the recorded runs (the sequential mode's
    /// only; see [`LocalRun::part_times`](crate::local::LocalRun::part_times)).
    pub part_times: Vec<Duration>,
}

impl ModeRun {
    /// Summarises recorded runs (`samples` and `results` side by side, at least one).
    pub fn new(
        mode: Mode,
        workers: usize,
        parts: usize,
        samples: Vec<Duration>,
        results: Vec<PartResult>,
    ) -> ModeRun {
        let summary = Summary::of(&samples).expect("a mode runs at least once");
        ModeRun {
            mode,
            workers,
            parts,
            elapsed: summary.median,
            result: results[0].clone(),
            consistent: results.iter().all(|r| *r == results[0]),
            samples,
            summary,
            part_times: Vec::new(),
        }
    }

    /// The summary of [`part_times`](ModeRun::part_times), if any were measured.
    pub fn part_summary(&self) -> Option<Summary> {
        Summary::of(&self.part_times)
    }
}

/// How the run was made: what a rerun needs besides the job file.
#[derive(Debug, Clone)]
pub struct RunSettings {
    /// How many runs of each mode were recorded.
    pub repeat: Repeat,
    /// Unrecorded runs per mode before them.
    pub warmup: usize,
    /// The seed of the random placement of parts on servers (given, or drawn).
    pub placement_seed: u64,
    /// The job's own seeds (the generated matrix's), as JSON.
    pub job_seeds: serde_json::Value,
    /// The servers the pool mode used.
    pub servers: Vec<String>,
    /// How many servers were started on this machine for the run, if any.
    pub local_servers: Option<usize>,
    /// Input bytes of all parts together (shipped to servers in the pool mode).
    pub input_bytes: u64,
}

/// One server's share of a pool run, summed over its parts: what explains why the
/// pool is slower or faster than threads.
#[derive(Debug, Clone)]
pub struct ServerBreakdown {
    /// The server's address.
    pub address: String,
    /// Its worker threads.
    pub workers: u32,
    /// Parts it computed.
    pub parts: usize,
    /// Time to connect and complete the handshake, if it ever did.
    pub connect: Option<Duration>,
    /// Time writing its parts' requests and data, summed over parts.
    pub send: Duration,
    /// Time computing, as the server measured it, summed over parts.
    pub compute: Duration,
    /// Round trips less sending and computing, summed over parts: waiting in the
    /// server's queue behind its other parts, network latency, and receiving the reply.
    /// The client cannot tell these apart without comparing two machines' clocks.
    pub wait: Duration,
    /// When its last answer arrived, from the start of the pool run: a server done
    /// long before the others was idle while they worked.
    pub done_at: Duration,
    /// Attempts that failed on this server (their parts were resent elsewhere).
    pub failed_attempts: usize,
    /// Attempts on this server that another copy of their part beat.
    pub lost_attempts: usize,
    /// The last failure seen on this server, if any.
    pub failure: Option<String>,
    /// The job's shared inputs shipped to it, if any.
    pub shared: Option<ShareRecord>,
    /// When it joined the server list during the run, if it did.
    pub joined: Option<Duration>,
    /// When it left the server list during the run, if it did.
    pub left: Option<Duration>,
}

/// Per-server breakdown of one pool run, in address order.
pub fn breakdown(pool: &PoolRun) -> Vec<ServerBreakdown> {
    let mut servers: Vec<ServerBreakdown> = pool
        .servers
        .iter()
        .map(|server| {
            let parts: Vec<_> = pool
                .parts
                .iter()
                .filter(|p| p.computed_by == ComputedBy::Server(server.address.clone()))
                .collect();
            let sum = |f: &dyn Fn(&PartRecord) -> Duration| parts.iter().map(|p| f(p)).sum();
            ServerBreakdown {
                address: server.address.clone(),
                workers: server.workers,
                parts: parts.len(),
                connect: server.connect,
                send: sum(&|p| p.reply.send),
                compute: sum(&|p| p.reply.compute),
                wait: sum(&|p| {
                    p.reply
                        .round_trip
                        .saturating_sub(p.reply.send)
                        .saturating_sub(p.reply.compute)
                }),
                done_at: parts
                    .iter()
                    .map(|p| p.start + p.reply.round_trip)
                    .max()
                    .unwrap_or_default(),
                failed_attempts: pool
                    .parts
                    .iter()
                    .flat_map(PartRecord::failed_attempts)
                    .filter(|f| f.server == server.address)
                    .count(),
                lost_attempts: pool
                    .lost_attempts()
                    .filter(|a| a.server == server.address)
                    .count(),
                failure: server.failure.clone(),
                shared: server.shared,
                joined: server.joined,
                left: server.left,
            }
        })
        .collect();
    servers.sort_by_key(|s| (s.address.parse::<SocketAddr>().ok(), s.address.clone()));
    servers
}

/// Everything a run produced.
#[derive(Debug, Clone)]
pub struct Report {
    /// The job kind.
    pub kind: String,
    /// The job file.
    pub job_file: String,
    /// Parts per mode.
    pub parts: usize,
    /// Each mode that ran, in [`Mode::ALL`] order.
    pub runs: Vec<ModeRun>,
    /// The pool mode's recorded run closest to its median, if the pool mode ran: the
    /// one the table's part lines and breakdown describe.
    pub pool: Option<PoolRun>,
    /// Every recorded pool run, in order (for the per-part log).
    pub pool_runs: Vec<PoolRun>,
    /// The machine and build.
    pub environment: Environment,
    /// How the run was made.
    pub settings: RunSettings,
    /// Files the job wrote from its result (a mandelbrot job's image), once every
    /// mode agreed on it.
    pub saved: Vec<PathBuf>,
    /// Modes asked for but not run, and why.
    pub not_run: Vec<(Mode, String)>,
    /// Whether the job's parts run the user's own program: results that differ between
    /// modes are then the program's doing, not pool's.
    pub runs_programs: bool,
    /// What the reader should know before trusting the figures (a server listed
    /// twice, a busy machine, outliers), one sentence each.
    pub warnings: Vec<String>,
}

/// Part lines are left out of the table above this many parts (the log has them).
const MAX_PART_LINES: usize = 24;

impl Report {
    /// The result every mode is checked against: the sequential one, or else the first.
    pub fn reference(&self) -> &PartResult {
        &self
            .runs
            .iter()
            .find(|r| r.mode == Mode::Sequential)
            .unwrap_or(&self.runs[0])
            .result
    }

    /// Whether every mode's result, on every recorded run, equals the reference.
    pub fn all_match(&self) -> bool {
        self.runs.iter().all(|r| self.matches(r))
    }

    fn matches(&self, run: &ModeRun) -> bool {
        run.consistent && run.result == *self.reference()
    }

    fn sequential_elapsed(&self) -> Option<Duration> {
        self.runs
            .iter()
            .find(|r| r.mode == Mode::Sequential)
            .map(|r| r.elapsed)
    }

    /// Sequential median over this mode's median, if the sequential mode ran.
    pub fn speedup(&self, run: &ModeRun) -> Option<f64> {
        self.sequential_elapsed()
            .map(|s| s.as_secs_f64() / run.elapsed.as_secs_f64())
    }

    /// The best speedup the mode could reach: the parts that can compute at once.
    /// Locally that is min(parts, cores); in the pool min(parts, the servers' workers),
    /// and no more than this machine's cores when every server runs on it (loopback).
    pub fn ideal_speedup(&self, run: &ModeRun) -> usize {
        let cores = self.environment.cores.max(1);
        let usable = match run.mode {
            Mode::Sequential => 1,
            Mode::Threaded | Mode::MultiProcess | Mode::SharedMemory => cores,
            Mode::Pool => {
                let on_this_machine = self.pool.as_ref().is_some_and(|pool| {
                    pool.servers
                        .iter()
                        .all(|server| is_loopback(&server.address))
                });
                if on_this_machine {
                    run.workers.min(cores)
                } else {
                    run.workers
                }
            }
        };
        usable.min(run.parts).max(1)
    }

    /// The speedup over the ideal speedup: 1.0 when the mode got all the parallelism
    /// it could use, whatever the workers it started.
    pub fn of_ideal(&self, run: &ModeRun) -> Option<f64> {
        self.speedup(run)
            .map(|s| s / self.ideal_speedup(run) as f64)
    }

    /// The mode's name as the table, CSV and chart show it.
    pub fn label(&self, run: &ModeRun) -> String {
        match (&self.pool, run.mode) {
            (Some(pool), Mode::Pool) => format!(
                "pool ({})",
                counted(pool.servers.len(), "server", "servers")
            ),
            _ => run.mode.name().to_string(),
        }
    }

    /// The run's first lines: the job, and how the pool handed out parts.
    fn headline(&self) -> Vec<String> {
        let recorded = match self.settings.repeat {
            Repeat::Times(1) => None,
            Repeat::Times(n) => Some(format!("{n} runs per mode")),
            Repeat::Auto { budget } => Some(format!(
                "runs per mode until the median's 95% interval is within ±{:.0}% \
                 (at most {} each)",
                AUTO_TARGET * 100.0,
                seconds(budget)
            )),
        };
        let runs = match (recorded, self.settings.warmup) {
            (None, 0) => String::new(),
            (None, k) => format!(", 1 run per mode after {k} warm-up"),
            (Some(recorded), 0) => format!(", {recorded}"),
            (Some(recorded), k) => format!(", {recorded}, after {k} warm-up"),
        };
        let mut lines = vec![format!(
            "job: {} ({}), {}{runs}",
            self.kind,
            self.job_file,
            counted(self.parts, "part", "parts")
        )];
        if let Some(pool) = &self.pool {
            let scheduling = &pool.scheduling;
            lines.push(format!(
                "pool: {} schedule, {} placement, speculation {}",
                scheduling.schedule.name(),
                scheduling.placement.name(),
                if scheduling.speculate { "on" } else { "off" }
            ));
        }
        lines
    }

    /// The modes side by side: the table every output format shows.
    pub fn modes_table(&self) -> Table {
        let repeated = self.settings.repeat.repeats();
        let auto = matches!(self.settings.repeat, Repeat::Auto { .. });
        let mut header = vec!["mode", "workers", "parts"];
        if auto {
            header.push("runs");
        }
        header.push(if repeated { "median" } else { "elapsed" });
        if repeated {
            header.extend(["95% CI", "min - max"]);
        }
        header.extend(["speedup", "ideal", "of ideal", "result"]);
        let mut table = Table::new(&header, 1);
        for run in &self.runs {
            let mut row = vec![
                self.label(run),
                run.workers.to_string(),
                run.parts.to_string(),
            ];
            if auto {
                row.push(run.summary.runs.to_string());
            }
            row.push(seconds(run.elapsed));
            if repeated {
                row.push(
                    run.summary
                        .median_interval
                        .map_or("-".to_string(), |i| span(i.low, i.high)),
                );
                row.push(span(run.summary.min, run.summary.max));
            }
            row.push(
                self.speedup(run)
                    .map_or("-".to_string(), |s| format!("{s:.2}x")),
            );
            row.push(format!("{}x", self.ideal_speedup(run)));
            row.push(
                self.of_ideal(run)
                    .map_or("-".to_string(), |e| format!("{:.0}%", e * 100.0)),
            );
            row.push(if self.matches(run) { "ok" } else { "MISMATCH" }.to_string());
            table.push(row);
        }
        table
    }

    /// What the per-server table is about: which run, and that its times are sums.
    fn servers_title(&self, pool: &PoolRun) -> String {
        let which = if self.settings.repeat.repeats() {
            format!("the run closest to the median, {}", seconds(pool.elapsed))
        } else {
            seconds(pool.elapsed)
        };
        format!("pool per server ({which}; send, compute and wait are sums over its parts)")
    }

    /// The pool's per-server breakdown, one row per server in address order.
    pub fn servers_table(pool: &PoolRun) -> Table {
        let mut table = Table::new(
            &[
                "server", "workers", "parts", "connect", "send", "compute", "wait", "done at",
                "failed", "lost",
            ],
            1,
        );
        for server in breakdown(pool) {
            table.push(vec![
                server.address,
                server.workers.to_string(),
                server.parts.to_string(),
                server.connect.map_or("-".to_string(), seconds),
                seconds(server.send),
                seconds(server.compute),
                seconds(server.wait),
                seconds(server.done_at),
                server.failed_attempts.to_string(),
                server.lost_attempts.to_string(),
            ]);
        }
        table
    }

    /// The retried parts, grouped: one line per server and reason a part failed for,
    /// then where those parts were computed in the end, with counts (a job of
    /// hundreds of parts on a dead server gives two lines, not hundreds).
    fn retried_lines(pool: &PoolRun) -> Vec<String> {
        let mut failures: BTreeMap<(&str, &str), Vec<usize>> = BTreeMap::new();
        let mut computed_by: BTreeMap<String, usize> = BTreeMap::new();
        for part in pool.retried() {
            for failed in part.failed_attempts() {
                if let AttemptOutcome::Failed(error) = &failed.outcome {
                    failures
                        .entry((failed.server.as_str(), error.as_str()))
                        .or_default()
                        .push(part.part);
                }
            }
            *computed_by.entry(part.computed_by.to_string()).or_default() += 1;
        }
        if computed_by.is_empty() {
            return Vec::new();
        }
        let retried: usize = computed_by.values().sum();
        let mut lines = vec![format!(
            "retried parts: {}",
            counted(retried, "part", "parts")
        )];
        for ((server, error), parts) in failures {
            lines.push(format!(
                "  {} failed on {server}: {error} ({})",
                counted(parts.len(), "part", "parts"),
                part_list(&parts)
            ));
        }
        let moved: Vec<String> = computed_by
            .iter()
            .map(|(by, n)| format!("{n} by {by}"))
            .collect();
        lines.push(format!("  computed in the end: {}", moved.join(", ")));
        lines
    }

    /// The pairs of modes whose medians' 95% intervals overlap: no significant
    /// difference between them at the 5% level.
    pub fn indistinguishable_pairs(&self) -> Vec<(&ModeRun, &ModeRun)> {
        let mut pairs = Vec::new();
        for (i, a) in self.runs.iter().enumerate() {
            for b in &self.runs[i + 1..] {
                if let (Some(x), Some(y)) = (a.summary.median_interval, b.summary.median_interval) {
                    if x.overlaps(&y) {
                        pairs.push((a, b));
                    }
                }
            }
        }
        pairs
    }

    /// The lines under the modes table that say which modes cannot be told apart.
    fn significance_lines(&self) -> Vec<String> {
        let pairs = self.indistinguishable_pairs();
        if pairs.is_empty() {
            return Vec::new();
        }
        let mut lines =
            vec!["no significant difference (their medians' 95% intervals overlap):".to_string()];
        lines.extend(
            pairs
                .iter()
                .map(|(a, b)| format!("  {} and {}", self.label(a), self.label(b))),
        );
        lines
    }

    /// What the reader should know about the measurement itself: a machine busy with
    /// other work, runs far from the others, `--repeat auto` stopped by its budget
    /// before its interval was narrow enough.
    pub fn measurement_warnings(&self) -> Vec<String> {
        let mut warnings = Vec::new();
        let cores = self.environment.cores;
        if let (true, Some(load)) = (
            self.environment.load_at_start.busy(cores),
            self.environment.load_at_start.load_average,
        ) {
            warnings.push(format!(
                "the machine was busy when the run started (load average {load:.2} on {}, \
                 above half a core per core): other programs competed for the cores, so \
                 the times are slower and noisier than on a quiet machine",
                counted(cores, "core", "cores")
            ));
        }
        for run in &self.runs {
            let s = &run.summary;
            if s.outliers > 0 {
                warnings.push(format!(
                    "{}: {} of {} runs {} far from the others (modified z-score above \
                     {OUTLIER_SCORE}): something else may have run meanwhile; --warmup or a \
                     quieter machine helps",
                    self.label(run),
                    s.outliers,
                    s.runs,
                    if s.outliers == 1 { "is" } else { "are" }
                ));
            }
            if let (Repeat::Auto { budget }, Some(interval)) =
                (self.settings.repeat, s.median_interval)
            {
                let width = interval.relative_half_width(s.median);
                if width > AUTO_TARGET {
                    let stopped_by = if s.runs >= AUTO_MAX_RUNS {
                        format!("stopped at the cap of {AUTO_MAX_RUNS} runs")
                    } else {
                        format!(
                            "the {} budget ran out after {} runs",
                            seconds(budget),
                            s.runs
                        )
                    };
                    warnings.push(format!(
                        "{}: {stopped_by} with the median's interval at ±{:.1}% (wanted ±{:.0}%)",
                        self.label(run),
                        width * 100.0,
                        AUTO_TARGET * 100.0
                    ));
                }
            }
        }
        warnings
    }

    /// How long one part takes with the machine to itself, from the sequential mode:
    /// the paper's "one run", and the floor under every parallel row (no mode ends
    /// before its longest part).
    fn one_part_line(&self) -> Option<String> {
        let run = self.runs.iter().find(|run| run.mode == Mode::Sequential)?;
        let parts = run.part_summary().filter(|_| self.parts > 1)?;
        Some(format!(
            "one part alone: {} (median of the sequential mode's {} part times; the longest \
             {}): no mode can finish sooner than its longest part",
            seconds(parts.median),
            parts.runs,
            seconds(parts.max)
        ))
    }

    /// What the pipes copy that shared memory does not, when both ran on a job with
    /// data.
    fn data_copied_line(&self) -> Option<String> {
        let both_ran = [Mode::MultiProcess, Mode::SharedMemory]
            .iter()
            .all(|mode| self.runs.iter().any(|run| run.mode == *mode));
        (self.settings.input_bytes > 0 && both_ran).then(|| {
            format!(
                "data copied per run: multi-process {} (the parts' {} into pipes, and out of them \
                 into the children); shared memory none (placed once before the runs, each child \
                 maps its block)",
                mebibytes(2 * self.settings.input_bytes),
                mebibytes(self.settings.input_bytes)
            )
        })
    }

    /// One line per server that joined or left the server list during the run.
    fn membership_lines(pool: &PoolRun) -> Vec<String> {
        let mut lines = Vec::new();
        for server in breakdown(pool) {
            for (what, at) in [("joined", server.joined), ("left", server.left)] {
                if let Some(at) = at {
                    lines.push(format!(
                        "{} {what} the server list at {}",
                        server.address,
                        seconds(at)
                    ));
                }
            }
        }
        lines
    }

    /// The report as a human-readable table: the pool's parts above it, the pool's
    /// per-server breakdown under it.
    pub fn table(&self) -> String {
        let mut out = String::new();
        for line in self.headline() {
            let _ = writeln!(out, "{line}");
        }
        for warning in &self.warnings {
            let _ = writeln!(out, "warning: {warning}");
        }
        if let Some(pool) = &self.pool {
            if pool.parts.len() <= MAX_PART_LINES {
                let _ = writeln!(
                    out,
                    "\n{:>4}  {:<22} {:>10} {:>11}",
                    "part", "server", "compute", "round trip"
                );
                for part in &pool.parts {
                    let _ = writeln!(
                        out,
                        "{:>4}  {:<22} {:>10} {:>11}",
                        part.part,
                        part.computed_by.to_string(),
                        seconds(part.reply.compute),
                        seconds(part.reply.round_trip)
                    );
                }
            }
            let retried = Self::retried_lines(pool);
            if !retried.is_empty() {
                let _ = writeln!(out, "\n{}", retried.join("\n"));
            }
            let copies: Vec<_> = pool
                .parts
                .iter()
                .flat_map(|p| p.attempts.iter().map(move |a| (p, a)))
                .filter(|(_, a)| a.kind == AttemptKind::Copy)
                .collect();
            if !copies.is_empty() {
                let won = copies
                    .iter()
                    .filter(|(_, a)| a.outcome == AttemptOutcome::Won)
                    .count();
                let _ = writeln!(
                    out,
                    "\nspeculation: {} of slow parts, {won} finished first; server time spent twice: {}",
                    counted(copies.len(), "copy", "copies"),
                    seconds(pool.time_spent_twice())
                );
                for (part, copy) in copies {
                    let _ = writeln!(
                        out,
                        "  part {} on {} ({}): {}",
                        part.part,
                        copy.server,
                        copy.reason,
                        if copy.outcome == AttemptOutcome::Won {
                            "won"
                        } else {
                            "lost"
                        }
                    );
                }
            }
        }
        let _ = write!(out, "\n{}", self.modes_table().text());
        for (mode, reason) in &self.not_run {
            let _ = writeln!(out, "{} not run: {reason}", mode.name());
        }
        for line in self
            .one_part_line()
            .into_iter()
            .chain(self.significance_lines())
        {
            let _ = writeln!(out, "{line}");
        }
        if let Some(line) = self.data_copied_line() {
            let _ = writeln!(out, "{line}");
        }
        if let Some(pool) = &self.pool {
            let _ = writeln!(out, "\n{}:", self.servers_title(pool));
            out.push_str(&Self::servers_table(pool).text());
            for line in Self::membership_lines(pool) {
                let _ = writeln!(out, "{line}");
            }
        }
        let _ = writeln!(out, "\nresult: {}", self.reference());
        for path in &self.saved {
            let _ = writeln!(out, "written: {}", path.display());
        }
        out
    }

    /// The tables as Markdown, ready to paste into a report: the job line, the modes,
    /// the pool per server, the result.
    pub fn markdown(&self) -> String {
        let mut out = self.headline().join("  \n") + "\n\n";
        for warning in &self.warnings {
            let _ = writeln!(out, "> warning: {warning}\n");
        }
        out.push_str(&self.modes_table().markdown());
        for (mode, reason) in &self.not_run {
            let _ = write!(out, "\n{} not run: {reason}\n", mode.name());
        }
        let notes: Vec<String> = self
            .one_part_line()
            .into_iter()
            .chain(self.significance_lines())
            .collect();
        if !notes.is_empty() {
            let _ = write!(out, "\n{}\n", notes.join("  \n"));
        }
        if let Some(line) = self.data_copied_line() {
            let _ = write!(out, "\n{line}\n");
        }
        if let Some(pool) = &self.pool {
            let _ = write!(out, "\n{}:\n\n", self.servers_title(pool));
            out.push_str(&Self::servers_table(pool).markdown());
            for line in Self::membership_lines(pool) {
                let _ = write!(out, "\n{line}\n");
            }
        }
        let _ = writeln!(out, "\nresult: `{}`", self.reference());
        out
    }

    /// The tables as LaTeX `table` floats with booktabs rules, their captions saying
    /// what ran and how.
    pub fn latex(&self) -> String {
        let mut caption = self.headline();
        for (mode, reason) in &self.not_run {
            caption.push(format!("{} not run: {reason}", mode.name()));
        }
        caption.extend(self.one_part_line());
        caption.extend(
            self.significance_lines()
                .into_iter()
                .map(|l| l.trim().to_string()),
        );
        caption.extend(self.data_copied_line());
        caption.push(format!("result {}", self.reference()));
        let mut out: String = self
            .warnings
            .iter()
            .map(|warning| format!("% warning: {warning}\n"))
            .collect();
        out.push_str(&self.modes_table().latex(&(caption.join(". ") + ".")));
        if let Some(pool) = &self.pool {
            out.push('\n');
            let mut caption = vec![self.servers_title(pool)];
            caption.extend(Self::membership_lines(pool));
            out.push_str(&Self::servers_table(pool).latex(&(caption.join(". ") + ".")));
        }
        out
    }

    /// The report as one JSON document. Results are strings: they may exceed 2^53.
    pub fn json(&self) -> serde_json::Value {
        let modes: Vec<_> = self
            .runs
            .iter()
            .map(|run| {
                let s = &run.summary;
                json!({
                    "mode": run.mode.name(),
                    "label": self.label(run),
                    "workers": run.workers,
                    "parts": run.parts,
                    "elapsed_s": run.elapsed.as_secs_f64(),
                    "runs_s": run.samples.iter().map(Duration::as_secs_f64).collect::<Vec<_>>(),
                    "median_s": s.median.as_secs_f64(),
                    "min_s": s.min.as_secs_f64(),
                    "max_s": s.max.as_secs_f64(),
                    "mean_s": s.mean.as_secs_f64(),
                    "stddev_s": s.stddev.as_secs_f64(),
                    "median_ci95_s": s.median_interval.map(interval_json),
                    "mean_ci95_s": s.mean_interval.map(interval_json),
                    "outliers": s.outliers,
                    "part_median_s": run.part_summary().map(|p| p.median.as_secs_f64()),
                    "part_max_s": run.part_summary().map(|p| p.max.as_secs_f64()),
                    "speedup": self.speedup(run),
                    "ideal_speedup": self.ideal_speedup(run),
                    "of_ideal": self.of_ideal(run),
                    "result": run.result.to_string(),
                    "ok": self.matches(run),
                })
            })
            .collect();
        let pool = self.pool.as_ref().map(|pool| {
            json!({
                "elapsed_s": pool.elapsed.as_secs_f64(),
                "servers": breakdown(pool).iter().map(|s| json!({
                    "address": s.address,
                    "workers": s.workers,
                    "parts": s.parts,
                    "connect_s": s.connect.map(|c| c.as_secs_f64()),
                    "send_s": s.send.as_secs_f64(),
                    "compute_s": s.compute.as_secs_f64(),
                    "wait_s": s.wait.as_secs_f64(),
                    "done_at_s": s.done_at.as_secs_f64(),
                    "shared_bytes_sent": s.shared.map_or(0, |shared| shared.bytes),
                    "failed_attempts": s.failed_attempts,
                    "lost_attempts": s.lost_attempts,
                    "failure": s.failure,
                    "joined_at_s": s.joined.map(|at| at.as_secs_f64()),
                    "left_at_s": s.left.map(|at| at.as_secs_f64()),
                })).collect::<Vec<_>>(),
                "schedule": pool.scheduling.schedule.name(),
                "placement": pool.scheduling.placement.name(),
                "speculate": pool.scheduling.speculate,
                "time_spent_twice_s": pool.time_spent_twice().as_secs_f64(),
                "parts": pool.parts.iter().map(|p| json!({
                    "part": p.part,
                    "server": p.computed_by.to_string(),
                    "attempt": p.attempt(),
                    "attempts": p.attempts.iter().map(|a| json!({
                        "server": a.server,
                        "kind": a.kind.name(),
                        "reason": a.reason,
                        "start_s": a.start.as_secs_f64(),
                        "end_s": a.end.as_secs_f64(),
                        "outcome": a.outcome.name(),
                        "error": match &a.outcome {
                            AttemptOutcome::Failed(error) => Some(error),
                            _ => None,
                        },
                    })).collect::<Vec<_>>(),
                    "start_s": p.start.as_secs_f64(),
                    "send_s": p.reply.send.as_secs_f64(),
                    "compute_s": p.reply.compute.as_secs_f64(),
                    "round_trip_s": p.reply.round_trip.as_secs_f64(),
                    "bytes_sent": p.bytes_sent,
                    "bytes_received": p.bytes_received,
                })).collect::<Vec<_>>(),
            })
        });
        let settings = &self.settings;
        json!({
            "job": self.kind,
            "job_file": self.job_file,
            "parts": self.parts,
            "result": self.reference().to_string(),
            "ok": self.all_match(),
            "saved": self.saved.iter().map(|p| p.display().to_string()).collect::<Vec<_>>(),
            "environment": self.environment.json(),
            "settings": {
                "repeat": match settings.repeat {
                    Repeat::Times(n) => json!(n),
                    Repeat::Auto { .. } => json!("auto"),
                },
                "repeat_budget_s": match settings.repeat {
                    Repeat::Times(_) => None,
                    Repeat::Auto { budget } => Some(budget.as_secs_f64()),
                },
                "warmup": settings.warmup,
                "placement_seed": settings.placement_seed.to_string(),
                "job_seeds": settings.job_seeds,
                "servers": settings.servers,
                "local_servers": settings.local_servers,
                "input_bytes": settings.input_bytes,
            },
            "modes": modes,
            "statistics": {
                "median_interval": format!(
                    "95% percentile bootstrap of the median, {BOOTSTRAP_RESAMPLES} resamples"
                ),
                "mean_interval": "95% Student's t interval of the mean",
                "outliers": format!("modified z-score above {OUTLIER_SCORE}"),
                "no_significant_difference": self
                    .indistinguishable_pairs()
                    .iter()
                    .map(|(a, b)| [self.label(a), self.label(b)])
                    .collect::<Vec<_>>(),
            },
            "warnings": self.warnings,
            "not_run": self.not_run.iter().map(|(mode, reason)| json!({
                "mode": mode.name(),
                "reason": reason,
            })).collect::<Vec<_>>(),
            "pool": pool,
        })
    }

    /// The modes as CSV: a header line, then one line per mode. Times in seconds.
    pub fn csv(&self) -> String {
        let mut out = String::from(
            "mode,label,workers,parts,runs,median_s,min_s,max_s,mean_s,stddev_s,median_ci_low_s,median_ci_high_s,mean_ci_low_s,mean_ci_high_s,outliers,speedup,ideal_speedup,of_ideal,result,ok\n",
        );
        let number = |v: Option<f64>| v.map_or(String::new(), |v| v.to_string());
        for run in &self.runs {
            let s = &run.summary;
            let _ = writeln!(
                out,
                "{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{}",
                run.mode.name(),
                csv_field(&self.label(run)),
                run.workers,
                run.parts,
                s.runs,
                s.median.as_secs_f64(),
                s.min.as_secs_f64(),
                s.max.as_secs_f64(),
                s.mean.as_secs_f64(),
                s.stddev.as_secs_f64(),
                number(s.median_interval.map(|i| i.low.as_secs_f64())),
                number(s.median_interval.map(|i| i.high.as_secs_f64())),
                number(s.mean_interval.map(|i| i.low.as_secs_f64())),
                number(s.mean_interval.map(|i| i.high.as_secs_f64())),
                s.outliers,
                number(self.speedup(run)),
                self.ideal_speedup(run),
                number(self.of_ideal(run)),
                run.result,
                self.matches(run)
            );
        }
        out
    }

    /// The per-part log of every recorded pool run, tab-separated like GNU parallel's
    /// joblog: a header line, then one line per attempt at a part, with why it went
    /// where it went.
    pub fn part_log(&self) -> String {
        let mut out = String::from(
            "run\tpart\tserver\tattempt\tkind\tstart_s\tduration_s\tbytes_sent\tbytes_received\tstatus\treason\n",
        );
        let clean = |text: &str| text.replace(['\t', '\n'], " ");
        for (run, pool) in self.pool_runs.iter().enumerate() {
            for server in &pool.servers {
                if let Some(shared) = &server.shared {
                    let _ = writeln!(
                        out,
                        "{}\t-\t{}\t-\tshare\t{:.6}\t{:.6}\t{}\t0\tok\tthe job's shared inputs, once per connection",
                        run + 1,
                        server.address,
                        shared.start.as_secs_f64(),
                        shared.duration.as_secs_f64(),
                        shared.bytes,
                    );
                }
            }
            for p in &pool.parts {
                for (number, attempt) in p.attempts.iter().enumerate() {
                    let (sent, received) = match attempt.outcome {
                        AttemptOutcome::Won => {
                            (p.bytes_sent.to_string(), p.bytes_received.to_string())
                        }
                        _ => ("-".into(), "-".into()),
                    };
                    let status = match &attempt.outcome {
                        AttemptOutcome::Won => "ok".to_string(),
                        AttemptOutcome::Failed(error) => format!("failed: {}", clean(error)),
                        AttemptOutcome::Lost => "lost: another copy answered first".to_string(),
                    };
                    let _ = writeln!(
                        out,
                        "{}\t{}\t{}\t{}\t{}\t{:.6}\t{:.6}\t{sent}\t{received}\t{status}\t{}",
                        run + 1,
                        p.part,
                        attempt.server,
                        number + 1,
                        attempt.kind.name(),
                        attempt.start.as_secs_f64(),
                        attempt.duration().as_secs_f64(),
                        clean(&attempt.reason),
                    );
                }
                if p.computed_by == ComputedBy::LocalFallback {
                    let _ = writeln!(
                        out,
                        "{}\t{}\t{}\t{}\tfallback\t{:.6}\t{:.6}\t0\t0\tok\tevery attempt failed",
                        run + 1,
                        p.part,
                        p.computed_by,
                        p.attempt(),
                        p.start.as_secs_f64(),
                        p.reply.round_trip.as_secs_f64(),
                    );
                }
            }
        }
        out
    }
}

/// Part numbers for a line: the first few, and how many more.
fn part_list(parts: &[usize]) -> String {
    const SHOWN: usize = 8;
    let shown: Vec<String> = parts.iter().take(SHOWN).map(usize::to_string).collect();
    let word = if parts.len() == 1 { "part" } else { "parts" };
    match parts.len().checked_sub(SHOWN) {
        Some(more) if more > 0 => format!("{word} {} and {more} more", shown.join(", ")),
        _ => format!("{word} {}", shown.join(", ")),
    }
}

/// Whether a `host:port` names this machine: a server there shares its cores.
fn is_loopback(address: &str) -> bool {
    let host = address
        .rsplit_once(':')
        .map_or(address, |(host, _)| host)
        .trim_start_matches('[')
        .trim_end_matches(']');
    host.eq_ignore_ascii_case("localhost")
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// Quotes a CSV field if it holds a comma, a quote or a line break (RFC 4180).
fn csv_field(field: &str) -> String {
    if field.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", field.replace('"', "\"\""))
    } else {
        field.to_string()
    }
}

/// `low - high` for a table.
fn span(low: Duration, high: Duration) -> String {
    format!("{} - {}", seconds(low), seconds(high))
}

/// An interval as JSON: `[low_s, high_s]`.
fn interval_json(interval: Interval) -> serde_json::Value {
    json!([interval.low.as_secs_f64(), interval.high.as_secs_f64()])
}

/// A duration for a table: seconds with two decimals, or milliseconds or microseconds
/// for short ones.
pub fn seconds(d: Duration) -> String {
    let s = d.as_secs_f64();
    if s >= 1.0 {
        format!("{s:.2} s")
    } else if s >= 1e-3 {
        format!("{:.1} ms", s * 1e3)
    } else {
        format!("{:.0} µs", s * 1e6)
    }
}

/// A size in MiB, for the table.
fn mebibytes(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / f64::from(1u32 << 20))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn servers_on_loopback_are_on_this_machine() {
        for address in [
            "127.0.0.1:7000",
            "127.3.2.1:1",
            "localhost:7000",
            "[::1]:7000",
        ] {
            assert!(is_loopback(address), "{address}");
        }
        for address in ["10.0.0.2:7000", "lab1:7000", "[fe80::1]:7000"] {
            assert!(!is_loopback(address), "{address}");
        }
    }

    #[test]
    fn csv_fields_are_quoted_when_needed() {
        assert_eq!(csv_field("pool (3 servers)"), "pool (3 servers)");
        assert_eq!(csv_field("a,b"), "\"a,b\"");
        assert_eq!(csv_field("say \"hi\""), "\"say \"\"hi\"\"\"");
    }
}
