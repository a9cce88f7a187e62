//! The layer loop: reads entries with the `tar` crate, enforces the policy's limits, and places
//! each entry through [`super::root`]. Owns the per-layer state (what this layer created, the
//! directory metadata applied at the end). Never opens or creates anything except through the
//! root's in-root operations, and never buffers entry data in memory.

use std::cmp::Reverse;
use std::io::{self, Read};
use std::os::fd::{AsFd, OwnedFd};
use std::path::Path;

use nix::errno::Errno;
use nix::fcntl::{AtFlags, OFlag, openat};
use nix::sys::stat::{
    FchmodatFlags, Mode, SFlag, UtimensatFlags, fchmod, fchmodat, fstat, futimens, makedev,
    mkdirat, mknodat, utimensat,
};
use nix::sys::time::TimeSpec;
use nix::unistd::{Gid, Uid, fchown, fchownat, geteuid, linkat, symlinkat};
use tar::EntryType;

use super::gate::Gate;
use super::path::{EntryPath, PathRefusal};
use super::root::{Created, Existing, Root, clear_slot, existing, open_subdir, slot_key};
use super::{DevicePolicy, LayerStats, UnpackError, UnpackPolicy};

/// Metadata from a header, applied after the entry is placed.
#[derive(Debug, Clone, Copy)]
struct Meta {
    mode: u32,
    uid: u32,
    gid: u32,
    mtime: i64,
}

/// A directory whose mode and times are applied once the layer is complete.
#[derive(Debug)]
struct DirMeta {
    path: EntryPath,
    dev: u64,
    ino: u64,
    meta: Meta,
}

/// Applies one layer (an uncompressed tar stream) onto `root`; see the [module docs](super) for
/// the semantics and the caller's contract. On error the root holds partial output.
pub fn apply_layer(
    tar_stream: impl Read,
    root: &Path,
    policy: &UnpackPolicy,
) -> Result<LayerStats, UnpackError> {
    let root_dir = Root::open(root).map_err(|e| match e {
        Errno::ENOSYS => UnpackError::Openat2Unsupported,
        e => UnpackError::Root {
            root: root.to_path_buf(),
            source: e.into(),
        },
    })?;
    let gate = Gate::new(policy.max_metadata_bytes);
    let mut archive = tar::Archive::new(gate.guard(tar_stream));
    let chown = policy.apply_ownership && geteuid().is_root();
    let mut layer = Layer {
        root: root_dir,
        policy,
        chown,
        is_root: geteuid().is_root(),
        keep_setid: chown && policy.keep_setid,
        stats: LayerStats::default(),
        created: Created::new(),
        dirs: Vec::new(),
        data_read: 0,
        buf: vec![0; COPY_BUF],
    };
    let stream_error = |entries: u64, source: io::Error| {
        if gate.tripped() {
            UnpackError::MetadataTooLarge {
                entries,
                limit: policy.max_metadata_bytes,
            }
        } else {
            UnpackError::Tar { entries, source }
        }
    };
    let entries = archive
        .entries()
        .map_err(|e| stream_error(layer.stats.entries, e))?;
    for entry in entries {
        let mut entry = entry.map_err(|e| stream_error(layer.stats.entries, e))?;
        gate.enter_data();
        layer.stats.entries += 1;
        if layer.stats.entries > policy.max_entries {
            return Err(UnpackError::TooManyEntries {
                limit: policy.max_entries,
            });
        }
        layer.entry(&mut entry)?;
        // Whatever the entry's kind, consume its data here (it was counted against the total)
        // so that the gate only sees headers.
        io::copy(&mut entry, &mut io::sink()).map_err(|e| stream_error(layer.stats.entries, e))?;
        gate.leave_data();
    }
    layer.finish()
}

/// The state of one layer being applied.
pub(super) struct Layer<'p> {
    pub(super) root: Root,
    policy: &'p UnpackPolicy,
    chown: bool,
    is_root: bool,
    keep_setid: bool,
    pub(super) stats: LayerStats,
    /// Every slot this layer wrote, for whiteouts and opaque directories.
    pub(super) created: Created,
    dirs: Vec<DirMeta>,
    data_read: u64,
    /// File data goes through this buffer: one `write(2)` per [`COPY_BUF`] bytes, not per 8 KiB
    /// as `io::copy` does into a `File`.
    buf: Vec<u8>,
}

/// Bytes per write of file data.
const COPY_BUF: usize = 256 << 10;

/// Copies `r` to `w` through `buf`; the bytes copied.
fn copy_through(r: &mut impl Read, w: &mut impl io::Write, buf: &mut [u8]) -> io::Result<u64> {
    let mut total = 0u64;
    loop {
        let n = match r.read(buf) {
            Ok(0) => return Ok(total),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        w.write_all(buf.get(..n).unwrap_or_default())?;
        total = total.saturating_add(n as u64);
    }
}

fn lossy(raw: &[u8]) -> String {
    String::from_utf8_lossy(raw).into_owned()
}

pub(super) fn io_err<'a>(
    entry: &'a str,
    op: &'static str,
) -> impl FnOnce(Errno) -> UnpackError + 'a {
    move |e| UnpackError::Io {
        entry: entry.to_string(),
        op,
        source: e.into(),
    }
}

fn header_err(entry: &str) -> impl FnOnce(io::Error) -> UnpackError + '_ {
    move |source| UnpackError::Header {
        entry: entry.to_string(),
        source,
    }
}

impl Layer<'_> {
    fn entry<R: Read>(&mut self, entry: &mut tar::Entry<'_, R>) -> Result<(), UnpackError> {
        let raw = entry.path_bytes().into_owned();
        let shown = lossy(&raw);
        let size = entry.size();
        if size > self.policy.max_file_size {
            return Err(UnpackError::FileTooLarge {
                entry: shown,
                size,
                limit: self.policy.max_file_size,
            });
        }
        self.data_read = match self.data_read.checked_add(size) {
            Some(total) if total <= self.policy.max_total_bytes => total,
            _ => {
                return Err(UnpackError::TotalTooLarge {
                    entry: shown,
                    limit: self.policy.max_total_bytes,
                });
            }
        };
        let kind = entry.header().entry_type();
        if kind == EntryType::XGlobalHeader {
            return Ok(());
        }
        self.check_len(&shown, raw.len())?;
        let path = EntryPath::parse(&raw).map_err(|r| match r {
            PathRefusal::Absolute => UnpackError::AbsolutePath {
                entry: shown.clone(),
            },
            PathRefusal::Escape => UnpackError::Escape {
                entry: shown.clone(),
            },
            PathRefusal::Nul => UnpackError::InvalidPath {
                entry: shown.clone(),
                reason: "NUL byte in the name",
            },
        })?;
        if let Some(name) = path.file_name()
            && let Some(target) = name.strip_prefix(b".wh.")
        {
            return self.whiteout(&path, target, &shown);
        }
        let header = entry.header();
        let meta = Meta {
            mode: header.mode().map_err(header_err(&shown))?,
            uid: u32::try_from(header.uid().map_err(header_err(&shown))?)
                .map_err(|_| header_err(&shown)(io::Error::other("uid does not fit 32 bits")))?,
            gid: u32::try_from(header.gid().map_err(header_err(&shown))?)
                .map_err(|_| header_err(&shown)(io::Error::other("gid does not fit 32 bits")))?,
            mtime: i64::try_from(header.mtime().map_err(header_err(&shown))?).unwrap_or(i64::MAX),
        };
        match kind {
            EntryType::Regular | EntryType::Continuous | EntryType::GNUSparse => {
                self.file(&path, &shown, entry, size, meta)
            }
            EntryType::Directory => self.directory(&path, &shown, meta),
            EntryType::Symlink => {
                let target = self.link_target(entry, &shown)?;
                self.symlink(&path, &shown, &target, meta)
            }
            EntryType::Link => {
                let target = self.link_target(entry, &shown)?;
                self.hardlink(&path, &shown, &target)
            }
            EntryType::Fifo => self.special(&path, &shown, SFlag::S_IFIFO, 0, meta),
            EntryType::Char | EntryType::Block => self.device(&path, &shown, entry, kind, meta),
            other => Err(UnpackError::UnsupportedType {
                entry: shown,
                kind: other.as_byte(),
            }),
        }
    }

    fn check_len(&self, shown: &str, len: usize) -> Result<(), UnpackError> {
        if len > self.policy.max_path_len {
            return Err(UnpackError::PathTooLong {
                entry: shown.to_string(),
                len,
                limit: self.policy.max_path_len,
            });
        }
        Ok(())
    }

    fn link_target<R: Read>(
        &self,
        entry: &tar::Entry<'_, R>,
        shown: &str,
    ) -> Result<Vec<u8>, UnpackError> {
        let target = entry.link_name_bytes().map(|t| t.into_owned());
        let target = target.unwrap_or_default();
        if target.is_empty() || target.contains(&0) {
            return Err(UnpackError::InvalidPath {
                entry: shown.to_string(),
                reason: "link target is empty or holds a NUL byte",
            });
        }
        self.check_len(shown, target.len())?;
        Ok(target)
    }

    /// The entry's last component and its parent directory (created if missing).
    fn slot(&mut self, path: &EntryPath, shown: &str) -> Result<(OwnedFd, Vec<u8>), UnpackError> {
        let Some(name) = path.file_name() else {
            return Err(UnpackError::InvalidPath {
                entry: shown.to_string(),
                reason: "only a directory may name the root",
            });
        };
        let parent = self
            .root
            .ensure_dir(&path.parent(), &mut self.created)
            .map_err(|e| match e {
                Errno::ENOTDIR | Errno::ELOOP => UnpackError::NotADirectory {
                    entry: shown.to_string(),
                },
                Errno::ENOSYS => UnpackError::Openat2Unsupported,
                e => io_err(shown, "open parent directory")(e),
            })?;
        Ok((parent, name.to_vec()))
    }

    fn mode_bits(&self, mode: u32) -> Mode {
        let mode = mode & 0o7777;
        let mode = if self.keep_setid {
            mode
        } else {
            mode & !0o6000
        };
        Mode::from_bits_truncate(mode)
    }

    fn owner(&self, meta: Meta) -> (Option<Uid>, Option<Gid>) {
        (Some(Uid::from_raw(meta.uid)), Some(Gid::from_raw(meta.gid)))
    }

    /// Ownership, then mode (chown clears set-id bits), then times, all on an open fd.
    fn meta_fd(&self, fd: impl AsFd, meta: Meta, shown: &str) -> Result<(), UnpackError> {
        let fd = fd.as_fd();
        if self.chown {
            let (uid, gid) = self.owner(meta);
            fchown(fd, uid, gid).map_err(io_err(shown, "chown"))?;
        }
        fchmod(fd, self.mode_bits(meta.mode)).map_err(io_err(shown, "chmod"))?;
        let t = TimeSpec::new(meta.mtime, 0);
        futimens(fd, &t, &t).map_err(io_err(shown, "set times"))
    }

    fn file<R: Read>(
        &mut self,
        path: &EntryPath,
        shown: &str,
        entry: &mut tar::Entry<'_, R>,
        size: u64,
        meta: Meta,
    ) -> Result<(), UnpackError> {
        let (parent, name) = self.slot(path, shown)?;
        clear_slot(&parent, &name).map_err(io_err(shown, "replace existing entry"))?;
        let fd = openat(
            &parent,
            name.as_slice(),
            OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
            Mode::from_bits_truncate(0o600),
        )
        .map_err(io_err(shown, "create file"))?;
        self.created
            .insert(slot_key(&parent, &name).map_err(io_err(shown, "stat parent"))?);
        let mut file = std::fs::File::from(fd);
        let written =
            copy_through(entry, &mut file, &mut self.buf).map_err(|source| UnpackError::Io {
                entry: shown.to_string(),
                op: "write file data",
                source,
            })?;
        if written != size {
            return Err(UnpackError::Truncated {
                entry: shown.to_string(),
                written,
                size,
            });
        }
        self.stats.bytes_written = self.stats.bytes_written.saturating_add(written);
        self.meta_fd(&file, meta, shown)?;
        self.stats.files += 1;
        Ok(())
    }

    fn directory(&mut self, path: &EntryPath, shown: &str, meta: Meta) -> Result<(), UnpackError> {
        let (dev, ino) = if path.is_root() {
            let fd = self
                .root
                .dir(path, OFlag::O_PATH)
                .map_err(io_err(shown, "open root"))?;
            let st = fstat(&fd).map_err(io_err(shown, "stat root"))?;
            (st.st_dev, st.st_ino)
        } else {
            let (parent, name) = self.slot(path, shown)?;
            let found = existing(&parent, &name).map_err(io_err(shown, "stat"))?;
            let found = match found {
                Existing::Directory { dev, ino } => Some((dev, ino)),
                Existing::Other | Existing::Nothing => {
                    clear_slot(&parent, &name).map_err(io_err(shown, "replace existing entry"))?;
                    mkdirat(&parent, name.as_slice(), Mode::from_bits_truncate(0o700))
                        .map_err(io_err(shown, "create directory"))?;
                    match existing(&parent, &name).map_err(io_err(shown, "stat"))? {
                        Existing::Directory { dev, ino } => Some((dev, ino)),
                        _ => None,
                    }
                }
            };
            let Some(found) = found else {
                return Err(io_err(shown, "create directory")(Errno::ENOTDIR));
            };
            self.created
                .insert(slot_key(&parent, &name).map_err(io_err(shown, "stat parent"))?);
            found
        };
        self.dirs.push(DirMeta {
            path: path.clone(),
            dev,
            ino,
            meta,
        });
        self.stats.dirs += 1;
        Ok(())
    }

    fn symlink(
        &mut self,
        path: &EntryPath,
        shown: &str,
        target: &[u8],
        meta: Meta,
    ) -> Result<(), UnpackError> {
        let (parent, name) = self.slot(path, shown)?;
        clear_slot(&parent, &name).map_err(io_err(shown, "replace existing entry"))?;
        symlinkat(target, &parent, name.as_slice()).map_err(io_err(shown, "create symlink"))?;
        self.created
            .insert(slot_key(&parent, &name).map_err(io_err(shown, "stat parent"))?);
        if self.chown {
            let (uid, gid) = self.owner(meta);
            fchownat(
                &parent,
                name.as_slice(),
                uid,
                gid,
                AtFlags::AT_SYMLINK_NOFOLLOW,
            )
            .map_err(io_err(shown, "chown symlink"))?;
        }
        let t = TimeSpec::new(meta.mtime, 0);
        utimensat(
            &parent,
            name.as_slice(),
            &t,
            &t,
            UtimensatFlags::NoFollowSymlink,
        )
        .map_err(io_err(shown, "set symlink times"))?;
        self.stats.symlinks += 1;
        Ok(())
    }

    fn hardlink(&mut self, path: &EntryPath, shown: &str, raw: &[u8]) -> Result<(), UnpackError> {
        let refuse = |reason: &'static str| UnpackError::HardlinkTarget {
            entry: shown.to_string(),
            target: lossy(raw),
            reason,
        };
        let target = EntryPath::parse(raw).map_err(|r| {
            refuse(match r {
                PathRefusal::Absolute => "absolute target",
                PathRefusal::Escape => "target leaves the root",
                PathRefusal::Nul => "NUL byte in the target",
            })
        })?;
        let Some(target_name) = target.file_name() else {
            return Err(refuse("target is the root"));
        };
        let target_parent = match self.root.dir(&target.parent(), OFlag::O_PATH) {
            Ok(fd) => fd,
            Err(Errno::ENOENT | Errno::ENOTDIR) => return Err(refuse("target does not exist")),
            Err(e) => return Err(io_err(shown, "open hard link target")(e)),
        };
        match existing(&target_parent, target_name).map_err(io_err(shown, "stat target"))? {
            Existing::Nothing => return Err(refuse("target does not exist")),
            Existing::Directory { .. } => return Err(refuse("target is a directory")),
            Existing::Other => {}
        }
        let (parent, name) = self.slot(path, shown)?;
        let key = slot_key(&parent, &name).map_err(io_err(shown, "stat parent"))?;
        let target_key =
            slot_key(&target_parent, target_name).map_err(io_err(shown, "stat target"))?;
        if key != target_key {
            clear_slot(&parent, &name).map_err(io_err(shown, "replace existing entry"))?;
            linkat(
                &target_parent,
                target_name,
                &parent,
                name.as_slice(),
                AtFlags::empty(),
            )
            .map_err(io_err(shown, "create hard link"))?;
        }
        self.created.insert(key);
        self.stats.hardlinks += 1;
        Ok(())
    }

    fn device<R: Read>(
        &mut self,
        path: &EntryPath,
        shown: &str,
        entry: &tar::Entry<'_, R>,
        kind: EntryType,
        meta: Meta,
    ) -> Result<(), UnpackError> {
        match self.policy.devices {
            DevicePolicy::Refuse => {
                return Err(UnpackError::DeviceRefused {
                    entry: shown.to_string(),
                });
            }
            DevicePolicy::Create if self.is_root => {}
            DevicePolicy::Skip | DevicePolicy::Create => {
                // No entry name: in an encrypted layer it comes from the plaintext.
                tracing::debug!("device node not created");
                self.stats.devices_skipped += 1;
                return Ok(());
            }
        }
        let header = entry.header();
        let major = header.device_major().map_err(header_err(shown))?;
        let minor = header.device_minor().map_err(header_err(shown))?;
        let dev = makedev(u64::from(major.unwrap_or(0)), u64::from(minor.unwrap_or(0)));
        let flag = if kind == EntryType::Char {
            SFlag::S_IFCHR
        } else {
            SFlag::S_IFBLK
        };
        self.special(path, shown, flag, dev, meta)
    }

    /// A FIFO or device node. Its mode is set by name after checking that the slot still holds
    /// what was just made (opening a device or FIFO to use an fd could have side effects).
    fn special(
        &mut self,
        path: &EntryPath,
        shown: &str,
        kind: SFlag,
        dev: libc::dev_t,
        meta: Meta,
    ) -> Result<(), UnpackError> {
        let (parent, name) = self.slot(path, shown)?;
        clear_slot(&parent, &name).map_err(io_err(shown, "replace existing entry"))?;
        mknodat(
            &parent,
            name.as_slice(),
            kind,
            Mode::from_bits_truncate(0o600),
            dev,
        )
        .map_err(io_err(shown, "create special file"))?;
        self.created
            .insert(slot_key(&parent, &name).map_err(io_err(shown, "stat parent"))?);
        if self.chown {
            let (uid, gid) = self.owner(meta);
            fchownat(
                &parent,
                name.as_slice(),
                uid,
                gid,
                AtFlags::AT_SYMLINK_NOFOLLOW,
            )
            .map_err(io_err(shown, "chown"))?;
        }
        let st = nix::sys::stat::fstatat(&parent, name.as_slice(), AtFlags::AT_SYMLINK_NOFOLLOW)
            .map_err(io_err(shown, "stat"))?;
        if st.st_mode & SFlag::S_IFMT.bits() != kind.bits() {
            return Err(io_err(shown, "chmod")(Errno::ESTALE));
        }
        fchmodat(
            &parent,
            name.as_slice(),
            self.mode_bits(meta.mode),
            FchmodatFlags::FollowSymlink,
        )
        .map_err(io_err(shown, "chmod"))?;
        let t = TimeSpec::new(meta.mtime, 0);
        utimensat(
            &parent,
            name.as_slice(),
            &t,
            &t,
            UtimensatFlags::NoFollowSymlink,
        )
        .map_err(io_err(shown, "set times"))?;
        self.stats.special += 1;
        Ok(())
    }

    /// Directory metadata, deepest first, for directories still holding the inode this layer
    /// saw (a later entry may have replaced one).
    fn finish(mut self) -> Result<LayerStats, UnpackError> {
        let mut dirs = std::mem::take(&mut self.dirs);
        dirs.sort_by_key(|d| Reverse(d.path.depth()));
        for d in dirs {
            let shown = d.path.to_string();
            let fd = match d.path.file_name() {
                None => self.root.dir(&d.path, OFlag::O_RDONLY),
                Some(name) => match self.root.dir(&d.path.parent(), OFlag::O_PATH) {
                    Ok(parent) => open_subdir(&parent, name),
                    Err(e) => Err(e),
                },
            };
            let fd = match fd {
                Ok(fd) => fd,
                Err(Errno::ENOENT | Errno::ENOTDIR | Errno::ELOOP) => continue,
                Err(e) => return Err(io_err(&shown, "open directory")(e)),
            };
            let st = fstat(&fd).map_err(io_err(&shown, "stat directory"))?;
            if st.st_dev == d.dev && st.st_ino == d.ino {
                self.meta_fd(&fd, d.meta, &shown)?;
            }
        }
        Ok(self.stats)
    }
}
