//! `api.SecureMountService/SecureMount`: encrypted block volumes, as CoCo's
//! confidential-data-hub makes them for kata-agent (guest-pull image storage and encrypted
//! ephemeral volumes).
//!
//! A `block-device` request with `encryptionType=luks2` resolves the device (`deviceId`
//! `MAJ:MIN` through sysfs, as CDH does), gets the key (made in the guest when the request
//! names none; else from the KBS, a sealed secret, or, when allowed, a file), formats a blank
//! device as LUKS2 (optionally with dm-integrity) with a detached header in guest memory, opens
//! it, makes ext4 when asked, and mounts it (or links `/dev/mapper/NAME` at the mount point).
//! A step that fails undoes the ones before it: no mapping is left open, no header left behind.
//!
//! Never: a key byte in an argument, the environment, a log line, an error or the audit; a
//! header or key on a disk the host can read; a device or mount point claimed twice.

mod ext4;
mod luks;
mod request;
mod tools;

#[cfg(test)]
mod tests;

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use rand::RngCore;
use zeroize::Zeroizing;

use crate::attestation::Attestation;
use crate::audit::Audit;

pub use request::{
    BlockDeviceRequest, DeviceRef, KeySource, SourceType, TargetType, parse as parse_request,
};

/// The size of a key ward makes (CDH: `random_bytes::<4096>()`).
const RANDOM_KEY_LEN: usize = 4096;

/// Why a SecureMount request failed. No variant carries key bytes.
#[derive(Debug, thiserror::Error)]
pub enum SecureMountError {
    /// CDH: `StorageTypeNotRecognized`.
    #[error("volume type `{0}` is not supported (ward mounts `block-device`)")]
    VolumeType(String),
    /// The options map does not parse as CDH's `BlockDeviceParameters`.
    #[error("bad block-device options: {0}")]
    Options(String),
    /// CDH: `IllegalDeviceId`.
    #[error("deviceId must be in the format of `MAJ:MIN`")]
    DeviceId,
    /// CDH: `NoDeviceSpecified`.
    #[error("either `deviceId` or `devicePath` must be specified")]
    NoDevice,
    /// CDH: `NoDeviceFound`.
    #[error("no block device {major}:{minor} in sysfs")]
    NoDeviceFound { major: u32, minor: u32 },
    #[error("{0} is not a block device")]
    NotBlockDevice(PathBuf),
    #[error("encryptionType `{0}` is not supported by ward (luks2 is)")]
    Unsupported(&'static str),
    /// CDH: `IllegalKeyScheme`.
    #[error("the scheme of the key uri should be `kbs`, `file` or `sealed`")]
    KeyScheme,
    #[error("file:// keys are refused unless [secure_mount] allow_file_keys = true")]
    FileKeysOff,
    /// The KBS, the sealed secret or the file did not give the key.
    #[error("failed to get the key ({source_name}): {reason}")]
    Key { source_name: String, reason: String },
    #[error("mapper name `{0}` is not 1 to 127 of [A-Za-z0-9._-]")]
    MapperName(String),
    #[error("mount point `{0}` must be an absolute path other than / without `..`")]
    MountPoint(String),
    #[error("{0} is already in use by another secure mount")]
    InUse(PathBuf),
    #[error("{0} is not installed in the guest (cryptsetup-bin and e2fsprogs provide them)")]
    ToolMissing(&'static str),
    #[error("{tool} failed at {step}: {detail}")]
    Tool {
        tool: String,
        step: &'static str,
        detail: String,
    },
    #[error("mounting {device} on {mount_point}: {source}")]
    Mount {
        device: PathBuf,
        mount_point: PathBuf,
        #[source]
        source: nix::Error,
    },
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// `[secure_mount]` settings and the paths the tests move.
#[derive(Clone, Debug)]
pub struct SecureMountSettings {
    pub allow_file_keys: bool,
    pub header_dir: PathBuf,
    pub sys_root: PathBuf,
}

impl Default for SecureMountSettings {
    fn default() -> Self {
        SecureMountSettings {
            allow_file_keys: false,
            header_dir: PathBuf::from(luks::HEADER_DIR),
            sys_root: PathBuf::from("/sys"),
        }
    }
}

/// What a finished mount reports.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mounted {
    pub device: PathBuf,
    pub mapper: String,
    pub mount_point: PathBuf,
}

/// The secure mounts of this guest.
pub struct SecureMounts {
    attestation: Arc<Attestation>,
    audit: Audit,
    settings: SecureMountSettings,
    /// Devices and mount points claimed by a mount in progress or done.
    claimed: Mutex<HashSet<PathBuf>>,
}

/// Releases claims unless the mount succeeded.
struct Claim<'a> {
    mounts: &'a SecureMounts,
    paths: Vec<PathBuf>,
    keep: bool,
}

impl Drop for Claim<'_> {
    fn drop(&mut self) {
        if self.keep {
            return;
        }
        if let Ok(mut c) = self.mounts.claimed.lock() {
            for p in &self.paths {
                c.remove(p);
            }
        }
    }
}

/// What to undo when a later step fails.
#[derive(Default)]
struct Undo {
    header: Option<PathBuf>,
    mapper: Option<String>,
}

impl SecureMounts {
    pub fn new(
        attestation: Arc<Attestation>,
        audit: Audit,
        settings: SecureMountSettings,
    ) -> SecureMounts {
        SecureMounts {
            attestation,
            audit,
            settings,
            claimed: Mutex::new(HashSet::new()),
        }
    }

    /// Serves one request. Runs to its end (or its undo) even when the caller stops waiting.
    pub async fn mount(
        self: &Arc<Self>,
        volume_type: &str,
        options: &HashMap<String, String>,
        mount_point: &str,
    ) -> Result<Mounted, SecureMountError> {
        let req = request::parse(volume_type, options, mount_point)?;
        let this = self.clone();
        tokio::spawn(async move { this.mount_parsed(req).await })
            .await
            .map_err(|e| SecureMountError::Io {
                path: PathBuf::from(mount_point),
                source: std::io::Error::other(e),
            })?
    }

    async fn mount_parsed(&self, req: BlockDeviceRequest) -> Result<Mounted, SecureMountError> {
        let device = resolve_device(&self.settings.sys_root, &req.device)?;
        let mut claim = self.claim(&[device.clone(), req.mount_point.clone()])?;
        let cryptsetup = tools::find("cryptsetup")?;
        let wants_fs = matches!(req.luks2.target_type, TargetType::FileSystem { .. });
        let mkfs = match (wants_fs, req.source) {
            (true, SourceType::Empty) => Some(tools::find("mkfs.ext4")?),
            _ => None,
        };
        let key = self.key(&req.key).await?;
        let mapper = req
            .luks2
            .mapper_name
            .clone()
            .unwrap_or_else(|| format!("ward-{}", hex::encode(rand::random::<[u8; 8]>())));
        let mut undo = Undo::default();
        let result = self
            .steps(
                &req,
                &device,
                &cryptsetup,
                mkfs.as_deref(),
                &mapper,
                key,
                &mut undo,
            )
            .await;
        match result {
            Ok(()) => {
                claim.keep = true;
                let mounted = Mounted {
                    device,
                    mapper,
                    mount_point: req.mount_point.clone(),
                };
                self.audit.note(
                    "volume.mount",
                    &mounted.mount_point.to_string_lossy(),
                    serde_json::json!({
                        "device": mounted.device,
                        "mapper": mounted.mapper,
                        "source": format!("{:?}", req.source).to_lowercase(),
                        "integrity": req.luks2.integrity(),
                        "key": req.key.describe(),
                        "target": match req.luks2.target_type {
                            TargetType::Device => "device",
                            TargetType::FileSystem { .. } => "fileSystem",
                        },
                    }),
                );
                tracing::info!(device = %mounted.device.display(), mapper = %mounted.mapper,
                    mount_point = %mounted.mount_point.display(),
                    integrity = req.luks2.integrity(), "secure mount ready");
                Ok(mounted)
            }
            Err(e) => {
                if let Some(name) = &undo.mapper
                    && let Err(close) = luks::close(&cryptsetup, name).await
                {
                    tracing::warn!(error = %close, "could not close the mapping after a failure");
                }
                if let Some(h) = &undo.header {
                    let _ = std::fs::remove_file(h);
                }
                tracing::warn!(error = %e, device = %device.display(), "secure mount failed");
                Err(e)
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    async fn steps(
        &self,
        req: &BlockDeviceRequest,
        device: &Path,
        cryptsetup: &Path,
        mkfs: Option<&Path>,
        mapper: &str,
        key: Zeroizing<Vec<u8>>,
        undo: &mut Undo,
    ) -> Result<(), SecureMountError> {
        let integrity = req.luks2.integrity();
        let header = if req.source == SourceType::Empty {
            let h = luks::header_path(&self.settings.header_dir, device);
            luks::prepare_header(&h)?;
            undo.header = Some(h.clone());
            let format = luks::Format {
                device,
                header: &h,
                integrity,
                random_key: req.key == KeySource::Random,
            };
            luks::format(cryptsetup, &format, &key).await?;
            Some(h)
        } else {
            None
        };
        luks::open(cryptsetup, device, header.as_deref(), mapper, &key).await?;
        undo.mapper = Some(mapper.to_string());
        drop(key);
        let mapped = Path::new("/dev/mapper").join(mapper);
        match (&req.luks2.target_type, req.source) {
            (TargetType::Device, _) => std::os::unix::fs::symlink(&mapped, &req.mount_point)
                .map_err(|source| SecureMountError::Io {
                    path: req.mount_point.clone(),
                    source,
                }),
            (
                TargetType::FileSystem {
                    filesystem_type,
                    mkfs_opts,
                },
                source,
            ) => {
                if let (SourceType::Empty, Some(mkfs)) = (source, mkfs) {
                    let args: Vec<String> = mkfs_opts
                        .as_deref()
                        .unwrap_or_default()
                        .split_ascii_whitespace()
                        .map(str::to_string)
                        .collect();
                    ext4::mkfs(mkfs, &mapped, &args, integrity).await?;
                }
                mount(&mapped, &req.mount_point, filesystem_type.as_str()).await
            }
        }
    }

    fn claim(&self, paths: &[PathBuf]) -> Result<Claim<'_>, SecureMountError> {
        let mut c = self
            .claimed
            .lock()
            .map_err(|_| SecureMountError::InUse(paths.first().cloned().unwrap_or_default()))?;
        if let Some(taken) = paths.iter().find(|p| c.contains(*p)) {
            return Err(SecureMountError::InUse(taken.clone()));
        }
        c.extend(paths.iter().cloned());
        Ok(Claim {
            mounts: self,
            paths: paths.to_vec(),
            keep: false,
        })
    }

    async fn key(&self, source: &KeySource) -> Result<Zeroizing<Vec<u8>>, SecureMountError> {
        let failed = |reason: String| SecureMountError::Key {
            source_name: source.describe(),
            reason,
        };
        let key = match source {
            KeySource::Random => {
                let mut k = Zeroizing::new(vec![0u8; RANDOM_KEY_LEN]);
                rand::rngs::OsRng.fill_bytes(&mut k);
                k
            }
            KeySource::Kbs(uri) => self
                .attestation
                .resource(uri)
                .await
                .map_err(|e| failed(e.to_string()))?,
            KeySource::Sealed(secret) => {
                crate::unseal::unseal(&self.attestation, secret.as_bytes())
                    .await
                    .map_err(|e| failed(e.to_string()))?
            }
            KeySource::File(path) => {
                if !self.settings.allow_file_keys {
                    return Err(SecureMountError::FileKeysOff);
                }
                Zeroizing::new(
                    tokio::fs::read(path)
                        .await
                        .map_err(|e| failed(e.kind().to_string()))?,
                )
            }
        };
        if key.is_empty() {
            return Err(failed("the key is empty".to_string()));
        }
        Ok(key)
    }
}

/// The device's path: `MAJ:MIN` through `SYS/dev/block/MAJ:MIN/uevent`'s `DEVNAME` (CDH's
/// `get_device_path`), or the given path; either way it must be a block device.
fn resolve_device(sys_root: &Path, device: &DeviceRef) -> Result<PathBuf, SecureMountError> {
    let path = match device {
        DeviceRef::Number { major, minor } => {
            let uevent = sys_root.join(format!("dev/block/{major}:{minor}/uevent"));
            let text =
                std::fs::read_to_string(&uevent).map_err(|_| SecureMountError::NoDeviceFound {
                    major: *major,
                    minor: *minor,
                })?;
            let name = text
                .lines()
                .find_map(|l| l.strip_prefix("DEVNAME="))
                .filter(|n| {
                    !n.is_empty()
                        && Path::new(n)
                            .components()
                            .all(|c| matches!(c, std::path::Component::Normal(_)))
                })
                .ok_or(SecureMountError::NoDeviceFound {
                    major: *major,
                    minor: *minor,
                })?;
            Path::new("/dev").join(name)
        }
        DeviceRef::Path(p) => p.clone(),
    };
    if !is_block_device(&path) {
        return Err(SecureMountError::NotBlockDevice(path));
    }
    Ok(path)
}

fn is_block_device(p: &Path) -> bool {
    use std::os::unix::fs::FileTypeExt;
    std::fs::metadata(p).is_ok_and(|m| m.file_type().is_block_device())
}

/// CDH mounts with `MS_NOATIME` only.
async fn mount(
    device: &Path,
    mount_point: &Path,
    fs: &'static str,
) -> Result<(), SecureMountError> {
    let (d, m) = (device.to_path_buf(), mount_point.to_path_buf());
    let done = tokio::task::spawn_blocking(move || {
        nix::mount::mount(
            Some(d.as_path()),
            m.as_path(),
            Some(fs),
            nix::mount::MsFlags::MS_NOATIME,
            None::<&str>,
        )
    })
    .await
    .map_err(|e| SecureMountError::Io {
        path: mount_point.to_path_buf(),
        source: std::io::Error::other(e),
    })?;
    done.map_err(|source| SecureMountError::Mount {
        device: device.to_path_buf(),
        mount_point: mount_point.to_path_buf(),
        source,
    })
}
