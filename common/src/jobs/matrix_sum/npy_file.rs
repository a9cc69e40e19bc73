//! A matrix from a NumPy `.npy` file (`np.save`): 2-D, C order, `<i8` (int64) or
//! `<f8` (float64).
//!
//! The format is small and documented (numpy's `numpy.lib.format`): the magic
//! `\x93NUMPY`, a version, the header's length, a header that is a Python dict literal
//! (`{'descr': '<f8', 'fortran_order': False, 'shape': (3, 4), }`), then the elements.
//! Little-endian 8-byte elements in C order are exactly the bytes a matrix is kept and
//! shipped as, so the file's data is used where it lies in memory: blocks go to
//! servers as slices of it, as they do for a generated matrix.

use std::path::Path;

use bytes::Bytes;

use super::{Element, Matrix, ELEMENT_BYTES, MAX_MATRIX_BYTES};

/// The first bytes of every `.npy` file.
const MAGIC: &[u8] = b"\x93NUMPY";

/// Header bytes allowed beyond the data: numpy's headers are a few hundred bytes at
/// most; this bounds what is read from a file that claims more.
const MAX_HEADER_BYTES: u64 = 1 << 20;

/// Why a `.npy` matrix could not be read.
#[derive(Debug, thiserror::Error)]
pub enum NpyError {
    /// The file could not be read.
    #[error("cannot read {path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The cause.
        source: std::io::Error,
    },
    /// The file is not a `.npy` file pool can read, and why.
    #[error("{path}: {message}")]
    Unsupported {
        /// The file.
        path: String,
        /// What was found, and what to do.
        message: String,
    },
}

/// Reads a matrix from a `.npy` file.
pub fn read(path: &Path) -> Result<Matrix, NpyError> {
    let shown = path.display().to_string();
    let io = |source| NpyError::Io {
        path: shown.clone(),
        source,
    };
    let size = std::fs::metadata(path).map_err(io)?.len();
    if size > MAX_MATRIX_BYTES + MAX_HEADER_BYTES {
        return Err(NpyError::Unsupported {
            path: shown,
            message: format!(
                "{size} bytes is more than the {} GiB matrix the client may hold",
                MAX_MATRIX_BYTES >> 30
            ),
        });
    }
    let bytes = std::fs::read(path).map_err(io)?;
    parse(Bytes::from(bytes)).map_err(|message| NpyError::Unsupported {
        path: shown,
        message,
    })
}

/// Reads a matrix from the bytes of a `.npy` file, keeping its data where it is.
pub fn parse(file: Bytes) -> Result<Matrix, String> {
    let rest = file
        .strip_prefix(MAGIC)
        .ok_or("not a NumPy .npy file (it does not start with \\x93NUMPY)")?;
    let (header_start, header_len) = match rest {
        [1, _, a, b, ..] => (MAGIC.len() + 4, u16::from_le_bytes([*a, *b]) as usize),
        [2 | 3, _, a, b, c, d, ..] => (
            MAGIC.len() + 6,
            u32::from_le_bytes([*a, *b, *c, *d]) as usize,
        ),
        [major, minor, ..] => {
            return Err(format!(
                "format version {major}.{minor}; pool reads versions 1, 2 and 3"
            ))
        }
        _ => return Err("the file ends inside its preamble".into()),
    };
    let data_start = header_start
        .checked_add(header_len)
        .filter(|&end| end <= file.len())
        .ok_or("the file ends inside its header")?;
    let header = std::str::from_utf8(&file[header_start..data_start])
        .map_err(|_| "the header is not text".to_string())?;
    let header = Header::parse(header)?;

    let element = match header.descr.as_str() {
        "<i8" => Element::I64,
        "<f8" => Element::F64,
        other => {
            return Err(format!(
                "dtype {other:?}; pool reads 2-D '<i8' (int64) and '<f8' (float64) \
                 matrices: convert with m.astype('<f8') or m.astype('<i8')"
            ))
        }
    };
    if header.fortran_order {
        return Err("Fortran (column-major) order; pool reads C order: save \
                    np.ascontiguousarray(m) instead"
            .into());
    }
    let [rows, cols] = header.shape[..] else {
        let dims: Vec<String> = header.shape.iter().map(u64::to_string).collect();
        return Err(format!(
            "shape ({}{}), {} dimension(s); pool reads 2-D matrices: reshape it, e.g. \
             m.reshape(len(m), -1)",
            dims.join(", "),
            if dims.len() == 1 { "," } else { "" },
            dims.len()
        ));
    };
    if rows == 0 || cols == 0 {
        return Err(format!(
            "shape ({rows}, {cols}) has no elements: a matrix needs at least one"
        ));
    }
    let expected = rows
        .checked_mul(cols)
        .and_then(|n| n.checked_mul(ELEMENT_BYTES))
        .filter(|&b| b <= MAX_MATRIX_BYTES)
        .ok_or_else(|| {
            format!(
                "shape ({rows}, {cols}) is larger than the {} GiB the client may hold",
                MAX_MATRIX_BYTES >> 30
            )
        })?;
    let found = (file.len() - data_start) as u64;
    if found != expected {
        return Err(format!(
            "shape ({rows}, {cols}) needs {expected} bytes of data, but the file holds {found}"
        ));
    }
    Ok(Matrix {
        rows,
        cols,
        element,
        data: file.slice(data_start..),
    })
}

/// The three keys of a `.npy` header.
#[derive(Debug, PartialEq)]
struct Header {
    descr: String,
    fortran_order: bool,
    shape: Vec<u64>,
}

/// One value of the header's dict literal.
enum Value {
    Text(String),
    Bool(bool),
    Tuple(Vec<u64>),
    /// A list: the `descr` of a structured dtype, which pool does not read.
    List(String),
}

impl Header {
    /// Parses the dict literal numpy writes: string keys, and string, `True`/`False`,
    /// tuple-of-integers or list values.
    fn parse(text: &str) -> Result<Header, String> {
        let mut cursor = Cursor { text, at: 0 };
        let (mut descr, mut fortran_order, mut shape) = (None, None, None);
        cursor.expect('{')?;
        while !cursor.eat('}') {
            let key = cursor.string()?;
            cursor.expect(':')?;
            let value = cursor.value()?;
            match (key.as_str(), value) {
                ("descr", Value::Text(t)) => descr = Some(t),
                ("descr", Value::List(l)) => descr = Some(l),
                ("fortran_order", Value::Bool(b)) => fortran_order = Some(b),
                ("shape", Value::Tuple(t)) => shape = Some(t),
                (key @ ("descr" | "fortran_order" | "shape"), _) => {
                    return Err(format!("the header's {key:?} has an unexpected value"))
                }
                _ => {}
            }
            if !cursor.eat(',') {
                cursor.expect('}')?;
                break;
            }
        }
        let missing = |key| format!("the header has no {key:?}");
        Ok(Header {
            descr: descr.ok_or_else(|| missing("descr"))?,
            fortran_order: fortran_order.ok_or_else(|| missing("fortran_order"))?,
            shape: shape.ok_or_else(|| missing("shape"))?,
        })
    }
}

/// A position in the header's text.
struct Cursor<'a> {
    text: &'a str,
    at: usize,
}

impl Cursor<'_> {
    fn rest(&self) -> &str {
        &self.text[self.at..]
    }

    fn skip_space(&mut self) {
        self.at = self.text.len() - self.rest().trim_start().len();
    }

    /// Consumes `c` (after spaces) if it is next.
    fn eat(&mut self, c: char) -> bool {
        self.skip_space();
        let found = self.rest().starts_with(c);
        if found {
            self.at += c.len_utf8();
        }
        found
    }

    fn expect(&mut self, c: char) -> Result<(), String> {
        if self.eat(c) {
            Ok(())
        } else {
            Err(format!(
                "cannot read the header: expected {c:?} at byte {}",
                self.at
            ))
        }
    }

    fn string(&mut self) -> Result<String, String> {
        self.skip_space();
        let quote = self
            .rest()
            .chars()
            .next()
            .filter(|c| *c == '\'' || *c == '"');
        let Some(quote) = quote else {
            return Err(format!(
                "cannot read the header: expected a string at byte {}",
                self.at
            ));
        };
        let body = &self.rest()[1..];
        let end = body
            .find(quote)
            .ok_or("cannot read the header: a string is not closed")?;
        let value = body[..end].to_string();
        self.at += end + 2;
        Ok(value)
    }

    fn value(&mut self) -> Result<Value, String> {
        self.skip_space();
        let rest = self.rest();
        if rest.starts_with(['\'', '"']) {
            return self.string().map(Value::Text);
        }
        for (word, value) in [("True", true), ("False", false)] {
            if rest.starts_with(word) {
                self.at += word.len();
                return Ok(Value::Bool(value));
            }
        }
        if rest.starts_with('[') {
            let end = rest
                .find(']')
                .ok_or("cannot read the header: a list is not closed")?;
            let list = rest[..=end].to_string();
            self.at += end + 1;
            return Ok(Value::List(list));
        }
        self.expect('(')?;
        let mut items = Vec::new();
        while !self.eat(')') {
            self.skip_space();
            let digits = self.rest().len()
                - self
                    .rest()
                    .trim_start_matches(|c: char| c.is_ascii_digit())
                    .len();
            let item = self.rest()[..digits].parse().map_err(|_| {
                format!(
                    "cannot read the header: expected a dimension at byte {}",
                    self.at
                )
            })?;
            self.at += digits;
            items.push(item);
            if !self.eat(',') {
                self.expect(')')?;
                break;
            }
        }
        Ok(Value::Tuple(items))
    }
}

/// The bytes of a `.npy` file (version 1.0) holding `data`, as `np.save` writes them
/// (`descr` as written in the header, quotes included): for tests, which write their
/// own files.
#[cfg(test)]
pub fn encode(descr: &str, fortran_order: bool, shape: &str, data: &[u8]) -> Vec<u8> {
    let mut header = format!(
        "{{'descr': {descr}, 'fortran_order': {}, 'shape': {shape}, }}",
        if fortran_order { "True" } else { "False" }
    );
    while !(MAGIC.len() + 4 + header.len() + 1).is_multiple_of(64) {
        header.push(' ');
    }
    header.push('\n');
    let mut file = MAGIC.to_vec();
    file.extend_from_slice(&[1, 0]);
    file.extend_from_slice(&(header.len() as u16).to_le_bytes());
    file.extend_from_slice(header.as_bytes());
    file.extend_from_slice(data);
    file
}

#[cfg(test)]
mod tests {
    use super::*;

    fn error(file: Vec<u8>) -> String {
        parse(Bytes::from(file)).unwrap_err()
    }

    #[test]
    fn reads_int64_and_float64_in_place() {
        let data: Vec<u8> = (1..=6i64).flat_map(i64::to_le_bytes).collect();
        let file = Bytes::from(encode("'<i8'", false, "(2, 3)", &data));
        let m = parse(file.clone()).unwrap();
        assert_eq!((m.rows(), m.cols(), m.element()), (2, 3, Element::I64));
        assert_eq!(&m.bytes()[..], &data[..]);
        // The matrix is the file's own memory, not a copy.
        assert_eq!(m.bytes().as_ptr(), file[file.len() - data.len()..].as_ptr());

        let data: Vec<u8> = [0.5f64, -1e308]
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect();
        let m = parse(Bytes::from(encode("'<f8'", false, "(2, 1)", &data))).unwrap();
        assert_eq!((m.rows(), m.cols(), m.element()), (2, 1, Element::F64));
    }

    #[test]
    fn versions_2_and_3_have_a_longer_length() {
        let data = 7.0f64.to_le_bytes();
        let header = "{'shape': (1, 1), 'fortran_order': False, \"descr\": '<f8'}\n";
        for version in [2u8, 3] {
            let mut file = MAGIC.to_vec();
            file.extend_from_slice(&[version, 0]);
            file.extend_from_slice(&(header.len() as u32).to_le_bytes());
            file.extend_from_slice(header.as_bytes());
            file.extend_from_slice(&data);
            let m = parse(Bytes::from(file)).unwrap();
            assert_eq!((m.rows(), m.cols(), m.element()), (1, 1, Element::F64));
        }
    }

    #[test]
    fn other_dtypes_orders_and_shapes_are_named() {
        let eight = [0u8; 8];
        assert!(error(encode("'<f4'", false, "(1, 2)", &eight))
            .starts_with("dtype \"<f4\"; pool reads"));
        assert!(error(encode("'>f8'", false, "(1, 1)", &eight)).starts_with("dtype \">f8\""));
        assert!(error(encode("'<i4'", false, "(1, 2)", &eight)).starts_with("dtype \"<i4\""));
        assert!(error(encode("'<f8'", true, "(1, 1)", &eight))
            .starts_with("Fortran (column-major) order"));
        assert!(
            error(encode("'<f8'", false, "(1,)", &eight)).starts_with("shape (1,), 1 dimension(s)")
        );
        assert!(error(encode("'<f8'", false, "(1, 1, 1)", &eight))
            .starts_with("shape (1, 1, 1), 3 dimension(s)"));
        assert!(error(encode("'<f8'", false, "(0, 3)", &[])).contains("no elements"));
        assert_eq!(
            error(encode("'<f8'", false, "(2, 1)", &eight)),
            "shape (2, 1) needs 16 bytes of data, but the file holds 8"
        );
        let structured = encode("[('a', '<f8')]", false, "(1, 1)", &eight);
        assert!(error(structured).starts_with("dtype \"[('a', '<f8')]\""));
    }

    #[test]
    fn hostile_files_are_refused_without_panicking() {
        assert!(error(b"P5\n3 3\n255\n".to_vec()).starts_with("not a NumPy .npy file"));
        assert!(error(b"\x93NUMPY".to_vec()).contains("preamble"));
        assert!(error(b"\x93NUMPY\x09\x00".to_vec()).starts_with("format version 9.0"));
        assert!(error(b"\x93NUMPY\x01\x00\xff\xff{".to_vec()).contains("ends inside its header"));
        let good = encode("'<f8'", false, "(1, 1)", &[0u8; 8]);
        for cut in 0..good.len() {
            let _ = parse(Bytes::copy_from_slice(&good[..cut])); // never panics
        }
        for i in 10..good.len() - 8 {
            for byte in [b'\'', b'(', b')', b',', b'{', b'}', b'[', b'9', 0xff] {
                let mut bad = good.clone();
                bad[i] = byte;
                let _ = parse(Bytes::from(bad)); // never panics
            }
        }
        assert!(
            error(encode("'<f8'", false, "(99999999999, 99999999999)", &[]))
                .contains("larger than")
        );
        assert!(error(encode("'<f8'", false, "(-1, 1)", &[])).contains("expected a dimension"));
    }
}
