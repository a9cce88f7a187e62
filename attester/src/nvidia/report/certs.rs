//! The GPU's device certificate chain as NVML returns it: PEM certificates, leaf first (the
//! GSP FMC key that signs attestation reports), then its issuers up to the self-signed NVIDIA
//! Device Identity CA. For a GH100: `GH100 A01 GSP FMC LF` <- `GH100 A01 GSP BROM` <-
//! `NVIDIA GH100 Provisioner ICA 1` <- `NVIDIA GH100 Identity` <- `NVIDIA Device Identity CA`.
//!
//! [`check_chain`] checks that each certificate is signed by the next (ECDSA P-384 with SHA-384,
//! the only algorithm NVIDIA uses here) and reports each link. It never decides whether the
//! last certificate is NVIDIA's root, nor looks at validity dates or revocation (OCSP): a
//! verifier anchors the chain to a root it already holds.

use p384::ecdsa::{Signature, VerifyingKey};
use p384::pkcs8::DecodePublicKey;
use x509_cert::Certificate;
use x509_cert::der::asn1::ObjectIdentifier;
use x509_cert::der::{Decode, Encode, Header, Reader, SliceReader};

use super::spdm::FWID_LEN;
use super::{ReportError, VerifyError, invalid};

const BEGIN: &str = "-----BEGIN CERTIFICATE-----";
const END: &str = "-----END CERTIFICATE-----";
/// The most certificates a chain may hold (NVIDIA's have five).
const MAX_CHAIN: usize = 16;
/// ecdsa-with-SHA384 (RFC 5758).
const ECDSA_SHA384: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.10045.4.3.3");
/// TCG DICE TcbInfo, whose FWID list ends with the firmware id the report also carries.
const TCG_DICE_TCB_INFO: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.23.133.5.4.1");

/// One certificate of a GPU chain, parsed, with the DER it was read from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GpuCert {
    der: Vec<u8>,
    cert: Certificate,
}

impl GpuCert {
    /// Parses a DER certificate.
    pub fn from_der(der: &[u8]) -> Result<Self, VerifyError> {
        let cert =
            Certificate::from_der(der).map_err(|e| VerifyError::Certificate(e.to_string()))?;
        Ok(GpuCert {
            der: der.to_vec(),
            cert,
        })
    }

    /// The DER bytes.
    pub fn der(&self) -> &[u8] {
        &self.der
    }

    /// The subject name (RFC 4514 form).
    pub fn subject(&self) -> String {
        self.cert.tbs_certificate.subject.to_string()
    }

    /// The issuer name (RFC 4514 form).
    pub fn issuer(&self) -> String {
        self.cert.tbs_certificate.issuer.to_string()
    }

    /// The firmware id in the TCG DICE TcbInfo extension (its last 48 bytes, as NVIDIA's and
    /// Trustee's verifiers read it), if the certificate has one: on the leaf it must equal the
    /// report's FWID.
    pub fn fwid(&self) -> Option<Vec<u8>> {
        let ext = self
            .cert
            .tbs_certificate
            .extensions
            .as_ref()?
            .iter()
            .find(|e| e.extn_id == TCG_DICE_TCB_INFO)?;
        let value = ext.extn_value.as_bytes();
        value
            .get(value.len().checked_sub(FWID_LEN)?..)
            .map(<[u8]>::to_vec)
    }

    /// This certificate's key, if it is ECDSA P-384.
    pub(crate) fn p384_key(&self) -> Result<VerifyingKey, VerifyError> {
        let spki = self
            .cert
            .tbs_certificate
            .subject_public_key_info
            .to_der()
            .map_err(|e| VerifyError::Key(e.to_string()))?;
        VerifyingKey::from_public_key_der(&spki).map_err(|e| VerifyError::Key(e.to_string()))
    }

    /// Checks this certificate's signature with `issuer_key`.
    fn signed_by(&self, issuer_key: &VerifyingKey) -> Result<(), LinkStatus> {
        let alg = &self.cert.signature_algorithm.oid;
        if *alg != ECDSA_SHA384 {
            return Err(LinkStatus::Unsupported(format!(
                "signature algorithm {alg}"
            )));
        }
        let sig = self
            .cert
            .signature
            .as_bytes()
            .and_then(|b| Signature::from_der(b).ok())
            .ok_or(LinkStatus::BadSignature)?;
        let tbs = raw_tbs(&self.der).map_err(|_| LinkStatus::BadSignature)?;
        use p384::ecdsa::signature::Verifier;
        issuer_key
            .verify(tbs, &sig)
            .map_err(|_| LinkStatus::BadSignature)
    }
}

/// The TBSCertificate as it was encoded (what the issuer signed), not re-encoded.
fn raw_tbs(der: &[u8]) -> x509_cert::der::Result<&[u8]> {
    let mut r = SliceReader::new(der)?;
    Header::decode(&mut r)?; // Certificate ::= SEQUENCE
    let tbs = r.peek_header()?;
    let len = (tbs.encoded_len()? + tbs.length)?;
    r.read_slice(len)
}

/// The P-384 key of a DER certificate.
pub(crate) fn p384_key_of_der(der: &[u8]) -> Result<VerifyingKey, VerifyError> {
    GpuCert::from_der(der)?.p384_key()
}

/// Splits a PEM chain into its certificates, in order (NVIDIA puts the leaf first) and parses
/// each. Text outside `BEGIN`/`END CERTIFICATE` blocks (whitespace, NUL padding) is ignored.
pub fn parse_cert_chain_pem(pem: &str) -> Result<Vec<GpuCert>, ReportError> {
    let mut out = Vec::new();
    let mut rest = pem;
    while let Some(start) = rest.find(BEGIN) {
        let index = out.len();
        if index == MAX_CHAIN {
            return Err(invalid(
                "certificate chain",
                format!("more than {MAX_CHAIN} certificates"),
            ));
        }
        let block = rest.get(start..).unwrap_or_default();
        let end =
            block
                .find(END)
                .map(|e| e + END.len())
                .ok_or_else(|| ReportError::Certificate {
                    index,
                    detail: "BEGIN CERTIFICATE without END".into(),
                })?;
        let (label, der) =
            x509_cert::der::pem::decode_vec(block.get(..end).unwrap_or_default().as_bytes())
                .map_err(|e| ReportError::Certificate {
                    index,
                    detail: format!("PEM: {e}"),
                })?;
        if label != "CERTIFICATE" {
            return Err(ReportError::Certificate {
                index,
                detail: format!("PEM label {label}"),
            });
        }
        let cert = GpuCert::from_der(&der).map_err(|e| ReportError::Certificate {
            index,
            detail: e.to_string(),
        })?;
        out.push(cert);
        rest = block.get(end..).unwrap_or_default();
    }
    if out.is_empty() {
        return Err(invalid("certificate chain", "no PEM certificate in it"));
    }
    Ok(out)
}

/// How one certificate of a chain relates to the next.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LinkStatus {
    /// Named and signed by the next certificate of the chain.
    SignedByNext,
    /// The last certificate: self-issued, and its self-signature verifies. Whether it is
    /// NVIDIA's root is not checked here.
    SelfSigned,
    /// The last certificate is not self-issued: the chain stops before its root.
    IssuerNotInChain,
    /// The certificate's issuer is not the next certificate's subject.
    IssuerMismatch,
    /// The signature does not verify with the issuer's key.
    BadSignature,
    /// An algorithm ward does not check (only ECDSA P-384 with SHA-384).
    Unsupported(String),
}

impl LinkStatus {
    /// Whether this link holds.
    pub fn is_ok(&self) -> bool {
        matches!(self, LinkStatus::SignedByNext | LinkStatus::SelfSigned)
    }
}

impl std::fmt::Display for LinkStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            LinkStatus::SignedByNext => write!(f, "signed by the next certificate"),
            LinkStatus::SelfSigned => write!(f, "self-signed (root; not compared with NVIDIA's)"),
            LinkStatus::IssuerNotInChain => write!(f, "ISSUER NOT IN THE CHAIN"),
            LinkStatus::IssuerMismatch => write!(f, "ISSUER IS NOT THE NEXT CERTIFICATE"),
            LinkStatus::BadSignature => write!(f, "SIGNATURE DOES NOT VERIFY"),
            LinkStatus::Unsupported(what) => write!(f, "not checked ({what})"),
        }
    }
}

/// One certificate of a chain and how it links to the next.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChainLink {
    /// The certificate's subject.
    pub subject: String,
    /// The certificate's issuer.
    pub issuer: String,
    /// Whether the next certificate (or, for a self-issued last one, itself) signed it.
    pub status: LinkStatus,
}

/// Checks that each certificate of `chain` (leaf first) is named and signed by the next one,
/// and that the last is self-signed. Reports every link; anchoring the last certificate to
/// NVIDIA's root is the verifier's job.
pub fn check_chain(chain: &[GpuCert]) -> Vec<ChainLink> {
    chain
        .iter()
        .enumerate()
        .map(|(i, cert)| {
            let (subject, issuer) = (cert.subject(), cert.issuer());
            let signer = match chain.get(i + 1) {
                Some(next)
                    if next.cert.tbs_certificate.subject == cert.cert.tbs_certificate.issuer =>
                {
                    Ok((next, LinkStatus::SignedByNext))
                }
                Some(_) => Err(LinkStatus::IssuerMismatch),
                None if cert.cert.tbs_certificate.subject == cert.cert.tbs_certificate.issuer => {
                    Ok((cert, LinkStatus::SelfSigned))
                }
                None => Err(LinkStatus::IssuerNotInChain),
            };
            let status = match signer {
                Err(s) => s,
                Ok((signer, ok)) => match signer.p384_key() {
                    Err(e) => LinkStatus::Unsupported(e.to_string()),
                    Ok(key) => cert.signed_by(&key).map_or_else(|s| s, |()| ok),
                },
            };
            ChainLink {
                subject,
                issuer,
                status,
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn chain_text(name: &str) -> String {
        std::fs::read_to_string(format!(
            "{}/../../shared/fixtures/evidence/nvidia/{name}",
            env!("CARGO_MANIFEST_DIR")
        ))
        .unwrap()
    }

    #[test]
    fn fixture_chains_are_leaf_first_and_link_up_to_a_self_signed_root() {
        for name in ["hopper_cert_chain_case1.txt", "hopper_coco_certs1.txt"] {
            let chain = parse_cert_chain_pem(&chain_text(name)).unwrap();
            assert_eq!(chain.len(), 5, "{name}");
            assert!(chain[0].subject().contains("GSP FMC LF"), "{name}");
            assert!(chain[4].subject().contains("NVIDIA Device Identity CA"));
            let links = check_chain(&chain);
            assert!(links.iter().all(|l| l.status.is_ok()), "{name}: {links:#?}");
            assert_eq!(links[4].status, LinkStatus::SelfSigned);
        }
        let leaf = &parse_cert_chain_pem(&chain_text("hopper_cert_chain_case1.txt")).unwrap()[0];
        assert_eq!(
            leaf.fwid().map(hex::encode).as_deref(),
            Some(
                "f5c384aebb579217a2c66b17ed0f28e6a9b8d639041acd7b4721cec004f7275494ba94bb5cdfdb3055ee051762b1f75d"
            )
        );
    }

    #[test]
    fn broken_chains_are_reported_link_by_link() {
        let mut chain = parse_cert_chain_pem(&chain_text("hopper_cert_chain_case1.txt")).unwrap();
        let other = parse_cert_chain_pem(&chain_text("hopper_coco_certs1.txt")).unwrap();
        // a missing intermediate: the leaf's issuer is no longer next
        let mut gap = chain.clone();
        gap.remove(1);
        assert_eq!(check_chain(&gap)[0].status, LinkStatus::IssuerMismatch);
        // no root: the last certificate's issuer is missing
        let links = check_chain(&chain[..3]);
        assert_eq!(links[2].status, LinkStatus::IssuerNotInChain);
        // another GPU's BROM certificate under this leaf: same name shape, wrong key
        chain[1] = other[1].clone();
        let links = check_chain(&chain);
        assert_ne!(links[0].status, LinkStatus::SignedByNext);
        // a flipped bit in a signed certificate body
        let mut der = other[2].der().to_vec();
        let at = der.len() / 2;
        der[at] ^= 1;
        if let Ok(bad) = GpuCert::from_der(&der) {
            let mut c = other.clone();
            c[2] = bad;
            assert!(!check_chain(&c)[2].status.is_ok() || !check_chain(&c)[1].status.is_ok());
        }
    }

    #[test]
    fn pem_errors_are_typed() {
        assert!(matches!(
            parse_cert_chain_pem("no pem here"),
            Err(ReportError::Invalid { .. })
        ));
        assert!(matches!(
            parse_cert_chain_pem("-----BEGIN CERTIFICATE-----\nAAAA\n"),
            Err(ReportError::Certificate { index: 0, .. })
        ));
        assert!(matches!(
            parse_cert_chain_pem("-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"),
            Err(ReportError::Certificate { index: 0, .. })
        ));
        let text = chain_text("hopper_cert_chain_case1.txt");
        let cut = &text[..text.len() / 2];
        assert!(matches!(
            parse_cert_chain_pem(cut),
            Err(ReportError::Certificate { index: 2, .. })
        ));
        assert!(GpuCert::from_der(b"junk").is_err());
    }
}
