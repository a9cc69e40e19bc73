//! The `primes` job: how many primes there are below `below`, split by range.
//!
//! The coursework classic ("count primes with threads, processes and several
//! machines"), with a kernel that is not a toy: each part runs a segmented sieve of
//! Eratosthenes over its own range `[lo, hi)`, on odd numbers only, one bit each, in
//! segments that fit a core's L1 data cache. The multiples of 3, 5, 7, 11 and 13 are not
//! crossed out one by one but copied in from a precomputed pattern, which saves about a
//! third of the work. A part needs nothing from the others: it sieves its base primes
//! (up to the square root of its `hi`) itself, in well under a millisecond for any
//! range a part finishes in seconds.
//!
//! Check values: π(10^6) = 78,498, π(10^7) = 664,579, π(10^8) = 5,761,455,
//! π(10^9) = 50,847,534.

use std::path::Path;
use std::sync::OnceLock;

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use toml::Spanned;

use super::{CancelFlag, Cancelled, Chunk, JobInputs, Kind, ParamError, PartRange};

/// The largest `below` a job (or a part's `hi`) may have: 10^13, about a day of one
/// core. It bounds the base primes a part sieves first (up to 3.2 million), so a task
/// from the network cannot make a server allocate without limit.
pub const MAX_BELOW: u64 = 10_000_000_000_000;

/// Odd numbers per segment, one bit each: 32 KiB, a typical L1 data cache. The cancel
/// flag is looked at once per segment (well under a millisecond).
const SEGMENT_BITS: usize = 1 << 18;

/// 64-bit words per segment.
const SEGMENT_WORDS: usize = SEGMENT_BITS / 64;

/// One segment's bits: bit i is set while the odd number of index `segment + i` may
/// still be prime.
type Segment = [u64; SEGMENT_WORDS];

/// The primes whose multiples are copied from [`Presieve`]'s pattern instead of being
/// crossed out.
const PRESIEVE_PRIMES: [u64; 5] = [3, 5, 7, 11, 13];

/// The `primes` kind.
pub struct Primes;

/// The `[job]` keys of a primes job.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PrimesParams {
    /// Count the primes in `[0, below)`.
    pub below: Spanned<u64>,
}

/// One part: count the primes in `[lo, hi)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct PrimesPart {
    /// First number, included.
    pub lo: u64,
    /// Last number, excluded.
    pub hi: u64,
}

impl Kind for Primes {
    const NAME: &'static str = "primes";
    const UNIT: &'static str = "numbers";
    type Params = PrimesParams;
    /// `below`: the job counts the primes in `[0, below)`.
    type Data = u64;
    type Task = PrimesPart;
    /// The number of primes.
    type Output = u64;

    fn validate_params(params: &PrimesParams) -> Result<(), ParamError> {
        let below = *params.below.get_ref();
        if below == 0 {
            return Err(ParamError::at(
                params.below.span(),
                "below must be at least 1 (the job counts the primes in [0, below))",
            ));
        }
        if below > MAX_BELOW {
            return Err(ParamError::at(
                params.below.span(),
                format!(
                    "below = {below} is more than the {MAX_BELOW} (10^13) a primes job \
                     may count to"
                ),
            ));
        }
        Ok(())
    }

    fn planned_units(params: &PrimesParams) -> Option<u64> {
        Some(*params.below.get_ref())
    }

    fn load(params: &PrimesParams, _base: &Path) -> Result<u64, String> {
        Ok(*params.below.get_ref())
    }

    fn split_units(below: &u64) -> u64 {
        *below
    }

    fn part(_below: &u64, range: PartRange) -> (PrimesPart, Bytes) {
        let PartRange { lo, hi, .. } = range;
        (PrimesPart { lo, hi }, Bytes::new())
    }

    fn validate(task: &PrimesPart) -> Result<(), String> {
        if task.lo > task.hi {
            return Err(format!("range [{}, {}) is reversed", task.lo, task.hi));
        }
        if task.hi > MAX_BELOW {
            return Err(format!(
                "range [{}, {}) goes beyond {MAX_BELOW}, the most a primes part may sieve to",
                task.lo, task.hi
            ));
        }
        Ok(())
    }

    fn work_items(task: &PrimesPart) -> u64 {
        task.hi.saturating_sub(task.lo)
    }

    fn compute_chunk(
        task: &PrimesPart,
        _chunk: Chunk<'_>,
        _inputs: &JobInputs,
        cancel: &CancelFlag,
    ) -> Result<u64, Cancelled> {
        count_primes(task.lo, task.hi, cancel)
    }

    fn combine(a: u64, b: u64) -> Option<u64> {
        a.checked_add(b)
    }

    /// A range holds at most half its numbers, plus one, as primes; counts within that
    /// never overflow when added.
    fn could_produce(task: &PrimesPart, count: &u64) -> bool {
        *count <= task.hi.saturating_sub(task.lo) / 2 + 1
    }
}

/// The number of primes in `[lo, hi)`, stopping early if cancelled. `hi` must be at
/// most [`MAX_BELOW`] (tasks are validated first).
pub fn count_primes(lo: u64, hi: u64, cancel: &CancelFlag) -> Result<u64, Cancelled> {
    // 2 and the presieved primes are counted here: the sieve below only sees odd
    // numbers, and its pattern crosses out 3..13 along with their multiples.
    let mut count = std::iter::once(2)
        .chain(PRESIEVE_PRIMES)
        .filter(|p| (lo..hi).contains(p))
        .count() as u64;
    // Odd n = 2k + 1 in [max(lo, 3), hi) is k in [k_lo, k_hi).
    let k_lo = lo.max(3) / 2;
    let k_hi = hi / 2;
    if k_lo >= k_hi {
        return Ok(count);
    }
    let presieve = Presieve::get();
    // Odd primes p with p * p < hi cross out the composites; those of the pattern are
    // left out, and so is p = 1 (k = 0).
    let base: Vec<u64> = odd_primes_up_to((hi - 1).isqrt())
        .into_iter()
        .filter(|&p| p > PRESIEVE_PRIMES[PRESIEVE_PRIMES.len() - 1])
        .collect();
    // The index k of the next odd multiple of each base prime to cross out: the first
    // at or after both p * p and the range's start.
    let mut next: Vec<u64> = base
        .iter()
        .map(|&p| {
            let start = (2 * k_lo + 1).max(p * p);
            let mut multiple = start.div_ceil(p) * p;
            if multiple.is_multiple_of(2) {
                multiple += p;
            }
            multiple / 2
        })
        .collect();
    let mut words: Box<Segment> = Box::new([0; SEGMENT_WORDS]);
    let mut segment = k_lo;
    while segment < k_hi {
        if cancel.is_cancelled() {
            return Err(Cancelled);
        }
        let len = (k_hi - segment).min(SEGMENT_BITS as u64) as usize;
        let used = len.div_ceil(64);
        presieve.fill(&mut words[..used], segment);
        if segment == 0 {
            words[0] &= !1; // k = 0 is n = 1, not a prime
        }
        for (&p, next) in base.iter().zip(next.iter_mut()) {
            *next = cross_out(&mut words, len, segment, *next, p);
        }
        if !len.is_multiple_of(64) {
            words[used - 1] &= (1u64 << (len % 64)) - 1;
        }
        count += words[..used]
            .iter()
            .map(|w| u64::from(w.count_ones()))
            .sum::<u64>();
        segment += len as u64;
    }
    Ok(count)
}

/// Clears the bits of the odd multiples of `p` in the segment of `len` bits starting at
/// index `segment`, from index `next` on, and returns the index of the first multiple
/// beyond the segment: the hot loop.
#[inline]
fn cross_out(words: &mut Segment, len: usize, segment: u64, next: u64, p: u64) -> u64 {
    let end = segment + len as u64;
    if next >= end {
        return next;
    }
    let step = p as usize;
    let mut i = (next - segment) as usize;
    while i < len {
        // `len` is at most SEGMENT_BITS, so the mask changes nothing; it lets the
        // compiler see the index is in bounds and drop the check from the hot loop.
        words[(i / 64) % SEGMENT_WORDS] &= !(1u64 << (i % 64));
        i += step;
    }
    segment + i as u64
}

/// The odd primes up to `limit`, by a plain sieve over odd numbers (`limit` is at most
/// the square root of [`MAX_BELOW`], so this is a few megabytes at most).
fn odd_primes_up_to(limit: u64) -> Vec<u64> {
    if limit < 3 {
        return Vec::new();
    }
    // composite[k] is for n = 2k + 1 <= limit, k in [0, (limit - 1) / 2]; k = 0 (n = 1)
    // is skipped.
    let half = ((limit - 1) / 2) as usize;
    let mut composite = vec![false; half + 1];
    let mut primes = Vec::new();
    for k in 1..=half {
        if composite[k] {
            continue;
        }
        let p = 2 * k + 1;
        primes.push(p as u64);
        let mut j = (p * p) / 2;
        while j <= half {
            composite[j] = true;
            j += p;
        }
    }
    primes
}

/// The odd numbers with no factor among [`PRESIEVE_PRIMES`], as a repeating bit
/// pattern over k (n = 2k + 1): copying it into a segment crosses out all their
/// multiples at a few operations per 64 numbers.
struct Presieve {
    /// Bit k of the pattern, for k in `[0, PERIOD + 128)`: the period, and enough of
    /// its start repeated after it that 64 bits can be read from any offset below
    /// the period.
    bits: Vec<u64>,
}

impl Presieve {
    /// 3 * 5 * 7 * 11 * 13: the pattern repeats every this many odd numbers.
    const PERIOD: u64 = 15015;

    /// The pattern, built on first use.
    fn get() -> &'static Presieve {
        static PATTERN: OnceLock<Presieve> = OnceLock::new();
        PATTERN.get_or_init(Presieve::new)
    }

    fn new() -> Presieve {
        let total = Self::PERIOD as usize + 128;
        let mut bits = vec![0u64; total.div_ceil(64)];
        for k in 0..total {
            let n = 2 * (k as u64 % Self::PERIOD) + 1;
            if PRESIEVE_PRIMES.iter().all(|&p| !n.is_multiple_of(p)) {
                bits[k / 64] |= 1 << (k % 64);
            }
        }
        Presieve { bits }
    }

    /// Fills `words` with the pattern for the bits starting at index `k`.
    fn fill(&self, words: &mut [u64], k: u64) {
        let mut offset = (k % Self::PERIOD) as usize;
        for word in words {
            let (index, shift) = (offset / 64, offset % 64);
            *word = if shift == 0 {
                self.bits[index]
            } else {
                (self.bits[index] >> shift) | (self.bits[index + 1] << (64 - shift))
            };
            offset += 64;
            if offset >= Self::PERIOD as usize {
                offset -= Self::PERIOD as usize;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn count(lo: u64, hi: u64) -> u64 {
        count_primes(lo, hi, &CancelFlag::new()).unwrap()
    }

    /// Whether each number below `n` is prime, by trial division: slow, obviously right.
    fn reference(n: u64) -> Vec<bool> {
        (0..n)
            .map(|i| i >= 2 && (2..).take_while(|d| d * d <= i).all(|d| i % d != 0))
            .collect()
    }

    #[test]
    fn base_primes_stop_at_the_limit() {
        assert_eq!(odd_primes_up_to(100).last(), Some(&97));
        assert_eq!(odd_primes_up_to(101).last(), Some(&101));
        assert_eq!(odd_primes_up_to(2), []);
        assert_eq!(odd_primes_up_to(9), [3, 5, 7]);
    }

    #[test]
    fn check_values() {
        assert_eq!(count(0, 1_000_000), 78_498);
        assert_eq!(count(0, 10_000_000), 664_579);
    }

    #[test]
    fn every_small_range_matches_trial_division() {
        let n = 400;
        let is_prime = reference(n);
        for lo in 0..n {
            for hi in lo..=n {
                let expected = is_prime[lo as usize..hi as usize]
                    .iter()
                    .filter(|&&p| p)
                    .count() as u64;
                assert_eq!(count(lo, hi), expected, "[{lo}, {hi})");
            }
        }
    }

    #[test]
    fn parts_add_up_at_every_split() {
        // Ranges straddling segments (2^19 numbers each) and the pattern's period,
        // against one plain sieve of the whole range.
        let n = 3_000_017;
        let plain = odd_primes_up_to(n - 1).len() as u64 + 1;
        assert_eq!(count(0, n), plain);
        for parts in [1u64, 2, 3, 7, 10, 64, 1000, 4099] {
            let total: u64 = (0..parts)
                .map(|i| count(n * i / parts, n * (i + 1) / parts))
                .sum();
            assert_eq!(total, plain, "{parts} parts");
        }
    }

    #[test]
    fn ranges_far_from_zero_match_a_plain_sieve() {
        // Around 10^10, with base primes up to 10^5; the reference marks the multiples
        // of every prime up to the square root in the window directly.
        let (lo, hi) = (10_000_000_000u64 - 1_000_003, 10_000_000_000 + 777_777);
        let mut is_prime = vec![true; (hi - lo) as usize];
        for p in std::iter::once(2).chain(odd_primes_up_to((hi - 1).isqrt())) {
            let mut m = lo.div_ceil(p) * p;
            while m < hi {
                is_prime[(m - lo) as usize] = false;
                m += p;
            }
        }
        let expected = is_prime.iter().filter(|&&p| p).count() as u64;
        assert_eq!(count(lo, hi), expected);
        assert_eq!(count(lo, lo + 500_000) + count(lo + 500_000, hi), expected);
    }

    #[test]
    fn a_cancelled_sieve_stops() {
        let cancel = CancelFlag::new();
        cancel.cancel();
        assert_eq!(count_primes(0, MAX_BELOW, &cancel), Err(Cancelled));
    }

    #[test]
    fn bad_job_files_name_the_line() {
        let error = |below: &str| {
            let text = format!("parts = 2\n[job]\nkind = \"primes\"\nbelow = {below}\n");
            crate::jobfile::parse(&text, Path::new("job.toml"))
                .unwrap_err()
                .to_string()
        };
        assert_eq!(
            error("0"),
            "job.toml:4:9: below must be at least 1 (the job counts the primes in [0, below))"
        );
        assert_eq!(
            error("10_000_000_000_001"),
            "job.toml:4:9: below = 10000000000001 is more than the 10000000000000 (10^13) \
             a primes job may count to"
        );
        assert_eq!(
            error("1"),
            "job.toml:1:9: parts = 2 is more than the 1 numbers to split"
        );
        assert!(error("-3").starts_with("job.toml:4:9: "), "{}", error("-3"));
    }

    #[test]
    fn tasks_beyond_the_limit_are_refused() {
        assert!(Primes::validate(&PrimesPart {
            lo: 0,
            hi: MAX_BELOW
        })
        .is_ok());
        assert!(Primes::validate(&PrimesPart {
            lo: 0,
            hi: MAX_BELOW + 1
        })
        .is_err());
        assert!(Primes::validate(&PrimesPart { lo: 5, hi: 4 }).is_err());
        assert!(Primes::could_produce(&PrimesPart { lo: 0, hi: 10 }, &4));
        assert!(!Primes::could_produce(&PrimesPart { lo: 0, hi: 10 }, &7));
        assert!(Primes::could_produce(&PrimesPart { lo: 2, hi: 3 }, &1));
    }
}
