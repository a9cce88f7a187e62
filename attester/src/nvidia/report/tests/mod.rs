//! The report parser against the real Hopper reports: what it reads matches the claims
//! Trustee extracts from the same report.

use super::*;

mod robustness;

pub(crate) fn fixture_hex(name: &str) -> Vec<u8> {
    let text = std::fs::read_to_string(format!(
        "{}/../../shared/fixtures/evidence/nvidia/{name}",
        env!("CARGO_MANIFEST_DIR")
    ))
    .unwrap();
    hex::decode(text.trim()).unwrap()
}

pub(crate) const REPORT: &str = "hopperAttestationReport.txt";
pub(crate) const COCO_REPORT: &str = "hopper_coco_report1.txt";

#[test]
fn hopper_report_matches_trustee_claims() {
    let report = parse_report(&fixture_hex(REPORT)).unwrap();
    assert_eq!(
        hex::encode(report.request_nonce),
        "931d8dd0add203ac3d8b4fbde75e115278eefcdceac5b87671a748f32364dfcb"
    );
    assert_eq!(report.spdm_version, 0x11);
    assert_eq!(report.trailing, 0);
    let o = &report.opaque;
    assert_eq!(o.driver_version.as_deref(), Some("550.90.07"));
    assert_eq!(o.vbios_version.as_deref(), Some("96.00.9f.00.01"));
    assert_eq!(o.chip_sku.as_deref(), Some("882"));
    assert_eq!(o.chip_sku_mod.as_deref(), Some("0"));
    assert_eq!(o.project.as_deref(), Some("1010"));
    assert_eq!(o.project_sku.as_deref(), Some("0200"));
    assert_eq!(
        o.fwid.as_deref().map(hex::encode).as_deref(),
        Some(
            "f5c384aebb579217a2c66b17ed0f28e6a9b8d639041acd7b4721cec004f7275494ba94bb5cdfdb3055ee051762b1f75d"
        )
    );
    let named = |n: &str| {
        o.other
            .iter()
            .find(|x| x.name() == Some(n))
            .map(|x| hex::encode(&x.value))
    };
    assert_eq!(named("board_id").as_deref(), Some("b1030000"));
    assert_eq!(named("gpu_info").as_deref(), Some("8001000000000000"));
    assert_eq!(named("cpr_info").as_deref(), Some("00c00100"));
    assert_eq!(named("project_sku_mod").as_deref(), Some("0000"));
    assert_eq!(named("nvdec0_status").as_deref(), Some("55")); // "U" in the claims

    // every measurement and count of the claims Trustee extracts from this report
    let claims: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(format!(
            "{}/../../shared/fixtures/evidence/nvidia/hopperAttestationReport-claims.txt",
            env!("CARGO_MANIFEST_DIR")
        ))
        .unwrap(),
    )
    .unwrap();
    let want = claims["measurements"].as_object().unwrap();
    assert_eq!(report.measurements.len(), want.len());
    for (index, value) in want {
        let index: u8 = index.parse().unwrap();
        assert_eq!(
            report.measurement(index).map(hex::encode).as_deref(),
            value.as_str(),
            "measurement {index}"
        );
    }
    let counts = o.measurement_count.as_ref().unwrap();
    for (index, count) in claims["config"]["measurement_count"].as_object().unwrap() {
        let i: usize = index.parse().unwrap();
        assert_eq!(u64::from(counts[i - 1]), count.as_u64().unwrap());
    }
    assert_eq!(report.signed_bytes().len(), 4117 - SIGNATURE_LEN);
}

#[test]
fn coco_report_has_one_unsigned_trailing_byte() {
    let bytes = fixture_hex(COCO_REPORT);
    let report = parse_report(&bytes).unwrap();
    assert_eq!(report.trailing, 1);
    assert_eq!(report.opaque.driver_version.as_deref(), Some("580.95.05"));
    assert_eq!(report.signed_bytes().len(), bytes.len() - 1 - SIGNATURE_LEN);
    // the KBS nonce binding: the first 32 bytes of the device report data
    assert_eq!(
        hex::encode(report.request_nonce),
        "87d8e24ab336adafe228d49e83d745f6dba4ae505372b6a5704820856b343fec"
    );
    let names: Vec<_> = report
        .opaque
        .other
        .iter()
        .filter_map(|x| x.name())
        .collect();
    assert!(names.contains(&"opaque_data_version"), "{names:?}");
    assert!(names.contains(&"feature_flag"), "{names:?}");
}

#[test]
fn explanation_shows_versions_and_measurements() {
    let text = parse_report(&fixture_hex(REPORT)).unwrap().to_string();
    for want in [
        "931d8dd0add203ac3d8b4fbde75e115278eefcdceac5b87671a748f32364dfcb",
        "550.90.07",
        "96.00.9f.00.01",
        "f5c384aebb579217",
        "measurement 64",
        "board_id",
        "55 (disabled)",
        "ECDSA P-384",
    ] {
        assert!(text.contains(want), "{want} missing from\n{text}");
    }
}
