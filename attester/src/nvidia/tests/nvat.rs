//! The NVAT evidence shape, byte for byte against CoCo's attester and read by Trustee's
//! verifier, through test doubles that follow their source exactly:
//! - CoCo guest-components 8246e5e0, `attestation-agent/attester/src/nvidia/nvat.rs`: NVIDIA's
//!   SDK hands `[{"arch","certificate","evidence","nonce"}]` per source (GPUs from NVML, then
//!   switches from NSCQ; `to_json` in nv-attestation-sdk-cpp `src/{gpu,switch}/evidence.cpp`,
//!   tag 2026.06.09), read into `NvDeviceReportAndCert` (uuid defaulting to "unknown", nonce
//!   dropped) and written back as `{"device_evidence_list": [...]}` with upper-case `arch`.
//! - Trustee 78962cd4, `deps/verifier/src/nvidia/mod.rs`: `NvDeviceEvidence`, its
//!   `Architecture` (aliases, no rename), `regularize_data` to 32 bytes, and the decoding and
//!   checks of `evaluate_device_locally` (Hopper only; evidence hex or base64; certificate
//!   base64; report signature by the leaf, chain, FWID, nonce), the last through ward's own
//!   report parser (`explain::parse_nvidia_evidence`), which checks the same things except
//!   anchoring the chain to NVIDIA's root.
//!
//! The reports are the real H100 fixture, unchanged when the nonce asked for is the fixture's
//! own, so its signature still verifies. The NVSwitch entries reuse it: there is no LS10 report
//! among the shared fixtures. What cannot run here: NRAS (which appraises LS10 entries) and so
//! Trustee's `validate_ppcie`, which reads NRAS claims (switch and GPU PDIs).

use std::sync::Arc;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use serde::{Deserialize, Serialize};

use super::super::*;
use super::{backend, report_template, script};
use crate::tee::{DeviceAttester, NvidiaAttester};

/// The fixture report's own nonce (README of ../shared/fixtures/evidence).
const FIXTURE_NONCE: &str = "931d8dd0add203ac3d8b4fbde75e115278eefcdceac5b87671a748f32364dfcb";

fn fixture_nonce() -> [u8; 32] {
    hex::decode(FIXTURE_NONCE).unwrap().try_into().unwrap()
}

fn chain_pem() -> Vec<u8> {
    super::fixture("hopper_cert_chain_case1.txt")
}

fn ppcie(switches: u32) -> Script {
    Script {
        gpus: 8,
        switches,
        system: Some(SystemCc {
            protected_pcie: true,
            ..ScriptedGpus::cc_on()
        }),
        ..script()
    }
}

// --- CoCo's nvat.rs, reproduced ---

#[derive(Deserialize, Serialize)]
#[serde(rename_all(serialize = "UPPERCASE"))]
enum CocoArchitecture {
    #[serde(alias = "BLACKWELL")]
    Blackwell,
    #[serde(alias = "HOPPER")]
    Hopper,
    LS10,
}

fn default_uuid() -> String {
    "unknown".to_string()
}

#[derive(Deserialize, Serialize)]
struct CocoReportAndCert {
    arch: CocoArchitecture,
    #[serde(default = "default_uuid")]
    uuid: String,
    evidence: String,
    certificate: String,
}

#[derive(Serialize)]
struct CocoEvidence {
    device_evidence_list: Vec<CocoReportAndCert>,
}

/// What the SDK's `to_json` writes for one device.
fn sdk_json(arch: &str, report: &[u8], chain: &[u8], nonce: &[u8]) -> serde_json::Value {
    serde_json::json!({
        "arch": arch,
        "certificate": STANDARD.encode(chain),
        "evidence": STANDARD.encode(report),
        "nonce": hex::encode(nonce),
    })
}

/// CoCo's `get_evidence` for `gpus` Hopper GPUs and `switches` LS10 switches whose reports are
/// `report`: GPU evidence extended by switch evidence, as the `serde_json::Value` it returns.
/// (On the wire, key order may differ: CoCo's build has serde_json's `preserve_order`, ward's
/// does not; no verifier can tell, as the binding hashes the string the guest sent.)
fn coco_evidence(gpus: usize, switches: usize, report: &[u8], nonce: &[u8]) -> serde_json::Value {
    let chain = chain_pem();
    let gpu: Vec<_> = (0..gpus)
        .map(|_| sdk_json("HOPPER", report, &chain, nonce))
        .collect();
    let switch: Vec<_> = (0..switches)
        .map(|_| sdk_json("LS10", report, &chain, nonce))
        .collect();
    let mut list: Vec<CocoReportAndCert> =
        serde_json::from_str(&serde_json::Value::Array(gpu).to_string()).unwrap();
    list.extend(
        serde_json::from_str::<Vec<CocoReportAndCert>>(
            &serde_json::Value::Array(switch).to_string(),
        )
        .unwrap(),
    );
    serde_json::to_value(CocoEvidence {
        device_evidence_list: list,
    })
    .unwrap()
}

/// Every entry has exactly CoCo's four fields.
fn assert_four_fields(v: &serde_json::Value) {
    for d in v["device_evidence_list"].as_array().unwrap() {
        let mut keys: Vec<&str> = d.as_object().unwrap().keys().map(String::as_str).collect();
        keys.sort_unstable();
        assert_eq!(keys, ["arch", "certificate", "evidence", "uuid"]);
    }
}

// --- Trustee's verifier, reproduced ---

#[derive(Debug, Deserialize, PartialEq)]
enum TrusteeArchitecture {
    #[serde(alias = "BLACKWELL")]
    Blackwell,
    #[serde(alias = "HOPPER")]
    Hopper,
    LS10,
}

#[derive(Deserialize)]
struct TrusteeReportAndCert {
    arch: TrusteeArchitecture,
    #[serde(default = "default_uuid")]
    uuid: String,
    evidence: String,
    certificate: String,
}

#[derive(Deserialize)]
struct TrusteeEvidence {
    device_evidence_list: Vec<TrusteeReportAndCert>,
}

fn regularize_data(data: &[u8], len: usize) -> Vec<u8> {
    let mut data = data.to_vec();
    data.resize(len, b'\0');
    data
}

/// `evaluate_device_locally` for one device, as far as it runs without NVIDIA's root anchoring.
fn trustee_local(device: &TrusteeReportAndCert, expected_report_data: &[u8]) -> Result<(), String> {
    if device.arch != TrusteeArchitecture::Hopper {
        return Err("Device architecture not supported".into());
    }
    let cert_chain = STANDARD
        .decode(&device.certificate)
        .map_err(|e| e.to_string())?;
    let report = match hex::decode(&device.evidence) {
        Ok(evidence) => evidence,
        Err(_) => STANDARD
            .decode(&device.evidence)
            .map_err(|e| e.to_string())?,
    };
    let expected_nonce = regularize_data(expected_report_data, 32);
    let one = serde_json::json!({"device_evidence_list": [{
        "arch": "HOPPER",
        "uuid": device.uuid,
        "evidence": STANDARD.encode(&report),
        "certificate": STANDARD.encode(&cert_chain),
    }]});
    let parsed = crate::explain::parse_nvidia_evidence(&one).map_err(|e| e.to_string())?;
    let d = &parsed.devices[0];
    d.signature.clone().map_err(|e| e.to_string())?;
    if !d.chain.iter().all(|l| l.status.is_ok()) || d.fwid_matches != Some(true) {
        return Err("certificate chain".into());
    }
    if d.report.request_nonce[..] != expected_nonce[..] {
        return Err("nonce".into());
    }
    Ok(())
}

#[tokio::test]
async fn gpu_evidence_is_byte_for_byte_what_coco_sends() {
    let nonce = fixture_nonce();
    let (_, b) = backend(Script {
        gpus: 2,
        ..script()
    });
    let ours =
        serde_json::to_value(collect(&b, nonce, CollectOptions::default()).await.unwrap()).unwrap();
    assert_eq!(ours, coco_evidence(2, 0, &report_template(), &nonce));
    assert_four_fields(&ours);
    assert_eq!(ours["device_evidence_list"][0]["arch"], "HOPPER");
    assert_eq!(ours["device_evidence_list"][1]["uuid"], "unknown");
}

#[tokio::test]
async fn trustee_reads_it_and_its_local_checks_pass_for_the_session_nonce() {
    // the device report data is 64 bytes; the GPUs get its first 32, Trustee truncates to 32
    let mut report_data = fixture_nonce().to_vec();
    report_data.extend([0x5a; 32]);
    let (_, b) = backend(Script {
        gpus: 2,
        ..script()
    });
    let attester = NvidiaAttester::new(b, CollectOptions::default())
        .await
        .unwrap();
    let json = attester.evidence(&report_data).await.unwrap();
    let t: TrusteeEvidence = serde_json::from_value(json).unwrap();
    assert_eq!(t.device_evidence_list.len(), 2);
    for d in &t.device_evidence_list {
        assert_eq!(d.uuid, "unknown");
        trustee_local(d, &report_data).unwrap();
    }
    let mut other = report_data.clone();
    other[3] ^= 1;
    assert_eq!(
        trustee_local(&t.device_evidence_list[0], &other),
        Err("nonce".into())
    );
}

#[tokio::test]
async fn protected_pcie_sends_the_switches_after_the_gpus_as_coco_does() {
    let nonce = fixture_nonce();
    let (_, b) = backend(ppcie(4));
    let ev = collect(&b, nonce, CollectOptions::default()).await.unwrap();
    let ours = serde_json::to_value(&ev).unwrap();
    assert_eq!(ours, coco_evidence(8, 4, &report_template(), &nonce));
    assert_four_fields(&ours);
    assert_eq!(ours["device_evidence_list"][8]["arch"], "LS10");
    let t: TrusteeEvidence = serde_json::from_value(ours).unwrap();
    let arches: Vec<&TrusteeArchitecture> =
        t.device_evidence_list.iter().map(|d| &d.arch).collect();
    assert_eq!(arches.len(), 12, "Trustee's PPCIe check wants 12 devices");
    assert!(
        arches[..8]
            .iter()
            .all(|a| **a == TrusteeArchitecture::Hopper)
    );
    assert!(arches[8..].iter().all(|a| **a == TrusteeArchitecture::LS10));
    // Trustee's local verifier stops at a switch: PPCIe evidence needs its NRAS verifier
    assert_eq!(
        trustee_local(&t.device_evidence_list[8], &nonce),
        Err("Device architecture not supported".into())
    );
    let attestable = check_attestable(&b, CollectOptions::default())
        .await
        .unwrap();
    let mut expected: Vec<String> = (0..8).map(|i| format!("gpu{i}")).collect();
    expected.extend((0..4).map(|i| format!("switch{i}")));
    expected.push("ppcie0".into());
    assert_eq!(attestable.expected_submods(), expected);
}

#[tokio::test]
async fn switches_are_left_out_without_protected_pcie() {
    let (_, b) = backend(Script {
        gpus: 1,
        switches: 4,
        ..script()
    });
    let ev = collect(&b, fixture_nonce(), CollectOptions::default())
        .await
        .unwrap();
    assert_eq!(ev.device_evidence_list.len(), 1);
    assert_eq!(ev.device_evidence_list[0].arch, Arch::Hopper);
    assert_eq!(expected_submods(1, 0), ["gpu0"]);
}

#[tokio::test]
async fn unattestable_switches_are_refused_with_the_reason() {
    type Expect = fn(&GpuError) -> bool;
    let cases: Vec<(&str, Script, Expect)> = vec![
        ("none", ppcie(0), |e| matches!(e, GpuError::NoSwitches(_))),
        (
            "tnvl off",
            Script {
                switch_tnvl: Some(TnvlMode::Disabled),
                ..ppcie(4)
            },
            |e| matches!(e, GpuError::Switch { detail, .. } if detail.contains("TNVL")),
        ),
        (
            "tnvl failure",
            Script {
                switch_tnvl: Some(TnvlMode::Failure),
                ..ppcie(4)
            },
            |e| matches!(e, GpuError::Switch { .. }),
        ),
        (
            "lr10",
            Script {
                switch_arch: Some(1),
                ..ppcie(4)
            },
            |e| matches!(e, GpuError::Switch { detail, .. } if detail.contains("not LS10")),
        ),
        (
            "nonce not echoed",
            Script {
                switch_ignore_nonce: true,
                ..ppcie(4)
            },
            |e| matches!(e, GpuError::Switch { detail, .. } if detail.contains("nonce")),
        ),
    ];
    for (name, s, check) in cases {
        let (_, b) = backend(s);
        // a nonce other than the fixture's, so an unechoed one shows
        let e = collect(&b, [0x42; 32], CollectOptions::default())
            .await
            .unwrap_err();
        assert!(check(&e), "{name}: {e}");
    }
    // locked (TNVL enabled and locked) is attestable
    let (_, b) = backend(Script {
        switch_tnvl: Some(TnvlMode::Locked),
        ..ppcie(4)
    });
    let b: Arc<dyn GpuBackend> = b;
    assert_eq!(
        check_attestable(&b, CollectOptions::default())
            .await
            .unwrap()
            .switches
            .len(),
        4
    );
}

#[tokio::test]
async fn ready_waits_for_every_switch_and_the_ppcie_topology() {
    let t = std::time::Duration::from_secs(5);
    let (s, b) = backend(ppcie(4));
    let expected = check_attestable(&b, CollectOptions::default())
        .await
        .unwrap()
        .expected_submods();
    let mut submods: Vec<String> = expected
        .iter()
        .filter(|n| *n != "ppcie0")
        .cloned()
        .collect();
    let e = set_ready_after_attestation(&b, &expected, &submods, t)
        .await
        .unwrap_err();
    assert!(e.to_string().ends_with("does not appraise ppcie0"), "{e}");
    assert_eq!(s.set_ready_calls(), 0);
    submods.push("ppcie0".into());
    set_ready_after_attestation(&b, &expected, &submods, t)
        .await
        .unwrap();
    assert_eq!(s.set_ready_calls(), 1);
}

#[test]
fn arch_and_uuid_read_as_trustee_reads_them() {
    for (text, arch) in [
        ("HOPPER", Arch::Hopper),
        ("Hopper", Arch::Hopper),
        ("BLACKWELL", Arch::Blackwell),
        ("Blackwell", Arch::Blackwell),
        ("LS10", Arch::Ls10),
    ] {
        let d: DeviceEvidence = serde_json::from_value(serde_json::json!({
            "arch": text, "evidence": "", "certificate": ""
        }))
        .unwrap();
        assert_eq!((d.arch, d.uuid.as_str()), (arch, UNKNOWN_UUID), "{text}");
        assert!(
            serde_json::from_value::<TrusteeArchitecture>(serde_json::json!(text)).is_ok(),
            "{text}"
        );
        assert_eq!(serde_json::to_value(arch).unwrap(), arch.as_str());
    }
    for text in ["hopper", "ls10", "AMPERE"] {
        assert!(serde_json::from_value::<Arch>(serde_json::json!(text)).is_err());
        assert!(serde_json::from_value::<TrusteeArchitecture>(serde_json::json!(text)).is_err());
    }
    assert_eq!(
        (Arch::Hopper.tee_class(), Arch::Ls10.tee_class()),
        ("gpu", "switch")
    );
}
