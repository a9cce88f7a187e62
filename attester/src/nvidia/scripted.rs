//! A scripted GPU backend: a test double that behaves like NVML on a CC-capable machine and can
//! be told to fail any call the way real drivers do. Reports are built from a real report
//! template with the requested nonce written into the SPDM request, so the nonce checks are
//! exercised for real. NVSwitch reports reuse the same template: the shared fixtures hold no
//! LS10 report. Compiled only for tests (ward-attester's own, and other crates' through
//! the `test-util` feature), never into a production build.

use std::sync::Mutex;
use std::time::Duration;

use super::backend::{DeviceInfo, GpuBackend, SwitchInfo, SystemCc, TnvlMode};
use super::{GpuError, REQUEST_NONCE};

/// How the scripted backend should misbehave.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Script {
    pub system: Option<SystemCc>,
    pub gpus: u32,
    pub arch_code: u32,
    /// Fail `nvmlInit`-time checks: library, symbol or driver.
    pub init_error: Option<GpuError>,
    /// NVML error code returned by the report call (999 is what CC-off H100s answer).
    pub report_error: Option<u32>,
    /// Return a report of this many bytes instead.
    pub report_len: Option<usize>,
    /// Leave the requested nonce out of the report.
    pub ignore_nonce: bool,
    /// Return this instead of the chain.
    pub chain_override: Option<Vec<u8>>,
    /// Sleep this long in the report call.
    pub report_delay: Option<Duration>,
    pub set_ready_error: bool,
    /// The ready state reads back false even after being set.
    pub ready_stuck: bool,
    /// NVSwitches NSCQ reports (their reports follow the same template).
    pub switches: u32,
    /// Their NSCQ architecture number instead of LS10 (2).
    pub switch_arch: Option<i8>,
    /// Their TNVL mode instead of enabled.
    pub switch_tnvl: Option<TnvlMode>,
    /// Leave the requested nonce out of the switches' reports.
    pub switch_ignore_nonce: bool,
}

/// The scripted backend.
pub struct ScriptedGpus {
    script: Script,
    template: Vec<u8>,
    chain: Vec<u8>,
    ready: Mutex<bool>,
    set_calls: Mutex<u32>,
}

impl ScriptedGpus {
    /// A machine with `script.gpus` GPUs whose reports follow `template` and whose chain is
    /// `chain_pem`.
    pub fn new(script: Script, template: Vec<u8>, chain_pem: Vec<u8>) -> ScriptedGpus {
        ScriptedGpus {
            script,
            template,
            chain: chain_pem,
            ready: Mutex::new(false),
            set_calls: Mutex::new(0),
        }
    }

    /// A CC-on production system with the given CPU capability.
    pub fn cc_on() -> SystemCc {
        SystemCc {
            enabled: true,
            devtools: false,
            protected_pcie: false,
            environment: "prod",
            cpu_caps: "amd-sev-snp",
            gpus_capable: true,
        }
    }

    /// How many times the ready state was set.
    pub fn set_ready_calls(&self) -> u32 {
        *self.set_calls.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn init(&self) -> Result<(), GpuError> {
        match &self.script.init_error {
            Some(e) => Err(e.clone()),
            None => Ok(()),
        }
    }

    fn uuid(index: u32) -> String {
        format!("GPU-00000000-0000-0000-0000-00000000000{index}")
    }

    fn switch_uuid(index: u32) -> String {
        format!("SWX-00000000-0000-0000-0000-00000000000{index}")
    }

    fn report_for(&self, nonce: [u8; 32], ignore_nonce: bool) -> Vec<u8> {
        let mut report = self.template.clone();
        if !ignore_nonce && let Some(slot) = report.get_mut(REQUEST_NONCE) {
            slot.copy_from_slice(&nonce);
        }
        report
    }
}

impl GpuBackend for ScriptedGpus {
    fn system_cc(&self) -> Result<SystemCc, GpuError> {
        self.init()?;
        Ok(self
            .script
            .system
            .clone()
            .unwrap_or_else(ScriptedGpus::cc_on))
    }

    fn driver_version(&self) -> Result<String, GpuError> {
        self.init()?;
        Ok("550.90.07".to_string())
    }

    fn device_count(&self) -> Result<u32, GpuError> {
        self.init()?;
        Ok(self.script.gpus)
    }

    fn device(&self, index: u32) -> Result<DeviceInfo, GpuError> {
        Ok(DeviceInfo {
            index,
            name: "NVIDIA H100 80GB HBM3".to_string(),
            uuid: ScriptedGpus::uuid(index),
            arch_code: self.script.arch_code,
            vbios: "96.00.9F.00.01".to_string(),
            memory_total: 80 << 30,
            memory_used: 1 << 20,
        })
    }

    fn attestation_report(&self, index: u32, nonce: [u8; 32]) -> Result<Vec<u8>, GpuError> {
        if let Some(d) = self.script.report_delay {
            std::thread::sleep(d);
        }
        if let Some(code) = self.script.report_error {
            return Err(GpuError::Nvml {
                call: "nvmlDeviceGetConfComputeGpuAttestationReport",
                index: Some(index),
                code,
                detail: "scripted".to_string(),
            });
        }
        if let Some(len) = self.script.report_len {
            return Ok(vec![0; len]);
        }
        Ok(self.report_for(nonce, self.script.ignore_nonce))
    }

    fn certificate_chain(&self, _index: u32) -> Result<Vec<u8>, GpuError> {
        Ok(self
            .script
            .chain_override
            .clone()
            .unwrap_or_else(|| self.chain.clone()))
    }

    fn ready_state(&self) -> Result<bool, GpuError> {
        Ok(*self.ready.lock().unwrap_or_else(|p| p.into_inner()) && !self.script.ready_stuck)
    }

    fn set_ready_state(&self, ready: bool) -> Result<(), GpuError> {
        *self.set_calls.lock().unwrap_or_else(|p| p.into_inner()) += 1;
        if self.script.set_ready_error {
            return Err(GpuError::Nvml {
                call: "nvmlSystemSetConfComputeGpusReadyState",
                index: None,
                code: 4,
                detail: "scripted: no permission".to_string(),
            });
        }
        *self.ready.lock().unwrap_or_else(|p| p.into_inner()) = ready;
        Ok(())
    }

    fn switches(&self) -> Result<Vec<SwitchInfo>, GpuError> {
        self.init()?;
        Ok((0..self.script.switches)
            .map(|i| SwitchInfo {
                uuid: ScriptedGpus::switch_uuid(i),
                arch_code: self.script.switch_arch.unwrap_or(2),
                tnvl: self.script.switch_tnvl.unwrap_or(TnvlMode::Enabled),
            })
            .collect())
    }

    fn switch_report(&self, _uuid: &str, nonce: [u8; 32]) -> Result<Vec<u8>, GpuError> {
        Ok(self.report_for(nonce, self.script.switch_ignore_nonce))
    }

    fn switch_certificate(&self, _uuid: &str) -> Result<Vec<u8>, GpuError> {
        self.certificate_chain(0)
    }
}
