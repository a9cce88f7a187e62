//! The unpack root and every filesystem operation under it. Owns the root directory fd and the
//! rules for reaching anything below it: directories are opened with `openat2(2)` and
//! `RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS` from the root fd, so symlinks (absolute or `..`)
//! resolve as if the root were `/`; the last component is then handled with `*at` calls that never
//! follow it. This module never joins host path strings, never follows a symlink at the last
//! component, and never falls back to plain path resolution when `openat2` is missing.
//!
//! It assumes it is the only writer under the root (the caller's private staging directory).

use std::collections::HashSet;
use std::os::fd::{AsFd, OwnedFd};
use std::path::Path;

use nix::dir::{Dir, Type};
use nix::errno::Errno;
use nix::fcntl::{AT_FDCWD, AtFlags, OFlag, OpenHow, ResolveFlag, openat, openat2};
use nix::sys::stat::{Mode, SFlag, fstat, fstatat, mkdirat};
use nix::unistd::{UnlinkatFlags, unlinkat};

use super::path::EntryPath;

/// One name in one directory: the directory's device and inode, and the name in it. Used to
/// remember what the current layer created, whatever path it was reached by.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct SlotKey {
    dev: u64,
    ino: u64,
    name: Vec<u8>,
}

/// The set of slots the current layer wrote.
pub(crate) type Created = HashSet<SlotKey>;

/// What is at a slot, looked at without following a symlink.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Existing {
    Nothing,
    Directory { dev: u64, ino: u64 },
    Other,
}

/// The unpack root, opened once.
#[derive(Debug)]
pub(crate) struct Root {
    fd: OwnedFd,
}

fn is_dir_mode(mode: libc::mode_t) -> bool {
    mode & SFlag::S_IFMT.bits() == SFlag::S_IFDIR.bits()
}

impl Root {
    /// Opens `path` (the caller's choice, so symlinks in it are followed) and checks that
    /// `openat2` works; `ENOSYS` here means the kernel is older than 5.6.
    pub(crate) fn open(path: &Path) -> Result<Root, Errno> {
        let fd = openat(
            AT_FDCWD,
            path,
            OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
            Mode::empty(),
        )?;
        let root = Root { fd };
        root.dir(&EntryPath::root(), OFlag::O_PATH)?;
        Ok(root)
    }

    /// Opens the directory `path`, resolved with the root as `/`. `flags` adds `O_PATH` (for a
    /// parent used only with `*at` calls) or `O_RDONLY` (to list it).
    pub(crate) fn dir(&self, path: &EntryPath, flags: OFlag) -> Result<OwnedFd, Errno> {
        let how = OpenHow::new()
            .flags(flags | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC)
            .resolve(ResolveFlag::RESOLVE_IN_ROOT | ResolveFlag::RESOLVE_NO_MAGICLINKS);
        openat2(&self.fd, path.to_bytes().as_slice(), how)
    }

    /// Opens directory `path`, creating missing components (mode 0755) one at a time below
    /// the deepest one that resolves. A component that exists but is not a directory (or is a
    /// dangling symlink) gives `ENOTDIR`. Every directory made is recorded in `created`.
    pub(crate) fn ensure_dir(
        &self,
        path: &EntryPath,
        created: &mut Created,
    ) -> Result<OwnedFd, Errno> {
        match self.dir(path, OFlag::O_PATH) {
            Err(Errno::ENOENT) => {}
            other => return other,
        }
        let mut cur = self.dir(&EntryPath::root(), OFlag::O_PATH)?;
        for (i, name) in path.components().iter().enumerate() {
            cur = match self.dir(&path.prefix(i + 1), OFlag::O_PATH) {
                Ok(fd) => fd,
                Err(Errno::ENOENT) => {
                    match mkdirat(&cur, name.as_slice(), Mode::from_bits_truncate(0o755)) {
                        Ok(()) => {}
                        // Something we could not resolve sits there: a dangling symlink.
                        Err(Errno::EEXIST) => return Err(Errno::ENOTDIR),
                        Err(e) => return Err(e),
                    }
                    created.insert(slot_key(&cur, name)?);
                    openat(
                        &cur,
                        name.as_slice(),
                        OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
                        Mode::empty(),
                    )?
                }
                Err(e) => return Err(e),
            };
        }
        Ok(cur)
    }
}

/// Reads the regular file at `path` under `root` (a directory the caller chose), resolving every
/// symlink with `root` as `/`, so an image's `/etc/passwd -> /proc/self/environ` stays inside it;
/// at most `limit` bytes (`EFBIG` past that), and only a regular file (`EINVAL` otherwise).
pub(crate) fn read_in_root(root: &Path, path: &str, limit: u64) -> Result<Vec<u8>, Errno> {
    use std::io::Read as _;
    let root = openat(
        AT_FDCWD,
        root,
        OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )?;
    let how = OpenHow::new()
        .flags(OFlag::O_RDONLY | OFlag::O_CLOEXEC | OFlag::O_NOCTTY | OFlag::O_NONBLOCK)
        .resolve(ResolveFlag::RESOLVE_IN_ROOT | ResolveFlag::RESOLVE_NO_MAGICLINKS);
    let fd = openat2(&root, path.trim_start_matches('/'), how)?;
    let st = fstat(&fd)?;
    if st.st_mode & SFlag::S_IFMT.bits() != SFlag::S_IFREG.bits() {
        return Err(Errno::EINVAL);
    }
    let mut out = Vec::new();
    std::fs::File::from(fd)
        .take(limit.saturating_add(1))
        .read_to_end(&mut out)
        .map_err(|e| e.raw_os_error().map_or(Errno::EIO, Errno::from_raw))?;
    if out.len() as u64 > limit {
        return Err(Errno::EFBIG);
    }
    Ok(out)
}

/// The key of `name` in the directory `dir`.
pub(crate) fn slot_key(dir: impl AsFd, name: &[u8]) -> Result<SlotKey, Errno> {
    let st = fstat(dir)?;
    Ok(SlotKey {
        dev: st.st_dev,
        ino: st.st_ino,
        name: name.to_vec(),
    })
}

/// What is at `name` in `dir`, without following a symlink there.
pub(crate) fn existing(dir: impl AsFd, name: &[u8]) -> Result<Existing, Errno> {
    match fstatat(dir, name, AtFlags::AT_SYMLINK_NOFOLLOW) {
        Ok(st) if is_dir_mode(st.st_mode) => Ok(Existing::Directory {
            dev: st.st_dev,
            ino: st.st_ino,
        }),
        Ok(_) => Ok(Existing::Other),
        Err(Errno::ENOENT) => Ok(Existing::Nothing),
        Err(e) => Err(e),
    }
}

/// Empties the slot `name` in `dir`: unlinks a non-directory, removes a directory tree.
pub(crate) fn clear_slot(dir: impl AsFd, name: &[u8]) -> Result<(), Errno> {
    let dir = dir.as_fd();
    match existing(dir, name)? {
        Existing::Nothing => Ok(()),
        Existing::Other => unlinkat(dir, name, UnlinkatFlags::NoRemoveDir),
        Existing::Directory { .. } => {
            let sub = open_subdir(dir, name)?;
            clear_dir(sub, &Created::new())?;
            unlinkat(dir, name, UnlinkatFlags::RemoveDir)
        }
    }
}

/// Opens the directory `name` in `dir` for listing, refusing a symlink there.
pub(crate) fn open_subdir(dir: impl AsFd, name: &[u8]) -> Result<OwnedFd, Errno> {
    openat(
        dir,
        name,
        OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
}

/// A directory being emptied, and its subdirectories still to visit.
struct Frame {
    dev: u64,
    ino: u64,
    /// Its name in the parent frame's directory.
    name: Vec<u8>,
    /// Created by the current layer: stays even if empty.
    tracked: bool,
    /// Something below it stays.
    kept: bool,
    subdirs: Vec<(Vec<u8>, bool)>,
}

/// Lists `dir`, unlinks every non-directory not in `keep`, and returns its frame.
fn visit(dir: &OwnedFd, name: Vec<u8>, tracked: bool, keep: &Created) -> Result<Frame, Errno> {
    let st = fstat(dir)?;
    let mut names = Vec::new();
    let mut listing = Dir::openat(
        dir,
        ".",
        OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )?;
    for entry in listing.iter() {
        let entry = entry?;
        let n = entry.file_name().to_bytes();
        if n != b"." && n != b".." {
            names.push((n.to_vec(), entry.file_type()));
        }
    }
    drop(listing);
    let mut frame = Frame {
        dev: st.st_dev,
        ino: st.st_ino,
        name,
        tracked,
        kept: false,
        subdirs: Vec::new(),
    };
    for (n, ty) in names {
        let key = SlotKey {
            dev: st.st_dev,
            ino: st.st_ino,
            name: n,
        };
        let is_dir = match ty {
            Some(Type::Directory) => true,
            Some(_) => false,
            None => matches!(existing(dir, &key.name)?, Existing::Directory { .. }),
        };
        let tracked = keep.contains(&key);
        if is_dir {
            frame.subdirs.push((key.name, tracked));
        } else if tracked {
            frame.kept = true;
        } else {
            unlinkat(dir, key.name.as_slice(), UnlinkatFlags::NoRemoveDir)?;
        }
    }
    Ok(frame)
}

/// Removes everything below `dir` whose slot is not in `keep`, keeping directories that are in
/// `keep` or hold something kept (their other contents go). Never follows a symlink: subdirectories
/// are entered with `O_NOFOLLOW`, and climbing back uses `..` checked against the inode that was
/// entered, so at most one directory fd is open however deep the tree. Returns whether anything
/// was kept.
pub(crate) fn clear_dir(dir: OwnedFd, keep: &Created) -> Result<bool, Errno> {
    let mut cur = dir;
    let mut stack = vec![visit(&cur, Vec::new(), true, keep)?];
    loop {
        let next = match stack.last_mut() {
            Some(top) => top.subdirs.pop(),
            None => return Ok(false),
        };
        if let Some((name, tracked)) = next {
            let child = open_subdir(&cur, &name)?;
            let frame = visit(&child, name, tracked, keep)?;
            cur = child;
            stack.push(frame);
            continue;
        }
        let Some(done) = stack.pop() else {
            return Ok(false);
        };
        let Some(parent) = stack.last_mut() else {
            return Ok(done.kept);
        };
        let up = openat(
            &cur,
            "..",
            OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
            Mode::empty(),
        )?;
        let st = fstat(&up)?;
        if st.st_dev != parent.dev || st.st_ino != parent.ino {
            // Moved under us: the single-writer assumption does not hold.
            return Err(Errno::ESTALE);
        }
        if done.kept || done.tracked {
            parent.kept = true;
        } else {
            unlinkat(&up, done.name.as_slice(), UnlinkatFlags::RemoveDir)?;
        }
        cur = up;
    }
}
