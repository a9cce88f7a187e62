//! The real H100 reports and chains of `../shared/fixtures/evidence/nvidia/`, and forged
//! variants: another nonce, a changed byte, another GPU's chain, a chain to a root that is not
//! NVIDIA's, versions and measurements the reference values do not list.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeMap;

use base64::Engine as _;
use p384::ecdsa::signature::Signer as _;
use p384::pkcs8::DecodePrivateKey as _;

use super::*;
use crate::reference::Hex;

/// A time the fixtures' certificates are valid at (2025-06-20).
const AT: u64 = 1_750_377_600;

fn fixture(name: &str) -> String {
    let path = format!(
        "{}/../../../shared/fixtures/evidence/nvidia/{name}",
        env!("CARGO_MANIFEST_DIR")
    );
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

fn report(name: &str) -> Vec<u8> {
    hex::decode(fixture(name).trim()).unwrap()
}

fn nonce_of(report: &[u8]) -> [u8; 32] {
    report[4..36].try_into().unwrap()
}

/// wardd's shape: `{"nvidia": {"device_evidence_list": [...]}}`.
fn evidence(devices: &[(&[u8], &str)]) -> Vec<u8> {
    let b64 = base64::engine::general_purpose::STANDARD;
    let list: Vec<_> = devices
        .iter()
        .map(|(r, chain)| {
            serde_json::json!({
                "arch": "HOPPER", "uuid": "unknown",
                "evidence": b64.encode(r), "certificate": b64.encode(chain),
            })
        })
        .collect();
    serde_json::to_vec(&serde_json::json!({"nvidia": {"device_evidence_list": list}})).unwrap()
}

/// Pins what the first fixture's claims say (NVIDIA's own parse of that report).
fn pinned() -> GpuReference {
    let claims: serde_json::Value =
        serde_json::from_str(&fixture("hopperAttestationReport-claims.txt")).unwrap();
    let mut measurements = BTreeMap::new();
    for (index, value) in claims["measurements"].as_object().unwrap() {
        let v = value.as_str().unwrap();
        if v.chars().any(|c| c != '0') {
            measurements.insert(index.clone(), vec![v.parse::<Hex<48>>().unwrap()]);
        }
    }
    GpuReference {
        count: Some(1),
        driver_version: Some(vec![
            claims["config"]["driver_version"].as_str().unwrap().into(),
        ]),
        vbios_version: Some(vec![
            claims["config"]["vbios_version"].as_str().unwrap().into(),
        ]),
        measurements: Some(measurements),
        unpinned: Default::default(),
    }
}

fn strict(at: u64) -> Options {
    Options {
        at,
        insecure: false,
    }
}

#[test]
fn the_real_h100_reports_verify_against_their_claims() {
    let r = report("hopperAttestationReport.txt");
    let chain = fixture("hopper_cert_chain_case1.txt");
    let v = verify(
        &evidence(&[(&r, &chain)]),
        &pinned(),
        &nonce_of(&r),
        &strict(AT),
    )
    .unwrap();
    assert_eq!((v.gpus, v.switches), (1, 0));
    assert!(v.skipped.is_empty());
    let all = v.checked.join("\n");
    for want in [
        "NVIDIA's pinned Device Identity CA",
        "FWID is the leaf's",
        "gpu.driver_version 550.90.07 is listed",
        "gpu.vbios_version 96.00.9f.00.01 is listed",
        "measurements match",
        "1 GPUs, as pinned",
        "revocation",
    ] {
        assert!(all.contains(want), "{want}: {all}");
    }
    // The second H100 (its own chain, nonce and versions), with everything unpinned.
    let r2 = report("hopper_coco_report1.txt");
    let chain2 = fixture("hopper_coco_certs1.txt");
    let any = GpuReference {
        unpinned: ["count", "driver_version", "vbios_version", "measurements"]
            .map(String::from)
            .into(),
        ..Default::default()
    };
    verify(
        &evidence(&[(&r2, &chain2)]),
        &any,
        &nonce_of(&r2),
        &strict(AT),
    )
    .unwrap();
    // And today too: NVIDIA's certificates run to 9999.
    verify(
        &evidence(&[(&r2, &chain2)]),
        &any,
        &nonce_of(&r2),
        &Options::now(),
    )
    .unwrap();
}

#[test]
fn forged_and_mismatched_gpu_evidence_is_refused_by_name() {
    let r = report("hopperAttestationReport.txt");
    let chain = fixture("hopper_cert_chain_case1.txt");
    let nonce = nonce_of(&r);
    let refuse = |ev: &[u8], reference: &GpuReference, nonce: &[u8; 32]| {
        verify(ev, reference, nonce, &strict(AT))
            .unwrap_err()
            .to_string()
    };
    // A report for another attestation (another nonce).
    let e = refuse(&evidence(&[(&r, &chain)]), &pinned(), &[9; 32]);
    assert!(e.contains("signed the nonce 931d8dd0"), "{e}");
    // One byte of a signed measurement changed.
    let mut bad = r.clone();
    bad[60] ^= 1; // inside measurement block 1's value (blocks start at 45; value at +7)
    let e = refuse(&evidence(&[(&bad, &chain)]), &pinned(), &nonce);
    assert!(e.contains("signature does not verify"), "{e}");
    // The report under another H100's (valid) chain.
    let other = fixture("hopper_coco_certs1.txt");
    let e = refuse(&evidence(&[(&r, &other)]), &pinned(), &nonce);
    assert!(e.contains("signature does not verify"), "{e}");
    // The chain without its root.
    let certs: Vec<&str> = chain.split_inclusive("-----END CERTIFICATE-----").collect();
    let rootless: String = certs[..4].concat();
    let e = refuse(&evidence(&[(&r, &rootless)]), &pinned(), &nonce);
    assert!(e.contains("breaks at certificate 3"), "{e}");
    // Versions and measurements the reference values do not list.
    let mut r2 = pinned();
    r2.driver_version = Some(vec!["535.104.05".into()]);
    let e = refuse(&evidence(&[(&r, &chain)]), &r2, &nonce);
    assert!(e.contains("gpu.driver_version is 550.90.07"), "{e}");
    let mut r2 = pinned();
    r2.vbios_version = Some(vec!["96.00.5e.00.01".into()]);
    let e = refuse(&evidence(&[(&r, &chain)]), &r2, &nonce);
    assert!(e.contains("gpu.vbios_version"), "{e}");
    let mut r2 = pinned();
    r2.measurements
        .as_mut()
        .unwrap()
        .insert("2".into(), vec![Hex([0xab; 48])]);
    let e = refuse(&evidence(&[(&r, &chain)]), &r2, &nonce);
    assert!(e.contains("gpu.measurements.2 is 8048dfd1"), "{e}");
    let mut r2 = pinned();
    r2.measurements.as_mut().unwrap().remove("10");
    let e = refuse(&evidence(&[(&r, &chain)]), &r2, &nonce);
    assert!(
        e.contains("gpu.measurements.10") && e.contains("not in gpu.measurements"),
        "{e}"
    );
    // Another number of GPUs than pinned; the same GPU twice.
    let mut r2 = pinned();
    r2.count = Some(8);
    let e = refuse(&evidence(&[(&r, &chain)]), &r2, &nonce);
    assert!(
        e.contains("gpu.count is 1") && e.contains("accept 8"),
        "{e}"
    );
    let e = refuse(&evidence(&[(&r, &chain), (&r, &chain)]), &pinned(), &nonce);
    assert!(e.contains("devices 0 and 1 are the same device"), "{e}");
    // Certificates judged before they were issued.
    let e = verify(
        &evidence(&[(&r, &chain)]),
        &pinned(),
        &nonce,
        &strict(1_000_000_000),
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("valid from"), "{e}");
    // Nothing pinned: refused, naming the field; --insecure skips it and says so.
    let none = GpuReference::default();
    let e = refuse(&evidence(&[(&r, &chain)]), &none, &nonce);
    assert!(e.contains("gpu.driver_version is not pinned"), "{e}");
    let v = verify(
        &evidence(&[(&r, &chain)]),
        &none,
        &nonce,
        &Options {
            at: AT,
            insecure: true,
        },
    )
    .unwrap();
    assert_eq!(v.skipped.len(), 4, "{:?}", v.skipped);
    // Junk and unknown kinds are parse errors, not panics.
    for junk in [
        &b"{"[..],
        b"[]",
        b"{\"tpm\": {}}",
        b"{\"nvidia\": {\"device_evidence_list\": 3}}",
    ] {
        assert!(matches!(
            verify(junk, &pinned(), &nonce, &strict(AT)),
            Err(GpuError::Parse(_))
        ));
    }
}

#[test]
fn a_gpu_chain_to_a_root_that_is_not_nvidias_is_refused() {
    // The host's own CA and "GPU": a well-formed chain and a correctly signed report for the
    // right nonce, with the real report's versions and measurements.
    let ca_key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P384_SHA384).unwrap();
    let mut ca = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.distinguished_name
        .push(rcgen::DnType::CommonName, "NVIDIA Device Identity CA");
    ca.distinguished_name
        .push(rcgen::DnType::OrganizationName, "NVIDIA");
    ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca_cert = ca.self_signed(&ca_key).unwrap();
    let leaf_key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P384_SHA384).unwrap();
    let mut leaf = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    leaf.distinguished_name
        .push(rcgen::DnType::CommonName, "GH100 A01 GSP FMC LF");
    let issuer = rcgen::Issuer::from_params(&ca, &ca_key);
    let leaf_cert = leaf.signed_by(&leaf_key, &issuer).unwrap();
    let chain = format!("{}{}", leaf_cert.pem(), ca_cert.pem());

    let real = report("hopperAttestationReport.txt");
    let parsed = parse_report(&real).unwrap();
    let signed = parsed.signed_bytes().to_vec();
    let signer = p384::ecdsa::SigningKey::from_pkcs8_der(&leaf_key.serialize_der()).unwrap();
    let sig: p384::ecdsa::Signature = signer.sign(&signed);
    let mut forged = signed.clone();
    forged.extend_from_slice(&sig.to_bytes());
    // The forgery is sound as far as the report goes: only the root gives it away.
    parse_report(&forged)
        .unwrap()
        .verify_signature(leaf_cert.der())
        .unwrap();
    let e = verify(
        &evidence(&[(&forged, &chain)]),
        &pinned(),
        &nonce_of(&real),
        &strict(AT),
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("not NVIDIA's pinned Device Identity CA"), "{e}");
}
