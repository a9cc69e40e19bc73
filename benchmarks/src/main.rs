//! `pool-bench`: measures what the pool costs beyond the work itself, against the
//! limits of this machine measured in the same run.
//!
//! It starts its own servers (real `pool-server` processes: this program run as
//! `pool-bench serve`) and baselines (a raw TCP echo server and sink) on 127.0.0.1
//! port 0, runs its scenarios several times, and prints one table: each figure is the
//! median over the runs, beside its baseline and their ratio. See benchmarks/README.md.
//!
//! `pool-bench soak --minutes N` is another thing: it drives one server for N minutes
//! with normal and hostile clients and records the server's memory, descriptors and
//! threads over time (see [`soak`]).

mod figures;
mod procs;
mod scenarios;
mod soak;

use std::process::ExitCode;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use pool_server::cli::ServerArgs;
use serde_json::json;

use figures::Figure;
use scenarios::Settings;

/// Measure pool's per-part overhead, throughput and scaling against baselines measured
/// in the same run (raw TCP echo and transfer over loopback, threads, processes).
#[derive(Parser, Debug)]
#[command(args_conflicts_with_subcommands = true)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,

    #[command(flatten)]
    bench: BenchArgs,
}

#[derive(Args, Debug)]
struct BenchArgs {
    /// A short version (small sizes, one run, a few seconds), for tests.
    #[arg(long)]
    quick: bool,

    /// Print one JSON document instead of the table.
    #[arg(long)]
    json: bool,

    /// Repetitions of each scenario; figures are medians [default: 5, or 1 with --quick].
    /// Scenarios 2, 4, 5, 6, 7, 9, 10 and 12 take tens of seconds per repetition and use at most 3;
    /// scenario 13 (the server models) runs each point once.
    #[arg(long)]
    runs: Option<usize>,

    /// Run only these scenarios (1-13), comma-separated.
    #[arg(long, value_delimiter = ',')]
    only: Option<Vec<u8>>,

    /// Draw the skewed pool's timelines (scenario 7), the LAN charts (scenario 11) and
    /// the server models' chart (scenario 13) as SVG files in DIR.
    #[arg(long, value_name = "DIR", visible_alias = "charts")]
    timelines: Option<std::path::PathBuf>,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Drive one pool server for N minutes with a mix of normal jobs (results checked),
    /// hostile connections, clients killed mid-part and stalled connections, sampling its
    /// memory, file descriptors and threads.
    Soak(soak::SoakArgs),
    /// The soak's client process, killed mid-part: sends a long part to ADDRESS.
    #[command(hide = true)]
    SoakClient {
        /// The server's `host:port`.
        address: String,
    },
    /// A pool server (the same as pool-server).
    #[command(hide = true)]
    Serve(ServerArgs),
    /// The multi-process mode's worker: one part from standard input.
    #[command(hide = true)]
    Part,
    /// A raw TCP echo server on 127.0.0.1 port 0.
    #[command(hide = true)]
    Echo,
    /// A raw TCP sink on port 0.
    #[command(hide = true)]
    Sink {
        /// The address to listen on.
        #[arg(long, default_value = "127.0.0.1")]
        bind: std::net::IpAddr,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Some(Command::Serve(args)) => {
            pool_server::cli::init_logging("warn");
            runtime().and_then(|rt| rt.block_on(pool_server::cli::run(args)))
        }
        Some(Command::Soak(args)) => runtime().and_then(|rt| rt.block_on(soak::run(args))),
        Some(Command::SoakClient { address }) => {
            runtime().and_then(|rt| rt.block_on(soak::client_main(address)))
        }
        Some(Command::Part) => pool_client::local::worker_process_main(None),
        Some(Command::Echo) => runtime().and_then(|rt| rt.block_on(procs::echo_main())),
        Some(Command::Sink { bind }) => {
            runtime().and_then(|rt| rt.block_on(procs::sink_main(bind)))
        }
        None => runtime().and_then(|rt| rt.block_on(bench(cli.bench))),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")
}

async fn bench(args: BenchArgs) -> anyhow::Result<()> {
    let settings = Settings {
        quick: args.quick,
        runs: args.runs.unwrap_or(if args.quick { 1 } else { 5 }).max(1),
        cores: std::thread::available_parallelism().map_or(1, |n| n.get()),
    };
    let machine = machine();
    let command: Vec<String> = std::env::args().collect();
    if !args.json {
        println!("pool-bench: {}", command.join(" "));
        println!("date: {}", machine["date"].as_str().unwrap_or_default());
        println!(
            "machine: {}, {} cores, {} GiB memory, load average at start {}",
            machine["cpu"].as_str().unwrap_or_default(),
            settings.cores,
            machine["memory_gib"],
            machine["load_average"].as_str().unwrap_or_default(),
        );
        println!(
            "figures are medians of {} run(s) ({} for the heavy scenarios); ratio = figure / baseline, per run, then the median",
            settings.runs,
            settings.heavy_runs()
        );
    }
    let wanted = |n: u8| args.only.as_ref().is_none_or(|only| only.contains(&n));
    let started = Instant::now();
    let mut figures: Vec<Figure> = Vec::new();
    for n in 1..=13u8 {
        if !wanted(n) {
            continue;
        }
        let scenario_started = Instant::now();
        let mut these = match n {
            1 => scenarios::overhead::run(&settings).await,
            2 => scenarios::scaling::run(&settings).await,
            3 => scenarios::shipping::run(&settings).await,
            4 => scenarios::connections::run(&settings).await,
            5 => scenarios::spawning::run(&settings).await,
            6 => scenarios::paper::run(&settings).await,
            7 => scenarios::skewed::run(&settings, args.timelines.as_deref()).await,
            8 => scenarios::float_sum::run(&settings).await,
            9 => scenarios::kernels::run(&settings).await,
            10 => scenarios::matmul::run(&settings).await,
            11 => scenarios::lan::run(&settings, args.timelines.as_deref()).await,
            12 => scenarios::peers::run(&settings).await,
            _ => scenarios::models::run(&settings, args.timelines.as_deref()).await,
        }
        .with_context(|| format!("scenario {n}"))?;
        if !args.json {
            print!("{}", figures::table(&these));
            println!(
                "(scenario {n} took {:.1} s)",
                scenario_started.elapsed().as_secs_f64()
            );
        }
        figures.append(&mut these);
    }
    let missed: Vec<&Figure> = figures.iter().filter(|f| f.met() == Some(false)).collect();
    if args.json {
        let doc = json!({
            "command": command,
            "machine": machine,
            "quick": settings.quick,
            "runs": settings.runs,
            "heavy_runs": settings.heavy_runs(),
            "elapsed_s": started.elapsed().as_secs_f64(),
            "figures": figures.iter().map(Figure::json).collect::<Vec<_>>(),
        });
        println!("{}", serde_json::to_string_pretty(&doc)?);
    } else {
        println!(
            "\n{} figures, {} with a goal: {} met, {} missed; {:.1} s in all",
            figures.len(),
            figures.iter().filter(|f| f.goal.is_some()).count(),
            figures.iter().filter(|f| f.met() == Some(true)).count(),
            missed.len(),
            started.elapsed().as_secs_f64()
        );
        for f in missed {
            println!("missed: [{}] {}", f.scenario, f.name);
        }
    }
    Ok(())
}

/// What this machine is: CPU model, memory, load, and the date (UTC).
fn machine() -> serde_json::Value {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let cpu = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .map(|rest| rest.trim_start_matches([' ', '\t', ':']).to_string())
        .unwrap_or_else(|| "unknown CPU".into());
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let mem_kib: f64 = meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|rest| rest.split_whitespace().next()?.parse().ok())
        .unwrap_or(0.0);
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let load: Vec<&str> = load.split_whitespace().take(3).collect();
    json!({
        "cpu": cpu,
        "cores": std::thread::available_parallelism().map_or(1, |n| n.get()),
        "memory_gib": (mem_kib / (1 << 20) as f64 * 10.0).round() / 10.0,
        "load_average": load.join(" "),
        "date": utc_now(),
    })
}

/// The current time as `YYYY-MM-DD HH:MM UTC`.
fn utc_now() -> String {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs()) as i64;
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02} UTC",
        rem / 3600,
        rem % 3600 / 60
    )
}
