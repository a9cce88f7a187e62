//! The owner side: sealing a model directory into an OCI image layout, and unsealing a layout
//! offline to check it (all or nothing: any tampering fails before a byte is written).

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use sha2::{Digest as _, Sha256};

use super::{
    ANN_CHUNK_SIZE, ANN_DIGESTS, ANN_FORMAT, ANN_KEK, ANN_PLAINTEXT_DIGEST, ANN_PLAINTEXT_SIZE,
    ANN_TITLE, ARTIFACT_TYPE, EMPTY_CONFIG, FORMAT, LAYOUT_TAG, MAX_FILES, ModelError,
    PinnedDigests, SEALED_FILE,
};
use crate::digest::Digest;
use crate::registry::OCI_MANIFEST;
use crate::sealed::{Kek, KekId, OpenOptions, SealParams, open, seal};

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> ModelError {
    let what = what.into();
    move |source| ModelError::Io { what, source }
}

/// A sealed model layout.
#[derive(Debug, Clone)]
pub struct SealedModel {
    pub layout: PathBuf,
    pub manifest_digest: Digest,
    pub kek_id: String,
    /// Plaintext SHA-256 per file name.
    pub digests: PinnedDigests,
}

/// A writer that hashes what it writes.
struct Hashing<W> {
    inner: W,
    hash: Sha256,
    len: u64,
}

impl<W: Write> Write for Hashing<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hash.update(&buf[..n]);
        self.len += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// The regular files under `dir`, as (relative name with `/`, path), sorted by name. Symlinks
/// and special files are refused: a model is plain files.
fn model_files(dir: &Path) -> Result<Vec<(String, PathBuf)>, ModelError> {
    let mut out = Vec::new();
    let mut stack = vec![(String::new(), dir.to_path_buf())];
    while let Some((prefix, d)) = stack.pop() {
        let entries = std::fs::read_dir(&d).map_err(io(format!("reading {}", d.display())))?;
        for e in entries {
            let e = e.map_err(io(format!("reading {}", d.display())))?;
            let name = e.file_name().into_string().map_err(|n| {
                ModelError::Malformed(format!("{n:?} in {} is not UTF-8", d.display()))
            })?;
            let rel = if prefix.is_empty() {
                name
            } else {
                format!("{prefix}/{name}")
            };
            let kind = e.file_type().map_err(io(e.path().display().to_string()))?;
            if kind.is_dir() {
                stack.push((rel, e.path()));
            } else if kind.is_file() {
                out.push((rel, e.path()));
            } else {
                return Err(ModelError::Malformed(format!(
                    "{} is not a regular file or directory",
                    e.path().display()
                )));
            }
            if out.len() > MAX_FILES {
                return Err(ModelError::Malformed(format!(
                    "more than {MAX_FILES} files"
                )));
            }
        }
    }
    out.sort();
    if out.is_empty() {
        return Err(ModelError::Malformed(format!(
            "{} holds no file",
            dir.display()
        )));
    }
    Ok(out)
}

fn put_blob(blobs: &Path, bytes: &[u8]) -> Result<(Digest, usize), ModelError> {
    let d = Digest::of(bytes);
    std::fs::write(blobs.join(d.hex()), bytes).map_err(io("writing a layout blob"))?;
    Ok((d, bytes.len()))
}

/// Seals every file of `dir` under `kek` (named `kek_id`) into a new OCI layout at `out`
/// (which must not exist), with `chunk_size`-byte chunks. The layout appears only when complete.
pub fn seal_dir(
    dir: &Path,
    out: &Path,
    kek: &Kek,
    kek_id: &str,
    chunk_size: u32,
) -> Result<SealedModel, ModelError> {
    if out.exists() {
        return Err(ModelError::Malformed(format!(
            "{} already exists",
            out.display()
        )));
    }
    let kid = KekId::parse(kek_id).map_err(|source| ModelError::Sealed {
        name: "(KEK id)".into(),
        source,
    })?;
    let files = model_files(dir)?;
    let staging = out.with_extension(format!("partial-{:016x}", rand::random::<u64>()));
    let result = (|| {
        let blobs = staging.join("blobs/sha256");
        std::fs::create_dir_all(&blobs).map_err(io(format!("creating {}", blobs.display())))?;
        std::fs::write(
            staging.join("oci-layout"),
            r#"{"imageLayoutVersion":"1.0.0"}"#,
        )
        .map_err(io("writing oci-layout"))?;
        let mut layers = Vec::new();
        let mut digests = BTreeMap::new();
        for (name, path) in &files {
            let sealed_err = |source| ModelError::Sealed {
                name: name.clone(),
                source,
            };
            let params = SealParams::new(name, kid.clone())
                .and_then(|p| p.with_chunk_size(chunk_size))
                .map_err(sealed_err)?;
            let input = std::fs::File::open(path).map_err(io(path.display().to_string()))?;
            let tmp = blobs.join(format!(".sealing-{}", layers.len()));
            let file = std::fs::File::create(&tmp).map_err(io(tmp.display().to_string()))?;
            let mut w = Hashing {
                inner: std::io::BufWriter::with_capacity(1 << 20, file),
                hash: Sha256::new(),
                len: 0,
            };
            let header =
                seal(std::io::BufReader::new(input), &mut w, kek, &params).map_err(sealed_err)?;
            w.flush().map_err(io(tmp.display().to_string()))?;
            let sealed = Digest::parse(&format!("sha256:{}", hex::encode(w.hash.finalize())))
                .map_err(|e| ModelError::Malformed(e.to_string()))?;
            std::fs::rename(&tmp, blobs.join(sealed.hex()))
                .map_err(io(format!("storing {name}")))?;
            let plain = header.plaintext_sha256().clone();
            layers.push(serde_json::json!({
                "mediaType": SEALED_FILE,
                "digest": sealed.to_string(),
                "size": w.len,
                "annotations": {
                    ANN_TITLE: name,
                    ANN_PLAINTEXT_DIGEST: plain.to_string(),
                    ANN_PLAINTEXT_SIZE: header.layout().plaintext_len().to_string(),
                    ANN_CHUNK_SIZE: chunk_size.to_string(),
                },
            }));
            digests.insert(name.clone(), plain);
        }
        let (config, config_len) = put_blob(&blobs, b"{}")?;
        let digest_map: BTreeMap<&String, String> =
            digests.iter().map(|(k, v)| (k, v.to_string())).collect();
        let manifest = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "artifactType": ARTIFACT_TYPE,
            "config": {"mediaType": EMPTY_CONFIG, "digest": config.to_string(), "size": config_len},
            "layers": layers,
            "annotations": {
                ANN_KEK: kek_id,
                ANN_DIGESTS: serde_json::to_string(&digest_map).unwrap_or_default(),
                ANN_FORMAT: FORMAT,
            },
        });
        let bytes =
            serde_json::to_vec(&manifest).map_err(|e| ModelError::Malformed(e.to_string()))?;
        let (mdigest, mlen) = put_blob(&blobs, &bytes)?;
        let index = serde_json::json!({
            "schemaVersion": 2,
            "manifests": [{"mediaType": OCI_MANIFEST, "artifactType": ARTIFACT_TYPE,
                           "digest": mdigest.to_string(), "size": mlen,
                           "annotations": {"org.opencontainers.image.ref.name": LAYOUT_TAG}}],
        });
        std::fs::write(staging.join("index.json"), index.to_string())
            .map_err(io("writing index.json"))?;
        Ok((mdigest, digests))
    })();
    match result {
        Ok((manifest_digest, digests)) => {
            std::fs::rename(&staging, out).map_err(io(format!("publishing {}", out.display())))?;
            Ok(SealedModel {
                layout: out.to_path_buf(),
                manifest_digest,
                kek_id: kek_id.to_string(),
                digests,
            })
        }
        Err(e) => {
            let _ = std::fs::remove_dir_all(&staging);
            Err(e)
        }
    }
}

/// Reads a blob of the layout, checking its digest.
fn read_blob(layout: &Path, digest: &str) -> Result<(Digest, Vec<u8>), ModelError> {
    let d = Digest::parse(digest).map_err(|e| ModelError::Malformed(e.to_string()))?;
    let bytes = std::fs::read(layout.join("blobs/sha256").join(d.hex()))
        .map_err(io(format!("blob {d} of {}", layout.display())))?;
    if Digest::of(&bytes) != d {
        return Err(ModelError::Malformed(format!(
            "blob {d} does not match its digest"
        )));
    }
    Ok((d, bytes))
}

/// The manifest of a sealed-model layout, by its tag.
pub(super) fn layout_manifest(layout: &Path) -> Result<(Digest, serde_json::Value), ModelError> {
    let index: serde_json::Value = serde_json::from_slice(
        &std::fs::read(layout.join("index.json")).map_err(io("reading index.json"))?,
    )
    .map_err(|e| ModelError::Malformed(format!("index.json: {e}")))?;
    let entry = index["manifests"]
        .as_array()
        .and_then(|m| {
            m.iter().find(|d| {
                d["annotations"]["org.opencontainers.image.ref.name"].as_str() == Some(LAYOUT_TAG)
            })
        })
        .ok_or_else(|| ModelError::Malformed(format!("no manifest tagged {LAYOUT_TAG}")))?;
    let (d, bytes) = read_blob(layout, entry["digest"].as_str().unwrap_or_default())?;
    let m = serde_json::from_slice(&bytes).map_err(|e| ModelError::Malformed(e.to_string()))?;
    Ok((d, m))
}

/// The manifest digest, KEK id and plaintext digests (from the annotations) of a local sealed
/// layout, for printing the policy entry after a push.
pub fn layout_digests(layout: &Path) -> Result<(Digest, String, PinnedDigests), ModelError> {
    let (d, kid) = layout_kek_id(layout)?;
    let (_, manifest) = layout_manifest(layout)?;
    let mut digests = BTreeMap::new();
    for l in manifest["layers"].as_array().cloned().unwrap_or_default() {
        let name = l["annotations"][ANN_TITLE]
            .as_str()
            .unwrap_or_default()
            .to_string();
        let pd = l["annotations"][ANN_PLAINTEXT_DIGEST]
            .as_str()
            .and_then(|x| Digest::parse(x).ok())
            .ok_or_else(|| ModelError::Mismatch {
                name: name.clone(),
                detail: "no plaintext digest annotation".into(),
            })?;
        digests.insert(name, pd);
    }
    Ok((d, kid, digests))
}

/// The manifest digest and KEK id of a local sealed layout (to ask the KBS for the KEK).
pub fn layout_kek_id(layout: &Path) -> Result<(Digest, String), ModelError> {
    let (d, manifest) = layout_manifest(layout)?;
    let kid = manifest["annotations"][ANN_KEK]
        .as_str()
        .ok_or_else(|| ModelError::Malformed(format!("no {ANN_KEK} annotation")))?;
    KekId::parse(kid).map_err(|source| ModelError::Sealed {
        name: "(manifest)".into(),
        source,
    })?;
    Ok((d, kid.to_string()))
}

/// Opens every file of a local layout with `kek` in memory, checked like a registry fetch:
/// headers against annotations and the manifest's KEK id, plaintext digests against the
/// annotations and `pinned` (which must name every file when given).
pub fn load_layout(
    layout: &Path,
    kek: &Kek,
    pinned: Option<&PinnedDigests>,
) -> Result<super::LoadedModel, ModelError> {
    let (manifest_digest, manifest) = layout_manifest(layout)?;
    let kid = manifest["annotations"][ANN_KEK]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let layers = manifest["layers"].as_array().cloned().unwrap_or_default();
    if layers.is_empty() || layers.len() > MAX_FILES {
        return Err(ModelError::Malformed(format!(
            "{} files (1 to {MAX_FILES})",
            layers.len()
        )));
    }
    let mut files = Vec::new();
    for l in &layers {
        let name = l["annotations"][ANN_TITLE]
            .as_str()
            .unwrap_or_default()
            .to_string();
        if l["mediaType"] != SEALED_FILE {
            return Err(ModelError::Mismatch {
                name,
                detail: format!("media type {} is not a sealed file", l["mediaType"]),
            });
        }
        let annotated = l["annotations"][ANN_PLAINTEXT_DIGEST]
            .as_str()
            .and_then(|d| Digest::parse(d).ok())
            .ok_or_else(|| ModelError::Mismatch {
                name: name.clone(),
                detail: "no plaintext digest annotation".into(),
            })?;
        let expected = match pinned {
            Some(p) => p.get(&name).cloned().ok_or_else(|| ModelError::Policy {
                name: name.clone(),
                expected: "(not pinned)".into(),
                found: "a file policy does not name".into(),
            })?,
            None => annotated.clone(),
        };
        let (_, bytes) = read_blob(layout, l["digest"].as_str().unwrap_or_default())?;
        let file = open(&bytes, kek, &OpenOptions::default().expect_digest(expected)).map_err(
            |source| ModelError::Sealed {
                name: name.clone(),
                source,
            },
        )?;
        super::fetch::check_header(&name, &kid, &file.header)?;
        if *file.header.plaintext_sha256() != annotated {
            return Err(ModelError::Mismatch {
                name,
                detail: "the annotation and the sealed header disagree".into(),
            });
        }
        files.push(super::ModelFile {
            name,
            digest: file.header.plaintext_sha256().clone(),
            data: file.plaintext,
            sealed: true,
        });
    }
    if let Some(p) = pinned
        && let Some(missing) = p.keys().find(|n| !files.iter().any(|f| &f.name == *n))
    {
        return Err(ModelError::MissingFile(missing.clone()));
    }
    Ok(super::LoadedModel {
        reference: layout.display().to_string(),
        manifest_digest,
        kek_id: kid,
        files,
    })
}

/// Opens every file of the layout with `kek` and writes the plaintexts under `out` (which must
/// not exist), only after every file verified. Returns the plaintext digests.
pub fn unseal_layout(layout: &Path, kek: &Kek, out: &Path) -> Result<PinnedDigests, ModelError> {
    if out.exists() {
        return Err(ModelError::Malformed(format!(
            "{} already exists",
            out.display()
        )));
    }
    let model = load_layout(layout, kek, None)?;
    let staging = out.with_extension(format!("partial-{:016x}", rand::random::<u64>()));
    let written = (|| {
        let mut digests = BTreeMap::new();
        for f in &model.files {
            // Names passed FileName's rules (relative, no `..`, no empty component).
            let path = staging.join(&f.name);
            if let Some(parent) = path.parent() {
                std::fs::create_dir_all(parent).map_err(io(parent.display().to_string()))?;
            }
            std::fs::write(&path, &f.data[..]).map_err(io(path.display().to_string()))?;
            digests.insert(f.name.clone(), f.digest.clone());
        }
        std::fs::rename(&staging, out).map_err(io(format!("publishing {}", out.display())))?;
        Ok(digests)
    })();
    if written.is_err() {
        let _ = std::fs::remove_dir_all(&staging);
    }
    written
}
