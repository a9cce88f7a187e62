//! The `[images]` section (registries, keys, signature policy, mirrors), validated.

use std::path::PathBuf;

use super::ConfigError;
use super::file::RawImages;

/// A validated `[images]` section.
#[derive(Clone, Debug, PartialEq)]
pub struct ImageSettings {
    pub blob_cache: Option<PathBuf>,
    pub insecure_registries: Vec<String>,
    pub ca: Option<PathBuf>,
    pub decryption_keys: Vec<PathBuf>,
    pub concurrency: usize,
    pub require_encrypted: bool,
    /// A path to an `auth.json`, or a `kbs:///` URI of one.
    pub auth: Option<String>,
    pub policy: PolicySource,
    /// `(scope, key)`: images under `scope` need a sigstore signature by `key` (a PEM path or a
    /// `kbs:///` URI).
    pub signed: Vec<(String, String)>,
    pub mirrors: Vec<ward_image::registry::Mirror>,
    /// `[images] kek_resources`: resource paths (`repo/type/tag`) or path prefixes ending in
    /// `/` that an image's key-provider packets may name; empty: any plain resource but the
    /// ones named for other uses.
    pub kek_resources: Vec<String>,
}

/// Where the signature policy comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PolicySource {
    /// Accept images not named in `signed` (containers' and CoCo's default).
    Accept,
    /// Refuse images not named in `signed`.
    Reject,
    /// A containers `policy.json` file.
    File(PathBuf),
    /// A `kbs:///` resource holding a `policy.json`, fetched at the first pull.
    Kbs(String),
}

/// Validates `[images]`.
pub(super) fn images(raw: RawImages) -> Result<ImageSettings, ConfigError> {
    if raw.concurrency == 0 || raw.concurrency > 64 {
        return Err(ConfigError::invalid(
            "images.concurrency",
            format!("{} is out of range (1 to 64)", raw.concurrency),
        ));
    }
    if raw.blob_cache.as_ref().is_some_and(|c| !c.is_absolute()) {
        return Err(ConfigError::invalid(
            "images.blob_cache",
            "must be an absolute path",
        ));
    }
    let policy = match raw.policy.as_str() {
        "accept" => PolicySource::Accept,
        "reject" => PolicySource::Reject,
        p if p.starts_with("kbs:") => {
            ward_kbs_wire::ResourceUri::parse(p)
                .map_err(|e| ConfigError::invalid("images.policy", e.to_string()))?;
            PolicySource::Kbs(p.to_string())
        }
        p if p.starts_with('/') => PolicySource::File(PathBuf::from(p)),
        p => {
            return Err(ConfigError::invalid(
                "images.policy",
                format!("`{p}` is not accept, reject, an absolute path or a kbs:/// URI"),
            ));
        }
    };
    if !raw.signed.is_empty() && !matches!(policy, PolicySource::Accept | PolicySource::Reject) {
        return Err(ConfigError::invalid(
            "images.signed",
            "only with policy = \"accept\" or \"reject\" (a policy.json names its own keys)",
        ));
    }
    let mut signed = Vec::new();
    for s in raw.signed {
        if s.scope.is_empty() {
            return Err(ConfigError::invalid(
                "images.signed",
                "`scope` is empty (use policy = \"reject\" with a scope per registry)",
            ));
        }
        path_or_kbs("images.signed", &s.key)?;
        signed.push((s.scope, s.key));
    }
    let mut mirrors = Vec::new();
    for m in raw.mirror {
        if m.registry.is_empty()
            || m.mirrors.is_empty()
            || m.mirrors.iter().any(|h| h.contains('/'))
        {
            return Err(ConfigError::invalid(
                "images.mirror",
                format!(
                    "`{}`: a registry host and at least one mirror host (no paths)",
                    m.registry
                ),
            ));
        }
        mirrors.push(ward_image::registry::Mirror {
            registry: m.registry,
            mirrors: m.mirrors,
            digest_only: m.digest_only,
        });
    }
    Ok(ImageSettings {
        policy,
        signed,
        mirrors,
        blob_cache: raw.blob_cache,
        insecure_registries: raw.insecure_registries,
        ca: raw.ca,
        decryption_keys: raw.decryption_keys,
        concurrency: raw.concurrency,
        require_encrypted: raw.require_encrypted,
        kek_resources: raw
            .kek_resources
            .iter()
            .map(|p| kek_prefix(p))
            .collect::<Result<_, _>>()?,
        auth: match raw.auth {
            Some(a) => {
                path_or_kbs("images.auth", &a)?;
                Some(a)
            }
            None => None,
        },
    })
}

/// A `kbs:///repo[/type[/tag]]` prefix as the path it matches: `repo/type/tag` exactly, or
/// `repo/` / `repo/type/` and everything under it.
fn kek_prefix(value: &str) -> Result<String, ConfigError> {
    let bad = |why: &str| ConfigError::invalid("images.kek_resources", format!("`{value}`: {why}"));
    let path = value
        .strip_prefix("kbs:///")
        .ok_or_else(|| bad("not a kbs:/// prefix (plugins and hosts are not KEKs)"))?;
    let segments: Vec<&str> = path.trim_end_matches('/').split('/').collect();
    if segments.len() > 3
        || segments.iter().any(|s| {
            s.is_empty()
                || !s
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        })
    {
        return Err(bad(
            "expected kbs:///repo/, kbs:///repo/type/ or kbs:///repo/type/tag",
        ));
    }
    Ok(match segments.len() {
        3 => segments.join("/"),
        _ => format!("{}/", segments.join("/")),
    })
}

/// `value` must be an absolute path or a valid `kbs:///` resource URI.
fn path_or_kbs(key: &str, value: &str) -> Result<(), ConfigError> {
    if value.starts_with("kbs:") {
        ward_kbs_wire::ResourceUri::parse(value)
            .map_err(|e| ConfigError::invalid(key, e.to_string()))?;
        Ok(())
    } else if value.starts_with('/') {
        Ok(())
    } else {
        Err(ConfigError::invalid(
            key,
            format!("`{value}` is neither an absolute path nor a kbs:/// URI"),
        ))
    }
}
