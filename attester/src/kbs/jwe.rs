//! Decrypting the JWE (RFC 7516, flattened JSON) in which the KBS returns a resource.
//!
//! Key management: `ECDH-ES+A256KW` (Concat KDF with SHA-256, then AES key unwrap) and
//! `RSA-OAEP-256`; content: `A256GCM` with a 12-byte IV. The AAD is the `protected` member
//! exactly as received (the server re-serialising a parsed header would change the bytes).
//! Plaintext comes back in a zeroizing buffer and is never logged.

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::Deserialize;
use ward_kbs_wire::concat_kdf;
use zeroize::Zeroizing;

use super::tee_key::TeeKey;

/// Largest JWE accepted (a KBS resource is a key or a small file).
pub const MAX_JWE_BYTES: usize = 16 << 20;

/// Why a JWE could not be decrypted. None of these carries key or plaintext bytes.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum JweError {
    /// Not JSON, or a member is missing or not base64url.
    #[error("malformed JWE: {0}")]
    Malformed(String),
    /// The header names an algorithm ward does not accept.
    #[error("unsupported JWE {field} `{value}`")]
    Unsupported { field: &'static str, value: String },
    /// The JWE was made for another kind of key than this session's.
    #[error("the JWE uses {alg}, but this session's TEE key is {key}")]
    WrongKeyType { alg: String, key: &'static str },
    /// Key unwrap or content authentication failed: made for another key, or tampered with.
    #[error("JWE authentication failed ({0}): made for another key, or altered on the way")]
    Authentication(&'static str),
}

#[derive(Deserialize)]
struct Flattened {
    protected: String,
    #[serde(default)]
    encrypted_key: String,
    iv: String,
    ciphertext: String,
    tag: String,
}

#[derive(Deserialize)]
struct Header {
    alg: String,
    enc: String,
    #[serde(default)]
    epk: Option<serde_json::Value>,
    #[serde(default)]
    apu: Option<String>,
    #[serde(default)]
    apv: Option<String>,
}

fn b64(name: &str, s: &str) -> Result<Vec<u8>, JweError> {
    URL_SAFE_NO_PAD
        .decode(s.trim_end_matches('='))
        .map_err(|e| JweError::Malformed(format!("`{name}` is not base64url: {e}")))
}

/// Decrypts a flattened-JSON JWE with the session's TEE key.
pub fn decrypt(body: &[u8], key: &TeeKey) -> Result<Zeroizing<Vec<u8>>, JweError> {
    if body.len() > MAX_JWE_BYTES {
        return Err(JweError::Malformed(format!(
            "{} bytes is more than the {MAX_JWE_BYTES} accepted",
            body.len()
        )));
    }
    let jwe: Flattened =
        serde_json::from_slice(body).map_err(|e| JweError::Malformed(e.to_string()))?;
    let header: Header = serde_json::from_slice(&b64("protected", &jwe.protected)?)
        .map_err(|e| JweError::Malformed(format!("protected header: {e}")))?;
    if header.enc != "A256GCM" {
        return Err(JweError::Unsupported {
            field: "enc",
            value: header.enc,
        });
    }
    let encrypted_key = b64("encrypted_key", &jwe.encrypted_key)?;
    let cek: Zeroizing<Vec<u8>> = match header.alg.as_str() {
        "ECDH-ES+A256KW" => {
            let secret = key.ec().ok_or_else(|| JweError::WrongKeyType {
                alg: header.alg.clone(),
                key: key.kind(),
            })?;
            let epk = header
                .epk
                .as_ref()
                .ok_or_else(|| JweError::Malformed("ECDH-ES without `epk`".to_string()))?;
            let epk = p256::PublicKey::from_jwk_str(&epk.to_string())
                .map_err(|_| JweError::Malformed("`epk` is not a P-256 public key".to_string()))?;
            let shared = p256::ecdh::diffie_hellman(secret.to_nonzero_scalar(), epk.as_affine());
            let apu = header.apu.as_deref().map(|s| b64("apu", s)).transpose()?;
            let apv = header.apv.as_deref().map(|s| b64("apv", s)).transpose()?;
            let kek = concat_kdf(
                shared.raw_secret_bytes(),
                "ECDH-ES+A256KW",
                apu.as_deref().unwrap_or_default(),
                apv.as_deref().unwrap_or_default(),
                256,
            );
            if encrypted_key.len() != 40 {
                return Err(JweError::Malformed(format!(
                    "A256KW `encrypted_key` is {} bytes, not 40",
                    encrypted_key.len()
                )));
            }
            let mut kek_bytes = Zeroizing::new([0u8; 32]);
            if kek.len() != kek_bytes.len() {
                return Err(JweError::Authentication("derived key length"));
            }
            kek_bytes.copy_from_slice(&kek);
            let kw = aes_kw::KekAes256::from(*kek_bytes);
            Zeroizing::new(
                kw.unwrap_vec(&encrypted_key)
                    .map_err(|_| JweError::Authentication("AES key unwrap"))?,
            )
        }
        "RSA-OAEP-256" => {
            let private = key.rsa().ok_or_else(|| JweError::WrongKeyType {
                alg: header.alg.clone(),
                key: key.kind(),
            })?;
            private
                .decrypt_oaep_sha256(&encrypted_key)
                .ok_or(JweError::Authentication("RSA-OAEP-256"))?
        }
        other => {
            return Err(JweError::Unsupported {
                field: "alg",
                value: other.to_string(),
            });
        }
    };
    if cek.len() != 32 {
        return Err(JweError::Authentication("content key length"));
    }
    let iv = b64("iv", &jwe.iv)?;
    if iv.len() != 12 {
        return Err(JweError::Malformed(format!(
            "`iv` is {} bytes, not 12",
            iv.len()
        )));
    }
    let mut sealed = b64("ciphertext", &jwe.ciphertext)?;
    let tag = b64("tag", &jwe.tag)?;
    if tag.len() != 16 {
        return Err(JweError::Malformed(format!(
            "`tag` is {} bytes, not 16",
            tag.len()
        )));
    }
    sealed.extend_from_slice(&tag);
    let cipher = Aes256Gcm::new_from_slice(&cek)
        .map_err(|_| JweError::Authentication("content key length"))?;
    let plain = cipher
        .decrypt(
            Nonce::from_slice(&iv),
            Payload {
                msg: &sealed,
                aad: jwe.protected.as_bytes(),
            },
        )
        .map_err(|_| JweError::Authentication("A256GCM tag"))?;
    Ok(Zeroizing::new(plain))
}
