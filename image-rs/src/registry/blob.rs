//! Blobs from a registry, streamed: every piece counted against a limit and the descriptor's
//! size as it arrives, hashed once, and the digest and size checked when the stream ends.
//!
//! A [`BlobStream`] hands pieces out before the blob is verified: the end of the stream (`None`)
//! is the verdict, and a consumer publishes nothing before it saw it.

use std::io::Write;
use std::path::Path;

use oci_client::Reference;
use sha2::Digest as _;

use super::{Descriptor, MAX_CONFIG, Registry, RegistryError, parse_digest};
use crate::digest::{Digest, VerifyError};

/// A blob being downloaded: pieces as they arrive, the verdict at the end.
pub struct BlobStream {
    response: reqwest::Response,
    hasher: sha2::Sha256,
    read: u64,
    /// What the descriptor says, or `None` when it is negative (then any size fails).
    size: Option<u64>,
    limit: u64,
    digest: Digest,
    name: String,
    ended: bool,
}

impl BlobStream {
    fn fetch_err(&self, detail: String) -> RegistryError {
        RegistryError::Fetch {
            what: format!("blob {}", self.digest),
            reference: self.name.clone(),
            detail,
        }
    }

    fn verify_err(&self, source: VerifyError) -> RegistryError {
        RegistryError::Verify {
            what: format!("blob {}", self.digest),
            reference: self.name.clone(),
            source,
        }
    }

    /// The next piece, or `None` once the whole blob arrived and its size and digest held.
    /// Bytes handed out before `None` are unverified.
    pub async fn next(&mut self) -> Result<Option<bytes::Bytes>, RegistryError> {
        if self.ended {
            return Ok(None);
        }
        let chunk = self
            .response
            .chunk()
            .await
            .map_err(|e| self.fetch_err(e.to_string()))?;
        let Some(chunk) = chunk else {
            return self.verdict().map(|()| None);
        };
        self.read = self.read.saturating_add(chunk.len() as u64);
        if self.read > self.limit {
            return Err(self.fetch_err(format!("blob exceeds {} bytes", self.limit)));
        }
        // More than the descriptor says is already wrong: stop reading now.
        if self.size.is_none_or(|s| self.read > s) {
            return Err(self.verify_err(VerifyError::Size {
                expected: self.size.unwrap_or(0),
                found: self.read,
            }));
        }
        self.hasher.update(&chunk);
        Ok(Some(chunk))
    }

    fn verdict(&mut self) -> Result<(), RegistryError> {
        self.ended = true;
        let found = Digest::from_bytes(std::mem::take(&mut self.hasher).finalize().into());
        if self.size != Some(self.read) {
            return Err(self.verify_err(VerifyError::Size {
                expected: self.size.unwrap_or(0),
                found: self.read,
            }));
        }
        if found != self.digest {
            return Err(self.verify_err(VerifyError::Digest {
                expected: self.digest.clone(),
                found,
            }));
        }
        Ok(())
    }
}

impl Registry {
    /// Starts downloading the blob `desc` (whose digest is `digest`); `limit` caps the bytes read.
    pub async fn open_blob(
        &self,
        reference: &Reference,
        desc: &Descriptor,
        digest: &Digest,
        limit: u64,
    ) -> Result<BlobStream, RegistryError> {
        let name = reference.whole();
        let response = self
            .transport
            .blob(reference, &digest.to_string())
            .await
            .map_err(|detail| RegistryError::Fetch {
                what: format!("blob {digest}"),
                reference: name.clone(),
                detail,
            })?;
        Ok(BlobStream {
            response,
            hasher: sha2::Sha256::new(),
            read: 0,
            size: u64::try_from(desc.size).ok(),
            limit,
            digest: digest.clone(),
            name,
            ended: false,
        })
    }

    pub(super) async fn small_blob(
        &self,
        reference: &Reference,
        desc: &Descriptor,
        digest: &Digest,
    ) -> Result<Vec<u8>, RegistryError> {
        let name = reference.whole();
        if desc.size < 0 || desc.size as u64 > MAX_CONFIG {
            return Err(RegistryError::Malformed {
                what: "config".into(),
                reference: name,
                detail: format!("size {} is out of range", desc.size),
            });
        }
        let mut out = Vec::with_capacity(usize::try_from(desc.size).unwrap_or(0));
        self.stream_blob(reference, desc, digest, &mut out, MAX_CONFIG)
            .await?;
        Ok(out)
    }

    /// Streams a blob into `sink`, verifying its size and digest; `limit` caps the bytes read.
    pub async fn stream_blob(
        &self,
        reference: &Reference,
        desc: &Descriptor,
        digest: &Digest,
        sink: &mut (dyn Write + Send),
        limit: u64,
    ) -> Result<(), RegistryError> {
        self.stream_blob_pieces(
            reference,
            desc,
            digest,
            &mut |piece| sink.write_all(&piece),
            limit,
        )
        .await
    }

    /// [`Registry::stream_blob`], handing each piece as received (no copy) to `on_piece`.
    pub async fn stream_blob_pieces(
        &self,
        reference: &Reference,
        desc: &Descriptor,
        digest: &Digest,
        on_piece: &mut (dyn FnMut(bytes::Bytes) -> std::io::Result<()> + Send),
        limit: u64,
    ) -> Result<(), RegistryError> {
        let mut stream = self.open_blob(reference, desc, digest, limit).await?;
        while let Some(piece) = stream.next().await? {
            on_piece(piece).map_err(|source| RegistryError::Io {
                what: format!("blob {digest}"),
                source,
            })?;
        }
        Ok(())
    }

    /// Streams a blob to a new file at `dest`, verified; a failed blob leaves no file.
    pub async fn fetch_blob_to(
        &self,
        reference: &Reference,
        desc: &Descriptor,
        dest: &Path,
        limit: u64,
    ) -> Result<(), RegistryError> {
        let name = reference.whole();
        let digest = parse_digest("layer digest", &name, &desc.digest)?;
        let io = |source| RegistryError::Io {
            what: dest.display().to_string(),
            source,
        };
        let file = std::fs::File::create(dest).map_err(io)?;
        let mut w = std::io::BufWriter::with_capacity(1 << 20, file);
        let result = self
            .stream_blob(reference, desc, &digest, &mut w, limit)
            .await;
        let flushed = w.flush().map_err(io);
        if result.is_err() || flushed.is_err() {
            let _ = std::fs::remove_file(dest);
        }
        result.and(flushed)
    }
}
