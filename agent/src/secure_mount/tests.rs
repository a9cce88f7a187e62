//! Parsing and planning, checked against what CoCo's CDH accepts and refuses (its own test
//! cases at guest-components 8246e5e0 and kata-agent's request at 7c6ba40c). Formatting,
//! opening and mounting need root and device-mapper: the qemu boot test does them
//! (`tests/tests/boot.rs`).

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use super::request::{self, EncryptionType, FsType, with_eager_itable_init};
use super::*;

fn opts(pairs: &[(&str, &str)]) -> HashMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// What kata-agent sends for trusted image storage (`cdh_handler_trusted_storage`).
fn kata_request() -> HashMap<String, String> {
    opts(&[
        ("deviceId", "254:16"),
        ("sourceType", "empty"),
        ("targetType", "fileSystem"),
        ("filesystemType", "ext4"),
        ("mkfsOpts", "-E lazy_journal_init"),
        ("encryptionType", "luks2"),
        ("dataIntegrity", "true"),
    ])
}

#[test]
fn kata_agents_request_parses() {
    let r = request::parse(
        "block-device",
        &kata_request(),
        "/run/kata-containers/image",
    )
    .unwrap();
    assert_eq!(
        r.device,
        DeviceRef::Number {
            major: 254,
            minor: 16
        }
    );
    assert_eq!(r.source, SourceType::Empty);
    assert_eq!(r.key, KeySource::Random);
    assert!(r.luks2.integrity());
    assert_eq!(r.luks2.mapper_name, None);
    assert_eq!(
        r.luks2.target_type,
        TargetType::FileSystem {
            filesystem_type: FsType::Ext4,
            mkfs_opts: Some("-E lazy_journal_init".to_string()),
        }
    );
    assert_eq!(r.mount_point, PathBuf::from("/run/kata-containers/image"));
}

#[test]
fn cdh_option_rules() {
    // deviceId wins over devicePath; integrity only for exactly "true"; unknown keys ignored.
    let r = request::parse(
        "block-device",
        &opts(&[
            ("deviceId", "7:0"),
            ("devicePath", "/dev/vdz"),
            ("sourceType", "encrypted"),
            ("encryptionType", "luks2"),
            ("targetType", "device"),
            ("dataIntegrity", "TRUE"),
            ("mapperName", "data-1"),
            ("somethingNew", "x"),
            ("key", "kbs:///default/disk/key"),
        ]),
        "/run/vol/dev",
    )
    .unwrap();
    assert_eq!(r.device, DeviceRef::Number { major: 7, minor: 0 });
    assert!(!r.luks2.integrity());
    assert_eq!(r.luks2.target_type, TargetType::Device);
    assert_eq!(r.key, KeySource::Kbs("kbs:///default/disk/key".into()));
    // filesystemType defaults to ext4, as in CDH.
    let r = request::parse(
        "block-device",
        &opts(&[
            ("devicePath", "/dev/vdb"),
            ("sourceType", "empty"),
            ("encryptionType", "luks2"),
            ("targetType", "fileSystem"),
        ]),
        "/mnt/x",
    )
    .unwrap();
    assert_eq!(r.device, DeviceRef::Path("/dev/vdb".into()));
    assert!(matches!(
        r.luks2.target_type,
        TargetType::FileSystem {
            filesystem_type: FsType::Ext4,
            mkfs_opts: None
        }
    ));
}

/// A volume type, options, a mount point, and the refusal they must get.
type Case = (
    &'static str,
    HashMap<String, String>,
    &'static str,
    fn(&SecureMountError) -> bool,
);

#[test]
fn refusals_name_what_is_wrong() {
    let base = kata_request();
    let with = |k: &str, v: &str| {
        let mut o = base.clone();
        o.insert(k.to_string(), v.to_string());
        o
    };
    let without = |k: &str| {
        let mut o = base.clone();
        o.remove(k);
        o
    };
    let mp = "/run/kata-containers/image";
    let cases: Vec<Case> = vec![
        ("alibaba-cloud-oss", base.clone(), mp, |e| {
            matches!(e, SecureMountError::VolumeType(_))
        }),
        ("block-device", with("deviceId", "254"), mp, |e| {
            matches!(e, SecureMountError::DeviceId)
        }),
        ("block-device", with("deviceId", "254:1:2"), mp, |e| {
            matches!(e, SecureMountError::DeviceId)
        }),
        ("block-device", with("deviceId", "a:b"), mp, |e| {
            matches!(e, SecureMountError::DeviceId)
        }),
        ("block-device", with("deviceId", "-1:0"), mp, |e| {
            matches!(e, SecureMountError::DeviceId)
        }),
        ("block-device", without("deviceId"), mp, |e| {
            matches!(e, SecureMountError::NoDevice)
        }),
        ("block-device", with("sourceType", "blank"), mp, |e| {
            matches!(e, SecureMountError::Options(_))
        }),
        ("block-device", without("sourceType"), mp, |e| {
            matches!(e, SecureMountError::Options(_))
        }),
        ("block-device", with("encryptionType", "luks"), mp, |e| {
            matches!(e, SecureMountError::Options(_))
        }),
        ("block-device", without("encryptionType"), mp, |e| {
            matches!(e, SecureMountError::Options(_))
        }),
        ("block-device", with("encryptionType", "zfs"), mp, |e| {
            matches!(e, SecureMountError::Unsupported("zfs"))
        }),
        ("block-device", with("targetType", "directory"), mp, |e| {
            matches!(e, SecureMountError::Options(_))
        }),
        ("block-device", with("filesystemType", "xfs"), mp, |e| {
            matches!(e, SecureMountError::Options(_))
        }),
        (
            "block-device",
            with("key", "https://example.com/k"),
            mp,
            |e| matches!(e, SecureMountError::KeyScheme),
        ),
        ("block-device", with("key", "default/disk/key"), mp, |e| {
            matches!(e, SecureMountError::KeyScheme)
        }),
        ("block-device", with("mapperName", "../control"), mp, |e| {
            matches!(e, SecureMountError::MapperName(_))
        }),
        ("block-device", with("mapperName", "control"), mp, |e| {
            matches!(e, SecureMountError::MapperName(_))
        }),
        ("block-device", base.clone(), "relative/dir", |e| {
            matches!(e, SecureMountError::MountPoint(_))
        }),
        ("block-device", base.clone(), "/run/../etc", |e| {
            matches!(e, SecureMountError::MountPoint(_))
        }),
        ("block-device", base.clone(), "/", |e| {
            matches!(e, SecureMountError::MountPoint(_))
        }),
    ];
    for (vt, o, mp, want) in cases {
        match request::parse(vt, &o, mp) {
            Err(e) => assert!(want(&e), "{vt} {o:?} {mp}: wrong refusal {e:?}"),
            Ok(r) => panic!("{vt} {o:?} {mp}: accepted {r:?}"),
        }
    }
}

#[test]
fn key_sources_follow_cdhs_order() {
    assert_eq!(KeySource::parse(None).unwrap(), KeySource::Random);
    assert_eq!(
        KeySource::parse(Some("sealed.a.b.c")).unwrap(),
        KeySource::Sealed("sealed.a.b.c".into())
    );
    assert_eq!(
        KeySource::parse(Some("kbs:///default/k/1")).unwrap(),
        KeySource::Kbs("kbs:///default/k/1".into())
    );
    assert_eq!(
        KeySource::parse(Some("file:///run/key")).unwrap(),
        KeySource::File("/run/key".into())
    );
    // What an audit line may say: never the sealed secret itself.
    assert!(
        !KeySource::Sealed("sealed.x.y.z".into())
            .describe()
            .contains("x.y")
    );
}

#[test]
fn zfs_parses_as_cdh_does_then_is_refused() {
    let o = opts(&[
        ("devicePath", "/dev/vdb"),
        ("sourceType", "empty"),
        ("encryptionType", "zfs"),
        ("pool", "p"),
    ]);
    let json = serde_json::to_value(&o).unwrap();
    let parsed: request::BlockDeviceOptions = serde_json::from_value(json).unwrap();
    assert!(matches!(parsed.encryption_type, EncryptionType::Zfs(_)));
}

#[test]
fn lazy_itable_init_as_cdh_adds_it() {
    let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
    // CDH's own cases (filesystem.rs tests).
    assert_eq!(
        with_eager_itable_init(&s(&["-m", "0"])),
        s(&["-m", "0", "-E", "lazy_itable_init=0"])
    );
    assert_eq!(
        with_eager_itable_init(&s(&["-E", "nodiscard"])),
        s(&["-E", "nodiscard,lazy_itable_init=0"])
    );
    assert_eq!(
        with_eager_itable_init(&s(&["-Enodiscard"])),
        s(&["-Enodiscard,lazy_itable_init=0"])
    );
    assert_eq!(
        with_eager_itable_init(&s(&["-E", "lazy_itable_init=1"])),
        s(&["-E", "lazy_itable_init=1"])
    );
    // kata-agent's image-storage options.
    assert_eq!(
        with_eager_itable_init(&s(&["-E", "lazy_journal_init"])),
        s(&["-E", "lazy_journal_init,lazy_itable_init=0"])
    );
}

#[test]
fn superblock_backups_from_mke2fs_dry_run() {
    // mke2fs 1.47.0's report (`mkfs.ext4 -F -n` on a 1 GiB device).
    let report = "mke2fs 1.47.0 (5-Feb-2023)\n\
        Creating filesystem with 262144 4k blocks and 65536 inodes\n\
        Filesystem UUID: 4a5ff012-91c0-47d9-b4bb-8f83e830825f\n\
        Superblock backups stored on blocks: \n\
        \t32768, 98304, 163840, 229376\n\n";
    assert_eq!(
        ext4::superblock_blocks(report),
        (4096, vec![0, 32768, 98304, 163840, 229376])
    );
    // Two lines of backups, 1k blocks.
    let report = "Creating filesystem with 2097152 1k blocks and 131072 inodes\n\
        Superblock backups stored on blocks: \n\
        \t8193, 24577, 40961, 57345, 73729, 204801, 221185, 401409, 663553, \n\
        \t1024001, 1990657\n\n\
        Allocating group tables: done";
    let (bs, blocks) = ext4::superblock_blocks(report);
    assert_eq!(bs, 1024);
    assert_eq!(blocks.len(), 12);
    assert_eq!(blocks.last(), Some(&1990657));
    // Too small for backups: the primary superblock only (CDH gives up here).
    assert_eq!(
        ext4::superblock_blocks("Creating filesystem with 4096 4k blocks and 4096 inodes\n"),
        (4096, vec![0])
    );
}

#[test]
fn real_mke2fs_dry_run_parses() {
    // The dry run of the mke2fs on this machine, on a file, gives the same plan as the real
    // format writes (checked by reading the backups' magic after a real run).
    let Ok(mkfs) = tools::find("mkfs.ext4") else {
        eprintln!("skipped: mkfs.ext4 is not installed (e2fsprogs)");
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("fs.img");
    std::fs::File::create(&img)
        .unwrap()
        .set_len(256 << 20)
        .unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let dry = rt
        .block_on(tools::run(
            &mkfs,
            &[OsStrRef::new("-F"), OsStrRef::new("-n"), img.as_os_str()],
            None,
            "dry",
        ))
        .unwrap();
    let (bs, blocks) = ext4::superblock_blocks(&dry.stdout);
    assert!(blocks.len() > 2, "{}", dry.stdout);
    rt.block_on(tools::run(
        &mkfs,
        &[OsStrRef::new("-F"), OsStrRef::new("-q"), img.as_os_str()],
        None,
        "real",
    ))
    .unwrap();
    let data = std::fs::read(&img).unwrap();
    // Every planned backup holds an ext4 superblock (magic 0xEF53 at byte 56 of it); block 0's
    // superblock sits at byte 1024.
    for b in blocks {
        let at = (b * bs) as usize + if b == 0 { 1024 } else { 0 };
        assert_eq!(&data[at + 56..at + 58], &[0x53, 0xEF], "block {b}");
    }
}

use std::ffi::OsStr as OsStrRef;

#[test]
fn devices_resolve_through_sysfs_and_must_be_block_devices() {
    let sys = tempfile::tempdir().unwrap();
    let dev = sys.path().join("dev/block/7:0");
    std::fs::create_dir_all(&dev).unwrap();
    std::fs::write(
        dev.join("uevent"),
        "MAJOR=7\nMINOR=0\nDEVNAME=loop0\nDEVTYPE=disk\n",
    )
    .unwrap();
    let n = |major, minor| DeviceRef::Number { major, minor };
    match resolve_device(sys.path(), &n(7, 0)) {
        Ok(p) => assert_eq!(p, Path::new("/dev/loop0")),
        // Containers without loop devices: the lookup worked, the node is not there.
        Err(SecureMountError::NotBlockDevice(p)) => assert_eq!(p, Path::new("/dev/loop0")),
        Err(e) => panic!("{e:?}"),
    }
    assert!(matches!(
        resolve_device(sys.path(), &n(8, 1)),
        Err(SecureMountError::NoDeviceFound { major: 8, minor: 1 })
    ));
    // A DEVNAME that would walk out of /dev is no device.
    let evil = sys.path().join("dev/block/9:9");
    std::fs::create_dir_all(&evil).unwrap();
    std::fs::write(evil.join("uevent"), "DEVNAME=../etc/shadow\n").unwrap();
    assert!(matches!(
        resolve_device(sys.path(), &n(9, 9)),
        Err(SecureMountError::NoDeviceFound { .. })
    ));
    // A regular file is not a block device (CDH would hand it to cryptsetup).
    let file = sys.path().join("disk.img");
    std::fs::write(&file, b"x").unwrap();
    assert!(matches!(
        resolve_device(sys.path(), &DeviceRef::Path(file)),
        Err(SecureMountError::NotBlockDevice(_))
    ));
}

#[test]
fn header_paths_are_cdhs() {
    // CDH: URL_SAFE_NO_PAD of the device path, ".header", in its luks-headers directory.
    assert_eq!(
        luks::header_path(Path::new(luks::HEADER_DIR), Path::new("/dev/vdb")),
        PathBuf::from("/run/confidential-containers/cdh/luks-headers/L2Rldi92ZGI.header")
    );
    let dir = tempfile::tempdir().unwrap();
    let h = luks::header_path(dir.path(), Path::new("/dev/vdb"));
    luks::prepare_header(&h).unwrap();
    assert_eq!(std::fs::metadata(&h).unwrap().len(), 16 << 20);
    // Never over another volume's header.
    assert!(matches!(
        luks::prepare_header(&h),
        Err(SecureMountError::Io { .. })
    ));
}

#[test]
fn tool_failures_keep_the_reason_and_never_the_key() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let sh = Path::new("/bin/sh");
    let key = b"very-secret-volume-key";
    let err = rt
        .block_on(tools::run(
            sh,
            &[
                OsStrRef::new("-c"),
                OsStrRef::new(
                    "read k; echo \"No key available with this passphrase.\" >&2; exit 2",
                ),
            ],
            Some(key),
            "luksOpen",
        ))
        .err()
        .unwrap();
    let text = err.to_string();
    assert!(
        text.contains("luksOpen") && text.contains("No key available"),
        "{text}"
    );
    assert!(!text.contains("very-secret"), "{text}");
    assert!(matches!(
        tools::find("no-such-tool-ward"),
        Err(SecureMountError::ToolMissing(_))
    ));
}
