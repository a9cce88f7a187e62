//! ward-image: pulling, verifying and decrypting OCI images and sealed model artifacts inside
//! guest memory.
//!
//! - [`digest`]: `sha256:` digests and the streaming verifier every registry byte passes through;
//! - [`registry`]: resolving references to verified manifests and configs (indexes by platform),
//!   and streaming blobs to guest memory with size and digest checks;
//! - [`ocicrypt`]: encrypted-layer formats and crypto (JWE recipients, CoCo key-provider packets
//!   and the `UnWrapKey` protocol, streaming AES-256-CTR + HMAC-SHA256 layers, and the owner side).
//!
//! To come: escape-proof unpacking, the pull pipeline and bundles, signature policy, and the
//! sealed model format.

pub mod digest;
pub mod ocicrypt;
pub mod registry;
