//! Reference values written from computed measurements, in two forms:
//! - ward's own file (`ward-reference-values/v1`, docs/measurements.md): the measurements,
//!   the SNP policy bits a verifier should require, the initdata the guest is launched with, and
//!   the digests of every input the measurements were computed from;
//! - a Trustee RVPS message (`version` "0.1.0", `type` "sample", `payload` the base64 of a JSON
//!   object of reference-value names to values) as Trustee 78962cd4 takes it on
//!   `POST /kbs/v0/reference-value` or `rvps-tool register` (rvps/src/lib.rs `Message`,
//!   rvps/src/extractors/sample/), with the names its default EAR policy queries
//!   (attestation-service/src/ear_token/ear_default_policy_cpu.rego).
//!
//! Owns the shape of both files; never computes a measurement itself.

use std::collections::BTreeMap;

use base64::Engine;
use serde::{Deserialize, Serialize};

/// The format tag of ward's file.
pub const FORMAT: &str = "ward-reference-values/v1";

/// A file this crate read or wrote, by name and digest.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct FileDigest {
    /// What it is (`firmware`, `kernel`, `initrd`, `initdata`).
    pub name: String,
    /// Its file name (no directory: the digest is what counts).
    pub file: String,
    pub size: u64,
    pub sha256: String,
    /// Where it came from (a Debian package and version), when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub origin: Option<String>,
}

/// The SNP guest policy (SNP ABI spec, "GUEST_POLICY"), as the verifier should require it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct SnpPolicy {
    /// The 64-bit value the guest is launched with (QEMU `sev-snp-guest,policy=`).
    pub value: String,
    pub abi_major: u8,
    pub abi_minor: u8,
    pub smt_allowed: bool,
    pub migrate_ma_allowed: bool,
    pub debug_allowed: bool,
    pub single_socket_required: bool,
}

impl SnpPolicy {
    pub fn from_bits(v: u64) -> Self {
        Self {
            value: format!("{v:#x}"),
            abi_minor: (v & 0xff) as u8,
            abi_major: ((v >> 8) & 0xff) as u8,
            smt_allowed: v & (1 << 16) != 0,
            migrate_ma_allowed: v & (1 << 18) != 0,
            debug_allowed: v & (1 << 19) != 0,
            single_socket_required: v & (1 << 20) != 0,
        }
    }
}

/// One SNP launch digest and what it was computed for.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct SnpMeasurement {
    pub vcpus: u32,
    pub vcpu_type: String,
    pub vcpu_sig: String,
    pub guest_features: String,
    /// The report's MEASUREMENT, lowercase hex (96 digits).
    pub measurement: String,
}

/// The SNP part of the file.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct SnpValues {
    /// Whether kernel, initrd and command line are measured (firmware with the hashes table).
    pub kernel_hashes: bool,
    pub policy: SnpPolicy,
    pub measurements: Vec<SnpMeasurement>,
}

/// The TDX part of the file.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct TdxValues {
    /// `interleaved` (KVM 6.16+/QEMU 10.1) or `add-then-extend` (older TDX trees).
    pub page_order: String,
    /// MRTD, lowercase hex (96 digits).
    pub mr_td: String,
    /// TD attributes: the verifier should refuse DEBUG.
    pub debug_allowed: bool,
    /// The TD's memory in bytes the RTMRs were computed for (RTMR1 depends on it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory: Option<u64>,
    /// RTMR0 (platform: TD HOB, CFV, ACPI tables, boot variables), when its blobs were given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rtmr0: Option<String>,
    /// RTMR1 (the kernel as QEMU patched it, the boot-services events).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rtmr1: Option<String>,
    /// RTMR2 (the command line and initrd the kernel's EFI stub measures; zero before 6.8).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rtmr2: Option<String>,
    /// Whether RTMR2 covers the command line and initrd (false: they are not measured).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rtmr2_measures_boot: Option<bool>,
    /// The kernel event's digest (Trustee's `tdvfkernel`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tdvfkernel: Option<String>,
    /// The load-options event's digest (Trustee's `tdvfkernelparams`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tdvfkernelparams: Option<String>,
}

/// The initdata the guest is launched with, and where its digest appears.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct InitDataValues {
    pub file: FileDigest,
    /// The document's own algorithm (`algorithm = ...` in it).
    pub algorithm: String,
    pub digest: String,
    /// SNP HOSTDATA: the digest fitted to 32 bytes.
    pub snp_host_data: String,
    /// TDX MRCONFIGID: the digest fitted to 48 bytes.
    pub tdx_mr_config_id: String,
}

/// ward's reference-values file.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ReferenceValues {
    pub format: String,
    /// The kernel command line measured (SNP kernel hashes), exactly, without the NUL.
    pub cmdline: String,
    pub inputs: Vec<FileDigest>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub initdata: Option<InitDataValues>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snp: Option<SnpValues>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tdx: Option<TdxValues>,
}

/// Trustee's RVPS `Message`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct RvpsMessage {
    pub version: String,
    #[serde(rename = "type")]
    pub kind: String,
    /// The base64 (standard, padded) of the sample provenance JSON.
    pub payload: String,
}

/// Why an SNP report does not match the reference values.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SnpMismatch {
    /// The file has no SNP part.
    #[error("the reference values have no SNP measurements")]
    NoSnp,
    /// The launch measurement is not one of those computed.
    #[error("MEASUREMENT {got} is not one of the {count} computed launch digests")]
    Measurement { got: String, count: usize },
    /// HOSTDATA is not the initdata digest the file names (zero when it names none).
    #[error("HOSTDATA {got} is not the expected {want}")]
    HostData { got: String, want: String },
    /// The policy lets the host debug the guest.
    #[error("the guest policy allows debugging")]
    Debug,
    /// The policy lets a migration agent in.
    #[error("the guest policy allows a migration agent")]
    MigrateMa,
    /// The policy differs from the one the guest should be launched with.
    #[error("guest policy {got} differs from the expected {want}")]
    Policy { got: String, want: String },
}

impl ReferenceValues {
    /// Checks an SNP report's launch fields against these values, as a client pinning them
    /// does: the measurement is one computed, HOSTDATA is the named initdata's digest (zero
    /// without one), the policy is the expected one and never allows debugging or a migration
    /// agent. Returns every mismatch (empty: it matches). The report's signature and TCB are
    /// the verifier's job, not this.
    pub fn check_snp(
        &self,
        measurement: &[u8; 48],
        host_data: &[u8; 32],
        policy: u64,
    ) -> Vec<SnpMismatch> {
        let Some(snp) = &self.snp else {
            return vec![SnpMismatch::NoSnp];
        };
        let mut out = Vec::new();
        let got = hex::encode(measurement);
        if !snp.measurements.iter().any(|m| m.measurement == got) {
            out.push(SnpMismatch::Measurement {
                got,
                count: snp.measurements.len(),
            });
        }
        let want = self
            .initdata
            .as_ref()
            .map_or_else(|| hex::encode([0u8; 32]), |i| i.snp_host_data.clone());
        let got = hex::encode(host_data);
        if got != want {
            out.push(SnpMismatch::HostData { got, want });
        }
        let p = SnpPolicy::from_bits(policy);
        if p.debug_allowed {
            out.push(SnpMismatch::Debug);
        }
        if p.migrate_ma_allowed {
            out.push(SnpMismatch::MigrateMa);
        }
        if p != snp.policy {
            out.push(SnpMismatch::Policy {
                got: p.value,
                want: snp.policy.value.clone(),
            });
        }
        out
    }

    /// The reference values by the names Trustee's default policy queries: the measurements
    /// as lists (matched with `in`), the policy fields as the values its `==` compares.
    pub fn trustee_values(&self) -> BTreeMap<&'static str, serde_json::Value> {
        let mut rv = BTreeMap::new();
        if let Some(snp) = &self.snp {
            let ms: Vec<&str> = snp
                .measurements
                .iter()
                .map(|m| m.measurement.as_str())
                .collect();
            rv.insert("snp_launch_measurement", serde_json::json!(ms));
            rv.insert(
                "snp_guest_abi_major",
                serde_json::json!(snp.policy.abi_major),
            );
            rv.insert(
                "snp_guest_abi_minor",
                serde_json::json!(snp.policy.abi_minor),
            );
            rv.insert("snp_smt_allowed", serde_json::json!(snp.policy.smt_allowed));
            rv.insert(
                "snp_single_socket",
                serde_json::json!(snp.policy.single_socket_required),
            );
        }
        if let Some(tdx) = &self.tdx {
            rv.insert("mr_td", serde_json::json!([tdx.mr_td]));
            for (name, v) in [
                ("rtmr_0", &tdx.rtmr0),
                ("rtmr_1", &tdx.rtmr1),
                ("rtmr_2", &tdx.rtmr2),
                ("tdvfkernel", &tdx.tdvfkernel),
                ("tdvfkernelparams", &tdx.tdvfkernelparams),
            ] {
                if let Some(v) = v {
                    rv.insert(name, serde_json::json!([v]));
                }
            }
        }
        rv
    }

    /// The RVPS message carrying [`Self::trustee_values`].
    pub fn rvps_message(&self) -> Result<RvpsMessage, serde_json::Error> {
        let provenance = serde_json::to_vec(&self.trustee_values())?;
        Ok(RvpsMessage {
            version: "0.1.0".into(),
            kind: "sample".into(),
            payload: base64::engine::general_purpose::STANDARD.encode(provenance),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A real report (the shared fixture, from SNP hardware) against reference values that hold
    /// its measurement, and against values that differ in each checked field.
    #[test]
    fn a_report_is_checked_field_by_field() {
        let bytes = std::fs::read(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../../shared/fixtures/evidence/snp/test-report.bin"
        ))
        .unwrap();
        let r = ward_attester::explain::parse_snp_report(&bytes)
            .unwrap()
            .report;
        let policy = u64::from(r.policy);
        let measured = |m: String, policy: u64, host_data: Option<[u8; 32]>| ReferenceValues {
            format: FORMAT.into(),
            cmdline: String::new(),
            inputs: vec![],
            initdata: host_data.map(|h| InitDataValues {
                file: FileDigest {
                    name: "initdata".into(),
                    file: "initdata.toml".into(),
                    size: 0,
                    sha256: String::new(),
                    origin: None,
                },
                algorithm: "sha256".into(),
                digest: hex::encode(h),
                snp_host_data: hex::encode(h),
                tdx_mr_config_id: String::new(),
            }),
            snp: Some(SnpValues {
                kernel_hashes: true,
                policy: SnpPolicy::from_bits(policy),
                measurements: vec![SnpMeasurement {
                    vcpus: 1,
                    vcpu_type: "EPYC-v4".into(),
                    vcpu_sig: "0x800f12".into(),
                    guest_features: "0x1".into(),
                    measurement: m,
                }],
            }),
            tdx: None,
        };
        let host = (r.host_data != [0; 32]).then_some(r.host_data);
        let good = measured(hex::encode(r.measurement), policy, host);
        let found = good.check_snp(&r.measurement, &r.host_data, policy);
        assert!(
            found
                .iter()
                .all(|m| matches!(m, SnpMismatch::Debug | SnpMismatch::MigrateMa)),
            "{found:?}"
        );
        let wrong = measured("00".repeat(48), policy, host);
        assert!(matches!(
            wrong.check_snp(&r.measurement, &r.host_data, policy)[0],
            SnpMismatch::Measurement { count: 1, .. }
        ));
        let other_initdata = measured(hex::encode(r.measurement), policy, Some([7; 32]));
        assert!(
            other_initdata
                .check_snp(&r.measurement, &r.host_data, policy)
                .iter()
                .any(|m| matches!(m, SnpMismatch::HostData { .. }))
        );
        let debug = policy | 1 << 19;
        assert!(
            good.check_snp(&r.measurement, &r.host_data, debug)
                .contains(&SnpMismatch::Debug)
        );
        assert!(
            good.check_snp(&r.measurement, &r.host_data, debug)
                .iter()
                .any(|m| matches!(m, SnpMismatch::Policy { .. }))
        );
    }

    #[test]
    fn policy_bits_are_the_abi_specs() {
        // Kata's default SNP policy: SMT allowed, reserved bit 17 set, ABI 0.0.
        let p = SnpPolicy::from_bits(0x30000);
        assert!(p.smt_allowed && !p.debug_allowed && !p.migrate_ma_allowed);
        assert!(!p.single_socket_required);
        let p = SnpPolicy::from_bits(0x1b_0105);
        assert_eq!((p.abi_major, p.abi_minor), (1, 5));
        assert!(p.debug_allowed && p.single_socket_required && p.smt_allowed);
        assert!(!p.migrate_ma_allowed);
    }

    #[test]
    fn the_rvps_message_decodes_to_the_names_trustees_policy_queries() {
        let rv = ReferenceValues {
            format: FORMAT.into(),
            cmdline: "console=hvc0".into(),
            inputs: vec![],
            initdata: None,
            snp: Some(SnpValues {
                kernel_hashes: true,
                policy: SnpPolicy::from_bits(0x30000),
                measurements: vec![SnpMeasurement {
                    vcpus: 1,
                    vcpu_type: "EPYC-v4".into(),
                    vcpu_sig: "0x800f12".into(),
                    guest_features: "0x1".into(),
                    measurement: "ab".repeat(48),
                }],
            }),
            tdx: Some(TdxValues {
                page_order: "interleaved".into(),
                mr_td: "cd".repeat(48),
                debug_allowed: false,
                rtmr1: Some("01".repeat(48)),
                rtmr2: Some("02".repeat(48)),
                tdvfkernel: Some("03".repeat(48)),
                ..Default::default()
            }),
        };
        let msg = serde_json::to_value(rv.rvps_message().unwrap()).unwrap();
        assert_eq!(msg["version"], "0.1.0");
        assert_eq!(msg["type"], "sample");
        let payload = base64::engine::general_purpose::STANDARD
            .decode(msg["payload"].as_str().unwrap())
            .unwrap();
        let values: serde_json::Value = serde_json::from_slice(&payload).unwrap();
        assert_eq!(values["snp_launch_measurement"][0], "ab".repeat(48));
        assert_eq!(values["mr_td"][0], "cd".repeat(48));
        // The names Trustee's default policy (ear_default_policy_cpu.rego) looks up.
        assert_eq!(values["rtmr_1"][0], "01".repeat(48));
        assert_eq!(values["rtmr_2"][0], "02".repeat(48));
        assert_eq!(values["tdvfkernel"][0], "03".repeat(48));
        assert!(values.get("rtmr_0").is_none() && values.get("tdvfkernelparams").is_none());
        assert_eq!(values["snp_smt_allowed"], true);
        assert_eq!(values["snp_guest_abi_major"], 0);
        let back: ReferenceValues =
            serde_json::from_str(&serde_json::to_string(&rv).unwrap()).unwrap();
        assert_eq!(back, rv);
    }
}
