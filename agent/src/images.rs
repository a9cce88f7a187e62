//! wardd's image side: pulls for `api.ImagePullService` and key unwrapping for
//! `keyprovider.KeyProviderService`, with layer keys from the config's private keys and
//! key-encryption keys released by the KBS through the shared attestation session.
//!
//! Every pull is recorded in the audit log and as a `PullImage` runtime measurement (image and
//! manifest digest), the way CoCo records it. Keys are never logged.

use std::path::{Component, Path, PathBuf};
use std::sync::Arc;

use async_trait::async_trait;
use ward_attester::kbs::KbsClient;
use ward_image::kbs::{KbsResources, ResourceError};
use ward_image::ocicrypt::PrivateKey;
use ward_image::policy::Policy;
use ward_image::progress::{LayerInfo, PullProgress};
use ward_image::pull::{Decryption, PullError, PullOptions, Pulled, Puller};
use ward_image::registry::{Registry, RegistryConfig};
use ward_image::unpack::UnpackPolicy;
use ward_kbs_wire::ResourceUri;
use zeroize::Zeroizing;

use crate::attestation::Attestation;
use crate::audit::Audit;
use crate::config::{ImageSettings, PolicySource};

/// Why an image request failed.
#[derive(Debug, thiserror::Error)]
pub enum ImagesError {
    #[error("bundle path `{0}` must be absolute and free of `..`")]
    BundlePath(String),
    #[error(transparent)]
    Pull(#[from] PullError),
    #[error("image settings: {0}")]
    Setup(String),
    /// The key was not released or did not unwrap (the KBS refused, a wrong KEK).
    #[error("key unwrap: {0}")]
    Unwrap(String),
    /// The key-provider request or its packet is not one wardd can read.
    #[error("key unwrap request: {0}")]
    UnwrapRequest(String),
    /// The pull's runtime measurement could not be extended, so the pull failed.
    #[error("PullImage runtime measurement: {0}")]
    Measurement(String),
}

/// The KBS resources an image may name as a key-encryption key. An image comes from the
/// registry, so the host chooses what its packets name: without a scope it could make the
/// guest fetch any secret with its attested session (or call a KBS plugin with a query of its
/// choosing). Plugin URIs and queries are never in scope; `[images] kek_resources` narrows
/// the plain ones, and resources the config names for other uses are always out.
#[derive(Clone, Debug, Default)]
pub struct KekScope {
    /// Paths (`repo/type/tag`) or prefixes (`repo/`, `repo/type/`); empty: every plain path.
    allowed: Vec<String>,
    /// Paths never fetched as a KEK (registry credentials, policies, signing keys).
    refused: Vec<String>,
}

impl KekScope {
    /// The scope `[images]` sets.
    pub fn from_settings(settings: &ImageSettings) -> KekScope {
        let mut named = vec![settings.auth.clone()];
        if let PolicySource::Kbs(uri) = &settings.policy {
            named.push(Some(uri.clone()));
        }
        named.extend(settings.signed.iter().map(|(_, key)| Some(key.clone())));
        KekScope {
            allowed: settings.kek_resources.clone(),
            refused: named
                .into_iter()
                .flatten()
                .filter_map(|u| ResourceUri::parse(&u).ok())
                .map(|u| u.path())
                .collect(),
        }
    }

    /// This scope and one more resource: a `[[model]] kek` the config itself names.
    pub fn also(&self, uri: Option<&str>) -> KekScope {
        let mut scope = self.clone();
        if let Some(u) = uri.and_then(|u| ResourceUri::parse(u).ok()) {
            if !scope.allowed.is_empty() {
                scope.allowed.push(u.path());
            }
            scope.refused.retain(|p| *p != u.path());
        }
        scope
    }

    /// Whether `uri` may be fetched as a KEK.
    pub fn admits(&self, uri: &ResourceUri) -> bool {
        let path = uri.path();
        uri.kbs_path() == format!("resource/{path}")
            && !self.refused.contains(&path)
            && (self.allowed.is_empty()
                || self
                    .allowed
                    .iter()
                    .any(|a| *a == path || (a.ends_with('/') && path.starts_with(a.as_str()))))
    }
}

/// Why a KEK was not fetched: the image named a resource outside the scope.
#[derive(Debug, thiserror::Error)]
#[error(
    "`{0}` is not a key-encryption key this guest fetches for an image ([images] kek_resources)"
)]
pub struct OutOfScope(String);

/// KBS resources (key-encryption keys, `kbs:///` policy keys) through the shared attestation
/// session, so every release is audited. With a scope, only the KEKs it admits are fetched.
pub struct KbsKek {
    pub attestation: Arc<Attestation>,
    /// `None` for what the config itself names (policy keys); `Some` for anything an image names.
    pub scope: Option<KekScope>,
}

#[async_trait]
impl KbsResources for KbsKek {
    async fn resource(&self, uri: &ResourceUri) -> Result<Zeroizing<Vec<u8>>, ResourceError> {
        if let Some(scope) = &self.scope
            && !scope.admits(uri)
        {
            return Err(ResourceError::new(OutOfScope(uri.to_string())));
        }
        // `Attestation::resource` takes the URI as text and parses it again; a `ResourceUri`'s
        // text parses back to the same URI.
        self.attestation
            .resource(&uri.to_string())
            .await
            .map_err(ResourceError::new)
    }
}

/// KBS resources straight from a [`KbsClient`] of the caller's own: for tools that attest on
/// their own (`ward pull`, the integration tests) rather than through wardd's audited session.
pub struct KbsClientResources(pub KbsClient);

#[async_trait]
impl KbsResources for KbsClientResources {
    async fn resource(&self, uri: &ResourceUri) -> Result<Zeroizing<Vec<u8>>, ResourceError> {
        self.0.get_resource(uri).await.map_err(ResourceError::new)
    }
}

/// The puller and the keys it may use. The registry client is made at the first pull (so start-up
/// does not pay for TLS roots, and registry credentials held by the KBS can be fetched then).
pub struct Images {
    settings: ImageSettings,
    ca_pem: Option<Vec<u8>>,
    puller: tokio::sync::OnceCell<Arc<Puller>>,
    /// The signature policy, when it could be read at start-up (a `kbs:///` one is fetched at
    /// the first pull).
    policy: Option<Arc<Policy>>,
    decryption: Decryption,
    /// KEKs for what images name (layer packets, UnWrapKey), within `[images]`'s scope.
    keks: Arc<KbsKek>,
    attestation: Arc<Attestation>,
    audit: Audit,
}

impl Images {
    /// Builds the puller from `[images]`; private keys are read now (from files).
    pub fn new(
        settings: &ImageSettings,
        attestation: Arc<Attestation>,
        audit: Audit,
    ) -> Result<Images, ImagesError> {
        let mut keys = Vec::new();
        for path in &settings.decryption_keys {
            let pem = Zeroizing::new(
                std::fs::read_to_string(path)
                    .map_err(|e| ImagesError::Setup(format!("{}: {e}", path.display())))?,
            );
            keys.extend(
                PrivateKey::all_from_pem(&pem)
                    .map_err(|e| ImagesError::Setup(format!("{}: {e}", path.display())))?,
            );
        }
        let ca_pem = match &settings.ca {
            Some(p) => Some(
                std::fs::read(p)
                    .map_err(|e| ImagesError::Setup(format!("{}: {e}", p.display())))?,
            ),
            None => None,
        };
        let policy = match &settings.policy {
            PolicySource::Kbs(_) => None,
            source => Some(Arc::new(local_policy(source, &settings.signed)?)),
        };
        let keks = Arc::new(KbsKek {
            attestation: attestation.clone(),
            scope: Some(KekScope::from_settings(settings)),
        });
        Ok(Images {
            settings: settings.clone(),
            policy,
            ca_pem,
            puller: tokio::sync::OnceCell::new(),
            decryption: Decryption {
                keys,
                kek: Some(keks.clone()),
            },
            keks,
            attestation,
            audit,
        })
    }

    /// Which KEKs an image may name (`[images] kek_resources`).
    pub fn kek_scope(&self) -> KekScope {
        self.keks.scope.clone().unwrap_or_default()
    }

    /// The private keys of `[images] decryption_keys` (JWE recipients of encrypted layers).
    pub fn decryption_keys(&self) -> &[PrivateKey] {
        &self.decryption.keys
    }

    /// The puller, made at first use; registry credentials from a file or the KBS.
    async fn puller(&self) -> Result<&Arc<Puller>, ImagesError> {
        self.puller
            .get_or_try_init(|| async {
                let mut rc = RegistryConfig {
                    insecure: self.settings.insecure_registries.clone(),
                    ca_pem: self.ca_pem.clone(),
                    mirrors: self.settings.mirrors.clone(),
                    ..Default::default()
                };
                if let Some(auth) = &self.settings.auth {
                    let json = if auth.starts_with("kbs:") {
                        self.attestation.resource(auth).await.map_err(|e| {
                            ImagesError::Setup(format!("registry credentials {auth}: {e}"))
                        })?
                    } else {
                        Zeroizing::new(
                            std::fs::read(auth)
                                .map_err(|e| ImagesError::Setup(format!("{auth}: {e}")))?,
                        )
                    };
                    rc = rc
                        .with_auth_json(&json)
                        .map_err(|e| ImagesError::Setup(e.to_string()))?;
                }
                let registry = Registry::new(rc).map_err(|e| ImagesError::Setup(e.to_string()))?;
                let puller = Puller::new(
                    registry,
                    PullOptions {
                        blob_cache: self.settings.blob_cache.clone(),
                        concurrency: self.settings.concurrency,
                        unpack: UnpackPolicy::default(),
                        require_encrypted: self.settings.require_encrypted,
                    },
                )?;
                let policy = match (&self.policy, &self.settings.policy) {
                    (Some(p), _) => p.clone(),
                    (None, PolicySource::Kbs(uri)) => {
                        let json = self.attestation.resource(uri).await.map_err(|e| {
                            ImagesError::Setup(format!("signature policy {uri}: {e}"))
                        })?;
                        Arc::new(
                            Policy::from_json(&json, None)
                                .map_err(|e| ImagesError::Setup(format!("{uri}: {e}")))?,
                        )
                    }
                    (None, other) => Arc::new(local_policy(other, &self.settings.signed)?),
                };
                let resources: Arc<dyn KbsResources> = Arc::new(KbsKek {
                    attestation: self.attestation.clone(),
                    scope: None,
                });
                let puller = puller.with_policy(policy, Some(resources));
                Ok::<_, ImagesError>(Arc::new(puller))
            })
            .await
    }

    /// The registry client (made at first use, with the `[images]` settings: insecure
    /// registries, CA, mirrors, credentials), for sealed models.
    pub async fn registry(&self) -> Result<&Registry, ImagesError> {
        Ok(self.puller().await?.registry())
    }

    /// Pulls `image` into `bundle` (`rootfs/` + `config.json`), measured and audited. Every
    /// outcome is audited: `image.pull`, `image.policy_refused` or `image.pull_failed` (whose
    /// reason is the error's text, which for an encrypted layer carries nothing of its
    /// plaintext: ward-image's pull/layers.rs).
    pub async fn pull(&self, image: &str, bundle: &str) -> Result<Pulled, ImagesError> {
        let started = std::time::Instant::now();
        let result = self.pull_measured(image, bundle).await;
        crate::metrics::metrics().image_pull(
            started.elapsed(),
            result.as_ref().ok().map(|(p, _)| p.bytes_fetched),
        );
        match &result {
            Ok((pulled, bundle)) => self.audit.note(
                "image.pull",
                image,
                serde_json::json!({
                    "digest": pulled.manifest_digest.to_string(),
                    "layers": pulled.layers,
                    "encrypted_layers": pulled.encrypted_layers,
                    "policy": pulled.policy.to_string(),
                    "bundle": bundle.display().to_string(),
                }),
            ),
            Err(ImagesError::Pull(PullError::Policy(e))) => self.audit.note(
                "image.policy_refused",
                image,
                serde_json::json!({"reason": e.to_string()}),
            ),
            Err(e) => self.audit.note(
                "image.pull_failed",
                image,
                serde_json::json!({"reason": e.to_string()}),
            ),
        }
        result.map(|(pulled, _)| pulled)
    }

    /// The pull, then its `PullImage` runtime measurement, the way CoCo records it. A pull
    /// whose measurement cannot be extended fails, and its bundle is taken down again: a
    /// verifier must never face a container the measurement does not show.
    async fn pull_measured(
        &self,
        image: &str,
        bundle: &str,
    ) -> Result<(Pulled, PathBuf), ImagesError> {
        let bundle = checked_bundle(bundle)?;
        let pulled = self
            .puller()
            .await?
            .pull_with_progress(
                image,
                &bundle,
                &self.decryption,
                Arc::new(LogProgress::default()),
            )
            .await?;
        // Byte for byte what CoCo's confidential-data-hub extends (hub.rs, `pull_image`, at
        // guest-components 002f8b72), so a verifier's expected event log matches: `image` first,
        // a space after the comma, the reference as given (it parsed as one, so it holds no `"`).
        let content = format!(
            r#"{{"image":"{image}", "digest":"{}"}}"#,
            pulled.manifest_digest
        );
        if let Err(e) = self
            .attestation
            .extend_runtime_measurement(
                "github.com/confidential-containers",
                "PullImage",
                &content,
                None,
            )
            .await
        {
            let _ = std::fs::remove_file(bundle.join("config.json"));
            let _ = std::fs::remove_dir_all(bundle.join("rootfs"));
            return Err(ImagesError::Measurement(e.to_string()));
        }
        Ok((pulled, bundle))
    }

    /// `keyprovider.KeyProviderService/UnWrapKey`: the ocicrypt key-provider protocol, with the
    /// KEK from the KBS.
    pub async fn unwrap_key(&self, input: &[u8]) -> Result<Zeroizing<Vec<u8>>, ImagesError> {
        ward_image::ocicrypt::unwrap_key_request(input, self.keks.as_ref())
            .await
            .map_err(|e| {
                use ward_image::ocicrypt::KeyProviderError;
                use ward_image::ocicrypt::ProviderError;
                match e {
                    // The provider's own message: `KeyProviderError::Provider` says only
                    // "key-provider unwrap" and keeps the cause as its source.
                    KeyProviderError::Provider(
                        p @ (ProviderError::Kek { .. }
                        | ProviderError::KekLength { .. }
                        | ProviderError::Authentication { .. }),
                    ) => ImagesError::Unwrap(p.to_string()),
                    KeyProviderError::Provider(p) => ImagesError::UnwrapRequest(p.to_string()),
                    other => ImagesError::UnwrapRequest(other.to_string()),
                }
            })
    }
}

/// The policy from the config file: a `policy.json`, or accept/reject with `signed` scopes.
fn local_policy(source: &PolicySource, signed: &[(String, String)]) -> Result<Policy, ImagesError> {
    let mut policy = match source {
        PolicySource::Accept => Policy::accept_anything(),
        PolicySource::Reject => Policy::reject(),
        PolicySource::File(p) => {
            return Policy::from_file(p).map_err(|e| ImagesError::Setup(e.to_string()));
        }
        PolicySource::Kbs(uri) => {
            return Err(ImagesError::Setup(format!(
                "signature policy {uri} is fetched from the KBS at the first pull"
            )));
        }
    };
    for (scope, key) in signed {
        policy
            .require_signature(scope, key, None)
            .map_err(|e| ImagesError::Setup(e.to_string()))?;
    }
    Ok(policy)
}

/// An absolute path without `..` (the runtime's bundle directory).
fn checked_bundle(bundle: &str) -> Result<PathBuf, ImagesError> {
    let p = Path::new(bundle);
    if !p.is_absolute() || p.components().any(|c| matches!(c, Component::ParentDir)) {
        return Err(ImagesError::BundlePath(bundle.to_string()));
    }
    Ok(p.to_path_buf())
}

/// A pull's progress in wardd's log: the layers once resolved, then the bytes downloaded at
/// most every [`LogProgress::EVERY`] while they arrive. In a guest a 10 GB image takes minutes,
/// and without this the log shows nothing between the request and its answer. It logs sizes and
/// digests only, which the registry (the host) already knows.
#[derive(Default)]
struct LogProgress {
    state: std::sync::Mutex<LogState>,
}

#[derive(Default)]
struct LogState {
    total: u64,
    fetched: Vec<u64>,
    done: usize,
    last: Option<std::time::Instant>,
}

impl LogProgress {
    const EVERY: std::time::Duration = std::time::Duration::from_secs(10);

    fn state(&self) -> std::sync::MutexGuard<'_, LogState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl PullProgress for LogProgress {
    fn resolved(&self, image: &str, layers: &[LayerInfo]) {
        let mut s = self.state();
        s.total = layers.iter().fold(0u64, |t, l| t.saturating_add(l.size));
        s.fetched = vec![0; layers.len()];
        s.last = Some(std::time::Instant::now());
        tracing::info!(%image, layers = layers.len(), bytes = s.total, "image pull started");
    }

    fn layer_fetched(&self, index: usize, bytes: u64) {
        let mut s = self.state();
        if let Some(f) = s.fetched.get_mut(index) {
            *f = bytes;
        }
        if s.last.is_some_and(|t| t.elapsed() >= Self::EVERY) {
            s.last = Some(std::time::Instant::now());
            let fetched = s.fetched.iter().fold(0u64, |t, f| t.saturating_add(*f));
            tracing::info!(
                fetched,
                of = s.total,
                layers_done = s.done,
                "image pull progress"
            );
        }
    }

    fn layer_done(&self, _index: usize) {
        self.state().done += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kek_scope() {
        let uri = |s: &str| ResourceUri::parse(s).unwrap();
        let scope = KekScope {
            allowed: Vec::new(),
            refused: vec!["default/credential/registry".into()],
        };
        assert!(scope.admits(&uri("kbs:///default/image-kek/1")));
        assert!(!scope.admits(&uri("kbs:///default/credential/registry")));
        assert!(!scope.admits(&uri("kbs+pkcs11://h/wrap/key")));
        assert!(!scope.admits(&uri("kbs:///default/image-kek/1?x=y")));
        let narrow = KekScope {
            allowed: vec!["default/image-kek/".into(), "other/k/one".into()],
            refused: Vec::new(),
        };
        assert!(narrow.admits(&uri("kbs:///default/image-kek/7")));
        assert!(narrow.admits(&uri("kbs:///other/k/one")));
        assert!(!narrow.admits(&uri("kbs:///other/k/two")));
        assert!(!narrow.admits(&uri("kbs:///default/image-kek2/7")));
        let with_model = narrow.also(Some("kbs:///models/kek/m"));
        assert!(with_model.admits(&uri("kbs:///models/kek/m")));
        assert!(
            scope
                .also(Some("kbs:///default/credential/registry"))
                .admits(&uri("kbs:///default/credential/registry"))
        );
    }

    #[test]
    fn bundle_paths() {
        assert!(checked_bundle("/run/kata-containers/abc").is_ok());
        for bad in ["", "relative", "/run/../etc", "/a/b/../../c"] {
            assert!(checked_bundle(bad).is_err(), "{bad}");
        }
    }
}
