//! Exact sums of `f64`s, rounded once: the float matrix sum that does not change with
//! the split.
//!
//! A float sum added left to right depends on the order of the additions, so a job cut
//! into 2 parts and the same job cut into 3 would print different last digits. Here
//! every element is added *exactly* into an [`ExactSum`]: a fixed-point integer wide
//! enough for any finite `f64` and for the sum of up to 2^64 of them (bit 0 weighs
//! 2^-1074, the smallest subnormal). Integers add exactly and in any order, so the
//! partial sums of chunks and parts combine to the same value however the matrix was
//! split, and [`ExactSum::to_f64`] rounds that value once, to nearest, ties to even:
//! the correctly rounded sum, the value Python's `math.fsum` returns.
//!
//! The kernel ([`ExactSum::of_le_bytes`]) does not touch the wide integer per element.
//! It adds each element's 53-bit significand, with its sign, into one of 2048 `i128`
//! bins chosen by the element's 11-bit exponent field; 2^74 significands fit in a bin,
//! far more than a chunk holds. The bins are folded into the wide integer once per
//! chunk. That keeps the loop at a few instructions an element (see pool-bench's
//! scenario 8 for what it costs against a plain `f64` sum).
//!
//! NaN and infinities follow IEEE 754: a NaN anywhere, or both +inf and -inf, make the
//! sum NaN; otherwise an infinity makes it that infinity. A finite sum too large for an
//! `f64` rounds to an infinity, as one IEEE addition would (`math.fsum` raises an
//! error instead). A zero sum is -0.0 only when every element was -0.0.

use std::fmt;

use serde::{Deserialize, Serialize};

/// 64-bit limbs of the fixed-point integer: 2176 bits, bit 0 weighing 2^-1074. Finite
/// `f64`s are below 2^1024 = 2^2098 units, so sums of up to 2^64 of them stay below
/// 2^2162 units, and the top bit is the sign (two's complement).
const LIMBS: usize = 34;

/// Units of 2^-1074 below 2^1024, the bound of one finite `f64`, as a power of two.
const F64_LIMIT_BITS: u32 = 1024 + 1074;

/// The significand bits an `f64` stores (the leading 1 of normal numbers is implied).
const FRACTION_BITS: u32 = 52;
const FRACTION_MASK: u64 = (1 << FRACTION_BITS) - 1;

/// The exponent field of infinities and NaNs.
const SPECIAL_EXPONENT: usize = 0x7ff;

/// The exact sum of some `f64`s, and what IEEE 754 needs beyond the finite value: the
/// result of a part, of a chunk of one, or of a whole float matrix.
///
/// Two sums of the same numbers are equal whatever order they were added in, so every
/// mode's result can be compared for equality; [`to_f64`](Self::to_f64) gives the
/// correctly rounded value, and `Display` prints it with the digits that read back to
/// the same `f64`.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(into = "WireExactSum", try_from = "WireExactSum")]
pub struct ExactSum {
    /// The finite elements' sum, two's complement, little-endian limbs, in units of
    /// 2^-1074.
    limbs: [u64; LIMBS],
    /// A NaN was added.
    nan: bool,
    /// +inf was added.
    positive_infinity: bool,
    /// -inf was added.
    negative_infinity: bool,
    /// Every element added was -0.0 (true of no elements at all: -0.0 is the identity
    /// of IEEE addition), so a zero sum is -0.0 rather than +0.0.
    only_negative_zeros: bool,
}

/// How an [`ExactSum`] travels: serde does not derive for 34-element arrays, and what
/// comes from a peer must be checked before it becomes one.
#[derive(Serialize, Deserialize)]
struct WireExactSum {
    limbs: Vec<u64>,
    nan: bool,
    positive_infinity: bool,
    negative_infinity: bool,
    only_negative_zeros: bool,
}

impl From<ExactSum> for WireExactSum {
    fn from(sum: ExactSum) -> Self {
        WireExactSum {
            limbs: sum.limbs.to_vec(),
            nan: sum.nan,
            positive_infinity: sum.positive_infinity,
            negative_infinity: sum.negative_infinity,
            only_negative_zeros: sum.only_negative_zeros,
        }
    }
}

impl TryFrom<WireExactSum> for ExactSum {
    type Error = String;

    fn try_from(wire: WireExactSum) -> Result<Self, String> {
        let found = wire.limbs.len();
        let limbs = wire
            .limbs
            .try_into()
            .map_err(|_| format!("an exact sum has {LIMBS} limbs, not {found}"))?;
        Ok(ExactSum {
            limbs,
            nan: wire.nan,
            positive_infinity: wire.positive_infinity,
            negative_infinity: wire.negative_infinity,
            only_negative_zeros: wire.only_negative_zeros,
        })
    }
}

impl Default for ExactSum {
    /// The sum of no elements.
    fn default() -> Self {
        ExactSum {
            limbs: [0; LIMBS],
            nan: false,
            positive_infinity: false,
            negative_infinity: false,
            only_negative_zeros: true,
        }
    }
}

impl ExactSum {
    /// The exact sum of `bytes` read as little-endian `f64`s: the float matrix kernel.
    /// A trailing partial element is ignored (servers refuse such chunks first).
    pub fn of_le_bytes(bytes: &[u8]) -> ExactSum {
        let mut bins = [0i128; SPECIAL_EXPONENT + 1];
        // Any bit set: an element had the special exponent (an infinity or a NaN).
        let mut special = 0usize;
        let elements = bytes.chunks_exact(8);
        for element in elements {
            let bits = u64::from_le_bytes(element.try_into().expect("8-byte chunk"));
            let exponent = (bits >> FRACTION_BITS) as usize & SPECIAL_EXPONENT;
            let significand = (bits & FRACTION_MASK) | (u64::from(exponent != 0) << FRACTION_BITS);
            let sign = (bits as i64) >> 63; // 0 or -1
            bins[exponent] += ((significand as i64 ^ sign) - sign) as i128;
            special |= (exponent + 1) >> 11;
        }
        let mut sum = ExactSum {
            only_negative_zeros: false,
            ..ExactSum::default()
        };
        for (exponent, &bin) in bins[..SPECIAL_EXPONENT].iter().enumerate() {
            if bin != 0 {
                // A significand of exponent field e weighs 2^(e - 1075) = 2^(e - 1)
                // units; subnormals (e = 0) weigh one unit, as e = 1 does.
                sum.add_shifted(bin, exponent.max(1) as u32 - 1);
            }
        }
        if special != 0 {
            sum.note_specials(bytes);
        }
        if sum.is_zero() && !sum.nan && !sum.positive_infinity && !sum.negative_infinity {
            // Rare enough to look again: a zero sum is -0.0 only if every element was.
            sum.only_negative_zeros = bytes.chunks_exact(8).all(|b| b == (-0.0f64).to_le_bytes());
        }
        sum
    }

    /// Records the infinities and NaNs among `bytes` (their bin holds no number).
    fn note_specials(&mut self, bytes: &[u8]) {
        for element in bytes.chunks_exact(8) {
            let value = f64::from_le_bytes(element.try_into().expect("8-byte chunk"));
            if value.is_nan() {
                self.nan = true;
            } else if value == f64::INFINITY {
                self.positive_infinity = true;
            } else if value == f64::NEG_INFINITY {
                self.negative_infinity = true;
            }
        }
    }

    /// Adds `value * 2^shift` units to the fixed-point integer (modulo 2^2176, which no
    /// sum this type holds reaches).
    fn add_shifted(&mut self, value: i128, shift: u32) {
        let (index, bit) = ((shift / 64) as usize, shift % 64);
        let extension = if value < 0 { u64::MAX } else { 0 };
        let low = (value as u128) << bit;
        let high = if bit == 0 {
            extension
        } else {
            (value >> (128 - bit)) as u64
        };
        let words = [low as u64, (low >> 64) as u64, high];
        let mut carry = false;
        for (i, limb) in self.limbs.iter_mut().enumerate().skip(index) {
            let word = words.get(i - index).copied().unwrap_or(extension);
            let (sum, c1) = limb.overflowing_add(word);
            let (sum, c2) = sum.overflowing_add(u64::from(carry));
            *limb = sum;
            carry = c1 || c2;
        }
    }

    /// Adds two sums exactly: the results of two chunks or two parts. `None` if the
    /// total would not fit, which only sums no part could produce (see
    /// [`could_come_from`](Self::could_come_from)) can cause.
    pub fn combine(mut self, other: &ExactSum) -> Option<ExactSum> {
        let (a_negative, b_negative) = (self.is_negative(), other.is_negative());
        let mut carry = false;
        for (limb, &word) in self.limbs.iter_mut().zip(&other.limbs) {
            let (sum, c1) = limb.overflowing_add(word);
            let (sum, c2) = sum.overflowing_add(u64::from(carry));
            *limb = sum;
            carry = c1 || c2;
        }
        if a_negative == b_negative && self.is_negative() != a_negative {
            return None;
        }
        self.nan |= other.nan;
        self.positive_infinity |= other.positive_infinity;
        self.negative_infinity |= other.negative_infinity;
        self.only_negative_zeros &= other.only_negative_zeros;
        Some(self)
    }

    /// Whether a sum of `elements` `f64`s could be this one: its finite part below
    /// `elements` times the largest `f64` (rounded up to a power of two), and -0.0
    /// claimed only for a zero sum. A check on results from a peer; any number of sums
    /// that pass it for parts of one matrix combine without overflow.
    pub fn could_come_from(&self, elements: u64) -> bool {
        let bound = F64_LIMIT_BITS + (u64::BITS - elements.leading_zeros());
        let consistent = !self.only_negative_zeros
            || (self.is_zero() && !self.nan && !self.positive_infinity && !self.negative_infinity);
        consistent && self.magnitude_bits() <= bound
    }

    fn is_negative(&self) -> bool {
        self.limbs[LIMBS - 1] >> 63 == 1
    }

    fn is_zero(&self) -> bool {
        self.limbs.iter().all(|&l| l == 0)
    }

    /// The absolute value of the finite part.
    fn magnitude(&self) -> [u64; LIMBS] {
        let mut magnitude = self.limbs;
        if self.is_negative() {
            let mut carry = true;
            for limb in &mut magnitude {
                let (sum, c) = (!*limb).overflowing_add(u64::from(carry));
                *limb = sum;
                carry = c;
            }
        }
        magnitude
    }

    /// The number of bits of the finite part's absolute value (0 for zero).
    fn magnitude_bits(&self) -> u32 {
        bit_length(&self.magnitude())
    }

    /// The sum rounded once to the nearest `f64`, ties to even: the correctly rounded
    /// sum (`math.fsum`), with IEEE 754's rules for NaN, infinities and zeros.
    pub fn to_f64(&self) -> f64 {
        if self.nan || (self.positive_infinity && self.negative_infinity) {
            return f64::NAN;
        }
        if self.positive_infinity {
            return f64::INFINITY;
        }
        if self.negative_infinity {
            return f64::NEG_INFINITY;
        }
        let magnitude = self.magnitude();
        let bits = bit_length(&magnitude);
        let sign = if self.is_negative() { 1u64 << 63 } else { 0 };
        if bits == 0 {
            return if self.only_negative_zeros { -0.0 } else { 0.0 };
        }
        if bits <= FRACTION_BITS + 1 {
            // At most 53 bits at the scale of subnormals: the bits of the f64 itself
            // (a subnormal, or the smallest normal exponent).
            return f64::from_bits(sign | magnitude[0]);
        }
        // Keep the top 53 bits; the rest decide the rounding.
        let mut shift = bits - (FRACTION_BITS + 1);
        let mut significand = bits_at(&magnitude, shift) & ((1 << (FRACTION_BITS + 1)) - 1);
        let round = bits_at(&magnitude, shift - 1) & 1 == 1;
        let sticky = any_below(&magnitude, shift - 1);
        if round && (sticky || significand & 1 == 1) {
            significand += 1;
            if significand == 1 << (FRACTION_BITS + 1) {
                significand >>= 1;
                shift += 1;
            }
        }
        // The significand's leading bit weighs 2^(shift + 52 - 1074), so the biased
        // exponent field is shift + 1.
        let exponent = u64::from(shift) + 1;
        if exponent >= SPECIAL_EXPONENT as u64 {
            return f64::from_bits(sign | f64::INFINITY.to_bits());
        }
        f64::from_bits(sign | exponent << FRACTION_BITS | (significand & FRACTION_MASK))
    }
}

/// The position of the highest set bit plus one (0 for zero).
fn bit_length(limbs: &[u64; LIMBS]) -> u32 {
    limbs
        .iter()
        .rposition(|&l| l != 0)
        .map_or(0, |i| i as u32 * 64 + (64 - limbs[i].leading_zeros()))
}

/// The 64 bits of `limbs` starting at bit `position`.
fn bits_at(limbs: &[u64; LIMBS], position: u32) -> u64 {
    let (index, bit) = ((position / 64) as usize, position % 64);
    let low = limbs[index] >> bit;
    match limbs.get(index + 1) {
        Some(&next) if bit != 0 => low | next << (64 - bit),
        _ => low,
    }
}

/// Whether any bit of `limbs` below bit `position` is set.
fn any_below(limbs: &[u64; LIMBS], position: u32) -> bool {
    let (index, bit) = ((position / 64) as usize, position % 64);
    limbs[..index].iter().any(|&l| l != 0) || limbs[index] & ((1u64 << bit) - 1) != 0
}

impl fmt::Display for ExactSum {
    /// The rounded sum with the fewest digits that read back to the same `f64`
    /// (`1.0`, `33552887.49809362`, `1e308`, `NaN`, `inf`).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.to_f64())
    }
}

impl fmt::Debug for ExactSum {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "ExactSum({:?}, {} bits",
            self.to_f64(),
            self.magnitude_bits()
        )?;
        if self.is_negative() {
            write!(f, ", negative")?;
        }
        write!(f, ")")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::splitmix::splitmix64;

    fn bytes_of(values: &[f64]) -> Vec<u8> {
        values.iter().flat_map(|v| v.to_le_bytes()).collect()
    }

    fn exact_sum(values: &[f64]) -> ExactSum {
        ExactSum::of_le_bytes(&bytes_of(values))
    }

    /// The correctly rounded sum by a method that shares nothing with [`ExactSum`]:
    /// each element's exact decimal expansion (Rust prints every `f64` exactly with
    /// 1074 decimals), added as a big decimal integer in base 10^9, then read by
    /// Rust's float parser, which rounds any decimal string correctly.
    fn reference_sum(values: &[f64]) -> f64 {
        if values.iter().any(|v| v.is_nan())
            || (values.contains(&f64::INFINITY) && values.contains(&f64::NEG_INFINITY))
        {
            return f64::NAN;
        }
        if let Some(inf) = values.iter().find(|v| v.is_infinite()) {
            return *inf;
        }
        const BASE: u64 = 1_000_000_000;
        fn add(total: &mut Vec<u64>, digits: &str) {
            let digits = digits.as_bytes();
            let mut carry = 0;
            let mut i = 0;
            let mut end = digits.len();
            while end > 0 || carry > 0 {
                let start = end.saturating_sub(9);
                let piece: u64 = std::str::from_utf8(&digits[start..end])
                    .unwrap()
                    .parse()
                    .unwrap_or(0);
                end = start;
                if i == total.len() {
                    total.push(0);
                }
                let sum = total[i] + piece + carry;
                total[i] = sum % BASE;
                carry = sum / BASE;
                i += 1;
            }
        }
        fn less(a: &[u64], b: &[u64]) -> bool {
            let trim = |x: &[u64]| x.len() - x.iter().rev().take_while(|&&d| d == 0).count();
            let (la, lb) = (trim(a), trim(b));
            if la != lb {
                return la < lb;
            }
            (0..la)
                .rev()
                .find(|&i| a[i] != b[i])
                .is_some_and(|i| a[i] < b[i])
        }
        fn subtract(a: &[u64], b: &[u64]) -> Vec<u64> {
            let mut out = Vec::new();
            let mut borrow = 0;
            for (i, &digit) in a.iter().enumerate() {
                let sub = b.get(i).copied().unwrap_or(0) + borrow;
                if digit >= sub {
                    out.push(digit - sub);
                    borrow = 0;
                } else {
                    out.push(digit + BASE - sub);
                    borrow = 1;
                }
            }
            out
        }
        let (mut positive, mut negative) = (Vec::new(), Vec::new());
        for v in values {
            let text = format!("{:.1074}", v.abs());
            let digits: String = text.chars().filter(|c| *c != '.').collect();
            add(
                if v.is_sign_negative() {
                    &mut negative
                } else {
                    &mut positive
                },
                &digits,
            );
        }
        let (sign, magnitude) = if less(&positive, &negative) {
            ("-", subtract(&negative, &positive))
        } else {
            ("", subtract(&positive, &negative))
        };
        let mut text = String::from(sign);
        let mut limbs = magnitude.iter().rev().skip_while(|&&d| d == 0);
        match limbs.next() {
            None => {
                let all_negative_zeros = values.iter().all(|v| v.is_sign_negative());
                return if all_negative_zeros { -0.0 } else { 0.0 };
            }
            Some(first) => text.push_str(&first.to_string()),
        }
        for limb in limbs {
            text.push_str(&format!("{limb:09}"));
        }
        text.push_str("e-1074");
        text.parse().unwrap()
    }

    fn same(a: f64, b: f64) -> bool {
        a.to_bits() == b.to_bits() || (a.is_nan() && b.is_nan())
    }

    #[track_caller]
    fn check(values: &[f64], expected: f64) {
        let got = exact_sum(values).to_f64();
        assert!(
            same(got, expected),
            "{values:?}: got {got:?}, expected {expected:?}"
        );
        let reference = reference_sum(values);
        assert!(
            same(reference, expected),
            "the reference gives {reference:?}"
        );
    }

    #[test]
    fn known_sums() {
        let tiny = f64::from_bits(1); // 2^-1074
        check(&[0.1; 10], 1.0);
        check(&[1e308, 1.0, -1e308], 1.0);
        check(&[1e308, 1e308, -1e308], 1e308);
        check(&[1e308, 1e308], f64::INFINITY);
        check(&[-1e308, -1e308], f64::NEG_INFINITY);
        check(&[1.0, 2f64.powi(-53)], 1.0); // a tie, to even
        check(&[1.0, 2f64.powi(-53), 2f64.powi(-106)], 1.0 + f64::EPSILON);
        check(
            &[1.0 + f64::EPSILON, 2f64.powi(-53)],
            1.0 + 2.0 * f64::EPSILON,
        );
        check(&[tiny, tiny, tiny], f64::from_bits(3));
        check(&[f64::MIN_POSITIVE, -tiny], f64::from_bits((1 << 52) - 1));
        check(&[1e-310, 1e300, -1e300], 1e-310);
        check(&[f64::MAX, 2f64.powi(969)], f64::MAX);
        check(&[f64::MAX, 2f64.powi(970)], f64::INFINITY); // a tie above MAX's odd significand
        check(&[-0.0], -0.0);
        check(&[-0.0, -0.0], -0.0);
        check(&[-0.0, 0.0], 0.0);
        check(&[1.0, -1.0], 0.0);
        check(&[-1.0, 1.0, -0.0], 0.0);
        check(&[f64::INFINITY, 1.0], f64::INFINITY);
        check(&[f64::NEG_INFINITY, 1e308, 1e308], f64::NEG_INFINITY);
        check(&[f64::INFINITY, f64::NEG_INFINITY], f64::NAN);
        check(&[f64::NAN, 1.0], f64::NAN);
        check(&[-f64::NAN], f64::NAN);
    }

    /// Values meant to break a float sum: every exponent, subnormals, both extremes,
    /// and numbers cancelling their neighbours.
    fn adversarial(seed: u64, n: usize) -> Vec<f64> {
        let mut out = Vec::with_capacity(n);
        for k in 0..n as u64 {
            let r = splitmix64(seed.wrapping_mul(1_000_003).wrapping_add(k));
            let v = match r % 8 {
                0 | 1 => f64::from_bits(r >> 1 & !(0x7ffu64 << 52) | (r % 2047) << 52), // any finite
                2 => f64::from_bits(r & FRACTION_MASK | (r >> 63) << 63),               // subnormal
                3 => {
                    f64::from_bits((2040 + r % 7) << 52 | r >> 12)
                        * if r & 1 == 0 { 1.0 } else { -1.0 }
                }
                4 => out.last().map_or(1.0, |x: &f64| -x), // cancel
                5 => out.last().map_or(1.0, |x: &f64| -x * (1.0 + f64::EPSILON)),
                6 => (r >> 11) as f64 * 2f64.powi(-53), // the generator's
                _ => 1.0 / ((r % 1000) as f64 + 1.0) * if r & 2 == 0 { 1.0 } else { -1.0 },
            };
            out.push(v);
        }
        out
    }

    #[test]
    fn adversarial_sums_match_the_reference() {
        for seed in 0..40 {
            let values = adversarial(seed, 1 + (seed as usize * 37) % 300);
            let got = exact_sum(&values).to_f64();
            let expected = reference_sum(&values);
            assert!(
                same(got, expected),
                "seed {seed}: got {got:?}, expected {expected:?}"
            );
        }
    }

    #[test]
    fn large_cancelling_sums_match_the_reference() {
        // Many huge values that cancel but for a few tiny ones: a naive sum overflows
        // or loses the tiny ones entirely.
        let mut values = Vec::new();
        for k in 0..2000u64 {
            let big = f64::from_bits((2046 - k % 5) << 52 | splitmix64(k) >> 12);
            values.extend([big, 3e-320, -big, 2.5e-300]);
        }
        values.extend([f64::MAX, f64::MAX, -f64::MAX]);
        let got = exact_sum(&values).to_f64();
        assert!(same(got, reference_sum(&values)));
        assert!(same(got, f64::MAX));
    }

    #[test]
    fn the_split_never_changes_the_sum() {
        let values = adversarial(7, 1000);
        let bytes = bytes_of(&values);
        let whole = ExactSum::of_le_bytes(&bytes);
        assert!(same(whole.to_f64(), reference_sum(&values)));
        for parts in [1usize, 2, 3, 7, 1000] {
            let pieces: Vec<ExactSum> = (0..parts)
                .map(|i| {
                    let (lo, hi) = (i * values.len() / parts, (i + 1) * values.len() / parts);
                    ExactSum::of_le_bytes(&bytes[lo * 8..hi * 8])
                })
                .collect();
            let forward = pieces
                .iter()
                .try_fold(ExactSum::default(), |a, b| a.combine(b))
                .unwrap();
            let backward = pieces
                .iter()
                .rev()
                .try_fold(ExactSum::default(), |a, b| a.combine(b))
                .unwrap();
            assert_eq!(forward, whole, "{parts} parts");
            assert_eq!(backward, whole, "{parts} parts, combined backwards");
        }
    }

    #[test]
    fn travels_intact_and_refuses_a_forged_shape() {
        let sum = exact_sum(&[1e308, -3.5, 1e-320, f64::INFINITY]);
        let config = bincode::config::standard();
        let bytes = bincode::serde::encode_to_vec(&sum, config).unwrap();
        let (back, _): (ExactSum, _) = bincode::serde::decode_from_slice(&bytes, config).unwrap();
        assert_eq!(back, sum);
        let forged = WireExactSum {
            limbs: vec![1; LIMBS + 1],
            nan: false,
            positive_infinity: false,
            negative_infinity: false,
            only_negative_zeros: false,
        };
        let bytes = bincode::serde::encode_to_vec(&forged, config).unwrap();
        let decoded: Result<(ExactSum, usize), _> =
            bincode::serde::decode_from_slice(&bytes, config);
        assert!(decoded.is_err());
    }

    #[test]
    fn a_sum_no_part_could_produce_is_caught() {
        let max = exact_sum(&[f64::MAX; 4]);
        assert!(max.could_come_from(4));
        assert!(exact_sum(&[-f64::MAX; 4]).could_come_from(4));
        assert!(!max.could_come_from(1));
        let mut forged = ExactSum::default();
        forged.limbs[LIMBS - 1] = 1 << 62;
        assert!(!forged.could_come_from(u64::MAX));
        forged.limbs[LIMBS - 1] = u64::MAX; // negative and huge
        assert!(!forged.could_come_from(u64::MAX));
        let mut lying_zero = exact_sum(&[1.0]);
        lying_zero.only_negative_zeros = true;
        assert!(!lying_zero.could_come_from(1));
        // Sums that pass the check for parts of one matrix always combine.
        let mut total = Some(ExactSum::default());
        for _ in 0..64 {
            total = total.and_then(|t| t.combine(&max));
        }
        assert_eq!(total.map(|t| t.to_f64()), Some(f64::INFINITY));
    }

    #[test]
    fn prints_digits_that_read_back() {
        for v in [33552887.49809362, 1e308, 5e-324, -0.0, 0.1 + 0.2, 1.0] {
            let printed = exact_sum(&[v]).to_string();
            assert_eq!(
                printed.parse::<f64>().unwrap().to_bits(),
                v.to_bits(),
                "{printed}"
            );
        }
        assert_eq!(exact_sum(&[1.0]).to_string(), "1.0");
        assert_eq!(exact_sum(&[f64::NAN]).to_string(), "NaN");
        assert_eq!(exact_sum(&[f64::NEG_INFINITY]).to_string(), "-inf");
    }
}
