//! Signature policy: the containers `policy.json` format (containers-policy.json(5)) for the
//! `docker` transport, checked after an image's manifest is resolved and before any layer of it
//! is fetched or used, on every pull (a layer already in the store is no exception).
//!
//! Requirements: `insecureAcceptAnything`, `reject`, and `sigstoreSigned` with public keys by
//! path, inline (`keyData`), or held by the KBS (`keyPath: "kbs:///repo/type/tag"`, as CoCo
//! writes it). Every requirement of the most specific matching scope must hold. `signedBy`
//! (GPG) and keyless sigstore (Fulcio/Rekor) are refused when the policy is loaded, never
//! silently ignored.

pub mod identity;
pub mod sigstore;

use std::collections::BTreeMap;
use std::path::Path;

use async_trait::async_trait;
use base64::Engine as _;
use oci_client::Reference;
use serde_json::Value;
use ward_kbs_wire::ResourceUri;

use crate::digest::Digest;
use crate::kbs::KbsResources;
use identity::{Named, SignedIdentity};
use sigstore::{PublicKey, UntrustedSignature};

/// Why a policy could not be loaded, or why it refused an image.
#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    #[error("signature policy: {0}")]
    Invalid(String),
    #[error("signature policy: reading {path}: {source}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("signature policy: key {uri}: {detail}")]
    Key { uri: String, detail: String },
    #[error("signature policy refuses {image} (scope `{scope}`): {reason}")]
    Rejected {
        image: String,
        scope: String,
        reason: String,
    },
    #[error("signature policy: fetching the signatures of {image}: {detail}")]
    Fetch { image: String, detail: String },
}

/// Where an image's sigstore signatures come from (the registry, in production).
#[async_trait]
pub trait SignatureSource: Send + Sync {
    /// The signatures stored for `digest` in `reference`'s repository; none is not an error.
    async fn sigstore_signatures(
        &self,
        reference: &Reference,
        digest: &Digest,
    ) -> Result<Vec<UntrustedSignature>, String>;
}

/// A public key named by a requirement.
#[derive(Debug)]
enum Key {
    Loaded {
        name: String,
        key: PublicKey,
    },
    /// Held by the KBS: `uri` as the policy spells it (for messages and the cache), `resource`
    /// parsed.
    Kbs {
        uri: String,
        resource: ResourceUri,
    },
}

/// One requirement of a scope.
#[derive(Debug)]
enum Requirement {
    AcceptAnything,
    Reject,
    Sigstore {
        keys: Vec<Key>,
        identity: SignedIdentity,
    },
}

/// A loaded policy.
#[derive(Debug)]
pub struct Policy {
    default: Vec<Requirement>,
    docker: BTreeMap<String, Vec<Requirement>>,
    /// Keys fetched from the KBS, by URI, for the life of the policy.
    kbs_keys: tokio::sync::Mutex<BTreeMap<String, PublicKey>>,
}

/// What the policy accepted an image on, for the audit log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Accepted {
    pub scope: String,
    /// One line per requirement, e.g. `sigstoreSigned by kbs:///default/cosign/1`.
    pub by: Vec<String>,
}

impl std::fmt::Display for Accepted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let scope = if self.scope.is_empty() {
            "default"
        } else {
            &self.scope
        };
        write!(f, "{} (scope {scope})", self.by.join(", "))
    }
}

impl Policy {
    /// Accepts everything (containers' and CoCo's default when no policy is configured).
    pub fn accept_anything() -> Policy {
        Policy::with_default(Requirement::AcceptAnything)
    }

    /// Refuses everything that no more specific scope allows.
    pub fn reject() -> Policy {
        Policy::with_default(Requirement::Reject)
    }

    fn with_default(r: Requirement) -> Policy {
        Policy {
            default: vec![r],
            docker: BTreeMap::new(),
            kbs_keys: tokio::sync::Mutex::new(BTreeMap::new()),
        }
    }

    /// Requires a sigstore signature by `key` (a PEM file or `kbs:///` URI) for images under
    /// `scope` (a registry, namespace, repository or reference), replacing that scope's rules.
    /// The signature must name the image's repository (`matchRepository`): cosign signs the
    /// repository and the manifest digest, not the tag.
    pub fn require_signature(
        &mut self,
        scope: &str,
        key: &str,
        base: Option<&Path>,
    ) -> Result<(), PolicyError> {
        let key = load_key_path(key, base)?;
        self.docker.insert(
            scope.to_string(),
            vec![Requirement::Sigstore {
                keys: vec![key],
                identity: SignedIdentity::MatchRepository,
            }],
        );
        Ok(())
    }

    /// Reads a `policy.json`; relative `keyPath`s are resolved against `base`.
    pub fn from_json(bytes: &[u8], base: Option<&Path>) -> Result<Policy, PolicyError> {
        let v: Value = serde_json::from_slice(bytes).map_err(|e| {
            PolicyError::Invalid(format!(
                "not JSON: {}",
                ward_kbs_wire::redacted_json_error(&e)
            ))
        })?;
        let default = v
            .get("default")
            .ok_or_else(|| PolicyError::Invalid("`default` is missing".into()))?;
        let default = requirements("default", default, base)?;
        let mut docker = BTreeMap::new();
        if let Some(transports) = v.get("transports") {
            let transports = transports
                .as_object()
                .ok_or_else(|| PolicyError::Invalid("`transports` is not an object".into()))?;
            if let Some(scopes) = transports.get("docker") {
                let scopes = scopes.as_object().ok_or_else(|| {
                    PolicyError::Invalid("`transports.docker` is not an object".into())
                })?;
                for (scope, reqs) in scopes {
                    let what = format!("transports.docker[{scope:?}]");
                    docker.insert(scope.clone(), requirements(&what, reqs, base)?);
                }
            }
        }
        Ok(Policy {
            default,
            docker,
            kbs_keys: tokio::sync::Mutex::new(BTreeMap::new()),
        })
    }

    /// Reads a `policy.json` file.
    pub fn from_file(path: &Path) -> Result<Policy, PolicyError> {
        let bytes = std::fs::read(path).map_err(|source| PolicyError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Policy::from_json(&bytes, path.parent())
    }

    /// The scope that governs `image` and its requirements.
    fn lookup(&self, image: &Named) -> (String, &[Requirement]) {
        for scope in image.scopes() {
            if let Some(r) = self.docker.get(&scope) {
                return (scope, r);
            }
        }
        match self.docker.get("") {
            Some(r) => (String::new(), r),
            None => (String::new(), &self.default),
        }
    }

    /// Whether the policy needs signatures for `reference` at all (so a caller can skip the
    /// registry round trips for images it accepts or rejects outright).
    pub fn needs_signatures(&self, reference: &Reference) -> bool {
        let (_, reqs) = self.lookup(&Named::from_reference(reference));
        reqs.iter()
            .any(|r| matches!(r, Requirement::Sigstore { .. }))
    }

    /// Checks the image `reference` whose manifest (or index) digests are `digests` (the digest
    /// the reference resolved to first). Signatures must vouch for one of them.
    pub async fn check(
        &self,
        reference: &Reference,
        digests: &[Digest],
        signatures: &dyn SignatureSource,
        resources: Option<&dyn KbsResources>,
    ) -> Result<Accepted, PolicyError> {
        let image = Named::from_reference(reference);
        let (scope, reqs) = self.lookup(&image);
        let rejected = |reason: String| PolicyError::Rejected {
            image: image.full(),
            scope: scope.clone(),
            reason,
        };
        if reqs.is_empty() {
            return Err(rejected("the scope has no requirements".into()));
        }
        let mut fetched: Option<Vec<UntrustedSignature>> = None;
        let mut by = Vec::new();
        for req in reqs {
            match req {
                Requirement::AcceptAnything => by.push("insecureAcceptAnything".to_string()),
                Requirement::Reject => {
                    return Err(rejected("the policy says `reject`".into()));
                }
                Requirement::Sigstore { keys, identity } => {
                    if fetched.is_none() {
                        let mut all = Vec::new();
                        for d in digests {
                            let mut found = signatures
                                .sigstore_signatures(reference, d)
                                .await
                                .map_err(|detail| PolicyError::Fetch {
                                    image: image.full(),
                                    detail,
                                })?;
                            all.append(&mut found);
                        }
                        fetched = Some(all);
                    }
                    let sigs = fetched.as_deref().unwrap_or_default();
                    let key_name = self
                        .check_sigstore(&image, digests, sigs, keys, identity, resources)
                        .await
                        .map_err(|e| match e {
                            Refusal::Rejected(reason) => rejected(reason),
                            Refusal::Error(e) => e,
                        })?;
                    by.push(format!("sigstoreSigned by {key_name}"));
                }
            }
        }
        Ok(Accepted { scope, by })
    }

    async fn public_key<'a>(
        &'a self,
        key: &'a Key,
        resources: Option<&dyn KbsResources>,
    ) -> Result<(String, PublicKey), PolicyError> {
        match key {
            Key::Loaded { name, key } => Ok((name.clone(), key.clone())),
            Key::Kbs { uri, resource } => {
                let mut cache = self.kbs_keys.lock().await;
                if let Some(k) = cache.get(uri) {
                    return Ok((uri.clone(), k.clone()));
                }
                let source = resources.ok_or_else(|| PolicyError::Key {
                    uri: uri.clone(),
                    detail: "the key is held by the KBS and no KBS is configured".into(),
                })?;
                let bytes = source
                    .resource(resource)
                    .await
                    .map_err(|e| PolicyError::Key {
                        uri: uri.clone(),
                        detail: e.to_string(),
                    })?;
                let pem = std::str::from_utf8(&bytes).map_err(|_| PolicyError::Key {
                    uri: uri.clone(),
                    detail: "not a PEM text".into(),
                })?;
                let k = PublicKey::from_pem(pem).map_err(|detail| PolicyError::Key {
                    uri: uri.clone(),
                    detail,
                })?;
                cache.insert(uri.clone(), k.clone());
                Ok((uri.clone(), k))
            }
        }
    }

    /// The name of the key that vouched for `image`, or why none did.
    async fn check_sigstore(
        &self,
        image: &Named,
        digests: &[Digest],
        sigs: &[UntrustedSignature],
        keys: &[Key],
        identity: &SignedIdentity,
        resources: Option<&dyn KbsResources>,
    ) -> Result<String, Refusal> {
        if sigs.is_empty() {
            return Err(Refusal::Rejected(format!(
                "a sigstore signature is required and none is stored (looked for tag {})",
                digests
                    .iter()
                    .map(sigstore::signature_tag)
                    .collect::<Vec<_>>()
                    .join(", ")
            )));
        }
        let mut loaded = Vec::with_capacity(keys.len());
        for k in keys {
            loaded.push(
                self.public_key(k, resources)
                    .await
                    .map_err(Refusal::Error)?,
            );
        }
        let mut reasons = Vec::new();
        for (i, sig) in sigs.iter().take(sigstore::MAX_SIGNATURES).enumerate() {
            let mut last = String::new();
            for (name, key) in &loaded {
                match sigstore::verify(sig, key) {
                    Ok(v) => {
                        if !digests.iter().any(|d| d.to_string() == v.manifest_digest) {
                            last = format!(
                                "signed by {name} but for manifest {}, not this image",
                                v.manifest_digest
                            );
                            continue;
                        }
                        match identity.check(image, &v.reference) {
                            Ok(()) => return Ok(name.clone()),
                            Err(e) => last = format!("signed by {name} but {e}"),
                        }
                    }
                    Err(e) => last = format!("{e} with {name}"),
                }
            }
            reasons.push(format!("signature {}: {last}", i + 1));
        }
        Err(Refusal::Rejected(format!(
            "no signature is acceptable ({})",
            reasons.join("; ")
        )))
    }
}

enum Refusal {
    Rejected(String),
    Error(PolicyError),
}

fn requirements(
    what: &str,
    v: &Value,
    base: Option<&Path>,
) -> Result<Vec<Requirement>, PolicyError> {
    let list = v
        .as_array()
        .ok_or_else(|| PolicyError::Invalid(format!("`{what}` is not a list")))?;
    if list.is_empty() {
        return Err(PolicyError::Invalid(format!(
            "`{what}` is an empty list (write [{{\"type\": \"reject\"}}] to refuse)"
        )));
    }
    list.iter().map(|r| requirement(what, r, base)).collect()
}

fn requirement(what: &str, v: &Value, base: Option<&Path>) -> Result<Requirement, PolicyError> {
    let bad = |d: String| PolicyError::Invalid(format!("`{what}`: {d}"));
    match v.get("type").and_then(Value::as_str) {
        Some("insecureAcceptAnything") => Ok(Requirement::AcceptAnything),
        Some("reject") => Ok(Requirement::Reject),
        Some("sigstoreSigned") => {
            for unsupported in ["fulcio", "rekorPublicKeyPath", "rekorPublicKeyData", "pki"] {
                if v.get(unsupported).is_some() {
                    return Err(bad(format!(
                        "sigstoreSigned with `{unsupported}` (keyless signing) is not supported; \
                         name the public key with keyPath or keyData"
                    )));
                }
            }
            let mut keys = Vec::new();
            let strings = |name: &str| -> Result<Vec<String>, PolicyError> {
                match v.get(name) {
                    None => Ok(Vec::new()),
                    Some(Value::String(s)) => Ok(vec![s.clone()]),
                    Some(Value::Array(a)) => a
                        .iter()
                        .map(|x| {
                            x.as_str()
                                .map(str::to_string)
                                .ok_or_else(|| bad(format!("`{name}` holds a non-string")))
                        })
                        .collect(),
                    Some(_) => Err(bad(format!("`{name}` is not a string or a list"))),
                }
            };
            for p in strings("keyPath")?.iter().chain(&strings("keyPaths")?) {
                keys.push(load_key_path(p, base)?);
            }
            for (i, d) in strings("keyData")?
                .iter()
                .chain(&strings("keyDatas")?)
                .enumerate()
            {
                let pem = base64::engine::general_purpose::STANDARD
                    .decode(d.trim())
                    .map_err(|_| bad("`keyData` is not base64".into()))?;
                let pem = String::from_utf8(pem).map_err(|_| bad("`keyData` is not PEM".into()))?;
                let key = PublicKey::from_pem(&pem).map_err(|e| bad(format!("keyData: {e}")))?;
                keys.push(Key::Loaded {
                    name: format!("keyData #{}", i + 1),
                    key,
                });
            }
            if keys.is_empty() {
                return Err(bad(
                    "sigstoreSigned names no key (keyPath or keyData)".into()
                ));
            }
            let identity = SignedIdentity::from_json(v.get("signedIdentity"))?;
            Ok(Requirement::Sigstore { keys, identity })
        }
        Some("signedBy") => Err(bad(
            "`signedBy` (GPG simple signing) is not supported; use sigstoreSigned".into(),
        )),
        Some(other) => Err(bad(format!("unknown requirement type `{other}`"))),
        None => Err(bad("a requirement has no `type`".into())),
    }
}

fn load_key_path(p: &str, base: Option<&Path>) -> Result<Key, PolicyError> {
    if p.starts_with("kbs://") {
        let resource = ResourceUri::parse(p).map_err(|e| PolicyError::Key {
            uri: p.to_string(),
            detail: e.to_string(),
        })?;
        return Ok(Key::Kbs {
            uri: p.to_string(),
            resource,
        });
    }
    let path = match base {
        Some(b) if Path::new(p).is_relative() => b.join(p),
        _ => Path::new(p).to_path_buf(),
    };
    let pem = std::fs::read_to_string(&path).map_err(|source| PolicyError::Read {
        path: path.display().to_string(),
        source,
    })?;
    let key = PublicKey::from_pem(&pem).map_err(|detail| PolicyError::Key {
        uri: path.display().to_string(),
        detail,
    })?;
    Ok(Key::Loaded {
        name: path.display().to_string(),
        key,
    })
}

#[cfg(test)]
mod tests;
