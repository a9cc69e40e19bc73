//! The job kinds.
//!
//! A *job* is what the user asks for (sum this matrix, run this loop). It splits into
//! *parts*, each a self-contained [`PartTask`] plus the input bytes it reads (a block of
//! the matrix; nothing for the loop). Every mode (sequential, threaded, multi-process and
//! the pool's servers) computes a part the same way: it feeds the part's input, in
//! chunks of at most [`DATA_CHUNK_BYTES`](crate::protocol::DATA_CHUNK_BYTES), to
//! [`compute_chunk`] and folds the chunk results with [`PartResult::combine`]. Partial
//! results of the parts combine the same way into the job's result.
//!
//! Parts are idempotent: computing one twice gives the same result, so a client may
//! resend a part to another server.
//!
//! Each kind lives in its own file; this one lists them.

pub mod loop_sum;
pub mod matrix_sum;

use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};

use bytes::Bytes;
use serde::{Deserialize, Serialize};

pub use loop_sum::LoopPart;
pub use matrix_sum::{Matrix, MatrixPart};

use crate::protocol::DATA_CHUNK_BYTES;

/// What one part asks to compute. Sent to servers and child processes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum PartTask {
    /// Sum of splitmix64 over an index range.
    Loop(LoopPart),
    /// Sum of a block of matrix rows, whose bytes follow as input.
    MatrixSum(MatrixPart),
}

/// The result of a part, or of a whole job once parts are combined.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum PartResult {
    /// Wrapping sum mod 2^64.
    Loop(u64),
    /// Exact sum of 64-bit integers, widened so it cannot overflow.
    MatrixSum(i128),
}

impl PartResult {
    /// Combines two results of the same kind (of two parts, or two chunks of a part).
    ///
    /// Returns `None` when the kinds differ or a matrix sum overflows `i128`, which only
    /// a confused or hostile peer can cause (see [`PartTask::could_produce`]).
    pub fn combine(self, other: PartResult) -> Option<PartResult> {
        match (self, other) {
            (PartResult::Loop(a), PartResult::Loop(b)) => Some(PartResult::Loop(a.wrapping_add(b))),
            (PartResult::MatrixSum(a), PartResult::MatrixSum(b)) => {
                a.checked_add(b).map(PartResult::MatrixSum)
            }
            _ => None,
        }
    }
}

impl fmt::Display for PartResult {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PartResult::Loop(v) => write!(f, "{v}"),
            PartResult::MatrixSum(v) => write!(f, "{v}"),
        }
    }
}

impl PartTask {
    /// How many input bytes the part reads (sent after the task as data frames).
    ///
    /// `None` if the task's sizes overflow, which a well-behaved client never sends.
    pub fn input_bytes(&self) -> Option<u64> {
        match self {
            PartTask::Loop(_) => Some(0),
            PartTask::MatrixSum(part) => part.input_bytes(),
        }
    }

    /// The amount of work the part declares (loop iterations, matrix elements), for
    /// servers that cap it.
    pub fn work_items(&self) -> u64 {
        match self {
            PartTask::Loop(part) => part.hi.saturating_sub(part.lo),
            PartTask::MatrixSum(part) => part.rows.saturating_mul(part.cols),
        }
    }

    /// Whether this task could have produced `result`: the same kind, and for a matrix
    /// block a sum no larger than its elements can make. A peer could send anything;
    /// results that pass this check always combine without overflow.
    pub fn could_produce(&self, result: &PartResult) -> bool {
        match (self, result) {
            (PartTask::Loop(_), PartResult::Loop(_)) => true,
            (PartTask::MatrixSum(part), PartResult::MatrixSum(sum)) => {
                let elements = part.rows.saturating_mul(part.cols) as i128;
                *sum <= elements * i64::MAX as i128 && *sum >= elements * i64::MIN as i128
            }
            _ => false,
        }
    }

    /// Checks that a data chunk of `len` bytes can belong to this task (whole elements).
    pub fn check_chunk(&self, len: usize) -> Result<(), String> {
        match self {
            PartTask::Loop(_) => Err("a loop part takes no data".into()),
            PartTask::MatrixSum(_) => matrix_sum::check_chunk(len),
        }
    }

    /// Checks the task's own consistency; a server refuses a task that fails this.
    pub fn validate(&self) -> Result<(), String> {
        match self {
            PartTask::Loop(part) => part.validate(),
            PartTask::MatrixSum(part) => part.validate(),
        }
    }
}

/// Set when a part's result is no longer wanted (its client went away); kernels check
/// it often enough to stop within about 100 ms.
#[derive(Debug, Default)]
pub struct CancelFlag(AtomicBool);

impl CancelFlag {
    /// A flag that is not set.
    pub fn new() -> Self {
        Self::default()
    }

    /// Asks the kernel to stop.
    pub fn cancel(&self) {
        self.0.store(true, Ordering::Relaxed);
    }

    /// Whether [`cancel`](Self::cancel) was called.
    pub fn is_cancelled(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }
}

/// The kernel stopped because its [`CancelFlag`] was set.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("cancelled")]
pub struct Cancelled;

/// Computes one chunk of a part's input (for a part without input, the whole part on an
/// empty chunk). The one kernel entry point used by every mode.
pub fn compute_chunk(
    task: &PartTask,
    chunk: &[u8],
    cancel: &CancelFlag,
) -> Result<PartResult, Cancelled> {
    match task {
        PartTask::Loop(part) => part.compute(cancel).map(PartResult::Loop),
        PartTask::MatrixSum(_) => {
            if cancel.is_cancelled() {
                return Err(Cancelled);
            }
            Ok(PartResult::MatrixSum(matrix_sum::sum_le_i64(chunk)))
        }
    }
}

/// One part of a job: the task and the input bytes it reads.
#[derive(Debug, Clone)]
pub struct Part {
    /// The part's position in the job, from 0.
    pub index: usize,
    /// What to compute.
    pub task: PartTask,
    /// The input, `task.input_bytes()` long (a zero-copy slice of the job's data).
    pub input: Bytes,
}

impl Part {
    /// The part's input cut into the chunks it travels and is computed in.
    pub fn chunks(&self) -> impl Iterator<Item = Bytes> + '_ {
        (0..self.input.len())
            .step_by(DATA_CHUNK_BYTES)
            .map(|start| {
                self.input
                    .slice(start..self.input.len().min(start + DATA_CHUNK_BYTES))
            })
    }

    /// Computes the part in this thread, chunk by chunk, as a server would.
    pub fn compute(&self, cancel: &CancelFlag) -> Result<PartResult, Cancelled> {
        if self.input.is_empty() {
            return compute_chunk(&self.task, &[], cancel);
        }
        let mut total: Option<PartResult> = None;
        for chunk in self.chunks() {
            let chunk_result = compute_chunk(&self.task, &chunk, cancel)?;
            total = Some(match total {
                None => chunk_result,
                Some(sum) => sum
                    .combine(chunk_result)
                    .expect("chunks of one part share a kind"),
            });
        }
        Ok(total.expect("a part with input has at least one chunk"))
    }
}

/// A job ready to split: its parameters and, for data jobs, its data in memory.
#[derive(Debug, Clone)]
pub enum Job {
    /// The counting loop over `[0, iterations)`.
    Loop {
        /// Total iterations.
        iterations: u64,
    },
    /// The sum of a matrix.
    MatrixSum(Matrix),
}

impl Job {
    /// The kind's name as written in job files.
    pub fn kind(&self) -> &'static str {
        match self {
            Job::Loop { .. } => loop_sum::KIND,
            Job::MatrixSum(_) => matrix_sum::KIND,
        }
    }

    /// The number of items the job splits over (iterations, matrix rows); a job cannot
    /// have more parts than this.
    pub fn split_units(&self) -> u64 {
        match self {
            Job::Loop { iterations } => *iterations,
            Job::MatrixSum(matrix) => matrix.rows(),
        }
    }

    /// Splits the job into `parts` parts of near-equal size (they differ by at most one
    /// unit). `parts` must be between 1 and [`split_units`](Self::split_units).
    pub fn split(&self, parts: usize) -> Vec<Part> {
        assert!(
            parts >= 1 && parts as u64 <= self.split_units(),
            "invalid part count {parts}"
        );
        (0..parts)
            .map(|index| {
                let (lo, hi) = even_range(self.split_units(), parts, index);
                match self {
                    Job::Loop { .. } => Part {
                        index,
                        task: PartTask::Loop(LoopPart { lo, hi }),
                        input: Bytes::new(),
                    },
                    Job::MatrixSum(matrix) => {
                        let (task, input) = matrix.row_block(lo, hi);
                        Part {
                            index,
                            task: PartTask::MatrixSum(task),
                            input,
                        }
                    }
                }
            })
            .collect()
    }
}

/// Combines the results of all parts of a job, `None` for no parts or mixed kinds.
pub fn combine_all(results: impl IntoIterator<Item = PartResult>) -> Option<PartResult> {
    let mut results = results.into_iter();
    let first = results.next()?;
    results.try_fold(first, PartResult::combine)
}

/// The `index`-th of `parts` near-equal sub-ranges of `[0, total)`.
fn even_range(total: u64, parts: usize, index: usize) -> (u64, u64) {
    let bound = |i: usize| ((total as u128 * i as u128) / parts as u128) as u64;
    (bound(index), bound(index + 1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn results_out_of_a_part_s_reach_are_caught() {
        let block = PartTask::MatrixSum(MatrixPart {
            first_row: 0,
            rows: 2,
            cols: 3,
        });
        assert!(block.could_produce(&PartResult::MatrixSum(6 * i64::MAX as i128)));
        assert!(block.could_produce(&PartResult::MatrixSum(6 * i64::MIN as i128)));
        assert!(!block.could_produce(&PartResult::MatrixSum(6 * i64::MAX as i128 + 1)));
        assert!(!block.could_produce(&PartResult::MatrixSum(i128::MAX)));
        assert!(!block.could_produce(&PartResult::Loop(1)));
        assert_eq!(
            PartResult::MatrixSum(i128::MAX).combine(PartResult::MatrixSum(1)),
            None
        );
    }

    #[test]
    fn ranges_cover_everything_once() {
        for total in [1u64, 7, 1000, u64::MAX] {
            for parts in [1usize, 2, 3, 7] {
                if parts as u64 > total {
                    continue;
                }
                let mut next = 0;
                for i in 0..parts {
                    let (lo, hi) = even_range(total, parts, i);
                    assert_eq!(lo, next);
                    assert!(hi > lo);
                    next = hi;
                }
                assert_eq!(next, total);
            }
        }
    }

    #[test]
    fn loop_result_does_not_depend_on_the_split() {
        let job = Job::Loop { iterations: 1000 };
        for parts in [1, 2, 3, 7, 1000] {
            let results = job
                .split(parts)
                .iter()
                .map(|p| p.compute(&CancelFlag::new()).unwrap())
                .collect::<Vec<_>>();
            assert_eq!(
                combine_all(results),
                Some(PartResult::Loop(4839925025133175650))
            );
        }
    }

    #[test]
    fn matrix_result_does_not_depend_on_the_split() {
        let job = Job::MatrixSum(Matrix::generate(301, 7, 5));
        let whole = job.split(1)[0].compute(&CancelFlag::new()).unwrap();
        for parts in [2, 3, 301] {
            let results = job
                .split(parts)
                .iter()
                .map(|p| p.compute(&CancelFlag::new()).unwrap())
                .collect::<Vec<_>>();
            assert_eq!(combine_all(results), Some(whole));
        }
    }
}
