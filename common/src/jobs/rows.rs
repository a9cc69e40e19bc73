//! Results made of rows: a picture's escape counts, a matrix product's rows of C.
//!
//! A part computes a block of consecutive rows; blocks of different parts (or of one
//! part's chunks) merge in row order, whatever order they arrive in, until the job's
//! result is one block from row 0. Blocks that overlap, or rows cut short, never merge:
//! only a confused or hostile peer sends them.

use serde::{Deserialize, Serialize};

/// Blocks of consecutive rows of equal length, in row order, none touching another
/// (touching blocks are one block).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RowBlocks {
    /// Bytes per row (more than zero).
    pub row_bytes: u64,
    /// The blocks, by first row.
    pub blocks: Vec<RowBlock>,
}

/// Consecutive rows.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RowBlock {
    /// The first row's index.
    pub first_row: u64,
    /// The rows' bytes, row after row.
    #[serde(with = "serde_bytes")]
    pub bytes: Vec<u8>,
}

impl RowBlocks {
    /// One block of rows from `first_row`; `bytes` holds whole rows of `row_bytes`.
    pub fn one(row_bytes: u64, first_row: u64, bytes: Vec<u8>) -> RowBlocks {
        RowBlocks {
            row_bytes,
            blocks: vec![RowBlock { first_row, bytes }],
        }
    }

    /// Both sets of rows, in order; `None` if their rows differ in length, a block is
    /// not whole rows, or the same row is in both.
    pub fn merge(self, other: RowBlocks) -> Option<RowBlocks> {
        let row_bytes = self.row_bytes;
        if row_bytes == 0 || other.row_bytes != row_bytes {
            return None;
        }
        let mut sorted = self.blocks;
        sorted.extend(other.blocks);
        sorted.sort_by_key(|block| block.first_row);
        let mut blocks: Vec<RowBlock> = Vec::with_capacity(sorted.len());
        for block in sorted {
            if !(block.bytes.len() as u64).is_multiple_of(row_bytes) {
                return None;
            }
            match blocks.last_mut() {
                Some(last) => {
                    let end = last.first_row + last.bytes.len() as u64 / row_bytes;
                    if block.first_row < end {
                        return None;
                    }
                    if block.first_row == end {
                        last.bytes.extend_from_slice(&block.bytes);
                    } else {
                        blocks.push(block);
                    }
                }
                None => blocks.push(block),
            }
        }
        Some(RowBlocks { row_bytes, blocks })
    }

    /// The bytes of rows `[first_row, first_row + rows)` if they are exactly what these
    /// blocks hold: one block, starting there, that long.
    pub fn exactly(&self, first_row: u64, rows: u64) -> Option<&[u8]> {
        match self.blocks.as_slice() {
            [block]
                if block.first_row == first_row
                    && Some(block.bytes.len() as u64) == rows.checked_mul(self.row_bytes) =>
            {
                Some(&block.bytes)
            }
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rows(first_row: u64, values: &[u8]) -> RowBlocks {
        RowBlocks::one(2, first_row, values.to_vec())
    }

    #[test]
    fn blocks_merge_in_row_order_whatever_order_they_come_in() {
        let whole = rows(4, &[5, 6])
            .merge(rows(0, &[1, 2, 3, 4]))
            .unwrap()
            .merge(rows(2, &[3, 3, 4, 4]))
            .unwrap();
        assert_eq!(whole.blocks.len(), 1);
        assert_eq!(
            whole.exactly(0, 5),
            Some(&[1, 2, 3, 4, 3, 3, 4, 4, 5, 6][..])
        );
        assert_eq!(whole.exactly(0, 4), None);
        assert_eq!(whole.exactly(1, 5), None);
        // A gap keeps two blocks.
        let gapped = rows(0, &[1, 1]).merge(rows(5, &[2, 2])).unwrap();
        assert_eq!(gapped.blocks.len(), 2);
        assert_eq!(gapped.exactly(0, 1), None);
    }

    #[test]
    fn overlapping_cut_or_unequal_rows_do_not_merge() {
        assert_eq!(rows(0, &[1, 1, 2, 2]).merge(rows(1, &[9, 9])), None);
        assert_eq!(rows(0, &[1, 1]).merge(rows(0, &[1, 1])), None);
        assert_eq!(rows(0, &[1, 1]).merge(rows(1, &[9])), None);
        assert_eq!(
            rows(0, &[1, 1]).merge(RowBlocks::one(4, 1, vec![0; 4])),
            None
        );
        assert_eq!(
            RowBlocks::one(0, 0, vec![]).merge(RowBlocks::one(0, 1, vec![])),
            None
        );
    }
}
