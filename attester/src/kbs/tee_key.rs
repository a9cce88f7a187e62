//! The TEE key pair of a KBS session: made fresh for each handshake, its public half bound into
//! the evidence, its private half used only to open the JWEs the KBS returns. It never leaves
//! wardd and is zeroized on drop (the `p256` and `rsa` key types zeroize themselves).

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use kbs_types::TeePubKey;
use rsa::traits::PublicKeyParts;

/// Which kind of key to make.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum KeyKind {
    /// EC P-256 for `ECDH-ES+A256KW` (the KBS default).
    #[default]
    EcP256,
    /// RSA-2048 for `RSA-OAEP-256`.
    Rsa2048,
}

/// A session's private key.
pub enum TeeKey {
    Ec(p256::SecretKey),
    Rsa(Box<RsaTeeKey>),
}

/// An RSA session key: the `rsa` crate's (the JWK, CoCo's PEM) and AWS-LC's for decrypting.
/// RSA-OAEP decryption is AWS-LC's, which is constant time; the `rsa` crate's is not
/// (RUSTSEC-2023-0071, Marvin), and over plain HTTP the host could feed it ciphertexts.
pub struct RsaTeeKey {
    key: rsa::RsaPrivateKey,
    oaep: aws_lc_rs::rsa::OaepPrivateDecryptingKey,
}

impl RsaTeeKey {
    fn new(key: rsa::RsaPrivateKey) -> Result<RsaTeeKey, KeyError> {
        use rsa::pkcs8::EncodePrivateKey;
        // The DER is zeroized on drop (`SecretDocument`).
        let der = key.to_pkcs8_der().map_err(|e| KeyError(e.to_string()))?;
        let private = aws_lc_rs::rsa::PrivateDecryptingKey::from_pkcs8(der.as_bytes())
            .map_err(|e| KeyError(format!("AWS-LC refused the RSA key: {e}")))?;
        let oaep = aws_lc_rs::rsa::OaepPrivateDecryptingKey::new(private)
            .map_err(|e| KeyError(format!("AWS-LC refused the RSA key: {e}")))?;
        Ok(RsaTeeKey { key, oaep })
    }

    /// RSA-OAEP-256's plaintext of `ciphertext`, or `None` (no reason: it would be an oracle).
    pub(crate) fn decrypt_oaep_sha256(
        &self,
        ciphertext: &[u8],
    ) -> Option<zeroize::Zeroizing<Vec<u8>>> {
        let mut out = zeroize::Zeroizing::new(vec![0u8; self.oaep.min_output_size()]);
        let n = self
            .oaep
            .decrypt(
                &aws_lc_rs::rsa::OAEP_SHA256_MGF1SHA256,
                ciphertext,
                &mut out,
                None,
            )
            .ok()?
            .len();
        out.truncate(n);
        Some(out)
    }
}

/// Why a key could not be made.
#[derive(Debug, thiserror::Error)]
#[error("cannot generate the TEE key: {0}")]
pub struct KeyError(String);

impl TeeKey {
    /// Generates a fresh key from the OS random source.
    pub fn generate(kind: KeyKind) -> Result<TeeKey, KeyError> {
        let mut rng = rand::rngs::OsRng;
        match kind {
            KeyKind::EcP256 => Ok(TeeKey::Ec(p256::SecretKey::random(&mut rng))),
            KeyKind::Rsa2048 => rsa::RsaPrivateKey::new(&mut rng, 2048)
                .map_err(|e| KeyError(e.to_string()))
                .and_then(RsaTeeKey::new)
                .map(|k| TeeKey::Rsa(Box::new(k))),
        }
    }

    /// The public key as the JWK the KBS expects: only `kty`, `crv`/`alg`, and the key values
    /// (extra members such as `kid` would break the server's hash of the binding).
    pub fn public_jwk(&self) -> TeePubKey {
        match self {
            TeeKey::Ec(k) => {
                let point = p256::EncodedPoint::from(k.public_key());
                TeePubKey::EC {
                    crv: "P-256".to_string(),
                    alg: "ECDH-ES+A256KW".to_string(),
                    x: URL_SAFE_NO_PAD.encode(point.x().map(|x| x.as_slice()).unwrap_or_default()),
                    y: URL_SAFE_NO_PAD.encode(point.y().map(|y| y.as_slice()).unwrap_or_default()),
                }
            }
            TeeKey::Rsa(k) => TeePubKey::RSA {
                alg: "RSA-OAEP-256".to_string(),
                k_mod: URL_SAFE_NO_PAD.encode(k.key.n().to_bytes_be()),
                k_exp: URL_SAFE_NO_PAD.encode(k.key.e().to_bytes_be()),
            },
        }
    }

    /// The private key as PEM in the encoding CoCo's `TeeKeyPair::to_pem` writes and `from_pem`
    /// reads (guest-components `attestation-agent/kbs_protocol/src/keypair.rs`): RSA as PKCS#1
    /// (`BEGIN RSA PRIVATE KEY`), EC as PKCS#8. CoCo's GetToken reply carries it.
    pub fn private_pem(&self) -> Result<zeroize::Zeroizing<String>, KeyError> {
        use rsa::pkcs1::EncodeRsaPrivateKey;
        use rsa::pkcs8::EncodePrivateKey;
        match self {
            TeeKey::Ec(k) => k
                .to_pkcs8_pem(rsa::pkcs8::LineEnding::LF)
                .map_err(|e| KeyError(e.to_string())),
            TeeKey::Rsa(k) => k
                .key
                .to_pkcs1_pem(rsa::pkcs1::LineEnding::LF)
                .map_err(|e| KeyError(e.to_string())),
        }
    }

    pub(crate) fn ec(&self) -> Option<&p256::SecretKey> {
        match self {
            TeeKey::Ec(k) => Some(k),
            TeeKey::Rsa(_) => None,
        }
    }

    pub(crate) fn rsa(&self) -> Option<&RsaTeeKey> {
        match self {
            TeeKey::Rsa(k) => Some(k),
            TeeKey::Ec(_) => None,
        }
    }

    /// "EC P-256" or "RSA".
    pub fn kind(&self) -> &'static str {
        match self {
            TeeKey::Ec(_) => "EC P-256",
            TeeKey::Rsa(_) => "RSA",
        }
    }
}

impl std::fmt::Debug for TeeKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "TeeKey({}, private half redacted)", self.kind())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ec_jwk_has_only_the_members_the_kbs_hashes() {
        let k = TeeKey::generate(KeyKind::EcP256).unwrap();
        let v = serde_json::to_value(k.public_jwk()).unwrap();
        let mut keys: Vec<_> = v.as_object().unwrap().keys().cloned().collect();
        keys.sort();
        assert_eq!(keys, ["alg", "crv", "kty", "x", "y"]);
        assert_eq!(v["kty"], "EC");
        assert_eq!(
            URL_SAFE_NO_PAD
                .decode(v["x"].as_str().unwrap())
                .unwrap()
                .len(),
            32
        );
        assert!(!format!("{k:?}").contains(&hex::encode(k.ec().unwrap().to_bytes())));
    }

    /// CoCo's clients parse the GetToken reply's key with `RSAKeyPair::from_pkcs1_pem`, then
    /// `EcKeyPair::from_pkcs8_pem`: PKCS#8 RSA was refused.
    #[test]
    fn private_pem_is_in_the_encoding_coco_reads() {
        use rsa::pkcs1::DecodeRsaPrivateKey;
        use rsa::pkcs8::DecodePrivateKey;
        let rsa_pem = TeeKey::generate(KeyKind::Rsa2048)
            .unwrap()
            .private_pem()
            .unwrap();
        assert!(rsa_pem.starts_with("-----BEGIN RSA PRIVATE KEY-----"));
        rsa::RsaPrivateKey::from_pkcs1_pem(&rsa_pem).unwrap();
        let ec_pem = TeeKey::generate(KeyKind::EcP256)
            .unwrap()
            .private_pem()
            .unwrap();
        assert!(ec_pem.starts_with("-----BEGIN PRIVATE KEY-----"));
        p256::SecretKey::from_pkcs8_pem(&ec_pem).unwrap();
    }
}
