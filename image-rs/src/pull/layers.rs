//! Turning a downloaded layer into files: unwrapping its key (JWE recipients, key-provider
//! packets through a per-pull KEK cache), decrypting, decompressing, unpacking into the staging
//! rootfs and checking its diff_id (and, for encrypted layers, naming an HMAC failure as such).
//!
//! An encrypted layer's plaintext is parsed before its HMAC is checked at the end of the stream
//! (AES-CTR is malleable: the host can flip chosen plaintext bits), so no error of an encrypted
//! layer carries anything read from its plaintext: not an entry name, a size or a digest, only a
//! category. Otherwise a tampered layer would make the unpacker echo decrypted bytes into the
//! error that goes back to the caller (the host) and into the log: a decryption oracle.

use std::collections::HashMap;
use std::io::Read;
use std::path::Path;

use ward_kbs_wire::ResourceUri;

use super::blobs::Source;
use super::{PullError, Puller, io};
use crate::digest::{Digest, VerifyError, VerifyingReader};
use crate::kbs::{KbsResources, ResourceError};
use crate::ocicrypt::{
    Compression, LayerAnnotations, LayerDecryptor, PrivateKey, PrivateOptions, PublicOptions,
};
use crate::progress::PullProgress;
use crate::registry::{Descriptor, ResolvedImage};
use crate::unpack::{UnpackError, UnpackPolicy, apply_layer};

/// Whether `e` says the filesystem (or the writer's quota on it) is full: `ENOSPC` or
/// `EDQUOT`, which std reads as these kinds.
fn fills(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        std::io::ErrorKind::StorageFull | std::io::ErrorKind::QuotaExceeded
    )
}

/// Why one layer's plaintext could not be applied, before it is said to the caller.
enum ApplyError {
    Decompressor(std::io::Error),
    Unpack(UnpackError),
    DiffId(VerifyError),
    /// Reading to the end failed: for an encrypted layer, where its HMAC is checked.
    End(std::io::Error),
}

impl ApplyError {
    /// The error for the caller. For an encrypted layer only the category, never a value from
    /// the plaintext (entry names, sizes, the computed diff_id).
    fn into_pull_error(self, index: usize, digest: &str, encrypted: bool) -> PullError {
        let digest = digest.to_string();
        if let ApplyError::Unpack(UnpackError::Io { source, .. }) = &self
            && fills(source)
        {
            return PullError::Full { index, digest };
        }
        match (self, encrypted) {
            (ApplyError::Decompressor(source), false) => PullError::Io {
                what: format!("layer {index}: decompressor"),
                source,
            },
            (ApplyError::Unpack(e), false) => PullError::Unpack {
                index,
                digest,
                detail: e.to_string(),
            },
            (ApplyError::DiffId(source), false) => PullError::DiffId {
                index,
                digest,
                source,
            },
            (ApplyError::End(e), false) => PullError::Decrypt {
                index,
                digest,
                detail: e.to_string(),
            },
            (ApplyError::Decompressor(_), true) => PullError::Unpack {
                index,
                digest,
                detail: "the decrypted layer does not decompress".to_string(),
            },
            (ApplyError::Unpack(e), true) => PullError::Unpack {
                index,
                digest,
                detail: format!(
                    "the decrypted layer was refused: {} (details withheld: they come from \
                     the plaintext)",
                    e.category()
                ),
            },
            (ApplyError::DiffId(_), true) => PullError::Unpack {
                index,
                digest,
                detail: "the decrypted layer does not match its diff_id".to_string(),
            },
            (ApplyError::End(_), true) => PullError::Decrypt {
                index,
                digest,
                detail: "layer authentication (HMAC) failed: the layer was altered".to_string(),
            },
        }
    }
}

/// Wraps `r` in the decompressor for `c`.
pub fn decompress<'a>(r: impl Read + 'a, c: Compression) -> std::io::Result<Box<dyn Read + 'a>> {
    Ok(match c {
        Compression::None => Box::new(r),
        Compression::Gzip => Box::new(flate2::read::MultiGzDecoder::new(r)),
        Compression::Zstd => Box::new(zstd::stream::read::Decoder::new(r)?),
    })
}

/// [`decompress`] for a reader that can move to another thread.
fn decompress_send<'a>(
    r: impl Read + Send + 'a,
    c: Compression,
) -> std::io::Result<Box<dyn Read + Send + 'a>> {
    Ok(match c {
        Compression::None => Box::new(r),
        Compression::Gzip => Box::new(flate2::read::MultiGzDecoder::new(r)),
        Compression::Zstd => Box::new(zstd::stream::read::Decoder::new(r)?),
    })
}

/// KBS resources that ask their inner source once per URI for the length of one pull, so an
/// image whose layers share a KEK costs one KBS round trip, not one per layer. Keys are zeroized
/// when the pull ends.
pub(super) struct PullKekCache<'a> {
    pub(super) inner: &'a dyn KbsResources,
    pub(super) keys: tokio::sync::Mutex<HashMap<ResourceUri, zeroize::Zeroizing<Vec<u8>>>>,
}

#[async_trait::async_trait]
impl KbsResources for PullKekCache<'_> {
    async fn resource(
        &self,
        uri: &ResourceUri,
    ) -> Result<zeroize::Zeroizing<Vec<u8>>, ResourceError> {
        let mut keys = self.keys.lock().await;
        if let Some(k) = keys.get(uri) {
            return Ok(k.clone());
        }
        let k = self.inner.resource(uri).await?;
        keys.insert(uri.clone(), k.clone());
        Ok(k)
    }
}

/// One layer's unwrapped key material, ready for the blocking unpack.
pub(super) struct LayerKey {
    private: PrivateOptions,
    public: PublicOptions,
}

impl Puller {
    /// Opens a layer's key material (JWE recipients, then key-provider packets via the KBS).
    pub(super) async fn layer_key(
        &self,
        index: usize,
        desc: &Descriptor,
        keys: &[PrivateKey],
        kek: Option<&dyn KbsResources>,
    ) -> Result<LayerKey, PullError> {
        let carries = || {
            desc.annotations
                .keys()
                .filter(|k| k.starts_with("org.opencontainers.image.enc.keys."))
                .cloned()
                .collect::<Vec<_>>()
                .join(", ")
        };
        let annotations =
            LayerAnnotations::parse(desc.annotations.iter()).map_err(|e| PullError::Decrypt {
                index,
                digest: desc.digest.clone(),
                detail: e.to_string(),
            })?;
        if keys.is_empty() && kek.is_none() {
            return Err(PullError::NoKey {
                index,
                digest: desc.digest.clone(),
                carries: carries(),
            });
        }
        let private = crate::ocicrypt::unwrap_private_options(&annotations, keys, kek)
            .await
            .map_err(|e| PullError::NoKey {
                index,
                digest: desc.digest.clone(),
                carries: format!("{}; {e}", carries()),
            })?;
        Ok(LayerKey {
            private,
            public: annotations.public,
        })
    }

    /// Decompresses and unpacks one layer's plaintext into `staging`, checking its diff_id.
    /// With a second CPU to run on, decryption and decompression run on a thread of their own,
    /// the diff_id hash and the unpacker on this one (`pipe.rs`): of the splits measured, the
    /// most even on two cores (hashing on the decompressor's thread instead was 0.83x
    /// image-rs's wall against 0.72x). On one CPU the hand-over only costs, so all runs here.
    fn apply_one(
        plain: impl Read + Send,
        compression: Compression,
        staging: &Path,
        policy: &UnpackPolicy,
        diff_id: &Digest,
        threaded: bool,
    ) -> Result<(), ApplyError> {
        let tar = decompress_send(plain, compression).map_err(ApplyError::Decompressor)?;
        let unpack = |tar: &mut dyn Read| {
            let mut verifying = VerifyingReader::new(tar, u64::MAX);
            apply_layer(&mut verifying, staging, policy).map_err(ApplyError::Unpack)?;
            // Drains the rest (tar padding; this reaches the end of the blob, where its digest
            // and, for encrypted layers, its HMAC are checked) and compares the diff_id.
            match verifying.finish(diff_id, None) {
                Ok(Ok(())) => Ok(()),
                Ok(Err(e)) => Err(ApplyError::DiffId(e)),
                Err(e) => Err(ApplyError::End(e)),
            }
        };
        if !threaded {
            let mut tar = tar;
            return unpack(&mut tar);
        }
        let (unpacked, reached_end) = super::pipe::threaded(tar, unpack);
        unpacked?;
        // The unpacker saw the end of the stream, so the decompressor reached it: never
        // otherwise, but a layer is not taken as whole on that reasoning alone.
        if !reached_end {
            return Err(ApplyError::End(std::io::Error::other(
                "the layer's stream ended before its end",
            )));
        }
        Ok(())
    }

    /// Applies every layer in order into `staging`, each read once from its source: bytes go
    /// through decryption (and its HMAC), decompression, the diff_id hash and the unpacker in
    /// one pass. `done` counts the layers unpacked (it opens the download window). Returns how
    /// many layers were encrypted.
    pub(super) fn apply_all(
        &self,
        image: &ResolvedImage,
        kinds: &[(Compression, Option<LayerKey>)],
        sources: Vec<Source>,
        staging: &Path,
        progress: &dyn PullProgress,
        done: &tokio::sync::watch::Sender<usize>,
    ) -> Result<usize, PullError> {
        let mut encrypted = 0;
        // The CPUs this process may run on (its affinity mask, as `taskset` or a cgroup's
        // cpuset leaves it).
        let threaded = std::thread::available_parallelism().is_ok_and(|n| n.get() > 1);
        for (index, (((desc, diff_id), (compression, key)), source)) in image
            .layers
            .iter()
            .zip(&image.diff_ids)
            .zip(kinds)
            .zip(sources)
            .enumerate()
        {
            let mut blob = source
                .open()
                .map_err(io(format!("opening blob {}", desc.digest)))?;
            let result = match key {
                Some(k) => {
                    encrypted += 1;
                    let mut plain = LayerDecryptor::new(&mut blob, &k.private, &k.public);
                    let result = Self::apply_one(
                        &mut plain,
                        *compression,
                        staging,
                        &self.opts.unpack,
                        diff_id,
                        threaded,
                    );
                    // A tampered ciphertext usually breaks the decompressor or the tar parser
                    // before the end of the stream, where the HMAC is checked: read on to the
                    // end (through the same decryptor, nothing hashed twice) so that the error
                    // names the real cause, and nothing of what the parser read.
                    if result.is_err()
                        && let Err(e) = std::io::copy(&mut plain, &mut std::io::sink())
                        && crate::ocicrypt::layer::layer_error(&e).is_some()
                    {
                        Err(ApplyError::End(e))
                    } else {
                        result
                    }
                }
                None => Self::apply_one(
                    &mut blob,
                    *compression,
                    staging,
                    &self.opts.unpack,
                    diff_id,
                    threaded,
                ),
            };
            result.map_err(|e| e.into_pull_error(index, &desc.digest, key.is_some()))?;
            progress.layer_done(index);
            done.send_replace(index + 1);
        }
        Ok(encrypted)
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;

    #[test]
    fn decompressors_round_trip() {
        let data = b"tar bytes".repeat(100);
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(&data).unwrap();
        let gz = gz.finish().unwrap();
        let zs = zstd::stream::encode_all(&data[..], 1).unwrap();
        for (bytes, c) in [
            (&data, Compression::None),
            (&gz, Compression::Gzip),
            (&zs, Compression::Zstd),
        ] {
            let mut out = Vec::new();
            decompress(&bytes[..], c)
                .unwrap()
                .read_to_end(&mut out)
                .unwrap();
            assert_eq!(out, data, "{c:?}");
        }
    }
}
