//! The filesystems a guest's init must mount before anything else works.

use std::path::{Path, PathBuf};

use nix::mount::{MsFlags, mount};

/// A mount that failed.
#[derive(Debug, thiserror::Error)]
pub enum MountError {
    /// The mount point could not be created.
    #[error("cannot create mount point {path}: {source}")]
    MountPoint {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// mount(2) failed.
    #[error("cannot mount {fstype} on {path}: {source}")]
    Mount {
        fstype: &'static str,
        path: PathBuf,
        #[source]
        source: nix::Error,
    },
}

/// What [`mount_early`] did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct MountReport {
    pub mounted: Vec<&'static str>,
    pub already: Vec<&'static str>,
    pub absent: Vec<&'static str>,
}

struct Early {
    fstype: &'static str,
    target: &'static str,
    flags: MsFlags,
    data: Option<&'static str>,
    /// Whether a missing mount point is created (`false`: the mount is skipped).
    create: bool,
}

fn table() -> [Early; 7] {
    let base = MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
    [
        Early {
            fstype: "proc",
            target: "/proc",
            flags: base,
            data: None,
            create: true,
        },
        Early {
            fstype: "sysfs",
            target: "/sys",
            flags: base,
            data: None,
            create: true,
        },
        Early {
            fstype: "devtmpfs",
            target: "/dev",
            flags: MsFlags::MS_NOSUID,
            data: Some("mode=0755"),
            create: true,
        },
        Early {
            fstype: "devpts",
            target: "/dev/pts",
            flags: MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC,
            data: Some("mode=0620,ptmxmode=0666"),
            create: true,
        },
        Early {
            fstype: "tmpfs",
            target: "/dev/shm",
            flags: MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
            data: Some("mode=1777"),
            create: true,
        },
        Early {
            fstype: "tmpfs",
            target: "/run",
            flags: MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
            data: Some("mode=0755"),
            create: true,
        },
        // configfs-tsm (TDX and SNP quotes) lives here; the directory exists only when the
        // kernel has configfs, so it is never created.
        Early {
            fstype: "configfs",
            target: "/sys/kernel/config",
            flags: base,
            data: None,
            create: false,
        },
    ]
}

/// Mount points listed in `/proc/self/mountinfo` (field 5), with octal escapes decoded.
fn mounted_targets() -> Vec<String> {
    let Ok(info) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return Vec::new();
    };
    info.lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(unescape_mountinfo)
        .collect()
}

fn unescape_mountinfo(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let bytes = s.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\'
            && let Some(oct) = s.get(i + 1..i + 4)
            && let Ok(v) = u8::from_str_radix(oct, 8)
        {
            out.push(char::from(v));
            i += 4;
            continue;
        }
        out.push(char::from(bytes[i]));
        i += 1;
    }
    out
}

/// Mounts proc, sys, devtmpfs, devpts, /dev/shm, /run and configfs, skipping each one that is
/// already mounted (a Kata agent or an earlier init may have done it).
pub fn mount_early() -> Result<MountReport, MountError> {
    let mut report = MountReport::default();
    for m in table() {
        let target = Path::new(m.target);
        // /proc is looked at directly: mountinfo is only readable once it is mounted.
        let already = if m.target == "/proc" {
            Path::new("/proc/self/mountinfo").exists()
        } else {
            mounted_targets().iter().any(|t| t == m.target)
        };
        if already {
            report.already.push(m.target);
            continue;
        }
        if !target.is_dir() {
            if !m.create {
                report.absent.push(m.target);
                continue;
            }
            std::fs::create_dir_all(target).map_err(|source| MountError::MountPoint {
                path: target.to_path_buf(),
                source,
            })?;
        }
        mount(Some(m.fstype), target, Some(m.fstype), m.flags, m.data).map_err(|source| {
            MountError::Mount {
                fstype: m.fstype,
                path: target.to_path_buf(),
                source,
            }
        })?;
        report.mounted.push(m.target);
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mountinfo_escapes_are_decoded() {
        assert_eq!(unescape_mountinfo(r"/mnt/a\040b"), "/mnt/a b");
        assert_eq!(unescape_mountinfo(r"/x\134y"), r"/x\y");
        assert_eq!(unescape_mountinfo(r"/trail\"), r"/trail\");
        assert_eq!(unescape_mountinfo("/plain"), "/plain");
    }

    #[test]
    fn this_machine_lists_its_root_mount() {
        if !Path::new("/proc/self/mountinfo").exists() {
            eprintln!("skipped: /proc is not mounted");
            return;
        }
        assert!(mounted_targets().iter().any(|t| t == "/"));
    }
}
