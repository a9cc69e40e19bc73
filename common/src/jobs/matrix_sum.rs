//! The `matrix-sum` job: the exact sum of every element of a matrix of 64-bit integers.
//!
//! The matrix is generated from a seed or read from a CSV file, and kept as raw
//! little-endian bytes: the very bytes that travel to servers, so shipping a block is a
//! slice, not a conversion. It splits by blocks of whole rows. Sums are widened to
//! `i128`, which no matrix that fits in memory can overflow.

use std::fmt;
use std::path::Path;

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use super::loop_sum::splitmix64;

/// The kind's name in job files.
pub const KIND: &str = "matrix-sum";

/// Bytes per element.
const ELEMENT_BYTES: u64 = 8;

/// One part of a matrix job: a block of rows, whose bytes follow as input.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct MatrixPart {
    /// Index of the block's first row in the matrix (for logs).
    pub first_row: u64,
    /// Rows in the block.
    pub rows: u64,
    /// Columns of the matrix.
    pub cols: u64,
}

impl MatrixPart {
    /// The block's size in bytes, `None` on overflow.
    pub fn input_bytes(&self) -> Option<u64> {
        self.rows.checked_mul(self.cols)?.checked_mul(ELEMENT_BYTES)
    }

    /// Checks that the block's size is representable.
    pub fn validate(&self) -> Result<(), String> {
        match self.input_bytes() {
            Some(_) => Ok(()),
            None => Err(format!(
                "a block of {} x {} elements overflows",
                self.rows, self.cols
            )),
        }
    }
}

/// Checks that a data chunk holds whole elements.
pub fn check_chunk(len: usize) -> Result<(), String> {
    if (len as u64).is_multiple_of(ELEMENT_BYTES) {
        Ok(())
    } else {
        Err(format!(
            "a chunk of {len} bytes does not hold whole 8-byte elements"
        ))
    }
}

/// The sum of `bytes` read as little-endian `i64`s. `bytes.len()` must be a multiple of
/// 8; a trailing partial element is ignored (servers refuse such chunks first).
pub fn sum_le_i64(bytes: &[u8]) -> i128 {
    // Widening every element to i128 costs a carry chain per element (about 2.6 GB/s
    // on one core here). Instead each element x is split as hi * 2^32 + lo, hi = x >> 32
    // (signed, 32 bits) and lo = the low 32 bits (unsigned): sums of up to 2^31 of
    // either fit in 64 bits, they are plain 64-bit adds that vectorise, and the i128
    // widening happens once per block.
    const BLOCK_ELEMENTS: usize = 1 << 24;
    let mut total = 0i128;
    for block in bytes.chunks(BLOCK_ELEMENTS * ELEMENT_BYTES as usize) {
        let (mut hi, mut lo) = (0i64, 0u64);
        for b in block.chunks_exact(ELEMENT_BYTES as usize) {
            let x = i64::from_le_bytes(b.try_into().expect("8-byte chunk"));
            hi += x >> 32;
            lo += x as u64 & 0xffff_ffff;
        }
        total += ((hi as i128) << 32) + lo as i128;
    }
    total
}

/// A matrix in memory, row-major, as little-endian `i64` bytes.
#[derive(Clone)]
pub struct Matrix {
    rows: u64,
    cols: u64,
    data: Bytes,
}

impl fmt::Debug for Matrix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Matrix({} x {})", self.rows, self.cols)
    }
}

/// Why a CSV matrix could not be read. Rows and columns count from 1.
#[derive(Debug, thiserror::Error)]
pub enum CsvError {
    /// The file could not be read.
    #[error("cannot read {path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The cause.
        source: std::io::Error,
    },
    /// A cell is not a 64-bit integer.
    #[error("{path}: row {row}, column {col}: {cell:?} is not a 64-bit integer")]
    BadCell {
        /// The file.
        path: String,
        /// The row, from 1.
        row: usize,
        /// The column, from 1.
        col: usize,
        /// The cell's text.
        cell: String,
    },
    /// A row has another number of cells than the first row.
    #[error("{path}: row {row} has {found} columns, but row 1 has {expected}")]
    Ragged {
        /// The file.
        path: String,
        /// The row, from 1.
        row: usize,
        /// Cells in this row.
        found: usize,
        /// Cells in the first row.
        expected: usize,
    },
    /// No rows at all.
    #[error("{path}: no rows: a matrix needs at least one row of integers")]
    Empty {
        /// The file.
        path: String,
    },
}

impl Matrix {
    /// A `rows` x `cols` matrix whose element `k` (row-major) is `splitmix64(seed + k)`
    /// taken as `i64`: deterministic, uniform over the whole `i64` range.
    ///
    /// # Panics
    /// If the size overflows `usize` (job files are validated before this).
    pub fn generate(rows: u64, cols: u64, seed: u64) -> Matrix {
        let elements = rows.checked_mul(cols).expect("matrix size overflows");
        let mut data = Vec::with_capacity(
            usize::try_from(elements * ELEMENT_BYTES).expect("matrix too large"),
        );
        for k in 0..elements {
            data.extend_from_slice(&splitmix64(seed.wrapping_add(k)).to_le_bytes());
        }
        Matrix {
            rows,
            cols,
            data: Bytes::from(data),
        }
    }

    /// Reads a matrix from CSV text: one row per line, integers separated by commas
    /// (spaces around them allowed); blank lines and lines starting with `#` skipped.
    pub fn parse_csv(text: &str, path: &str) -> Result<Matrix, CsvError> {
        let mut data = Vec::new();
        let mut rows = 0u64;
        let mut cols = 0usize;
        for (line_index, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let row = line_index + 1;
            let mut found = 0;
            for (col_index, cell) in line.split(',').enumerate() {
                let value: i64 = cell.trim().parse().map_err(|_| CsvError::BadCell {
                    path: path.to_string(),
                    row,
                    col: col_index + 1,
                    cell: cell.trim().to_string(),
                })?;
                data.extend_from_slice(&value.to_le_bytes());
                found += 1;
            }
            if rows == 0 {
                cols = found;
            } else if found != cols {
                return Err(CsvError::Ragged {
                    path: path.to_string(),
                    row,
                    found,
                    expected: cols,
                });
            }
            rows += 1;
        }
        if rows == 0 {
            return Err(CsvError::Empty {
                path: path.to_string(),
            });
        }
        Ok(Matrix {
            rows,
            cols: cols as u64,
            data: Bytes::from(data),
        })
    }

    /// Reads a matrix from a CSV file (see [`parse_csv`](Self::parse_csv)).
    pub fn read_csv(path: &Path) -> Result<Matrix, CsvError> {
        let shown = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| CsvError::Io {
            path: shown.clone(),
            source,
        })?;
        Self::parse_csv(&text, &shown)
    }

    /// Number of rows.
    pub fn rows(&self) -> u64 {
        self.rows
    }

    /// Number of columns.
    pub fn cols(&self) -> u64 {
        self.cols
    }

    /// The matrix's bytes: row-major little-endian `i64`s.
    pub fn bytes(&self) -> &Bytes {
        &self.data
    }

    /// The task and input bytes for rows `[lo, hi)`.
    pub fn row_block(&self, lo: u64, hi: u64) -> (MatrixPart, Bytes) {
        let row_bytes = (self.cols * ELEMENT_BYTES) as usize;
        let input = self
            .data
            .slice(lo as usize * row_bytes..hi as usize * row_bytes);
        let task = MatrixPart {
            first_row: lo,
            rows: hi - lo,
            cols: self.cols,
        };
        (task, input)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_sums_exactly_beyond_i64() {
        let m =
            Matrix::parse_csv("9223372036854775807, 9223372036854775807\n-1,2\n", "m.csv").unwrap();
        assert_eq!((m.rows(), m.cols()), (2, 2));
        assert_eq!(sum_le_i64(m.bytes()), 2 * i64::MAX as i128 + 1);
    }

    #[test]
    fn malformed_csv_names_row_and_column() {
        let err = Matrix::parse_csv("1,2,3\n# note\n4,x5,6\n", "m.csv").unwrap_err();
        assert_eq!(
            err.to_string(),
            "m.csv: row 3, column 2: \"x5\" is not a 64-bit integer"
        );
        let err = Matrix::parse_csv("1,2,3\n4,5\n", "m.csv").unwrap_err();
        assert_eq!(
            err.to_string(),
            "m.csv: row 2 has 2 columns, but row 1 has 3"
        );
        assert!(matches!(
            Matrix::parse_csv("\n# only\n", "m.csv"),
            Err(CsvError::Empty { .. })
        ));
    }

    #[test]
    fn split_sum_equals_the_widened_sum() {
        let mut bytes = Vec::new();
        for k in 0..10_000u64 {
            let x = match k % 5 {
                0 => i64::MAX,
                1 => i64::MIN,
                2 => -1,
                _ => splitmix64(k) as i64,
            };
            bytes.extend_from_slice(&x.to_le_bytes());
        }
        bytes.extend_from_slice(&[7, 7, 7]); // a trailing partial element is ignored
        let widened: i128 = bytes
            .chunks_exact(8)
            .map(|b| i64::from_le_bytes(b.try_into().unwrap()) as i128)
            .sum();
        assert_eq!(sum_le_i64(&bytes), widened);
        assert_eq!(sum_le_i64(&[]), 0);
    }

    #[test]
    fn generated_matrix_is_deterministic() {
        let a = Matrix::generate(3, 4, 9);
        assert_eq!(a.bytes(), Matrix::generate(3, 4, 9).bytes());
        assert_ne!(a.bytes(), Matrix::generate(3, 4, 10).bytes());
        assert_eq!(a.bytes().len(), 3 * 4 * 8);
    }
}
