//! Summaries of repeated timings: median and range for people, mean and standard
//! deviation for scripts, 95% confidence intervals for both, and outliers.
//!
//! The median is what the table shows and what speedups are computed from: on a
//! shared, noisy machine one slow run (another program woke up) moves the mean a lot
//! and the median hardly at all.
//!
//! Its interval is a percentile bootstrap ([`median_interval`]): the runs are
//! resampled with replacement [`BOOTSTRAP_RESAMPLES`] times, and the interval is the
//! middle 95% of the resamples' medians. It assumes nothing about the shape of the
//! times, which on a shared machine are skewed (a run is slowed, never sped up). The
//! mean's interval is Student's t ([`mean_interval`]), which assumes the mean is
//! normally distributed; it is in the JSON and CSV for those who want it. Outliers are
//! flagged by the modified z-score of Iglewicz and Hoaglin ([`outliers`]).

use std::time::Duration;

use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};

/// How many resamples the bootstrap draws: the percentiles of 10,000 medians move by
/// less than one run's rank between draws of them.
pub const BOOTSTRAP_RESAMPLES: usize = 10_000;

/// The bootstrap's resamples are drawn from this seed, so the same runs always give
/// the same interval.
const BOOTSTRAP_SEED: u64 = 0x9E37_79B9_7F4A_7C15;

/// A modified z-score above this marks an outlier (Iglewicz and Hoaglin, 1993).
pub const OUTLIER_SCORE: f64 = 3.5;

/// `--repeat auto` stops once the median's interval is within this fraction of the
/// median on either side.
pub const AUTO_TARGET: f64 = 0.02;

/// The fewest runs the median gets an interval from. With fewer, no interval of the
/// median reaches 95% without assuming how the times are distributed: the range of 5
/// runs holds the median with probability 1 − 2 × 0.5⁵ = 94%, and the bootstrap of so
/// few runs claims more than it has.
pub const MIN_INTERVAL_RUNS: usize = 6;

/// The fewest runs whose outliers are looked for: the median absolute deviation of
/// fewer is too coarse to say a run is far from the others.
pub const MIN_OUTLIER_RUNS: usize = 5;

/// `--repeat auto` records at most this many runs of a mode, whatever its budget.
pub const AUTO_MAX_RUNS: usize = 200;

/// How long `--repeat auto` may spend on one mode's recorded runs by default.
pub const DEFAULT_AUTO_BUDGET: Duration = Duration::from_secs(60);

/// How many runs of each mode to record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Repeat {
    /// Exactly this many (at least 1).
    Times(usize),
    /// Until the median's 95% interval is within ±[`AUTO_TARGET`] of the median
    /// (after at least [`MIN_INTERVAL_RUNS`]), or the mode's recorded runs have taken
    /// `budget` (after at least two), or [`AUTO_MAX_RUNS`] runs.
    Auto {
        /// Time allowed for one mode's recorded runs.
        budget: Duration,
    },
}

impl Repeat {
    /// Whether `samples`, recorded in `spent`, are enough.
    pub fn enough(&self, samples: &[Duration], spent: Duration) -> bool {
        let n = samples.len();
        match *self {
            Repeat::Times(times) => n >= times.max(1),
            Repeat::Auto { budget } => {
                n >= AUTO_MAX_RUNS
                    || (n >= 2 && spent >= budget)
                    || (n >= MIN_INTERVAL_RUNS && Repeat::converged(samples))
            }
        }
    }

    /// Whether the median's interval of `samples` is within ±[`AUTO_TARGET`].
    pub fn converged(samples: &[Duration]) -> bool {
        match (Summary::median(samples), median_interval(samples)) {
            (Some(median), Some(interval)) => interval.relative_half_width(median) <= AUTO_TARGET,
            _ => false,
        }
    }

    /// Whether more than one run is recorded, or may be.
    pub fn repeats(&self) -> bool {
        *self != Repeat::Times(1)
    }
}

impl std::str::FromStr for Repeat {
    type Err = String;

    /// `auto`, or a whole number of runs from 1 to 1000.
    fn from_str(text: &str) -> Result<Repeat, String> {
        if text == "auto" {
            return Ok(Repeat::Auto {
                budget: DEFAULT_AUTO_BUDGET,
            });
        }
        match text.parse::<usize>() {
            Ok(n @ 1..=1000) => Ok(Repeat::Times(n)),
            _ => Err(format!(
                "{text:?}: give a whole number of runs from 1 to 1000, or auto"
            )),
        }
    }
}

/// A range of times that holds a statistic with 95% confidence.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Interval {
    /// The lower end.
    pub low: Duration,
    /// The upper end.
    pub high: Duration,
}

impl Interval {
    /// Whether the two intervals share any time: their statistics are then not
    /// significantly different at the 5% level.
    pub fn overlaps(&self, other: &Interval) -> bool {
        self.low <= other.high && other.low <= self.high
    }

    /// The larger distance from `centre` to either end, as a fraction of `centre`:
    /// 0.02 for an interval within ±2%.
    pub fn relative_half_width(&self, centre: Duration) -> f64 {
        let centre = centre.as_secs_f64();
        if centre == 0.0 {
            return 0.0;
        }
        let below = centre - self.low.as_secs_f64();
        let above = self.high.as_secs_f64() - centre;
        below.max(above) / centre
    }
}

/// The summary of one mode's recorded runs.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Summary {
    /// How many runs were recorded.
    pub runs: usize,
    /// The median (the mean of the two middle values for an even count).
    pub median: Duration,
    /// The fastest run.
    pub min: Duration,
    /// The slowest run.
    pub max: Duration,
    /// The arithmetic mean.
    pub mean: Duration,
    /// The sample standard deviation (n - 1 in the denominator); zero for one run.
    pub stddev: Duration,
    /// The median's 95% interval (bootstrap); `None` for one run.
    pub median_interval: Option<Interval>,
    /// The mean's 95% interval (Student's t); `None` for one run.
    pub mean_interval: Option<Interval>,
    /// How many runs are outliers (see [`outliers`]).
    pub outliers: usize,
}

impl Summary {
    /// Summarises `samples`; `None` when there are none.
    pub fn of(samples: &[Duration]) -> Option<Summary> {
        if samples.is_empty() {
            return None;
        }
        let mut sorted: Vec<f64> = samples.iter().map(Duration::as_secs_f64).collect();
        sorted.sort_by(f64::total_cmp);
        let n = sorted.len();
        let median = if n % 2 == 1 {
            sorted[n / 2]
        } else {
            (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0
        };
        let mean = sorted.iter().sum::<f64>() / n as f64;
        let variance = if n > 1 {
            sorted.iter().map(|s| (s - mean).powi(2)).sum::<f64>() / (n - 1) as f64
        } else {
            0.0
        };
        Some(Summary {
            runs: n,
            median: Duration::from_secs_f64(median),
            min: Duration::from_secs_f64(sorted[0]),
            max: Duration::from_secs_f64(sorted[n - 1]),
            mean: Duration::from_secs_f64(mean),
            stddev: Duration::from_secs_f64(variance.sqrt()),
            median_interval: median_interval(samples),
            mean_interval: mean_interval(samples),
            outliers: outliers(samples).len(),
        })
    }
}

/// The median of `values`, which it reorders (the mean of the two middle values for
/// an even count); `values` is not empty.
fn median_of(values: &mut [f64]) -> f64 {
    let n = values.len();
    let (below, upper_middle, _) = values.select_nth_unstable_by(n / 2, f64::total_cmp);
    let upper_middle = *upper_middle;
    if n % 2 == 1 {
        upper_middle
    } else {
        let lower_middle = below.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        (lower_middle + upper_middle) / 2.0
    }
}

/// The 95% percentile-bootstrap interval of the median of `samples`: the 2.5th and
/// 97.5th percentiles of the medians of [`BOOTSTRAP_RESAMPLES`] resamples drawn with
/// replacement. `None` for fewer than [`MIN_INTERVAL_RUNS`] samples.
pub fn median_interval(samples: &[Duration]) -> Option<Interval> {
    let n = samples.len();
    if n < MIN_INTERVAL_RUNS {
        return None;
    }
    let values: Vec<f64> = samples.iter().map(Duration::as_secs_f64).collect();
    let mut rng = StdRng::seed_from_u64(BOOTSTRAP_SEED);
    let mut resample = vec![0.0; n];
    let mut medians: Vec<f64> = (0..BOOTSTRAP_RESAMPLES)
        .map(|_| {
            for slot in resample.iter_mut() {
                *slot = values[rng.random_range(0..n)];
            }
            median_of(&mut resample)
        })
        .collect();
    medians.sort_by(f64::total_cmp);
    let low = medians[BOOTSTRAP_RESAMPLES * 25 / 1000];
    let high = medians[BOOTSTRAP_RESAMPLES * 975 / 1000 - 1];
    Some(Interval {
        low: Duration::from_secs_f64(low),
        high: Duration::from_secs_f64(high),
    })
}

/// The 95% Student's t interval of the mean of `samples`: mean ± t(0.975, n - 1) ×
/// s / √n. `None` for fewer than two samples.
pub fn mean_interval(samples: &[Duration]) -> Option<Interval> {
    let n = samples.len();
    if n < 2 {
        return None;
    }
    let values: Vec<f64> = samples.iter().map(Duration::as_secs_f64).collect();
    let mean = values.iter().sum::<f64>() / n as f64;
    let variance = values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (n - 1) as f64;
    let half = t_975(n - 1) * (variance / n as f64).sqrt();
    Some(Interval {
        low: Duration::from_secs_f64((mean - half).max(0.0)),
        high: Duration::from_secs_f64(mean + half),
    })
}

/// The 97.5th percentile of Student's t distribution with `df` degrees of freedom:
/// from the table for up to 30, beyond it from the Cornish-Fisher expansion around
/// the normal's 1.959964 (within 0.0001 there).
fn t_975(df: usize) -> f64 {
    const TABLE: [f64; 30] = [
        12.7062, 4.3027, 3.1824, 2.7764, 2.5706, 2.4469, 2.3646, 2.3060, 2.2622, 2.2281, 2.2010,
        2.1788, 2.1604, 2.1448, 2.1314, 2.1199, 2.1098, 2.1009, 2.0930, 2.0860, 2.0796, 2.0739,
        2.0687, 2.0639, 2.0595, 2.0555, 2.0518, 2.0484, 2.0452, 2.0423,
    ];
    if let Some(t) = df.checked_sub(1).and_then(|i| TABLE.get(i)) {
        return *t;
    }
    let z: f64 = 1.959_963_984_540_054;
    let v = df as f64;
    let g1 = (z.powi(3) + z) / 4.0;
    let g2 = (5.0 * z.powi(5) + 16.0 * z.powi(3) + 3.0 * z) / 96.0;
    let g3 = (3.0 * z.powi(7) + 19.0 * z.powi(5) + 17.0 * z.powi(3) - 15.0 * z) / 384.0;
    z + g1 / v + g2 / v.powi(2) + g3 / v.powi(3)
}

/// The indices of the runs whose modified z-score, 0.6745 × (time − median) / MAD
/// (the median absolute deviation), exceeds [`OUTLIER_SCORE`] in absolute value. None
/// when fewer than [`MIN_OUTLIER_RUNS`] runs, or when most runs took the same time
/// (MAD zero).
pub fn outliers(samples: &[Duration]) -> Vec<usize> {
    if samples.len() < MIN_OUTLIER_RUNS {
        return Vec::new();
    }
    let values: Vec<f64> = samples.iter().map(Duration::as_secs_f64).collect();
    let median = median_of(&mut values.clone());
    let mad = median_of(
        &mut values
            .iter()
            .map(|v| (v - median).abs())
            .collect::<Vec<_>>(),
    );
    if mad == 0.0 {
        return Vec::new();
    }
    values
        .iter()
        .enumerate()
        .filter(|(_, v)| (0.6745 * (*v - median) / mad).abs() > OUTLIER_SCORE)
        .map(|(i, _)| i)
        .collect()
}

impl Summary {
    /// The median of `samples`; `None` when there are none.
    pub fn median(samples: &[Duration]) -> Option<Duration> {
        (!samples.is_empty()).then(|| {
            let mut values: Vec<f64> = samples.iter().map(Duration::as_secs_f64).collect();
            Duration::from_secs_f64(median_of(&mut values))
        })
    }
}

/// The index of the sample closest to the median: the run whose details (per-part
/// log, per-server breakdown) best represent the summary.
pub fn median_index(samples: &[Duration]) -> Option<usize> {
    let median = Summary::of(samples)?.median;
    samples
        .iter()
        .enumerate()
        .min_by_key(|(_, s)| s.abs_diff(median))
        .map(|(i, _)| i)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(values: &[u64]) -> Vec<Duration> {
        values.iter().map(|&v| Duration::from_millis(v)).collect()
    }

    #[test]
    fn summarises_odd_and_even_counts() {
        let s = Summary::of(&ms(&[30, 10, 20])).unwrap();
        assert_eq!(s.runs, 3);
        assert_eq!(s.median, Duration::from_millis(20));
        assert_eq!(s.min, Duration::from_millis(10));
        assert_eq!(s.max, Duration::from_millis(30));
        assert!((s.mean.as_secs_f64() - 0.020).abs() < 1e-9);
        assert!((s.stddev.as_secs_f64() - 0.010).abs() < 1e-9);

        let s = Summary::of(&ms(&[10, 40, 20, 30])).unwrap();
        assert!((s.median.as_secs_f64() - 0.025).abs() < 1e-9);

        let one = Summary::of(&ms(&[7])).unwrap();
        assert_eq!(one.stddev, Duration::ZERO);
        assert!(Summary::of(&[]).is_none());
    }

    #[test]
    fn the_mean_interval_is_students_t() {
        // 10, 12, 9, 11, 13 ms: mean 11, s = √2.5, t(0.975, 4) = 2.7764, so
        // 11 ± 2.7764 × √2.5 / √5 = 11 ± 1.963211 ms.
        let interval = mean_interval(&ms(&[10, 12, 9, 11, 13])).unwrap();
        assert!(
            (interval.low.as_secs_f64() - 0.009_036_789).abs() < 1e-8,
            "{interval:?}"
        );
        assert!(
            (interval.high.as_secs_f64() - 0.012_963_211).abs() < 1e-8,
            "{interval:?}"
        );
        assert!(mean_interval(&ms(&[10])).is_none());
        // Past the table, the expansion meets the exact quantiles: 2.02108 for 40
        // degrees of freedom, 1.97993 for 120.
        assert!((t_975(40) - 2.02108).abs() < 1e-4);
        assert!((t_975(120) - 1.97993).abs() < 1e-4);
        assert!((t_975(31) - t_975(30)).abs() < 0.003);
    }

    #[test]
    fn the_median_interval_is_the_exact_bootstrap_percentiles_for_a_known_sample() {
        // For 11 runs a resample's median is its 6th smallest value, and it is at most
        // the k-th smallest run when at least 6 of the 11 draws are: a binomial sum,
        // 0.00721 for k = 2, 0.05125 for k = 3, 0.94875 for k = 8 and 0.99279 for
        // k = 9. The 2.5th percentile is therefore the 3rd run and the 97.5th the 9th.
        let runs = ms(&[31, 12, 47, 18, 25, 60, 22, 14, 39, 29, 51]);
        let interval = median_interval(&runs).unwrap();
        assert_eq!(interval.low, Duration::from_millis(18), "{interval:?}");
        assert_eq!(interval.high, Duration::from_millis(47), "{interval:?}");
        assert_eq!(
            median_interval(&runs),
            Some(interval),
            "the same runs, the same interval"
        );
        // Six runs, checked against all 6⁶ resamples enumerated (in Python): a
        // resample's median is below 9.5 ms with probability 0.0087 and at most 9.5 ms
        // with 0.051, so 9.5 ms is the 2.5th percentile; likewise 12.5 ms is the 97.5th
        // (above it 0.0087, at least it 0.035).
        let six = median_interval(&ms(&[10, 12, 9, 11, 13, 10])).unwrap();
        let micros = |d: Duration| d.as_micros();
        assert_eq!(
            (micros(six.low), micros(six.high)),
            (9_500, 12_500),
            "{six:?}"
        );
        assert!(
            median_interval(&ms(&[10, 12, 9, 11, 13])).is_none(),
            "too few runs"
        );
    }

    #[test]
    fn the_median_interval_covers_the_true_median_about_95_times_in_100() {
        // 400 samples of 25 runs from a skewed distribution with a known median:
        // exponential times of median 10 ms, as a noisy machine gives.
        let mut rng = StdRng::seed_from_u64(7);
        let median = 0.010;
        let covered = (0..400)
            .filter(|_| {
                let runs: Vec<Duration> = (0..25)
                    .map(|_| {
                        let u: f64 = rng.random_range(f64::EPSILON..1.0);
                        Duration::from_secs_f64(-u.ln() * median / std::f64::consts::LN_2)
                    })
                    .collect();
                let interval = median_interval(&runs).unwrap();
                interval.low.as_secs_f64() <= median && median <= interval.high.as_secs_f64()
            })
            .count();
        assert!((360..=396).contains(&covered), "covered {covered} of 400");
    }

    #[test]
    fn outliers_are_runs_far_from_the_median_in_mads() {
        // Median 20, MAD 1: 30 scores 0.6745 × 10 = 6.7, 22 scores 1.3.
        assert_eq!(outliers(&ms(&[20, 21, 19, 22, 20, 30, 18])), vec![5]);
        assert!(outliers(&ms(&[20, 20, 20, 35, 20])).is_empty(), "MAD zero");
        assert!(outliers(&ms(&[10, 11, 90])).is_empty(), "too few runs");
    }

    #[test]
    fn intervals_overlap_when_they_share_time() {
        let a = Interval {
            low: Duration::from_millis(10),
            high: Duration::from_millis(12),
        };
        let b = Interval {
            low: Duration::from_millis(12),
            high: Duration::from_millis(15),
        };
        let c = Interval {
            low: Duration::from_millis(13),
            high: Duration::from_millis(15),
        };
        assert!(a.overlaps(&b) && b.overlaps(&a));
        assert!(!a.overlaps(&c) && !c.overlaps(&a));
        assert!((a.relative_half_width(Duration::from_millis(11)) - 1.0 / 11.0).abs() < 1e-12);
    }

    #[test]
    fn repeat_auto_stops_at_the_target_the_budget_or_the_cap() {
        let auto = Repeat::Auto {
            budget: Duration::from_secs(10),
        };
        let steady = ms(&[100, 101, 100, 99, 100, 101]);
        assert!(auto.enough(&steady, Duration::from_secs(1)), "within ±2%");
        assert!(
            !auto.enough(&steady[..5], Duration::from_secs(1)),
            "fewer than 6"
        );
        let noisy = ms(&[100, 130, 80, 120, 90, 110]);
        assert!(!auto.enough(&noisy, Duration::from_secs(1)));
        assert!(auto.enough(&noisy, Duration::from_secs(10)), "budget spent");
        assert!(
            !auto.enough(&noisy[..1], Duration::from_secs(10)),
            "one run is no interval"
        );
        assert!(auto.enough(
            &vec![Duration::from_millis(5); AUTO_MAX_RUNS],
            Duration::ZERO
        ));
        assert!(Repeat::Times(3).enough(&steady[..3], Duration::ZERO));
        assert!(!Repeat::Times(3).enough(&steady[..2], Duration::ZERO));
        assert_eq!(
            "auto".parse::<Repeat>(),
            Ok(Repeat::Auto {
                budget: DEFAULT_AUTO_BUDGET
            })
        );
        assert_eq!("7".parse::<Repeat>(), Ok(Repeat::Times(7)));
        assert!("0"
            .parse::<Repeat>()
            .unwrap_err()
            .contains("from 1 to 1000, or auto"));
    }

    #[test]
    fn median_index_picks_the_middle_run() {
        assert_eq!(median_index(&ms(&[30, 10, 20])), Some(2));
        assert_eq!(median_index(&[]), None);
    }
}
