//! Summaries of repeated timings: median and range for people, mean and standard
//! deviation for scripts.
//!
//! The median is what the table shows and what speedups are computed from: on a
//! shared, noisy machine one slow run (another program woke up) moves the mean a lot
//! and the median hardly at all.

use std::time::Duration;

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
    fn median_index_picks_the_middle_run() {
        assert_eq!(median_index(&ms(&[30, 10, 20])), Some(2));
        assert_eq!(median_index(&[]), None);
    }
}
