//! The opened weights handed to an engine process without touching a disk: each file goes into
//! a sealed memfd (anonymous guest memory, read-only once sealed), which the child inherits as
//! fd 3, 4, …; a directory in wardd's runtime tmpfs holds only symlinks to
//! `/proc/self/fd/N`, which resolve, in the engine, to those fds. An engine that opens files by
//! path (llama.cpp, vLLM, SGLang) reads the plaintext from guest memory and nothing else.
//! The memory is released when wardd and the engine have both closed the fds.

use std::io::Write;
use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};
use std::path::{Component, Path, PathBuf};

use nix::fcntl::{FcntlArg, SealFlag, fcntl};
use nix::sys::memfd::{MFdFlags, memfd_create};
use ward_image::model_artifact::LoadedModel;

use super::ExternalError;

/// The child's first inherited weights fd.
pub const FIRST_FD: RawFd = 3;
/// wardd keeps its copies above this, clear of the child's range.
const PARKED_FROM: RawFd = 1000;

/// One model's files as sealed memfds, and the symlink directory naming them.
pub struct Weights {
    /// `(relative name, fd in wardd)`, in the order the child gets them (fd 3, 4, …).
    files: Vec<(PathBuf, OwnedFd)>,
    dir: PathBuf,
}

impl Weights {
    /// Copies every file of `model` into a sealed memfd and links it under `dir` (made anew).
    pub fn open(model: &LoadedModel, dir: &Path) -> Result<Weights, ExternalError> {
        let io = |what: &str, e: std::io::Error| ExternalError::Weights(format!("{what}: {e}"));
        let mut files = Vec::with_capacity(model.files.len());
        for f in &model.files {
            let rel = relative(&f.name)
                .ok_or_else(|| ExternalError::Weights(format!("file name `{}`", f.name)))?;
            let fd = memfd_create(
                c"ward-weights",
                MFdFlags::MFD_CLOEXEC | MFdFlags::MFD_ALLOW_SEALING,
            )
            .map_err(|e| io("memfd_create", e.into()))?;
            let mut file = std::fs::File::from(fd);
            file.write_all(&f.data).map_err(|e| io("memfd write", e))?;
            let fd = OwnedFd::from(file);
            // Read-only from here on, for wardd and the engine alike.
            fcntl(
                &fd,
                FcntlArg::F_ADD_SEALS(
                    SealFlag::F_SEAL_SHRINK
                        | SealFlag::F_SEAL_GROW
                        | SealFlag::F_SEAL_WRITE
                        | SealFlag::F_SEAL_SEAL,
                ),
            )
            .map_err(|e| io("seal", e.into()))?;
            files.push((rel, park(&fd).map_err(|e| io("F_DUPFD_CLOEXEC", e))?));
        }
        if files.len() > 900 {
            return Err(ExternalError::Weights(format!(
                "{} files are more than an engine can inherit",
                files.len()
            )));
        }
        let _ = std::fs::remove_dir_all(dir);
        create_private_dir(dir).map_err(|e| io(&dir.display().to_string(), e))?;
        for (i, (rel, _)) in files.iter().enumerate() {
            let link = dir.join(rel);
            if let Some(parent) = link.parent() {
                create_private_dir(parent).map_err(|e| io(&parent.display().to_string(), e))?;
            }
            let fd = FIRST_FD
                .checked_add(i32::try_from(i).unwrap_or(i32::MAX))
                .ok_or_else(|| ExternalError::Weights("too many files".into()))?;
            std::os::unix::fs::symlink(format!("/proc/self/fd/{fd}"), &link)
                .map_err(|e| io(&link.display().to_string(), e))?;
        }
        Ok(Weights {
            files,
            dir: dir.to_path_buf(),
        })
    }

    /// The symlink directory (`{model_dir}`).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The path an engine opens for the model's single-file weights (`{model}`): the `.gguf`
    /// file, else the first file.
    pub fn main_file(&self) -> PathBuf {
        let pick = self
            .files
            .iter()
            .find(|(n, _)| n.extension().is_some_and(|e| e == "gguf"))
            .or(self.files.first());
        pick.map(|(n, _)| self.dir.join(n))
            .unwrap_or_else(|| self.dir.clone())
    }

    /// `(fd in wardd, fd in the child)` for each file.
    pub fn inherit(&self) -> Vec<(RawFd, RawFd)> {
        self.files
            .iter()
            .enumerate()
            .map(|(i, (_, fd))| {
                (
                    fd.as_raw_fd(),
                    FIRST_FD.saturating_add(i32::try_from(i).unwrap_or(i32::MAX)),
                )
            })
            .collect()
    }
}

impl Drop for Weights {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A copy of `fd` at or above [`PARKED_FROM`], close-on-exec.
fn park(fd: &OwnedFd) -> std::io::Result<OwnedFd> {
    let raw = fcntl(fd.as_fd(), FcntlArg::F_DUPFD_CLOEXEC(PARKED_FROM))?;
    // SAFETY: F_DUPFD_CLOEXEC returned a new descriptor that nothing else owns.
    Ok(unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(raw) })
}

fn create_private_dir(p: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(p)
}

/// A model file's name as a relative path with only normal components.
fn relative(name: &str) -> Option<PathBuf> {
    let p = Path::new(name);
    let ok = !name.is_empty() && p.components().all(|c| matches!(c, Component::Normal(_)));
    ok.then(|| p.to_path_buf())
}
