//! CoCo key-provider packets (`org.opencontainers.image.enc.keys.provider.attestation-agent`):
//! the private options sealed with AES-256-GCM under a key-encryption key (KEK) that the KBS
//! holds as the resource named by `kid`.
//!
//! Formats (confidential-containers/guest-components,
//! `confidential-data-hub/hub/src/image/annotation_packet/{v1,v2}.rs` and
//! `attestation-agent/coco_keyprovider/src/plugins/kbs.rs`):
//! - v1 `{"kid":"kbs:///default/key/1","wrapped_data":b64,"iv":b64,"wrap_type":"A256GCM"}`;
//! - v2 adds `"version":"0.1.0"`, `"provider":"kbs"` (the default when absent),
//!   `"provider_settings":{}` and `"annotations":{}`; `iv` and `wrap_type` are required for `kbs`.
//!
//! `wrap_type` `A256GCM`: `wrapped_data` is standard base64 of ciphertext ‖ 16-byte tag, `iv`
//! standard base64 of 12 bytes, no AAD. `A256CTR` (CoCo's `crypto` crate, `symmetric.rs` and
//! `rust/aes256ctr.rs`: AES-256 in CTR mode with a 128-bit big-endian counter, a 16-byte `iv`)
//! is unwrapped too, because CoCo's provider makes such packets; it authenticates nothing, so
//! what it unwraps is only as good as the layer's own HMAC and diff_id, which are checked as
//! always. Other providers (`aliyun`, `ehsm`, ...) are refused with a typed error.
//!
//! Owns the packet format and the AES-GCM seal. The KEK comes from a [`KbsResources`] (wardd's
//! KBS session); this module never logs KEKs or unwrapped options, and errors name the `kid` only.

use aes_gcm::aead::{Aead, KeyInit};
use aes_gcm::{Aes256Gcm, Nonce};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use rand::RngCore;
use rand::rngs::OsRng;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use ward_kbs_wire::{ResourceUri, UriError};
use zeroize::Zeroizing;

use crate::kbs::{KbsResources, ResourceError};

/// The provider name CoCo's images use (`...keys.provider.attestation-agent`).
pub const ATTESTATION_AGENT: &str = "attestation-agent";
/// The only v2 packet version.
pub const PACKET_VERSION_V2: &str = "0.1.0";
/// Largest packet accepted.
pub const MAX_PACKET_BYTES: usize = 64 << 10;

/// Which packet format [`wrap_packet`] writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PacketVersion {
    /// `kid`, `wrapped_data`, `iv`, `wrap_type`.
    V1,
    /// v1 plus `version`, `provider`, `provider_settings`, `annotations`.
    V2,
}

/// Why a packet could not be read, unwrapped or made. Carries no key bytes.
#[derive(Debug, thiserror::Error)]
pub enum ProviderError {
    /// Not the packet JSON, a member missing or not base64, a wrong size.
    #[error("malformed key-provider packet: {0}")]
    Malformed(String),
    /// A packet version, provider or wrap type ward does not handle.
    #[error("unsupported key-provider packet {field} `{value}`")]
    Unsupported { field: &'static str, value: String },
    /// The `kid` is not a KBS resource URI.
    #[error("packet `kid` is not a KBS resource URI")]
    Kid(#[source] UriError),
    /// Fetching this `kid`'s KEK from the KBS failed.
    #[error("fetching the KEK `{kid}` failed: {source}")]
    Kek {
        kid: String,
        #[source]
        source: ResourceError,
    },
    /// The KEK is not 32 bytes. Its length is not said: the `kid` comes from the image, and
    /// the resource it names may be some other secret.
    #[error("the resource `{kid}` is not a 32-byte A256GCM key")]
    KekLength { kid: String },
    /// AES-GCM authentication failed: wrong KEK for this `kid`, or the packet was altered.
    #[error("unwrapping with the KEK `{kid}` failed: wrong key, or the packet was altered")]
    Authentication { kid: String },
}

#[derive(Serialize, Deserialize)]
struct PacketJson {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    version: Option<String>,
    kid: String,
    wrapped_data: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    provider: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    iv: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    wrap_type: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    provider_settings: Option<Map<String, Value>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    annotations: Option<Map<String, Value>>,
}

/// A checked `kbs` packet: what unwrapping needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Packet {
    /// The KEK's resource URI, as the packet spells it.
    pub kid: String,
    /// Ciphertext (‖ tag for GCM).
    pub wrapped_data: Vec<u8>,
    /// How it is wrapped, with its IV.
    pub wrap: Wrap,
    /// `V2` when the packet carries a `version`.
    pub version: PacketVersion,
}

/// A packet's `wrap_type` and `iv`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Wrap {
    /// AES-256-GCM with a 12-byte IV (authenticated).
    A256Gcm([u8; 12]),
    /// AES-256-CTR, 128-bit big-endian counter from a 16-byte IV (not authenticated).
    A256Ctr([u8; 16]),
}

impl Packet {
    /// Parses and checks a packet (the annotation entry, base64-decoded).
    pub fn parse(bytes: &[u8]) -> Result<Packet, ProviderError> {
        if bytes.len() > MAX_PACKET_BYTES {
            return Err(ProviderError::Malformed(format!(
                "{} bytes is more than the {MAX_PACKET_BYTES} accepted",
                bytes.len()
            )));
        }
        let p: PacketJson = serde_json::from_slice(bytes)
            .map_err(|e| ProviderError::Malformed(format!("not packet JSON: {e}")))?;
        let version = match p.version.as_deref() {
            None => PacketVersion::V1,
            Some(PACKET_VERSION_V2) => PacketVersion::V2,
            Some(other) => {
                return Err(ProviderError::Unsupported {
                    field: "version",
                    value: other.to_string(),
                });
            }
        };
        if let Some(provider) = p.provider.as_deref().filter(|p| *p != "kbs") {
            return Err(ProviderError::Unsupported {
                field: "provider",
                value: provider.to_string(),
            });
        }
        let wrap_type = p
            .wrap_type
            .ok_or_else(|| ProviderError::Malformed("no `wrap_type`".to_string()))?;
        if wrap_type != "A256GCM" && wrap_type != "A256CTR" {
            return Err(ProviderError::Unsupported {
                field: "wrap_type",
                value: wrap_type,
            });
        }
        ResourceUri::parse(&p.kid).map_err(ProviderError::Kid)?;
        let iv =
            p.iv.ok_or_else(|| ProviderError::Malformed("no `iv`".to_string()))?;
        let iv = STANDARD
            .decode(iv)
            .map_err(|_| ProviderError::Malformed("`iv` is not base64".to_string()))?;
        let bad_iv = |want: usize| {
            ProviderError::Malformed(format!("`iv` is {} bytes, not {want}", iv.len()))
        };
        let wrap = if wrap_type == "A256GCM" {
            Wrap::A256Gcm(<[u8; 12]>::try_from(iv.as_slice()).map_err(|_| bad_iv(12))?)
        } else {
            Wrap::A256Ctr(<[u8; 16]>::try_from(iv.as_slice()).map_err(|_| bad_iv(16))?)
        };
        let wrapped_data = STANDARD
            .decode(&p.wrapped_data)
            .map_err(|_| ProviderError::Malformed("`wrapped_data` is not base64".to_string()))?;
        if matches!(wrap, Wrap::A256Gcm(_)) && wrapped_data.len() < 16 {
            return Err(ProviderError::Malformed(format!(
                "`wrapped_data` is {} bytes, shorter than the GCM tag",
                wrapped_data.len()
            )));
        }
        Ok(Packet {
            kid: p.kid,
            wrapped_data,
            wrap,
            version,
        })
    }
}

fn cipher(kid: &str, kek: &[u8]) -> Result<Aes256Gcm, ProviderError> {
    Aes256Gcm::new_from_slice(kek).map_err(|_| ProviderError::KekLength {
        kid: kid.to_string(),
    })
}

/// Unwraps a packet: fetches its KEK from `kek` and returns the private options JSON.
pub async fn unwrap_packet(
    packet: &[u8],
    kek: &dyn KbsResources,
) -> Result<Zeroizing<Vec<u8>>, ProviderError> {
    let p = Packet::parse(packet)?;
    let uri = ResourceUri::parse(&p.kid).map_err(ProviderError::Kid)?;
    let key = kek
        .resource(&uri)
        .await
        .map_err(|source| ProviderError::Kek {
            kid: p.kid.clone(),
            source,
        })?;
    match &p.wrap {
        Wrap::A256Gcm(iv) => {
            let plain = cipher(&p.kid, &key)?
                .decrypt(Nonce::from_slice(iv), p.wrapped_data.as_slice())
                .map_err(|_| ProviderError::Authentication { kid: p.kid.clone() })?;
            Ok(Zeroizing::new(plain))
        }
        Wrap::A256Ctr(iv) => {
            use ctr::cipher::{KeyIvInit as _, StreamCipher as _};
            let mut ctr = ctr::Ctr128BE::<aes::Aes256>::new_from_slices(&key, iv)
                .map_err(|_| ProviderError::KekLength { kid: p.kid.clone() })?;
            let mut plain = Zeroizing::new(p.wrapped_data.clone());
            ctr.apply_keystream(&mut plain);
            Ok(plain)
        }
    }
}

/// Makes a packet (owner side): seals `private_options` under `kek` (32 bytes) with a fresh IV
/// and names the KEK `kid` (a `kbs:///repo/type/tag` URI). Returns the packet JSON; the
/// annotation value is its standard base64.
pub fn wrap_packet(
    kek: &[u8],
    kid: &str,
    private_options: &[u8],
    version: PacketVersion,
) -> Result<Vec<u8>, ProviderError> {
    ResourceUri::parse(kid).map_err(ProviderError::Kid)?;
    let mut iv = [0u8; 12];
    OsRng.fill_bytes(&mut iv);
    let sealed = cipher(kid, kek)?
        .encrypt(Nonce::from_slice(&iv), private_options)
        .map_err(|_| ProviderError::Authentication {
            kid: kid.to_string(),
        })?;
    let v2 = version == PacketVersion::V2;
    let p = PacketJson {
        version: v2.then(|| PACKET_VERSION_V2.to_string()),
        kid: kid.to_string(),
        wrapped_data: STANDARD.encode(sealed),
        provider: v2.then(|| "kbs".to_string()),
        iv: Some(STANDARD.encode(iv)),
        wrap_type: Some("A256GCM".to_string()),
        provider_settings: v2.then(Map::new),
        annotations: v2.then(Map::new),
    };
    serde_json::to_vec(&p).map_err(|e| ProviderError::Malformed(e.to_string()))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use async_trait::async_trait;
    use std::collections::HashMap;

    /// KEKs held in memory, by `kid`.
    pub(crate) struct MemoryKeks(pub HashMap<String, Vec<u8>>);

    #[async_trait]
    impl KbsResources for MemoryKeks {
        async fn resource(&self, uri: &ResourceUri) -> Result<Zeroizing<Vec<u8>>, ResourceError> {
            self.0
                .get(&uri.to_string())
                .map(|k| Zeroizing::new(k.clone()))
                .ok_or_else(|| ResourceError::new(format!("no KEK `{uri}`")))
        }
    }

    pub(crate) fn keks() -> MemoryKeks {
        MemoryKeks(HashMap::from([
            ("kbs:///default/key/1".to_string(), vec![5u8; 32]),
            ("kbs:///default/key/2".to_string(), vec![6u8; 32]),
        ]))
    }

    /// CoCo's provider also makes `A256CTR` packets (AES-256-CTR, 128-bit big-endian counter,
    /// 16-byte IV). The vector was made by another implementation, OpenSSL:
    /// `openssl enc -aes-256-ctr -K 05...05 -iv 00112233445566778899aabbccddeeff`.
    #[tokio::test]
    async fn a256ctr_packets_unwrap_as_coco_makes_them() {
        let packet = serde_json::json!({
            "kid": "kbs:///default/key/1",
            "wrapped_data": "3SLHKFySFcYp8It60Lm16asYpnRNKg6m/I0xArvlR+fRX0iqD1Azp6I=",
            "iv": "ABEiM0RVZneImaq7zN3u/w==",
            "wrap_type": "A256CTR",
        });
        let plain = unwrap_packet(&serde_json::to_vec(&packet).unwrap(), &keks())
            .await
            .unwrap();
        assert_eq!(
            plain.as_slice(),
            br#"{"symkey":"c2VjcmV0","digest":"sha256:0"}"#
        );
        let mut short_iv = packet.clone();
        short_iv["iv"] = "AAAAAAAAAAAAAAAA".into();
        assert!(matches!(
            Packet::parse(&serde_json::to_vec(&short_iv).unwrap()),
            Err(ProviderError::Malformed(m)) if m.contains("not 16")
        ));
    }

    #[tokio::test]
    async fn v1_and_v2_round_trip() {
        let opts = br#"{"symkey":"..."}"#;
        for version in [PacketVersion::V1, PacketVersion::V2] {
            let packet = wrap_packet(&[5; 32], "kbs:///default/key/1", opts, version).unwrap();
            let json: Value = serde_json::from_slice(&packet).unwrap();
            assert_eq!(json["wrap_type"], "A256GCM");
            assert_eq!(json.get("version").is_some(), version == PacketVersion::V2);
            if version == PacketVersion::V2 {
                assert_eq!(json["provider"], "kbs");
                assert!(json["provider_settings"].is_object());
            }
            assert_eq!(Packet::parse(&packet).unwrap().version, version);
            assert_eq!(&unwrap_packet(&packet, &keks()).await.unwrap()[..], opts);
        }
    }

    /// A v2 packet as CoCo's `coco_keyprovider` writes it (members in its order).
    #[tokio::test]
    async fn reads_coco_v2_layout() {
        let sealed = Aes256Gcm::new_from_slice(&[6; 32])
            .unwrap()
            .encrypt(Nonce::from_slice(&[9; 12]), &b"opts"[..])
            .unwrap();
        let packet = format!(
            r#"{{"version":"0.1.0","kid":"kbs:///default/key/2","wrapped_data":"{}","provider":"kbs","iv":"{}","wrap_type":"A256GCM","provider_settings":{{}},"annotations":{{}}}}"#,
            STANDARD.encode(sealed),
            STANDARD.encode([9u8; 12])
        );
        assert_eq!(
            &unwrap_packet(packet.as_bytes(), &keks()).await.unwrap()[..],
            b"opts"
        );
    }

    #[tokio::test]
    async fn wrong_kek_and_refusals() {
        let packet =
            wrap_packet(&[7; 32], "kbs:///default/key/1", b"x", PacketVersion::V1).unwrap();
        let err = unwrap_packet(&packet, &keks()).await.unwrap_err();
        assert!(
            matches!(err, ProviderError::Authentication { ref kid } if kid == "kbs:///default/key/1")
        );
        let packet =
            wrap_packet(&[7; 32], "kbs:///default/key/3", b"x", PacketVersion::V1).unwrap();
        assert!(matches!(
            unwrap_packet(&packet, &keks()).await.unwrap_err(),
            ProviderError::Kek { .. }
        ));
        assert!(matches!(
            wrap_packet(&[7; 16], "kbs:///default/key/1", b"x", PacketVersion::V1),
            Err(ProviderError::KekLength { .. })
        ));
        assert!(matches!(
            wrap_packet(&[7; 32], "kbs:///../key/1", b"x", PacketVersion::V1),
            Err(ProviderError::Kid(_))
        ));
        let aliyun = br#"{"version":"0.1.0","kid":"k","wrapped_data":"","provider":"aliyun"}"#;
        assert!(matches!(
            Packet::parse(aliyun),
            Err(ProviderError::Unsupported {
                field: "provider",
                ..
            })
        ));
        let cbc = br#"{"kid":"kbs:///a/b/c","wrapped_data":"","iv":"","wrap_type":"A256CBC"}"#;
        assert!(matches!(
            Packet::parse(cbc),
            Err(ProviderError::Unsupported {
                field: "wrap_type",
                ..
            })
        ));
        assert!(matches!(
            Packet::parse(b"{\"kid\":"),
            Err(ProviderError::Malformed(_))
        ));
    }
}
