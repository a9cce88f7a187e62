//! Why a sealed file could not be made or opened: one variant per check of the format (see
//! `docs/sealed-model.md`, "Opening: order of checks"). Carries lengths, indexes, digests and
//! names from the header, never key or plaintext bytes.

use std::io;

use crate::digest::Digest;

/// A sealed-model failure.
#[derive(Debug, thiserror::Error)]
pub enum SealedError {
    /// Fewer bytes than the header needs.
    #[error("sealed header truncated: {needed} bytes needed, {got} given")]
    HeaderTruncated { needed: usize, got: usize },
    /// The first 8 bytes are not `WARDSEAL`.
    #[error("not a sealed model file (bad magic)")]
    BadMagic,
    /// A format version this build cannot open.
    #[error("sealed format version {0} is not supported (this build opens version 1)")]
    UnsupportedVersion(u16),
    /// Reserved flags set.
    #[error("sealed header flags {0:#06x} are not supported (must be 0)")]
    UnsupportedFlags(u16),
    /// A header field out of its limits or inconsistent with the others.
    #[error("sealed header field `{field}`: {reason}")]
    HeaderField { field: &'static str, reason: String },
    /// The file name breaks the format's rules.
    #[error("sealed file name is not allowed: {reason}")]
    InvalidName { reason: String },
    /// The KEK id is not a canonical `kbs:///repo/type/tag`.
    #[error("KEK id `{kek_id}` is not a canonical kbs:///repo/type/tag URI")]
    InvalidKekId { kek_id: String },
    /// A KEK that is not 32 bytes. The message leaves the length out: what the KBS released
    /// under that name may be another secret.
    #[error("the KEK given is not 32 bytes")]
    KekLength { len: usize },
    /// The KEK given is not the one the file was sealed with (its fingerprint differs).
    #[error("the KEK given is not the one `{kek_id}` sealed this file with")]
    WrongKek { kek_id: String },
    /// The header MAC does not hold under the right KEK: a header byte was altered.
    #[error("sealed header of `{name}` failed authentication (altered header)")]
    HeaderAuthentication { name: String },
    /// The header's plaintext digest is not the one policy expects.
    #[error("`{name}`: sealed digest {header} is not the {expected} that policy pins")]
    PolicyDigestMismatch {
        name: String,
        expected: Digest,
        header: Digest,
    },
    /// The sealed file is shorter than its header says (cut, or a chunk dropped).
    #[error("sealed file truncated: {expected} bytes expected, {actual} present")]
    Truncated { expected: u64, actual: u64 },
    /// The sealed file is longer than its header says (appended or inserted bytes).
    #[error("sealed file has trailing data: {expected} bytes expected, {actual} present")]
    TrailingData { expected: u64, actual: u64 },
    /// A chunk index past the last chunk.
    #[error("chunk {index} does not exist (the file has {count} chunks)")]
    ChunkIndex { index: u64, count: u64 },
    /// A chunk handed over with the wrong length for its index.
    #[error("chunk {index} is {actual} bytes, {expected} expected")]
    ChunkLength {
        index: u64,
        expected: usize,
        actual: usize,
    },
    /// A chunk's GCM tag did not hold: altered, moved, from another file, or cut.
    #[error("chunk {index} failed authentication (altered, moved or from another file)")]
    ChunkAuthentication { index: u64 },
    /// Every chunk held but the plaintext does not have the digest the header records.
    #[error("`{name}`: plaintext digest is {actual}, the sealed header records {header}")]
    PlaintextDigestMismatch {
        name: String,
        header: Digest,
        actual: Digest,
    },
    /// Bytes pushed to a stream opener after its last chunk.
    #[error("{extra} bytes pushed after the end of the sealed file ({expected} bytes)")]
    PushedPastEnd { expected: u64, extra: u64 },
    /// A stream opener used again after it failed.
    #[error("this stream opener failed earlier; start a new one")]
    StreamFailed,
    /// The plaintext buffer could not be allocated.
    #[error("cannot allocate {len} bytes for the plaintext")]
    Allocation { len: u64 },
    /// The input to seal changed length or content between the digest pass and the sealing pass.
    #[error("the input changed while it was being sealed")]
    InputChanged,
    /// Reading the plaintext or writing the sealed file failed.
    #[error("I/O while sealing")]
    Io(#[source] io::Error),
    /// The crypto library refused an operation that cannot fail on valid lengths.
    #[error("crypto backend failure: {0}")]
    Crypto(&'static str),
    /// A worker thread could not be started or died.
    #[error("decryption worker failed: {0}")]
    Worker(String),
}
