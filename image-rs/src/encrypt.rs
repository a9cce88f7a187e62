//! The owner side of image encryption: rewrites an OCI image layout so that every layer is
//! ocicrypt-encrypted (AES-256-CTR + HMAC-SHA256) with its key wrapped for JWE recipients and/or
//! CoCo `attestation-agent` key-provider packets whose KEK is a KBS resource. The result is an
//! ordinary OCI layout that skopeo can push. The plaintext never leaves the owner's machine.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};

use crate::digest::Digest;
use crate::ocicrypt::{
    LayerEncryptor, LayerMediaType, OcicryptError, ProviderRecipient, PublicKey, annotations_for,
};

/// Why an image layout could not be encrypted.
#[derive(Debug, thiserror::Error)]
pub enum EncryptError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("image layout: {0}")]
    Layout(String),
    #[error(transparent)]
    Ocicrypt(#[from] OcicryptError),
}

/// Who may decrypt the layers.
#[derive(Default)]
pub struct Recipients {
    pub jwe: Vec<PublicKey>,
    pub providers: Vec<ProviderRecipient>,
}

fn read(path: &Path) -> Result<Vec<u8>, EncryptError> {
    std::fs::read(path).map_err(|source| EncryptError::Io {
        path: path.to_path_buf(),
        source,
    })
}

fn write_blob(layout: &Path, bytes: &[u8]) -> Result<Digest, EncryptError> {
    let digest = Digest::of(bytes);
    let path = layout.join("blobs/sha256").join(digest.hex());
    std::fs::write(&path, bytes).map_err(|source| EncryptError::Io { path, source })?;
    Ok(digest)
}

fn blob_path(layout: &Path, digest: &str) -> Result<PathBuf, EncryptError> {
    let d = Digest::parse(digest).map_err(|e| EncryptError::Layout(e.to_string()))?;
    Ok(layout.join("blobs/sha256").join(d.hex()))
}

/// Encrypts every not-yet-encrypted layer of `layout:tag` in place (new blobs, a new manifest,
/// the index updated); returns the new manifest digest.
pub fn encrypt_layout(
    layout: &Path,
    tag: &str,
    recipients: &Recipients,
) -> Result<Digest, EncryptError> {
    if recipients.jwe.is_empty() && recipients.providers.is_empty() {
        return Err(EncryptError::Layout("no recipient to encrypt for".into()));
    }
    let index_path = layout.join("index.json");
    let mut index: serde_json::Value = serde_json::from_slice(&read(&index_path)?)
        .map_err(|e| EncryptError::Layout(format!("index.json: {e}")))?;
    let entries = index["manifests"]
        .as_array_mut()
        .ok_or_else(|| EncryptError::Layout("index.json has no manifests".into()))?;
    let entry = entries
        .iter_mut()
        .find(|m| m["annotations"]["org.opencontainers.image.ref.name"] == tag)
        .ok_or_else(|| EncryptError::Layout(format!("no manifest tagged {tag}")))?;
    let manifest_path = blob_path(layout, entry["digest"].as_str().unwrap_or_default())?;
    let mut manifest: serde_json::Value = serde_json::from_slice(&read(&manifest_path)?)
        .map_err(|e| EncryptError::Layout(format!("manifest: {e}")))?;
    let layers = manifest["layers"]
        .as_array_mut()
        .ok_or_else(|| EncryptError::Layout("manifest has no layers".into()))?;
    for layer in layers.iter_mut() {
        let media_type = layer["mediaType"].as_str().unwrap_or_default().to_string();
        let mt =
            LayerMediaType::parse(&media_type).map_err(|e| EncryptError::Layout(e.to_string()))?;
        if mt.is_encrypted() {
            continue;
        }
        let plain_path = blob_path(layout, layer["digest"].as_str().unwrap_or_default())?;
        let file = std::fs::File::open(&plain_path).map_err(|source| EncryptError::Io {
            path: plain_path.clone(),
            source,
        })?;
        let mut enc = LayerEncryptor::new(std::io::BufReader::new(file));
        let mut ciphertext = Vec::new();
        enc.read_to_end(&mut ciphertext)
            .map_err(|source| EncryptError::Io {
                path: plain_path.clone(),
                source,
            })?;
        let keys = enc
            .finish()
            .map_err(|e| EncryptError::Layout(e.to_string()))?;
        let annotations: BTreeMap<String, String> =
            annotations_for(&keys, &recipients.jwe, &recipients.providers)?;
        let digest = write_blob(layout, &ciphertext)?;
        layer["mediaType"] = mt.encrypted().into();
        layer["digest"] = digest.to_string().into();
        layer["size"] = ciphertext.len().into();
        let mut merged = layer["annotations"]
            .as_object()
            .cloned()
            .unwrap_or_default();
        for (k, v) in annotations {
            merged.insert(k, v.into());
        }
        layer["annotations"] = serde_json::Value::Object(merged);
    }
    let manifest_bytes =
        serde_json::to_vec(&manifest).map_err(|e| EncryptError::Layout(e.to_string()))?;
    let manifest_digest = write_blob(layout, &manifest_bytes)?;
    entry["digest"] = manifest_digest.to_string().into();
    entry["size"] = manifest_bytes.len().into();
    let index_bytes =
        serde_json::to_vec(&index).map_err(|e| EncryptError::Layout(e.to_string()))?;
    std::fs::write(&index_path, index_bytes).map_err(|source| EncryptError::Io {
        path: index_path,
        source,
    })?;
    Ok(manifest_digest)
}
