//! ocicrypt: encrypted OCI image layers (containers/ocicrypt, as skopeo, containerd and CoCo
//! write them), decrypted inside the guest.
//!
//! - [`annotations`]: layer media types and the `org.opencontainers.image.enc.*` annotations;
//! - [`keys`] and [`jwe`]: JWE recipients opened with PEM private keys;
//! - [`provider`]: CoCo `attestation-agent` packets opened with KEKs from a [`KekSource`];
//! - [`keyprovider`]: the key-provider protocol messages (`UnWrapKey`);
//! - [`layer`]: the `AES_256_CTR_HMAC_SHA256` stream, whose plaintext is authentic only once
//!   the read returned EOF.
//!
//! Owns the formats and the cryptography of encrypted layers; fetching blobs, KEKs and
//! unpacking are the caller's. Must never log key bytes, unwrapped options or plaintext, and
//! never report a layer as decrypted before its HMAC held.

pub mod annotations;
pub mod jwe;
pub mod keys;
pub mod layer;
mod sha1;

pub use annotations::{
    AnnotationError, Compression, LayerAnnotations, LayerMediaType, PrivateOptions, PublicOptions,
};
pub use jwe::JweError;
pub use keys::{KeyError, PrivateKey, PublicKey};
pub use layer::{LayerDecryptor, LayerEncryptor, LayerError, LayerKeys};
