//! AMD's certificate revocation lists: KDS serves one per product and signer kind
//! (`/vcek/v1/{product}/crl`, `/vlek/v1/{product}/crl`), issued and signed by the ARK
//! (RSASSA-PSS, SHA-384), listing revoked ASKs or ASVKs. Given beside the certificates (a file
//! or directory, DER or PEM) or in an extended report's certificate table, a CRL for the
//! chain's ARK is checked: its signature by the pinned ARK, its window at the verification
//! time, and that the chain's ASK/ASVK is not on it. Without one, the revocation is not checked,
//! and [`crate::Verified::checked`] says so; `require_crl` in the reference values refuses
//! instead.

use rsa::RsaPublicKey;
use rsa::pkcs8::DecodePublicKey as _;
use rsa::signature::Verifier as _;
use x509_cert::Certificate as X509;
use x509_cert::crl::CertificateList;
use x509_cert::der::oid::ObjectIdentifier;
use x509_cert::der::{Decode as _, Encode as _};

use super::{SnpError, cn};
use crate::Log;
use crate::tdx::rfc3339;

/// id-RSASSA-PSS (RFC 4055): how AMD signs certificates and CRLs.
const RSASSA_PSS: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.1.10");

/// A parsed CRL with its DER (the signed part is re-read from it).
#[derive(Clone, Debug)]
pub(super) struct Crl {
    der: Vec<u8>,
    list: CertificateList,
}

impl Crl {
    pub(super) fn from_der(der: &[u8]) -> Result<Crl, SnpError> {
        let list = CertificateList::from_der(der)
            .map_err(|e| SnpError::Certificate(format!("an AMD CRL: {e}")))?;
        Ok(Crl {
            der: der.to_vec(),
            list,
        })
    }

    pub(super) fn from_pem_chain(pem: &[u8]) -> Result<Vec<Crl>, SnpError> {
        let text = std::str::from_utf8(pem)
            .map_err(|_| SnpError::Certificate("a PEM file is not UTF-8".into()))?;
        let mut out = Vec::new();
        let mut rest = text;
        while let Some(start) = rest.find("-----BEGIN X509 CRL-----") {
            let end = rest[start..]
                .find("-----END X509 CRL-----")
                .ok_or_else(|| SnpError::Certificate("an unterminated PEM CRL".into()))?;
            let block = &rest[start..start + end + "-----END X509 CRL-----".len()];
            let (_, der) = x509_cert::der::pem::decode_vec(block.as_bytes())
                .map_err(|e| SnpError::Certificate(format!("a PEM CRL: {e}")))?;
            out.push(Crl::from_der(&der)?);
            rest = &rest[start + end..];
        }
        Ok(out)
    }

    pub(super) fn issuer_cn(&self) -> String {
        cn(&self.list.tbs_cert_list.issuer)
    }
}

/// Checks `ca` (the ASK or ASVK) against the CRL among `crls` that `ark` issued, if any.
pub(super) fn check(
    log: &mut Log,
    crls: &[Crl],
    ark: &X509,
    ca: &X509,
    at: u64,
    required: bool,
) -> Result<(), SnpError> {
    let ark_cn = cn(&ark.tbs_certificate.subject);
    let ca_cn = cn(&ca.tbs_certificate.subject);
    let Some(crl) = crls.iter().find(|c| c.issuer_cn() == ark_cn) else {
        if required {
            return Err(SnpError::NoCrl { issuer: ark_cn });
        }
        log.ok(format!(
            "not checked: whether AMD revoked the {ca_cn} (no CRL of {ark_cn} given; KDS serves it)"
        ));
        return Ok(());
    };
    verify_signature(crl, ark)?;
    let tbs = &crl.list.tbs_cert_list;
    let from = tbs.this_update.to_unix_duration().as_secs();
    let until = tbs.next_update.map(|t| t.to_unix_duration().as_secs());
    if at < from || until.is_some_and(|u| at > u) {
        let t = |s: u64| rfc3339(i64::try_from(s).unwrap_or(i64::MAX));
        return Err(SnpError::StaleCrl {
            issuer: ark_cn,
            from: t(from),
            until: until.map_or_else(|| "(no next update)".into(), t),
            at: t(at),
        });
    }
    let serial = ca.tbs_certificate.serial_number.as_bytes();
    if revoked(crl, serial) {
        return Err(SnpError::Revoked {
            which: ca_cn,
            serial: hex::encode(serial),
        });
    }
    log.ok(format!(
        "the {ca_cn} is not on {ark_cn}'s CRL (signed by the pinned ARK, issued {})",
        rfc3339(i64::try_from(from).unwrap_or(i64::MAX))
    ));
    Ok(())
}

/// Whether `serial` (the DER INTEGER's content bytes) is on `crl`.
pub(super) fn revoked(crl: &Crl, serial: &[u8]) -> bool {
    crl.list
        .tbs_cert_list
        .revoked_certificates
        .iter()
        .flatten()
        .any(|r| r.serial_number.as_bytes() == serial)
}

/// The CRL's RSASSA-PSS (SHA-384) signature by the ARK's key, over its TBSCertList as encoded.
fn verify_signature(crl: &Crl, ark: &X509) -> Result<(), SnpError> {
    let bad = |detail: String| SnpError::CrlSignature {
        issuer: crl.issuer_cn(),
        detail,
    };
    if crl.list.signature_algorithm.oid != RSASSA_PSS {
        return Err(bad(format!(
            "signature algorithm {}, not RSASSA-PSS",
            crl.list.signature_algorithm.oid
        )));
    }
    let spki = ark
        .tbs_certificate
        .subject_public_key_info
        .to_der()
        .map_err(|e| bad(e.to_string()))?;
    let key = RsaPublicKey::from_public_key_der(&spki).map_err(|e| bad(e.to_string()))?;
    let tbs = raw_tbs(&crl.der).map_err(|e| bad(e.to_string()))?;
    let sig = rsa::pss::Signature::try_from(crl.list.signature.raw_bytes())
        .map_err(|e| bad(e.to_string()))?;
    rsa::pss::VerifyingKey::<sha2::Sha384>::new(key)
        .verify(tbs, &sig)
        .map_err(|_| bad("it does not verify with the pinned ARK's key".into()))
}

#[cfg(test)]
pub(super) fn verify_signature_for_tests(crl: &Crl, ark: &X509) -> Result<(), SnpError> {
    verify_signature(crl, ark)
}

/// The TBSCertList as it was encoded (what the ARK signed).
fn raw_tbs(der: &[u8]) -> x509_cert::der::Result<&[u8]> {
    use x509_cert::der::{Header, Reader as _, SliceReader};
    let mut r = SliceReader::new(der)?;
    Header::decode(&mut r)?;
    let tbs = r.peek_header()?;
    let len = (tbs.encoded_len()? + tbs.length)?;
    r.read_slice(len)
}
