//! Reaping: as PID 1, every orphan in the guest becomes wardd's child, and each must be waited
//! for or it stays a zombie forever.
//!
//! wardd's own children (the tools SecureMount runs) are waited for by whoever spawned them:
//! [`spawn_owned`] records them, and the reaper leaves them alone. It finds zombies by reading
//! `/proc` (state `Z`, parent wardd) instead of `waitpid(-1)`, which would take the exit status
//! of an owned child from under its waiter (`ECHILD` there).

use std::collections::BTreeSet;
use std::sync::Mutex;

use nix::sys::wait::{WaitPidFlag, waitpid};
use nix::unistd::Pid;

/// Children whose exit status belongs to their spawner. Held across `fork`, so a child cannot
/// exit and be reaped before it is recorded.
static OWNED: Mutex<BTreeSet<i32>> = Mutex::new(BTreeSet::new());

/// A spawned child that the reaper leaves to its spawner; dropped once it has been waited for.
pub struct OwnedChild {
    pid: Option<i32>,
}

impl Drop for OwnedChild {
    fn drop(&mut self) {
        if let (Some(pid), Ok(mut owned)) = (self.pid, OWNED.lock()) {
            owned.remove(&pid);
        }
    }
}

/// Spawns `cmd` as an owned child: wait for it with tokio as usual, then drop the guard.
pub fn spawn_owned(
    cmd: &mut tokio::process::Command,
) -> std::io::Result<(tokio::process::Child, OwnedChild)> {
    let mut owned = OWNED
        .lock()
        .map_err(|_| std::io::Error::other("the owned-children list is poisoned"))?;
    let child = cmd.spawn()?;
    let pid = child.id().and_then(|p| i32::try_from(p).ok());
    if let Some(p) = pid {
        owned.insert(p);
    }
    Ok((child, OwnedChild { pid }))
}

/// The zombies among this process's children, from `/proc/PID/stat` (`pid (comm) S ppid …`;
/// `comm` may hold spaces and parentheses, so fields are read after its last `)`).
fn zombie_children() -> Vec<i32> {
    let me = std::process::id();
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|e| e.ok())
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .ok()
                .and_then(|stat| {
                    let rest = stat.rsplit_once(')')?.1;
                    let mut f = rest.split_whitespace();
                    let state = f.next()?;
                    let ppid = f.next()?.parse::<u32>().ok()?;
                    Some(state == "Z" && ppid == me)
                })
                .unwrap_or(false)
        })
        .collect()
}

/// Collects every child that has exited, except owned ones; returns how many were reaped.
pub fn reap_ready() -> usize {
    reap(None)
}

/// [`reap_ready`], limited to `only` when given (tests share their process with other tests).
fn reap(only: Option<&[i32]>) -> usize {
    let Ok(owned) = OWNED.lock() else {
        return 0;
    };
    let mut reaped = 0;
    for pid in zombie_children() {
        if owned.contains(&pid) || only.is_some_and(|o| !o.contains(&pid)) {
            continue;
        }
        if let Ok(status) = waitpid(Pid::from_raw(pid), Some(WaitPidFlag::WNOHANG)) {
            reaped += 1;
            tracing::debug!(?status, "reaped a child");
        }
    }
    reaped
}

/// Reaps on every SIGCHLD for as long as the runtime lives. Must run inside a tokio runtime.
pub fn spawn_reaper() -> std::io::Result<tokio::task::JoinHandle<()>> {
    let mut sigchld = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::child())?;
    Ok(tokio::spawn(async move {
        // Children that exited before the handler was installed.
        reap_ready();
        while sigchld.recv().await.is_some() {
            reap_ready();
        }
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn owned_children_keep_their_exit_status_and_orphans_are_reaped() {
        // An unowned child that exits: the reaper collects it.
        let stray = std::process::Command::new("/bin/true").spawn().unwrap();
        let stray_pid = i32::try_from(stray.id()).unwrap();
        std::mem::forget(stray);
        // An owned child that exits at once: its waiter still gets the status.
        let (child, guard) =
            spawn_owned(tokio::process::Command::new("/bin/sh").args(["-c", "exit 3"])).unwrap();
        std::thread::sleep(std::time::Duration::from_millis(200));
        let owned_pid = i32::try_from(child.id().unwrap()).unwrap();
        let mut seen = false;
        for _ in 0..50 {
            reap(Some(&[stray_pid, owned_pid]));
            if !zombie_children().contains(&stray_pid) {
                seen = true;
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        assert!(seen, "the stray child was not reaped");
        let out = child.wait_with_output().await.unwrap();
        assert_eq!(out.status.code(), Some(3));
        drop(guard);
    }
}
