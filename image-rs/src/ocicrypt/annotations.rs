//! What an encrypted layer's descriptor says: its media type (encrypted or not, and the
//! compression under the encryption), the ocicrypt annotations (key wraps and public cipher
//! options), and the private options JSON that each key wrap protects.
//!
//! Owns parsing and encoding of those formats only; it never unwraps keys and never logs the
//! content of private options (they hold the layer key).
//!
//! Formats (containers/ocicrypt `encryption.go`, `blockcipher/blockcipher.go`):
//! - `org.opencontainers.image.enc.keys.jwe`: comma-separated standard base64 of JWE JSON;
//! - `org.opencontainers.image.enc.keys.provider.<name>`: comma-separated standard base64 of
//!   the provider's packet (for CoCo's `attestation-agent`, see [`super::provider`]);
//! - `org.opencontainers.image.enc.pubopts`: standard base64 of
//!   `{"cipher":"AES_256_CTR_HMAC_SHA256","hmac":b64,"cipheroptions":{}}`;
//! - private options: `{"symkey":b64,"digest":"sha256:..","cipheroptions":{"nonce":b64}}`
//!   (Go's `[]byte` JSON encoding: standard base64 with padding).

use std::collections::BTreeMap;
use std::fmt;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

/// Annotation holding the JWE key wraps.
pub const ANNOTATION_JWE: &str = "org.opencontainers.image.enc.keys.jwe";
/// Prefix of the key-provider annotations; the provider name follows.
pub const ANNOTATION_PROVIDER_PREFIX: &str = "org.opencontainers.image.enc.keys.provider.";
/// Annotation holding the public cipher options (cipher name and HMAC).
pub const ANNOTATION_PUBOPTS: &str = "org.opencontainers.image.enc.pubopts";
/// The only layer cipher ocicrypt defines.
pub const CIPHER_AES_256_CTR_HMAC_SHA256: &str = "AES_256_CTR_HMAC_SHA256";

/// Largest annotation value accepted (a few wrapped keys are a few KiB).
pub const MAX_ANNOTATION_BYTES: usize = 1 << 20;
/// Most key wraps accepted per annotation.
pub const MAX_WRAPS: usize = 64;

/// Why a media type, an annotation or an options document was refused. None of these carries
/// key bytes.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AnnotationError {
    /// The media type is not an OCI or Docker layer type ward knows.
    #[error("`{0}` is not a known layer media type")]
    MediaType(String),
    /// An annotation value is too large, has too many entries, or is not base64.
    #[error("annotation `{name}`: {reason}")]
    Annotation { name: String, reason: String },
    /// The layer is encrypted but carries no `org.opencontainers.image.enc.pubopts`.
    #[error("encrypted layer without `{ANNOTATION_PUBOPTS}` (no HMAC to check the layer against)")]
    MissingPubopts,
    /// The layer carries no key wrap at all.
    #[error(
        "encrypted layer without any `{ANNOTATION_JWE}` or `{ANNOTATION_PROVIDER_PREFIX}*` key wrap"
    )]
    NoKeyWraps,
    /// Public options are not the expected JSON, or name another cipher.
    #[error("public options: {0}")]
    Public(String),
    /// Private options are not the expected JSON, or have the wrong key or nonce size.
    #[error("private options: {0}")]
    Private(String),
}

/// Compression under the (optional) encryption of a layer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    /// A plain tar.
    None,
    /// gzip (`+gzip`, Docker `.tar.gzip`).
    Gzip,
    /// zstd (`+zstd`).
    Zstd,
}

/// A parsed layer media type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LayerMediaType {
    plain: String,
    compression: Compression,
    encrypted: bool,
}

const ENCRYPTED_SUFFIX: &str = "+encrypted";

const PLAIN_TYPES: [(&str, Compression); 10] = [
    ("application/vnd.oci.image.layer.v1.tar", Compression::None),
    (
        "application/vnd.oci.image.layer.v1.tar+gzip",
        Compression::Gzip,
    ),
    (
        "application/vnd.oci.image.layer.v1.tar+zstd",
        Compression::Zstd,
    ),
    (
        "application/vnd.oci.image.layer.nondistributable.v1.tar",
        Compression::None,
    ),
    (
        "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip",
        Compression::Gzip,
    ),
    (
        "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd",
        Compression::Zstd,
    ),
    (
        "application/vnd.docker.image.rootfs.diff.tar",
        Compression::None,
    ),
    (
        "application/vnd.docker.image.rootfs.diff.tar.gzip",
        Compression::Gzip,
    ),
    (
        "application/vnd.docker.image.rootfs.diff.tar.zstd",
        Compression::Zstd,
    ),
    (
        "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip",
        Compression::Gzip,
    ),
];

impl LayerMediaType {
    /// Parses an OCI or Docker layer media type, with or without the `+encrypted` suffix.
    pub fn parse(media_type: &str) -> Result<LayerMediaType, AnnotationError> {
        let (plain, encrypted) = match media_type.strip_suffix(ENCRYPTED_SUFFIX) {
            Some(plain) => (plain, true),
            None => (media_type, false),
        };
        let (name, compression) = PLAIN_TYPES
            .iter()
            .find(|(name, _)| *name == plain)
            .ok_or_else(|| AnnotationError::MediaType(media_type.to_string()))?;
        Ok(LayerMediaType {
            plain: (*name).to_string(),
            compression: *compression,
            encrypted,
        })
    }

    /// Whether the blob is ocicrypt-encrypted (`+encrypted`).
    pub fn is_encrypted(&self) -> bool {
        self.encrypted
    }

    /// The compression of the (decrypted) blob.
    pub fn compression(&self) -> Compression {
        self.compression
    }

    /// The media type of the decrypted blob (without `+encrypted`).
    pub fn decrypted(&self) -> &str {
        &self.plain
    }

    /// The media type of the encrypted blob (with `+encrypted`).
    pub fn encrypted(&self) -> String {
        format!("{}{ENCRYPTED_SUFFIX}", self.plain)
    }
}

/// Public cipher options: the cipher name and the HMAC-SHA256 of the whole ciphertext.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublicOptions {
    /// The layer's HMAC-SHA256 (32 bytes).
    pub hmac: [u8; 32],
}

#[derive(Serialize, Deserialize)]
struct PublicJson {
    cipher: String,
    #[serde(default)]
    hmac: Option<String>,
    #[serde(default)]
    cipheroptions: BTreeMap<String, String>,
}

impl PublicOptions {
    /// Parses the decoded pubopts JSON.
    pub fn from_json(json: &[u8]) -> Result<PublicOptions, AnnotationError> {
        let p: PublicJson =
            serde_json::from_slice(json).map_err(|e| AnnotationError::Public(e.to_string()))?;
        if p.cipher != CIPHER_AES_256_CTR_HMAC_SHA256 {
            return Err(AnnotationError::Public(format!(
                "cipher `{}` is not {CIPHER_AES_256_CTR_HMAC_SHA256}",
                p.cipher
            )));
        }
        let hmac = p
            .hmac
            .ok_or_else(|| AnnotationError::Public("no `hmac`".to_string()))?;
        let hmac = STANDARD
            .decode(&hmac)
            .map_err(|e| AnnotationError::Public(format!("`hmac` is not base64: {e}")))?;
        let hmac = <[u8; 32]>::try_from(hmac.as_slice()).map_err(|_| {
            AnnotationError::Public(format!("`hmac` is {} bytes, not 32", hmac.len()))
        })?;
        Ok(PublicOptions { hmac })
    }

    /// The pubopts JSON, as ocicrypt writes it.
    pub fn to_json(&self) -> Vec<u8> {
        let p = PublicJson {
            cipher: CIPHER_AES_256_CTR_HMAC_SHA256.to_string(),
            hmac: Some(STANDARD.encode(self.hmac)),
            cipheroptions: BTreeMap::new(),
        };
        serde_json::to_vec(&p).unwrap_or_default()
    }
}

/// Private cipher options: the layer key, the CTR nonce, and the digest of the plaintext
/// blob. The key and nonce are zeroized on drop; `Debug` shows neither.
#[derive(Clone, PartialEq, Eq)]
pub struct PrivateOptions {
    symkey: Zeroizing<[u8; 32]>,
    nonce: [u8; 16],
    digest: String,
}

impl fmt::Debug for PrivateOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PrivateOptions")
            .field("symkey", &"<redacted>")
            .field("digest", &self.digest)
            .finish_non_exhaustive()
    }
}

#[derive(Deserialize)]
struct PrivateJson {
    symkey: String,
    #[serde(default)]
    digest: String,
    #[serde(default)]
    cipheroptions: BTreeMap<String, String>,
}

impl Drop for PrivateJson {
    fn drop(&mut self) {
        zeroize::Zeroize::zeroize(&mut self.symkey);
    }
}

impl PrivateOptions {
    /// Builds private options from a key, a nonce and the plaintext digest (`sha256:<hex>`).
    pub fn new(symkey: Zeroizing<[u8; 32]>, nonce: [u8; 16], digest: String) -> PrivateOptions {
        PrivateOptions {
            symkey,
            nonce,
            digest,
        }
    }

    /// Parses the private options JSON that a key wrap protected.
    pub fn from_json(json: &[u8]) -> Result<PrivateOptions, AnnotationError> {
        let mut p: PrivateJson = serde_json::from_slice(json)
            // serde's message may quote input (the key): say only where it failed.
            .map_err(|e| {
                AnnotationError::Private(format!(
                    "not the expected JSON: {}",
                    ward_kbs_wire::redacted_json_error(&e)
                ))
            })?;
        let key = Zeroizing::new(
            STANDARD
                .decode(p.symkey.as_bytes())
                .map_err(|_| AnnotationError::Private("`symkey` is not base64".to_string()))?,
        );
        let mut symkey = Zeroizing::new([0u8; 32]);
        if key.len() != symkey.len() {
            return Err(AnnotationError::Private(format!(
                "`symkey` is {} bytes, not 32",
                key.len()
            )));
        }
        symkey.copy_from_slice(&key);
        let nonce = p
            .cipheroptions
            .get("nonce")
            .ok_or_else(|| AnnotationError::Private("no `cipheroptions.nonce`".to_string()))?;
        let nonce = STANDARD
            .decode(nonce)
            .map_err(|_| AnnotationError::Private("`nonce` is not base64".to_string()))?;
        let nonce = <[u8; 16]>::try_from(nonce.as_slice()).map_err(|_| {
            AnnotationError::Private(format!("`nonce` is {} bytes, not 16", nonce.len()))
        })?;
        Ok(PrivateOptions {
            symkey,
            nonce,
            digest: std::mem::take(&mut p.digest),
        })
    }

    /// The private options JSON, as ocicrypt writes it (zeroized on drop).
    pub fn to_json(&self) -> Zeroizing<Vec<u8>> {
        let key = Zeroizing::new(STANDARD.encode(&self.symkey[..]));
        let digest = serde_json::Value::String(self.digest.clone());
        let json = Zeroizing::new(format!(
            r#"{{"symkey":"{}","digest":{digest},"cipheroptions":{{"nonce":"{}"}}}}"#,
            key.as_str(),
            STANDARD.encode(self.nonce),
        ));
        Zeroizing::new(json.as_bytes().to_vec())
    }

    /// The AES-256 layer key.
    pub fn symkey(&self) -> &[u8; 32] {
        &self.symkey
    }

    /// The 16-byte CTR nonce (the initial counter block).
    pub fn nonce(&self) -> &[u8; 16] {
        &self.nonce
    }

    /// The digest of the decrypted blob as the encryptor recorded it (`sha256:<hex>`).
    pub fn digest(&self) -> &str {
        &self.digest
    }
}

/// The ocicrypt annotations of one encrypted layer, decoded from base64.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LayerAnnotations {
    /// JWE JSON documents (one per comma-separated entry).
    pub jwe: Vec<Vec<u8>>,
    /// Key-provider packets: (provider name, packet bytes), in annotation order.
    pub providers: Vec<(String, Vec<u8>)>,
    /// The public cipher options.
    pub public: PublicOptions,
}

fn decode_list(name: &str, value: &str) -> Result<Vec<Vec<u8>>, AnnotationError> {
    let bad = |reason: String| AnnotationError::Annotation {
        name: name.to_string(),
        reason,
    };
    if value.len() > MAX_ANNOTATION_BYTES {
        return Err(bad(format!(
            "{} bytes is more than the {MAX_ANNOTATION_BYTES} accepted",
            value.len()
        )));
    }
    let entries: Vec<&str> = value.split(',').filter(|s| !s.is_empty()).collect();
    if entries.len() > MAX_WRAPS {
        return Err(bad(format!(
            "{} entries is more than the {MAX_WRAPS} accepted",
            entries.len()
        )));
    }
    entries
        .iter()
        .enumerate()
        .map(|(i, s)| {
            STANDARD
                .decode(s.trim())
                .map_err(|e| bad(format!("entry {i} is not base64: {e}")))
        })
        .collect()
}

impl LayerAnnotations {
    /// Reads the ocicrypt annotations from a descriptor's annotations (other keys are ignored).
    /// Requires the pubopts and at least one key wrap.
    pub fn parse<K, V>(
        annotations: impl IntoIterator<Item = (K, V)>,
    ) -> Result<LayerAnnotations, AnnotationError>
    where
        K: AsRef<str>,
        V: AsRef<str>,
    {
        let mut jwe = Vec::new();
        let mut providers = Vec::new();
        let mut public = None;
        for (k, v) in annotations {
            let (k, v) = (k.as_ref(), v.as_ref());
            if k == ANNOTATION_JWE {
                jwe.extend(decode_list(k, v)?);
            } else if let Some(name) = k.strip_prefix(ANNOTATION_PROVIDER_PREFIX) {
                for packet in decode_list(k, v)? {
                    providers.push((name.to_string(), packet));
                }
            } else if k == ANNOTATION_PUBOPTS {
                let mut json = decode_list(k, v)?;
                let json = match (json.pop(), json.is_empty()) {
                    (Some(j), true) => j,
                    _ => {
                        return Err(AnnotationError::Annotation {
                            name: k.to_string(),
                            reason: "expected exactly one base64 value".to_string(),
                        });
                    }
                };
                public = Some(PublicOptions::from_json(&json)?);
            }
        }
        let public = public.ok_or(AnnotationError::MissingPubopts)?;
        if jwe.is_empty() && providers.is_empty() {
            return Err(AnnotationError::NoKeyWraps);
        }
        if jwe.len() + providers.len() > MAX_WRAPS {
            return Err(AnnotationError::Annotation {
                name: "org.opencontainers.image.enc.keys.*".to_string(),
                reason: format!("more than {MAX_WRAPS} key wraps"),
            });
        }
        Ok(LayerAnnotations {
            jwe,
            providers,
            public,
        })
    }

    /// Encodes the annotations as ocicrypt writes them (one JWE document per entry).
    pub fn to_map(&self) -> BTreeMap<String, String> {
        let mut map = BTreeMap::new();
        let join = |items: &mut dyn Iterator<Item = &Vec<u8>>| {
            items
                .map(|b| STANDARD.encode(b))
                .collect::<Vec<_>>()
                .join(",")
        };
        if !self.jwe.is_empty() {
            map.insert(ANNOTATION_JWE.to_string(), join(&mut self.jwe.iter()));
        }
        let names: std::collections::BTreeSet<&str> =
            self.providers.iter().map(|(n, _)| n.as_str()).collect();
        for name in names {
            let mut packets = self
                .providers
                .iter()
                .filter(|(n, _)| n == name)
                .map(|(_, p)| p);
            map.insert(
                format!("{ANNOTATION_PROVIDER_PREFIX}{name}"),
                join(&mut packets),
            );
        }
        map.insert(
            ANNOTATION_PUBOPTS.to_string(),
            STANDARD.encode(self.public.to_json()),
        );
        map
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn media_types() {
        let m =
            LayerMediaType::parse("application/vnd.oci.image.layer.v1.tar+gzip+encrypted").unwrap();
        assert!(m.is_encrypted());
        assert_eq!(m.compression(), Compression::Gzip);
        assert_eq!(m.decrypted(), "application/vnd.oci.image.layer.v1.tar+gzip");
        let m = LayerMediaType::parse("application/vnd.oci.image.layer.v1.tar+zstd").unwrap();
        assert!(!m.is_encrypted());
        assert_eq!(m.compression(), Compression::Zstd);
        assert_eq!(
            m.encrypted(),
            "application/vnd.oci.image.layer.v1.tar+zstd+encrypted"
        );
        let m = LayerMediaType::parse("application/vnd.oci.image.layer.v1.tar+encrypted").unwrap();
        assert_eq!(m.compression(), Compression::None);
        let m =
            LayerMediaType::parse("application/vnd.docker.image.rootfs.diff.tar.gzip+encrypted")
                .unwrap();
        assert!(m.is_encrypted());
        assert_eq!(m.compression(), Compression::Gzip);
        for bad in [
            "application/vnd.oci.image.config.v1+json",
            "application/vnd.oci.image.layer.v1.tar+encrypted+gzip",
            "",
        ] {
            assert!(LayerMediaType::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn private_options_round_trip_and_redaction() {
        let p = PrivateOptions::new(Zeroizing::new([7; 32]), [9; 16], "sha256:ab".to_string());
        let json = p.to_json();
        assert_eq!(PrivateOptions::from_json(&json).unwrap(), p);
        assert!(!format!("{p:?}").contains("BwcH"));
        let short = br#"{"symkey":"AAAA","digest":"","cipheroptions":{"nonce":"AAAAAAAAAAAAAAAAAAAAAA=="}}"#;
        assert!(matches!(
            PrivateOptions::from_json(short),
            Err(AnnotationError::Private(_))
        ));
    }

    #[test]
    fn annotations_round_trip_and_refusals() {
        let a = LayerAnnotations {
            jwe: vec![b"{\"a\":1}".to_vec(), b"{\"b\":2}".to_vec()],
            providers: vec![("attestation-agent".to_string(), b"{}".to_vec())],
            public: PublicOptions { hmac: [3; 32] },
        };
        let map = a.to_map();
        assert_eq!(LayerAnnotations::parse(&map).unwrap(), a);

        let mut no_pub = map.clone();
        no_pub.remove(ANNOTATION_PUBOPTS);
        assert_eq!(
            LayerAnnotations::parse(&no_pub),
            Err(AnnotationError::MissingPubopts)
        );
        let mut only_pub = BTreeMap::new();
        only_pub.insert(ANNOTATION_PUBOPTS, map[ANNOTATION_PUBOPTS].as_str());
        assert_eq!(
            LayerAnnotations::parse(only_pub),
            Err(AnnotationError::NoKeyWraps)
        );
        let mut bad = map.clone();
        bad.insert(ANNOTATION_JWE.to_string(), "!!".to_string());
        assert!(LayerAnnotations::parse(&bad).is_err());
        let other_cipher = STANDARD.encode(br#"{"cipher":"AES_128_CBC","hmac":""}"#);
        let mut bad = map;
        bad.insert(ANNOTATION_PUBOPTS.to_string(), other_cipher);
        assert!(matches!(
            LayerAnnotations::parse(&bad),
            Err(AnnotationError::Public(_))
        ));
    }
}
