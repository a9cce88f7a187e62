#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use super::*;
use crate::reference::Hex;

fn fixture(rel: &str) -> Vec<u8> {
    let path = format!(
        "{}/../../../shared/fixtures/evidence/{rel}",
        env!("CARGO_MANIFEST_DIR")
    );
    std::fs::read(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// Inside the first collateral's window (2025-06-19..2025-07-19): 2025-06-20T00:00:00Z.
const AS_OF: u64 = 1_750_377_600;
/// Inside the outdated quote's collateral window (2026-02-18..2026-03-20): 2026-02-20.
const AS_OF_OUTDATED: u64 = 1_771_545_600;
/// v4 quote: a 48-byte header, then the TD report: TDATTRIBUTES at 120, MRTD at 136,
/// MRCONFIGID at 184, RTMR0 at 328, REPORTDATA at 520.
const BODY: usize = 48;

fn quote() -> Vec<u8> {
    fixture("tdx-dcap/tdx_quote")
}

fn collateral() -> Collateral {
    Collateral::from_json(&fixture("tdx-dcap/tdx_quote_collateral.json")).unwrap()
}

fn at(at: u64) -> Options {
    Options {
        at,
        insecure: false,
    }
}

fn field<const N: usize>(q: &[u8], off: usize) -> [u8; N] {
    q[BODY + off..BODY + off + N].try_into().unwrap()
}

/// Reference values pinning the fixture's own registers (read at the spec's offsets, not
/// through the code under test).
fn pinned(q: &[u8]) -> TdxReference {
    let h = |off| Some(vec![Hex(field::<48>(q, off))]);
    TdxReference {
        mrtd: h(136),
        mrconfigid: h(184),
        rtmr0: h(328),
        rtmr1: h(376),
        rtmr2: h(424),
        rtmr3: h(472),
        ..TdxReference::default()
    }
}

fn report_data(q: &[u8]) -> [u8; 64] {
    field(q, 520)
}

#[test]
fn the_real_quote_verifies_as_of_a_time_inside_its_collateral() {
    let q = quote();
    let v = verify(
        &q,
        Some(&collateral()),
        &pinned(&q),
        &report_data(&q),
        &at(AS_OF),
    )
    .unwrap();
    assert_eq!(v.tee, "tdx");
    assert!(v.skipped.is_empty());
    assert_eq!(v.report_data, report_data(&q));
    let all = v.checked.join("\n");
    for what in [
        "Intel's SGX root CA",
        "UpToDate",
        "DEBUG",
        "tdx.mrtd",
        "tdx.rtmr3",
        "tdx.mrconfigid",
        "report data",
    ] {
        assert!(all.contains(what), "{what} missing from {all}");
    }
}

#[test]
fn stale_collateral_is_refused_today() {
    let q = quote();
    // The wall clock: the collateral expired in July 2025.
    let e = verify(
        &q,
        Some(&collateral()),
        &pinned(&q),
        &report_data(&q),
        &Options::now(),
    )
    .unwrap_err();
    assert!(
        matches!(
            e,
            TdxError::StaleCollateral {
                what: "TCB info",
                ..
            }
        ),
        "{e}"
    );
    // Before it was issued, too.
    let e = verify(
        &q,
        Some(&collateral()),
        &pinned(&q),
        &report_data(&q),
        &at(1_700_000_000),
    )
    .unwrap_err();
    assert!(matches!(e, TdxError::StaleCollateral { .. }), "{e}");
    assert!(e.to_string().contains("2025-06-19T10:16:03Z"), "{e}");
}

#[test]
fn every_signed_field_altered_breaks_the_signature() {
    let q = quote();
    // MRTD, DEBUG set, report data binding another key, RTMR3: the quote signature fails.
    for (off, bit) in [(136, 0x01), (120, 0x01), (520, 0x80), (472, 0x10)] {
        let mut forged = q.clone();
        forged[BODY + off] ^= bit;
        let mut r = pinned(&forged);
        r.unpinned.insert("mrtd".into());
        let e = verify(
            &forged,
            Some(&collateral()),
            &r,
            &report_data(&forged),
            &at(AS_OF),
        )
        .unwrap_err();
        assert!(matches!(e, TdxError::Chain(_)), "offset {off}: {e}");
    }
    // A bit of the QE report (after the body, the signature and the attestation key).
    let mut forged = q.clone();
    let qe_report = BODY + 584 + 4 + 64 + 64 + 6;
    forged[qe_report + 10] ^= 1;
    let e = verify(
        &forged,
        Some(&collateral()),
        &pinned(&q),
        &report_data(&q),
        &at(AS_OF),
    )
    .unwrap_err();
    assert!(matches!(e, TdxError::Chain(_)), "{e}");
}

#[test]
fn forged_collateral_and_wrong_chains_are_refused() {
    let q = quote();
    let check = |c: Collateral| {
        let e = verify(&q, Some(&c), &pinned(&q), &report_data(&q), &at(AS_OF)).unwrap_err();
        assert!(matches!(e, TdxError::Chain(_)), "{e}");
    };
    // The TCB info edited (its signature no longer matches).
    let mut c = collateral();
    c.inner_mut().tcb_info = c
        .inner_mut()
        .tcb_info
        .replace("\"UpToDate\"", "\"UpToDatE\"");
    check(c);
    let mut c = collateral();
    c.inner_mut().tcb_info_signature[5] ^= 1;
    check(c);
    let mut c = collateral();
    c.inner_mut().qe_identity_signature[5] ^= 1;
    check(c);
    // The TCB info signed by a chain that is not Intel's: the PCK CRL issuer chain is another
    // certificate (the PCK platform CA instead of the TCB signing certificate).
    let mut c = collateral();
    c.inner_mut().tcb_info_issuer_chain = c.inner_mut().pck_crl_issuer_chain.clone();
    check(c);
    // The other platform's collateral (another FMSPC), as of a time both are valid is
    // impossible, so as of its own window: refused (chain or TCB), never accepted.
    let c = Collateral::from_json(&fixture("tdx-dcap/tdx_quote_outdated_collateral.json")).unwrap();
    let e = verify(
        &q,
        Some(&c),
        &pinned(&q),
        &report_data(&q),
        &at(AS_OF_OUTDATED),
    )
    .unwrap_err();
    assert!(matches!(e, TdxError::Chain(_)), "{e}");
}

#[test]
fn an_outdated_tcb_is_refused() {
    let q = fixture("tdx-dcap/tdx_quote_outdated");
    let c = Collateral::from_json(&fixture("tdx-dcap/tdx_quote_outdated_collateral.json")).unwrap();
    let mut r = pinned(&q);
    r.tcb_status = crate::reference::TDX_TCB_STATUSES
        .iter()
        .map(|s| s.to_string())
        .collect();
    let e = verify(&q, Some(&c), &r, &report_data(&q), &at(AS_OF_OUTDATED)).unwrap_err();
    assert!(matches!(e, TdxError::TcbNotListed(_)), "{e}");
    // An up-to-date platform is refused when the reference values want another status.
    let q = quote();
    let mut r = pinned(&q);
    r.tcb_status = vec!["SWHardeningNeeded".into()];
    let e = verify(&q, Some(&collateral()), &r, &report_data(&q), &at(AS_OF)).unwrap_err();
    match e {
        TdxError::TcbStatus { status, .. } => assert_eq!(status, "UpToDate"),
        e => panic!("{e}"),
    }
}

#[test]
fn values_the_reference_does_not_list_are_refused() {
    let q = quote();
    let c = collateral();
    // Another MRTD.
    let mut r = pinned(&q);
    r.mrtd = Some(vec![Hex([0xab; 48])]);
    let e = verify(&q, Some(&c), &r, &report_data(&q), &at(AS_OF)).unwrap_err();
    assert!(
        matches!(&e, TdxError::Value(ValueError::Mismatch { field, .. }) if field == "tdx.mrtd"),
        "{e}"
    );
    // Another RTMR2 among several accepted values of RTMR1.
    let mut r = pinned(&q);
    r.rtmr1.as_mut().unwrap().insert(0, Hex([1; 48]));
    r.rtmr2 = Some(vec![Hex([2; 48])]);
    let e = verify(&q, Some(&c), &r, &report_data(&q), &at(AS_OF)).unwrap_err();
    assert!(
        matches!(&e, TdxError::Value(ValueError::Mismatch { field, .. }) if field == "tdx.rtmr2"),
        "{e}"
    );
    // Evidence that binds another key (another expected report data).
    let mut want = report_data(&q);
    want[0] ^= 1;
    let e = verify(&q, Some(&c), &pinned(&q), &want, &at(AS_OF)).unwrap_err();
    assert!(
        matches!(e, TdxError::Value(ValueError::ReportData { .. })),
        "{e}"
    );
    // RTMR3 not pinned: refused, named; unpinned says "any" out loud; insecure skips it.
    let mut r = pinned(&q);
    r.rtmr3 = None;
    let e = verify(&q, Some(&c), &r, &report_data(&q), &at(AS_OF)).unwrap_err();
    assert!(
        matches!(&e, TdxError::Value(ValueError::NotPinned { field }) if field == "tdx.rtmr3"),
        "{e}"
    );
    let insecure = Options {
        at: AS_OF,
        insecure: true,
    };
    let v = verify(&q, Some(&c), &r, &report_data(&q), &insecure).unwrap();
    assert_eq!(v.skipped.len(), 1, "{:?}", v.skipped);
    assert!(v.skipped[0].contains("tdx.rtmr3"));
    r.unpinned.insert("rtmr3".into());
    let v = verify(&q, Some(&c), &r, &report_data(&q), &at(AS_OF)).unwrap();
    assert!(v.skipped.is_empty());
}

#[test]
fn without_collateral_only_insecure_passes_and_values_still_count() {
    let q = quote();
    let e = verify(&q, None, &pinned(&q), &report_data(&q), &at(AS_OF)).unwrap_err();
    assert!(matches!(e, TdxError::NoCollateral), "{e}");
    let insecure = Options {
        at: AS_OF,
        insecure: true,
    };
    let v = verify(&q, None, &pinned(&q), &report_data(&q), &insecure).unwrap();
    assert!(v.skipped[0].contains("signature"), "{:?}", v.skipped);
    // The review's forgery: DEBUG set, an invented MRTD. Refused even with insecure.
    let mut forged = q.clone();
    forged[BODY + 120] |= 1;
    let e = verify(&forged, None, &pinned(&q), &report_data(&q), &insecure).unwrap_err();
    assert!(matches!(e, TdxError::Debug), "{e}");
    let mut forged = q.clone();
    forged[BODY + 136..BODY + 184].copy_from_slice(&[0xab; 48]);
    let e = verify(&forged, None, &pinned(&q), &report_data(&q), &insecure).unwrap_err();
    assert!(
        matches!(e, TdxError::Value(ValueError::Mismatch { .. })),
        "{e}"
    );
}

#[test]
fn the_other_quotes_are_refused_with_this_collateral_and_judged_on_values_without() {
    // Trustee's v4 (a debug TD) and v5 quotes: their platforms are not the collateral's.
    for (name, debug) in [
        ("tdx/tdx_quote_5.dat", false),
        ("tdx/tdx_quote_4.dat", true),
    ] {
        let q = fixture(name);
        let parsed = Quote::parse(&q).unwrap();
        let td = parsed.report.as_td10().unwrap();
        let e = verify(
            &q,
            Some(&collateral()),
            &TdxReference::default(),
            &td.report_data,
            &at(AS_OF),
        )
        .unwrap_err();
        assert!(matches!(e, TdxError::Chain(_)), "{name}: {e}");
        // Without collateral (insecure), its values are still checked.
        let r = TdxReference {
            mrtd: Some(vec![Hex(td.mr_td)]),
            unpinned: ["rtmr0", "rtmr1", "rtmr2", "rtmr3", "mrconfigid"]
                .iter()
                .map(|s| s.to_string())
                .collect(),
            ..TdxReference::default()
        };
        let insecure = Options {
            at: AS_OF,
            insecure: true,
        };
        match verify(&q, None, &r, &td.report_data, &insecure) {
            Err(TdxError::Debug) if debug => {}
            Ok(v) if !debug => assert_eq!(v.skipped.len(), 1, "{name}"),
            other => panic!("{name}: {other:?}"),
        }
    }
}

#[test]
fn hostile_input_is_refused_without_panicking() {
    let q = quote();
    let c = collateral();
    let r = pinned(&q);
    // The fixture ends with 70 zero bytes after its signature data, unsigned padding that
    // dcap-qvl ignores (as Intel's QVL does): cut inside the signed part.
    let signed_end = BODY + 588 + u32::from_le_bytes(field(&q, 584)) as usize;
    assert!(verify(&q[..signed_end], Some(&c), &r, &report_data(&q), &at(AS_OF)).is_ok());
    for len in (0..signed_end).step_by(37) {
        assert!(verify(&q[..len], Some(&c), &r, &report_data(&q), &at(AS_OF)).is_err());
        let insecure = Options {
            at: AS_OF,
            insecure: true,
        };
        assert!(
            verify(&q[..len], None, &r, &report_data(&q), &insecure).is_err(),
            "{len}"
        );
    }
    // Huge declared lengths in the signature data.
    let mut big = q.clone();
    big[BODY + 584..BODY + 588].copy_from_slice(&u32::MAX.to_le_bytes());
    assert!(verify(&big, Some(&c), &r, &report_data(&q), &at(AS_OF)).is_err());
    for bad in [&b""[..], b"{}", b"[1,2]", b"\xff"] {
        assert!(matches!(
            Collateral::from_json(bad),
            Err(TdxError::Collateral(_))
        ));
    }
}

#[test]
fn a_forged_variant_of_every_tdx_fixture_is_refused_by_name() {
    // The outdated platform's quote, MRTD altered: its signature fails before its TCB is read.
    let mut q = fixture("tdx-dcap/tdx_quote_outdated");
    let c = Collateral::from_json(&fixture("tdx-dcap/tdx_quote_outdated_collateral.json")).unwrap();
    q[BODY + 136] ^= 1;
    let e = verify(
        &q,
        Some(&c),
        &pinned(&q),
        &report_data(&q),
        &at(AS_OF_OUTDATED),
    )
    .unwrap_err();
    assert!(matches!(e, TdxError::Chain(_)), "{e}");
    // Trustee's v4 and v5 quotes without collateral (insecure): DEBUG set, MRTD altered,
    // report data binding another key, each refused by name. (v5 bodies start 6 bytes later.)
    let insecure = Options {
        at: AS_OF,
        insecure: true,
    };
    for (name, body) in [
        ("tdx/tdx_quote_4.dat", BODY),
        ("tdx/tdx_quote_5.dat", BODY + 6),
    ] {
        let q = fixture(name);
        let td = *Quote::parse(&q).unwrap().report.as_td10().unwrap();
        let r = TdxReference {
            mrtd: Some(vec![Hex(td.mr_td)]),
            unpinned: ["rtmr0", "rtmr1", "rtmr2", "rtmr3", "mrconfigid"]
                .iter()
                .map(|s| s.to_string())
                .collect(),
            ..TdxReference::default()
        };
        let mut clean = q.clone();
        clean[body + 120] &= !1;
        verify(&clean, None, &r, &td.report_data, &insecure).unwrap();
        let mut debug = clean.clone();
        debug[body + 120] |= 1;
        let e = verify(&debug, None, &r, &td.report_data, &insecure).unwrap_err();
        assert!(matches!(e, TdxError::Debug), "{name}: {e}");
        let mut mrtd = clean.clone();
        mrtd[body + 136] ^= 1;
        let e = verify(&mrtd, None, &r, &td.report_data, &insecure).unwrap_err();
        assert!(
            matches!(&e, TdxError::Value(ValueError::Mismatch { field, .. }) if field == "tdx.mrtd"),
            "{name}: {e}"
        );
        let mut other_key = td.report_data;
        other_key[63] ^= 1;
        let e = verify(&clean, None, &r, &other_key, &insecure).unwrap_err();
        assert!(
            matches!(e, TdxError::Value(ValueError::ReportData { .. })),
            "{name}: {e}"
        );
    }
}

#[test]
fn a_collateral_directory_yields_the_quotes_platform_and_the_fresh_one() {
    // A cache holding both fixtures' collateral (FMSPCs B0C06F000000 and 90C06F000000), an
    // older copy of the first (its window moved back a month, so stale at AS_OF), and junk.
    let dir = tempfile::tempdir().unwrap();
    let src = |n: &str| fixture(&format!("tdx-dcap/{n}"));
    std::fs::write(dir.path().join("a.json"), src("tdx_quote_collateral.json")).unwrap();
    std::fs::write(
        dir.path().join("b.json"),
        src("tdx_quote_outdated_collateral.json"),
    )
    .unwrap();
    let mut old: serde_json::Value =
        serde_json::from_slice(&src("tdx_quote_collateral.json")).unwrap();
    let info = old["tcb_info"]
        .as_str()
        .unwrap()
        .replace("2025-06-19T", "2025-05-19T")
        .replace("2025-07-19T", "2025-06-18T");
    old["tcb_info"] = info.into();
    std::fs::write(dir.path().join("c.json"), old.to_string()).unwrap();
    std::fs::write(dir.path().join("d.json"), "not json").unwrap();
    let q = quote();
    let chosen = Collateral::for_quote(dir.path(), &q, AS_OF).unwrap();
    assert_eq!(chosen, collateral());
    verify(&q, Some(&chosen), &pinned(&q), &report_data(&q), &at(AS_OF)).unwrap();
    // Today nothing for this platform is fresh: the latest is chosen, and refused as stale.
    let now = Options::now().at;
    let chosen = Collateral::for_quote(dir.path(), &q, now).unwrap();
    assert_eq!(chosen, collateral());
    let e = verify(&q, Some(&chosen), &pinned(&q), &report_data(&q), &at(now))
        .unwrap_err()
        .to_string();
    assert!(e.contains("stale"), "{e}");
    // A cache without this platform's collateral says which platform it needed.
    std::fs::remove_file(dir.path().join("a.json")).unwrap();
    std::fs::remove_file(dir.path().join("c.json")).unwrap();
    let e = Collateral::for_quote(dir.path(), &q, AS_OF)
        .unwrap_err()
        .to_string();
    assert!(e.contains("FMSPC B0C06F000000"), "{e}");
    // A file is read as before.
    let f = dir.path().join("b.json");
    assert!(Collateral::for_quote(&f, &q, AS_OF).is_ok());
}
