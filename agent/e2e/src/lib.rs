//! ward-e2e: the message layer of end-to-end encrypted inference to a key the attestation
//! vouches for (`docs/encrypted-inference.md`): HPKE (RFC 9180) with X-Wing (ML-KEM-768 + X25519)
//! or X25519, Oblivious-HTTP-style request and response encapsulation (RFC 9458) with chunked,
//! ordered, final-marked responses for streaming, a replay cache, and the report-data binding.
//!
//! What it owns: the bytes on the wire and the keys ([`ServerKey`] and [`ResponseSealer`] for
//! wardd, [`RequestSealer`] and [`ResponseOpener`] for clients: `ward chat`, the tests, the
//! benchmarks). What it does not: HTTP, ttrpc, attestation or audit (wardd's inference front,
//! `agent/src/inference_api/`), or the model (ward-inference). It never sees a prompt other
//! than as the plaintext it seals or opens, and never logs.

mod client;
mod identity;
pub mod ohttp;
mod server;
mod suite;
#[cfg(test)]
mod tests;

pub use client::{RequestSealer, ResponseOpener};
pub use identity::{CLIENT_LABEL, ClientId, ClientKey, ED25519_PREFIX};
pub use server::{OpenedRequest, ResponseSealer, ServerKey};
pub use suite::{Aead, KeyConfig, Suite};

use sha2::{Digest as _, Sha256, Sha512};

/// HPKE `info` prefix of a request.
pub const REQUEST_LABEL: &[u8] = b"message/ward-e2e request v1";
/// Exporter label of the response secret.
pub const RESPONSE_LABEL: &[u8] = b"message/ward-e2e response v1";
/// A request's `created` may be this far from the server's clock.
pub const MAX_SKEW_SECS: u64 = 300;
/// Accepted `enc`s are remembered this long on the monotonic clock: longer than the whole span
/// (twice the skew) in which one `created` is acceptable, so the host cannot evict an entry by
/// moving the wall clock. Past it, an entry's `created` becomes the floor below which nothing
/// is accepted, so a replay stays refused even if the wall clock is then turned back.
pub const REPLAY_WINDOW_SECS: u64 = 2 * MAX_SKEW_SECS + 60;
/// Accepted `enc`s remembered at most; when full, new requests are refused (busy) rather than
/// an entry forgotten early.
pub const MAX_REPLAY_ENTRIES: usize = 1 << 17;
/// Largest request accepted.
pub const MAX_REQUEST: usize = 4 << 20;
/// Largest response chunk.
pub const MAX_CHUNK: usize = 1 << 24;

/// Why a message was refused. Servers answer every variant with the same "bad request", so an
/// attacker learns nothing; the variants are for logs and tests.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum E2eError {
    #[error("malformed message: {0}")]
    Malformed(String),
    #[error("the message is for another key configuration")]
    WrongKey,
    #[error("the message does not decrypt (altered, or not for this key)")]
    Decrypt,
    #[error("the request was already accepted (replay)")]
    Replay,
    #[error("too many recent requests to remember; try again shortly")]
    Busy,
    #[error("the request was sealed for {sealed}, not for {got}")]
    Route { sealed: String, got: String },
    #[error("the request's time is {skew} s away from the server's clock")]
    Stale { skew: u64 },
    #[error("the response chunk {index} does not decrypt (altered, reordered or spliced)")]
    Chunk { index: u64 },
    #[error("the response ended without its final chunk (truncated)")]
    Truncated,
    #[error("data after the final chunk")]
    AfterFinal,
    #[error("the client signature does not hold for this request")]
    ClientSignature,
    #[error("the attestation does not bind this key: {0}")]
    Binding(String),
}

/// The 64 bytes of TEE report data that bind `key_config` (and the GPU evidence) to the
/// client's `nonce`.
pub fn report_data(nonce: &[u8], key_config: &[u8], gpus: Option<&[u8]>) -> [u8; 64] {
    let mut h = Sha512::new();
    h.update(b"ward-e2e-v1\0");
    for field in [nonce, key_config] {
        h.update((field.len() as u16).to_be_bytes());
        h.update(field);
    }
    h.update(Sha256::digest(gpus.unwrap_or_default()));
    h.finalize().into()
}

/// Checks that `evidence_report_data` (from verified evidence) binds `nonce`, `key_config` and
/// `gpus`.
pub fn check_binding(
    evidence_report_data: &[u8],
    nonce: &[u8],
    key_config: &[u8],
    gpus: Option<&[u8]>,
) -> Result<(), E2eError> {
    if !(32..=64).contains(&nonce.len()) {
        return Err(E2eError::Binding(format!(
            "the nonce is {} bytes, not 32 to 64",
            nonce.len()
        )));
    }
    let want = report_data(nonce, key_config, gpus);
    if evidence_report_data.get(..64) != Some(&want[..]) {
        return Err(E2eError::Binding(
            "the evidence's report data is not H(nonce, key configuration, GPU evidence)".into(),
        ));
    }
    Ok(())
}

/// QUIC variable-length integer (RFC 9000 section 16), as OHTTP's chunks and Binary HTTP
/// frame their lengths.
pub fn put_varint(out: &mut Vec<u8>, v: u64) {
    if v < 1 << 6 {
        out.push(v as u8);
    } else if v < 1 << 14 {
        out.extend_from_slice(&((v as u16) | 0x4000).to_be_bytes());
    } else if v < 1 << 30 {
        out.extend_from_slice(&((v as u32) | 0x8000_0000).to_be_bytes());
    } else {
        out.extend_from_slice(&(v | 0xc000_0000_0000_0000).to_be_bytes());
    }
}

/// Reads a varint from the front of `buf`: (value, bytes used), or None if incomplete.
fn get_varint(buf: &[u8]) -> Option<(u64, usize)> {
    let first = *buf.first()?;
    let len = 1usize << (first >> 6);
    let bytes = buf.get(..len)?;
    let mut v = u64::from(first & 0x3f);
    for b in &bytes[1..] {
        v = (v << 8) | u64::from(*b);
    }
    Some((v, len))
}

/// The response key and nonce (RFC 9458 section 4.4).
fn response_keys(
    secret: &[u8],
    enc: &[u8],
    response_nonce: &[u8],
) -> (zeroize::Zeroizing<[u8; 32]>, [u8; 12]) {
    let mut salt = Vec::with_capacity(enc.len() + response_nonce.len());
    salt.extend_from_slice(enc);
    salt.extend_from_slice(response_nonce);
    let hk = hkdf::Hkdf::<Sha256>::new(Some(&salt), secret);
    let mut key = zeroize::Zeroizing::new([0u8; 32]);
    let mut nonce = [0u8; 12];
    // Lengths are far below HKDF-SHA256's 8160-byte limit.
    let _ = hk.expand(b"key", &mut key[..]);
    let _ = hk.expand(b"nonce", &mut nonce);
    (key, nonce)
}

fn chunk_nonce(base: &[u8; 12], index: u64) -> [u8; 12] {
    let mut n = *base;
    for (b, c) in n[4..].iter_mut().zip(index.to_be_bytes()) {
        *b ^= c;
    }
    n
}

const FINAL_AAD: &[u8] = b"final";
