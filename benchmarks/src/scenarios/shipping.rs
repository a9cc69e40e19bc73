//! Scenario 3: data shipping. matrix-sum of a 512 MiB matrix held by the client, split
//! over 2 servers, beside a raw loopback TCP transfer of the same bytes to 2 sinks and
//! the local sequential sum; the same over TLS (2 more servers, with a pinned
//! certificate) beside plain TCP; and the servers' peak memory beside the matrix size.

use std::collections::BTreeMap;

use pool_client::connection::ConnectOptions;
use pool_client::dispatch::Scheduling;
use pool_client::local;
use pool_client::tls::ClientTls;
use pool_common::jobs::matrix_sum::{Element, Matrix};
use pool_common::jobs::CancelFlag;
use pool_common::jobs::Job;
use pool_common::tls::TlsTrust;

use super::{blocking, check, pool_mode, pool_run_with, raw_transfer, secs, Settings};
use crate::figures::{Figure, Goal};
use crate::procs::Helper;

const SCENARIO: &str = "3 data shipping (matrix-sum)";

/// Runs the scenario and returns its figures.
pub async fn run(s: &Settings) -> anyhow::Result<Vec<Figure>> {
    let (rows, cols) = if s.quick { (1024, 1024) } else { (8192, 8192) };
    let matrix = blocking(move || Matrix::generate(rows, cols, 1, Element::I64)).await?;
    let bytes = matrix.bytes().len() as f64;
    let mib = bytes / (1 << 20) as f64;
    let parts = Job::MatrixSum(matrix).split(2);
    let servers = [Helper::pool_server(1)?, Helper::pool_server(1)?];
    let (tls_a, pin_a) = Helper::pool_server_tls(1)?;
    let (tls_b, pin_b) = Helper::pool_server_tls(1)?;
    let tls_servers = [tls_a, tls_b];
    let over_tls = ConnectOptions {
        tls: Some(
            ClientTls::new(&TlsTrust::Pinned(vec![pin_a, pin_b])).map_err(anyhow::Error::msg)?,
        ),
        ..ConnectOptions::default()
    };
    let sinks = [Helper::sink()?, Helper::sink()?];
    let addrs: Vec<&str> = servers.iter().map(|h| h.addr.as_str()).collect();
    let sink_addrs: Vec<&str> = sinks.iter().map(|h| h.addr.as_str()).collect();
    let tls_addrs: Vec<&str> = tls_servers.iter().map(|h| h.addr.as_str()).collect();
    let gbs = |elapsed: std::time::Duration| bytes / secs(elapsed) / 1e9;
    let mut m: BTreeMap<&str, Vec<f64>> = BTreeMap::new();
    let mut put = |k: &'static str, v: f64| m.entry(k).or_default().push(v);

    for _ in 0..s.runs {
        let p = parts.clone();
        let seq = blocking(move || {
            local::sequential(&p, &CancelFlag::new(), &|| {}).expect("never cancelled")
        })
        .await?;
        put("seq", gbs(seq.elapsed));
        put("raw", gbs(raw_transfer(&sink_addrs, &parts).await?));
        let (pool, result) = pool_mode(&parts, &addrs).await?;
        check("pool", result, seq.result.clone())?;
        put("pool", gbs(pool));
        let tls = pool_run_with(&parts, &tls_addrs, &Scheduling::default(), &over_tls).await?;
        check("pool over TLS", tls.result, seq.result)?;
        put("tls", gbs(tls.elapsed));
    }
    let mut peak = 0u64;
    for server in &servers {
        peak = peak.max(server.peak_rss_kib()?);
    }
    let mut sink_peak = 0u64;
    for sink in &sinks {
        sink_peak = sink_peak.max(sink.peak_rss_kib()?);
    }
    let peak_mib = peak as f64 / 1024.0;
    let mut tls_peak = 0u64;
    for server in &tls_servers {
        tls_peak = tls_peak.max(server.peak_rss_kib()?);
    }
    let v = |k: &str| m[k].clone();
    Ok(vec![
        Figure::against(
            SCENARIO,
            format!("pool end to end, {mib:.0} MiB over 2 servers"),
            "GB/s",
            &v("pool"),
            "raw loopback TCP, 2 streams",
            &v("raw"),
        )
        .goal(Goal::RatioAtLeast(0.7)),
        Figure::against(
            SCENARIO,
            "pool end to end",
            "GB/s",
            &v("pool"),
            "local sequential sum",
            &v("seq"),
        ),
        Figure::against(
            SCENARIO,
            "server peak RSS (largest of 2)",
            "MiB",
            &[peak_mib],
            "matrix size",
            &[mib],
        )
        .goal(Goal::RatioAtMost(0.1)),
        Figure::against(
            SCENARIO,
            "pool end to end over TLS",
            "GB/s",
            &v("tls"),
            "pool end to end, plain TCP",
            &v("pool"),
        ),
        Figure::against(
            SCENARIO,
            "TLS server peak RSS (largest of 2)",
            "MiB",
            &[tls_peak as f64 / 1024.0],
            "plain server's",
            &[peak_mib],
        ),
        Figure::plain(
            SCENARIO,
            "raw sink peak RSS (for scale)",
            "MiB",
            &[sink_peak as f64 / 1024.0],
        ),
    ])
}
