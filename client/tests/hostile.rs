//! A server survives bad clients: garbage, wrong magic or version, oversized or
//! truncated frames, undecodable messages, silence, disconnects mid-part, requests over
//! its limits, wrong tokens and a thousand connections, while a normal job on the same
//! server still gets the right result. Its memory stays bounded, as the server process's
//! own resident set shows: under 400 connections that announce 4 MiB frames without
//! shaking hands, and under many clients shipping matrices at once.

mod support;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::{BufMut, BytesMut};
use pool_client::connection::{ConnectOptions, ServerConnection, ServerError};
use pool_client::hostile::{self, data, hello, matmul_task, raw_frame, share};
use pool_client::report::Mode;
use pool_common::auth;
use pool_common::codec::{encode_message, read_frame_blocking, write_frame_blocking, Frame};
use pool_common::jobs::loop_sum::LoopPart;
use pool_common::jobs::matmul::B_INPUT;
use pool_common::jobs::matrix_sum::{Element, MatrixPart};
use pool_common::jobs::{CancelFlag, JobInputs, Part, PartResult, PartTask, SharedInput};
use pool_common::protocol::{Reply, Request, Welcome, MAGIC, PROTOCOL_VERSION};
use pool_server::ServerConfig;
use support::{
    job_file, options, pool_only, reference_result, send_and_read_to_close, with_token,
    ServerProcess,
};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

/// A bound on every wait in these tests, so a bug shows as a failure, not a hang.
const HANG_GUARD: Duration = Duration::from_secs(60);

fn loop_part(index: usize, lo: u64, hi: u64) -> Part {
    Part::new(
        index,
        PartTask::Loop(LoopPart { lo, hi }),
        bytes::Bytes::new(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_input_is_closed_and_disturbs_no_other_client() {
    let config = ServerConfig {
        workers: 2,
        handshake_timeout: Duration::from_millis(300),
        idle_timeout: Duration::from_millis(500),
        ..ServerConfig::default()
    };
    let server = pool_server::start("127.0.0.1:0", config).await.unwrap();
    let address = server.local_addr();

    // A normal job runs on the same server the whole time.
    let job = job_file("parts = 4\n[job]\nkind = \"loop\"\niterations = 400_000_000\n");
    let expected = reference_result(&job);
    let mut normal = options(vec![address.to_string()]);
    normal.modes = vec![Mode::Pool];
    let running = tokio::spawn({
        let job = job.clone();
        async move { pool_client::run(&job, &normal).await }
    });

    for (name, bytes) in hostile::streams() {
        let answer = send_and_read_to_close(address, bytes).await;
        // Whatever the server said before closing, it was a proper frame or nothing.
        assert!(answer.len() < 4096, "{name}: {} bytes back", answer.len());
    }
    // The escaping name is refused by name, before anything could be written.
    let answer = send_and_read_to_close(
        address,
        [hello(), share("../../tmp/pool-escaped", 4), data(1, 4)].concat(),
    )
    .await;
    let said = String::from_utf8_lossy(&answer);
    assert!(said.contains("leaves the job's work folder"), "{said}");
    // A first frame longer than any handshake is refused from its length alone.
    let answer = send_and_read_to_close(address, hostile::oversized_first_frame()).await;
    let said = String::from_utf8_lossy(&answer);
    assert!(said.contains("a first frame of 4194304 bytes"), "{said}");

    let report = tokio::time::timeout(HANG_GUARD, running)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(report.runs[0].result, expected);
    // And the server still serves new clients.
    let connection = ServerConnection::connect(&address.to_string(), &ConnectOptions::default())
        .await
        .unwrap();
    let reply = connection.run_part(&loop_part(0, 0, 1000)).await.unwrap();
    assert_eq!(reply.result, PartResult::Loop(4839925025133175650));
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_leaves_mid_part_frees_its_worker() {
    let config = ServerConfig {
        workers: 1,
        ..ServerConfig::default()
    };
    let server = pool_server::start("127.0.0.1:0", config).await.unwrap();
    let address = server.local_addr().to_string();
    {
        // A part that would run for years, on the only worker; then the client leaves.
        let connection = ServerConnection::connect(&address, &ConnectOptions::default())
            .await
            .unwrap();
        let forever = loop_part(0, 0, 1 << 60);
        let _ =
            tokio::time::timeout(Duration::from_millis(200), connection.run_part(&forever)).await;
    }
    // The next client's part can only run if the worker was freed.
    let connection = ServerConnection::connect(&address, &ConnectOptions::default())
        .await
        .unwrap();
    let reply = tokio::time::timeout(HANG_GUARD, connection.run_part(&loop_part(0, 0, 1000)))
        .await
        .expect("the worker was not freed")
        .unwrap();
    assert_eq!(reply.result, PartResult::Loop(4839925025133175650));
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_matrix_product_without_its_b_is_refused_by_name() {
    let server = pool_server::start("127.0.0.1:0", ServerConfig::default())
        .await
        .unwrap();
    let address = server.local_addr().to_string();
    // Two rows of a 4 x 4 A, two bytes an element.
    let part = Part::new(0, matmul_task(4), vec![1u8; 16].into());

    let connection = ServerConnection::connect(&address, &ConnectOptions::default())
        .await
        .unwrap();
    let error = connection.run_part(&part).await.unwrap_err();
    assert!(error.to_string().contains("needs B"), "{error}");

    let connection = ServerConnection::connect(&address, &ConnectOptions::default())
        .await
        .unwrap();
    let wrong_size = JobInputs::new(vec![SharedInput {
        name: B_INPUT.into(),
        bytes: vec![0u8; 30].into(),
        executable: false,
    }])
    .unwrap();
    connection.share(&wrong_size).await.unwrap();
    let error = connection.run_part(&part).await.unwrap_err();
    assert!(error.to_string().contains("has 30 bytes"), "{error}");
    // The refused part's rows were read and dropped: the connection still works.
    let reply = connection.run_part(&loop_part(0, 0, 1000)).await.unwrap();
    assert_eq!(reply.result, PartResult::Loop(4839925025133175650));
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_over_a_limit_name_the_limit_and_its_flag() {
    let config = ServerConfig {
        workers: 1,
        max_part_bytes: 1024,
        max_part_work: 1_000_000,
        ..ServerConfig::default()
    };
    let server = pool_server::start("127.0.0.1:0", config).await.unwrap();
    let address = server.local_addr().to_string();
    let connection = ServerConnection::connect(&address, &ConnectOptions::default())
        .await
        .unwrap();

    let error = connection
        .run_part(&loop_part(0, 0, 2_000_000))
        .await
        .unwrap_err();
    assert!(error.to_string().contains("--max-part-work"), "{error}");

    let job = job_file("parts = 1\n[job]\nkind = \"matrix-sum\"\nrows = 100\ncols = 100\n");
    let part = &job.load_job().unwrap().split(1)[0];
    let error = connection.run_part(part).await.unwrap_err();
    assert!(error.to_string().contains("--max-part-bytes"), "{error}");

    // The refused part's data was read and dropped: the connection still works.
    let reply = connection.run_part(&loop_part(0, 0, 1000)).await.unwrap();
    assert_eq!(reply.result, PartResult::Loop(4839925025133175650));
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_over_the_limit_is_refused_with_the_flag_named() {
    let (server, address) = one_worker_server(|c| c.max_connections = 1).await;
    let first = ServerConnection::connect(&address, &ConnectOptions::default())
        .await
        .unwrap();
    let Err(error) = ServerConnection::connect(&address, &ConnectOptions::default()).await else {
        panic!("a second connection was accepted");
    };
    assert!(matches!(error, ServerError::Refused { .. }), "{error}");
    assert!(error.to_string().contains("--max-connections"), "{error}");
    drop(first);
    server.shutdown().await;
}

/// A server with one worker and the settings `adjust` makes, and its address.
async fn one_worker_server(
    adjust: impl FnOnce(&mut ServerConfig),
) -> (pool_server::ServerHandle, String) {
    let mut config = ServerConfig {
        workers: 1,
        ..ServerConfig::default()
    };
    adjust(&mut config);
    let server = pool_server::start("127.0.0.1:0", config).await.unwrap();
    let address = server.local_addr().to_string();
    (server, address)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_is_required_when_set() {
    let (server, address) = one_worker_server(|c| c.token = Some("s3cret".into())).await;

    let connection = ServerConnection::connect(&address, &with_token(Some("s3cret")))
        .await
        .unwrap();
    assert!(connection.run_part(&loop_part(0, 0, 10)).await.is_ok());

    let Err(wrong) = ServerConnection::connect(&address, &with_token(Some("guess"))).await else {
        panic!("a wrong token was accepted");
    };
    assert!(wrong.to_string().contains("wrong token"), "{wrong}");

    let Err(missing) = ServerConnection::connect(&address, &with_token(None)).await else {
        panic!("a missing token was accepted");
    };
    assert!(
        missing.to_string().contains("requires a token"),
        "{missing}"
    );
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_first_part_travels_behind_the_hello() {
    // A server that says nothing until the part has arrived: a client that waited for
    // the welcome before sending it would wait forever.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let address = listener.local_addr().unwrap().to_string();
    let part = loop_part(0, 0, 1000);
    let expected = part.compute(&CancelFlag::new()).unwrap();
    let server = std::thread::spawn({
        let expected = expected.clone();
        move || {
            let (mut socket, _) = listener.accept().unwrap();
            let hello = read_frame_blocking(&mut socket);
            assert!(matches!(hello, Ok(Some(Frame::Hello(_)))), "{hello:?}");
            let request = read_frame_blocking(&mut socket);
            let Ok(Some(Frame::Request(Request::RunPart { part_id, .. }))) = request else {
                panic!("expected the part right behind the Hello, got {request:?}");
            };
            let welcome = Welcome {
                server: "pool-server (test)".into(),
                workers: 3,
            };
            let done = Reply::PartDone {
                part_id,
                result: expected,
                compute_nanos: 1,
            };
            for frame in [Frame::Welcome(welcome), Frame::Reply(done)] {
                write_frame_blocking(&mut socket, &frame).unwrap();
            }
            // Until the client closes.
            while let Ok(Some(_)) = read_frame_blocking(&mut socket) {}
        }
    });
    let connection = ServerConnection::start(&address, &ConnectOptions::default())
        .await
        .unwrap();
    let reply = tokio::time::timeout(HANG_GUARD, connection.run_part(&part))
        .await
        .expect("the part waited for the welcome")
        .unwrap();
    assert_eq!(reply.result, expected);
    assert_eq!(connection.welcome().await.unwrap().workers, 3);
    drop(connection);
    tokio::task::spawn_blocking(move || server.join().unwrap())
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refusal_answers_the_parts_sent_behind_the_hello() {
    let (server, address) = one_worker_server(|c| c.token = Some("s3cret".into())).await;
    // 64 MiB behind the Hello: the server closes long before reading it all, so the
    // write fails, and the refusal must still be what the part reports.
    let rows = 1 << 20;
    let shipped = Part::new(
        0,
        PartTask::MatrixSum(MatrixPart {
            first_row: 0,
            rows,
            cols: 8,
            element: Element::I64,
        }),
        bytes::Bytes::from(vec![0u8; rows as usize * 8 * 8]),
    );
    let refused = |connection: ServerConnection, part: Part| async move {
        let answer = tokio::time::timeout(HANG_GUARD, connection.run_part(&part))
            .await
            .expect("a refused part must not wait");
        let Err(error) = answer else {
            panic!("a refused connection computed a part");
        };
        let welcome = connection.welcome().await.map(|_| ()).unwrap_err();
        assert_eq!(welcome.to_string(), error.to_string());
        assert!(matches!(error, ServerError::Refused { .. }), "{error}");
        error.to_string()
    };

    let missing = ServerConnection::start(&address, &with_token(None))
        .await
        .unwrap();
    let said = refused(missing, shipped.clone()).await;
    assert!(said.contains("requires a token"), "{said}");

    let wrong = ServerConnection::start(&address, &with_token(Some("guess")))
        .await
        .unwrap();
    let said = refused(wrong, shipped).await;
    assert!(said.contains("wrong token"), "{said}");

    // The right token: the part behind the proof is computed.
    let accepted = ServerConnection::start(&address, &with_token(Some("s3cret")))
        .await
        .unwrap();
    let part = loop_part(0, 0, 1000);
    let reply = accepted.run_part(&part).await.unwrap();
    assert_eq!(reply.result, part.compute(&CancelFlag::new()).unwrap());
    assert_eq!(accepted.welcome().await.unwrap().workers, 1);
    drop(accepted);
    server.shutdown().await;

    // Over the connection limit.
    let (server, address) = one_worker_server(|c| c.max_connections = 1).await;
    let first = ServerConnection::connect(&address, &with_token(None))
        .await
        .unwrap();
    let second = ServerConnection::start(&address, &with_token(None))
        .await
        .unwrap();
    let said = refused(second, loop_part(1, 0, 10)).await;
    assert!(said.contains("--max-connections"), "{said}");
    drop(first);
    server.shutdown().await;

    // A peer of another version refused while 8 MiB more follow its Hello: the server
    // stops reading at once, and the refusal still reaches the peer.
    let server = pool_server::start("127.0.0.1:0", ServerConfig::default())
        .await
        .unwrap();
    let mut other_hello = BytesMut::new();
    other_hello.put_u8(b'H');
    other_hello.put_slice(&MAGIC);
    other_hello.put_u16_le(PROTOCOL_VERSION + 1);
    other_hello.put_slice(&encode_message(&"pool-client 9.9.9").unwrap());
    let mut stream = raw_frame(&other_hello);
    for _ in 0..8 {
        stream.extend(data(1, 1 << 20));
    }
    let answer = send_and_read_to_close(server.local_addr(), stream).await;
    let Ok(Some(Frame::Refused(reason))) = read_frame_blocking(&mut &answer[..]) else {
        panic!("expected a refusal, got {} bytes", answer.len())
    };
    assert!(reason.contains("run the same pool release"), "{reason}");
    server.shutdown().await;
}

/// Reads a stream, keeping a copy of every byte read.
struct Recording<R> {
    inner: R,
    bytes: Vec<u8>,
}

impl<R: std::io::Read> std::io::Read for Recording<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.bytes.extend_from_slice(&buf[..n]);
        Ok(n)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_token_never_goes_on_the_wire() {
    const TOKEN: &str = "correct horse battery staple";
    // A fake server that challenges the client, welcomes its answer, takes a status
    // request, and records every byte the client sent until it closed.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let address = listener.local_addr().unwrap().to_string();
    let server = std::thread::spawn(move || {
        let (socket, _) = listener.accept().unwrap();
        let mut writer = socket.try_clone().unwrap();
        let mut client = Recording {
            inner: socket,
            bytes: Vec::new(),
        };
        let hello = read_frame_blocking(&mut client).unwrap();
        assert!(matches!(hello, Some(Frame::Hello(_))), "{hello:?}");
        let nonce = auth::nonce();
        write_frame_blocking(&mut writer, &Frame::Challenge(nonce)).unwrap();
        let Some(Frame::Proof(proof)) = read_frame_blocking(&mut client).unwrap() else {
            panic!("no answer to the challenge")
        };
        let welcome = Welcome {
            server: "fake".into(),
            workers: 1,
        };
        write_frame_blocking(&mut writer, &Frame::Welcome(welcome)).unwrap();
        let request = read_frame_blocking(&mut client).unwrap();
        assert_eq!(request, Some(Frame::Request(Request::Status)));
        // The client closes; read what else it sent, to its end.
        while let Ok(Some(_)) = read_frame_blocking(&mut client) {}
        (auth::verify(TOKEN, &nonce, &proof), client.bytes)
    });
    let options = ConnectOptions {
        token: Some(TOKEN.into()),
        handshake_timeout: Duration::from_millis(200),
        ..ConnectOptions::default()
    };
    let connection = ServerConnection::connect(&address, &options).await.unwrap();
    // The fake server never answers the status request: the client gives up on it.
    assert!(connection.status().await.is_err());
    drop(connection);
    let (proved, sent) = tokio::task::spawn_blocking(move || server.join().unwrap())
        .await
        .unwrap();
    assert!(proved, "the client's answer proves the token");
    assert!(sent.len() > 20, "{} bytes recorded", sent.len());
    let token = TOKEN.as_bytes();
    assert!(
        !sent.windows(token.len()).any(|window| window == token),
        "the token is in the client's bytes"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peers_of_the_previous_protocol_version_are_told_so_at_once() {
    // The Hello of revision 5: its header, then the client's name and its token.
    let old_version = PROTOCOL_VERSION - 100;
    let mut old_hello = BytesMut::new();
    old_hello.put_u8(b'H');
    old_hello.put_slice(&MAGIC);
    old_hello.put_u16_le(old_version);
    old_hello.put_slice(&encode_message(&("pool-client 0.1.0", Some("s3cret"))).unwrap());

    // An old client meets a new server, with a token: refused by version, not by
    // token, and not left waiting for an answer to a challenge.
    let config = ServerConfig {
        workers: 1,
        token: Some("s3cret".into()),
        ..ServerConfig::default()
    };
    let server = pool_server::start("127.0.0.1:0", config).await.unwrap();
    let answer = send_and_read_to_close(server.local_addr(), raw_frame(&old_hello)).await;
    let Ok(Some(Frame::Refused(reason))) = read_frame_blocking(&mut &answer[..]) else {
        panic!("expected a refusal, got {answer:?}")
    };
    assert!(
        reason.contains(&format!("speaks pool protocol version {PROTOCOL_VERSION}"))
            && reason.contains(&format!("the client version {old_version}")),
        "{reason}"
    );
    server.shutdown().await;

    // A new client meets an old server, which refuses the new Hello as every release
    // refuses another version: a refusal in its own version's header.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let address = listener.local_addr().unwrap().to_string();
    let old_server = std::thread::spawn(move || {
        let (mut socket, _) = listener.accept().unwrap();
        // A Hello of this build's version, which the old server does not speak.
        let hello = read_frame_blocking(&mut socket);
        assert!(matches!(hello, Ok(Some(Frame::Hello(_)))), "{hello:?}");
        let reason = format!(
            "this server speaks pool protocol version {old_version}, the client version \
             {PROTOCOL_VERSION}: run the same pool release on both sides"
        );
        let mut refusal = BytesMut::new();
        refusal.put_u8(b'X');
        refusal.put_slice(&MAGIC);
        refusal.put_u16_le(old_version);
        refusal.put_slice(reason.as_bytes());
        std::io::Write::write_all(&mut socket, &raw_frame(&refusal)).unwrap();
    });
    let options = ConnectOptions {
        token: Some("s3cret".into()),
        ..ConnectOptions::default()
    };
    let Err(error) =
        tokio::time::timeout(HANG_GUARD, ServerConnection::connect(&address, &options))
            .await
            .expect("the client must not wait for an old server")
    else {
        panic!("an old server was accepted")
    };
    assert!(matches!(error, ServerError::Refused { .. }), "{error}");
    assert!(
        error
            .to_string()
            .contains(&format!("speaks pool protocol version {old_version}")),
        "{error}"
    );
    tokio::task::spawn_blocking(move || old_server.join().unwrap())
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_connections_keep_the_server_up_and_its_memory_bounded() {
    let server = ServerProcess::start(&["--workers", "2"]);
    let (_, rss_before) = server.memory_kib();

    // 500 clients that connect, shake hands and then sit idle...
    let mut idle = Vec::new();
    for _ in 0..500 {
        let mut socket = TcpStream::connect(&server.address).await.unwrap();
        socket.write_all(&hello()).await.unwrap();
        idle.push(socket);
    }
    // ...while 500 others each run a small part at the same time.
    let active = futures::future::join_all((0..500u64).map(|i| {
        let address = server.address.clone();
        async move {
            let connection =
                ServerConnection::connect(&address, &ConnectOptions::default()).await?;
            connection
                .run_part(&loop_part(0, i * 1000, (i + 1) * 1000))
                .await
        }
    }));
    let replies = tokio::time::timeout(HANG_GUARD, active)
        .await
        .expect("parts completed");
    let (peak, rss_with_idle) = server.memory_kib();
    let mut total = 0u64;
    for reply in replies {
        let PartResult::Loop(sum) = reply.unwrap().result else {
            panic!("wrong kind")
        };
        total = total.wrapping_add(sum);
    }
    let expected = LoopPart { lo: 0, hi: 500_000 }
        .compute(&pool_common::jobs::CancelFlag::new())
        .unwrap();
    assert_eq!(total, expected);

    let per_idle = rss_with_idle.saturating_sub(rss_before) as f64 / 500.0;
    println!("server RSS: {rss_before} KiB at start, {rss_with_idle} KiB with 500 idle connections (peak {peak} KiB); {per_idle:.1} KiB per idle connection");
    // Bounded: each connection costs kilobytes, not megabytes.
    assert!(peak < 256 * 1024, "peak RSS {peak} KiB");
    assert!(per_idle < 64.0, "{per_idle} KiB per idle connection");
    drop(idle);
}

/// The buffer budget of the matrix test's server: small beside what its clients ship.
const TEST_BUFFER_BUDGET_MIB: u64 = 16;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unauthenticated_4_mib_frames_on_400_connections_keep_the_server_small() {
    let mut server = ServerProcess::start(&["--workers", "2", "--token", "s3cret"]);
    let (_, rss_start) = server.memory_kib();
    // Each connection announces a 4 MiB frame and sends 4 MiB of junk: no Hello, so
    // no token is needed to do it.
    const FRAME: usize = 4 << 20;
    let mut attack = (FRAME as u32).to_be_bytes().to_vec();
    attack.resize(4 + FRAME, 0x5a);
    let attack = bytes::Bytes::from(attack);
    let written = Arc::new(AtomicUsize::new(0));
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let mut attackers = Vec::new();
    for _ in 0..400 {
        let address = server.address.clone();
        let attack = attack.clone();
        let written = Arc::clone(&written);
        let mut stopped = stopped.clone();
        attackers.push(tokio::spawn(async move {
            let mut socket = TcpStream::connect(&address).await.unwrap();
            // The server may close at once: a failed write is what it should do.
            let _ = socket.write_all(&attack).await;
            written.fetch_add(1, Ordering::SeqCst);
            // Held open until the server's memory was read.
            let _ = stopped.changed().await;
        }));
    }
    for _ in 0..3000 {
        if written.load(Ordering::SeqCst) == attackers.len() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (peak, rss) = server.memory_kib();
    println!(
        "pre-handshake attack, 400 x 4 MiB: server RSS {rss_start} KiB at start, {rss} KiB with the connections open, peak {peak} KiB"
    );
    stop.send(true).unwrap();
    for attacker in attackers {
        tokio::time::timeout(HANG_GUARD, attacker)
            .await
            .unwrap()
            .unwrap();
    }
    assert!(peak < 64 * 1024, "peak RSS {peak} KiB");
    // The server still serves a client that knows the token.
    let options = ConnectOptions {
        token: Some("s3cret".into()),
        ..ConnectOptions::default()
    };
    let connection = ServerConnection::connect(&server.address, &options)
        .await
        .unwrap();
    let reply = connection.run_part(&loop_part(0, 0, 1000)).await.unwrap();
    assert_eq!(reply.result, PartResult::Loop(4839925025133175650));
    server.kill9();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn matrix_jobs_shipping_at_once_stay_within_the_buffer_budget() {
    let budget = (TEST_BUFFER_BUDGET_MIB << 20).to_string();
    let server = ServerProcess::start(&[
        "--workers",
        "2",
        "--token",
        "s3cret",
        "--max-buffer-memory",
        &budget,
    ]);
    let (_, rss_start) = server.memory_kib();
    // Ten jobs of 32 MiB each, shipping to the one server at the same time.
    let jobs: Vec<_> = (0..10)
        .map(|seed| {
            job_file(&format!(
                "parts = 4\ntoken = \"s3cret\"\n[job]\nkind = \"matrix-sum\"\nrows = 2048\ncols = 2048\nseed = {seed}\n"
            ))
        })
        .collect();
    let expected: Vec<_> = jobs.iter().map(reference_result).collect();
    let runs = futures::future::join_all(jobs.iter().map(|job| {
        let options = pool_only(vec![server.address.clone()]);
        async move { pool_client::run(job, &options).await }
    }));
    let reports = tokio::time::timeout(HANG_GUARD * 5, runs)
        .await
        .expect("the jobs finished");
    let (peak, rss) = server.memory_kib();
    println!(
        "10 matrix jobs of 32 MiB at once, buffer budget {TEST_BUFFER_BUDGET_MIB} MiB: server RSS {rss_start} KiB at start, {rss} KiB after, peak {peak} KiB"
    );
    for (report, expected) in reports.into_iter().zip(expected) {
        assert_eq!(report.unwrap().runs[0].result, expected);
    }
    // The constant: the server's own start-up memory (6 MiB here) and its read-ahead.
    assert!(
        peak < (TEST_BUFFER_BUDGET_MIB + 16) * 1024,
        "peak RSS {peak} KiB over the budget of {TEST_BUFFER_BUDGET_MIB} MiB and 16 MiB"
    );
}
