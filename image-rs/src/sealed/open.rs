//! Opening sealed files held in memory: a [`SealedOpener`] verifies the header with the KEK
//! (and the policy digest), then opens any chunk by index (random access) or the whole file on
//! all cores into one [`PlaintextBuffer`], checking the plaintext SHA-256.
//!
//! Never hands out plaintext whose tag did not hold, and never a whole file before its digest
//! held; buffers of failed opens are dropped, so zeroized.

use std::num::NonZeroUsize;

use super::SealedError;
use super::backend::{ChunkCipher, PlaintextHasher, chunk_cipher, plaintext_hasher};
use super::header::{SealedHeader, TAG_LEN};
use super::keys::{Kek, authenticate};
use super::parallel::{Ciphertext, default_threads, open_chunks};
use super::plaintext::PlaintextBuffer;
use crate::digest::Digest;

/// How to open.
#[derive(Clone, Debug, Default)]
pub struct OpenOptions {
    /// The plaintext digest policy pins; the header must record exactly this one.
    pub expected_digest: Option<Digest>,
    /// Decryption threads; all cores when `None`.
    pub threads: Option<NonZeroUsize>,
}

impl OpenOptions {
    /// Pins the plaintext digest.
    pub fn expect_digest(mut self, digest: Digest) -> OpenOptions {
        self.expected_digest = Some(digest);
        self
    }

    /// Sets the number of decryption threads.
    pub fn with_threads(mut self, threads: NonZeroUsize) -> OpenOptions {
        self.threads = Some(threads);
        self
    }

    pub(crate) fn thread_count(&self) -> NonZeroUsize {
        self.threads.unwrap_or_else(default_threads)
    }
}

/// A whole opened file: its verified header and its plaintext.
#[derive(Debug)]
pub struct OpenedFile {
    /// The authenticated header (name, length, digest, KEK id).
    pub header: SealedHeader,
    /// The plaintext, whose SHA-256 equals the header's.
    pub plaintext: PlaintextBuffer,
}

/// A sealed file whose header held under the KEK: opens its chunks.
pub struct SealedOpener {
    header: SealedHeader,
    cipher: ChunkCipher,
}

impl std::fmt::Debug for SealedOpener {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SealedOpener")
            .field("header", &self.header)
            .finish_non_exhaustive()
    }
}

impl SealedOpener {
    /// Parses the header at the start of `bytes` (the header alone, or the whole file) and
    /// verifies it with `kek`: KEK fingerprint, header MAC, then `expected_digest` if given.
    pub fn new(
        bytes: &[u8],
        kek: &Kek,
        expected_digest: Option<&Digest>,
    ) -> Result<SealedOpener, SealedError> {
        SealedOpener::from_header(SealedHeader::parse(bytes)?, kek, expected_digest)
    }

    /// Verifies an already parsed header, as [`SealedOpener::new`] does.
    pub fn from_header(
        header: SealedHeader,
        kek: &Kek,
        expected_digest: Option<&Digest>,
    ) -> Result<SealedOpener, SealedError> {
        let data_key = authenticate(&header, kek)?;
        if let Some(expected) = expected_digest
            && expected != header.plaintext_sha256()
        {
            return Err(SealedError::PolicyDigestMismatch {
                name: header.name().to_string(),
                expected: expected.clone(),
                header: header.plaintext_sha256().clone(),
            });
        }
        let cipher = chunk_cipher(&data_key)?;
        Ok(SealedOpener { header, cipher })
    }

    /// The verified header.
    pub fn header(&self) -> &SealedHeader {
        &self.header
    }

    /// Number of chunks.
    pub fn chunk_count(&self) -> u64 {
        self.header.layout().chunk_count()
    }

    /// Opens every chunk into `out` on `threads` threads, hashing in order; see
    /// [`open_chunks`] for what `next` supplies.
    pub(crate) fn open_chunks<'a, F>(
        &self,
        out: &'a mut [u8],
        threads: NonZeroUsize,
        hasher: &mut PlaintextHasher,
        next: F,
    ) -> Result<(), SealedError>
    where
        F: FnMut(u64, &mut [u8]) -> Result<(Ciphertext<'a>, [u8; TAG_LEN]), SealedError>,
    {
        open_chunks(
            &self.cipher,
            &self.header.layout(),
            out,
            threads,
            hasher,
            next,
        )
    }

    /// Opens chunk `index` from its sealed bytes (ciphertext then tag, as found at
    /// [`SealedHeader::chunk_range`]) into `out`, which must be its plaintext length.
    pub fn open_chunk_into(
        &self,
        index: u64,
        sealed_chunk: &[u8],
        out: &mut [u8],
    ) -> Result<(), SealedError> {
        let layout = self.header.layout();
        let plain = layout.chunk_plaintext_len(index)?;
        let expected = plain + TAG_LEN;
        if sealed_chunk.len() != expected || out.len() != plain {
            return Err(SealedError::ChunkLength {
                index,
                expected,
                actual: sealed_chunk.len(),
            });
        }
        let (body, tag) = sealed_chunk.split_at(plain);
        let tag = <&[u8; TAG_LEN]>::try_from(tag).map_err(|_| SealedError::ChunkLength {
            index,
            expected,
            actual: sealed_chunk.len(),
        })?;
        out.copy_from_slice(body);
        self.cipher
            .open_in_place(index, layout.is_last(index), out, tag)
    }

    /// Opens chunk `index` from its sealed bytes into a new buffer (random access).
    pub fn open_chunk(
        &self,
        index: u64,
        sealed_chunk: &[u8],
    ) -> Result<PlaintextBuffer, SealedError> {
        let plain = self.header.layout().chunk_plaintext_len(index)?;
        let mut out = PlaintextBuffer::allocate(plain as u64)?;
        self.open_chunk_into(index, sealed_chunk, &mut out)?;
        Ok(out)
    }

    /// Opens the whole file `sealed` (header included, exactly [`SealedHeader::sealed_len`]
    /// bytes) on `threads` threads into one buffer and checks the plaintext SHA-256.
    pub fn open_file(
        &self,
        sealed: &[u8],
        threads: NonZeroUsize,
    ) -> Result<OpenedFile, SealedError> {
        let expected = self.header.sealed_len();
        let actual = sealed.len() as u64;
        if actual < expected {
            return Err(SealedError::Truncated { expected, actual });
        }
        if actual > expected {
            return Err(SealedError::TrailingData { expected, actual });
        }
        if sealed.get(..self.header.len()) != Some(self.header.as_bytes()) {
            // The caller verified another header than the one these bytes start with.
            return Err(SealedError::HeaderAuthentication {
                name: self.header.name().to_string(),
            });
        }
        let layout = self.header.layout();
        let body = sealed.get(self.header.len()..).unwrap_or_default();
        let mut out = PlaintextBuffer::allocate(layout.plaintext_len())?;

        // Workers decrypt each chunk from `body` straight into its plaintext slot.
        let mut hasher = plaintext_hasher();
        let mut sealed_rest = body;
        self.open_chunks(&mut out, threads, &mut hasher, |index, slot| {
            let (chunk, more) = sealed_rest
                .split_at_checked(slot.len() + TAG_LEN)
                .ok_or(SealedError::Truncated { expected, actual })?;
            sealed_rest = more;
            let (ct, tag) = chunk.split_at(slot.len());
            let tag = <[u8; TAG_LEN]>::try_from(tag).map_err(|_| SealedError::ChunkLength {
                index,
                expected: slot.len() + TAG_LEN,
                actual: chunk.len(),
            })?;
            Ok((Ciphertext::At(ct), tag))
        })?;
        let actual_digest = hasher.finish()?;
        if &actual_digest != self.header.plaintext_sha256() {
            return Err(SealedError::PlaintextDigestMismatch {
                name: self.header.name().to_string(),
                header: self.header.plaintext_sha256().clone(),
                actual: actual_digest,
            });
        }
        Ok(OpenedFile {
            header: self.header.clone(),
            plaintext: out,
        })
    }
}

/// Opens a whole sealed file held in memory: header, policy digest, length, every chunk on
/// all cores (or `options.threads`), plaintext SHA-256.
pub fn open(sealed: &[u8], kek: &Kek, options: &OpenOptions) -> Result<OpenedFile, SealedError> {
    SealedOpener::new(sealed, kek, options.expected_digest.as_ref())?
        .open_file(sealed, options.thread_count())
}
