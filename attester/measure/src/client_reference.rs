//! The reference values in the form ward's verifying client takes (`ward chat --reference`,
//! `ward proxy --reference`; the TOML of `docs/reference-values.md`), written from the values
//! computed for a build.
//!
//! Only what the build determines is pinned. A TEE section is written only when its
//! measurement covers the kernel, initrd and command line: an SNP digest from firmware without
//! the kernel-hashes table, or a TDX RTMR2 from a kernel whose EFI stub measures nothing,
//! would accept any initrd, so the section is left out and the file says why; the client then
//! refuses that TEE's evidence. What belongs to the platform and not the build is left for the
//! operator and named in comments: the SNP `min_tcb` (the client refuses until it is pinned)
//! and RTMR0 when its ACPI blobs were not given.

use std::fmt::Write as _;

use crate::reference::ReferenceValues;

fn list(values: &[&str]) -> String {
    let quoted: Vec<String> = values.iter().map(|v| format!("\"{v}\"")).collect();
    format!("[{}]", quoted.join(", "))
}

impl ReferenceValues {
    /// The verifier's TOML for these values.
    pub fn client_toml(&self) -> String {
        let mut t = String::new();
        let inputs: Vec<String> = self
            .inputs
            .iter()
            .map(|i| format!("{} {}", i.name, i.sha256))
            .collect();
        let _ = writeln!(
            t,
            "# ward's reference values for `ward chat --reference` / `ward proxy --reference`\n\
             # (docs/reference-values.md), computed by ward-measure from: {}.\n\
             # Command line: {:?}.\nversion = 1",
            inputs.join(", "),
            self.cmdline
        );
        let zero32 = "00".repeat(32);
        let zero48 = "00".repeat(48);
        let host_data = self
            .initdata
            .as_ref()
            .map_or(zero32.as_str(), |i| i.snp_host_data.as_str());
        let config_id = self
            .initdata
            .as_ref()
            .map_or(zero48.as_str(), |i| i.tdx_mr_config_id.as_str());
        match &self.snp {
            Some(snp) if snp.kernel_hashes => {
                let digests: Vec<&str> = snp
                    .measurements
                    .iter()
                    .map(|m| m.measurement.as_str())
                    .collect();
                let _ = writeln!(
                    t,
                    "\n[snp]\n# One per vCPU count and model computed.\nmeasurement = {}\n\
                     # The initdata digest (zero without initdata).\nhost_data = {}\n\
                     allow_smt = {}\nallow_migration_agent = {}\n\
                     # The platform's lowest accepted TCB is not the build's to say: the client\n\
                     # refuses SNP evidence until it is pinned here, e.g.\n\
                     # min_tcb = {{ bootloader = 3, tee = 0, snp = 8, microcode = 115 }}\n\
                     unpinned = []",
                    list(&digests),
                    list(&[host_data]),
                    snp.policy.smt_allowed,
                    snp.policy.migrate_ma_allowed,
                );
            }
            Some(_) => {
                let _ = writeln!(
                    t,
                    "\n# No [snp]: the firmware cannot measure the kernel, initrd and command line\n\
                     # (no kernel-hashes table), so its launch digest would accept any initrd. Build\n\
                     # with an AmdSev firmware (--firmware) to pin SNP guests."
                );
            }
            None => {}
        }
        match &self.tdx {
            Some(tdx) if tdx.rtmr2_measures_boot == Some(true) => {
                let one = |v: &Option<String>| v.as_deref().map(|v| list(&[v]));
                let _ = writeln!(t, "\n[tdx]\nmrtd = {}", list(&[tdx.mr_td.as_str()]));
                match one(&tdx.rtmr0) {
                    Some(v) => {
                        let _ = writeln!(t, "rtmr0 = {v}");
                    }
                    None => {
                        let _ = writeln!(
                            t,
                            "# RTMR0 covers QEMU's ACPI tables and the boot variables: compute it with\n\
                             # ward-measure tdx --acpi-tables ... (docs/measurements.md) and pin it here;\n\
                             # until then the client refuses TDX evidence (rtmr0 is not pinned)."
                        );
                    }
                }
                if let (Some(r1), Some(r2)) = (one(&tdx.rtmr1), one(&tdx.rtmr2)) {
                    let _ = writeln!(t, "rtmr1 = {r1}\nrtmr2 = {r2}");
                }
                let _ = writeln!(
                    t,
                    "# The initdata digest (zero without initdata).\nmrconfigid = {}\n\
                     # RTMR3 holds runtime events (wardd's, the images it pulls): not a build value.\n\
                     unpinned = [\"rtmr3\"]",
                    list(&[config_id])
                );
                if let Some(m) = tdx.memory {
                    let _ = writeln!(t, "# Computed for a TD of {m} bytes of memory.");
                }
            }
            Some(_) => {
                let _ = writeln!(
                    t,
                    "\n# No [tdx]: the kernel's EFI stub does not measure the initrd and command line\n\
                     # into RTMR2 (Linux before 6.8), so nothing would bind the initrd. Build with a\n\
                     # newer kernel (KERNEL_PACKAGE=linux-image-6.12-amd64) to pin TDX guests."
                );
            }
            None => {}
        }
        t
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reference::{
        FORMAT, InitDataValues, SnpMeasurement, SnpPolicy, SnpValues, TdxValues,
    };

    fn values(kernel_hashes: bool, rtmr2_measures_boot: bool) -> ReferenceValues {
        ReferenceValues {
            format: FORMAT.into(),
            cmdline: "console=hvc0".into(),
            inputs: Vec::new(),
            initdata: Some(InitDataValues {
                file: crate::reference::FileDigest {
                    name: "initdata".into(),
                    file: "initdata.toml".into(),
                    size: 1,
                    sha256: "00".repeat(32),
                    origin: None,
                },
                algorithm: "sha384".into(),
                digest: "11".repeat(48),
                snp_host_data: "22".repeat(32),
                tdx_mr_config_id: "33".repeat(48),
            }),
            snp: Some(SnpValues {
                kernel_hashes,
                policy: SnpPolicy::from_bits(0x30000),
                measurements: vec![SnpMeasurement {
                    vcpus: 1,
                    vcpu_type: "EPYC-v4".into(),
                    vcpu_sig: "0x800f12".into(),
                    guest_features: "0x1".into(),
                    measurement: "44".repeat(48),
                }],
            }),
            tdx: Some(TdxValues {
                page_order: "interleaved".into(),
                mr_td: "55".repeat(48),
                rtmr1: Some("66".repeat(48)),
                rtmr2: Some("77".repeat(48)),
                rtmr2_measures_boot: Some(rtmr2_measures_boot),
                memory: Some(2 << 30),
                ..Default::default()
            }),
        }
    }

    /// The file parses as the verifier's reference values and pins what was computed.
    #[test]
    fn the_client_file_parses_and_pins_the_computed_values() {
        let text = values(true, true).client_toml();
        let r = ward_verifier::reference::ReferenceValues::parse(&text).unwrap();
        let snp = r.snp.unwrap();
        assert_eq!(snp.measurement.unwrap()[0].0, [0x44; 48]);
        assert_eq!(snp.host_data.unwrap()[0].0, [0x22; 32]);
        assert!(snp.min_tcb.is_none() && snp.unpinned.is_empty());
        assert!(snp.allow_smt);
        let tdx = r.tdx.unwrap();
        assert_eq!(tdx.mrtd.unwrap()[0].0, [0x55; 48]);
        assert_eq!(tdx.rtmr2.unwrap()[0].0, [0x77; 48]);
        assert_eq!(tdx.mrconfigid.unwrap()[0].0, [0x33; 48]);
        assert!(tdx.rtmr0.is_none());
        assert!(text.contains("rtmr0 is not pinned"));
    }

    /// Measurements that do not cover the initrd are not written as if they did.
    #[test]
    fn sections_that_would_accept_any_initrd_are_left_out() {
        let text = values(false, false).client_toml();
        let r = ward_verifier::reference::ReferenceValues::parse(&text).unwrap();
        assert!(r.snp.is_none() && r.tdx.is_none());
        assert!(text.contains("No [snp]") && text.contains("No [tdx]"));
    }
}
