//! LUKS2 through `cryptsetup`, with CDH's parameters (guest-components 8246e5e0,
//! `confidential-data-hub/hub/src/storage/drivers/luks2.rs`): `aes-xts-plain64`, 4096-byte
//! sectors, and with integrity `hmac-sha256` without wipe and without journal. A blank device's
//! header is detached, in guest memory, so the host's copy of the disk holds only ciphertext
//! and integrity tags, not even the key slots.
//!
//! One deliberate difference: a key ward made itself (4096 random bytes) is stretched with
//! PBKDF2 at cryptsetup's minimum instead of Argon2id. Stretching protects guessable
//! passphrases; a 32768-bit random key gains nothing from it, and Argon2id would cost each
//! format and open about two seconds and up to a gigabyte of guest memory. Keys from the KBS,
//! a sealed secret or a file may be passphrases and keep cryptsetup's default.

use std::ffi::OsStr;
use std::path::{Path, PathBuf};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

use super::SecureMountError;
use super::tools;

/// CDH's `LUKS_HEADERS_STORAGE_DIR` (`CDH_BASE_DIR` + `/luks-headers`): tmpfs in the guest.
pub const HEADER_DIR: &str = "/run/confidential-containers/cdh/luks-headers";
/// CDH's `LUKS2_HEADER_MIN_SIZE_BYTES`.
const HEADER_SIZE: u64 = 16 * 1024 * 1024;

/// CDH's `luks_header_path`: the device path in unpadded URL-safe base64, `.header`.
pub fn header_path(dir: &Path, device: &Path) -> PathBuf {
    let name = URL_SAFE_NO_PAD.encode(device.as_os_str().as_encoded_bytes());
    dir.join(format!("{name}.header"))
}

/// CDH's `prepare_luks_header_file`: a new 16 MiB file (an existing one is an error: another
/// volume's header is never overwritten).
pub fn prepare_header(path: &Path) -> Result<(), SecureMountError> {
    use std::os::unix::fs::OpenOptionsExt;
    let io = |source| SecureMountError::Io {
        path: path.to_path_buf(),
        source,
    };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(io)?;
    }
    let file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(io)?;
    file.set_len(HEADER_SIZE).map_err(io)
}

/// How a new volume is formatted.
pub struct Format<'a> {
    pub device: &'a Path,
    pub header: &'a Path,
    pub integrity: bool,
    /// The key was made in the guest (see the module's note on PBKDF2).
    pub random_key: bool,
}

/// `cryptsetup luksFormat`, the key on stdin.
pub async fn format(cryptsetup: &Path, f: &Format<'_>, key: &[u8]) -> Result<(), SecureMountError> {
    let mut args: Vec<&OsStr> = [
        "--batch-mode",
        "luksFormat",
        "--type",
        "luks2",
        "--cipher",
        "aes-xts-plain64",
        "--sector-size",
        "4096",
        "--key-file",
        "-",
        "--header",
    ]
    .iter()
    .map(OsStr::new)
    .collect();
    args.push(f.header.as_os_str());
    if f.integrity {
        for a in [
            "--integrity",
            "hmac-sha256",
            "--integrity-no-wipe",
            "--integrity-no-journal",
        ] {
            args.push(OsStr::new(a));
        }
    }
    if f.random_key {
        for a in ["--pbkdf", "pbkdf2", "--pbkdf-force-iterations", "1000"] {
            args.push(OsStr::new(a));
        }
    }
    args.push(f.device.as_os_str());
    tools::run(cryptsetup, &args, Some(key), "luksFormat").await?;
    Ok(())
}

/// `cryptsetup luksOpen` as `/dev/mapper/NAME`, the key on stdin.
pub async fn open(
    cryptsetup: &Path,
    device: &Path,
    header: Option<&Path>,
    name: &str,
    key: &[u8],
) -> Result<(), SecureMountError> {
    let mut args: Vec<&OsStr> = vec![OsStr::new("luksOpen")];
    if let Some(h) = header {
        args.push(OsStr::new("--header"));
        args.push(h.as_os_str());
    }
    args.extend([OsStr::new("--key-file"), OsStr::new("-")]);
    args.push(device.as_os_str());
    args.push(OsStr::new(name));
    tools::run(cryptsetup, &args, Some(key), "luksOpen").await?;
    Ok(())
}

/// `cryptsetup luksClose NAME`.
pub async fn close(cryptsetup: &Path, name: &str) -> Result<(), SecureMountError> {
    tools::run(
        cryptsetup,
        &[OsStr::new("luksClose"), OsStr::new(name)],
        None,
        "luksClose",
    )
    .await?;
    Ok(())
}
