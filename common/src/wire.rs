//! A part on the wire: the one place that says which frames carry a part to whoever
//! computes it (a server, or a worker process over a pipe), which frames carry its
//! result back, and how the receiving side checks what arrives.
//!
//! Out: [`Request::RunPart`], then the part's input in [`Frame::Data`] chunks of at
//! most [`DATA_CHUNK_BYTES`], or fewer if the kind asks ([`PartTask::chunk_bytes`]). Back: [`Reply::PartDone`]
//! with the result inside, or, for a result longer than [`INLINE_RESULT_BYTES`],
//! [`Reply::PartDoneLarge`] followed by the result's encoding in data frames. A job's
//! shared inputs go out before its first part: [`Request::Share`], then the input's
//! content in data frames.

use std::borrow::Borrow;
use std::io::{Read, Write};

use bytes::{Bytes, BytesMut};

use crate::codec::{
    decode_large_message, encode_frame, encode_message, encoded_message_len, read_frame_blocking,
    write_frame_blocking, Frame, FrameError, MAX_LARGE_MESSAGE_BYTES,
};
use crate::jobs::{chunks_of, PartResult, PartTask, SharedInput, DATA_CHUNK_BYTES};
use crate::protocol::{RemoteError, Reply, Request, INLINE_RESULT_BYTES};

/// Bytes a data frame adds around its payload: the length prefix, tag and part id.
pub const DATA_FRAME_OVERHEAD: u64 = 4 + 1 + 8;

/// The frames that carry a part out: its request, then its input in data frames (each
/// a zero-copy slice of `input`).
pub fn part_frames<'a>(
    part_id: u64,
    task: &PartTask,
    input: &'a Bytes,
) -> impl Iterator<Item = Frame> + 'a {
    let request = Frame::Request(Request::RunPart {
        part_id,
        task: task.clone(),
    });
    std::iter::once(request).chain(data_frames(part_id, input, task.chunk_bytes()))
}

/// The frames that ship one of the job's shared inputs: its request, then its content
/// in data frames (zero-copy slices).
pub fn share_frames(input_id: u64, input: &SharedInput) -> impl Iterator<Item = Frame> + '_ {
    let request = Frame::Request(Request::Share {
        input_id,
        name: input.name.clone(),
        bytes: input.bytes.len() as u64,
        executable: input.executable,
    });
    std::iter::once(request).chain(data_frames(input_id, &input.bytes, DATA_CHUNK_BYTES))
}

/// `bytes` as the data frames of part `part_id`, of at most `chunk_bytes` each.
fn data_frames(
    part_id: u64,
    bytes: &Bytes,
    chunk_bytes: usize,
) -> impl Iterator<Item = Frame> + '_ {
    chunks_of(bytes, chunk_bytes).map(move |bytes| Frame::Data { part_id, bytes })
}

/// The frames that carry a part's result back: one reply, and for a large result its
/// encoding in data frames after it.
pub fn result_frames(
    part_id: u64,
    result: PartResult,
    compute_nanos: u64,
) -> Result<Vec<Frame>, FrameError> {
    if encoded_message_len(&result)? <= INLINE_RESULT_BYTES {
        return Ok(vec![Frame::Reply(Reply::PartDone {
            part_id,
            result,
            compute_nanos,
        })]);
    }
    let encoded = Bytes::from(encode_message(&result)?);
    let reply = Frame::Reply(Reply::PartDoneLarge {
        part_id,
        result_bytes: encoded.len() as u64,
        compute_nanos,
    });
    Ok(std::iter::once(reply)
        .chain(data_frames(part_id, &encoded, DATA_CHUNK_BYTES))
        .collect())
}

/// The bytes `frames` take on the wire, length prefixes included, counted without
/// copying any data frame's payload.
pub fn frames_len(frames: impl IntoIterator<Item = impl Borrow<Frame>>) -> u64 {
    frames
        .into_iter()
        .map(|frame| match frame.borrow() {
            Frame::Data { bytes, .. } => DATA_FRAME_OVERHEAD + bytes.len() as u64,
            other => {
                let mut buf = BytesMut::new();
                encode_frame(other, &mut buf).map_or(0, |()| buf.len() as u64)
            }
        })
        .sum()
}

/// The input of a part as it arrives: each chunk is checked against what the task
/// declared before it is used.
#[derive(Debug, Clone)]
pub struct IncomingInput {
    declared: u64,
    remaining: u64,
}

impl IncomingInput {
    /// Expects the input `task` declares; fails if its size overflows.
    pub fn new(task: &PartTask) -> Result<IncomingInput, String> {
        let remaining = task
            .input_bytes()
            .ok_or_else(|| "its input size overflows".to_string())?;
        Ok(IncomingInput {
            declared: remaining,
            remaining,
        })
    }

    /// Checks a chunk of `len` bytes and counts it as arrived; returns where it starts
    /// in the part's input.
    pub fn accept(&mut self, task: &PartTask, len: usize) -> Result<u64, String> {
        let len64 = len as u64;
        if len64 > self.remaining {
            return Err(format!(
                "{len} bytes of data where {} remained",
                self.remaining
            ));
        }
        task.check_chunk(len)?;
        let offset = self.declared - self.remaining;
        self.remaining -= len64;
        Ok(offset)
    }

    /// Input bytes still to arrive.
    pub fn remaining(&self) -> u64 {
        self.remaining
    }

    /// Whether the whole input has arrived.
    pub fn is_complete(&self) -> bool {
        self.remaining == 0
    }
}

/// A large result as it arrives in data frames after [`Reply::PartDoneLarge`],
/// bounded by what the part's task can produce.
#[derive(Debug)]
pub struct IncomingResult {
    expected: usize,
    received: BytesMut,
}

impl IncomingResult {
    /// Expects `result_bytes` bytes of a result of `task`; refuses more than the task
    /// can produce, before anything is allocated.
    pub fn new(task: &PartTask, result_bytes: u64) -> Result<IncomingResult, String> {
        let limit = task.max_result_bytes().min(MAX_LARGE_MESSAGE_BYTES as u64);
        if result_bytes > limit {
            return Err(format!(
                "a result of {result_bytes} bytes, where a {} part's is at most {limit}",
                task.kind()
            ));
        }
        let expected = usize::try_from(result_bytes)
            .map_err(|_| format!("a result of {result_bytes} bytes"))?;
        Ok(IncomingResult {
            expected,
            received: BytesMut::new(),
        })
    }

    /// Adds a data frame's bytes; returns the decoded result once all have arrived.
    pub fn accept(&mut self, bytes: &[u8]) -> Result<Option<PartResult>, String> {
        if bytes.len() > self.expected - self.received.len() {
            return Err(format!(
                "more result bytes than the {} announced",
                self.expected
            ));
        }
        self.received.extend_from_slice(bytes);
        if self.received.len() < self.expected {
            return Ok(None);
        }
        decode_large_message(&self.received)
            .map(Some)
            .map_err(|e| e.to_string())
    }
}

/// How a worker process (or anything answering one part on a byte stream) ended it.
#[derive(Debug, Clone, PartialEq)]
pub enum PartAnswer {
    /// The part's result and the time spent computing it, in nanoseconds.
    Done(PartResult, u64),
    /// The part failed, and why.
    Failed(RemoteError),
}

/// Writes a part (request and data frames) to a blocking writer, and flushes it.
pub fn write_part_blocking(
    writer: &mut impl Write,
    part_id: u64,
    task: &PartTask,
    input: &Bytes,
) -> Result<(), FrameError> {
    for frame in part_frames(part_id, task, input) {
        write_frame_blocking(writer, &frame)?;
    }
    writer.flush()?;
    Ok(())
}

/// Reads the answer to part `part_id` of `task` from a blocking reader, checking it
/// as a client checks a server's: the right part, a result the task could produce.
pub fn read_answer_blocking(
    reader: &mut impl Read,
    part_id: u64,
    task: &PartTask,
) -> Result<PartAnswer, String> {
    let mut next = || match read_frame_blocking(reader) {
        Ok(Some(frame)) => Ok(frame),
        Ok(None) => Err("the stream ended before the part's answer".to_string()),
        Err(e) => Err(e.to_string()),
    };
    let (result, compute_nanos) = match next()? {
        Frame::Reply(Reply::PartDone {
            part_id: id,
            result,
            compute_nanos,
        }) if id == part_id => (result, compute_nanos),
        Frame::Reply(Reply::PartDoneLarge {
            part_id: id,
            result_bytes,
            compute_nanos,
        }) if id == part_id => {
            let mut incoming = IncomingResult::new(task, result_bytes)?;
            loop {
                match next()? {
                    Frame::Data { part_id: id, bytes } if id == part_id => {
                        if let Some(result) = incoming.accept(&bytes)? {
                            break (result, compute_nanos);
                        }
                    }
                    other => return Err(format!("expected result data, got {other:?}")),
                }
            }
        }
        Frame::Reply(Reply::PartFailed { part_id: id, error }) if id == part_id => {
            return Ok(PartAnswer::Failed(error))
        }
        other => {
            return Err(format!(
                "expected the answer to part {part_id}, got {other:?}"
            ))
        }
    };
    if !task.could_produce(&result) {
        return Err("a result the part could not have produced".into());
    }
    Ok(PartAnswer::Done(result, compute_nanos))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::jobs::loop_sum::LoopPart;
    use crate::jobs::mandelbrot::{MandelbrotPart, Region, View};
    use crate::jobs::matrix_sum::{Element, MatrixPart};
    use crate::jobs::CancelFlag;

    #[test]
    fn a_part_goes_out_as_its_request_then_its_chunks() {
        let input = Bytes::from(vec![7u8; crate::jobs::DATA_CHUNK_BYTES + 8]);
        let task = PartTask::MatrixSum(MatrixPart {
            first_row: 0,
            rows: 1,
            cols: input.len() as u64 / 8,
            element: Element::I64,
        });
        let frames: Vec<Frame> = part_frames(3, &task, &input).collect();
        assert_eq!(frames.len(), 3);
        assert!(matches!(
            &frames[0],
            Frame::Request(Request::RunPart { part_id: 3, .. })
        ));
        let mut incoming = IncomingInput::new(&task).unwrap();
        for frame in &frames[1..] {
            let Frame::Data { part_id: 3, bytes } = frame else {
                panic!("{frame:?}")
            };
            incoming.accept(&task, bytes.len()).unwrap();
        }
        assert!(incoming.is_complete());
        assert!(incoming.accept(&task, 8).is_err());
        let mut encoded = BytesMut::new();
        for frame in &frames {
            encode_frame(frame, &mut encoded).unwrap();
        }
        assert_eq!(frames_len(&frames), encoded.len() as u64);
    }

    #[test]
    fn a_small_result_travels_inline_and_reads_back() {
        let task = PartTask::Loop(LoopPart { lo: 0, hi: 10 });
        let frames = result_frames(5, PartResult::Loop(42), 1000).unwrap();
        assert_eq!(frames.len(), 1);
        let mut stream = Vec::new();
        for frame in &frames {
            write_frame_blocking(&mut stream, frame).unwrap();
        }
        assert_eq!(
            read_answer_blocking(&mut &stream[..], 5, &task),
            Ok(PartAnswer::Done(PartResult::Loop(42), 1000))
        );
        assert!(read_answer_blocking(&mut &stream[..], 6, &task).is_err());
        let matrix = PartTask::MatrixSum(MatrixPart {
            first_row: 0,
            rows: 1,
            cols: 1,
            element: Element::I64,
        });
        assert!(read_answer_blocking(&mut &stream[..], 5, &matrix).is_err());
    }

    #[test]
    fn a_large_result_is_read_back_from_its_data_frames() {
        let task = PartTask::Loop(LoopPart { lo: 0, hi: 10 });
        let encoded = encode_message(&PartResult::Loop(u64::MAX)).unwrap();
        let mut stream = Vec::new();
        let reply = Frame::Reply(Reply::PartDoneLarge {
            part_id: 2,
            result_bytes: encoded.len() as u64,
            compute_nanos: 7,
        });
        write_frame_blocking(&mut stream, &reply).unwrap();
        for piece in encoded.chunks(3) {
            let data = Frame::Data {
                part_id: 2,
                bytes: Bytes::copy_from_slice(piece),
            };
            write_frame_blocking(&mut stream, &data).unwrap();
        }
        assert_eq!(
            read_answer_blocking(&mut &stream[..], 2, &task),
            Ok(PartAnswer::Done(PartResult::Loop(u64::MAX), 7))
        );
        // Cut short, it is an error, not a hang or a wrong result.
        let short = &stream[..stream.len() - 1];
        assert!(read_answer_blocking(&mut &short[..], 2, &task).is_err());
    }

    #[test]
    fn a_result_longer_than_a_frame_reads_back() {
        // 2048 x 1300 pixels, two bytes each: 5.3 MB, more than one frame may hold.
        let task = PartTask::Mandelbrot(MandelbrotPart {
            view: View {
                region: Region {
                    x_min: -2.0,
                    x_max: 0.5,
                    y_min: -1.25,
                    y_max: 1.25,
                },
                width: 2048,
                height: 1300,
                max_iter: 1,
            },
            first_row: 0,
            rows: 1300,
        });
        let result = crate::jobs::compute_chunk(
            &task,
            crate::jobs::Chunk::NONE,
            &crate::jobs::JobInputs::default(),
            &CancelFlag::new(),
        )
        .unwrap();
        let frames = result_frames(9, result.clone(), 1).unwrap();
        assert!(frames.len() > 2, "{} frames", frames.len());
        let mut stream = Vec::new();
        for frame in &frames {
            write_frame_blocking(&mut stream, frame).unwrap();
        }
        assert_eq!(
            read_answer_blocking(&mut &stream[..], 9, &task),
            Ok(PartAnswer::Done(result, 1))
        );
    }

    #[test]
    fn a_large_result_is_refused_beyond_what_its_task_can_produce() {
        let task = PartTask::Loop(LoopPart { lo: 0, hi: 10 });
        assert!(IncomingResult::new(&task, 1 << 40).is_err());
        let mut incoming = IncomingResult::new(&task, 1).unwrap();
        assert!(incoming.accept(&[0, 0]).is_err());
    }
}
