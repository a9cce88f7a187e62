//! What ward needs from a GPU driver, as a small trait: the real NVML backend implements it,
//! and tests drive every path through the scripted one.

use super::GpuError;

/// System-wide confidential-computing settings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SystemCc {
    /// CC feature on.
    pub enabled: bool,
    /// Developer tools mode (debuggable, not for production secrets).
    pub devtools: bool,
    /// Protected-PCIe multi-GPU mode.
    pub protected_pcie: bool,
    /// `"prod"`, `"sim"` or `"unavailable"`.
    pub environment: &'static str,
    /// CPU CC capability as NVML names it (`none`, `amd-sev`, `intel-tdx`, `amd-sev-snp`, ...).
    pub cpu_caps: &'static str,
    /// Whether the GPUs are CC-capable.
    pub gpus_capable: bool,
}

/// One GPU's identity.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeviceInfo {
    pub index: u32,
    pub name: String,
    pub uuid: String,
    /// NVML architecture number (Hopper 9, Blackwell 10).
    pub arch_code: u32,
    pub vbios: String,
    pub memory_total: u64,
    pub memory_used: u64,
}

/// An NVSwitch's protected-PCIe (TNVL) mode, as NSCQ reports it (`/config/pcie_mode`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TnvlMode {
    Unknown,
    Disabled,
    Enabled,
    Failure,
    Locked,
}

impl TnvlMode {
    /// NSCQ's `nscq_tnvl_status_t`.
    pub fn from_nscq(code: i8) -> TnvlMode {
        match code {
            0 => TnvlMode::Disabled,
            1 => TnvlMode::Enabled,
            2 => TnvlMode::Failure,
            3 => TnvlMode::Locked,
            _ => TnvlMode::Unknown,
        }
    }

    /// Whether a switch in this mode is part of a protected-PCIe system that can be attested.
    pub fn attestable(self) -> bool {
        matches!(self, TnvlMode::Enabled | TnvlMode::Locked)
    }
}

/// One NVSwitch's identity.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SwitchInfo {
    /// NSCQ's label for the switch (its UUID as text), the key of its NSCQ paths.
    pub uuid: String,
    /// NSCQ architecture number (SV10 0, LR10 1, LS10 2).
    pub arch_code: i8,
    pub tnvl: TnvlMode,
}

/// A GPU driver interface. Calls block; callers run them off the async runtime.
pub trait GpuBackend: Send + Sync {
    fn system_cc(&self) -> Result<SystemCc, GpuError>;
    fn driver_version(&self) -> Result<String, GpuError>;
    fn device_count(&self) -> Result<u32, GpuError>;
    fn device(&self, index: u32) -> Result<DeviceInfo, GpuError>;
    /// The SPDM attestation report for `nonce` (request followed by response).
    fn attestation_report(&self, index: u32, nonce: [u8; 32]) -> Result<Vec<u8>, GpuError>;
    /// The attestation certificate chain, PEM.
    fn certificate_chain(&self, index: u32) -> Result<Vec<u8>, GpuError>;
    /// The system-wide "GPUs ready for work" state.
    fn ready_state(&self) -> Result<bool, GpuError>;
    fn set_ready_state(&self, ready: bool) -> Result<(), GpuError>;

    /// The NVSwitches (protected-PCIe systems), through NSCQ. None by default: a backend without
    /// switch support, or a machine without NSCQ, has none.
    fn switches(&self) -> Result<Vec<SwitchInfo>, GpuError> {
        Ok(Vec::new())
    }

    /// A switch's SPDM attestation report for `nonce` (request followed by response).
    fn switch_report(&self, uuid: &str, _nonce: [u8; 32]) -> Result<Vec<u8>, GpuError> {
        Err(GpuError::Switch {
            uuid: uuid.to_string(),
            detail: "this backend has no NVSwitch support".to_string(),
        })
    }

    /// A switch's attestation certificate chain, PEM.
    fn switch_certificate(&self, uuid: &str) -> Result<Vec<u8>, GpuError> {
        Err(GpuError::Switch {
            uuid: uuid.to_string(),
            detail: "this backend has no NVSwitch support".to_string(),
        })
    }
}
