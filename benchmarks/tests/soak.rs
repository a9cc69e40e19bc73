//! The soak's 30-second version: one server under normal jobs of every kind, hostile,
//! dropped, killed and stalled clients, over real sockets. Every job's result is exact,
//! every kind ran, every kind of mischief happened, and the server's file descriptors
//! come back to where they started once the load is over.

use std::process::Command;

#[test]
fn a_30_second_soak_gets_exact_results_and_leaks_no_descriptors() {
    let dir = std::env::temp_dir().join(format!("pool-test-soak-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let csv = dir.join("soak.csv");
    let out = Command::new(env!("CARGO_BIN_EXE_pool-bench"))
        .args([
            "soak",
            "--minutes",
            "0.5",
            "--every",
            "1",
            "--json",
            "--csv",
        ])
        .arg(&csv)
        .env("RUST_LOG", "error")
        .output()
        .expect("run pool-bench soak");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "the soak failed: {stderr}");
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).expect("one JSON document");
    let count = |key: &str| {
        doc[key]
            .as_u64()
            .unwrap_or_else(|| panic!("no {key}: {doc}"))
    };

    assert_eq!(count("wrong_results"), 0, "{doc}");
    assert_eq!(count("failed"), 0, "{doc}");
    assert_eq!(count("hostile_not_closed"), 0, "{doc}");
    let by_kind = doc["jobs_by_kind"].as_object().expect("jobs by kind");
    for kind in [
        "loop",
        "matrix-sum i64",
        "matrix-sum f64",
        "sum-of-squares",
        "primes",
        "mandelbrot",
        "matmul",
        "command",
    ] {
        assert!(
            by_kind.get(kind).and_then(|n| n.as_u64()) > Some(0),
            "no {kind} job: {doc}"
        );
    }
    for mischief in ["hostile", "dropped_mid_part", "killed_clients", "stalls"] {
        assert!(count(mischief) > 0, "no {mischief}: {doc}");
    }
    let fds = &doc["fds"];
    let (start, end) = (fds["start"].as_u64().unwrap(), fds["end"].as_u64().unwrap());
    assert!(
        end <= start + count("fd_margin"),
        "fds {start} -> {end}: {doc}"
    );

    // The CSV has its header and one line per sample.
    let text = std::fs::read_to_string(&csv).unwrap();
    let mut lines = text.lines();
    assert_eq!(
        lines.next(),
        Some("seconds,rss_kib,fds,threads,jobs_done,wrong_results,failed_jobs")
    );
    assert_eq!(lines.count() as u64, count("samples"));
    std::fs::remove_dir_all(&dir).unwrap();
}
