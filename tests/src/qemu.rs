//! Real guests for the tests: Debian's kernel and a wardd initrd (`rootfs/build-initrd.sh`)
//! under `qemu-system-x86_64`, with the serial console read line by line, and the dev KBS they
//! attest to.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use crate::bin;

/// The whole boot, kernel start to power-off, under software emulation on a slow machine.
pub const BOOT_TIMEOUT: Duration = Duration::from_secs(240);
/// How long KVM gets to print the kernel banner before the test falls back to emulation
/// (nested KVM can hang before the kernel prints anything).
pub const KVM_BANNER_TIMEOUT: Duration = Duration::from_secs(20);
/// The guest's memory unless a test asks for another size.
pub const GUEST_MEMORY_MIB: u32 = 512;

pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

pub fn have(cmd: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {cmd}")])
        .stdout(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

/// Why the boot cannot run here, if it cannot.
pub fn missing_tools() -> Option<String> {
    for (cmd, package) in [
        ("qemu-system-x86_64", "qemu-system-x86"),
        ("cpio", "cpio"),
        ("depmod", "kmod"),
        ("dpkg-deb", "dpkg"),
        ("apt-get", "apt"),
    ] {
        if !have(cmd) {
            return Some(format!(
                "{cmd} is missing (Debian package {package}; `just deps`)"
            ));
        }
    }
    let cache = std::env::var_os("WARD_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join(".work/cache"));
    let cached = std::fs::read_dir(cache.join("kernel"))
        .map(|mut d| d.next().is_some())
        .unwrap_or(false);
    let known = Command::new("apt-cache")
        .args(["show", "linux-image-amd64"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    if !cached && !known {
        return Some(
            "the kernel package linux-image-amd64 is unknown to apt (apt-get update?) and not cached"
                .to_string(),
        );
    }
    None
}

/// A console line with the time it arrived (since qemu started).
pub struct Line {
    pub at: Duration,
    pub text: String,
}

/// Strips ANSI escapes (wardd's human log is coloured) and carriage returns.
pub fn plain(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            if chars.peek() == Some(&'[') {
                chars.next();
                for c in chars.by_ref() {
                    if c.is_ascii_alphabetic() {
                        break;
                    }
                }
            }
            continue;
        }
        if c != '\r' {
            out.push(c);
        }
    }
    out
}

/// The printk timestamp of a console line (`[    1.234567] ...`), in seconds.
pub fn printk_time(line: &str) -> Option<f64> {
    let rest = line.trim_start().strip_prefix('[')?;
    let (t, _) = rest.split_once(']')?;
    t.trim().parse().ok()
}

pub struct Boot {
    pub lines: Vec<Line>,
    pub exit: Option<std::process::ExitStatus>,
    pub timed_out: bool,
    pub accel: &'static str,
}

/// Starts qemu with the guest's serial console on stdout and `memory_mib` of memory; `disks`
/// become virtio disks (`vda`, `vdb`, … in order), raw, written through to the file.
pub fn spawn_qemu(
    accel: &str,
    kernel: &Path,
    initrd: &Path,
    append: &str,
    disks: &[PathBuf],
    memory_mib: u32,
) -> Child {
    let mut cmd = Command::new("qemu-system-x86_64");
    if accel == "kvm" {
        cmd.args(["-enable-kvm", "-cpu", "host"]);
    } else {
        // TCG's default CPU (qemu64) has neither SHA nor AES instructions, nor AVX2: a pull's
        // hashing and decompression would run their slowest fallbacks, emulated.
        cmd.args(["-accel", "tcg", "-cpu", "max"]);
    }
    cmd.args(["-m", &memory_mib.to_string(), "-smp", "2", "-no-reboot"])
        .args(["-display", "none", "-monitor", "none", "-serial", "stdio"])
        .args([
            "-netdev",
            "user,id=n0",
            "-device",
            "virtio-net-pci,netdev=n0",
        ])
        .arg("-kernel")
        .arg(kernel)
        .arg("-initrd")
        .arg(initrd)
        .args(["-append", append]);
    for (i, d) in disks.iter().enumerate() {
        cmd.arg("-drive")
            .arg(format!(
                "file={},if=none,id=disk{i},format=raw,cache=writethrough",
                d.display()
            ))
            .args(["-device", &format!("virtio-blk-pci,drive=disk{i}")]);
    }
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    cmd.spawn().expect("qemu-system-x86_64 starts")
}

/// Boots once; with `banner_timeout`, gives up early when the kernel prints nothing.
pub fn boot(
    accel: &'static str,
    kernel: &Path,
    initrd: &Path,
    append: &str,
    disks: &[PathBuf],
    memory_mib: u32,
    banner_timeout: Option<Duration>,
) -> Boot {
    let started = Instant::now();
    let mut child = spawn_qemu(accel, kernel, initrd, append, disks, memory_mib);
    let (tx, rx) = mpsc::channel();
    let stdout = child.stdout.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut r = BufReader::new(stdout);
        let mut buf = Vec::new();
        loop {
            buf.clear();
            match r.read_until(b'\n', &mut buf) {
                Ok(0) | Err(_) => return,
                Ok(_) => {
                    let text = plain(&String::from_utf8_lossy(&buf));
                    if tx
                        .send(Line {
                            at: started.elapsed(),
                            text: text.trim_end().to_string(),
                        })
                        .is_err()
                    {
                        return;
                    }
                }
            }
        }
    });
    let mut lines = Vec::new();
    let mut timed_out = false;
    let mut banner = false;
    loop {
        match rx.recv_timeout(Duration::from_millis(200)) {
            Ok(line) => {
                banner |= line.text.contains("Linux version");
                lines.push(line);
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
            Err(mpsc::RecvTimeoutError::Timeout) => {}
        }
        let late = match banner_timeout {
            Some(t) if !banner => started.elapsed() > t,
            _ => started.elapsed() > BOOT_TIMEOUT,
        };
        if late {
            timed_out = true;
            let _ = child.kill();
            break;
        }
    }
    let exit = child.wait().ok();
    let _ = reader.join();
    if !timed_out {
        lines.extend(rx.try_iter());
    }
    let mut stderr = String::new();
    if let Some(mut e) = child.stderr.take() {
        let _ = e.read_to_string(&mut stderr);
    }
    for l in stderr.lines().filter(|l| !l.trim().is_empty()) {
        lines.push(Line {
            at: started.elapsed(),
            text: format!("qemu stderr: {l}"),
        });
    }
    Boot {
        lines,
        exit,
        timed_out,
        accel,
    }
}

pub fn kvm_usable() -> bool {
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .is_ok()
}

/// Kills the dev KBS on drop and gives its request counts.
pub struct KbsProcess {
    child: Child,
    pub url: String,
}

impl KbsProcess {
    pub fn start(dir: &Path, resources: &[(&str, &str)]) -> KbsProcess {
        let url_file = dir.join("kbs.url");
        // A KBS started before in `dir` left its address there.
        let _ = std::fs::remove_file(&url_file);
        let mut cmd = Command::new(bin("dev-kbs"));
        cmd.args(["--listen", "127.0.0.1:0", "--url-file"])
            .arg(&url_file);
        for (path, value) in resources {
            cmd.args(["--resource", &format!("{path}={value}")]);
        }
        let child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let until = Instant::now() + Duration::from_secs(10);
        let url = loop {
            if let Ok(u) = std::fs::read_to_string(&url_file)
                && !u.is_empty()
            {
                break u;
            }
            assert!(Instant::now() < until, "dev-kbs did not start");
            std::thread::sleep(Duration::from_millis(20));
        };
        KbsProcess { child, url }
    }

    /// Stops it; returns what it printed (its request counts are on the last line).
    pub fn stop(mut self) -> String {
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let mut out = String::new();
        if let Some(mut s) = self.child.stdout.take() {
            let _ = s.read_to_string(&mut out);
        }
        let _ = self.child.wait();
        out
    }
}

impl Drop for KbsProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Set once KVM printed no banner: the same machine will not print one for a later boot either.
static KVM_SILENT: AtomicBool = AtomicBool::new(false);

/// Boots under KVM when it works (falling back to emulation when nested KVM prints no banner),
/// else under emulation; `WARD_BOOT_ACCEL=tcg|kvm` forces one.
pub fn boot_any(kernel: &Path, initrd: &Path, append: &str, disks: &[PathBuf]) -> Boot {
    boot_any_with_memory(kernel, initrd, append, disks, GUEST_MEMORY_MIB)
}

/// [`boot_any`] with `memory_mib` of guest memory.
pub fn boot_any_with_memory(
    kernel: &Path,
    initrd: &Path,
    append: &str,
    disks: &[PathBuf],
    memory_mib: u32,
) -> Boot {
    let wanted = std::env::var("WARD_BOOT_ACCEL").unwrap_or_default();
    if wanted != "tcg" && kvm_usable() && !KVM_SILENT.load(Ordering::Relaxed) {
        let b = boot(
            "kvm",
            kernel,
            initrd,
            append,
            disks,
            memory_mib,
            Some(KVM_BANNER_TIMEOUT),
        );
        let banner = b.lines.iter().any(|l| l.text.contains("Linux version"));
        if banner || wanted == "kvm" {
            return b;
        }
        eprintln!(
            "KVM: no kernel banner within {KVM_BANNER_TIMEOUT:?} (nested KVM?); \
             booting under TCG instead, and so for this test binary's later boots"
        );
        KVM_SILENT.store(true, Ordering::Relaxed);
    }
    boot("tcg", kernel, initrd, append, disks, memory_mib, None)
}
