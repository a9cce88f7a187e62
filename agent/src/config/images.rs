//! The `[images]` section (registries, keys, signature policy, mirrors) and `[[model]]` entries,
//! validated.

use std::path::PathBuf;

use super::ConfigError;
use super::file::{RawImages, RawModel};

/// A validated `[images]` section.
#[derive(Clone, Debug, PartialEq)]
pub struct ImageSettings {
    pub store: PathBuf,
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
}

/// A validated `[[model]]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ModelSettings {
    pub name: String,
    pub source: ModelSource,
    pub kek: Option<String>,
    /// The plaintext digests policy pins (every file of the model).
    pub digests: ward_image::model_artifact::PinnedDigests,
    /// Sequences generated at once (1 to 64); `None`: the engine's default.
    pub max_batch: Option<usize>,
    /// Requests allowed to wait for a slot (1 to 4096); `None`: the engine's default.
    pub queue: Option<usize>,
    /// Where the model runs.
    pub device: ModelDevice,
}

/// Where a model runs, as `[[model]] device` spells it: `cpu`, `cuda` (GPU 0) or `cuda:N`.
///
/// Config owns its own type so that it depends on no runtime crate; wardd's model loader maps
/// it to the runtime's device.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ModelDevice {
    #[default]
    Cpu,
    /// An NVIDIA GPU by ordinal (a wardd built with the `cuda` feature).
    Cuda(usize),
}

impl std::str::FromStr for ModelDevice {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "cpu" => Ok(Self::Cpu),
            "cuda" => Ok(Self::Cuda(0)),
            _ => s
                .strip_prefix("cuda:")
                .and_then(|n| n.parse().ok())
                .map(Self::Cuda)
                .ok_or_else(|| format!("`{s}`: expected cpu, cuda or cuda:N")),
        }
    }
}

impl std::fmt::Display for ModelDevice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Cpu => f.write_str("cpu"),
            Self::Cuda(n) => write!(f, "cuda:{n}"),
        }
    }
}

/// Where a model comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ModelSource {
    Registry(String),
    Layout(PathBuf),
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

pub(super) fn models(raw: Vec<RawModel>) -> Result<Vec<ModelSettings>, ConfigError> {
    let mut out: Vec<ModelSettings> = Vec::new();
    for m in raw {
        let bad = |d: String| ConfigError::invalid("model", format!("`{}`: {d}", m.name));
        if m.name.is_empty() || out.iter().any(|o| o.name == m.name) {
            return Err(bad("names must be non-empty and unique".into()));
        }
        let source = if m.source.starts_with('/') {
            ModelSource::Layout(PathBuf::from(&m.source))
        } else {
            ward_image::registry::Registry::reference(&m.source).map_err(|e| bad(e.to_string()))?;
            ModelSource::Registry(m.source.clone())
        };
        if let Some(k) = &m.kek {
            ward_kbs_wire::ResourceUri::parse(k).map_err(|e| bad(e.to_string()))?;
        }
        if m.digests.is_empty() {
            return Err(bad(
                "`digests` is empty: pin every file (ward model seal prints the table)".into(),
            ));
        }
        let mut digests = ward_image::model_artifact::PinnedDigests::new();
        for (file, d) in &m.digests {
            let d = ward_image::digest::Digest::parse(d)
                .map_err(|e| bad(format!("digest of {file}: {e}")))?;
            digests.insert(file.clone(), d);
        }
        if let Some(n) = m.max_batch.filter(|n| !(1..=64).contains(n)) {
            return Err(bad(format!("max_batch {n} is out of range (1 to 64)")));
        }
        // Every request passes through the queue, even when a slot is free.
        if let Some(n) = m.queue.filter(|n| !(1..=4096).contains(n)) {
            return Err(bad(format!("queue {n} is out of range (1 to 4096)")));
        }
        let device = match &m.device {
            None => ModelDevice::Cpu,
            Some(d) => {
                let device: ModelDevice = d.parse().map_err(|e| bad(format!("device {e}")))?;
                if matches!(device, ModelDevice::Cuda(_)) && !cfg!(feature = "cuda") {
                    return Err(bad(format!(
                        "device {device}: this build has no CUDA support (build wardd with the `cuda` feature)"
                    )));
                }
                device
            }
        };
        out.push(ModelSettings {
            name: m.name,
            source,
            kek: m.kek,
            digests,
            max_batch: m.max_batch,
            queue: m.queue,
            device,
        });
    }
    Ok(out)
}

/// Validates `[images]`.
pub(super) fn images(raw: RawImages) -> Result<ImageSettings, ConfigError> {
    if raw.concurrency == 0 || raw.concurrency > 64 {
        return Err(ConfigError::invalid(
            "images.concurrency",
            format!("{} is out of range (1 to 64)", raw.concurrency),
        ));
    }
    if !raw.store.is_absolute() {
        return Err(ConfigError::invalid(
            "images.store",
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
        store: raw.store,
        insecure_registries: raw.insecure_registries,
        ca: raw.ca,
        decryption_keys: raw.decryption_keys,
        concurrency: raw.concurrency,
        require_encrypted: raw.require_encrypted,
        auth: match raw.auth {
            Some(a) => {
                path_or_kbs("images.auth", &a)?;
                Some(a)
            }
            None => None,
        },
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
