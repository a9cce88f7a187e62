//! ocicrypt: encrypted OCI image layers (containers/ocicrypt, as skopeo, containerd and CoCo
//! write them), decrypted inside the guest.
//!
//! - [`annotations`]: layer media types and the `org.opencontainers.image.enc.*` annotations;
//! - [`keys`] and [`jwe`]: JWE recipients opened with PEM private keys;
//! - [`provider`]: CoCo `attestation-agent` packets opened with KEKs from the KBS
//!   ([`crate::kbs::KbsResources`]);
//! - [`keyprovider`]: the key-provider protocol messages (`UnWrapKey`);
//! - [`layer`]: the `AES_256_CTR_HMAC_SHA256` stream, whose plaintext is authentic only once
//!   the read returned EOF.
//!
//! Owns the formats and the cryptography of encrypted layers; fetching blobs, KEKs and
//! unpacking are the caller's. Must never log key bytes, unwrapped options or plaintext, and
//! never report a layer as decrypted before its HMAC held.

pub mod annotations;
pub mod jwe;
pub mod keyprovider;
pub mod keys;
pub mod layer;
pub mod provider;

use std::collections::BTreeMap;

use zeroize::Zeroizing;

use crate::kbs::KbsResources;

pub use annotations::{
    AnnotationError, Compression, LayerAnnotations, LayerMediaType, PrivateOptions, PublicOptions,
};
pub use jwe::JweError;
pub use keyprovider::{KeyProviderError, unwrap_key_request};
pub use keys::{KeyError, Oaep, PrivateKey, PublicKey, RsaDecryptingKey};
pub use layer::{LayerDecryptor, LayerEncryptor, LayerError, LayerKeys};
pub use provider::{PacketVersion, ProviderError, wrap_packet};

/// Why a layer's private options could not be obtained or its annotations made.
#[derive(Debug, thiserror::Error)]
pub enum OcicryptError {
    /// The annotations are unusable.
    #[error(transparent)]
    Annotations(#[from] AnnotationError),
    /// Only JWE recipients could be tried, and none opened.
    #[error(transparent)]
    Jwe(#[from] JweError),
    /// Only key-provider packets could be tried, and none opened.
    #[error(transparent)]
    Provider(#[from] ProviderError),
    /// Both kinds were tried and neither opened.
    #[error("no key opens this layer: JWE: {jwe}; key provider: {provider}")]
    NoKey {
        jwe: JweError,
        #[source]
        provider: ProviderError,
    },
    /// The layer's wraps need keys that were not given (JWE without private keys, packets
    /// without a KEK source, or only packets of other providers).
    #[error("no key given for what this layer carries: {0}")]
    NothingToTry(String),
}

/// One key-provider recipient for [`annotations_for`]: the KEK named `kid` seals the options.
pub struct ProviderRecipient {
    /// The KBS resource URI of the KEK.
    pub kid: String,
    /// The KEK itself (32 bytes).
    pub kek: Zeroizing<Vec<u8>>,
    /// Packet format to write.
    pub version: PacketVersion,
}

/// Opens a layer's private options: JWE recipients with `keys`, then `attestation-agent`
/// packets with `kek`. Packets of other providers are skipped.
pub async fn unwrap_private_options(
    annotations: &LayerAnnotations,
    keys: &[PrivateKey],
    kek: Option<&dyn KbsResources>,
) -> Result<PrivateOptions, OcicryptError> {
    let mut jwe_error = None;
    if !annotations.jwe.is_empty() && !keys.is_empty() {
        match jwe::decrypt(&annotations.jwe, keys) {
            Ok(json) => return Ok(PrivateOptions::from_json(&json)?),
            Err(e) => jwe_error = Some(e),
        }
    }
    let mut provider_error = None;
    if let Some(kek) = kek {
        for (name, packet) in &annotations.providers {
            if name != provider::ATTESTATION_AGENT {
                continue;
            }
            match provider::unwrap_packet(packet, kek).await {
                Ok(json) => return Ok(PrivateOptions::from_json(&json)?),
                Err(e) => {
                    provider_error.get_or_insert(e);
                }
            }
        }
    }
    match (jwe_error, provider_error) {
        (Some(jwe), Some(provider)) => Err(OcicryptError::NoKey { jwe, provider }),
        (Some(jwe), None) => Err(jwe.into()),
        (None, Some(provider)) => Err(provider.into()),
        (None, None) => {
            let mut carried: Vec<String> = Vec::new();
            if !annotations.jwe.is_empty() {
                carried.push(format!("{} JWE document(s)", annotations.jwe.len()));
            }
            for (name, _) in &annotations.providers {
                carried.push(format!("a `{name}` key-provider packet"));
            }
            Err(OcicryptError::NothingToTry(carried.join(", ")))
        }
    }
}

/// The annotations of a layer encrypted by a [`LayerEncryptor`]: one JWE for all of
/// `jwe_recipients` (if any) and one `attestation-agent` packet per provider recipient.
pub fn annotations_for(
    keys: &LayerKeys,
    jwe_recipients: &[PublicKey],
    providers: &[ProviderRecipient],
) -> Result<BTreeMap<String, String>, OcicryptError> {
    let options = keys.private.to_json();
    let mut jwe_docs = Vec::new();
    if !jwe_recipients.is_empty() {
        jwe_docs.push(jwe::encrypt(&options, jwe_recipients)?);
    }
    let mut packets = Vec::with_capacity(providers.len());
    for p in providers {
        let packet = wrap_packet(&p.kek, &p.kid, &options, p.version)?;
        packets.push((provider::ATTESTATION_AGENT.to_string(), packet));
    }
    let ann = LayerAnnotations {
        jwe: jwe_docs,
        providers: packets,
        public: keys.public.clone(),
    };
    if ann.jwe.is_empty() && ann.providers.is_empty() {
        return Err(AnnotationError::NoKeyWraps.into());
    }
    Ok(ann.to_map())
}

#[cfg(test)]
mod tests;
