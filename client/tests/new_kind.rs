//! The README's claim that a job kind is one file plus one line, held to its word with
//! its worked example, `sum-of-squares`: the kind runs in every mode over real sockets,
//! and its names appear in no source file but its own and one line of the kind list.

mod support;

use std::path::{Path, PathBuf};

use pool_common::jobs::PartResult;
use support::{addresses, examples_dir, job_file, options, start_servers};

/// The sum of i*i over [0, n), wrapping mod 2^64, from the closed form.
fn closed_form(n: u64) -> u64 {
    let n = n as u128;
    ((n * n.saturating_sub(1) * (2 * n).saturating_sub(1) / 6) % (1u128 << 64)) as u64
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_worked_example_runs_in_every_mode() {
    let servers = start_servers(2, 1).await;
    let count = 3_000_001;
    let job = job_file(&format!(
        "parts = 5\n[job]\nkind = \"sum-of-squares\"\ncount = {count}\n"
    ));
    let report = pool_client::run(&job, &options(addresses(&servers)))
        .await
        .unwrap();
    assert_eq!(report.kind, "sum-of-squares");
    assert_eq!(report.runs.len(), 4);
    for run in &report.runs {
        assert_eq!(
            run.result,
            PartResult::SumOfSquares(closed_form(count)),
            "{:?}",
            run.mode
        );
    }
    assert!(report.all_match());
    for server in servers {
        server.shutdown().await;
    }
}

/// Every Rust source file of the product (not its tests) under `dir`.
fn sources(dir: &Path, found: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            sources(&path, found);
        } else if path.extension().is_some_and(|e| e == "rs") {
            found.push(path);
        }
    }
}

/// The lines of `text` that name the kind, comments and `#[cfg(test)]` modules aside.
fn naming_lines(text: &str) -> Vec<String> {
    let code = text.split("#[cfg(test)]").next().unwrap_or("");
    code.lines()
        .map(|line| line.split("//").next().unwrap_or(""))
        .filter(|line| {
            [
                "sum_of_squares",
                "SumOfSquares",
                "sum-of-squares",
                "Squares",
            ]
            .iter()
            .any(|name| line.contains(name))
        })
        .map(|line| line.trim().to_string())
        .collect()
}

#[test]
fn a_kind_is_one_file_plus_one_line() {
    let root = examples_dir().join("..");
    let mut files = Vec::new();
    for dir in [
        "common/src",
        "server/src",
        "client/src",
        "benchmarks/src",
        "fuzz/fuzz_targets",
    ] {
        sources(&root.join(dir), &mut files);
    }
    let mut naming = Vec::new();
    for file in &files {
        let text = std::fs::read_to_string(file).unwrap();
        let lines = naming_lines(&text);
        // The soak's job mix and the part-table fuzz target choose to exercise this
        // kind by name, as they do every other: coverage a new kind may add later,
        // not registration it needs.
        let exercises_kinds = file.ends_with("benchmarks/src/soak.rs")
            || file.ends_with("fuzz/fuzz_targets/part_table.rs");
        if !lines.is_empty()
            && !file.ends_with("common/src/jobs/sum_of_squares.rs")
            && !exercises_kinds
        {
            naming.push((
                file.strip_prefix(&root).unwrap().display().to_string(),
                lines,
            ));
        }
    }
    assert_eq!(
        naming,
        [(
            "common/src/jobs/mod.rs".to_string(),
            vec!["SumOfSquares => sum_of_squares::SumOfSquares,".to_string()]
        )],
        "the kind is named outside its file and its line in the kind list"
    );
    // And the generated dispatch has no catch-all arm that would hide a missing kind.
    let kinds = std::fs::read_to_string(root.join("common/src/jobs/mod.rs")).unwrap();
    assert!(!kinds.contains("_ =>"), "a catch-all arm in jobs/mod.rs");
}
