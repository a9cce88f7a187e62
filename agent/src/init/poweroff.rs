//! Ending the guest: as PID 1 wardd must never exit (the kernel would panic), so a stop request,
//! a fatal error and a panic all end in a sync and a power-off.

use std::io::Write;
use std::time::{Duration, Instant};

use nix::sys::reboot::{RebootMode, reboot};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use super::reaper::reap_ready;

/// Asks every other process to stop (SIGTERM), waits up to `grace` while reaping, then kills
/// what is left (SIGKILL) and reaps it.
pub fn terminate_all(grace: Duration) {
    if kill(Pid::from_raw(-1), Signal::SIGTERM).is_err() {
        // ESRCH: there is nobody else.
        return;
    }
    let until = Instant::now() + grace;
    while Instant::now() < until {
        reap_ready();
        // With no process left, kill(-1, 0) fails with ESRCH.
        if kill(Pid::from_raw(-1), None).is_err() {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = kill(Pid::from_raw(-1), Signal::SIGKILL);
    std::thread::sleep(Duration::from_millis(20));
    reap_ready();
}

/// Syncs filesystems and powers the machine (or this PID namespace) off. Never returns: if the
/// kernel refuses, wardd aborts, which as PID 1 ends the guest too.
pub fn power_off(reason: &str) -> ! {
    let _ = writeln!(std::io::stderr(), "wardd: powering off: {reason}");
    kmsg(2, &format!("wardd: powering off: {reason}"));
    nix::unistd::sync();
    let err = reboot(RebootMode::RB_POWER_OFF);
    let _ = writeln!(
        std::io::stderr(),
        "wardd: power-off failed ({err:?}); aborting"
    );
    std::process::abort()
}

/// Writes a line to the kernel log at `level` (0 emergency to 7 debug), so it survives a
/// console that is not read and carries the kernel's timestamp. Best effort.
///
/// One `write` makes one kernel record, so the line is formatted first and written once (written
/// piece by piece, `<`, `5`, `>` and the text were four records). When stderr is the console's
/// terminal, what wardd logged there is drained first: the kernel prints its record straight to
/// the console, and on a slow serial line it landed inside a log line still being sent.
pub fn kmsg(level: u8, line: &str) {
    let record = format!("<{}>{line}\n", level.min(7));
    if let Ok(mut f) = std::fs::OpenOptions::new().write(true).open("/dev/kmsg") {
        let stderr = std::io::stderr();
        let _ = stderr.lock().flush();
        let _ = nix::sys::termios::tcdrain(&stderr);
        let _ = f.write_all(record.as_bytes());
    }
}

/// Makes any panic sync and power off instead of unwinding or exiting.
pub fn install_panic_hook() {
    std::panic::set_hook(Box::new(|info| {
        let msg = format!("wardd panicked: {info}");
        let _ = writeln!(std::io::stderr(), "{msg}");
        power_off(&msg);
    }));
}
