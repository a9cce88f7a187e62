//! The self-check's secure mounts (`ward.self_check_volume=`): wardd's own
//! `api.SecureMountService/SecureMount`, called over its ttrpc listener with the options
//! kata-agent sends (kata-containers 7c6ba40c, `cdh_handler_trusted_storage`), then a write and
//! a read through the mounted volume.

use std::collections::HashMap;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use ward_protos::confidential_data_hub::SecureMountRequest;
use ward_protos::confidential_data_hub_ttrpc::SecureMountServiceClient;

use crate::config::VolumeCheck;

/// Where the self-check's volumes are mounted.
pub const VOLUMES: &str = "/run/ward/self-check-volumes";

/// The text the self-check writes through a blank volume; a test of the host's copy of the
/// disk looks for it and must not find it.
pub const MARKER: &str = "ward self-check: plaintext that must never reach the host's disk\n";

/// What one volume check did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VolumeReport {
    pub device: String,
    pub mount_point: PathBuf,
    /// An ext4 filesystem was made and mounted (else the mapping was linked).
    pub filesystem: bool,
    /// Bytes written and read back, or read from the mapping.
    pub bytes: u64,
}

/// Mounts `v` through SecureMount at `addr` and uses it.
pub async fn check(addr: &str, v: &VolumeCheck, timeout: Duration) -> Result<VolumeReport, String> {
    let sys_dev = format!("/sys/block/{}/dev", v.device);
    let device_id = std::fs::read_to_string(&sys_dev)
        .map_err(|e| format!("{sys_dev}: {e}"))?
        .trim()
        .to_string();
    std::fs::create_dir_all(VOLUMES).map_err(|e| format!("{VOLUMES}: {e}"))?;
    let filesystem = v.key.is_none();
    let pairs: Vec<(&str, &str)> = match &v.key {
        // kata-agent's trusted image storage request.
        None => vec![
            ("deviceId", &device_id),
            ("sourceType", "empty"),
            ("targetType", "fileSystem"),
            ("filesystemType", "ext4"),
            ("mkfsOpts", "-E lazy_journal_init"),
            ("encryptionType", "luks2"),
            ("dataIntegrity", "true"),
        ],
        Some(key) => vec![
            ("deviceId", &device_id),
            ("sourceType", "encrypted"),
            ("targetType", "device"),
            ("encryptionType", "luks2"),
            ("key", key),
        ],
    };
    let options: HashMap<String, String> = pairs
        .into_iter()
        .map(|(k, val)| (k.to_string(), val.to_string()))
        .collect();
    let mount_point = Path::new(VOLUMES).join(if filesystem {
        v.device.clone()
    } else {
        format!("{}.dev", v.device)
    });
    if filesystem {
        std::fs::create_dir_all(&mount_point)
            .map_err(|e| format!("{}: {e}", mount_point.display()))?;
    }
    let client = ttrpc::asynchronous::Client::connect(addr)
        .await
        .map_err(|e| format!("connect {addr}: {e}"))?;
    let req = SecureMountRequest {
        volume_type: "block-device".to_string(),
        options,
        mount_point: mount_point.to_string_lossy().into_owned(),
        ..Default::default()
    };
    let ctx = ttrpc::context::with_timeout(i64::try_from(timeout.as_nanos()).unwrap_or(i64::MAX));
    SecureMountServiceClient::new(client)
        .secure_mount(ctx, &req)
        .await
        .map_err(|e| format!("SecureMount: {e}"))?;
    let mp = mount_point.clone();
    let bytes = tokio::task::spawn_blocking(move || use_volume(&mp, filesystem))
        .await
        .map_err(|e| e.to_string())??;
    Ok(VolumeReport {
        device: v.device.clone(),
        mount_point,
        filesystem,
        bytes,
    })
}

/// Writes 1 MiB of [`MARKER`] through a filesystem volume and reads it back, or reads the
/// first MiB of a linked mapping and says how large it is.
fn use_volume(mount_point: &Path, filesystem: bool) -> Result<u64, String> {
    let io = |what: &str, e: std::io::Error| format!("{what} {}: {e}", mount_point.display());
    if filesystem {
        let path = mount_point.join("self-check");
        let data = MARKER.repeat((1 << 20) / MARKER.len());
        let mut f = std::fs::File::create(&path).map_err(|e| io("create in", e))?;
        f.write_all(data.as_bytes())
            .map_err(|e| io("write to", e))?;
        f.sync_all().map_err(|e| io("sync", e))?;
        let back = std::fs::read(&path).map_err(|e| io("read from", e))?;
        if back != data.as_bytes() {
            return Err(format!("{}: read back other bytes", path.display()));
        }
        Ok(back.len() as u64)
    } else {
        let mut f = std::fs::File::open(mount_point).map_err(|e| io("open", e))?;
        let mut first = vec![0u8; 1 << 20];
        f.read_exact(&mut first).map_err(|e| io("read", e))?;
        f.seek(SeekFrom::End(0)).map_err(|e| io("size of", e))
    }
}
