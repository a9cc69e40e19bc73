//! The `mandelbrot` job: a `width` x `height` picture of the Mandelbrot set, split by
//! blocks of rows.
//!
//! Each pixel's value is its escape count: how many steps of z <- z^2 + c, from z = 0,
//! stay within |z| <= 2, up to `max_iter`. The job's result is every pixel's count,
//! row by row, and their sum, the checksum; the client writes the picture as a PNG to
//! `output` once every mode has given the same counts. A part's result is its rows'
//! counts, two bytes a pixel, so results of more than 64 KiB are the rule here: they
//! travel in data frames after their reply (see [`crate::wire`]).
//!
//! Every mode, and every machine, computes the same counts: pixels are computed in
//! `f64` with plain multiplications and additions in a fixed order (Rust never fuses
//! them into multiply-adds unless asked), so the result is exact and comparable.
//!
//! Rows through the set cost up to `max_iter` steps a pixel, rows far from it a few:
//! equal blocks of rows are very unequal parts, the classic case where splitting the
//! work statically loses to handing it out as workers free up.

use std::fmt;
use std::fs::File;
use std::io::BufWriter;
use std::path::{Path, PathBuf};

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use toml::Spanned;

use super::rows::RowBlocks;
use super::{output_file, CancelFlag, Cancelled, Chunk, JobInputs, Kind, ParamError, PartRange};

/// The most pixels an image may have: 2^25, e.g. 8192 x 4096. The client holds the
/// counts (two bytes a pixel) of every mode's result and the pool's parts at once,
/// a few hundred MiB at this size.
pub const MAX_PIXELS: u64 = 1 << 25;

/// The most steps a pixel may take: counts travel as 16-bit integers.
pub const MAX_ITER: u64 = u16::MAX as u64;

/// Pixels computed between two looks at the cancel flag (a multiple of [`LANES`]): at
/// most 64 * 65535 steps, a few milliseconds.
const CANCEL_CHECK_PIXELS: usize = 64;

/// Pixels of a row computed side by side (see [`escape_counts`]).
const LANES: usize = 4;

/// The region drawn when the job file does not say: the whole set, centred.
const DEFAULT_REGION: Region = Region {
    x_min: -2.0,
    x_max: 0.5,
    y_min: -1.25,
    y_max: 1.25,
};

/// Bytes a result adds to its counts when encoded: the variant, the width, the block
/// count, the first row, the counts' length and the checksum, as varints.
const RESULT_OVERHEAD_BYTES: u64 = 64;

/// The `mandelbrot` kind.
pub struct Mandelbrot;

/// The `[job]` keys of a mandelbrot job.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MandelbrotParams {
    /// Pixels per row.
    pub width: Spanned<u64>,
    /// Rows: the units the job splits over.
    pub height: Spanned<u64>,
    /// The most steps a pixel takes before it counts as inside the set.
    pub max_iter: Spanned<u64>,
    /// Real part at the image's left edge (default -2.0).
    pub x_min: Option<Spanned<f64>>,
    /// Real part at the right edge (default 0.5).
    pub x_max: Option<Spanned<f64>>,
    /// Imaginary part at the bottom edge (default -1.25).
    pub y_min: Option<Spanned<f64>>,
    /// Imaginary part at the top edge (default 1.25).
    pub y_max: Option<Spanned<f64>>,
    /// A PNG file to write the image to, relative to the job file's folder.
    pub output: Option<Spanned<String>>,
}

impl MandelbrotParams {
    /// The region the keys describe, with the defaults for keys not given.
    fn region(&self) -> Region {
        let value =
            |key: &Option<Spanned<f64>>, default| key.as_ref().map_or(default, |v| *v.get_ref());
        Region {
            x_min: value(&self.x_min, DEFAULT_REGION.x_min),
            x_max: value(&self.x_max, DEFAULT_REGION.x_max),
            y_min: value(&self.y_min, DEFAULT_REGION.y_min),
            y_max: value(&self.y_max, DEFAULT_REGION.y_max),
        }
    }
}

/// The part of the complex plane an image shows.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Region {
    /// Real part at the left edge.
    pub x_min: f64,
    /// Real part at the right edge.
    pub x_max: f64,
    /// Imaginary part at the bottom edge.
    pub y_min: f64,
    /// Imaginary part at the top edge.
    pub y_max: f64,
}

/// What an image is of: the region, its size in pixels and the step limit. Every part
/// carries it whole, so a part is self-contained.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct View {
    /// The region shown.
    pub region: Region,
    /// Pixels per row.
    pub width: u64,
    /// Rows.
    pub height: u64,
    /// The most steps per pixel.
    pub max_iter: u16,
}

/// A loaded mandelbrot job: what to draw and where to write it.
#[derive(Debug, Clone, PartialEq)]
pub struct MandelbrotJob {
    /// The image.
    pub view: View,
    /// The PNG file to write, resolved against the job file's folder.
    pub output: Option<PathBuf>,
}

/// One part: rows `[first_row, first_row + rows)` of the image.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct MandelbrotPart {
    /// The whole image.
    pub view: View,
    /// The block's first row (row 0 is the top).
    pub first_row: u64,
    /// Rows in the block.
    pub rows: u64,
}

/// Rows of escape counts: the result of a part, or of several once combined.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Rows {
    /// The counts, as little-endian `u16`s, two bytes a pixel: a whole image is one
    /// block from row 0.
    pub counts: RowBlocks,
    /// The sum of every count in the blocks: the figure compared across modes and
    /// printed as the result.
    pub checksum: u64,
}

impl fmt::Display for Rows {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.checksum.fmt(f)
    }
}

impl Kind for Mandelbrot {
    const NAME: &'static str = "mandelbrot";
    const UNIT: &'static str = "image rows";
    type Params = MandelbrotParams;
    type Data = MandelbrotJob;
    type Task = MandelbrotPart;
    type Output = Rows;

    fn validate_params(params: &MandelbrotParams) -> Result<(), ParamError> {
        for dim in [&params.width, &params.height] {
            if *dim.get_ref() == 0 {
                return Err(ParamError::at(
                    dim.span(),
                    "an image dimension must be at least 1",
                ));
            }
        }
        let (width, height) = (*params.width.get_ref(), *params.height.get_ref());
        if width
            .checked_mul(height)
            .is_none_or(|pixels| pixels > MAX_PIXELS)
        {
            return Err(ParamError::at(
                params.height.span(),
                format!(
                    "a {width} x {height} image has more than the {MAX_PIXELS} pixels (2^25) \
                     the client may hold"
                ),
            ));
        }
        if !(1..=MAX_ITER).contains(params.max_iter.get_ref()) {
            return Err(ParamError::at(
                params.max_iter.span(),
                format!("max_iter must be between 1 and {MAX_ITER}"),
            ));
        }
        for key in [&params.x_min, &params.x_max, &params.y_min, &params.y_max]
            .into_iter()
            .flatten()
        {
            if !key.get_ref().is_finite() {
                return Err(ParamError::at(
                    key.span(),
                    "a coordinate must be a finite number",
                ));
            }
        }
        let region = params.region();
        for (min, max, axis) in [
            (
                (&params.x_min, region.x_min),
                (&params.x_max, region.x_max),
                "x",
            ),
            (
                (&params.y_min, region.y_min),
                (&params.y_max, region.y_max),
                "y",
            ),
        ] {
            if min.1 >= max.1 {
                return Err(ParamError {
                    span: max.0.as_ref().or(min.0.as_ref()).map(Spanned::span),
                    message: format!(
                        "{axis}_min ({}) must be less than {axis}_max ({})",
                        min.1, max.1
                    ),
                });
            }
        }
        if let Some(output) = &params.output {
            let is_png = Path::new(output.get_ref())
                .extension()
                .is_some_and(|e| e.eq_ignore_ascii_case("png"));
            if !is_png {
                return Err(ParamError::at(
                    output.span(),
                    "output must name a .png file",
                ));
            }
        }
        Ok(())
    }

    fn planned_units(params: &MandelbrotParams) -> Option<u64> {
        Some(*params.height.get_ref())
    }

    /// Resolves `output` and makes sure it can be written, so a typo shows before the
    /// run rather than after it.
    fn load(params: &MandelbrotParams, base: &Path) -> Result<MandelbrotJob, String> {
        let view = View {
            region: params.region(),
            width: *params.width.get_ref(),
            height: *params.height.get_ref(),
            max_iter: u16::try_from(*params.max_iter.get_ref())
                .map_err(|_| format!("max_iter must be at most {MAX_ITER}"))?,
        };
        let output = output_file(params.output.as_ref(), base)?;
        Ok(MandelbrotJob { view, output })
    }

    fn split_units(job: &MandelbrotJob) -> u64 {
        job.view.height
    }

    fn part(job: &MandelbrotJob, range: PartRange) -> (MandelbrotPart, Bytes) {
        let PartRange { lo, hi, .. } = range;
        let task = MandelbrotPart {
            view: job.view,
            first_row: lo,
            rows: hi - lo,
        };
        (task, Bytes::new())
    }

    fn validate(task: &MandelbrotPart) -> Result<(), String> {
        let view = &task.view;
        let region = &view.region;
        let coordinates = [region.x_min, region.x_max, region.y_min, region.y_max];
        if !coordinates.iter().all(|c| c.is_finite())
            || region.x_min >= region.x_max
            || region.y_min >= region.y_max
        {
            return Err(format!("{region:?} is not a region of the plane"));
        }
        if view.width == 0
            || view
                .width
                .checked_mul(view.height)
                .is_none_or(|p| p > MAX_PIXELS)
        {
            return Err(format!(
                "a {} x {} image is empty or has more than {MAX_PIXELS} pixels",
                view.width, view.height
            ));
        }
        if view.max_iter == 0 {
            return Err("max_iter must be at least 1".into());
        }
        if task
            .first_row
            .checked_add(task.rows)
            .is_none_or(|end| end > view.height)
        {
            return Err(format!(
                "rows [{}, {} + {}) are not within the image's {}",
                task.first_row, task.first_row, task.rows, view.height
            ));
        }
        Ok(())
    }

    fn work_items(task: &MandelbrotPart) -> u64 {
        task.rows
            .saturating_mul(task.view.width)
            .saturating_mul(u64::from(task.view.max_iter))
    }

    fn compute_chunk(
        task: &MandelbrotPart,
        _chunk: Chunk<'_>,
        _inputs: &JobInputs,
        cancel: &CancelFlag,
    ) -> Result<Rows, Cancelled> {
        let width = task.view.width as usize;
        let mut counts = Vec::with_capacity(task.rows as usize * width * 2);
        let mut checksum = 0u64;
        for row in task.first_row..task.first_row + task.rows {
            let cy = task.view.pixel(row, 0).1;
            let mut col = 0;
            while col < width {
                if col % CANCEL_CHECK_PIXELS == 0 && cancel.is_cancelled() {
                    return Err(Cancelled);
                }
                // The last group of a row repeats its last pixel in the spare lanes.
                let n = LANES.min(width - col);
                let cx = std::array::from_fn(|lane| {
                    task.view.pixel(row, (col + lane.min(n - 1)) as u64).0
                });
                for count in &escape_counts(cx, cy, task.view.max_iter)[..n] {
                    checksum += u64::from(*count);
                    counts.extend_from_slice(&count.to_le_bytes());
                }
                col += n;
            }
        }
        Ok(Rows {
            counts: RowBlocks::one(task.view.width * 2, task.first_row, counts),
            checksum,
        })
    }

    fn combine(a: Rows, b: Rows) -> Option<Rows> {
        Some(Rows {
            counts: a.counts.merge(b.counts)?,
            checksum: a.checksum.checked_add(b.checksum)?,
        })
    }

    /// The part's rows, each count within `max_iter`, summing to the checksum: anything
    /// else is refused, so results that pass always combine.
    fn could_produce(task: &MandelbrotPart, rows: &Rows) -> bool {
        if rows.counts.row_bytes != task.view.width.saturating_mul(2) {
            return false;
        }
        let Some(counts) = rows.counts.exactly(task.first_row, task.rows) else {
            return false;
        };
        let mut sum = 0u64;
        for pair in counts.chunks_exact(2) {
            let count = u16::from_le_bytes([pair[0], pair[1]]);
            if count > task.view.max_iter {
                return false;
            }
            sum += u64::from(count);
        }
        sum == rows.checksum
    }

    fn max_result_bytes(task: &MandelbrotPart) -> u64 {
        task.rows
            .saturating_mul(task.view.width)
            .saturating_mul(2)
            .saturating_add(RESULT_OVERHEAD_BYTES)
    }

    fn save(job: &MandelbrotJob, rows: &Rows) -> Result<Vec<PathBuf>, String> {
        let Some(path) = &job.output else {
            return Ok(Vec::new());
        };
        let image = rows
            .counts
            .exactly(0, job.view.height)
            .filter(|_| rows.counts.row_bytes == job.view.width * 2)
            .ok_or("the result does not hold the whole image")?;
        write_png(path, &job.view, image)
            .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
        Ok(vec![path.clone()])
    }
}

impl View {
    /// The point of the plane at the centre of pixel (`row`, `col`); row 0 is the top.
    /// Written out so that another program can compute the same image:
    /// `x_min + (col + 0.5) * ((x_max - x_min) / width)` and
    /// `y_max - (row + 0.5) * ((y_max - y_min) / height)`.
    pub fn pixel(&self, row: u64, col: u64) -> (f64, f64) {
        let r = &self.region;
        let dx = (r.x_max - r.x_min) / self.width as f64;
        let dy = (r.y_max - r.y_min) / self.height as f64;
        (
            r.x_min + (col as f64 + 0.5) * dx,
            r.y_max - (row as f64 + 0.5) * dy,
        )
    }
}

/// The escape counts of the points `cx[lane] + i cy`. A point's count is the number of
/// steps `z <- z^2 + c` from `z = 0` taken while `|z|^2 <= 4`, at most `max_iter`; the
/// operations and their order are the definition, each one IEEE-754 double operation,
/// none fused: `x2 = x * x; y2 = y * y; if x2 + y2 > 4 stop; y = 2 * x * y + cy;
/// x = x2 - y2 + cx`.
///
/// One point's steps form a chain of dependent multiplications, so a core computing it
/// alone mostly waits. The lanes are independent points stepped side by side (a lane
/// that has escaped keeps its values and stops counting), which the core overlaps:
/// about twice the throughput, and the same counts as one point at a time.
#[inline(always)]
fn escape_counts(cx: [f64; LANES], cy: f64, max_iter: u16) -> [u16; LANES] {
    let (mut x, mut y) = ([0.0f64; LANES], [0.0f64; LANES]);
    // 64-bit counters and flags, as wide as the doubles beside them, measured faster
    // than 16-bit ones; a count never exceeds `max_iter`, so it fits 16 bits at the end.
    let mut steps = [0u64; LANES];
    for _ in 0..max_iter {
        let mut any_left = 0;
        for lane in 0..LANES {
            let (x2, y2) = (x[lane] * x[lane], y[lane] * y[lane]);
            let inside = u64::from(x2 + y2 <= 4.0);
            // Selected, not branched on, so the lanes stay in step.
            let next_y = 2.0 * x[lane] * y[lane] + cy;
            let next_x = x2 - y2 + cx[lane];
            y[lane] = if inside == 1 { next_y } else { y[lane] };
            x[lane] = if inside == 1 { next_x } else { x[lane] };
            steps[lane] += inside;
            any_left |= inside;
        }
        if any_left == 0 {
            break;
        }
    }
    steps.map(|s| s as u16)
}

/// The colour of a pixel that took `count` of `max_iter` steps: black inside the set,
/// and outside a gradient from dark blue through white to orange, spread by the fourth
/// root of the count so the many fast-escaping pixels are not all one colour. (Square
/// roots are exact IEEE operations, unlike logarithms, so the colours too are the same
/// on every machine.)
fn colour(count: u16, max_iter: u16) -> [u8; 3] {
    /// (position, colour) stops of the gradient.
    const STOPS: [(f64, [f64; 3]); 5] = [
        (0.0, [0.0, 7.0, 100.0]),
        (0.16, [32.0, 107.0, 203.0]),
        (0.42, [237.0, 255.0, 255.0]),
        (0.6425, [255.0, 170.0, 0.0]),
        (1.0, [0.0, 2.0, 0.0]),
    ];
    if count >= max_iter {
        return [0, 0, 0];
    }
    let t = (f64::from(count) / f64::from(max_iter)).sqrt().sqrt();
    let i = STOPS
        .iter()
        .rposition(|(at, _)| *at <= t)
        .unwrap_or(0)
        .min(STOPS.len() - 2);
    let ((t0, c0), (t1, c1)) = (STOPS[i], STOPS[i + 1]);
    let f = (t - t0) / (t1 - t0);
    [0, 1, 2].map(|k| (c0[k] + (c1[k] - c0[k]) * f).round().clamp(0.0, 255.0) as u8)
}

/// Writes the counts (little-endian `u16`s, row after row) as an 8-bit RGB PNG.
fn write_png(path: &Path, view: &View, counts: &[u8]) -> Result<(), String> {
    let width = u32::try_from(view.width).map_err(|e| e.to_string())?;
    let height = u32::try_from(view.height).map_err(|e| e.to_string())?;
    let pixels: Vec<u8> = counts
        .chunks_exact(2)
        .flat_map(|pair| colour(u16::from_le_bytes([pair[0], pair[1]]), view.max_iter))
        .collect();
    let file = File::create(path).map_err(|e| e.to_string())?;
    let mut encoder = png::Encoder::new(BufWriter::new(file), width, height);
    encoder.set_color(png::ColorType::Rgb);
    encoder.set_depth(png::BitDepth::Eight);
    let mut writer = encoder.write_header().map_err(|e| e.to_string())?;
    writer
        .write_image_data(&pixels)
        .map_err(|e| e.to_string())?;
    writer.finish().map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::jobs::{combine_all, Job, PartResult};

    fn view(width: u64, height: u64, max_iter: u16) -> View {
        View {
            region: DEFAULT_REGION,
            width,
            height,
            max_iter,
        }
    }

    fn compute(view: View, first_row: u64, rows: u64) -> Rows {
        let task = MandelbrotPart {
            view,
            first_row,
            rows,
        };
        Mandelbrot::compute_chunk(
            &task,
            Chunk::NONE,
            &JobInputs::default(),
            &CancelFlag::new(),
        )
        .unwrap()
    }

    fn counts(rows: &Rows) -> Vec<u16> {
        rows.counts
            .blocks
            .iter()
            .flat_map(|b| b.bytes.chunks_exact(2))
            .map(|pair| u16::from_le_bytes([pair[0], pair[1]]))
            .collect()
    }

    /// One point's escape count, from all lanes set to it.
    fn escape_count(cx: f64, cy: f64, max_iter: u16) -> u16 {
        escape_counts([cx; LANES], cy, max_iter)[0]
    }

    #[test]
    fn escape_counts_of_known_points() {
        assert_eq!(escape_count(0.0, 0.0, 500), 500); // the centre: inside
        assert_eq!(escape_count(-1.0, 0.0, 500), 500); // a 2-cycle: inside
        assert_eq!(escape_count(-2.0, 0.0, 500), 500); // |z| = 2 exactly, never above
        assert_eq!(escape_count(1.0, 1.0, 500), 2); // 0 -> 1+i -> 1+3i (|z|^2 = 10)
        assert_eq!(escape_count(2.5, 0.0, 500), 1);
        assert_eq!(escape_count(0.3, 0.0, 500), 12); // 0.3 is just outside: slow escape
        assert_eq!(escape_count(1e300, 0.0, 500), 1); // overflows to infinity: escaped
    }

    #[test]
    fn lanes_do_not_affect_each_other() {
        let cx = [0.0, 2.5, 0.3, -2.0];
        let together = escape_counts(cx, 0.0, 1000);
        for (lane, x) in cx.into_iter().enumerate() {
            assert_eq!(together[lane], escape_count(x, 0.0, 1000), "lane {lane}");
        }
    }

    #[test]
    fn a_small_image_matches_its_check_value() {
        // 64 x 48 pixels of the default region, max_iter 100: the checksum from an
        // independent Python implementation of the README's definition.
        let rows = compute(view(64, 48, 100), 0, 48);
        assert_eq!(rows.checksum, 90_200);
        assert_eq!(
            counts(&rows).iter().map(|&c| u64::from(c)).sum::<u64>(),
            rows.checksum
        );
        // The image is symmetric about the real axis, as the set is.
        let all = counts(&rows);
        for row in 0..24 {
            assert_eq!(
                all[row * 64..(row + 1) * 64],
                all[(47 - row) * 64..(48 - row) * 64]
            );
        }
    }

    #[test]
    fn results_do_not_depend_on_the_split_or_the_order_they_combine_in() {
        let job = Job::Mandelbrot(MandelbrotJob {
            view: view(37, 29, 200),
            output: None,
        });
        let results = |parts| -> Vec<PartResult> {
            job.split(parts)
                .iter()
                .map(|p| p.compute(&CancelFlag::new()).unwrap())
                .collect()
        };
        let whole = combine_all(results(1)).unwrap();
        for parts in [2, 3, 7, 29] {
            let mut split = results(parts);
            assert_eq!(
                combine_all(split.clone()),
                Some(whole.clone()),
                "{parts} parts"
            );
            split.reverse();
            split.rotate_left(parts / 2);
            assert_eq!(
                combine_all(split),
                Some(whole.clone()),
                "{parts} parts, shuffled"
            );
        }
        let PartResult::Mandelbrot(whole) = whole else {
            panic!()
        };
        assert_eq!(whole.counts.blocks.len(), 1);
        // The same rows twice do not combine.
        let block = compute(view(37, 29, 200), 3, 4);
        assert_eq!(Mandelbrot::combine(block.clone(), block), None);
    }

    #[test]
    fn results_a_part_could_not_produce_are_refused() {
        let task = MandelbrotPart {
            view: view(16, 16, 50),
            first_row: 4,
            rows: 3,
        };
        let good = Mandelbrot::compute_chunk(
            &task,
            Chunk::NONE,
            &JobInputs::default(),
            &CancelFlag::new(),
        )
        .unwrap();
        assert!(Mandelbrot::could_produce(&task, &good));
        let mut wrong_sum = good.clone();
        wrong_sum.checksum += 1;
        let mut too_many_steps = good.clone();
        too_many_steps.counts.blocks[0].bytes[0..2].copy_from_slice(&51u16.to_le_bytes());
        too_many_steps.checksum = counts(&too_many_steps).iter().map(|&c| u64::from(c)).sum();
        let mut other_rows = good.clone();
        other_rows.counts.blocks[0].first_row = 5;
        let mut short = good.clone();
        short.counts.blocks[0].bytes.truncate(2);
        short.checksum = counts(&short).iter().map(|&c| u64::from(c)).sum();
        for bad in [wrong_sum, too_many_steps, other_rows, short] {
            assert!(!Mandelbrot::could_produce(&task, &bad), "{bad:?}");
        }
        assert!(
            Mandelbrot::max_result_bytes(&task)
                >= crate::codec::encode_message(&PartResult::Mandelbrot(good))
                    .unwrap()
                    .len() as u64
        );
    }

    #[test]
    fn bad_job_files_name_the_line() {
        let error = |keys: &str| {
            let text = format!(
                "parts = 2\n[job]\nkind = \"mandelbrot\"\nwidth = 64\nheight = 48\n{keys}\n"
            );
            crate::jobfile::parse(&text, Path::new("job.toml"))
                .unwrap_err()
                .to_string()
        };
        assert_eq!(
            error("max_iter = 0"),
            "job.toml:6:12: max_iter must be between 1 and 65535"
        );
        assert_eq!(
            error("max_iter = 65536"),
            "job.toml:6:12: max_iter must be between 1 and 65535"
        );
        let sized = |width: u64, height: u64| {
            let text = format!(
                "parts = 1\n[job]\nkind = \"mandelbrot\"\nwidth = {width}\nheight = {height}\nmax_iter = 9\n"
            );
            crate::jobfile::parse(&text, Path::new("job.toml")).map_err(|e| e.to_string())
        };
        assert_eq!(
            sized(0, 10).unwrap_err(),
            "job.toml:4:9: an image dimension must be at least 1"
        );
        assert_eq!(
            sized(10, 0).unwrap_err(),
            "job.toml:5:10: an image dimension must be at least 1"
        );
        assert_eq!(
            sized(100_000, 100_000).unwrap_err(),
            "job.toml:5:10: a 100000 x 100000 image has more than the 33554432 pixels (2^25) \
             the client may hold"
        );
        assert!(sized(8192, 4096).is_ok());
        assert_eq!(
            error("max_iter = 9\nx_min = 1\nx_max = -1.5"),
            "job.toml:8:9: x_min (1) must be less than x_max (-1.5)"
        );
        assert_eq!(
            error("max_iter = 9\ny_min = 2"),
            "job.toml:7:9: y_min (2) must be less than y_max (1.25)"
        );
        assert_eq!(
            error("max_iter = 9\ny_max = nan"),
            "job.toml:7:9: a coordinate must be a finite number"
        );
        assert_eq!(
            error("max_iter = 9\noutput = \"set.jpg\""),
            "job.toml:7:10: output must name a .png file"
        );
        assert!(
            error("max_iter = 9\ncolour = 3").starts_with("job.toml:7:1: unknown field `colour`"),
            "{}",
            error("max_iter = 9\ncolour = 3")
        );
        assert_eq!(
            error(""),
            "job.toml:2:1: missing field `max_iter` (in a mandelbrot job)"
        );
    }

    #[test]
    fn an_output_that_cannot_be_written_is_refused_when_loading() {
        let text = "parts = 1\n[job]\nkind = \"mandelbrot\"\nwidth = 4\nheight = 4\nmax_iter = 9\n\
                    output = \"no-such-folder-pool/set.png\"\n";
        let file = crate::jobfile::parse(text, Path::new("job.toml")).unwrap();
        let error = file.load_job().unwrap_err().to_string();
        assert!(
            error.starts_with("job.toml: output: cannot write no-such-folder-pool/set.png: "),
            "{error}"
        );
    }

    #[test]
    fn tasks_out_of_bounds_are_refused() {
        let ok = MandelbrotPart {
            view: view(100, 100, 10),
            first_row: 90,
            rows: 10,
        };
        assert_eq!(Mandelbrot::validate(&ok), Ok(()));
        let mut past_the_end = ok;
        past_the_end.rows = 11;
        let mut huge = ok;
        huge.view.width = MAX_PIXELS;
        let mut no_steps = ok;
        no_steps.view.max_iter = 0;
        let mut not_a_region = ok;
        not_a_region.view.region.x_max = f64::NAN;
        let mut reversed = ok;
        reversed.view.region.y_min = 2.0;
        for bad in [past_the_end, huge, no_steps, not_a_region, reversed] {
            assert!(Mandelbrot::validate(&bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn a_cancelled_part_stops() {
        let cancel = CancelFlag::new();
        cancel.cancel();
        let task = MandelbrotPart {
            view: view(4096, 4096, u16::MAX),
            first_row: 0,
            rows: 4096,
        };
        assert_eq!(
            Mandelbrot::compute_chunk(&task, Chunk::NONE, &JobInputs::default(), &cancel),
            Err(Cancelled)
        );
    }

    #[test]
    fn the_image_is_saved_as_a_png_of_the_counts() {
        let dir = std::env::temp_dir().join(format!("pool-mandelbrot-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("set.png");
        let job = MandelbrotJob {
            view: view(40, 30, 60),
            output: Some(path.clone()),
        };
        let rows = compute(job.view, 0, 30);
        assert_eq!(Mandelbrot::save(&job, &rows), Ok(vec![path.clone()]));
        let decoder = png::Decoder::new(std::io::BufReader::new(File::open(&path).unwrap()));
        let mut reader = decoder.read_info().unwrap();
        let mut pixels = vec![0; reader.output_buffer_size().unwrap()];
        let info = reader.next_frame(&mut pixels).unwrap();
        assert_eq!((info.width, info.height), (40, 30));
        assert_eq!(info.color_type, png::ColorType::Rgb);
        for (count, rgb) in counts(&rows).iter().zip(pixels.chunks_exact(3)) {
            assert_eq!(rgb, colour(*count, 60));
            assert_eq!(*count == 60, rgb == [0, 0, 0]);
        }
        // Only a whole image is saved.
        let half = compute(job.view, 0, 15);
        assert!(Mandelbrot::save(&job, &half).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
