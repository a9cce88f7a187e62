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
    /// What serves it.
    pub engine: EngineSettings,
    /// Its access policy, if it has one.
    pub policy: Option<AccessPolicySource>,
}

/// Where a model's access policy comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AccessPolicySource {
    /// Released by the KBS, in the session that released the model's KEK.
    Kbs(ward_kbs_wire::ResourceUri),
    /// Set in the config.
    Inline(crate::access::AccessPolicyDoc),
}

fn policy_source(
    raw: Option<&super::file::RawAccessPolicy>,
) -> Result<Option<AccessPolicySource>, String> {
    use super::file::RawAccessPolicy;
    match raw {
        None => Ok(None),
        Some(RawAccessPolicy::Kbs(uri)) => ward_kbs_wire::ResourceUri::parse(uri)
            .map(|u| Some(AccessPolicySource::Kbs(u)))
            .map_err(|e| format!("policy: {e}")),
        Some(RawAccessPolicy::Inline(doc)) => crate::access::AccessPolicy::from_doc(doc.clone())
            .map(|_| Some(AccessPolicySource::Inline(doc.clone())))
            .map_err(|e| format!("policy: {e}")),
    }
}

/// `[[model]] engine` and its companions.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum EngineSettings {
    /// candle, in wardd.
    #[default]
    Embedded,
    /// An OpenAI-compatible server wardd starts with the opened weights and supervises.
    Started(StartedEngine),
    /// An OpenAI-compatible server already running in the guest (`engine = "openai"`).
    Connected(ConnectedEngine),
}

/// The engines wardd knows how to start.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EnginePreset {
    /// llama.cpp's `llama-server`.
    LlamaServer,
    Vllm,
    Sglang,
}

impl EnginePreset {
    pub fn as_str(self) -> &'static str {
        match self {
            EnginePreset::LlamaServer => "llama-server",
            EnginePreset::Vllm => "vllm",
            EnginePreset::Sglang => "sglang",
        }
    }
}

/// An engine wardd starts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StartedEngine {
    pub preset: EnginePreset,
    /// The command line with its `{…}` placeholders, the preset's unless `command` was given.
    pub command: Vec<String>,
    pub upstream_model: Option<String>,
    pub ready_timeout: std::time::Duration,
    pub request_timeout: std::time::Duration,
    pub restart: bool,
    /// The GPU ordinals the engine sees (`CUDA_VISIBLE_DEVICES`); empty: none, a CPU engine.
    pub gpus: Vec<usize>,
}

/// An engine already running.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConnectedEngine {
    /// `http://127.0.0.1:PORT` (no trailing slash).
    pub upstream: String,
    pub upstream_model: Option<String>,
    pub request_timeout: std::time::Duration,
}

/// Each preset's command line. Request logging is off where the engine has it (vLLM and SGLang
/// log prompts otherwise), and every engine listens on loopback only.
fn preset_command(p: EnginePreset) -> Vec<String> {
    let words: &[&str] = match p {
        EnginePreset::LlamaServer => &[
            "llama-server",
            "--model",
            "{model}",
            "--alias",
            "{name}",
            "--host",
            "{host}",
            "--port",
            "{port}",
        ],
        EnginePreset::Vllm => &[
            "vllm",
            "serve",
            "{model_dir}",
            "--served-model-name",
            "{name}",
            "--host",
            "{host}",
            "--port",
            "{port}",
            "--disable-log-requests",
        ],
        EnginePreset::Sglang => &[
            "python3",
            "-m",
            "sglang.launch_server",
            "--model-path",
            "{model_dir}",
            "--served-model-name",
            "{name}",
            "--host",
            "{host}",
            "--port",
            "{port}",
        ],
    };
    words.iter().map(|w| w.to_string()).collect()
}

const DEFAULT_ENGINE_WAIT: std::time::Duration = std::time::Duration::from_secs(600);

fn engine_settings(m: &RawModel) -> Result<EngineSettings, String> {
    let seconds = |v: Option<u64>, key: &str| match v {
        None => Ok(DEFAULT_ENGINE_WAIT),
        Some(n @ 1..=86_400) => Ok(std::time::Duration::from_secs(n)),
        Some(n) => Err(format!("{key} {n} is out of range (1 to 86400)")),
    };
    let engine = m.engine.as_deref().unwrap_or("candle");
    let started_only = [
        ("devices", m.devices.is_some()),
        ("command", m.command.is_some()),
        ("ready_timeout_secs", m.ready_timeout_secs.is_some()),
        ("restart", m.restart.is_some()),
    ];
    let preset = match engine {
        "candle" => {
            if let Some((key, _)) = started_only
                .iter()
                .chain(
                    [
                        ("upstream", m.upstream.is_some()),
                        ("upstream_model", m.upstream_model.is_some()),
                        ("request_timeout_secs", m.request_timeout_secs.is_some()),
                    ]
                    .iter(),
                )
                .find(|(_, set)| *set)
            {
                return Err(format!(
                    "`{key}` is for external engines (engine = \"candle\")"
                ));
            }
            return Ok(EngineSettings::Embedded);
        }
        "openai" => {
            if let Some((key, _)) = started_only.iter().find(|(_, set)| *set) {
                return Err(format!(
                    "`{key}` is for engines wardd starts, not engine = \"openai\""
                ));
            }
            if !m.source.is_empty() || !m.digests.is_empty() {
                return Err(
                    "engine = \"openai\" serves weights wardd never sees: no `source` or `digests`"
                        .into(),
                );
            }
            let upstream = m
                .upstream
                .as_deref()
                .ok_or("engine = \"openai\" needs `upstream` (http://127.0.0.1:PORT)")?;
            return Ok(EngineSettings::Connected(ConnectedEngine {
                upstream: loopback_url(upstream)?,
                upstream_model: m.upstream_model.clone(),
                request_timeout: seconds(m.request_timeout_secs, "request_timeout_secs")?,
            }));
        }
        "llama-server" => EnginePreset::LlamaServer,
        "vllm" => EnginePreset::Vllm,
        "sglang" => EnginePreset::Sglang,
        other => {
            return Err(format!(
                "engine `{other}` is not candle, llama-server, vllm, sglang or openai"
            ));
        }
    };
    if m.upstream.is_some() {
        return Err(
            "`upstream` is for engine = \"openai\"; wardd picks the port of engines it starts"
                .into(),
        );
    }
    let mut gpus = Vec::new();
    if let Some(devices) = &m.devices {
        if m.device.is_some() {
            return Err("`device` and `devices` together: name the GPUs in `devices`".into());
        }
        for d in devices {
            match d.parse::<ModelDevice>()? {
                ModelDevice::Cuda(n) if !gpus.contains(&n) => gpus.push(n),
                ModelDevice::Cuda(n) => return Err(format!("devices names cuda:{n} twice")),
                ModelDevice::Cpu => return Err("devices lists GPUs only (cuda:N)".into()),
            }
        }
        if gpus.is_empty() {
            return Err("`devices` is empty".into());
        }
    } else if let Some(ModelDevice::Cuda(n)) = m.device.as_deref().map(str::parse).transpose()? {
        gpus.push(n);
    }
    let command = match &m.command {
        Some(c) if c.is_empty() || c[0].is_empty() => return Err("`command` is empty".into()),
        Some(c) => c.clone(),
        None => preset_command(preset),
    };
    Ok(EngineSettings::Started(StartedEngine {
        preset,
        command,
        upstream_model: m.upstream_model.clone(),
        ready_timeout: seconds(m.ready_timeout_secs, "ready_timeout_secs")?,
        request_timeout: seconds(m.request_timeout_secs, "request_timeout_secs")?,
        restart: m.restart.unwrap_or(true),
        gpus,
    }))
}

/// An `http://` URL on a loopback address, which nothing outside the guest can reach.
fn loopback_url(u: &str) -> Result<String, String> {
    let rest = u
        .strip_prefix("http://")
        .ok_or_else(|| format!("upstream `{u}` must be http:// on a loopback address"))?;
    let hostport = rest.trim_end_matches('/');
    if hostport.contains('/') || hostport.contains('@') {
        return Err(format!(
            "upstream `{u}`: a base URL with no path (wardd adds /v1/…)"
        ));
    }
    let host = match hostport.rsplit_once(':') {
        Some((h, p)) if p.parse::<u16>().is_ok_and(|p| p != 0) => h,
        _ => return Err(format!("upstream `{u}` needs a port")),
    };
    let loopback = match host.trim_start_matches('[').trim_end_matches(']') {
        "localhost" => true,
        h => h
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback()),
    };
    if !loopback {
        return Err(format!("upstream `{u}` is not a loopback address"));
    }
    Ok(format!("http://{hostport}"))
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
    /// `engine = "openai"`: the running engine holds weights wardd never sees.
    Engine,
}

pub(super) fn models(raw: Vec<RawModel>) -> Result<Vec<ModelSettings>, ConfigError> {
    let mut out: Vec<ModelSettings> = Vec::new();
    for m in raw {
        let bad = |d: String| ConfigError::invalid("model", format!("`{}`: {d}", m.name));
        if m.name.is_empty() || out.iter().any(|o| o.name == m.name) {
            return Err(bad("names must be non-empty and unique".into()));
        }
        let engine = engine_settings(&m).map_err(bad)?;
        let policy = policy_source(m.policy.as_ref()).map_err(bad)?;
        if matches!(engine, EngineSettings::Connected(_)) {
            out.push(ModelSettings {
                name: m.name,
                source: ModelSource::Engine,
                kek: None,
                digests: Default::default(),
                max_batch: m.max_batch,
                queue: m.queue,
                device: ModelDevice::Cpu,
                engine,
                policy,
            });
            continue;
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
                // candle needs a CUDA build of wardd; an external engine brings its own CUDA.
                if matches!(device, ModelDevice::Cuda(_))
                    && !cfg!(feature = "cuda")
                    && engine == EngineSettings::Embedded
                {
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
            engine,
            policy,
        });
    }
    Ok(out)
}
