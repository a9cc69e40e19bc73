//! Byte streams a hostile or broken client sends a server, for the tests and the soak
//! (`pool-bench soak`) that check a server closes each one and serves others meanwhile.
//!
//! [`streams`] is the list: garbage, wrong magic or version, oversized or truncated
//! frames, undecodable messages, protocol violations after a proper handshake, and
//! silence. The helpers build frames for variations of them.

use bytes::{BufMut, Bytes, BytesMut};
use pool_common::codec::{encode_frame, Frame};
use pool_common::jobs::loop_sum::LoopPart;
use pool_common::jobs::matmul::MatmulPart;
use pool_common::jobs::PartTask;
use pool_common::protocol::{Hello, Request, PROTOCOL_VERSION};

/// A frame as it goes on the wire.
pub fn frame(frame: &Frame) -> Vec<u8> {
    let mut buf = BytesMut::new();
    encode_frame(frame, &mut buf).expect("a small frame encodes");
    buf.to_vec()
}

/// A client's Hello (this build's protocol version, no token).
pub fn hello() -> Vec<u8> {
    frame(&Frame::Hello(Hello {
        client: "hostile".into(),
    }))
}

/// A length-prefixed frame with an arbitrary body.
pub fn raw_frame(body: &[u8]) -> Vec<u8> {
    let mut buf = BytesMut::new();
    buf.put_u32(body.len() as u32);
    buf.put_slice(body);
    buf.to_vec()
}

/// A request to run `task` as part 1.
pub fn request(task: PartTask) -> Vec<u8> {
    frame(&Frame::Request(Request::RunPart { part_id: 1, task }))
}

/// A `Request::Share` of `bytes` bytes as input 1.
pub fn share(name: &str, bytes: u64) -> Vec<u8> {
    frame(&Frame::Request(Request::Share {
        input_id: 1,
        name: name.into(),
        bytes,
        executable: true,
    }))
}

/// `len` bytes of data for `id`.
pub fn data(id: u64, len: usize) -> Vec<u8> {
    frame(&Frame::Data {
        part_id: id,
        bytes: Bytes::from(vec![b'x'; len]),
    })
}

/// Both rows of an `n` x `n` matrix product with n >= 2, without C.
pub fn matmul_task(n: u64) -> PartTask {
    PartTask::Matmul(MatmulPart {
        n,
        first_row: 0,
        rows: 2,
        keep_rows: false,
    })
}

/// A first frame announcing 4 MiB, far more than any handshake: refused from its
/// length alone.
pub fn oversized_first_frame() -> Vec<u8> {
    [&(4u32 << 20).to_be_bytes()[..], b"HPOOL"].concat()
}

/// Named hostile streams. Sent on a connection of its own, each ends with the server
/// closing it: at once, or after its handshake or idle timeout for the silent ones.
pub fn streams() -> Vec<(&'static str, Vec<u8>)> {
    let mut wrong_magic = hello();
    wrong_magic[5..9].copy_from_slice(b"LOOP");
    let mut wrong_version = hello();
    wrong_version[9..11].copy_from_slice(&(PROTOCOL_VERSION + 7).to_le_bytes());
    let one_iteration = || PartTask::Loop(LoopPart { lo: 0, hi: 1 });
    vec![
        ("garbage", b"GET / HTTP/1.1\r\nHost: pool\r\n\r\n".to_vec()),
        ("wrong magic", wrong_magic),
        ("wrong version", wrong_version),
        (
            "oversized length prefix",
            vec![0xff, 0xff, 0xff, 0xff, b'H'],
        ),
        ("truncated frame", {
            let mut bytes = raw_frame(&[b'H'; 100]);
            bytes.truncate(20);
            bytes
        }),
        (
            "undecodable message",
            [
                hello(),
                raw_frame(&[b'Q', 0xff, 0xff, 0xff, 0xff, 0xff, 0x01]),
            ]
            .concat(),
        ),
        ("unknown tag", [hello(), raw_frame(b"Zzz")].concat()),
        ("data for no part", [hello(), data(9, 16)].concat()),
        (
            "reversed loop range",
            [hello(), request(PartTask::Loop(LoopPart { lo: 10, hi: 1 }))].concat(),
        ),
        ("a second hello", [hello(), hello()].concat()),
        (
            "a shared file that leaves the work folder",
            [hello(), share("../../tmp/pool-escaped", 4), data(1, 4)].concat(),
        ),
        (
            "a shared file after a part",
            [hello(), request(one_iteration()), share("late", 0)].concat(),
        ),
        (
            "a shared file longer than its data",
            [hello(), share("a", 4), data(1, 8)].concat(),
        ),
        (
            "a part before a shared file's data",
            [hello(), share("a", 4), request(one_iteration())].concat(),
        ),
        (
            "a matrix product's chunk that cuts a row",
            [hello(), request(matmul_task(4)), data(1, 3)].concat(),
        ),
        (
            "a matrix product of an impossible size",
            [hello(), request(matmul_task(u64::MAX))].concat(),
        ),
        ("a first frame longer than a Hello", oversized_first_frame()),
        ("nothing at all", Vec::new()),
        ("handshake then silence", hello()),
    ]
}
