//! Reference values written from computed measurements, in two forms:
//! - ward's own file (`ward-reference-values/v1`, docs/reference-values.md): the measurements,
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
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct TdxValues {
    /// `interleaved` (KVM 6.16+/QEMU 10.1) or `add-then-extend` (older TDX trees).
    pub page_order: String,
    /// MRTD, lowercase hex (96 digits).
    pub mr_td: String,
    /// TD attributes: the verifier should refuse DEBUG.
    pub debug_allowed: bool,
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

impl ReferenceValues {
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
        assert_eq!(values["snp_smt_allowed"], true);
        assert_eq!(values["snp_guest_abi_major"], 0);
        let back: ReferenceValues =
            serde_json::from_str(&serde_json::to_string(&rv).unwrap()).unwrap();
        assert_eq!(back, rv);
    }
}
