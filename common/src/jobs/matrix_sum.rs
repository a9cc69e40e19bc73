//! The `matrix-sum` job: the sum of every element of a matrix, exact for 64-bit
//! integers and correctly rounded for 64-bit floats, whatever the split.
//!
//! The matrix is generated from a seed, or read from a CSV file ([`csv_file`]) or a
//! NumPy `.npy` file ([`npy_file`]), and kept as raw little-endian bytes: the very
//! bytes that travel to servers, so shipping a block is a slice, not a conversion. It
//! splits by blocks of whole rows. Integer sums are widened to `i128`, which no matrix
//! that fits in memory can overflow; float sums are [`ExactSum`]s, exact until they are
//! rounded once for the result, so no split and no mode changes a bit of it.

mod csv_file;
mod npy_file;

use std::fmt;
use std::path::Path;

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use toml::Spanned;

use self::csv_file::CsvOptions;
pub use self::csv_file::{CsvDelimiter, CsvHeader};
use super::{CancelFlag, Cancelled, Chunk, JobInputs, Kind, ParamError, PartRange};
use crate::exact_sum::ExactSum;
use crate::splitmix::splitmix64;

/// Bytes per element.
const ELEMENT_BYTES: u64 = 8;

/// The largest matrix the client agrees to hold in memory, in bytes.
pub const MAX_MATRIX_BYTES: u64 = 32 << 30;

/// The `matrix-sum` kind.
pub struct MatrixSum;

/// What a matrix's elements are (`element` in the job file).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Element {
    /// 64-bit signed integers, summed exactly into 128 bits. The default.
    #[default]
    I64,
    /// 64-bit IEEE floats, summed exactly and rounded once to the nearest `f64`.
    F64,
}

impl fmt::Display for Element {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Element::I64 => "i64",
            Element::F64 => "f64",
        })
    }
}

/// The `[job]` keys of a matrix-sum job: `rows` and `cols` (and `seed`) for a generated
/// matrix, `csv` (and `csv_delimiter`, `csv_header`) for one read from a CSV file, or
/// `npy` for one read from a NumPy file; `element` for the element type.
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
    /// The CSV file's delimiter (default: detected from its first line).
    pub csv_delimiter: Option<Spanned<CsvDelimiter>>,
    /// Whether the CSV file's first row is a header (default: when it holds no number).
    pub csv_header: Option<Spanned<CsvHeader>>,
    /// A NumPy `.npy` file to read the matrix from, relative to the job file's folder.
    pub npy: Option<Spanned<String>>,
    /// The element type of a generated or CSV matrix (default `i64`; a `.npy` file
    /// says its own).
    pub element: Option<Spanned<Element>>,
}

impl MatrixParams {
    fn element(&self) -> Element {
        self.element
            .as_ref()
            .map_or_else(Element::default, |e| *e.get_ref())
    }
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
    /// What the bytes hold.
    pub element: Element,
}

/// The sum of a matrix, of a block of one, or of a chunk of a block.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum MatrixTotal {
    /// The exact sum of integers, widened so it cannot overflow.
    Integer(i128),
    /// The exact sum of floats, rounded only when shown (boxed: it is 34 limbs).
    Float(Box<ExactSum>),
}

impl fmt::Display for MatrixTotal {
    /// An integer in full; a float with the digits that read back to the same `f64`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MatrixTotal::Integer(sum) => sum.fmt(f),
            MatrixTotal::Float(sum) => sum.fmt(f),
        }
    }
}

impl Kind for MatrixSum {
    const NAME: &'static str = "matrix-sum";
    const UNIT: &'static str = "matrix rows";
    type Params = MatrixParams;
    type Data = Matrix;
    type Task = MatrixPart;
    type Output = MatrixTotal;

    fn validate_params(params: &MatrixParams) -> Result<(), ParamError> {
        if let (Some(_), Some(npy)) = (&params.csv, &params.npy) {
            return Err(ParamError::at(
                npy.span(),
                "give one of `csv` and `npy`, not both",
            ));
        }
        let file = [
            ("csv", "a CSV matrix", &params.csv),
            ("npy", "an .npy matrix", &params.npy),
        ]
        .into_iter()
        .find_map(|(key, what, value)| value.as_ref().map(|_| (key, what)));
        if let Some((file_key, what)) = file {
            for (key, value) in [
                ("rows", &params.rows),
                ("cols", &params.cols),
                ("seed", &params.seed),
            ] {
                if let Some(value) = value {
                    return Err(ParamError::at(
                        value.span(),
                        format!(
                            "`{key}` cannot be combined with `{file_key}`: {what} has its own size"
                        ),
                    ));
                }
            }
        }
        if let (Some(_), Some(element)) = (&params.npy, &params.element) {
            return Err(ParamError::at(
                element.span(),
                "`element` cannot be combined with `npy`: the file's dtype says whether it holds i64 or f64",
            ));
        }
        if params.csv.is_none() {
            let delimiter = params
                .csv_delimiter
                .as_ref()
                .map(|d| ("csv_delimiter", d.span()));
            let header = params.csv_header.as_ref().map(|h| ("csv_header", h.span()));
            if let Some((key, span)) = delimiter.or(header) {
                return Err(ParamError::at(
                    span,
                    format!("`{key}` applies only to a `csv` matrix"),
                ));
            }
        }
        if file.is_some() {
            return Ok(());
        }
        let (Some(rows), Some(cols)) = (&params.rows, &params.cols) else {
            return Err(ParamError::in_table(
                "a matrix-sum job needs `rows` and `cols` (a generated matrix), `csv = \"file.csv\"` or `npy = \"file.npy\"`",
            ));
        };
        for dim in [rows, cols] {
            if *dim.get_ref() == 0 {
                return Err(ParamError::at(
                    dim.span(),
                    "a matrix dimension must be at least 1",
                ));
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
                    "a {} x {} matrix of 8-byte {} is larger than the {} GiB the client may hold",
                    rows.get_ref(),
                    cols.get_ref(),
                    match params.element() {
                        Element::I64 => "integers",
                        Element::F64 => "floats",
                    },
                    MAX_MATRIX_BYTES >> 30
                ),
            ));
        }
        Ok(())
    }

    fn planned_units(params: &MatrixParams) -> Option<u64> {
        match (&params.csv, &params.npy, &params.rows) {
            (None, None, Some(rows)) => Some(*rows.get_ref()),
            _ => None,
        }
    }

    fn seeds(params: &MatrixParams) -> Vec<(&'static str, u64)> {
        match (&params.csv, &params.npy) {
            (None, None) => vec![("matrix", params.seed.as_ref().map_or(0, |s| *s.get_ref()))],
            _ => Vec::new(),
        }
    }

    fn load(params: &MatrixParams, base: &Path) -> Result<Matrix, String> {
        match (&params.csv, &params.npy, &params.rows, &params.cols) {
            (Some(csv), _, _, _) => {
                let options = CsvOptions {
                    delimiter: params.csv_delimiter.as_ref().map(|d| *d.get_ref()),
                    header: params
                        .csv_header
                        .as_ref()
                        .map_or_else(CsvHeader::default, |h| *h.get_ref()),
                    element: params.element(),
                };
                csv_file::read(&base.join(csv.get_ref()), &options).map_err(|e| format!("csv: {e}"))
            }
            (None, Some(npy), _, _) => {
                npy_file::read(&base.join(npy.get_ref())).map_err(|e| format!("npy: {e}"))
            }
            (None, None, Some(rows), Some(cols)) => Ok(Matrix::generate(
                *rows.get_ref(),
                *cols.get_ref(),
                params.seed.as_ref().map_or(0, |s| *s.get_ref()),
                params.element(),
            )),
            _ => Err("a matrix-sum job needs `rows` and `cols`, `csv` or `npy`".into()),
        }
    }

    fn split_units(matrix: &Matrix) -> u64 {
        matrix.rows()
    }

    fn part(matrix: &Matrix, range: PartRange) -> (MatrixPart, Bytes) {
        let PartRange { lo, hi, .. } = range;
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

    fn compute_chunk(
        task: &MatrixPart,
        chunk: Chunk<'_>,
        _inputs: &JobInputs,
        cancel: &CancelFlag,
    ) -> Result<MatrixTotal, Cancelled> {
        // A chunk is at most 4 MiB, about a millisecond: one look at the flag suffices.
        if cancel.is_cancelled() {
            return Err(Cancelled);
        }
        Ok(match task.element {
            Element::I64 => MatrixTotal::Integer(sum_le_i64(chunk.bytes)),
            Element::F64 => MatrixTotal::Float(Box::new(ExactSum::of_le_bytes(chunk.bytes))),
        })
    }

    fn combine(a: MatrixTotal, b: MatrixTotal) -> Option<MatrixTotal> {
        match (a, b) {
            (MatrixTotal::Integer(a), MatrixTotal::Integer(b)) => {
                a.checked_add(b).map(MatrixTotal::Integer)
            }
            (MatrixTotal::Float(a), MatrixTotal::Float(b)) => {
                a.combine(&b).map(|sum| MatrixTotal::Float(Box::new(sum)))
            }
            _ => None,
        }
    }

    /// A block of `rows x cols` integers sums to at most that many times `i64::MAX` in
    /// size, and floats to that many times the largest `f64`: a larger claim is a lie,
    /// and results within it never overflow when combined.
    fn could_produce(task: &MatrixPart, sum: &MatrixTotal) -> bool {
        let elements = task.rows.saturating_mul(task.cols);
        match (task.element, sum) {
            (Element::I64, MatrixTotal::Integer(sum)) => {
                let elements = elements as i128;
                *sum <= elements * i64::MAX as i128 && *sum >= elements * i64::MIN as i128
            }
            (Element::F64, MatrixTotal::Float(sum)) => sum.could_come_from(elements),
            _ => false,
        }
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

/// A matrix in memory, row-major, as little-endian `i64` or `f64` bytes.
#[derive(Clone)]
pub struct Matrix {
    rows: u64,
    cols: u64,
    element: Element,
    data: Bytes,
}

impl fmt::Debug for Matrix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Matrix({} x {} {})", self.rows, self.cols, self.element)
    }
}

impl Matrix {
    /// A `rows` x `cols` matrix whose element `k` (row-major) is made from
    /// `splitmix64(seed + k)`: as `i64`, uniform over the whole `i64` range; as `f64`,
    /// its top 53 bits times 2^-53, uniform over [0, 1) and exact.
    ///
    /// # Panics
    /// If the size overflows `usize` (job files are validated before this).
    pub fn generate(rows: u64, cols: u64, seed: u64, element: Element) -> Matrix {
        let elements = rows.checked_mul(cols).expect("matrix size overflows");
        let mut data = Vec::with_capacity(
            usize::try_from(elements * ELEMENT_BYTES).expect("matrix too large"),
        );
        for k in 0..elements {
            let random = splitmix64(seed.wrapping_add(k));
            data.extend_from_slice(&match element {
                Element::I64 => random.to_le_bytes(),
                Element::F64 => ((random >> 11) as f64 * (-53f64).exp2()).to_le_bytes(),
            });
        }
        Matrix {
            rows,
            cols,
            element,
            data: Bytes::from(data),
        }
    }

    /// Number of rows.
    pub fn rows(&self) -> u64 {
        self.rows
    }

    /// Number of columns.
    pub fn cols(&self) -> u64 {
        self.cols
    }

    /// What the elements are.
    pub fn element(&self) -> Element {
        self.element
    }

    /// The matrix's bytes: row-major little-endian `i64`s or `f64`s.
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
            element: self.element,
        };
        (task, input)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn csv(text: &str, element: Element) -> Matrix {
        let options = CsvOptions {
            delimiter: None,
            header: CsvHeader::Auto,
            element,
        };
        csv_file::parse(text.as_bytes(), "m.csv", &options).unwrap()
    }

    fn total(matrix: &Matrix) -> MatrixTotal {
        let (task, input) = matrix.row_block(0, matrix.rows());
        let chunk = Chunk {
            offset: 0,
            bytes: &input,
        };
        MatrixSum::compute_chunk(&task, chunk, &JobInputs::default(), &CancelFlag::new()).unwrap()
    }

    #[test]
    fn csv_sums_exactly_beyond_i64() {
        let m = csv(
            "9223372036854775807, 9223372036854775807\n-1,2\n",
            Element::I64,
        );
        assert_eq!((m.rows(), m.cols()), (2, 2));
        assert_eq!(total(&m), MatrixTotal::Integer(2 * i64::MAX as i128 + 1));
    }

    #[test]
    fn float_csv_sums_to_the_correctly_rounded_value() {
        let m = csv("x;y\n1e308;1\n-1e308;0,1\n", Element::F64);
        let MatrixTotal::Float(sum) = total(&m) else {
            panic!("an f64 matrix sums to a float")
        };
        assert_eq!(sum.to_f64(), 1.1);
        assert_eq!(total(&m).to_string(), "1.1");
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
    fn generated_matrices_are_deterministic() {
        for element in [Element::I64, Element::F64] {
            let a = Matrix::generate(3, 4, 9, element);
            assert_eq!(a.bytes(), Matrix::generate(3, 4, 9, element).bytes());
            assert_ne!(a.bytes(), Matrix::generate(3, 4, 10, element).bytes());
            assert_eq!(a.bytes().len(), 3 * 4 * 8);
        }
        // Element k of an f64 matrix is (splitmix64(seed + k) >> 11) * 2^-53.
        let m = Matrix::generate(2, 3, 5, Element::F64);
        for (k, b) in m.bytes().chunks_exact(8).enumerate() {
            let v = f64::from_le_bytes(b.try_into().unwrap());
            assert_eq!(
                v,
                (splitmix64(5 + k as u64) >> 11) as f64 / 9007199254740992.0
            );
            assert!((0.0..1.0).contains(&v));
        }
    }

    #[test]
    fn results_of_the_other_element_type_are_refused() {
        let floats = MatrixPart {
            first_row: 0,
            rows: 2,
            cols: 2,
            element: Element::F64,
        };
        let float_sum = total(&Matrix::generate(2, 2, 0, Element::F64));
        assert!(MatrixSum::could_produce(&floats, &float_sum));
        assert!(!MatrixSum::could_produce(&floats, &MatrixTotal::Integer(0)));
        let integers = MatrixPart {
            element: Element::I64,
            ..floats
        };
        assert!(!MatrixSum::could_produce(&integers, &float_sum));
        assert_eq!(MatrixSum::combine(float_sum, MatrixTotal::Integer(1)), None);
    }
}
