//! JWE recipients of `org.opencontainers.image.enc.keys.jwe` (RFC 7516 JSON serialization, as
//! go-jose writes it for ocicrypt): opening the private options with the keys ward holds, and
//! making JWEs for given public keys (owner side and tests).
//!
//! Both JSON forms: flattened (one recipient: `alg`/`epk` in the protected header) and general
//! (`recipients` array with per-recipient unprotected `header`; go-jose also repeats the first
//! `encrypted_key` at the top level, which is ignored). Headers are merged protected ∪
//! shared `unprotected` ∪ recipient `header`.
//! - key management: `RSA-OAEP` (SHA-1, skopeo's choice), `RSA-OAEP-256`, `ECDH-ES+A256KW` on
//!   P-256, P-384 or P-521 (Concat KDF with SHA-256, AlgorithmID = `alg`, then AES key unwrap);
//! - content: `A256GCM`, AAD = the raw `protected` member (`.` + `aad` when present).
//!
//! Every recipient is tried with every key. Never logs keys, content keys or the plaintext
//! (the private options hold the layer key); errors name algorithms and key kinds only.

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use p256::elliptic_curve::sec1::ToEncodedPoint;
use rand::RngCore;
use rand::rngs::OsRng;
use serde::Deserialize;
use serde_json::{Map, Value, json};
use sha2::Sha256;
use zeroize::Zeroizing;

use super::keys::{Oaep, PrivateKey, PublicKey};

/// Largest JWE document accepted.
pub const MAX_JWE_BYTES: usize = 1 << 20;
/// Most recipients accepted in one JWE.
pub const MAX_RECIPIENTS: usize = 64;

/// Why no JWE recipient could be opened, or a JWE could not be made. Carries no key bytes.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum JweError {
    /// Not JSON, a member missing or not base64url, a wrong size.
    #[error("malformed JWE: {0}")]
    Malformed(String),
    /// The header names something ward does not accept (`enc` other than A256GCM, `zip`).
    #[error("unsupported JWE {field} `{value}`")]
    Unsupported { field: &'static str, value: String },
    /// None of the keys opens any recipient.
    #[error(
        "none of the {} key(s) given ({}) opens this layer; its JWE recipients are: {}",
        keys.len(), keys.join(", "), if carried.is_empty() { "none".to_string() } else { carried.join(", ") }
    )]
    NoMatchingRecipient {
        /// The recipients the layer carries (`RSA-OAEP`, `ECDH-ES+A256KW on P-256`, ...).
        carried: Vec<String>,
        /// The keys that were tried (`RSA-2048`, `EC P-256`).
        keys: Vec<String>,
    },
    /// A key opened a recipient but the content failed authentication: altered on the way.
    #[error(
        "JWE content authentication failed (A256GCM tag): the key wrap opened, the content was altered"
    )]
    Authentication,
    /// Making a JWE failed (a recipient key refused to encrypt).
    #[error("JWE encryption for {recipient} failed")]
    Encrypt { recipient: String },
}

#[derive(Deserialize)]
struct Document {
    #[serde(default)]
    protected: Option<String>,
    #[serde(default)]
    unprotected: Option<Map<String, Value>>,
    #[serde(default)]
    header: Option<Map<String, Value>>,
    #[serde(default)]
    encrypted_key: Option<String>,
    #[serde(default)]
    recipients: Option<Vec<Recipient>>,
    #[serde(default)]
    aad: Option<String>,
    iv: String,
    ciphertext: String,
    tag: String,
}

#[derive(Deserialize)]
struct Recipient {
    #[serde(default)]
    header: Option<Map<String, Value>>,
    #[serde(default)]
    encrypted_key: Option<String>,
}

pub(super) fn b64(name: &str, s: &str) -> Result<Vec<u8>, JweError> {
    URL_SAFE_NO_PAD
        .decode(s.trim_end_matches('='))
        .map_err(|_| JweError::Malformed(format!("`{name}` is not base64url")))
}

fn str_member<'a>(header: &'a Map<String, Value>, name: &str) -> Option<&'a str> {
    header.get(name).and_then(Value::as_str)
}

/// The Concat KDF of RFC 7518 §4.6.2 with SHA-256 for a 256-bit key: the same function the KBS
/// client uses (ward-kbs-wire's, tested there against RFC 7518 Appendix C).
pub(super) fn concat_kdf(z: &[u8], alg: &str, apu: &[u8], apv: &[u8]) -> Zeroizing<[u8; 32]> {
    let derived = ward_kbs_wire::concat_kdf(z, alg, apu, apv, 256);
    let mut out = Zeroizing::new([0u8; 32]);
    for (o, d) in out.iter_mut().zip(derived.iter()) {
        *o = *d;
    }
    out
}

/// Uncompressed SEC1 point from JWK coordinates of `n` bytes each.
fn sec1_point(x: &[u8], y: &[u8], n: usize) -> Option<Vec<u8>> {
    if x.len() != n || y.len() != n {
        return None;
    }
    let mut p = Vec::with_capacity(1 + 2 * n);
    p.push(4);
    p.extend_from_slice(x);
    p.extend_from_slice(y);
    Some(p)
}

/// What one recipient needs: its merged header, the encrypted key, and a description.
struct Slot {
    header: Map<String, Value>,
    encrypted_key: Vec<u8>,
}

impl Slot {
    fn alg(&self) -> &str {
        str_member(&self.header, "alg").unwrap_or("")
    }

    fn describe(&self) -> String {
        let crv = self
            .header
            .get("epk")
            .and_then(|e| e.get("crv"))
            .and_then(Value::as_str);
        match crv {
            Some(c) => format!("{} on {c}", self.alg()),
            None => self.alg().to_string(),
        }
    }

    /// The content key, if `key` opens this recipient.
    fn unwrap_with(&self, key: &PrivateKey) -> Option<Zeroizing<Vec<u8>>> {
        match (self.alg(), key) {
            ("RSA-OAEP", PrivateKey::Rsa(k)) => k.decrypt(Oaep::Sha1, &self.encrypted_key),
            ("RSA-OAEP-256", PrivateKey::Rsa(k)) => k.decrypt(Oaep::Sha256, &self.encrypted_key),
            ("ECDH-ES+A256KW", PrivateKey::P256(_) | PrivateKey::P384(_) | PrivateKey::P521(_)) => {
                self.ecdh_unwrap(key)
            }
            _ => None,
        }
    }

    fn ecdh_unwrap(&self, key: &PrivateKey) -> Option<Zeroizing<Vec<u8>>> {
        let epk = self.header.get("epk")?.as_object()?;
        if str_member(epk, "kty") != Some("EC") {
            return None;
        }
        let x = b64("epk.x", str_member(epk, "x")?).ok()?;
        let y = b64("epk.y", str_member(epk, "y")?).ok()?;
        let z: Zeroizing<Vec<u8>> = match (str_member(epk, "crv")?, key) {
            ("P-256", PrivateKey::P256(sk)) => {
                let pk = p256::PublicKey::from_sec1_bytes(&sec1_point(&x, &y, 32)?).ok()?;
                let s = p256::ecdh::diffie_hellman(sk.to_nonzero_scalar(), pk.as_affine());
                Zeroizing::new(s.raw_secret_bytes().to_vec())
            }
            ("P-384", PrivateKey::P384(sk)) => {
                let pk = p384::PublicKey::from_sec1_bytes(&sec1_point(&x, &y, 48)?).ok()?;
                let s = p384::ecdh::diffie_hellman(sk.to_nonzero_scalar(), pk.as_affine());
                Zeroizing::new(s.raw_secret_bytes().to_vec())
            }
            ("P-521", PrivateKey::P521(sk)) => {
                let pk = p521::PublicKey::from_sec1_bytes(&sec1_point(&x, &y, 66)?).ok()?;
                let s = p521::ecdh::diffie_hellman(sk.to_nonzero_scalar(), pk.as_affine());
                Zeroizing::new(s.raw_secret_bytes().to_vec())
            }
            _ => return None,
        };
        let apu = str_member(&self.header, "apu").map_or(Ok(Vec::new()), |s| b64("apu", s));
        let apv = str_member(&self.header, "apv").map_or(Ok(Vec::new()), |s| b64("apv", s));
        let kek = concat_kdf(&z, "ECDH-ES+A256KW", &apu.ok()?, &apv.ok()?);
        let kw = aes_kw::KekAes256::from(*kek);
        kw.unwrap_vec(&self.encrypted_key).ok().map(Zeroizing::new)
    }
}

fn merged(parts: &[Option<&Map<String, Value>>]) -> Map<String, Value> {
    let mut out = Map::new();
    for part in parts.iter().flatten() {
        for (k, v) in part.iter() {
            out.insert(k.clone(), v.clone());
        }
    }
    out
}

/// Where one JWE stood after trying every key on every recipient.
enum Outcome {
    Opened(Zeroizing<Vec<u8>>),
    /// A recipient opened but the content did not authenticate.
    Tampered,
    /// Nothing opened; these are the recipients it carries.
    Closed(Vec<String>),
}

fn try_document(body: &[u8], keys: &[PrivateKey]) -> Result<Outcome, JweError> {
    if body.len() > MAX_JWE_BYTES {
        return Err(JweError::Malformed(format!(
            "{} bytes is more than the {MAX_JWE_BYTES} accepted",
            body.len()
        )));
    }
    let doc: Document = serde_json::from_slice(body)
        .map_err(|e| JweError::Malformed(format!("not JWE JSON ({:?})", e.classify())))?;
    let protected_raw = doc.protected.clone().unwrap_or_default();
    let protected: Map<String, Value> = if protected_raw.is_empty() {
        Map::new()
    } else {
        serde_json::from_slice(&b64("protected", &protected_raw)?)
            .map_err(|_| JweError::Malformed("protected header is not a JSON object".to_string()))?
    };
    let shared = merged(&[Some(&protected), doc.unprotected.as_ref()]);
    let recipients: Vec<Recipient> = match doc.recipients {
        Some(r) if !r.is_empty() => r,
        Some(_) => return Err(JweError::Malformed("empty `recipients`".to_string())),
        None => vec![Recipient {
            header: doc.header,
            encrypted_key: doc.encrypted_key,
        }],
    };
    if recipients.len() > MAX_RECIPIENTS {
        return Err(JweError::Malformed(format!(
            "{} recipients is more than the {MAX_RECIPIENTS} accepted",
            recipients.len()
        )));
    }
    let mut slots = Vec::with_capacity(recipients.len());
    for r in &recipients {
        let header = merged(&[Some(&shared), r.header.as_ref()]);
        if let Some(enc) = str_member(&header, "enc").filter(|e| *e != "A256GCM") {
            return Err(JweError::Unsupported {
                field: "enc",
                value: enc.to_string(),
            });
        }
        if str_member(&header, "enc").is_none() {
            return Err(JweError::Malformed("no `enc` header".to_string()));
        }
        if let Some(zip) = header.get("zip") {
            return Err(JweError::Unsupported {
                field: "zip",
                value: zip.to_string(),
            });
        }
        let encrypted_key = b64("encrypted_key", r.encrypted_key.as_deref().unwrap_or(""))?;
        slots.push(Slot {
            header,
            encrypted_key,
        });
    }
    let iv = b64("iv", &doc.iv)?;
    if iv.len() != 12 {
        return Err(JweError::Malformed(format!(
            "`iv` is {} bytes, not 12",
            iv.len()
        )));
    }
    let tag = b64("tag", &doc.tag)?;
    if tag.len() != 16 {
        return Err(JweError::Malformed(format!(
            "`tag` is {} bytes, not 16",
            tag.len()
        )));
    }
    let mut sealed = b64("ciphertext", &doc.ciphertext)?;
    sealed.extend_from_slice(&tag);
    let aad = match &doc.aad {
        Some(a) => format!("{protected_raw}.{a}"),
        None => protected_raw,
    };

    let mut tampered = false;
    for slot in &slots {
        for key in keys {
            let Some(cek) = slot.unwrap_with(key) else {
                continue;
            };
            let Ok(cipher) = Aes256Gcm::new_from_slice(&cek) else {
                continue; // a content key of the wrong size: not this recipient
            };
            let payload = Payload {
                msg: &sealed,
                aad: aad.as_bytes(),
            };
            match cipher.decrypt(Nonce::from_slice(&iv), payload) {
                Ok(plain) => return Ok(Outcome::Opened(Zeroizing::new(plain))),
                Err(_) => tampered = true,
            }
        }
    }
    if tampered {
        return Ok(Outcome::Tampered);
    }
    Ok(Outcome::Closed(slots.iter().map(Slot::describe).collect()))
}

/// Opens the first JWE (of an annotation's list) that one of `keys` opens, and returns its
/// plaintext (the private options JSON).
pub fn decrypt(jwes: &[Vec<u8>], keys: &[PrivateKey]) -> Result<Zeroizing<Vec<u8>>, JweError> {
    let mut carried = Vec::new();
    let mut tampered = false;
    let mut first_error = None;
    for body in jwes {
        match try_document(body, keys) {
            Ok(Outcome::Opened(plain)) => return Ok(plain),
            Ok(Outcome::Tampered) => tampered = true,
            Ok(Outcome::Closed(c)) => carried.extend(c),
            Err(e) => {
                first_error.get_or_insert(e);
            }
        }
    }
    if tampered {
        return Err(JweError::Authentication);
    }
    if carried.is_empty()
        && let Some(e) = first_error
    {
        return Err(e);
    }
    Err(JweError::NoMatchingRecipient {
        carried,
        keys: keys.iter().map(PrivateKey::describe).collect(),
    })
}

pub(super) fn b64u(b: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(b)
}

fn epk_json(crv: &str, x: &[u8], y: &[u8]) -> Value {
    json!({ "kty": "EC", "crv": crv, "x": b64u(x), "y": b64u(y) })
}

/// Wraps `cek` for one recipient: its per-recipient header and encrypted key.
fn wrap_for(key: &PublicKey, cek: &[u8]) -> Result<(Value, Vec<u8>), JweError> {
    let failed = || JweError::Encrypt {
        recipient: key.describe(),
    };
    let (epk, z) = match key {
        PublicKey::Rsa(k) => {
            let ek = k
                .encrypt(&mut OsRng, rsa::Oaep::new::<Sha256>(), cek)
                .map_err(|_| failed())?;
            return Ok((json!({ "alg": "RSA-OAEP-256" }), ek));
        }
        PublicKey::P256(pk) => {
            let eph = p256::ecdh::EphemeralSecret::random(&mut OsRng);
            let point = eph.public_key().to_encoded_point(false);
            let (x, y) = point.x().zip(point.y()).ok_or_else(failed)?;
            let z = Zeroizing::new(eph.diffie_hellman(pk).raw_secret_bytes().to_vec());
            (epk_json("P-256", x, y), z)
        }
        PublicKey::P384(pk) => {
            let eph = p384::ecdh::EphemeralSecret::random(&mut OsRng);
            let point = eph.public_key().to_encoded_point(false);
            let (x, y) = point.x().zip(point.y()).ok_or_else(failed)?;
            let z = Zeroizing::new(eph.diffie_hellman(pk).raw_secret_bytes().to_vec());
            (epk_json("P-384", x, y), z)
        }
        PublicKey::P521(pk) => {
            let eph = p521::ecdh::EphemeralSecret::random(&mut OsRng);
            let point = eph.public_key().to_encoded_point(false);
            let (x, y) = point.x().zip(point.y()).ok_or_else(failed)?;
            let z = Zeroizing::new(eph.diffie_hellman(pk).raw_secret_bytes().to_vec());
            (epk_json("P-521", x, y), z)
        }
    };
    let kek = concat_kdf(&z, "ECDH-ES+A256KW", &[], &[]);
    let ek = aes_kw::KekAes256::from(*kek)
        .wrap_vec(cek)
        .map_err(|_| failed())?;
    Ok((json!({ "alg": "ECDH-ES+A256KW", "epk": epk }), ek))
}

/// Makes a general-JSON JWE of `plaintext` for every key in `recipients` (`RSA-OAEP-256` for
/// RSA, `ECDH-ES+A256KW` for EC), content `A256GCM`.
pub fn encrypt(plaintext: &[u8], recipients: &[PublicKey]) -> Result<Vec<u8>, JweError> {
    if recipients.is_empty() || recipients.len() > MAX_RECIPIENTS {
        return Err(JweError::Malformed(format!(
            "{} recipients: need 1 to {MAX_RECIPIENTS}",
            recipients.len()
        )));
    }
    let mut cek = Zeroizing::new([0u8; 32]);
    OsRng.fill_bytes(&mut cek[..]);
    let mut iv = [0u8; 12];
    OsRng.fill_bytes(&mut iv);
    let protected = b64u(br#"{"enc":"A256GCM"}"#);
    let mut list = Vec::with_capacity(recipients.len());
    for key in recipients {
        let (header, ek) = wrap_for(key, &cek[..])?;
        list.push(json!({ "header": header, "encrypted_key": b64u(&ek) }));
    }
    let cipher = Aes256Gcm::new_from_slice(&cek[..]).map_err(|_| JweError::Encrypt {
        recipient: "A256GCM".to_string(),
    })?;
    let sealed = cipher
        .encrypt(
            Nonce::from_slice(&iv),
            Payload {
                msg: plaintext,
                aad: protected.as_bytes(),
            },
        )
        .map_err(|_| JweError::Encrypt {
            recipient: "A256GCM".to_string(),
        })?;
    let (ct, tag) = sealed.split_at(sealed.len().saturating_sub(16));
    let doc = json!({
        "protected": protected,
        "recipients": list,
        "iv": b64u(&iv),
        "ciphertext": b64u(ct),
        "tag": b64u(tag),
    });
    serde_json::to_vec(&doc).map_err(|_| JweError::Malformed("serialising".to_string()))
}
