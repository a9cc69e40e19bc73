//! The client's side of TLS: whom it trusts (a job file's `tls_ca` or
//! `tls_fingerprint`) and the handshake on each new connection.
//!
//! With `tls_ca`, a server must show a certificate for the name or address the client
//! dials, signed by one of the file's authorities (rustls's usual checks). With
//! `tls_fingerprint`, it must show exactly the pinned certificate, whoever signed it and
//! whatever names it holds: a lab machine's self-signed certificate from `pool-server
//! --tls self-signed`. Either way, rustls checks that the server holds the certificate's
//! private key (its signature over the handshake), with the ring provider's algorithms.

use std::sync::Arc;

use pool_common::tls::{tls_halves, Fingerprint, ReadHalf, TlsTrust, WriteHalf};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{
    verify_tls12_signature, verify_tls13_signature, CryptoProvider, WebPkiSupportedAlgorithms,
};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{CertificateError, DigitallySignedStruct, OtherError, SignatureScheme};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use crate::connection::ServerError;

/// How a client opens TLS connections, built once from the job file's settings.
#[derive(Clone)]
pub struct ClientTls {
    connector: TlsConnector,
}

impl ClientTls {
    /// A client that trusts `trust`. Fails only for a `tls_ca` file with a certificate
    /// rustls cannot use as an authority; the message names the file.
    pub fn new(trust: &TlsTrust) -> Result<ClientTls, String> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = rustls::ClientConfig::builder_with_provider(Arc::clone(&provider))
            .with_safe_default_protocol_versions()
            .map_err(|e| format!("cannot set up TLS: {e}"))?;
        let config = match trust {
            TlsTrust::Ca { path, certificates } => {
                let mut roots = rustls::RootCertStore::empty();
                for (index, certificate) in certificates.iter().enumerate() {
                    roots.add(certificate.clone()).map_err(|e| {
                        format!(
                            "tls_ca {}: certificate {} of the file cannot serve as an authority: {e}",
                            path.display(),
                            index + 1
                        )
                    })?;
                }
                builder.with_root_certificates(roots)
            }
            TlsTrust::Pinned(fingerprints) => builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(Pinned::new(fingerprints, &provider))),
        };
        Ok(ClientTls {
            connector: TlsConnector::from(Arc::new(config.with_no_client_auth())),
        })
    }

    /// Runs the TLS handshake with the server at `address` over `socket`, and returns
    /// the connection's two directions. The error names the server and says what to do.
    pub async fn connect(
        &self,
        socket: TcpStream,
        address: &str,
    ) -> Result<(ReadHalf, WriteHalf), ServerError> {
        let failed = |reason: String| ServerError::Tls {
            address: address.to_string(),
            reason,
        };
        let host = address.rsplit_once(':').map_or(address, |(host, _)| host);
        let host = host.trim_start_matches('[').trim_end_matches(']');
        let name = ServerName::try_from(host.to_string())
            .map_err(|e| failed(format!("{host:?} is not a name TLS can check: {e}")))?;
        let stream = self
            .connector
            .connect(name, socket)
            .await
            .map_err(|e| failed(explain(e)))?;
        Ok(tls_halves(stream))
    }
}

/// A failed handshake as the user can act on it.
fn explain(error: std::io::Error) -> String {
    let rustls_error = error
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>());
    match rustls_error {
        Some(rustls::Error::InvalidMessage(_)) => format!(
            "it answered with something other than TLS ({error}): is it a pool-server \
             started with --tls? If it has no TLS, remove tls = true from the job file"
        ),
        Some(rustls::Error::InvalidCertificate(
            CertificateError::UnknownIssuer | CertificateError::BadSignature,
        )) => format!("{error}: its certificate is not signed by the trusted authority (tls_ca)"),
        // rustls shows its own errors' inner error with Debug; ours reads as a sentence.
        Some(rustls::Error::InvalidCertificate(CertificateError::Other(OtherError(inner)))) => {
            inner.to_string()
        }
        _ => error.to_string(),
    }
}

/// Accepts exactly the certificates pinned, by their SHA-256 fingerprints, and checks
/// the handshake's signatures as rustls's own verifier does.
#[derive(Debug)]
struct Pinned {
    fingerprints: Vec<Fingerprint>,
    algorithms: WebPkiSupportedAlgorithms,
}

impl Pinned {
    fn new(fingerprints: &[Fingerprint], provider: &CryptoProvider) -> Pinned {
        Pinned {
            fingerprints: fingerprints.to_vec(),
            algorithms: provider.signature_verification_algorithms,
        }
    }
}

/// A server showed another certificate than the ones pinned.
#[derive(Debug, thiserror::Error)]
#[error(
    "its certificate's SHA-256 fingerprint is {presented}, not the job file's \
     tls_fingerprint {pinned}. A server restarted with --tls self-signed has a new \
     certificate: copy the tls_fingerprint line it printed at start. Otherwise, another \
     machine answers at this address"
)]
struct NotPinned {
    presented: Fingerprint,
    /// The fingerprints pinned, as a person reads them.
    pinned: String,
}

impl ServerCertVerifier for Pinned {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        // Every pin is compared, each in constant time.
        let pinned = self
            .fingerprints
            .iter()
            .fold(false, |found, pin| pin.matches(end_entity) | found);
        if pinned {
            return Ok(ServerCertVerified::assertion());
        }
        let mismatch = NotPinned {
            presented: Fingerprint::of(end_entity),
            pinned: match self.fingerprints.as_slice() {
                [one] => one.to_string(),
                many => format!(
                    "[{}]",
                    many.iter()
                        .map(Fingerprint::to_string)
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            },
        };
        Err(rustls::Error::InvalidCertificate(CertificateError::Other(
            OtherError(Arc::new(mismatch)),
        )))
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}
