//! A job survives dead servers: killed before, during and after their parts, every
//! server down, a server that accepts nothing, a server shutting down, and Ctrl-C on
//! the client. Real server processes, real sockets.

mod support;

use std::time::Duration;

use pool_client::dispatch::{AttemptRecord, ComputedBy, PartRecord};
use support::{
    dead_address, job_file, pool_only, reference_result, run_client, stderr, ServerProcess,
};

/// The first failed attempt at a part that was retried.
fn first_failure(part: &PartRecord) -> &AttemptRecord {
    part.failed_attempts().next().expect("the part was retried")
}

/// A loop job with parts that take a few hundred milliseconds each.
const LOOP_JOB: &str = "parts = 6\nseed = 3\n[job]\nkind = \"loop\"\niterations = 1_800_000_000\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_killed_mid_compute_loses_no_part() {
    let mut servers: Vec<ServerProcess> = (0..3)
        .map(|_| ServerProcess::start(&["--workers", "1"]))
        .collect();
    let job = job_file(LOOP_JOB);
    let expected = reference_result(&job);
    let addresses: Vec<String> = servers.iter().map(|s| s.address.clone()).collect();
    let victim = addresses[0].clone();
    let run = tokio::spawn(async move { pool_client::run(&job, &pool_only(addresses)).await });
    // Every server has parts running by now (each part takes far longer than this).
    tokio::time::sleep(Duration::from_millis(300)).await;
    servers[0].kill9();
    let report = run.await.unwrap().unwrap();
    assert_eq!(report.runs[0].result, expected);
    let pool = report.pool.unwrap();
    let retried: Vec<_> = pool.retried().collect();
    assert!(
        !retried.is_empty(),
        "the killed server's parts must have been retried"
    );
    for part in retried {
        assert_eq!(first_failure(part).server, victim);
        assert_ne!(part.computed_by, ComputedBy::Server(victim.clone()));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_dead_before_the_job_is_avoided() {
    let servers: Vec<ServerProcess> = (0..2)
        .map(|_| ServerProcess::start(&["--workers", "1"]))
        .collect();
    let dead = dead_address();
    let mut addresses: Vec<String> = servers.iter().map(|s| s.address.clone()).collect();
    addresses.push(dead.clone());
    let job = job_file(
        "parts = 6\nschedule = \"static\"\nplacement = \"shuffle\"\n[job]\nkind = \"loop\"\niterations = 6_000_000\n",
    );
    let report = pool_client::run(&job, &pool_only(addresses.clone()))
        .await
        .unwrap();
    assert_eq!(report.runs[0].result, reference_result(&job));
    let table = report.table();
    let pool = report.pool.unwrap();
    // A static shuffle deals the dead server two of the six parts.
    let retried: Vec<_> = pool.retried().collect();
    assert_eq!(retried.len(), 2);
    for part in retried {
        assert_eq!(first_failure(part).server, dead);
        assert!(
            first_failure(part)
                .error()
                .unwrap()
                .contains("cannot connect"),
            "{:?}",
            part.attempts
        );
    }
    let dead_record = pool.servers.iter().find(|s| s.address == dead).unwrap();
    assert!(dead_record.failure.is_some());
    // The table groups them: one line for the server and reason, with a count.
    let failed: Vec<&str> = table
        .lines()
        .filter(|l| l.contains(&format!("failed on {dead}")))
        .collect();
    assert_eq!(failed.len(), 1, "{table}");
    assert!(failed[0].starts_with("  2 parts failed on "), "{table}");
    assert!(table.contains("retried parts: 2 parts\n"), "{table}");
    assert!(table.contains("  computed in the end: "), "{table}");

    // The dynamic schedule hands parts only to servers it has connected to: the dead
    // one gets none, and no part needs a second attempt.
    let job = job_file("parts = 6\n[job]\nkind = \"loop\"\niterations = 6_000_000\n");
    let report = pool_client::run(&job, &pool_only(addresses)).await.unwrap();
    assert_eq!(report.runs[0].result, reference_result(&job));
    let pool = report.pool.unwrap();
    assert_eq!(pool.retried().count(), 0);
    assert!(pool
        .parts
        .iter()
        .all(|p| p.computed_by != ComputedBy::Server(dead.clone())));
    let dead_record = pool.servers.iter().find(|s| s.address == dead).unwrap();
    assert!(dead_record
        .failure
        .as_ref()
        .unwrap()
        .contains("cannot connect"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_killed_while_data_ships_loses_no_part() {
    // 48 MiB of matrix over servers that each compute one block at a time; the kill
    // lands at a different moment of the shipping in each round.
    let job =
        job_file("parts = 6\n[job]\nkind = \"matrix-sum\"\nrows = 3000\ncols = 2000\nseed = 5\n");
    let expected = reference_result(&job);
    for delay_ms in [0, 20, 80, 250] {
        let mut servers: Vec<ServerProcess> = (0..3)
            .map(|_| ServerProcess::start(&["--workers", "1"]))
            .collect();
        let addresses: Vec<String> = servers.iter().map(|s| s.address.clone()).collect();
        let job = job.clone();
        let run = tokio::spawn(async move { pool_client::run(&job, &pool_only(addresses)).await });
        tokio::time::sleep(Duration::from_millis(delay_ms)).await;
        servers[1].kill9();
        let report = run.await.unwrap().unwrap();
        assert_eq!(report.runs[0].result, expected, "kill after {delay_ms} ms");
        for part in &report.pool.unwrap().parts {
            assert!(part
                .failed_attempts()
                .all(|f| f.server == servers[1].address));
        }
    }
}

#[test]
fn every_server_down_fails_naming_each_server() {
    let dead: Vec<String> = (0..3).map(|_| dead_address()).collect();
    let list = dead.join(",");
    let job = support::examples_dir().join("loop.toml");
    let output = run_client(&[job.to_str().unwrap(), "--servers", &list, "--modes", "pool"]);
    assert_eq!(output.status.code(), Some(1));
    let message = stderr(&output);
    for address in &dead {
        assert!(
            message.contains(&format!("{address}: cannot connect")),
            "{message}"
        );
    }
    assert!(message.contains("fallback = \"local\""), "{message}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_that_accepts_nothing_times_out_and_the_part_moves() {
    // The kernel completes TCP handshakes into the backlog, but nobody ever answers.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let silent_address = silent.local_addr().unwrap().to_string();
    let server = ServerProcess::start(&["--workers", "1"]);
    let servers = vec![silent_address.clone(), server.address.clone()];
    let job_text = "parts = 4\nseed = 1\nhandshake_timeout = 0.5\n[job]\nkind = \"loop\"\niterations = 4_000_000\n";

    // Dynamic: parts go only to servers that finished the handshake.
    let job = job_file(job_text);
    let report = pool_client::run(&job, &pool_only(servers.clone()))
        .await
        .unwrap();
    assert_eq!(report.runs[0].result, reference_result(&job));
    let pool = report.pool.unwrap();
    assert_eq!(pool.retried().count(), 0);
    assert!(pool
        .parts
        .iter()
        .all(|p| p.computed_by == ComputedBy::Server(server.address.clone())));

    // Static: the silent server is dealt parts, which move once the handshake times out.
    let job = job_file(&format!("schedule = \"static\"\n{job_text}"));
    let report = pool_client::run(&job, &pool_only(servers)).await.unwrap();
    assert_eq!(report.runs[0].result, reference_result(&job));
    let pool = report.pool.unwrap();
    let retried: Vec<_> = pool.retried().collect();
    assert!(!retried.is_empty());
    for part in retried {
        assert!(
            first_failure(part)
                .error()
                .unwrap()
                .contains("did not answer within 500ms (handshake)"),
            "{:?}",
            part
        );
    }
    drop(silent);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_fallback_local_the_client_computes_what_no_server_could() {
    let job = job_file(
        "parts = 3\nfallback = \"local\"\n[job]\nkind = \"loop\"\niterations = 3_000_000\n",
    );
    let report = pool_client::run(&job, &pool_only(vec![dead_address(), dead_address()]))
        .await
        .unwrap();
    assert_eq!(report.runs[0].result, reference_result(&job));
    let pool = report.pool.as_ref().unwrap();
    assert!(pool
        .parts
        .iter()
        .all(|p| p.computed_by == ComputedBy::LocalFallback));
    assert!(
        report
            .table()
            .contains("computed in the end: 3 by local (fallback)"),
        "{}",
        report.table()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_lets_running_parts_finish_and_the_server_exits_0() {
    let mut server = ServerProcess::start(&["--workers", "2", "--shutdown-grace", "30"]);
    let job = job_file("parts = 2\n[job]\nkind = \"loop\"\niterations = 400_000_000\n");
    let expected = reference_result(&job);
    let address = server.address.clone();
    let run = tokio::spawn(async move { pool_client::run(&job, &pool_only(vec![address])).await });
    tokio::time::sleep(Duration::from_millis(200)).await;
    server.signal("TERM");
    let report = run.await.unwrap().unwrap();
    assert_eq!(report.runs[0].result, expected);
    assert!(
        report.pool.unwrap().retried().next().is_none(),
        "the parts finished where they were"
    );
    let status = tokio::task::spawn_blocking(move || server.wait_exit(Duration::from_secs(30)))
        .await
        .unwrap();
    assert_eq!(status.and_then(|s| s.code()), Some(0));
}

#[test]
fn ctrl_c_stops_the_client_with_130_and_its_local_servers() {
    let job = support::examples_dir().join("loop.toml");
    let mut client = std::process::Command::new(support::client_exe())
        .args([job.to_str().unwrap(), "--local", "2", "--modes", "pool"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Wait until both local servers run (children of the client), then interrupt.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let mut servers = Vec::new();
    while servers.len() < 2 && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
        servers = children_of(client.id());
    }
    assert_eq!(servers.len(), 2, "the local servers did not start");
    std::thread::sleep(Duration::from_millis(300));
    let status = std::process::Command::new("kill")
        .args(["-INT", &client.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let status = client.wait().unwrap();
    assert_eq!(status.code(), Some(130));
    for pid in servers {
        assert!(
            !std::path::Path::new(&format!("/proc/{pid}")).exists(),
            "local server {pid} outlived the client"
        );
    }
}

/// Process ids whose parent is `parent`, from /proc.
fn children_of(parent: u32) -> Vec<u32> {
    let mut children = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        // The parent pid is the second field after the parenthesised command name.
        let after_name = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
        if after_name
            .split_whitespace()
            .nth(1)
            .and_then(|p| p.parse::<u32>().ok())
            == Some(parent)
        {
            children.push(pid);
        }
    }
    children
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lying_server_is_caught_and_its_parts_computed_elsewhere() {
    use pool_common::codec::{read_frame_blocking, write_frame_blocking, Frame};
    use pool_common::protocol::{Reply, Request, Welcome};
    // A server that answers every part with a sum no block could make.
    let liar = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let liar_address = liar.local_addr().unwrap().to_string();
    std::thread::spawn(move || {
        for socket in liar.incoming() {
            let Ok(mut socket) = socket else { return };
            std::thread::spawn(move || {
                let welcome = Frame::Welcome(Welcome {
                    server: "liar".into(),
                    workers: 1,
                });
                while let Ok(Some(frame)) = read_frame_blocking(&mut socket) {
                    let answer = match frame {
                        Frame::Hello(_) => welcome.clone(),
                        Frame::Request(Request::RunPart { part_id, .. }) => {
                            Frame::Reply(Reply::PartDone {
                                part_id,
                                result: pool_common::jobs::PartResult::MatrixSum(
                                    pool_common::jobs::matrix_sum::MatrixTotal::Integer(i128::MAX),
                                ),
                                compute_nanos: 1,
                            })
                        }
                        _ => continue,
                    };
                    if write_frame_blocking(&mut socket, &answer).is_err() {
                        return;
                    }
                }
            });
        }
    });
    let honest = ServerProcess::start(&["--workers", "1"]);
    let job = job_file(
        "parts = 4\nseed = 2\nschedule = \"static\"\nplacement = \"shuffle\"\n[job]\nkind = \"matrix-sum\"\nrows = 40\ncols = 10\n",
    );
    let report = pool_client::run(
        &job,
        &pool_only(vec![liar_address.clone(), honest.address.clone()]),
    )
    .await
    .unwrap();
    assert_eq!(report.runs[0].result, reference_result(&job));
    let pool = report.pool.unwrap();
    let retried: Vec<_> = pool.retried().collect();
    assert_eq!(
        retried.len(),
        2,
        "a static shuffle deals the liar two parts"
    );
    for part in retried {
        assert_eq!(first_failure(part).server, liar_address);
        assert!(
            first_failure(part)
                .error()
                .unwrap()
                .contains("could not have produced"),
            "{:?}",
            part
        );
    }
}
