//! The pull pipeline: resolve → signature policy (before any layer is used) → every layer key
//! unwrapped → a space check (the compressed layers must fit where they go, else a typed error
//! before any download) → for each layer in order, in one pass from the socket: its digest
//! hashed as it arrives → decrypt (ocicrypt, HMAC over the ciphertext) → decompress → the
//! diff_id hashed → unpacked into a staging directory → at the end of the stream the digest,
//! the HMAC and the diff_id checked → the staging directory published as the bundle's rootfs
//! with one rename.
//!
//! Every byte is read once and every hash computed once; nothing is written to be read back.
//! Blobs are not kept: the store after a pull holds the rootfs only, unless
//! [`PullOptions::blob_cache`] names a directory (storage the operator chose), where verified
//! blobs are kept for later pulls. Up to [`PullOptions::concurrency`] layers of a pull download
//! at once, each a bounded window ahead of the unpacker (`download.rs`). Concurrent pulls of one
//! blob share one download (`download.rs` says how, and when a late pull downloads its own).
//!
//! Nothing is visible as ready before every digest, diff_id and tag has held: a failure at any
//! step removes the staging directory and leaves the bundle as it was.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

mod blobs;
mod download;
mod layers;
mod pipe;
mod space;

use blobs::{Inflight, Tasks, report_downloads};
use layers::PullKekCache;
pub use layers::decompress;

use crate::digest::{Digest, VerifyError};
use crate::kbs::KbsResources;
use crate::ocicrypt::{LayerMediaType, PrivateKey};
use crate::policy::{Accepted, Policy, PolicyError};
use crate::progress::{LayerInfo, NoProgress, PullProgress};
use crate::registry::{Registry, RegistryError};
use crate::unpack::UnpackPolicy;

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
    /// The image's `User` names an account its `/etc/passwd` or `/etc/group` does not define.
    #[error("image user `{user}`: {detail}")]
    User { user: String, detail: String },
    /// The image does not fit on the filesystem it is pulled to.
    #[error(
        "{path} has {available} bytes free; the image needs at least {needed} (its compressed \
         layers; unpacked it is usually larger)"
    )]
    NoSpace {
        path: PathBuf,
        needed: u64,
        available: u64,
    },
    /// The bundle's filesystem filled while a layer was unpacked: the image unpacks larger than
    /// the space the check before the pull could see (its compressed size). Nothing is
    /// published; what was unpacked is removed.
    #[error(
        "layer {index} ({digest}): the bundle's filesystem is full; the image unpacks larger than \
         the free space checked before the pull (which can only see its compressed size)"
    )]
    Full { index: usize, digest: String },
    /// The manifest's layer sizes cannot be added up.
    #[error("checking the space an image needs: {detail}")]
    Space { detail: String },
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

/// Settings of a puller.
#[derive(Clone, Debug)]
pub struct PullOptions {
    /// Where verified blobs are kept for later pulls (`<blob_cache>/blobs/<hex>`), if anywhere.
    /// `None` (the default) keeps none: a pull leaves its rootfs and nothing else. Put it on
    /// storage the operator chose (a SecureMount volume), not on guest memory.
    pub blob_cache: Option<PathBuf>,
    /// Layers of one pull downloading at once (each a bounded window ahead of the unpacker).
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
    pub kek: Option<Arc<dyn KbsResources>>,
}

/// Pulls images into bundles, sharing downloads.
pub struct Puller {
    registry: Registry,
    opts: PullOptions,
    policy: Arc<Policy>,
    /// Where `kbs:///` policy keys come from.
    resources: Option<Arc<dyn KbsResources>>,
    /// Downloads under way, by digest, with the pull that started each.
    inflight: Inflight,
    /// The next pull's id.
    pulls: std::sync::atomic::AtomicU64,
}

impl Puller {
    pub fn new(registry: Registry, opts: PullOptions) -> Result<Puller, PullError> {
        if let Some(cache) = &opts.blob_cache {
            std::fs::create_dir_all(cache.join("blobs"))
                .map_err(io(format!("creating {}", cache.display())))?;
        }
        Ok(Puller {
            registry,
            opts,
            policy: Arc::new(Policy::accept_anything()),
            resources: None,
            inflight: std::sync::Mutex::new(HashMap::new()),
            pulls: std::sync::atomic::AtomicU64::new(0),
        })
    }

    /// Checks every image against `policy` (the default accepts anything), with `kbs:///` keys
    /// from `resources`.
    pub fn with_policy(
        mut self,
        policy: Arc<Policy>,
        resources: Option<Arc<dyn KbsResources>>,
    ) -> Puller {
        self.policy = policy;
        self.resources = resources;
        self
    }

    pub fn registry(&self) -> &Registry {
        &self.registry
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
                        cache.as_ref().map(|c| c as &dyn KbsResources),
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

        std::fs::create_dir_all(bundle).map_err(io(format!("creating {}", bundle.display())))?;
        // Room for the layers where they go, before a byte is fetched.
        let unpacked = space::compressed_size(&resolved.layers)?;
        let to_cache = space::compressed_size(
            resolved
                .layers
                .iter()
                .filter(|l| Digest::parse(&l.digest).is_ok_and(|d| !self.cached(&d))),
        )?;
        space::check(
            bundle,
            unpacked,
            self.opts.blob_cache.as_deref().map(|c| (c, to_cache)),
        )?;

        // Every layer's source now (joining other pulls' downloads while they can be joined);
        // each download starts when the unpacker is near enough (`blobs.rs`).
        let pull_id = self
            .pulls
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let (done, window) = tokio::sync::watch::channel(0usize);
        let tasks: Tasks = Arc::default();
        let mut sources = Vec::with_capacity(resolved.layers.len());
        let mut following = Vec::new();
        for (index, l) in resolved.layers.iter().enumerate() {
            let (source, download) =
                self.start_blob(pull_id, &resolved, index, l, &window, &tasks)?;
            match download {
                None => progress.layer_cached(index),
                Some(d) => following.push((index, d)),
            }
            sources.push(source);
        }
        drop(window);
        let ticker = tokio::spawn(report_downloads(following, progress.clone()));

        let staging = bundle.join(format!(".rootfs.staging-{:016x}", rand::random::<u64>()));
        std::fs::create_dir_all(&staging).map_err(io("creating the staging rootfs"))?;
        let me = self.clone();
        let staging2 = staging.clone();
        let resolved2 = resolved.clone();
        let progress2 = progress.clone();
        let applied = tokio::task::spawn_blocking(move || {
            // `done` drops with this closure, so downloads waiting for the window start (and
            // find no reader) once the unpacker gave up.
            me.apply_all(&resolved2, &kinds, sources, &staging2, &*progress2, &done)
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
        let handles = std::mem::take(&mut *tasks.lock().unwrap_or_else(|e| e.into_inner()));
        for t in handles {
            match t.await {
                Ok(Ok(n)) => fetched = fetched.saturating_add(n),
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
            (Ok(n), _) => Ok(n),
            (Err(_), Some(e)) => Err(e),
            (Err(e), None) => Err(e),
        };
        let encrypted = match applied {
            Ok(n) => n,
            Err(e) => {
                let _ = std::fs::remove_dir_all(&staging);
                return Err(e);
            }
        };
        // Publishing: `config.json` is the bundle's "ready" mark, so it goes first and comes back
        // last. A crash in between leaves a bundle without one (not ready), never a new
        // config.json beside an old or missing rootfs.
        let publish = (|| {
            let spec = crate::bundle::runtime_config(&staging, &resolved.config)?;
            match std::fs::remove_file(bundle.join("config.json")) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                    return Err(io("removing the old config.json")(e));
                }
                _ => {}
            }
            let rootfs = bundle.join("rootfs");
            let old = bundle.join(format!(".rootfs.old-{:016x}", rand::random::<u64>()));
            let had_old = match std::fs::rename(&rootfs, &old) {
                Ok(()) => true,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => false,
                Err(e) => return Err(io("moving the old rootfs aside")(e)),
            };
            std::fs::rename(&staging, &rootfs).map_err(io("publishing the rootfs"))?;
            crate::bundle::write_runtime_config(bundle, &spec)?;
            if had_old {
                let _ = std::fs::remove_dir_all(&old);
            }
            Ok(())
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
}
