//! The kernel of the `matmul` kind (issue 10 §4): C = A · B for n × n matrices of
//! small integers, by row blocks of A, and the exact sum of C.
//!
//! # The definition
//!
//! Element k of A (row-major) is `splitmix64(seed + k) >> 48`, element k of B is
//! `splitmix64(seed + n*n + k) >> 48` (wrapping adds), so every element is below 2^16,
//! every product below 2^32, and every element of C below n · 2^32: exact in a `u64`
//! for any n a machine can hold. The job's result is the sum of all elements of C, exact
//! in a `u128`. A part is a block of rows of A; B is the same for every part, so a server
//! packs it once ([`PackedB`]) and multiplies every block of rows against it.
//!
//! # How the kernel computes
//!
//! Elements below 2^16 allow a cheaper multiply than 64 bits: SSE2's `pmaddwd`
//! multiplies eight pairs of signed 16-bit numbers and adds neighbouring products, four
//! 32-bit sums per instruction, where the 64-bit route (`pmuludq`) gives two products.
//! Two changes of variable make our numbers fit it exactly:
//!
//! * A is shifted to signed: a' = a − 32768, one `i16`; then a · b = a' · b + 32768 · b,
//!   and the second term sums, over k, to 32768 times a column sum of B, which is
//!   computed once ([`PackedB`]) and is where every element of C starts.
//! * B is split into bytes, b = b_lo + 256 · b_hi, each 0..=255 in an `i16`. A pair of
//!   products a'·b_lo then stays below 2^24 in size, so 128 pairs (256 values of k)
//!   add up in an `i32` without overflow: 128 · 2 · 32768 · 255 < 2^31. After each such
//!   k tile the sums are widened to 64 bits, combined (lo + 256 · hi) and added to C.
//!
//! All of it is integer arithmetic, so the result is exact and does not depend on the
//! tiling: the tests compare it with the textbook triple loop.
//!
//! The loops follow the shape of GotoBLAS: B is packed once into panels of 8 columns by
//! 256 values of k (8 KiB each: both bytes of every element, interleaved by pairs of k as
//! `pmaddwd` reads them); for each k tile and each block of 64 panels (512 columns, 512
//! KiB, kept in L2), every pair of rows of A is packed (broadcast pairs of a') and swept
//! across the block's panels by the micro-kernel, which keeps a 2 × 8 tile of C (32 sums
//! of 32 bits, low and high bytes, in 8 registers) while it runs down k. The micro-kernel is SSE2 intrinsics,
//! the baseline of every x86-64 CPU (no `target-cpu` flag); elsewhere the same
//! arithmetic runs in plain Rust.
//!
//! # Measured
//!
//! One core of the shared Intel Xeon VM these figures come from (2 cores; the build is
//! for the x86-64 baseline), GOP/s = 2 n³ / time. The shapes tried on the way, in
//! single runs while other sessions' builds ran, so differences under about 10% are
//! noise (ranges are repeated runs or neighbouring settings):
//!
//! | kernel | n = 512 | n = 1024 | n = 2048 |
//! |---|---|---|---|
//! | textbook i-j-k triple loop | 0.54 | | |
//! | i-k-j in `u64`, widening `u32` multiply vectorised by LLVM (`pmuludq`), untiled | 4.5-6.6 | 5.3 | 2.4 |
//! | the same, tiled: 64-256 k × 256-1024 columns, five tilings | 4.4-7.4 | 3.3-6.9 | 3.8-6.7 |
//! | the `pmaddwd` arithmetic below in plain Rust (LLVM finds no `pmaddwd` in it) | 1.4-4.5 | | |
//! | `pmaddwd` intrinsics, 1 × 8 tile of C | 12.8-21.0 | 23.5 | 14.1 |
//! | 3 × 8 or 4 × 8 (they spill: SSE2 has 16 registers) | 10.3-21.8 | 16.3-21.4 | 18.3-21.5 |
//! | 2 × 8, all of B swept for each pair of rows | 15.5-23.8 | 26.7 | 22.2-23.7 |
//! | 2 × 8, B in blocks of 128-1024 columns (this kernel: 512) | | 23.0-28.3 | 22.9-27.5 |
//! | 2 × 8, A in blocks of 16-128 rows instead | | 23.4-27.2 | 18.9-26.2 |
//!
//! In `pool-bench` scenario 10 (benchmarks/RESULTS.md §10: best of 3 in each of 3
//! runs, numpy 2.4.6 in the same runs), this kernel did 21.3, 22.6 and 24.6 GOP/s at
//! n = 512, 1024 and 2048 with B packed inside the time: 32x, 89x and 124x numpy's
//! `int64` matmul, 3.3-3.7x the tiled i-k-j loop, and 0.42-0.43x OpenBLAS's `float64`
//! matmul on one thread (which picks AVX-512 at run time; this kernel is SSE2 only).
//! Packing B takes 20-45 ms at n = 2048, 3-5% of the product.

use crate::jobs::{CancelFlag, Cancelled};
use crate::splitmix::splitmix64;

/// Values of k per tile: the most whose products' `i32` sums cannot overflow.
const KC: usize = 256;
/// Pairs of k per tile, the unit `pmaddwd` works in.
const PAIRS: usize = KC / 2;
/// Columns of B per panel (two halves of four `i32` lanes).
const NR: usize = 8;
/// Rows of A per micro-kernel call.
const MR: usize = 2;
/// Panels per column block: 512 columns, 512 KiB of packed B, which stays in L2.
const PANELS_PER_BLOCK: usize = 64;

/// Element `k` (row-major, `k < n * n`) of A for `seed`: `splitmix64(seed + k) >> 48`.
pub fn a_element(seed: u64, n: u64, k: u64) -> u16 {
    debug_assert!(k < n.saturating_mul(n), "element {k} of a {n} x {n} matrix");
    (splitmix64(seed.wrapping_add(k)) >> 48) as u16
}

/// Element `k` (row-major, `k < n * n`) of B for `seed`:
/// `splitmix64(seed + n*n + k) >> 48`, so B continues A's sequence.
pub fn b_element(seed: u64, n: u64, k: u64) -> u16 {
    debug_assert!(k < n.saturating_mul(n), "element {k} of a {n} x {n} matrix");
    (splitmix64(seed.wrapping_add(n.wrapping_mul(n)).wrapping_add(k)) >> 48) as u16
}

/// Rows `[first, first + count)` of A, row-major (`count * n` elements).
pub fn fill_a_rows(seed: u64, n: usize, first: usize, count: usize) -> Vec<u16> {
    let (lo, hi) = (first * n, (first + count) * n);
    (lo..hi)
        .map(|k| a_element(seed, n as u64, k as u64))
        .collect()
}

/// The whole of B, row-major (`n * n` elements).
pub fn fill_b(seed: u64, n: usize) -> Vec<u16> {
    (0..n * n)
        .map(|k| b_element(seed, n as u64, k as u64))
        .collect()
}

/// B packed for the micro-kernel, with its column sums: made once per B and shared by
/// every block of rows multiplied against it (a server's parts of one job).
///
/// It takes about half the memory of B itself (two `i16` per element).
#[derive(Debug, Clone)]
pub struct PackedB {
    n: usize,
    /// Panels of [`NR`] columns: `panels[n.div_ceil(NR)]`.
    panels: usize,
    /// Tile (t, p) is k in `[t * KC, (t + 1) * KC)` and columns `[p * NR, (p + 1) * NR)`,
    /// at `(t * panels + p) * PAIRS`: one entry per pair of k, holding for each column
    /// `j` the low bytes `[2j, 2j + 1]` of rows k and k + 1, then the high bytes at
    /// `16 + 2j`. Past the matrix's edge, zeros.
    tiles: Vec<[i16; 32]>,
    /// 32768 times each column's sum: where every element of C starts (see the module
    /// documentation for why).
    offsets: Vec<u64>,
}

impl PackedB {
    /// Packs `b`, an n × n row-major matrix: 5-10 ns per element here (20-45 ms at
    /// n = 2048, about a second at n = 10,000), so [`PackedB::pack`] can be cancelled.
    ///
    /// # Panics
    ///
    /// If `b` does not have `n * n` elements.
    pub fn new(b: &[u16], n: usize) -> PackedB {
        PackedB::pack(b, n, &CancelFlag::new()).expect("never cancelled")
    }

    /// [`PackedB::new`], stopping with [`Cancelled`] once `cancel` is set (it looks
    /// every 64 rows).
    ///
    /// # Panics
    ///
    /// As [`PackedB::new`].
    pub fn pack(b: &[u16], n: usize, cancel: &CancelFlag) -> Result<PackedB, Cancelled> {
        assert_eq!(b.len(), n * n, "B must be {n} x {n}");
        let panels = n.div_ceil(NR);
        let mut tiles = vec![[0i16; 32]; n.div_ceil(KC) * panels * PAIRS];
        let mut col_sums = vec![0u64; n];
        for (k, row) in b.chunks_exact(n.max(1)).enumerate() {
            if k % 64 == 0 && cancel.is_cancelled() {
                return Err(Cancelled);
            }
            let (t, q, half) = (k / KC, k % KC / 2, k % 2);
            for (j, &x) in row.iter().enumerate() {
                col_sums[j] += u64::from(x);
                let tile = &mut tiles[(t * panels + j / NR) * PAIRS + q];
                let lane = 2 * (j % NR) + half;
                tile[lane] = (x & 0xff) as i16;
                tile[2 * NR + lane] = (x >> 8) as i16;
            }
        }
        Ok(PackedB {
            n,
            panels,
            tiles,
            offsets: col_sums.iter().map(|s| s.wrapping_mul(32768)).collect(),
        })
    }

    /// The matrices' size n.
    pub fn n(&self) -> usize {
        self.n
    }

    /// C rows = A rows · B, like [`multiply_rows`], against this packed B.
    ///
    /// # Panics
    ///
    /// If `a_rows` is not whole rows of n elements, or `c_rows` is not as long.
    pub fn multiply_rows(
        &self,
        a_rows: &[u16],
        c_rows: &mut [u64],
        cancel: &CancelFlag,
    ) -> Result<(), Cancelled> {
        self.multiply_with(a_rows, c_rows, cancel, MICRO_KERNEL)
    }

    /// The loops around the micro-kernel `micro` (a parameter so the tests run both).
    fn multiply_with(
        &self,
        a_rows: &[u16],
        c_rows: &mut [u64],
        cancel: &CancelFlag,
        micro: MicroKernel,
    ) -> Result<(), Cancelled> {
        let n = self.n;
        assert_eq!(
            c_rows.len(),
            a_rows.len(),
            "C rows and A rows differ in size"
        );
        if n == 0 {
            assert!(a_rows.is_empty(), "a 0 x 0 product has no rows");
            return Ok(());
        }
        assert_eq!(a_rows.len() % n, 0, "A rows must be whole rows of {n}");
        let rows = a_rows.len() / n;
        for c_row in c_rows.chunks_exact_mut(n) {
            c_row.copy_from_slice(&self.offsets);
        }
        let mut a_tile = vec![[0i16; 8]; PAIRS * MR];
        for t in 0..n.div_ceil(KC) {
            let k0 = t * KC;
            let pairs = (n - k0).min(KC).div_ceil(2);
            for block in (0..self.panels).step_by(PANELS_PER_BLOCK) {
                let block_end = (block + PANELS_PER_BLOCK).min(self.panels);
                for i0 in (0..rows).step_by(MR) {
                    // A few tens of microseconds of work between two looks.
                    if cancel.is_cancelled() {
                        return Err(Cancelled);
                    }
                    pack_a_tile(a_rows, n, i0, k0, pairs, &mut a_tile);
                    for p in block..block_end {
                        let start = (t * self.panels + p) * PAIRS;
                        let sums = micro(&a_tile[..pairs * MR], &self.tiles[start..start + pairs]);
                        add_tile(&sums, c_rows, n, i0, p * NR);
                    }
                }
            }
        }
        Ok(())
    }
}

/// Packs rows `[i0, i0 + MR)` of A (fewer at the bottom edge: the rest are zeros) for
/// k in `[k0, k0 + 2 * pairs)`: entry `q * MR + r` is the pair (a'(k0 + 2q), a'(k0 + 2q
/// + 1)) of row `i0 + r`, repeated four times, as `pmaddwd` takes it against a panel.
fn pack_a_tile(
    a_rows: &[u16],
    n: usize,
    i0: usize,
    k0: usize,
    pairs: usize,
    tile: &mut [[i16; 8]],
) {
    let rows = a_rows.len() / n;
    for r in 0..MR {
        let row = (i0 + r < rows).then(|| &a_rows[(i0 + r) * n..(i0 + r + 1) * n]);
        for q in 0..pairs {
            let shifted = |k: usize| match row {
                Some(row) if k < n => (i32::from(row[k]) - 32768) as i16,
                _ => 0,
            };
            let pair = [shifted(k0 + 2 * q), shifted(k0 + 2 * q + 1)];
            tile[q * MR + r] = [
                pair[0], pair[1], pair[0], pair[1], pair[0], pair[1], pair[0], pair[1],
            ];
        }
    }
}

/// Adds a micro-kernel's sums (per row: 8 low-byte sums, then 8 high-byte sums) to the
/// tile of C at rows `i0..`, columns `j0..`, leaving out what lies past the edges.
fn add_tile(sums: &[[i32; 16]; MR], c_rows: &mut [u64], n: usize, i0: usize, j0: usize) {
    let rows = c_rows.len() / n;
    let cols = NR.min(n - j0);
    for (r, sums) in sums.iter().enumerate().take(rows.saturating_sub(i0)) {
        let c = &mut c_rows[(i0 + r) * n + j0..][..cols];
        for (j, c) in c.iter_mut().enumerate() {
            let product = i64::from(sums[j]) + 256 * i64::from(sums[NR + j]);
            // Negative partial sums wrap; the final element is exact and in range.
            *c = c.wrapping_add(product as u64);
        }
    }
}

/// A micro-kernel: for each of the [`MR`] rows of `a` (packed by [`pack_a_tile`]) and
/// each column of the panel `b` (one entry per pair of k), the sums of a' times the low
/// bytes, then of a' times the high bytes.
type MicroKernel = fn(a: &[[i16; 8]], b: &[[i16; 32]]) -> [[i32; 16]; MR];

#[cfg(target_arch = "x86_64")]
const MICRO_KERNEL: MicroKernel = sse2::micro_kernel;
#[cfg(not(target_arch = "x86_64"))]
const MICRO_KERNEL: MicroKernel = scalar::micro_kernel;

/// The micro-kernel with SSE2 intrinsics, which every x86-64 CPU has.
///
/// LLVM recognises `pmaddwd` in a loop of two 16-bit products added together when the
/// loop stands alone, but not inside this kernel (the plain-Rust version measured 3-6
/// times slower), so the instructions are spelt out.
#[cfg(target_arch = "x86_64")]
mod sse2 {
    use std::arch::x86_64::{
        __m128i, _mm_add_epi32, _mm_loadu_si128, _mm_madd_epi16, _mm_setzero_si128,
        _mm_storeu_si128,
    };

    use super::MR;

    /// See [`super::MicroKernel`].
    pub(super) fn micro_kernel(a: &[[i16; 8]], b: &[[i16; 32]]) -> [[i32; 16]; MR] {
        assert_eq!(a.len(), b.len() * MR);
        let mut out = [[0i32; 16]; MR];
        // SAFETY: SSE2 is part of the x86-64 baseline, so the intrinsics exist on every
        // CPU this runs on. Every load reads 16 bytes inside a `[i16; 8]` or a quarter
        // of a `[i16; 32]` borrowed here, and every store writes a quarter of `out`;
        // the unaligned forms are used, so no alignment is assumed.
        unsafe {
            let mut acc = [[_mm_setzero_si128(); 4]; MR];
            for (pairs, panel) in a.chunks_exact(MR).zip(b) {
                let panel = panel.as_ptr().cast::<__m128i>();
                let quarters = [
                    _mm_loadu_si128(panel),
                    _mm_loadu_si128(panel.add(1)),
                    _mm_loadu_si128(panel.add(2)),
                    _mm_loadu_si128(panel.add(3)),
                ];
                for (acc, pair) in acc.iter_mut().zip(pairs) {
                    let pair = _mm_loadu_si128(pair.as_ptr().cast());
                    for (acc, quarter) in acc.iter_mut().zip(quarters) {
                        *acc = _mm_add_epi32(*acc, _mm_madd_epi16(pair, quarter));
                    }
                }
            }
            for (out, acc) in out.iter_mut().zip(acc) {
                for (v, acc) in acc.into_iter().enumerate() {
                    _mm_storeu_si128(out[4 * v..].as_mut_ptr().cast(), acc);
                }
            }
        }
        out
    }
}

/// The micro-kernel in plain Rust: the same arithmetic as [`sse2`], one lane at a time.
/// Off x86-64 it is the kernel; on x86-64 the tests check the two agree.
mod scalar {
    use super::{MR, NR};

    /// See [`super::MicroKernel`].
    #[cfg_attr(target_arch = "x86_64", allow(dead_code))]
    pub(super) fn micro_kernel(a: &[[i16; 8]], b: &[[i16; 32]]) -> [[i32; 16]; MR] {
        assert_eq!(a.len(), b.len() * MR);
        let mut out = [[0i32; 16]; MR];
        for (q, panel) in b.iter().enumerate() {
            for (r, out) in out.iter_mut().enumerate() {
                let [a0, a1] = [i32::from(a[q * MR + r][0]), i32::from(a[q * MR + r][1])];
                for (lane, sum) in out.iter_mut().enumerate() {
                    let at = 2 * (lane % NR) + lane / NR * 2 * NR;
                    // Plain `+`: the tests run with overflow checks, so they would catch
                    // a tile too long for 32 bits.
                    *sum += a0 * i32::from(panel[at]) + a1 * i32::from(panel[at + 1]);
                }
            }
        }
        out
    }
}

/// C rows = A rows · B: `a_rows` is some whole rows of A (row-major, a multiple of n
/// elements), `b` all of B (n × n), and `c_rows` receives the same rows of C. Stops with
/// [`Cancelled`] within a fraction of a millisecond once `cancel` is set.
///
/// It packs B first (O(n²)); to multiply several blocks of rows by one B, pack it once
/// with [`PackedB::new`] and use [`PackedB::multiply_rows`].
///
/// # Panics
///
/// If the slices' sizes do not fit n.
pub fn multiply_rows(
    a_rows: &[u16],
    b: &[u16],
    n: usize,
    c_rows: &mut [u64],
    cancel: &CancelFlag,
) -> Result<(), Cancelled> {
    PackedB::pack(b, n, cancel)?.multiply_rows(a_rows, c_rows, cancel)
}

/// The textbook i-j-k triple loop, the reference the tests check the kernel against
/// (and the benchmark's floor). Same arguments as [`multiply_rows`], without cancel.
pub fn multiply_rows_naive(a_rows: &[u16], b: &[u16], n: usize, c_rows: &mut [u64]) {
    assert_eq!(b.len(), n * n);
    assert_eq!(c_rows.len(), a_rows.len());
    for (a_row, c_row) in a_rows.chunks_exact(n).zip(c_rows.chunks_exact_mut(n)) {
        for (j, c) in c_row.iter_mut().enumerate() {
            *c = (0..n).fold(0u64, |sum, k| {
                sum.wrapping_add(u64::from(a_row[k]) * u64::from(b[k * n + j]))
            });
        }
    }
}

/// The exact sum of some rows of C: a part's result.
pub fn sum_rows(c_rows: &[u64]) -> u128 {
    c_rows.iter().map(|&x| u128::from(x)).sum()
}

/// The sum of rows `[first, first + count)` of C for `seed`: the rows of A generated,
/// multiplied by `b` (packed from [`fill_b`] with the same seed) and summed. C's rows
/// are dropped once summed.
pub fn row_block_sum(
    seed: u64,
    first: usize,
    count: usize,
    b: &PackedB,
    cancel: &CancelFlag,
) -> Result<u128, Cancelled> {
    let a_rows = fill_a_rows(seed, b.n(), first, count);
    let mut c_rows = vec![0u64; a_rows.len()];
    b.multiply_rows(&a_rows, &mut c_rows, cancel)?;
    Ok(sum_rows(&c_rows))
}

/// The same sum as [`row_block_sum`] without the product, in O(n²): the sum of a block
/// of rows of A · B is Σ_k (Σ_i A_ik) (Σ_j B_kj). An independent check for tests and
/// benchmarks. (It also means the result alone does not prove a server did the work.)
pub fn row_block_sum_closed_form(seed: u64, n: usize, first: usize, count: usize) -> u128 {
    let mut a_col_sums = vec![0u64; n];
    for row in fill_a_rows(seed, n, first, count).chunks_exact(n.max(1)) {
        for (sum, &x) in a_col_sums.iter_mut().zip(row) {
            *sum += u64::from(x);
        }
    }
    let b = fill_b(seed, n);
    a_col_sums
        .iter()
        .zip(b.chunks_exact(n.max(1)))
        .map(|(&a, b_row)| u128::from(a) * b_row.iter().map(|&x| u128::from(x)).sum::<u128>())
        .sum()
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use super::*;

    /// A's rows `[first, first + count)`, B and the naive product's rows, for `seed`.
    fn naive(seed: u64, n: usize, first: usize, count: usize) -> Vec<u64> {
        let a = fill_a_rows(seed, n, first, count);
        let mut c = vec![0; a.len()];
        multiply_rows_naive(&a, &fill_b(seed, n), n, &mut c);
        c
    }

    fn kernel(b: &PackedB, seed: u64, first: usize, count: usize, micro: MicroKernel) -> Vec<u64> {
        let a = fill_a_rows(seed, b.n(), first, count);
        let mut c = vec![u64::MAX; a.len()];
        b.multiply_with(&a, &mut c, &CancelFlag::new(), micro)
            .unwrap();
        c
    }

    #[test]
    fn elements_follow_the_definition() {
        let (seed, n) = (42u64, 3u64);
        let top = |x: u64| (splitmix64(x) >> 48) as u16;
        assert_eq!(a_element(seed, n, 0), top(42));
        assert_eq!(b_element(seed, n, 0), top(42 + 9));
        assert_eq!(b_element(seed, n, 8), top(42 + 9 + 8));
        // Wrapping adds near the top of the seed range.
        assert_eq!(a_element(u64::MAX, n, 2), top(1));
        assert_eq!(b_element(u64::MAX - 8, n, 0), (splitmix64(0) >> 48) as u16);
        let b = fill_b(seed, 3);
        assert_eq!(b.len(), 9);
        assert_eq!(b[8], b_element(seed, n, 8));
        let a = fill_a_rows(seed, 3, 1, 2);
        assert_eq!(a, (3..9).map(|k| a_element(seed, n, k)).collect::<Vec<_>>());
    }

    #[test]
    fn the_kernel_equals_the_triple_loop() {
        // 257: one past a k tile; 523: a second column block (512 columns) and a
        // third k tile, with neither a multiple of the panels' 8 columns nor even.
        for n in [1, 2, 3, 17, 65, 130, 257, 523] {
            let seed = 1000 + n as u64;
            let b = PackedB::new(&fill_b(seed, n), n);
            let want = naive(seed, n, 0, n);
            assert_eq!(kernel(&b, seed, 0, n, MICRO_KERNEL), want, "n = {n}");
            assert_eq!(
                kernel(&b, seed, 0, n, scalar::micro_kernel),
                want,
                "n = {n}, scalar"
            );
            assert_eq!(sum_rows(&want), row_block_sum_closed_form(seed, n, 0, n));
        }
    }

    #[test]
    fn the_largest_elements_do_not_overflow() {
        // Every element 2^16 - 1 gives the largest sums the i32 tiles hold (a' = 32767
        // times 255, 256 times over), and n = 600 runs three k tiles.
        let n = 600;
        let a = vec![u16::MAX; 3 * n];
        let b = vec![u16::MAX; n * n];
        let packed = PackedB::new(&b, n);
        let want = u64::from(u16::MAX).pow(2) * n as u64;
        for micro in [MICRO_KERNEL, scalar::micro_kernel] {
            let mut c = vec![0; a.len()];
            packed
                .multiply_with(&a, &mut c, &CancelFlag::new(), micro)
                .unwrap();
            assert!(c.iter().all(|&x| x == want));
        }
        // And all zeros, the most negative a'.
        let mut c = vec![1; 3 * n];
        PackedB::new(&vec![0; n * n], n)
            .multiply_rows(&vec![0; 3 * n], &mut c, &CancelFlag::new())
            .unwrap();
        assert!(c.iter().all(|&x| x == 0));
    }

    #[test]
    fn every_row_split_gives_the_rows_of_the_whole() {
        let (seed, n) = (7, 70);
        let b = PackedB::new(&fill_b(seed, n), n);
        let whole = kernel(&b, seed, 0, n, MICRO_KERNEL);
        assert_eq!(whole, naive(seed, n, 0, n));
        for cuts in [
            &[0, 70][..],
            &[0, 1, 70],
            &[0, 1, 2, 5, 33, 34, 69, 70],
            &[0, 35, 70],
        ] {
            let mut total = 0u128;
            for w in cuts.windows(2) {
                let (first, count) = (w[0], w[1] - w[0]);
                let rows = kernel(&b, seed, first, count, MICRO_KERNEL);
                assert_eq!(rows, whole[first * n..(first + count) * n], "rows {w:?}");
                let sum = row_block_sum(seed, first, count, &b, &CancelFlag::new()).unwrap();
                assert_eq!(sum, sum_rows(&rows));
                assert_eq!(sum, row_block_sum_closed_form(seed, n, first, count));
                total += sum;
            }
            assert_eq!(total, sum_rows(&whole), "cuts {cuts:?}");
        }
    }

    #[test]
    fn multiply_rows_packs_b_itself() {
        let (seed, n) = (3, 40);
        let (a, b) = (fill_a_rows(seed, n, 5, 9), fill_b(seed, n));
        let mut c = vec![0; a.len()];
        multiply_rows(&a, &b, n, &mut c, &CancelFlag::new()).unwrap();
        assert_eq!(c, naive(seed, n, 5, 9));
        // No rows, and the empty matrix.
        multiply_rows(&[], &b, n, &mut [], &CancelFlag::new()).unwrap();
        multiply_rows(&[], &[], 0, &mut [], &CancelFlag::new()).unwrap();
        assert_eq!(row_block_sum_closed_form(seed, 0, 0, 0), 0);
    }

    #[test]
    fn a_cancelled_product_stops() {
        let n = 64;
        let b = PackedB::new(&fill_b(1, n), n);
        let cancel = CancelFlag::new();
        cancel.cancel();
        assert_eq!(row_block_sum(1, 0, n, &b, &cancel), Err(Cancelled));
        assert!(PackedB::pack(&fill_b(1, n), n, &cancel).is_err());
        let (a, b) = (fill_a_rows(1, n, 0, n), fill_b(1, n));
        let mut c = vec![0; a.len()];
        assert_eq!(multiply_rows(&a, &b, n, &mut c, &cancel), Err(Cancelled));
    }

    #[test]
    fn a_product_cancelled_midway_stops() {
        // 2 · 1024³ operations: seconds in a test build, far longer than the wait.
        let n = 1024;
        let b = Arc::new(PackedB::new(&fill_b(1, n), n));
        let cancel = Arc::new(CancelFlag::new());
        let worker = {
            let (b, cancel) = (Arc::clone(&b), Arc::clone(&cancel));
            std::thread::spawn(move || row_block_sum(1, 0, n, &b, &cancel))
        };
        std::thread::sleep(Duration::from_millis(20));
        cancel.cancel();
        assert_eq!(worker.join().unwrap(), Err(Cancelled));
    }
}
