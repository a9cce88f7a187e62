//! AMD SEV-SNP attestation reports: parsing (through the `sev` crate, the same types Trustee's
//! snp verifier deserializes) into an explanation, and checking a report's signature against a
//! VCEK or VLEK certificate. Never fetches certificates from anywhere.

use std::fmt;

use sev::certs::snp::{Certificate, Verifiable};
use sev::firmware::guest::AttestationReport;
use sev::firmware::host::{CertTableEntry, TcbVersion};
use sev::parser::ByteParser;

use super::{ExplainError, Truncated, field};

/// Size of an SNP ATTESTATION_REPORT (every version so far).
pub const SNP_REPORT_LEN: usize = 1184;

/// A parsed SNP attestation report.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SnpReport {
    /// The report as the `sev` crate parses it (the serde form of this is what Trustee reads).
    pub report: AttestationReport,
}

/// A certificate carried beside a report (SNP extended report, `cert_chain` of the evidence).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CertSummary {
    /// The type: ARK, ASK, VCEK, VLEK, CRL or a GUID.
    pub kind: String,
    /// The DER size.
    pub len: usize,
}

impl From<&CertTableEntry> for CertSummary {
    fn from(e: &CertTableEntry) -> Self {
        CertSummary {
            kind: format!("{:?}", e.cert_type),
            len: e.data().len(),
        }
    }
}

/// Why a report's signature was not accepted.
#[derive(Debug, thiserror::Error)]
pub enum SignatureError {
    /// The certificate is not DER X.509 with a P-384 key.
    #[error("the VCEK/VLEK is not a usable DER certificate: {0}")]
    Certificate(#[source] std::io::Error),
    /// The signature does not verify with that certificate's key.
    #[error("the report signature does not verify with this certificate: {0}")]
    Mismatch(#[source] std::io::Error),
}

/// Parses a raw 1184-byte SNP report.
pub fn parse_snp_report(bytes: &[u8]) -> Result<SnpReport, ExplainError> {
    if bytes.len() < SNP_REPORT_LEN {
        return Err(ExplainError::Truncated(Truncated {
            what: "SNP report",
            offset: 0,
            needed: SNP_REPORT_LEN,
            available: bytes.len(),
        }));
    }
    if bytes.len() > SNP_REPORT_LEN {
        return Err(ExplainError::Invalid {
            what: "SNP report",
            detail: format!("{} bytes; a report is {SNP_REPORT_LEN}", bytes.len()),
        });
    }
    let report = AttestationReport::from_bytes(bytes).map_err(|e| ExplainError::Invalid {
        what: "SNP report",
        detail: e.to_string(),
    })?;
    Ok(SnpReport { report })
}

/// Checks that `vek_der` (a VCEK or VLEK, DER) signed `report`. Only the signature: the
/// certificate's chain to AMD's roots and its TCB extensions are the verifier's job.
pub fn verify_snp_signature(report: &SnpReport, vek_der: &[u8]) -> Result<(), SignatureError> {
    let cert = Certificate::from_der(vek_der).map_err(SignatureError::Certificate)?;
    (&cert, &report.report)
        .verify()
        .map_err(SignatureError::Mismatch)
}

fn tcb(t: &TcbVersion) -> String {
    let fmc = t.fmc.map(|f| format!(" fmc {f}")).unwrap_or_default();
    format!(
        "bootloader {} tee {} snp {} microcode {}{fmc}",
        t.bootloader, t.tee, t.snp, t.microcode
    )
}

fn flags(names: &[(&str, bool)]) -> String {
    let on: Vec<&str> = names.iter().filter(|(_, v)| *v).map(|(n, _)| *n).collect();
    if on.is_empty() {
        "none".to_string()
    } else {
        on.join(", ")
    }
}

/// The guest policy, decoded (SEV-SNP ABI, table "Guest Policy").
pub fn policy_text(policy: u64) -> String {
    let bit = |n: u32| policy >> n & 1 == 1;
    format!(
        "{policy:#018x} (abi >= {}.{}; {})",
        policy >> 8 & 0xff,
        policy & 0xff,
        flags(&[
            ("SMT allowed", bit(16)),
            ("migration agent allowed", bit(18)),
            ("DEBUG ALLOWED", bit(19)),
            ("single socket", bit(20)),
            ("CXL allowed", bit(21)),
            ("AES-256-XTS required", bit(22)),
            ("RAPL disabled", bit(23)),
            ("ciphertext hiding", bit(24)),
            ("page swap disabled", bit(25)),
        ])
    )
}

fn platform_text(info: u64) -> String {
    let bit = |n: u32| info >> n & 1 == 1;
    format!(
        "{info:#x} ({})",
        flags(&[
            ("SMT enabled", bit(0)),
            ("TSME enabled", bit(1)),
            ("ECC enabled", bit(2)),
            ("RAPL disabled", bit(3)),
            ("ciphertext hiding enabled", bit(4)),
            ("alias check complete", bit(5)),
            ("TIO enabled", bit(7)),
        ])
    )
}

fn key_info_text(info: u32) -> String {
    let signer = match info >> 2 & 0x7 {
        0 => "VCEK",
        1 => "VLEK",
        7 => "none",
        _ => "reserved",
    };
    format!(
        "signed by {signer}; author key {}; chip key {}",
        if info & 1 == 1 { "present" } else { "absent" },
        if info >> 1 & 1 == 1 { "masked" } else { "used" }
    )
}

impl fmt::Display for SnpReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let r = &self.report;
        writeln!(f, "AMD SEV-SNP attestation report")?;
        field(f, "version", r.version)?;
        field(f, "guest SVN", r.guest_svn)?;
        field(f, "policy", policy_text(u64::from(r.policy)))?;
        field(f, "family id", hex::encode(r.family_id))?;
        field(f, "image id", hex::encode(r.image_id))?;
        field(f, "VMPL", r.vmpl)?;
        let algo = match r.sig_algo {
            1 => "ECDSA P-384 with SHA-384".to_string(),
            other => format!("unknown ({other})"),
        };
        field(f, "signature algorithm", algo)?;
        field(f, "key info", key_info_text(u32::from(r.key_info)))?;
        field(f, "current TCB", tcb(&r.current_tcb))?;
        field(f, "reported TCB", tcb(&r.reported_tcb))?;
        field(f, "committed TCB", tcb(&r.committed_tcb))?;
        field(f, "launch TCB", tcb(&r.launch_tcb))?;
        field(f, "platform info", platform_text(u64::from(r.plat_info)))?;
        if let (Some(fam), Some(model), Some(step)) = (r.cpuid_fam_id, r.cpuid_mod_id, r.cpuid_step)
        {
            field(
                f,
                "CPUID",
                format!("family {fam:#x} model {model:#x} stepping {step:#x}"),
            )?;
        }
        field(f, "firmware current", r.current)?;
        field(f, "firmware committed", r.committed)?;
        field(f, "measurement", hex::encode(r.measurement))?;
        field(f, "report data", hex::encode(r.report_data))?;
        field(f, "host data", hex::encode(r.host_data))?;
        field(f, "id key digest", hex::encode(r.id_key_digest))?;
        field(f, "author key digest", hex::encode(r.author_key_digest))?;
        field(f, "report id", hex::encode(r.report_id))?;
        field(f, "report id (MA)", hex::encode(r.report_id_ma))?;
        field(f, "chip id", hex::encode(r.chip_id))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) const REPORT: &str = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../shared/fixtures/evidence/snp/test-report.bin"
    );

    fn fixture(name: &str) -> Vec<u8> {
        std::fs::read(format!(
            "{}/../../shared/fixtures/evidence/snp/{name}",
            env!("CARGO_MANIFEST_DIR")
        ))
        .unwrap()
    }

    #[test]
    fn vcek_and_vlek_reports_verify_and_a_flipped_bit_does_not() {
        for (report, cert) in [
            ("test-report.bin", "test-vcek.der"),
            ("test-vlek-report.bin", "test-vlek.der"),
        ] {
            let bytes = fixture(report);
            let der = fixture(cert);
            let parsed = parse_snp_report(&bytes).unwrap();
            verify_snp_signature(&parsed, &der).unwrap();

            let mut flipped = bytes.clone();
            flipped[0x50] ^= 1; // a report data bit
            let parsed = parse_snp_report(&flipped).unwrap();
            assert!(matches!(
                verify_snp_signature(&parsed, &der),
                Err(SignatureError::Mismatch(_))
            ));
        }
        // the wrong key
        let parsed = parse_snp_report(&fixture("test-report.bin")).unwrap();
        assert!(verify_snp_signature(&parsed, &fixture("test-vlek.der")).is_err());
        assert!(matches!(
            verify_snp_signature(&parsed, b"not DER"),
            Err(SignatureError::Certificate(_))
        ));
    }

    #[test]
    fn explanation_names_every_field() {
        let parsed = parse_snp_report(&std::fs::read(REPORT).unwrap()).unwrap();
        let text = parsed.to_string();
        for label in [
            "version",
            "guest SVN",
            "policy",
            "family id",
            "image id",
            "VMPL",
            "signature algorithm",
            "current TCB",
            "reported TCB",
            "committed TCB",
            "platform info",
            "measurement",
            "report data",
            "host data",
            "id key digest",
            "author key digest",
            "report id",
            "chip id",
        ] {
            assert!(text.contains(label), "{label} missing from\n{text}");
        }
        assert!(text.contains("ECDSA P-384"));
        assert!(text.contains(&hex::encode(parsed.report.measurement)));
    }

    #[test]
    fn policy_bits_are_named() {
        let t = policy_text(0x3_0000 | 1 << 19);
        assert!(
            t.contains("SMT allowed") && t.contains("DEBUG ALLOWED"),
            "{t}"
        );
        assert!(policy_text(0x2_0000).contains("none"));
    }
}
