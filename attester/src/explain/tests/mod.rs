//! The explainer against evidence captured on real hardware and hand-made edge cases.

use super::*;

mod robustness;

fn fixture(name: &str) -> Vec<u8> {
    std::fs::read(format!(
        "{}/../../shared/fixtures/evidence/{name}",
        env!("CARGO_MANIFEST_DIR")
    ))
    .unwrap()
}

#[test]
fn raw_inputs_are_recognised_by_content() {
    assert!(matches!(
        explain(&fixture("snp/test-report.bin")).unwrap(),
        Explanation::SnpReport(_)
    ));
    assert!(matches!(
        explain(&fixture("tdx/tdx_quote_4.dat")).unwrap(),
        Explanation::TdxQuote(_)
    ));
    assert!(matches!(
        explain(&fixture("tdx/tdx_quote_5.dat")).unwrap(),
        Explanation::TdxQuote(_)
    ));
    assert!(matches!(
        explain(&fixture("ccel/CCEL_data")).unwrap(),
        Explanation::CcelLog(_)
    ));
    assert!(matches!(
        explain(&fixture("az-snp-vtpm/evidence-v2.json")).unwrap(),
        Explanation::Azure(_)
    ));
    assert!(matches!(
        explain(&fixture("az-tdx-vtpm/evidence-v1.json")).unwrap(),
        Explanation::Azure(_)
    ));
    assert!(matches!(
        explain(b"hello"),
        Err(ExplainError::Unrecognised { len: 5 })
    ));
}

#[test]
fn evidence_json_shapes_are_unwrapped() {
    let b64 = base64::engine::general_purpose::STANDARD;
    let report = parse_snp_report(&fixture("snp/test-report.bin")).unwrap();
    let snp = serde_json::json!({
        "attestation_report": report.report,
        "cert_chain": [CertTableEntry::new(
            sev::firmware::host::CertType::VCEK,
            fixture("snp/test-vcek.der"),
        )],
    });
    let e = explain(snp.to_string().as_bytes()).unwrap();
    assert_eq!(e.snp_report(), Some(&report));
    let text = e.to_string();
    assert!(text.contains("VCEK (1360 bytes)"), "{text}");

    let tdx = serde_json::json!({
        "cc_eventlog": b64.encode(fixture("ccel/CCEL_data")),
        "quote": b64.encode(fixture("tdx/tdx_quote_4.dat")),
    });
    let wrapped =
        serde_json::json!({"tee-evidence": {"primary_evidence": tdx, "additional_evidence": ""}});
    let Explanation::TdxEvidence { quote, event_log } = explain_json(&wrapped).unwrap() else {
        panic!("not tdx evidence")
    };
    assert_eq!(quote.version, 4);
    assert_eq!(event_log.unwrap().events.len(), 5);

    let sample = serde_json::json!({"svn": "1", "report_data": b64.encode([7u8; 48])});
    let e = explain_json(&sample).unwrap();
    assert_eq!(
        e,
        Explanation::SampleEvidence {
            svn: "1".into(),
            report_data: vec![7; 48]
        }
    );
    assert!(e.to_string().contains("proves nothing"));
    assert!(explain_json(&serde_json::json!({"foo": 1})).is_err());
}
