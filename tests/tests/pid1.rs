//! wardd as PID 1 of new PID and mount namespaces (`unshare --pid --mount --fork
//! --mount-proc`), so its mounts never touch this machine's: it must reap every orphan that
//! lands on it, and on SIGTERM stop every other process and power the namespace off
//! (`reboot(RB_POWER_OFF)` from PID 1 of a child PID namespace ends that namespace only: the
//! kernel kills its init with SIGINT, which `unshare` passes on).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::os::unix::process::ExitStatusExt;
use std::process::Command;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use ward_tests::{Wardd, config_text, is_root, run_ward};

/// (pid, ppid, state) of every process, read from /proc/<pid>/stat.
fn processes() -> Vec<(i32, i32, char)> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        // The command name is in parentheses and may hold spaces: parse after the last ')'.
        let Some(rest) = stat.rsplit_once(')').map(|(_, r)| r) else {
            continue;
        };
        let mut fields = rest.split_whitespace();
        let state = fields.next().and_then(|s| s.chars().next()).unwrap_or('?');
        let ppid = fields.next().and_then(|s| s.parse().ok()).unwrap_or(0);
        out.push((pid, ppid, state));
    }
    out
}

fn children_of(pid: i32) -> Vec<(i32, char)> {
    processes()
        .into_iter()
        .filter(|&(_, ppid, _)| ppid == pid)
        .map(|(p, _, s)| (p, s))
        .collect()
}

fn wait_until(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    let until = Instant::now() + timeout;
    while !f() {
        assert!(Instant::now() < until, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Runs `script` with sh inside wardd's PID and mount namespaces; sh exits at once, so what it
/// starts in the background is orphaned onto wardd.
fn orphan_into(wardd_pid: i32, script: &str) {
    let status = Command::new("nsenter")
        .args([
            "-t",
            &wardd_pid.to_string(),
            "--pid",
            "--mount",
            "--",
            "sh",
            "-c",
            script,
        ])
        .status()
        .unwrap();
    assert!(status.success());
}

#[test]
fn wardd_as_pid1_reaps_orphans_and_powers_off_on_sigterm() {
    if !is_root() {
        eprintln!("skipped: needs root for unshare --pid --mount (CI runs as root)");
        return;
    }
    if Command::new("unshare")
        .args(["--pid", "--mount", "--fork", "--mount-proc", "true"])
        .status()
        .map(|s| !s.success())
        .unwrap_or(true)
    {
        eprintln!("skipped: this sandbox does not allow new PID and mount namespaces");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let config = config_text(dir.path(), &["health"]);
    let mut w = Wardd::start_with(
        dir,
        &config,
        "ward.oom_score_adj=123",
        &["unshare", "--pid", "--mount", "--fork", "--mount-proc"],
    );
    let unshare_pid = w.child.id() as i32;
    let kids = children_of(unshare_pid);
    assert_eq!(kids.len(), 1, "unshare has one child, wardd: {kids:?}");
    let wardd = kids[0].0;

    // wardd knows it is PID 1 and took its PID-1 duties. (The oom_score_adj is raised, not
    // lowered: lowering needs CAP_SYS_RESOURCE, which some sandboxes withhold even from root.)
    let (code, out, _) = run_ward("ward", &["health", "--addr", &w.addr]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("mode=pid1"), "{out}");
    let adj = std::fs::read_to_string(format!("/proc/{wardd}/oom_score_adj")).unwrap();
    assert_eq!(adj.trim(), "123");

    // Orphans land on wardd; when they die it reaps them, leaving no zombie.
    orphan_into(wardd, "sleep 300 & sleep 300 & sleep 300 & exit 0");
    wait_until("three orphans under wardd", Duration::from_secs(5), || {
        children_of(wardd).len() == 3
    });
    let orphans = children_of(wardd);
    for (pid, _) in &orphans {
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(*pid), Signal::SIGKILL).unwrap();
    }
    wait_until(
        "the killed orphans to be reaped",
        Duration::from_secs(5),
        || children_of(wardd).is_empty(),
    );
    // Short-lived orphans that exit by themselves are reaped too.
    orphan_into(
        wardd,
        "for i in 1 2 3 4 5; do (sleep 0.05 &) ; done; exit 0",
    );
    std::thread::sleep(Duration::from_millis(300));
    let zombies: Vec<_> = children_of(wardd)
        .into_iter()
        .filter(|&(_, s)| s == 'Z')
        .collect();
    assert!(zombies.is_empty(), "zombies left: {zombies:?}");

    // A process still running at stop time is terminated; then the namespace powers off.
    orphan_into(wardd, "sleep 300 & exit 0");
    wait_until("a survivor under wardd", Duration::from_secs(5), || {
        children_of(wardd).len() == 1
    });
    let survivor = children_of(wardd)[0].0;
    // unshare does not forward signals: send SIGTERM to wardd itself, as a guest's
    // shutdown path would.
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(wardd), Signal::SIGTERM).unwrap();
    let status = w.wait(Duration::from_secs(20));
    assert_eq!(
        status.signal(),
        Some(libc::SIGINT),
        "powering off a PID namespace kills its init with SIGINT; got {status:?}\nstderr:\n{}",
        w.stderr()
    );
    let stderr = w.stderr();
    assert!(stderr.contains("wardd: powering off: stopped"), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(
        !std::path::Path::new(&format!("/proc/{survivor}")).exists(),
        "the survivor was stopped with the namespace"
    );
}
