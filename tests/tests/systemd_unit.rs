//! The systemd unit and target in `rootfs/systemd/`: `systemd-analyze verify` accepts them with
//! no warning (it exits 0 on unknown keys and bad values, so its output is checked too), and the
//! unit matches what wardd does: notify readiness, a watchdog, config errors (exit 2) not
//! restarted, and every path wardd writes by default inside a directory the unit makes writable.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::{Path, PathBuf};
use std::process::Command;

use ward_tests::{bin, run_ward};

fn unit_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .join("rootfs/systemd")
}

fn unit() -> String {
    std::fs::read_to_string(unit_dir().join("ward.service")).unwrap()
}

/// Values of `key=` lines (comments skipped), in order.
fn values(text: &str, key: &str) -> Vec<String> {
    text.lines()
        .filter(|l| !l.trim_start().starts_with('#'))
        .filter_map(|l| l.strip_prefix(&format!("{key}=")))
        .map(str::to_string)
        .collect()
}

#[test]
fn systemd_analyze_verify_accepts_the_units() {
    let Some(system_units) = ["/usr/lib/systemd/system", "/lib/systemd/system"]
        .into_iter()
        .map(Path::new)
        .find(|p| p.join("basic.target").exists())
    else {
        eprintln!("skipped: no systemd unit directory (Debian package systemd; `just deps`)");
        return;
    };
    if Command::new("systemd-analyze")
        .arg("--version")
        .output()
        .is_err()
    {
        eprintln!("skipped: systemd-analyze is missing (Debian package systemd; `just deps`)");
        return;
    }
    // A root holding the distribution's units, wardd at the unit's ExecStart path, and ours.
    let root = tempfile::tempdir().unwrap();
    let lib = root.path().join("usr/lib/systemd/system");
    let etc = root.path().join("etc/systemd/system");
    std::fs::create_dir_all(&lib).unwrap();
    std::fs::create_dir_all(&etc).unwrap();
    std::fs::create_dir_all(root.path().join("usr/bin")).unwrap();
    for entry in std::fs::read_dir(system_units).unwrap().flatten() {
        let path = entry.path();
        if path.is_file() {
            std::fs::copy(&path, lib.join(entry.file_name())).unwrap();
        }
    }
    std::fs::copy(bin("wardd"), root.path().join("usr/bin/wardd")).unwrap();
    for name in ["ward.service", "ward-guest.target"] {
        std::fs::copy(unit_dir().join(name), etc.join(name)).unwrap();
    }
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg("--man=no")
        .arg(format!("--root={}", root.path().display()))
        .args(["ward.service", "ward-guest.target"])
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "systemd-analyze verify failed:\n{text}"
    );
    assert!(
        text.trim().is_empty(),
        "systemd-analyze verify warned:\n{text}"
    );
}

#[test]
fn the_unit_matches_wardd() {
    let u = unit();
    assert_eq!(values(&u, "Type"), ["notify"], "wardd sends READY=1");
    assert_eq!(values(&u, "NotifyAccess"), ["main"]);
    assert_eq!(values(&u, "ExecStart"), ["/usr/bin/wardd"]);
    assert_eq!(values(&u, "WatchdogSec").len(), 1, "wardd pings WATCHDOG=1");
    assert_eq!(values(&u, "FailureAction"), ["poweroff"]);
    assert_eq!(values(&u, "OOMScoreAdjust"), ["-997"]);
    // wardd exits 2 on a config error: restarting cannot fix it.
    assert_eq!(values(&u, "RestartPreventExitStatus"), ["2"]);
    let (code, _, err) = run_ward("wardd", &["--config", "/nonexistent/ward.toml"]);
    assert_eq!(code, 2, "{err}");
    // Settings that would break wardd stay off (see the unit's comments).
    for key in [
        "PrivateDevices",
        "ProtectKernelTunables",
        "RestrictSUIDSGID",
        "ProcSubset",
    ] {
        assert!(values(&u, key).is_empty(), "{key} breaks wardd");
    }

    // Under ProtectSystem=strict only the runtime directories are writable: every path the
    // default config writes must be inside one of them.
    assert_eq!(values(&u, "ProtectSystem"), ["strict"]);
    let dirs: Vec<String> = values(&u, "RuntimeDirectory")
        .join(" ")
        .split_whitespace()
        .map(|d| format!("/run/{d}/"))
        .collect();
    let (code, defaults, err) = run_ward("wardd", &["--print-default-config"]);
    assert_eq!(code, 0, "{err}");
    let mut written = Vec::new();
    for line in defaults.lines() {
        let line = line.trim();
        for key in ["path", "store", "eventlog", "address"] {
            if let Some(v) = line.strip_prefix(&format!("{key} = \"")) {
                let v = v.trim_end_matches('"');
                let v = v.strip_prefix("unix://").unwrap_or(v);
                if v.starts_with('/') {
                    written.push(v.to_string());
                }
            }
        }
    }
    assert!(written.len() >= 5, "parsed too few paths: {written:?}");
    for path in &written {
        assert!(
            dirs.iter().any(|d| path.starts_with(d.as_str())),
            "{path} (a wardd default) is outside the unit's RuntimeDirectory= {dirs:?}"
        );
    }
}
