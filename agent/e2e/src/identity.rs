//! A client's identity inside an encrypted request (`docs/encrypted-inference.md`, "Client
//! identity"): an Ed25519 key whose signature covers a value exported from the request's own
//! HPKE context, carried in the sealed body's `ward_e2e.client` member.
//!
//! Why a signature and not HPKE's auth mode: RFC 9180's AuthEncap exists for DHKEMs only, and
//! ward's default KEM, X-Wing (ML-KEM-768 + X25519), has none, so auth mode would tie identity to
//! the classical suite. A signature works with both suites. It covers
//! `"ward-e2e client v1" || 00 || Export("message/ward-e2e client v1", 32)`: the exported value
//! depends on the HPKE shared secret, which only the client and wardd know, so a signature
//! cannot be lifted into another request, and the host, which sees only ciphertext, can neither
//! read, strip nor swap the identity (any change to the ciphertext fails to open).
//!
//! Ed25519 (`ed25519-dalek`), not a post-quantum signature: the identity authenticates a
//! request now; nothing recorded today is opened later by breaking it, unlike the KEM.

use base64::Engine as _;
use ed25519_dalek::pkcs8::{DecodePrivateKey as _, EncodePrivateKey as _};
use ed25519_dalek::{Signer as _, SigningKey, Verifier as _, VerifyingKey};
use zeroize::Zeroizing;

use super::E2eError;

/// HPKE exporter label of the value a client signs, and the signature's context prefix.
pub const CLIENT_LABEL: &[u8] = b"message/ward-e2e client v1";
const SIGNATURE_CONTEXT: &[u8] = b"ward-e2e client v1\0";
/// The prefix of a client key's name.
pub const ED25519_PREFIX: &str = "ed25519:";

/// A client's signing key.
pub struct ClientKey(SigningKey);

impl ClientKey {
    /// A fresh key.
    pub fn generate() -> ClientKey {
        ClientKey(SigningKey::generate(&mut rand::rngs::OsRng))
    }

    /// The key from a PKCS#8 PEM file's text (`openssl genpkey -algorithm ed25519` writes one).
    pub fn from_pkcs8_pem(pem: &str) -> Result<ClientKey, E2eError> {
        SigningKey::from_pkcs8_pem(pem)
            .map(ClientKey)
            .map_err(|_| E2eError::Malformed("not an Ed25519 PKCS#8 PEM private key".into()))
    }

    /// The key as PKCS#8 PEM.
    pub fn to_pkcs8_pem(&self) -> Result<Zeroizing<String>, E2eError> {
        self.0
            .to_pkcs8_pem(Default::default())
            .map(|p| Zeroizing::new(p.to_string()))
            .map_err(|_| E2eError::Malformed("the key does not encode".into()))
    }

    /// The public name of this key, as policies list it: `ed25519:<base64url of the key>`.
    pub fn id(&self) -> ClientId {
        ClientId(self.0.verifying_key())
    }

    /// The `ward_e2e.client` member for a request whose HPKE context exported `binding`.
    pub(crate) fn member(&self, binding: &[u8; 32]) -> serde_json::Value {
        let sig = self.0.sign(&signed_message(binding));
        serde_json::json!({
            "key": self.id().to_string(),
            "sig": base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(sig.to_bytes()),
        })
    }
}

/// A client's public key: who signed a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ClientId(VerifyingKey);

impl ClientId {
    /// Parses `ed25519:<base64url, 32 bytes>`.
    pub fn parse(s: &str) -> Result<ClientId, E2eError> {
        let bad = || E2eError::Malformed("a client key is `ed25519:<base64url>`".into());
        let b64 = s.strip_prefix(ED25519_PREFIX).ok_or_else(bad)?;
        let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(b64.trim_end_matches('='))
            .map_err(|_| bad())?;
        let raw: [u8; 32] = raw.try_into().map_err(|_| bad())?;
        VerifyingKey::from_bytes(&raw)
            .map(ClientId)
            .map_err(|_| bad())
    }

    /// Checks the `ward_e2e.client` member of a request whose context exported `binding`.
    pub(crate) fn verify_member(
        member: &serde_json::Value,
        binding: &[u8; 32],
    ) -> Result<ClientId, E2eError> {
        let bad = || E2eError::ClientSignature;
        let key = member.get("key").and_then(serde_json::Value::as_str);
        let sig = member.get("sig").and_then(serde_json::Value::as_str);
        let (Some(key), Some(sig)) = (key, sig) else {
            return Err(bad());
        };
        let id = ClientId::parse(key).map_err(|_| bad())?;
        let sig = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(sig)
            .map_err(|_| bad())?;
        let sig = ed25519_dalek::Signature::from_slice(&sig).map_err(|_| bad())?;
        id.0.verify(&signed_message(binding), &sig)
            .map_err(|_| bad())?;
        Ok(id)
    }
}

impl std::fmt::Display for ClientId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{ED25519_PREFIX}{}",
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(self.0.as_bytes())
        )
    }
}

fn signed_message(binding: &[u8; 32]) -> Vec<u8> {
    let mut m = SIGNATURE_CONTEXT.to_vec();
    m.extend_from_slice(binding);
    m
}
