//! Reaping: as PID 1, every orphan in the guest becomes wardd's child, and each must be waited
//! for or it stays a zombie forever.

use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::Pid;

/// Collects every child that has exited; returns how many were reaped.
pub fn reap_ready() -> usize {
    let mut reaped = 0;
    loop {
        match waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::StillAlive) | Err(_) => return reaped,
            Ok(status) => {
                reaped += 1;
                tracing::debug!(?status, "reaped a child");
            }
        }
    }
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
