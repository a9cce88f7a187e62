//! `ward gpu`: what NVML says about each GPU's confidential-computing state, for a person.

use std::sync::Arc;

use ward_attester::nvidia::{self, CollectOptions, GpuBackend, GpuError, NvmlBackend};

/// Prints the system CC state, the driver, and every GPU; exits 1 when the GPUs cannot be
/// attested, saying why.
pub fn show() -> anyhow::Result<bool> {
    let backend = match NvmlBackend::init() {
        Ok(b) => b,
        Err(e) => {
            println!("NVML: {e}");
            return Ok(false);
        }
    };
    let line = |label: &str, value: String| println!("{label:<28} {value}");
    match backend.driver_version() {
        Ok(v) => line("driver", v),
        Err(e) => line("driver", format!("unknown ({e})")),
    }
    match backend.system_cc() {
        Ok(cc) => {
            line(
                "confidential computing",
                if cc.enabled { "on" } else { "off" }.into(),
            );
            line("environment", cc.environment.into());
            line(
                "developer tools mode",
                if cc.devtools { "on" } else { "off" }.into(),
            );
            line(
                "protected-PCIe multi-GPU",
                if cc.protected_pcie { "on" } else { "off" }.into(),
            );
            line("CPU CC capability", cc.cpu_caps.into());
            line(
                "GPUs CC-capable",
                if cc.gpus_capable { "yes" } else { "no" }.into(),
            );
        }
        Err(e) => line("confidential computing", format!("unknown ({e})")),
    }
    match backend.ready_state() {
        Ok(r) => line("GPUs ready for work", if r { "yes" } else { "no" }.into()),
        Err(e) => line("GPUs ready for work", format!("unknown ({e})")),
    }
    let count = backend.device_count().unwrap_or(0);
    for i in 0..count {
        match backend.device(i) {
            Ok(d) => {
                println!();
                line(&format!("GPU {i}"), d.name.clone());
                line("  UUID", d.uuid.clone());
                line(
                    "  architecture",
                    nvidia::arch_name(d.arch_code)
                        .map_or_else(|| format!("unsupported ({})", d.arch_code), str::to_string),
                );
                line("  VBIOS", d.vbios.clone());
                line(
                    "  memory",
                    format!(
                        "{:.1} GiB used of {:.1} GiB",
                        d.memory_used as f64 / (1u64 << 30) as f64,
                        d.memory_total as f64 / (1u64 << 30) as f64
                    ),
                );
            }
            Err(e) => line(&format!("GPU {i}"), format!("unreadable ({e})")),
        }
    }
    println!();
    let backend: Arc<dyn GpuBackend> = Arc::new(backend);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    match rt.block_on(nvidia::check_attestable(
        &backend,
        CollectOptions::default(),
    )) {
        Ok(devices) => {
            println!(
                "attestable: {} GPU(s), {} NVSwitch(es)",
                devices.gpus.len(),
                devices.switches.len()
            );
            Ok(true)
        }
        Err(e) => {
            println!("not attestable: {e}");
            Ok(false)
        }
    }
}

/// GPU evidence for `nonce`, for `ward evidence --with-gpus`.
pub async fn evidence(nonce: [u8; 32]) -> Result<serde_json::Value, GpuError> {
    let backend: Arc<dyn GpuBackend> = Arc::new(
        tokio::task::spawn_blocking(NvmlBackend::init)
            .await
            .map_err(|e| GpuError::ReadyState(e.to_string()))??,
    );
    let ev = nvidia::collect(&backend, nonce, CollectOptions::default()).await?;
    Ok(serde_json::json!({ "nvidia": ev }))
}
