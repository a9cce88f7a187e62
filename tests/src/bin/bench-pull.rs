//! Image pull figures with a baseline from the same run: a many-layer image (default 20 layers
//! of 8 MiB, each a random 6 MiB file and a compressible 2 MiB one, gzip) from a local
//! `docker-registry`, plain and JWE-encrypted (RSA), pulled by N processes at once (default 4)
//! into directories on /dev/shm (a tmpfs, as a guest's memory).
//!
//! - ward: `ward pull` (pull + verify + decrypt + unpack into a bundle), one process per pull.
//! - baseline, by default: `skopeo copy` (with `--decryption-key` for the encrypted one) into an
//!   `oci:` layout, then `umoci unpack` of it into a bundle, per pull.
//! - baseline with `--image-rs-bin PATH`: CoCo's image-rs instead, the pull that CoCo's
//!   confidential-data-hub does in a guest, through `imagers-pull` (a standalone binary around
//!   guest-components' `ImageClient::pull_image`, built by `scripts/build-imagers-pull.sh`), one
//!   process per pull with a fresh work dir (image-rs's layer store and meta store) and bundle
//!   dir in the round's tmpfs directory, so the bytes left count image-rs's store too. image-rs's
//!   only snapshotter is overlay, so this needs root: each bundle's `rootfs` is an overlay mount
//!   of the unpacked layers in the work dir, which `du -x` leaves out (the layers under it are
//!   counted once, in the work dir) and which is unmounted before the round's directory goes.
//!
//! Rounds alternate which side goes first. Per round: wall of the N pulls, CPU (user + system of
//! every process), the largest peak RSS of one process, and the bytes left on the tmpfs after
//! the pulls (allocated, `du -x -B1`). Medians over the rounds, and ward / baseline ratios. The
//! table's baseline column names the baseline that ran.
//!
//! First, `--sweep` times one ward pull at each layer concurrency (1, 2, 4, 8), alternating,
//! and the comparison runs at the fastest (or at `--concurrency`).
//!
//! `--cpus LIST` runs every measured process, both sides (and the sweep), under
//! `taskset -c LIST`, for a figure on fewer cores than the machine has (`--cpus 0`: one core).
//!
//! Run on release builds: `just bench-pull` (arguments: `--layers`, `--layer-mib`, `--pulls`,
//! `--rounds`, `--sweep`, `--concurrency`, `--ward-bin PATH` for another binary taking
//! `ward pull`'s arguments, such as ward-image's `pull` example, `--image-rs-bin PATH` and
//! `--cpus LIST`).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::Read;
use std::path::Path;
use std::process::Command;
use std::time::Instant;

use ward_tests::bin;
use ward_tests::registry::{ImageBuilder, TestRegistry, image_tools, rsa_keypair};

#[derive(Clone, Copy, Default, Debug)]
struct Figures {
    wall: f64,
    cpu: f64,
    peak_kib: u64,
    left: u64,
}

/// A table row: its label, the figure, its scale and unit.
type Row = (&'static str, fn(&Figures) -> f64, f64, &'static str);

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Runs `cmd` under `/usr/bin/time`, behind `pin` (`taskset -c LIST`, or nothing): (CPU
/// seconds, peak RSS KiB). taskset execs the command, so the figures are the command's.
fn timed(cmd: &[String], pin: &[String], dir: &Path) -> (f64, u64) {
    let out = dir.join(format!("time-{:016x}", rand::random::<u64>()));
    let status = Command::new("/usr/bin/time")
        .args(["-f", "%U %S %M", "-o"])
        .arg(&out)
        .args(pin)
        .args(cmd)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .output()
        .unwrap();
    assert!(
        status.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&status.stderr)
    );
    let text = std::fs::read_to_string(&out).unwrap();
    let _ = std::fs::remove_file(&out);
    let f: Vec<&str> = text.split_whitespace().rev().take(3).collect();
    let (rss, sys, user) = (f[0], f[1], f[2]);
    (
        user.parse::<f64>().unwrap() + sys.parse::<f64>().unwrap(),
        rss.parse().unwrap(),
    )
}

/// Bytes allocated under `dir`, on its file system only (`-x`): an overlay mounted under it (an
/// image-rs bundle's rootfs) shows files whose bytes are already counted in the layers under it.
fn du(dir: &Path) -> u64 {
    let out = Command::new("du")
        .arg("-x")
        .arg("-sB1")
        .arg(dir)
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap()
        .parse()
        .unwrap()
}

/// Unmounts every mount below `root` (image-rs leaves each bundle's rootfs an overlay mount),
/// deepest first, so that the directory can go.
fn unmount_below(root: &Path) {
    let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap();
    let mut below: Vec<&str> = mounts
        .lines()
        .filter_map(|l| l.split_whitespace().nth(1))
        .filter(|m| Path::new(m).starts_with(root))
        .collect();
    below.sort_by_key(|m| std::cmp::Reverse(m.len()));
    for m in below {
        nix::mount::umount(m).unwrap_or_else(|e| panic!("umount {m}: {e}"));
    }
}

/// Runs `pulls` pulls at once, each a sequence of commands made by `make(i, dir)`, each command
/// behind `pin`.
fn group(
    pulls: usize,
    work: &Path,
    pin: &[String],
    make: &(dyn Fn(&Path) -> Vec<Vec<String>> + Sync),
) -> Figures {
    let root = work.join(format!("g-{:016x}", rand::random::<u64>()));
    std::fs::create_dir_all(&root).unwrap();
    let t = Instant::now();
    let results: Vec<(f64, u64)> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..pulls)
            .map(|i| {
                let dir = root.join(format!("p{i}"));
                std::fs::create_dir_all(&dir).unwrap();
                s.spawn(move || {
                    let mut cpu = 0.0;
                    let mut peak = 0;
                    for cmd in make(&dir) {
                        let (c, p) = timed(&cmd, pin, &dir);
                        cpu += c;
                        peak = peak.max(p);
                    }
                    (cpu, peak)
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let wall = t.elapsed().as_secs_f64();
    let left = du(&root);
    unmount_below(&root);
    std::fs::remove_dir_all(&root).unwrap();
    Figures {
        wall,
        cpu: results.iter().map(|r| r.0).sum(),
        peak_kib: results.iter().map(|r| r.1).max().unwrap_or(0),
        left,
    }
}

fn s(p: &Path) -> String {
    p.display().to_string()
}

fn main() {
    if let Err(skip) = image_tools() {
        eprintln!("{skip}");
        return;
    }
    assert!(Path::new("/usr/bin/time").exists(), "needs /usr/bin/time");
    let (mut layers, mut layer_mib, mut pulls, mut rounds) = (20usize, 8usize, 4usize, 5usize);
    let (mut sweep, mut concurrency, mut ward_bin) = (false, None::<usize>, None);
    let (mut image_rs_bin, mut cpus) = (None::<std::path::PathBuf>, None::<String>);
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut num = || args.next().unwrap().parse::<usize>().unwrap();
        match a.as_str() {
            "--layers" => layers = num(),
            "--layer-mib" => layer_mib = num(),
            "--pulls" => pulls = num(),
            "--rounds" => rounds = num(),
            "--concurrency" => concurrency = Some(num()),
            "--sweep" => sweep = true,
            // Another binary taking `ward pull`'s arguments (ward-image's `pull` example).
            "--ward-bin" => ward_bin = args.next().map(std::path::PathBuf::from),
            // CoCo's image-rs as the baseline: `imagers-pull --work-dir DIR --bundle DIR
            // [--decryption-key PEM] IMAGE` (scripts/build-imagers-pull.sh builds it).
            "--image-rs-bin" => image_rs_bin = args.next().map(std::path::PathBuf::from),
            // Every measured process under `taskset -c LIST`.
            "--cpus" => cpus = args.next(),
            other => panic!("unknown argument {other}"),
        }
    }
    if let Some(b) = &image_rs_bin {
        assert!(b.exists(), "{} is missing", b.display());
        assert!(
            ward_tests::is_root(),
            "--image-rs-bin needs root: image-rs mounts each bundle's rootfs as an overlay"
        );
    }
    let pin: Vec<String> = match &cpus {
        Some(list) => vec!["taskset".into(), "-c".into(), list.clone()],
        None => Vec::new(),
    };
    let baseline_name = if image_rs_bin.is_some() {
        "image-rs (CoCo)"
    } else {
        "skopeo+umoci"
    };
    let reg = TestRegistry::start();
    let img = ImageBuilder::new("v1");
    let mut urandom = std::fs::File::open("/dev/urandom").unwrap();
    for l in 0..layers {
        let mut random = vec![0u8; (layer_mib << 20) * 3 / 4];
        urandom.read_exact(&mut random).unwrap();
        std::fs::write(img.rootfs().join(format!("random-{l}")), &random).unwrap();
        // Compressible: hex of random bytes (gzip gets it to about half).
        let text = hex::encode(&random[..(layer_mib << 20) / 8]);
        std::fs::write(img.rootfs().join(format!("text-{l}.txt")), text).unwrap();
        img.layer();
    }
    let work = tempfile::tempdir_in("/dev/shm").unwrap();
    let (key, public) = rsa_keypair(work.path());
    let plain = reg.push(&img.layout, "v1", "bench/plain");
    let encrypted = reg.push_encrypted(&img.layout, "v1", "bench/encrypted", &public);
    let ward = ward_bin.unwrap_or_else(|| bin("ward"));
    println!("ward side: {}", ward.display());
    match &image_rs_bin {
        Some(b) => println!("baseline: image-rs, {}", b.display()),
        None => println!("baseline: skopeo copy + umoci unpack"),
    }
    let host = reg.host();
    println!(
        "image: {layers} layers of {layer_mib} MiB (3/4 random, 1/4 hex text), gzip; {pulls} pulls at \
         once into /dev/shm; {rounds} rounds; {} cores, machine shared with other builds{}",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        match &cpus {
            Some(list) => format!("; every measured process under taskset -c {list}"),
            None => String::new(),
        }
    );

    let ward_cmd = |reference: &str, keyed: bool, c: usize, dir: &Path| -> Vec<Vec<String>> {
        let mut cmd = vec![
            s(&ward),
            "pull".into(),
            reference.into(),
            "--insecure-registry".into(),
            host.clone(),
            "--bundle".into(),
            s(&dir.join("bundle")),
            "--concurrency".into(),
            c.to_string(),
            "--quiet".into(),
        ];
        if keyed {
            cmd.extend(["--decryption-key".into(), s(&key)]);
        }
        vec![cmd]
    };
    let baseline_cmd = |reference: &str, keyed: bool, dir: &Path| -> Vec<Vec<String>> {
        if let Some(b) = &image_rs_bin {
            // One image-rs pull with its own work dir (layer store, meta store) and bundle.
            let mut pull = vec![
                s(b),
                "--work-dir".into(),
                s(&dir.join("work")),
                "--bundle".into(),
                s(&dir.join("bundle")),
            ];
            if keyed {
                pull.extend(["--decryption-key".into(), s(&key)]);
            }
            pull.push(reference.into());
            return vec![pull];
        }
        let mut copy = vec![
            "skopeo".into(),
            "copy".into(),
            "--quiet".into(),
            "--src-tls-verify=false".into(),
        ];
        if keyed {
            copy.extend(["--decryption-key".into(), s(&key)]);
        }
        copy.extend([
            format!("docker://{reference}"),
            format!("oci:{}:v1", s(&dir.join("oci"))),
        ]);
        let unpack = vec![
            "umoci".into(),
            "unpack".into(),
            "--image".into(),
            format!("{}:v1", s(&dir.join("oci"))),
            s(&dir.join("bundle")),
        ];
        vec![copy, unpack]
    };

    let chosen = match concurrency {
        Some(c) => c,
        None if sweep => {
            let candidates = [1usize, 2, 4, 8];
            let mut walls: Vec<Vec<f64>> = vec![Vec::new(); candidates.len()];
            let mut cpus: Vec<Vec<f64>> = vec![Vec::new(); candidates.len()];
            let mut rss: Vec<Vec<f64>> = vec![Vec::new(); candidates.len()];
            for r in 0..rounds {
                for k in 0..candidates.len() {
                    // Rotate the order each round.
                    let k = (k + r) % candidates.len();
                    let f = group(1, work.path(), &pin, &|d| {
                        ward_cmd(&plain, false, candidates[k], d)
                    });
                    walls[k].push(f.wall);
                    cpus[k].push(f.cpu);
                    rss[k].push(f.peak_kib as f64 / 1024.0);
                }
            }
            let mut best = (f64::MAX, 1);
            for (k, c) in candidates.iter().enumerate() {
                let (w, cpu) = (median(walls[k].clone()), median(cpus[k].clone()));
                let m = median(rss[k].clone());
                println!(
                    "layer concurrency {c}: one plain pull {w:.3} s wall, {cpu:.3} s CPU, \
                     peak RSS {m:.1} MiB"
                );
                if w < best.0 {
                    best = (w, *c);
                }
            }
            println!("fastest: concurrency {}", best.1);
            best.1
        }
        None => 2,
    };

    println!(
        "\n| {pulls} pulls at once | ward | {baseline_name} | ward / baseline |\n| --- | --- | --- | --- |"
    );
    for (name, reference, keyed) in [("plain", &plain, false), ("JWE", &encrypted, true)] {
        let mut w: Vec<Figures> = Vec::new();
        let mut b: Vec<Figures> = Vec::new();
        let mut wins = 0;
        for r in 0..rounds {
            let run_ward = || {
                group(pulls, work.path(), &pin, &|d| {
                    ward_cmd(reference, keyed, chosen, d)
                })
            };
            let run_base = || {
                group(pulls, work.path(), &pin, &|d| {
                    baseline_cmd(reference, keyed, d)
                })
            };
            let (fw, fb) = if r % 2 == 0 {
                let fw = run_ward();
                (fw, run_base())
            } else {
                let fb = run_base();
                (run_ward(), fb)
            };
            wins += usize::from(fw.wall < fb.wall);
            w.push(fw);
            b.push(fb);
        }
        let m = |v: &[Figures], f: fn(&Figures) -> f64| median(v.iter().map(f).collect());
        let rows: [Row; 4] = [
            ("wall (median)", |f| f.wall, 1.0, "s"),
            ("CPU, all processes", |f| f.cpu, 1.0, "s"),
            (
                "peak RSS, largest process",
                |f| f.peak_kib as f64,
                1.0 / 1024.0,
                "MiB",
            ),
            (
                "bytes left on the tmpfs",
                |f| f.left as f64,
                1.0 / 1e6,
                "MB",
            ),
        ];
        for (label, f, scale, unit) in rows {
            let (x, y) = (m(&w, f), m(&b, f));
            let extra = if label.starts_with("wall") {
                format!(" (ward won {wins} of {rounds})")
            } else {
                String::new()
            };
            println!(
                "| {name}, {label} | {:.2} {unit} | {:.2} {unit} | {:.3}{extra} |",
                x * scale,
                y * scale,
                x / y
            );
        }
    }
    let image_bytes: u64 = du(&img.layout.join("blobs"));
    println!(
        "\n(the image's blobs take {:.1} MB; layer concurrency {chosen})",
        image_bytes as f64 / 1e6
    );
}
