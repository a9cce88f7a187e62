//! Functional tests: layers applied in order, whiteouts and opaque directories, links,
//! metadata, and long names.

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};

use tar::EntryType;

use super::kit::{Fixture, Tar, names};
use crate::unpack::{LayerStats, UnpackError, UnpackPolicy, apply_layer};

fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

fn sorted(mut v: Vec<String>) -> Vec<String> {
    v.sort();
    v
}

#[test]
fn layers_with_whiteouts_and_opaque_directories() {
    let fx = Fixture::new();
    let base = fx
        .apply(
            Tar::new()
                .dir("./")
                .dir("etc/")
                .file("etc/a", b"a")
                .file("etc/b", b"b")
                .dir("usr/lib/")
                .file("usr/lib/x", b"x")
                .dir("var/")
                .file("var/old", b"old")
                .dir("var/cache/")
                .file("var/cache/c", b"c")
                .dir("o/")
                .file("o/old1", b"1")
                .dir("o/sub/")
                .file("o/sub/old2", b"2")
                .dir("o/gone/deep/")
                .file("o/gone/deep/f", b"f"),
        )
        .unwrap();
    assert_eq!((base.files, base.dirs), (8, 8));

    // Whiteouts of a file and of a whole tree; an opaque marker before the new entries.
    let stats = fx
        .apply(
            Tar::new()
                .file("etc/.wh.a", b"")
                .file(".wh.usr", b"")
                .dir("var/")
                .file("var/.wh..wh..opq", b"")
                .file("var/new", b"new"),
        )
        .unwrap();
    assert_eq!(stats.whiteouts, 3);
    assert_eq!(sorted(names(&fx.root.join("etc"))), ["b"]);
    assert!(!fx.root.join("usr").exists());
    assert_eq!(sorted(names(&fx.root.join("var"))), ["new"]);

    // The opaque marker after this layer's own entries: they stay, lower ones go, including
    // lower files inside a directory this layer also wrote into.
    fx.apply(
        Tar::new()
            .dir("o/")
            .file("o/new", b"n")
            .file("o/sub/new2", b"n2")
            .file("o/.wh..wh..opq", b""),
    )
    .unwrap();
    assert_eq!(sorted(names(&fx.root.join("o"))), ["new", "sub"]);
    assert_eq!(sorted(names(&fx.root.join("o/sub"))), ["new2"]);
    // Whiteout files are never created.
    assert!(!fx.root.join("o/.wh..wh..opq").exists());
    assert!(!fx.root.join("etc/.wh.a").exists());
    fx.assert_outside(&[]);
}

#[test]
fn a_whiteout_does_not_hide_its_own_layer() {
    let fx = Fixture::new();
    fx.apply(Tar::new().file("lower", b"l")).unwrap();
    fx.apply(
        Tar::new()
            .file("mine", b"m")
            .file(".wh.mine", b"")
            .file(".wh.lower", b""),
    )
    .unwrap();
    assert_eq!(fs::read(fx.root.join("mine")).unwrap(), b"m");
    assert!(!fx.root.join("lower").exists());
}

#[test]
fn type_replacement_across_layers() {
    let fx = Fixture::new();
    fx.apply(Tar::new().dir("d/").file("d/f", b"x").file("s", b"file"))
        .unwrap();
    fx.apply(Tar::new().file("d", b"now a file").dir("s/"))
        .unwrap();
    assert_eq!(fs::read(fx.root.join("d")).unwrap(), b"now a file");
    assert!(fs::symlink_metadata(fx.root.join("s")).unwrap().is_dir());
    fx.apply(Tar::new().dir("d/").symlink("s", "d")).unwrap();
    assert!(fs::symlink_metadata(fx.root.join("d")).unwrap().is_dir());
    assert!(names(&fx.root.join("d")).is_empty());
    assert!(
        fs::symlink_metadata(fx.root.join("s"))
            .unwrap()
            .is_symlink()
    );
}

#[test]
fn hardlinks_and_symlinks_inside_the_root() {
    let fx = Fixture::new();
    let stats = fx
        .apply(
            Tar::new()
                .dir("usr/lib/")
                .dir("usr/bin/")
                .file("usr/bin/busybox", b"bb")
                .hardlink("usr/bin/sh", "usr/bin/busybox")
                .hardlink("./usr/bin/ls", "./usr/lib/../bin/busybox")
                .symlink("lib", "usr/lib")
                .symlink("etc/mtab", "/proc/mounts")
                .symlink("abs", "/usr")
                .file("lib/libc.so", b"libc"),
        )
        .unwrap();
    assert_eq!(
        (stats.files, stats.hardlinks, stats.symlinks, stats.dirs),
        (2, 2, 3, 2)
    );
    let bb = fs::metadata(fx.root.join("usr/bin/busybox")).unwrap();
    assert_eq!(bb.nlink(), 3);
    assert_eq!(
        fs::metadata(fx.root.join("usr/bin/sh")).unwrap().ino(),
        bb.ino()
    );
    assert_eq!(
        fs::metadata(fx.root.join("usr/bin/ls")).unwrap().ino(),
        bb.ino()
    );
    assert_eq!(
        fs::read_link(fx.root.join("etc/mtab")).unwrap().to_str(),
        Some("/proc/mounts")
    );
    assert_eq!(fs::read(fx.root.join("usr/lib/libc.so")).unwrap(), b"libc");
    assert_eq!(
        fs::read_link(fx.root.join("abs")).unwrap().to_str(),
        Some("/usr")
    );
    fx.assert_outside(&[]);
}

#[test]
fn mode_owner_and_mtime_of_a_private_file() {
    let fx = Fixture::new();
    let mut h = tar::Header::new_gnu();
    h.set_path("home/user/secret").unwrap();
    h.set_entry_type(EntryType::Regular);
    h.set_mode(0o600);
    h.set_uid(1000);
    h.set_gid(1000);
    h.set_mtime(1_234_567_890);
    h.set_size(3);
    h.set_cksum();
    let mut b = tar::Builder::new(Vec::new());
    b.append(&h, &b"abc"[..]).unwrap();
    let bytes = b.into_inner().unwrap();
    apply_layer(bytes.as_slice(), &fx.root, &UnpackPolicy::default()).unwrap();
    let meta = fs::metadata(fx.root.join("home/user/secret")).unwrap();
    assert_eq!(meta.mode() & 0o7777, 0o600);
    assert_eq!(meta.mtime(), 1_234_567_890);
    if is_root() {
        assert_eq!((meta.uid(), meta.gid()), (1000, 1000));
    } else {
        eprintln!("not root: skipping the ownership check (CI runs as root)");
    }
}

#[test]
fn read_only_directory_still_gets_its_contents() {
    let fx = Fixture::new();
    let mut tar = Tar::new();
    tar.raw(b"ro/", EntryType::Directory, 0o555, b"", b"")
        .file("ro/f", b"content")
        .raw(b"ro/sub/", EntryType::Directory, 0o500, b"", b"")
        .file("ro/sub/g", b"g");
    fx.apply(&mut tar).unwrap();
    assert_eq!(fs::read(fx.root.join("ro/sub/g")).unwrap(), b"g");
    let ro = fs::metadata(fx.root.join("ro")).unwrap();
    assert_eq!(ro.permissions().mode() & 0o7777, 0o555);
    // Times applied after the contents were written.
    assert_eq!(ro.mtime(), 1_600_000_000);
    let sub = fs::metadata(fx.root.join("ro/sub")).unwrap();
    assert_eq!(sub.permissions().mode() & 0o7777, 0o500);
    assert_eq!(sub.mtime(), 1_600_000_000);
}

#[test]
fn setid_bits_follow_the_policy() {
    let fx = Fixture::new();
    let mut tar = Tar::new();
    tar.raw(b"bin/su", EntryType::Regular, 0o4755, b"", b"su")
        .raw(b"bin/wall", EntryType::Regular, 0o2755, b"", b"w")
        .raw(b"tmp/", EntryType::Directory, 0o1777, b"", b"");
    fx.apply(&mut tar).unwrap();
    let mode = |p: &str| fs::metadata(fx.root.join(p)).unwrap().mode() & 0o7777;
    if is_root() {
        assert_eq!((mode("bin/su"), mode("bin/wall")), (0o4755, 0o2755));
    } else {
        assert_eq!((mode("bin/su"), mode("bin/wall")), (0o755, 0o755));
    }
    assert_eq!(mode("tmp"), 0o1777);

    let strip = UnpackPolicy {
        keep_setid: false,
        ..UnpackPolicy::default()
    };
    let mut tar = Tar::new();
    tar.raw(b"bin/su", EntryType::Regular, 0o4755, b"", b"su");
    fx.apply_with(&mut tar, &strip).unwrap();
    assert_eq!(mode("bin/su"), 0o755);
}

#[test]
fn long_names_and_link_targets() {
    let fx = Fixture::new();
    let deep = format!("{}file", "directory/".repeat(30));
    let pax_deep = format!("{}pax", "p/".repeat(80));
    let stats = fx
        .apply(
            Tar::new()
                .file(&deep, b"gnu")
                .hardlink("short", &deep)
                .symlink("sym", &deep)
                .pax(&[("path", pax_deep.as_bytes())])
                .file("truncated-name-ignored", b"pax")
                .pax(&[("path", b"pl"), ("linkpath", deep.as_bytes())])
                .hardlink("x", "y"),
        )
        .unwrap();
    assert_eq!(
        stats,
        LayerStats {
            entries: 5,
            files: 2,
            symlinks: 1,
            hardlinks: 2,
            bytes_written: 6,
            ..LayerStats::default()
        }
    );
    assert_eq!(fs::read(fx.root.join(&deep)).unwrap(), b"gnu");
    assert_eq!(fs::read(fx.root.join("short")).unwrap(), b"gnu");
    assert_eq!(fs::read(fx.root.join("sym")).unwrap(), b"gnu");
    assert_eq!(fs::read(fx.root.join(&pax_deep)).unwrap(), b"pax");
    assert_eq!(fs::read(fx.root.join("pl")).unwrap(), b"gnu");
    assert!(!fx.root.join("truncated-name-ignored").exists());
}

#[test]
fn a_missing_root_is_a_typed_error() {
    let fx = Fixture::new();
    let err = super::apply_layer(
        Tar::new().file("a", b"").bytes().as_slice(),
        &fx.root.join("missing"),
        &UnpackPolicy::default(),
    )
    .unwrap_err();
    assert!(matches!(err, UnpackError::Root { .. }), "{err:?}");
}
