//! What both sides of a TLS connection agree on: the SHA-256 fingerprint that pins a
//! server's certificate, and reading certificates from PEM files.
//!
//! A lab machine rarely has a certificate signed by an authority. `pool-server --tls
//! self-signed` makes one at start-up and prints its [`Fingerprint`] as a job file line
//! (`tls_fingerprint = "AB:CD:…"`); a client that pins it accepts exactly that
//! certificate, whoever signed it (a job on several such servers pins a list). It is the fingerprint `openssl x509 -noout
//! -fingerprint -sha256` prints, so a certificate from a file can be pinned the same
//! way. The handshakes themselves live in each side's `tls` module; here are also the
//! [`ReadHalf`] and [`WriteHalf`] through which both sides read and write frames, so
//! that plain TCP and TLS look alike to them.

use std::fmt;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::task::{Context, Poll};

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::CertificateDer;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

/// The first byte of a TLS handshake record: a client's first byte under TLS, and never
/// the first byte of a pool frame's length prefix (a handshake frame is a few KiB).
pub const TLS_HANDSHAKE_RECORD: u8 = 0x16;

/// What a connection reads from, plain TCP or TLS alike.
pub type ReadHalf = Box<dyn AsyncRead + Send + Unpin>;

/// What a connection writes to, plain TCP or TLS alike.
pub type WriteHalf = Box<dyn AsyncWrite + Send + Unpin>;

/// A plain TCP connection's two directions, split without a lock between them.
pub fn plain_halves(socket: TcpStream) -> (ReadHalf, WriteHalf) {
    let (read, write) = socket.into_split();
    (Box::new(read), Box::new(write))
}

/// A TLS stream's two directions; they share the stream (and its keys) behind tokio's
/// split lock, held only while one of them is polled.
pub fn tls_halves<S>(stream: S) -> (ReadHalf, WriteHalf)
where
    S: AsyncRead + AsyncWrite + Send + 'static,
{
    let (read, write) = tokio::io::split(stream);
    (Box::new(EndWithoutCloseNotify(read)), Box::new(write))
}

/// A TLS stream's reading side that takes the peer's close without TLS's close_notify
/// alert for an end of stream, as a plain TCP socket would report it. Pool's framing
/// tells a clean end (between frames) from a truncated frame by itself, and both sides
/// drop connections without shutting TLS down, so the missing alert is no error.
struct EndWithoutCloseNotify<R>(R);

impl<R: AsyncRead + Unpin> AsyncRead for EndWithoutCloseNotify<R> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        match Pin::new(&mut self.0).poll_read(cx, buf) {
            Poll::Ready(Err(e)) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
                Poll::Ready(Ok(()))
            }
            other => other,
        }
    }
}

/// The SHA-256 of a certificate's DER bytes.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Fingerprint([u8; 32]);

impl Fingerprint {
    /// The fingerprint of the certificate `der`.
    pub fn of(der: &[u8]) -> Fingerprint {
        Fingerprint(Sha256::digest(der).into())
    }

    /// Reads 64 hex digits, in either case, with or without colons between bytes (as
    /// `pool-server` and `openssl x509 -fingerprint -sha256` print them). The error says
    /// what was wrong.
    pub fn parse(text: &str) -> Result<Fingerprint, String> {
        let digits: Vec<u8> = text.bytes().filter(|&b| b != b':').collect();
        let wrong = |what: String| {
            format!(
                "{what}: a SHA-256 fingerprint is 64 hex digits, colons allowed, as in the \
                 `tls_fingerprint = \"...\"` line pool-server prints at start"
            )
        };
        if let Some(bad) = digits.iter().find(|b| !b.is_ascii_hexdigit()) {
            return Err(wrong(format!("{:?} is not a hex digit", *bad as char)));
        }
        if digits.len() != 64 {
            return Err(wrong(format!("{} hex digits", digits.len())));
        }
        let mut bytes = [0; 32];
        for (byte, pair) in bytes.iter_mut().zip(digits.chunks(2)) {
            let pair = std::str::from_utf8(pair).expect("hex digits are ASCII");
            *byte = u8::from_str_radix(pair, 16).expect("two hex digits");
        }
        Ok(Fingerprint(bytes))
    }

    /// Whether the certificate `der` is the one pinned, compared in constant time.
    pub fn matches(&self, der: &[u8]) -> bool {
        Fingerprint::of(der).0.ct_eq(&self.0).into()
    }
}

impl fmt::Display for Fingerprint {
    /// Upper-case hex bytes joined by colons, as openssl prints them.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, byte) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(":")?;
            }
            write!(f, "{byte:02X}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Fingerprint({self})")
    }
}

/// Whom a client trusts to be the server at the other end of a TLS connection (the job
/// file's `tls_ca` or `tls_fingerprint`).
#[derive(Debug, Clone, PartialEq)]
pub enum TlsTrust {
    /// Servers whose certificate, valid for the name or address the client dials, was
    /// signed by one of these authorities.
    Ca {
        /// The PEM file they were read from, for messages.
        path: PathBuf,
        /// The authorities' certificates.
        certificates: Vec<CertificateDer<'static>>,
    },
    /// The servers whose certificate has exactly one of these fingerprints, whoever
    /// signed it (each server started with `--tls self-signed` has its own).
    Pinned(Vec<Fingerprint>),
}

/// Every certificate in the PEM file `path`, in file order; the error names the file and
/// says what is wrong with it.
pub fn read_certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let shown = path.display();
    let certificates = CertificateDer::pem_file_iter(path)
        .map_err(|e| format!("cannot read {shown}: {}", pem_error(e)))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("{shown} is not a readable PEM file: {}", pem_error(e)))?;
    if certificates.is_empty() {
        return Err(format!(
            "{shown} holds no certificate (no -----BEGIN CERTIFICATE----- section)"
        ));
    }
    Ok(certificates)
}

/// A PEM error as a person reads it: an I/O error without the crate's prefix.
pub fn pem_error(error: rustls_pki_types::pem::Error) -> String {
    match error {
        rustls_pki_types::pem::Error::Io(e) => e.to_string(),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_fingerprint_reads_back_what_it_prints() {
        // `printf abc | sha256sum`: the fingerprint of a (not really DER) blob "abc".
        let abc = Fingerprint::of(b"abc");
        let printed = abc.to_string();
        assert_eq!(
            printed,
            "BA:78:16:BF:8F:01:CF:EA:41:41:40:DE:5D:AE:22:23:B0:03:61:A3:96:17:7A:9C:B4:10:FF:61:F2:00:15:AD"
        );
        assert_eq!(Fingerprint::parse(&printed), Ok(abc));
        assert_eq!(
            Fingerprint::parse(&printed.replace(':', "").to_lowercase()),
            Ok(abc)
        );
        assert!(abc.matches(b"abc"));
        assert!(!abc.matches(b"abd"));
    }

    #[test]
    fn a_malformed_fingerprint_says_what_is_wrong() {
        let short = Fingerprint::parse("BA:78:16").unwrap_err();
        assert!(short.starts_with("6 hex digits: a SHA-256 fingerprint is 64 hex digits"));
        let bad = Fingerprint::parse(&"g".repeat(64)).unwrap_err();
        assert!(bad.starts_with("'g' is not a hex digit"), "{bad}");
    }

    #[test]
    fn a_file_without_certificates_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ca.pem");
        std::fs::write(&path, "not a certificate\n").unwrap();
        let error = read_certificates(&path).unwrap_err();
        assert!(error.contains("ca.pem holds no certificate"), "{error}");
        let missing = read_certificates(&dir.path().join("none.pem")).unwrap_err();
        assert!(missing.starts_with("cannot read "), "{missing}");
        assert!(missing.contains("none.pem: No such file"), "{missing}");
    }
}
