//! Fuzzes the frame codec with bytes a hostile peer could send.
//!
//! The input's first byte chooses how the rest is cut into reads (as a socket or a pipe
//! delivers a stream in pieces of any size); the rest is the stream. The stream goes
//! through both readers of `pool_common::codec`:
//!
//! * `FrameCodec`, through tokio-util's `Decoder::decode` on a growing `BytesMut`, then
//!   `decode_eof` at the end of the stream, as `Framed` does on a socket;
//! * `read_frame_blocking`, on a reader that returns those same short reads, as the
//!   multi-process mode does on a child's pipe.
//!
//! Neither may panic (libFuzzer reports a panic as a crash). Beyond that, the target
//! checks that:
//!
//! * how the stream is cut into reads changes nothing: the codec yields the same frames
//!   as when it gets the whole stream at once;
//! * both readers agree: the same frames, and an error from one exactly when the other
//!   fails too (so a child's pipe and a socket treat a hostile stream alike);
//! * every frame that decodes re-encodes with `encode_frame`, and that encoding decodes
//!   to the same frame and re-encodes to the same bytes.
//!
//! Frames are compared by their encodings: a float field may hold a NaN, which `==`
//! never finds equal to itself.

#![no_main]

use std::io::{self, Read};

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use pool_common::codec::{encode_frame, read_frame_blocking, Frame, FrameCodec};
use tokio_util::codec::Decoder;

fuzz_target!(|data: &[u8]| {
    let Some((&cut, stream)) = data.split_first() else {
        return;
    };
    let reads = cut_into_reads(stream, cut);

    let whole = decode_with_codec(&[stream]);
    let pieces = decode_with_codec(&reads);
    assert_eq!(
        pieces, whole,
        "the codec's frames depend on how the stream was cut"
    );

    let blocking = decode_blocking(&reads);
    assert_eq!(
        blocking, whole,
        "read_frame_blocking and FrameCodec disagree on the same stream"
    );

    for frame in &whole.frames {
        check_round_trip(frame);
    }
});

/// What a reader made of a stream: the frames it yielded, and whether it stopped on an
/// error (rather than at a clean end of the stream).
#[derive(Debug)]
struct Outcome {
    frames: Vec<Frame>,
    failed: bool,
}

/// Outcomes are equal when their frames encode to the same bytes: a frame may carry a
/// NaN (a mandelbrot part's region), which `==` never finds equal to itself.
impl PartialEq for Outcome {
    fn eq(&self, other: &Outcome) -> bool {
        let encoded = |frames: &[Frame]| frames.iter().map(encoded).collect::<Vec<_>>();
        self.failed == other.failed && encoded(&self.frames) == encoded(&other.frames)
    }
}

/// A decoded frame's encoding (see `check_round_trip` for why it always encodes).
fn encoded(frame: &Frame) -> Vec<u8> {
    let mut bytes = BytesMut::new();
    encode_frame(frame, &mut bytes).expect("a decoded frame encodes");
    bytes.to_vec()
}

/// Cuts `stream` into reads of 1 to 32 bytes, sizes drawn from `cut` (0: one read).
fn cut_into_reads(stream: &[u8], cut: u8) -> Vec<&[u8]> {
    if cut == 0 {
        return vec![stream];
    }
    // A tiny xorshift: any deterministic sequence of sizes will do, as long as the
    // fuzzer can reach small and uneven ones through the first byte.
    let mut state = u32::from(cut) | 0x100;
    let mut reads = Vec::new();
    let mut rest = stream;
    while !rest.is_empty() {
        state ^= state << 13;
        state ^= state >> 17;
        state ^= state << 5;
        let size = (1 + state % 32) as usize;
        let (read, after) = rest.split_at(size.min(rest.len()));
        reads.push(read);
        rest = after;
    }
    reads
}

/// Feeds the reads to a `FrameCodec` one after another, as `Framed` does: decode until
/// it needs more bytes, read more, and at the end of the stream `decode_eof`. Stops at
/// the first error, as a connection would.
fn decode_with_codec(reads: &[&[u8]]) -> Outcome {
    let mut codec = FrameCodec::new();
    let mut buf = BytesMut::new();
    let mut frames = Vec::new();
    for read in reads {
        buf.extend_from_slice(read);
        loop {
            match codec.decode(&mut buf) {
                Ok(Some(frame)) => frames.push(frame),
                Ok(None) => break,
                Err(_) => {
                    return Outcome {
                        frames,
                        failed: true,
                    }
                }
            }
        }
    }
    loop {
        match codec.decode_eof(&mut buf) {
            Ok(Some(frame)) => frames.push(frame),
            Ok(None) => {
                return Outcome {
                    frames,
                    failed: false,
                }
            }
            Err(_) => {
                return Outcome {
                    frames,
                    failed: true,
                }
            }
        }
    }
}

/// A reader that returns the given reads one by one (short reads, as a pipe does).
struct ShortReads<'a> {
    reads: &'a [&'a [u8]],
    current: &'a [u8],
}

impl Read for ShortReads<'_> {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        while self.current.is_empty() {
            match self.reads.split_first() {
                Some((next, rest)) => (self.current, self.reads) = (next, rest),
                None => return Ok(0),
            }
        }
        let n = out.len().min(self.current.len());
        out[..n].copy_from_slice(&self.current[..n]);
        self.current = &self.current[n..];
        Ok(n)
    }
}

/// Reads frames with `read_frame_blocking` until a clean end or the first error.
fn decode_blocking(reads: &[&[u8]]) -> Outcome {
    let mut reader = ShortReads {
        reads,
        current: &[],
    };
    let mut frames = Vec::new();
    loop {
        match read_frame_blocking(&mut reader) {
            Ok(Some(frame)) => frames.push(frame),
            Ok(None) => {
                return Outcome {
                    frames,
                    failed: false,
                }
            }
            Err(_) => {
                return Outcome {
                    frames,
                    failed: true,
                }
            }
        }
    }
}

/// A decoded frame must encode, and its encoding must be a fixed point: it decodes to
/// the same frame and encodes to the same bytes again.
fn check_round_trip(frame: &Frame) {
    let mut encoded = BytesMut::new();
    if let Err(e) = encode_frame(frame, &mut encoded) {
        // Only a refusal can grow on re-encoding (invalid UTF-8 in its reason becomes
        // U+FFFD, 3 bytes), and then only past the frame limit, which a fuzz input of a
        // few KiB cannot reach.
        panic!("a decoded frame does not encode: {e}: {frame:?}");
    }
    let first = encoded.clone();
    let mut codec = FrameCodec::new();
    let again = codec
        .decode(&mut encoded)
        .expect("an encoded frame decodes")
        .expect("an encoded frame is complete");
    assert!(encoded.is_empty(), "bytes left after an encoded frame");
    // Compared by their encodings, which also says the frame did not change: a NaN
    // in a frame is never `==` to itself.
    let mut second = BytesMut::new();
    encode_frame(&again, &mut second).expect("a round-tripped frame encodes");
    assert_eq!(
        second, first,
        "a frame changed in an encode-decode round trip"
    );
}
