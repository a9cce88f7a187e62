//! Where image-rs gets what the KBS holds: the one trait, [`KbsResources`], through which pulls,
//! model loads, key-provider packets and signature policies ask for a KBS resource (a KEK, a
//! policy's public key) by [`ResourceUri`], and its one error type, [`ResourceError`].
//!
//! image-rs does not talk to a KBS itself and does not depend on the attester: the binaries
//! implement this trait over their KBS session (wardd over its shared attestation, the `ward`
//! CLI over a `KbsClient` of its own), and tests over keys held in memory. Implementations must
//! never log the bytes they return.

use async_trait::async_trait;
use zeroize::Zeroizing;

use ward_kbs_wire::ResourceUri;

/// Why a [`KbsResources`] could not provide a resource: the implementation's own error, kept
/// whole (its message is this error's message, its sources this error's sources).
#[derive(Debug, thiserror::Error)]
#[error(transparent)]
pub struct ResourceError(Box<dyn std::error::Error + Send + Sync + 'static>);

impl ResourceError {
    /// Wraps an implementation's error (or a message).
    pub fn new(error: impl Into<Box<dyn std::error::Error + Send + Sync + 'static>>) -> Self {
        ResourceError(error.into())
    }
}

/// KBS resources by URI: wardd implements it with its attestation session, `ward` with its own
/// KBS client.
#[async_trait]
pub trait KbsResources: Send + Sync {
    /// The resource named `uri`, decrypted, in a zeroizing buffer (a KEK for `A256GCM` is
    /// 32 bytes; a policy key is a PEM text).
    async fn resource(&self, uri: &ResourceUri) -> Result<Zeroizing<Vec<u8>>, ResourceError>;
}
