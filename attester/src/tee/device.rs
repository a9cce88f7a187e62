//! Device attesters: evidence from devices beside the CPU TEE (NVIDIA GPUs, and the
//! `sampledevice` development double), bound to the device report data of PROTOCOLS.md §1.3
//! and sent as `additional_evidence` = the JSON string of `{"<tee>": evidence}`.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use base64::Engine;

use super::{AttesterError, Tee};
use crate::nvidia::{self, CollectOptions, GpuBackend, GpuError};

/// Evidence from one class of devices.
#[async_trait]
pub trait DeviceAttester: Send + Sync {
    /// The name of the evidence in `additional_evidence` (`nvidia`, `sampledevice`).
    fn tee(&self) -> Tee;

    /// Evidence bound to `report_data` (the device report data; GPUs use its first 32 bytes).
    async fn evidence(&self, report_data: &[u8]) -> Result<serde_json::Value, AttesterError>;

    /// How many devices the evidence covers (Trustee appraises each as a submod: `gpu0`,
    /// `gpu1`, ..., `switch0`, ...).
    fn devices(&self) -> usize;
}

/// NVIDIA GPUs (and NVSwitches in protected-PCIe mode) through a [`GpuBackend`].
pub struct NvidiaAttester {
    backend: Arc<dyn GpuBackend>,
    opts: CollectOptions,
    count: usize,
    expected_submods: Vec<String>,
}

impl NvidiaAttester {
    /// Checks that the GPUs can be attested now (CC on, supported mode and architectures, and
    /// attestable NVSwitches in protected-PCIe mode).
    pub async fn new(
        backend: Arc<dyn GpuBackend>,
        opts: CollectOptions,
    ) -> Result<NvidiaAttester, GpuError> {
        let devices = nvidia::check_attestable(&backend, opts).await?;
        Ok(NvidiaAttester {
            backend,
            opts,
            count: devices.gpus.len().saturating_add(devices.switches.len()),
            expected_submods: devices.expected_submods(),
        })
    }

    /// The submods the KBS token must name before the GPUs may be set ready.
    pub fn expected_submods(&self) -> &[String] {
        &self.expected_submods
    }

    /// The backend, for setting the ready state after the KBS said yes.
    pub fn backend(&self) -> &Arc<dyn GpuBackend> {
        &self.backend
    }

    /// The per-call timeout.
    pub fn call_timeout(&self) -> Duration {
        self.opts.call_timeout
    }
}

#[async_trait]
impl DeviceAttester for NvidiaAttester {
    fn tee(&self) -> Tee {
        Tee::Nvidia
    }

    async fn evidence(&self, report_data: &[u8]) -> Result<serde_json::Value, AttesterError> {
        // The SPDM nonce is 32 bytes: the report data's first 32, zero-padded when shorter (a
        // GetAdditionalEvidence caller may pass fewer).
        let mut nonce = [0u8; 32];
        let n = report_data.len().min(32);
        nonce[..n].copy_from_slice(&report_data[..n]);
        let ev = nvidia::collect(&self.backend, nonce, self.opts)
            .await
            .map_err(|e| AttesterError::Malformed {
                tee: Tee::Nvidia,
                detail: e.to_string(),
            })?;
        serde_json::to_value(ev).map_err(|e| AttesterError::Malformed {
            tee: Tee::Nvidia,
            detail: e.to_string(),
        })
    }

    fn devices(&self) -> usize {
        self.count
    }
}

/// The `sampledevice` development double: `{"report_data": base64}`. Proves nothing; used only
/// when enabled, like the sample TEE.
#[derive(Debug, Default)]
pub struct SampleDeviceAttester;

#[async_trait]
impl DeviceAttester for SampleDeviceAttester {
    fn tee(&self) -> Tee {
        Tee::SampleDevice
    }

    async fn evidence(&self, report_data: &[u8]) -> Result<serde_json::Value, AttesterError> {
        // CoCo's sample device attester (guest-components `attester/src/sample_device`):
        // `{"svn": "2", "report_data": base64}`; Trustee's verifier requires `svn`.
        Ok(serde_json::json!({
            "svn": "2",
            "report_data": base64::engine::general_purpose::STANDARD.encode(report_data),
        }))
    }

    fn devices(&self) -> usize {
        1
    }
}
