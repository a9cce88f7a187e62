//! Sealed models as OCI artifacts (`docs/sealed-model.md`, "OCI packaging"): the owner seals a
//! model directory into an OCI image layout (one sealed layer per file) and pushes it to any
//! registry; the guest resolves the artifact, fetches the KEK from the KBS, and decrypts every
//! file as it downloads straight into guest memory, checking each against its header, its
//! annotations and the digests policy pins. Nothing touches disk on the guest side.

mod fetch;
mod image;
mod package;
#[cfg(test)]
mod tests;

use std::collections::BTreeMap;

pub use fetch::{LoadedModel, ModelFile, fetch_model};
pub use package::{
    SealedModel, layout_digests, layout_kek_id, load_layout, seal_dir, unseal_layout,
};

use crate::digest::Digest;
use crate::sealed::SealedError;

/// `artifactType` of a sealed model manifest.
pub const ARTIFACT_TYPE: &str = "application/vnd.ward.model.v1";
/// A file sealed in format v1.
pub const SEALED_FILE: &str = "application/vnd.ward.model.file.v1.sealed";
/// A file shipped in clear (a public tokenizer or config), verified by its layer digest.
pub const CLEAR_FILE: &str = "application/vnd.ward.model.file.v1";
/// The empty config of artifacts.
pub const EMPTY_CONFIG: &str = "application/vnd.oci.empty.v1+json";
/// The layout tag `ward model seal` writes.
pub const LAYOUT_TAG: &str = "model";

pub const ANN_TITLE: &str = "org.opencontainers.image.title";
pub const ANN_PLAINTEXT_DIGEST: &str = "dev.ward.model.file.plaintext-digest";
pub const ANN_PLAINTEXT_SIZE: &str = "dev.ward.model.file.plaintext-size";
pub const ANN_CHUNK_SIZE: &str = "dev.ward.model.file.chunk-size";
pub const ANN_KEK: &str = "dev.ward.model.kek";
pub const ANN_DIGESTS: &str = "dev.ward.model.plaintext-digests";
pub const ANN_FORMAT: &str = "dev.ward.model.format";
pub const FORMAT: &str = "sealed-model/v1";

/// Most files in one model.
pub const MAX_FILES: usize = 4096;

/// Why sealing, unsealing or loading a model failed.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("model file {name}: {source}")]
    Sealed {
        name: String,
        #[source]
        source: SealedError,
    },
    #[error("the model is malformed: {0}")]
    Malformed(String),
    #[error("model file {name}: {detail}")]
    Mismatch { name: String, detail: String },
    #[error("policy pins {name} to {expected}, the model has {found}")]
    Policy {
        name: String,
        expected: String,
        found: String,
    },
    #[error("policy pins {0}, which the model does not have")]
    MissingFile(String),
    #[error(transparent)]
    Registry(Box<crate::registry::RegistryError>),
    #[error("model image layer {index} ({digest}): {detail}")]
    Layer {
        index: usize,
        digest: String,
        detail: String,
    },
    #[error("key-encryption key {kid}: {detail}")]
    Kek { kid: String, detail: String },
}

impl From<crate::registry::RegistryError> for ModelError {
    fn from(e: crate::registry::RegistryError) -> ModelError {
        ModelError::Registry(Box::new(e))
    }
}

/// The digests policy pins: file name to plaintext SHA-256 (every one must be present).
pub type PinnedDigests = BTreeMap<String, Digest>;

/// A policy entry that pins `digests` (what the owner tools print and wardd's config takes).
pub fn policy_entry(
    name: &str,
    repository: &str,
    manifest: &Digest,
    kid: &str,
    digests: &PinnedDigests,
) -> String {
    let mut out = format!(
        "[[model]]\nname = \"{name}\"\nsource = \"{repository}@{manifest}\"\nkek = \"{kid}\"\n\n[model.digests]\n"
    );
    for (file, d) in digests {
        out.push_str(&format!("{file:?} = \"{d}\"\n"));
    }
    out
}
