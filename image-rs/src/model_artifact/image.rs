//! Models shipped as ordinary OCI images: tar layers (plain, gzip or zstd), optionally
//! ocicrypt-encrypted, the way existing tools ship them (`skopeo copy --encryption-key jwe:...`,
//! or the CoCo `provider.attestation-agent` key provider whose KEK lives in the KBS, as
//! `ward image encrypt` writes). Each layer streams from the registry through the ocicrypt
//! decryptor, the decompressor and a tar reader straight into guest memory: only the files the
//! policy pins are kept, each in its own locked [`PlaintextBuffer`], and nothing touches disk.
//!
//! Nothing is handed out before the whole layer has been read: an encrypted layer's HMAC is
//! checked at its end and its diff_id after that, so a file is released only when its layer
//! authenticated, its diff_id matched the image config and its own SHA-256 matched its pin.
//! Layers apply in order with OCI whiteouts, as a container runtime would stack them.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Read;
use std::path::{Component, Path};
use std::sync::Arc;
use std::sync::mpsc::Receiver;

use bytes::Bytes;
use futures_util::StreamExt as _;
use ward_kbs_wire::ResourceUri;
use zeroize::Zeroizing;

use super::fetch::Pieces;
use super::{LoadedModel, ModelError, ModelFile, PinnedDigests};
use crate::digest::{Digest, VerifyingReader};
use crate::kbs::{KbsResources, ResourceError};
use crate::ocicrypt::{
    Compression, LayerAnnotations, LayerDecryptor, LayerMediaType, PrivateKey, PrivateOptions,
    PublicOptions,
};
use crate::registry::{Descriptor, Registry, ResolvedImage};
use crate::sealed::PlaintextBuffer;

/// Largest layer of a model image.
pub const MAX_LAYER: u64 = 1 << 40;

/// Asks `inner` for KEKs and remembers which key ids it was asked for, as their `ResourceUri`
/// text (the model's KEK ids, for the audit and the config's `kek` pin).
struct RecordingKeks<'a> {
    inner: &'a dyn KbsResources,
    asked: std::sync::Mutex<BTreeSet<String>>,
}

#[async_trait::async_trait]
impl KbsResources for RecordingKeks<'_> {
    async fn resource(&self, uri: &ResourceUri) -> Result<Zeroizing<Vec<u8>>, ResourceError> {
        let k = self.inner.resource(uri).await?;
        if let Ok(mut asked) = self.asked.lock() {
            asked.insert(uri.to_string());
        }
        Ok(k)
    }
}

/// Reads the bytes the download sends, in order.
struct ChannelReader {
    rx: Receiver<Bytes>,
    current: Bytes,
    at: usize,
}

impl Read for ChannelReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        while self.at == self.current.len() {
            match self.rx.recv() {
                Ok(next) => {
                    self.current = next;
                    self.at = 0;
                }
                // The sender is gone: the download ended (its own result says how).
                Err(_) => return Ok(0),
            }
        }
        let rest = self.current.get(self.at..).unwrap_or_default();
        let n = rest.len().min(buf.len());
        buf[..n].copy_from_slice(&rest[..n]);
        self.at += n;
        Ok(n)
    }
}

/// What one layer leaves after it is applied.
#[derive(Default)]
struct LayerFiles {
    files: BTreeMap<String, (Digest, PlaintextBuffer)>,
    /// Whether the layer was ocicrypt-encrypted.
    encrypted: bool,
    /// Paths a whiteout removes from the layers below.
    removed: Vec<String>,
    /// Directories an opaque whiteout empties in the layers below.
    opaque: Vec<String>,
}

/// `a/./b/` as `a/b`; `None` for a path that leaves the root (`..`).
fn normalize(path: &Path) -> Option<String> {
    let mut parts = Vec::new();
    for c in path.components() {
        match c {
            Component::Normal(p) => parts.push(p.to_str()?),
            Component::CurDir | Component::RootDir => {}
            Component::ParentDir | Component::Prefix(_) => return None,
        }
    }
    Some(parts.join("/"))
}

fn under(path: &str, dir: &str) -> bool {
    dir.is_empty()
        || path
            .strip_prefix(dir)
            .is_some_and(|rest| rest.starts_with('/'))
}

/// One layer's key material.
struct LayerKey {
    private: PrivateOptions,
    public: PublicOptions,
}

/// Why a layer's bytes did not unpack (the caller names the layer).
#[derive(Debug, thiserror::Error)]
enum UnpackFail {
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("{0}")]
    Verify(#[from] crate::digest::VerifyError),
    #[error("{name}: {source}")]
    Memory {
        name: String,
        #[source]
        source: crate::sealed::SealedError,
    },
    #[error("{0}")]
    Tar(String),
}

/// The blocking half: decrypt, decompress, read the tar, keep the wanted files.
fn unpack_layer(
    rx: Receiver<Bytes>,
    key: Option<LayerKey>,
    compression: Compression,
    diff_id: &Digest,
    wanted: &BTreeSet<String>,
) -> Result<LayerFiles, UnpackFail> {
    let reader = ChannelReader {
        rx,
        current: Bytes::new(),
        at: 0,
    };
    let mut source: Box<dyn Read> = match &key {
        Some(k) => Box::new(LayerDecryptor::new(reader, &k.private, &k.public)),
        None => Box::new(reader),
    };
    let mut out = LayerFiles {
        encrypted: key.is_some(),
        ..LayerFiles::default()
    };
    if let Err(e) = read_layer(&mut source, compression, diff_id, wanted, &mut out) {
        // Altered ciphertext decrypts to garbage that can break the decompressor or the tar
        // before the end: when the rest fails its HMAC, that is the cause to name.
        if key.is_some()
            && let Err(drained) = std::io::copy(&mut source, &mut std::io::sink())
            && crate::ocicrypt::layer::layer_error(&drained).is_some()
        {
            return Err(UnpackFail::Io(drained));
        }
        return Err(e);
    }
    Ok(out)
}

/// Reads one layer's plaintext stream to its end into `out`, then checks its diff_id (for an
/// encrypted layer, its HMAC is checked when the stream reaches its end). On any failure the
/// buffers already filled are zeroized as they drop.
fn read_layer(
    source: &mut dyn Read,
    compression: Compression,
    diff_id: &Digest,
    wanted: &BTreeSet<String>,
    out: &mut LayerFiles,
) -> Result<(), UnpackFail> {
    let tar = crate::pull::decompress(source, compression)?;
    let mut verifying = VerifyingReader::new(tar, MAX_LAYER);
    {
        let mut archive = tar::Archive::new(&mut verifying);
        for entry in archive.entries()? {
            let mut entry = entry?;
            let raw = entry.path()?.into_owned();
            let Some(path) = normalize(&raw) else {
                return Err(UnpackFail::Tar(format!(
                    "{} leaves the image root",
                    raw.display()
                )));
            };
            let (dir, base) = match path.rsplit_once('/') {
                Some((d, b)) => (d.to_string(), b),
                None => (String::new(), path.as_str()),
            };
            if base == ".wh..wh..opq" {
                out.opaque.push(dir);
                continue;
            }
            if let Some(gone) = base.strip_prefix(".wh.") {
                out.removed.push(if dir.is_empty() {
                    gone.to_string()
                } else {
                    format!("{dir}/{gone}")
                });
                continue;
            }
            // A later entry for the same path replaces an earlier one, whatever its type.
            out.files.remove(&path);
            let kind = entry.header().entry_type();
            if !(kind.is_file() || kind == tar::EntryType::Continuous) || !wanted.contains(&path) {
                continue;
            }
            let size = entry.header().size()?;
            let mut buf = PlaintextBuffer::allocate(size).map_err(|source| UnpackFail::Memory {
                name: path.clone(),
                source,
            })?;
            entry.read_exact(&mut buf)?;
            let digest = Digest::of(&buf);
            out.files.insert(path, (digest, buf));
        }
    }
    // The rest of the stream (tar padding, and the end where an encrypted layer's HMAC is
    // checked), then the diff_id.
    verifying.finish(diff_id, None)??;
    Ok(())
}

/// Fetches, decrypts and unpacks layer `index` into memory.
#[allow(clippy::too_many_arguments)]
async fn fetch_layer(
    registry: &Registry,
    at: &oci_client::Reference,
    index: usize,
    desc: &Descriptor,
    diff_id: Digest,
    keys: &[PrivateKey],
    keks: &RecordingKeks<'_>,
    wanted: Arc<BTreeSet<String>>,
) -> Result<LayerFiles, ModelError> {
    let fail = |detail: String| ModelError::Layer {
        index,
        digest: desc.digest.clone(),
        detail,
    };
    let media = LayerMediaType::parse(&desc.media_type).map_err(|e| fail(e.to_string()))?;
    let key = if media.is_encrypted() {
        let annotations =
            LayerAnnotations::parse(desc.annotations.iter()).map_err(|e| fail(e.to_string()))?;
        let private = crate::ocicrypt::unwrap_private_options(&annotations, keys, Some(keks))
            .await
            .map_err(|e| fail(format!("no key opens it: {e}")))?;
        Some(LayerKey {
            private,
            public: annotations.public,
        })
    } else {
        None
    };
    let layer_digest = Digest::parse(&desc.digest).map_err(|e| fail(e.to_string()))?;
    if u64::try_from(desc.size).unwrap_or(u64::MAX) > MAX_LAYER {
        return Err(fail("too large".into()));
    }
    let compression = media.compression();
    let (pieces, rx) = Pieces::channel();
    let unpacker =
        tokio::task::spawn_blocking(move || unpack_layer(rx, key, compression, &diff_id, &wanted));
    let downloaded = pieces
        .download(registry, at, desc, &layer_digest, MAX_LAYER)
        .await;
    let unpacked = unpacker.await.map_err(|e| fail(e.to_string()))?;
    downloaded.blame(unpacked, |e| match e {
        UnpackFail::Memory { name, source } => ModelError::Sealed { name, source },
        other => fail(other.to_string()),
    })
}

/// Loads the files `pinned` names from the image `image` (resolved from `reference`): every
/// layer fetched and unpacked in memory (`concurrency` at a time), stacked in order, and each
/// pinned file checked against its digest.
pub(super) async fn fetch_model_image(
    registry: &Registry,
    reference: &str,
    image: ResolvedImage,
    keks: &dyn KbsResources,
    keys: &[PrivateKey],
    pinned: &PinnedDigests,
    concurrency: usize,
) -> Result<LoadedModel, ModelError> {
    if image.layers.len() != image.diff_ids.len() {
        return Err(ModelError::Malformed(format!(
            "{} layers but {} diff_ids",
            image.layers.len(),
            image.diff_ids.len()
        )));
    }
    let wanted: Arc<BTreeSet<String>> = Arc::new(pinned.keys().cloned().collect());
    let keks = RecordingKeks {
        inner: keks,
        asked: std::sync::Mutex::new(BTreeSet::new()),
    };
    let mut jobs = Vec::with_capacity(image.layers.len());
    for (i, (desc, diff_id)) in image.layers.iter().zip(&image.diff_ids).enumerate() {
        let (keks, at, wanted) = (&keks, &image.reference, wanted.clone());
        let diff_id = diff_id.clone();
        jobs.push(async move {
            fetch_layer(registry, at, i, desc, diff_id, keys, keks, wanted)
                .await
                .map(|l| (i, l))
        });
    }
    let mut layers: Vec<(usize, LayerFiles)> = Vec::with_capacity(jobs.len());
    let mut stream = futures_util::stream::iter(jobs).buffer_unordered(concurrency.max(1));
    while let Some(r) = stream.next().await {
        layers.push(r?);
    }
    drop(stream);
    layers.sort_by_key(|(i, _)| *i);

    // Stack the layers: whiteouts remove what lies below them, later files replace earlier ones.
    let mut merged: BTreeMap<String, (Digest, PlaintextBuffer, bool)> = BTreeMap::new();
    for (_, layer) in layers {
        for dir in &layer.opaque {
            merged.retain(|p, _| !under(p, dir));
        }
        for gone in &layer.removed {
            merged.retain(|p, _| p != gone && !under(p, gone));
        }
        let encrypted = layer.encrypted;
        merged.extend(
            layer
                .files
                .into_iter()
                .map(|(p, (d, b))| (p, (d, b, encrypted))),
        );
    }
    let mut files = Vec::with_capacity(pinned.len());
    for (name, expected) in pinned {
        let (digest, data, encrypted) = merged
            .remove(name)
            .ok_or_else(|| ModelError::MissingFile(name.clone()))?;
        if digest != *expected {
            return Err(ModelError::Policy {
                name: name.clone(),
                expected: expected.to_string(),
                found: digest.to_string(),
            });
        }
        files.push(ModelFile {
            name: name.clone(),
            digest,
            data,
            sealed: encrypted,
        });
    }
    let kek_id = keks
        .asked
        .lock()
        .map_err(|_| ModelError::Malformed("the KEK record was poisoned".into()))?
        .iter()
        .cloned()
        .collect::<Vec<_>>()
        .join(",");
    Ok(LoadedModel {
        reference: reference.to_string(),
        manifest_digest: image.manifest_digest,
        kek_id,
        files,
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;
    use std::sync::mpsc::sync_channel;

    #[test]
    fn paths_normalize_and_never_leave_the_root() {
        assert_eq!(
            normalize(Path::new("./models/a.gguf")).unwrap(),
            "models/a.gguf"
        );
        assert_eq!(normalize(Path::new("/models//b")).unwrap(), "models/b");
        assert!(normalize(Path::new("models/../../etc/shadow")).is_none());
        assert!(under("models/a", "models"));
        assert!(!under("modelsx/a", "models"));
        assert!(under("anything", ""));
    }

    fn tar_of(entries: &[(&str, &[u8])]) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        for (name, data) in entries {
            let mut h = tar::Header::new_gnu();
            h.set_size(data.len() as u64);
            h.set_mode(0o644);
            h.set_entry_type(tar::EntryType::Regular);
            b.append_data(&mut h, name, *data).unwrap();
        }
        b.into_inner().unwrap()
    }

    fn unpack(tar: &[u8], wanted: &[&str]) -> Result<LayerFiles, UnpackFail> {
        let (tx, rx) = sync_channel(tar.len() / 1000 + 1);
        for c in tar.chunks(1000) {
            tx.send(Bytes::copy_from_slice(c)).unwrap();
        }
        drop(tx);
        let wanted = wanted.iter().map(|s| s.to_string()).collect();
        unpack_layer(rx, None, Compression::None, &Digest::of(tar), &wanted)
    }

    #[test]
    fn keeps_only_wanted_files_and_records_whiteouts() {
        let t = tar_of(&[
            ("models/w.bin", &[7u8; 5000]),
            ("etc/passwd", b"root"),
            ("old/.wh.x", b""),
            ("gone/.wh..wh..opq", b""),
        ]);
        let l = unpack(&t, &["models/w.bin"]).unwrap();
        assert_eq!(l.files.len(), 1);
        let (d, buf) = &l.files["models/w.bin"];
        assert_eq!(*d, Digest::of(&[7u8; 5000]));
        assert_eq!(&buf[..], &[7u8; 5000]);
        assert_eq!(l.removed, vec!["old/x".to_string()]);
        assert_eq!(l.opaque, vec!["gone".to_string()]);
    }

    #[test]
    fn a_wrong_diff_id_releases_nothing() {
        let t = tar_of(&[("m", b"weights")]);
        let (tx, rx) = sync_channel(4);
        tx.send(Bytes::from(t.clone())).unwrap();
        drop(tx);
        let wanted = ["m".to_string()].into_iter().collect();
        let e = unpack_layer(rx, None, Compression::None, &Digest::of(b"other"), &wanted);
        assert!(matches!(e, Err(UnpackFail::Verify(_))));
    }

    #[test]
    fn escaping_paths_are_refused() {
        let mut raw = tar_of(&[("placeholder", b"1")]);
        // tar::Builder refuses `..`; write the name into the header by hand.
        let mut name = [0u8; 100];
        name[..11].copy_from_slice(b"../../etc/x");
        raw[..100].copy_from_slice(&name);
        let mut h = tar::Header::from_byte_slice(&raw[..512]).clone();
        h.set_cksum();
        raw[..512].copy_from_slice(h.as_bytes());
        assert!(matches!(unpack(&raw, &[]), Err(UnpackFail::Tar(_))));
    }
}
