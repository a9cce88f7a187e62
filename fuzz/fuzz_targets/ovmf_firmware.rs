//! Arbitrary bytes as a guest firmware image (OVMF's footer GUID table, its SEV and TDX
//! metadata) into `ward_measure`: `Firmware::parse` and its section readers, then the SNP
//! launch digest, the TDX MRTD and the RTMR0 events (TD HOB, CFV) computed from it, as `just
//! initrd` does for reference values.
//! The image comes from a build the operator trusts, but a wrong or truncated file must give a
//! typed error, never a panic or a digest of something else. Refusals are fine; panics are not.

#![no_main]

use libfuzzer_sys::fuzz_target;
use ward_measure::ovmf::Firmware;
use ward_measure::rtmr::{Platform, platform_events};
use ward_measure::snp::{KernelHashes, SnpLaunch, launch_digest};
use ward_measure::tdx::{PageOrder, mrtd};

fuzz_target!(|data: &[u8]| {
    // Images are whole pages and the footer table sits at the end: pad in front, so the
    // fuzzer's bytes are the footer.
    if data.len() > 64 << 10 {
        return;
    }
    let pages = data.len().div_ceil(4096).max(1);
    let mut image = vec![0u8; pages * 4096 - data.len()];
    image.extend_from_slice(data);
    if let Ok(fw) = Firmware::parse(&image) {
        let _ = fw.sev_es_reset_eip();
        let _ = fw.sev_hashes_table_gpa();
        let _ = fw.sev_sections();
        let _ = fw.tdx_sections();
    }
    // With and without a directly booted kernel; a few vCPUs (each adds a VMSA page).
    for kernel_hashes in [
        None,
        Some(KernelHashes::new([1; 32], [2; 32], "console=ttyS0")),
    ] {
        let launch = SnpLaunch {
            vcpus: u32::from(data.first().copied().unwrap_or(1) % 4),
            vcpu_sig: 0x00a0_0f11,
            guest_features: 1,
            kernel_hashes,
        };
        let _ = launch_digest(&image, &launch);
    }
    let _ = mrtd(&image, PageOrder::Interleaved);
    // Any memory size, in pages, from the last bytes: the TD HOB splits RAM around sections.
    let memory = data
        .iter()
        .rev()
        .take(4)
        .fold(0u64, |m, b| m << 8 | u64::from(*b))
        << 12;
    let options = [(1u16, &data[..data.len().min(8)])];
    let _ = platform_events(
        &image,
        memory,
        &Platform {
            acpi_tables: b"tables",
            acpi_rsdp: b"rsdp",
            table_loader: b"loader",
            boot_order: &[1, 0],
            boot_options: &options,
            cfv_sha384: None,
        },
    );
});
