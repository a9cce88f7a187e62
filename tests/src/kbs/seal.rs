//! The dev KBS's side of the JWE (RFC 7516 flattened JSON, RFC 7518 algorithms), written from
//! the RFC text independently of the client's decryption so that a mistake in one cannot hide a
//! mistake in the other.

use aes_gcm::aead::{Aead, KeyInit, Payload};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use rand::RngCore;
use sha2::{Digest, Sha256};

/// How to damage the JWE, for failure tests.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum JweFault {
    #[default]
    None,
    /// Cut the ciphertext member in half.
    Truncated,
    /// Encrypt to a fresh key instead of the session's.
    ForeignKey,
    /// Name an algorithm the protocol does not use.
    WrongAlg,
    /// Flip a bit of the ciphertext.
    FlippedBit,
}

/// Encrypts `plaintext` to the JWK `tee_pubkey` (an EC P-256 `ECDH-ES+A256KW` or RSA
/// `RSA-OAEP-256` key), returning the flattened JSON.
pub fn seal(
    tee_pubkey: &serde_json::Value,
    plaintext: &[u8],
    fault: JweFault,
) -> Result<String, String> {
    let mut rng = rand::rngs::OsRng;
    let mut cek = [0u8; 32];
    rng.fill_bytes(&mut cek);
    let kty = tee_pubkey["kty"].as_str().unwrap_or_default();
    let (header, encrypted_key) = match kty {
        "EC" => {
            let mut jwk = tee_pubkey.clone();
            if fault == JweFault::ForeignKey {
                let other = p256::SecretKey::random(&mut rng).public_key();
                jwk = serde_json::from_str(&other.to_jwk_string()).map_err(|e| e.to_string())?;
            }
            // p256 parses only the JWK members it knows; `alg` is not one of them.
            let client = p256::PublicKey::from_jwk_str(
                &serde_json::json!({"kty": "EC", "crv": jwk["crv"], "x": jwk["x"], "y": jwk["y"]})
                    .to_string(),
            )
            .map_err(|e| format!("tee-pubkey is not a P-256 key: {e}"))?;
            let eph = p256::ecdh::EphemeralSecret::random(&mut rng);
            let z = eph.diffie_hellman(&client);
            // RFC 7518 §4.6.2: SHA-256(counter || Z || AlgorithmID || PartyUInfo || PartyVInfo
            // || SuppPubInfo), each length-prefixed field as the RFC lays it out.
            let alg = b"ECDH-ES+A256KW";
            let mut other_info = Vec::new();
            other_info.extend_from_slice(&(alg.len() as u32).to_be_bytes());
            other_info.extend_from_slice(alg);
            other_info.extend_from_slice(&0u32.to_be_bytes());
            other_info.extend_from_slice(&0u32.to_be_bytes());
            other_info.extend_from_slice(&256u32.to_be_bytes());
            let mut input = vec![0, 0, 0, 1];
            input.extend_from_slice(z.raw_secret_bytes());
            input.extend_from_slice(&other_info);
            let kek: [u8; 32] = Sha256::digest(&input).into();
            let wrapped = aes_kw::KekAes256::from(kek)
                .wrap_vec(&cek)
                .map_err(|e| e.to_string())?;
            let epk: serde_json::Value = serde_json::from_str(&eph.public_key().to_jwk_string())
                .map_err(|e| e.to_string())?;
            (
                serde_json::json!({"alg": "ECDH-ES+A256KW", "enc": "A256GCM", "epk": epk}),
                wrapped,
            )
        }
        "RSA" => {
            let n = B64
                .decode(tee_pubkey["n"].as_str().unwrap_or_default())
                .map_err(|e| e.to_string())?;
            let e = B64
                .decode(tee_pubkey["e"].as_str().unwrap_or_default())
                .map_err(|e| e.to_string())?;
            let mut key = rsa::RsaPublicKey::new(
                rsa::BigUint::from_bytes_be(&n),
                rsa::BigUint::from_bytes_be(&e),
            )
            .map_err(|e| e.to_string())?;
            if fault == JweFault::ForeignKey {
                key = rsa::RsaPrivateKey::new(&mut rng, 2048)
                    .map_err(|e| e.to_string())?
                    .to_public_key();
            }
            let wrapped = key
                .encrypt(&mut rng, rsa::Oaep::new::<Sha256>(), &cek)
                .map_err(|e| e.to_string())?;
            (
                serde_json::json!({"alg": "RSA-OAEP-256", "enc": "A256GCM"}),
                wrapped,
            )
        }
        other => return Err(format!("unsupported tee-pubkey kty `{other}`")),
    };
    let mut header = header;
    if fault == JweFault::WrongAlg {
        header["alg"] = serde_json::json!("dir");
    }
    let protected = B64.encode(header.to_string());
    let mut iv = [0u8; 12];
    rng.fill_bytes(&mut iv);
    let cipher = aes_gcm::Aes256Gcm::new_from_slice(&cek).map_err(|e| e.to_string())?;
    let mut sealed = cipher
        .encrypt(
            aes_gcm::Nonce::from_slice(&iv),
            Payload {
                msg: plaintext,
                aad: protected.as_bytes(),
            },
        )
        .map_err(|e| e.to_string())?;
    let tag = sealed.split_off(sealed.len() - 16);
    if fault == JweFault::FlippedBit && !sealed.is_empty() {
        sealed[0] ^= 1;
    }
    let mut ciphertext = B64.encode(&sealed);
    if fault == JweFault::Truncated {
        ciphertext.truncate(ciphertext.len() / 2);
    }
    Ok(serde_json::json!({
        "protected": protected,
        "encrypted_key": B64.encode(encrypted_key),
        "iv": B64.encode(iv),
        "ciphertext": ciphertext,
        "tag": B64.encode(tag),
    })
    .to_string())
}
