//! `mkfs.ext4` on an opened volume, integrity-compatible as CDH does it (guest-components
//! 8246e5e0, `confidential-data-hub/hub/src/storage/drivers/filesystem.rs`).
//!
//! A dm-integrity device formatted without wipe has no valid tags until a sector is written,
//! and `mkfs.ext4` reads some blocks before writing them (cryptsetup issue 525). So, first a
//! dry run (`-n`) says where the superblock and its backups go; those blocks are written whole;
//! then the real run, with `lazy_itable_init=0` unless the caller chose. Unlike CDH, the dry run
//! gets the caller's options too (they can move the backups), and a filesystem too small for
//! backups is not an error.

use std::ffi::OsStr;
use std::path::Path;

use super::SecureMountError;
use super::request::with_eager_itable_init;
use super::tools;

/// Makes an ext4 filesystem on `device` with the caller's `args`.
pub async fn mkfs(
    mkfs: &Path,
    device: &Path,
    args: &[String],
    integrity: bool,
) -> Result<(), SecureMountError> {
    let args = if integrity {
        let mut dry: Vec<&OsStr> = vec![OsStr::new("-F"), OsStr::new("-n")];
        dry.extend(args.iter().map(OsStr::new));
        dry.push(device.as_os_str());
        let plan = tools::run(mkfs, &dry, None, "mkfs.ext4 -n").await?;
        let (block_size, blocks) = superblock_blocks(&plan.stdout);
        prewrite(device, block_size, &blocks).await?;
        with_eager_itable_init(args)
    } else {
        args.to_vec()
    };
    let mut real: Vec<&OsStr> = vec![device.as_os_str(), OsStr::new("-F")];
    real.extend(args.iter().map(OsStr::new));
    tools::run(mkfs, &real, None, "mkfs.ext4").await?;
    Ok(())
}

/// From mke2fs's report: the block size (`… with N 4k blocks …`, else 4096) and the blocks
/// holding the superblock (0) and its backups (`Superblock backups stored on blocks: …`).
pub fn superblock_blocks(report: &str) -> (u64, Vec<u64>) {
    let block_size = report
        .split_whitespace()
        .zip(report.split_whitespace().skip(1))
        .find_map(|(size, word)| {
            (word == "blocks").then_some(())?;
            let k = size.strip_suffix('k')?.parse::<u64>().ok()?;
            k.checked_mul(1024)
        })
        .unwrap_or(4096);
    let mut blocks = vec![0];
    if let Some((_, tail)) = report.split_once("Superblock backups stored on blocks:") {
        // The list ends at the first line that is not numbers and commas.
        for line in tail.lines() {
            let words: Vec<&str> = line
                .split(|c: char| c == ',' || c.is_whitespace())
                .filter(|w| !w.is_empty())
                .collect();
            if words.is_empty() {
                if blocks.len() > 1 {
                    break;
                }
                continue;
            }
            let nums: Option<Vec<u64>> = words.iter().map(|w| w.parse().ok()).collect();
            match nums {
                Some(n) => blocks.extend(n),
                None => break,
            }
        }
    }
    blocks.sort_unstable();
    blocks.dedup();
    (block_size, blocks)
}

/// Writes zeroed whole blocks at `blocks`, so their integrity tags exist before mkfs reads.
async fn prewrite(device: &Path, block_size: u64, blocks: &[u64]) -> Result<(), SecureMountError> {
    let device = device.to_path_buf();
    let blocks = blocks.to_vec();
    let path = device.clone();
    tokio::task::spawn_blocking(move || -> std::io::Result<()> {
        use std::os::unix::fs::FileExt;
        let file = std::fs::OpenOptions::new().write(true).open(&device)?;
        let len = usize::try_from(block_size).map_err(std::io::Error::other)?;
        let zeros = vec![0u8; len];
        for b in blocks {
            let at = b
                .checked_mul(block_size)
                .ok_or_else(|| std::io::Error::other("block offset overflows"))?;
            file.write_all_at(&zeros, at)?;
        }
        file.sync_all()
    })
    .await
    .map_err(|e| SecureMountError::Io {
        path: path.clone(),
        source: std::io::Error::other(e),
    })?
    .map_err(|source| SecureMountError::Io { path, source })
}
