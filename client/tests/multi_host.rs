//! Several hosts on one machine: pool servers in network namespaces of their own, the
//! pool-client binary in another, a bridge between them and every link held to
//! 1 Gbit/s (see `pool_client::netlab`). Real jobs cross it with exact results: the loop
//! and the matrix sum in every mode, a server killed mid-job, a cable pulled out
//! mid-computation and mid-shipping.
//!
//! Each test builds its own lab, named after this process's id and a counter, and
//! removes it at its end, also when it fails. Where this machine cannot have network
//! namespaces (not root, or no iproute2), each test prints `<test> skipped: needs ...`,
//! naming what is missing, and returns; as root with iproute2, a lab that cannot be
//! built fails the test.

mod support;

use std::collections::BTreeSet;
use std::path::Path;
use std::process::{Child, Output};

use pool_client::netlab::{LabConfig, NetLab};
use serde_json::Value;
use support::netns::{
    lab_or_skip, one_worker_servers, run_client_in, spawn_client_in, status_in, wait_until_holding,
};
use support::{job_file, reference_result, temp_dir, ServerProcess};

/// A lab with three servers on a 1 Gbit/s LAN, or `None` (skip).
fn lab(test: &str) -> Option<NetLab> {
    lab_or_skip(test, &LabConfig::default())
}

fn addresses(servers: &[ServerProcess]) -> Vec<String> {
    servers.iter().map(|s| s.address.clone()).collect()
}

/// Writes `text` as the job file `name` in `dir` and returns its path as text.
fn write_job(dir: &Path, name: &str, text: &str) -> String {
    let path = dir.join(name);
    std::fs::write(&path, text).expect("write the job file");
    path.to_string_lossy().into_owned()
}

/// Starts the pool mode of `job` on `servers` from the client namespace, reporting in
/// JSON.
fn start_pool_job(lab: &NetLab, job: &str, servers: &[String]) -> Child {
    let list = servers.join(",");
    let args = [
        job,
        "--servers",
        &list,
        "--modes",
        "pool",
        "--format",
        "json",
        "-q",
    ];
    spawn_client_in(lab, &args)
}

/// The JSON report of a finished pool-client run, which must have succeeded.
fn report(output: &Output) -> Value {
    assert!(
        output.status.success(),
        "pool-client failed ({}): {}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).expect("pool-client --format json prints JSON")
}

/// Checks every mode of `report` found `job_text`'s exact result.
fn assert_exact(report: &Value, job_text: &str) {
    let expected = reference_result(&job_file(job_text)).to_string();
    assert_eq!(report["ok"], true, "{report:#}");
    for mode in report["modes"].as_array().unwrap() {
        assert_eq!(mode["result"], expected.as_str(), "{}", mode["mode"]);
    }
}

/// The pool's parts as JSON objects.
fn pool_parts(report: &Value) -> &Vec<Value> {
    report["pool"]["parts"].as_array().unwrap()
}

/// The attempts made on `server`, over every part.
fn attempts_on<'a>(report: &'a Value, server: &'a str) -> impl Iterator<Item = &'a Value> {
    pool_parts(report)
        .iter()
        .flat_map(|p| p["attempts"].as_array().unwrap())
        .filter(move |a| a["server"] == server)
}

#[test]
fn loop_and_matrix_jobs_in_every_mode_across_three_hosts() {
    let Some(lab) = lab("loop_and_matrix_jobs_in_every_mode_across_three_hosts") else {
        return;
    };
    let servers = one_worker_servers(&lab);
    let list = addresses(&servers);
    for (server, host) in list.iter().zip(lab.servers()) {
        assert!(
            server.starts_with(&format!("{}:", host.address)),
            "{server}"
        );
    }
    let dir = temp_dir("multi-host-modes");
    let jobs = [
        "parts = 6\nseed = 1\n[job]\nkind = \"loop\"\niterations = 240_000_000\n",
        // 16 MB cross the client's link: about 0.13 s at 1 Gbit/s.
        "parts = 6\nseed = 1\n[job]\nkind = \"matrix-sum\"\nrows = 2000\ncols = 1000\nseed = 7\n",
    ];
    for (i, text) in jobs.iter().enumerate() {
        let job = write_job(&dir, &format!("job{i}.toml"), text);
        let output = run_client_in(
            &lab,
            &[&job, "--servers", &list.join(","), "--format", "json", "-q"],
        );
        let report = report(&output);
        assert_exact(&report, text);
        let modes: Vec<&str> = report["modes"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["mode"].as_str().unwrap())
            .collect();
        assert_eq!(modes.len(), 4, "{modes:?}");
        // Every part was computed on one of the lab's servers, and the parts were spread.
        let used: BTreeSet<&str> = pool_parts(&report)
            .iter()
            .map(|p| p["server"].as_str().unwrap())
            .collect();
        assert!(used.iter().all(|s| list.iter().any(|a| a == s)), "{used:?}");
        assert!(used.len() >= 2, "{used:?}");
        let sent: u64 = pool_parts(&report)
            .iter()
            .map(|p| p["bytes_sent"].as_u64().unwrap())
            .sum();
        assert!(
            sent >= report["settings"]["input_bytes"].as_u64().unwrap(),
            "{sent} bytes sent"
        );
    }
}

#[test]
fn a_server_killed_mid_job_loses_no_part() {
    let Some(lab) = lab("a_server_killed_mid_job_loses_no_part") else {
        return;
    };
    let mut servers = one_worker_servers(&lab);
    let list = addresses(&servers);
    let dir = temp_dir("multi-host-kill");
    // Parts of about half a second each.
    let text = "parts = 6\nseed = 2\n[job]\nkind = \"loop\"\niterations = 1_500_000_000\n";
    let job = write_job(&dir, "loop.toml", text);
    let mut client = start_pool_job(&lab, &job, &list);
    wait_until_holding(&lab, &list[0], &mut client);
    servers[0].kill9();
    let report = report(&client.wait_with_output().unwrap());
    assert_exact(&report, text);
    let failed: Vec<&Value> = attempts_on(&report, &list[0])
        .filter(|a| a["outcome"] == "failed")
        .collect();
    assert!(!failed.is_empty(), "{report:#}");
    // Each part the killed server was computing was computed elsewhere.
    for part in pool_parts(&report) {
        let attempts = part["attempts"].as_array().unwrap();
        if attempts
            .iter()
            .any(|a| a["server"] == list[0].as_str() && a["outcome"] == "failed")
        {
            assert_ne!(part["server"], list[0].as_str(), "{part:#}");
        }
    }
}

#[test]
fn data_shipped_at_the_links_pace_gets_no_copies() {
    let test = "data_shipped_at_the_links_pace_gets_no_copies";
    let Some(lab) = lab(test) else {
        return;
    };
    let servers = one_worker_servers(&lab);
    let list = addresses(&servers);
    let dir = temp_dir(test);
    // 96 MB in six blocks, two per server, all leaving through the client's one
    // 1 Gbit/s link: each part's time is its shipping (the whole job about 0.8 s),
    // its sum a few milliseconds. A part on its way at the link's pace is no
    // straggler: its copy would cross the same link, and the loser, abandoned
    // mid-send, would break its connection.
    let text =
        "parts = 6\nseed = 5\n[job]\nkind = \"matrix-sum\"\nrows = 6000\ncols = 2000\nseed = 11\n";
    let job = write_job(&dir, "job.toml", text);
    let output = start_pool_job(&lab, &job, &list)
        .wait_with_output()
        .unwrap();
    let report = report(&output);
    assert_exact(&report, text);
    let copies = pool_parts(&report)
        .iter()
        .flat_map(|p| p["attempts"].as_array().unwrap())
        .filter(|a| a["kind"] == "copy")
        .count();
    assert_eq!(copies, 0, "{report:#}");
}

/// Cuts a server's cable once it holds a part of `text`'s job, and checks the job
/// still ends with the exact result, its part copied elsewhere once the server misses
/// a liveness probe (or, mid-shipping, once it lags as a straggler); then that the
/// server, partitioned and not dead, answers again once the cable is back.
fn survive_a_cut(test: &str, text: &str) {
    let Some(lab) = lab(test) else {
        return;
    };
    let mut servers = one_worker_servers(&lab);
    let list = addresses(&servers);
    let dir = temp_dir(test);
    let job = write_job(&dir, "job.toml", text);
    let mut client = start_pool_job(&lab, &job, &list);
    let victim = &lab.servers()[1];
    wait_until_holding(&lab, &list[1], &mut client);
    lab.cut(victim).unwrap();
    let report = report(&client.wait_with_output().unwrap());
    assert_exact(&report, text);
    let cut_off: Vec<&Value> = attempts_on(&report, &list[1]).collect();
    assert!(!cut_off.is_empty(), "{report:#}");
    for attempt in &cut_off {
        assert_ne!(attempt["outcome"], "won", "{report:#}");
    }
    for part in pool_parts(&report) {
        assert_ne!(part["server"], list[1].as_str(), "{part:#}");
    }
    // A partition, not a crash: the server ran on, and answers once the link is back.
    assert!(servers[1].is_running());
    lab.mend(victim).unwrap();
    let status = status_in(&lab, &list[1], std::time::Duration::from_secs(10));
    assert_eq!(status["reachable"], true, "{status:#}");
    servers[1].kill9();
}

#[test]
fn a_link_cut_mid_computation_is_survived() {
    // One part per server, about a second each; a silent server is suspected after
    // half a second, and its part gets a copy elsewhere.
    survive_a_cut(
        "a_link_cut_mid_computation_is_survived",
        "parts = 3\nseed = 3\npart_timeout = 60\nliveness_timeout = 0.5\n\
         [job]\nkind = \"loop\"\niterations = 1_500_000_000\n",
    );
}

#[test]
fn a_link_cut_while_data_ships_is_survived() {
    // 96 MB in three blocks, shipped at once over the client's 1 Gbit/s link (about
    // 0.8 s); the cut lands while the victim's block is on its way.
    survive_a_cut(
        "a_link_cut_while_data_ships_is_survived",
        "parts = 3\nseed = 4\npart_timeout = 60\nliveness_timeout = 0.5\n\
         [job]\nkind = \"matrix-sum\"\nrows = 6000\ncols = 2000\nseed = 9\n",
    );
}
