//! `pool-client status`: asks each server how it is doing.
//!
//! Each server gets its own short connection: the usual handshake, then one
//! [`Request::Status`], answered by the server at once without going through its
//! executor, so a server whose workers are all busy still answers promptly. The round
//! trip of that request is the network's latency plus the server's reaction time.

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::{SinkExt, StreamExt};
use pool_common::codec::{Frame, FrameError};
use pool_common::protocol::{Reply, Request, ServerStatus};
use serde_json::{json, Value};

use crate::connection::{open, ConnectOptions, ServerError};
use crate::report::seconds;

/// What one server said, or why it said nothing.
#[derive(Debug, Clone)]
pub struct ServerState {
    /// The server as the user wrote it.
    pub address: String,
    /// Its status and the status request's round trip, or what went wrong.
    pub answer: Result<(ServerStatus, Duration), ServerError>,
}

/// Asks one server for its status.
pub async fn query(
    address: &str,
    options: &ConnectOptions,
) -> Result<(ServerStatus, Duration), ServerError> {
    let protocol = |e: FrameError| ServerError::Protocol {
        address: address.to_string(),
        source: Arc::new(e),
    };
    let closed = |reason: &str| ServerError::Closed {
        address: address.to_string(),
        reason: reason.to_string(),
    };
    let ((mut reader, mut writer), _welcome) = open(address, options, " (status)").await?;
    let started = Instant::now();
    let answer = tokio::time::timeout(options.handshake_timeout, async {
        writer.send(Frame::Request(Request::Status)).await?;
        reader.next().await.transpose()
    })
    .await
    .map_err(|_| ServerError::Timeout {
        address: address.to_string(),
        what: "status",
        timeout: options.handshake_timeout,
    })?
    .map_err(protocol)?;
    let round_trip = started.elapsed();
    match answer {
        Some(Frame::Reply(Reply::Status(status))) => Ok((status, round_trip)),
        Some(Frame::Reply(Reply::Closing { error })) => Err(ServerError::Remote {
            address: address.to_string(),
            error,
        }),
        // An older server does not know the request and closes the connection.
        None => Err(closed(
            "closed without answering the status request (an older pool-server?)",
        )),
        Some(_) => Err(protocol(FrameError::Decode(
            "expected a status reply".into(),
        ))),
    }
}

/// Asks every server at once; the answers come back in the order of `addresses`.
pub async fn query_all(addresses: &[String], options: &ConnectOptions) -> Vec<ServerState> {
    futures::future::join_all(addresses.iter().map(|address| async move {
        ServerState {
            address: address.clone(),
            answer: query(address, options).await,
        }
    }))
    .await
}

/// The states as a table, with each unreachable server's reason under it.
pub fn table(states: &[ServerState]) -> String {
    use std::fmt::Write as _;
    let header = [
        "cores",
        "workers",
        "running",
        "queued",
        "load",
        "idle",
        "mem free",
        "ns/iter",
        "served",
        "uptime",
        "round trip",
    ];
    let mut out = format!("{:<22} {:<12} {:<20}", "server", "state", "version");
    for column in header {
        let _ = write!(out, " {column:>10}");
    }
    out.push('\n');
    for state in states {
        match &state.answer {
            Ok((status, round_trip)) => {
                let unknown = || "-".to_string();
                let cells = [
                    status.cores.to_string(),
                    status.workers.to_string(),
                    status.workers_busy.to_string(),
                    status
                        .parts_in_flight
                        .saturating_sub(status.workers_busy)
                        .to_string(),
                    status
                        .load_average_milli
                        .map_or_else(unknown, |l| format!("{:.2}", l as f64 / 1000.0)),
                    status
                        .cpu_idle_milli
                        .map_or_else(unknown, |i| format!("{:.0}%", i as f64 / 10.0)),
                    status.memory_available_bytes.map_or_else(unknown, |b| {
                        format!("{:.1} GiB", b as f64 / (1u64 << 30) as f64)
                    }),
                    status
                        .loop_picos_per_iteration
                        .map_or_else(unknown, |p| format!("{:.2}", p as f64 / 1000.0)),
                    status.parts_served.to_string(),
                    uptime(Duration::from_nanos(status.uptime_nanos)),
                    seconds(*round_trip),
                ];
                let _ = write!(
                    out,
                    "{:<22} {:<12} {:<20}",
                    state.address, "up", status.server
                );
                for cell in cells {
                    let _ = write!(out, " {cell:>10}");
                }
                out.push('\n');
            }
            Err(error) => {
                let _ = writeln!(out, "{:<22} {:<12} {error}", state.address, "unreachable");
            }
        }
    }
    out
}

/// The states as one JSON array.
pub fn json(states: &[ServerState]) -> Value {
    Value::Array(
        states
            .iter()
            .map(|state| match &state.answer {
                Ok((status, round_trip)) => json!({
                    "address": state.address,
                    "reachable": true,
                    "version": status.server,
                    "cores": status.cores,
                    "workers": status.workers,
                    "workers_busy": status.workers_busy,
                    "parts_in_flight": status.parts_in_flight,
                    "parts_served": status.parts_served,
                    "uptime_s": Duration::from_nanos(status.uptime_nanos).as_secs_f64(),
                    "load_average_1m": status.load_average_milli.map(|l| l as f64 / 1000.0),
                    "cpu_idle_share": status.cpu_idle_milli.map(|i| i as f64 / 1000.0),
                    "memory_available_bytes": status.memory_available_bytes,
                    "loop_ns_per_iteration": status.loop_picos_per_iteration.map(|p| p as f64 / 1000.0),
                    "round_trip_s": round_trip.as_secs_f64(),
                }),
                Err(error) => json!({
                    "address": state.address,
                    "reachable": false,
                    "error": error.to_string(),
                }),
            })
            .collect(),
    )
}

/// An uptime people read at a glance: `3d 4h`, `2h 05m`, `4m 09s`, `12s`.
fn uptime(d: Duration) -> String {
    let s = d.as_secs();
    match s {
        0..=59 => format!("{s}s"),
        60..=3599 => format!("{}m {:02}s", s / 60, s % 60),
        3600..=86399 => format!("{}h {:02}m", s / 3600, s % 3600 / 60),
        _ => format!("{}d {}h", s / 86400, s % 86400 / 3600),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uptimes_read_at_a_glance() {
        assert_eq!(uptime(Duration::from_secs(12)), "12s");
        assert_eq!(uptime(Duration::from_secs(249)), "4m 09s");
        assert_eq!(uptime(Duration::from_secs(7500)), "2h 05m");
        assert_eq!(uptime(Duration::from_secs(3 * 86400 + 4 * 3600)), "3d 4h");
    }
}
