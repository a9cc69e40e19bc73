//! Scenario 4: connection scale. 1,000 clients connect to one server at once and each
//! runs one small part; beside the same number of clients doing a 16-byte echo against
//! the raw echo server. Also the server's memory per idle connection.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::bail;
use futures::future::try_join_all;
use pool_client::connection::{ConnectOptions, ServerConnection};
use pool_common::jobs::loop_sum::LoopPart;
use pool_common::jobs::{CancelFlag, Part, PartTask};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::{micros, Settings};
use crate::figures::{percentile, Figure, Goal};
use crate::procs::Helper;

const SCENARIO: &str = "4 connection scale (one server)";
/// Iterations of each client's small part.
const PART_ITERATIONS: u64 = 1000;

/// Runs the scenario and returns its figures.
pub async fn run(s: &Settings) -> anyhow::Result<Vec<Figure>> {
    let n = if s.quick { 50 } else { 1000 };
    let mut m: BTreeMap<&str, Vec<f64>> = BTreeMap::new();
    let mut put = |k: &'static str, v: f64| m.entry(k).or_default().push(v);
    let timeouts = ConnectOptions {
        connect_timeout: Duration::from_secs(30),
        handshake_timeout: Duration::from_secs(30),
        ..ConnectOptions::default()
    };

    for _ in 0..s.heavy_runs() {
        // The pool server, fresh so that its peak memory is this run's.
        let server = Helper::pool_server(s.cores)?;
        let rss_before = server.rss_kib()?;
        let connects = (0..n).map(|_| async {
            let started = Instant::now();
            let conn = ServerConnection::connect(&server.addr, &timeouts).await?;
            anyhow::Ok((conn, micros(started.elapsed())))
        });
        let (conns, mut connect_lat): (Vec<_>, Vec<_>) =
            try_join_all(connects).await?.into_iter().unzip();
        tokio::time::sleep(Duration::from_millis(300)).await;
        let rss_idle = server.rss_kib()?;
        let runs = conns.iter().enumerate().map(|(i, conn)| async move {
            let lo = i as u64 * PART_ITERATIONS;
            let task = PartTask::Loop(LoopPart {
                lo,
                hi: lo + PART_ITERATIONS,
            });
            let part = Part::new(i, task, bytes::Bytes::new());
            let started = Instant::now();
            let reply = conn.run_part(&part).await?;
            let want = part.compute(&CancelFlag::new()).expect("never cancelled");
            anyhow::Ok((reply.result == want, micros(started.elapsed())))
        });
        let (ok, mut part_lat): (Vec<bool>, Vec<f64>) =
            try_join_all(runs).await?.into_iter().unzip();
        drop(conns);
        let correct = ok.iter().filter(|&&x| x).count();
        if correct != n {
            bail!("{} of {n} clients got a wrong result", n - correct);
        }
        put("correct", correct as f64 / n as f64);
        put("connect_p50", percentile(&mut connect_lat, 50.0));
        put("connect_p99", percentile(&mut connect_lat, 99.0));
        put("part_p50", percentile(&mut part_lat, 50.0));
        put("part_p99", percentile(&mut part_lat, 99.0));
        put(
            "idle_kib",
            (rss_idle.saturating_sub(rss_before)) as f64 / n as f64,
        );
        put("peak_mib", server.peak_rss_kib()? as f64 / 1024.0);
        drop(server);

        // The raw echo server, the same way.
        let echo = Helper::echo()?;
        let rss_before = echo.rss_kib()?;
        let connects = (0..n).map(|_| async {
            let started = Instant::now();
            let socket = TcpStream::connect(&echo.addr).await?;
            socket.set_nodelay(true)?;
            anyhow::Ok((socket, micros(started.elapsed())))
        });
        let (sockets, mut connect_lat): (Vec<_>, Vec<_>) =
            try_join_all(connects).await?.into_iter().unzip();
        tokio::time::sleep(Duration::from_millis(300)).await;
        let rss_idle = echo.rss_kib()?;
        let echoes = sockets.into_iter().map(|mut socket| async move {
            let started = Instant::now();
            socket.write_all(b"pool-bench echo!").await?;
            let mut buf = [0u8; 16];
            socket.read_exact(&mut buf).await?;
            anyhow::Ok(micros(started.elapsed()))
        });
        let mut echo_lat = try_join_all(echoes).await?;
        put("echo_connect_p50", percentile(&mut connect_lat, 50.0));
        put("echo_connect_p99", percentile(&mut connect_lat, 99.0));
        put("echo_p50", percentile(&mut echo_lat, 50.0));
        put("echo_p99", percentile(&mut echo_lat, 99.0));
        put(
            "echo_idle_kib",
            (rss_idle.saturating_sub(rss_before)) as f64 / n as f64,
        );
        put("echo_peak_mib", echo.peak_rss_kib()? as f64 / 1024.0);
    }

    let v = |k: &str| m[k].clone();
    Ok(vec![
        Figure::plain(
            SCENARIO,
            format!("{n} clients: share of correct results"),
            "",
            &v("correct"),
        )
        .goal(Goal::AtLeast(1.0)),
        Figure::against(
            SCENARIO,
            format!("{n} at once: connect + handshake p50"),
            "us",
            &v("connect_p50"),
            "raw connect p50",
            &v("echo_connect_p50"),
        ),
        Figure::against(
            SCENARIO,
            format!("{n} at once: connect + handshake p99"),
            "us",
            &v("connect_p99"),
            "raw connect p99",
            &v("echo_connect_p99"),
        ),
        Figure::against(
            SCENARIO,
            format!("{n} at once: one small part p50"),
            "us",
            &v("part_p50"),
            "raw echo p50",
            &v("echo_p50"),
        ),
        Figure::against(
            SCENARIO,
            format!("{n} at once: one small part p99"),
            "us",
            &v("part_p99"),
            "raw echo p99",
            &v("echo_p99"),
        ),
        Figure::against(
            SCENARIO,
            "server peak RSS",
            "MiB",
            &v("peak_mib"),
            "raw echo server",
            &v("echo_peak_mib"),
        ),
        Figure::against(
            SCENARIO,
            "server RSS per idle connection",
            "KiB",
            &v("idle_kib"),
            "raw echo server",
            &v("echo_idle_kib"),
        ),
    ])
}
