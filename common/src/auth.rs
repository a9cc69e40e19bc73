//! Proof of the shared token without sending it.
//!
//! A server started with `--token` answers a client's Hello with a challenge: a
//! [`Nonce`] of 32 random bytes, new for every connection. The client answers with
//! [`prove`], HMAC-SHA256 of the nonce keyed with the token, and the server checks it
//! with [`verify`], in time that does not depend on where a wrong answer differs. The
//! token itself never goes on the wire, and an answer is worth nothing on another
//! connection, whose nonce differs.
//!
//! What this does not do: encrypt. Whoever reads the traffic reads the parts and their
//! results, and whoever can alter it can take over a connection once it is
//! authenticated. A recorded nonce and answer also let them test guesses of the token
//! offline, so a token should be long and random (`openssl rand -hex 16`), not a word.

use hmac::{Hmac, Mac};
use sha2::Sha256;

/// The length of a challenge.
pub const NONCE_BYTES: usize = 32;

/// The length of an answer: an HMAC-SHA256 tag.
pub const PROOF_BYTES: usize = 32;

/// A server's challenge: random bytes for one connection.
pub type Nonce = [u8; NONCE_BYTES];

/// A client's answer to a challenge.
pub type Proof = [u8; PROOF_BYTES];

type HmacSha256 = Hmac<Sha256>;

/// A new challenge, from the thread's cryptographically secure generator (seeded by
/// the operating system).
pub fn nonce() -> Nonce {
    let mut nonce = [0; NONCE_BYTES];
    rand::fill(&mut nonce[..]);
    nonce
}

/// A token for servers started for a run (`local = N`, `launch = "ssh"`, `pool-client
/// up`, a test's lab): 128 random bits from the same generator, as 32 hex digits.
pub fn random_token() -> String {
    format!("{:032x}", rand::random::<u128>())
}

/// The answer to `nonce` from someone who knows `token`.
pub fn prove(token: &str, nonce: &Nonce) -> Proof {
    keyed(token, nonce).finalize().into_bytes().into()
}

/// Whether `proof` answers `nonce` under `token`, compared in constant time.
pub fn verify(token: &str, nonce: &Nonce, proof: &Proof) -> bool {
    keyed(token, nonce).verify_slice(proof).is_ok()
}

fn keyed(token: &str, nonce: &Nonce) -> HmacSha256 {
    let mut mac =
        HmacSha256::new_from_slice(token.as_bytes()).expect("HMAC takes a key of any length");
    mac.update(nonce);
    mac
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_answer_proves_the_token_for_its_nonce_only() {
        let nonce = nonce();
        let proof = prove("s3cret", &nonce);
        assert!(verify("s3cret", &nonce, &proof));
        assert!(!verify("s3creT", &nonce, &proof), "another token");
        assert!(!verify("s3cret", &super::nonce(), &proof), "another nonce");
        let mut forged = proof;
        forged[31] ^= 1;
        assert!(!verify("s3cret", &nonce, &forged));
    }

    #[test]
    fn the_answer_is_hmac_sha256_of_the_nonce_keyed_with_the_token() {
        // RFC 4231's test case 2 (key "Jefe") with its data padded to a nonce's 32
        // bytes; the tag is Python's
        // hmac.new(b"Jefe", b"what do ya want for nothing?    ", "sha256").hexdigest().
        let nonce: Nonce = *b"what do ya want for nothing?    ";
        let expected = "f33ebd191e0e75bc3fc45adedd1ca70f2d699ddc942242169070c9f19cdd30ef";
        let hex: String = prove("Jefe", &nonce)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        assert_eq!(hex, expected);
    }

    #[test]
    fn nonces_differ() {
        assert_ne!(nonce(), nonce());
    }

    #[test]
    fn random_tokens_are_32_hex_digits_and_differ() {
        let token = random_token();
        assert_eq!(token.len(), 32);
        assert!(token.bytes().all(|b| b.is_ascii_hexdigit()), "{token}");
        assert_ne!(token, random_token());
    }
}
