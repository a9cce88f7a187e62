//! Robustness of every parser against truncated and random input: each must answer with an
//! error, never a panic.

use base64::Engine;
use proptest::prelude::*;

use crate::explain::*;

fn fixture(name: &str) -> Vec<u8> {
    std::fs::read(format!(
        "{}/../../shared/fixtures/evidence/{name}",
        env!("CARGO_MANIFEST_DIR")
    ))
    .unwrap()
}

/// Cut points spread over the input, never 0 or the full length.
fn cuts(len: usize) -> Vec<usize> {
    let mut c: Vec<usize> = [
        1, 2, 4, 7, 31, 47, 48, 100, 632, 700, 1000, 1183, 2048, 4000,
    ]
    .into_iter()
    .chain((1..10).map(|i| len * i / 10))
    .chain([len - 1])
    .filter(|&n| n > 0 && n < len)
    .collect();
    c.sort_unstable();
    c.dedup();
    c
}

#[test]
fn truncated_snp_reports_are_errors() {
    for name in ["snp/test-report.bin", "snp/test-vlek-report.bin"] {
        let full = fixture(name);
        for n in cuts(full.len()) {
            assert!(
                matches!(
                    parse_snp_report(&full[..n]),
                    Err(ExplainError::Truncated(_))
                ),
                "{name} cut at {n}"
            );
            assert!(explain(&full[..n]).is_err(), "{name} cut at {n}");
        }
    }
}

#[test]
fn truncated_tdx_quotes_are_errors() {
    for name in ["tdx/tdx_quote_4.dat", "tdx/tdx_quote_5.dat"] {
        let full = fixture(name);
        for n in cuts(full.len()) {
            assert!(parse_tdx_quote(&full[..n]).is_err(), "{name} cut at {n}");
            assert!(explain(&full[..n]).is_err(), "{name} cut at {n}");
        }
    }
}

#[test]
fn event_logs_cut_inside_an_event_are_errors() {
    let full = fixture("ccel/CCEL_data");
    let log = parse_ccel_log(&full).unwrap();
    // event boundaries: where a cut would leave a complete (shorter) log
    let header = 32 + u32::from_le_bytes([full[28], full[29], full[30], full[31]]) as usize;
    let mut boundaries = vec![header];
    let mut at = header;
    for e in &log.events {
        let digests: usize = e.digests.iter().map(|(_, d)| 2 + d.len()).sum();
        at += 12 + digests + 4 + e.data.len();
        boundaries.push(at);
    }
    let end = at;
    for n in cuts(end).into_iter().filter(|n| !boundaries.contains(n)) {
        assert!(parse_ccel_log(&full[..n]).is_err(), "CCEL cut at {n}");
        assert!(explain(&full[..n]).is_err(), "CCEL cut at {n}");
    }
}

#[test]
fn truncated_azure_evidence_is_an_error() {
    for name in [
        "az-snp-vtpm/evidence-v2.json",
        "az-tdx-vtpm/evidence-v1.json",
    ] {
        let v: serde_json::Value = serde_json::from_slice(&fixture(name)).unwrap();
        for (field, decode) in [("hcl_report", true), ("td_quote", true), ("vcek", false)] {
            let Some(s) = v[field].as_str() else { continue };
            if !decode {
                continue;
            }
            let bytes = azure_b64(s);
            // the HCL report is padded after its declared size; TD quotes after the signature
            let end = if field == "hcl_report" {
                u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]) as usize
            } else {
                bytes.len() - parse_tdx_quote(&bytes).unwrap().trailing_len
            };
            for n in cuts(end) {
                let mut cut = v.clone();
                cut[field] = serde_json::Value::String(
                    base64::engine::general_purpose::URL_SAFE.encode(&bytes[..n]),
                );
                assert!(explain_json(&cut).is_err(), "{name} {field} cut at {n}");
            }
        }
        let message = hex::decode(v["tpm_quote"]["message"].as_str().unwrap()).unwrap();
        for n in cuts(message.len()) {
            let mut cut = v.clone();
            cut["tpm_quote"]["message"] = serde_json::Value::String(hex::encode(&message[..n]));
            assert!(explain_json(&cut).is_err(), "{name} message cut at {n}");
        }
        let text = fixture(name);
        for n in cuts(text.trim_ascii_end().len()) {
            assert!(explain(&text[..n]).is_err(), "{name} text cut at {n}");
        }
    }
}

fn azure_b64(s: &str) -> Vec<u8> {
    base64::engine::general_purpose::URL_SAFE.decode(s).unwrap()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..2048)) {
        let _ = explain(&bytes);
        let _ = parse_snp_report(&bytes);
        let _ = parse_tdx_quote(&bytes);
        let _ = parse_ccel_log(&bytes);
    }

    #[test]
    fn random_snp_sized_reports_never_panic(bytes in proptest::collection::vec(any::<u8>(), SNP_REPORT_LEN)) {
        let _ = parse_snp_report(&bytes).map(|r| r.to_string());
    }

    #[test]
    fn corrupted_fixtures_never_panic(
        which in 0usize..4,
        flips in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..16),
    ) {
        let name = ["snp/test-report.bin", "tdx/tdx_quote_4.dat", "tdx/tdx_quote_5.dat", "ccel/CCEL_data"][which];
        let mut bytes = fixture(name);
        if which == 3 {
            bytes.truncate(6000);
        }
        for (i, v) in flips {
            let i = i.index(bytes.len());
            bytes[i] = v;
        }
        if let Ok(e) = explain(&bytes) {
            let _ = e.to_string();
        }
    }
}
