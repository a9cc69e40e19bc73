//! Framing: how [`Frame`]s travel on a byte stream.
//!
//! Every frame is a 4-byte big-endian length followed by that many bytes (the layout of
//! tokio-util's [`LengthDelimitedCodec`], which does the reading). A length above the
//! reader's limit is refused as soon as its prefix arrives, before anything is
//! allocated for the body: [`MAX_FRAME_BYTES`] once a connection's handshake is done,
//! [`MAX_HANDSHAKE_FRAME_BYTES`] until then, so a peer that has not shown it speaks
//! the protocol cannot make the other side buffer more than a Hello. The first byte of
//! a frame is a tag:
//!
//! | tag | frame     | body                                                      |
//! |-----|-----------|-----------------------------------------------------------|
//! | `H` | Hello     | magic, version (u16 LE), bincode [`Hello`]                |
//! | `W` | Welcome   | magic, version (u16 LE), bincode [`Welcome`]              |
//! | `X` | Refused   | magic, version (u16 LE), UTF-8 reason                     |
//! | `C` | Challenge | a server's nonce ([`NONCE_BYTES`] raw bytes)              |
//! | `P` | Proof     | a client's answer to it ([`PROOF_BYTES`] raw bytes)       |
//! | `Q` | Request   | bincode [`Request`]                                       |
//! | `R` | Reply     | bincode [`Reply`]                                         |
//! | `D` | Data      | part id (u64 LE), raw bytes                               |
//!
//! Bulk data is never bincode-encoded: a data frame's payload is the very bytes the
//! kernel reads, and on the receiving side it is handed on without a copy.

use std::io::{self, Read, Write};

use bytes::{Buf, BufMut, Bytes, BytesMut};
use serde::{de::DeserializeOwned, Serialize};
use tokio_util::codec::{Decoder, Encoder, LengthDelimitedCodec};

use crate::auth::{Nonce, Proof, NONCE_BYTES, PROOF_BYTES};
use crate::jobs::DATA_CHUNK_BYTES;
use crate::protocol::{Hello, Reply, Request, Welcome, MAGIC, PROTOCOL_VERSION};

/// The largest frame either side accepts: a full data chunk plus its header, with room
/// to spare. A length prefix above this is rejected before anything is allocated.
pub const MAX_FRAME_BYTES: usize = DATA_CHUNK_BYTES + 4096;

/// The largest frame either side accepts before the handshake is done: room for any
/// Hello, Welcome or refusal, far below a data chunk.
pub const MAX_HANDSHAKE_FRAME_BYTES: usize = 4096;

/// Checks a frame length announced by a prefix against `max`, the reader's limit.
pub fn check_frame_len(len: usize, max: usize) -> Result<(), FrameError> {
    if len > max {
        return Err(FrameError::TooLong { len, max });
    }
    Ok(())
}

/// One unit on the wire.
#[derive(Debug, Clone, PartialEq)]
pub enum Frame {
    /// The client's opening frame.
    Hello(Hello),
    /// The server's acceptance of the handshake.
    Welcome(Welcome),
    /// The server's refusal of the handshake, with a reason for the user.
    Refused(String),
    /// A server with a token asks the client to prove it knows it
    /// ([`crate::auth`]).
    Challenge(Nonce),
    /// The client's answer to a [`Frame::Challenge`].
    Proof(Proof),
    /// A client request.
    Request(Request),
    /// A server reply.
    Reply(Reply),
    /// A chunk of a part's input.
    Data {
        /// The part this chunk belongs to.
        part_id: u64,
        /// The chunk's bytes.
        bytes: Bytes,
    },
}

/// Why a frame could not be read.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    /// The stream failed.
    #[error("{0}")]
    Io(#[from] io::Error),
    /// A length prefix announced a frame longer than the reader accepts (see
    /// [`check_frame_len`]).
    #[error("a frame of {len} bytes, over the limit of {max}")]
    TooLong {
        /// The length the prefix announced.
        len: usize,
        /// The reader's limit.
        max: usize,
    },
    /// A frame with no bytes at all.
    #[error("empty frame")]
    Empty,
    /// The first byte is not a known tag.
    #[error("unknown frame tag 0x{0:02x}")]
    UnknownTag(u8),
    /// A handshake frame without [`MAGIC`]: the peer does not speak the pool protocol.
    #[error("not a pool peer (bad magic bytes)")]
    BadMagic,
    /// The peer speaks another version of the protocol.
    #[error(
        "peer speaks pool protocol version {peer}, this program speaks version {PROTOCOL_VERSION}"
    )]
    VersionMismatch {
        /// The version the peer announced.
        peer: u16,
    },
    /// The frame is shorter than its tag requires.
    #[error("truncated frame")]
    Truncated,
    /// The body did not decode to the message its tag announced.
    #[error("undecodable message: {0}")]
    Decode(String),
    /// A message could not be encoded (this side's bug, or a value over the limits).
    #[error("cannot encode a message: {0}")]
    Encode(String),
}

/// The tokio codec for [`Frame`]s, used with `Framed` on sockets.
#[derive(Debug)]
pub struct FrameCodec {
    lengths: LengthDelimitedCodec,
    /// Whether `lengths` has taken a frame's length prefix out of the buffer and waits
    /// for its body: the buffer may then be empty in the middle of a frame.
    in_frame: bool,
}

impl FrameCodec {
    /// A codec accepting frames up to [`MAX_FRAME_BYTES`].
    pub fn new() -> Self {
        Self::with_limit(MAX_FRAME_BYTES)
    }

    /// A codec for a connection whose handshake is not done yet: frames up to
    /// [`MAX_HANDSHAKE_FRAME_BYTES`], until [`FrameCodec::handshake_done`].
    pub fn handshake() -> Self {
        Self::with_limit(MAX_HANDSHAKE_FRAME_BYTES)
    }

    fn with_limit(max: usize) -> Self {
        FrameCodec {
            lengths: LengthDelimitedCodec::builder()
                .max_frame_length(max)
                .new_codec(),
            in_frame: false,
        }
    }

    /// Raises the limit to [`MAX_FRAME_BYTES`]: the peer has completed the handshake.
    pub fn handshake_done(&mut self) {
        self.lengths.set_max_frame_length(MAX_FRAME_BYTES);
    }
}

impl Default for FrameCodec {
    fn default() -> Self {
        Self::new()
    }
}

impl Decoder for FrameCodec {
    type Item = Frame;
    type Error = FrameError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Frame>, FrameError> {
        if let (false, Some(prefix)) = (self.in_frame, src.first_chunk::<4>()) {
            // Checked here rather than by `lengths`, whose error does not say the length.
            check_frame_len(
                u32::from_be_bytes(*prefix) as usize,
                self.lengths.max_frame_length(),
            )?;
        }
        let before = src.len();
        match self.lengths.decode(src)? {
            Some(body) => {
                self.in_frame = false;
                decode_body(body.freeze()).map(Some)
            }
            None => {
                // Bytes taken without a frame to show for them are a length prefix.
                self.in_frame |= src.len() < before;
                Ok(None)
            }
        }
    }

    fn decode_eof(&mut self, src: &mut BytesMut) -> Result<Option<Frame>, FrameError> {
        // The default takes an empty buffer for a clean end of stream, but
        // LengthDelimitedCodec removes a prefix from the buffer before the body arrives:
        // a peer that sent a prefix and closed would look like one that closed cleanly.
        match self.decode(src)? {
            Some(frame) => Ok(Some(frame)),
            None if src.is_empty() && !self.in_frame => Ok(None),
            None => Err(FrameError::Truncated),
        }
    }
}

impl Encoder<Frame> for FrameCodec {
    type Error = FrameError;

    fn encode(&mut self, frame: Frame, dst: &mut BytesMut) -> Result<(), FrameError> {
        encode_frame(&frame, dst)
    }
}

/// Appends `frame`, length prefix included, to `dst`.
pub fn encode_frame(frame: &Frame, dst: &mut BytesMut) -> Result<(), FrameError> {
    let start = dst.len();
    dst.put_u32(0); // length, patched below
    match frame {
        Frame::Hello(hello) => put_handshake(dst, b'H', &encode_message(hello)?),
        Frame::Welcome(welcome) => put_handshake(dst, b'W', &encode_message(welcome)?),
        Frame::Refused(reason) => put_handshake(dst, b'X', reason.as_bytes()),
        Frame::Challenge(nonce) => {
            dst.put_u8(b'C');
            dst.put_slice(nonce);
        }
        Frame::Proof(proof) => {
            dst.put_u8(b'P');
            dst.put_slice(proof);
        }
        Frame::Request(request) => {
            dst.put_u8(b'Q');
            dst.put_slice(&encode_message(request)?);
        }
        Frame::Reply(reply) => {
            dst.put_u8(b'R');
            dst.put_slice(&encode_message(reply)?);
        }
        Frame::Data { part_id, bytes } => {
            dst.reserve(9 + bytes.len());
            dst.put_u8(b'D');
            dst.put_u64_le(*part_id);
            dst.put_slice(bytes);
        }
    }
    let len = dst.len() - start - 4;
    if len > MAX_FRAME_BYTES {
        dst.truncate(start);
        return Err(FrameError::Io(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("frame of {len} bytes exceeds the limit of {MAX_FRAME_BYTES}"),
        )));
    }
    dst[start..start + 4].copy_from_slice(&(len as u32).to_be_bytes());
    Ok(())
}

/// Appends the length prefix and header of a data frame of `len` bytes for `part_id`,
/// without the bytes: a sender writes them next, straight from its own buffer, instead
/// of copying them into the frame (the bytes on the wire are those of
/// [`encode_frame`] for the same [`Frame::Data`]).
pub fn encode_data_header(part_id: u64, len: usize, dst: &mut BytesMut) -> Result<(), FrameError> {
    let body = 9 + len;
    if body > MAX_FRAME_BYTES {
        return Err(FrameError::Io(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("frame of {body} bytes exceeds the limit of {MAX_FRAME_BYTES}"),
        )));
    }
    dst.put_u32(body as u32);
    dst.put_u8(b'D');
    dst.put_u64_le(part_id);
    Ok(())
}

/// Decodes one frame's body (the bytes after the length prefix).
pub fn decode_body(mut body: Bytes) -> Result<Frame, FrameError> {
    if body.is_empty() {
        return Err(FrameError::Empty);
    }
    let tag = body.get_u8();
    match tag {
        b'H' => Ok(Frame::Hello(decode_message(&take_handshake(&mut body)?)?)),
        b'W' => Ok(Frame::Welcome(decode_message(&take_handshake(&mut body)?)?)),
        b'X' => {
            // A refusal is readable whatever the peer's version: it is plain text.
            take_handshake_header(&mut body)?;
            Ok(Frame::Refused(String::from_utf8_lossy(&body).into_owned()))
        }
        b'C' => Ok(Frame::Challenge(take_exactly::<NONCE_BYTES>(&body)?)),
        b'P' => Ok(Frame::Proof(take_exactly::<PROOF_BYTES>(&body)?)),
        b'Q' => Ok(Frame::Request(decode_message(&body)?)),
        b'R' => Ok(Frame::Reply(decode_message(&body)?)),
        b'D' => {
            if body.len() < 8 {
                return Err(FrameError::Truncated);
            }
            let part_id = body.get_u64_le();
            Ok(Frame::Data {
                part_id,
                bytes: body,
            })
        }
        other => Err(FrameError::UnknownTag(other)),
    }
}

/// Writes one frame to a blocking writer (a child process's pipe). A data frame's
/// bytes are written from where they are, not copied into a frame buffer first.
pub fn write_frame_blocking(writer: &mut impl Write, frame: &Frame) -> Result<(), FrameError> {
    let mut buf = BytesMut::new();
    match frame {
        Frame::Data { part_id, bytes } => {
            encode_data_header(*part_id, bytes.len(), &mut buf)?;
            writer.write_all(&buf)?;
            writer.write_all(bytes)?;
        }
        other => {
            encode_frame(other, &mut buf)?;
            writer.write_all(&buf)?;
        }
    }
    Ok(())
}

/// Reads one frame from a blocking reader; `Ok(None)` at a clean end of stream (one that
/// ends before a frame's first byte).
pub fn read_frame_blocking(reader: &mut impl Read) -> Result<Option<Frame>, FrameError> {
    // Only an end of stream before the first byte of a prefix is clean: one within the
    // prefix is a truncated frame, as `FrameCodec` reports it at the end of a socket.
    let mut prefix = [0u8; 4];
    let mut filled = 0;
    while filled < prefix.len() {
        match reader.read(&mut prefix[filled..]) {
            Ok(0) if filled == 0 => return Ok(None),
            Ok(0) => return Err(FrameError::Truncated),
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e.into()),
        }
    }
    let len = u32::from_be_bytes(prefix) as usize;
    check_frame_len(len, MAX_FRAME_BYTES)?;
    let mut body = vec![0u8; len];
    reader.read_exact(&mut body).map_err(|e| {
        if e.kind() == io::ErrorKind::UnexpectedEof {
            FrameError::Truncated
        } else {
            e.into()
        }
    })?;
    decode_body(Bytes::from(body)).map(Some)
}

/// A body of exactly `N` raw bytes.
fn take_exactly<const N: usize>(body: &[u8]) -> Result<[u8; N], FrameError> {
    body.try_into()
        .map_err(|_| FrameError::Decode(format!("{} bytes where {N} were expected", body.len())))
}

fn put_handshake(dst: &mut BytesMut, tag: u8, body: &[u8]) {
    dst.put_u8(tag);
    dst.put_slice(&MAGIC);
    dst.put_u16_le(PROTOCOL_VERSION);
    dst.put_slice(body);
}

/// Checks magic and version, leaving `body` at what follows them.
fn take_handshake_header(body: &mut Bytes) -> Result<u16, FrameError> {
    if body.len() < 6 {
        return Err(FrameError::Truncated);
    }
    if body[..4] != MAGIC {
        return Err(FrameError::BadMagic);
    }
    body.advance(4);
    Ok(body.get_u16_le())
}

fn take_handshake(body: &mut Bytes) -> Result<Bytes, FrameError> {
    let version = take_handshake_header(body)?;
    if version != PROTOCOL_VERSION {
        return Err(FrameError::VersionMismatch { peer: version });
    }
    Ok(body.split_off(0))
}

fn bincode_config() -> impl bincode::config::Config {
    // The limit makes bincode refuse an announced length (of a string, say) larger than
    // a frame could hold, instead of trying to allocate it.
    bincode::config::standard().with_limit::<MAX_FRAME_BYTES>()
}

/// A message's bincode encoding, as frames carry it.
pub fn encode_message(value: &impl Serialize) -> Result<Vec<u8>, FrameError> {
    bincode::serde::encode_to_vec(value, bincode_config())
        .map_err(|e| FrameError::Encode(e.to_string()))
}

/// The length of a message's bincode encoding, found without building it.
pub fn encoded_message_len(value: &impl Serialize) -> Result<usize, FrameError> {
    let mut size = bincode::enc::write::SizeWriter::default();
    bincode::serde::encode_into_writer(value, &mut size, bincode_config())
        .map_err(|e| FrameError::Encode(e.to_string()))?;
    Ok(size.bytes_written)
}

/// Decodes a message encoded by [`encode_message`]; every byte must be used.
pub fn decode_message<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, FrameError> {
    decode_with(bytes, bincode_config())
}

/// The longest message [`decode_large_message`] decodes: a part's result that travels
/// in data frames after its reply.
pub const MAX_LARGE_MESSAGE_BYTES: usize = 1 << 30;

/// Decodes a part's result that arrived in data frames ([`crate::wire`]): as
/// [`decode_message`], with room for [`MAX_LARGE_MESSAGE_BYTES`] instead of one frame.
/// (bincode's limit also bounds what a length inside the message may claim; a frame's
/// limit would refuse every result longer than a frame.)
pub fn decode_large_message<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, FrameError> {
    decode_with(
        bytes,
        bincode::config::standard().with_limit::<MAX_LARGE_MESSAGE_BYTES>(),
    )
}

fn decode_with<T: DeserializeOwned>(
    bytes: &[u8],
    config: impl bincode::config::Config,
) -> Result<T, FrameError> {
    let (value, used) = bincode::serde::decode_from_slice(bytes, config)
        .map_err(|e| FrameError::Decode(e.to_string()))?;
    if used != bytes.len() {
        return Err(FrameError::Decode(format!(
            "{} trailing bytes after the message",
            bytes.len() - used
        )));
    }
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::jobs::loop_sum::LoopPart;
    use crate::jobs::PartTask;

    fn round_trip(frame: Frame) -> Frame {
        let mut buf = BytesMut::new();
        encode_frame(&frame, &mut buf).unwrap();
        FrameCodec::new().decode(&mut buf).unwrap().unwrap()
    }

    #[test]
    fn every_frame_round_trips() {
        let frames = [
            Frame::Hello(Hello { client: "c".into() }),
            Frame::Challenge([7; NONCE_BYTES]),
            Frame::Proof([9; PROOF_BYTES]),
            Frame::Welcome(Welcome {
                server: "s".into(),
                workers: 3,
            }),
            Frame::Refused("no".into()),
            Frame::Request(Request::RunPart {
                part_id: 7,
                task: PartTask::Loop(LoopPart { lo: 1, hi: 9 }),
            }),
            Frame::Data {
                part_id: 7,
                bytes: Bytes::from_static(&[1, 2, 3, 4, 5, 6, 7, 8]),
            },
            Frame::Request(Request::Share {
                input_id: 8,
                name: "lib/count.py".into(),
                bytes: 8,
                executable: true,
            }),
        ];
        for frame in frames {
            assert_eq!(round_trip(frame.clone()), frame);
        }
    }

    #[test]
    fn status_frames_round_trip() {
        let frames = [
            Frame::Request(Request::Status),
            Frame::Request(Request::Cancel { part_id: 9 }),
            Frame::Reply(Reply::Status(crate::protocol::ServerStatus {
                server: "pool-server 0.1.0".into(),
                cores: 8,
                workers: 4,
                workers_busy: 2,
                parts_in_flight: 3,
                parts_served: 1 << 40,
                uptime_nanos: u64::MAX,
                load_average_milli: Some(1_250),
                cpu_idle_milli: None,
                memory_available_bytes: Some(3 << 30),
                loop_picos_per_iteration: Some(1_700),
            })),
        ];
        for frame in frames {
            assert_eq!(round_trip(frame.clone()), frame);
        }
    }

    #[test]
    fn a_data_header_and_its_bytes_make_the_data_frame() {
        let bytes = Bytes::from_static(&[9, 8, 7, 6, 5, 4, 3, 2]);
        let mut framed = BytesMut::new();
        encode_frame(
            &Frame::Data {
                part_id: 3,
                bytes: bytes.clone(),
            },
            &mut framed,
        )
        .unwrap();
        let mut split = BytesMut::new();
        encode_data_header(3, bytes.len(), &mut split).unwrap();
        split.extend_from_slice(&bytes);
        assert_eq!(split, framed);
        assert!(encode_data_header(3, MAX_FRAME_BYTES, &mut BytesMut::new()).is_err());
    }

    #[test]
    fn oversized_length_is_refused_before_allocating() {
        let mut buf = BytesMut::from(&[0xff, 0xff, 0xff, 0xff, b'Q'][..]);
        assert!(matches!(
            FrameCodec::new().decode(&mut buf),
            Err(FrameError::TooLong {
                len: 0xffff_ffff,
                max: MAX_FRAME_BYTES
            })
        ));
        assert!(matches!(
            read_frame_blocking(&mut &[0xffu8, 0xff, 0xff, 0xff][..]),
            Err(FrameError::TooLong { .. })
        ));
    }

    #[test]
    fn before_the_handshake_a_frame_longer_than_a_hello_is_refused_from_its_prefix() {
        let mut codec = FrameCodec::handshake();
        let announced = (4u32 << 20).to_be_bytes();
        let mut buf = BytesMut::from(&announced[..]);
        assert!(matches!(
            codec.decode(&mut buf),
            Err(FrameError::TooLong { len, max: MAX_HANDSHAKE_FRAME_BYTES }) if len == 4 << 20
        ));
        // Once the handshake is done, the same frame is read.
        let mut codec = FrameCodec::handshake();
        codec.handshake_done();
        let mut buf = BytesMut::new();
        let data = Frame::Data {
            part_id: 1,
            bytes: Bytes::from(vec![7u8; 1 << 20]),
        };
        encode_frame(&data, &mut buf).unwrap();
        assert_eq!(codec.decode(&mut buf).unwrap(), Some(data));
    }

    #[test]
    fn a_stream_ending_within_a_length_prefix_is_truncated_not_clean() {
        // Found by the frame_decoder fuzz target: read_frame_blocking took 1 to 3 bytes
        // of a prefix for a clean end of stream, where FrameCodec reports an error.
        assert!(read_frame_blocking(&mut &[][..]).unwrap().is_none());
        for len in 1..4 {
            let stream = [0u8, 0, 0, 1];
            assert!(
                matches!(
                    read_frame_blocking(&mut &stream[..len]),
                    Err(FrameError::Truncated)
                ),
                "{len} bytes of a prefix"
            );
            let mut buf = BytesMut::from(&stream[..len]);
            assert!(FrameCodec::new().decode_eof(&mut buf).is_err());
        }
    }

    #[test]
    fn a_stream_ending_after_a_length_prefix_is_truncated_not_clean() {
        // Found by the frame_decoder fuzz target: FrameCodec took a prefix announcing a
        // body that never came for a clean end of stream, as the buffer was empty.
        let mut codec = FrameCodec::new();
        let mut buf = BytesMut::from(&[0u8, 0, 0x52, 8][..]);
        assert!(codec.decode(&mut buf).unwrap().is_none());
        assert!(matches!(
            codec.decode_eof(&mut buf),
            Err(FrameError::Truncated)
        ));
        assert!(matches!(
            read_frame_blocking(&mut &[0u8, 0, 0x52, 8][..]),
            Err(FrameError::Truncated)
        ));
        // After a whole frame, the end of the stream is clean again.
        let mut codec = FrameCodec::new();
        let mut buf = BytesMut::new();
        encode_frame(&Frame::Refused("no".into()), &mut buf).unwrap();
        let (first, rest) = buf.split_at(3);
        let mut buf = BytesMut::from(first);
        assert!(codec.decode(&mut buf).unwrap().is_none());
        buf.extend_from_slice(rest);
        assert!(codec.decode(&mut buf).unwrap().is_some());
        assert!(codec.decode_eof(&mut buf).unwrap().is_none());
    }

    #[test]
    fn version_mismatch_is_named() {
        let mut body = BytesMut::new();
        body.put_u8(b'H');
        body.put_slice(&MAGIC);
        body.put_u16_le(PROTOCOL_VERSION + 1);
        let err = decode_body(body.freeze()).unwrap_err();
        assert!(
            matches!(err, FrameError::VersionMismatch { peer } if peer == PROTOCOL_VERSION + 1)
        );
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        for body in [
            &b""[..],
            b"H",
            b"HPOOX",
            b"HXXXX\x01\x00",
            b"Q\xff\xff\xff\xff\xff",
            b"D\x01",
            b"C\x01\x02",
            b"P",
            &[b'P'; PROOF_BYTES + 2],
            b"Z",
        ] {
            assert!(
                decode_body(Bytes::copy_from_slice(body)).is_err(),
                "{body:?}"
            );
        }
    }

    #[test]
    fn an_announced_string_length_beyond_the_frame_is_refused() {
        // A Hello whose string claims 2^60 bytes must not allocate them.
        let mut body = BytesMut::new();
        body.put_u8(b'H');
        body.put_slice(&MAGIC);
        body.put_u16_le(PROTOCOL_VERSION);
        body.put_u8(255);
        body.put_u64_le(1 << 60);
        assert!(matches!(
            decode_body(body.freeze()),
            Err(FrameError::Decode(_))
        ));
    }
}
