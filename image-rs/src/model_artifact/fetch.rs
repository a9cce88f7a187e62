//! The guest side: a sealed model from a registry into guest memory. Each file's bytes go from
//! the registry stream (digest-checked) to a decrypting thread through a bounded channel, so a
//! file decrypts on all cores while it downloads and memory holds the plaintext plus a few
//! chunks in flight. A file is handed out only when its header, chunks, plaintext digest,
//! annotations and the policy's pin all agree.

use std::sync::mpsc::{Receiver, SyncSender, sync_channel};

use bytes::Bytes;

use futures_util::StreamExt as _;
use zeroize::Zeroizing;

use super::{
    ANN_KEK, ANN_PLAINTEXT_DIGEST, ANN_TITLE, ARTIFACT_TYPE, CLEAR_FILE, MAX_FILES, ModelError,
    PinnedDigests, SEALED_FILE,
};
use crate::digest::Digest;
use crate::kbs::KbsResources;
use crate::ocicrypt::PrivateKey;
use crate::registry::{Descriptor, Registry};
use crate::sealed::{Kek, KekId, OpenOptions, PlaintextBuffer, SealedHeader, StreamOpener};

/// Largest model file.
pub const MAX_FILE: u64 = 1 << 40;

/// One file of a loaded model: its plaintext in guest memory (locked where allowed, zeroized on
/// drop).
pub struct ModelFile {
    pub name: String,
    /// SHA-256 of the plaintext (checked).
    pub digest: Digest,
    pub data: PlaintextBuffer,
    pub sealed: bool,
}

impl std::fmt::Debug for ModelFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "ModelFile({}, {}, {} bytes)",
            self.name,
            self.digest,
            self.data.len()
        )
    }
}

/// A model in guest memory.
#[derive(Debug)]
pub struct LoadedModel {
    pub reference: String,
    pub manifest_digest: Digest,
    pub kek_id: String,
    pub files: Vec<ModelFile>,
}

impl LoadedModel {
    /// The file named `name`.
    pub fn file(&self, name: &str) -> Option<&ModelFile> {
        self.files.iter().find(|f| f.name == name)
    }
}

/// Checks that an authenticated header names what the manifest says.
pub(super) fn check_header(name: &str, kid: &str, header: &SealedHeader) -> Result<(), ModelError> {
    if header.name().as_str() != name {
        return Err(ModelError::Mismatch {
            name: name.to_string(),
            detail: format!("the sealed header names it {}", header.name().as_str()),
        });
    }
    if header.kek_id().as_str() != kid {
        return Err(ModelError::Mismatch {
            name: name.to_string(),
            detail: format!(
                "sealed under {}, the manifest says {kid}",
                header.kek_id().as_str()
            ),
        });
    }
    Ok(())
}

/// Pieces in flight between a download and the thread that opens or unpacks it.
const PIECES_IN_FLIGHT: usize = 64;

/// Pieces of a blob from the download to the thread that opens or unpacks it, as received (no
/// copy), a bounded number in flight.
pub(super) struct Pieces {
    tx: SyncSender<Bytes>,
    /// The receiving thread stopped (it failed): its error is the one to report.
    closed: bool,
}

impl Pieces {
    pub(super) fn channel() -> (Pieces, Receiver<Bytes>) {
        let (tx, rx) = sync_channel(PIECES_IN_FLIGHT);
        (Pieces { tx, closed: false }, rx)
    }

    /// Downloads the blob `desc` into the channel, its digest verified as it goes.
    pub(super) async fn download(
        mut self,
        registry: &Registry,
        at: &oci_client::Reference,
        desc: &Descriptor,
        digest: &Digest,
        limit: u64,
    ) -> Download {
        let tx = &self.tx;
        let closed = &mut self.closed;
        let result = registry
            .stream_blob_pieces(
                at,
                desc,
                digest,
                &mut |piece| {
                    tx.send(piece).map_err(|_| {
                        *closed = true;
                        std::io::Error::other("the receiving thread stopped")
                    })
                },
                limit,
            )
            .await;
        Download {
            result,
            receiver_stopped: self.closed,
        }
    }
}

/// How a download into [`Pieces`] ended.
pub(super) struct Download {
    result: Result<(), crate::registry::RegistryError>,
    /// The consumer stopped first.
    receiver_stopped: bool,
}

impl Download {
    /// The result to report, given the consumer's: a download that failed on its own (network,
    /// size, digest) caused whatever the consumer saw, so its error wins; a consumer that failed
    /// first stopped the download, and then the consumer's error is the real one.
    pub(super) fn blame<T, E>(
        self,
        consumed: Result<T, E>,
        consumer_err: impl FnOnce(E) -> ModelError,
    ) -> Result<T, ModelError> {
        match (self.result, consumed) {
            (Err(_), Err(e)) if self.receiver_stopped => Err(consumer_err(e)),
            (Err(e), _) => Err(e.into()),
            (Ok(()), c) => c.map_err(consumer_err),
        }
    }
}

struct Want {
    name: String,
    sealed: bool,
    layer_digest: Digest,
    pinned: Option<Digest>,
    annotated: Option<Digest>,
}

/// Fetches the model `reference` into guest memory.
///
/// A sealed model (artifact type [`ARTIFACT_TYPE`]) gets its KEK from `keks`, and every file is
/// checked against `pinned` (when given, it must name every file of the model and nothing else).
/// Any other reference is taken as an ordinary OCI image whose tar layers (optionally
/// ocicrypt-encrypted: JWE recipients opened with `keys`, key-provider packets with `keks`) hold
/// the model files: `pinned` is then required and names the paths to load.
pub async fn fetch_model(
    registry: &Registry,
    reference: &str,
    keks: &dyn KbsResources,
    keys: &[PrivateKey],
    pinned: Option<&PinnedDigests>,
    concurrency: usize,
) -> Result<LoadedModel, ModelError> {
    let r = Registry::reference(reference)?;
    let artifact = match registry.resolve_artifact(&r).await {
        Ok(a) if a.artifact_type.as_deref() == Some(ARTIFACT_TYPE) => a,
        // An image manifest, or an index of them: a model shipped as an image.
        Ok(_) | Err(crate::registry::RegistryError::Malformed { .. }) => {
            let image = registry.resolve(&r).await.map_err(|e| {
                ModelError::Malformed(format!(
                    "{reference} is neither a sealed model nor an image: {e}"
                ))
            })?;
            let pinned = pinned.ok_or_else(|| {
                ModelError::Malformed(format!(
                    "{reference} is an image: pin the digests of the files to load from it"
                ))
            })?;
            return super::image::fetch_model_image(
                registry,
                reference,
                image,
                keks,
                keys,
                pinned,
                concurrency,
            )
            .await;
        }
        Err(e) => return Err(e.into()),
    };
    if artifact.layers.len() > MAX_FILES || artifact.layers.is_empty() {
        return Err(ModelError::Malformed(format!(
            "{} files (1 to {MAX_FILES})",
            artifact.layers.len()
        )));
    }
    let kid = artifact
        .annotations
        .get(ANN_KEK)
        .cloned()
        .ok_or_else(|| ModelError::Malformed(format!("no {ANN_KEK} annotation")))?;
    let kek_id = KekId::parse(&kid).map_err(|source| ModelError::Sealed {
        name: "(manifest)".into(),
        source,
    })?;
    let mut wants = Vec::new();
    for l in &artifact.layers {
        let name = l
            .annotations
            .get(ANN_TITLE)
            .cloned()
            .ok_or_else(|| ModelError::Malformed(format!("layer {} has no title", l.digest)))?;
        let sealed = match l.media_type.as_str() {
            SEALED_FILE => true,
            CLEAR_FILE => false,
            other => {
                return Err(ModelError::Mismatch {
                    name,
                    detail: format!("media type {other} is not a model file this ward knows"),
                });
            }
        };
        if u64::try_from(l.size).unwrap_or(u64::MAX) > MAX_FILE {
            return Err(ModelError::Mismatch {
                name,
                detail: "too large".into(),
            });
        }
        if wants.iter().any(|w: &Want| w.name == name) {
            return Err(ModelError::Malformed(format!("{name} appears twice")));
        }
        let pin = match pinned {
            Some(p) => Some(p.get(&name).cloned().ok_or_else(|| ModelError::Policy {
                name: name.clone(),
                expected: "(not pinned)".into(),
                found: "a file policy does not name".into(),
            })?),
            None => None,
        };
        wants.push(Want {
            name,
            sealed,
            layer_digest: Digest::parse(&l.digest)
                .map_err(|e| ModelError::Malformed(e.to_string()))?,
            pinned: pin,
            annotated: l
                .annotations
                .get(ANN_PLAINTEXT_DIGEST)
                .and_then(|d| Digest::parse(d).ok()),
        });
    }
    if let Some(p) = pinned
        && let Some(missing) = p.keys().find(|n| !wants.iter().any(|w| &w.name == *n))
    {
        return Err(ModelError::MissingFile(missing.clone()));
    }
    let kek = if wants.iter().any(|w| w.sealed) {
        let bytes = keks
            .resource(kek_id.resource_uri())
            .await
            .map_err(|e| ModelError::Kek {
                kid: kid.clone(),
                detail: e.to_string(),
            })?;
        Some(
            Kek::from_slice(&bytes).map_err(|source| ModelError::Sealed {
                name: "(KEK)".into(),
                source,
            })?,
        )
    } else {
        None
    };

    // Boxed futures (not closures over borrowed data) so the whole load can be spawned.
    type Job<'a> = std::pin::Pin<
        Box<dyn std::future::Future<Output = Result<(usize, ModelFile), ModelError>> + Send + 'a>,
    >;
    let mut jobs: Vec<Job<'_>> = Vec::with_capacity(wants.len());
    for (i, (desc, want)) in artifact.layers.iter().zip(wants).enumerate() {
        let kek = kek.as_ref();
        let at = &artifact.reference;
        let kid = kid.as_str();
        jobs.push(Box::pin(async move {
            fetch_file(registry, at, desc, want, kek, kid)
                .await
                .map(|f| (i, f))
        }));
    }
    let mut results: Vec<(usize, ModelFile)> = Vec::new();
    let mut stream = futures_util::stream::iter(jobs).buffer_unordered(concurrency.max(1));
    while let Some(r) = stream.next().await {
        results.push(r?);
    }
    drop(stream);
    results.sort_by_key(|(i, _)| *i);
    Ok(LoadedModel {
        reference: reference.to_string(),
        manifest_digest: artifact.manifest_digest,
        kek_id: kid,
        files: results.into_iter().map(|(_, f)| f).collect(),
    })
}

async fn fetch_file(
    registry: &Registry,
    at: &oci_client::Reference,
    desc: &Descriptor,
    want: Want,
    kek: Option<&Kek>,
    kid: &str,
) -> Result<ModelFile, ModelError> {
    let name = want.name.clone();
    if !want.sealed {
        // Clear files (public tokenizers and configs) are small: read, then moved into locked
        // memory like the rest.
        let mut bytes = Zeroizing::new(Vec::new());
        registry
            .stream_blob(at, desc, &want.layer_digest, &mut *bytes, MAX_FILE)
            .await?;
        let digest = Digest::of(&bytes);
        let data = PlaintextBuffer::copy_from(&bytes).map_err(|source| ModelError::Sealed {
            name: name.clone(),
            source,
        })?;
        if let Some(p) = &want.pinned
            && *p != digest
        {
            return Err(ModelError::Policy {
                name,
                expected: p.to_string(),
                found: digest.to_string(),
            });
        }
        return Ok(ModelFile {
            name: want.name,
            digest,
            data,
            sealed: false,
        });
    }
    let kek = kek
        .ok_or_else(|| ModelError::Malformed("no KEK".into()))?
        .clone();
    let mut options = OpenOptions::default();
    if let Some(p) = want.pinned.clone().or(want.annotated.clone()) {
        options = options.expect_digest(p);
    }
    let (pieces, rx) = Pieces::channel();
    let opener = tokio::task::spawn_blocking(move || StreamOpener::new(&kek, options).open(rx));
    let downloaded = pieces
        .download(registry, at, desc, &want.layer_digest, MAX_FILE)
        .await;
    let opened = opener
        .await
        .map_err(|e| ModelError::Malformed(e.to_string()))?;
    let file = downloaded.blame(opened, |source| ModelError::Sealed {
        name: name.clone(),
        source,
    })?;
    check_header(&name, kid, &file.header)?;
    let digest = file.header.plaintext_sha256().clone();
    if let Some(a) = &want.annotated
        && *a != digest
    {
        return Err(ModelError::Mismatch {
            name,
            detail: format!("annotated {a}, sealed {digest}"),
        });
    }
    Ok(ModelFile {
        name: want.name,
        digest,
        data: file.plaintext,
        sealed: true,
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;
    use crate::registry::RegistryError;

    fn download(failed: bool, receiver_stopped: bool) -> Download {
        Download {
            result: if failed {
                Err(RegistryError::Io {
                    what: "blob".into(),
                    source: std::io::Error::other("network"),
                })
            } else {
                Ok(())
            },
            receiver_stopped,
        }
    }

    fn consumer(e: &'static str) -> ModelError {
        ModelError::Malformed(e.into())
    }

    #[test]
    fn the_side_that_failed_first_is_blamed() {
        // The consumer refused the bytes and stopped the download: its error is the cause.
        let r = download(true, true).blame(Err::<(), _>("tag"), consumer);
        assert!(matches!(r, Err(ModelError::Malformed(m)) if m == "tag"));
        // The download failed on its own: whatever the consumer saw follows from it.
        let r = download(true, false).blame(Err::<(), _>("short"), consumer);
        assert!(matches!(r, Err(ModelError::Registry(_))));
        let r = download(true, false).blame(Ok::<_, &str>(()), consumer);
        assert!(matches!(r, Err(ModelError::Registry(_))));
        // A complete download: the consumer's result stands.
        let r = download(false, false).blame(Err::<(), _>("digest"), consumer);
        assert!(matches!(r, Err(ModelError::Malformed(m)) if m == "digest"));
        assert!(
            download(false, false)
                .blame(Ok::<_, &str>(7), consumer)
                .is_ok()
        );
    }
}
