//! Cancelling one part by id, over real sockets: the part's worker is freed, the other
//! parts on the same connection go on, and only a server that answers nothing at all
//! costs the connection. Also: a tiny part does not wait for a busy worker.

mod support;

use std::time::{Duration, Instant};

use pool_client::connection::{ConnectOptions, ServerConnection, ServerError};
use pool_common::jobs::loop_sum::{LoopPart, TINY_ITERATIONS};
use pool_common::jobs::{Part, PartResult, PartTask};
use pool_server::ServerConfig;
use support::ServerProcess;

/// A bound on every wait in these tests, so a bug shows as a failure, not a hang.
const HANG_GUARD: Duration = Duration::from_secs(60);

fn loop_part(index: usize, lo: u64, hi: u64) -> Part {
    Part::new(
        index,
        PartTask::Loop(LoopPart { lo, hi }),
        bytes::Bytes::new(),
    )
}

/// A part that would keep a worker busy for minutes.
fn endless_part() -> Part {
    loop_part(0, 0, 200_000_000_000)
}

fn expected(part: &Part) -> PartResult {
    part.compute(&pool_common::jobs::CancelFlag::new()).unwrap()
}

/// Polls the server's status until no worker is busy and no part is in flight, and
/// returns how long that took.
async fn until_idle(connection: &ServerConnection) -> Duration {
    let started = Instant::now();
    tokio::time::timeout(HANG_GUARD, async {
        loop {
            let status = connection.status().await.expect("status");
            if status.workers_busy == 0 && status.parts_in_flight == 0 {
                return started.elapsed();
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .expect("the cancelled part's worker must be freed")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelling_one_part_frees_its_worker_and_leaves_the_others() {
    // One worker: the parts after the cancelled one can only run once it is freed.
    let config = ServerConfig {
        workers: 1,
        ..ServerConfig::default()
    };
    let server = pool_server::start("127.0.0.1:0", config).await.unwrap();
    let connection =
        ServerConnection::connect(&server.local_addr().to_string(), &ConnectOptions::default())
            .await
            .unwrap();

    // The endless part is withdrawn when its future is dropped, as a client does with
    // a part whose result it no longer wants.
    let endless = endless_part();
    let abandoned =
        tokio::time::timeout(Duration::from_millis(300), connection.run_part(&endless)).await;
    assert!(abandoned.is_err(), "the endless part cannot have finished");
    let freed_after = until_idle(&connection).await;
    println!("worker free {freed_after:?} after the cancel was sent");

    let others = [loop_part(1, 0, 1000), loop_part(2, 1000, 3_000_000)];
    let replies = tokio::time::timeout(
        HANG_GUARD,
        futures::future::join_all(others.iter().map(|p| connection.run_part(p))),
    )
    .await
    .expect("the other parts must complete");
    for (part, reply) in others.iter().zip(replies) {
        assert_eq!(reply.unwrap().result, expected(part));
    }
    assert!(!connection.is_broken(), "the connection survives a cancel");
    server.shutdown().await;
}

/// A part of at most `TINY_ITERATIONS` is computed on its connection's task, so it is
/// answered while the server's one worker is busy; one iteration more waits for the
/// worker.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tiny_part_is_answered_while_every_worker_is_busy() {
    let config = ServerConfig {
        workers: 1,
        ..ServerConfig::default()
    };
    let server = pool_server::start("127.0.0.1:0", config).await.unwrap();
    let address = server.local_addr().to_string();
    let busy = ServerConnection::connect(&address, &ConnectOptions::default())
        .await
        .unwrap();
    let connection = ServerConnection::connect(&address, &ConnectOptions::default())
        .await
        .unwrap();
    let endless = tokio::spawn(async move { busy.run_part(&endless_part()).await.map(|_| ()) });
    tokio::time::timeout(HANG_GUARD, async {
        while connection.status().await.expect("status").workers_busy == 0 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .expect("the endless part must start");

    let tiny = loop_part(1, 7, 7 + TINY_ITERATIONS);
    let reply = tokio::time::timeout(HANG_GUARD, connection.run_part(&tiny))
        .await
        .expect("a tiny part needs no worker")
        .unwrap();
    assert_eq!(reply.result, expected(&tiny));
    let status = connection.status().await.unwrap();
    assert_eq!(
        status.workers_busy, 1,
        "the endless part still holds the worker"
    );

    let small = loop_part(2, 7, 7 + TINY_ITERATIONS + 1);
    let mut waiting = std::pin::pin!(connection.run_part(&small));
    assert!(
        tokio::time::timeout(Duration::from_millis(300), &mut waiting)
            .await
            .is_err(),
        "a part over the tiny bound waits for the busy worker"
    );
    endless.abort();
    let reply = tokio::time::timeout(HANG_GUARD, waiting)
        .await
        .expect("the worker is freed when the endless part is withdrawn")
        .unwrap();
    assert_eq!(reply.result, expected(&small));
    server.shutdown().await;
}

/// A part without data is queued in the writer and flushed once the other parts ready
/// to go have queued theirs. One dropped in between (polled once, then abandoned) is
/// withdrawn by a cancel whose write flushes both; the connection stays usable.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_part_abandoned_before_its_flush_leaves_the_connection_usable() {
    let server = pool_server::start("127.0.0.1:0", ServerConfig::default())
        .await
        .unwrap();
    let connection =
        ServerConnection::connect(&server.local_addr().to_string(), &ConnectOptions::default())
            .await
            .unwrap();
    for _ in 0..20 {
        let endless = endless_part();
        let mut abandoned = std::pin::pin!(connection.run_part(&endless));
        assert!(futures::poll!(&mut abandoned).is_pending());
    }
    until_idle(&connection).await;
    let parts: Vec<Part> = (0..300)
        .map(|i| loop_part(i, i as u64 * 5000, (i as u64 + 1) * 5000))
        .collect();
    let replies = tokio::time::timeout(
        HANG_GUARD,
        futures::future::join_all(parts.iter().map(|p| connection.run_part(p))),
    )
    .await
    .expect("a burst of parts is answered");
    for (part, reply) in parts.iter().zip(replies) {
        assert_eq!(reply.unwrap().result, expected(part));
    }
    assert!(!connection.is_broken());
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_part_that_times_out_is_cancelled_and_its_connection_goes_on() {
    let server = pool_server::start("127.0.0.1:0", ServerConfig::default())
        .await
        .unwrap();
    let options = ConnectOptions {
        part_timeout: Some(Duration::from_millis(300)),
        ..ConnectOptions::default()
    };
    let connection = ServerConnection::connect(&server.local_addr().to_string(), &options)
        .await
        .unwrap();
    let error = connection.run_part(&endless_part()).await.unwrap_err();
    assert!(
        matches!(
            error,
            ServerError::Timeout {
                what: "a part's result",
                ..
            }
        ),
        "{error}"
    );
    assert!(
        !connection.is_broken(),
        "the server still answers its status"
    );
    until_idle(&connection).await;
    let part = loop_part(1, 0, 1000);
    assert_eq!(
        connection.run_part(&part).await.unwrap().result,
        expected(&part)
    );
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_server_fails_its_connection() {
    let server = ServerProcess::start(&["--workers", "1"]);
    let options = ConnectOptions {
        part_timeout: Some(Duration::from_millis(300)),
        handshake_timeout: Duration::from_millis(300),
        ..ConnectOptions::default()
    };
    let connection = ServerConnection::connect(&server.address, &options)
        .await
        .unwrap();
    // As a hung machine or a cut link looks: the socket stays open, nothing answers.
    server.freeze();
    let error = tokio::time::timeout(HANG_GUARD, connection.run_part(&loop_part(0, 0, 10)))
        .await
        .expect("a frozen server must not hang the client")
        .unwrap_err();
    server.signal("CONT");
    assert!(matches!(error, ServerError::Timeout { .. }), "{error}");
    assert!(
        connection.is_broken(),
        "no status answer: the server is gone"
    );
    let later = connection.run_part(&loop_part(1, 0, 10)).await.unwrap_err();
    assert!(
        matches!(
            later,
            ServerError::Timeout {
                what: "a status request",
                ..
            }
        ),
        "later parts fail at once with the reason: {later}"
    );
}
