//! What a `SecureMount` request asks for, parsed as CoCo's confidential-data-hub parses it.
//!
//! CDH (guest-components 8246e5e0, `confidential-data-hub/hub/src/storage/volume_type/
//! blockdevice/mod.rs` and `drivers/luks2.rs`) turns the request's string map into JSON and
//! deserialises it with serde: `deviceId` or `devicePath`, `sourceType` (`empty` or
//! `encrypted`), `key`, the tag `encryptionType` (`luks2`; `zfs` there, refused here), and for
//! luks2 `dataIntegrity` (`"true"` turns it on, anything else off), `mapperName`, and the tag
//! `targetType` (`device`, or `fileSystem` with `filesystemType` (only `ext4`) and `mkfsOpts`).
//! Unknown keys are ignored there, so they are here. The structs below follow those serde
//! attributes one for one, so a request CDH accepts is accepted here and one it refuses is
//! refused. kata-agent (7c6ba40c, `src/agent/src/rpc.rs` `cdh_secure_mount`) sends `deviceId`,
//! `sourceType=empty`, `targetType=fileSystem`, `filesystemType=ext4`, `mkfsOpts`,
//! `encryptionType=luks2` and `dataIntegrity`.
//!
//! This module never sees key bytes: `key` is where the key comes from, not the key.

use std::collections::HashMap;
use std::path::{Component, Path, PathBuf};

use serde::Deserialize;

use super::SecureMountError;

/// CoCo's `SourceType`.
#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
pub enum SourceType {
    /// A LUKS2 volume made before (its header on the device): opened, never formatted.
    #[serde(rename = "encrypted")]
    Encrypted,
    /// A blank device: formatted with a new key (all data on it is lost).
    #[serde(rename = "empty")]
    Empty,
}

/// CoCo's `FsType`: ext4 only.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
pub enum FsType {
    #[serde(rename = "ext4")]
    #[default]
    Ext4,
}

impl FsType {
    pub fn as_str(self) -> &'static str {
        match self {
            FsType::Ext4 => "ext4",
        }
    }
}

/// CoCo's `TargetType` (tag `targetType`, camelCase variants).
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(tag = "targetType")]
#[serde(rename_all = "camelCase")]
pub enum TargetType {
    /// The opened mapping is linked at the mount point (`/dev/mapper/NAME`).
    Device,
    /// A filesystem on the opened mapping is mounted at the mount point.
    FileSystem {
        #[serde(rename = "filesystemType")]
        #[serde(default)]
        filesystem_type: FsType,
        /// Extra `mkfs.ext4` arguments, split at whitespace.
        #[serde(default)]
        #[serde(rename = "mkfsOpts")]
        mkfs_opts: Option<String>,
    },
}

/// CoCo's `Luks2MountParameters`.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
pub struct Luks2Options {
    #[serde(rename = "dataIntegrity")]
    #[serde(default)]
    pub data_integrity: Option<String>,
    #[serde(rename = "mapperName")]
    pub mapper_name: Option<String>,
    #[serde(flatten)]
    pub target_type: TargetType,
}

impl Luks2Options {
    /// CDH: `data_integrity.map(|s| s == "true").unwrap_or(false)`.
    pub fn integrity(&self) -> bool {
        self.data_integrity.as_deref() == Some("true")
    }
}

/// CoCo's `BlockDeviceEncryptType` (tag `encryptionType`).
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(tag = "encryptionType")]
pub enum EncryptionType {
    #[serde(rename = "luks2")]
    Luks2(Luks2Options),
    /// Accepted by CDH's parser; ward has no ZFS and says so.
    #[serde(rename = "zfs")]
    Zfs(serde_json::Value),
}

/// CoCo's `BlockDeviceParameters`.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
pub struct BlockDeviceOptions {
    #[serde(rename = "deviceId")]
    pub device_id: Option<String>,
    #[serde(rename = "devicePath")]
    pub device_path: Option<String>,
    #[serde(rename = "sourceType")]
    pub source_type: SourceType,
    pub key: Option<String>,
    #[serde(flatten)]
    pub encryption_type: EncryptionType,
}

/// Where the volume key comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KeySource {
    /// Made in the guest (4096 random bytes, as CDH does), never stored or sent anywhere.
    Random,
    /// A KBS resource (`kbs:///repo/type/tag`).
    Kbs(String),
    /// A sealed secret (`sealed.…`) naming a KBS resource.
    Sealed(String),
    /// A file in the guest (`file://PATH`), only when `[secure_mount] allow_file_keys`.
    File(PathBuf),
}

impl KeySource {
    /// CDH's `get_plaintext_key` order: `sealed.`, then a KBS resource URI (its
    /// `ResourceUri::try_from` wants the `kbs` scheme), then `file://`.
    pub fn parse(key: Option<&str>) -> Result<KeySource, SecureMountError> {
        let Some(key) = key else {
            return Ok(KeySource::Random);
        };
        if key.starts_with("sealed.") {
            Ok(KeySource::Sealed(key.to_string()))
        } else if key.starts_with("kbs:") && ward_kbs_wire::ResourceUri::parse(key).is_ok() {
            Ok(KeySource::Kbs(key.to_string()))
        } else if let Some(path) = key.strip_prefix("file://") {
            Ok(KeySource::File(PathBuf::from(path)))
        } else {
            Err(SecureMountError::KeyScheme)
        }
    }

    /// What the audit log and errors may say about it (a resource name, never key bytes).
    pub fn describe(&self) -> String {
        match self {
            KeySource::Random => "generated in the guest".to_string(),
            KeySource::Kbs(uri) => uri.clone(),
            KeySource::Sealed(_) => "a sealed secret".to_string(),
            KeySource::File(p) => format!("file://{}", p.display()),
        }
    }
}

/// A parsed, checked block-device request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BlockDeviceRequest {
    pub device: DeviceRef,
    pub source: SourceType,
    pub key: KeySource,
    pub luks2: Luks2Options,
    pub mount_point: PathBuf,
}

/// How the request names the device.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DeviceRef {
    /// `MAJ:MIN`, looked up in sysfs.
    Number { major: u32, minor: u32 },
    /// A path, which must be a block device.
    Path(PathBuf),
}

/// Parses a `SecureMountRequest`'s fields.
pub fn parse(
    volume_type: &str,
    options: &HashMap<String, String>,
    mount_point: &str,
) -> Result<BlockDeviceRequest, SecureMountError> {
    // CDH: `Volume::from_str`; `alibaba-cloud-oss` only in its aliyun build.
    if volume_type != "block-device" {
        return Err(SecureMountError::VolumeType(volume_type.to_string()));
    }
    let json =
        serde_json::to_value(options).map_err(|e| SecureMountError::Options(e.to_string()))?;
    let parsed: BlockDeviceOptions =
        serde_json::from_value(json).map_err(|e| SecureMountError::Options(e.to_string()))?;
    // CDH: deviceId wins over devicePath.
    let device = match (&parsed.device_id, &parsed.device_path) {
        (Some(id), _) => {
            let (major, minor) = parse_device_id(id)?;
            DeviceRef::Number { major, minor }
        }
        (None, Some(path)) => DeviceRef::Path(PathBuf::from(path)),
        (None, None) => return Err(SecureMountError::NoDevice),
    };
    let luks2 = match parsed.encryption_type {
        EncryptionType::Luks2(l) => l,
        EncryptionType::Zfs(_) => return Err(SecureMountError::Unsupported("zfs")),
    };
    if let Some(name) = &luks2.mapper_name {
        check_mapper_name(name)?;
    }
    Ok(BlockDeviceRequest {
        device,
        source: parsed.source_type,
        key: KeySource::parse(parsed.key.as_deref())?,
        luks2,
        mount_point: checked_mount_point(mount_point)?,
    })
}

/// CDH's `parse_device_id`: two decimal `u32`s around one colon.
pub fn parse_device_id(id: &str) -> Result<(u32, u32), SecureMountError> {
    let mut parts = id.split(':');
    let (Some(maj), Some(min), None) = (parts.next(), parts.next(), parts.next()) else {
        return Err(SecureMountError::DeviceId);
    };
    let major = maj.parse::<u32>().map_err(|_| SecureMountError::DeviceId)?;
    let minor = min.parse::<u32>().map_err(|_| SecureMountError::DeviceId)?;
    Ok((major, minor))
}

/// A `/dev/mapper` name: device-mapper allows up to 127 bytes; ward allows the characters
/// udev and cryptsetup never escape, so the name cannot walk out of `/dev/mapper`.
fn check_mapper_name(name: &str) -> Result<(), SecureMountError> {
    let ok = !name.is_empty()
        && name.len() < 128
        && name != "."
        && name != ".."
        && name != "control"
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
    if ok {
        Ok(())
    } else {
        Err(SecureMountError::MapperName(name.to_string()))
    }
}

/// The mount point: absolute, no `..`, not `/`. (CDH takes it as given; kata-agent creates it
/// before the call.)
fn checked_mount_point(p: &str) -> Result<PathBuf, SecureMountError> {
    let path = Path::new(p);
    let normal = path.is_absolute()
        && path.components().count() > 1
        && path
            .components()
            .all(|c| matches!(c, Component::RootDir | Component::Normal(_)));
    if normal {
        Ok(path.to_path_buf())
    } else {
        Err(SecureMountError::MountPoint(p.to_string()))
    }
}

/// CDH's `disable_lazy_itable_init`: keep the caller's choice, else add `lazy_itable_init=0`
/// (to the last `-E` list, or as a new `-E`), because a lazily initialised inode table is read
/// before it is written, which a no-wipe dm-integrity device answers with I/O errors.
pub fn with_eager_itable_init(args: &[String]) -> Vec<String> {
    let mut args = args.to_vec();
    if args.iter().any(|a| a.contains("lazy_itable_init")) {
        return args;
    }
    if let Some(i) = args.iter().rposition(|a| a == "-E")
        && let Some(opts) = args.get_mut(i + 1)
    {
        opts.push_str(",lazy_itable_init=0");
        return args;
    }
    if let Some(opts) = args
        .iter_mut()
        .rfind(|a| a.starts_with("-E") && a.len() > 2)
    {
        opts.push_str(",lazy_itable_init=0");
        return args;
    }
    args.push("-E".to_string());
    args.push("lazy_itable_init=0".to_string());
    args
}
