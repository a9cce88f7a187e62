//! `[[model]]` entries (where a sealed model comes from, its KEK, the digests policy pins, the
//! engine's sizes and the device), validated.

use std::path::PathBuf;

use super::ConfigError;
use super::file::RawModel;

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
