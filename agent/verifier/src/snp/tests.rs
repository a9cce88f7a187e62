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

/// 2024-12-24: inside every fixture certificate's validity (the VLEK's ends 2025-12-10).
const AS_OF: u64 = 1_735_000_000;

fn at(at: u64) -> Options {
    Options {
        at,
        insecure: false,
    }
}

fn vcek_report() -> Vec<u8> {
    fixture("snp/test-report.bin")
}

fn vlek_report() -> Vec<u8> {
    fixture("snp/test-vlek-report.bin")
}

fn vcek() -> AmdCerts {
    AmdCerts::from_bytes(&fixture("snp/test-vcek.der")).unwrap()
}

fn vlek() -> AmdCerts {
    AmdCerts::from_bytes(&fixture("snp/test-vlek.der")).unwrap()
}

/// Reference values pinning the report's own values, read at the ABI's offsets (not through
/// the code under test); SMT and VMPL as the report has them.
fn pinned(raw: &[u8]) -> SnpReference {
    SnpReference {
        measurement: Some(vec![Hex(raw[0x90..0xc0].try_into().unwrap())]),
        host_data: Some(vec![Hex(raw[0xc0..0xe0].try_into().unwrap())]),
        min_tcb: Some(SnpTcb::default()),
        allow_smt: true,
        vmpl: u32::from_le_bytes(raw[0x30..0x34].try_into().unwrap()),
        ..SnpReference::default()
    }
}

fn report_data(raw: &[u8]) -> [u8; 64] {
    raw[0x50..0x90].try_into().unwrap()
}

#[test]
fn the_real_vcek_and_vlek_reports_verify() {
    for (raw, certs, signer) in [
        (vcek_report(), vcek(), "VCEK"),
        (vlek_report(), vlek(), "VLEK"),
    ] {
        let v = verify(
            &raw,
            Some(&certs),
            &pinned(&raw),
            &report_data(&raw),
            &at(AS_OF),
        )
        .unwrap();
        assert_eq!(v.tee, "snp");
        assert!(v.skipped.is_empty());
        let all = v.checked.join("\n");
        for what in [
            "ARK-Milan (pinned)",
            &format!("signed by the {signer}"),
            "TCB is the one",
            "snp.measurement matches",
            "snp.host_data matches",
            "report data",
        ] {
            assert!(all.contains(what), "{signer}: {what} missing from {all}");
        }
    }
    assert!(
        verify(
            &vcek_report(),
            Some(&vcek()),
            &pinned(&vcek_report()),
            &report_data(&vcek_report()),
            &at(AS_OF)
        )
        .unwrap()
        .checked
        .iter()
        .any(|c| c.contains("CHIP_ID"))
    );
}

#[test]
fn the_chain_given_as_kds_serves_it_verifies_and_a_broken_one_does_not() {
    let raw = vcek_report();
    // KDS's cert_chain: ASK then ARK, PEM, beside the VCEK (DER).
    let mut certs = vcek();
    certs.add(sev::certs::snp::builtin::milan::ASK).unwrap();
    certs.add(sev::certs::snp::builtin::milan::ARK).unwrap();
    verify(
        &raw,
        Some(&certs),
        &pinned(&raw),
        &report_data(&raw),
        &at(AS_OF),
    )
    .unwrap();
    // An ASK whose signature is altered: the ARK does not sign it.
    let mut ask = pem(sev::certs::snp::builtin::milan::ASK).unwrap();
    let mut sig = ask.signature.raw_bytes().to_vec();
    sig[100] ^= 1;
    ask.signature = x509_cert::der::asn1::BitString::from_bytes(&sig).unwrap();
    let mut certs = vcek();
    certs.certs.push(ask);
    let e = verify(
        &raw,
        Some(&certs),
        &pinned(&raw),
        &report_data(&raw),
        &at(AS_OF),
    )
    .unwrap_err();
    assert!(
        matches!(&e, SnpError::Chain { link, .. } if link == "ARK-Milan → SEV-Milan"),
        "{e}"
    );
    // A VCEK whose contents are altered (its TCB extension): the ASK does not sign it.
    let mut der = fixture("snp/test-vcek.der");
    let at_spl = der
        .windows(3)
        .position(|w| w == [0x02, 0x01, 0x73])
        .unwrap();
    der[at_spl + 2] = 0x74;
    let e = verify(
        &raw,
        Some(&AmdCerts::from_bytes(&der).unwrap()),
        &pinned(&raw),
        &report_data(&raw),
        &at(AS_OF),
    )
    .unwrap_err();
    assert!(
        matches!(&e, SnpError::Chain { link, .. } if link == "SEV-Milan → SEV-VCEK"),
        "{e}"
    );
    // Another product's ARK given as Milan's is not the pinned one.
    let mut certs = vcek();
    let mut ark = pem(sev::certs::snp::builtin::genoa::ARK).unwrap();
    ark.tbs_certificate.subject = pem(sev::certs::snp::builtin::milan::ARK)
        .unwrap()
        .tbs_certificate
        .subject;
    certs.certs.push(ark);
    let e = verify(
        &raw,
        Some(&certs),
        &pinned(&raw),
        &report_data(&raw),
        &at(AS_OF),
    )
    .unwrap_err();
    assert!(matches!(e, SnpError::ArkNotPinned(_)), "{e}");
}

#[test]
fn the_wrong_certificate_is_refused() {
    // Each report with the other's key.
    let raw = vcek_report();
    let e = verify(
        &raw,
        Some(&vlek()),
        &pinned(&raw),
        &report_data(&raw),
        &at(AS_OF),
    )
    .unwrap_err();
    assert!(matches!(e, SnpError::NoVek { signer: "VCEK" }), "{e}");
    let raw = vlek_report();
    let e = verify(
        &raw,
        Some(&vcek()),
        &pinned(&raw),
        &report_data(&raw),
        &at(AS_OF),
    )
    .unwrap_err();
    assert!(matches!(e, SnpError::NoVek { signer: "VLEK" }), "{e}");
    // A report whose key info says VLEK, with the VCEK's bytes around it: the key info is
    // signed, so the VLEK (another chip's key) does not verify it either.
    let mut raw = vcek_report();
    raw[0x48] = 1 << 2;
    let e = verify(
        &raw,
        Some(&vlek()),
        &pinned(&raw),
        &report_data(&raw),
        &at(AS_OF),
    )
    .unwrap_err();
    assert!(
        matches!(e, SnpError::Signature { signer: "VLEK", .. }),
        "{e}"
    );
}

#[test]
fn every_signed_field_altered_breaks_the_signature() {
    let raw = vcek_report();
    // MEASUREMENT, the DEBUG policy bit, REPORT_DATA binding another key, HOST_DATA,
    // REPORTED_TCB, CHIP_ID, the signature itself.
    for (off, bit) in [
        (0x90, 1),
        (0x0a, 0x08),
        (0x50, 0x80),
        (0xc0, 1),
        (0x180, 1),
        (0x1a0, 1),
        (0x2a0, 1),
    ] {
        let mut forged = raw.clone();
        forged[off] ^= bit;
        let mut r = pinned(&forged);
        r.unpinned.insert("measurement".into());
        let e = verify(
            &forged,
            Some(&vcek()),
            &r,
            &report_data(&forged),
            &at(AS_OF),
        )
        .unwrap_err();
        assert!(
            matches!(e, SnpError::Signature { .. } | SnpError::Report(_)),
            "offset {off:#x}: {e}"
        );
    }
}

#[test]
fn expired_certificates_are_refused() {
    // The VLEK expired on 2025-12-10.
    let raw = vlek_report();
    let e = verify(
        &raw,
        Some(&vlek()),
        &pinned(&raw),
        &report_data(&raw),
        &Options::now(),
    )
    .unwrap_err();
    assert!(
        matches!(&e, SnpError::CertificateExpired { which, .. } if which == "VLEK"),
        "{e}"
    );
    // The VCEK was issued on 2023-01-24.
    let raw = vcek_report();
    let e = verify(
        &raw,
        Some(&vcek()),
        &pinned(&raw),
        &report_data(&raw),
        &at(1_600_000_000),
    )
    .unwrap_err();
    assert!(matches!(e, SnpError::CertificateExpired { .. }), "{e}");
}

#[test]
fn the_tcb_is_judged_against_the_certificate_and_the_reference() {
    let raw = vcek_report();
    let r = AttestationReport::from_bytes(&raw).unwrap();
    // An outdated TCB: below the reference's minimum microcode.
    let mut reference = pinned(&raw);
    reference.min_tcb = Some(SnpTcb {
        microcode: r.reported_tcb.microcode + 1,
        ..SnpTcb::default()
    });
    let e = verify(
        &raw,
        Some(&vcek()),
        &reference,
        &report_data(&raw),
        &at(AS_OF),
    )
    .unwrap_err();
    assert!(
        matches!(
            e,
            SnpError::TcbTooLow {
                component: "microcode",
                ..
            }
        ),
        "{e}"
    );
    // A certificate issued for another TCB (the VLEK's, for this report's TCB).
    let vlek = &vlek().certs[0];
    let mut log = Log::new(&at(AS_OF));
    let e = check_cert_tcb(&mut log, Signer::Vlek, vlek, &r.reported_tcb).unwrap_err();
    assert!(
        matches!(e, SnpError::TcbMismatch { signer: "VLEK", .. }),
        "{e}"
    );
    // min_tcb absent: not pinned, refused by name.
    let mut reference = pinned(&raw);
    reference.min_tcb = None;
    let e = verify(
        &raw,
        Some(&vcek()),
        &reference,
        &report_data(&raw),
        &at(AS_OF),
    )
    .unwrap_err();
    assert!(
        matches!(&e, SnpError::Value(ValueError::NotPinned { field }) if field == "snp.min_tcb"),
        "{e}"
    );
}

#[test]
fn policy_and_values_the_reference_does_not_accept_are_refused() {
    let raw = vcek_report();
    let certs = vcek();
    let check = |r: &SnpReference, want: &[u8; 64]| {
        verify(&raw, Some(&certs), r, want, &at(AS_OF)).unwrap_err()
    };
    // The report's guest policy allows SMT.
    let e = check(
        &SnpReference {
            allow_smt: false,
            ..pinned(&raw)
        },
        &report_data(&raw),
    );
    assert!(matches!(e, SnpError::Smt), "{e}");
    let e = check(
        &SnpReference {
            vmpl: 2,
            ..pinned(&raw)
        },
        &report_data(&raw),
    );
    assert!(matches!(e, SnpError::Vmpl { got: 0, want: 2 }), "{e}");
    let e = check(
        &SnpReference {
            measurement: Some(vec![Hex([7; 48])]),
            ..pinned(&raw)
        },
        &report_data(&raw),
    );
    assert!(
        matches!(&e, SnpError::Value(ValueError::Mismatch { field, .. }) if field == "snp.measurement"),
        "{e}"
    );
    let e = check(
        &SnpReference {
            host_data: Some(vec![Hex([7; 32])]),
            ..pinned(&raw)
        },
        &report_data(&raw),
    );
    assert!(
        matches!(&e, SnpError::Value(ValueError::Mismatch { field, .. }) if field == "snp.host_data"),
        "{e}"
    );
    let e = check(
        &SnpReference {
            measurement: None,
            ..pinned(&raw)
        },
        &report_data(&raw),
    );
    assert!(
        matches!(&e, SnpError::Value(ValueError::NotPinned { field }) if field == "snp.measurement"),
        "{e}"
    );
    // Evidence that binds another key.
    let e = check(&pinned(&raw), &[0; 64]);
    assert!(
        matches!(e, SnpError::Value(ValueError::ReportData { .. })),
        "{e}"
    );
}

#[test]
fn without_certificates_only_insecure_passes_and_policy_still_counts() {
    let raw = vcek_report();
    let e = verify(&raw, None, &pinned(&raw), &report_data(&raw), &at(AS_OF)).unwrap_err();
    assert!(matches!(e, SnpError::NoCertificate), "{e}");
    let insecure = Options {
        at: AS_OF,
        insecure: true,
    };
    let v = verify(&raw, None, &pinned(&raw), &report_data(&raw), &insecure).unwrap();
    assert!(v.skipped[0].contains("signature"), "{:?}", v.skipped);
    // Forged: DEBUG and migration agent allowed. Refused even with insecure.
    let mut forged = raw.clone();
    forged[0x0a] |= 0x08;
    let e = verify(&forged, None, &pinned(&raw), &report_data(&raw), &insecure).unwrap_err();
    assert!(matches!(e, SnpError::Debug), "{e}");
    let mut forged = raw.clone();
    forged[0x0a] |= 0x04;
    let e = verify(&forged, None, &pinned(&raw), &report_data(&raw), &insecure).unwrap_err();
    assert!(matches!(e, SnpError::MigrationAgent), "{e}");
}

#[test]
fn hostile_input_is_refused_without_panicking() {
    let raw = vcek_report();
    let r = pinned(&raw);
    let insecure = Options {
        at: AS_OF,
        insecure: true,
    };
    for len in [0, 1, 0x2a0, 1183, 1185, 4096] {
        let mut v = raw.clone();
        v.resize(len, 0);
        assert!(matches!(
            verify(&v, Some(&vcek()), &r, &report_data(&raw), &at(AS_OF)),
            Err(SnpError::Report(_))
        ));
        assert!(verify(&v, None, &r, &report_data(&raw), &insecure).is_err());
    }
    // A signature component wider than P-384, every byte of the report flipped in turn.
    let mut wide = raw.clone();
    wide[0x2a0 + 60] = 1;
    assert!(matches!(
        verify(&wide, Some(&vcek()), &r, &report_data(&raw), &at(AS_OF)),
        Err(SnpError::Signature { .. })
    ));
    // Every byte flipped in turn parses or is refused (the chain checks, slow in debug
    // builds, on a sample of them).
    for i in 0..raw.len() {
        let mut v = raw.clone();
        v[i] ^= 0xff;
        let _ = verify(&v, None, &r, &report_data(&raw), &insecure);
        if i % 97 == 0 {
            assert!(verify(&v, Some(&vcek()), &r, &report_data(&raw), &at(AS_OF)).is_err());
        }
    }
    for bad in [
        &b""[..],
        b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
        b"\x30\x82\xff\xff",
    ] {
        assert!(matches!(
            AmdCerts::from_bytes(bad),
            Err(SnpError::Certificate(_))
        ));
    }
    // SPL encodings.
    assert_eq!(spl(&[2, 1, 0x73]), Some(0x73));
    assert_eq!(spl(&[2, 2, 0, 0xd9]), Some(0xd9));
    for bad in [
        &[][..],
        &[2],
        &[2, 1],
        &[2, 1, 0x80],
        &[2, 2, 1, 0],
        &[4, 1, 1],
        &[2, 5, 1],
    ] {
        assert_eq!(spl(bad), None, "{bad:?}");
    }
}

#[test]
fn the_carried_asvks_chain_to_the_pinned_arks() {
    for p in Product::ALL {
        let ark = sev_cert(&pem(p.ark_pem()).unwrap()).unwrap();
        for s in [Signer::Vcek, Signer::Vlek] {
            let ca = pem(p.ca_pem(s)).unwrap();
            assert_eq!(cn(&ca.tbs_certificate.subject), s.ca_cn(p));
            (&ark, &sev_cert(&ca).unwrap()).verify().unwrap();
        }
    }
}

#[test]
fn a_directory_of_certificates_yields_the_one_issued_for_the_report() {
    let raw = vcek_report();
    // Another VCEK, for another microcode SPL (its signature no longer verifies either).
    let mut other = fixture("snp/test-vcek.der");
    let at_spl = other
        .windows(3)
        .position(|w| w == [0x02, 0x01, 0x73])
        .unwrap();
    other[at_spl + 2] = 0x74;
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("a-other-vcek.der"), &other).unwrap();
    let chain = [
        sev::certs::snp::builtin::milan::ASK,
        sev::certs::snp::builtin::milan::ARK,
    ]
    .concat();
    std::fs::write(dir.path().join("cert_chain"), chain).unwrap();
    std::fs::write(dir.path().join("vlek.der"), fixture("snp/test-vlek.der")).unwrap();
    std::fs::write(dir.path().join("vcek.der"), fixture("snp/test-vcek.der")).unwrap();
    let certs = AmdCerts::load(dir.path()).unwrap();
    assert_eq!(certs.certs.len(), 5);
    verify(
        &raw,
        Some(&certs),
        &pinned(&raw),
        &report_data(&raw),
        &at(AS_OF),
    )
    .unwrap();
    let raw_vlek = vlek_report();
    verify(
        &raw_vlek,
        Some(&certs),
        &pinned(&raw_vlek),
        &report_data(&raw_vlek),
        &at(AS_OF),
    )
    .unwrap();
    // Only the other VCEK: refused, naming the broken link.
    std::fs::remove_file(dir.path().join("vcek.der")).unwrap();
    let certs = AmdCerts::load(dir.path()).unwrap();
    let e = verify(
        &raw,
        Some(&certs),
        &pinned(&raw),
        &report_data(&raw),
        &at(AS_OF),
    )
    .unwrap_err();
    assert!(
        matches!(&e, SnpError::Chain { link, .. } if link == "SEV-Milan → SEV-VCEK"),
        "{e}"
    );
    // A file that is not a certificate is named.
    std::fs::write(dir.path().join("notes.txt"), "hello").unwrap();
    let e = AmdCerts::load(dir.path()).unwrap_err().to_string();
    assert!(e.contains("notes.txt"), "{e}");
}

#[test]
fn a_forged_vlek_report_is_refused_by_name() {
    let raw = vlek_report();
    // MEASUREMENT, REPORT_DATA, the VMPL, the policy's migration-agent bit: signed fields.
    for (off, bit) in [(0x90, 1), (0x50, 1), (0x30, 1), (0x0a, 0x04)] {
        let mut forged = raw.clone();
        forged[off] ^= bit;
        let e = verify(
            &forged,
            Some(&vlek()),
            &pinned(&raw),
            &report_data(&raw),
            &at(AS_OF),
        )
        .unwrap_err();
        assert!(
            matches!(e, SnpError::Signature { signer: "VLEK", .. }),
            "offset {off:#x}: {e}"
        );
    }
    // The VLEK's own report, judged today: its certificate has expired.
    let e = verify(
        &raw,
        Some(&vlek()),
        &pinned(&raw),
        &report_data(&raw),
        &Options::now(),
    )
    .unwrap_err();
    assert!(matches!(e, SnpError::CertificateExpired { .. }), "{e}");
}

/// AMD's real CRLs as KDS serves them (`testdata/amd/`, provenance in the README): Milan's
/// (2025-05-06..2026-05-12, nothing revoked) and Genoa's (2024-10-23..2025-11-03, revoking
/// serial 020001, Genoa's first ASK).
fn crl(name: &str) -> Vec<u8> {
    std::fs::read(format!(
        "{}/testdata/amd/{name}-vcek-crl.der",
        env!("CARGO_MANIFEST_DIR")
    ))
    .unwrap()
}

/// 2025-06-20: inside the Milan CRL's window and every fixture certificate's validity.
const IN_CRL_WINDOW: u64 = 1_750_377_600;

fn vcek_and(crl_der: &[u8]) -> AmdCerts {
    let mut c = vcek();
    c.add(crl_der).unwrap();
    c
}

#[test]
fn amds_crl_is_checked_when_given() {
    let raw = vcek_report();
    let check = |certs: &AmdCerts, r: &SnpReference, when: u64| {
        verify(&raw, Some(certs), r, &report_data(&raw), &at(when))
    };
    // Not given: said, not hidden; refused only when the reference values require it.
    let v = check(&vcek(), &pinned(&raw), IN_CRL_WINDOW).unwrap();
    assert!(
        v.checked
            .iter()
            .any(|c| c.contains("not checked: whether AMD revoked the SEV-Milan")),
        "{:?}",
        v.checked
    );
    let mut strict = pinned(&raw);
    strict.require_crl = true;
    let e = check(&vcek(), &strict, IN_CRL_WINDOW)
        .unwrap_err()
        .to_string();
    assert!(e.contains("no CRL of ARK-Milan"), "{e}");
    // Given (DER, as KDS serves it): signed by the pinned ARK, in its window, ASK not on it.
    let milan = crl("milan");
    let v = check(&vcek_and(&milan), &strict, IN_CRL_WINDOW).unwrap();
    assert!(
        v.checked
            .iter()
            .any(|c| c.contains("the SEV-Milan is not on ARK-Milan's CRL")),
        "{:?}",
        v.checked
    );
    // The same CRL as PEM, and in an extended report's certificate table.
    let b64 = base64::Engine::encode(&base64::engine::general_purpose::STANDARD, &milan);
    let lines: Vec<&str> = b64
        .as_bytes()
        .chunks(64)
        .map(|c| std::str::from_utf8(c).unwrap())
        .collect();
    let pem = format!(
        "-----BEGIN X509 CRL-----\n{}\n-----END X509 CRL-----\n",
        lines.join("\n")
    );
    check(&vcek_and(pem.as_bytes()), &strict, IN_CRL_WINDOW).unwrap();
    let table = serde_json::json!([
        {"cert_type": "VCEK", "data": fixture("snp/test-vcek.der")},
        {"cert_type": "CRL", "data": milan},
    ]);
    let carried = AmdCerts::from_cert_table(&table).unwrap().unwrap();
    check(&carried, &strict, IN_CRL_WINDOW).unwrap();
    // Outside its window (before it was issued; after its next update, today): stale.
    for when in [AS_OF, Options::now().at] {
        let e = check(&vcek_and(&milan), &pinned(&raw), when)
            .unwrap_err()
            .to_string();
        assert!(e.contains("a stale CRL"), "{e}");
    }
    // A changed byte in the signed list (its next-update time): the ARK did not sign it.
    let mut bad = milan.clone();
    let pos = bad.windows(2).rposition(|w| w == [0x17, 0x0d]).unwrap() + 2;
    bad[pos + 1] ^= 1;
    let e = check(&vcek_and(&bad), &pinned(&raw), IN_CRL_WINDOW)
        .unwrap_err()
        .to_string();
    assert!(e.contains("ARK-Milan's CRL does not verify"), "{e}");
    // Another product's CRL does not count for Milan.
    let e = check(&vcek_and(&crl("genoa")), &strict, IN_CRL_WINDOW)
        .unwrap_err()
        .to_string();
    assert!(e.contains("no CRL of ARK-Milan"), "{e}");
}

#[test]
fn a_revoked_ask_is_found_on_genoas_real_crl() {
    // No revoked chain exists among the fixtures; the decision is checked on the real list.
    let genoa = super::crl::Crl::from_der(&crl("genoa")).unwrap();
    let ark = pem(Product::Genoa.ark_pem()).unwrap();
    super::crl::verify_signature_for_tests(&genoa, &ark).unwrap();
    assert!(super::crl::revoked(&genoa, &[0x02, 0x00, 0x01]));
    assert!(!super::crl::revoked(&genoa, &[0x02, 0x00, 0x02]));
    // Checked against the current Genoa ASK (020002), inside the window: not revoked.
    let ask = pem(Product::Genoa.ca_pem(Signer::Vcek)).unwrap();
    let mut log = Log::new(&at(IN_CRL_WINDOW));
    super::crl::check(&mut log, &[genoa], &ark, &ask, IN_CRL_WINDOW, true).unwrap();
}
