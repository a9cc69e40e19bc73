//! `--timeline FILE.svg`: one pool run as a picture of where time went.
//!
//! One row per server, one bar per attempt at a part, on a shared time axis from the
//! start of the run. A bar is pale while the part was being sent or waited in the
//! server's queue, and solid while the server computed it. First attempts, retries and
//! copies have their own colours; failed attempts are red, and copies that lost the
//! race are grey and struck through. A server that finished long before the others,
//! or a row of grey bars, shows imbalance at a glance, as Dask's task stream does.
//!
//! Bars that overlap on one server (a part queued behind another) take separate lanes
//! of its row.

use plotters::prelude::*;

use crate::chart::palette;
use crate::dispatch::{AttemptKind, AttemptOutcome, AttemptRecord, PartRecord, PoolRun};

const WIDTH: u32 = 1000;
const ROW_HEIGHT: u32 = 70;
const MARGINS: u32 = 150;

const FIRST: RGBColor = palette::BLUE;
const RETRY: RGBColor = palette::ORANGE;
const COPY: RGBColor = palette::GREEN;
const FAILED: RGBColor = palette::VERMILLION;
const LOST: RGBColor = palette::GREY;

/// Why the timeline could not be drawn.
#[derive(Debug, thiserror::Error)]
#[error("cannot draw the timeline: {0}")]
pub struct TimelineError(String);

fn err(e: impl std::fmt::Display) -> TimelineError {
    TimelineError(e.to_string())
}

/// An attempt placed on the picture.
struct Bar<'a> {
    part: &'a PartRecord,
    attempt: &'a AttemptRecord,
    row: usize,
    lane: usize,
}

/// The run as an SVG document; `title` heads it (e.g. the job file).
pub fn svg(pool: &PoolRun, title: &str) -> Result<String, TimelineError> {
    let servers: Vec<&str> = pool.servers.iter().map(|s| s.address.as_str()).collect();
    let (bars, lanes) = layout(pool, &servers);
    let rows = servers.len().max(1);
    let height = rows as u32 * ROW_HEIGHT + MARGINS;
    let end = pool
        .parts
        .iter()
        .flat_map(|p| &p.attempts)
        .map(|a| a.end.as_secs_f64())
        .fold(pool.elapsed.as_secs_f64(), f64::max)
        .max(1e-6);
    let mut out = String::new();
    {
        let root = SVGBackend::with_string(&mut out, (WIDTH, height)).into_drawing_area();
        root.fill(&WHITE).map_err(err)?;
        let scheduling = &pool.scheduling;
        let caption = format!(
            "{title}: {} schedule, {} placement{}, {:.3} s",
            scheduling.schedule.name(),
            scheduling.placement.name(),
            if scheduling.speculate {
                ", speculation on"
            } else {
                ""
            },
            pool.elapsed.as_secs_f64()
        );
        let mut chart = ChartBuilder::on(&root)
            .caption(caption, ("sans-serif", 18))
            .margin(15)
            .x_label_area_size(40)
            .y_label_area_size(150)
            .build_cartesian_2d(0.0..end * 1.3, 0.0..rows as f64)
            .map_err(err)?;
        chart
            .configure_mesh()
            .disable_y_mesh()
            .y_labels(rows * 2 + 1)
            .y_label_formatter(&|y: &f64| {
                // Labels sit at the middle of each row.
                let row = (y - 0.5).round();
                if (y - 0.5 - row).abs() < 1e-9 && row >= 0.0 {
                    let index = rows - 1 - row as usize;
                    servers
                        .get(index)
                        .map(|s| s.to_string())
                        .unwrap_or_default()
                } else {
                    String::new()
                }
            })
            .x_desc("seconds from the start of the pool run")
            .label_style(("sans-serif", 13))
            .axis_desc_style(("sans-serif", 14))
            .draw()
            .map_err(err)?;

        for bar in &bars {
            let lane_count = lanes[bar.row].max(1) as f64;
            let row_base = (rows - 1 - bar.row) as f64;
            let lane_height = 0.8 / lane_count;
            let y0 = row_base + 0.1 + bar.lane as f64 * lane_height;
            let y1 = y0 + lane_height * 0.9;
            let (x0, x1) = (
                bar.attempt.start.as_secs_f64(),
                bar.attempt.end.as_secs_f64(),
            );
            let color = match (&bar.attempt.outcome, bar.attempt.kind) {
                (AttemptOutcome::Failed(_), _) => FAILED,
                (AttemptOutcome::Lost, _) => LOST,
                (AttemptOutcome::Won, AttemptKind::First) => FIRST,
                (AttemptOutcome::Won, AttemptKind::Retry) => RETRY,
                (AttemptOutcome::Won, AttemptKind::Copy) => COPY,
            };
            chart
                .draw_series([Rectangle::new(
                    [(x0, y0), (x1, y1)],
                    color.mix(0.35).filled(),
                )])
                .map_err(err)?;
            if bar.attempt.outcome == AttemptOutcome::Won {
                let compute = bar.part.reply.compute.as_secs_f64();
                let from = (x1 - compute).max(x0);
                chart
                    .draw_series([Rectangle::new([(from, y0), (x1, y1)], color.filled())])
                    .map_err(err)?;
            }
            if bar.attempt.outcome == AttemptOutcome::Lost {
                chart
                    .draw_series([PathElement::new(
                        vec![(x0, (y0 + y1) / 2.0), (x1, (y0 + y1) / 2.0)],
                        BLACK.stroke_width(2),
                    )])
                    .map_err(err)?;
            }
            chart
                .draw_series([Text::new(
                    bar.part.part.to_string(),
                    (x0, y1),
                    ("sans-serif", 11).into_font().color(&BLACK),
                )])
                .map_err(err)?;
        }

        // The legend, drawn as labelled empty series.
        for (name, color) in [
            ("first attempt", FIRST),
            ("retry", RETRY),
            ("copy (speculation)", COPY),
            ("failed", FAILED),
            ("lost the race (cancelled)", LOST),
        ] {
            chart
                .draw_series(std::iter::empty::<Rectangle<(f64, f64)>>())
                .map_err(err)?
                .label(name)
                .legend(move |(x, y)| {
                    Rectangle::new([(x, y - 5), (x + 12, y + 5)], color.filled())
                });
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperRight)
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK.mix(0.3))
            .label_font(("sans-serif", 12))
            .draw()
            .map_err(err)?;
        root.present().map_err(err)?;
    }
    Ok(out)
}

/// Places every attempt in its server's row, in the first lane free at its start;
/// returns the bars and each row's number of lanes.
fn layout<'a>(pool: &'a PoolRun, servers: &[&str]) -> (Vec<Bar<'a>>, Vec<usize>) {
    let mut attempts: Vec<(&PartRecord, &AttemptRecord)> = pool
        .parts
        .iter()
        .flat_map(|p| p.attempts.iter().map(move |a| (p, a)))
        .collect();
    attempts.sort_by_key(|(_, a)| a.start);
    // Per row, when each lane is free again.
    let mut lane_ends: Vec<Vec<f64>> = vec![Vec::new(); servers.len()];
    let mut bars = Vec::with_capacity(attempts.len());
    for (part, attempt) in attempts {
        let Some(row) = servers.iter().position(|s| *s == attempt.server) else {
            continue;
        };
        let start = attempt.start.as_secs_f64();
        let ends = &mut lane_ends[row];
        let lane = match ends.iter().position(|&end| end <= start) {
            Some(lane) => lane,
            None => {
                ends.push(0.0);
                ends.len() - 1
            }
        };
        ends[lane] = attempt.end.as_secs_f64();
        bars.push(Bar {
            part,
            attempt,
            row,
            lane,
        });
    }
    let lanes = lane_ends.iter().map(Vec::len).collect();
    (bars, lanes)
}
