//! NVIDIA confidential GPUs: device evidence through NVML, and the system-wide "GPUs ready"
//! switch that must stay off until the KBS has accepted the evidence.
//!
//! Collection reads the CC state first and refuses, with the reason, when CC is off, in
//! developer-tools mode (unless allowed) or in protected-PCIe multi-GPU mode (not supported yet).
//! Each GPU's report must echo the nonce ward asked for, have a sane size, and come with a
//! certificate chain that parses. Every NVML call runs off the async runtime with a timeout;
//! errors carry the GPU index, UUID where known, and the NVML code. This module never sets the
//! ready state during collection: [`set_ready_after_attestation`] does, after the KBS said yes.

mod backend;
mod nvml;
pub mod report;
#[cfg(any(test, feature = "test-util"))]
mod scripted;

use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;

pub use backend::{DeviceInfo, GpuBackend, SystemCc};
pub use nvml::NvmlBackend;
#[cfg(any(test, feature = "test-util"))]
pub use scripted::{Script, ScriptedGpus};

/// Largest report NVML can return (its buffer).
pub const MAX_REPORT: usize = 8192;
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
    #[error("protected-PCIe multi-GPU mode is not supported yet")]
    ProtectedPcie,
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

/// What the verifier's architecture string is for an NVML architecture number.
pub fn arch_name(code: u32) -> Option<&'static str> {
    match code {
        9 => Some("HOPPER"),
        10 => Some("BLACKWELL"),
        _ => None,
    }
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

/// One GPU's entry in `device_evidence_list`.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct DeviceEvidence {
    pub arch: String,
    pub uuid: String,
    /// base64 of the SPDM report.
    pub evidence: String,
    /// base64 of the PEM certificate chain.
    pub certificate: String,
}

/// The `nvidia` additional evidence: `{"device_evidence_list": [...]}`.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct NvidiaEvidence {
    pub device_evidence_list: Vec<DeviceEvidence>,
}

/// Reads the system CC state and every GPU's identity; refuses with the reason when the GPUs
/// cannot be attested.
pub async fn check_attestable(
    backend: &Arc<dyn GpuBackend>,
    opts: CollectOptions,
) -> Result<Vec<DeviceInfo>, GpuError> {
    let t = opts.call_timeout;
    let system = call(backend, "nvmlSystemGetConfComputeState", t, |b| {
        b.system_cc()
    })
    .await?;
    let count = call(backend, "nvmlDeviceGetCount", t, |b| b.device_count()).await?;
    if count == 0 {
        return Err(GpuError::NoGpus);
    }
    let mut devices = Vec::new();
    for index in 0..count {
        devices.push(
            call(backend, "nvmlDeviceGetHandleByIndex", t, move |b| {
                b.device(index)
            })
            .await?,
        );
    }
    if !system.enabled {
        let d = &devices[0];
        return Err(GpuError::CcOff {
            index: d.index,
            name: d.name.clone(),
            uuid: d.uuid.clone(),
        });
    }
    if system.protected_pcie {
        return Err(GpuError::ProtectedPcie);
    }
    if system.devtools && !opts.allow_devtools {
        return Err(GpuError::DevTools);
    }
    for d in &devices {
        if arch_name(d.arch_code).is_none() {
            return Err(GpuError::UnknownArch {
                index: d.index,
                uuid: d.uuid.clone(),
                code: d.arch_code,
            });
        }
    }
    Ok(devices)
}

/// Collects every GPU's evidence for `nonce` (the first 32 bytes of the device report data).
pub async fn collect(
    backend: &Arc<dyn GpuBackend>,
    nonce: [u8; 32],
    opts: CollectOptions,
) -> Result<NvidiaEvidence, GpuError> {
    let t = opts.call_timeout;
    let devices = check_attestable(backend, opts).await?;
    let mut list = Vec::with_capacity(devices.len());
    for d in devices {
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
        list.push(DeviceEvidence {
            arch: arch_name(d.arch_code).unwrap_or("UNKNOWN").to_string(),
            uuid: d.uuid,
            evidence: STANDARD.encode(&report),
            certificate: STANDARD.encode(&chain),
        });
    }
    Ok(NvidiaEvidence {
        device_evidence_list: list,
    })
}

/// Sets the GPUs-ready state after the KBS accepted the composite evidence, but only when the
/// token appraised every GPU (`gpu0` .. `gpuN-1` in `submods`); reads it back. Returns why it was
/// left off otherwise.
pub async fn set_ready_after_attestation(
    backend: &Arc<dyn GpuBackend>,
    gpus: usize,
    token_submods: &[String],
    timeout: Duration,
) -> Result<(), GpuError> {
    let missing: Vec<String> = (0..gpus)
        .map(|i| format!("gpu{i}"))
        .filter(|g| !token_submods.contains(g))
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
