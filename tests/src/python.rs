//! OpenAI's Python SDK for the tests that run it (`openai_client.rs`, `proxy.rs`): a virtual
//! environment with `openai` installed, made once under the target directory and reused.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

/// Runs `cmd` to completion within `limit`; `None` when it ran out of time (it is killed).
pub fn run(cmd: &mut Command, limit: Duration) -> Option<Output> {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .ok()?;
    let until = Instant::now() + limit;
    while child.try_wait().ok()?.is_none() {
        if Instant::now() > until {
            let _ = child.kill();
            let _ = child.wait();
            return None;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    child.wait_with_output().ok()
}

fn has_openai(python: &Path) -> bool {
    run(
        Command::new(python).args(["-c", "import openai"]),
        Duration::from_secs(60),
    )
    .is_some_and(|o| o.status.success())
}

/// The Python of a virtual environment with `openai` installed, made (once) under the target
/// directory; `Err` says why there is none.
pub fn python_with_openai() -> Result<PathBuf, String> {
    let target = crate::bin_dir()
        .parent()
        .map(Path::to_path_buf)
        .ok_or("no target directory")?;
    let venv = target.join("openai-venv");
    let python = venv.join("bin/python");
    if has_openai(&python) {
        return Ok(python);
    }
    // Made aside and renamed, so a half-made environment is never taken for a good one.
    let staging = target.join(format!("openai-venv.{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&staging);
    let made = run(
        Command::new("python3").args(["-m", "venv"]).arg(&staging),
        Duration::from_secs(120),
    );
    match made {
        Some(o) if o.status.success() => {}
        other => {
            let _ = std::fs::remove_dir_all(&staging);
            return Err(
                other.map_or("python3 is missing or did not finish".to_string(), |o| {
                    format!(
                        "python3 -m venv failed: {}",
                        String::from_utf8_lossy(&o.stderr).trim()
                    )
                }),
            );
        }
    }
    let pip = run(
        Command::new(staging.join("bin/pip")).args([
            "install",
            "--quiet",
            "--disable-pip-version-check",
            "--timeout",
            "20",
            "openai",
        ]),
        Duration::from_secs(300),
    );
    match pip {
        Some(o) if o.status.success() => {}
        other => {
            let _ = std::fs::remove_dir_all(&staging);
            let why = other.map_or("timed out".to_string(), |o| {
                String::from_utf8_lossy(&o.stderr).trim().to_string()
            });
            return Err(format!(
                "pip install openai failed (is PyPI reachable?): {why}"
            ));
        }
    }
    let _ = std::fs::remove_dir_all(&venv);
    std::fs::rename(&staging, &venv).map_err(|e| e.to_string())?;
    // A venv's scripts name its path; the interpreter itself does not mind the rename.
    let python = venv.join("bin/python");
    if has_openai(&python) {
        Ok(python)
    } else {
        Err("openai does not import after installing it".to_string())
    }
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}
