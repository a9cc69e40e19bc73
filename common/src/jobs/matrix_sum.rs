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
use toml::Spanned;

use super::{CancelFlag, Cancelled, Kind, ParamError};
use crate::splitmix::splitmix64;

/// Bytes per element.
const ELEMENT_BYTES: u64 = 8;

/// The largest matrix the client agrees to hold in memory, in bytes.
pub const MAX_MATRIX_BYTES: u64 = 32 << 30;

/// The `matrix-sum` kind.
pub struct MatrixSum;

/// The `[job]` keys of a matrix-sum job: `rows` and `cols` (and `seed`) for a generated
/// matrix, or `csv` for one read from a file.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MatrixParams {
    /// Rows of a generated matrix.
    pub rows: Option<Spanned<u64>>,
    /// Columns of a generated matrix.
    pub cols: Option<Spanned<u64>>,
    /// Seed of a generated matrix (default 0).
    pub seed: Option<Spanned<u64>>,
    /// A CSV file to read the matrix from, relative to the job file's folder.
    pub csv: Option<Spanned<String>>,
}

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

impl Kind for MatrixSum {
    const NAME: &'static str = "matrix-sum";
    const UNIT: &'static str = "matrix rows";
    type Params = MatrixParams;
    type Data = Matrix;
    type Task = MatrixPart;
    /// The exact sum, widened so it cannot overflow.
    type Output = i128;

    fn validate_params(params: &MatrixParams) -> Result<(), ParamError> {
        if params.csv.is_some() {
            for (key, value) in [("rows", &params.rows), ("cols", &params.cols), ("seed", &params.seed)] {
                if let Some(value) = value {
                    return Err(ParamError::at(
                        value.span(),
                        format!("`{key}` cannot be combined with `csv`: a CSV matrix has its own size"),
                    ));
                }
            }
            return Ok(());
        }
        let (Some(rows), Some(cols)) = (&params.rows, &params.cols) else {
            return Err(ParamError::in_table(
                "a matrix-sum job needs `rows` and `cols` (a generated matrix) or `csv = \"file.csv\"`",
            ));
        };
        for dim in [rows, cols] {
            if *dim.get_ref() == 0 {
                return Err(ParamError::at(dim.span(), "a matrix dimension must be at least 1"));
            }
        }
        let bytes = rows
            .get_ref()
            .checked_mul(*cols.get_ref())
            .and_then(|n| n.checked_mul(ELEMENT_BYTES));
        if bytes.is_none_or(|b| b > MAX_MATRIX_BYTES) {
            return Err(ParamError::at(
                cols.span(),
                format!(
                    "a {} x {} matrix of 8-byte integers is larger than the {} GiB the client may hold",
                    rows.get_ref(),
                    cols.get_ref(),
                    MAX_MATRIX_BYTES >> 30
                ),
            ));
        }
        Ok(())
    }

    fn planned_units(params: &MatrixParams) -> Option<u64> {
        match (&params.csv, &params.rows) {
            (None, Some(rows)) => Some(*rows.get_ref()),
            _ => None,
        }
    }

    fn seeds(params: &MatrixParams) -> Vec<(&'static str, u64)> {
        match &params.csv {
            Some(_) => Vec::new(),
            None => vec![("matrix", params.seed.as_ref().map_or(0, |s| *s.get_ref()))],
        }
    }

    fn load(params: &MatrixParams, base: &Path) -> Result<Matrix, String> {
        match (&params.csv, &params.rows, &params.cols) {
            (Some(csv), _, _) => Matrix::read_csv(&base.join(csv.get_ref())).map_err(|e| format!("csv: {e}")),
            (None, Some(rows), Some(cols)) => Ok(Matrix::generate(
                *rows.get_ref(),
                *cols.get_ref(),
                params.seed.as_ref().map_or(0, |s| *s.get_ref()),
            )),
            _ => Err("a matrix-sum job needs `rows` and `cols`, or `csv`".into()),
        }
    }

    fn split_units(matrix: &Matrix) -> u64 {
        matrix.rows()
    }

    fn part(matrix: &Matrix, lo: u64, hi: u64) -> (MatrixPart, Bytes) {
        matrix.row_block(lo, hi)
    }

    fn validate(task: &MatrixPart) -> Result<(), String> {
        match Self::input_bytes(task) {
            Some(_) => Ok(()),
            None => Err(format!(
                "a block of {} x {} elements overflows",
                task.rows, task.cols
            )),
        }
    }

    fn input_bytes(task: &MatrixPart) -> Option<u64> {
        task.rows.checked_mul(task.cols)?.checked_mul(ELEMENT_BYTES)
    }

    fn work_items(task: &MatrixPart) -> u64 {
        task.rows.saturating_mul(task.cols)
    }

    fn check_chunk(_task: &MatrixPart, len: usize) -> Result<(), String> {
        if (len as u64).is_multiple_of(ELEMENT_BYTES) {
            Ok(())
        } else {
            Err(format!(
                "a chunk of {len} bytes does not hold whole 8-byte elements"
            ))
        }
    }

    fn compute_chunk(_task: &MatrixPart, chunk: &[u8], cancel: &CancelFlag) -> Result<i128, Cancelled> {
        // A chunk is at most 4 MiB, about a millisecond: one look at the flag suffices.
        if cancel.is_cancelled() {
            return Err(Cancelled);
        }
        Ok(sum_le_i64(chunk))
    }

    fn combine(a: i128, b: i128) -> Option<i128> {
        a.checked_add(b)
    }

    /// A block of `rows x cols` elements sums to at most that many times `i64::MAX`
    /// in size: a larger claim is a lie, and results within it never overflow `i128`.
    fn could_produce(task: &MatrixPart, sum: &i128) -> bool {
        let elements = task.rows.saturating_mul(task.cols) as i128;
        *sum <= elements * i64::MAX as i128 && *sum >= elements * i64::MIN as i128
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
