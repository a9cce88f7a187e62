//! AMD SEV-SNP attestation reports: the VCEK or VLEK that signed the report, its chain through
//! the ASK (VCEK) or ASVK (VLEK) to the ARK of Milan, Genoa or Turin (the ARKs and ASKs pinned
//! as the `sev` crate carries them, the ASVKs beside this file), the report's signature, the
//! report's TCB against the certificate's, the guest policy, VMPL, MEASUREMENT, HOST_DATA and
//! the report data. Certificates come from the caller (AMD KDS's DER or PEM); nothing is
//! fetched.

use std::path::Path;

use p384::ecdsa::signature::hazmat::PrehashVerifier as _;
use sev::certs::snp::Verifiable as _;
use sev::firmware::guest::AttestationReport;
use sev::firmware::host::TcbVersion;
use sev::parser::ByteParser as _;
use sha2::Digest as _;
use x509_cert::Certificate as X509;
use x509_cert::der::{Decode as _, Encode as _};

use crate::reference::{SnpReference, SnpTcb};
use crate::tdx::rfc3339;
use crate::values::{self, ValueError};
use crate::{Log, Options, Verified};

/// Size of an SNP ATTESTATION_REPORT.
pub const REPORT_LEN: usize = 1184;
/// The signed part of the report: everything before the signature.
const SIGNED_LEN: usize = 0x2a0;
const SIG_R: usize = 0x2a0;
const SIG_S: usize = 0x2e8;
/// Each signature component: 72 bytes little-endian, of which P-384 uses 48.
const SIG_COMPONENT_LEN: usize = 72;

/// Guest policy bits (SEV-SNP ABI, "Guest Policy").
const POLICY_SMT: u64 = 1 << 16;
const POLICY_MIGRATE_MA: u64 = 1 << 18;
const POLICY_DEBUG: u64 = 1 << 19;

const OID_PREFIX: &str = "1.3.6.1.4.1.3704.1.";

/// Why an SNP report was refused.
#[derive(Debug, thiserror::Error)]
pub enum SnpError {
    #[error("the SNP report does not parse: {0}")]
    Report(String),
    #[error("reading AMD certificates from {path}: {detail}")]
    CertsRead { path: String, detail: String },
    #[error("an AMD certificate does not parse: {0}")]
    Certificate(String),
    #[error(
        "no VCEK or VLEK was given: the report's signature, its chain to AMD's root and its TCB cannot be checked"
    )]
    NoCertificate,
    #[error("the report is signed by {signer}, and no {signer} certificate was given")]
    NoVek { signer: &'static str },
    #[error("the report says it is signed by no known key (key info {0:#x})")]
    Signer(u32),
    #[error("the {signer}'s issuer is {issuer:?}, not an AMD Milan, Genoa or Turin {signer} CA")]
    UnknownProduct {
        signer: &'static str,
        issuer: String,
    },
    #[error("the given ARK {0:?} is not AMD's pinned ARK for that product")]
    ArkNotPinned(String),
    #[error("the certificate chain does not verify at {link}: {detail}")]
    Chain { link: String, detail: String },
    #[error("the {which} certificate is valid from {from} until {until}, not at {at}")]
    CertificateExpired {
        which: String,
        from: String,
        until: String,
        at: String,
    },
    #[error("the report signature does not verify with the {signer}: {detail}")]
    Signature {
        signer: &'static str,
        detail: String,
    },
    #[error(
        "the report's TCB {component} is {report}, the {signer} certificate's is {cert}: the certificate was not issued for this TCB"
    )]
    TcbMismatch {
        signer: &'static str,
        component: &'static str,
        report: u8,
        cert: String,
    },
    #[error("the report's CHIP_ID is not the VCEK's hwID: the VCEK is another chip's")]
    ChipId,
    #[error("the SNP guest policy allows debugging (the host can read the guest)")]
    Debug,
    #[error(
        "the SNP guest policy allows a migration agent, which the reference values do not allow"
    )]
    MigrationAgent,
    #[error("the SNP guest policy allows SMT, which the reference values do not allow")]
    Smt,
    #[error("the report comes from VMPL {got}; the reference values say VMPL {want}")]
    Vmpl { got: u32, want: u32 },
    #[error("the report's TCB {component} is {got}, below the reference values' minimum {min}")]
    TcbTooLow {
        component: &'static str,
        got: u8,
        min: u8,
    },
    #[error(
        "no CRL of {issuer} was given, and the reference values require one (require_crl): KDS serves it"
    )]
    NoCrl { issuer: String },
    #[error("{issuer}'s CRL is valid from {from} until {until}, not at {at}: a stale CRL")]
    StaleCrl {
        issuer: String,
        from: String,
        until: String,
        at: String,
    },
    #[error("{issuer}'s CRL does not verify: {detail}")]
    CrlSignature { issuer: String, detail: String },
    #[error("AMD revoked the {which} (serial {serial}) on its CRL")]
    Revoked { which: String, serial: String },
    #[error(transparent)]
    Value(#[from] ValueError),
}

/// The processor generations whose roots are pinned.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Product {
    Milan,
    Genoa,
    Turin,
}

impl Product {
    const ALL: [Product; 3] = [Product::Milan, Product::Genoa, Product::Turin];

    fn name(self) -> &'static str {
        match self {
            Product::Milan => "Milan",
            Product::Genoa => "Genoa",
            Product::Turin => "Turin",
        }
    }

    /// AMD's root key, PEM (pinned: from the `sev` crate).
    fn ark_pem(self) -> &'static [u8] {
        match self {
            Product::Milan => sev::certs::snp::builtin::milan::ARK,
            Product::Genoa => sev::certs::snp::builtin::genoa::ARK,
            Product::Turin => sev::certs::snp::builtin::turin::ARK,
        }
    }

    /// The CA for `signer` (ASK for VCEKs, ASVK for VLEKs), PEM, used when none is given.
    fn ca_pem(self, signer: Signer) -> &'static [u8] {
        match (self, signer) {
            (Product::Milan, Signer::Vcek) => sev::certs::snp::builtin::milan::ASK,
            (Product::Genoa, Signer::Vcek) => sev::certs::snp::builtin::genoa::ASK,
            (Product::Turin, Signer::Vcek) => sev::certs::snp::builtin::turin::ASK,
            (Product::Milan, Signer::Vlek) => include_bytes!("snp/amd/milan-asvk.pem"),
            (Product::Genoa, Signer::Vlek) => include_bytes!("snp/amd/genoa-asvk.pem"),
            (Product::Turin, Signer::Vlek) => include_bytes!("snp/amd/turin-asvk.pem"),
        }
    }
}

/// Which key signed a report (KEY_INFO.SIGNING_KEY).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Signer {
    Vcek,
    Vlek,
}

impl Signer {
    fn name(self) -> &'static str {
        match self {
            Signer::Vcek => "VCEK",
            Signer::Vlek => "VLEK",
        }
    }

    /// The common name of the certificate itself.
    fn leaf_cn(self) -> &'static str {
        match self {
            Signer::Vcek => "SEV-VCEK",
            Signer::Vlek => "SEV-VLEK",
        }
    }

    /// The CA's common name for `product`.
    fn ca_cn(self, product: Product) -> String {
        match self {
            Signer::Vcek => format!("SEV-{}", product.name()),
            Signer::Vlek => format!("SEV-VLEK-{}", product.name()),
        }
    }
}

/// AMD certificates the caller gives: the VCEK or VLEK, and optionally the ASK/ASVK and ARK
/// (KDS's `cert_chain`). A given ARK must be the pinned one; a given ASK/ASVK must chain to it.
#[derive(Clone, Debug, Default)]
pub struct AmdCerts {
    certs: Vec<X509>,
    /// AMD's CRLs given beside them (`crl.rs`).
    crls: Vec<crl::Crl>,
}

fn cn(name: &x509_cert::name::Name) -> String {
    // The last CN in the name (AMD's names have one).
    let mut out = String::new();
    for rdn in name.0.iter() {
        for atv in rdn.0.iter() {
            if atv.oid == const_oid_cn() {
                if let Ok(s) = x509_cert::der::asn1::Utf8StringRef::try_from(&atv.value) {
                    out = s.as_str().to_string();
                } else if let Ok(s) = x509_cert::der::asn1::PrintableStringRef::try_from(&atv.value)
                {
                    out = s.as_str().to_string();
                } else if let Ok(s) = x509_cert::der::asn1::Ia5StringRef::try_from(&atv.value) {
                    out = s.as_str().to_string();
                }
            }
        }
    }
    out
}

fn const_oid_cn() -> x509_cert::der::oid::ObjectIdentifier {
    x509_cert::der::oid::db::rfc4519::CN
}

impl AmdCerts {
    /// Parses certificates: DER, or PEM holding one or more.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, SnpError> {
        let mut c = AmdCerts::default();
        c.add(bytes)?;
        Ok(c)
    }

    /// The VCEK, VLEK, ASK, ARK and CRL of an extended report's certificate table, in the JSON
    /// form the `snp` evidence carries it (`cert_chain`: sev's `CertTableEntry` list); `None`
    /// when it holds none. The host fills that table, which is safe to use: every certificate
    /// must still chain to AMD's pinned ARK, and a VCEK must be the report's chip's.
    pub fn from_cert_table(cert_chain: &serde_json::Value) -> Result<Option<Self>, SnpError> {
        use sev::firmware::host::{CertTableEntry, CertType};
        if cert_chain.is_null() {
            return Ok(None);
        }
        let entries: Vec<CertTableEntry> = serde_json::from_value(cert_chain.clone())
            .map_err(|e| SnpError::Certificate(format!("the evidence's cert_chain: {e}")))?;
        let mut c = AmdCerts::default();
        for e in &entries {
            if matches!(
                e.cert_type,
                CertType::VCEK | CertType::VLEK | CertType::ASK | CertType::ARK | CertType::CRL
            ) {
                c.add(e.data()).map_err(|err| {
                    SnpError::Certificate(format!(
                        "the evidence's cert_chain {:?}: {err}",
                        e.cert_type
                    ))
                })?;
            }
        }
        Ok((!c.certs.is_empty()).then_some(c))
    }

    fn add(&mut self, bytes: &[u8]) -> Result<(), SnpError> {
        let bad = |e: x509_cert::der::Error| SnpError::Certificate(e.to_string());
        let text = bytes.trim_ascii_start();
        if text.starts_with(b"-----BEGIN X509 CRL") {
            self.crls.extend(crl::Crl::from_pem_chain(bytes)?);
        } else if text.starts_with(b"-----BEGIN") {
            self.certs.extend(X509::load_pem_chain(bytes).map_err(bad)?);
        } else {
            match X509::from_der(bytes) {
                Ok(c) => self.certs.push(c),
                // KDS serves its CRLs as DER too.
                Err(e) => match crl::Crl::from_der(bytes) {
                    Ok(c) => self.crls.push(c),
                    Err(_) => return Err(bad(e)),
                },
            }
        }
        Ok(())
    }

    /// Reads a file (DER or PEM), or every file of a directory (as KDS serves them: `vcek.der`,
    /// `cert_chain.pem`, ...).
    pub fn load(path: &Path) -> Result<Self, SnpError> {
        let err = |detail: String| SnpError::CertsRead {
            path: path.display().to_string(),
            detail,
        };
        let mut c = AmdCerts::default();
        if path.is_dir() {
            let mut files: Vec<_> = std::fs::read_dir(path)
                .map_err(|e| err(e.to_string()))?
                .filter_map(Result::ok)
                .map(|e| e.path())
                .filter(|p| p.is_file())
                .collect();
            files.sort();
            for f in files {
                let bytes = std::fs::read(&f).map_err(|e| err(e.to_string()))?;
                c.add(&bytes)
                    .map_err(|e| err(format!("{}: {e}", f.display())))?;
            }
        } else {
            let bytes = std::fs::read(path).map_err(|e| err(e.to_string()))?;
            c.add(&bytes)?;
        }
        Ok(c)
    }

    fn by_subject(&self, name: &str) -> Option<&X509> {
        self.certs
            .iter()
            .find(|c| cn(&c.tbs_certificate.subject) == name)
    }
}

fn der(c: &X509) -> Result<Vec<u8>, SnpError> {
    c.to_der().map_err(|e| SnpError::Certificate(e.to_string()))
}

fn sev_cert(c: &X509) -> Result<sev::certs::snp::Certificate, SnpError> {
    sev::certs::snp::Certificate::from_der(&der(c)?)
        .map_err(|e| SnpError::Certificate(e.to_string()))
}

fn pem(bytes: &[u8]) -> Result<X509, SnpError> {
    use x509_cert::der::DecodePem as _;
    X509::from_pem(bytes).map_err(|e| SnpError::Certificate(format!("a pinned certificate: {e}")))
}

fn validity(which: &str, c: &X509, at: u64) -> Result<(), SnpError> {
    let v = &c.tbs_certificate.validity;
    let from = v.not_before.to_unix_duration().as_secs();
    let until = v.not_after.to_unix_duration().as_secs();
    if at < from || at > until {
        let t = |s: u64| rfc3339(i64::try_from(s).unwrap_or(i64::MAX));
        return Err(SnpError::CertificateExpired {
            which: which.to_string(),
            from: t(from),
            until: t(until),
            at: t(at),
        });
    }
    Ok(())
}

/// An AMD extension's value (`1.3.6.1.4.1.3704.1.<suffix>`), the raw extnValue contents.
fn extension<'a>(c: &'a X509, suffix: &str) -> Option<&'a [u8]> {
    let want = format!("{OID_PREFIX}{suffix}");
    c.tbs_certificate
        .extensions
        .as_ref()?
        .iter()
        .find(|e| e.extn_id.to_string() == want)
        .map(|e| e.extn_value.as_bytes())
}

/// A small DER INTEGER (an SPL): `02 len bytes`, at most one significant byte.
fn spl(bytes: &[u8]) -> Option<u8> {
    let (&tag, rest) = bytes.split_first()?;
    let (&len, value) = rest.split_first()?;
    if tag != 0x02 || usize::from(len) != value.len() {
        return None;
    }
    match value {
        [v] if *v < 0x80 => Some(*v),
        [0, v] if *v >= 0x80 => Some(*v),
        _ => None,
    }
}

/// The report's TCB against the certificate's SPL extensions.
fn check_cert_tcb(
    log: &mut Log,
    signer: Signer,
    vek: &X509,
    t: &TcbVersion,
) -> Result<(), SnpError> {
    let mut parts: Vec<(&'static str, &str, u8)> = vec![
        ("bootloader", "3.1", t.bootloader),
        ("tee", "3.2", t.tee),
        ("snp", "3.3", t.snp),
        ("microcode", "3.8", t.microcode),
    ];
    if let Some(fmc) = t.fmc {
        parts.push(("fmc", "3.9", fmc));
    }
    for (component, suffix, report) in parts {
        let cert = extension(vek, suffix).map(|b| (spl(b), b));
        match cert {
            Some((Some(c), _)) if c == report => {}
            other => {
                return Err(SnpError::TcbMismatch {
                    signer: signer.name(),
                    component,
                    report,
                    cert: match other {
                        Some((Some(c), _)) => c.to_string(),
                        Some((None, b)) => format!("unreadable ({})", hex::encode(b)),
                        None => "absent".to_string(),
                    },
                });
            }
        }
    }
    log.ok(format!(
        "the report's TCB is the one the {} was issued for",
        signer.name()
    ));
    Ok(())
}

fn verify_signature(raw: &[u8], signer: Signer, vek: &X509) -> Result<(), SnpError> {
    let fail = |detail: String| SnpError::Signature {
        signer: signer.name(),
        detail,
    };
    let signed = raw
        .get(..SIGNED_LEN)
        .ok_or_else(|| fail("truncated".into()))?;
    let component = |at: usize| -> Result<[u8; 48], SnpError> {
        let end = at
            .checked_add(SIG_COMPONENT_LEN)
            .ok_or_else(|| fail("offset".into()))?;
        let le = raw.get(at..end).ok_or_else(|| fail("truncated".into()))?;
        let (low, high) = le.split_at(48);
        if high.iter().any(|&b| b != 0) {
            return Err(fail("a signature component is wider than P-384".into()));
        }
        let mut be = [0u8; 48];
        for (d, s) in be.iter_mut().zip(low.iter().rev()) {
            *d = *s;
        }
        Ok(be)
    };
    let (r, s) = (component(SIG_R)?, component(SIG_S)?);
    // The rest of the signature field is reserved, must be zero, and is not signed: bytes
    // there would make a second encoding of the same signed report.
    let reserved = raw
        .get(SIG_S + SIG_COMPONENT_LEN..)
        .ok_or_else(|| fail("truncated".into()))?;
    if reserved.iter().any(|&b| b != 0) {
        return Err(fail("the signature's reserved bytes are not zero".into()));
    }
    let sig = p384::ecdsa::Signature::from_scalars(r, s).map_err(|e| fail(e.to_string()))?;
    let key = p384::ecdsa::VerifyingKey::from_sec1_bytes(
        vek.tbs_certificate
            .subject_public_key_info
            .subject_public_key
            .raw_bytes(),
    )
    .map_err(|e| fail(format!("the certificate's key is not P-384: {e}")))?;
    let digest = sha2::Sha384::digest(signed);
    key.verify_prehash(&digest, &sig)
        .map_err(|e| fail(e.to_string()))
}

/// The chain: pinned ARK → ASK/ASVK (given, else carried) → VEK, each valid at `at`.
fn check_chain(
    log: &mut Log,
    certs: &AmdCerts,
    signer: Signer,
    vek: &X509,
    at: u64,
    require_crl: bool,
) -> Result<(), SnpError> {
    let want_cn = signer.leaf_cn();
    let issuer = cn(&vek.tbs_certificate.issuer);
    let product = Product::ALL
        .into_iter()
        .find(|p| signer.ca_cn(*p) == issuer)
        .ok_or_else(|| SnpError::UnknownProduct {
            signer: signer.name(),
            issuer: issuer.clone(),
        })?;
    let ark = pem(product.ark_pem())?;
    let ark_cn = format!("ARK-{}", product.name());
    if let Some(given) = certs.by_subject(&ark_cn)
        && der(given)? != der(&ark)?
    {
        return Err(SnpError::ArkNotPinned(ark_cn));
    }
    let ca = match certs.by_subject(&issuer) {
        Some(c) => c.clone(),
        None => pem(product.ca_pem(signer))?,
    };
    let link = |a: &str, b: &str, e: std::io::Error| SnpError::Chain {
        link: format!("{a} → {b}"),
        detail: e.to_string(),
    };
    let (s_ark, s_ca, s_vek) = (sev_cert(&ark)?, sev_cert(&ca)?, sev_cert(vek)?);
    (&s_ark, &s_ark)
        .verify()
        .map_err(|e| link(&ark_cn, &ark_cn, e))?;
    (&s_ark, &s_ca)
        .verify()
        .map_err(|e| link(&ark_cn, &issuer, e))?;
    (&s_ca, &s_vek)
        .verify()
        .map_err(|e| link(&issuer, want_cn, e))?;
    for (which, c) in [(&ark_cn, &ark), (&issuer, &ca)] {
        validity(which, c, at)?;
    }
    validity(signer.name(), vek, at)?;
    log.ok(format!(
        "the {} chains through {issuer} to {ark_cn} (pinned), all valid at {}",
        signer.name(),
        rfc3339(i64::try_from(at).unwrap_or(i64::MAX))
    ));
    crl::check(log, &certs.crls, &ark, &ca, at, require_crl)
}

/// The raw bytes of a report that arrived in its JSON (serde) form, as the `snp` evidence of
/// Trustee's wire carries it. Re-encoded by the `sev` crate: a report whose reserved bytes
/// were not zero no longer verifies (refused, never accepted).
pub fn report_bytes(r: &AttestationReport) -> Result<Vec<u8>, SnpError> {
    r.to_bytes()
        .map(|b| b.to_vec())
        .map_err(|e| SnpError::Report(e.to_string()))
}

/// Verifies an SNP report (the 1184 raw bytes). `certs` holds the VCEK or VLEK (and optionally
/// its chain); without it only `opts.insecure` lets the report through, unsigned.
/// `want_report_data` is what REPORT_DATA must be (the binding of the caller's nonce and key).
pub fn verify(
    raw: &[u8],
    certs: Option<&AmdCerts>,
    reference: &SnpReference,
    want_report_data: &[u8; 64],
    opts: &Options,
) -> Result<Verified, SnpError> {
    if raw.len() != REPORT_LEN {
        return Err(SnpError::Report(format!(
            "{} bytes; a report is {REPORT_LEN}",
            raw.len()
        )));
    }
    let r = AttestationReport::from_bytes(raw).map_err(|e| SnpError::Report(e.to_string()))?;
    let mut log = Log::new(opts);
    match certs {
        Some(certs) => {
            let key_info = u32::from(r.key_info);
            let signer = match key_info >> 2 & 0x7 {
                0 => Signer::Vcek,
                1 => Signer::Vlek,
                _ => return Err(SnpError::Signer(key_info)),
            };
            if r.sig_algo != 1 {
                return Err(SnpError::Signature {
                    signer: signer.name(),
                    detail: format!("signature algorithm {}, not ECDSA P-384 (1)", r.sig_algo),
                });
            }
            // A directory or cache may hold several (one per chip and TCB): the one issued
            // for this report's TCB and chip, else the first (whose refusal says why).
            let candidates: Vec<&X509> = certs
                .certs
                .iter()
                .filter(|c| cn(&c.tbs_certificate.subject) == signer.leaf_cn())
                .collect();
            let first = *candidates.first().ok_or(SnpError::NoVek {
                signer: signer.name(),
            })?;
            let vek = candidates
                .iter()
                .copied()
                .find(|c| {
                    let mut scratch = Log::scratch();
                    check_cert_tcb(&mut scratch, signer, c, &r.reported_tcb).is_ok()
                        && check_chip_id(&mut scratch, signer, c, &r).is_ok()
                })
                .unwrap_or(first);
            check_chain(&mut log, certs, signer, vek, opts.at, reference.require_crl)?;
            verify_signature(raw, signer, vek)?;
            log.ok(format!("the report is signed by the {}", signer.name()));
            check_cert_tcb(&mut log, signer, vek, &r.reported_tcb)?;
            check_chip_id(&mut log, signer, vek, &r)?;
        }
        None => log.cannot(
            "the report's signature, the VCEK/VLEK chain to AMD's root and the TCB it certifies (no certificate given)",
            SnpError::NoCertificate,
        )?,
    }
    check_policy(&mut log, &r, reference)?;
    let u = &reference.unpinned;
    values::pin(
        &mut log,
        "snp",
        "measurement",
        &r.measurement,
        reference.measurement.as_ref(),
        u,
    )?;
    values::pin(
        &mut log,
        "snp",
        "host_data",
        &r.host_data,
        reference.host_data.as_ref(),
        u,
    )?;
    values::report_data(&mut log, &r.report_data, want_report_data)?;
    Ok(log.finish("snp", r.report_data))
}

/// CHIP_ID against the VCEK's hwID (a VLEK is not per chip). Turin's hwID is 8 bytes, the
/// first 8 of CHIP_ID.
fn check_chip_id(
    log: &mut Log,
    signer: Signer,
    vek: &X509,
    r: &AttestationReport,
) -> Result<(), SnpError> {
    if signer == Signer::Vcek {
        let hwid = extension(vek, "4").ok_or(SnpError::ChipId)?;
        if hwid.is_empty() || r.chip_id.get(..hwid.len()) != Some(hwid) {
            return Err(SnpError::ChipId);
        }
        log.ok("the report's CHIP_ID is the VCEK's");
    }
    Ok(())
}

fn check_policy(
    log: &mut Log,
    r: &AttestationReport,
    reference: &SnpReference,
) -> Result<(), SnpError> {
    let policy = u64::from(r.policy);
    if policy & POLICY_DEBUG != 0 {
        return Err(SnpError::Debug);
    }
    if policy & POLICY_MIGRATE_MA != 0 && !reference.allow_migration_agent {
        return Err(SnpError::MigrationAgent);
    }
    if policy & POLICY_SMT != 0 && !reference.allow_smt {
        return Err(SnpError::Smt);
    }
    log.ok(format!(
        "the guest policy {policy:#x} disallows debugging, and allows a migration agent and SMT only as the reference values do"
    ));
    if r.vmpl != reference.vmpl {
        return Err(SnpError::Vmpl {
            got: r.vmpl,
            want: reference.vmpl,
        });
    }
    log.ok(format!("the report comes from VMPL {}", r.vmpl));
    match &reference.min_tcb {
        Some(min) => check_min_tcb(log, &r.reported_tcb, min),
        None if reference.unpinned.contains("min_tcb") => {
            log.ok("any TCB (the reference values leave min_tcb unpinned)");
            Ok(())
        }
        None => log.cannot(
            "snp.min_tcb (not pinned by the reference values)",
            SnpError::Value(ValueError::NotPinned {
                field: "snp.min_tcb".into(),
            }),
        ),
    }
}

fn check_min_tcb(log: &mut Log, t: &TcbVersion, min: &SnpTcb) -> Result<(), SnpError> {
    let mut parts = vec![
        ("bootloader", t.bootloader, min.bootloader),
        ("tee", t.tee, min.tee),
        ("snp", t.snp, min.snp),
        ("microcode", t.microcode, min.microcode),
    ];
    if let Some(m) = min.fmc {
        parts.push(("fmc", t.fmc.unwrap_or(0), m));
    }
    for (component, got, min) in parts {
        if got < min {
            return Err(SnpError::TcbTooLow {
                component,
                got,
                min,
            });
        }
    }
    log.ok("the report's TCB is at least the reference values' minimum");
    Ok(())
}

mod crl;

#[cfg(test)]
mod tests;
