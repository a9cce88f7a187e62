//! OCI whiteouts for the layer being applied: `.wh.<name>` removes a lower layer's entry and
//! `.wh..wh..opq` empties a directory of everything lower layers put there. Owns only the
//! decision of what to remove; removal itself goes through [`super::root`], so it never follows
//! a symlink and never leaves the root. Never creates a whiteout file.

use nix::errno::Errno;
use nix::fcntl::OFlag;

use super::UnpackError;
use super::apply::{Layer, io_err};
use super::path::{EntryPath, is_plain_name};
use super::root::{clear_dir, clear_slot, slot_key};

impl Layer<'_> {
    /// `.wh.<target>` in `path`'s directory; `target` is the name after the prefix.
    pub(super) fn whiteout(
        &mut self,
        path: &EntryPath,
        target: &[u8],
        shown: &str,
    ) -> Result<(), UnpackError> {
        if target == b".wh..opq" {
            return self.opaque(&path.parent(), shown);
        }
        if target.starts_with(b".wh.") {
            // aufs metadata (.wh..wh.plnk, .wh..wh.aufs): nothing to apply.
            return Ok(());
        }
        if !is_plain_name(target) {
            return Err(UnpackError::InvalidPath {
                entry: shown.to_string(),
                reason: "whiteout names no entry",
            });
        }
        self.stats.whiteouts += 1;
        let parent = match self.root.dir(&path.parent(), OFlag::O_PATH) {
            Ok(fd) => fd,
            // Nothing below to hide.
            Err(Errno::ENOENT | Errno::ENOTDIR) => return Ok(()),
            Err(e) => return Err(io_err(shown, "open whiteout directory")(e)),
        };
        let key = slot_key(&parent, target).map_err(io_err(shown, "stat parent"))?;
        if self.created.contains(&key) {
            // Whiteouts hide lower layers only, never this layer's own entries.
            return Ok(());
        }
        clear_slot(&parent, target).map_err(io_err(shown, "remove whited-out entry"))
    }

    fn opaque(&mut self, dir: &EntryPath, shown: &str) -> Result<(), UnpackError> {
        self.root
            .ensure_dir(dir, &mut self.created)
            .map_err(|e| match e {
                Errno::ENOTDIR | Errno::ELOOP => UnpackError::NotADirectory {
                    entry: shown.to_string(),
                },
                e => io_err(shown, "open opaque directory")(e),
            })?;
        let fd = self
            .root
            .dir(dir, OFlag::O_RDONLY)
            .map_err(io_err(shown, "open opaque directory"))?;
        clear_dir(fd, &self.created).map_err(io_err(shown, "clear opaque directory"))?;
        self.stats.whiteouts += 1;
        Ok(())
    }
}
