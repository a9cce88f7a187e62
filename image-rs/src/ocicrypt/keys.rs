//! Recipient keys for JWE key wraps, read from PEM: private keys as PKCS#1 (`RSA PRIVATE
//! KEY`), SEC1 (`EC PRIVATE KEY`) or PKCS#8 (`PRIVATE KEY`); public keys as SPKI
//! (`PUBLIC KEY`) or PKCS#1 (`RSA PUBLIC KEY`). RSA of 2048 to 8192 bits, EC on P-256, P-384
//! and P-521.
//!
//! RSA-OAEP decryption is aws-lc-rs's (AWS-LC, constant time), not the `rsa` crate's, whose
//! decryption is not constant time (RUSTSEC-2023-0071, the Marvin attack): the host serves the
//! JWE packets, so it chooses the ciphertexts and can time the pulls. AWS-LC is also 2.3x as
//! fast here (1.1 against 2.5 ms for RSA-2048). The `rsa` crate still parses keys and does the
//! public-key side.
//!
//! Owns key parsing only. Never logs or formats key bytes: errors name the PEM label, not the
//! content, and the decoded DER is zeroized.

use std::fmt;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use rsa::pkcs1::{DecodeRsaPrivateKey, DecodeRsaPublicKey};
use rsa::pkcs8::{DecodePrivateKey, DecodePublicKey};
use rsa::traits::PublicKeyParts;
use zeroize::Zeroizing;

/// Largest PEM text accepted.
pub const MAX_PEM_BYTES: usize = 64 << 10;

/// Why a PEM key could not be read. Carries no key bytes.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum KeyError {
    /// No PEM block, a block without an end line, or a body that is not base64.
    #[error("not a PEM key: {0}")]
    Pem(String),
    /// A password-protected key (`ENCRYPTED PRIVATE KEY` or `Proc-Type: 4,ENCRYPTED`).
    #[error(
        "the PEM key is password-protected; decrypt it first (openssl pkey -in KEY -out PLAIN)"
    )]
    Encrypted,
    /// An RSA key outside the sizes AWS-LC decrypts with.
    #[error("RSA-{bits}: RSA keys of 2048 to 8192 bits are supported")]
    RsaSize { bits: usize },
    /// The block's content is not a key of a kind ward supports.
    #[error("PEM `{label}`: not an RSA, P-256, P-384 or P-521 key")]
    Unsupported { label: String },
}

/// A private key that may open JWE recipients.
pub enum PrivateKey {
    /// RSA (for `RSA-OAEP` and `RSA-OAEP-256`).
    Rsa(Box<RsaDecryptingKey>),
    /// EC P-256 (for `ECDH-ES+A256KW`).
    P256(p256::SecretKey),
    /// EC P-384 (for `ECDH-ES+A256KW`).
    P384(p384::SecretKey),
    /// EC P-521 (for `ECDH-ES+A256KW`).
    P521(p521::SecretKey),
}

/// An RSA private key: its public half, and AWS-LC's key for OAEP decryption.
pub struct RsaDecryptingKey {
    public: rsa::RsaPublicKey,
    oaep: aws_lc_rs::rsa::OaepPrivateDecryptingKey,
}

/// The two OAEP variants JWE names.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Oaep {
    /// `RSA-OAEP`: SHA-1, MGF1 with SHA-1.
    Sha1,
    /// `RSA-OAEP-256`: SHA-256, MGF1 with SHA-256.
    Sha256,
}

impl RsaDecryptingKey {
    fn new(key: &rsa::RsaPrivateKey) -> Result<RsaDecryptingKey, KeyError> {
        use rsa::pkcs8::EncodePrivateKey;
        let bits = key.size() * 8;
        let refused = || KeyError::RsaSize { bits };
        // The DER is zeroized on drop (`SecretDocument`).
        let der = key.to_pkcs8_der().map_err(|_| refused())?;
        let private = aws_lc_rs::rsa::PrivateDecryptingKey::from_pkcs8(der.as_bytes())
            .map_err(|_| refused())?;
        Ok(RsaDecryptingKey {
            public: key.to_public_key(),
            oaep: aws_lc_rs::rsa::OaepPrivateDecryptingKey::new(private).map_err(|_| refused())?,
        })
    }

    /// The plaintext of `ciphertext`, or `None` when it does not decrypt under this key (no
    /// reason: a reason would be an oracle).
    pub fn decrypt(&self, oaep: Oaep, ciphertext: &[u8]) -> Option<Zeroizing<Vec<u8>>> {
        let algorithm = match oaep {
            Oaep::Sha1 => &aws_lc_rs::rsa::OAEP_SHA1_MGF1SHA1,
            Oaep::Sha256 => &aws_lc_rs::rsa::OAEP_SHA256_MGF1SHA256,
        };
        let mut out = Zeroizing::new(vec![0u8; self.oaep.min_output_size()]);
        let n = self
            .oaep
            .decrypt(algorithm, ciphertext, &mut out, None)
            .ok()?
            .len();
        out.truncate(n);
        Some(out)
    }
}

/// A public key that JWE recipients can be made for.
#[derive(Clone, PartialEq, Eq)]
pub enum PublicKey {
    /// RSA: wrapped with `RSA-OAEP-256`.
    Rsa(rsa::RsaPublicKey),
    /// EC P-256: wrapped with `ECDH-ES+A256KW`.
    P256(p256::PublicKey),
    /// EC P-384: wrapped with `ECDH-ES+A256KW`.
    P384(p384::PublicKey),
    /// EC P-521: wrapped with `ECDH-ES+A256KW`.
    P521(p521::PublicKey),
}

impl fmt::Debug for PrivateKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PrivateKey({})", self.describe())
    }
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PublicKey({})", self.describe())
    }
}

/// One PEM block: its label and its decoded (zeroizing) DER.
struct PemBlock {
    label: String,
    der: Zeroizing<Vec<u8>>,
}

/// Splits PEM text into blocks. Text outside blocks (comments, `openssl` output) is ignored.
fn pem_blocks(text: &str) -> Result<Vec<PemBlock>, KeyError> {
    if text.len() > MAX_PEM_BYTES {
        return Err(KeyError::Pem(format!(
            "{} bytes is more than the {MAX_PEM_BYTES} accepted",
            text.len()
        )));
    }
    let mut blocks = Vec::new();
    let mut lines = text.lines().map(str::trim);
    while let Some(line) = lines.next() {
        let Some(label) = line
            .strip_prefix("-----BEGIN ")
            .and_then(|l| l.strip_suffix("-----"))
        else {
            continue;
        };
        if label == "ENCRYPTED PRIVATE KEY" {
            return Err(KeyError::Encrypted);
        }
        let end = format!("-----END {label}-----");
        let mut body = Zeroizing::new(String::new());
        let mut closed = false;
        for l in lines.by_ref() {
            if l == end {
                closed = true;
                break;
            }
            if l.starts_with("Proc-Type:") && l.contains("ENCRYPTED") {
                return Err(KeyError::Encrypted);
            }
            if l.contains(':') {
                continue; // RFC 1421 headers
            }
            body.push_str(l);
        }
        if !closed {
            return Err(KeyError::Pem(format!("`{label}` block has no end line")));
        }
        let der = Zeroizing::new(
            STANDARD
                .decode(body.as_bytes())
                .map_err(|_| KeyError::Pem(format!("`{label}` body is not base64")))?,
        );
        blocks.push(PemBlock {
            label: label.to_string(),
            der,
        });
    }
    if blocks.is_empty() {
        return Err(KeyError::Pem("no `-----BEGIN ...-----` line".to_string()));
    }
    Ok(blocks)
}

impl PrivateKey {
    /// Reads the first private key in `pem` (an `EC PARAMETERS` block before it is skipped).
    pub fn from_pem(pem: &str) -> Result<PrivateKey, KeyError> {
        let blocks = pem_blocks(pem)?;
        let block = blocks
            .iter()
            .find(|b| b.label.ends_with("PRIVATE KEY"))
            .ok_or_else(|| KeyError::Pem("no `PRIVATE KEY` block".to_string()))?;
        let der = block.der.as_slice();
        let unsupported = || KeyError::Unsupported {
            label: block.label.clone(),
        };
        match block.label.as_str() {
            "RSA PRIVATE KEY" => rsa::RsaPrivateKey::from_pkcs1_der(der)
                .map_err(|_| unsupported())
                .and_then(|k| Ok(PrivateKey::Rsa(Box::new(RsaDecryptingKey::new(&k)?)))),
            "EC PRIVATE KEY" => p256::SecretKey::from_sec1_der(der)
                .map(PrivateKey::P256)
                .or_else(|_| p384::SecretKey::from_sec1_der(der).map(PrivateKey::P384))
                .or_else(|_| p521::SecretKey::from_sec1_der(der).map(PrivateKey::P521))
                .map_err(|_| unsupported()),
            "PRIVATE KEY" => match rsa::RsaPrivateKey::from_pkcs8_der(der) {
                Ok(k) => Ok(PrivateKey::Rsa(Box::new(RsaDecryptingKey::new(&k)?))),
                Err(_) => p256::SecretKey::from_pkcs8_der(der)
                    .map(PrivateKey::P256)
                    .or_else(|_| p384::SecretKey::from_pkcs8_der(der).map(PrivateKey::P384))
                    .or_else(|_| p521::SecretKey::from_pkcs8_der(der).map(PrivateKey::P521))
                    .map_err(|_| unsupported()),
            },
            _ => Err(unsupported()),
        }
    }

    /// Reads every private key in `pem` (several concatenated PEM files).
    pub fn all_from_pem(pem: &str) -> Result<Vec<PrivateKey>, KeyError> {
        let mut keys = Vec::new();
        for block in pem_blocks(pem)?
            .iter()
            .filter(|b| b.label.ends_with("PRIVATE KEY"))
        {
            let text = format!(
                "-----BEGIN {l}-----\n{}\n-----END {l}-----\n",
                Zeroizing::new(STANDARD.encode(block.der.as_slice())).as_str(),
                l = block.label
            );
            keys.push(PrivateKey::from_pem(&Zeroizing::new(text))?);
        }
        Ok(keys)
    }

    /// The matching public key.
    pub fn public_key(&self) -> PublicKey {
        match self {
            PrivateKey::Rsa(k) => PublicKey::Rsa(k.public.clone()),
            PrivateKey::P256(k) => PublicKey::P256(k.public_key()),
            PrivateKey::P384(k) => PublicKey::P384(k.public_key()),
            PrivateKey::P521(k) => PublicKey::P521(k.public_key()),
        }
    }

    /// What kind of key this is, for messages (`RSA-2048`, `EC P-256`).
    pub fn describe(&self) -> String {
        self.public_key().describe()
    }
}

impl PublicKey {
    /// Reads the first public key in `pem`.
    pub fn from_pem(pem: &str) -> Result<PublicKey, KeyError> {
        let blocks = pem_blocks(pem)?;
        let block = blocks
            .iter()
            .find(|b| b.label.ends_with("PUBLIC KEY"))
            .ok_or_else(|| KeyError::Pem("no `PUBLIC KEY` block".to_string()))?;
        let der = block.der.as_slice();
        let unsupported = || KeyError::Unsupported {
            label: block.label.clone(),
        };
        match block.label.as_str() {
            "RSA PUBLIC KEY" => rsa::RsaPublicKey::from_pkcs1_der(der)
                .map(PublicKey::Rsa)
                .map_err(|_| unsupported()),
            "PUBLIC KEY" => rsa::RsaPublicKey::from_public_key_der(der)
                .map(PublicKey::Rsa)
                .or_else(|_| p256::PublicKey::from_public_key_der(der).map(PublicKey::P256))
                .or_else(|_| p384::PublicKey::from_public_key_der(der).map(PublicKey::P384))
                .or_else(|_| p521::PublicKey::from_public_key_der(der).map(PublicKey::P521))
                .map_err(|_| unsupported()),
            _ => Err(unsupported()),
        }
    }

    /// What kind of key this is, for messages (`RSA-2048`, `EC P-256`).
    pub fn describe(&self) -> String {
        match self {
            PublicKey::Rsa(k) => format!("RSA-{}", k.size() * 8),
            PublicKey::P256(_) => "EC P-256".to_string(),
            PublicKey::P384(_) => "EC P-384".to_string(),
            PublicKey::P521(_) => "EC P-521".to_string(),
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A 2048-bit RSA key made once with `openssl genrsa` (generating one in a debug build is
    /// slow); PKCS#1 and PKCS#8 forms of the same key.
    pub(crate) const RSA_PKCS1: &str = include_str!("testdata/rsa2048.pkcs1.pem");
    pub(crate) const RSA_PKCS8: &str = include_str!("testdata/rsa2048.pkcs8.pem");
    /// An `openssl ecparam -genkey` P-256 key: an `EC PARAMETERS` block, then SEC1.
    pub(crate) const EC_SEC1_WITH_PARAMS: &str = include_str!("testdata/p256.sec1.pem");
    pub(crate) const EC_PKCS8: &str = include_str!("testdata/p256.pkcs8.pem");
    pub(crate) const EC_PUB: &str = include_str!("testdata/p256.pub.pem");
    pub(crate) const RSA_PUB: &str = include_str!("testdata/rsa2048.pub.pem");
    pub(crate) const P384_PKCS8: &str = include_str!("testdata/p384.pkcs8.pem");
    pub(crate) const P521_PKCS8: &str = include_str!("testdata/p521.pkcs8.pem");

    #[test]
    fn reads_openssl_keys() {
        let a = PrivateKey::from_pem(RSA_PKCS1).unwrap();
        let b = PrivateKey::from_pem(RSA_PKCS8).unwrap();
        assert_eq!(a.describe(), "RSA-2048");
        assert_eq!(a.public_key(), b.public_key());
        assert_eq!(a.public_key(), PublicKey::from_pem(RSA_PUB).unwrap());
        let e = PrivateKey::from_pem(EC_SEC1_WITH_PARAMS).unwrap();
        assert_eq!(e.describe(), "EC P-256");
        assert_eq!(
            e.public_key(),
            PrivateKey::from_pem(EC_PKCS8).unwrap().public_key()
        );
        assert_eq!(e.public_key(), PublicKey::from_pem(EC_PUB).unwrap());
        let p = PrivateKey::from_pem(P384_PKCS8).unwrap();
        assert_eq!(p.describe(), "EC P-384");
        let both = format!("{RSA_PKCS1}{EC_PKCS8}");
        assert_eq!(PrivateKey::all_from_pem(&both).unwrap().len(), 2);
        assert!(!format!("{a:?}").contains("MII"));
    }

    /// AWS-LC decrypts with RSA keys of 2048 to 8192 bits; a smaller one is refused when read,
    /// by name, not at the first layer it fails to open.
    #[test]
    fn refuses_rsa_keys_aws_lc_does_not_take() {
        let small = include_str!("testdata/rsa1024.pkcs8.pem");
        assert_eq!(
            PrivateKey::from_pem(small).err(),
            Some(KeyError::RsaSize { bits: 1024 })
        );
    }

    /// Both OAEP variants open what the `rsa` crate wraps; a wrong variant or a changed byte
    /// opens nothing.
    #[test]
    fn rsa_oaep_decrypts_both_variants_and_nothing_else() {
        let PrivateKey::Rsa(k) = PrivateKey::from_pem(RSA_PKCS8).unwrap() else {
            panic!("not RSA");
        };
        let PublicKey::Rsa(public) = PublicKey::from_pem(RSA_PUB).unwrap() else {
            panic!("not RSA");
        };
        let mut rng = rand::rngs::OsRng;
        let sha1 = public
            .encrypt(&mut rng, rsa::Oaep::new::<sha1::Sha1>(), b"cek-1")
            .unwrap();
        let sha256 = public
            .encrypt(&mut rng, rsa::Oaep::new::<sha2::Sha256>(), b"cek-256")
            .unwrap();
        assert_eq!(k.decrypt(Oaep::Sha1, &sha1).unwrap().as_slice(), b"cek-1");
        assert_eq!(
            k.decrypt(Oaep::Sha256, &sha256).unwrap().as_slice(),
            b"cek-256"
        );
        assert!(k.decrypt(Oaep::Sha256, &sha1).is_none());
        let mut altered = sha256.clone();
        altered[10] ^= 1;
        assert!(k.decrypt(Oaep::Sha256, &altered).is_none());
        assert!(k.decrypt(Oaep::Sha256, &sha256[1..]).is_none());
    }

    #[test]
    fn refuses_what_it_cannot_read() {
        assert!(matches!(
            PrivateKey::from_pem("hello"),
            Err(KeyError::Pem(_))
        ));
        assert_eq!(
            PrivateKey::from_pem(
                "-----BEGIN ENCRYPTED PRIVATE KEY-----\nAA==\n-----END ENCRYPTED PRIVATE KEY-----\n"
            )
            .unwrap_err(),
            KeyError::Encrypted
        );
        let truncated: String = RSA_PKCS1.lines().take(5).collect::<Vec<_>>().join("\n");
        assert!(PrivateKey::from_pem(&truncated).is_err());
        assert!(matches!(
            PrivateKey::from_pem("-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n"),
            Err(KeyError::Unsupported { .. })
        ));
    }
}
