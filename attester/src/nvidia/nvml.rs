//! The NVML backend: `libnvidia-ml.so.1` loaded at run time (so ward builds and runs where there
//! is no driver), through `nvml-wrapper` where it is right and the raw symbols where it is not:
//! its CC capability call fails on SEV-SNP CPU capabilities (3, 4), and its report and
//! certificate calls slice with sizes from the driver without checking them (PROTOCOLS.md §3).

use nvml_wrapper::Nvml;
use nvml_wrapper::error::NvmlError;
use nvml_wrapper_sys::bindings as sys;

use std::sync::OnceLock;

use super::GpuError;
use super::backend::{DeviceInfo, GpuBackend, SwitchInfo, SystemCc};
use super::nscq::NscqSwitches;

/// The NVML library, initialised; and NSCQ for the NVSwitches, opened the first time they are
/// asked for (only in protected-PCIe mode).
pub struct NvmlBackend {
    nvml: Nvml,
    nscq: OnceLock<Result<NscqSwitches, GpuError>>,
}

fn nvml_err(call: &'static str, index: Option<u32>, e: NvmlError) -> GpuError {
    match e {
        NvmlError::LibloadingError(e) => GpuError::LibraryMissing(e.to_string()),
        NvmlError::FailedToLoadSymbol(s) => GpuError::SymbolMissing(s),
        NvmlError::DriverNotLoaded => GpuError::DriverNotLoaded,
        other => GpuError::Nvml {
            call,
            index,
            code: nvml_code(&other),
            detail: other.to_string(),
        },
    }
}

fn nvml_code(e: &NvmlError) -> u32 {
    match e {
        NvmlError::UnexpectedVariant(c) => *c,
        NvmlError::Unknown => 999,
        NvmlError::NotSupported => 3,
        NvmlError::InvalidArg => 2,
        NvmlError::Uninitialized => 1,
        NvmlError::NoPermission => 4,
        NvmlError::GpuLost => 15,
        _ => 0,
    }
}

/// Maps a raw NVML return code.
fn check(call: &'static str, index: Option<u32>, rc: sys::nvmlReturn_t) -> Result<(), GpuError> {
    if rc == sys::nvmlReturn_enum_NVML_SUCCESS {
        return Ok(());
    }
    Err(match rc {
        sys::nvmlReturn_enum_NVML_ERROR_DRIVER_NOT_LOADED => GpuError::DriverNotLoaded,
        code => GpuError::Nvml {
            call,
            index,
            code,
            detail: NvmlError::from(code).to_string(),
        },
    })
}

fn symbol<T: Copy>(name: &str, s: &Result<T, libloading::Error>) -> Result<T, GpuError> {
    s.as_ref()
        .map(|f| *f)
        .map_err(|e| GpuError::SymbolMissing(format!("{name}: {e}")))
}

impl NvmlBackend {
    /// Loads and initialises NVML.
    pub fn init() -> Result<NvmlBackend, GpuError> {
        let nvml = Nvml::init().map_err(|e| nvml_err("nvmlInit", None, e))?;
        Ok(NvmlBackend {
            nvml,
            nscq: OnceLock::new(),
        })
    }

    fn nscq(&self) -> Result<&NscqSwitches, GpuError> {
        self.nscq
            .get_or_init(NscqSwitches::open)
            .as_ref()
            .map_err(|e| GpuError::NoSwitches(format!("NSCQ: {e}")))
    }

    fn handle(&self, index: u32) -> Result<sys::nvmlDevice_t, GpuError> {
        let device = self
            .nvml
            .device_by_index(index)
            .map_err(|e| nvml_err("nvmlDeviceGetHandleByIndex", Some(index), e))?;
        // SAFETY: the handle stays valid while `self.nvml` is alive; we use it only for calls
        // made through the same library while `self` is borrowed.
        Ok(unsafe { device.handle() })
    }
}

impl GpuBackend for NvmlBackend {
    fn system_cc(&self) -> Result<SystemCc, GpuError> {
        let lib = self.nvml.lib();
        let get_state = symbol(
            "nvmlSystemGetConfComputeState",
            &lib.nvmlSystemGetConfComputeState,
        )?;
        let get_settings = symbol(
            "nvmlSystemGetConfComputeSettings",
            &lib.nvmlSystemGetConfComputeSettings,
        )?;
        let get_caps = symbol(
            "nvmlSystemGetConfComputeCapabilities",
            &lib.nvmlSystemGetConfComputeCapabilities,
        )?;
        let mut state = sys::nvmlConfComputeSystemState_t {
            environment: 0,
            ccFeature: 0,
            devToolsMode: 0,
        };
        // SAFETY: `state` is a valid, writable struct of the type the symbol expects.
        let rc = unsafe { get_state(&mut state) };
        check("nvmlSystemGetConfComputeState", None, rc)?;
        let mut settings = sys::nvmlSystemConfComputeSettings_v1_t {
            // NVML_STRUCT_VERSION(SystemConfComputeSettings, 1): size | version << 24.
            version: u32::try_from(std::mem::size_of::<sys::nvmlSystemConfComputeSettings_v1_t>())
                .unwrap_or(0)
                | (1 << 24),
            environment: 0,
            ccFeature: 0,
            devToolsMode: 0,
            multiGpuMode: 0,
        };
        // SAFETY: as above; `version` tells the library the struct layout we pass.
        let rc = unsafe { get_settings(&mut settings) };
        check("nvmlSystemGetConfComputeSettings", None, rc)?;
        let mut caps = sys::nvmlConfComputeSystemCaps_t {
            cpuCaps: 0,
            gpusCaps: 0,
        };
        // SAFETY: as above.
        let rc = unsafe { get_caps(&mut caps) };
        check("nvmlSystemGetConfComputeCapabilities", None, rc)?;
        Ok(SystemCc {
            enabled: state.ccFeature == sys::NVML_CC_SYSTEM_FEATURE_ENABLED,
            devtools: state.devToolsMode == sys::NVML_CC_SYSTEM_DEVTOOLS_MODE_ON,
            protected_pcie: settings.multiGpuMode == sys::NVML_CC_SYSTEM_MULTIGPU_PROTECTED_PCIE,
            environment: match state.environment {
                sys::NVML_CC_SYSTEM_ENVIRONMENT_PROD => "prod",
                sys::NVML_CC_SYSTEM_ENVIRONMENT_SIM => "sim",
                _ => "unavailable",
            },
            cpu_caps: match caps.cpuCaps {
                sys::NVML_CC_SYSTEM_CPU_CAPS_NONE => "none",
                sys::NVML_CC_SYSTEM_CPU_CAPS_AMD_SEV => "amd-sev",
                sys::NVML_CC_SYSTEM_CPU_CAPS_INTEL_TDX => "intel-tdx",
                sys::NVML_CC_SYSTEM_CPU_CAPS_AMD_SEV_SNP => "amd-sev-snp",
                sys::NVML_CC_SYSTEM_CPU_CAPS_AMD_SNP_VTOM => "amd-snp-vtom",
                _ => "unknown",
            },
            gpus_capable: caps.gpusCaps == sys::NVML_CC_SYSTEM_GPUS_CC_CAPABLE,
        })
    }

    fn driver_version(&self) -> Result<String, GpuError> {
        self.nvml
            .sys_driver_version()
            .map_err(|e| nvml_err("nvmlSystemGetDriverVersion", None, e))
    }

    fn device_count(&self) -> Result<u32, GpuError> {
        self.nvml
            .device_count()
            .map_err(|e| nvml_err("nvmlDeviceGetCount", None, e))
    }

    fn device(&self, index: u32) -> Result<DeviceInfo, GpuError> {
        let d = self
            .nvml
            .device_by_index(index)
            .map_err(|e| nvml_err("nvmlDeviceGetHandleByIndex", Some(index), e))?;
        let e = |call| move |err| nvml_err(call, Some(index), err);
        let lib = self.nvml.lib();
        let get_arch = symbol("nvmlDeviceGetArchitecture", &lib.nvmlDeviceGetArchitecture)?;
        let mut arch: sys::nvmlDeviceArchitecture_t = 0;
        // SAFETY: a valid device handle and a writable u32, as the symbol expects. The raw call
        // keeps architectures the wrapper does not know (it would fail with UnexpectedVariant).
        let rc = unsafe { get_arch(d.handle(), &mut arch) };
        check("nvmlDeviceGetArchitecture", Some(index), rc)?;
        let memory = d.memory_info().map_err(e("nvmlDeviceGetMemoryInfo"))?;
        Ok(DeviceInfo {
            index,
            name: d.name().map_err(e("nvmlDeviceGetName"))?,
            uuid: d.uuid().map_err(e("nvmlDeviceGetUUID"))?,
            arch_code: arch,
            vbios: d.vbios_version().map_err(e("nvmlDeviceGetVbiosVersion"))?,
            memory_total: memory.total,
            memory_used: memory.used,
        })
    }

    fn attestation_report(&self, index: u32, nonce: [u8; 32]) -> Result<Vec<u8>, GpuError> {
        let handle = self.handle(index)?;
        let lib = self.nvml.lib();
        let get = symbol(
            "nvmlDeviceGetConfComputeGpuAttestationReport",
            &lib.nvmlDeviceGetConfComputeGpuAttestationReport,
        )?;
        let mut report = Box::new(sys::nvmlConfComputeGpuAttestationReport_t {
            isCecAttestationReportPresent: 0,
            attestationReportSize: 0,
            cecAttestationReportSize: 0,
            nonce,
            attestationReport: [0; 8192],
            cecAttestationReport: [0; 4096],
        });
        // SAFETY: a valid device handle and a writable report struct of the expected layout.
        let rc = unsafe { get(handle, report.as_mut()) };
        check(
            "nvmlDeviceGetConfComputeGpuAttestationReport",
            Some(index),
            rc,
        )?;
        let size = usize::try_from(report.attestationReportSize).unwrap_or(usize::MAX);
        report
            .attestationReport
            .get(..size)
            .filter(|r| !r.is_empty())
            .map(<[u8]>::to_vec)
            .ok_or(GpuError::ReportSize {
                index,
                size: report.attestationReportSize,
            })
    }

    fn certificate_chain(&self, index: u32) -> Result<Vec<u8>, GpuError> {
        let handle = self.handle(index)?;
        let lib = self.nvml.lib();
        let get = symbol(
            "nvmlDeviceGetConfComputeGpuCertificate",
            &lib.nvmlDeviceGetConfComputeGpuCertificate,
        )?;
        let mut cert = Box::new(sys::nvmlConfComputeGpuCertificate_t {
            certChainSize: 0,
            attestationCertChainSize: 0,
            certChain: [0; 4096],
            attestationCertChain: [0; 5120],
        });
        // SAFETY: a valid device handle and a writable certificate struct of the expected layout.
        let rc = unsafe { get(handle, cert.as_mut()) };
        check("nvmlDeviceGetConfComputeGpuCertificate", Some(index), rc)?;
        let size = usize::try_from(cert.attestationCertChainSize).unwrap_or(usize::MAX);
        cert.attestationCertChain
            .get(..size)
            .filter(|c| !c.is_empty())
            .map(<[u8]>::to_vec)
            .ok_or(GpuError::ChainSize {
                index,
                size: cert.attestationCertChainSize,
            })
    }

    fn ready_state(&self) -> Result<bool, GpuError> {
        let lib = self.nvml.lib();
        let get = symbol(
            "nvmlSystemGetConfComputeGpusReadyState",
            &lib.nvmlSystemGetConfComputeGpusReadyState,
        )?;
        let mut ready: u32 = 0;
        // SAFETY: a writable u32, as the symbol expects.
        let rc = unsafe { get(&mut ready) };
        check("nvmlSystemGetConfComputeGpusReadyState", None, rc)?;
        Ok(ready == sys::NVML_CC_ACCEPTING_CLIENT_REQUESTS_TRUE)
    }

    fn set_ready_state(&self, ready: bool) -> Result<(), GpuError> {
        let lib = self.nvml.lib();
        let set = symbol(
            "nvmlSystemSetConfComputeGpusReadyState",
            &lib.nvmlSystemSetConfComputeGpusReadyState,
        )?;
        let value = if ready {
            sys::NVML_CC_ACCEPTING_CLIENT_REQUESTS_TRUE
        } else {
            sys::NVML_CC_ACCEPTING_CLIENT_REQUESTS_FALSE
        };
        // SAFETY: a plain integer argument.
        let rc = unsafe { set(value) };
        check("nvmlSystemSetConfComputeGpusReadyState", None, rc)
    }

    fn switches(&self) -> Result<Vec<SwitchInfo>, GpuError> {
        self.nscq()?.switches()
    }

    fn switch_report(&self, uuid: &str, nonce: [u8; 32]) -> Result<Vec<u8>, GpuError> {
        self.nscq()?.report(uuid, nonce)
    }

    fn switch_certificate(&self, uuid: &str) -> Result<Vec<u8>, GpuError> {
        self.nscq()?.certificate(uuid)
    }
}
