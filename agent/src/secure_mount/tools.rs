//! Runs the guest's `cryptsetup` and `mkfs.ext4`, as CoCo's confidential-data-hub does
//! (guest-components 8246e5e0, `confidential-data-hub/hub/src/storage/drivers/`).
//!
//! Keys go to the child on stdin, never in its arguments or environment (both are readable in
//! `/proc` by anything in the guest). The child's output is kept for the error, cut short.

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use tokio::io::AsyncWriteExt;

use super::SecureMountError;

/// Where a guest without `PATH` (wardd as PID 1) keeps these tools.
const DEFAULT_PATH: &str = "/usr/sbin:/usr/bin:/sbin:/bin";

/// The longest one tool run may take: formatting a large device with `lazy_itable_init=0`
/// writes every inode table.
const TOOL_TIMEOUT: Duration = Duration::from_secs(30 * 60);

/// How much of a failed tool's output an error carries.
const OUTPUT_KEPT: usize = 2048;

/// Finds `name` in `PATH` (or the usual system directories).
pub fn find(name: &'static str) -> Result<PathBuf, SecureMountError> {
    let path = std::env::var_os("PATH").unwrap_or_else(|| DEFAULT_PATH.into());
    let dirs = std::env::split_paths(&path).chain(std::env::split_paths(OsStr::new(DEFAULT_PATH)));
    for dir in dirs {
        let candidate = dir.join(name);
        if is_executable(&candidate) {
            return Ok(candidate);
        }
    }
    Err(SecureMountError::ToolMissing(name))
}

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// What a successful run printed.
pub struct Output {
    pub stdout: String,
}

/// Runs `program args…`, writing `stdin` (the key, or nothing) to it, and waits.
pub async fn run(
    program: &Path,
    args: &[&OsStr],
    stdin: Option<&[u8]>,
    step: &'static str,
) -> Result<Output, SecureMountError> {
    let tool = program
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let mut cmd = tokio::process::Command::new(program);
    cmd.args(args)
        .env_clear()
        .env("PATH", DEFAULT_PATH)
        .env("LC_ALL", "C")
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let failed = |detail: String| SecureMountError::Tool {
        tool: tool.clone(),
        step,
        detail,
    };
    // Owned: as PID 1, wardd's reaper would otherwise take the exit status first.
    let (mut child, _owned) =
        crate::init::spawn_owned(&mut cmd).map_err(|e| failed(format!("cannot start: {e}")))?;
    if let Some(bytes) = stdin
        && let Some(mut pipe) = child.stdin.take()
    {
        // A child that exits early closes the pipe: its exit status says why.
        let _ = pipe.write_all(bytes).await;
        drop(pipe);
    }
    let out = tokio::time::timeout(TOOL_TIMEOUT, child.wait_with_output())
        .await
        .map_err(|_| failed(format!("no answer within {} s", TOOL_TIMEOUT.as_secs())))?
        .map_err(|e| failed(format!("wait: {e}")))?;
    if !out.status.success() {
        let mut text = String::from_utf8_lossy(&out.stderr).trim().to_string();
        if text.is_empty() {
            text = String::from_utf8_lossy(&out.stdout).trim().to_string();
        }
        return Err(failed(format!("{}: {}", out.status, cut(&text))));
    }
    Ok(Output {
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
    })
}

/// The first `OUTPUT_KEPT` bytes of `s`, at a character boundary, one line.
fn cut(s: &str) -> String {
    let mut end = s.len().min(OUTPUT_KEPT);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s.get(..end).unwrap_or_default().replace('\n', " | ")
}
