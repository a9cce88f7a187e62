//! Trusting the KBS's certificate the way operators configure it: `[kbs] cacert` names the CA
//! that signed the KBS's certificate, or, as Trustee's guides make it with `openssl req -x509`,
//! the KBS's own self-signed certificate, which carries `CA:TRUE`. webpki refuses a CA
//! certificate as the server's (`CaUsedAsEndEntity`) where curl and Python accept it; here that
//! certificate is accepted when it is byte for byte one of the configured ones and is valid for
//! the KBS's name and for today. Nothing else is relaxed: any other certificate goes through
//! webpki unchanged, and the handshake signatures are always checked.

use std::sync::Arc;

use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{
    CertificateError, DigitallySignedStruct, Error, OtherError, RootCertStore, SignatureScheme,
};

/// A CA certificate (`CA:TRUE`) presented as the KBS's own that is not pinned in `cacert`.
/// webpki says only `CaUsedAsEndEntity`, which reads as if the certificate's shape were the
/// fault when the configured `cacert` is (Trustee 78962cd4 `kbs/docs/self-signed-https.md`'s
/// setup, with another certificate as `cacert`).
#[derive(thiserror::Error)]
#[error(
    "the KBS presents a CA certificate (CA:TRUE) as its own and it is not one of the configured \
     cacert certificates (such a certificate is trusted only when it is itself the cacert)"
)]
pub(super) struct UnpinnedCaCertificate;

/// rustls prints a `CertificateError::Other` with `Debug`: the sentence, not the type's name.
impl std::fmt::Debug for UnpinnedCaCertificate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Display::fmt(self, f)
    }
}

/// webpki, plus the configured certificates themselves as pins.
#[derive(Debug)]
pub(super) struct PinnedOrCa {
    inner: Arc<WebPkiServerVerifier>,
    pinned: Vec<CertificateDer<'static>>,
}

/// A rustls client configuration that trusts `pem`'s certificates (as CAs, and each as the
/// server's own certificate).
pub(super) fn client_config(pem: &[u8]) -> Result<rustls::ClientConfig, String> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let verifier = Arc::new(PinnedOrCa::new(pem, provider.clone())?);
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth())
}

impl PinnedOrCa {
    /// `pem`'s certificates as CAs for webpki and as pins.
    fn new(pem: &[u8], provider: Arc<rustls::crypto::CryptoProvider>) -> Result<Self, String> {
        let certs: Vec<CertificateDer<'static>> =
            rustls::pki_types::pem::PemObject::pem_slice_iter(pem)
                .collect::<Result<_, _>>()
                .map_err(|e| format!("CA certificate: {e}"))?;
        if certs.is_empty() {
            return Err("CA certificate file holds no certificate".to_string());
        }
        let mut roots = RootCertStore::empty();
        for c in &certs {
            roots
                .add(c.clone())
                .map_err(|e| format!("CA certificate: {e}"))?;
        }
        let inner = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider)
            .build()
            .map_err(|e| format!("CA certificate: {e}"))?;
        Ok(PinnedOrCa {
            inner,
            pinned: certs,
        })
    }
}

/// Why the pinned `cert` does not do for `name` now (its names, webpki's own check, and its
/// validity period), or `None` when it does.
fn pinned_problem(
    cert: &CertificateDer<'_>,
    name: &ServerName<'_>,
    now: UnixTime,
) -> Option<CertificateError> {
    use x509_cert::der::Decode as _;
    let Ok(ee) = webpki::EndEntityCert::try_from(cert) else {
        return Some(CertificateError::BadEncoding);
    };
    match ee.verify_is_valid_for_subject_name(name) {
        Ok(()) => {}
        // webpki's names, as rustls reports them for any other certificate.
        Err(webpki::Error::CertNotValidForName(c)) => {
            return Some(CertificateError::NotValidForNameContext {
                expected: c.expected,
                presented: c.presented,
            });
        }
        Err(_) => return Some(CertificateError::NotValidForName),
    }
    let Ok(parsed) = x509_cert::Certificate::from_der(cert.as_ref()) else {
        return Some(CertificateError::BadEncoding);
    };
    let validity = &parsed.tbs_certificate.validity;
    let now = std::time::Duration::from_secs(now.as_secs());
    if now < validity.not_before.to_unix_duration() {
        Some(CertificateError::NotValidYet)
    } else if now > validity.not_after.to_unix_duration() {
        Some(CertificateError::Expired)
    } else {
        None
    }
}

/// Whether webpki refused the certificate only for being a CA's.
fn is_ca_used_as_end_entity(e: &CertificateError) -> bool {
    matches!(e, CertificateError::Other(OtherError(inner))
        if matches!(inner.downcast_ref::<webpki::Error>(), Some(webpki::Error::CaUsedAsEndEntity)))
}

impl ServerCertVerifier for PinnedOrCa {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, Error> {
        match self.inner.verify_server_cert(
            end_entity,
            intermediates,
            server_name,
            ocsp_response,
            now,
        ) {
            Ok(v) => Ok(v),
            Err(Error::InvalidCertificate(e)) => {
                if self
                    .pinned
                    .iter()
                    .any(|p| p.as_ref() == end_entity.as_ref())
                {
                    // The configured certificate itself: say what is wrong with it here, not
                    // what webpki found wrong with it as a chain.
                    match pinned_problem(end_entity, server_name, now) {
                        None => Ok(ServerCertVerified::assertion()),
                        Some(problem) => Err(Error::InvalidCertificate(problem)),
                    }
                } else if is_ca_used_as_end_entity(&e) {
                    Err(Error::InvalidCertificate(CertificateError::Other(
                        OtherError(Arc::new(UnpinnedCaCertificate)),
                    )))
                } else {
                    Err(Error::InvalidCertificate(e))
                }
            }
            Err(e) => Err(e),
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use super::*;

    /// What `openssl req -x509 -newkey ec -subj /CN=localhost -addext subjectAltName=...`
    /// makes (OpenSSL's default `v3_ca`: CA:TRUE), as Trustee's guides do for the KBS.
    fn self_signed_ca(not_after_year: i32) -> (CertificateDer<'static>, String) {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(vec!["localhost".to_string()]).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params.not_before = rcgen::date_time_ymd(2020, 1, 1);
        params.not_after = rcgen::date_time_ymd(not_after_year, 1, 1);
        let cert = params.self_signed(&key).unwrap();
        (cert.der().clone(), cert.pem())
    }

    /// The verifier for `[kbs] cacert` = `pem`.
    fn verifier(pem: &str) -> PinnedOrCa {
        PinnedOrCa::new(
            pem.as_bytes(),
            Arc::new(rustls::crypto::aws_lc_rs::default_provider()),
        )
        .unwrap()
    }

    fn verify(v: &PinnedOrCa, cert: &CertificateDer<'_>, name: &str) -> Result<(), Error> {
        v.verify_server_cert(
            cert,
            &[],
            &ServerName::try_from(name.to_string()).unwrap(),
            &[],
            UnixTime::now(),
        )
        .map(|_| ())
    }

    #[test]
    fn the_pinned_self_signed_ca_certificate_is_accepted_for_its_names() {
        let (cert, pem) = self_signed_ca(2099);
        verify(&verifier(&pem), &cert, "localhost").unwrap();
    }

    /// Against a real Trustee (scripts/trustee-check.sh, check 10f) a wrong `cacert` with the
    /// KBS's CA:TRUE certificate read `invalid peer certificate: Other(OtherError(
    /// CaUsedAsEndEntity))`: now it names the cacert as the cause.
    #[test]
    fn an_unpinned_ca_certificate_is_refused_naming_the_cacert() {
        let (served, _) = self_signed_ca(2099);
        let (_, other) = self_signed_ca(2099);
        let e = verify(&verifier(&other), &served, "localhost").unwrap_err();
        assert!(
            matches!(&e, Error::InvalidCertificate(CertificateError::Other(_))),
            "{e:?}"
        );
        assert!(
            e.to_string().contains("not one of the configured cacert"),
            "{e}"
        );
        assert!(!e.to_string().contains("CaUsedAsEndEntity"), "{e}");
    }

    /// The pinned certificate at a name it does not carry (Trustee's guide writes
    /// `DNS.2 = 127.0.0.1`, a DNS name, so `https://127.0.0.1` does not match), or expired:
    /// the reason, not `CaUsedAsEndEntity`.
    #[test]
    fn a_pinned_certificate_says_why_it_does_not_do() {
        let (cert, pem) = self_signed_ca(2099);
        let e = verify(&verifier(&pem), &cert, "127.0.0.1").unwrap_err();
        assert!(
            matches!(
                &e,
                Error::InvalidCertificate(CertificateError::NotValidForNameContext { presented, .. })
                    if presented == &["DnsName(\"localhost\")".to_string()]
            ),
            "{e:?}"
        );
        assert!(e.to_string().contains("not valid for name"), "{e}");
        let (old, old_pem) = self_signed_ca(2021);
        let e = verify(&verifier(&old_pem), &old, "localhost").unwrap_err();
        assert_eq!(e, Error::InvalidCertificate(CertificateError::Expired));
    }
}
