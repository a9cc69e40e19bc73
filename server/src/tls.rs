//! The server's side of TLS: its certificate (from PEM files, or made at start-up) and
//! the handshake on each accepted socket.
//!
//! TLS is optional: without it the server speaks the pool protocol on plain TCP. With
//! it, every byte after TCP's handshake is encrypted, the token's challenge and answer
//! included (they still run, inside TLS: TLS proves the server to the client, the token
//! the client to the server). A client that connects without TLS is told so in a plain
//! refusal it can read, not left to time out (see [`ServerTls::accept`]).

use std::path::Path;
use std::sync::Arc;

use pool_common::tls::{
    pem_error, read_certificates, tls_halves, Fingerprint, ReadHalf, WriteHalf,
    TLS_HANDSHAKE_RECORD,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio::net::TcpStream;
use tokio_rustls::TlsAcceptor;

/// A server's certificate and key, ready to accept TLS connections.
#[derive(Clone)]
pub struct ServerTls {
    acceptor: TlsAcceptor,
    fingerprint: Fingerprint,
}

/// Why a connection did not become a TLS connection.
#[derive(Debug, thiserror::Error)]
pub enum AcceptError {
    /// The client's first byte is not TLS's: a client without `tls = true`. The socket
    /// is handed back, untouched, so the client can be told in plain text.
    #[error("a client without TLS")]
    Plain(TcpStream),
    /// The TLS handshake failed (the client distrusts the certificate, or closed).
    #[error("TLS handshake failed: {0}")]
    Handshake(#[from] std::io::Error),
}

impl ServerTls {
    /// The certificate chain in the PEM file `cert` (the server's own first) and the
    /// private key in the PEM file `key`. Errors name the file and what is wrong.
    pub fn from_pem_files(cert: &Path, key: &Path) -> Result<ServerTls, String> {
        let chain = read_certificates(cert).map_err(|e| format!("--tls-cert: {e}"))?;
        let private_key = PrivateKeyDer::from_pem_file(key).map_err(|e| {
            let why = match e {
                rustls::pki_types::pem::Error::NoItemsFound => {
                    "holds no private key (no -----BEGIN PRIVATE KEY----- section)".into()
                }
                other => format!("cannot be read: {}", pem_error(other)),
            };
            format!("--tls-key: {} {why}", key.display())
        })?;
        ServerTls::new(chain, private_key).map_err(|e| {
            format!(
                "--tls-cert {} with --tls-key {}: {e} (is the key the certificate's own?)",
                cert.display(),
                key.display()
            )
        })
    }

    /// A certificate made now for this run, with a new key: clients pin its
    /// [`fingerprint`](Self::fingerprint), which changes at every start.
    pub fn self_signed() -> Result<ServerTls, String> {
        let made = rcgen::generate_simple_self_signed(vec!["localhost".to_string()])
            .map_err(|e| format!("cannot make a self-signed certificate: {e}"))?;
        let key = PrivatePkcs8KeyDer::from(made.key_pair.serialize_der());
        ServerTls::new(vec![made.cert.der().clone()], key.into())
            .map_err(|e| format!("cannot use the self-signed certificate: {e}"))
    }

    fn new(
        chain: Vec<CertificateDer<'static>>,
        key: PrivateKeyDer<'static>,
    ) -> Result<ServerTls, rustls::Error> {
        let fingerprint = Fingerprint::of(&chain[0]);
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_no_client_auth()
            .with_single_cert(chain, key)?;
        Ok(ServerTls {
            acceptor: TlsAcceptor::from(Arc::new(config)),
            fingerprint,
        })
    }

    /// The SHA-256 fingerprint of the server's certificate, for clients to pin.
    pub fn fingerprint(&self) -> Fingerprint {
        self.fingerprint
    }

    /// Runs the TLS handshake on an accepted socket and returns the connection's two
    /// directions. A client that starts with anything but a TLS handshake record is
    /// handed back as [`AcceptError::Plain`], before a byte is read. Bound it with a
    /// timeout: a client that sends nothing is waited for.
    pub async fn accept(&self, socket: TcpStream) -> Result<(ReadHalf, WriteHalf), AcceptError> {
        let mut first = [0u8; 1];
        if socket.peek(&mut first).await? == 0 {
            return Err(AcceptError::Handshake(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "closed before the TLS handshake",
            )));
        }
        if first[0] != TLS_HANDSHAKE_RECORD {
            return Err(AcceptError::Plain(socket));
        }
        let stream = self.acceptor.accept(socket).await?;
        Ok(tls_halves(stream))
    }
}

impl std::fmt::Debug for ServerTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerTls")
            .field("fingerprint", &self.fingerprint)
            .finish_non_exhaustive()
    }
}

/// Whether a first frame's announced length is really the start of a TLS record (a
/// client with `tls = true` talking to a server without TLS): its first two bytes are
/// a handshake record's type and TLS's major version.
pub fn is_tls_record(announced_len: usize) -> bool {
    announced_len >> 16 == (usize::from(TLS_HANDSHAKE_RECORD) << 8 | 0x03)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Writes a new self-signed certificate and its key as PEM files in `dir`.
    fn write_pair(dir: &Path, cert: &str, key: &str) {
        let made = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
        std::fs::write(dir.join(cert), made.cert.pem()).unwrap();
        std::fs::write(dir.join(key), made.key_pair.serialize_pem()).unwrap();
    }

    #[test]
    fn certificate_and_key_files_are_named_in_errors() {
        let dir = tempfile::tempdir().unwrap();
        let at = |name: &str| dir.path().join(name);
        write_pair(dir.path(), "cert.pem", "key.pem");
        write_pair(dir.path(), "other.pem", "other-key.pem");
        let made = ServerTls::from_pem_files(&at("cert.pem"), &at("key.pem")).unwrap();
        let der = read_certificates(&at("cert.pem")).unwrap().remove(0);
        assert_eq!(made.fingerprint(), Fingerprint::of(&der));

        let error =
            |cert: &str, key: &str| ServerTls::from_pem_files(&at(cert), &at(key)).unwrap_err();
        let missing = error("none.pem", "key.pem");
        assert!(missing.starts_with("--tls-cert: cannot read "), "{missing}");
        assert!(missing.contains("none.pem: No such file"), "{missing}");
        let swapped = error("key.pem", "cert.pem");
        assert!(
            swapped.contains("key.pem holds no certificate"),
            "{swapped}"
        );
        let no_key = error("cert.pem", "cert.pem");
        assert!(
            no_key.starts_with("--tls-key: ") && no_key.contains("cert.pem holds no private key"),
            "{no_key}"
        );
        let mismatched = error("cert.pem", "other-key.pem");
        assert!(
            mismatched.contains("other-key.pem")
                && mismatched.contains("is the key the certificate's own?"),
            "{mismatched}"
        );
    }

    #[test]
    fn a_tls_client_hello_is_told_from_a_pool_frame() {
        // A ClientHello's record header, 16 03 01 then a length, read as a frame prefix.
        assert!(is_tls_record(
            u32::from_be_bytes([0x16, 0x03, 0x01, 0x02]) as usize
        ));
        assert!(!is_tls_record(4096));
    }
}
