//! The GPU report parser and signature against real reports, flipped bits, truncation, lying
//! sizes and random bytes: wrong input is a typed error, never a panic or a passing signature.

use proptest::prelude::*;

use super::{COCO_REPORT, REPORT, fixture_hex};
use crate::explain::{ExplainError, explain};
use crate::nvidia::report::*;

fn chain(name: &str) -> Vec<GpuCert> {
    parse_cert_chain_pem(
        &std::fs::read_to_string(format!(
            "{}/../../shared/fixtures/evidence/nvidia/{name}",
            env!("CARGO_MANIFEST_DIR")
        ))
        .unwrap(),
    )
    .unwrap()
}

const CHAIN: &str = "hopper_cert_chain_case1.txt";
const COCO_CHAIN: &str = "hopper_coco_certs1.txt";

/// Offset of the response's MeasurementRecordLength (request 37 + 5).
const RECORD_LEN_AT: usize = 42;

#[test]
fn each_report_verifies_with_its_own_leaf_and_not_the_other() {
    let report = parse_report(&fixture_hex(REPORT)).unwrap();
    let coco = parse_report(&fixture_hex(COCO_REPORT)).unwrap();
    let leaf = chain(CHAIN).remove(0);
    let coco_leaf = chain(COCO_CHAIN).remove(0);
    report.verify_signature(leaf.der()).unwrap();
    coco.verify_signature(coco_leaf.der()).unwrap();
    assert_eq!(
        report.verify_signature(coco_leaf.der()),
        Err(VerifyError::Mismatch)
    );
    assert_eq!(
        coco.verify_signature(leaf.der()),
        Err(VerifyError::Mismatch)
    );
    // the FWID of each report is the one in its own leaf certificate
    assert_eq!(leaf.fwid(), report.opaque.fwid);
    assert_eq!(coco_leaf.fwid(), coco.opaque.fwid);
    // an issuer (not the leaf) did not sign the report either
    assert_eq!(
        report.verify_signature(chain(CHAIN)[1].der()),
        Err(VerifyError::Mismatch)
    );
    assert!(matches!(
        report.verify_signature(b"not DER"),
        Err(VerifyError::Certificate(_))
    ));
}

#[test]
fn a_flipped_bit_anywhere_in_the_signed_bytes_fails() {
    let bytes = fixture_hex(REPORT);
    let leaf = chain(CHAIN).remove(0);
    let signed = parse_report(&bytes).unwrap().signed_bytes().len();
    // every 29th byte (a different bit each time: P-384 checks are slow in debug builds), the
    // request nonce, slot id, block count, GPU nonce, opaque length, the last signed byte, and
    // the signature itself
    let gpu_nonce = RECORD_LEN_AT + 3 + 3520;
    let offsets = (0..signed).step_by(29).chain([
        4,
        35,
        36,
        RECORD_LEN_AT - 1,
        gpu_nonce,
        gpu_nonce + NONCE_LEN,
        signed - 1,
        signed,
        bytes.len() - 1,
    ]);
    for at in offsets {
        let mut flipped = bytes.clone();
        flipped[at] ^= 1 << (at % 8);
        match parse_report(&flipped) {
            // a flip in a size or type field may make the report unreadable: also a refusal
            Err(_) => {}
            Ok(r) => assert!(
                r.verify_signature(leaf.der()).is_err(),
                "bit flipped at {at} still verifies"
            ),
        }
    }
    // the unsigned trailing byte of the coco report changes nothing
    let mut coco = fixture_hex(COCO_REPORT);
    *coco.last_mut().unwrap() ^= 0xff;
    let r = parse_report(&coco).unwrap();
    r.verify_signature(chain(COCO_CHAIN)[0].der()).unwrap();
}

#[test]
fn truncation_anywhere_is_a_typed_error() {
    for name in [REPORT, COCO_REPORT] {
        let full = fixture_hex(name);
        let end = full.len() - parse_report(&full).unwrap().trailing;
        for n in 0..end {
            assert!(
                matches!(parse_report(&full[..n]), Err(ReportError::Truncated(_))),
                "{name} cut at {n}: {:?}",
                parse_report(&full[..n]).err()
            );
            assert!(explain(&full[..n]).is_err(), "{name} cut at {n}");
        }
        // hex text cut anywhere is an error too
        let text = hex::encode(&full[..end]);
        for n in (0..text.len()).step_by(13) {
            assert!(
                explain(&text.as_bytes()[..n]).is_err(),
                "{name} hex cut at {n}"
            );
        }
    }
}

#[test]
fn declared_sizes_beyond_the_buffer_are_refused() {
    let full = fixture_hex(REPORT);
    let set = |at: usize, value: &[u8]| {
        let mut b = full.clone();
        b[at..at + value.len()].copy_from_slice(value);
        parse_report(&b)
    };
    // the measurement record claims 16 MiB
    assert!(matches!(
        set(RECORD_LEN_AT, &[0xff, 0xff, 0xff]),
        Err(ReportError::Truncated(_))
    ));
    // the opaque data claims 64 KiB
    let opaque_len_at = RECORD_LEN_AT + 3 + 3520 + NONCE_LEN;
    assert_eq!(&full[opaque_len_at..opaque_len_at + 2], &[0xa6, 0x01]); // 422
    assert!(matches!(
        set(opaque_len_at, &[0xff, 0xff]),
        Err(ReportError::Truncated(_))
    ));
    // the first block claims more than the record holds
    let block = RECORD_LEN_AT + 3;
    assert!(matches!(
        set(block + 2, &[0xff, 0xff]),
        Err(ReportError::Truncated(_))
    ));
    // the first block's DMTF value claims more than the block holds
    assert!(matches!(
        set(block + 5, &[0x31, 0x00]),
        Err(ReportError::Truncated(_))
    ));
    // ... or less: bytes of the block left over
    assert!(matches!(
        set(block + 5, &[0x2f, 0x00]),
        Err(ReportError::Invalid { .. })
    ));
    // more blocks declared than the record holds, or fewer
    assert!(matches!(
        set(RECORD_LEN_AT - 1, &[65]),
        Err(ReportError::Truncated(_))
    ));
    assert!(matches!(
        set(RECORD_LEN_AT - 1, &[63]),
        Err(ReportError::Invalid { .. })
    ));
    // the first opaque TLV claims more than the opaque data holds
    assert!(matches!(
        set(opaque_len_at + 4, &[0xff, 0x01]),
        Err(ReportError::Truncated(_))
    ));
    // versions and codes other than SPDM 1.1 GET_MEASUREMENTS / MEASUREMENTS
    for (at, value) in [(0, 0x12), (1, 0xE1), (37, 0x10), (38, 0x7f), (2, 0x00)] {
        assert!(
            matches!(set(at, &[value]), Err(ReportError::Invalid { .. })),
            "byte {at} = {value:#x}"
        );
    }
    // the measurement specification is not DMTF; the same index twice
    assert!(matches!(
        set(block + 1, &[2]),
        Err(ReportError::Invalid { .. })
    ));
    let second = block + 4 + 0x33;
    assert_eq!(full[second], 2);
    assert!(matches!(
        set(second, &[1]),
        Err(ReportError::Invalid { .. })
    ));
    // larger than NVML's buffer
    let mut big = full.clone();
    big.resize(MAX_REPORT_LEN + 1, 0);
    assert!(matches!(
        parse_report(&big),
        Err(ReportError::Invalid { .. })
    ));
    assert!(matches!(
        explain(&big),
        Err(ExplainError::Gpu(ReportError::Invalid { .. }))
    ));
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..5000)) {
        let _ = parse_report(&bytes).map(|r| r.to_string());
        let _ = explain(&bytes);
    }

    #[test]
    fn random_reports_with_a_valid_header_never_panic(
        tail in proptest::collection::vec(any::<u8>(), 0..5000),
    ) {
        let mut bytes = fixture_hex(REPORT)[..RECORD_LEN_AT - 1].to_vec();
        bytes.extend(tail);
        if let Ok(r) = parse_report(&bytes) {
            let _ = r.to_string();
            prop_assert!(r.verify_signature(chain(CHAIN)[0].der()).is_err());
        }
    }

    #[test]
    fn corrupted_reports_never_panic(
        flips in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..16),
    ) {
        let mut bytes = fixture_hex(REPORT);
        for (i, v) in flips {
            let i = i.index(bytes.len());
            bytes[i] = v;
        }
        if let Ok(r) = parse_report(&bytes) {
            let _ = r.to_string();
        }
    }

    #[test]
    fn random_pem_never_panics(text in "(-----BEGIN CERTIFICATE-----|-----END CERTIFICATE-----|[A-Za-z0-9+/=\n]{0,64}){0,8}") {
        if let Ok(c) = parse_cert_chain_pem(&text) {
            let _ = check_chain(&c);
        }
    }
}
