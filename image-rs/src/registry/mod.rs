//! Talking to registries: resolving a reference to a verified manifest and config (image indexes
//! resolved by platform), and streaming blobs to guest memory through a digest check.
//!
//! Every byte from a registry is untrusted: manifests are checked against the digest that named
//! them (the reference's, or the index entry's), configs and blobs against their descriptors,
//! with size limits on everything. Credentials come from a containers `auth.json`; they are never
//! logged.

use std::collections::BTreeMap;

use oci_client::client::{ClientConfig, ClientProtocol};
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, Reference};
use serde::Deserialize;

use crate::digest::{Digest, VerifyError};

mod artifact;
mod blob;
mod config;
pub mod reference;
mod signatures;
mod transport;

pub use artifact::Artifact;
pub use blob::BlobStream;
pub use config::{Mirror, Platform, RegistryConfig};

/// Largest manifest or index accepted.
const MAX_MANIFEST: usize = 4 << 20;
/// Largest image config accepted.
const MAX_CONFIG: u64 = 8 << 20;

pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
pub const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";

/// Why a pull from a registry failed.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("`{reference}` is not an image reference: {detail}")]
    Reference { reference: String, detail: String },
    #[error("registry configuration: {0}")]
    Config(String),
    #[error("{what} from {reference}: {detail}")]
    Fetch {
        what: String,
        reference: String,
        detail: String,
    },
    #[error("{what} of {reference} does not match: {source}")]
    Verify {
        what: String,
        reference: String,
        #[source]
        source: VerifyError,
    },
    #[error("{what} of {reference} is malformed: {detail}")]
    Malformed {
        what: String,
        reference: String,
        detail: String,
    },
    #[error("{reference} has no manifest for {platform} (it has: {available})")]
    NoPlatform {
        reference: String,
        platform: String,
        available: String,
    },
    #[error("writing {what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
}

/// A descriptor as a manifest lists it.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Descriptor {
    pub media_type: String,
    pub digest: String,
    pub size: i64,
    #[serde(default)]
    pub annotations: BTreeMap<String, String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Manifest {
    #[serde(default)]
    media_type: Option<String>,
    config: Descriptor,
    layers: Vec<Descriptor>,
}

#[derive(Deserialize)]
struct ImageConfig {
    rootfs: RootFs,
}

#[derive(Deserialize)]
struct RootFs {
    diff_ids: Vec<String>,
}

/// An image whose manifest and config were fetched and verified.
#[derive(Clone, Debug)]
pub struct ResolvedImage {
    /// The reference pulled, with the mirror it was found on (if any).
    pub reference: Reference,
    /// The digest the reference resolved to: the index's when there is one, else the manifest's.
    pub top_digest: Digest,
    /// The digest of the image manifest (inside an index, the platform's manifest).
    pub manifest_digest: Digest,
    pub config: Vec<u8>,
    pub config_digest: Digest,
    pub layers: Vec<Descriptor>,
    /// The uncompressed, unencrypted layer digests, one per layer.
    pub diff_ids: Vec<Digest>,
}

/// A registry client with ward's checks around it. Pulls go through [`transport`], which caps
/// every body as it streams; oci-client is kept for pushes (the owner's `ward model push`).
pub struct Registry {
    client: Client,
    transport: transport::Transport,
    config: RegistryConfig,
}

fn parse_digest(what: &str, reference: &str, s: &str) -> Result<Digest, RegistryError> {
    Digest::parse(s).map_err(|e| RegistryError::Malformed {
        what: what.to_string(),
        reference: reference.to_string(),
        detail: e.to_string(),
    })
}

/// The entry of an image index that matches `want`: its digest, as the index spells it.
fn pick_platform(
    want: &Platform,
    name: &str,
    index: &serde_json::Value,
) -> Result<String, RegistryError> {
    let entries = index["manifests"].as_array().cloned().unwrap_or_default();
    let mut available = Vec::new();
    for e in &entries {
        let p = &e["platform"];
        let (os, arch, variant) = (
            p["os"].as_str().unwrap_or_default(),
            p["architecture"].as_str().unwrap_or_default(),
            p["variant"].as_str(),
        );
        available.push(format!(
            "{os}/{arch}{}",
            variant.map(|v| format!("/{v}")).unwrap_or_default()
        ));
        let variant_ok = match (&want.variant, variant) {
            (Some(w), Some(v)) => w == v,
            (Some(_), None) => false,
            (None, _) => true,
        };
        if os == want.os
            && arch == want.architecture
            && variant_ok
            && let Some(d) = e["digest"].as_str()
        {
            return Ok(d.to_string());
        }
    }
    Err(RegistryError::NoPlatform {
        reference: name.to_string(),
        platform: want.to_string(),
        available: available.join(", "),
    })
}

/// Parses and checks an image manifest: its media type and its config digest.
fn parse_manifest(name: &str, bytes: &[u8]) -> Result<(Manifest, Digest), RegistryError> {
    let manifest: Manifest =
        serde_json::from_slice(bytes).map_err(|e| RegistryError::Malformed {
            what: "manifest".into(),
            reference: name.to_string(),
            detail: e.to_string(),
        })?;
    if let Some(mt) = &manifest.media_type
        && mt != OCI_MANIFEST
        && mt != DOCKER_MANIFEST
    {
        return Err(RegistryError::Malformed {
            what: "manifest".into(),
            reference: name.to_string(),
            detail: format!("unsupported media type {mt}"),
        });
    }
    let config_digest = parse_digest("config digest", name, &manifest.config.digest)?;
    Ok((manifest, config_digest))
}

/// Parses an image config against its manifest: one diff_id per layer, every digest well formed.
fn parse_image_config(
    name: &str,
    manifest: &Manifest,
    config: &[u8],
) -> Result<Vec<Digest>, RegistryError> {
    let parsed: ImageConfig =
        serde_json::from_slice(config).map_err(|e| RegistryError::Malformed {
            what: "config".into(),
            reference: name.to_string(),
            detail: e.to_string(),
        })?;
    let diff_ids = parsed
        .rootfs
        .diff_ids
        .iter()
        .map(|d| parse_digest("diff_id", name, d))
        .collect::<Result<Vec<_>, _>>()?;
    if diff_ids.len() != manifest.layers.len() {
        return Err(RegistryError::Malformed {
            what: "config".into(),
            reference: name.to_string(),
            detail: format!(
                "{} diff_ids for {} layers",
                diff_ids.len(),
                manifest.layers.len()
            ),
        });
    }
    for l in &manifest.layers {
        parse_digest("layer digest", name, &l.digest)?;
    }
    Ok(diff_ids)
}

/// The checks [`Registry::resolve`] makes of the documents it fetches, with no registry: `top`
/// is what the reference named (an index or a manifest); for an index, the entry for
/// `platform` is picked and `manifest` stands for the manifest it names, otherwise `top` is the
/// manifest; `config` is the image config. Returns the layers' diff_ids. The digest checks of
/// fetched bytes are not repeated here. It exists for the fuzz target
/// (fuzz/fuzz_targets/image_manifest.rs) and tests.
pub fn check_image_documents(
    name: &str,
    top: &[u8],
    platform: &Platform,
    manifest: &[u8],
    config: &[u8],
) -> Result<Vec<Digest>, RegistryError> {
    let value: serde_json::Value =
        serde_json::from_slice(top).map_err(|e| RegistryError::Malformed {
            what: "manifest".into(),
            reference: name.to_string(),
            detail: e.to_string(),
        })?;
    let bytes = if value.get("manifests").is_some() {
        let entry = pick_platform(platform, name, &value)?;
        parse_digest("index entry", name, &entry)?;
        manifest
    } else {
        top
    };
    let (manifest, _config_digest) = parse_manifest(name, bytes)?;
    parse_image_config(name, &manifest, config)
}

impl Registry {
    pub fn new(config: RegistryConfig) -> Result<Registry, RegistryError> {
        let mut extra = Vec::new();
        if let Some(pem) = &config.ca_pem {
            extra.push(oci_client::client::Certificate {
                encoding: oci_client::client::CertificateEncoding::Pem,
                data: pem.clone(),
            });
        }
        // oci-client also builds a default reqwest client (struct-update `..Default::default()`
        // in its TryFrom), and reqwest's default client panics when the system has no CA store,
        // as in a minimal initrd, even for plain-HTTP registries. Find out first and say so.
        reqwest::Client::builder().build().map_err(|e| {
            let cause = std::error::Error::source(&e)
                .map(|s| format!(": {s}"))
                .unwrap_or_default();
            RegistryError::Config(format!(
                "no usable system CA store{cause} (the registry client needs one even for \
                 plain-HTTP registries: install ca-certificates in the guest)"
            ))
        })?;
        // try_from, not new: new falls back to a default configuration on error, which would
        // silently drop the CA and timeouts configured here.
        let client = Client::try_from(ClientConfig {
            protocol: if config.insecure.is_empty() {
                ClientProtocol::Https
            } else {
                ClientProtocol::HttpsExcept(config.insecure.clone())
            },
            extra_root_certificates: extra,
            read_timeout: config.timeout,
            connect_timeout: config.timeout,
            ..Default::default()
        })
        .map_err(|e| RegistryError::Config(e.to_string()))?;
        let transport = transport::Transport::new(&config)?;
        Ok(Registry {
            client,
            transport,
            config,
        })
    }

    fn auth(&self, reference: &Reference) -> RegistryAuth {
        match self.config.auths.get(reference.resolve_registry()) {
            Some((u, p)) => RegistryAuth::Basic(u.clone(), p.to_string()),
            None => RegistryAuth::Anonymous,
        }
    }

    /// Parses `image` (`name[:tag][@sha256:...]`).
    pub fn reference(image: &str) -> Result<Reference, RegistryError> {
        reference::parse(image).map_err(|e| RegistryError::Reference {
            reference: image.to_string(),
            detail: e.to_string(),
        })
    }

    /// Fetches a manifest (or index) and checks its bytes against `expected` when known.
    async fn manifest_bytes(
        &self,
        reference: &Reference,
        expected: Option<&Digest>,
    ) -> Result<(Vec<u8>, Digest), RegistryError> {
        let name = reference.whole();
        let fetch_err = |detail: String| RegistryError::Fetch {
            what: "manifest".into(),
            reference: name.clone(),
            detail,
        };
        let target = reference
            .digest()
            .or(reference.tag())
            .unwrap_or("latest")
            .to_string();
        let bytes = match self
            .transport
            .manifest(
                reference,
                &target,
                &[OCI_MANIFEST, OCI_INDEX, DOCKER_MANIFEST, DOCKER_LIST],
                MAX_MANIFEST,
            )
            .await
            .map_err(fetch_err)?
        {
            transport::Fetched::Found(b) => b,
            transport::Fetched::NotFound => {
                return Err(fetch_err(format!("no manifest `{target}`")));
            }
        };
        let found = Digest::of(&bytes);
        if let Some(expected) = expected
            && &found != expected
        {
            return Err(RegistryError::Verify {
                what: "manifest".into(),
                reference: name,
                source: VerifyError::Digest {
                    expected: expected.clone(),
                    found,
                },
            });
        }
        Ok((bytes.to_vec(), found))
    }

    /// Where `reference` may be fetched from, in order: its mirrors, then the registry itself.
    pub fn sources(&self, reference: &Reference) -> Vec<Reference> {
        let mut out = Vec::new();
        for m in &self.config.mirrors {
            if m.registry != reference.registry() || (m.digest_only && reference.digest().is_none())
            {
                continue;
            }
            for host in &m.mirrors {
                let mut r = reference.clone();
                r.set_mirror_registry(host.clone());
                out.push(r);
            }
        }
        out.push(reference.clone());
        out
    }

    /// Resolves `reference` to a verified image manifest and config for this platform, from its
    /// first mirror that serves it or else from its registry. The returned reference says where
    /// it was found; its blobs are fetched from there.
    pub async fn resolve(&self, reference: &Reference) -> Result<ResolvedImage, RegistryError> {
        self.first_source(
            reference,
            |source| async move { self.resolve_at(&source).await },
        )
        .await
    }

    /// Runs `attempt` on each source of `reference` (its mirrors, then its registry) until one
    /// succeeds; the registry's own error is the one returned when all fail.
    pub(crate) async fn first_source<T, F, Fut>(
        &self,
        reference: &Reference,
        attempt: F,
    ) -> Result<T, RegistryError>
    where
        F: Fn(Reference) -> Fut,
        Fut: std::future::Future<Output = Result<T, RegistryError>>,
    {
        let sources = self.sources(reference);
        let last = sources.len().saturating_sub(1);
        for (i, source) in sources.into_iter().enumerate() {
            let mirror = source.resolve_registry().to_string();
            match attempt(source).await {
                Ok(r) => return Ok(r),
                Err(e) if i < last => {
                    tracing::warn!(
                        reference = %reference,
                        mirror,
                        error = %e,
                        "mirror failed; trying the next source"
                    );
                }
                Err(e) => return Err(e),
            }
        }
        Err(RegistryError::Config(format!("no source for {reference}")))
    }

    async fn resolve_at(&self, reference: &Reference) -> Result<ResolvedImage, RegistryError> {
        let name = reference.whole();
        let pinned = reference
            .digest()
            .map(|d| parse_digest("reference digest", &name, d))
            .transpose()?;
        let (bytes, digest) = self.manifest_bytes(reference, pinned.as_ref()).await?;
        let value: serde_json::Value =
            serde_json::from_slice(&bytes).map_err(|e| RegistryError::Malformed {
                what: "manifest".into(),
                reference: name.clone(),
                detail: e.to_string(),
            })?;
        let top_digest = digest.clone();
        let (bytes, digest) = if value.get("manifests").is_some() {
            let entry = self.pick_platform(&name, &value)?;
            let entry_digest = parse_digest("index entry", &name, &entry)?;
            let by_digest = reference.clone_with_digest(entry_digest.to_string());
            self.manifest_bytes(&by_digest, Some(&entry_digest)).await?
        } else {
            (bytes, digest)
        };
        let (manifest, config_digest) = parse_manifest(&name, &bytes)?;
        let config = self
            .small_blob(reference, &manifest.config, &config_digest)
            .await?;
        let diff_ids = parse_image_config(&name, &manifest, &config)?;
        Ok(ResolvedImage {
            reference: reference.clone(),
            top_digest,
            manifest_digest: digest,
            config,
            config_digest,
            layers: manifest.layers,
            diff_ids,
        })
    }

    fn pick_platform(
        &self,
        name: &str,
        index: &serde_json::Value,
    ) -> Result<String, RegistryError> {
        let want = self.config.platform.clone().unwrap_or_else(Platform::host);
        pick_platform(&want, name, index)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const INDEX: &[u8] = br#"{"manifests":[{"digest":"sha256:1111111111111111111111111111111111111111111111111111111111111111","platform":{"os":"linux","architecture":"amd64"}}]}"#;
    const MANIFEST: &[u8] = br#"{"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"c","digest":"sha256:2222222222222222222222222222222222222222222222222222222222222222","size":2},"layers":[{"mediaType":"l","digest":"sha256:3333333333333333333333333333333333333333333333333333333333333333","size":2}]}"#;
    const CONFIG: &[u8] = br#"{"rootfs":{"diff_ids":["sha256:4444444444444444444444444444444444444444444444444444444444444444"]}}"#;

    fn amd64() -> Platform {
        Platform {
            os: "linux".into(),
            architecture: "amd64".into(),
            variant: None,
        }
    }

    /// `check_image_documents` (the fuzz target's entry point) runs resolve's checks: an index
    /// resolved by platform, the manifest's media type and digests, one diff_id per layer.
    #[test]
    fn check_image_documents_runs_the_resolve_checks() {
        let ids = check_image_documents("r", INDEX, &amd64(), MANIFEST, CONFIG).unwrap();
        assert_eq!(ids.len(), 1);
        check_image_documents("r", MANIFEST, &amd64(), b"", CONFIG).unwrap();
        let arm = Platform {
            architecture: "arm64".into(),
            ..amd64()
        };
        assert!(matches!(
            check_image_documents("r", INDEX, &arm, MANIFEST, CONFIG),
            Err(RegistryError::NoPlatform { .. })
        ));
        let two_layers = br#"{"rootfs":{"diff_ids":[]}}"#;
        assert!(check_image_documents("r", MANIFEST, &amd64(), b"", two_layers).is_err());
        let docker_list = br#"{"mediaType":"application/vnd.docker.distribution.manifest.list.v2+json","config":{"mediaType":"c","digest":"sha256:2222222222222222222222222222222222222222222222222222222222222222","size":2},"layers":[]}"#;
        assert!(check_image_documents("r", docker_list, &amd64(), b"", b"{}").is_err());
    }
}
