//! Test helpers: an archive builder that writes names verbatim (so tests can craft what
//! `tar::Header::set_path` refuses) and a fixture with a sentinel directory beside the root.

use std::fs;
use std::path::{Path, PathBuf};

use tar::EntryType;

use crate::unpack::{LayerStats, UnpackError, UnpackPolicy, apply_layer};

/// Builds archives entry by entry, with raw names (GNU long name/link entries past 100 bytes).
pub(super) struct Tar(tar::Builder<Vec<u8>>);

impl Tar {
    pub(super) fn new() -> Tar {
        Tar(tar::Builder::new(Vec::new()))
    }

    fn gnu_long(&mut self, kind: EntryType, value: &[u8]) {
        let mut h = tar::Header::new_gnu();
        h.as_old_mut().name[..13].copy_from_slice(b"././@LongLink");
        h.set_entry_type(kind);
        h.set_mode(0o644);
        h.set_size(value.len() as u64 + 1);
        h.set_cksum();
        let data: Vec<u8> = value.iter().copied().chain([0]).collect();
        self.0.append(&h, data.as_slice()).unwrap();
    }

    /// A PAX extended header ('x') for the next entry.
    pub(super) fn pax(&mut self, records: &[(&str, &[u8])]) -> &mut Self {
        let mut data = Vec::new();
        for (key, value) in records {
            let body = key.len() + value.len() + 3; // ' ', '=', '\n'
            let mut len = body + 1;
            while len != body + len.to_string().len() {
                len = body + len.to_string().len();
            }
            data.extend_from_slice(format!("{len} {key}=").as_bytes());
            data.extend_from_slice(value);
            data.push(b'\n');
        }
        let mut h = tar::Header::new_ustar();
        h.as_old_mut().name[..9].copy_from_slice(b"PaxHeader");
        h.set_entry_type(EntryType::XHeader);
        h.set_mode(0o644);
        h.set_size(data.len() as u64);
        h.set_cksum();
        self.0.append(&h, data.as_slice()).unwrap();
        self
    }

    /// One entry with its name and link target written verbatim.
    pub(super) fn raw(
        &mut self,
        path: &[u8],
        kind: EntryType,
        mode: u32,
        link: &[u8],
        data: &[u8],
    ) -> &mut Self {
        let mut h = tar::Header::new_gnu();
        if path.len() > 100 {
            self.gnu_long(EntryType::GNULongName, path);
        }
        if link.len() > 100 {
            self.gnu_long(EntryType::GNULongLink, link);
        }
        let n = path.len().min(100);
        h.as_old_mut().name[..n].copy_from_slice(&path[..n]);
        let n = link.len().min(100);
        h.as_old_mut().linkname[..n].copy_from_slice(&link[..n]);
        h.set_entry_type(kind);
        h.set_mode(mode);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(1_600_000_000);
        if matches!(kind, EntryType::Char | EntryType::Block) {
            // /dev/null
            h.set_device_major(1).unwrap();
            h.set_device_minor(3).unwrap();
        }
        h.set_size(data.len() as u64);
        h.set_cksum();
        self.0.append(&h, data).unwrap();
        self
    }

    pub(super) fn file(&mut self, path: &str, data: &[u8]) -> &mut Self {
        self.raw(path.as_bytes(), EntryType::Regular, 0o644, b"", data)
    }
    pub(super) fn dir(&mut self, path: &str) -> &mut Self {
        self.raw(path.as_bytes(), EntryType::Directory, 0o755, b"", b"")
    }
    pub(super) fn symlink(&mut self, path: &str, target: &str) -> &mut Self {
        self.raw(
            path.as_bytes(),
            EntryType::Symlink,
            0o777,
            target.as_bytes(),
            b"",
        )
    }
    pub(super) fn hardlink(&mut self, path: &str, target: &str) -> &mut Self {
        self.raw(
            path.as_bytes(),
            EntryType::Link,
            0o644,
            target.as_bytes(),
            b"",
        )
    }

    pub(super) fn bytes(&mut self) -> Vec<u8> {
        let b = std::mem::replace(&mut self.0, tar::Builder::new(Vec::new()));
        b.into_inner().unwrap()
    }
}

/// Levels of directories between the temporary directory and the root. A broken applier would
/// run these tests as root on the test host; every link target the tests use either points into
/// the fixture or climbs at most a few levels per entry, so even a regression that resolved
/// paths naively would land inside this jail (and fail the checks) rather than touch the host.
const JAIL_DEPTH: usize = 48;

/// A temporary jail `j/j/.../j` holding `root` (unpacked into) and `outside` (the sentinel
/// beside it).
pub(super) struct Fixture {
    tmp: tempfile::TempDir,
    pub(super) root: PathBuf,
    pub(super) outside: PathBuf,
}

impl Fixture {
    pub(super) fn new() -> Fixture {
        let tmp = tempfile::tempdir().unwrap();
        let jail = (0..JAIL_DEPTH).fold(tmp.path().to_path_buf(), |p, _| p.join("j"));
        let root = jail.join("root");
        let outside = jail.join("outside");
        fs::create_dir_all(&root).unwrap();
        fs::create_dir(&outside).unwrap();
        Fixture { tmp, root, outside }
    }

    pub(super) fn apply(&self, tar: &mut Tar) -> Result<LayerStats, UnpackError> {
        self.apply_with(tar, &UnpackPolicy::default())
    }

    pub(super) fn apply_with(
        &self,
        tar: &mut Tar,
        policy: &UnpackPolicy,
    ) -> Result<LayerStats, UnpackError> {
        apply_layer(tar.bytes().as_slice(), &self.root, policy)
    }

    /// The absolute path of `outside` as an in-image path (no leading `/`).
    pub(super) fn outside_in_image(&self) -> String {
        self.outside
            .to_str()
            .unwrap()
            .trim_start_matches('/')
            .to_string()
    }

    /// What sits beside the root, sorted: `["outside", "root"]` unless something escaped;
    /// `["escaped"]` when a level of the jail above holds anything but the next level.
    pub(super) fn beside(&self) -> Vec<String> {
        let mut level = self.tmp.path().to_path_buf();
        for _ in 0..JAIL_DEPTH {
            if names(&level) != ["j"] {
                return vec!["escaped".to_string()];
            }
            level.push("j");
        }
        let mut beside = names(&level);
        beside.sort();
        beside
    }

    /// Nothing beside the root but the sentinel, and the sentinel holds exactly `expected`.
    pub(super) fn assert_outside(&self, expected: &[&str]) {
        assert_eq!(
            self.beside(),
            ["outside", "root"],
            "something was created beside the root"
        );
        let mut inside = names(&self.outside);
        inside.sort();
        assert_eq!(inside, expected, "the sentinel directory changed");
    }
}

pub(super) fn names(dir: &Path) -> Vec<String> {
    fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect()
}
