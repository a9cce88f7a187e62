//! Content digests (`sha256:<64 hex>`): parsed once, compared in constant shape, and a
//! streaming verifier that every byte from a registry passes through.

use std::fmt;
use std::io::{self, Read};

use sha2::{Digest as _, Sha256};

/// A validated `sha256:` digest.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Digest([u8; 32]);

/// A digest string ward does not accept.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("`{0}` is not a sha256 digest (sha256:<64 lowercase hex>)")]
pub struct BadDigest(pub String);

impl Digest {
    /// Parses `sha256:<64 lowercase hex>`; other algorithms are refused.
    pub fn parse(s: &str) -> Result<Digest, BadDigest> {
        let hexpart = s
            .strip_prefix("sha256:")
            .ok_or_else(|| BadDigest(s.to_string()))?;
        if hexpart.len() != 64
            || !hexpart
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        {
            return Err(BadDigest(s.to_string()));
        }
        let mut out = [0u8; 32];
        hex::decode_to_slice(hexpart, &mut out).map_err(|_| BadDigest(s.to_string()))?;
        Ok(Digest(out))
    }

    /// The digest of `bytes`.
    pub fn of(bytes: &[u8]) -> Digest {
        Digest(Sha256::digest(bytes).into())
    }

    /// A digest from its 32 raw bytes (a sealed header's plaintext SHA-256).
    pub fn from_bytes(bytes: [u8; 32]) -> Digest {
        Digest(bytes)
    }

    /// The 32 raw bytes.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// The hex part, for file names.
    pub fn hex(&self) -> String {
        hex::encode(self.0)
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "sha256:{}", hex::encode(self.0))
    }
}

impl fmt::Debug for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Digest({self})")
    }
}

/// Hashes everything read through it; [`VerifyingReader::finish`] compares with the expected
/// digest and size. Readers downstream see bytes before they are verified, so nothing may be
/// published before `finish` returns `Ok`.
pub struct VerifyingReader<R> {
    inner: R,
    hasher: Sha256,
    read: u64,
    limit: u64,
}

/// What [`VerifyingReader::finish`] found wrong.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum VerifyError {
    #[error("content digest is {found}, not {expected}")]
    Digest { expected: Digest, found: Digest },
    #[error("content is {found} bytes, not {expected}")]
    Size { expected: u64, found: u64 },
}

impl<R: Read> VerifyingReader<R> {
    /// Wraps `inner`; reading more than `limit` bytes is an error.
    pub fn new(inner: R, limit: u64) -> VerifyingReader<R> {
        VerifyingReader {
            inner,
            hasher: Sha256::new(),
            read: 0,
            limit,
        }
    }

    /// Drains what is left, then checks the digest and (when known) the size.
    pub fn finish(
        mut self,
        expected: &Digest,
        size: Option<u64>,
    ) -> io::Result<Result<(), VerifyError>> {
        io::copy(&mut self, &mut io::sink())?;
        let found = Digest(self.hasher.finalize().into());
        if let Some(size) = size
            && size != self.read
        {
            return Ok(Err(VerifyError::Size {
                expected: size,
                found: self.read,
            }));
        }
        if &found != expected {
            return Ok(Err(VerifyError::Digest {
                expected: expected.clone(),
                found,
            }));
        }
        Ok(Ok(()))
    }
}

impl<R: Read> Read for VerifyingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.read = self.read.saturating_add(n as u64);
        if self.read > self.limit {
            return Err(io::Error::other(format!(
                "content exceeds {} bytes",
                self.limit
            )));
        }
        self.hasher.update(buf.get(..n).unwrap_or_default());
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_only_sha256() {
        let d = Digest::of(b"abc");
        assert_eq!(Digest::parse(&d.to_string()).unwrap(), d);
        for bad in [
            "",
            "sha256:",
            "sha512:00",
            "sha256:ABCDEF",
            &format!("sha256:{}", "0".repeat(63)),
            &"0".repeat(64),
        ] {
            assert!(Digest::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn verifying_reader_checks_digest_size_and_limit() {
        let data = b"hello world".to_vec();
        let d = Digest::of(&data);
        let r = VerifyingReader::new(&data[..], 100);
        assert_eq!(r.finish(&d, Some(11)).unwrap(), Ok(()));
        let r = VerifyingReader::new(&data[..], 100);
        assert!(matches!(
            r.finish(&d, Some(12)).unwrap(),
            Err(VerifyError::Size { .. })
        ));
        let r = VerifyingReader::new(&b"hello worle"[..], 100);
        assert!(matches!(
            r.finish(&d, None).unwrap(),
            Err(VerifyError::Digest { .. })
        ));
        let r = VerifyingReader::new(&data[..], 5);
        assert!(r.finish(&d, None).is_err());
    }
}
