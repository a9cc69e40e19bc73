//! Every server model (`pool-server --model`) passes the same tests, one test per
//! model, each against a real server process over real sockets: a loop job and a
//! matrix job with exact results, hostile byte streams that disturb no other client,
//! a token, a cancelled part, and SIGTERM letting a running part finish.

mod support;

use std::time::Duration;

use pool_client::connection::{ServerConnection, ServerError};
use pool_client::hostile;
use pool_common::jobs::loop_sum::LoopPart;
use pool_common::jobs::matrix_sum::MatrixTotal;
use pool_common::jobs::{CancelFlag, Part, PartResult, PartTask};
use pool_common::splitmix::splitmix64;
use support::{job_file, pool_only, send_and_read_to_close, with_token, ServerProcess};

/// A bound on every wait in these tests, so a bug shows as a failure, not a hang.
const HANG_GUARD: Duration = Duration::from_secs(120);

macro_rules! model_tests {
    ($($name:ident: $model:literal,)*) => {$(
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $name() {
            every_test_on($model).await;
        }
    )*};
}

model_tests! {
    async_model: "async",
    threads_model: "threads",
    iterative_model: "iterative",
    fork_model: "fork",
}

async fn every_test_on(model: &str) {
    exact_results(model).await;
    hostile_streams_disturb_no_other_client(model).await;
    a_token_is_required(model).await;
    a_cancelled_part_frees_its_worker(model).await;
    sigterm_lets_a_running_part_finish(model).await;
}

/// A server of `model` with two workers, one-second idle timeout and these options.
fn server(model: &str, extra: &[&str]) -> ServerProcess {
    let mut args = vec!["--model", model, "--workers", "2", "--idle-timeout", "1"];
    args.extend_from_slice(extra);
    ServerProcess::start(&args)
}

fn loop_part(index: usize, lo: u64, hi: u64) -> Part {
    Part::new(
        index,
        PartTask::Loop(LoopPart { lo, hi }),
        bytes::Bytes::new(),
    )
}

fn expected(part: &Part) -> PartResult {
    part.compute(&CancelFlag::new()).unwrap()
}

async fn connect(address: &str, token: Option<&str>) -> Result<ServerConnection, String> {
    tokio::time::timeout(
        HANG_GUARD,
        ServerConnection::connect(address, &with_token(token)),
    )
    .await
    .expect("the handshake must end")
    .map_err(|e| e.to_string())
}

/// Runs `part` on a connection to `address` that sends it right behind the Hello (and
/// the token's proof), without waiting for the server's welcome.
async fn behind_the_hello(
    address: &str,
    token: Option<&str>,
    part: &Part,
) -> Result<PartResult, String> {
    tokio::time::timeout(HANG_GUARD, async {
        let connection = ServerConnection::start(address, &with_token(token)).await?;
        Ok(connection.run_part(part).await?.result)
    })
    .await
    .expect("the part must be answered")
    .map_err(|e: ServerError| e.to_string())
}

async fn exact_results(model: &str) {
    let server = server(model, &[]);
    let address = vec![server.address.clone()];
    let job = job_file("parts = 5\n[job]\nkind = \"loop\"\niterations = 1048576\n");
    let report = pool_client::run(&job, &pool_only(address.clone()))
        .await
        .unwrap();
    // The design's check value for [0, 2^20).
    assert_eq!(report.runs[0].result, PartResult::Loop(8731987058694679736));

    // 700 x 1000 = 5.6 MB: parts span more than one 4 MiB data frame.
    let (rows, cols, seed) = (700u64, 1000u64, 11u64);
    let sum: i128 = (0..rows * cols)
        .map(|k| splitmix64(seed.wrapping_add(k)) as i64 as i128)
        .sum();
    let job = job_file(&format!(
        "parts = 3\n[job]\nkind = \"matrix-sum\"\nrows = {rows}\ncols = {cols}\nseed = {seed}\n"
    ));
    let report = pool_client::run(&job, &pool_only(address)).await.unwrap();
    assert_eq!(
        report.runs[0].result,
        PartResult::MatrixSum(MatrixTotal::Integer(sum)),
        "{model}"
    );
}

async fn hostile_streams_disturb_no_other_client(model: &str) {
    let server = server(model, &[]);
    let address = server.address.clone();
    // A normal client computes parts on the same server meanwhile, connected first
    // (on the iterative model, the hostile streams wait for it in the backlog).
    let normal = connect(&address, None).await.unwrap();
    let parts: Vec<Part> = (0..4)
        .map(|i| loop_part(i, i as u64 * 50_000_000, (i as u64 + 1) * 50_000_000))
        .collect();
    let running = tokio::spawn({
        let parts = parts.clone();
        async move {
            let replies = futures::future::join_all(parts.iter().map(|p| normal.run_part(p))).await;
            replies
                .into_iter()
                .map(|reply| reply.map(|r| r.result).map_err(|e| e.to_string()))
                .collect::<Vec<_>>()
        }
    });
    let streams = hostile::streams();
    let answers = futures::future::join_all(
        streams
            .iter()
            .map(|(_, bytes)| send_and_read_to_close(address.clone(), bytes.clone())),
    )
    .await;
    for ((name, _), answer) in streams.iter().zip(&answers) {
        // Whatever the server said before closing, it was a proper frame or nothing.
        assert!(
            answer.len() < 4096,
            "{model}, {name}: {} bytes back",
            answer.len()
        );
    }
    // A first frame longer than any handshake is refused from its length alone.
    let oversized = streams
        .iter()
        .position(|(_, bytes)| *bytes == hostile::oversized_first_frame())
        .expect("the oversized first frame is among the streams");
    let oversized = String::from_utf8_lossy(&answers[oversized]);
    assert!(
        oversized.contains("a first frame of 4194304 bytes"),
        "{model}: {oversized}"
    );
    let results = tokio::time::timeout(HANG_GUARD, running)
        .await
        .unwrap()
        .unwrap();
    for (part, result) in parts.iter().zip(results) {
        assert_eq!(result, Ok(expected(part)), "{model}");
    }
    // And the server still serves new clients.
    let connection = connect(&address, None).await.unwrap();
    let reply = connection.run_part(&loop_part(0, 0, 1000)).await.unwrap();
    assert_eq!(reply.result, PartResult::Loop(4839925025133175650));
}

async fn a_token_is_required(model: &str) {
    let server = server(model, &["--token", "s3cret"]);
    let address = server.address.clone();
    let part = loop_part(0, 0, 10);
    let result = behind_the_hello(&address, Some("s3cret"), &part).await;
    assert_eq!(result, Ok(expected(&part)), "{model}");
    let refused = behind_the_hello(&address, None, &part).await;
    assert!(
        refused
            .as_ref()
            .is_err_and(|e| e.contains("requires a token")),
        "{model}: {refused:?}"
    );
    let Err(wrong) = connect(&address, Some("guess")).await else {
        panic!("{model}: a wrong token was accepted");
    };
    assert!(wrong.contains("wrong token"), "{model}: {wrong}");
    let Err(missing) = connect(&address, None).await else {
        panic!("{model}: a missing token was accepted");
    };
    assert!(missing.contains("requires a token"), "{model}: {missing}");
}

async fn a_cancelled_part_frees_its_worker(model: &str) {
    let server = server(model, &[]);
    let connection = connect(&server.address, None).await.unwrap();
    // Parts that would keep both workers busy for minutes, withdrawn when their futures
    // are dropped, as a client does with parts whose results it no longer wants.
    let endless = [
        loop_part(0, 0, 200_000_000_000),
        loop_part(1, 0, 200_000_000_000),
    ];
    let abandoned = tokio::time::timeout(
        Duration::from_millis(300),
        futures::future::join_all(endless.iter().map(|p| connection.run_part(p))),
    )
    .await;
    assert!(abandoned.is_err(), "the endless parts cannot have finished");
    tokio::time::timeout(HANG_GUARD, async {
        loop {
            let status = connection.status().await.expect("status");
            if status.workers_busy == 0 && status.parts_in_flight == 0 {
                return;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .expect("the cancelled parts' workers must be freed");
    let others = [loop_part(2, 0, 1000), loop_part(3, 1000, 3_000_000)];
    let replies = futures::future::join_all(others.iter().map(|p| connection.run_part(p))).await;
    for (part, reply) in others.iter().zip(replies) {
        assert_eq!(reply.unwrap().result, expected(part), "{model}");
    }
    assert!(
        !connection.is_broken(),
        "{model}: the connection survives a cancel"
    );
}

async fn sigterm_lets_a_running_part_finish(model: &str) {
    let mut server = server(model, &["--shutdown-grace", "60"]);
    let connection = connect(&server.address, None).await.unwrap();
    let part = loop_part(0, 0, 600_000_000);
    let reply = {
        let running = connection.run_part(&part);
        tokio::pin!(running);
        // Signal only once the part is in flight.
        tokio::time::timeout(HANG_GUARD, async {
            loop {
                tokio::select! {
                    _ = &mut running => panic!("{model}: the part finished before the signal"),
                    status = connection.status() => {
                        if status.expect("status").parts_in_flight == 1 {
                            return;
                        }
                    }
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
        .await
        .expect("the part must reach the server");
        server.signal("TERM");
        tokio::time::timeout(HANG_GUARD, running)
            .await
            .expect("the part must finish")
            .unwrap()
    };
    assert_eq!(reply.result, expected(&part), "{model}");
    drop(connection);
    let status = tokio::task::spawn_blocking(move || server.wait_exit(HANG_GUARD))
        .await
        .unwrap();
    assert_eq!(status.and_then(|s| s.code()), Some(0), "{model}");
}

/// The server listens with a backlog of 4096 (or the kernel's `somaxconn`, if lower):
/// 1,000 clients connecting at once fit in it, where tokio's default of 1024 made the
/// kernel drop handshakes, which clients retried only after 1 s, 3 s, 7 s (scenario 13
/// of `pool-bench`). `ss` reports a listening socket's backlog as its Send-Q.
#[test]
fn the_listen_backlog_holds_a_thousand_clients() {
    let server = server("async", &[]);
    let port = server.address.rsplit(':').next().expect("host:port");
    let ss = match std::process::Command::new("ss")
        .args(["-Hltn", &format!("sport = :{port}")])
        .output()
    {
        Ok(out) => out,
        Err(e) => {
            eprintln!("SKIPPED: `ss` cannot run ({e}): install the iproute2 package");
            return;
        }
    };
    let listing = String::from_utf8_lossy(&ss.stdout);
    let backlog: u32 = listing
        .split_whitespace()
        .nth(2)
        .and_then(|q| q.parse().ok())
        .unwrap_or_else(|| panic!("no listening socket on port {port} in: {listing}"));
    let somaxconn: u32 = std::fs::read_to_string("/proc/sys/net/core/somaxconn")
        .expect("read somaxconn")
        .trim()
        .parse()
        .expect("somaxconn is a number");
    assert_eq!(
        backlog,
        pool_server::LISTEN_BACKLOG.min(somaxconn),
        "the listening socket's backlog"
    );
}
