//! NVIDIA confidential GPUs: device evidence through NVML (and NVSwitch evidence through NSCQ in
//! protected-PCIe mode), and the system-wide "GPUs ready" switch that must stay off until the
//! KBS has accepted the evidence.
//!
//! The evidence is in the NVAT shape CoCo's attester sends (guest-components 8246e5e0,
//! `attestation-agent/attester/src/nvidia/nvat.rs`, from NVIDIA's attestation SDK tag
//! 2026.06.09): `{"device_evidence_list":[{"arch","uuid","evidence","certificate"}]}`, GPUs
//! first, then NVSwitches; `arch` upper-case (`HOPPER`, `BLACKWELL`, `LS10`), `evidence` base64
//! of the SPDM report, `certificate` base64 of the PEM chain, and `uuid` always `"unknown"`:
//! the SDK reports no UUID, so CoCo fills in its default, and Trustee (78962cd4,
//! `deps/verifier/src/nvidia/mod.rs`) copies the field into the device's claims, where a
//! policy would see a difference. The real UUIDs stay in ward's errors, logs and `ward gpu`.
//!
//! Collection reads the CC state first and refuses, with the reason, when CC is off or in
//! developer-tools mode (unless allowed). In protected-PCIe mode it adds every NVSwitch NSCQ
//! knows (and refuses when there is none, or one is not in TNVL mode), which Trustee's PPCIe
//! topology check needs; outside it, switches are left out, as Trustee's local verifier
//! refuses the whole evidence at an `LS10` entry. Each report must echo the nonce ward asked
//! for, have a sane size, and come with a certificate chain that parses. Every NVML call runs off the async runtime with a timeout;
//! errors carry the GPU index, UUID where known, and the NVML code. This module never sets the
//! ready state during collection: [`set_ready_after_attestation`] does, after the KBS said yes.

mod backend;
mod nscq;
mod nvml;
pub mod report;
#[cfg(any(test, feature = "test-util"))]
mod scripted;

use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;

pub use backend::{DeviceInfo, GpuBackend, SwitchInfo, SystemCc, TnvlMode};
pub use nvml::NvmlBackend;
#[cfg(any(test, feature = "test-util"))]
pub use scripted::{Script, ScriptedGpus};

/// Largest report NVML can return (its buffer).
pub const MAX_REPORT: usize = 8192;
/// Largest NVSwitch report NSCQ can return (`NSCQ_ATTESTATION_REPORT_SIZE`).
pub const MAX_SWITCH_REPORT: usize = 0x2000;
/// The `uuid` CoCo's evidence carries for every device (`default_uuid` in nvat.rs).
pub const UNKNOWN_UUID: &str = "unknown";
/// Byte range of the nonce inside the SPDM GET_MEASUREMENTS request at the report's start.
pub const REQUEST_NONCE: std::ops::Range<usize> = 4..36;

/// Why GPU evidence or the ready state could not be had.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum GpuError {
    #[error("NVML library not found: {0}")]
    LibraryMissing(String),
    #[error("NVML symbol missing (driver too old?): {0}")]
    SymbolMissing(String),
    #[error("the NVIDIA driver is not loaded")]
    DriverNotLoaded,
    #[error("{call} failed{}: NVML error {code} ({detail})", index.map(|i| format!(" on GPU {i}")).unwrap_or_default())]
    Nvml {
        call: &'static str,
        index: Option<u32>,
        code: u32,
        detail: String,
    },
    #[error("confidential computing is off on GPU {index} ({name}, UUID {uuid})")]
    CcOff {
        index: u32,
        name: String,
        uuid: String,
    },
    #[error(
        "the GPUs are in developer-tools mode, which is not for production secrets (allow it in the config to attest anyway)"
    )]
    DevTools,
    #[error("protected-PCIe multi-GPU mode, but no NVSwitch to attest: {0}")]
    NoSwitches(String),
    #[error("NVSwitch {uuid}: {detail}")]
    Switch { uuid: String, detail: String },
    #[error("no NVIDIA GPU found")]
    NoGpus,
    #[error(
        "GPU {index} (UUID {uuid}) has architecture {code}, which is neither Hopper (9) nor Blackwell (10)"
    )]
    UnknownArch { index: u32, uuid: String, code: u32 },
    #[error("GPU {index}: attestation report size {size} is not between 1 and 8192 bytes")]
    ReportSize { index: u32, size: u32 },
    #[error("GPU {index}: certificate chain size {size} is not usable")]
    ChainSize { index: u32, size: u32 },
    #[error("GPU {index} (UUID {uuid}): the attestation report is malformed: {detail}")]
    BadReport {
        index: u32,
        uuid: String,
        detail: String,
    },
    #[error("GPU {index} (UUID {uuid}): the report does not echo the nonce ward sent")]
    NonceNotEchoed { index: u32, uuid: String },
    #[error("GPU {index} (UUID {uuid}): certificate chain: {detail}")]
    BadChain {
        index: u32,
        uuid: String,
        detail: String,
    },
    #[error("{call} did not return within {timeout:?}")]
    Timeout {
        call: &'static str,
        timeout: Duration,
    },
    #[error("GPU ready state: {0}")]
    ReadyState(String),
}

/// A device architecture as the evidence names it: CoCo's `Architecture` in nvat.rs, which
/// writes upper-case names, and Trustee's, which reads those (and the capitalised ones).
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Arch {
    #[serde(rename = "BLACKWELL", alias = "Blackwell")]
    Blackwell,
    #[serde(rename = "HOPPER", alias = "Hopper")]
    Hopper,
    /// The NVSwitch of HGX H100/H200 boards.
    #[serde(rename = "LS10")]
    Ls10,
}

impl Arch {
    /// The GPU architecture for an NVML architecture number (Hopper 9, Blackwell 10).
    pub fn from_nvml(code: u32) -> Option<Arch> {
        match code {
            9 => Some(Arch::Hopper),
            10 => Some(Arch::Blackwell),
            _ => None,
        }
    }

    /// The switch architecture for an NSCQ architecture number (only LS10 is attestable).
    pub fn from_nscq(code: i8) -> Option<Arch> {
        match code {
            2 => Some(Arch::Ls10),
            _ => None,
        }
    }

    /// The name on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            Arch::Blackwell => "BLACKWELL",
            Arch::Hopper => "HOPPER",
            Arch::Ls10 => "LS10",
        }
    }

    /// Trustee's device class for it, which names the token's submods (`gpu0`, `switch0`).
    pub fn tee_class(self) -> &'static str {
        match self {
            Arch::Blackwell | Arch::Hopper => "gpu",
            Arch::Ls10 => "switch",
        }
    }
}

/// What the verifier's architecture string is for an NVML architecture number.
pub fn arch_name(code: u32) -> Option<&'static str> {
    Arch::from_nvml(code).map(Arch::as_str)
}

/// The submods a Trustee token names when it appraised `gpus` GPUs and `switches` NVSwitches:
/// each device class counted from 0 (trustee 78962cd4, `attestation-service/src/ear_token/
/// broker.rs`), plus `ppcie0` when switches were sent, which Trustee adds only when their
/// topology passed its PPCIe check (`validate_ppcie` in `deps/verifier/src/nvidia/mod.rs`).
pub fn expected_submods(gpus: usize, switches: usize) -> Vec<String> {
    let mut names: Vec<String> = (0..gpus).map(|i| format!("gpu{i}")).collect();
    names.extend((0..switches).map(|i| format!("switch{i}")));
    if switches > 0 {
        names.push("ppcie0".to_string());
    }
    names
}

/// Collection options.
#[derive(Clone, Copy, Debug)]
pub struct CollectOptions {
    pub allow_devtools: bool,
    /// Timeout of each NVML call.
    pub call_timeout: Duration,
}

impl Default for CollectOptions {
    fn default() -> Self {
        CollectOptions {
            allow_devtools: false,
            call_timeout: Duration::from_secs(30),
        }
    }
}

/// Runs one blocking backend call off the runtime, with a timeout.
async fn call<T: Send + 'static>(
    backend: &Arc<dyn GpuBackend>,
    name: &'static str,
    timeout: Duration,
    f: impl FnOnce(&dyn GpuBackend) -> Result<T, GpuError> + Send + 'static,
) -> Result<T, GpuError> {
    let b = backend.clone();
    let task = tokio::task::spawn_blocking(move || f(b.as_ref()));
    match tokio::time::timeout(timeout, task).await {
        Ok(Ok(r)) => r,
        Ok(Err(join)) => Err(GpuError::Nvml {
            call: name,
            index: None,
            code: 0,
            detail: join.to_string(),
        }),
        Err(_) => Err(GpuError::Timeout {
            call: name,
            timeout,
        }),
    }
}

/// Parses the PEM chain (every certificate must parse); returns how many it holds.
fn check_chain(pem: &[u8]) -> Result<usize, String> {
    let text = std::str::from_utf8(pem).map_err(|_| "not PEM text".to_string())?;
    let chain = report::parse_cert_chain_pem(text).map_err(|e| e.to_string())?;
    if chain.is_empty() {
        return Err("no certificate in the chain".to_string());
    }
    Ok(chain.len())
}

/// One device's entry in `device_evidence_list` (CoCo's and Trustee's `NvDeviceReportAndCert`).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct DeviceEvidence {
    pub arch: Arch,
    /// Always [`UNKNOWN_UUID`] when ward writes it; optional when read, as in Trustee.
    #[serde(default = "unknown_uuid")]
    pub uuid: String,
    /// base64 of the SPDM report.
    pub evidence: String,
    /// base64 of the PEM certificate chain.
    pub certificate: String,
}

fn unknown_uuid() -> String {
    UNKNOWN_UUID.to_string()
}

/// The `nvidia` additional evidence: `{"device_evidence_list": [...]}`.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct NvidiaEvidence {
    pub device_evidence_list: Vec<DeviceEvidence>,
}

/// What can be attested now: the GPUs, and the NVSwitches in protected-PCIe mode.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Attestable {
    pub gpus: Vec<DeviceInfo>,
    pub switches: Vec<SwitchInfo>,
}

impl Attestable {
    /// The submods the KBS token must name before the GPUs may be set ready.
    pub fn expected_submods(&self) -> Vec<String> {
        expected_submods(self.gpus.len(), self.switches.len())
    }
}

/// Reads the system CC state, every GPU's identity and, in protected-PCIe mode, every
/// NVSwitch's; refuses with the reason when they cannot be attested.
pub async fn check_attestable(
    backend: &Arc<dyn GpuBackend>,
    opts: CollectOptions,
) -> Result<Attestable, GpuError> {
    let t = opts.call_timeout;
    let system = call(backend, "nvmlSystemGetConfComputeState", t, |b| {
        b.system_cc()
    })
    .await?;
    let count = call(backend, "nvmlDeviceGetCount", t, |b| b.device_count()).await?;
    if count == 0 {
        return Err(GpuError::NoGpus);
    }
    let mut gpus = Vec::new();
    for index in 0..count {
        gpus.push(
            call(backend, "nvmlDeviceGetHandleByIndex", t, move |b| {
                b.device(index)
            })
            .await?,
        );
    }
    if !system.enabled {
        let d = &gpus[0];
        return Err(GpuError::CcOff {
            index: d.index,
            name: d.name.clone(),
            uuid: d.uuid.clone(),
        });
    }
    if system.devtools && !opts.allow_devtools {
        return Err(GpuError::DevTools);
    }
    for d in &gpus {
        if Arch::from_nvml(d.arch_code).is_none() {
            return Err(GpuError::UnknownArch {
                index: d.index,
                uuid: d.uuid.clone(),
                code: d.arch_code,
            });
        }
    }
    let switches = if system.protected_pcie {
        let switches = call(backend, "nscq_session_path_observe", t, |b| b.switches()).await?;
        if switches.is_empty() {
            return Err(GpuError::NoSwitches(
                "NSCQ (libnvidia-nscq.so.2) found none".to_string(),
            ));
        }
        for s in &switches {
            if Arch::from_nscq(s.arch_code).is_none() {
                return Err(GpuError::Switch {
                    uuid: s.uuid.clone(),
                    detail: format!("architecture {} is not LS10", s.arch_code),
                });
            }
            if !s.tnvl.attestable() {
                return Err(GpuError::Switch {
                    uuid: s.uuid.clone(),
                    detail: format!("not in protected-PCIe (TNVL) mode: {:?}", s.tnvl),
                });
            }
        }
        switches
    } else {
        Vec::new()
    };
    Ok(Attestable { gpus, switches })
}

/// Collects every GPU's evidence for `nonce` (the first 32 bytes of the device report data),
/// then every NVSwitch's in protected-PCIe mode.
pub async fn collect(
    backend: &Arc<dyn GpuBackend>,
    nonce: [u8; 32],
    opts: CollectOptions,
) -> Result<NvidiaEvidence, GpuError> {
    let t = opts.call_timeout;
    let Attestable { gpus, switches } = check_attestable(backend, opts).await?;
    let mut list = Vec::with_capacity(gpus.len().saturating_add(switches.len()));
    for d in gpus {
        let index = d.index;
        let report = call(
            backend,
            "nvmlDeviceGetConfComputeGpuAttestationReport",
            t,
            move |b| b.attestation_report(index, nonce),
        )
        .await?;
        if report.is_empty() || report.len() > MAX_REPORT {
            return Err(GpuError::ReportSize {
                index,
                size: u32::try_from(report.len()).unwrap_or(u32::MAX),
            });
        }
        let parsed = report::parse_report(&report).map_err(|e| GpuError::BadReport {
            index,
            uuid: d.uuid.clone(),
            detail: e.to_string(),
        })?;
        if parsed.request_nonce != nonce {
            return Err(GpuError::NonceNotEchoed {
                index,
                uuid: d.uuid.clone(),
            });
        }
        let chain = call(
            backend,
            "nvmlDeviceGetConfComputeGpuCertificate",
            t,
            move |b| b.certificate_chain(index),
        )
        .await?;
        check_chain(&chain).map_err(|detail| GpuError::BadChain {
            index,
            uuid: d.uuid.clone(),
            detail,
        })?;
        let arch = Arch::from_nvml(d.arch_code).ok_or(GpuError::UnknownArch {
            index,
            uuid: d.uuid.clone(),
            code: d.arch_code,
        })?;
        list.push(DeviceEvidence {
            arch,
            uuid: unknown_uuid(),
            evidence: STANDARD.encode(&report),
            certificate: STANDARD.encode(&chain),
        });
    }
    for s in switches {
        list.push(switch_evidence(backend, s, nonce, t).await?);
    }
    Ok(NvidiaEvidence {
        device_evidence_list: list,
    })
}

/// One NVSwitch's entry. The report is an SPDM GET_MEASUREMENTS request and response like a
/// GPU's, so the nonce is checked at the same place; its measurements are the verifier's (NRAS)
/// business.
async fn switch_evidence(
    backend: &Arc<dyn GpuBackend>,
    s: SwitchInfo,
    nonce: [u8; 32],
    t: Duration,
) -> Result<DeviceEvidence, GpuError> {
    let fail = |detail: String| GpuError::Switch {
        uuid: s.uuid.clone(),
        detail,
    };
    let arch = Arch::from_nscq(s.arch_code)
        .ok_or_else(|| fail(format!("architecture {} is not LS10", s.arch_code)))?;
    let uuid = s.uuid.clone();
    let report = call(backend, "nscq /config/attestation_report", t, move |b| {
        b.switch_report(&uuid, nonce)
    })
    .await?;
    if report.is_empty() || report.len() > MAX_SWITCH_REPORT {
        return Err(fail(format!(
            "attestation report size {} is not between 1 and {MAX_SWITCH_REPORT} bytes",
            report.len()
        )));
    }
    // ward's SPDM parser reads LS10 reports too (checked against NVIDIA's SDK sample, which is
    // not among the shared fixtures)
    let parsed = report::parse_report(&report)
        .map_err(|e| fail(format!("the attestation report is malformed: {e}")))?;
    if parsed.request_nonce != nonce {
        return Err(fail(
            "the report does not echo the nonce ward sent".to_string(),
        ));
    }
    let uuid = s.uuid.clone();
    let chain = call(backend, "nscq /config/certificate", t, move |b| {
        b.switch_certificate(&uuid)
    })
    .await?;
    check_chain(&chain).map_err(|e| fail(format!("certificate chain: {e}")))?;
    Ok(DeviceEvidence {
        arch,
        uuid: unknown_uuid(),
        evidence: STANDARD.encode(&report),
        certificate: STANDARD.encode(&chain),
    })
}

/// Sets the GPUs-ready state after the KBS accepted the composite evidence, but only when the
/// token appraised every device (`expected`, from [`Attestable::expected_submods`], all in
/// `token_submods`); reads it back. Returns why it was left off otherwise.
pub async fn set_ready_after_attestation(
    backend: &Arc<dyn GpuBackend>,
    expected: &[String],
    token_submods: &[String],
    timeout: Duration,
) -> Result<(), GpuError> {
    let missing: Vec<&str> = expected
        .iter()
        .filter(|g| !token_submods.contains(g))
        .map(String::as_str)
        .collect();
    if !missing.is_empty() {
        return Err(GpuError::ReadyState(format!(
            "left not ready: the KBS token does not appraise {}",
            missing.join(", ")
        )));
    }
    call(
        backend,
        "nvmlSystemSetConfComputeGpusReadyState",
        timeout,
        |b| b.set_ready_state(true),
    )
    .await?;
    let now = call(
        backend,
        "nvmlSystemGetConfComputeGpusReadyState",
        timeout,
        |b| b.ready_state(),
    )
    .await?;
    if !now {
        return Err(GpuError::ReadyState(
            "set to ready, but reads back as not ready".to_string(),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests;
