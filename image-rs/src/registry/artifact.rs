//! OCI artifacts that are not container images (sealed models): resolving a manifest whose
//! layers are whatever its media types say, and pushing an OCI image layout as is (blobs
//! streamed from disk, then the manifest under a tag), for the owner side.

use std::collections::BTreeMap;
use std::path::Path;

use futures_util::StreamExt;
use oci_client::Reference;
use oci_client::RegistryOperation;
use serde::Deserialize;

use super::{Descriptor, MAX_MANIFEST, OCI_MANIFEST, Registry, RegistryError, parse_digest};
use crate::digest::Digest;

/// A resolved artifact manifest, its bytes checked against the digest that named it.
#[derive(Clone, Debug)]
pub struct Artifact {
    /// The reference, with the mirror it was found on (if any).
    pub reference: Reference,
    pub manifest_digest: Digest,
    pub artifact_type: Option<String>,
    pub config: Descriptor,
    pub annotations: BTreeMap<String, String>,
    pub layers: Vec<Descriptor>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ArtifactManifest {
    #[serde(default)]
    media_type: Option<String>,
    #[serde(default)]
    artifact_type: Option<String>,
    config: Descriptor,
    layers: Vec<Descriptor>,
    #[serde(default)]
    annotations: BTreeMap<String, String>,
}

impl Registry {
    /// Resolves `reference` to an OCI artifact manifest (no index, no image config), from its
    /// first mirror that serves it or else from its registry.
    pub async fn resolve_artifact(&self, reference: &Reference) -> Result<Artifact, RegistryError> {
        self.first_source(reference, |source| async move {
            self.resolve_artifact_at(&source).await
        })
        .await
    }

    async fn resolve_artifact_at(&self, reference: &Reference) -> Result<Artifact, RegistryError> {
        let name = reference.whole();
        let pinned = reference
            .digest()
            .map(|d| parse_digest("reference digest", &name, d))
            .transpose()?;
        let (bytes, digest) = self.manifest_bytes(reference, pinned.as_ref()).await?;
        let malformed = |detail: String| RegistryError::Malformed {
            what: "artifact manifest".into(),
            reference: name.clone(),
            detail,
        };
        let m: ArtifactManifest =
            serde_json::from_slice(&bytes).map_err(|e| malformed(e.to_string()))?;
        if let Some(mt) = &m.media_type
            && mt != OCI_MANIFEST
        {
            return Err(malformed(format!("media type {mt} is not an OCI manifest")));
        }
        for l in &m.layers {
            parse_digest("layer digest", &name, &l.digest)?;
            if l.size < 0 {
                return Err(malformed(format!("layer {} has a negative size", l.digest)));
            }
        }
        Ok(Artifact {
            reference: reference.clone(),
            manifest_digest: digest,
            artifact_type: m.artifact_type,
            config: m.config,
            annotations: m.annotations,
            layers: m.layers,
        })
    }

    /// Pushes the manifest tagged `tag` in the OCI image layout `layout` to `reference` (its
    /// tag or digest is replaced by the layout's): every blob it names (streamed from the
    /// layout, skipped when the registry has it), then the manifest. Returns the manifest digest.
    pub async fn push_layout(
        &self,
        layout: &Path,
        tag: &str,
        reference: &Reference,
    ) -> Result<Digest, RegistryError> {
        let name = reference.whole();
        let io = |what: String| {
            move |source: std::io::Error| RegistryError::Io {
                what: what.clone(),
                source,
            }
        };
        let push_err = |what: &str, detail: String| RegistryError::Fetch {
            what: format!("pushing {what}"),
            reference: name.clone(),
            detail,
        };
        let index_path = layout.join("index.json");
        let index: serde_json::Value = serde_json::from_slice(
            &std::fs::read(&index_path).map_err(io(index_path.display().to_string()))?,
        )
        .map_err(|e| RegistryError::Config(format!("{}: {e}", index_path.display())))?;
        let entry = index["manifests"]
            .as_array()
            .and_then(|m| {
                m.iter().find(|d| {
                    d["annotations"]["org.opencontainers.image.ref.name"].as_str() == Some(tag)
                })
            })
            .ok_or_else(|| {
                RegistryError::Config(format!("{} has no manifest tagged {tag}", layout.display()))
            })?;
        let mdigest = parse_digest(
            "layout manifest",
            &name,
            entry["digest"].as_str().unwrap_or_default(),
        )?;
        let blob_path = |d: &Digest| layout.join("blobs/sha256").join(d.hex());
        let manifest = std::fs::read(blob_path(&mdigest))
            .map_err(io(format!("manifest {mdigest} in the layout")))?;
        if Digest::of(&manifest) != mdigest || manifest.len() > MAX_MANIFEST {
            return Err(RegistryError::Config(format!(
                "{}: manifest blob {mdigest} is altered or too large",
                layout.display()
            )));
        }
        let m: ArtifactManifest = serde_json::from_slice(&manifest)
            .map_err(|e| RegistryError::Config(format!("manifest {mdigest}: {e}")))?;
        let target = Reference::with_tag(
            reference.registry().to_string(),
            reference.repository().to_string(),
            reference.tag().unwrap_or("latest").to_string(),
        );
        self.client
            .auth(&target, &self.auth(&target), RegistryOperation::Push)
            .await
            .map_err(|e| push_err("(authentication)", e.to_string()))?;
        for desc in std::iter::once(&m.config).chain(&m.layers) {
            let d = parse_digest("blob digest", &name, &desc.digest)?;
            if self
                .client
                .blob_exists(&target, &d.to_string())
                .await
                .unwrap_or(false)
            {
                continue;
            }
            let path = blob_path(&d);
            let file = tokio::fs::File::open(&path)
                .await
                .map_err(io(path.display().to_string()))?;
            let stream = tokio_util::io::ReaderStream::with_capacity(file, 1 << 20)
                .map(|r| r.map_err(oci_client::errors::OciDistributionError::IoError));
            self.client
                .push_blob_stream(
                    &target,
                    stream,
                    &d.to_string(),
                    u64::try_from(desc.size).ok(),
                )
                .await
                .map_err(|e| push_err(&format!("blob {d}"), e.to_string()))?;
        }
        let content_type = http::HeaderValue::from_static(OCI_MANIFEST);
        self.client
            .push_manifest_raw(&target, manifest, content_type)
            .await
            .map_err(|e| push_err("manifest", e.to_string()))?;
        Ok(mdigest)
    }
}
