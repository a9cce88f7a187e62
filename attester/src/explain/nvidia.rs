//! NVIDIA GPU evidence explained: the `nvidia` evidence JSON
//! `{"device_evidence_list":[{"arch","uuid","evidence": base64(report),"certificate": base64(PEM
//! chain)}]}` (as CoCo's attester writes it and Trustee's verifier reads it), and bare reports
//! (raw bytes or hex text). For each device: the report, the chain link by link, and whether
//! the report's signature verifies with the chain's leaf. Anchoring the chain to NVIDIA's root,
//! checking the nonce against a session and the measurements against NVIDIA's reference values
//! are a verifier's job, not this module's.

use std::fmt;

use base64::Engine;

use super::{ExplainError, field, json_invalid};
use crate::nvidia::report::{
    ChainLink, GpuReport, VerifyError, check_chain, parse_cert_chain_pem, parse_report,
};

/// The most devices accepted in one evidence document (an HGX board has 8 GPUs).
const MAX_DEVICES: usize = 64;

/// `nvidia` evidence as the explainer parsed and checked it: one entry per GPU. (The evidence
/// document itself, as wardd collects and sends it, is [`crate::nvidia::NvidiaEvidence`].)
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ParsedNvidiaEvidence {
    /// The devices, in document order.
    pub devices: Vec<NvidiaDevice>,
}

/// One GPU's report and certificate chain, checked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NvidiaDevice {
    /// `arch` as given (`HOPPER`, `BLACKWELL`, `LS10` for an NVSwitch).
    pub arch: String,
    /// `uuid` as given (`unknown` in NVAT-shaped evidence, `GPU-...` in older), `unknown` if absent.
    pub uuid: String,
    /// The attestation report.
    pub report: GpuReport,
    /// The certificate chain, leaf first, each certificate checked against the next.
    pub chain: Vec<ChainLink>,
    /// Whether the report's signature verifies with the leaf certificate's key.
    pub signature: Result<(), VerifyError>,
    /// Whether the leaf certificate's FWID equals the report's (`None`: one of them has none).
    pub fwid_matches: Option<bool>,
}

/// Whether `bytes` starts like an SPDM GET_MEASUREMENTS request (any SPDM version).
pub(crate) fn looks_like_gpu_report(bytes: &[u8]) -> bool {
    matches!(bytes, [0x10..=0x1f, 0xE0, ..])
}

/// A GPU report written as hex text (as the fixtures and Trustee's legacy evidence are):
/// `None` if `input` is not hex of something that starts like a GPU report.
pub(crate) fn hex_gpu_report(input: &[u8]) -> Option<Result<Vec<u8>, ExplainError>> {
    let text = input.trim_ascii();
    if !text.iter().all(u8::is_ascii_hexdigit) {
        return None;
    }
    let head = hex::decode(text.get(..4)?).ok()?;
    if !looks_like_gpu_report(&head) {
        return None;
    }
    Some(hex::decode(text).map_err(|e| json_invalid("hex GPU report", e.to_string())))
}

/// Parses `nvidia` evidence JSON (also inside `{"nvidia": ...}`) and checks each device's
/// report signature and chain.
pub fn parse_nvidia_evidence(v: &serde_json::Value) -> Result<ParsedNvidiaEvidence, ExplainError> {
    let v = v.get("nvidia").unwrap_or(v);
    let list = v
        .get("device_evidence_list")
        .and_then(|l| l.as_array())
        .ok_or_else(|| json_invalid("nvidia evidence", "`device_evidence_list` is not a list"))?;
    if list.len() > MAX_DEVICES {
        return Err(json_invalid(
            "nvidia evidence",
            format!("{} devices; at most {MAX_DEVICES}", list.len()),
        ));
    }
    let devices = list
        .iter()
        .map(parse_device)
        .collect::<Result<Vec<_>, _>>()?;
    Ok(ParsedNvidiaEvidence { devices })
}

fn string(v: &serde_json::Value, field: &'static str) -> Result<String, ExplainError> {
    v.get(field)
        .and_then(|s| s.as_str())
        .map(str::to_string)
        .ok_or_else(|| json_invalid("nvidia evidence", format!("`{field}` is not a string")))
}

fn parse_device(v: &serde_json::Value) -> Result<NvidiaDevice, ExplainError> {
    let b64 = base64::engine::general_purpose::STANDARD;
    let evidence = string(v, "evidence")?;
    // base64 as CoCo writes it; Trustee also still accepts hex, so do we
    let report = match hex::decode(&evidence) {
        Ok(bytes) => bytes,
        Err(_) => b64
            .decode(&evidence)
            .map_err(|source| ExplainError::Base64 {
                field: "evidence",
                source,
            })?,
    };
    let report = parse_report(&report)?;
    let pem = b64
        .decode(string(v, "certificate")?)
        .map_err(|source| ExplainError::Base64 {
            field: "certificate",
            source,
        })?;
    let chain = parse_cert_chain_pem(&String::from_utf8_lossy(&pem))?;
    let links = check_chain(&chain);
    let (signature, fwid_matches) = match chain.first() {
        Some(leaf) => (
            report.verify_signature(leaf.der()),
            leaf.fwid()
                .zip(report.opaque.fwid.as_ref())
                .map(|(a, b)| a == *b),
        ),
        None => (Err(VerifyError::Certificate("no leaf".into())), None),
    };
    Ok(NvidiaDevice {
        arch: string(v, "arch")?,
        // optional, as in Trustee: CoCo's NVAT evidence (and ward's) says "unknown"
        uuid: match v.get("uuid") {
            None => crate::nvidia::UNKNOWN_UUID.to_string(),
            Some(_) => string(v, "uuid")?,
        },
        report,
        chain: links,
        signature,
        fwid_matches,
    })
}

impl fmt::Display for ParsedNvidiaEvidence {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "nvidia evidence: {} device(s)", self.devices.len())?;
        for (i, d) in self.devices.iter().enumerate() {
            writeln!(f, "device {i}")?;
            field(f, "architecture", &d.arch)?;
            field(f, "uuid", &d.uuid)?;
            for (n, link) in d.chain.iter().enumerate() {
                field(
                    f,
                    &format!("certificate {n}"),
                    format!("{}: {}", link.subject, link.status),
                )?;
            }
            let chain_ok = d.chain.iter().all(|l| l.status.is_ok());
            field(
                f,
                "chain",
                if chain_ok {
                    "every link verifies (anchoring to NVIDIA's root is the verifier's job)"
                } else {
                    "BROKEN (see above)"
                },
            )?;
            field(
                f,
                "FWID (report vs leaf)",
                match d.fwid_matches {
                    Some(true) => "equal",
                    Some(false) => "DIFFERENT",
                    None => "not both present",
                },
            )?;
            match &d.signature {
                Ok(()) => field(f, "report signature", "verifies with the leaf certificate")?,
                Err(e) => field(f, "report signature", format!("BAD: {e}"))?,
            }
            write!(f, "{}", d.report)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::super::{Explanation, explain, explain_json};
    use super::*;

    pub(crate) fn fixture(name: &str) -> Vec<u8> {
        std::fs::read(format!(
            "{}/../../shared/fixtures/evidence/nvidia/{name}",
            env!("CARGO_MANIFEST_DIR")
        ))
        .unwrap()
    }

    pub(crate) fn evidence(report: &str, certs: &str, hex_evidence: bool) -> serde_json::Value {
        let b64 = base64::engine::general_purpose::STANDARD;
        let bytes = hex::decode(fixture(report).trim_ascii()).unwrap();
        let evidence = if hex_evidence {
            hex::encode(&bytes)
        } else {
            b64.encode(&bytes)
        };
        serde_json::json!({"device_evidence_list": [{
            "arch": "HOPPER",
            "uuid": "GPU-11111111-2222-3333-4444-555555555555",
            "evidence": evidence,
            "certificate": b64.encode(fixture(certs)),
        }]})
    }

    #[test]
    fn raw_and_hex_reports_are_recognised() {
        let hex_text = fixture("hopperAttestationReport.txt");
        let Explanation::GpuReport(from_hex) = explain(&hex_text).unwrap() else {
            panic!("hex not recognised")
        };
        let raw = hex::decode(hex_text.trim_ascii()).unwrap();
        let Explanation::GpuReport(from_raw) = explain(&raw).unwrap() else {
            panic!("raw not recognised")
        };
        assert_eq!(from_hex, from_raw);
        let mut with_newline = hex_text.clone();
        with_newline.extend(b"\n");
        assert!(matches!(
            explain(&with_newline),
            Ok(Explanation::GpuReport(_))
        ));
        // an odd number of hex digits is an error, not "unrecognised"
        assert!(matches!(
            explain(&hex_text[..hex_text.len() - 1]),
            Err(ExplainError::Invalid { .. })
        ));
    }

    #[test]
    fn nvat_entries_without_uuid_read_as_unknown_and_a_bad_uuid_is_refused() {
        let mut v = evidence(
            "hopperAttestationReport.txt",
            "hopper_cert_chain_case1.txt",
            false,
        );
        let entry = v["device_evidence_list"][0].as_object_mut().unwrap();
        entry.remove("uuid");
        let e = parse_nvidia_evidence(&v).unwrap();
        assert_eq!(e.devices[0].uuid, "unknown");
        assert_eq!(e.devices[0].signature, Ok(()));
        v["device_evidence_list"][0]["uuid"] = serde_json::json!(7);
        assert!(parse_nvidia_evidence(&v).is_err());
    }

    #[test]
    fn evidence_json_is_checked_device_by_device() {
        for (report, certs) in [
            ("hopperAttestationReport.txt", "hopper_cert_chain_case1.txt"),
            ("hopper_coco_report1.txt", "hopper_coco_certs1.txt"),
        ] {
            for hex_evidence in [false, true] {
                let v = evidence(report, certs, hex_evidence);
                for doc in [v.clone(), serde_json::json!({"nvidia": v})] {
                    let Explanation::Nvidia(e) = explain(doc.to_string().as_bytes()).unwrap()
                    else {
                        panic!("{report}: not nvidia evidence")
                    };
                    let d = &e.devices[0];
                    assert_eq!(d.signature, Ok(()), "{report}");
                    assert_eq!(d.fwid_matches, Some(true), "{report}");
                    assert!(d.chain.iter().all(|l| l.status.is_ok()), "{report}");
                    let text = e.to_string();
                    for want in [
                        "HOPPER",
                        "verifies with the leaf",
                        "equal",
                        "driver version",
                    ] {
                        assert!(text.contains(want), "{want} missing from\n{text}");
                    }
                }
            }
        }
    }

    #[test]
    fn the_wrong_chain_is_reported() {
        let v = evidence(
            "hopperAttestationReport.txt",
            "hopper_coco_certs1.txt",
            false,
        );
        let Explanation::Nvidia(e) = explain_json(&v).unwrap() else {
            panic!("not nvidia evidence")
        };
        let d = &e.devices[0];
        assert_eq!(d.signature, Err(VerifyError::Mismatch));
        assert_eq!(d.fwid_matches, Some(false));
        let text = e.to_string();
        assert!(
            text.contains("BAD:") && text.contains("DIFFERENT"),
            "{text}"
        );
    }

    #[test]
    fn malformed_evidence_json_is_an_error() {
        let good = evidence(
            "hopperAttestationReport.txt",
            "hopper_cert_chain_case1.txt",
            false,
        );
        let mut no_list = good.clone();
        no_list["device_evidence_list"] = serde_json::json!("x");
        assert!(explain_json(&no_list).is_err());
        for (field, value) in [
            ("evidence", "!!!"),
            ("certificate", "!!!"),
            ("certificate", "bm90IGEgY2VydA=="),
            ("evidence", "AAAA"),
        ] {
            let mut bad = good.clone();
            bad["device_evidence_list"][0][field] = serde_json::json!(value);
            assert!(explain_json(&bad).is_err(), "{field} = {value}");
        }
        let mut no_arch = good.clone();
        no_arch["device_evidence_list"][0]
            .as_object_mut()
            .unwrap()
            .remove("arch");
        assert!(explain_json(&no_arch).is_err());
    }
}
