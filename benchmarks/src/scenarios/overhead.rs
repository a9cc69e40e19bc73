//! Scenario 1: what one part costs beyond its work. Empty parts (no work, no data)
//! against 1 and 2 servers, beside raw TCP echoes of 16 bytes over loopback.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

use anyhow::bail;
use pool_client::connection::{ConnectOptions, ServerConnection};
use pool_common::jobs::{Part, PartResult};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::Semaphore;

use super::{connect_all, empty_parts, micros, run_windowed, secs, Settings, WINDOW};
use crate::figures::{percentile, Figure, Goal};
use crate::procs::Helper;

const SCENARIO: &str = "1 per-part overhead (empty parts)";
const MESSAGE: [u8; 16] = *b"pool-bench echo!";

/// Runs the scenario and returns its figures.
pub async fn run(s: &Settings) -> anyhow::Result<Vec<Figure>> {
    let n = if s.quick { 300 } else { 10_000 };
    // Fresh connections cost ~0.5 ms each; 2,000 give a stable median in ~1 s per line.
    let fresh_n = if s.quick { 100 } else { 2_000 };
    let servers = [Helper::pool_server(1)?, Helper::pool_server(1)?];
    let echoes = [Helper::echo()?, Helper::echo()?];
    let addrs: Vec<&str> = servers.iter().map(|h| h.addr.as_str()).collect();
    let echo_addrs: Vec<&str> = echoes.iter().map(|h| h.addr.as_str()).collect();
    let parts = empty_parts(n);
    let mut m: BTreeMap<&str, Vec<f64>> = BTreeMap::new();
    let mut put = |k: &'static str, v: f64| m.entry(k).or_default().push(v);

    for _ in 0..s.runs {
        // One in flight on a reused connection.
        let mut echo = echo_reused(echo_addrs[0], n).await?;
        put("echo_p50", percentile(&mut echo, 50.0));
        put("echo_p99", percentile(&mut echo, 99.0));
        for (servers, k50, k99) in [
            (1, "reused1_p50", "reused1_p99"),
            (2, "reused2_p50", "reused2_p99"),
        ] {
            let conns = connect_all(&addrs[..servers]).await?;
            let mut rtts = pool_reused(&conns, &parts).await?;
            put(k50, percentile(&mut rtts, 50.0));
            put(k99, percentile(&mut rtts, 99.0));
        }

        // A fresh connection per part.
        let mut raw = echo_fresh(echo_addrs[0], fresh_n, 1).await?;
        put("raw_fresh_p50", percentile(&mut raw, 50.0));
        let mut raw2 = echo_fresh(echo_addrs[0], fresh_n, 2).await?;
        put("raw_fresh2_p50", percentile(&mut raw2, 50.0));
        for (servers, key) in [(1, "fresh1_p50"), (2, "fresh2_p50")] {
            let mut lat = pool_fresh(&addrs[..servers], &parts[..fresh_n]).await?;
            put(key, percentile(&mut lat, 50.0));
        }

        // Many in flight.
        put("echo_pipelined", echo_pipelined(&echo_addrs, n).await?);
        for (servers, key) in [(1, "inflight1"), (2, "inflight2")] {
            let conns = connect_all(&addrs[..servers]).await?;
            let (elapsed, result) = run_windowed(&conns, &parts).await?;
            if result != PartResult::Loop(0) {
                bail!("empty parts summed to {result}");
            }
            put(key, n as f64 / secs(elapsed));
        }
    }

    let v = |k: &str| m[k].clone();
    let echo_name = "raw echo, reused connection";
    Ok(vec![
        Figure::against(
            SCENARIO,
            "reused connection, 1 server: p50",
            "us",
            &v("reused1_p50"),
            echo_name,
            &v("echo_p50"),
        )
        .goal(Goal::RatioAtMost(1.5)),
        Figure::against(
            SCENARIO,
            "reused connection, 1 server: p99",
            "us",
            &v("reused1_p99"),
            "raw echo p99",
            &v("echo_p99"),
        ),
        Figure::against(
            SCENARIO,
            "reused connections, 2 servers: p50",
            "us",
            &v("reused2_p50"),
            echo_name,
            &v("echo_p50"),
        )
        .goal(Goal::RatioAtMost(1.5)),
        Figure::against(
            SCENARIO,
            "reused connections, 2 servers: p99",
            "us",
            &v("reused2_p99"),
            "raw echo p99",
            &v("echo_p99"),
        ),
        Figure::against(
            SCENARIO,
            "fresh connection per part, 1 server: p50",
            "us",
            &v("fresh1_p50"),
            "raw connect+echo+close",
            &v("raw_fresh_p50"),
        )
        .goal(Goal::RatioAtMost(1.5)),
        Figure::against(
            SCENARIO,
            "fresh connection per part, 2 servers: p50",
            "us",
            &v("fresh2_p50"),
            "raw connect+echo+close",
            &v("raw_fresh_p50"),
        )
        .goal(Goal::RatioAtMost(1.5)),
        Figure::against(
            SCENARIO,
            "fresh connection per part, 1 server: p50",
            "us",
            &v("fresh1_p50"),
            "raw connect+2 echoes+close",
            &v("raw_fresh2_p50"),
        ),
        Figure::against(
            SCENARIO,
            format!("{WINDOW} in flight per connection, 2 servers"),
            "parts/s",
            &v("inflight2"),
            "raw pipelined echo, 2 conns",
            &v("echo_pipelined"),
        )
        .goal(Goal::AtLeast(100_000.0)),
        Figure::against(
            SCENARIO,
            format!("{WINDOW} in flight per connection, 1 server"),
            "parts/s",
            &v("inflight1"),
            "raw pipelined echo, 2 conns",
            &v("echo_pipelined"),
        ),
    ])
}

/// Round trips (µs) of `n` 16-byte echoes, one at a time, on one connection.
async fn echo_reused(addr: &str, n: usize) -> anyhow::Result<Vec<f64>> {
    let mut socket = TcpStream::connect(addr).await?;
    socket.set_nodelay(true)?;
    let mut buf = [0u8; 16];
    let mut rtts = Vec::with_capacity(n);
    for _ in 0..n {
        let started = Instant::now();
        socket.write_all(&MESSAGE).await?;
        socket.read_exact(&mut buf).await?;
        rtts.push(micros(started.elapsed()));
    }
    Ok(rtts)
}

/// Round trips (µs) of `parts`, one at a time, alternating over `conns`.
async fn pool_reused(conns: &[ServerConnection], parts: &[Part]) -> anyhow::Result<Vec<f64>> {
    let mut rtts = Vec::with_capacity(parts.len());
    for (i, part) in parts.iter().enumerate() {
        let started = Instant::now();
        conns[i % conns.len()].run_part(part).await?;
        rtts.push(micros(started.elapsed()));
    }
    Ok(rtts)
}

/// Times (µs) of `n` times: connect, `echoes` 16-byte echoes, close.
async fn echo_fresh(addr: &str, n: usize, echoes: usize) -> anyhow::Result<Vec<f64>> {
    let mut times = Vec::with_capacity(n);
    let mut buf = [0u8; 16];
    for _ in 0..n {
        let started = Instant::now();
        let mut socket = TcpStream::connect(addr).await?;
        socket.set_nodelay(true)?;
        for _ in 0..echoes {
            socket.write_all(&MESSAGE).await?;
            socket.read_exact(&mut buf).await?;
        }
        drop(socket);
        times.push(micros(started.elapsed()));
    }
    Ok(times)
}

/// Times (µs) of: connect and handshake, one part, close; for each part, servers in turn.
/// The part travels right behind the Hello, as a client's first request does.
async fn pool_fresh(addrs: &[&str], parts: &[Part]) -> anyhow::Result<Vec<f64>> {
    let mut times = Vec::with_capacity(parts.len());
    for (i, part) in parts.iter().enumerate() {
        let started = Instant::now();
        let conn =
            ServerConnection::start(addrs[i % addrs.len()], &ConnectOptions::default()).await?;
        conn.run_part(part).await?;
        drop(conn);
        times.push(micros(started.elapsed()));
    }
    Ok(times)
}

/// Messages per second: `n` 16-byte echoes split over one connection per address, at
/// most [`WINDOW`] unanswered per connection, one write call per message.
async fn echo_pipelined(addrs: &[&str], n: usize) -> anyhow::Result<f64> {
    let started = Instant::now();
    let per_conn = addrs.iter().enumerate().map(|(c, addr)| {
        let count = (c..n).step_by(addrs.len()).count();
        async move {
            let socket = TcpStream::connect(addr).await?;
            socket.set_nodelay(true)?;
            let (mut rd, mut wr) = socket.into_split();
            let window = Arc::new(Semaphore::new(WINDOW));
            let writer_window = Arc::clone(&window);
            let writer = tokio::spawn(async move {
                for _ in 0..count {
                    writer_window.acquire().await?.forget();
                    wr.write_all(&MESSAGE).await?;
                }
                anyhow::Ok(wr)
            });
            let mut buf = [0u8; 16];
            for _ in 0..count {
                rd.read_exact(&mut buf).await?;
                window.add_permits(1);
            }
            writer.await??;
            anyhow::Ok(())
        }
    });
    futures::future::try_join_all(per_conn).await?;
    Ok(n as f64 / secs(started.elapsed()))
}
