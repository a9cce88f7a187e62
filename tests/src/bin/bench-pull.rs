//! Image pull figures, printed with a baseline from the same run: a 512 MiB single-layer image
//! of random data (gzip), plain and JWE-encrypted (RSA), from a local `docker-registry`:
//! `ward pull` (pull + verify + decrypt + unpack into a bundle) against `skopeo copy` (with
//! `--decryption-key` for the encrypted one) into an `oci:` directory, median of 5 each, and
//! ward's peak RSS. Run on release builds: `just bench-pull`.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::Write;
use std::process::Command;
use std::time::{Duration, Instant};

use ward_tests::bin;
use ward_tests::registry::{ImageBuilder, TestRegistry, image_tools, rsa_keypair};

const RUNS: usize = 5;
const SIZE_MIB: usize = 512;

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

/// Runs `cmd` under `/usr/bin/time -f %M` when available; returns (wall, peak RSS KiB).
fn timed(cmd: &mut Command) -> (Duration, Option<u64>) {
    let t = Instant::now();
    let out = cmd.output().unwrap();
    let wall = t.elapsed();
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let rss = String::from_utf8_lossy(&out.stderr)
        .lines()
        .rev()
        .find_map(|l| l.trim().parse::<u64>().ok());
    (wall, rss)
}

fn main() {
    if let Err(skip) = image_tools() {
        eprintln!("{skip}");
        return;
    }
    let have_time = std::path::Path::new("/usr/bin/time").exists();
    let reg = TestRegistry::start();
    let img = ImageBuilder::new("v1");
    {
        let mut f = std::fs::File::create(img.rootfs().join("random.bin")).unwrap();
        let mut buf = vec![0u8; 1 << 20];
        for _ in 0..SIZE_MIB {
            rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut buf);
            f.write_all(&buf).unwrap();
        }
    }
    img.layer();
    let work = tempfile::tempdir().unwrap();
    let (key, public) = rsa_keypair(work.path());
    let plain = reg.push(&img.layout, "v1", "bench/plain");
    let encrypted = reg.push_encrypted(&img.layout, "v1", "bench/encrypted", &public);
    let ward = bin("ward");
    for (name, reference, keyed) in [
        ("plain", &plain, false),
        ("JWE-encrypted", &encrypted, true),
    ] {
        let mut ward_times = Vec::new();
        let mut skopeo_times = Vec::new();
        let mut peak = 0;
        for i in 0..RUNS {
            let run_dir = work.path().join(format!("{name}-{i}"));
            let mut c = if have_time {
                let mut c = Command::new("/usr/bin/time");
                c.args(["-f", "%M"]).arg(&ward);
                c
            } else {
                Command::new(&ward)
            };
            c.args([
                "pull",
                reference,
                "--insecure-registry",
                &reg.host(),
                "--bundle",
            ])
            .arg(run_dir.join("bundle"));
            if keyed {
                c.arg("--decryption-key").arg(&key);
            }
            let (t, rss) = timed(&mut c);
            ward_times.push(t);
            peak = peak.max(rss.unwrap_or(0));
            let mut s = Command::new("skopeo");
            s.args(["copy", "--quiet", "--src-tls-verify=false"]);
            if keyed {
                s.arg("--decryption-key").arg(&key);
            }
            s.arg(format!("docker://{reference}"))
                .arg(format!("oci:{}:v1", run_dir.join("skopeo").display()));
            let (t, _) = timed(&mut s);
            skopeo_times.push(t);
            let _ = std::fs::remove_dir_all(&run_dir);
        }
        let w = median(ward_times);
        let s = median(skopeo_times);
        println!(
            "{SIZE_MIB} MiB {name}: ward pull+verify+{}unpack {:.2} s, skopeo copy {:.2} s: {:.2}x skopeo's time; ward peak RSS {:.1} MiB",
            if keyed { "decrypt+" } else { "" },
            w.as_secs_f64(),
            s.as_secs_f64(),
            w.as_secs_f64() / s.as_secs_f64(),
            peak as f64 / 1024.0
        );
    }
}
