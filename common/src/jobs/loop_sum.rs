//! The `loop` job: the paper's long counting loop, made real.
//!
//! The result is the sum, wrapping mod 2^64, of [`splitmix64`]`(i)` for every `i` in
//! `[0, iterations)`, split by index range. A plain counting loop is a closed form to an
//! optimising compiler; this body is not, so the measured time is the loop's. The same
//! workload is easy to write in C, numpy, Dask, Ray or MPI, so figures compare directly.

use std::path::Path;

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use toml::Spanned;

use super::{CancelFlag, Cancelled, Chunk, JobInputs, Kind, ParamError, PartRange};
use crate::splitmix::splitmix64;

/// How many iterations run between two looks at the cancel flag (about a millisecond).
const CANCEL_CHECK_INTERVAL: u64 = 1 << 20;

/// The most iterations of a part a server computes on its connection's task (about
/// 4 µs at 2 ns an iteration: less than the two thread wake-ups a worker costs).
pub const TINY_ITERATIONS: u64 = 2048;

/// The `loop` kind.
pub struct LoopSum;

/// The `[job]` keys of a loop job.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LoopParams {
    /// Total iterations: the loop runs over `[0, iterations)`.
    pub iterations: Spanned<u64>,
}

/// One part of a loop job: the index range `[lo, hi)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct LoopPart {
    /// First index, included.
    pub lo: u64,
    /// Last index, excluded.
    pub hi: u64,
}

impl Kind for LoopSum {
    const NAME: &'static str = "loop";
    const UNIT: &'static str = "iterations";
    type Params = LoopParams;
    /// The number of iterations.
    type Data = u64;
    type Task = LoopPart;
    /// The wrapping sum mod 2^64.
    type Output = u64;

    fn validate_params(params: &LoopParams) -> Result<(), ParamError> {
        if *params.iterations.get_ref() == 0 {
            return Err(ParamError::at(
                params.iterations.span(),
                "iterations must be at least 1",
            ));
        }
        Ok(())
    }

    fn planned_units(params: &LoopParams) -> Option<u64> {
        Some(*params.iterations.get_ref())
    }

    fn load(params: &LoopParams, _base: &Path) -> Result<u64, String> {
        Ok(*params.iterations.get_ref())
    }

    fn split_units(iterations: &u64) -> u64 {
        *iterations
    }

    fn part(_iterations: &u64, range: PartRange) -> (LoopPart, Bytes) {
        let PartRange { lo, hi, .. } = range;
        (LoopPart { lo, hi }, Bytes::new())
    }

    fn validate(task: &LoopPart) -> Result<(), String> {
        if task.lo > task.hi {
            return Err(format!("loop range [{}, {}) is reversed", task.lo, task.hi));
        }
        Ok(())
    }

    fn work_items(task: &LoopPart) -> u64 {
        task.hi.saturating_sub(task.lo)
    }

    fn is_tiny(task: &LoopPart) -> bool {
        Self::work_items(task) <= TINY_ITERATIONS
    }

    fn compute_chunk(
        task: &LoopPart,
        _chunk: Chunk<'_>,
        _inputs: &JobInputs,
        cancel: &CancelFlag,
    ) -> Result<u64, Cancelled> {
        task.compute(cancel)
    }

    fn combine(a: u64, b: u64) -> Option<u64> {
        Some(a.wrapping_add(b))
    }
}

impl LoopPart {
    /// The wrapping sum of splitmix64 over the range, stopping early if cancelled.
    pub fn compute(&self, cancel: &CancelFlag) -> Result<u64, Cancelled> {
        let mut sum = 0u64;
        let mut start = self.lo;
        while start < self.hi {
            if cancel.is_cancelled() {
                return Err(Cancelled);
            }
            let end = self.hi.min(start.saturating_add(CANCEL_CHECK_INTERVAL));
            sum = sum.wrapping_add(sum_splitmix64(start, end));
            start = end;
        }
        Ok(sum)
    }
}

/// The wrapping sum of splitmix64(i) over `[lo, hi)`: the hot loop.
///
/// It is written to stay scalar. Left alone, LLVM vectorizes the sum for SSE2, which
/// has no 64-bit vector multiply: each of splitmix64's two multiplies becomes three
/// 32-bit ones with shifts and adds, and the loop ran 10-20% slower than the same loop
/// compiled by gcc -O3 (1.208 against 1.070 ns an iteration). gcc keeps it scalar:
/// the constant added into the induction variable, two `imul`s independent from one
/// iteration to the next, a dozen instructions. Passing each mixed value through
/// [`opaque_to_the_vectorizer`] gives LLVM no vector form of the body, so it emits
/// that same scalar loop (16 instructions, the constant folded into the induction
/// variable too). No target-cpu flag is involved: AVX-512's 64-bit vector multiply
/// would vectorize it well, but a user's build cannot assume it.
#[inline(never)]
fn sum_splitmix64(lo: u64, hi: u64) -> u64 {
    (lo..hi).fold(0u64, |sum, i| {
        sum.wrapping_add(opaque_to_the_vectorizer(splitmix64(i)))
    })
}

/// `value` unchanged, through an empty inline assembly block that holds it in a
/// register: no instruction, but the compiler cannot see through it, so it cannot
/// turn the loop around it into vector code. Elsewhere than x86-64 and AArch64 it is
/// the identity.
#[inline(always)]
fn opaque_to_the_vectorizer(value: u64) -> u64 {
    #[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
    {
        let mut value = value;
        // SAFETY: the template is empty (a comment): the value stays in its register,
        // and no memory, stack or flag is read or written.
        unsafe {
            std::arch::asm!(
                "/* {0} */",
                inout(reg) value,
                options(pure, nomem, nostack, preserves_flags)
            );
        }
        value
    }
    #[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
    {
        value
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sum(lo: u64, hi: u64) -> u64 {
        LoopPart { lo, hi }.compute(&CancelFlag::new()).unwrap()
    }

    #[test]
    fn check_values_from_the_design() {
        assert_eq!(sum(0, 1000), 4839925025133175650);
        assert_eq!(sum(0, 1 << 20), 8731987058694679736);
    }

    #[test]
    fn ranges_add_up() {
        let whole = sum(0, 3_000_001);
        let split = sum(0, 1_234_567).wrapping_add(sum(1_234_567, 3_000_001));
        assert_eq!(whole, split);
        assert_eq!(sum(5, 5), 0);
    }

    #[test]
    fn a_cancelled_loop_stops() {
        let cancel = CancelFlag::new();
        cancel.cancel();
        assert_eq!(
            LoopPart {
                lo: 0,
                hi: u64::MAX
            }
            .compute(&cancel),
            Err(Cancelled)
        );
    }
}
