//! The bulk primitives of the sealed format, each behind one function so that the backend is
//! chosen in one place: AES-256-GCM per chunk ([`chunk_cipher`]) and SHA-256 over the whole
//! plaintext ([`plaintext_hasher`]). Chosen by `tests/src/bin/bench-aead.rs`; the figures are in
//! `docs/sealed-model.md`, "Measurements": aws-lc-rs and ring tie (both at OpenSSL's speed and
//! 3-6x RustCrypto `aes-gcm`); aws-lc-rs is already in the tree through rustls and can open a
//! chunk from the sealed bytes straight into the plaintext buffer (`open_separate_gather`).
//!
//! Owns the nonce construction. Never returns unauthenticated plaintext as such: on a failed
//! tag the buffer's content is unspecified, and callers drop (and so zeroize) it.

use aws_lc_rs::aead::{AES_256_GCM, Aad, LessSafeKey, Nonce, UnboundKey};

use super::SealedError;
use super::header::TAG_LEN;
use super::keys::DataKey;

/// nonce_i = u64 i (big-endian) || 00 00 00 || last flag.
pub(crate) fn nonce(index: u64, last: bool) -> [u8; 12] {
    let mut n = [0u8; 12];
    let (idx, rest) = n.split_at_mut(8);
    idx.copy_from_slice(&index.to_be_bytes());
    if let Some(flag) = rest.last_mut() {
        *flag = u8::from(last);
    }
    n
}

/// AES-256-GCM under one file's data key.
pub(crate) struct ChunkCipher {
    key: LessSafeKey,
}

/// The one place the bulk AEAD backend is chosen: aws-lc-rs (see the module docs for why).
/// Swapping it means changing this function and `ChunkCipher`'s three methods, nothing else.
pub(crate) fn chunk_cipher(data_key: &DataKey) -> Result<ChunkCipher, SealedError> {
    let key = UnboundKey::new(&AES_256_GCM, data_key.0.as_slice())
        .map_err(|_| SealedError::Crypto("AES-256-GCM refused a 32-byte key"))?;
    Ok(ChunkCipher {
        key: LessSafeKey::new(key),
    })
}

impl ChunkCipher {
    /// Encrypts chunk `index` in place and returns its tag.
    pub(crate) fn seal_in_place(
        &self,
        index: u64,
        last: bool,
        buf: &mut [u8],
    ) -> Result<[u8; TAG_LEN], SealedError> {
        let tag = self
            .key
            .seal_in_place_separate_tag(
                Nonce::assume_unique_for_key(nonce(index, last)),
                Aad::empty(),
                buf,
            )
            .map_err(|_| SealedError::Crypto("AES-256-GCM refused to seal a chunk"))?;
        <[u8; TAG_LEN]>::try_from(tag.as_ref())
            .map_err(|_| SealedError::Crypto("AES-256-GCM tag is not 16 bytes"))
    }

    /// Decrypts chunk `index` in place if `tag` holds.
    pub(crate) fn open_in_place(
        &self,
        index: u64,
        last: bool,
        buf: &mut [u8],
        tag: &[u8; TAG_LEN],
    ) -> Result<(), SealedError> {
        self.key
            .open_in_place_separate_tag(
                Nonce::assume_unique_for_key(nonce(index, last)),
                Aad::empty(),
                tag,
                buf,
            )
            .map(|_| ())
            .map_err(|_| SealedError::ChunkAuthentication { index })
    }

    /// Decrypts chunk `index` from `ciphertext` into `out` (same length) if `tag` holds.
    pub(crate) fn open_into(
        &self,
        index: u64,
        last: bool,
        ciphertext: &[u8],
        tag: &[u8; TAG_LEN],
        out: &mut [u8],
    ) -> Result<(), SealedError> {
        self.key
            .open_separate_gather(
                Nonce::assume_unique_for_key(nonce(index, last)),
                Aad::empty(),
                ciphertext,
                tag,
                out,
            )
            .map_err(|_| SealedError::ChunkAuthentication { index })
    }
}

/// SHA-256 over the plaintext, fed in order.
pub(crate) struct PlaintextHasher(aws_lc_rs::digest::Context);

/// The one place the plaintext SHA-256 implementation is chosen: aws-lc-rs, equal to `sha2` and
/// `ring` on bytes from memory and faster on bytes still in cache, which is what the hasher
/// mostly reads right behind the decrypting workers.
pub(crate) fn plaintext_hasher() -> PlaintextHasher {
    PlaintextHasher(aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256))
}

impl PlaintextHasher {
    pub(crate) fn update(&mut self, bytes: &[u8]) {
        self.0.update(bytes);
    }

    pub(crate) fn finish(self) -> Result<crate::digest::Digest, SealedError> {
        let d = self.0.finish();
        let bytes = <[u8; 32]>::try_from(d.as_ref())
            .map_err(|_| SealedError::Crypto("SHA-256 digest is not 32 bytes"))?;
        Ok(crate::digest::Digest::from_bytes(bytes))
    }
}
