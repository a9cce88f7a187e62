//! The ocicrypt layer cipher `AES_256_CTR_HMAC_SHA256`, streaming: [`LayerDecryptor`] and its
//! owner-side counterpart [`LayerEncryptor`].
//!
//! As containers/ocicrypt `blockcipher/blockcipher_aes_ctr.go` does it: AES-256 in CTR mode
//! with the 16-byte nonce as the initial counter block, incremented as one big-endian 128-bit
//! integer (Go's `cipher.NewCTR`); HMAC-SHA256 keyed with the same 32-byte key over the whole
//! ciphertext, compared with the pubopts `hmac` when the ciphertext ends.
//!
//! **The plaintext a [`LayerDecryptor`] returns before it returns end of file (`Ok(0)`) is
//! not authenticated.** A CTR stream can be altered bit by bit; only the HMAC at EOF says
//! whether it was. Callers must treat everything read as provisional (unpack into a staging
//! directory) and publish nothing until a read returned `Ok(0)`; an altered layer ends in an
//! `io::Error` of kind `InvalidData` wrapping [`LayerError::HmacMismatch`] instead.
//!
//! Owns the layer cipher only. Never logs keys, nonces or plaintext.

use std::io::{self, Read};

use aes::Aes256;
use ctr::cipher::{KeyIvInit, StreamCipher};
use hmac::{Hmac, Mac};
use rand::RngCore;
use rand::rngs::OsRng;
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

use super::annotations::{PrivateOptions, PublicOptions};

type Aes256Ctr = ctr::Ctr128BE<Aes256>;
type HmacSha256 = Hmac<Sha256>;

/// Why a layer did not decrypt or encrypt.
#[derive(Debug, thiserror::Error, PartialEq, Eq, Clone)]
pub enum LayerError {
    /// The HMAC over the whole ciphertext is not the pubopts `hmac`: the blob was altered, or
    /// the options belong to another layer. Nothing read from this layer may be used.
    #[error(
        "layer HMAC-SHA256 does not match the `hmac` of its pubopts: the encrypted layer was altered or is not the one the key was made for"
    )]
    HmacMismatch,
    /// The CTR keystream cannot go on (2^128 blocks: not reachable in practice).
    #[error("AES-CTR keystream exhausted")]
    KeystreamExhausted,
    /// [`LayerEncryptor::finish`] was called before the input reached end of file.
    #[error("the layer encryptor was finished before its input reached end of file")]
    NotFinished,
}

impl From<LayerError> for io::Error {
    fn from(e: LayerError) -> io::Error {
        io::Error::new(io::ErrorKind::InvalidData, e)
    }
}

/// If `e` is (or wraps) a [`LayerError`], that error.
pub fn layer_error(e: &io::Error) -> Option<&LayerError> {
    e.get_ref()
        .and_then(|inner| inner.downcast_ref::<LayerError>())
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Reading,
    Verified,
    Failed,
}

/// Decrypts an `AES_256_CTR_HMAC_SHA256` layer as it is read, and checks its HMAC at EOF.
/// See the module docs: bytes read before `Ok(0)` are unauthenticated.
pub struct LayerDecryptor<R: Read> {
    inner: R,
    cipher: Aes256Ctr,
    mac: HmacSha256,
    expected: [u8; 32],
    state: State,
    ciphertext_bytes: u64,
}

impl<R: Read> LayerDecryptor<R> {
    /// Decrypts `inner` (the encrypted blob) with the layer's private and public options.
    pub fn new(inner: R, private: &PrivateOptions, public: &PublicOptions) -> LayerDecryptor<R> {
        let key = private.symkey();
        LayerDecryptor {
            inner,
            cipher: Aes256Ctr::new(key.into(), private.nonce().into()),
            mac: keyed_mac(key),
            expected: public.hmac,
            state: State::Reading,
            ciphertext_bytes: 0,
        }
    }

    /// Whether EOF was reached and the HMAC matched: only then is what was read authentic.
    pub fn is_verified(&self) -> bool {
        self.state == State::Verified
    }

    /// Ciphertext bytes read so far.
    pub fn bytes_read(&self) -> u64 {
        self.ciphertext_bytes
    }
}

fn keyed_mac(key: &[u8; 32]) -> HmacSha256 {
    // HMAC takes keys of any length; 32 bytes cannot fail, and the fallback is never taken.
    <HmacSha256 as Mac>::new_from_slice(key)
        .unwrap_or_else(|_| <HmacSha256 as hmac::digest::KeyInit>::new(&Default::default()))
}

impl<R: Read> Read for LayerDecryptor<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self.state {
            State::Verified => return Ok(0),
            State::Failed => return Err(LayerError::HmacMismatch.into()),
            State::Reading => {}
        }
        if buf.is_empty() {
            return Ok(0);
        }
        let n = self.inner.read(buf)?;
        if n == 0 {
            // End of the ciphertext: the verdict before any EOF is reported.
            if self.mac.clone().verify_slice(&self.expected).is_ok() {
                self.state = State::Verified;
                return Ok(0);
            }
            self.state = State::Failed;
            return Err(LayerError::HmacMismatch.into());
        }
        let chunk = buf
            .get_mut(..n)
            .ok_or_else(|| io::Error::other("inner reader returned more bytes than asked"))?;
        self.mac.update(chunk);
        self.cipher
            .try_apply_keystream(chunk)
            .map_err(|_| io::Error::from(LayerError::KeystreamExhausted))?;
        self.ciphertext_bytes = self.ciphertext_bytes.saturating_add(n as u64);
        Ok(n)
    }
}

/// The options an encryption produced: the private ones go into key wraps, the public ones
/// into `org.opencontainers.image.enc.pubopts`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LayerKeys {
    /// Layer key, nonce and the digest of the plaintext blob.
    pub private: PrivateOptions,
    /// The HMAC of the ciphertext.
    pub public: PublicOptions,
}

/// Encrypts a layer blob as it is read (owner side and tests). After the input reached EOF,
/// [`LayerEncryptor::finish`] gives the options for the annotations.
pub struct LayerEncryptor<R: Read> {
    inner: R,
    key: Zeroizing<[u8; 32]>,
    nonce: [u8; 16],
    cipher: Aes256Ctr,
    mac: HmacSha256,
    digest: Sha256,
    done: bool,
}

impl<R: Read> LayerEncryptor<R> {
    /// Encrypts `inner` (the plaintext blob) under a fresh random key and nonce.
    pub fn new(inner: R) -> LayerEncryptor<R> {
        let mut key = Zeroizing::new([0u8; 32]);
        OsRng.fill_bytes(&mut key[..]);
        let mut nonce = [0u8; 16];
        OsRng.fill_bytes(&mut nonce);
        LayerEncryptor::with_key(inner, key, nonce)
    }

    /// Encrypts with a given key and nonce. Never reuse a (key, nonce) pair for two blobs:
    /// CTR then leaks the XOR of the plaintexts.
    pub(crate) fn with_key(
        inner: R,
        key: Zeroizing<[u8; 32]>,
        nonce: [u8; 16],
    ) -> LayerEncryptor<R> {
        LayerEncryptor {
            inner,
            cipher: Aes256Ctr::new((&*key).into(), (&nonce).into()),
            mac: keyed_mac(&key),
            key,
            nonce,
            digest: Sha256::new(),
            done: false,
        }
    }

    /// The options for the annotations, once the input reached EOF.
    pub fn finish(self) -> Result<LayerKeys, LayerError> {
        if !self.done {
            return Err(LayerError::NotFinished);
        }
        let hmac: [u8; 32] = self.mac.finalize().into_bytes().into();
        let digest = format!("sha256:{}", hex::encode(self.digest.finalize()));
        Ok(LayerKeys {
            private: PrivateOptions::new(self.key, self.nonce, digest),
            public: PublicOptions { hmac },
        })
    }
}

impl<R: Read> Read for LayerEncryptor<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.done || buf.is_empty() {
            return Ok(0);
        }
        let n = self.inner.read(buf)?;
        if n == 0 {
            self.done = true;
            return Ok(0);
        }
        let chunk = buf
            .get_mut(..n)
            .ok_or_else(|| io::Error::other("inner reader returned more bytes than asked"))?;
        self.digest.update(&*chunk);
        self.cipher
            .try_apply_keystream(chunk)
            .map_err(|_| io::Error::from(LayerError::KeystreamExhausted))?;
        self.mac.update(chunk);
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn encrypt(plain: &[u8]) -> (Vec<u8>, LayerKeys) {
        let mut enc = LayerEncryptor::new(plain);
        let mut ct = Vec::new();
        enc.read_to_end(&mut ct).unwrap();
        (ct, enc.finish().unwrap())
    }

    /// Reads in odd-sized pieces so that chunk boundaries fall inside AES blocks.
    fn decrypt(ct: &[u8], keys: &LayerKeys) -> io::Result<Vec<u8>> {
        let mut dec = LayerDecryptor::new(ct, &keys.private, &keys.public);
        let mut out = Vec::new();
        let mut buf = [0u8; 7];
        loop {
            let n = dec.read(&mut buf)?;
            if n == 0 {
                assert!(dec.is_verified());
                return Ok(out);
            }
            out.extend_from_slice(&buf[..n]);
        }
    }

    #[test]
    fn round_trip_and_digest() {
        for len in [0usize, 1, 15, 16, 17, 1000, 70_000] {
            let plain: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
            let (ct, keys) = encrypt(&plain);
            assert_eq!(ct.len(), plain.len());
            assert_eq!(decrypt(&ct, &keys).unwrap(), plain, "len {len}");
            assert_eq!(
                keys.private.digest(),
                format!("sha256:{}", hex::encode(Sha256::digest(&plain)))
            );
        }
    }

    /// NIST SP 800-38A F.5.5 (CTR-AES256.Encrypt): the nonce is the initial counter block.
    #[test]
    fn ctr_mode_matches_sp800_38a() {
        let key: [u8; 32] =
            hex::decode("603deb1015ca71be2b73aef0857d77811f352c073b6108d72d9810a30914dff4")
                .unwrap()
                .try_into()
                .unwrap();
        let nonce: [u8; 16] = hex::decode("f0f1f2f3f4f5f6f7f8f9fafbfcfdfeff")
            .unwrap()
            .try_into()
            .unwrap();
        let plain = hex::decode(
            "6bc1bee22e409f96e93d7e117393172aae2d8a571e03ac9c9eb76fac45af8e51\
             30c81c46a35ce411e5fbc1191a0a52eff69f2445df4f9b17ad2b417be66c3710",
        )
        .unwrap();
        let mut enc = LayerEncryptor::with_key(plain.as_slice(), Zeroizing::new(key), nonce);
        let mut ct = Vec::new();
        enc.read_to_end(&mut ct).unwrap();
        assert_eq!(
            hex::encode(ct),
            "601ec313775789a5b7a7f504bbf3d228f443e3ca4d62b59aca84e990cacaf5c5\
             2b0930daa23de94ce87017ba2d84988ddfc9c58db67aada613c2dd08457941a6"
        );
    }

    #[test]
    fn counter_carries_across_the_whole_block() {
        // Go's cipher.NewCTR increments all 128 bits big-endian: ...ff -> next byte up.
        let key = Zeroizing::new([1u8; 32]);
        let mut nonce = [0u8; 16];
        nonce[8..].copy_from_slice(&[0xff; 8]);
        let mut enc = LayerEncryptor::with_key(&[0u8; 32][..], key.clone(), nonce);
        let mut ks = Vec::new();
        enc.read_to_end(&mut ks).unwrap();
        let mut next = [0u8; 16];
        next[7] = 1;
        let mut enc2 = LayerEncryptor::with_key(&[0u8; 16][..], key, next);
        let mut ks2 = Vec::new();
        enc2.read_to_end(&mut ks2).unwrap();
        assert_eq!(&ks[16..], &ks2[..]);
    }

    #[test]
    fn one_flipped_bit_fails_at_eof() {
        let plain = vec![42u8; 5000];
        let (mut ct, keys) = encrypt(&plain);
        ct[1234] ^= 0x10;
        let mut dec = LayerDecryptor::new(ct.as_slice(), &keys.private, &keys.public);
        let mut out = Vec::new();
        let err = dec.read_to_end(&mut out).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
        assert_eq!(layer_error(&err), Some(&LayerError::HmacMismatch));
        assert!(!dec.is_verified());
        // The error sticks.
        assert!(dec.read(&mut [0u8; 4]).is_err());
        // Truncation is tampering too.
        let (ct, keys) = encrypt(&plain);
        let err = decrypt(&ct[..4999], &keys).unwrap_err();
        assert_eq!(layer_error(&err), Some(&LayerError::HmacMismatch));
    }

    #[test]
    fn finish_before_eof_is_refused() {
        let mut enc = LayerEncryptor::new(&[1u8; 100][..]);
        let mut buf = [0u8; 10];
        assert_eq!(enc.read(&mut buf).unwrap(), 10);
        assert_eq!(enc.finish().unwrap_err(), LayerError::NotFinished);
    }
}
