//! Sealed model weights (format v1, specified in `docs/sealed-model.md`): files cut into
//! fixed-size chunks, each sealed with AES-256-GCM under a per-file key derived from a KBS KEK
//! and bound to an authenticated header, so that a model decrypts on all cores straight into
//! guest memory and any chunk can be read and verified alone.
//!
//! - [`header`]: the byte layout, validated names and KEK ids, chunk geometry;
//! - [`seal()`] / [`seal_stream`]: the owner side, `Read` to `Write`;
//! - [`SealedOpener`]: header verification, random access by chunk, whole-file parallel open;
//!   [`open()`]: the same in one call;
//! - [`StreamOpener`]: opening while the bytes arrive (decrypt while downloading);
//! - [`PlaintextBuffer`]: where plaintext lives (its own mapping: locked where allowed, not dumped,
//!   zeroized on drop).
//!
//! Owns the format and its cryptography; fetching blobs and KEKs is the caller's. Must never
//! log or format key bytes or plaintext, and never return plaintext that did not authenticate.

mod backend;
mod error;
pub mod header;
mod keys;
mod open;
mod parallel;
mod plaintext;
mod seal;
mod stream;
#[cfg(test)]
mod tests;

pub use error::SealedError;
pub use header::{FileName, KekId, Layout, SealedHeader};
pub use keys::Kek;
pub use open::{OpenOptions, OpenedFile, SealedOpener, open};
pub use plaintext::PlaintextBuffer;
pub use seal::{SealParams, seal, seal_stream};
pub use stream::StreamOpener;
