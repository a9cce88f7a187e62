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

use tokio::sync::Semaphore;

use crate::digest::{Digest, VerifyError, VerifyingReader};
use crate::follow::{FollowReader, Growing, ProgressWriter};
use crate::ocicrypt::{
    Compression, KekSource, LayerAnnotations, LayerDecryptor, LayerMediaType, PrivateKey,
    PrivateOptions, PublicOptions,
};
use crate::policy::{Accepted, Policy, PolicyError, ResourceSource};
use crate::progress::{LayerInfo, NoProgress, PullProgress};
use crate::registry::{Descriptor, Registry, RegistryError, ResolvedImage};
use crate::unpack::{UnpackPolicy, apply_layer};

/// Largest layer blob accepted.
pub const MAX_LAYER: u64 = 16 << 30;

/// Why a pull failed. The bundle is untouched in every case.
#[derive(Debug, thiserror::Error)]
pub enum PullError {
    #[error(transparent)]
    Registry(#[from] RegistryError),
    #[error(transparent)]
    Policy(#[from] PolicyError),
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

/// Reports the bytes downloaded of each followed layer every 100 ms until all have ended.
async fn report_downloads(layers: Vec<(usize, Arc<Growing>)>, progress: Arc<dyn PullProgress>) {
    loop {
        let mut open = false;
        for (index, g) in &layers {
            progress.layer_fetched(*index, g.written());
            open |= g.outcome().is_none();
        }
        if !open {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
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
    /// What the signature policy accepted the image on.
    pub policy: Accepted,
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

/// A KEK source that asks its inner source once per key id for the length of one pull, so an
/// image whose layers share a KEK costs one KBS round trip, not one per layer. Keys are zeroized
/// when the pull ends.
struct PullKekCache<'a> {
    inner: &'a dyn KekSource,
    keys: tokio::sync::Mutex<HashMap<String, zeroize::Zeroizing<Vec<u8>>>>,
}

#[async_trait::async_trait]
impl KekSource for PullKekCache<'_> {
    async fn kek(
        &self,
        kid: &str,
    ) -> Result<zeroize::Zeroizing<Vec<u8>>, crate::ocicrypt::provider::KekFetchError> {
        let mut keys = self.keys.lock().await;
        if let Some(k) = keys.get(kid) {
            return Ok(k.clone());
        }
        let k = self.inner.kek(kid).await?;
        keys.insert(kid.to_string(), k.clone());
        Ok(k)
    }
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
    policy: Arc<Policy>,
    /// Where `kbs:///` policy keys come from.
    resources: Option<Arc<dyn ResourceSource>>,
    /// Downloads under way, by digest: the partial file and its progress.
    inflight: std::sync::Mutex<HashMap<String, (PathBuf, Arc<Growing>)>>,
}

/// Where the unpacker reads a layer from.
enum Source {
    /// A verified blob already in the store.
    Stored(PathBuf),
    /// A blob still downloading (by this pull or another): followed as it grows.
    Follow {
        partial: PathBuf,
        done: PathBuf,
        growing: Arc<Growing>,
    },
}

impl Source {
    fn open(&self) -> std::io::Result<Box<dyn Read + Send>> {
        Ok(match self {
            Source::Stored(p) => Box::new(std::io::BufReader::with_capacity(
                1 << 20,
                std::fs::File::open(p)?,
            )),
            Source::Follow {
                partial,
                done,
                growing,
            } => {
                // The download renames the file into place when it has verified it.
                let file = std::fs::File::open(partial).or_else(|_| std::fs::File::open(done))?;
                Box::new(std::io::BufReader::with_capacity(
                    1 << 20,
                    FollowReader::new(file, growing.clone()),
                ))
            }
        })
    }

    /// Whether the whole blob is there and verified (so its HMAC can be checked).
    fn complete(&self) -> bool {
        match self {
            Source::Stored(_) => true,
            Source::Follow { growing, .. } => matches!(growing.outcome(), Some(Ok(()))),
        }
    }
}

impl Puller {
    pub fn new(registry: Registry, opts: PullOptions) -> Result<Puller, PullError> {
        std::fs::create_dir_all(opts.store.join("blobs"))
            .map_err(io(format!("creating {}", opts.store.display())))?;
        Ok(Puller {
            registry,
            opts,
            policy: Arc::new(Policy::accept_anything()),
            resources: None,
            inflight: std::sync::Mutex::new(HashMap::new()),
        })
    }

    /// Checks every image against `policy` (the default accepts anything), with `kbs:///` keys
    /// from `resources`.
    pub fn with_policy(
        mut self,
        policy: Arc<Policy>,
        resources: Option<Arc<dyn ResourceSource>>,
    ) -> Puller {
        self.policy = policy;
        self.resources = resources;
        self
    }

    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    fn blob_path(&self, digest: &Digest) -> PathBuf {
        self.opts.store.join("blobs").join(digest.hex())
    }

    /// Where layer `desc` will be read from: the store, a download already under way, or a new
    /// download started here (returned as a task yielding the bytes fetched).
    #[allow(clippy::type_complexity)]
    fn start_blob(
        self: &Arc<Self>,
        image: &Arc<ResolvedImage>,
        desc: &Descriptor,
        permits: &Arc<Semaphore>,
    ) -> Result<
        (
            Source,
            Option<tokio::task::JoinHandle<Result<u64, PullError>>>,
        ),
        PullError,
    > {
        let digest = Digest::parse(&desc.digest).map_err(|e| RegistryError::Malformed {
            what: "layer digest".into(),
            reference: image.reference.whole(),
            detail: e.to_string(),
        })?;
        let done = self.blob_path(&digest);
        let mut inflight = self.inflight.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((partial, growing)) = inflight.get(&digest.to_string()) {
            return Ok((
                Source::Follow {
                    partial: partial.clone(),
                    done,
                    growing: growing.clone(),
                },
                None,
            ));
        }
        if done.exists() {
            return Ok((Source::Stored(done), None));
        }
        let partial = done.with_extension(format!("partial-{:016x}", rand::random::<u64>()));
        let file = std::fs::File::create(&partial)
            .map_err(io(format!("creating {}", partial.display())))?;
        let growing = Growing::new();
        inflight.insert(digest.to_string(), (partial.clone(), growing.clone()));
        drop(inflight);

        let me = self.clone();
        let image = image.clone();
        let desc = desc.clone();
        let permits = permits.clone();
        let (task_partial, task_done, task_growing) =
            (partial.clone(), done.clone(), growing.clone());
        let task = tokio::spawn(async move {
            let _permit = permits.acquire_owned().await;
            let mut sink = ProgressWriter::new(file, task_growing.clone());
            let result = me
                .registry
                .stream_blob(&image.reference, &desc, &digest, &mut sink, MAX_LAYER)
                .await
                .map_err(PullError::from)
                .and_then(|()| {
                    std::fs::rename(&task_partial, &task_done)
                        .map_err(io(format!("storing blob {digest}")))
                });
            if result.is_err() {
                let _ = std::fs::remove_file(&task_partial);
            }
            me.inflight
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(&digest.to_string());
            task_growing.finish(result.as_ref().map(|_| ()).map_err(ToString::to_string));
            result.map(|()| u64::try_from(desc.size).unwrap_or(0))
        });
        Ok((
            Source::Follow {
                partial,
                done,
                growing,
            },
            Some(task),
        ))
    }

    /// Pulls `image` into `bundle/rootfs`, decrypting with `keys`.
    pub async fn pull(
        self: &Arc<Self>,
        image: &str,
        bundle: &Path,
        decryption: &Decryption,
    ) -> Result<Pulled, PullError> {
        self.pull_with_progress(image, bundle, decryption, Arc::new(NoProgress))
            .await
    }

    /// [`Puller::pull`], reporting progress to `progress`.
    pub async fn pull_with_progress(
        self: &Arc<Self>,
        image: &str,
        bundle: &Path,
        decryption: &Decryption,
        progress: Arc<dyn PullProgress>,
    ) -> Result<Pulled, PullError> {
        let reference = Registry::reference(image)?;
        let resolved = Arc::new(self.registry.resolve(&reference).await?);
        // The policy decides before any layer is fetched or taken from the store.
        let mut digests = vec![resolved.top_digest.clone()];
        if resolved.manifest_digest != resolved.top_digest {
            digests.push(resolved.manifest_digest.clone());
        }
        let accepted = self
            .policy
            .check(
                &resolved.reference,
                &digests,
                &self.registry,
                self.resources.as_deref(),
            )
            .await?;
        // Check every layer's type and unwrap every layer key before fetching anything.
        let cache = decryption.kek.as_deref().map(|inner| PullKekCache {
            inner,
            keys: tokio::sync::Mutex::new(HashMap::new()),
        });
        let mut kinds = Vec::with_capacity(resolved.layers.len());
        for (index, l) in resolved.layers.iter().enumerate() {
            let mt = LayerMediaType::parse(&l.media_type).map_err(|_| PullError::MediaType {
                index,
                digest: l.digest.clone(),
                media_type: l.media_type.clone(),
            })?;
            let enc = mt.is_encrypted();
            let key = if enc {
                Some(
                    self.layer_key(
                        index,
                        l,
                        &decryption.keys,
                        cache.as_ref().map(|c| c as &dyn KekSource),
                    )
                    .await?,
                )
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
        let infos: Vec<LayerInfo> = resolved
            .layers
            .iter()
            .zip(&kinds)
            .map(|(l, (_, key))| LayerInfo {
                digest: l.digest.clone(),
                size: u64::try_from(l.size).unwrap_or(0),
                encrypted: key.is_some(),
            })
            .collect();
        progress.resolved(image, &infos);

        // Start every download now; the unpacker follows each layer as it arrives, in order.
        let permits = Arc::new(Semaphore::new(self.opts.concurrency.max(1)));
        let mut sources = Vec::with_capacity(resolved.layers.len());
        let mut tasks = Vec::new();
        let mut following = Vec::new();
        for (index, l) in resolved.layers.iter().enumerate() {
            let (source, task) = self.start_blob(&resolved, l, &permits)?;
            match &source {
                Source::Stored(_) => progress.layer_cached(index),
                Source::Follow { growing, .. } => following.push((index, growing.clone())),
            }
            sources.push(source);
            tasks.extend(task);
        }
        let ticker = tokio::spawn(report_downloads(following, progress.clone()));

        std::fs::create_dir_all(bundle).map_err(io(format!("creating {}", bundle.display())))?;
        let staging = bundle.join(format!(".rootfs.staging-{:016x}", rand::random::<u64>()));
        std::fs::create_dir_all(&staging).map_err(io("creating the staging rootfs"))?;
        let me = self.clone();
        let staging2 = staging.clone();
        let resolved2 = resolved.clone();
        let progress2 = progress.clone();
        let applied = tokio::task::spawn_blocking(move || {
            me.apply_all(&resolved2, &kinds, &sources, &staging2, &*progress2)
        })
        .await
        .map_err(|e| PullError::Io {
            what: "unpack task".into(),
            source: std::io::Error::other(e.to_string()),
        })
        .and_then(|r| r);
        // A failed download is the root cause of whatever the unpacker saw.
        let mut fetched = 0u64;
        let mut download_error = None;
        for t in tasks {
            match t.await {
                Ok(Ok(n)) => fetched += n,
                Ok(Err(e)) => {
                    download_error.get_or_insert(e);
                }
                Err(e) => {
                    download_error.get_or_insert(PullError::Io {
                        what: "layer download task".into(),
                        source: std::io::Error::other(e.to_string()),
                    });
                }
            }
        }
        ticker.abort();
        let applied = match (applied, download_error) {
            (_, Some(e)) => Err(e),
            (a, None) => a,
        };
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
            policy: accepted,
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
        keys: &[PrivateKey],
        kek: Option<&dyn KekSource>,
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
        sources: &[Source],
        staging: &Path,
        progress: &dyn PullProgress,
    ) -> Result<usize, PullError> {
        let mut encrypted = 0;
        for (index, (((desc, diff_id), (compression, key)), source)) in image
            .layers
            .iter()
            .zip(&image.diff_ids)
            .zip(kinds)
            .zip(sources)
            .enumerate()
        {
            let digest = Digest::parse(&desc.digest).map_err(|e| PullError::Unpack {
                index,
                digest: desc.digest.clone(),
                detail: e.to_string(),
            })?;
            let blob = source
                .open()
                .map_err(io(format!("opening blob {digest}")))?;
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
            if let (Err(e), Some(k), true) = (&result, key, source.complete()) {
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
            progress.layer_done(index);
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
