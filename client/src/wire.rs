//! How many bytes a part costs on the wire, for the per-part log and the progress bars.
//!
//! Counted from the encoded sizes of the very frames the protocol sends (length prefix
//! included) rather than from socket counters, so the figure is the same whatever else
//! shares the connection.

use bytes::BytesMut;
use pool_common::codec::{encode_frame, Frame};
use pool_common::jobs::{Part, PartResult};
use pool_common::protocol::{Reply, Request};

/// Bytes a data frame adds around its payload: the length prefix, tag and part id.
const DATA_FRAME_OVERHEAD: u64 = 4 + 1 + 8;

fn encoded_len(frame: &Frame) -> u64 {
    let mut buf = BytesMut::new();
    encode_frame(frame, &mut buf).map_or(0, |()| buf.len() as u64)
}

/// Bytes the client sends for `part` with id `part_id`: its request and its data frames.
pub fn request_bytes(part_id: u64, part: &Part) -> u64 {
    let request = encoded_len(&Frame::Request(Request::RunPart {
        part_id,
        task: part.task.clone(),
    }));
    let data: u64 = part
        .chunks()
        .map(|chunk| DATA_FRAME_OVERHEAD + chunk.len() as u64)
        .sum();
    request + data
}

/// Bytes of the server's answer to a part: one reply frame.
pub fn reply_bytes(part_id: u64, result: PartResult, compute_nanos: u64) -> u64 {
    encoded_len(&Frame::Reply(Reply::PartDone {
        part_id,
        result,
        compute_nanos,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    #[test]
    fn data_frame_overhead_matches_the_codec() {
        let frame = Frame::Data {
            part_id: 3,
            bytes: Bytes::from_static(&[1, 2, 3]),
        };
        assert_eq!(encoded_len(&frame), DATA_FRAME_OVERHEAD + 3);
    }
}
