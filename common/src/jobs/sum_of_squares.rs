//! The `sum-of-squares` job: the sum of `i * i` over `[0, count)`, wrapping mod 2^64.
//!
//! The smallest complete kind, and the worked example of the README's "Adding a job
//! kind": this file and one line in `jobs/mod.rs` are all it took. Every mode, the
//! comparison table, the checks against hostile peers and the job file's errors come
//! with the [`Kind`] trait.

use std::path::Path;

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use toml::Spanned;

use super::{CancelFlag, Cancelled, Chunk, JobInputs, Kind, ParamError, PartRange};

/// How many terms are added between two looks at the cancel flag.
const CANCEL_CHECK_INTERVAL: u64 = 1 << 20;

/// The `sum-of-squares` kind.
pub struct SumOfSquares;

/// The `[job]` keys of a sum-of-squares job.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SquaresParams {
    /// How many terms: the sum runs over `[0, count)`.
    pub count: Spanned<u64>,
}

/// One part: the terms `[lo, hi)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct SquaresPart {
    /// First term, included.
    pub lo: u64,
    /// Last term, excluded.
    pub hi: u64,
}

impl Kind for SumOfSquares {
    const NAME: &'static str = "sum-of-squares";
    const UNIT: &'static str = "terms";
    type Params = SquaresParams;
    /// The number of terms.
    type Data = u64;
    type Task = SquaresPart;
    /// The wrapping sum mod 2^64.
    type Output = u64;

    fn validate_params(params: &SquaresParams) -> Result<(), ParamError> {
        if *params.count.get_ref() == 0 {
            return Err(ParamError::at(
                params.count.span(),
                "count must be at least 1",
            ));
        }
        Ok(())
    }

    fn planned_units(params: &SquaresParams) -> Option<u64> {
        Some(*params.count.get_ref())
    }

    fn load(params: &SquaresParams, _base: &Path) -> Result<u64, String> {
        Ok(*params.count.get_ref())
    }

    fn split_units(count: &u64) -> u64 {
        *count
    }

    fn part(_count: &u64, range: PartRange) -> (SquaresPart, Bytes) {
        let PartRange { lo, hi, .. } = range;
        (SquaresPart { lo, hi }, Bytes::new())
    }

    fn validate(task: &SquaresPart) -> Result<(), String> {
        if task.lo > task.hi {
            return Err(format!("range [{}, {}) is reversed", task.lo, task.hi));
        }
        Ok(())
    }

    fn work_items(task: &SquaresPart) -> u64 {
        task.hi.saturating_sub(task.lo)
    }

    fn compute_chunk(
        task: &SquaresPart,
        _chunk: Chunk<'_>,
        _inputs: &JobInputs,
        cancel: &CancelFlag,
    ) -> Result<u64, Cancelled> {
        let mut sum = 0u64;
        let mut start = task.lo;
        while start < task.hi {
            if cancel.is_cancelled() {
                return Err(Cancelled);
            }
            let end = task.hi.min(start.saturating_add(CANCEL_CHECK_INTERVAL));
            // LLVM turns a plain sum of squares into its closed form; hiding each term
            // from the optimiser keeps the loop, so the time measured is real work.
            sum = (start..end).fold(sum, |sum, i| {
                sum.wrapping_add(std::hint::black_box(i).wrapping_mul(i))
            });
            start = end;
        }
        Ok(sum)
    }

    fn combine(a: u64, b: u64) -> Option<u64> {
        Some(a.wrapping_add(b))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_the_closed_form() {
        let n: u128 = 1_000_000;
        let closed_form = (n - 1) * n * (2 * n - 1) / 6;
        let task = SquaresPart {
            lo: 0,
            hi: n as u64,
        };
        assert_eq!(
            SumOfSquares::compute_chunk(
                &task,
                Chunk::NONE,
                &JobInputs::default(),
                &CancelFlag::new()
            ),
            Ok(closed_form as u64)
        );
    }
}
