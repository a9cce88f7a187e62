//! Loading the kernel modules an initrd ships (virtio, vsock, configfs...), in the order the
//! initrd build wrote them: an initrd with wardd as `/init` has no modprobe.
//!
//! The list ([`MODULES_LIST`]) holds one absolute `.ko` path per line, dependencies first
//! (`rootfs/build-initrd.sh` writes it from modules.dep); `#` starts a comment. Each module is
//! loaded with `finit_module(2)`. A module that is already loaded (or built in) and a driver
//! whose hardware is absent (`ENODEV`, as `sev-guest` outside an SNP guest) are not errors.
//! Nothing here runs unless wardd is PID 1 and the list exists.

use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::kmod::{ModuleInitFlags, finit_module};

/// Where an initrd lists the modules wardd loads as PID 1.
pub const MODULES_LIST: &str = "/etc/ward/modules.load";

/// A module list or a module that could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ModuleError {
    /// The list exists but could not be read.
    #[error("cannot read the module list {path}: {source}")]
    ReadList {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A line of the list is not an absolute path to a `.ko` file.
    #[error("{path}:{line}: `{entry}` is not an absolute path to a .ko file")]
    BadEntry {
        path: PathBuf,
        line: usize,
        entry: String,
    },
    /// A listed module file could not be opened.
    #[error("cannot open module {path}: {source}")]
    Open {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The kernel refused the module.
    #[error("cannot load module {path}: {source}")]
    Load {
        path: PathBuf,
        #[source]
        source: Errno,
    },
}

/// What [`load_modules`] did, by module file name.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct ModuleReport {
    pub loaded: Vec<String>,
    /// Already loaded or built into the kernel (`EEXIST`).
    pub already: Vec<String>,
    /// Drivers whose hardware is absent (`ENODEV`, `ENXIO`).
    pub no_device: Vec<String>,
}

/// Parses a module list: absolute `.ko` paths, blank lines and `#` comments ignored.
pub fn parse_list(path: &Path, text: &str) -> Result<Vec<PathBuf>, ModuleError> {
    let mut out = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let entry = raw.split('#').next().unwrap_or("").trim();
        if entry.is_empty() {
            continue;
        }
        let p = Path::new(entry);
        if !p.is_absolute() || p.extension().is_none_or(|e| e != "ko") || entry.contains("/../") {
            return Err(ModuleError::BadEntry {
                path: path.to_path_buf(),
                line: i + 1,
                entry: entry.to_string(),
            });
        }
        out.push(p.to_path_buf());
    }
    Ok(out)
}

fn name_of(path: &Path) -> String {
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// Loads every module in the list at `list`, in order. A missing list means nothing to load.
/// Stops at the first module the kernel refuses for another reason than the ones above.
pub fn load_modules(list: &Path) -> Result<ModuleReport, ModuleError> {
    let text = match std::fs::read_to_string(list) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(ModuleReport::default()),
        Err(source) => {
            return Err(ModuleError::ReadList {
                path: list.to_path_buf(),
                source,
            });
        }
    };
    let mut report = ModuleReport::default();
    for path in parse_list(list, &text)? {
        let file = std::fs::File::open(&path).map_err(|source| ModuleError::Open {
            path: path.clone(),
            source,
        })?;
        match finit_module(&file, c"", ModuleInitFlags::empty()) {
            Ok(()) => report.loaded.push(name_of(&path)),
            Err(Errno::EEXIST) => report.already.push(name_of(&path)),
            Err(Errno::ENODEV | Errno::ENXIO) => report.no_device.push(name_of(&path)),
            Err(source) => return Err(ModuleError::Load { path, source }),
        }
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_parse_in_order_with_comments() {
        let text = "# written by build-initrd.sh\n\
                    /lib/modules/6.1/kernel/net/vmw_vsock/vsock.ko\n\
                    \n   /lib/modules/6.1/kernel/net/vmw_vsock/vsock_loopback.ko  # self-check\n";
        let got = parse_list(Path::new("l"), text).unwrap();
        assert_eq!(
            got,
            vec![
                PathBuf::from("/lib/modules/6.1/kernel/net/vmw_vsock/vsock.ko"),
                PathBuf::from("/lib/modules/6.1/kernel/net/vmw_vsock/vsock_loopback.ko"),
            ]
        );
        assert!(parse_list(Path::new("l"), "").unwrap().is_empty());
    }

    #[test]
    fn bad_entries_name_their_line() {
        for (text, line) in [
            ("/a/b.ko\nrelative/c.ko\n", 2),
            ("/lib/modules/x.o\n", 1),
            ("/lib/modules/../../etc/x.ko\n", 1),
            ("/lib/modules/noext\n", 1),
        ] {
            match parse_list(Path::new("l"), text) {
                Err(ModuleError::BadEntry { line: l, .. }) => assert_eq!(l, line, "{text}"),
                other => panic!("{text:?}: {other:?}"),
            }
        }
    }

    #[test]
    fn a_missing_list_loads_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let r = load_modules(&dir.path().join("absent")).unwrap();
        assert_eq!(r, ModuleReport::default());
    }

    #[test]
    fn a_missing_module_file_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let list = dir.path().join("modules.load");
        std::fs::write(&list, format!("{}/absent.ko\n", dir.path().display())).unwrap();
        assert!(matches!(load_modules(&list), Err(ModuleError::Open { .. })));
    }
}
