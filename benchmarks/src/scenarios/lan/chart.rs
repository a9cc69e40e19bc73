//! Scenario 11's two charts, for the README: time against job size on logarithmic
//! scales, local sequential beside the pool over the emulated LAN. Drawn with
//! plotters' SVG backend, as the client's own charts are (no fonts needed).

use anyhow::anyhow;
use plotters::coord::combinators::{LogCoord, WithKeyPoints};
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};
use pool_client::chart::palette;

use super::{iterations_name, size_name, Crossover};

const WIDTH: u32 = 760;
const HEIGHT: u32 = 470;
const FOOTER: u32 = 22;

/// Colours from `pool-client --chart`'s palette; local runs in black.
const LOCAL: RGBColor = BLACK;
const POOL3: RGBColor = palette::BLUE;
const POOL2: RGBColor = palette::GREEN;
const LINK: RGBColor = palette::ORANGE;
const CROSS: RGBColor = palette::PINK;

/// One job size and the medians measured at it, in seconds.
#[derive(Debug, Clone, Copy)]
pub struct Point {
    /// Bytes (matrix) or iterations (loop).
    pub size: f64,
    /// Local sequential.
    pub sequential: f64,
    /// The pool on three servers.
    pub pool3: f64,
    /// The pool on two servers, if measured.
    pub pool2: Option<f64>,
}

fn err(e: impl std::fmt::Display) -> anyhow::Error {
    anyhow!("cannot draw the chart: {e}")
}

type Area<'a> = DrawingArea<SVGBackend<'a>, plotters::coord::Shift>;

/// The matrix sum: local sequential, the pool over the link, and the link alone (the
/// bytes at the raw TCP rate), against the matrix's size.
pub fn matrix(points: &[Point], link_mb_s: f64, note: &str) -> anyhow::Result<String> {
    let link: Vec<(f64, f64)> = points
        .iter()
        .map(|p| (p.size, p.size / (link_mb_s * 1e6)))
        .collect();
    let last = points.last().ok_or_else(|| err("no points"))?;
    let lines = [
        Line::new("local sequential sum (1 core)", LOCAL, |p| {
            Some(p.sequential)
        }),
        Line::new("pool, 3 servers over 1 Gbit/s", POOL3, |p| Some(p.pool3)),
    ];
    draw(
        "matrix-sum over a 1 Gbit/s LAN: shipping costs more than it saves",
        "matrix size",
        points,
        &lines,
        size_name,
        note,
        |chart| {
            chart
                .draw_series(DashedLineSeries::new(
                    link.iter().copied(),
                    6,
                    4,
                    LINK.stroke_width(2),
                ))
                .map_err(err)?
                .label(format!("the link alone: bytes at {link_mb_s:.0} MB/s"))
                .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], LINK.stroke_width(2)));
            let ratio = last.pool3 / last.sequential;
            annotate_pool(
                chart,
                format!("{ratio:.0}x local's time"),
                last,
                VPos::Bottom,
            )
        },
    )
}

/// The loop: local sequential and the pool on three and two servers, against the
/// iterations, with the crossover marked.
pub fn loops(points: &[Point], crossover: Crossover, note: &str) -> anyhow::Result<String> {
    let last = *points.last().ok_or_else(|| err("no points"))?;
    let lines = [
        Line::new("local sequential (1 core)", LOCAL, |p| Some(p.sequential)),
        Line::new("pool, 3 servers (1 worker each)", POOL3, |p| Some(p.pool3)),
        Line::new("pool, 2 servers (1 worker each)", POOL2, |p| p.pool2),
    ];
    draw(
        "loop over a 1 Gbit/s LAN: what the pool buys for compute",
        "loop iterations",
        points,
        &lines,
        |x| iterations_name(x).replace(" iterations", ""),
        note,
        |chart| {
            let (y_low, y_high) = y_range(points);
            if let Crossover::At(x) = crossover {
                chart
                    .draw_series(DashedLineSeries::new(
                        [(x, y_low), (x, y_high)],
                        5,
                        4,
                        CROSS.stroke_width(2),
                    ))
                    .map_err(err)?
                    .label(format!(
                        "pool on 3 servers overtakes local: {:.1}M iterations",
                        x / 1e6
                    ))
                    .legend(|(x, y)| {
                        PathElement::new(vec![(x, y), (x + 20, y)], CROSS.stroke_width(2))
                    });
            }
            let text = match last.sequential / last.pool3 {
                speedup if speedup >= 1.0 => format!("{speedup:.2}x faster than local"),
                speedup => format!("{:.2}x slower than local", 1.0 / speedup),
            };
            annotate_pool(chart, text, &last, VPos::Top)
        },
    )
}

/// Writes `text` in the three-server pool's colour at its median at `point`, ending
/// there, above or below it as `vertical` says.
fn annotate_pool(
    chart: &mut Chart,
    text: String,
    point: &Point,
    vertical: VPos,
) -> anyhow::Result<()> {
    let style = ("sans-serif", 14)
        .into_font()
        .color(&POOL3)
        .pos(Pos::new(HPos::Right, vertical));
    chart
        .draw_series(std::iter::once(Text::new(
            text,
            (point.size, point.pool3),
            style,
        )))
        .map_err(err)?;
    Ok(())
}

/// A line of medians: its legend, colour, and value at a point (if any).
struct Line {
    name: &'static str,
    color: RGBColor,
    value: fn(&Point) -> Option<f64>,
}

impl Line {
    fn new(name: &'static str, color: RGBColor, value: fn(&Point) -> Option<f64>) -> Line {
        Line { name, color, value }
    }
}

/// The y range covering every median, with room above for the legend.
fn y_range(points: &[Point]) -> (f64, f64) {
    let values = points
        .iter()
        .flat_map(|p| [Some(p.sequential), Some(p.pool3), p.pool2])
        .flatten()
        .filter(|v| *v > 0.0);
    let (low, high) = values.fold((f64::INFINITY, 0.0f64), |(lo, hi), v| {
        (lo.min(v), hi.max(v))
    });
    (low / 2.0, high * 20.0)
}

type Chart<'a, 'b> =
    ChartContext<'a, SVGBackend<'b>, Cartesian2d<WithKeyPoints<LogCoord<f64>>, LogCoord<f64>>>;

/// A log-log chart of `lines` over `points`, with `extra` drawn on it and `note` under it.
fn draw(
    caption: &str,
    x_desc: &str,
    points: &[Point],
    lines: &[Line],
    x_label: impl Fn(f64) -> String,
    note: &str,
    extra: impl FnOnce(&mut Chart) -> anyhow::Result<()>,
) -> anyhow::Result<String> {
    let mut out = String::new();
    {
        let root = SVGBackend::with_string(&mut out, (WIDTH, HEIGHT + FOOTER)).into_drawing_area();
        root.fill(&WHITE).map_err(err)?;
        let (area, footer): (Area, Area) = root.split_vertically(HEIGHT);
        let x_low = points.first().map_or(1.0, |p| p.size) / 1.5;
        let x_high = points.last().map_or(10.0, |p| p.size) * 1.5;
        let (y_low, y_high) = y_range(points);
        let mut chart = ChartBuilder::on(&area)
            .caption(caption, ("sans-serif", 18))
            .margin(15)
            .x_label_area_size(45)
            .y_label_area_size(70)
            .build_cartesian_2d(
                // Ticks at the sizes measured, not at round numbers between them.
                (x_low..x_high)
                    .log_scale()
                    .with_key_points(points.iter().map(|p| p.size).collect()),
                (y_low..y_high).log_scale(),
            )
            .map_err(err)?;
        chart
            .configure_mesh()
            .light_line_style(BLACK.mix(0.05))
            .x_desc(x_desc)
            .y_desc("elapsed (s), median")
            .x_label_formatter(&|x| x_label(*x))
            .y_label_formatter(&|y| seconds(*y))
            .label_style(("sans-serif", 13))
            .axis_desc_style(("sans-serif", 14))
            .draw()
            .map_err(err)?;
        for line in lines {
            let data: Vec<(f64, f64)> = points
                .iter()
                .filter_map(|p| (line.value)(p).map(|v| (p.size, v)))
                .collect();
            if data.is_empty() {
                continue;
            }
            let color = line.color;
            chart
                .draw_series(LineSeries::new(data.iter().copied(), color.stroke_width(2)))
                .map_err(err)?
                .label(line.name)
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2))
                });
            chart
                .draw_series(
                    data.iter()
                        .map(|&(x, y)| Circle::new((x, y), 3, color.filled())),
                )
                .map_err(err)?;
        }
        extra(&mut chart)?;
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperLeft)
            .label_font(("sans-serif", 13))
            .background_style(WHITE.mix(0.9))
            .border_style(BLACK)
            .draw()
            .map_err(err)?;
        footer
            .draw_text(
                note,
                &("sans-serif", 11).into_font().color(&BLACK.mix(0.7)),
                (15, 3),
            )
            .map_err(err)?;
        root.present().map_err(err)?;
    }
    Ok(out)
}

/// `50 us`, `2 ms`, `1.5 s`.
fn seconds(s: f64) -> String {
    if s >= 1.0 {
        format!("{s} s")
    } else if s >= 1e-3 {
        format!("{} ms", round3(s * 1e3))
    } else {
        format!("{} us", round3(s * 1e6))
    }
}

/// Three significant digits at most, without trailing zeros.
fn round3(x: f64) -> f64 {
    let digits = 2 - x.abs().log10().floor() as i32;
    let scale = 10f64.powi(digits.max(0));
    (x * scale).round() / scale
}
