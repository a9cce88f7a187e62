//! Sigstore (cosign) image signatures as containers/image and cosign store them: an OCI manifest
//! tagged `sha256-<hex>.sig` in the image's repository, whose layers are "simple signing"
//! payloads (`application/vnd.dev.cosign.simplesigning.v1+json`) with the base64 signature in
//! the `dev.cosignproject.cosign/signature` annotation. The signature is over the payload bytes,
//! SHA-256, with the owner's public key (ECDSA P-256 or P-384, DER-encoded; or RSA PKCS#1 v1.5).
//!
//! Keyless signing (Fulcio certificates, Rekor bundles) is not supported: a policy asking for it
//! is refused when loaded.

use base64::Engine as _;
use p256::pkcs8::DecodePublicKey;
use serde::Deserialize;
use sha2::{Digest as _, Sha256};

use super::identity::Named;

/// Media type of a simple-signing payload layer.
pub const PAYLOAD_MEDIA_TYPE: &str = "application/vnd.dev.cosign.simplesigning.v1+json";
/// Annotation holding the base64 signature of a payload layer.
pub const SIGNATURE_ANNOTATION: &str = "dev.cosignproject.cosign/signature";
/// The `critical.type` every payload must carry.
pub const PAYLOAD_TYPE: &str = "cosign container image signature";
/// Largest payload accepted (they are a few hundred bytes).
pub const MAX_PAYLOAD: u64 = 64 << 10;
/// Most signatures looked at for one image.
pub const MAX_SIGNATURES: usize = 64;

/// The tag under which signatures of `digest` (`sha256:<hex>`) are stored.
pub fn signature_tag(digest: &crate::digest::Digest) -> String {
    format!("sha256-{}.sig", digest.hex())
}

/// A signature as fetched: nothing in it is trusted until [`PublicKey::verify`] held.
#[derive(Clone, Debug)]
pub struct UntrustedSignature {
    pub payload: Vec<u8>,
    pub signature_b64: String,
}

/// A public key a `sigstoreSigned` requirement trusts.
#[derive(Clone, Debug)]
pub enum PublicKey {
    P256(p256::ecdsa::VerifyingKey),
    P384(p384::ecdsa::VerifyingKey),
    Rsa(rsa::pkcs1v15::VerifyingKey<Sha256>),
}

impl PublicKey {
    /// Reads a PEM `PUBLIC KEY` (SubjectPublicKeyInfo), as `cosign generate-key-pair` writes it.
    pub fn from_pem(pem: &str) -> Result<PublicKey, String> {
        if let Ok(k) = p256::ecdsa::VerifyingKey::from_public_key_pem(pem) {
            return Ok(PublicKey::P256(k));
        }
        if let Ok(k) = p384::ecdsa::VerifyingKey::from_public_key_pem(pem) {
            return Ok(PublicKey::P384(k));
        }
        if let Ok(k) = rsa::RsaPublicKey::from_public_key_pem(pem) {
            return Ok(PublicKey::Rsa(rsa::pkcs1v15::VerifyingKey::new(k)));
        }
        Err("not a PEM public key ward can verify with (ECDSA P-256/P-384 or RSA)".into())
    }

    /// Checks `signature` (DER for ECDSA) over `payload`, hashed with SHA-256.
    pub fn verify(&self, payload: &[u8], signature: &[u8]) -> Result<(), String> {
        use p256::ecdsa::signature::Verifier as _;
        use p256::ecdsa::signature::hazmat::PrehashVerifier as _;
        match self {
            PublicKey::P256(k) => {
                let sig = p256::ecdsa::Signature::from_der(signature)
                    .map_err(|_| "not a DER ECDSA P-256 signature".to_string())?;
                k.verify(payload, &sig)
                    .map_err(|_| "the signature does not verify".to_string())
            }
            PublicKey::P384(k) => {
                let sig = p384::ecdsa::Signature::from_der(signature)
                    .map_err(|_| "not a DER ECDSA P-384 signature".to_string())?;
                k.verify_prehash(&Sha256::digest(payload), &sig)
                    .map_err(|_| "the signature does not verify".to_string())
            }
            PublicKey::Rsa(k) => {
                let sig = rsa::pkcs1v15::Signature::try_from(signature)
                    .map_err(|_| "not an RSA signature".to_string())?;
                k.verify(payload, &sig)
                    .map_err(|_| "the signature does not verify".to_string())
            }
        }
    }
}

#[derive(Deserialize)]
struct Payload {
    critical: Critical,
}

#[derive(Deserialize)]
struct Critical {
    identity: Identity,
    image: Image,
    #[serde(rename = "type")]
    kind: String,
}

#[derive(Deserialize)]
struct Identity {
    #[serde(rename = "docker-reference")]
    docker_reference: String,
}

#[derive(Deserialize)]
struct Image {
    #[serde(rename = "docker-manifest-digest")]
    docker_manifest_digest: String,
}

/// What a verified payload vouches for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Vouched {
    pub reference: Named,
    pub manifest_digest: String,
}

/// Verifies `sig` with `key` and then reads its payload; the payload is parsed only after the
/// signature held.
pub fn verify(sig: &UntrustedSignature, key: &PublicKey) -> Result<Vouched, String> {
    let raw = base64::engine::general_purpose::STANDARD
        .decode(sig.signature_b64.trim())
        .map_err(|_| format!("the `{SIGNATURE_ANNOTATION}` annotation is not base64"))?;
    key.verify(&sig.payload, &raw)?;
    let payload: Payload = serde_json::from_slice(&sig.payload)
        .map_err(|e| format!("signed payload is not a simple-signing document: {e}"))?;
    if payload.critical.kind != PAYLOAD_TYPE {
        return Err(format!(
            "signed payload has type `{}`, not `{PAYLOAD_TYPE}`",
            payload.critical.kind
        ));
    }
    let reference = Named::parse_claimed(&payload.critical.identity.docker_reference)?;
    Ok(Vouched {
        reference,
        manifest_digest: payload.critical.image.docker_manifest_digest,
    })
}

#[cfg(test)]
pub(crate) mod testkit {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use base64::Engine as _;
    use p256::ecdsa::signature::Signer as _;
    use p256::pkcs8::EncodePublicKey as _;

    use super::*;

    pub fn keypair(seed: u8) -> (p256::ecdsa::SigningKey, String) {
        let sk = p256::ecdsa::SigningKey::from_slice(&[seed.max(1); 32]).unwrap();
        let pem = sk
            .verifying_key()
            .to_public_key_pem(p256::pkcs8::LineEnding::LF)
            .unwrap();
        (sk, pem)
    }

    pub fn payload(reference: &str, digest: &str) -> Vec<u8> {
        serde_json::to_vec(&serde_json::json!({
            "critical": {
                "identity": {"docker-reference": reference},
                "image": {"docker-manifest-digest": digest},
                "type": PAYLOAD_TYPE,
            },
            "optional": {"creator": "ward tests"},
        }))
        .unwrap()
    }

    pub fn sign(sk: &p256::ecdsa::SigningKey, payload: Vec<u8>) -> UntrustedSignature {
        let sig: p256::ecdsa::Signature = sk.sign(&payload);
        UntrustedSignature {
            payload,
            signature_b64: base64::engine::general_purpose::STANDARD.encode(sig.to_der()),
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use super::testkit::*;
    use super::*;

    const D: &str = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    /// A genuine artifact made by cosign v3.0.4 (`cosign sign --key`, attached signature), as
    /// published in a public test suite: the key, the payload blob and the signature annotation.
    #[test]
    fn a_signature_made_by_cosign_verifies() {
        const PUB: &str = "-----BEGIN PUBLIC KEY-----\n\
            MFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAEA9oFvTJJuu0cszKBsiuqfFYN3NLV\n\
            meleaASYW5l+nqDxoUg4f8177owlgVD89pZQ9jUxP8dbibmDJpvcjBo9RQ==\n\
            -----END PUBLIC KEY-----\n";
        const PAYLOAD: &str = r#"{"critical":{"identity":{"docker-reference":"localhost:15381/tobby/fixture"},"image":{"docker-manifest-digest":"sha256:f20c43161d73848408ef247f0ec7111b19fe58ffebc0cbcaa0d2c8bda4967268"},"type":"cosign container image signature"},"optional":null}"#;
        const SIG: &str = "MEUCIEB+pz4s+9yxG+Om/bukeAfwloKFEISUhxLvIYlP02P8AiEAz1oNkilC+cprxcrEHqN0vxM+zvP34ikHFzi8e7Sevls=";
        assert_eq!(
            crate::digest::Digest::of(PAYLOAD.as_bytes()).to_string(),
            "sha256:3a29d26a2fc848d25ccf9c2288194ca90599e70ef69087644f186e5e7331f28b",
            "the payload bytes are the captured blob"
        );
        let key = PublicKey::from_pem(PUB).unwrap();
        let mut sig = UntrustedSignature {
            payload: PAYLOAD.as_bytes().to_vec(),
            signature_b64: SIG.into(),
        };
        let v = verify(&sig, &key).unwrap();
        assert_eq!(
            v.manifest_digest,
            "sha256:f20c43161d73848408ef247f0ec7111b19fe58ffebc0cbcaa0d2c8bda4967268"
        );
        assert_eq!(v.reference.full(), "localhost:15381/tobby/fixture");
        sig.payload[30] ^= 0x20;
        assert!(verify(&sig, &key).is_err());
    }

    #[test]
    fn a_good_signature_vouches_for_its_payload() {
        let (sk, pem) = keypair(7);
        let key = PublicKey::from_pem(&pem).unwrap();
        let v = verify(&sign(&sk, payload("r.io/app:v1", D)), &key).unwrap();
        assert_eq!(v.manifest_digest, D);
        assert_eq!(v.reference.full(), "r.io/app:v1");
    }

    #[test]
    fn tampered_payloads_wrong_keys_and_junk_are_refused() {
        let (sk, _) = keypair(7);
        let (_, other_pem) = keypair(9);
        let mut sig = sign(&sk, payload("r.io/app:v1", D));
        let other = PublicKey::from_pem(&other_pem).unwrap();
        assert!(
            verify(&sig, &other)
                .unwrap_err()
                .contains("does not verify")
        );
        let (_, pem) = keypair(7);
        let key = PublicKey::from_pem(&pem).unwrap();
        sig.payload[20] ^= 1;
        assert!(verify(&sig, &key).unwrap_err().contains("does not verify"));
        let junk = UntrustedSignature {
            payload: b"{}".to_vec(),
            signature_b64: "%%%".into(),
        };
        assert!(verify(&junk, &key).unwrap_err().contains("base64"));
        // A valid signature over something that is not a cosign payload.
        let wrong_type = sign(&sk, br#"{"critical":{"identity":{"docker-reference":"r.io/a:1"},"image":{"docker-manifest-digest":"x"},"type":"other"}}"#.to_vec());
        assert!(verify(&wrong_type, &key).unwrap_err().contains("type"));
        assert!(
            PublicKey::from_pem("-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n")
                .is_err()
        );
    }

    #[test]
    fn rsa_and_p384_keys_verify_too() {
        use p256::ecdsa::signature::hazmat::PrehashSigner as _;
        use p256::pkcs8::EncodePublicKey as _;
        use rsa::signature::{SignatureEncoding as _, Signer as _};
        let msg = payload("r.io/app:v1", D);

        let sk = p384::ecdsa::SigningKey::from_slice(&[3u8; 48]).unwrap();
        let pem = sk
            .verifying_key()
            .to_public_key_pem(p256::pkcs8::LineEnding::LF)
            .unwrap();
        let sig: p384::ecdsa::Signature = sk.sign_prehash(&Sha256::digest(&msg)).unwrap();
        PublicKey::from_pem(&pem)
            .unwrap()
            .verify(&msg, sig.to_der().as_bytes())
            .unwrap();

        let rsa_key = rsa::RsaPrivateKey::new(&mut rand::thread_rng(), 1024).unwrap();
        let pem = rsa_key
            .to_public_key()
            .to_public_key_pem(rsa::pkcs8::LineEnding::LF)
            .unwrap();
        let signer = rsa::pkcs1v15::SigningKey::<Sha256>::new(rsa_key);
        let sig = signer.sign(&msg).to_vec();
        let key = PublicKey::from_pem(&pem).unwrap();
        key.verify(&msg, &sig).unwrap();
        assert!(key.verify(b"other", &sig).is_err());
    }
}
