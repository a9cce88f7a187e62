//! ward-image: pulling, verifying and decrypting OCI images and sealed model artifacts inside
//! guest memory.
//!
//! - [`digest`]: `sha256:` digests and the streaming verifier every registry byte passes through;
//! - [`registry`]: resolving references to verified manifests and configs (indexes by platform),
//!   and streaming blobs to guest memory with size and digest checks;
//! - [`ocicrypt`]: encrypted-layer formats and crypto (JWE recipients, CoCo key-provider packets
//!   and the `UnWrapKey` protocol, streaming AES-256-CTR + HMAC-SHA256 layers, and the owner side);
//! - [`unpack`]: applying untrusted layers onto a rootfs so that nothing lands outside it
//!   (`openat2(RESOLVE_IN_ROOT)`), with OCI whiteouts and limits;
//! - [`pull`]: the pipeline (fetch → verify → decrypt → decompress → unpack → diff_id) that
//!   publishes a rootfs only when every check held, and [`bundle`]: the runtime `config.json`.
//!
//! - [`encrypt`]: the owner side, encrypting an OCI image layout for JWE recipients and KBS KEKs.
//! - [`sealed`]: sealed model weights (chunked AES-256-GCM under KBS KEKs, `docs/sealed-model.md`):
//!   sealing, verified random access and parallel whole-file opening in guest memory.
//!
//! - [`kbs`]: [`kbs::KbsResources`], how pulls, models, key-provider packets and
//!   policies ask for a KBS resource (the binaries implement it over their KBS session).
//!
//! - [`policy`]: containers `policy.json` signature policy (sigstore/cosign signatures, keys by
//!   path, inline or from the KBS), checked before any layer is fetched.
//!
//! - [`model_artifact`]: sealed models as OCI artifacts: sealing a directory, pushing, and loading into
//!   guest memory with every file checked against its header and the policy's digests.

pub mod bundle;
pub mod digest;
pub mod encrypt;
pub mod kbs;
pub mod model_artifact;
pub mod ocicrypt;
pub mod policy;
pub mod progress;
pub mod pull;
pub mod registry;
pub mod sealed;
pub mod unpack;
