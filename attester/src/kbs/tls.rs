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
use rustls::{DigitallySignedStruct, Error, RootCertStore, SignatureScheme};

/// webpki, plus the configured certificates themselves as pins.
#[derive(Debug)]
pub(super) struct PinnedOrCa {
    inner: Arc<WebPkiServerVerifier>,
    pinned: Vec<CertificateDer<'static>>,
}

/// A rustls client configuration that trusts `pem`'s certificates (as CAs, and each as the
/// server's own certificate).
pub(super) fn client_config(pem: &[u8]) -> Result<rustls::ClientConfig, String> {
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
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let inner = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .build()
        .map_err(|e| format!("CA certificate: {e}"))?;
    let verifier = Arc::new(PinnedOrCa {
        inner,
        pinned: certs,
    });
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth())
}

/// Whether the pinned `cert` is valid for `name` now: its names (webpki's own check) and its
/// validity period.
fn pinned_is_valid(cert: &CertificateDer<'_>, name: &ServerName<'_>, now: UnixTime) -> bool {
    use x509_cert::der::Decode as _;
    let Ok(ee) = webpki::EndEntityCert::try_from(cert) else {
        return false;
    };
    if ee.verify_is_valid_for_subject_name(name).is_err() {
        return false;
    }
    let Ok(parsed) = x509_cert::Certificate::from_der(cert.as_ref()) else {
        return false;
    };
    let validity = &parsed.tbs_certificate.validity;
    let now = std::time::Duration::from_secs(now.as_secs());
    validity.not_before.to_unix_duration() <= now && now <= validity.not_after.to_unix_duration()
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
            Err(e @ Error::InvalidCertificate(_)) => {
                if self
                    .pinned
                    .iter()
                    .any(|p| p.as_ref() == end_entity.as_ref())
                    && pinned_is_valid(end_entity, server_name, now)
                {
                    Ok(ServerCertVerified::assertion())
                } else {
                    Err(e)
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
