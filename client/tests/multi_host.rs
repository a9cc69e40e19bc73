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
use support::netns::client_command;
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
        // The matrix's parts carry data, so shared memory runs beside the pipes.
        let expected = if text.contains("matrix") { 5 } else { 4 };
        assert_eq!(modes.len(), expected, "{modes:?}");
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

/// A port every server of a lab listens on, as a cluster's servers share one: each
/// host has ports of its own.
const SHARED_PORT: u16 = 7000;

/// One one-worker server on [`SHARED_PORT`] in each of the lab's server namespaces.
fn servers_on_shared_port(lab: &NetLab) -> Vec<ServerProcess> {
    (0..lab.servers().len())
        .map(|i| ServerProcess::start_in_at(lab, i, SHARED_PORT, &["--workers", "1"]))
        .collect()
}

/// The servers `report`'s pool computed parts on.
fn servers_used(report: &Value) -> BTreeSet<String> {
    pool_parts(report)
        .iter()
        .map(|p| p["server"].as_str().unwrap().to_string())
        .collect()
}

/// Checks that `server` left the list during `report`'s pool run and was sent no part
/// from then on.
fn assert_nothing_sent_after_it_left(report: &Value, server: &str) {
    let left_at = server_row(report, server)["left_at_s"]
        .as_f64()
        .unwrap_or_else(|| panic!("{server} never left: {report:#}"));
    for attempt in attempts_on(report, server) {
        assert!(attempt["start_s"].as_f64().unwrap() < left_at, "{report:#}");
    }
}

/// The addresses `pool-client status` asks, given `which` servers, from the client
/// namespace.
fn status_addresses(lab: &NetLab, which: &[&str]) -> BTreeSet<String> {
    let mut args = vec!["status", "--format", "json"];
    args.extend_from_slice(which);
    let output = run_client_in(lab, &args);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let status: Value = serde_json::from_slice(&output.stdout).unwrap();
    status
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["address"].as_str().unwrap().to_string())
        .collect()
}

/// The per-server object of `server` in `report`'s pool.
fn server_row<'a>(report: &'a Value, server: &str) -> &'a Value {
    report["pool"]["servers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["address"] == server)
        .unwrap_or_else(|| panic!("no row for {server}: {report:#}"))
}

#[test]
fn a_dns_name_stands_for_every_server_behind_it_and_is_looked_up_again() {
    let test = "a_dns_name_stands_for_every_server_behind_it_and_is_looked_up_again";
    let Some(lab) = lab(test) else {
        return;
    };
    let servers = servers_on_shared_port(&lab);
    let list = addresses(&servers);
    let hosts = |count: usize| -> String {
        lab.servers()[..count]
            .iter()
            .map(|h| format!("{} pool.lab\n", h.address))
            .collect()
    };
    // The name first stands for two servers, as a headless Service with two pods.
    lab.set_client_hosts(&hosts(2)).unwrap();
    let name = format!("dns:pool.lab:{SHARED_PORT}");
    let asked = status_addresses(&lab, &["--servers", &name]);
    assert_eq!(asked, list[..2].iter().cloned().collect());

    let dir = temp_dir(test);
    // Parts of about a tenth of a second each (4 s of one server's time): the job
    // outlasts the name's next lookups.
    let text = "parts = 32\nseed = 6\n[job]\nkind = \"loop\"\niterations = 8_000_000_000\n";
    let job = write_job(&dir, "job.toml", text);
    let mut client = spawn_client_in(
        &lab,
        &[
            &job,
            "--servers",
            &name,
            "--modes",
            "pool",
            "--format",
            "json",
            "-q",
        ],
    );
    wait_until_holding(&lab, &list[0], &mut client);
    // A third pod appears behind the name: it joins the job.
    lab.set_client_hosts(&hosts(3)).unwrap();
    wait_until_holding(&lab, &list[2], &mut client);
    let report = report(&client.wait_with_output().unwrap());
    assert_exact(&report, text);
    assert_eq!(
        servers_used(&report),
        list.iter().cloned().collect(),
        "{report:#}"
    );
    assert!(
        server_row(&report, &list[2])["joined_at_s"].is_f64(),
        "{report:#}"
    );
    assert!(server_row(&report, &list[0])["joined_at_s"].is_null());
}

#[test]
fn slurm_s_node_list_names_the_servers() {
    let test = "slurm_s_node_list_names_the_servers";
    let Some(lab) = lab(test) else {
        return;
    };
    let _servers = servers_on_shared_port(&lab);
    let names = ["node01", "node02", "gpu3"];
    let hosts: String = lab
        .servers()
        .iter()
        .zip(names)
        .map(|(h, name)| format!("{} {name}\n", h.address))
        .collect();
    lab.set_client_hosts(&hosts).unwrap();
    let dir = temp_dir(test);
    let text = format!(
        "parts = 6\nseed = 7\nservers = \"slurm\"\nport = {SHARED_PORT}\n\
         [job]\nkind = \"loop\"\niterations = 60_000_000\n"
    );
    let job = write_job(&dir, "job.toml", &text);
    // The same job without its servers, for the reference result.
    let reference = text.replace("servers = \"slurm\"\nport = 7000\n", "");
    let with_nodelist = |args: &[&str]| {
        client_command(&lab, args)
            .env("SLURM_JOB_NODELIST", "node[01-02],gpu3")
            .output()
            .unwrap()
    };
    let from_file = report(&with_nodelist(&[
        &job, "--modes", "pool", "--format", "json", "-q",
    ]));
    assert_exact(&from_file, &reference);
    let expected: Vec<String> = names.iter().map(|n| format!("{n}:{SHARED_PORT}")).collect();
    assert_eq!(
        from_file["settings"]["servers"],
        serde_json::json!(expected)
    );
    assert_eq!(servers_used(&from_file).len(), 3, "{from_file:#}");
    // The same from the command line, with the port written there.
    let flag = format!("slurm:{SHARED_PORT}");
    let from_flag = report(&with_nodelist(&[
        &job,
        "--servers",
        &flag,
        "--modes",
        "pool",
        "--format",
        "json",
        "-q",
    ]));
    assert_exact(&from_flag, &reference);
    // Outside an allocation the job file says what it needs.
    let output = run_client_in(&lab, &[&job, "--modes", "pool"]);
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("job.toml:3:11: servers = \"slurm\" needs SLURM_JOB_NODELIST"),
        "{stderr}"
    );
}

#[test]
fn servers_join_and_leave_through_the_servers_file_mid_job() {
    let test = "servers_join_and_leave_through_the_servers_file_mid_job";
    let Some(lab) = lab(test) else {
        return;
    };
    let servers = one_worker_servers(&lab);
    let list = addresses(&servers);
    let dir = temp_dir(test);
    let servers_file = dir.join("servers.txt");
    let write_servers = |which: &[usize]| {
        let text: String = which.iter().map(|&i| format!("{}\n", list[i])).collect();
        std::fs::write(&servers_file, text).unwrap();
    };
    write_servers(&[0]);
    // Parts of about a tenth of a second each, 6 s of one server's time: the file is
    // read again each second, and the job outlasts two changes.
    let text = "parts = 48\nseed = 8\nservers_file = \"servers.txt\"\n\
                [job]\nkind = \"loop\"\niterations = 12_000_000_000\n";
    let job = write_job(&dir, "job.toml", text);
    let mut client = spawn_client_in(&lab, &[&job, "--modes", "pool", "--format", "json", "-q"]);
    wait_until_holding(&lab, &list[0], &mut client);
    write_servers(&[0, 1]);
    wait_until_holding(&lab, &list[1], &mut client);
    // Server 0 leaves as server 2 joins.
    write_servers(&[1, 2]);
    wait_until_holding(&lab, &list[2], &mut client);
    let report = report(&client.wait_with_output().unwrap());
    assert_exact(&report, text);
    assert_eq!(
        servers_used(&report),
        list.iter().cloned().collect(),
        "{report:#}"
    );
    for server in &list[1..] {
        assert!(
            server_row(&report, server)["joined_at_s"].is_f64(),
            "{report:#}"
        );
    }
    assert_nothing_sent_after_it_left(&report, &list[0]);
}

#[test]
fn a_draining_server_gets_no_new_parts() {
    let test = "a_draining_server_gets_no_new_parts";
    let Some(lab) = lab(test) else {
        return;
    };
    let mut servers = one_worker_servers(&lab);
    let list = addresses(&servers);
    let dir = temp_dir(test);
    let text = "parts = 16\nseed = 9\n[job]\nkind = \"loop\"\niterations = 4_000_000_000\n";
    let job = write_job(&dir, "job.toml", text);
    let mut client = start_pool_job(&lab, &job, &list);
    wait_until_holding(&lab, &list[0], &mut client);
    // SIGTERM: the server finishes what it computes, refuses new parts and exits.
    servers[0].signal("TERM");
    let report = report(&client.wait_with_output().unwrap());
    assert_exact(&report, text);
    let exit = servers[0].wait_exit(std::time::Duration::from_secs(30));
    assert!(exit.is_some_and(|e| e.success()), "{exit:?}");
    // After its first refusal, nothing more was sent to it.
    let on_drained: Vec<&Value> = attempts_on(&report, &list[0]).collect();
    let first_refusal = on_drained
        .iter()
        .filter(|a| a["outcome"] != "won")
        .map(|a| a["end_s"].as_f64().unwrap())
        .fold(f64::INFINITY, f64::min);
    for attempt in &on_drained {
        assert!(
            attempt["start_s"].as_f64().unwrap() <= first_refusal,
            "{report:#}"
        );
    }
}

#[test]
fn servers_announced_on_the_lan_are_discovered_and_join_mid_job() {
    let test = "servers_announced_on_the_lan_are_discovered_and_join_mid_job";
    let Some(lab) = lab(test) else {
        return;
    };
    let announced =
        |index: usize| ServerProcess::start_in(&lab, index, &["--workers", "1", "--announce"]);
    let mut servers = vec![announced(0), announced(1)];
    let list = addresses(&servers);
    // `status --discover` lists what answers on the lab's network, and nothing else.
    let found = status_addresses(&lab, &["--discover=2"]);
    assert_eq!(found, list.iter().cloned().collect());

    let dir = temp_dir(test);
    let text = "parts = 32\nseed = 10\nservers = \"discover\"\ndiscover_window = 2\n\
                [job]\nkind = \"loop\"\niterations = 8_000_000_000\n";
    let job = write_job(&dir, "job.toml", text);
    let mut client = spawn_client_in(&lab, &[&job, "--modes", "pool", "--format", "json", "-q"]);
    wait_until_holding(&lab, &list[0], &mut client);
    // A third server is announced mid-job and joins; the first is stopped (SIGTERM),
    // withdraws its announcement, and gets no new parts.
    servers.push(announced(2));
    let third = servers[2].address.clone();
    wait_until_holding(&lab, &third, &mut client);
    servers[0].signal("TERM");
    let report = report(&client.wait_with_output().unwrap());
    let reference = text.replace("servers = \"discover\"\ndiscover_window = 2\n", "");
    assert_exact(&report, &reference);
    assert!(
        server_row(&report, &third)["joined_at_s"].is_f64(),
        "{report:#}"
    );
    assert_nothing_sent_after_it_left(&report, &list[0]);
}
