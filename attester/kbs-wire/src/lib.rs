//! ward-kbs-wire: the pieces of the KBS wire format that more than the KBS client needs, so that
//! crates which only name or unwrap KBS resources (ward-image) do not depend on the attester.
//!
//! - [`ResourceUri`] (and [`UriError`]): a validated `kbs:///repo/type/tag` or
//!   `kbs+<plugin>://...` resource URI, as the KBS client asks for it and as ocicrypt packets,
//!   sealed models and signature policies name their keys;
//! - [`concat_kdf`]: the Concat KDF of RFC 7518 §4.6.2 with SHA-256, shared by the KBS's
//!   `ECDH-ES+A256KW` resource JWEs and ocicrypt's JWE recipients.
//!
//! - [`redacted_json_error`]: what a parser of a KBS resource (auth.json, policy.json, JWKs,
//!   ocicrypt private options) may say when the document does not parse: where, never what.
//!
//! No I/O, no attestation, no keys kept: pure parsing and derivation.

mod json;
mod kdf;
mod uri;

pub use json::redacted_json_error;
pub use kdf::concat_kdf;
pub use uri::{ResourceUri, UriError};
