//! The space check before a pull: the image must fit on the filesystem of its bundle (and of
//! the blob cache, when there is one), or the pull fails before fetching a byte, naming the
//! space needed and the space there is. In a confidential guest without SecureMount storage
//! that filesystem is a tmpfs, so this is the guest's memory: failing early beats an
//! out-of-memory kill halfway through a 10 GB image.
//!
//! What an image needs is known only as its compressed layer sizes, from the manifest; unpacked
//! it is usually larger (and its real size shows only while unpacking), so the check is a
//! lower bound and its error says so.

use std::path::{Path, PathBuf};

use nix::sys::statvfs::statvfs;

use super::{PullError, io};
use crate::registry::Descriptor;

/// A filesystem's free space as an unprivileged writer sees it: `(device, bytes available)`.
fn free_space(path: &Path) -> Result<(u64, u64), PullError> {
    use std::os::unix::fs::MetadataExt;
    let dev = std::fs::metadata(path)
        .map_err(io(format!("inspecting {}", path.display())))?
        .dev();
    let st = statvfs(path).map_err(|e| PullError::Io {
        what: format!("statvfs {}", path.display()),
        source: e.into(),
    })?;
    #[allow(clippy::useless_conversion)] // fsblkcnt_t and c_ulong differ across targets
    let available = u64::from(st.blocks_available()).saturating_mul(u64::from(st.fragment_size()));
    Ok((dev, available))
}

/// The sum of `layers`' sizes (the bytes a pull downloads), or why the manifest's sizes are
/// unusable.
pub(super) fn compressed_size<'a>(
    layers: impl IntoIterator<Item = &'a Descriptor>,
) -> Result<u64, PullError> {
    layers.into_iter().try_fold(0u64, |sum, l| {
        let size = u64::try_from(l.size).map_err(|_| PullError::Space {
            detail: format!("layer {} has a negative size {}", l.digest, l.size),
        })?;
        sum.checked_add(size).ok_or_else(|| PullError::Space {
            detail: "the layer sizes overflow".into(),
        })
    })
}

/// Fails unless the filesystem of `bundle` has room for `unpacked` bytes and that of `cache`
/// (if any) for `to_cache` bytes (both on one filesystem: for their sum).
pub(super) fn check(
    bundle: &Path,
    unpacked: u64,
    cache: Option<(&Path, u64)>,
) -> Result<(), PullError> {
    let (bundle_dev, bundle_free) = free_space(bundle)?;
    let mut needs: Vec<(PathBuf, u64, u64)> = vec![(bundle.to_path_buf(), unpacked, bundle_free)];
    if let Some((cache, to_cache)) = cache {
        let (dev, free) = free_space(cache)?;
        if dev == bundle_dev {
            if let Some(n) = needs.first_mut() {
                n.1 = n.1.saturating_add(to_cache);
            }
        } else {
            needs.push((cache.to_path_buf(), to_cache, free));
        }
    }
    for (path, needed, available) in needs {
        if needed > available {
            return Err(PullError::NoSpace {
                path,
                needed,
                available,
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layer(size: i64) -> Descriptor {
        Descriptor {
            media_type: String::new(),
            digest: "sha256:00".into(),
            size,
            annotations: Default::default(),
        }
    }

    #[test]
    fn sizes_add_up_and_refuse_nonsense() {
        assert_eq!(compressed_size(&[layer(3), layer(4)]).unwrap(), 7);
        assert!(compressed_size(&[layer(-1)]).is_err());
        assert!(compressed_size(&[layer(i64::MAX), layer(i64::MAX), layer(2)]).is_err());
    }

    #[test]
    fn more_than_the_filesystem_holds_fails_naming_both_figures() {
        let dir = tempfile::tempdir().unwrap();
        let (_, free) = free_space(dir.path()).unwrap();
        check(dir.path(), 1, None).unwrap();
        let e = check(dir.path(), free.saturating_add(1 << 30), None).unwrap_err();
        let PullError::NoSpace {
            needed, available, ..
        } = &e
        else {
            panic!("{e}");
        };
        assert_eq!(*needed, free.saturating_add(1 << 30));
        assert!(*available < *needed, "{e}");
        assert!(e.to_string().contains("at least"), "{e}");
        // A cache on the same filesystem adds its share.
        check(dir.path(), 1, Some((dir.path(), 1))).unwrap();
        let huge = Some((dir.path(), free.saturating_add(1 << 30)));
        assert!(matches!(
            check(dir.path(), 1, huge),
            Err(PullError::NoSpace { .. })
        ));
    }
}
