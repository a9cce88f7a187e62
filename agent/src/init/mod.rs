//! PID-1 duties: early mounts, kernel modules from the initrd's list, the loopback interface
//! and an optional static address (`ward.net=`), reaping orphans, `oom_score_adj`, and powering
//! off (never exiting) on a stop request, a fatal error or a panic.
//!
//! Nothing here runs unless wardd really is PID 1 ([`is_pid1`]): a wardd started by systemd or
//! from a shell never mounts, reaps or powers anything off. As PID 1, wardd spawns children only
//! through [`spawn_owned`], which keeps the reaper from collecting their exit status first.

mod modules;
mod mounts;
mod net;
mod poweroff;
mod reaper;

pub use modules::{MODULES_LIST, ModuleError, ModuleReport, load_modules, parse_list};
pub use mounts::{MountError, MountReport, mount_early};
pub use net::{
    IfName, NetConfig, NetError, NetParseError, configure as configure_net, loopback_up,
};
pub use poweroff::{install_panic_hook, kmsg, power_off, terminate_all};
pub use reaper::{OwnedChild, reap_ready, spawn_owned, spawn_reaper};

/// Whether this process is PID 1 of its PID namespace.
pub fn is_pid1() -> bool {
    std::process::id() == 1
}

/// Sets this process's `oom_score_adj` (-1000 to 1000; lower is killed later).
pub fn set_oom_score_adj(value: i32) -> std::io::Result<()> {
    std::fs::write("/proc/self/oom_score_adj", value.to_string())
}
