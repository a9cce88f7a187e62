//! The TOML file as written by operators, before validation, and its built-in defaults.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::ServiceKind;
use super::{ConfigError, LogFormat};

/// The vsock port of the default health listener. Kata's agent uses 1024 and its log port 1025;
/// wardd keeps clear of both so the two can run side by side.
pub const DEFAULT_VSOCK_PORT: u32 = 1030;

/// The config file as parsed, before cross-field validation.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawConfig {
    pub log: RawLog,
    pub audit: RawAudit,
    pub daemon: RawDaemon,
    pub attestation: RawAttestation,
    /// `[kbs]`: the Key Broker Service; absent means no KBS (tokens and resources unavailable).
    pub kbs: Option<RawKbs>,
    pub images: RawImages,
    pub inference: RawInference,
    /// `[secure_mount]`: encrypted block volumes (`api.SecureMountService`).
    pub secure_mount: RawSecureMount,
    /// `[[model]]` tables: sealed models to load at start.
    pub model: Vec<RawModel>,
    /// `[[listener]]` tables; when the file has none, the defaults apply.
    pub listener: Vec<RawListener>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawLog {
    /// A `tracing` env-filter directive.
    pub level: String,
    pub format: LogFormat,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawInference {
    /// CPU threads of the inference kernels (candle's pools); 0: one per core.
    pub threads: usize,
    /// Where external engines find their weights' links (`{model_dir}`): a tmpfs, never a disk.
    pub engine_dir: PathBuf,
    /// The KEM of the boot-time key of encrypted inference and Oblivious HTTP: `xwing` (the
    /// default, post-quantum hybrid) or `x25519` (for clients without ML-KEM).
    pub kem: String,
}

impl Default for RawInference {
    fn default() -> Self {
        RawInference {
            threads: 0,
            engine_dir: PathBuf::from("/run/ward/engines"),
            kem: "xwing".to_string(),
        }
    }
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawSecureMount {
    /// Accept `key = "file://PATH"` in SecureMount requests (CoCo does). Off by default: whoever
    /// names a guest file whose content they can predict knows the volume's key.
    pub allow_file_keys: bool,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawAudit {
    /// The audit log file; an empty string disables it.
    pub path: Option<PathBuf>,
    /// A copy of every line for a log shipper: `stdout` or `unix:///path`.
    pub export: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawDaemon {
    pub shutdown_timeout_secs: u64,
    pub request_timeout_secs: u64,
    /// The cap on a streamed reply (a generation streamed over ttrpc) and on long calls (PullImage,
    /// SecureMount: they get the client's deadline up to this), which may rightly outlive
    /// `request_timeout_secs`.
    pub stream_timeout_secs: u64,
    pub oom_score_adj: i32,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawAttestation {
    /// `auto` (detect) or a TEE name: snp, tdx, az-snp-vtpm, az-tdx-vtpm, sample.
    pub tee: String,
    /// Use the sample TEE when no real TEE is found (development only; never on real hardware).
    pub allow_sample: bool,
    /// The initdata document (CoCo TOML); a missing file means no initdata.
    pub initdata: PathBuf,
    /// The runtime measurement event log; an empty string turns runtime measurement off.
    pub eventlog: PathBuf,
    /// Default PCR for runtime measurements (mapped to an RTMR on TDX), as CoCo's `init_pcr`.
    pub measurement_pcr: u64,
    /// NVIDIA GPUs: `auto` (attest them when NVML finds CC-capable GPUs), `required`, or `off`.
    pub gpus: String,
    /// Attest GPUs in developer-tools mode (not for production secrets).
    pub allow_gpu_devtools: bool,
    /// Add the `sampledevice` development double to the evidence (never on real hardware).
    pub sample_device: bool,
}

impl Default for RawAttestation {
    fn default() -> Self {
        RawAttestation {
            tee: "auto".to_string(),
            allow_sample: false,
            initdata: PathBuf::from("/run/confidential-containers/initdata/initdata.toml"),
            eventlog: PathBuf::from("/run/attestation-agent/eventlog"),
            measurement_pcr: 17,
            gpus: "auto".to_string(),
            allow_gpu_devtools: false,
            sample_device: false,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawImages {
    /// Where verified layer blobs are kept for later pulls; none (the default) keeps none, so a
    /// pull leaves only its rootfs. Point it at storage the operator chose (a SecureMount
    /// volume), not at guest memory.
    pub blob_cache: Option<PathBuf>,
    /// Registries (`host[:port]`) reached over plain HTTP.
    pub insecure_registries: Vec<String>,
    /// PEM CA certificates for registries, besides the system roots.
    pub ca: Option<PathBuf>,
    /// Private keys (PEM files) for JWE-encrypted layers.
    pub decryption_keys: Vec<PathBuf>,
    /// Layers of one pull downloading at once (each a bounded window ahead of the unpacker).
    pub concurrency: usize,
    /// Refuse images with any unencrypted layer.
    pub require_encrypted: bool,
    /// Registry credentials: a containers `auth.json` file, or a `kbs:///` resource holding one.
    pub auth: Option<String>,
    /// Signature policy: `accept` (the default), `reject`, a containers `policy.json` path, or a
    /// `kbs:///` resource holding one.
    pub policy: String,
    /// With `accept` or `reject`: scopes whose images need a sigstore signature by a key.
    pub signed: Vec<RawSigned>,
    /// Registry mirrors.
    pub mirror: Vec<RawMirror>,
    /// The KBS resources an image's key-provider packets may name as their KEK: `kbs:///`
    /// prefixes (`kbs:///default/image-kek/` or a whole `kbs:///repo/type/tag`). Empty (the
    /// default): any plain `kbs:///repo/type/tag` but those this file names for other uses.
    /// Plugin URIs and queries are never fetched for an image.
    pub kek_resources: Vec<String>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawModel {
    /// The name requests use.
    pub name: String,
    /// A registry reference (pin it by digest) or an absolute path to a sealed layout (empty
    /// only for `engine = "openai"`, which serves weights wardd never sees).
    #[serde(default)]
    pub source: String,
    /// The KEK URI the model must be sealed under (the manifest names it; this pins it).
    #[serde(default)]
    pub kek: Option<String>,
    /// File name to plaintext `sha256:` digest, as `ward model seal` prints them.
    #[serde(default)]
    pub digests: std::collections::BTreeMap<String, String>,
    /// Sequences generated at once, decoded as one batch (1 to 64; default 4).
    #[serde(default)]
    pub max_batch: Option<usize>,
    /// Requests allowed to wait for a slot; more get 429 (1 to 4096; default 16).
    #[serde(default)]
    pub queue: Option<usize>,
    /// Where the model runs: `cpu` (default), `cuda` or `cuda:N` (a wardd built with `cuda`).
    #[serde(default)]
    pub device: Option<String>,
    /// What serves it: `candle` (default, in wardd), an engine wardd starts with the opened
    /// weights (`llama-server`, `vllm`, `sglang`), or `openai`, one already running at
    /// `upstream`.
    #[serde(default)]
    pub engine: Option<String>,
    /// The engine's command line, replacing the preset's; `{model}`, `{model_dir}`, `{port}`,
    /// `{host}` and `{name}` are filled in.
    #[serde(default)]
    pub command: Option<Vec<String>>,
    /// `engine = "openai"`: the engine's base URL, `http://127.0.0.1:PORT` or `http://[::1]:PORT`.
    #[serde(default)]
    pub upstream: Option<String>,
    /// The model name the engine knows, sent in place of `name` (default: `name`).
    #[serde(default)]
    pub upstream_model: Option<String>,
    /// How long a started engine has to answer `GET /v1/models` (default 600 s).
    #[serde(default)]
    pub ready_timeout_secs: Option<u64>,
    /// The longest one request to the engine may take (default 600 s).
    #[serde(default)]
    pub request_timeout_secs: Option<u64>,
    /// Restart a started engine that exits (default true).
    #[serde(default)]
    pub restart: Option<bool>,
    /// The GPUs an engine wardd starts may use (`["cuda:0", "cuda:1", …]`), in place of
    /// `device`; the engine sees only these, and starts only once the KBS accepted them.
    #[serde(default)]
    pub devices: Option<Vec<String>>,
    /// Who may use the model and how (`docs/model-policy.md`): a `kbs:///` URI the KBS releases
    /// it under, or the policy inline. With one, every request needs a grant.
    #[serde(default)]
    pub policy: Option<RawAccessPolicy>,
}

/// `[[model]] policy`: where the policy comes from.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum RawAccessPolicy {
    /// A KBS resource URI.
    Kbs(String),
    /// The policy itself.
    Inline(crate::access::AccessPolicyDoc),
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSigned {
    /// A registry, namespace, repository or reference (`registry.example.com/team`).
    pub scope: String,
    /// The cosign public key: an absolute PEM path or a `kbs:///` URI.
    pub key: String,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawMirror {
    /// The registry host mirrored.
    pub registry: String,
    /// Mirror hosts, tried in order before the registry.
    pub mirrors: Vec<String>,
    /// Use the mirrors only for references by digest.
    #[serde(default)]
    pub digest_only: bool,
}

impl Default for RawImages {
    fn default() -> Self {
        RawImages {
            blob_cache: None,
            insecure_registries: Vec::new(),
            ca: None,
            decryption_keys: Vec::new(),
            // chosen by bench-pull --sweep (image-rs/README.md, "Pull figures")
            concurrency: 2,
            require_encrypted: false,
            auth: None,
            policy: "accept".into(),
            signed: Vec::new(),
            mirror: Vec::new(),
            kek_resources: Vec::new(),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawKbs {
    /// Base URL, `https://host:port` (or `http://` for development).
    pub url: String,
    /// PEM CA certificate(s) to trust for the KBS instead of the system roots.
    #[serde(default)]
    pub cacert: Option<PathBuf>,
    /// TEE key type: `ec` (P-256, default) or `rsa`.
    #[serde(default = "default_key")]
    pub key: String,
    #[serde(default = "default_kbs_timeout")]
    pub timeout_secs: u64,
    #[serde(default = "default_kbs_attempts")]
    pub attempts: u32,
    /// Answer GetToken with CoCo's exact reply, which includes the TEE private key.
    #[serde(default)]
    pub coco_token_reply: bool,
    /// Development only: allow an `http://` KBS on a real TEE. Over plain HTTP the network can
    /// substitute any resource (they are encrypted to a key it sees), so it is refused unless
    /// this is set here, in the file; the kernel command line cannot set it. The sample TEE, which
    /// protects nothing, may use `http://` without it.
    #[serde(default)]
    pub insecure_http: bool,
}

fn default_key() -> String {
    "ec".to_string()
}

fn default_kbs_timeout() -> u64 {
    10
}

fn default_kbs_attempts() -> u32 {
    3
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawListener {
    /// `unix:///path` or `vsock://CID:PORT`.
    pub address: String,
    /// Service names (see `ServiceKind`) or the groups `cdh` and `all`.
    pub services: Vec<String>,
    /// Permission bits of a unix socket file.
    #[serde(default = "default_mode")]
    pub mode: u32,
    /// `ttrpc` (default) or `http` (CoCo's api-server-rest paths); tcp addresses are http.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protocol: Option<String>,
    /// Refuse plaintext inference requests (only `application/ward-e2e`); only for listeners
    /// that serve `inference`. Default: true on vsock, false in the guest.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub encrypted_only: Option<bool>,
}

fn default_mode() -> u32 {
    0o600
}

impl Default for RawLog {
    fn default() -> Self {
        RawLog {
            level: "info".to_string(),
            format: LogFormat::Human,
        }
    }
}

impl Default for RawAudit {
    fn default() -> Self {
        RawAudit {
            path: Some(PathBuf::from("/run/ward/audit.jsonl")),
            export: None,
        }
    }
}

impl Default for RawDaemon {
    fn default() -> Self {
        RawDaemon {
            shutdown_timeout_secs: 10,
            request_timeout_secs: 120,
            stream_timeout_secs: 3600,
            oom_score_adj: -997,
        }
    }
}

impl Default for RawConfig {
    /// CoCo's sockets with CoCo's services, ward's own socket with everything, and only health
    /// on vsock, where the caller may be the untrusted host.
    fn default() -> Self {
        let listener = |address: String, services: &[ServiceKind]| RawListener {
            address,
            services: services
                .iter()
                .map(|s| s.config_name().to_string())
                .collect(),
            mode: default_mode(),
            protocol: None,
            encrypted_only: None,
        };
        let mut data_hub = ServiceKind::DATA_HUB.to_vec();
        data_hub.extend([ServiceKind::KeyProvider, ServiceKind::Health]);
        RawConfig {
            log: RawLog::default(),
            audit: RawAudit::default(),
            daemon: RawDaemon::default(),
            attestation: RawAttestation::default(),
            kbs: None,
            images: RawImages::default(),
            inference: RawInference::default(),
            secure_mount: RawSecureMount::default(),
            model: Vec::new(),
            listener: vec![
                listener(
                    "unix:///run/confidential-containers/attestation-agent/attestation-agent.sock"
                        .to_string(),
                    &[ServiceKind::AttestationAgent, ServiceKind::Health],
                ),
                listener(
                    "unix:///run/confidential-containers/cdh.sock".to_string(),
                    &data_hub,
                ),
                listener("unix:///run/ward/ward.sock".to_string(), &ServiceKind::ALL),
                listener(
                    format!("vsock://-1:{DEFAULT_VSOCK_PORT}"),
                    &[ServiceKind::Health],
                ),
                // CoCo's api-server-rest, with its default feature set (resources only).
                listener(
                    "tcp://127.0.0.1:8006".to_string(),
                    &[ServiceKind::GetResource, ServiceKind::Health],
                ),
            ],
        }
    }
}

impl RawConfig {
    /// Parses a config file's text; errors carry the file and line.
    pub fn from_toml(path: &Path, text: &str) -> Result<RawConfig, ConfigError> {
        toml::from_str(text).map_err(|e| {
            let line = e
                .span()
                .and_then(|s| text.as_bytes().get(..s.start))
                .map(|before| before.iter().filter(|&&b| b == b'\n').count() + 1)
                .unwrap_or(0);
            ConfigError::Parse {
                path: path.to_path_buf(),
                line,
                message: e.message().trim().replace('\n', " "),
            }
        })
    }

    /// The config as TOML, for `wardd --print-default-config`.
    pub fn to_toml(&self) -> Result<String, toml::ser::Error> {
        toml::to_string_pretty(self)
    }
}
