//! Scheduling over real server processes: dynamic beats static when one server is
//! slowed by a real CPU quota, a frozen server (SIGSTOP) costs seconds and loses no
//! part, copies are counted once, weights and policies place parts as documented.

mod support;

use std::time::Duration;

use pool_client::connection::ConnectOptions;
use pool_client::dispatch::{AttemptKind, AttemptOutcome, ComputedBy, PoolRun};
use pool_client::servers::CpuQuota;
use support::{job_file, pool_only, reference_result, ServerProcess};

/// Runs only the pool mode of `job_text` on `servers` and returns its run, checked
/// exact against a local computation.
async fn pool_run(job_text: &str, servers: Vec<String>) -> PoolRun {
    let job = job_file(job_text);
    let report = pool_client::run(&job, &pool_only(servers)).await.unwrap();
    assert_eq!(report.runs[0].result, reference_result(&job), "{job_text}");
    report.pool.unwrap()
}

fn one_worker_servers(count: usize) -> Vec<ServerProcess> {
    (0..count)
        .map(|_| ServerProcess::start(&["--workers", "1"]))
        .collect()
}

fn addresses(servers: &[ServerProcess]) -> Vec<String> {
    servers.iter().map(|s| s.address.clone()).collect()
}

/// Parts computed by each of `servers`, in order.
fn parts_per_server(run: &PoolRun, servers: &[String]) -> Vec<usize> {
    servers
        .iter()
        .map(|a| {
            run.parts
                .iter()
                .filter(|p| p.computed_by == ComputedBy::Server(a.clone()))
                .count()
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dynamic_beats_static_when_one_server_is_slowed() {
    let quota = match CpuQuota::new(0.05) {
        Ok(quota) => quota,
        Err(e) => {
            eprintln!("SKIPPED: a slowed server needs a CPU quota: {e:#}");
            return;
        }
    };
    let servers = one_worker_servers(3);
    quota.add(servers[0].pid()).unwrap();
    // Parts of about 25 ms on a free core take about half a second on the slowed one.
    let job = "parts = 12\nseed = 5\n[job]\nkind = \"loop\"\niterations = 120_000_000\n";
    let static_run = pool_run(
        &format!("schedule = \"static\"\nplacement = \"shuffle\"\n{job}"),
        addresses(&servers),
    )
    .await;
    let dynamic_run = pool_run(job, addresses(&servers)).await;
    // The static shuffle deals the slowed server a third of the parts and waits for
    // them; the dynamic schedule gives it what it can do. Expected ratio about 0.2.
    let ratio = dynamic_run.elapsed.as_secs_f64() / static_run.elapsed.as_secs_f64();
    assert!(
        ratio < 0.7,
        "dynamic {:?} vs static {:?}",
        dynamic_run.elapsed,
        static_run.elapsed
    );
    let counts = parts_per_server(&dynamic_run, &addresses(&servers));
    assert!(
        counts[0] < counts[1] && counts[0] < counts[2],
        "the slowed server took {counts:?}"
    );
    // Every part is counted once, whatever copies ran.
    assert_eq!(dynamic_run.parts.len(), 12);
    for part in &dynamic_run.parts {
        let won = part
            .attempts
            .iter()
            .filter(|a| a.outcome == AttemptOutcome::Won);
        assert_eq!(won.count(), 1, "{part:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tiny_parts_are_read_ahead_to_cover_the_round_trip_and_long_ones_are_not() {
    let servers = one_worker_servers(2);
    let list = addresses(&servers);
    // The most attempts each server held at once, from the attempts' own times.
    let most_held = |job: &'static str| {
        let list = list.clone();
        async move {
            let run = pool_run(job, list.clone()).await;
            list.iter()
                .map(|server| {
                    let attempts: Vec<_> = run
                        .parts
                        .iter()
                        .flat_map(|p| &p.attempts)
                        .filter(|a| &a.server == server)
                        .collect();
                    attempts
                        .iter()
                        .map(|a| {
                            attempts
                                .iter()
                                .filter(|b| b.start <= a.start && a.start < b.end)
                                .count()
                        })
                        .max()
                        .unwrap_or(0)
                })
                .collect::<Vec<usize>>()
        }
    };
    // 2,000 parts of 10 iterations: far shorter than a round trip, so a server that
    // held one part beyond its worker would wait a round trip between parts.
    let held = most_held("parts = 2000\n[job]\nkind = \"loop\"\niterations = 20_000\n").await;
    assert!(
        held.iter().all(|&h| h > 2),
        "tiny parts held at once: {held:?}"
    );
    // Parts of about 50 ms each: one beyond the worker, as before.
    let held = most_held("parts = 8\n[job]\nkind = \"loop\"\niterations = 400_000_000\n").await;
    assert!(
        held.iter().all(|&h| h <= 2),
        "long parts held at once: {held:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_server_is_copied_around_and_its_worker_freed_after() {
    let servers = one_worker_servers(3);
    // One part per server, each of about 2 s: no part is answered before the frozen
    // server's silence is noticed, so its part is rescued by liveness, not as a
    // straggler. Without liveness only the part timeout (set far away) would free it.
    let job = job_file(
        "parts = 3\npart_timeout = 120\nliveness_timeout = 0.5\n[job]\nkind = \"loop\"\niterations = 2_400_000_000\n",
    );
    let expected = reference_result(&job);
    let opts = pool_only(addresses(&servers));
    let run = tokio::spawn(async move { pool_client::run(&job, &opts).await });
    // Freeze a server once it holds a part (none finishes one for seconds).
    let mut holding = false;
    for _ in 0..200 {
        let states = pool_client::status::query_all(
            std::slice::from_ref(&servers[0].address),
            &ConnectOptions::default(),
        )
        .await;
        if states[0].answer.as_ref().unwrap().0.parts_in_flight > 0 {
            holding = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(holding, "the server never got its part");
    let frozen = servers[0].address.clone();
    servers[0].freeze();
    let report = run.await.unwrap();
    servers[0].signal("CONT");
    let report = report.unwrap();
    assert_eq!(report.runs[0].result, expected);
    let pool = report.pool.unwrap();
    let record = pool.servers.iter().find(|s| s.address == frozen).unwrap();
    assert!(record.suspected, "{record:?}");
    let mut rescued = 0;
    for part in &pool.parts {
        assert_ne!(part.computed_by, ComputedBy::Server(frozen.clone()));
        for attempt in part.attempts.iter().filter(|a| a.server == frozen) {
            assert_eq!(attempt.outcome, AttemptOutcome::Lost, "{part:?}");
            rescued += 1;
            let winner = part
                .attempts
                .iter()
                .find(|a| a.outcome == AttemptOutcome::Won);
            assert_eq!(winner.unwrap().kind, AttemptKind::Copy, "{part:?}");
        }
    }
    assert!(rescued > 0, "the frozen server held parts");
    // What was spent twice is the copies' time, each beside its part's first attempt,
    // not the frozen attempts' whole wait (which began before any copy did).
    let copies: Duration = pool
        .parts
        .iter()
        .flat_map(|p| &p.attempts)
        .filter(|a| a.kind == AttemptKind::Copy && !matches!(a.outcome, AttemptOutcome::Failed(_)))
        .map(|a| a.duration())
        .sum();
    assert!(copies > Duration::ZERO);
    assert_eq!(pool.time_spent_twice(), copies, "{:?}", pool.parts);

    // Thawed, the server drops the withdrawn parts and frees its worker.
    let mut idle = false;
    for _ in 0..100 {
        let states = pool_client::status::query_all(
            std::slice::from_ref(&frozen),
            &ConnectOptions::default(),
        )
        .await;
        let status = &states[0].answer.as_ref().unwrap().0;
        if status.parts_in_flight == 0 && status.workers_busy == 0 {
            idle = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(idle, "the thawed server still computes withdrawn parts");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn weights_in_a_server_list_are_honoured() {
    let servers = one_worker_servers(2);
    let weighted = vec![
        format!("3/{}", servers[0].address),
        format!("1/{}", servers[1].address),
    ];
    // A static deal weighs servers by their slots: 6 and 2 of 8 parts.
    let run = pool_run(
        "parts = 8\nschedule = \"static\"\n[job]\nkind = \"loop\"\niterations = 8_000_000\n",
        weighted.clone(),
    )
    .await;
    assert_eq!(parts_per_server(&run, &addresses(&servers)), [6, 2]);
    // The dynamic schedule gives each server its listed slots, not its one worker.
    let run = pool_run(
        "parts = 8\n[job]\nkind = \"loop\"\niterations = 8_000_000\n",
        weighted,
    )
    .await;
    let slots: Vec<u32> = run.servers.iter().map(|s| s.slots).collect();
    assert_eq!(slots, [3, 1]);
    assert!(run.servers.iter().all(|s| s.workers == 1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn policies_place_parts_as_documented() {
    let servers = one_worker_servers(3);
    let list = addresses(&servers);
    let job = |header: &str| {
        format!("parts = 6\nseed = 9\n{header}\n[job]\nkind = \"loop\"\niterations = 6_000_000\n")
    };
    // Static round robin: part i on server i mod 3.
    let run = pool_run(
        &job("schedule = \"static\"\nplacement = \"round-robin\""),
        list.clone(),
    )
    .await;
    for part in &run.parts {
        assert_eq!(
            part.computed_by,
            ComputedBy::Server(list[part.part % 3].clone())
        );
        assert_eq!(part.attempts[0].reason, "round-robin turn");
    }
    // The same seed replays a random deal.
    let random = job("schedule = \"static\"\nplacement = \"random\"");
    let first = pool_run(&random, list.clone()).await;
    let second = pool_run(&random, list.clone()).await;
    let placed = |run: &PoolRun| {
        run.parts
            .iter()
            .map(|p| p.computed_by.clone())
            .collect::<Vec<_>>()
    };
    assert_eq!(placed(&first), placed(&second));
    // Every dynamic policy says why it chose.
    for (policy, reason) in [
        ("least-loaded", "least loaded, est. done in"),
        ("two-choices", "two choices, "),
        ("shuffle", "shuffle turn"),
        ("round-robin", "round-robin turn"),
        ("random", "random"),
    ] {
        let run = pool_run(
            &job(&format!("placement = \"{policy}\"\nspeculate = false")),
            list.clone(),
        )
        .await;
        assert_eq!(run.scheduling.placement.name(), policy);
        for part in &run.parts {
            assert!(
                part.attempts[0].reason.starts_with(reason),
                "{policy}: {:?}",
                part.attempts[0]
            );
        }
    }
}

#[test]
fn the_timeline_draws_one_bar_per_attempt_in_its_servers_row() {
    let dir = support::temp_dir("timeline");
    let job = dir.join("job.toml");
    std::fs::write(
        &job,
        "parts = 5\nlocal = 2\n[job]\nkind = \"loop\"\niterations = 5_000_000\n",
    )
    .unwrap();
    let svg_path = dir.join("timeline.svg");
    let output = support::run_client(&[
        job.to_str().unwrap(),
        "--modes",
        "pool",
        "--quiet",
        "--timeline",
        svg_path.to_str().unwrap(),
        "--format",
        "json",
    ]);
    assert!(output.status.success(), "{}", support::stderr(&output));
    let report: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    let svg = std::fs::read_to_string(&svg_path).unwrap();
    let document = roxmltree::Document::parse(&svg).unwrap();
    let texts: Vec<&str> = document
        .descendants()
        .filter(|n| n.has_tag_name("text"))
        .filter_map(|n| n.text())
        .map(str::trim)
        .collect();
    for server in report["pool"]["servers"].as_array().unwrap() {
        let address = server["address"].as_str().unwrap();
        assert!(texts.contains(&address), "no row for {address}: {texts:?}");
    }
    // Every part's number labels its bar.
    for part in 0..5 {
        assert!(texts.contains(&part.to_string().as_str()), "{texts:?}");
    }
    assert!(texts.iter().any(|t| t.contains("dynamic schedule")));

    let example = support::examples_dir().join("loop.toml");
    let refused = support::run_client(&[
        example.to_str().unwrap(),
        "--modes",
        "sequential",
        "--timeline",
        "t.svg",
    ]);
    assert_eq!(refused.status.code(), Some(2));
    assert!(support::stderr(&refused).contains("--timeline draws the pool mode"));
}
