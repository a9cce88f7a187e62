//! `ward chat`'s and `ward proxy`'s verification of an attestation answer, against the real
//! fixtures and forged variants of them.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use base64::Engine as _;
use ward_e2e::{ServerKey, Suite, report_data};

use std::path::Path;

use super::*;

/// Inside the tdx-dcap collateral's window (2025-06-19..2025-07-19).
const AS_OF: u64 = 1_750_377_600;

fn fixture_path(rel: &str) -> String {
    format!(
        "{}/../../shared/fixtures/evidence/{rel}",
        env!("CARGO_MANIFEST_DIR")
    )
}

fn fixture(rel: &str) -> Vec<u8> {
    let path = fixture_path(rel);
    std::fs::read(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

fn args(measurement: Option<&str>, insecure: bool, collateral: Option<&Path>) -> TrustArgs {
    TrustArgs {
        who: "test",
        vcek: None,
        tdx_collateral: collateral.map(Path::to_path_buf),
        reference: None,
        measurement: measurement.map(str::to_string),
        allow_sample: false,
        insecure,
    }
}

/// What a hostile host answers: the real DCAP quote, edited (an invented MRTD, DEBUG set or
/// not, report data binding the host's own key). Nothing signs the edit.
fn forged_tdx(nonce: &[u8], debug: bool) -> (serde_json::Value, [u8; 48]) {
    let key = ServerKey::generate(Suite::XWing).config().encode();
    let mut quote = fixture("tdx-dcap/tdx_quote");
    // v4 quote: a 48-byte header, then TDATTRIBUTES at body offset 120, MRTD at 136 and
    // REPORTDATA at 520.
    let mrtd = [0xab; 48];
    if debug {
        quote[48 + 120] |= 1;
    } else {
        quote[48 + 120] &= !1;
    }
    quote[48 + 136..48 + 184].copy_from_slice(&mrtd);
    quote[48 + 520..48 + 584].copy_from_slice(&report_data(nonce, &key, None));
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let std = base64::engine::general_purpose::STANDARD;
    let att = serde_json::json!({
        "evidence": {"cc_eventlog": null, "quote": std.encode(&quote)},
        "key_config": b64.encode(&key),
    });
    (att, mrtd)
}

/// A reference file pinning MRTD and leaving the rest any value.
fn reference_file(dir: &Path, mrtd: &str) -> std::path::PathBuf {
    let p = dir.join("reference.toml");
    std::fs::write(
        &p,
        format!(
            "version = 1\n[tdx]\nmrtd = [\"{mrtd}\"]\nunpinned = [\"rtmr0\", \"rtmr1\", \"rtmr2\", \"rtmr3\", \"mrconfigid\"]\n"
        ),
    )
    .unwrap();
    p
}

#[test]
fn a_forged_tdx_quote_is_refused() {
    let nonce = [7u8; 32];
    let collateral = fixture_path("tdx-dcap/tdx_quote_collateral.json");
    let collateral = Some(Path::new(&collateral));
    let (att, mrtd) = forged_tdx(&nonce, false);
    let mrtd = hex::encode(mrtd);
    // The review's case, now with Intel's collateral: the quote's signature fails.
    let e = verify_answer(&att, &nonce, &args(Some(&mrtd), false, collateral), AS_OF)
        .unwrap_err()
        .to_string();
    assert!(e.contains("does not verify to Intel's SGX root CA"), "{e}");
    // --insecure does not skip a check that ran and failed.
    let e = verify_answer(&att, &nonce, &args(Some(&mrtd), true, collateral), AS_OF)
        .unwrap_err()
        .to_string();
    assert!(e.contains("does not verify to Intel's SGX root CA"), "{e}");
    // The same collateral at today's clock: stale, refused.
    let e = verify_answer(&att, &nonce, &args(Some(&mrtd), false, collateral), now())
        .unwrap_err()
        .to_string();
    assert!(e.contains("stale collateral"), "{e}");
    // Without collateral, refused, naming the flag that would supply it.
    let e = verify_answer(&att, &nonce, &args(Some(&mrtd), false, None), AS_OF)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("--tdx-collateral") && e.contains("--insecure"),
        "{e}"
    );
    // --insecure is the only way past, and only for what cannot be checked.
    assert!(verify_answer(&att, &nonce, &args(Some(&mrtd), true, None), AS_OF).is_ok());
    let e = verify_answer(
        &att,
        &nonce,
        &args(Some(&"00".repeat(48)), true, None),
        AS_OF,
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("tdx.mrtd is abab"), "{e}");
    let (debug, _) = forged_tdx(&nonce, true);
    let e = verify_answer(&debug, &nonce, &args(Some(&mrtd), true, None), AS_OF)
        .unwrap_err()
        .to_string();
    assert!(e.contains("DEBUG"), "{e}");
    // A quote bound to another nonce fails the binding.
    let e = verify_answer(&att, &[8u8; 32], &args(Some(&mrtd), true, None), AS_OF)
        .unwrap_err()
        .to_string();
    assert!(e.contains("does not vouch"), "{e}");
}

#[test]
fn the_real_tdx_quote_passes_every_check_but_the_binding() {
    // Signed by Intel's chain, as of its collateral: refused only because it binds another
    // key (a real quote for this nonce cannot be made here).
    let std = base64::engine::general_purpose::STANDARD;
    let quote = fixture("tdx-dcap/tdx_quote");
    let key = ServerKey::generate(Suite::XWing).config().encode();
    let att = serde_json::json!({
        "evidence": {"cc_eventlog": null, "quote": std.encode(&quote)},
        "key_config": base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(&key),
    });
    let dir = tempfile::tempdir().unwrap();
    let reference = reference_file(dir.path(), &hex::encode(&quote[48 + 136..48 + 184]));
    let collateral = fixture_path("tdx-dcap/tdx_quote_collateral.json");
    let mut a = args(None, false, Some(Path::new(&collateral)));
    a.reference = Some(reference.clone());
    let e = verify_answer(&att, &[1u8; 32], &a, AS_OF)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("the report data is") && e.contains("does not vouch"),
        "{e}"
    );
    // And with another MRTD in the reference, the MRTD is what fails.
    let reference = reference_file(dir.path(), &"cd".repeat(48));
    a.reference = Some(reference.clone());
    let e = verify_answer(&att, &[1u8; 32], &a, AS_OF)
        .unwrap_err()
        .to_string();
    assert!(e.contains("tdx.mrtd is"), "{e}");
}

#[test]
fn a_bad_reference_file_is_refused_by_name() {
    let (att, _) = forged_tdx(&[7u8; 32], false);
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("r.toml");
    std::fs::write(&p, "version = 1\n[tdx]\nmrtd = [\"00\"]\n").unwrap();
    let mut a = args(None, true, None);
    a.reference = Some(p.clone());
    let e = verify_answer(&att, &[7u8; 32], &a, AS_OF)
        .unwrap_err()
        .to_string();
    assert!(e.contains("r.toml") && e.contains("1 bytes, not 48"), "{e}");
    // And sample evidence with reference values is refused: it has nothing to match.
    let att = serde_json::json!({
        "evidence": {"svn": "1", "report_data": "AAAA"},
        "key_config": base64::engine::general_purpose::URL_SAFE_NO_PAD.encode([1u8; 4]),
    });
    std::fs::write(&p, "version = 1\n").unwrap();
    a.allow_sample = true;
    let e = verify_answer(&att, &[7u8; 32], &a, AS_OF)
        .unwrap_err()
        .to_string();
    assert!(e.contains("sample evidence has no measurement"), "{e}");
}

#[test]
fn snp_needs_its_vcek_and_measurement() {
    let report = ward_attester::explain::parse_snp_report(&fixture("snp/test-report.bin")).unwrap();
    let att = serde_json::json!({
        "evidence": {"attestation_report": report.report, "cert_chain": null},
        "key_config": base64::engine::general_purpose::URL_SAFE_NO_PAD
            .encode(ServerKey::generate(Suite::XWing).config().encode()),
    });
    let e = verify_answer(&att, &[1u8; 32], &args(None, false, None), AS_OF)
        .unwrap_err()
        .to_string();
    assert!(e.contains("--vcek"), "{e}");
    // With its VCEK the chain and signature pass (the JSON form re-encodes to the signed
    // bytes); the guest policy allows SMT, which the default reference values refuse.
    let vcek = fixture_path("snp/test-vcek.der");
    let mut a = args(None, false, None);
    a.vcek = Some(vcek.into());
    let e = verify_answer(&att, &[1u8; 32], &a, AS_OF)
        .unwrap_err()
        .to_string();
    assert!(e.contains("SMT"), "{e}");
    let dir = tempfile::tempdir().unwrap();
    let reference = dir.path().join("r.toml");
    std::fs::write(
        &reference,
        "version = 1\n[snp]\nallow_smt = true\nunpinned = [\"host_data\", \"min_tcb\"]\n",
    )
    .unwrap();
    a.reference = Some(reference.clone());
    let e = verify_answer(&att, &[1u8; 32], &a, AS_OF)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("snp.measurement is not pinned") && e.contains("--measurement"),
        "{e}"
    );
    // The real report binds another key: refused even with --insecure (which skips only
    // the unpinned measurement here, and says so).
    a.insecure = true;
    let e = verify_answer(&att, &[1u8; 32], &a, AS_OF)
        .unwrap_err()
        .to_string();
    assert!(e.contains("does not vouch"), "{e}");
}

/// wardd's GPU evidence document around the real H100 report and chain.
fn gpu_evidence() -> Vec<u8> {
    let std = base64::engine::general_purpose::STANDARD;
    let report = hex::decode(
        String::from_utf8(fixture("nvidia/hopperAttestationReport.txt"))
            .unwrap()
            .trim(),
    )
    .unwrap();
    serde_json::to_vec(&serde_json::json!({"nvidia": {"device_evidence_list": [{
        "arch": "HOPPER", "uuid": "unknown",
        "evidence": std.encode(report),
        "certificate": std.encode(fixture("nvidia/hopper_cert_chain_case1.txt")),
    }]}}))
    .unwrap()
}

#[test]
fn gpu_evidence_is_verified_not_just_bound() {
    // Bound correctly by the CPU's report data, but the GPU signed another nonce than the
    // one this attestation derives: a replayed GPU report. Refused even with --insecure.
    let nonce = [7u8; 32];
    let key = ServerKey::generate(Suite::XWing).config().encode();
    let gpus = gpu_evidence();
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let std = base64::engine::general_purpose::STANDARD;
    let att = serde_json::json!({
        "evidence": {"svn": "1", "report_data": std.encode(report_data(&nonce, &key, Some(&gpus)))},
        "gpus_raw": b64.encode(&gpus),
        "key_config": b64.encode(&key),
    });
    let mut a = args(None, true, None);
    a.allow_sample = true;
    let e = verify_answer(&att, &nonce, &a, AS_OF)
        .unwrap_err()
        .to_string();
    assert!(e.contains("GPU device 0 (HOPPER) signed the nonce"), "{e}");
    // Reference values with a [gpu] section and a server that offers no GPU evidence.
    let (att, mrtd) = forged_tdx(&nonce, false);
    let dir = tempfile::tempdir().unwrap();
    let p = reference_file(dir.path(), &hex::encode(mrtd));
    let text = std::fs::read_to_string(&p).unwrap();
    std::fs::write(&p, format!("{text}[gpu]\ncount = 1\n")).unwrap();
    let mut a = args(None, true, None);
    a.reference = Some(p);
    let e = verify_answer(&att, &nonce, &a, AS_OF)
        .unwrap_err()
        .to_string();
    assert!(e.contains("offered no GPU evidence"), "{e}");
}

#[test]
fn azure_vtpm_evidence_is_verified() {
    // The real Azure SNP evidence: its VCEK chain, report, vTPM key and quote all verify,
    // and it is refused because its quote binds another nonce and key than this client's.
    let ev: serde_json::Value =
        serde_json::from_slice(&fixture("az-snp-vtpm/evidence-v2.json")).unwrap();
    let key = ServerKey::generate(Suite::XWing).config().encode();
    let att = serde_json::json!({
        "evidence": ev,
        "key_config": base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(&key),
    });
    let e = verify_answer(&att, &[1u8; 32], &args(None, true, None), AS_OF)
        .unwrap_err()
        .to_string();
    assert!(e.contains("the vTPM quote's nonce is 982f5c6e"), "{e}");
}

#[test]
fn snp_uses_the_certificates_the_evidence_carries() {
    // The host's certificate table holds the VCEK: used as --vcek would be (the chain and
    // signature pass; the guest policy allows SMT, which the default refuses).
    let report = ward_attester::explain::parse_snp_report(&fixture("snp/test-report.bin")).unwrap();
    let key = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .encode(ServerKey::generate(Suite::XWing).config().encode());
    let table = |kind: &str, der: Vec<u8>| {
        serde_json::json!({
            "evidence": {"attestation_report": report.report, "cert_chain": [
                {"cert_type": kind, "data": der}
            ]},
            "key_config": key,
        })
    };
    let att = table("VCEK", fixture("snp/test-vcek.der"));
    let e = verify_answer(&att, &[1u8; 32], &args(None, false, None), AS_OF)
        .unwrap_err()
        .to_string();
    assert!(e.contains("SMT"), "{e}");
    // Another platform's key in the table: refused.
    let att = table("VLEK", fixture("snp/test-vlek.der"));
    let e = verify_answer(&att, &[1u8; 32], &args(None, true, None), AS_OF)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("signed by VCEK, and no VCEK certificate was given"),
        "{e}"
    );
    // Junk in the table is an error naming it, not a panic.
    let att = table("VCEK", vec![1, 2, 3]);
    let e = verify_answer(&att, &[1u8; 32], &args(None, true, None), AS_OF)
        .unwrap_err()
        .to_string();
    assert!(e.contains("cert_chain"), "{e}");
}

#[tokio::test]
async fn an_endless_attestation_answer_is_cut_off() {
    // Whoever is on the path answers before anything is verified: 5 MiB of JSON-looking
    // bytes is refused, not read into memory to the end.
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let (mut sock, _) = listener.accept().await.unwrap();
        let mut req = [0u8; 4096];
        let _ = sock.read(&mut req).await;
        let len = 5usize << 20;
        let head = format!(
            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {len}\r\n\r\n"
        );
        let _ = sock.write_all(head.as_bytes()).await;
        let chunk = vec![b' '; 64 << 10];
        for _ in 0..(len / chunk.len()) {
            if sock.write_all(&chunk).await.is_err() {
                break;
            }
        }
    });
    let e = fetch_verified_key(
        &reqwest::Client::new(),
        &format!("http://{addr}/v1"),
        &args(None, true, None),
    )
    .await
    .unwrap_err()
    .to_string();
    assert!(e.contains("larger than 4194304 bytes"), "{e}");
}
