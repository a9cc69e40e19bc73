//! A matrix from a CSV file as spreadsheets and scripts write it: a UTF-8 byte order
//! mark, CRLF line ends, quoted cells, spaces around cells, `,` `;` or tab between
//! them, a header row, a trailing separator, decimal commas beside `;`.
//!
//! The `csv` crate splits records and fields (quotes, line ends); this module decides
//! what the fields mean and says which row and column it could not read. Rows are the
//! file's line numbers, counted from 1 as an editor or a spreadsheet counts them.

use std::fmt;
use std::path::Path;

use bytes::Bytes;
use serde::de::{self, Deserializer, Visitor};
use serde::Deserialize;

use super::{Element, Matrix, ELEMENT_BYTES, MAX_MATRIX_BYTES};

/// The UTF-8 byte order mark Excel's "CSV UTF-8" puts at the start of a file.
const BOM: &[u8] = b"\xEF\xBB\xBF";

/// Whether the first row is a header (`csv_header`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum CsvHeader {
    /// `true`: the first row is a header, skipped whatever it holds.
    Present,
    /// `false`: every row is data.
    Absent,
    /// `"auto"`, the default: the first row is a header when none of its cells is a
    /// number.
    #[default]
    Auto,
}

impl<'de> Deserialize<'de> for CsvHeader {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct HeaderVisitor;
        impl Visitor<'_> for HeaderVisitor {
            type Value = CsvHeader;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("true, false or \"auto\"")
            }

            fn visit_bool<E: de::Error>(self, present: bool) -> Result<CsvHeader, E> {
                Ok(if present {
                    CsvHeader::Present
                } else {
                    CsvHeader::Absent
                })
            }

            fn visit_str<E: de::Error>(self, text: &str) -> Result<CsvHeader, E> {
                match text {
                    "auto" => Ok(CsvHeader::Auto),
                    _ => Err(E::invalid_value(de::Unexpected::Str(text), &self)),
                }
            }
        }
        deserializer.deserialize_any(HeaderVisitor)
    }
}

/// The byte between cells (`csv_delimiter`): `,`, `;` or a tab.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CsvDelimiter(u8);

impl<'de> Deserialize<'de> for CsvDelimiter {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        match text.as_str() {
            "," => Ok(CsvDelimiter(b',')),
            ";" => Ok(CsvDelimiter(b';')),
            "\t" | "tab" => Ok(CsvDelimiter(b'\t')),
            _ => Err(de::Error::invalid_value(
                de::Unexpected::Str(&text),
                &"\",\", \";\" or \"\\t\" (a tab)",
            )),
        }
    }
}

/// How to read a CSV file: the job file's `csv_*` keys and `element`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CsvOptions {
    /// The delimiter; `None` detects it from the first line.
    pub delimiter: Option<CsvDelimiter>,
    /// Whether the first row is a header.
    pub header: CsvHeader,
    /// What each cell holds.
    pub element: Element,
}

/// Why a CSV matrix could not be read. Rows (the file's lines) and columns count from 1.
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
    /// A cell is not a number of the matrix's element type.
    #[error("{path}: row {row}, column {col}: {cell:?} is not {}{hint}", expected.described())]
    BadCell {
        /// The file.
        path: String,
        /// The row, from 1.
        row: u64,
        /// The column, from 1.
        col: usize,
        /// The cell's text.
        cell: String,
        /// What the cell should hold.
        expected: Element,
        /// What to change when the cell is fine but the settings are not (empty if
        /// nothing obvious).
        hint: &'static str,
    },
    /// A cell is not UTF-8 text.
    #[error("{path}: row {row}, column {col}: the cell is not UTF-8 text")]
    NotText {
        /// The file.
        path: String,
        /// The row, from 1.
        row: u64,
        /// The column, from 1.
        col: usize,
    },
    /// A row has another number of cells than the first data row.
    #[error("{path}: row {row} has {found} columns, but row {first_row} has {expected}")]
    Ragged {
        /// The file.
        path: String,
        /// The row, from 1.
        row: u64,
        /// Cells in this row.
        found: usize,
        /// The first data row.
        first_row: u64,
        /// Cells in the first data row.
        expected: usize,
    },
    /// The file holds more numbers than the client may hold in memory.
    #[error("{path}: more than {} GiB of numbers, the most the client may hold", MAX_MATRIX_BYTES >> 30)]
    TooLarge {
        /// The file.
        path: String,
    },
    /// The CSV reader itself failed.
    #[error("{path}: row {row}: {message}")]
    Malformed {
        /// The file.
        path: String,
        /// The row, from 1.
        row: u64,
        /// The reader's message.
        message: String,
    },
    /// No data rows at all.
    #[error("{path}: no rows: a matrix needs at least one row of numbers")]
    Empty {
        /// The file.
        path: String,
    },
}

impl Element {
    /// What a cell of this type must be, for messages.
    fn described(self) -> &'static str {
        match self {
            Element::I64 => "a 64-bit integer",
            Element::F64 => "a number",
        }
    }
}

/// Reads a matrix from a CSV file (see [`parse`]).
pub fn read(path: &Path, options: &CsvOptions) -> Result<Matrix, CsvError> {
    let shown = path.display().to_string();
    let bytes = std::fs::read(path).map_err(|source| CsvError::Io {
        path: shown.clone(),
        source,
    })?;
    parse(&bytes, &shown, options)
}

/// Reads a matrix from CSV bytes: one row per record, cells separated by the
/// delimiter, blank rows, rows of empty cells and rows starting with `#` skipped, one
/// empty cell at the end of a row ignored. `path` names the file in errors.
pub fn parse(bytes: &[u8], path: &str, options: &CsvOptions) -> Result<Matrix, CsvError> {
    let bytes = bytes.strip_prefix(BOM).unwrap_or(bytes);
    let delimiter = options
        .delimiter
        .map_or_else(|| detect_delimiter(bytes), |d| d.0);
    let mut reader = csv::ReaderBuilder::new()
        .delimiter(delimiter)
        .has_headers(false)
        .flexible(true)
        .comment(Some(b'#'))
        .from_reader(bytes);
    // Decimal commas go with `;` and tabs: with `,` between cells a comma in a cell is
    // more likely a thousands separator, so it is not guessed at.
    let decimal_comma = delimiter != b',';
    let mut data = Vec::new();
    let mut rows = 0u64;
    let mut first: Option<(u64, usize)> = None; // the first data row and its width
    let mut header = options.header;
    let mut record = csv::ByteRecord::new();
    // A record's position is where the reader started looking for it, before the
    // comment and blank lines it skipped, and its line numbers leave comment lines out:
    // rows are counted here, from the record's first byte. (offset, its line).
    let mut counted = (0usize, 1u64);
    let mut line_at = |offset: u64| {
        let offset = skip_comments_and_blank_lines(bytes, offset as usize);
        let (from, line) = counted;
        let newlines = bytes[from.min(offset)..offset]
            .iter()
            .filter(|&&b| b == b'\n')
            .count();
        counted = (offset, line + newlines as u64);
        counted.1
    };
    loop {
        let start = reader.position().byte();
        match reader.read_byte_record(&mut record) {
            Ok(true) => {}
            Ok(false) => break,
            Err(e) => {
                return Err(CsvError::Malformed {
                    path: path.to_string(),
                    row: line_at(start),
                    message: e.to_string(),
                })
            }
        }
        let row = line_at(record.position().map_or(start, |p| p.byte()));
        let mut cells = Vec::with_capacity(record.len());
        for (index, field) in record.iter().enumerate() {
            let text = std::str::from_utf8(field).map_err(|_| CsvError::NotText {
                path: path.to_string(),
                row,
                col: index + 1,
            })?;
            cells.push(unquote(text.trim()));
        }
        if cells.iter().all(|c| c.is_empty()) {
            continue;
        }
        if cells.len() > 1 && cells.last().is_some_and(|c| c.is_empty()) {
            cells.pop();
        }
        // Only the first row that is not skipped may be a header.
        let header_candidate = match std::mem::replace(&mut header, CsvHeader::Absent) {
            CsvHeader::Present => continue,
            CsvHeader::Auto => {
                if !cells.iter().any(|c| parse_f64(c, decimal_comma).is_some()) {
                    continue;
                }
                true
            }
            CsvHeader::Absent => false,
        };
        let (first_row, width) = *first.get_or_insert((row, cells.len()));
        if cells.len() != width {
            return Err(CsvError::Ragged {
                path: path.to_string(),
                row,
                found: cells.len(),
                first_row,
                expected: width,
            });
        }
        if (data.len() + width * ELEMENT_BYTES as usize) as u64 > MAX_MATRIX_BYTES {
            return Err(CsvError::TooLarge {
                path: path.to_string(),
            });
        }
        for (index, cell) in cells.iter().enumerate() {
            let value = match options.element {
                Element::I64 => cell.parse::<i64>().ok().map(i64::to_le_bytes),
                Element::F64 => parse_f64(cell, decimal_comma).map(f64::to_le_bytes),
            };
            let Some(value) = value else {
                let hint = if options.element == Element::I64
                    && parse_f64(cell, decimal_comma).is_some()
                {
                    " (for numbers with decimals, set element = \"f64\")"
                } else if header_candidate && !cell.is_empty() {
                    " (if this row is a header, set csv_header = true)"
                } else {
                    ""
                };
                return Err(CsvError::BadCell {
                    path: path.to_string(),
                    row,
                    col: index + 1,
                    cell: cell.to_string(),
                    expected: options.element,
                    hint,
                });
            };
            data.extend_from_slice(&value);
        }
        rows += 1;
    }
    let Some((_, cols)) = first else {
        return Err(CsvError::Empty {
            path: path.to_string(),
        });
    };
    Ok(Matrix {
        rows,
        cols: cols as u64,
        element: options.element,
        data: Bytes::from(data),
    })
}

/// The delimiter of a file that does not name one: a tab if the first line that is
/// neither blank nor a comment has one outside quotes, else `;` if it has one (files
/// with `;` write decimals with commas), else `,`.
fn detect_delimiter(bytes: &[u8]) -> u8 {
    let first_line = bytes
        .split(|&b| b == b'\n')
        .find(|line| {
            let line = line.trim_ascii();
            !line.is_empty() && !line.starts_with(b"#")
        })
        .unwrap_or_default();
    let mut quoted = false;
    let (mut tabs, mut semicolons) = (0, 0);
    for &b in first_line {
        match b {
            b'"' => quoted = !quoted,
            b'\t' if !quoted => tabs += 1,
            b';' if !quoted => semicolons += 1,
            _ => {}
        }
    }
    if tabs > 0 {
        b'\t'
    } else if semicolons > 0 {
        b';'
    } else {
        b','
    }
}

/// The offset of the first line from `offset` on that is neither a comment nor empty:
/// the lines the CSV reader skips before a record.
fn skip_comments_and_blank_lines(bytes: &[u8], mut offset: usize) -> usize {
    while let Some(rest) = bytes.get(offset..) {
        offset += match rest {
            [b'#', ..] => rest
                .iter()
                .position(|&b| b == b'\n')
                .map_or(rest.len(), |end| end + 1),
            [b'\r', b'\n', ..] => 2,
            [b'\n' | b'\r', ..] => 1,
            _ => break,
        };
    }
    offset.min(bytes.len())
}

/// A cell without the quotes around it, when they were not at the very start of the
/// field (`1, "2"`), where the CSV reader takes them for text.
fn unquote(cell: &str) -> &str {
    cell.strip_prefix('"')
        .and_then(|c| c.strip_suffix('"'))
        .map_or(cell, str::trim)
}

/// A cell as an `f64`: Rust's syntax (`1.5`, `-2e-3`, `inf`, `NaN`), and with
/// `decimal_comma` also `1,5`.
fn parse_f64(cell: &str, decimal_comma: bool) -> Option<f64> {
    if decimal_comma && cell.matches(',').count() == 1 && !cell.contains('.') {
        return cell.replace(',', ".").parse().ok();
    }
    cell.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    const I64: CsvOptions = CsvOptions {
        delimiter: None,
        header: CsvHeader::Auto,
        element: Element::I64,
    };
    const F64: CsvOptions = CsvOptions {
        element: Element::F64,
        ..I64
    };

    fn floats(matrix: &Matrix) -> Vec<f64> {
        matrix
            .bytes()
            .chunks_exact(8)
            .map(|b| f64::from_le_bytes(b.try_into().unwrap()))
            .collect()
    }

    fn integers(matrix: &Matrix) -> Vec<i64> {
        matrix
            .bytes()
            .chunks_exact(8)
            .map(|b| i64::from_le_bytes(b.try_into().unwrap()))
            .collect()
    }

    fn error(text: &str, options: &CsvOptions) -> String {
        parse(text.as_bytes(), "m.csv", options)
            .unwrap_err()
            .to_string()
    }

    #[test]
    fn excel_utf8_with_bom_and_crlf() {
        let m = parse(b"\xEF\xBB\xBF1,2,3\r\n4,5,6\r\n", "m.csv", &I64).unwrap();
        assert_eq!((m.rows(), m.cols()), (2, 3));
        assert_eq!(integers(&m), [1, 2, 3, 4, 5, 6]);
    }

    #[test]
    fn european_excel_with_semicolons_and_decimal_commas() {
        let m = parse(
            "\u{feff}Jan;Feb;Mar\r\n1,5;2;-3,25\r\n4;5,5;6\r\n".as_bytes(),
            "m.csv",
            &F64,
        )
        .unwrap();
        assert_eq!((m.rows(), m.cols()), (2, 3));
        assert_eq!(floats(&m), [1.5, 2.0, -3.25, 4.0, 5.5, 6.0]);
    }

    #[test]
    fn tabs_quotes_spaces_and_a_trailing_delimiter() {
        let m = parse(b"1\t\"2\"\t 3 \n4\t5\t6\t\n", "m.tsv", &I64).unwrap();
        assert_eq!(integers(&m), [1, 2, 3, 4, 5, 6]);
        let m = parse(b" 1 , \"2\" ,3,\n\"4\",5 , 6\n", "m.csv", &I64).unwrap();
        assert_eq!(integers(&m), [1, 2, 3, 4, 5, 6]);
        // Only one trailing empty cell is forgiven.
        assert_eq!(
            error("1,2,,\n", &I64),
            "m.csv: row 1, column 3: \"\" is not a 64-bit integer"
        );
    }

    #[test]
    fn an_explicit_delimiter_overrides_detection() {
        let comma = CsvOptions {
            delimiter: Some(CsvDelimiter(b',')),
            ..F64
        };
        // `;` inside the first line, but the job file says `,`.
        let m = parse(b"\"a;b\",c\n1.5,2\n", "m.csv", &comma).unwrap();
        assert_eq!(floats(&m), [1.5, 2.0]);
        // Detection ignores separators inside quotes.
        let m = parse(b"\"a;b\",c\n1.5,2\n", "m.csv", &F64).unwrap();
        assert_eq!(floats(&m), [1.5, 2.0]);
    }

    #[test]
    fn headers_true_false_and_auto() {
        let with_header = "x,y\n1,2\n";
        assert_eq!(
            integers(&parse(with_header.as_bytes(), "m.csv", &I64).unwrap()),
            [1, 2]
        );
        let present = CsvOptions {
            header: CsvHeader::Present,
            ..I64
        };
        // A numeric first row is a header when the job file says so...
        assert_eq!(
            integers(&parse(b"7,8\n1,2\n", "m.csv", &present).unwrap()),
            [1, 2]
        );
        // ...and data under "auto".
        assert_eq!(
            integers(&parse(b"7,8\n1,2\n", "m.csv", &I64).unwrap()),
            [7, 8, 1, 2]
        );
        let absent = CsvOptions {
            header: CsvHeader::Absent,
            ..I64
        };
        assert_eq!(
            error(with_header, &absent),
            "m.csv: row 1, column 1: \"x\" is not a 64-bit integer"
        );
        // A first row mixing names and numbers is data under "auto", with a hint.
        assert_eq!(
            error("id,2024\n1,2\n", &I64),
            "m.csv: row 1, column 1: \"id\" is not a 64-bit integer (if this row is a header, set csv_header = true)"
        );
    }

    #[test]
    fn errors_name_the_row_and_column() {
        assert_eq!(
            error("1,2,3\n# note\n4,x5,6\n", &I64),
            "m.csv: row 3, column 2: \"x5\" is not a 64-bit integer"
        );
        assert_eq!(
            error("a,b\n1,2\n\n3,1.5\n", &I64),
            "m.csv: row 4, column 2: \"1.5\" is not a 64-bit integer (for numbers with decimals, set element = \"f64\")"
        );
        assert_eq!(
            error("1.5,2\n3,four\n", &F64),
            "m.csv: row 2, column 2: \"four\" is not a number"
        );
        assert_eq!(
            error("a,b,c\n1,2,3\n4,5\n", &I64),
            "m.csv: row 3 has 2 columns, but row 2 has 3"
        );
        assert_eq!(
            parse(b"1,2\n3,\xff\n", "m.csv", &I64)
                .unwrap_err()
                .to_string(),
            "m.csv: row 2, column 2: the cell is not UTF-8 text"
        );
        assert!(matches!(
            parse(b"\n# only\n;;\n", "m.csv", &I64),
            Err(CsvError::Empty { .. })
        ));
        assert!(matches!(
            parse(b"x,y\n", "m.csv", &I64),
            Err(CsvError::Empty { .. })
        ));
    }

    #[test]
    fn rows_of_empty_cells_are_skipped_and_multiline_cells_count_lines() {
        let m = parse(b"1;2\r\n;\r\n  \r\n3;4\r\n", "m.csv", &I64).unwrap();
        assert_eq!(integers(&m), [1, 2, 3, 4]);
        assert_eq!(
            error("\"a\nb\",c\n1,x\n", &I64),
            "m.csv: row 3, column 2: \"x\" is not a 64-bit integer"
        );
    }

    #[test]
    fn floats_keep_ieee_specials_and_extremes() {
        let m = parse(b"inf,-inf,NaN\n1e308,-0.0,5e-324\n", "m.csv", &F64).unwrap();
        let v = floats(&m);
        assert_eq!(v[0], f64::INFINITY);
        assert_eq!(v[1], f64::NEG_INFINITY);
        assert!(v[2].is_nan());
        assert_eq!(v[3], 1e308);
        assert!(v[4] == 0.0 && v[4].is_sign_negative());
        assert_eq!(v[5].to_bits(), 1);
    }
}
