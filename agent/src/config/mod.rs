//! wardd's configuration: a TOML file, then `ward.*` kernel command-line overrides, validated
//! into a [`Config`] whose values are all known to be usable.
//!
//! Precedence: built-in defaults < the file < the kernel command line. A missing file at the
//! default path means "defaults"; a missing file that was named explicitly is an error. Every
//! error is one line that names the key and the problem.

mod cmdline;
mod file;
mod image_settings;
mod listeners;
mod model_settings;
mod services;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

pub use cmdline::{Overrides, parse_cmdline};
pub use file::{DEFAULT_VSOCK_PORT, RawAttestation, RawConfig, RawKbs, RawListener};
pub use image_settings::{ImageSettings, PolicySource};
pub use listeners::default_encrypted_only;
use listeners::expand_services;
pub use model_settings::{
    AccessPolicySource, ConnectedEngine, EnginePreset, EngineSettings, ModelDevice, ModelSettings,
    ModelSource, StartedEngine,
};
pub use services::ServiceKind;

use crate::listen::ListenAddr;

/// Where wardd looks for its config when `--config` is not given.
pub const DEFAULT_CONFIG_PATH: &str = "/etc/ward/ward.toml";

/// Why a configuration was refused. Each variant prints as one line naming the key.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file exists (or was named explicitly) but could not be read.
    #[error("{path}: cannot read: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The file is not valid TOML, has an unknown key, or a value of the wrong type.
    #[error("{path}:{line}: {message}")]
    Parse {
        path: PathBuf,
        line: usize,
        message: String,
    },
    /// A value parsed but is not acceptable.
    #[error("{key}: {problem}")]
    Invalid { key: String, problem: String },
}

impl ConfigError {
    fn invalid(key: impl Into<String>, problem: impl Into<String>) -> Self {
        ConfigError::Invalid {
            key: key.into(),
            problem: problem.into(),
        }
    }
}

/// Log output format.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// One readable line per event.
    Human,
    /// One JSON object per line, for collectors.
    Json,
}

/// Where a listener's settings came from, so errors can point at the right place.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Origin {
    /// `[[listener]]` number N (from 0) of the file, or of the defaults.
    File(usize),
    /// A `ward.listen=` entry on the kernel command line.
    Cmdline,
}

impl Origin {
    fn key(&self, field: &str) -> String {
        match self {
            Origin::File(i) => format!("listener[{i}].{field}"),
            Origin::Cmdline => "ward.listen".to_string(),
        }
    }
}

/// What a listener speaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Protocol {
    /// ttrpc, as kata-agent and CoCo's clients speak it.
    Ttrpc,
    /// HTTP with CoCo's api-server-rest paths (`/aa/token`, `/aa/evidence`, `/cdh/resource/...`).
    Http,
}

/// One validated listener.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Listener {
    pub addr: ListenAddr,
    pub protocol: Protocol,
    /// The allow-list: every other service is refused on this listener.
    pub services: BTreeSet<ServiceKind>,
    /// Permission bits for a unix socket file.
    pub mode: u32,
    /// Inference requests must be end-to-end encrypted (`application/ward-e2e`); plaintext
    /// ones are refused with 415. Default: on vsock, not in the guest.
    pub encrypted_only: bool,
    pub origin: Origin,
}

/// Which TEE to attest with.
#[derive(Clone, Debug, PartialEq)]
pub struct AttestationSettings {
    /// `None`: detect.
    pub tee: Option<ward_attester::tee::Tee>,
    pub allow_sample: bool,
    /// Where initdata is read from at start (absent file: none).
    pub initdata: Option<PathBuf>,
    /// `None`: runtime measurement is off (ExtendRuntimeMeasurement answers NOT_ENABLED).
    pub eventlog: Option<PathBuf>,
    pub measurement_pcr: u64,
    pub gpus: GpuPolicy,
    pub allow_gpu_devtools: bool,
    pub sample_device: bool,
}

/// Whether NVIDIA GPUs are attested.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GpuPolicy {
    /// When NVML finds attestable GPUs; otherwise go on without (logged).
    Auto,
    /// wardd refuses to start unless the GPUs can be attested.
    Required,
    Off,
}

/// A validated `[kbs]` section.
#[derive(Clone, Debug, PartialEq)]
pub struct KbsSettings {
    pub url: String,
    pub cacert: Option<PathBuf>,
    pub key: ward_attester::kbs::KeyKind,
    pub timeout: Duration,
    pub attempts: u32,
    pub coco_token_reply: bool,
    /// `[kbs] insecure_http`: a plain-HTTP KBS is allowed on a real TEE (development).
    pub insecure_http: bool,
}

/// What wardd does once its start-up self-check is over (`ward.self_check=`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AfterSelfCheck {
    /// Keep serving (the outcome is logged).
    Serve,
    /// Stop as on SIGTERM; as PID 1 that powers the guest off. A failed check is a fatal error.
    PowerOff,
}

/// The start-up self-check, asked for on the kernel command line (boot tests, image smoke tests).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SelfCheckSettings {
    pub then: AfterSelfCheck,
    /// A `kbs:///` resource to fetch through the shared KBS session (its value is never logged).
    pub resource: Option<String>,
    /// An image to pull into a scratch bundle (`[images]` settings and keys apply).
    pub image: Option<String>,
    /// Block devices to ask SecureMount for, in order.
    pub volumes: Vec<VolumeCheck>,
}

/// `ward.self_check_volume=NAME[,KEY]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VolumeCheck {
    /// The device's name under `/sys/block` (`vdb`).
    pub device: String,
    /// A `kbs:///` key: open an existing LUKS2 volume; none: format a blank one.
    pub key: Option<String>,
}

/// A validated configuration.
#[derive(Clone, Debug, PartialEq)]
pub struct Config {
    /// A `tracing` env-filter directive, such as `info` or `ward_agent=debug`.
    pub log_filter: String,
    pub log_format: LogFormat,
    /// The audit log file; `None` disables the audit log.
    pub audit_log: Option<PathBuf>,
    /// Where a copy of every audit line goes (`[audit] export`).
    pub audit_export: Option<crate::audit::export::ExportTarget>,
    pub listeners: Vec<Listener>,
    /// How long in-flight requests get to finish after a stop signal.
    pub shutdown_timeout: Duration,
    /// The longest any single request may run.
    pub request_timeout: Duration,
    /// The longest a streamed reply or a long call (PullImage, SecureMount) may run.
    pub stream_timeout: Duration,
    /// `oom_score_adj` applied to wardd in PID-1 mode (systemd sets it from the unit otherwise).
    pub oom_score_adj: i32,
    pub attestation: AttestationSettings,
    /// `None`: no KBS; tokens and resources are unavailable.
    pub kbs: Option<KbsSettings>,
    pub images: ImageSettings,
    /// Sealed models to load at start.
    pub models: Vec<ModelSettings>,
    /// CPU threads of the inference kernels; `None`: one per core.
    pub inference_threads: Option<std::num::NonZeroUsize>,
    /// `[inference] engine_dir`: external engines' weight links.
    pub engine_dir: PathBuf,
    /// `[inference] kem`: the KEM of the boot-time encryption key.
    pub e2e_suite: ward_e2e::Suite,
    /// `[secure_mount] allow_file_keys`.
    pub secure_mount_file_keys: bool,
    /// `ward.net=`: a static address for one interface, applied in PID-1 mode only.
    pub net: Option<crate::init::NetConfig>,
    /// `ward.self_check=`: check wardd's own listeners (and a KBS resource) once ready.
    pub self_check: Option<SelfCheckSettings>,
}

impl Config {
    /// Reads the config file (or the defaults), applies the kernel command line, and validates.
    ///
    /// `explicit` says whether `path` was named by the operator, in which case it must exist.
    /// Returns the config and the `ward.*` keys of the command line that wardd does not know.
    pub fn load(
        path: &Path,
        explicit: bool,
        cmdline: Option<&str>,
    ) -> Result<(Config, Vec<String>), ConfigError> {
        let raw = match std::fs::read_to_string(path) {
            Ok(text) => RawConfig::from_toml(path, &text)?,
            Err(e) if !explicit && e.kind() == std::io::ErrorKind::NotFound => RawConfig::default(),
            Err(source) => {
                return Err(ConfigError::Read {
                    path: path.to_path_buf(),
                    source,
                });
            }
        };
        let mut config = Config::from_raw(raw)?;
        let mut unknown = Vec::new();
        if let Some(line) = cmdline {
            let (overrides, u) = parse_cmdline(line)?;
            unknown = u;
            config.apply(overrides);
        }
        config.check()?;
        Ok((config, unknown))
    }

    /// Validates a parsed file.
    pub fn from_raw(raw: RawConfig) -> Result<Config, ConfigError> {
        validate_filter("log.level", &raw.log.level)?;
        let listeners = raw
            .listener
            .into_iter()
            .enumerate()
            .map(|(i, l)| listeners::from_raw(i, l))
            .collect::<Result<Vec<_>, _>>()?;
        let kbs = match raw.kbs {
            Some(k) => Some(validate_kbs(k)?),
            None => None,
        };
        let images = image_settings::images(raw.images)?;
        Ok(Config {
            models: model_settings::models(raw.model)?,
            inference_threads: match raw.inference.threads {
                0 => None,
                n @ 1..=1024 => std::num::NonZeroUsize::new(n),
                n => {
                    return Err(ConfigError::invalid(
                        "inference.threads",
                        format!("{n} is out of range (0 for one per core, or 1 to 1024)"),
                    ));
                }
            },
            images,
            secure_mount_file_keys: raw.secure_mount.allow_file_keys,
            e2e_suite: ward_e2e::Suite::parse(&raw.inference.kem)
                .ok_or_else(|| ConfigError::invalid("inference.kem", "`xwing` or `x25519`"))?,
            engine_dir: if raw.inference.engine_dir.is_absolute() {
                raw.inference.engine_dir
            } else {
                return Err(ConfigError::invalid(
                    "inference.engine_dir",
                    "must be an absolute path",
                ));
            },
            attestation: AttestationSettings {
                tee: parse_tee("attestation.tee", &raw.attestation.tee)?,
                allow_sample: raw.attestation.allow_sample,
                initdata: Some(raw.attestation.initdata).filter(|p| !p.as_os_str().is_empty()),
                eventlog: Some(raw.attestation.eventlog).filter(|p| !p.as_os_str().is_empty()),
                gpus: match raw.attestation.gpus.as_str() {
                    "auto" => GpuPolicy::Auto,
                    "required" => GpuPolicy::Required,
                    "off" => GpuPolicy::Off,
                    v => {
                        return Err(ConfigError::invalid(
                            "attestation.gpus",
                            format!("`{v}` is not a GPU policy (auto, required, off)"),
                        ));
                    }
                },
                allow_gpu_devtools: raw.attestation.allow_gpu_devtools,
                sample_device: raw.attestation.sample_device,
                measurement_pcr: if raw.attestation.measurement_pcr < 24 {
                    raw.attestation.measurement_pcr
                } else {
                    return Err(ConfigError::invalid(
                        "attestation.measurement_pcr",
                        format!(
                            "{} is not a PCR index (0 to 23)",
                            raw.attestation.measurement_pcr
                        ),
                    ));
                },
            },
            kbs,
            log_filter: raw.log.level,
            log_format: raw.log.format,
            audit_log: raw.audit.path.filter(|p| !p.as_os_str().is_empty()),
            audit_export: raw
                .audit
                .export
                .as_deref()
                .map(crate::audit::export::ExportTarget::parse)
                .transpose()
                .map_err(|e| ConfigError::invalid("audit.export", e))?,
            listeners,
            shutdown_timeout: seconds(
                "daemon.shutdown_timeout_secs",
                raw.daemon.shutdown_timeout_secs,
            )?,
            request_timeout: seconds(
                "daemon.request_timeout_secs",
                raw.daemon.request_timeout_secs,
            )?,
            stream_timeout: seconds("daemon.stream_timeout_secs", raw.daemon.stream_timeout_secs)?,
            oom_score_adj: oom_score_adj("daemon.oom_score_adj", raw.daemon.oom_score_adj)?,
            net: None,
            self_check: None,
        })
    }

    /// Applies kernel command-line overrides (already validated one by one).
    pub fn apply(&mut self, o: Overrides) {
        if let Some(v) = o.log_filter {
            self.log_filter = v;
        }
        if let Some(v) = o.log_format {
            self.log_format = v;
        }
        if let Some(v) = o.audit_log {
            self.audit_log = v;
        }
        if let Some(v) = o.shutdown_timeout {
            self.shutdown_timeout = v;
        }
        if let Some(v) = o.request_timeout {
            self.request_timeout = v;
        }
        if let Some(v) = o.stream_timeout {
            self.stream_timeout = v;
        }
        if let Some(v) = o.oom_score_adj {
            self.oom_score_adj = v;
        }
        if !o.listeners.is_empty() {
            self.listeners = o.listeners;
        }
        if let Some(v) = o.tee {
            self.attestation.tee = v;
        }
        if let Some(v) = o.allow_sample {
            self.attestation.allow_sample = v;
        }
        if let Some(v) = o.net {
            self.net = Some(v);
        }
        // A resource or an image alone asks for a check that keeps serving afterwards.
        let asked = o.self_check_resource.is_some()
            || o.self_check_image.is_some()
            || !o.self_check_volumes.is_empty();
        if let Some(then) = o.self_check.or(asked.then_some(AfterSelfCheck::Serve)) {
            self.self_check = Some(SelfCheckSettings {
                then,
                resource: o.self_check_resource,
                image: o.self_check_image,
                volumes: o.self_check_volumes,
            });
        }
        if let Some(url) = o.kbs_url {
            match &mut self.kbs {
                Some(k) => k.url = url,
                None => {
                    self.kbs = Some(KbsSettings {
                        url,
                        cacert: None,
                        key: ward_attester::kbs::KeyKind::EcP256,
                        timeout: Duration::from_secs(10),
                        attempts: 3,
                        coco_token_reply: false,
                        insecure_http: false,
                    })
                }
            }
        }
    }

    /// Checks that hold across keys: at least one listener, no address twice, and nothing
    /// secret-bearing served where the caller may be the host (`listeners.rs`).
    pub fn check(&self) -> Result<(), ConfigError> {
        if self.listeners.is_empty() {
            return Err(ConfigError::invalid(
                "listener",
                "no listener is configured: wardd would serve nothing",
            ));
        }
        let mut seen = BTreeSet::new();
        for l in &self.listeners {
            if !seen.insert(l.addr.to_string()) {
                return Err(ConfigError::invalid(
                    l.origin.key("address"),
                    format!("{} is configured twice", l.addr),
                ));
            }
            listeners::check(l)?;
        }
        Ok(())
    }
}

/// Parses a TEE name (`auto` = detect).
pub(crate) fn parse_tee(
    key: &str,
    value: &str,
) -> Result<Option<ward_attester::tee::Tee>, ConfigError> {
    use ward_attester::tee::Tee;
    Ok(Some(match value {
        "auto" => return Ok(None),
        "snp" => Tee::Snp,
        "tdx" => Tee::Tdx,
        "az-snp-vtpm" => Tee::AzSnpVtpm,
        "az-tdx-vtpm" => Tee::AzTdxVtpm,
        "sample" => Tee::Sample,
        v => {
            return Err(ConfigError::invalid(
                key,
                format!("`{v}` is not a TEE (auto, snp, tdx, az-snp-vtpm, az-tdx-vtpm, sample)"),
            ));
        }
    }))
}

/// Checks a KBS URL: http(s), with a host.
pub(crate) fn validate_kbs_url(key: &str, url: &str) -> Result<String, ConfigError> {
    let rest = url
        .strip_prefix("https://")
        .or_else(|| url.strip_prefix("http://"))
        .ok_or_else(|| ConfigError::invalid(key, format!("`{url}` is not an http(s) URL")))?;
    if rest.is_empty() || rest.starts_with('/') || rest.contains(char::is_whitespace) {
        return Err(ConfigError::invalid(key, format!("`{url}` has no host")));
    }
    Ok(url.trim_end_matches('/').to_string())
}

fn validate_kbs(k: RawKbs) -> Result<KbsSettings, ConfigError> {
    let key = match k.key.as_str() {
        "ec" => ward_attester::kbs::KeyKind::EcP256,
        "rsa" => ward_attester::kbs::KeyKind::Rsa2048,
        v => {
            return Err(ConfigError::invalid(
                "kbs.key",
                format!("`{v}` is not a key type (ec or rsa)"),
            ));
        }
    };
    if k.attempts == 0 || k.attempts > 10 {
        return Err(ConfigError::invalid(
            "kbs.attempts",
            format!("{} is out of range (1 to 10)", k.attempts),
        ));
    }
    Ok(KbsSettings {
        url: validate_kbs_url("kbs.url", &k.url)?,
        cacert: k.cacert,
        key,
        timeout: seconds("kbs.timeout_secs", k.timeout_secs)?,
        attempts: k.attempts,
        coco_token_reply: k.coco_token_reply,
        insecure_http: k.insecure_http,
    })
}

fn validate_filter(key: &str, value: &str) -> Result<(), ConfigError> {
    // tracing-subscriber 0.3.23's directive parser slices at byte offsets and panics inside a
    // multi-byte character (found by the `wardd_config` fuzz target: `level = "\t\t\tlevel ?
    // Ζn=fo"`). A filter is targets, span names, fields and levels: printable ASCII, checked
    // first, so that a hostile value (the kernel command line is the host's) is an error, not a
    // panic of PID 1. The value is not echoed: it may be anything.
    if let Some(c) = value.chars().find(|c| !c.is_ascii_graphic() && *c != ' ') {
        return Err(ConfigError::invalid(
            key,
            format!(
                "a log filter is printable ASCII; this one has {}",
                if c.is_ascii() {
                    format!("the control character {:#04x}", u32::from(c))
                } else {
                    "a character outside ASCII".to_string()
                }
            ),
        ));
    }
    tracing_subscriber::EnvFilter::builder()
        .parse(value)
        .map(|_| ())
        .map_err(|e| ConfigError::invalid(key, format!("`{value}` is not a log filter: {e}")))
}

fn seconds(key: &str, secs: u64) -> Result<Duration, ConfigError> {
    if secs == 0 || secs > 3600 {
        return Err(ConfigError::invalid(
            key,
            format!("{secs} is out of range (1 to 3600 seconds)"),
        ));
    }
    Ok(Duration::from_secs(secs))
}

fn oom_score_adj(key: &str, v: i32) -> Result<i32, ConfigError> {
    if !(-1000..=1000).contains(&v) {
        return Err(ConfigError::invalid(
            key,
            format!("{v} is out of range (-1000 to 1000)"),
        ));
    }
    Ok(v)
}

#[cfg(test)]
mod tests;
