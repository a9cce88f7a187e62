//! The real Azure evidence of `../shared/fixtures/evidence/az-*-vtpm/` and forged variants:
//! another nonce, a changed quote, changed PCRs, and a host's own vTPM key signing a quote of
//! its choosing.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeMap;

use rsa::pkcs1v15::SigningKey;
use rsa::signature::{SignatureEncoding as _, Signer as _};
use rsa::traits::PublicKeyParts as _;

use super::*;
use crate::reference::{Hex, SnpReference};

/// Inside the Azure VCEK's validity (2025-01-28..2032-01-28).
const AT: u64 = 1_750_377_600;

fn fixture(rel: &str) -> serde_json::Value {
    let path = format!(
        "{}/../../../shared/fixtures/evidence/{rel}",
        env!("CARGO_MANIFEST_DIR")
    );
    serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap()
}

fn snp_evidence() -> serde_json::Value {
    fixture("az-snp-vtpm/evidence-v2.json")
}

fn nonce(ev: &serde_json::Value) -> Vec<u8> {
    parse_azure_evidence(ev).unwrap().tpm_quote.extra_data
}

fn pcr(ev: &serde_json::Value, i: usize) -> Hex<32> {
    ev["tpm_quote"]["pcrs"][i]
        .as_str()
        .unwrap()
        .parse()
        .unwrap()
}

/// The fixture's own measurement and PCRs 4, 7 and 11 pinned.
fn reference(ev: &serde_json::Value) -> ReferenceValues {
    let parsed = parse_azure_evidence(ev).unwrap();
    let HclHardware::Snp(report) = &parsed.hcl.hardware else {
        panic!("not SNP")
    };
    ReferenceValues {
        version: 1,
        snp: Some(SnpReference {
            measurement: Some(vec![Hex(report.report.measurement)]),
            allow_smt: true,
            unpinned: ["host_data", "min_tcb"].map(String::from).into(),
            ..SnpReference::default()
        }),
        vtpm: Some(VtpmReference {
            pcrs: Some(BTreeMap::from(
                [4, 7, 11].map(|i| (i.to_string(), vec![pcr(ev, i)])),
            )),
            unpinned: BTreeSet::new(),
        }),
        ..ReferenceValues::default()
    }
}

fn strict() -> Options {
    Options {
        at: AT,
        insecure: false,
    }
}

#[test]
fn the_real_azure_snp_evidence_verifies_end_to_end() {
    let ev = snp_evidence();
    let v = verify(
        &ev,
        &Vouchers::default(),
        &reference(&ev),
        &nonce(&ev),
        &strict(),
    )
    .unwrap();
    assert_eq!(v.tee, "az-snp-vtpm");
    assert!(v.skipped.is_empty(), "{:?}", v.skipped);
    let all = v.checked.join("\n");
    for want in [
        "signed by the attestation key",
        "nonce is the expected report data",
        "hash to the digest",
        "SHA-256 of the HCL runtime data",
        "user-data is the expected",
        "hardware report: ",
        "snp.measurement matches",
        "vtpm.pcrs: PCRs 11, 4, 7 match",
        "hardware report: the report data binds the HCL runtime data",
    ] {
        assert!(all.contains(want), "{want}: {all}");
    }
}

#[test]
fn forged_azure_snp_evidence_is_refused_by_name() {
    let ev = snp_evidence();
    let r = reference(&ev);
    let n = nonce(&ev);
    let refuse = |ev: &serde_json::Value, want: &[u8]| {
        verify(ev, &Vouchers::default(), &r, want, &strict())
            .unwrap_err()
            .to_string()
    };
    // Evidence for another nonce.
    let e = refuse(&ev, &[7; 48]);
    assert!(e.contains("the vTPM quote's nonce is 982f5c6e"), "{e}");
    // One byte of the signed quote changed.
    let mut bad = ev.clone();
    let mut m = hex::decode(bad["tpm_quote"]["message"].as_str().unwrap()).unwrap();
    let last = m.len() - 1;
    m[last] ^= 1;
    bad["tpm_quote"]["message"] = hex::encode(&m).into();
    assert!(refuse(&bad, &n).contains("not signed by the attestation key"));
    // A PCR value other than the one quoted.
    let mut bad = ev.clone();
    bad["tpm_quote"]["pcrs"][4] = hex::encode([0x44; 32]).into();
    assert!(refuse(&bad, &n).contains("do not hash to the digest"));
    // A PCR the reference values pin with another value.
    let mut r2 = r.clone();
    r2.vtpm
        .as_mut()
        .unwrap()
        .pcrs
        .as_mut()
        .unwrap()
        .insert("7".into(), vec![Hex([0; 32])]);
    let e = verify(&ev, &Vouchers::default(), &r2, &n, &strict())
        .unwrap_err()
        .to_string();
    assert!(e.contains("vtpm.pcrs.7 is"), "{e}");
    // No [vtpm]: refused, naming it; --insecure skips it and says so.
    let mut r2 = r.clone();
    r2.vtpm = None;
    let e = verify(&ev, &Vouchers::default(), &r2, &n, &strict())
        .unwrap_err()
        .to_string();
    assert!(e.contains("vtpm.pcrs is not pinned"), "{e}");
    let v = verify(
        &ev,
        &Vouchers::default(),
        &r2,
        &n,
        &Options {
            at: AT,
            insecure: true,
        },
    )
    .unwrap();
    assert_eq!(
        v.skipped,
        ["vtpm.pcrs (not pinned by the reference values)"]
    );
    // Another measurement than the reference's.
    let mut r2 = r.clone();
    r2.snp.as_mut().unwrap().measurement = Some(vec![Hex([0xab; 48])]);
    let e = verify(&ev, &Vouchers::default(), &r2, &n, &strict())
        .unwrap_err()
        .to_string();
    assert!(e.contains("snp.measurement is"), "{e}");
    // A TD quote beside an SNP HCL report.
    let mut bad = ev.clone();
    bad["td_quote"] = bad["hcl_report"].clone();
    assert!(verify(&bad, &Vouchers::default(), &r, &n, &strict()).is_err());
    // Junk is a parse error, not a panic.
    for junk in [
        serde_json::json!({}),
        serde_json::json!({"version": 2}),
        serde_json::json!([]),
    ] {
        assert!(matches!(
            verify(&junk, &Vouchers::default(), &r, &n, &strict()),
            Err(AzureError::Parse(_))
        ));
    }
}

#[test]
fn a_host_made_vtpm_key_is_not_the_hardwares() {
    // The host swaps the AK in the HCL runtime data for its own (same size, so the report still
    // parses) and signs a quote of its choosing: the quote now verifies with "the" AK, the
    // nonce is right, the PCRs hash right, and only the SNP report's binding of the runtime
    // data gives it away.
    let ev = snp_evidence();
    let n = nonce(&ev);
    let mut rng = rand::rngs::OsRng;
    let host = rsa::RsaPrivateKey::new(&mut rng, 2048).unwrap();
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let hcl = b64
        .decode(ev["hcl_report"].as_str().unwrap().trim_end_matches('='))
        .unwrap();
    let parsed = parse_azure_evidence(&ev).unwrap();
    let runtime: serde_json::Value = serde_json::from_slice(&parsed.hcl.runtime_data).unwrap();
    let old_n = runtime["keys"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["kid"] == "HCLAkPub")
        .unwrap()["n"]
        .as_str()
        .unwrap()
        .to_string();
    let new_n = b64.encode(host.n().to_bytes_be());
    assert_eq!(old_n.len(), new_n.len());
    let text = String::from_utf8_lossy(&hcl).into_owned();
    assert!(text.contains(&old_n));
    let start = hcl
        .windows(old_n.len())
        .position(|w| w == old_n.as_bytes())
        .unwrap();
    let mut forged_hcl = hcl.clone();
    forged_hcl[start..start + new_n.len()].copy_from_slice(new_n.as_bytes());
    let message = hex::decode(ev["tpm_quote"]["message"].as_str().unwrap()).unwrap();
    let sig = SigningKey::<Sha256>::new(host).sign(&message).to_vec();
    let mut forged = ev.clone();
    forged["hcl_report"] = base64::engine::general_purpose::URL_SAFE
        .encode(&forged_hcl)
        .into();
    forged["tpm_quote"]["signature"] = hex::encode(sig).into();
    let e = verify(
        &forged,
        &Vouchers::default(),
        &reference(&ev),
        &n,
        &strict(),
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("the vTPM key is not the hardware's"), "{e}");
}

#[test]
fn the_real_azure_tdx_evidence_needs_intels_collateral() {
    // Version 1 (no user-data), nonce "challenge"; no collateral for its platform among the
    // fixtures, so only --insecure gets past the TD quote, and says what it skipped.
    let ev = fixture("az-tdx-vtpm/evidence-v1.json");
    let parsed = parse_azure_evidence(&ev).unwrap();
    let td = &parsed.td_quote.as_ref().unwrap().body;
    let r = ReferenceValues {
        version: 1,
        tdx: Some(crate::TdxReference {
            mrtd: Some(vec![Hex(td.mr_td)]),
            unpinned: ["rtmr0", "rtmr1", "rtmr2", "rtmr3", "mrconfigid"]
                .map(String::from)
                .into(),
            ..crate::TdxReference::default()
        }),
        vtpm: Some(VtpmReference {
            pcrs: None,
            unpinned: ["pcrs".to_string()].into(),
        }),
        ..ReferenceValues::default()
    };
    let e = verify(&ev, &Vouchers::default(), &r, b"challenge", &strict())
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("no Intel collateral") || e.contains("collateral"),
        "{e}"
    );
    let v = verify(
        &ev,
        &Vouchers::default(),
        &r,
        b"challenge",
        &Options {
            at: AT,
            insecure: true,
        },
    )
    .unwrap();
    assert_eq!(v.tee, "az-tdx-vtpm");
    assert!(v.checked.join("\n").contains("evidence version 1"));
    assert!(
        v.skipped.iter().any(|s| s.contains("PCK chain")),
        "{:?}",
        v.skipped
    );
    // Another nonce is refused even so.
    let e = verify(
        &ev,
        &Vouchers::default(),
        &r,
        b"challengf",
        &Options {
            at: AT,
            insecure: true,
        },
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("nonce"), "{e}");
}
