//! Python packages for the tests that run them (OpenAI's SDK in `openai_client.rs`, `proxy.rs`,
//! `external_engine.rs`; sev-snp-measure in `measure.rs`): a virtual environment per package,
//! made once under the target directory and reused.

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

fn imports(python: &Path, module: &str) -> bool {
    run(
        Command::new(python).args(["-c", &format!("import {module}")]),
        Duration::from_secs(60),
    )
    .is_some_and(|o| o.status.success())
}

/// The Python of a virtual environment `target/<venv>` with `package` (a pip requirement)
/// installed, made once and reused while `module` imports; `Err` says why there is none.
pub fn python_with(venv: &str, package: &str, module: &str) -> Result<PathBuf, String> {
    let target = crate::bin_dir()
        .parent()
        .map(Path::to_path_buf)
        .ok_or("no target directory")?;
    let dir = target.join(venv);
    let python = dir.join("bin/python");
    if imports(&python, module) {
        return Ok(python);
    }
    // Made aside and renamed, so a half-made environment is never taken for a good one.
    let staging = target.join(format!("{venv}.{}", std::process::id()));
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
            package,
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
                "pip install {package} failed (is PyPI reachable?): {why}"
            ));
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::rename(&staging, &dir).map_err(|e| e.to_string())?;
    // A venv's scripts name its path; the interpreter itself does not mind the rename.
    let python = dir.join("bin/python");
    if imports(&python, module) {
        Ok(python)
    } else {
        Err(format!(
            "{module} does not import after installing {package}"
        ))
    }
}

/// The Python of a virtual environment with OpenAI's SDK (`target/openai-venv`).
pub fn python_with_openai() -> Result<PathBuf, String> {
    python_with("openai-venv", "openai", "openai")
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}
