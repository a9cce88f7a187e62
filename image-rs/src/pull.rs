//! The pull pipeline: resolve → fetch every layer concurrently into the content-addressed blob
//! store (guest memory) with its digest checked → for each layer in order: decrypt (ocicrypt) →
//! decompress → unpack into a staging directory while hashing the tar for its diff_id → check
//! the diff_id (and, for encrypted layers, the HMAC at the end of the stream) → publish the
//! staging directory as the bundle's rootfs with one rename.
//!
//! Nothing is visible as ready before every digest, diff_id and tag has held: a failure at any
//! step removes the staging directory and leaves the bundle as it was. Two pulls of the same
//! blob share one download; blobs stay in the store for later images.

use std::collections::HashMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use tokio::sync::{Mutex, Semaphore};

use crate::digest::{Digest, VerifyError, VerifyingReader};
use crate::ocicrypt::{
    Compression, KekSource, LayerAnnotations, LayerDecryptor, LayerMediaType, PrivateKey,
    PrivateOptions, PublicOptions,
};
use crate::registry::{Descriptor, Registry, RegistryError, ResolvedImage};
use crate::unpack::{UnpackPolicy, apply_layer};

/// Largest layer blob accepted.
pub const MAX_LAYER: u64 = 16 << 30;

/// Why a pull failed. The bundle is untouched in every case.
#[derive(Debug, thiserror::Error)]
pub enum PullError {
    #[error(transparent)]
    Registry(#[from] RegistryError),
    #[error("layer {index} ({digest}) has media type {media_type}, which ward cannot unpack")]
    MediaType {
        index: usize,
        digest: String,
        media_type: String,
    },
    #[error("layer {index} ({digest}) is encrypted and no key fits it (it carries: {carries})")]
    NoKey {
        index: usize,
        digest: String,
        carries: String,
    },
    #[error("layer {index} ({digest}): {detail}")]
    Decrypt {
        index: usize,
        digest: String,
        detail: String,
    },
    #[error("layer {index} ({digest}): uncompressed content does not match its diff_id: {source}")]
    DiffId {
        index: usize,
        digest: String,
        #[source]
        source: VerifyError,
    },
    #[error("layer {index} ({digest}): unpacking: {detail}")]
    Unpack {
        index: usize,
        digest: String,
        detail: String,
    },
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> PullError {
    let what = what.into();
    move |source| PullError::Io { what, source }
}

/// Wraps `r` in the decompressor for `c`.
pub fn decompress<'a>(r: impl Read + 'a, c: Compression) -> std::io::Result<Box<dyn Read + 'a>> {
    Ok(match c {
        Compression::None => Box::new(r),
        Compression::Gzip => Box::new(flate2::read::MultiGzDecoder::new(r)),
        Compression::Zstd => Box::new(zstd::stream::read::Decoder::new(r)?),
    })
}

/// Settings of a puller.
#[derive(Clone, Debug)]
pub struct PullOptions {
    /// The blob store (a directory on a tmpfs: guest memory).
    pub store: PathBuf,
    /// Layers downloaded at once.
    pub concurrency: usize,
    pub unpack: UnpackPolicy,
    /// Refuse images with any plain layer.
    pub require_encrypted: bool,
}

/// What a pull produced.
#[derive(Clone, Debug)]
pub struct Pulled {
    pub manifest_digest: Digest,
    pub layers: usize,
    pub encrypted_layers: usize,
    pub bytes_fetched: u64,
}

/// The keys a pull may use for encrypted layers: private keys for JWE recipients, and a KEK
/// source (the KBS) for CoCo key-provider packets.
#[derive(Default)]
pub struct Decryption {
    pub keys: Vec<PrivateKey>,
    pub kek: Option<Arc<dyn KekSource>>,
}

/// One layer's unwrapped key material, ready for the blocking unpack.
struct LayerKey {
    private: PrivateOptions,
    public: PublicOptions,
}

/// Pulls images into bundles, sharing downloads.
pub struct Puller {
    registry: Registry,
    opts: PullOptions,
    blob_locks: Mutex<HashMap<String, Arc<Mutex<()>>>>,
}

impl Puller {
    pub fn new(registry: Registry, opts: PullOptions) -> Result<Puller, PullError> {
        std::fs::create_dir_all(opts.store.join("blobs"))
            .map_err(io(format!("creating {}", opts.store.display())))?;
        Ok(Puller {
            registry,
            opts,
            blob_locks: Mutex::new(HashMap::new()),
        })
    }

    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    fn blob_path(&self, digest: &Digest) -> PathBuf {
        self.opts.store.join("blobs").join(digest.hex())
    }

    /// Fetches one blob into the store unless it is already there; a blob in the store was
    /// verified before it was renamed into place.
    async fn ensure_blob(
        &self,
        image: &ResolvedImage,
        desc: &Descriptor,
    ) -> Result<u64, PullError> {
        let digest = Digest::parse(&desc.digest).map_err(|e| RegistryError::Malformed {
            what: "layer digest".into(),
            reference: image.reference.whole(),
            detail: e.to_string(),
        })?;
        let lock = {
            let mut locks = self.blob_locks.lock().await;
            locks.entry(digest.to_string()).or_default().clone()
        };
        let _held = lock.lock().await;
        let path = self.blob_path(&digest);
        if path.exists() {
            return Ok(0);
        }
        let partial = path.with_extension(format!("partial-{}", std::process::id()));
        self.registry
            .fetch_blob_to(&image.reference, desc, &partial, MAX_LAYER)
            .await?;
        std::fs::rename(&partial, &path).map_err(io(format!("storing blob {digest}")))?;
        Ok(u64::try_from(desc.size).unwrap_or(0))
    }

    /// Pulls `image` into `bundle/rootfs`, decrypting with `keys`.
    pub async fn pull(
        self: &Arc<Self>,
        image: &str,
        bundle: &Path,
        decryption: &Decryption,
    ) -> Result<Pulled, PullError> {
        let reference = Registry::reference(image)?;
        let resolved = Arc::new(self.registry.resolve(&reference).await?);
        // Check every layer's type and unwrap every layer key before fetching anything.
        let mut kinds = Vec::with_capacity(resolved.layers.len());
        for (index, l) in resolved.layers.iter().enumerate() {
            let mt = LayerMediaType::parse(&l.media_type).map_err(|_| PullError::MediaType {
                index,
                digest: l.digest.clone(),
                media_type: l.media_type.clone(),
            })?;
            let enc = mt.is_encrypted();
            let key = if enc {
                Some(self.layer_key(index, l, decryption).await?)
            } else {
                None
            };
            if !enc && self.opts.require_encrypted {
                return Err(PullError::NoKey {
                    index,
                    digest: l.digest.clone(),
                    carries: "nothing: the layer is not encrypted, and policy requires encryption"
                        .into(),
                });
            }
            kinds.push((mt.compression(), key));
        }

        let permits = Arc::new(Semaphore::new(self.opts.concurrency.max(1)));
        let mut tasks = Vec::new();
        for l in resolved.layers.clone() {
            let me = self.clone();
            let resolved = resolved.clone();
            let permits = permits.clone();
            tasks.push(tokio::spawn(async move {
                let _p = permits.acquire_owned().await;
                me.ensure_blob(&resolved, &l).await
            }));
        }
        let mut fetched = 0u64;
        for t in tasks {
            fetched += t.await.map_err(|e| PullError::Io {
                what: "layer download task".into(),
                source: std::io::Error::other(e.to_string()),
            })??;
        }

        std::fs::create_dir_all(bundle).map_err(io(format!("creating {}", bundle.display())))?;
        let staging = bundle.join(format!(".rootfs.staging-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&staging);
        std::fs::create_dir_all(&staging).map_err(io("creating the staging rootfs"))?;
        let me = self.clone();
        let staging2 = staging.clone();
        let resolved2 = resolved.clone();
        let applied =
            tokio::task::spawn_blocking(move || me.apply_all(&resolved2, &kinds, &staging2))
                .await
                .map_err(|e| PullError::Io {
                    what: "unpack task".into(),
                    source: std::io::Error::other(e.to_string()),
                })
                .and_then(|r| r);
        let encrypted = match applied {
            Ok(n) => n,
            Err(e) => {
                let _ = std::fs::remove_dir_all(&staging);
                return Err(e);
            }
        };
        let publish = (|| {
            crate::bundle::write_runtime_config(bundle, &resolved.config)?;
            let rootfs = bundle.join("rootfs");
            if rootfs.exists() {
                std::fs::remove_dir_all(&rootfs).map_err(io("replacing the old rootfs"))?;
            }
            std::fs::rename(&staging, &rootfs).map_err(io("publishing the rootfs"))
        })();
        if let Err(e) = publish {
            let _ = std::fs::remove_dir_all(&staging);
            return Err(e);
        }
        Ok(Pulled {
            manifest_digest: resolved.manifest_digest.clone(),
            layers: resolved.layers.len(),
            encrypted_layers: encrypted,
            bytes_fetched: fetched,
        })
    }

    /// Opens a layer's key material (JWE recipients, then key-provider packets via the KBS).
    async fn layer_key(
        &self,
        index: usize,
        desc: &Descriptor,
        decryption: &Decryption,
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
        if decryption.keys.is_empty() && decryption.kek.is_none() {
            return Err(PullError::NoKey {
                index,
                digest: desc.digest.clone(),
                carries: carries(),
            });
        }
        let private = crate::ocicrypt::unwrap_private_options(
            &annotations,
            &decryption.keys,
            decryption.kek.as_deref(),
        )
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

    /// Whether an encrypted layer's ciphertext matches its HMAC (a full pass over the blob).
    fn hmac_holds(&self, digest: &Digest, key: &LayerKey) -> bool {
        let Ok(file) = std::fs::File::open(self.blob_path(digest)) else {
            return false;
        };
        let mut d = LayerDecryptor::new(std::io::BufReader::new(file), &key.private, &key.public);
        std::io::copy(&mut d, &mut std::io::sink()).is_ok()
    }

    /// Decompresses and unpacks one layer's plaintext into `staging`, checking its diff_id.
    fn apply_one(
        plain: Box<dyn Read + Send + '_>,
        compression: Compression,
        staging: &Path,
        policy: &UnpackPolicy,
        diff_id: &Digest,
        index: usize,
        digest: &str,
    ) -> Result<(), PullError> {
        let tar =
            decompress(plain, compression).map_err(io(format!("layer {index}: decompressor")))?;
        let mut verifying = VerifyingReader::new(tar, u64::MAX);
        apply_layer(&mut verifying, staging, policy).map_err(|e| PullError::Unpack {
            index,
            digest: digest.to_string(),
            detail: e.to_string(),
        })?;
        // Drains the rest (tar padding; for encrypted layers this reaches EOF, where the HMAC
        // is checked) and compares the diff_id.
        match verifying.finish(diff_id, None) {
            Ok(Ok(())) => Ok(()),
            Ok(Err(source)) => Err(PullError::DiffId {
                index,
                digest: digest.to_string(),
                source,
            }),
            Err(e) => Err(PullError::Decrypt {
                index,
                digest: digest.to_string(),
                detail: e.to_string(),
            }),
        }
    }

    /// Applies every layer in order into `staging`; returns how many were encrypted.
    fn apply_all(
        &self,
        image: &ResolvedImage,
        kinds: &[(Compression, Option<LayerKey>)],
        staging: &Path,
    ) -> Result<usize, PullError> {
        let mut encrypted = 0;
        for (index, ((desc, diff_id), (compression, key))) in image
            .layers
            .iter()
            .zip(&image.diff_ids)
            .zip(kinds)
            .enumerate()
        {
            let digest = Digest::parse(&desc.digest).map_err(|e| PullError::Unpack {
                index,
                digest: desc.digest.clone(),
                detail: e.to_string(),
            })?;
            let file = std::fs::File::open(self.blob_path(&digest))
                .map_err(io(format!("opening blob {digest}")))?;
            let blob: Box<dyn Read + Send> =
                Box::new(std::io::BufReader::with_capacity(1 << 20, file));
            let plain: Box<dyn Read + Send> = match key {
                Some(k) => {
                    encrypted += 1;
                    Box::new(LayerDecryptor::new(blob, &k.private, &k.public))
                }
                None => blob,
            };
            let result = Self::apply_one(
                plain,
                *compression,
                staging,
                &self.opts.unpack,
                diff_id,
                index,
                &desc.digest,
            );
            if let (Err(e), Some(k)) = (&result, key) {
                // A tampered ciphertext usually breaks the decompressor or the tar parser before
                // the end of the stream, where the HMAC is checked: name the real cause.
                if !self.hmac_holds(&digest, k) {
                    return Err(PullError::Decrypt {
                        index,
                        digest: desc.digest.clone(),
                        detail: format!(
                            "layer authentication (HMAC) failed: the layer was altered ({e})"
                        ),
                    });
                }
            }
            result?;
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
