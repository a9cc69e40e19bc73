//! `--chart FILE.svg`: the run as a picture for a report.
//!
//! The top panel has one bar per mode: its median elapsed time, a whisker from the
//! fastest to the slowest recorded run, and the speedup written above it. The bottom
//! panel (when the pool mode ran) stacks, for each server, the time its parts spent
//! being sent, computed and waiting, next to its connection time: the picture of why
//! the pool is slower or faster than threads.
//!
//! Drawn with plotters' SVG backend and no font library: the SVG names a font family
//! and the viewer draws the text, so nothing on the machine needs fonts installed.

use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

use crate::report::{breakdown, seconds, Report};
use crate::stats::Repeat;
use pool_common::text::counted;

/// Width and height of the chart in pixels (SVG user units).
const WIDTH: u32 = 900;
const MODES_HEIGHT: u32 = 420;
const SERVERS_HEIGHT: u32 = 380;
const FOOTER_HEIGHT: u32 = 24;

/// The Okabe-Ito colours, distinguishable in print and by most colour-blind readers:
/// the one palette of pool's charts (pool-bench's too).
pub mod palette {
    use plotters::style::RGBColor;

    pub const BLUE: RGBColor = RGBColor(0, 114, 178);
    pub const ORANGE: RGBColor = RGBColor(230, 159, 0);
    pub const SKY_BLUE: RGBColor = RGBColor(86, 180, 233);
    pub const GREEN: RGBColor = RGBColor(0, 158, 115);
    pub const PINK: RGBColor = RGBColor(204, 121, 167);
    pub const VERMILLION: RGBColor = RGBColor(213, 94, 0);
    pub const GREY: RGBColor = RGBColor(150, 150, 150);
}

const BAR: RGBColor = palette::BLUE;
const CONNECT: RGBColor = palette::ORANGE;
const SEND: RGBColor = palette::SKY_BLUE;
const COMPUTE: RGBColor = palette::GREEN;
const WAIT: RGBColor = palette::PINK;

/// The unit an axis reads in, chosen from its largest value in seconds so that a job of
/// microseconds gets labels of microseconds: its name and its length in seconds.
fn unit_of(largest: f64) -> (&'static str, f64) {
    if largest >= 1.0 {
        ("s", 1.0)
    } else if largest >= 1e-3 {
        ("ms", 1e-3)
    } else {
        ("µs", 1e-6)
    }
}

/// Why a chart could not be drawn.
#[derive(Debug, thiserror::Error)]
#[error("cannot draw the chart: {0}")]
pub struct ChartError(String);

fn err(e: impl std::fmt::Display) -> ChartError {
    ChartError(e.to_string())
}

/// The report as an SVG document.
pub fn svg(report: &Report) -> Result<String, ChartError> {
    let mut out = String::new();
    let height = if report.pool.is_some() {
        MODES_HEIGHT + SERVERS_HEIGHT
    } else {
        MODES_HEIGHT
    };
    {
        let root =
            SVGBackend::with_string(&mut out, (WIDTH, height + FOOTER_HEIGHT)).into_drawing_area();
        root.fill(&WHITE).map_err(err)?;
        let (panels, footer) = root.split_vertically(height);
        let (top, bottom) = panels.split_vertically(MODES_HEIGHT);
        draw_modes(report, &top)?;
        if report.pool.is_some() {
            draw_servers(report, &bottom)?;
        }
        // Where the numbers come from, so a chart pasted into a report carries it.
        let env = &report.environment;
        let footer_text = format!(
            "pool {}, {} build, {} cores ({}), {}",
            env.pool_version, env.build_profile, env.cores, env.cpu_model, report.job_file
        );
        footer
            .draw_text(
                &footer_text,
                &("sans-serif", 12).into_font().color(&BLACK.mix(0.7)),
                (15, 4),
            )
            .map_err(err)?;
        root.present().map_err(err)?;
    }
    Ok(out)
}

fn draw_modes(
    report: &Report,
    area: &DrawingArea<SVGBackend, plotters::coord::Shift>,
) -> Result<(), ChartError> {
    let labels: Vec<String> = report.runs.iter().map(|r| report.label(r)).collect();
    let (unit, per_unit) = unit_of(
        report
            .runs
            .iter()
            .map(|r| r.summary.max.as_secs_f64())
            .fold(0.0, f64::max),
    );
    let value = |d: std::time::Duration| d.as_secs_f64() / per_unit;
    let top = report
        .runs
        .iter()
        .map(|r| value(r.summary.max))
        .fold(0.0, f64::max)
        .max(1e-3)
        * 1.2;
    let runs = match report.settings.repeat {
        Repeat::Times(1) => "one run per mode".to_string(),
        Repeat::Times(n) => format!("median of {n} runs, box its 95% CI, whiskers min to max"),
        Repeat::Auto { .. } => "median, box its 95% CI, whiskers min to max".to_string(),
    };
    let caption = format!(
        "{} job, {}: elapsed time per mode ({runs})",
        report.kind,
        counted(report.parts, "part", "parts")
    );
    let mut chart = ChartBuilder::on(area)
        .caption(caption, ("sans-serif", 20))
        .margin(15)
        .x_label_area_size(40)
        .y_label_area_size(70)
        // Integer ranges are inclusive here: 0..n-1 is n slots.
        .build_cartesian_2d((0..labels.len() - 1).into_segmented(), 0.0..top)
        .map_err(err)?;
    let label_of = |v: &SegmentValue<usize>| match v {
        SegmentValue::CenterOf(i) | SegmentValue::Exact(i) => {
            labels.get(*i).cloned().unwrap_or_default()
        }
        SegmentValue::Last => String::new(),
    };
    chart
        .configure_mesh()
        .disable_x_mesh()
        .light_line_style(TRANSPARENT)
        .x_labels(labels.len())
        .x_label_formatter(&label_of)
        .y_desc(format!("elapsed ({unit})"))
        .label_style(("sans-serif", 14))
        .axis_desc_style(("sans-serif", 15))
        .draw()
        .map_err(err)?;
    chart
        .draw_series(report.runs.iter().enumerate().map(|(i, run)| {
            let mut bar = Rectangle::new(
                [
                    (SegmentValue::Exact(i), 0.0),
                    (SegmentValue::Exact(i + 1), value(run.summary.median)),
                ],
                BAR.filled(),
            );
            bar.set_margin(0, 0, 25, 25);
            bar
        }))
        .map_err(err)?;
    chart
        .draw_series(report.runs.iter().enumerate().map(|(i, run)| {
            ErrorBar::new_vertical(
                SegmentValue::CenterOf(i),
                value(run.summary.min),
                value(run.summary.median),
                value(run.summary.max),
                BLACK.stroke_width(2),
                16,
            )
        }))
        .map_err(err)?;
    // The median's 95% interval: an outlined box across the whisker.
    chart
        .draw_series(report.runs.iter().enumerate().filter_map(|(i, run)| {
            let interval = run.summary.median_interval?;
            let mut ci = Rectangle::new(
                [
                    (SegmentValue::Exact(i), value(interval.low)),
                    (SegmentValue::Exact(i + 1), value(interval.high)),
                ],
                BLACK.stroke_width(2),
            );
            ci.set_margin(0, 0, 55, 55);
            Some(ci)
        }))
        .map_err(err)?;
    chart
        .draw_series(report.runs.iter().enumerate().map(|(i, run)| {
            let speedup = report
                .speedup(run)
                .map_or(String::new(), |s| format!(", {s:.2}x"));
            Text::new(
                format!("{}{speedup}", seconds(run.summary.median)),
                (
                    SegmentValue::CenterOf(i),
                    value(run.summary.max) + top * 0.03,
                ),
                ("sans-serif", 14)
                    .into_font()
                    .color(&BLACK)
                    .pos(Pos::new(HPos::Center, VPos::Bottom)),
            )
        }))
        .map_err(err)?;
    Ok(())
}

fn draw_servers(
    report: &Report,
    area: &DrawingArea<SVGBackend, plotters::coord::Shift>,
) -> Result<(), ChartError> {
    let Some(pool) = &report.pool else {
        return Ok(());
    };
    let servers = breakdown(pool);
    // Each server's parts: send, compute and wait stacked; connection beside the stack.
    let in_seconds: Vec<([f64; 3], f64)> = servers
        .iter()
        .map(|s| {
            (
                [
                    s.send.as_secs_f64(),
                    s.compute.as_secs_f64(),
                    s.wait.as_secs_f64(),
                ],
                s.connect.unwrap_or_default().as_secs_f64(),
            )
        })
        .collect();
    let (unit, per_unit) = unit_of(
        in_seconds
            .iter()
            .map(|(stack, connect)| stack.iter().sum::<f64>().max(*connect))
            .fold(0.0, f64::max),
    );
    let stacks: Vec<[f64; 3]> = in_seconds
        .iter()
        .map(|(stack, _)| stack.map(|s| s / per_unit))
        .collect();
    let connects: Vec<f64> = in_seconds.iter().map(|(_, c)| c / per_unit).collect();
    let top = stacks
        .iter()
        .map(|s| s.iter().sum::<f64>())
        .chain(connects.iter().copied())
        .fold(0.0, f64::max)
        .max(1e-3)
        // Headroom for the legend above the bars.
        * 1.6;
    let caption = format!(
        "pool per server ({} run): time of its parts, summed",
        seconds(pool.elapsed)
    );
    let names: Vec<String> = servers
        .iter()
        .map(|s| format!("{} ({})", s.address, counted(s.parts, "part", "parts")))
        .collect();
    let mut chart = ChartBuilder::on(area)
        .caption(caption, ("sans-serif", 20))
        .margin(15)
        .x_label_area_size(40)
        .y_label_area_size(70)
        .build_cartesian_2d((0..servers.len() - 1).into_segmented(), 0.0..top)
        .map_err(err)?;
    let label_of = |v: &SegmentValue<usize>| match v {
        SegmentValue::CenterOf(i) | SegmentValue::Exact(i) => {
            names.get(*i).cloned().unwrap_or_default()
        }
        SegmentValue::Last => String::new(),
    };
    chart
        .configure_mesh()
        .disable_x_mesh()
        .light_line_style(TRANSPARENT)
        .x_labels(servers.len())
        .x_label_formatter(&label_of)
        .y_desc(format!("{unit} (summed over parts)"))
        .label_style(("sans-serif", 14))
        .axis_desc_style(("sans-serif", 15))
        .draw()
        .map_err(err)?;

    // The connection bar takes the left fifth of each server's slot, the stack the rest.
    let slot = |i: usize, from: f64, to: f64, left: u32, right: u32, color: RGBColor| {
        let mut bar = Rectangle::new(
            [
                (SegmentValue::Exact(i), from),
                (SegmentValue::Exact(i + 1), to),
            ],
            color.filled(),
        );
        bar.set_margin(0, 0, left, right);
        bar
    };
    let slot_width = (WIDTH - 100) / servers.len().max(1) as u32;
    let (connect_left, connect_right) = (slot_width / 8, slot_width * 6 / 8);
    let (stack_left, stack_right) = (slot_width * 3 / 8, slot_width / 8);
    chart
        .draw_series(
            connects
                .iter()
                .enumerate()
                .map(|(i, &connect)| slot(i, 0.0, connect, connect_left, connect_right, CONNECT)),
        )
        .map_err(err)?
        .label("connect")
        .legend(|(x, y)| Rectangle::new([(x, y - 5), (x + 12, y + 5)], CONNECT.filled()));
    let layers = [
        ("send", SEND),
        ("compute (server clock)", COMPUTE),
        ("wait (queue, network, reply)", WAIT),
    ];
    for (layer, (name, color)) in layers.into_iter().enumerate() {
        chart
            .draw_series(stacks.iter().enumerate().map(|(i, stack)| {
                let below: f64 = stack[..layer].iter().sum();
                slot(
                    i,
                    below,
                    below + stack[layer],
                    stack_left,
                    stack_right,
                    color,
                )
            }))
            .map_err(err)?
            .label(name)
            .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 12, y + 5)], color.filled()));
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperRight)
        .label_font(("sans-serif", 14))
        .background_style(WHITE.mix(0.9))
        .border_style(BLACK)
        .draw()
        .map_err(err)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_unit_fits_the_largest_value() {
        assert_eq!(unit_of(2.5), ("s", 1.0));
        assert_eq!(unit_of(0.0042), ("ms", 1e-3));
        assert_eq!(unit_of(0.000_35), ("µs", 1e-6));
    }
}
