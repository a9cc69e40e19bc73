//! `pool-client`: runs a job file's parts on pool servers, beside local sequential,
//! threaded and multi-process runs of the same parts, and prints the comparison.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Parser, Subcommand, ValueEnum};
use pool_client::report::Mode;
use pool_client::{local, run, RunOptions};
use pool_common::jobfile::{self, JobFileError};
use pool_common::jobs::CancelFlag;
use pool_server::cli::ServerArgs;

/// Exit code for a bad job file or command line.
const EXIT_USAGE: u8 = 2;
/// Exit code when interrupted by Ctrl-C.
const EXIT_INTERRUPTED: u8 = 130;

/// Split a job into parts, run them on pool servers, and compare the time with
/// sequential, threaded and multi-process runs of the same parts on this machine.
///
/// Exit codes: 0 success; 1 the job failed (a server unreachable, results that do not
/// match); 2 a bad job file or command line; 130 interrupted.
#[derive(Parser, Debug)]
#[command(version, args_conflicts_with_subcommands = true)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,

    #[command(flatten)]
    run: RunArgs,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run a pool server: the same server as the pool-server program.
    Serve(ServerArgs),
    /// Compute one part read from standard input (the multi-process mode's worker).
    #[command(hide = true)]
    Part,
}

#[derive(Args, Debug)]
struct RunArgs {
    /// The job file (see the README's job file reference).
    job: Option<PathBuf>,

    /// Servers to use instead of the job file's, as host:port,host:port...
    #[arg(long, value_delimiter = ',')]
    servers: Option<Vec<String>>,

    /// Start this many servers on 127.0.0.1 for the run instead (one worker each).
    #[arg(long, value_parser = clap::value_parser!(u16).range(1..=64))]
    local: Option<u16>,

    /// Modes to run, comma-separated.
    #[arg(long, value_enum, value_delimiter = ',', default_values_t = Mode::ALL)]
    modes: Vec<Mode>,

    /// Output: a table for people, or one JSON document for scripts.
    #[arg(long, value_enum, default_value_t = Format::Table)]
    format: Format,

    /// Seed for the random choice of servers, instead of the job file's.
    #[arg(long)]
    seed: Option<u64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Format {
    Table,
    Json,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Some(Command::Serve(args)) => {
            pool_server::cli::init_logging("info");
            exit_on_error(tokio_runtime().and_then(|rt| rt.block_on(pool_server::cli::run(args))))
        }
        Some(Command::Part) => exit_on_error(local::worker_process_main()),
        None => {
            pool_server::cli::init_logging("warn");
            run_job(cli.run)
        }
    }
}

fn run_job(args: RunArgs) -> ExitCode {
    let Some(job_path) = args.job else {
        eprintln!("error: give a job file, e.g. pool-client examples/quickstart.toml (see --help)");
        return ExitCode::from(EXIT_USAGE);
    };
    let mut job_file = match jobfile::read(&job_path) {
        Ok(job_file) => job_file,
        Err(e) => return usage_error(&e),
    };
    if job_file.client.token.is_none() {
        job_file.client.token = std::env::var("POOL_TOKEN").ok().filter(|t| !t.is_empty());
    }
    for server in args.servers.iter().flatten() {
        if let Err(message) = jobfile::check_address(server) {
            eprintln!("error: --servers: {message}");
            return ExitCode::from(EXIT_USAGE);
        }
    }
    let exe = match std::env::current_exe().context("cannot find this program's own path") {
        Ok(exe) => exe,
        Err(e) => return exit_on_error(Err(e)),
    };
    let options = RunOptions {
        modes: args.modes,
        servers: args.servers,
        local_servers: args.local.map(usize::from),
        seed: args.seed,
        exe,
        cancel: Arc::new(CancelFlag::new()),
    };
    let runtime = match tokio_runtime() {
        Ok(runtime) => runtime,
        Err(e) => return exit_on_error(Err(e)),
    };
    let outcome = runtime.block_on(async {
        tokio::select! {
            report = run(&job_file, &options) => Some(report),
            _ = tokio::signal::ctrl_c() => None,
        }
    });
    // On Ctrl-C the run's future was dropped above: its connections are closed and its
    // local servers stopped. The cancel flag stops local kernels and worker processes.
    options.cancel.cancel();
    runtime.shutdown_timeout(Duration::from_secs(2));
    let report = match outcome {
        None => {
            eprintln!("interrupted");
            return ExitCode::from(EXIT_INTERRUPTED);
        }
        Some(Err(e)) => match e.downcast_ref::<JobFileError>() {
            Some(job_error) => return usage_error(job_error),
            None => return exit_on_error(Err(e)),
        },
        Some(Ok(report)) => report,
    };
    match args.format {
        Format::Table => print!("{}", report.table()),
        Format::Json => println!(
            "{}",
            serde_json::to_string_pretty(&report.json()).expect("JSON values serialize")
        ),
    }
    if report.all_match() {
        ExitCode::SUCCESS
    } else {
        eprintln!("error: the modes' results differ; this is a bug in pool, please report it");
        ExitCode::FAILURE
    }
}

fn tokio_runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")
}

fn usage_error(error: &JobFileError) -> ExitCode {
    eprintln!("error: {error}");
    ExitCode::from(EXIT_USAGE)
}

fn exit_on_error(result: anyhow::Result<()>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
