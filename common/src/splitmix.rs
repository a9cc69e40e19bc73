//! splitmix64, the mixing function behind the loop kernel and the generated matrices.
//!
//! It lives in its own module because several kinds use it and none of them owns it.

/// The splitmix64 mixing function (Steele, Lea and Flood), all arithmetic wrapping.
///
/// `splitmix64(0) == 0xe220a8397b1dcdaf`; DESIGN.md gives more check values.
#[inline(always)]
pub fn splitmix64(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    #[test]
    fn check_value_from_the_design() {
        assert_eq!(super::splitmix64(0), 0xe220a8397b1dcdaf);
    }
}
