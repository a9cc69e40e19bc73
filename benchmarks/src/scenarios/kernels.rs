//! Scenario 9: the coursework kernels of issue 10 on one core, each beside a C program
//! compiled with gcc -O3 in the same run, whose result must equal ours.
//!
//! * primes: π(10^9) by our segmented sieve, beside a simple segmented sieve in C
//!   (Kim Walisch's well-known `segmented_sieve.cpp`, in C: odd numbers, a byte each,
//!   32 KiB segments), and beside `primesieve` on one thread when it is installed.
//! * mandelbrot: `examples/mandelbrot.toml`'s picture (1024 x 768, max_iter 2000),
//!   steps per second, beside the same definition in C, one pixel at a time
//!   (`-ffp-contract=off`, so gcc fuses no multiply-add and the counts are the same);
//!   and the spread of its 12 row blocks' costs, which is what makes it a scheduling
//!   test.

use std::collections::BTreeMap;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context};
use pool_common::jobs::mandelbrot::{MandelbrotPart, Region, Rows, View};
use pool_common::jobs::primes::count_primes;
use pool_common::jobs::{compute_chunk, CancelFlag, Chunk, JobInputs, PartResult, PartTask};

use super::{blocking, secs, CProgram, Settings};
use crate::figures::Figure;

const SCENARIO: &str = "9 kernels (primes, mandelbrot)";

/// The picture of `examples/mandelbrot.toml`, or a small one for `--quick`.
fn picture(quick: bool) -> View {
    View {
        region: Region {
            x_min: -2.25,
            x_max: 0.75,
            y_min: -1.125,
            y_max: 1.125,
        },
        width: if quick { 256 } else { 1024 },
        height: if quick { 192 } else { 768 },
        max_iter: 2000,
    }
}

/// Row blocks the picture is cut into, as in the example.
const BLOCKS: u64 = 12;

/// Runs the scenario and returns its figures.
pub async fn run(s: &Settings) -> anyhow::Result<Vec<Figure>> {
    let below: u64 = if s.quick { 10_000_000 } else { 1_000_000_000 };
    let view = picture(s.quick);
    let c_sieve = CProgram::build("sieve", C_SIEVE, &[]);
    let c_mandelbrot = CProgram::build("mandelbrot", C_MANDELBROT, &["-ffp-contract=off"]);
    let mut m: BTreeMap<&str, Vec<f64>> = BTreeMap::new();
    let mut put = |k, v| m.entry(k).or_default().push(v);

    for _ in 0..s.heavy_runs() {
        let (elapsed, count) = blocking(move || {
            let started = Instant::now();
            let count = count_primes(0, below, &CancelFlag::new()).expect("never cancelled");
            (started.elapsed(), count)
        })
        .await?;
        ensure!(
            below != 1_000_000_000 || count == 50_847_534,
            "primes: pi(10^9) came out as {count}"
        );
        put("primes_s", secs(elapsed));
        if let Some(seconds) = primesieve(below, count)? {
            put("primesieve_s", seconds);
        }
        if let Some(c) = &c_sieve {
            let (c_count, c_secs) = c.run(&[below.to_string()])?;
            ensure!(c_count == count, "C sieve: {c_count} primes, ours {count}");
            put("c_primes_s", c_secs);
        }

        let (elapsed, blocks) = blocking(move || mandelbrot_blocks(view)).await?;
        let steps: u64 = blocks.iter().map(|(_, steps)| steps).sum();
        put("mandel_msteps", steps as f64 / secs(elapsed) / 1e6);
        put(
            "mandel_mpixels",
            (view.width * view.height) as f64 / secs(elapsed) / 1e6,
        );
        let times = blocks.iter().map(|(time, _)| secs(*time));
        let (cheapest, costliest) =
            times.fold((f64::MAX, 0.0f64), |(lo, hi), t| (lo.min(t), hi.max(t)));
        put("block_spread", costliest / cheapest);
        if let Some(c) = &c_mandelbrot {
            let r = &view.region;
            let args = [
                view.width.to_string(),
                view.height.to_string(),
                view.max_iter.to_string(),
                r.x_min.to_string(),
                r.x_max.to_string(),
                r.y_min.to_string(),
                r.y_max.to_string(),
            ];
            let (c_steps, c_secs) = c.run(&args)?;
            ensure!(
                c_steps == steps,
                "C mandelbrot: checksum {c_steps}, ours {steps}"
            );
            put("c_mandel_msteps", c_steps as f64 / c_secs / 1e6);
        }
    }

    let v = |k: &str| m.get(k).cloned().unwrap_or_default();
    let mut figures = Vec::new();
    let primes = format!("primes below {below}, one core");
    figures.push(match c_sieve {
        Some(_) => Figure::against(
            SCENARIO,
            primes,
            "s",
            &v("primes_s"),
            "simple segmented sieve in C, gcc -O3",
            &v("c_primes_s"),
        ),
        None => Figure::plain(SCENARIO, primes, "s", &v("primes_s")),
    });
    if m.contains_key("primesieve_s") {
        figures.push(Figure::against(
            SCENARIO,
            format!("primes below {below}, one core, against the state of the art"),
            "s",
            &v("primes_s"),
            "primesieve, 1 thread",
            &v("primesieve_s"),
        ));
    }
    let mandelbrot = format!(
        "mandelbrot {} x {}, max_iter {}, one core",
        view.width, view.height, view.max_iter
    );
    figures.push(match c_mandelbrot {
        Some(_) => Figure::against(
            SCENARIO,
            mandelbrot,
            "Msteps/s",
            &v("mandel_msteps"),
            "same definition in C, a pixel at a time",
            &v("c_mandel_msteps"),
        ),
        None => Figure::plain(SCENARIO, mandelbrot, "Msteps/s", &v("mandel_msteps")),
    });
    figures.push(Figure::plain(
        SCENARIO,
        "mandelbrot pixels per second, one core",
        "Mpixel/s",
        &v("mandel_mpixels"),
    ));
    figures.push(Figure::plain(
        SCENARIO,
        format!("mandelbrot, costliest / cheapest of {BLOCKS} row blocks"),
        "x",
        &v("block_spread"),
    ));
    Ok(figures)
}

/// Seconds `primesieve` (Kim Walisch's prime sieve, the fastest there is; Debian
/// package `primesieve-bin`) takes to count the primes below `below` on one thread,
/// checked against `ours`; `None` when it is not installed.
fn primesieve(below: u64, ours: u64) -> anyhow::Result<Option<f64>> {
    let Ok(out) = Command::new("primesieve")
        .args([
            (below - 1).to_string(),
            "--count".into(),
            "--threads=1".into(),
            "--time".into(),
        ])
        .output()
    else {
        return Ok(None);
    };
    let text = String::from_utf8_lossy(&out.stdout);
    let field = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name))
            .map(str::trim)
            .with_context(|| format!("primesieve printed no {name:?}: {text}"))
    };
    let count: u64 = field("Primes:")?.parse()?;
    ensure!(count == ours, "primesieve: {count} primes, ours {ours}");
    Ok(Some(field("Seconds:")?.parse()?))
}

/// Computes the picture in [`BLOCKS`] row blocks, one after another on this thread:
/// the total time, and each block's time and steps (its checksum).
fn mandelbrot_blocks(view: View) -> (Duration, Vec<(Duration, u64)>) {
    let started = Instant::now();
    let blocks = (0..BLOCKS)
        .map(|i| {
            let (lo, hi) = (view.height * i / BLOCKS, view.height * (i + 1) / BLOCKS);
            let task = PartTask::Mandelbrot(MandelbrotPart {
                view,
                first_row: lo,
                rows: hi - lo,
            });
            let block_started = Instant::now();
            let result = compute_chunk(
                &task,
                Chunk::NONE,
                &JobInputs::default(),
                &CancelFlag::new(),
            )
            .expect("never cancelled");
            let PartResult::Mandelbrot(Rows { checksum, .. }) = result else {
                unreachable!("a mandelbrot task gives a mandelbrot result")
            };
            (block_started.elapsed(), checksum)
        })
        .collect();
    (started.elapsed(), blocks)
}

/// A simple segmented sieve (after Kim Walisch's segmented_sieve.cpp): odd numbers
/// only, a byte each, 32 KiB segments. Prints π(N) and the seconds it took.
const C_SIEVE: &str = r#"
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
int main(int argc, char **argv) {
    uint64_t limit = strtoull(argv[1], 0, 10); /* count the primes below limit */
    struct timespec a, b;
    clock_gettime(CLOCK_MONOTONIC, &a);
    uint64_t sqrt_n = 1;
    while ((sqrt_n + 1) * (sqrt_n + 1) < limit) sqrt_n++;
    const uint64_t segment_size = 32768;
    char *sieve = malloc(segment_size), *is_prime = malloc(sqrt_n + 1);
    memset(is_prime, 1, sqrt_n + 1);
    uint64_t *primes = malloc(sizeof(uint64_t) * (sqrt_n + 1));
    uint64_t *multiples = malloc(sizeof(uint64_t) * (sqrt_n + 1));
    uint64_t nprimes = 0, count = limit > 2, i = 3, s = 3, n = 3;
    for (uint64_t low = 0; low < limit; low += segment_size) {
        memset(sieve, 1, segment_size);
        uint64_t high = low + segment_size - 1;
        if (high > limit - 1) high = limit - 1;
        for (; i * i <= high; i += 2)
            if (is_prime[i])
                for (uint64_t j = i * i; j <= sqrt_n; j += i) is_prime[j] = 0;
        for (; s * s <= high; s += 2)
            if (is_prime[s]) {
                primes[nprimes] = s;
                multiples[nprimes] = s * s - low;
                nprimes++;
            }
        for (uint64_t k = 0; k < nprimes; k++) {
            uint64_t j = multiples[k];
            for (uint64_t step = primes[k] * 2; j < segment_size; j += step) sieve[j] = 0;
            multiples[k] = j - segment_size;
        }
        for (; n <= high; n += 2) count += sieve[n - low];
    }
    clock_gettime(CLOCK_MONOTONIC, &b);
    printf("%llu %.6f\n", (unsigned long long)count,
           (b.tv_sec - a.tv_sec) + (b.tv_nsec - a.tv_nsec) / 1e9);
    return 0;
}
"#;

/// The README's mandelbrot definition, one pixel at a time. Arguments: width, height,
/// max_iter, x_min, x_max, y_min, y_max. Prints the checksum (the total steps) and the
/// seconds it took.
const C_MANDELBROT: &str = r#"
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
int main(int argc, char **argv) {
    uint64_t w = strtoull(argv[1], 0, 10), h = strtoull(argv[2], 0, 10);
    uint64_t max_iter = strtoull(argv[3], 0, 10), sum = 0;
    double x_min = atof(argv[4]), x_max = atof(argv[5]);
    double y_min = atof(argv[6]), y_max = atof(argv[7]);
    struct timespec a, b;
    clock_gettime(CLOCK_MONOTONIC, &a);
    double dx = (x_max - x_min) / (double)w, dy = (y_max - y_min) / (double)h;
    for (uint64_t row = 0; row < h; row++) {
        double cy = y_max - ((double)row + 0.5) * dy;
        for (uint64_t col = 0; col < w; col++) {
            double cx = x_min + ((double)col + 0.5) * dx, x = 0, y = 0;
            uint64_t steps = 0;
            while (steps < max_iter) {
                double x2 = x * x, y2 = y * y;
                if (x2 + y2 > 4.0) break;
                y = 2.0 * x * y + cy;
                x = x2 - y2 + cx;
                steps++;
            }
            sum += steps;
        }
    }
    clock_gettime(CLOCK_MONOTONIC, &b);
    printf("%llu %.6f\n", (unsigned long long)sum,
           (b.tv_sec - a.tv_sec) + (b.tv_nsec - a.tv_nsec) / 1e9);
    return 0;
}
"#;
