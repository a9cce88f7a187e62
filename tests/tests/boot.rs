//! A real boot: Debian's kernel and an initrd with wardd as `/init` (`rootfs/build-initrd.sh`)
//! under `qemu-system-x86_64`. wardd mounts, loads its modules, reads `ward.*` from the kernel
//! command line, configures the NIC (`ward.net=`), attests with the sample TEE to the dev KBS
//! on this machine (10.0.2.2 in qemu's user network is the host's loopback), then its
//! self-check calls health on every ttrpc listener (vsock through `vsock_loopback`), asks an
//! encrypted-only inference listener on vsock what a remote client would (attestation, plaintext
//! refused, an encrypted request answered sealed), fetches a secret, pulls an encrypted image
//! from a registry on this machine (its key released by the KBS; this part is skipped when
//! docker-registry, skopeo or umoci are missing), and powers the guest off. The test reads the
//! serial console and fails on any panic, error or timeout; it prints boot-to-ready (kernel time
//! of wardd's READY) and the initrd size.
//!
//! KVM is used when /dev/kvm opens and the kernel starts under it; otherwise (or with
//! `WARD_BOOT_ACCEL=tcg`) software emulation. Skipped with a message when qemu, or the kernel
//! package and its tools, are missing (`just deps` installs them).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use ward_tests::bin;
use ward_tests::registry::{ImageBuilder, TestRegistry, image_tools};

/// The whole boot, kernel start to power-off, under software emulation on a slow machine.
const BOOT_TIMEOUT: Duration = Duration::from_secs(240);
/// How long KVM gets to print the kernel banner before the test falls back to emulation
/// (nested KVM can hang before the kernel prints anything).
const KVM_BANNER_TIMEOUT: Duration = Duration::from_secs(20);

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

fn have(cmd: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {cmd}")])
        .stdout(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

/// Why the boot cannot run here, if it cannot.
fn missing_tools() -> Option<String> {
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
struct Line {
    at: Duration,
    text: String,
}

/// Strips ANSI escapes (wardd's human log is coloured) and carriage returns.
fn plain(s: &str) -> String {
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
fn printk_time(line: &str) -> Option<f64> {
    let rest = line.trim_start().strip_prefix('[')?;
    let (t, _) = rest.split_once(']')?;
    t.trim().parse().ok()
}

struct Boot {
    lines: Vec<Line>,
    exit: Option<std::process::ExitStatus>,
    timed_out: bool,
    accel: &'static str,
}

fn spawn_qemu(accel: &str, kernel: &Path, initrd: &Path, append: &str) -> Child {
    let mut cmd = Command::new("qemu-system-x86_64");
    if accel == "kvm" {
        cmd.args(["-enable-kvm", "-cpu", "host"]);
    } else {
        cmd.args(["-accel", "tcg"]);
    }
    cmd.args(["-m", "512", "-smp", "2", "-no-reboot"])
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
        .args(["-append", append])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    cmd.spawn().expect("qemu-system-x86_64 starts")
}

/// Boots once; with `banner_timeout`, gives up early when the kernel prints nothing.
fn boot(
    accel: &'static str,
    kernel: &Path,
    initrd: &Path,
    append: &str,
    banner_timeout: Option<Duration>,
) -> Boot {
    let started = Instant::now();
    let mut child = spawn_qemu(accel, kernel, initrd, append);
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

fn kvm_usable() -> bool {
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .is_ok()
}

/// Kills the dev KBS on drop and gives its request counts.
struct KbsProcess {
    child: Child,
    url: String,
}

impl KbsProcess {
    fn start(dir: &Path, resources: &[(&str, &str)]) -> KbsProcess {
        let url_file = dir.join("kbs.url");
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
    fn stop(mut self) -> String {
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

#[test]
fn wardd_boots_as_init_attests_serves_and_powers_off() {
    if let Some(why) = missing_tools() {
        eprintln!("skipped: {why}");
        return;
    }
    let test_started = Instant::now();
    let work = tempfile::tempdir().unwrap();

    // An image whose layer is encrypted with a KEK only the KBS holds, in a registry on this
    // machine: the guest reaches it as 10.0.2.2:PORT, over plain HTTP (configured below).
    let kek = "0123456789abcdef0123456789abcdef"; // 32 bytes
    let registry = match image_tools() {
        Ok(()) => {
            let reg = TestRegistry::start();
            let img = ImageBuilder::new("v1");
            std::fs::write(img.rootfs().join("hello"), "from an encrypted image\n").unwrap();
            img.layer();
            img.encrypt_for_key_provider("kbs:///default/image-kek/boot", kek.as_bytes());
            reg.push(&img.layout, "v1", "boot/secret-app");
            let guest_ref = format!("10.0.2.2:{}/boot/secret-app:v1", reg.port);
            Some((reg, img, guest_ref))
        }
        Err(skip) => {
            eprintln!("image pull part {skip}");
            None
        }
    };
    let config = work.path().join("ward.toml");
    let insecure = registry
        .as_ref()
        .map(|(r, _, _)| format!("\"10.0.2.2:{}\"", r.port))
        .unwrap_or_default();
    std::fs::write(
        &config,
        format!("[images]\ninsecure_registries = [{insecure}]\n"),
    )
    .unwrap();

    // The initrd, from the wardd this test run built (stripped by the script).
    let out = Command::new(repo_root().join("rootfs/build-initrd.sh"))
        .arg("--wardd")
        .arg(bin("wardd"))
        .arg("--out")
        .arg(work.path())
        .arg("--config")
        .arg(&config)
        .output()
        .unwrap();
    let build_log = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "build-initrd.sh failed:\n{build_log}");
    let kernel = work.path().join("vmlinuz");
    let initrd = work.path().join("initrd.img");
    let initrd_size = std::fs::metadata(&initrd).unwrap().len();
    let build_time = test_started.elapsed();

    // A secret the guest can only get by attesting; it must never show on the console.
    let secret = format!("boot-secret-{}", hex::encode(rand::random::<[u8; 12]>()));
    let kbs = KbsProcess::start(
        work.path(),
        &[
            ("default/key/boot", &secret),
            ("default/image-kek/boot", kek),
        ],
    );
    let port = kbs.url.rsplit(':').next().unwrap().to_string();
    let mut append = format!(
        "console=ttyS0 panic=-1 loglevel=6 \
         ward.tee=sample ward.allow_sample=true ward.kbs_url=http://10.0.2.2:{port} \
         ward.net=eth0:10.0.2.15/24:10.0.2.2 ward.log_level=info \
         ward.self_check=poweroff ward.self_check_resource=kbs:///default/key/boot \
         ward.listen=unix:///run/ward/ward.sock#all ward.listen=vsock://-1:1030#health \
         ward.listen=vsock://-1:1031#inference"
    );
    if let Some((_, _, guest_ref)) = &registry {
        append.push_str(&format!(" ward.self_check_image={guest_ref}"));
    }

    let wanted = std::env::var("WARD_BOOT_ACCEL").unwrap_or_default();
    let mut result = if wanted != "tcg" && kvm_usable() {
        let b = boot("kvm", &kernel, &initrd, &append, Some(KVM_BANNER_TIMEOUT));
        let banner = b.lines.iter().any(|l| l.text.contains("Linux version"));
        if banner || wanted == "kvm" {
            b
        } else {
            eprintln!(
                "KVM: no kernel banner within {KVM_BANNER_TIMEOUT:?} (nested KVM?); \
                 booting under TCG instead"
            );
            boot("tcg", &kernel, &initrd, &append, None)
        }
    } else {
        boot("tcg", &kernel, &initrd, &append, None)
    };
    let kbs_out = kbs.stop();
    let console: Vec<String> = result.lines.iter().map(|l| l.text.clone()).collect();
    let dump = || console.join("\n");

    assert!(
        !result.timed_out,
        "no power-off within {BOOT_TIMEOUT:?} ({}); console:\n{}",
        result.accel,
        dump()
    );
    for bad in [
        "Kernel panic",
        "panicked",
        " ERROR ",
        "self-check failed",
        "Failed to execute /init",
        "unable to open an initial console",
    ] {
        assert!(
            !console.iter().any(|l| l.contains(bad)),
            "the console shows `{bad}`:\n{}",
            dump()
        );
    }
    assert!(
        !console
            .iter()
            .any(|l| l.contains(&secret) || l.contains(kek)),
        "a secret's value reached the console"
    );
    let has = |needle: &str| console.iter().any(|l| l.contains(needle));
    for needle in [
        "network configured net=eth0:10.0.2.15/24:10.0.2.2",
        "attestation ready tee=sample",
        "self-check: health answered SERVING addr=vsock://1:1030",
        "self-check: encrypted inference answered addr=vsock://1:1031 encrypted_only=true",
        "attested to the KBS",
        "self-check: resource released by the KBS uri=kbs:///default/key/boot",
        "wardd: self-check passed",
        "wardd: powering off: stopped",
        "reboot: Power down",
    ] {
        assert!(has(needle), "the console lacks `{needle}`:\n{}", dump());
    }
    // READY is logged twice at the same instant: wardd's log line on stderr and `wardd: ready`
    // through /dev/kmsg. Both reach the same serial console, and the kernel's line can land in
    // the middle of wardd's, so either one whole is proof.
    assert!(
        has("wardd ready version=") || has("wardd: ready"),
        "the console lacks wardd's ready line:\n{}",
        dump()
    );
    assert!(
        result.exit.is_some_and(|s| s.success()),
        "qemu ended with {:?}",
        result.exit
    );
    let resources = if let Some((_, _, guest_ref)) = &registry {
        // The layer's key came from the KBS and the layer decrypted and verified in the guest.
        for needle in [
            format!("self-check: image pulled image={guest_ref}"),
            "encrypted_layers=1".to_string(),
        ] {
            assert!(has(&needle), "the console lacks `{needle}`:\n{}", dump());
        }
        2
    } else {
        1
    };
    assert!(
        kbs_out.contains(&format!("{resources} resource requests")),
        "the dev KBS did not serve {resources} resources: {kbs_out}"
    );

    // Kernel start to READY, by the kernel's own clock (wardd writes READY to /dev/kmsg).
    let ready = result
        .lines
        .iter_mut()
        .find(|l| l.text.contains("wardd: ready"))
        .expect("wardd's READY line on the console");
    let boot_to_ready = printk_time(&ready.text).expect("a printk timestamp on the READY line");
    let ready_wall = ready.at;
    let kernel_wall = result
        .lines
        .iter()
        .find(|l| l.text.contains("Linux version"))
        .map(|l| l.at);
    drop(registry);
    eprintln!(
        "boot ({}): kernel start to wardd READY {boot_to_ready:.3} s (printk clock); \
         qemu start to READY {:.2} s wall (kernel banner at {:.2} s); initrd {} bytes ({} KiB); \
         initrd build {:.1} s; test {:.1} s",
        result.accel,
        ready_wall.as_secs_f64(),
        kernel_wall.map_or(f64::NAN, |d| d.as_secs_f64()),
        initrd_size,
        initrd_size / 1024,
        build_time.as_secs_f64(),
        test_started.elapsed().as_secs_f64(),
    );
}

#[test]
fn console_parsing() {
    assert_eq!(
        plain("\u{1b}[2m2026\u{1b}[0m \u{1b}[32m INFO\u{1b}[0m x\r"),
        "2026  INFO x"
    );
    assert_eq!(
        printk_time("[    9.090721] reboot: Power down"),
        Some(9.090721)
    );
    assert_eq!(printk_time("wardd: ready"), None);
}
