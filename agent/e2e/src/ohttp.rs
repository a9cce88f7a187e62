//! Oblivious HTTP (RFC 9458) and its chunked variant (draft-ietf-ohai-chunked-ohttp) on the
//! same attested key: standard clients (and relays, which then hide who asks) reach wardd's
//! inference API with Binary HTTP (RFC 9292) requests. This module owns the encapsulation; the
//! BHTTP inside and the dispatch are wardd's (`agent/src/inference_api/ohttp.rs`).
//!
//! Request (both): `hdr || enc || ...` with `hdr = key_id || kem_id || kdf_id || aead_id`, the
//! key configuration's, and `info = label || 00 || hdr`.
//! - RFC 9458: label `message/bhttp request`, then one ciphertext (AAD empty).
//! - chunked: label `message/bhttp chunked request`, then chunks `varint(len) || ct` (len >=
//!   1, AAD empty) and a final `varint(0) || ct` running to the end (AAD `final`).
//!
//! Any of the key configuration's AEADs (AES-256-GCM, ChaCha20-Poly1305, AES-128-GCM), as the
//! request header names it. Response: `response_nonce` (max(Nn, Nk) bytes), keys from
//! `Export("message/bhttp response" | "message/bhttp chunked response", max(Nn, Nk))` as in RFC 9458
//! section 4.4, then one ciphertext (RFC 9458, AAD empty, no length) or chunks framed as the
//! request's, the nonce of chunk i being `aead_nonce XOR i`.
//!
//! Replay: RFC 9458 section 6.5 leaves it to the gateway; wardd takes the time from the inner
//! request's `Date` (section 6.5.1) and refuses an `enc` it has accepted, with the same window
//! and cache as its own encrypted requests ([`ServerKey::accept_ohttp`]).

use aes_gcm::aead::{Aead as _, KeyInit as _, Payload};
use sha2::{Digest as _, Sha256};
use zeroize::Zeroizing;

use super::server::ServerKey;
use super::suite::Aead;
use super::{E2eError, FINAL_AAD, MAX_REQUEST, chunk_nonce, get_varint, put_varint};

/// HPKE `info` label of an RFC 9458 request.
pub const OHTTP_REQUEST_LABEL: &[u8] = b"message/bhttp request";
/// Exporter label of an RFC 9458 response.
pub const OHTTP_RESPONSE_LABEL: &[u8] = b"message/bhttp response";
/// HPKE `info` label of a chunked request.
pub const CHUNKED_REQUEST_LABEL: &[u8] = b"message/bhttp chunked request";
/// Exporter label of a chunked response.
pub const CHUNKED_RESPONSE_LABEL: &[u8] = b"message/bhttp chunked response";

/// Media types (RFC 9458 section 9, the chunked draft section 7).
pub const OHTTP_KEYS_TYPE: &str = "application/ohttp-keys";
pub const OHTTP_REQUEST_TYPE: &str = "message/ohttp-req";
pub const OHTTP_RESPONSE_TYPE: &str = "message/ohttp-res";
pub const CHUNKED_REQUEST_TYPE: &str = "message/ohttp-chunked-req";
pub const CHUNKED_RESPONSE_TYPE: &str = "message/ohttp-chunked-res";

/// A decapsulated request: its Binary HTTP bytes, to be accepted ([`ServerKey::accept_ohttp`])
/// once their `Date` is read, and the sealer for the answer.
pub struct OhttpRequest {
    pub bhttp: Zeroizing<Vec<u8>>,
    seen: [u8; 32],
    pub sealer: OhttpSealer,
}

impl ServerKey {
    /// The key configuration as `application/ohttp-keys` (RFC 9458 section 3.2): one
    /// configuration, length-prefixed. The same bytes the attestation binds, framed.
    pub fn ohttp_keys(&self) -> Vec<u8> {
        let config = self.config.encode();
        let mut out = Vec::with_capacity(config.len() + 2);
        // A configuration is at most 9 + 1216 bytes.
        out.extend_from_slice(&(config.len() as u16).to_be_bytes());
        out.extend_from_slice(&config);
        out
    }

    /// Decapsulates an Oblivious HTTP request (`chunked`: the chunked variant's).
    pub fn open_ohttp(&self, message: &[u8], chunked: bool) -> Result<OhttpRequest, E2eError> {
        if message.len() > MAX_REQUEST {
            return Err(E2eError::Malformed("request too large".into()));
        }
        // The key's own header with either AEAD the configuration offers.
        let aead = message
            .get(5..7)
            .and_then(|a| Aead::from_id(u16::from_be_bytes([a[0], a[1]])))
            .ok_or(E2eError::WrongKey)?;
        let hdr = self.config.header_for(aead);
        let rest = message.strip_prefix(&hdr[..]).ok_or(E2eError::WrongKey)?;
        let nenc = self.config.suite.nenc();
        let enc = rest
            .get(..nenc)
            .ok_or_else(|| E2eError::Malformed("too short".into()))?;
        let body = &rest[nenc..];
        let (label, response_label) = if chunked {
            (CHUNKED_REQUEST_LABEL, CHUNKED_RESPONSE_LABEL)
        } else {
            (OHTTP_REQUEST_LABEL, OHTTP_RESPONSE_LABEL)
        };
        let mut info = label.to_vec();
        info.push(0);
        info.extend_from_slice(&hdr);
        let chunks = if chunked {
            split_chunks(body)?
        } else {
            vec![(body, &b""[..])]
        };
        let (bhttp, secret) =
            super::suite::open_chunks(&self.secret, aead, enc, &info, &chunks, response_label)?;
        Ok(OhttpRequest {
            bhttp,
            seen: Sha256::digest(enc).into(),
            sealer: OhttpSealer::new(&secret, enc, aead, chunked),
        })
    }

    /// Accepts a decapsulated request whose inner `Date` says it was made at `created`:
    /// refused when too far from `now` or when its `enc` was accepted before.
    pub fn accept_ohttp(
        &self,
        request: &OhttpRequest,
        created: u64,
        now: u64,
    ) -> Result<(), E2eError> {
        self.accept(request.seen, created, now)
    }
}

/// A ciphertext and its AAD.
type Chunk<'a> = (&'a [u8], &'a [u8]);

/// A chunked body as (ciphertext, AAD) pairs: non-final chunks, then the final one.
fn split_chunks(mut body: &[u8]) -> Result<Vec<Chunk<'_>>, E2eError> {
    let mut chunks = Vec::new();
    loop {
        let (len, used) =
            get_varint(body).ok_or_else(|| E2eError::Malformed("a chunk is cut short".into()))?;
        body = &body[used..];
        if len == 0 {
            chunks.push((body, FINAL_AAD));
            return Ok(chunks);
        }
        let len = usize::try_from(len)
            .ok()
            .filter(|l| *l <= body.len())
            .ok_or_else(|| E2eError::Malformed("a chunk is cut short".into()))?;
        chunks.push((&body[..len], &b""[..]));
        body = &body[len..];
    }
}

/// Seals the answer to one Oblivious HTTP request.
pub struct OhttpSealer {
    aead: Aead,
    /// max(Nn, Nk) bytes.
    response_nonce: Vec<u8>,
    /// Nk bytes.
    key: Zeroizing<Vec<u8>>,
    nonce: [u8; 12],
    next: u64,
    chunked: bool,
    finished: bool,
}

impl OhttpSealer {
    fn new(secret: &[u8], enc: &[u8], aead: Aead, chunked: bool) -> OhttpSealer {
        // RFC 9458 section 4.4: response_nonce of max(Nn, Nk) bytes, salt = enc || nonce,
        // key = Expand(prk, "key", Nk), nonce = Expand(prk, "nonce", Nn).
        let mut response_nonce = vec![0u8; aead.nk().max(12)];
        rand::RngCore::fill_bytes(&mut rand::thread_rng(), &mut response_nonce);
        let mut salt = enc.to_vec();
        salt.extend_from_slice(&response_nonce);
        let hk = hkdf::Hkdf::<Sha256>::new(Some(&salt), secret);
        let mut key = Zeroizing::new(vec![0u8; aead.nk()]);
        let mut nonce = [0u8; 12];
        // Lengths are far below HKDF-SHA256's 8160-byte limit.
        let _ = hk.expand(b"key", &mut key[..]);
        let _ = hk.expand(b"nonce", &mut nonce);
        OhttpSealer {
            aead,
            response_nonce,
            key,
            nonce,
            next: 0,
            chunked,
            finished: false,
        }
    }

    fn seal(&mut self, data: &[u8], aad: &[u8]) -> Result<Vec<u8>, E2eError> {
        if self.finished {
            return Err(E2eError::AfterFinal);
        }
        let nonce = chunk_nonce(&self.nonce, self.next);
        self.next += 1;
        let failed = |_| E2eError::Malformed("response too large".into());
        match self.aead {
            Aead::Aes256Gcm => aes_gcm::Aes256Gcm::new_from_slice(&self.key[..])
                .map_err(|_| E2eError::Malformed("response key".into()))?
                .encrypt((&nonce).into(), Payload { msg: data, aad })
                .map_err(failed),
            Aead::Aes128Gcm => aes_gcm::Aes128Gcm::new_from_slice(&self.key[..])
                .map_err(|_| E2eError::Malformed("response key".into()))?
                .encrypt((&nonce).into(), Payload { msg: data, aad })
                .map_err(failed),
            Aead::ChaCha20Poly1305 => {
                use chacha20poly1305::aead::{AeadInOut as _, KeyInit as _};
                let cipher = chacha20poly1305::ChaCha20Poly1305::new_from_slice(&self.key[..])
                    .map_err(|_| E2eError::Malformed("response key".into()))?;
                let mut out = data.to_vec();
                let tag = cipher
                    .encrypt_inout_detached(&nonce.into(), aad, out.as_mut_slice().into())
                    .map_err(|_| E2eError::Malformed("response too large".into()))?;
                out.extend_from_slice(&tag);
                Ok(out)
            }
        }
    }

    /// The whole answer of an RFC 9458 request: `response_nonce || ct`.
    pub fn seal_whole(mut self, bhttp: &[u8]) -> Result<Vec<u8>, E2eError> {
        let ct = self.seal(bhttp, b"")?;
        let mut out = self.response_nonce.clone();
        out.extend_from_slice(&ct);
        Ok(out)
    }

    /// The bytes that start a chunked answer.
    pub fn prelude(&self) -> &[u8] {
        &self.response_nonce
    }

    /// The next chunk of a chunked answer (`last`: the final one, which ends it). A non-final
    /// chunk must not be empty.
    pub fn seal_chunk(&mut self, data: &[u8], last: bool) -> Result<Vec<u8>, E2eError> {
        if !self.chunked || (!last && data.is_empty()) {
            return Err(E2eError::Malformed("not a chunk".into()));
        }
        let ct = self.seal(data, if last { FINAL_AAD } else { b"" })?;
        self.finished = last;
        let mut out = Vec::with_capacity(ct.len() + 8);
        put_varint(&mut out, if last { 0 } else { ct.len() as u64 });
        out.extend_from_slice(&ct);
        Ok(out)
    }
}
