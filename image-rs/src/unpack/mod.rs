//! Applying OCI image layers (tar streams from an untrusted registry) onto a container rootfs.
//!
//! Owns: turning one decompressed layer stream into files under a root directory, with OCI
//! whiteouts, under the limits of an [`UnpackPolicy`]. Must never: create, modify, delete or
//! follow anything outside the root; follow a symlink from the image while writing; trust a size,
//! count or path from the archive without a limit; fall back to plain path joins when
//! `openat2(2)` (Linux 5.6) is missing — it fails with [`UnpackError::Openat2Unsupported`].
//!
//! # Contract with the caller
//! - [`apply_layer`] is synchronous: run it in `spawn_blocking`, feeding it the verified and
//!   decompressed stream. Apply layers in manifest order onto the same `root`.
//! - `root` is a private staging directory that nothing else writes to while layers are applied.
//! - On any error the staging directory holds partial output: the caller removes it, and
//!   publishes (renames or mounts) it only after every layer applied cleanly.
//!
//! # Path safety
//! Entry names and hard-link targets are normalized lexically; an absolute path or a `..` that
//! climbs above the root is refused with an error naming the entry (never stripped). Parent
//! directories are opened with `openat2(RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS)` from the root
//! fd, so a symlink in the image (`/etc/mtab -> /proc/mounts`, `lib -> ../x`) resolves as if the
//! root were `/` and never leaves it; the last component is created with `*at` calls that do not
//! follow it (`O_CREAT | O_EXCL | O_NOFOLLOW`, `mkdirat`, `symlinkat`, `linkat` without
//! `AT_SYMLINK_FOLLOW`, `mknodat`). Symlink targets are stored as given: they may point anywhere,
//! because they are only ever resolved inside the root. A parent that is a dangling symlink or a
//! non-directory is an error ([`UnpackError::NotADirectory`]). Hard links must name an existing
//! non-directory inside the root.
//!
//! # Semantics
//! - **Whiteouts** (OCI image spec): `.wh.<name>` removes `<name>` left by lower layers
//!   (recursively, never following symlinks); an entry of the same name written earlier by the same
//!   layer stays, since whiteouts apply only to lower layers. `.wh..wh..opq` makes its directory
//!   opaque: everything in it not written by this layer is removed, wherever the marker sits in
//!   the stream (entries before it are remembered by directory inode and name). Other
//!   `.wh..wh.*` names (aufs metadata) are ignored. Whiteout files are never created.
//! - **Type replacement**: later wins, as in containerd and umoci. A non-directory replaces
//!   whatever is there (a directory is removed with its contents); a directory replaces a
//!   non-directory, and merges into an existing directory (its metadata is updated).
//! - **Duplicates in one layer**: the later entry wins by the same rules, including a later
//!   non-directory replacing a directory written earlier in the layer, contents and all. Nothing
//!   can escape through this: later entries resolve through the new symlink inside the root.
//! - **Metadata**: mode bits (`0o7777`), mtime (atime is set to it), and ownership (tar uid/gid,
//!   numeric; user and group names are ignored) when running as root and
//!   [`UnpackPolicy::apply_ownership`] is set, else silently skipped. Setuid/setgid bits are kept
//!   only when ownership is applied and [`UnpackPolicy::keep_setid`] is set: without ownership
//!   the files would be owned by the unpacking user, and a set-id bit would hand its identity to
//!   whatever runs in the container. Directories get their mode and times after the whole layer,
//!   deepest first, so a `0555` directory still receives its contents.
//! - **Devices**: character and block devices follow [`DevicePolicy`] (default: not created,
//!   counted in [`LayerStats::devices_skipped`]); FIFOs are created.
//! - **Ignored**: extended attributes (including `security.capability`, so file capabilities are
//!   lost), ACLs, PAX global headers, user/group names, atime/ctime from PAX.
//! - Refused: GNU volume/multivolume and other unknown entry types.

mod apply;
mod gate;
mod path;
mod root;
#[cfg(test)]
mod tests;
mod whiteout;

use std::path::PathBuf;

pub use apply::apply_layer;
pub(crate) use root::read_in_root;

/// What to do with character and block device entries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DevicePolicy {
    /// Do not create them; count them in [`LayerStats::devices_skipped`].
    #[default]
    Skip,
    /// Fail the layer with [`UnpackError::DeviceRefused`].
    Refuse,
    /// Create them with `mknodat` when running as root (skipped otherwise).
    Create,
}

/// Limits and choices for [`apply_layer`]. Every limit applies per layer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnpackPolicy {
    /// Data bytes read from the archive, over all entries (default 32 GiB).
    pub max_total_bytes: u64,
    /// Entries in the archive, whiteouts included (default 1 Mi; large real images hold a few
    /// hundred thousand).
    pub max_entries: u64,
    /// Bytes in an entry name or link target before normalization (default 4095, `PATH_MAX`
    /// less its NUL).
    pub max_path_len: usize,
    /// Size of any one entry (default 16 GiB).
    pub max_file_size: u64,
    /// Bytes of extension headers (PAX, GNU long names) before one entry, which the tar reader
    /// holds in memory (default 1 MiB, as Go's `archive/tar`).
    pub max_metadata_bytes: u64,
    /// Character and block devices (default [`DevicePolicy::Skip`]).
    pub devices: DevicePolicy,
    /// Keep setuid/setgid bits; effective only while ownership is applied (default true, so
    /// `su` or `ping` in an image work as root-unpacked images do elsewhere).
    pub keep_setid: bool,
    /// Chown entries to their tar uid/gid when running as root; skipped silently otherwise
    /// (default true).
    pub apply_ownership: bool,
}

impl Default for UnpackPolicy {
    fn default() -> Self {
        UnpackPolicy {
            max_total_bytes: 32 << 30,
            max_entries: 1 << 20,
            max_path_len: 4095,
            max_file_size: 16 << 30,
            max_metadata_bytes: 1 << 20,
            devices: DevicePolicy::Skip,
            keep_setid: true,
            apply_ownership: true,
        }
    }
}

/// What one layer did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LayerStats {
    /// Entries read from the archive (every kind, whiteouts included).
    pub entries: u64,
    /// Regular files written.
    pub files: u64,
    /// Directory entries applied (created or merged).
    pub dirs: u64,
    /// Symlinks created.
    pub symlinks: u64,
    /// Hard links created.
    pub hardlinks: u64,
    /// Whiteouts and opaque markers applied.
    pub whiteouts: u64,
    /// FIFOs and device nodes created.
    pub special: u64,
    /// Device entries not created ([`DevicePolicy::Skip`], or not root).
    pub devices_skipped: u64,
    /// Bytes written to regular files.
    pub bytes_written: u64,
}

/// Why a layer could not be applied. Entry names are shown lossily and escaped (`{:?}`).
#[derive(Debug, thiserror::Error)]
pub enum UnpackError {
    /// The root is not an openable directory.
    #[error("cannot open the unpack root {root:?}")]
    Root {
        root: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The kernel has no `openat2(2)`; unpacking without in-root resolution would be unsafe.
    #[error("openat2(2) is unavailable (Linux 5.6 or later is needed); refusing to unpack")]
    Openat2Unsupported,
    /// The tar stream is malformed or could not be read.
    #[error("malformed or unreadable tar stream after {entries} entries")]
    Tar {
        entries: u64,
        #[source]
        source: std::io::Error,
    },
    /// A header field (mode, uid, gid, mtime, device numbers) could not be parsed.
    #[error("entry {entry:?}: bad header field")]
    Header {
        entry: String,
        #[source]
        source: std::io::Error,
    },
    /// An absolute entry path.
    #[error("entry {entry:?}: absolute paths are refused")]
    AbsolutePath { entry: String },
    /// A `..` that climbs above the root.
    #[error("entry {entry:?}: `..` leaves the root")]
    Escape { entry: String },
    /// A path that names nothing placeable (NUL byte, the root for a non-directory, an empty
    /// symlink target, a whiteout of `.`).
    #[error("entry {entry:?}: {reason}")]
    InvalidPath { entry: String, reason: &'static str },
    /// A name or link target over [`UnpackPolicy::max_path_len`].
    #[error("entry {entry:?}: name or link target of {len} bytes exceeds the limit of {limit}")]
    PathTooLong {
        entry: String,
        len: usize,
        limit: usize,
    },
    /// A hard link whose target is outside the root, missing, or a directory.
    #[error("entry {entry:?}: hard link target {target:?} refused: {reason}")]
    HardlinkTarget {
        entry: String,
        target: String,
        reason: &'static str,
    },
    /// More entries than [`UnpackPolicy::max_entries`].
    #[error("more than {limit} entries in the layer")]
    TooManyEntries { limit: u64 },
    /// One entry larger than [`UnpackPolicy::max_file_size`].
    #[error("entry {entry:?}: {size} bytes exceeds the per-file limit of {limit}")]
    FileTooLarge {
        entry: String,
        size: u64,
        limit: u64,
    },
    /// The layer's data exceeds [`UnpackPolicy::max_total_bytes`].
    #[error("entry {entry:?}: the layer exceeds its limit of {limit} bytes")]
    TotalTooLarge { entry: String, limit: u64 },
    /// Extension headers before an entry exceed [`UnpackPolicy::max_metadata_bytes`].
    #[error("extension headers after {entries} entries exceed the limit of {limit} bytes")]
    MetadataTooLarge { entries: u64, limit: u64 },
    /// A character or block device under [`DevicePolicy::Refuse`].
    #[error("entry {entry:?}: device nodes are refused by policy")]
    DeviceRefused { entry: String },
    /// An entry type this applier does not place.
    #[error("entry {entry:?}: unsupported tar entry type {kind:#04x}")]
    UnsupportedType { entry: String, kind: u8 },
    /// The stream ended inside an entry's data.
    #[error("entry {entry:?}: data ended after {written} of {size} bytes")]
    Truncated {
        entry: String,
        written: u64,
        size: u64,
    },
    /// A parent component is a non-directory or a dangling symlink.
    #[error("entry {entry:?}: a parent is not a directory (or is a dangling symlink)")]
    NotADirectory { entry: String },
    /// A filesystem operation under the root failed.
    #[error("entry {entry:?}: {op} failed")]
    Io {
        entry: String,
        op: &'static str,
        #[source]
        source: std::io::Error,
    },
}

impl UnpackError {
    /// What went wrong, without the entry names, sizes or targets the variant carries: for
    /// encrypted layers, whose entries come from the plaintext, this is all an error may say.
    pub fn category(&self) -> &'static str {
        match self {
            UnpackError::Root { .. } => "the unpack root cannot be opened",
            UnpackError::Openat2Unsupported => "openat2(2) is unavailable",
            UnpackError::Tar { .. } => "malformed or unreadable tar stream",
            UnpackError::Header { .. } => "bad tar header field",
            UnpackError::AbsolutePath { .. } => "absolute entry path",
            UnpackError::Escape { .. } => "entry path leaves the root",
            UnpackError::InvalidPath { .. } => "invalid entry path",
            UnpackError::PathTooLong { .. } => "entry name or link target too long",
            UnpackError::HardlinkTarget { .. } => "hard link target refused",
            UnpackError::TooManyEntries { .. } => "too many entries",
            UnpackError::FileTooLarge { .. } => "entry over the per-file limit",
            UnpackError::TotalTooLarge { .. } => "layer over its size limit",
            UnpackError::MetadataTooLarge { .. } => "extension headers over their limit",
            UnpackError::DeviceRefused { .. } => "device node refused by policy",
            UnpackError::UnsupportedType { .. } => "unsupported tar entry type",
            UnpackError::Truncated { .. } => "entry data cut short",
            UnpackError::NotADirectory { .. } => "a parent is not a directory",
            UnpackError::Io { op, .. } => op,
        }
    }
}
