//! The malicious-archive suite: hand-written headers (names written straight into the header,
//! bypassing `tar::Header::set_path`'s checks) that try to leave the root, and the limits.
//! Every test checks that the sentinel directory beside the root is untouched.

use std::fs;
use std::os::unix::fs::{FileTypeExt, MetadataExt};

use proptest::prelude::*;
use tar::EntryType;

use super::{DevicePolicy, UnpackError, UnpackPolicy, apply_layer};
use kit::{Fixture, Tar, names};

mod kit;
mod layers;

#[test]
fn dotdot_escape_is_refused_naming_the_entry() {
    for path in [
        "../escape",
        "a/../../escape",
        "./../outside/evil",
        "a/b/../../../x",
    ] {
        let fx = Fixture::new();
        let err = fx.apply(Tar::new().file(path, b"x")).unwrap_err();
        match &err {
            UnpackError::Escape { entry } => assert_eq!(entry, path),
            other => panic!("{path}: {other:?}"),
        }
        assert!(err.to_string().contains(path), "{err}");
        fx.assert_outside(&[]);
    }
}

#[test]
fn absolute_paths_are_refused() {
    let fx = Fixture::new();
    // Absolute paths into the sentinel, so that a regression could not write to the host.
    let abs = format!("{}/abs/path", fx.outside.display());
    for path in [abs.as_str(), "/"] {
        let err = fx.apply(Tar::new().file(path, b"x")).unwrap_err();
        assert!(
            matches!(err, UnpackError::AbsolutePath { ref entry } if entry == path),
            "{err:?}"
        );
    }
    fx.assert_outside(&[]);
    assert!(names(&fx.root).is_empty());
}

#[test]
fn escapes_in_gnu_long_names_and_pax_paths_are_refused() {
    let fx = Fixture::new();
    let long = format!("{}{}outside/evil", "a/".repeat(60), "../".repeat(61));
    let err = fx.apply(Tar::new().file(&long, b"x")).unwrap_err();
    assert!(matches!(err, UnpackError::Escape { .. }), "{err:?}");
    let err = fx
        .apply(
            Tar::new()
                .pax(&[("path", b"../outside/evil")])
                .file("innocent", b"x"),
        )
        .unwrap_err();
    assert!(matches!(err, UnpackError::Escape { ref entry } if entry == "../outside/evil"));
    fx.assert_outside(&[]);
}

#[test]
fn write_through_absolute_symlink_stays_in_root() {
    let fx = Fixture::new();
    let target = fx.outside.to_str().unwrap();
    // Nothing at <root>/<outside path>: the write is refused rather than followed.
    let err = fx
        .apply(Tar::new().symlink("link", target).file("link/evil", b"x"))
        .unwrap_err();
    assert!(matches!(err, UnpackError::NotADirectory { ref entry } if entry == "link/evil"));
    fx.assert_outside(&[]);
    assert_eq!(fs::read_link(fx.root.join("link")).unwrap(), fx.outside);

    // With the same path present in the image, the write lands there, inside the root.
    let fx = Fixture::new();
    let mut tar = Tar::new();
    let mut prefix = String::new();
    for part in fx.outside_in_image().split('/') {
        prefix.push_str(part);
        prefix.push('/');
        tar.dir(&prefix);
    }
    tar.symlink("link", fx.outside.to_str().unwrap())
        .file("link/evil", b"inside");
    fx.apply(&mut tar).unwrap();
    fx.assert_outside(&[]);
    let landed = fx.root.join(fx.outside_in_image()).join("evil");
    assert_eq!(fs::read(landed).unwrap(), b"inside");
}

#[test]
fn write_through_relative_symlink_stays_in_root() {
    let fx = Fixture::new();
    let err = fx
        .apply(
            Tar::new()
                .symlink("link", "../outside")
                .file("link/evil", b"x"),
        )
        .unwrap_err();
    assert!(matches!(err, UnpackError::NotADirectory { .. }), "{err:?}");
    fx.assert_outside(&[]);

    // `..` from the root stays at the root: link/evil is <root>/outside/evil.
    let fx = Fixture::new();
    fx.apply(
        Tar::new()
            .dir("outside/")
            .symlink("a/link", "../../../outside")
            .file("a/link/evil", b"inside"),
    )
    .unwrap();
    fx.assert_outside(&[]);
    assert_eq!(fs::read(fx.root.join("outside/evil")).unwrap(), b"inside");
}

#[test]
fn a_file_replaces_a_symlink_instead_of_writing_through_it() {
    let fx = Fixture::new();
    fs::write(fx.outside.join("victim"), b"original").unwrap();
    let target = fx.outside.join("victim");
    fx.apply(
        Tar::new()
            .symlink("f", target.to_str().unwrap())
            .file("f", b"replaced")
            .symlink("g", "../outside/victim")
            .hardlink("g", "f"),
    )
    .unwrap();
    assert_eq!(fs::read(&target).unwrap(), b"original");
    fx.assert_outside(&["victim"]);
    let meta = fs::symlink_metadata(fx.root.join("f")).unwrap();
    assert!(meta.is_file());
    assert_eq!(fs::read(fx.root.join("g")).unwrap(), b"replaced");
}

#[test]
fn hardlinks_outside_or_missing_are_refused() {
    let fx = Fixture::new();
    fs::write(fx.outside.join("secret"), b"s").unwrap();
    let cases: [(&str, &str); 5] = [
        ("/etc/passwd", "absolute target"),
        ("../outside/secret", "target leaves the root"),
        ("a/../../outside/secret", "target leaves the root"),
        ("nope", "target does not exist"),
        ("dir", "target is a directory"),
    ];
    for (target, want) in cases {
        let err = fx
            .apply(Tar::new().dir("dir/").hardlink("h", target))
            .unwrap_err();
        match err {
            UnpackError::HardlinkTarget { entry, reason, .. } => {
                assert_eq!(entry, "h");
                assert_eq!(reason, want, "{target}");
            }
            other => panic!("{target}: {other:?}"),
        }
    }
    // Through an in-image symlink to the sentinel, the target means <root>/<sentinel>/secret,
    // which is absent.
    let err = fx
        .apply(
            Tar::new()
                .symlink("up", fx.outside.to_str().unwrap())
                .hardlink("h", "up/secret"),
        )
        .unwrap_err();
    assert!(matches!(
        err,
        UnpackError::HardlinkTarget {
            reason: "target does not exist",
            ..
        }
    ));
    assert!(!fx.root.join("h").exists());
    fx.assert_outside(&["secret"]);
    assert_eq!(fs::metadata(fx.outside.join("secret")).unwrap().nlink(), 1);
}

fn device(kind: EntryType) -> Tar {
    let mut tar = Tar::new();
    tar.raw(b"dev/node", kind, 0o666, b"", b"");
    tar
}

#[test]
fn device_nodes_are_not_created_by_default() {
    for kind in [EntryType::Char, EntryType::Block] {
        let fx = Fixture::new();
        let stats = fx.apply(&mut device(kind)).unwrap();
        assert_eq!(stats.devices_skipped, 1);
        assert_eq!(stats.special, 0);
        assert!(fs::symlink_metadata(fx.root.join("dev/node")).is_err());

        let refuse = UnpackPolicy {
            devices: DevicePolicy::Refuse,
            ..UnpackPolicy::default()
        };
        let err = fx.apply_with(&mut device(kind), &refuse).unwrap_err();
        assert!(matches!(err, UnpackError::DeviceRefused { ref entry } if entry == "dev/node"));
        fx.assert_outside(&[]);
    }
}

#[test]
fn device_nodes_are_created_only_when_asked_and_root() {
    let fx = Fixture::new();
    let create = UnpackPolicy {
        devices: DevicePolicy::Create,
        ..UnpackPolicy::default()
    };
    let stats = fx
        .apply_with(&mut device(EntryType::Char), &create)
        .unwrap();
    if !nix::unistd::geteuid().is_root() {
        eprintln!("not root: checking that the device was skipped instead");
        assert_eq!(stats.devices_skipped, 1);
        return;
    }
    assert_eq!(stats.special, 1);
    let meta = fs::symlink_metadata(fx.root.join("dev/node")).unwrap();
    assert!(meta.file_type().is_char_device());
    assert_eq!(meta.rdev(), nix::sys::stat::makedev(1, 3));
}

#[test]
fn fifos_are_created() {
    let fx = Fixture::new();
    let stats = fx
        .apply(Tar::new().raw(b"run/fifo", EntryType::Fifo, 0o640, b"", b""))
        .unwrap();
    assert_eq!(stats.special, 1);
    let meta = fs::symlink_metadata(fx.root.join("run/fifo")).unwrap();
    assert!(meta.file_type().is_fifo());
    assert_eq!(meta.mode() & 0o7777, 0o640);
}

#[test]
fn sizes_over_the_limits_are_refused_before_reading() {
    let fx = Fixture::new();
    // A header claiming a terabyte, with no data behind it.
    let mut h = tar::Header::new_gnu();
    h.as_old_mut().name[..4].copy_from_slice(b"huge");
    h.set_entry_type(EntryType::Regular);
    h.set_size(1 << 40);
    h.set_cksum();
    let mut bytes = h.as_bytes().to_vec();
    bytes.extend_from_slice(&[0; 1024]);
    let err = apply_layer(bytes.as_slice(), &fx.root, &UnpackPolicy::default()).unwrap_err();
    assert!(matches!(err, UnpackError::FileTooLarge { size, .. } if size == 1 << 40));
    assert!(!fx.root.join("huge").exists());

    let small = UnpackPolicy {
        max_file_size: 100,
        max_total_bytes: 150,
        ..UnpackPolicy::default()
    };
    let err = fx
        .apply_with(Tar::new().file("a", &[1; 101]), &small)
        .unwrap_err();
    assert!(matches!(err, UnpackError::FileTooLarge { .. }), "{err:?}");
    let err = fx
        .apply_with(Tar::new().file("a", &[1; 100]).file("b", &[1; 51]), &small)
        .unwrap_err();
    assert!(matches!(err, UnpackError::TotalTooLarge { ref entry, .. } if entry == "b"));
    fx.assert_outside(&[]);
}

#[test]
fn huge_extension_headers_are_refused() {
    let fx = Fixture::new();
    let policy = UnpackPolicy {
        max_metadata_bytes: 64 << 10,
        ..UnpackPolicy::default()
    };
    let big = vec![b'a'; 200 << 10];
    let err = fx
        .apply_with(
            Tar::new().pax(&[("comment", &big)]).file("f", b"x"),
            &policy,
        )
        .unwrap_err();
    assert!(
        matches!(err, UnpackError::MetadataTooLarge { .. }),
        "{err:?}"
    );
    let long = "d/".repeat(100 << 10);
    let err = fx
        .apply_with(Tar::new().file(&long, b"x"), &policy)
        .unwrap_err();
    assert!(
        matches!(err, UnpackError::MetadataTooLarge { .. }),
        "{err:?}"
    );
    // Under the metadata limit but over the path limit.
    let long = format!("{}f", "d/".repeat(3000));
    let err = fx.apply(Tar::new().file(&long, b"x")).unwrap_err();
    assert!(matches!(
        err,
        UnpackError::PathTooLong {
            len: 6001,
            limit: 4095,
            ..
        }
    ));
    fx.assert_outside(&[]);
}

#[test]
fn too_many_entries_are_refused() {
    let fx = Fixture::new();
    let policy = UnpackPolicy {
        max_entries: 3,
        ..UnpackPolicy::default()
    };
    let mut tar = Tar::new();
    tar.file("a", b"").file("b", b"").file("c", b"");
    assert_eq!(fx.apply_with(&mut tar, &policy).unwrap().entries, 3);
    tar.file("a", b"")
        .file("b", b"")
        .file("c", b"")
        .file("d", b"");
    let err = fx.apply_with(&mut tar, &policy).unwrap_err();
    assert!(matches!(err, UnpackError::TooManyEntries { limit: 3 }));
    assert!(!fx.root.join("d").exists());
}

#[test]
fn truncated_data_is_an_error() {
    let fx = Fixture::new();
    let mut h = tar::Header::new_gnu();
    h.as_old_mut().name[..1].copy_from_slice(b"t");
    h.set_entry_type(EntryType::Regular);
    h.set_mode(0o644);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(0);
    h.set_size(4096);
    h.set_cksum();
    let mut bytes = h.as_bytes().to_vec();
    bytes.extend_from_slice(&[7; 100]);
    let err = apply_layer(bytes.as_slice(), &fx.root, &UnpackPolicy::default()).unwrap_err();
    assert!(
        matches!(
            err,
            UnpackError::Truncated {
                written: 100,
                size: 4096,
                ..
            }
        ),
        "{err:?}"
    );
}

#[test]
fn duplicates_the_later_entry_wins() {
    let fx = Fixture::new();
    let stats = fx
        .apply(
            Tar::new()
                .file("a", b"first")
                .file("a", b"second")
                .dir("d/")
                .file("d/inner", b"x")
                .file("d", b"now a file")
                .file("x", b"file")
                .dir("x/"),
        )
        .unwrap();
    assert_eq!(stats.files, 5);
    assert_eq!(fs::read(fx.root.join("a")).unwrap(), b"second");
    assert_eq!(fs::read(fx.root.join("d")).unwrap(), b"now a file");
    assert!(fs::symlink_metadata(fx.root.join("x")).unwrap().is_dir());
}

#[test]
fn directory_replaced_by_escaping_symlink_then_written_into() {
    let fx = Fixture::new();
    fs::write(fx.outside.join("keep"), b"k").unwrap();
    let err = fx
        .apply(
            Tar::new()
                .dir("d/")
                .file("d/f", b"x")
                .symlink("d", fx.outside.to_str().unwrap())
                .file("d/g", b"evil"),
        )
        .unwrap_err();
    assert!(matches!(err, UnpackError::NotADirectory { ref entry } if entry == "d/g"));
    fx.assert_outside(&["keep"]);

    let fx = Fixture::new();
    fx.apply(
        Tar::new()
            .dir("d/")
            .dir("outside/")
            .symlink("d", "../outside")
            .file("d/g", b"inside"),
    )
    .unwrap();
    fx.assert_outside(&[]);
    assert_eq!(fs::read(fx.root.join("outside/g")).unwrap(), b"inside");
}

#[test]
fn whiteouts_never_reach_outside() {
    let fx = Fixture::new();
    fs::write(fx.outside.join("keep"), b"k").unwrap();
    let abs = fx.outside.to_str().unwrap().to_string();
    fx.apply(
        Tar::new()
            .symlink("l", &abs)
            .symlink("rel", "../outside")
            .dir("d/")
            .symlink("d/s", &abs),
    )
    .unwrap();
    fx.apply(Tar::new().file("l/.wh.keep", b"").file("rel/.wh.keep", b""))
        .unwrap();
    let err = fx
        .apply(Tar::new().file("l/.wh..wh..opq", b""))
        .unwrap_err();
    assert!(matches!(err, UnpackError::NotADirectory { .. }), "{err:?}");
    fx.apply(Tar::new().file(".wh.d", b"").file(".wh.l", b""))
        .unwrap();
    assert!(!fx.root.join("d").exists());
    assert!(fs::symlink_metadata(fx.root.join("l")).is_err());
    fx.assert_outside(&["keep"]);
    for bad in [".wh..", ".wh...", ".wh."] {
        let err = fx.apply(Tar::new().file(bad, b"")).unwrap_err();
        assert!(
            matches!(err, UnpackError::InvalidPath { .. }),
            "{bad}: {err:?}"
        );
    }
}

#[test]
fn unknown_entry_types_are_refused() {
    let fx = Fixture::new();
    let err = fx
        .apply(Tar::new().raw(b"vol", EntryType::new(b'V'), 0o644, b"", b""))
        .unwrap_err();
    assert!(matches!(
        err,
        UnpackError::UnsupportedType { kind: b'V', .. }
    ));
}

/// Entry kinds for the property test, with names and targets drawn from a small alphabet that
/// includes escapes and links to the sentinel.
#[derive(Debug, Clone)]
enum Gen {
    File(String),
    Dir(String),
    Symlink(String, String),
    Hardlink(String, String),
}

fn gen_path() -> impl Strategy<Value = String> {
    proptest::collection::vec(
        prop_oneof![
            6 => Just("l"),
            2 => Just("a"),
            1 => Just("b"),
            1 => Just(".."),
            1 => Just("."),
            1 => Just("outside"),
            1 => Just(".wh.a"),
            1 => Just(".wh.l"),
            1 => Just(".wh..wh..opq"),
        ],
        1..4,
    )
    .prop_map(|parts| parts.join("/"))
}

fn gen_target() -> impl Strategy<Value = String> {
    // Absolute targets only into the fixture, relative ones climbing at most two levels: see
    // the jail in `kit`.
    prop_oneof![
        2 => gen_path().prop_map(|p| p.replace("..", "b")),
        3 => Just("OUTSIDE".to_string()),
        1 => Just("OUTSIDE/..".to_string()),
        2 => Just("../outside".to_string()),
        1 => Just("../..".to_string()),
        1 => Just("..".to_string()),
    ]
}

fn gen_entry() -> impl Strategy<Value = Gen> {
    prop_oneof![
        3 => gen_path().prop_map(Gen::File),
        1 => gen_path().prop_map(Gen::Dir),
        3 => (gen_path(), gen_target()).prop_map(|(p, t)| Gen::Symlink(p, t)),
        1 => (gen_path(), gen_target()).prop_map(|(p, t)| Gen::Hardlink(p, t)),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]
    /// Random names, types and link targets, over two layers: whatever the result, nothing is
    /// created beside the root and the sentinel stays empty.
    #[test]
    fn random_layers_never_write_outside(layers in proptest::collection::vec(
        proptest::collection::vec(gen_entry(), 1..10), 1..3))
    {
        let fx = Fixture::new();
        let outside = fx.outside.to_str().unwrap().to_string();
        for layer in &layers {
            let mut tar = Tar::new();
            for entry in layer {
                match entry {
                    Gen::File(p) => tar.file(p, b"data"),
                    Gen::Dir(p) => tar.dir(p),
                    Gen::Symlink(p, t) => tar.symlink(p, &t.replace("OUTSIDE", &outside)),
                    Gen::Hardlink(p, t) => tar.hardlink(p, &t.replace("OUTSIDE", &outside)),
                };
            }
            let _ = fx.apply(&mut tar);
        }
        prop_assert!(names(&fx.outside).is_empty());
        prop_assert_eq!(fx.beside(), ["outside", "root"]);
    }
}
