//! What people keep from a run: JSON and CSV that parse back to the run's numbers,
//! repeated runs, the per-part log, the chart, `status`, and output free of progress
//! bars when it is not a terminal.

mod support;

use std::time::Duration;

use pool_client::connection::ConnectOptions;
use pool_client::report::Mode;
use pool_client::stats::Repeat;
use support::{addresses, job_file, options, run_client, start_servers, stderr, stdout};

/// A small loop job: quick in every mode, even in a debug build.
const SMALL_LOOP: &str = "parts = 4\n[job]\nkind = \"loop\"\niterations = 400000\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_and_csv_parse_back_and_hold_the_numbers_of_the_run() {
    let servers = start_servers(2, 1).await;
    let mut opts = options(addresses(&servers));
    opts.repeat = Repeat::Times(2);
    let report = pool_client::run(&job_file(SMALL_LOOP), &opts)
        .await
        .unwrap();

    // JSON: through text and back, as a script would read it.
    let json: serde_json::Value =
        serde_json::from_str(&serde_json::to_string_pretty(&report.json()).unwrap()).unwrap();
    assert_eq!(json["ok"], true);
    assert_eq!(json["result"], report.reference().to_string());
    assert_eq!(json["settings"]["repeat"], 2);
    // A string: seeds may exceed what a JSON number holds exactly (2^53).
    assert_eq!(json["settings"]["placement_seed"], "1");
    assert_eq!(
        json["settings"]["servers"],
        serde_json::json!(addresses(&servers))
    );
    for key in ["cpu_model", "cores", "os", "build_profile", "pool_version"] {
        assert!(!json["environment"][key].is_null(), "environment.{key}");
    }
    let modes = json["modes"].as_array().unwrap();
    assert_eq!(modes.len(), report.runs.len());
    for (mode, run) in modes.iter().zip(&report.runs) {
        assert_eq!(mode["mode"], run.mode.name());
        assert_eq!(mode["workers"], run.workers);
        let runs: Vec<f64> = mode["runs_s"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_f64().unwrap())
            .collect();
        let expected: Vec<f64> = run.samples.iter().map(Duration::as_secs_f64).collect();
        assert_eq!(runs, expected);
        assert_eq!(mode["median_s"], run.summary.median.as_secs_f64());
        assert_eq!(mode["stddev_s"], run.summary.stddev.as_secs_f64());
        assert_eq!(mode["speedup"], report.speedup(run).unwrap());
        // The ideal is the parallelism the mode could use: 4 parts on this machine's
        // cores, or on the workers of the servers (two with one each, unless one
        // connected after the other had done every part), which share those cores.
        let cores = report.environment.cores;
        let ideal = match run.mode {
            Mode::Sequential => 1,
            Mode::Threaded | Mode::MultiProcess | Mode::SharedMemory => cores.min(4),
            Mode::Pool => {
                assert!((1..=2).contains(&run.workers), "{}", run.workers);
                cores.min(run.workers)
            }
        };
        assert_eq!(mode["ideal_speedup"], ideal, "{}", run.mode.name());
        let of_ideal = mode["of_ideal"].as_f64().unwrap();
        assert!((of_ideal * ideal as f64 - report.speedup(run).unwrap()).abs() < 1e-9);
    }
    let pool = &json["pool"];
    assert_eq!(pool["parts"].as_array().unwrap().len(), 4);
    let served: u64 = pool["servers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["parts"].as_u64().unwrap())
        .sum();
    assert_eq!(served, 4);

    // CSV: a header and one line per mode, numbers equal to the report's.
    let csv = report.csv();
    let mut lines = csv.lines();
    let header: Vec<&str> = lines.next().unwrap().split(',').collect();
    let column = |name: &str| header.iter().position(|h| *h == name).unwrap();
    let rows: Vec<Vec<&str>> = lines.map(|l| l.split(',').collect()).collect();
    assert_eq!(rows.len(), report.runs.len());
    for (row, run) in rows.iter().zip(&report.runs) {
        assert_eq!(row.len(), header.len(), "{row:?}");
        assert_eq!(row[column("mode")], run.mode.name());
        assert_eq!(row[column("runs")], "2");
        let median: f64 = row[column("median_s")].parse().unwrap();
        assert_eq!(median, run.summary.median.as_secs_f64());
        let min: f64 = row[column("min_s")].parse().unwrap();
        let max: f64 = row[column("max_s")].parse().unwrap();
        assert!(min <= median && median <= max);
        assert_eq!(row[column("result")], report.reference().to_string());
        assert_eq!(row[column("ok")], "true");
    }
    for server in servers {
        server.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repeat_records_n_runs_per_mode_after_unrecorded_warmups() {
    let servers = start_servers(2, 1).await;
    let mut opts = options(addresses(&servers));
    opts.repeat = Repeat::Times(3);
    opts.warmup = 1;
    // No copies, so that the servers serve exactly the parts of each run.
    let job = job_file(&format!("speculate = false\n{SMALL_LOOP}"));
    let report = pool_client::run(&job, &opts).await.unwrap();
    assert_eq!(report.runs.len(), 4);
    for run in &report.runs {
        assert_eq!(run.samples.len(), 3, "{:?}", run.mode);
        assert_eq!(run.summary.runs, 3);
        assert!(run.summary.min <= run.elapsed && run.elapsed <= run.summary.max);
    }
    assert_eq!(report.pool_runs.len(), 3);
    assert!(report.all_match());
    let table = report.table();
    assert!(
        table.contains("3 runs per mode, after 1 warm-up"),
        "{table}"
    );
    assert!(table.contains("min - max"), "{table}");
    for address in addresses(&servers) {
        assert!(
            table
                .lines()
                .any(|l| l.starts_with(&address) && l.ends_with(" 0")),
            "no breakdown line for {address} in\n{table}"
        );
    }

    // The log has every part of every recorded run, and nothing of the warm-up.
    let log = report.part_log();
    let mut lines = log.lines();
    assert_eq!(
        lines.next().unwrap(),
        "run\tpart\tserver\tattempt\tkind\tstart_s\tduration_s\tbytes_sent\tbytes_received\tstatus\treason"
    );
    let rows: Vec<Vec<&str>> = lines.map(|l| l.split('\t').collect()).collect();
    assert_eq!(rows.len(), 3 * 4);
    for row in &rows {
        assert_eq!(row.len(), 11);
        assert!(addresses(&servers).contains(&row[2].to_string()));
        assert_eq!((row[3], row[4]), ("1", "first"));
        assert!(row[7].parse::<u64>().unwrap() > 0);
        assert_eq!(row[9], "ok");
        assert!(row[10].starts_with("least loaded, est. done in"), "{row:?}");
    }

    // The warm-up did run: the servers served 1 + 3 runs' parts.
    let states =
        pool_client::status::query_all(&addresses(&servers), &ConnectOptions::default()).await;
    let served: u64 = states
        .iter()
        .map(|s| s.answer.as_ref().unwrap().0.parts_served)
        .sum();
    assert_eq!(served, 4 * 4);
    for server in servers {
        server.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_chart_is_valid_svg_naming_every_mode_and_server() {
    let servers = start_servers(2, 1).await;
    let report = pool_client::run(&job_file(SMALL_LOOP), &options(addresses(&servers)))
        .await
        .unwrap();
    let svg = pool_client::chart::svg(&report).unwrap();
    let document = roxmltree::Document::parse(&svg).expect("well-formed XML");
    assert_eq!(document.root_element().tag_name().name(), "svg");
    let text: String = document
        .descendants()
        .filter(|n| n.is_text())
        .map(|n| n.text().unwrap().trim().to_string() + "\n")
        .collect();
    for run in &report.runs {
        assert!(
            text.contains(&report.label(run)),
            "{} missing",
            report.label(run)
        );
    }
    for address in addresses(&servers) {
        assert!(text.contains(&address), "{address} missing");
    }

    // Without the pool there is no server panel, and still a valid chart.
    let mut opts = options(Vec::new());
    opts.modes = vec![Mode::Sequential, Mode::Threaded];
    let report = pool_client::run(&job_file(SMALL_LOOP), &opts)
        .await
        .unwrap();
    let svg = pool_client::chart::svg(&report).unwrap();
    roxmltree::Document::parse(&svg).expect("well-formed XML");
    assert!(svg.contains("threaded") && !svg.contains("pool per server"));
    // Short runs read in the unit the table uses, not as 0.000 s.
    for run in &report.runs {
        let label = pool_client::report::seconds(run.summary.median);
        assert!(svg.contains(&label), "{label} missing");
    }
    let slowest = report.runs.iter().map(|r| r.summary.max).max().unwrap();
    if slowest < Duration::from_millis(1) {
        assert!(svg.contains("elapsed (µs)"), "{svg}");
    } else if slowest < Duration::from_secs(1) {
        assert!(svg.contains("elapsed (ms)"), "{svg}");
    }
    for server in servers {
        server.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_reports_live_servers_and_names_a_dead_one() {
    let servers = start_servers(2, 3).await;
    // A port that was just free: nothing listens there.
    let dead = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().to_string()
    };
    let mut list = addresses(&servers);
    list.push(dead.clone());
    let list = list.join(",");

    let output = tokio::task::spawn_blocking({
        let list = list.clone();
        move || run_client(&["status", "--servers", &list, "--format", "json"])
    })
    .await
    .unwrap();
    assert_eq!(output.status.code(), Some(1), "{}", stderr(&output));
    let json: serde_json::Value = serde_json::from_str(&stdout(&output)).unwrap();
    let states = json.as_array().unwrap();
    assert_eq!(states.len(), 3);
    for (state, address) in states.iter().zip(addresses(&servers)) {
        assert_eq!(state["address"], address.as_str());
        assert_eq!(state["reachable"], true);
        assert_eq!(state["workers"], 3);
        assert_eq!(state["workers_busy"], 0);
        assert_eq!(state["parts_in_flight"], 0);
        assert_eq!(state["parts_served"], 0);
        assert!(state["version"]
            .as_str()
            .unwrap()
            .starts_with("pool-server "));
        assert!(state["round_trip_s"].as_f64().unwrap() > 0.0);
        assert!(state["uptime_s"].as_f64().unwrap() > 0.0);
    }
    assert_eq!(states[2]["address"], dead.as_str());
    assert_eq!(states[2]["reachable"], false);
    assert!(states[2]["error"]
        .as_str()
        .unwrap()
        .contains("cannot connect"));

    let output = tokio::task::spawn_blocking(move || run_client(&["status", "--servers", &list]))
        .await
        .unwrap();
    let table = stdout(&output);
    assert_eq!(table.lines().count(), 4, "{table}");
    assert!(
        table
            .lines()
            .any(|l| l.starts_with(&dead) && l.contains("unreachable")),
        "{table}"
    );
    assert_eq!(
        table.lines().filter(|l| l.contains(" up ")).count(),
        2,
        "{table}"
    );

    // Only live servers: exit 0.
    let live = addresses(&servers).join(",");
    let output = tokio::task::spawn_blocking(move || run_client(&["status", "--servers", &live]))
        .await
        .unwrap();
    assert!(output.status.success(), "{}", stderr(&output));
    for server in servers {
        server.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn output_that_is_not_a_terminal_has_no_progress_bars() {
    let servers = start_servers(2, 1).await;
    let dir = support::temp_dir("progress");
    let job = dir.join("job.toml");
    std::fs::write(&job, SMALL_LOOP).unwrap();
    let list = addresses(&servers).join(",");
    let (csv_path, log_path, chart_path) = (
        dir.join("out.csv"),
        dir.join("parts.tsv"),
        dir.join("chart.svg"),
    );
    let args: Vec<String> = [
        job.to_str().unwrap(),
        "--servers",
        &list,
        "--repeat",
        "2",
        "--format",
        "csv",
        "--output",
        csv_path.to_str().unwrap(),
        "--log",
        log_path.to_str().unwrap(),
        "--chart",
        chart_path.to_str().unwrap(),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    // Standard output and error are pipes here, as when piped into a file.
    let output = tokio::task::spawn_blocking(move || {
        run_client(&args.iter().map(String::as_str).collect::<Vec<_>>())
    })
    .await
    .unwrap();
    assert!(output.status.success(), "{}", stderr(&output));
    assert_eq!(stdout(&output), "", "--output takes the output");
    for (name, text) in [("stdout", stdout(&output)), ("stderr", stderr(&output))] {
        assert!(!text.contains('\r'), "{name}: {text:?}");
        assert!(!text.contains('\u{1b}'), "{name}: {text:?}");
        assert!(!text.contains("parts  "), "{name}: {text:?}");
        assert!(!text.contains("run 1/2"), "{name}: {text:?}");
    }
    let csv = std::fs::read_to_string(&csv_path).unwrap();
    assert_eq!(csv.lines().count(), 5, "{csv}");
    assert!(csv.starts_with("mode,label,"));
    let log = std::fs::read_to_string(&log_path).unwrap();
    assert_eq!(log.lines().count(), 1 + 2 * 4, "{log}");
    let chart = std::fs::read_to_string(&chart_path).unwrap();
    roxmltree::Document::parse(&chart).expect("well-formed SVG");

    // The debug build warns that its timings mean little.
    if cfg!(debug_assertions) {
        assert!(
            stderr(&output).contains("debug build"),
            "{}",
            stderr(&output)
        );
    }
    for server in servers {
        server.shutdown().await;
    }
}

#[test]
fn help_explains_every_option_and_version_works() {
    let help = stdout(&run_client(&["--help"]));
    for option in [
        "--servers",
        "--local",
        "--modes",
        "--repeat",
        "--warmup",
        "--format",
        "--output",
        "--log",
        "--chart",
        "--seed",
        "--quiet",
        "--version",
        "status",
        "serve",
    ] {
        assert!(help.contains(option), "{option} missing from\n{help}");
    }
    let help = stdout(&run_client(&["status", "--help"]));
    for option in ["--servers", "--format", "--timeout"] {
        assert!(help.contains(option), "{option} missing from\n{help}");
    }
    let version = run_client(&["--version"]);
    assert!(version.status.success());
    assert_eq!(
        stdout(&version).trim(),
        format!("pool-client {}", env!("CARGO_PKG_VERSION"))
    );
}

/// The cells of a Markdown table row, split at the bars that are not escaped.
fn markdown_cells(line: &str) -> Vec<String> {
    let inner = line
        .strip_prefix("| ")
        .and_then(|l| l.strip_suffix(" |"))
        .unwrap_or_else(|| panic!("not a table row: {line:?}"));
    let mut cells = vec![String::new()];
    let mut chars = inner.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\\' if chars.peek() == Some(&'|') => {
                cells.last_mut().unwrap().push(chars.next().unwrap());
            }
            '|' => cells.push(String::new()),
            _ => cells.last_mut().unwrap().push(c),
        }
    }
    cells.iter().map(|c| c.trim().to_string()).collect()
}

/// The Markdown tables in `text`: runs of lines that start with `|`.
fn markdown_tables(text: &str) -> Vec<Vec<&str>> {
    let mut tables: Vec<Vec<&str>> = Vec::new();
    let mut previous_was_row = false;
    for line in text.lines() {
        let row = line.starts_with('|');
        match (row, previous_was_row) {
            (true, true) => tables.last_mut().unwrap().push(line),
            (true, false) => tables.push(vec![line]),
            _ => {}
        }
        previous_was_row = row;
    }
    tables
}

/// Checks LaTeX for what breaks a document: unbalanced environments and braces, rows
/// with the wrong number of cells, and special characters left unescaped. Returns the
/// environments opened, in order.
fn check_latex(tex: &str) -> Vec<String> {
    let mut open: Vec<String> = Vec::new();
    let mut seen = Vec::new();
    let mut columns = 0;
    let mut in_rows = false;
    for line in tex.lines() {
        if line.starts_with('%') {
            continue;
        }
        if let Some(env) = line
            .strip_prefix("\\begin{")
            .and_then(|l| l.split_once('}'))
        {
            open.push(env.0.to_string());
            seen.push(env.0.to_string());
            if env.0 == "tabular" {
                let spec = env.1.trim_matches(|c| c == '{' || c == '}');
                assert!(spec.chars().all(|c| c == 'l' || c == 'r'), "{line}");
                columns = spec.len();
            }
        }
        if let Some(env) = line
            .strip_prefix("\\end{")
            .and_then(|l| l.strip_suffix('}'))
        {
            assert_eq!(
                open.pop().as_deref(),
                Some(env),
                "\\end{{{env}}} closes nothing"
            );
        }
        match line {
            "\\toprule" | "\\midrule" => in_rows = true,
            "\\bottomrule" => in_rows = false,
            _ if in_rows => {
                let row = line.strip_suffix(" \\\\").expect("a row ends with \\\\");
                let cells = row.split(" & ").count();
                assert_eq!(cells, columns, "{line}");
            }
            _ => {}
        }
        // Outside commands, every special character is escaped.
        let mut previous = ' ';
        let mut depth = 0i32;
        let mut in_math = false;
        for c in line.chars() {
            match c {
                '{' if previous != '\\' => depth += 1,
                '}' if previous != '\\' => depth -= 1,
                '$' if previous != '\\' => in_math = !in_math,
                '%' | '_' | '#' | '&' if previous != '\\' => {
                    assert!(c == '&' && in_rows, "unescaped {c:?} in {line}")
                }
                'µ' | '±' | '|' | '<' | '>' => panic!("{c:?} left as is in {line}"),
                _ => {}
            }
            previous = c;
        }
        assert_eq!(depth, 0, "unbalanced braces in {line}");
        assert!(!in_math, "unclosed $ in {line}");
    }
    assert!(open.is_empty(), "left open: {open:?}");
    seen
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn markdown_and_latex_hold_the_tables_as_they_print() {
    let servers = start_servers(2, 1).await;
    // The first server listed twice: used once, with a warning.
    let mut list = addresses(&servers);
    list.push(list[0].clone());
    let mut opts = options(list);
    opts.repeat = Repeat::Times(2);
    let report = pool_client::run(&job_file(SMALL_LOOP), &opts)
        .await
        .unwrap();
    assert_eq!(report.pool.as_ref().unwrap().servers.len(), 2);
    // (Other warnings may say the machine was busy.)
    let listed: Vec<_> = report
        .warnings
        .iter()
        .filter(|w| w.contains(" is listed "))
        .collect();
    assert_eq!(listed.len(), 1, "{:?}", report.warnings);
    assert!(listed[0].contains(&format!("{} is listed 2 times", addresses(&servers)[0])));
    assert!(report.table().contains("warning: server "));

    let markdown = report.markdown();
    let tables = markdown_tables(&markdown);
    assert_eq!(tables.len(), 2, "{markdown}");
    let expected = [
        report.modes_table(),
        pool_client::report::Report::servers_table(report.pool.as_ref().unwrap()),
    ];
    for (lines, table) in tables.iter().zip(&expected) {
        let header = markdown_cells(lines[0]);
        assert_eq!(header, table.header, "{markdown}");
        let rule = markdown_cells(lines[1]);
        assert_eq!(rule.len(), header.len(), "{markdown}");
        assert!(rule.iter().all(|r| r == "---" || r == "---:"), "{markdown}");
        let rows: Vec<Vec<String>> = lines[2..].iter().map(|l| markdown_cells(l)).collect();
        assert_eq!(rows, table.rows, "{markdown}");
    }
    assert!(markdown.contains(&format!("result: `{}`", report.reference())));

    let latex = report.latex();
    assert_eq!(
        check_latex(&latex),
        ["table", "tabular", "table", "tabular"],
        "{latex}"
    );
    for rule in ["\\toprule", "\\midrule", "\\bottomrule"] {
        assert_eq!(latex.matches(rule).count(), 2, "{latex}");
    }
    // Percentages and microseconds of the table, escaped.
    assert!(latex.contains("\\%"), "{latex}");
    if report.table().contains('µ') {
        assert!(latex.contains("$\\mu$s"), "{latex}");
    }
    assert!(latex.starts_with("% warning: server "), "{latex}");
    compile_latex_if_possible(&latex);
    for server in servers {
        server.shutdown().await;
    }
}

/// Compiles the tables in a document with pdflatex when this machine has it (Debian's
/// texlive-latex-base and texlive-latex-recommended, for booktabs); says so when not.
fn compile_latex_if_possible(tables: &str) {
    let found = std::process::Command::new("pdflatex")
        .arg("--version")
        .output();
    if !found.is_ok_and(|o| o.status.success()) {
        eprintln!(
            "LaTeX output structure-checked only: no pdflatex here (Debian packages \
             texlive-latex-base and texlive-latex-recommended)"
        );
        return;
    }
    let dir = support::temp_dir("latex");
    let document = format!(
        "\\documentclass{{article}}\n\\usepackage{{booktabs}}\n\\begin{{document}}\n{tables}\\end{{document}}\n"
    );
    std::fs::write(dir.join("tables.tex"), document).unwrap();
    let output = std::process::Command::new("pdflatex")
        .args(["-interaction=nonstopmode", "-halt-on-error", "tables.tex"])
        .current_dir(&*dir)
        .output()
        .unwrap();
    let log = std::fs::read_to_string(dir.join("tables.log")).unwrap_or_default();
    assert!(output.status.success(), "pdflatex failed:\n{log}");
    assert!(!log.contains("Missing character"), "{log}");
    assert!(dir.join("tables.pdf").exists());
}

/// The 95% intervals from a run's JSON, by mode label: `[low, high]` in seconds.
fn json_intervals(json: &serde_json::Value) -> Vec<(String, [f64; 2])> {
    json["modes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|mode| {
            let ci = mode["median_ci95_s"]
                .as_array()
                .expect("an interval per mode");
            let label = mode["label"].as_str().unwrap().to_string();
            (label, [ci[0].as_f64().unwrap(), ci[1].as_f64().unwrap()])
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repeated_runs_get_intervals_and_the_modes_that_overlap_are_named() {
    let servers = start_servers(2, 1).await;
    let mut opts = options(addresses(&servers));
    opts.repeat = Repeat::Times(6);
    let report = pool_client::run(&job_file(SMALL_LOOP), &opts)
        .await
        .unwrap();
    for run in &report.runs {
        let s = &run.summary;
        let median = s
            .median_interval
            .expect("6 runs give the median an interval");
        assert!(median.low <= s.median && s.median <= median.high, "{s:?}");
        assert!(s.min <= median.low && median.high <= s.max, "{s:?}");
        let mean = s.mean_interval.expect("and the mean one");
        assert!(mean.low <= s.mean && s.mean <= mean.high, "{s:?}");
    }

    // The JSON holds the intervals, and which pairs overlap, recomputed here from them.
    let json: serde_json::Value =
        serde_json::from_str(&serde_json::to_string(&report.json()).unwrap()).unwrap();
    let intervals = json_intervals(&json);
    let mut overlapping = Vec::new();
    for (i, (a, x)) in intervals.iter().enumerate() {
        for (b, y) in &intervals[i + 1..] {
            if x[0] <= y[1] && y[0] <= x[1] {
                overlapping.push(serde_json::json!([a, b]));
            }
        }
    }
    assert_eq!(
        json["statistics"]["no_significant_difference"],
        serde_json::Value::Array(overlapping.clone())
    );
    assert!(json["statistics"]["median_interval"]
        .as_str()
        .unwrap()
        .contains("bootstrap"));
    // One part alone: timed by the sequential mode only, each part shorter than the run.
    for mode in json["modes"].as_array().unwrap() {
        if mode["mode"] == "sequential" {
            let part = mode["part_median_s"].as_f64().unwrap();
            assert!(
                0.0 < part && part < mode["median_s"].as_f64().unwrap(),
                "{mode}"
            );
            assert!(mode["part_max_s"].as_f64().unwrap() >= part, "{mode}");
        } else {
            assert!(mode["part_median_s"].is_null(), "{mode}");
        }
    }
    assert!(report.table().contains("\none part alone: "));
    assert!(json["environment"]["load_at_start"]["load_average_1m"].is_f64());
    assert!(json["environment"]["load_at_end"]["load_average_1m"].is_f64());

    // The table has the interval column and lists the same pairs under it.
    let table = report.table();
    assert!(table.contains("95% CI"), "{table}");
    let listed: Vec<serde_json::Value> = table
        .lines()
        .skip_while(|l| !l.starts_with("no significant difference"))
        .skip(1)
        .take_while(|l| l.starts_with("  ") && l.contains(" and "))
        .map(|l| {
            let (a, b) = l.trim().split_once(" and ").unwrap();
            serde_json::json!([a, b])
        })
        .collect();
    assert_eq!(listed, overlapping, "{table}");

    // The CSV too: the interval's ends, column by column.
    let csv = report.csv();
    let mut lines = csv.lines();
    let header: Vec<&str> = lines.next().unwrap().split(',').collect();
    let column = |name: &str| header.iter().position(|h| *h == name).unwrap();
    for (line, (_, [low, high])) in lines.zip(&intervals) {
        let row: Vec<&str> = line.split(',').collect();
        assert_eq!(row[column("median_ci_low_s")].parse::<f64>().unwrap(), *low);
        assert_eq!(
            row[column("median_ci_high_s")].parse::<f64>().unwrap(),
            *high
        );
    }
    for server in servers {
        server.shutdown().await;
    }
}

#[test]
fn repeat_auto_stops_at_its_interval_or_its_budget_and_says_which() {
    let dir = support::temp_dir("repeat-auto");
    let job = dir.join("job.toml");
    std::fs::write(
        &job,
        "parts = 2\n[job]\nkind = \"loop\"\niterations = 20000\n",
    )
    .unwrap();
    let output = run_client(&[
        job.to_str().unwrap(),
        "--modes",
        "sequential,threaded",
        "--repeat",
        "auto",
        "--repeat-budget",
        "0.5",
        "--format",
        "json",
    ]);
    assert!(output.status.success(), "{}", stderr(&output));
    let json: serde_json::Value = serde_json::from_str(&stdout(&output)).unwrap();
    assert_eq!(json["settings"]["repeat"], "auto");
    assert_eq!(json["settings"]["repeat_budget_s"], 0.5);
    let warnings: Vec<&str> = json["warnings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| w.as_str().unwrap())
        .collect();
    for mode in json["modes"].as_array().unwrap() {
        let runs = mode["runs_s"].as_array().unwrap().len();
        assert!((2..=200).contains(&runs), "{mode}");
        let label = mode["label"].as_str().unwrap();
        let stopped_short = [
            format!("{label}: the 500.0 ms budget ran out after {runs} runs"),
            format!("{label}: stopped at the cap of 200 runs"),
        ];
        let ran_out = warnings
            .iter()
            .any(|w| stopped_short.iter().any(|s| w.starts_with(s.as_str())));
        match mode["median_ci95_s"].as_array() {
            Some(ci) => {
                let median = mode["median_s"].as_f64().unwrap();
                let (low, high) = (ci[0].as_f64().unwrap(), ci[1].as_f64().unwrap());
                let width = (median - low).max(high - median) / median;
                // Narrow enough, or the budget (or the cap) stopped it and it says so.
                assert_eq!(width > 0.02, ran_out, "{mode} {warnings:?}");
            }
            None => assert!(runs < 6, "{mode}"),
        }
    }

    for (args, message) in [
        (
            &["--repeat", "0"][..],
            "give a whole number of runs from 1 to 1000, or auto",
        ),
        (
            &["--repeat", "sometimes"][..],
            "give a whole number of runs from 1 to 1000, or auto",
        ),
        (
            &["--repeat", "auto", "--repeat-budget", "0"][..],
            "give a positive number of seconds",
        ),
        (
            &["--repeat", "3", "--repeat-budget", "5"][..],
            "--repeat-budget is for --repeat auto",
        ),
    ] {
        let mut all = vec![job.to_str().unwrap()];
        all.extend(args);
        let output = run_client(&all);
        assert_eq!(output.status.code(), Some(2), "{args:?}");
        assert!(stderr(&output).contains(message), "{}", stderr(&output));
    }
}
