//! The `matmul` job: C = A · B for n × n integer matrices, split by blocks of rows of A.
//!
//! Element k of A (row-major) is `splitmix64(seed + k) >> 48` and element k of B is
//! `splitmix64(seed + n*n + k) >> 48`: 16-bit numbers, which travel as little-endian
//! `u16`s. The job's result is the sum of every element of C, exact (a `u128`); with
//! `output`, C itself is written there as raw little-endian `u64`s, row by row.
//!
//! A part is a block of rows of A, shipped as its input. B is read by every part, so it
//! is the job's shared input ([`B_INPUT`]): it travels to each server once per job, and
//! each server packs it for the kernel once ([`JobInputs::derived`]) for all the parts
//! it computes. A part's input is cut into chunks of whole rows ([`Kind::chunk_bytes`]),
//! each multiplied by B on its own, so a large part spreads over a server's workers.
//!
//! The kernel is in [`kernel`]: blocked for the caches, with SSE2's `pmaddwd`, about 22
//! GOP/s on one core of the machines this was measured on.

pub mod kernel;

use std::fmt;
use std::path::{Path, PathBuf};

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use toml::Spanned;

use self::kernel::{a_element, b_element, sum_rows, PackedB};
use super::rows::RowBlocks;
use super::{
    output_file, CancelFlag, Cancelled, Chunk, JobInputs, Kind, ParamError, PartRange, SharedInput,
    DATA_CHUNK_BYTES, DEFAULT_MAX_RESULT_BYTES,
};

/// The largest n: A and B then take 512 MiB each on the client (two bytes an element),
/// and B packed for the kernel twice that on each server.
pub const MAX_N: u64 = 16_384;

/// The largest n whose C a job may write to `output`: C is 8 bytes an element (128 MiB
/// at this size), and the client holds every mode's C at once to compare them.
pub const MAX_OUTPUT_N: u64 = 4096;

/// The name of the shared input holding B.
pub const B_INPUT: &str = "B";

/// Bytes an element of A or B takes on the wire.
const ELEMENT_BYTES: u64 = 2;

/// Bytes an element of C takes in a result.
const C_ELEMENT_BYTES: u64 = 8;

/// Bytes a result adds to the rows of C it carries when encoded: the sum, the option,
/// the row length, the block count, the first row and the bytes' length, as varints.
const RESULT_OVERHEAD_BYTES: u64 = 64;

/// The `matmul` kind.
pub struct Matmul;

/// The `[job]` keys of a matmul job.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MatmulParams {
    /// The matrices' size: n × n.
    pub n: Spanned<u64>,
    /// Makes A and B (default 0).
    pub seed: Option<Spanned<u64>>,
    /// A file to write C to, as raw little-endian `u64`s, relative to the job file's
    /// folder.
    pub output: Option<Spanned<String>>,
}

/// A loaded matmul job: A and B as little-endian `u16`s, and where C goes.
#[derive(Debug, Clone, PartialEq)]
pub struct MatmulJob {
    /// The matrices' size.
    pub n: u64,
    /// A, row-major.
    pub a: Bytes,
    /// B, row-major.
    pub b: Bytes,
    /// The file C is written to, resolved against the job file's folder.
    pub output: Option<PathBuf>,
}

/// One part: rows `[first_row, first_row + rows)` of C, from the same rows of A (the
/// part's input) and all of B (the job's shared input [`B_INPUT`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct MatmulPart {
    /// The matrices' size.
    pub n: u64,
    /// The block's first row.
    pub first_row: u64,
    /// Rows in the block.
    pub rows: u64,
    /// Whether the result carries the rows of C (the job writes C to a file), or only
    /// their sum.
    pub keep_rows: bool,
}

/// The product of some rows of A by B: the result of a part, a chunk, or the job.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Product {
    /// The sum of every element of those rows of C: the figure compared across modes
    /// and printed as the result.
    pub sum: u128,
    /// The rows of C, as little-endian `u64`s, when the job keeps them.
    pub rows: Option<RowBlocks>,
}

impl fmt::Display for Product {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.sum.fmt(f)
    }
}

impl MatmulJob {
    /// The job for n and `seed`, A and B generated, C not written anywhere.
    pub fn generate(n: u64, seed: u64) -> MatmulJob {
        let elements = |element: fn(u64, u64, u64) -> u16| -> Bytes {
            (0..n * n)
                .flat_map(|k| element(seed, n, k).to_le_bytes())
                .collect::<Vec<u8>>()
                .into()
        };
        MatmulJob {
            n,
            a: elements(a_element),
            b: elements(b_element),
            output: None,
        }
    }
}

impl MatmulPart {
    /// Bytes a row of A takes on the wire (saturating: a task from the network is sized
    /// before it is validated).
    fn row_bytes(&self) -> u64 {
        self.n.saturating_mul(ELEMENT_BYTES)
    }

    /// The largest value the sum of the block's rows of C can take: each element is at
    /// most n · (2^16 − 1)².
    fn max_sum(&self) -> u128 {
        let max_product = u128::from(u16::MAX) * u128::from(u16::MAX);
        u128::from(self.rows) * u128::from(self.n) * u128::from(self.n) * max_product
    }
}

impl Kind for Matmul {
    const NAME: &'static str = "matmul";
    const UNIT: &'static str = "matrix rows";
    type Params = MatmulParams;
    type Data = MatmulJob;
    type Task = MatmulPart;
    type Output = Product;

    fn validate_params(params: &MatmulParams) -> Result<(), ParamError> {
        let n = *params.n.get_ref();
        if !(1..=MAX_N).contains(&n) {
            return Err(ParamError::at(
                params.n.span(),
                format!("n must be between 1 and {MAX_N}"),
            ));
        }
        if let Some(output) = &params.output {
            if n > MAX_OUTPUT_N {
                return Err(ParamError::at(
                    output.span(),
                    format!(
                        "C is written to a file only for n up to {MAX_OUTPUT_N} (the client \
                         holds every mode's C to compare them); leave out output to get \
                         the sum of C"
                    ),
                ));
            }
        }
        Ok(())
    }

    fn planned_units(params: &MatmulParams) -> Option<u64> {
        Some(*params.n.get_ref())
    }

    fn seeds(params: &MatmulParams) -> Vec<(&'static str, u64)> {
        vec![("matrices", seed_of(params))]
    }

    fn load(params: &MatmulParams, base: &Path) -> Result<MatmulJob, String> {
        Ok(MatmulJob {
            output: output_file(params.output.as_ref(), base)?,
            ..MatmulJob::generate(*params.n.get_ref(), seed_of(params))
        })
    }

    fn split_units(job: &MatmulJob) -> u64 {
        job.n
    }

    fn part(job: &MatmulJob, range: PartRange) -> (MatmulPart, Bytes) {
        let task = MatmulPart {
            n: job.n,
            first_row: range.lo,
            rows: range.hi - range.lo,
            keep_rows: job.output.is_some(),
        };
        let row_bytes = task.row_bytes() as usize;
        let input = job
            .a
            .slice(range.lo as usize * row_bytes..range.hi as usize * row_bytes);
        (task, input)
    }

    fn shared_inputs(job: &MatmulJob) -> Vec<SharedInput> {
        vec![SharedInput {
            name: B_INPUT.into(),
            bytes: job.b.clone(),
            executable: false,
        }]
    }

    fn validate(task: &MatmulPart) -> Result<(), String> {
        if !(1..=MAX_N).contains(&task.n) {
            return Err(format!("n = {} is not between 1 and {MAX_N}", task.n));
        }
        if task.rows == 0
            || task
                .first_row
                .checked_add(task.rows)
                .is_none_or(|end| end > task.n)
        {
            return Err(format!(
                "rows [{}, {} + {}) are not a block of the matrix's {}",
                task.first_row, task.first_row, task.rows, task.n
            ));
        }
        if task.keep_rows && task.n > MAX_OUTPUT_N {
            return Err(format!(
                "rows of C are kept only for n up to {MAX_OUTPUT_N}"
            ));
        }
        Ok(())
    }

    fn check_inputs(task: &MatmulPart, inputs: &JobInputs) -> Result<(), String> {
        let expected = task.n * task.n * ELEMENT_BYTES;
        match inputs.get(B_INPUT) {
            Some(b) if b.len() as u64 == expected => Ok(()),
            Some(b) => Err(format!(
                "the shared input {B_INPUT:?} has {} bytes, where a {} x {} matrix of \
                 16-bit elements has {expected}",
                b.len(),
                task.n,
                task.n
            )),
            None => Err(format!(
                "a matmul part needs B, shared as the job's input {B_INPUT:?}"
            )),
        }
    }

    fn input_bytes(task: &MatmulPart) -> Option<u64> {
        task.rows.checked_mul(task.row_bytes())
    }

    fn work_items(task: &MatmulPart) -> u64 {
        task.rows.saturating_mul(task.n).saturating_mul(task.n)
    }

    fn chunk_bytes(task: &MatmulPart) -> usize {
        let row_bytes = task.row_bytes().max(1) as usize;
        (DATA_CHUNK_BYTES / row_bytes).max(1) * row_bytes
    }

    fn check_chunk(task: &MatmulPart, len: usize) -> Result<(), String> {
        let row_bytes = task.row_bytes() as usize;
        if len == 0 || !len.is_multiple_of(row_bytes) || len > Self::chunk_bytes(task) {
            return Err(format!(
                "a chunk of {len} bytes is not whole rows of {row_bytes} bytes, at most {}",
                Self::chunk_bytes(task)
            ));
        }
        Ok(())
    }

    fn compute_chunk(
        task: &MatmulPart,
        chunk: Chunk<'_>,
        inputs: &JobInputs,
        cancel: &CancelFlag,
    ) -> Result<Product, Cancelled> {
        let n = task.n as usize;
        let b = inputs.derived(|inputs| {
            let b = inputs
                .get(B_INPUT)
                .expect("a server checks a part's inputs before computing it");
            PackedB::pack(&u16s(b), n, cancel)
        })?;
        let a_rows = u16s(chunk.bytes);
        let mut c_rows = vec![0u64; a_rows.len()];
        b.multiply_rows(&a_rows, &mut c_rows, cancel)?;
        let rows = task.keep_rows.then(|| {
            let first_row = task.first_row + chunk.offset / task.row_bytes();
            let bytes = c_rows.iter().flat_map(|c| c.to_le_bytes()).collect();
            RowBlocks::one(task.n * C_ELEMENT_BYTES, first_row, bytes)
        });
        Ok(Product {
            sum: sum_rows(&c_rows),
            rows,
        })
    }

    fn combine(a: Product, b: Product) -> Option<Product> {
        let rows = match (a.rows, b.rows) {
            (None, None) => None,
            (Some(a), Some(b)) => Some(a.merge(b)?),
            _ => return None,
        };
        Some(Product {
            sum: a.sum.checked_add(b.sum)?,
            rows,
        })
    }

    /// A sum no block of that many rows can exceed, and, when rows are kept, exactly
    /// the part's rows, each element within range, summing to the sum.
    fn could_produce(task: &MatmulPart, product: &Product) -> bool {
        if product.sum > task.max_sum() {
            return false;
        }
        match (&product.rows, task.keep_rows) {
            (None, false) => true,
            (Some(rows), true) => {
                let Some(bytes) = rows
                    .exactly(task.first_row, task.rows)
                    .filter(|_| rows.row_bytes == task.n * C_ELEMENT_BYTES)
                else {
                    return false;
                };
                let max_element = u128::from(task.n) * u128::from(u16::MAX).pow(2);
                let mut sum = 0u128;
                for element in bytes.chunks_exact(8) {
                    let element =
                        u128::from(u64::from_le_bytes(element.try_into().expect("8 bytes")));
                    if element > max_element {
                        return false;
                    }
                    sum += element;
                }
                sum == product.sum
            }
            _ => false,
        }
    }

    fn max_result_bytes(task: &MatmulPart) -> u64 {
        if task.keep_rows {
            task.rows
                .saturating_mul(task.n)
                .saturating_mul(C_ELEMENT_BYTES)
                .saturating_add(RESULT_OVERHEAD_BYTES)
        } else {
            DEFAULT_MAX_RESULT_BYTES
        }
    }

    fn save(job: &MatmulJob, product: &Product) -> Result<Vec<PathBuf>, String> {
        let Some(path) = &job.output else {
            return Ok(Vec::new());
        };
        let c = product
            .rows
            .as_ref()
            .filter(|rows| rows.row_bytes == job.n * C_ELEMENT_BYTES)
            .and_then(|rows| rows.exactly(0, job.n))
            .ok_or("the result does not hold the whole of C")?;
        std::fs::write(path, c).map_err(|e| format!("cannot write {}: {e}", path.display()))?;
        Ok(vec![path.clone()])
    }
}

fn seed_of(params: &MatmulParams) -> u64 {
    params.seed.as_ref().map_or(0, |s| *s.get_ref())
}

/// Little-endian `u16`s from bytes (an even number of them).
fn u16s(bytes: &[u8]) -> Vec<u16> {
    bytes
        .chunks_exact(2)
        .map(|pair| u16::from_le_bytes([pair[0], pair[1]]))
        .collect()
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::kernel::{fill_a_rows, fill_b, multiply_rows_naive, row_block_sum_closed_form};
    use super::*;
    use crate::jobs::{combine_all, Job, PartResult};

    fn job(n: u64, seed: u64, keep_rows: bool) -> Job {
        Job::Matmul(MatmulJob {
            output: keep_rows.then(|| PathBuf::from("unused")),
            ..MatmulJob::generate(n, seed)
        })
    }

    fn product(result: PartResult) -> Product {
        let PartResult::Matmul(product) = result else {
            panic!("{result:?}")
        };
        product
    }

    #[test]
    fn every_split_gives_the_naive_product() {
        for (n, seed) in [(1, 0), (7, 5), (130, 9)] {
            let a = fill_a_rows(seed, n, 0, n);
            let mut c = vec![0; n * n];
            multiply_rows_naive(&a, &fill_b(seed, n), n, &mut c);
            let want_sum = row_block_sum_closed_form(seed, n, 0, n);
            let want_bytes: Vec<u8> = c.iter().flat_map(|x| x.to_le_bytes()).collect();
            for parts in [1, 2, 3, n].into_iter().filter(|&parts| parts <= n) {
                for keep_rows in [false, true] {
                    let job = job(n as u64, seed, keep_rows);
                    let mut results: Vec<PartResult> = job
                        .split(parts)
                        .iter()
                        .map(|p| p.compute(&CancelFlag::new()).unwrap())
                        .collect();
                    results.reverse();
                    let whole = product(combine_all(results).unwrap());
                    assert_eq!(whole.sum, want_sum, "n {n}, {parts} parts");
                    match whole.rows {
                        Some(rows) => {
                            assert!(keep_rows);
                            assert_eq!(rows.exactly(0, n as u64), Some(&want_bytes[..]));
                        }
                        None => assert!(!keep_rows),
                    }
                }
            }
        }
    }

    #[test]
    fn a_part_of_many_chunks_keeps_its_rows_in_place() {
        // n = 1500: rows of 3000 bytes, so 4 MiB chunks hold 1398 rows and a part of
        // all rows has two chunks, the second at row 1398.
        let n = 1500u64;
        let task = MatmulPart {
            n,
            first_row: 0,
            rows: n,
            keep_rows: true,
        };
        assert_eq!(Matmul::chunk_bytes(&task), 1398 * 3000);
        let Job::Matmul(data) = job(n, 3, true) else {
            unreachable!()
        };
        let shared = Arc::new(JobInputs::new(Matmul::shared_inputs(&data)).unwrap());
        // The last two rows only, as the second chunk, and checked against the naive
        // product of those rows.
        let chunk = Chunk {
            offset: 1498 * 3000,
            bytes: &data.a[1498 * 3000..],
        };
        let got = Matmul::compute_chunk(&task, chunk, &shared, &CancelFlag::new()).unwrap();
        let a = fill_a_rows(3, 1500, 1498, 2);
        let mut c = vec![0; 2 * 1500];
        multiply_rows_naive(&a, &fill_b(3, 1500), 1500, &mut c);
        let rows = got.rows.unwrap();
        assert_eq!(rows.blocks[0].first_row, 1498);
        let bytes: Vec<u8> = c.iter().flat_map(|x| x.to_le_bytes()).collect();
        assert_eq!(rows.exactly(1498, 2), Some(&bytes[..]));
        // B was packed once for the inputs, and reused.
        let packed = shared
            .derived::<PackedB, ()>(|_| panic!("packed again"))
            .unwrap();
        assert_eq!(packed.n(), 1500);
    }

    #[test]
    fn chunks_and_inputs_are_checked() {
        let task = MatmulPart {
            n: 10,
            first_row: 2,
            rows: 3,
            keep_rows: false,
        };
        assert_eq!(Matmul::input_bytes(&task), Some(60));
        assert!(Matmul::check_chunk(&task, 40).is_ok());
        for bad in [0, 1, 41] {
            assert!(Matmul::check_chunk(&task, bad).is_err(), "{bad}");
        }
        let b = |bytes: usize| {
            JobInputs::new(vec![SharedInput {
                name: B_INPUT.into(),
                bytes: vec![0; bytes].into(),
                executable: false,
            }])
            .unwrap()
        };
        // A hostile size is refused, and sizing it first does not overflow.
        let huge = MatmulPart {
            n: u64::MAX,
            ..task
        };
        assert_eq!(Matmul::input_bytes(&huge), None);
        assert!(Matmul::check_chunk(&huge, 40).is_err());
        assert!(Matmul::validate(&huge).is_err());
        assert!(Matmul::check_inputs(&task, &b(200)).is_ok());
        let wrong = Matmul::check_inputs(&task, &b(199)).unwrap_err();
        assert!(wrong.contains("199 bytes"), "{wrong}");
        let missing = Matmul::check_inputs(&task, &JobInputs::default()).unwrap_err();
        assert!(missing.contains("needs B"), "{missing}");
        for bad in [
            MatmulPart { rows: 0, ..task },
            MatmulPart {
                first_row: 8,
                ..task
            },
            MatmulPart { n: 0, ..task },
            MatmulPart {
                n: MAX_N + 1,
                ..task
            },
            MatmulPart {
                n: MAX_OUTPUT_N + 1,
                first_row: 0,
                rows: 1,
                keep_rows: true,
            },
        ] {
            assert!(Matmul::validate(&bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn results_a_part_could_not_produce_are_refused() {
        let Job::Matmul(data) = job(12, 1, true) else {
            unreachable!()
        };
        let shared = JobInputs::new(Matmul::shared_inputs(&data)).unwrap();
        let (task, input) = Matmul::part(
            &data,
            PartRange {
                index: 1,
                parts: 3,
                lo: 4,
                hi: 8,
            },
        );
        let chunk = Chunk {
            offset: 0,
            bytes: &input,
        };
        let good = Matmul::compute_chunk(&task, chunk, &shared, &CancelFlag::new()).unwrap();
        assert!(Matmul::could_produce(&task, &good));
        let mut wrong_sum = good.clone();
        wrong_sum.sum += 1;
        let mut other_rows = good.clone();
        other_rows.rows.as_mut().unwrap().blocks[0].first_row = 5;
        let without_rows = Product {
            rows: None,
            ..good.clone()
        };
        let too_large = Product {
            sum: task.max_sum() + 1,
            rows: None,
        };
        for bad in [wrong_sum, other_rows, without_rows] {
            assert!(!Matmul::could_produce(&task, &bad), "{bad:?}");
        }
        let sum_only = MatmulPart {
            keep_rows: false,
            ..task
        };
        assert!(!Matmul::could_produce(&sum_only, &too_large));
        assert!(!Matmul::could_produce(&sum_only, &good));
        assert!(
            Matmul::max_result_bytes(&task)
                >= crate::codec::encode_message(&PartResult::Matmul(good))
                    .unwrap()
                    .len() as u64
        );
    }
}
