//! `ward evidence --explain` on the real evidence captured on hardware (../shared/fixtures):
//! every format parses, the SNP signature check passes with the right VCEK and fails with a
//! wrong one or a flipped bit, and garbage gets a clear error.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use ward_tests::run_ward;

fn fixture(rel: &str) -> String {
    format!(
        "{}/../../shared/fixtures/evidence/{rel}",
        env!("CARGO_MANIFEST_DIR")
    )
}

#[test]
fn every_fixture_format_is_explained() {
    let cases = [
        ("snp/test-report.bin", "measurement"),
        ("tdx/tdx_quote_4.dat", "MRCONFIGID"),
        ("tdx/tdx_quote_5.dat", "RTMR3"),
        ("ccel/CCEL_data", "EV_"),
        ("az-snp-vtpm/evidence-v2.json", "PCR"),
        ("az-tdx-vtpm/evidence-v1.json", "PCR"),
    ];
    for (file, want) in cases {
        let (code, out, err) = run_ward("ward", &["evidence", "--explain", &fixture(file)]);
        assert_eq!(code, 0, "{file}: {err}");
        assert!(out.contains(want), "{file}: output lacks {want}:\n{out}");
    }
}

#[test]
fn snp_signatures_are_checked_against_the_vcek() {
    let report = fixture("snp/test-report.bin");
    let (code, out, _) = run_ward(
        "ward",
        &[
            "evidence",
            "--explain",
            &report,
            "--vcek",
            &fixture("snp/test-vcek.der"),
        ],
    );
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("signature: OK"), "{out}");
    let (code, out, _) = run_ward(
        "ward",
        &[
            "evidence",
            "--explain",
            &fixture("snp/test-vlek-report.bin"),
            "--vcek",
            &fixture("snp/test-vlek.der"),
        ],
    );
    assert_eq!(code, 0, "{out}");

    let (code, out, _) = run_ward(
        "ward",
        &[
            "evidence",
            "--explain",
            &report,
            "--vcek",
            &fixture("snp/test-vlek.der"),
        ],
    );
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("signature: BAD"), "{out}");

    let dir = tempfile::tempdir().unwrap();
    let mut bytes = std::fs::read(&report).unwrap();
    bytes[0x90] ^= 1; // inside the measurement
    let flipped = dir.path().join("flipped.bin");
    std::fs::write(&flipped, bytes).unwrap();
    let (code, out, _) = run_ward(
        "ward",
        &[
            "evidence",
            "--explain",
            flipped.to_str().unwrap(),
            "--vcek",
            &fixture("snp/test-vcek.der"),
        ],
    );
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("signature: BAD"), "{out}");
}

#[test]
fn garbage_is_refused_clearly() {
    let dir = tempfile::tempdir().unwrap();
    let junk = dir.path().join("junk");
    std::fs::write(&junk, b"definitely not evidence").unwrap();
    let (code, _, err) = run_ward("ward", &["evidence", "--explain", junk.to_str().unwrap()]);
    assert_eq!(code, 1);
    assert!(err.contains("is not evidence ward can read"), "{err}");
    let tdx = std::fs::read(fixture("tdx/tdx_quote_4.dat")).unwrap();
    let cut = dir.path().join("cut");
    std::fs::write(&cut, &tdx[..600]).unwrap();
    let (code, _, err) = run_ward("ward", &["evidence", "--explain", cut.to_str().unwrap()]);
    assert_eq!(code, 1, "{err}");
    assert!(!err.contains("panicked"), "{err}");
}

#[test]
fn without_an_nvidia_driver_ward_gpu_says_so() {
    if std::path::Path::new("/dev/nvidiactl").exists() {
        eprintln!(
            "skipped: this machine has an NVIDIA driver; the real GPU is checked on the device machine"
        );
        return;
    }
    let (code, out, _) = run_ward("ward", &["gpu"]);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("NVML library not found") || out.contains("driver is not loaded"),
        "{out}"
    );
    let (code, _, err) = run_ward("ward", &["evidence", "--tee", "sample", "--with-gpus"]);
    assert_eq!(code, 1);
    assert!(err.contains("GPU evidence"), "{err}");
}

#[test]
fn nvidia_reports_and_evidence_are_explained_and_checked() {
    use base64::Engine;
    let (code, out, err) = run_ward(
        "ward",
        &[
            "evidence",
            "--explain",
            &fixture("nvidia/hopperAttestationReport.txt"),
        ],
    );
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("931d8dd0add203ac3d8b4fbde75e115278eefcdceac5b87671a748f32364dfcb"),
        "{out}"
    );
    assert!(out.contains("550.90.07"), "{out}");

    let b64 = |b: &[u8]| base64::engine::general_purpose::STANDARD.encode(b);
    let report = hex::decode(
        std::fs::read_to_string(fixture("nvidia/hopperAttestationReport.txt"))
            .unwrap()
            .trim(),
    )
    .unwrap();
    let chain = std::fs::read(fixture("nvidia/hopper_cert_chain_case1.txt")).unwrap();
    let wrong_chain = std::fs::read(fixture("nvidia/hopper_coco_certs1.txt")).unwrap();
    let dir = tempfile::tempdir().unwrap();
    for (name, chain, want_code) in [("good", &chain, 0), ("wrong-chain", &wrong_chain, 1)] {
        let ev = serde_json::json!({"nvidia": {"device_evidence_list": [{
            "arch": "HOPPER", "uuid": "GPU-1", "evidence": b64(&report), "certificate": b64(chain)}]}});
        let path = dir.path().join(name);
        std::fs::write(&path, ev.to_string()).unwrap();
        let (code, out, err) = run_ward("ward", &["evidence", "--explain", path.to_str().unwrap()]);
        assert_eq!(code, want_code, "{name}: {out}{err}");
    }
}
