//! CoCo sealed secrets: `sealed.<header>.<payload>.<signature>`, an ES256 JWS (base64url, no
//! padding) whose header names the verification key (`kid`), and whose payload says where the
//! secret lives. `vault` secrets are KBS resources named by `name`; `envelope` secrets need an
//! external KMS (CoCo supports Aliyun and eHSM), which ward does not have: they are refused with
//! that reason rather than half-handled.
//!
//! The signature is checked before anything in the payload is acted on. The key is a P-256 JWK,
//! from the KBS when `kid` is a `kbs:///` URI, otherwise from a file named `kid` in the local key
//! directory. Plaintext is returned in a zeroizing buffer and never logged.

use std::path::{Path, PathBuf};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use p256::ecdsa::signature::Verifier;
use serde::Deserialize;

/// Where CoCo keeps local sealed-secret verification keys.
pub const DEFAULT_KEY_DIR: &str = "/run/confidential-containers/cdh/sealed-secret";
/// Longest sealed secret accepted.
pub const MAX_SEALED: usize = 1 << 20;

/// Why a sealed secret was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SealedSecretError {
    /// Not `sealed.` + three base64url parts with JSON header and payload.
    #[error("not a sealed secret: {0}")]
    Format(String),
    /// The header's algorithm is not ES256.
    #[error("sealed secret algorithm `{0}` is not supported (ES256 only)")]
    Algorithm(String),
    /// The `kid` names no usable key.
    #[error("verification key `{kid}`: {detail}")]
    Key { kid: String, detail: String },
    /// The signature does not verify with the named key.
    #[error("the sealed secret's signature does not verify with key `{0}`")]
    Signature(String),
    /// A valid secret of a kind ward cannot open.
    #[error("{0}")]
    Unsupported(String),
}

#[derive(Deserialize)]
struct Header {
    alg: String,
    kid: String,
}

/// Where the secret's value is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Sealed {
    /// A KBS resource (`name`), fetched with the attestation session.
    Vault { name: String },
}

/// A sealed secret whose header was read but whose signature is not yet checked.
#[derive(Debug)]
pub struct Unverified {
    kid: String,
    signing_input: String,
    signature: Vec<u8>,
    payload: Vec<u8>,
}

/// Splits and decodes a sealed secret.
pub fn parse(sealed: &[u8]) -> Result<Unverified, SealedSecretError> {
    if sealed.len() > MAX_SEALED {
        return Err(SealedSecretError::Format(format!(
            "{} bytes is too long",
            sealed.len()
        )));
    }
    let text = std::str::from_utf8(sealed)
        .map_err(|_| SealedSecretError::Format("not UTF-8".to_string()))?
        .trim();
    let jws = text
        .strip_prefix("sealed.")
        .ok_or_else(|| SealedSecretError::Format("missing the `sealed.` prefix".to_string()))?;
    let parts: Vec<&str> = jws.split('.').collect();
    let [header_b64, payload_b64, sig_b64] = parts.as_slice() else {
        return Err(SealedSecretError::Format(format!(
            "expected header.payload.signature, found {} parts",
            parts.len()
        )));
    };
    let decode = |what: &str, s: &str| {
        URL_SAFE_NO_PAD
            .decode(s)
            .map_err(|e| SealedSecretError::Format(format!("{what} is not base64url: {e}")))
    };
    let header: Header = serde_json::from_slice(&decode("header", header_b64)?).map_err(|e| {
        SealedSecretError::Format(format!(
            "header: {}",
            ward_kbs_wire::redacted_json_error(&e)
        ))
    })?;
    if header.alg != "ES256" {
        return Err(SealedSecretError::Algorithm(header.alg));
    }
    Ok(Unverified {
        kid: header.kid,
        signing_input: format!("{header_b64}.{payload_b64}"),
        signature: decode("signature", sig_b64)?,
        payload: decode("payload", payload_b64)?,
    })
}

impl Unverified {
    /// The key id the header names.
    pub fn kid(&self) -> &str {
        &self.kid
    }

    /// Checks the signature with `jwk` (a P-256 public JWK) and reads the payload.
    pub fn verify(self, jwk: &[u8]) -> Result<Sealed, SealedSecretError> {
        let key_err = |detail: String| SealedSecretError::Key {
            kid: self.kid.clone(),
            detail,
        };
        let jwk: serde_json::Value = serde_json::from_slice(jwk).map_err(|e| {
            key_err(format!(
                "not a JWK: {}",
                ward_kbs_wire::redacted_json_error(&e)
            ))
        })?;
        let public = p256::PublicKey::from_jwk_str(
            &serde_json::json!({"kty": jwk["kty"], "crv": jwk["crv"], "x": jwk["x"], "y": jwk["y"]})
                .to_string(),
        )
        .map_err(|_| key_err("not a P-256 public key".to_string()))?;
        let signature = p256::ecdsa::Signature::from_slice(&self.signature)
            .map_err(|_| SealedSecretError::Signature(self.kid.clone()))?;
        p256::ecdsa::VerifyingKey::from(public)
            .verify(self.signing_input.as_bytes(), &signature)
            .map_err(|_| SealedSecretError::Signature(self.kid.clone()))?;
        let payload: serde_json::Value = serde_json::from_slice(&self.payload).map_err(|e| {
            SealedSecretError::Format(format!(
                "payload: {}",
                ward_kbs_wire::redacted_json_error(&e)
            ))
        })?;
        if payload["version"] != "0.1.0" {
            return Err(SealedSecretError::Format(format!(
                "payload version {} is not 0.1.0",
                payload["version"]
            )));
        }
        match payload["type"].as_str() {
            Some("vault") => {
                let provider = payload["provider"].as_str().unwrap_or_default();
                if !provider.eq_ignore_ascii_case("kbs") {
                    return Err(SealedSecretError::Unsupported(format!(
                        "vault provider `{provider}` is not supported (kbs only)"
                    )));
                }
                let name = payload["name"].as_str().ok_or_else(|| {
                    SealedSecretError::Format("vault secret without `name`".into())
                })?;
                Ok(Sealed::Vault {
                    name: name.to_string(),
                })
            }
            Some("envelope") => Err(SealedSecretError::Unsupported(format!(
                "envelope secrets need the `{}` KMS, which wardd does not have",
                payload["provider"].as_str().unwrap_or("unnamed")
            ))),
            other => Err(SealedSecretError::Format(format!(
                "unknown secret type {other:?}"
            ))),
        }
    }
}

/// Why [`unseal`] gave no plaintext.
#[derive(Debug, thiserror::Error)]
pub enum UnsealError {
    #[error(transparent)]
    Sealed(#[from] SealedSecretError),
    #[error(transparent)]
    Attestation(#[from] crate::attestation::AttestationError),
}

/// Opens a sealed secret: its verification key from the KBS (`kbs:` kid) or from
/// [`DEFAULT_KEY_DIR`], the signature checked, then the KBS resource it names released.
pub async fn unseal(
    attestation: &crate::attestation::Attestation,
    sealed: &[u8],
) -> Result<zeroize::Zeroizing<Vec<u8>>, UnsealError> {
    let unverified = parse(sealed)?;
    let kid = unverified.kid().to_string();
    let jwk = if kid.starts_with("kbs:") {
        attestation.resource(&kid).await?
    } else {
        let path = local_key_path(Path::new(DEFAULT_KEY_DIR), &kid)?;
        zeroize::Zeroizing::new(tokio::fs::read(&path).await.map_err(|e| {
            SealedSecretError::Key {
                kid: kid.clone(),
                detail: format!("{}: {e}", path.display()),
            }
        })?)
    };
    let Sealed::Vault { name } = unverified.verify(&jwk)?;
    Ok(attestation.resource(&name).await?)
}

/// The path of a local verification key, refusing names that would leave `dir`.
pub fn local_key_path(dir: &Path, kid: &str) -> Result<PathBuf, SealedSecretError> {
    let ok = !kid.is_empty()
        && kid != "."
        && kid != ".."
        && kid
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if !ok {
        return Err(SealedSecretError::Key {
            kid: kid.to_string(),
            detail: "not a key file name (letters, digits, - _ .)".to_string(),
        });
    }
    Ok(dir.join(kid))
}

#[cfg(test)]
mod tests {
    use p256::ecdsa::signature::Signer;

    use super::*;

    fn seal(key: &p256::ecdsa::SigningKey, kid: &str, payload: &serde_json::Value) -> String {
        let h = URL_SAFE_NO_PAD.encode(serde_json::json!({"alg": "ES256", "kid": kid}).to_string());
        let p = URL_SAFE_NO_PAD.encode(payload.to_string());
        let sig: p256::ecdsa::Signature = key.sign(format!("{h}.{p}").as_bytes());
        format!("sealed.{h}.{p}.{}", URL_SAFE_NO_PAD.encode(sig.to_bytes()))
    }

    fn jwk(key: &p256::ecdsa::SigningKey) -> Vec<u8> {
        p256::PublicKey::from(key.verifying_key())
            .to_jwk_string()
            .into_bytes()
    }

    fn vault() -> serde_json::Value {
        serde_json::json!({"version": "0.1.0", "type": "vault", "name": "kbs:///default/secret/1",
            "provider": "kbs", "provider_settings": {}, "annotations": {}})
    }

    #[test]
    fn a_signed_vault_secret_names_its_resource() {
        let key = p256::ecdsa::SigningKey::random(&mut rand::rngs::OsRng);
        let s = seal(&key, "kbs:///default/keys/signer", &vault());
        let u = parse(s.as_bytes()).unwrap();
        assert_eq!(u.kid(), "kbs:///default/keys/signer");
        assert_eq!(
            u.verify(&jwk(&key)).unwrap(),
            Sealed::Vault {
                name: "kbs:///default/secret/1".into()
            }
        );
    }

    #[test]
    fn forged_or_altered_secrets_are_refused() {
        let key = p256::ecdsa::SigningKey::random(&mut rand::rngs::OsRng);
        let other = p256::ecdsa::SigningKey::random(&mut rand::rngs::OsRng);
        let s = seal(&key, "k", &vault());
        assert!(matches!(
            parse(s.as_bytes()).unwrap().verify(&jwk(&other)),
            Err(SealedSecretError::Signature(_))
        ));

        // Swap in another payload under the original signature.
        let parts: Vec<&str> = s.split('.').collect();
        let mut evil = vault();
        evil["name"] = "kbs:///other/secret/x".into();
        let forged = format!(
            "sealed.{}.{}.{}",
            parts[1],
            URL_SAFE_NO_PAD.encode(evil.to_string()),
            parts[3]
        );
        assert!(matches!(
            parse(forged.as_bytes()).unwrap().verify(&jwk(&key)),
            Err(SealedSecretError::Signature(_))
        ));

        // CoCo's documentation example: a fake signature.
        let fake = format!(
            "sealed.fakejwsheader.{}.fakesignature",
            URL_SAFE_NO_PAD.encode(vault().to_string())
        );
        assert!(parse(fake.as_bytes()).is_err());
    }

    #[test]
    fn malformed_and_unsupported() {
        let key = p256::ecdsa::SigningKey::random(&mut rand::rngs::OsRng);
        for bad in [
            "",
            "sealed.",
            "sealed.a.b",
            "nosealed.a.b.c",
            "sealed.a.b.c.d",
            "sealed.!!.b.c",
        ] {
            assert!(
                matches!(parse(bad.as_bytes()), Err(SealedSecretError::Format(_))),
                "{bad}"
            );
        }
        let h = URL_SAFE_NO_PAD.encode(r#"{"alg":"HS256","kid":"k"}"#);
        assert!(matches!(
            parse(format!("sealed.{h}.e30.AA").as_bytes()),
            Err(SealedSecretError::Algorithm(_))
        ));
        let envelope = serde_json::json!({"version": "0.1.0", "type": "envelope", "provider": "aliyun",
            "key_id": "x", "encrypted_key": "", "encrypted_data": "", "wrap_type": "A256GCM", "iv": "",
            "provider_settings": {}, "annotations": {}});
        let s = seal(&key, "k", &envelope);
        let e = parse(s.as_bytes()).unwrap().verify(&jwk(&key)).unwrap_err();
        assert!(
            matches!(&e, SealedSecretError::Unsupported(m) if m.contains("aliyun")),
            "{e}"
        );
    }

    #[test]
    fn local_key_names_cannot_escape() {
        let dir = Path::new("/keys");
        assert_eq!(
            local_key_path(dir, "test-key").unwrap(),
            PathBuf::from("/keys/test-key")
        );
        for bad in ["", ".", "..", "../x", "a/b", "/etc/passwd", "a b"] {
            assert!(local_key_path(dir, bad).is_err(), "{bad}");
        }
    }
}
