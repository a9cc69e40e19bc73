//! The `loop` job: the paper's long counting loop, made real.
//!
//! The result is the sum, wrapping mod 2^64, of [`splitmix64`]`(i)` for every `i` in
//! `[0, iterations)`, split by index range. A plain counting loop is a closed form to an
//! optimising compiler; this body is not, so the measured time is the loop's. The same
//! workload is easy to write in C, numpy, Dask, Ray or MPI, so figures compare directly.

use serde::{Deserialize, Serialize};

use super::{CancelFlag, Cancelled};

/// The kind's name in job files.
pub const KIND: &str = "loop";

/// How many iterations run between two looks at the cancel flag (about a millisecond).
const CANCEL_CHECK_INTERVAL: u64 = 1 << 20;

/// One part of a loop job: the index range `[lo, hi)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct LoopPart {
    /// First index, included.
    pub lo: u64,
    /// Last index, excluded.
    pub hi: u64,
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

    /// Checks `lo <= hi`.
    pub fn validate(&self) -> Result<(), String> {
        if self.lo > self.hi {
            return Err(format!("loop range [{}, {}) is reversed", self.lo, self.hi));
        }
        Ok(())
    }
}

/// The splitmix64 mixing function (Steele, Lea and Flood), all arithmetic wrapping.
#[inline(always)]
pub fn splitmix64(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// The wrapping sum of splitmix64(i) over `[lo, hi)`: the hot loop.
#[inline(never)]
fn sum_splitmix64(lo: u64, hi: u64) -> u64 {
    (lo..hi).fold(0u64, |sum, i| sum.wrapping_add(splitmix64(i)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sum(lo: u64, hi: u64) -> u64 {
        LoopPart { lo, hi }.compute(&CancelFlag::new()).unwrap()
    }

    #[test]
    fn check_values_from_the_design() {
        assert_eq!(splitmix64(0), 0xe220a8397b1dcdaf);
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
