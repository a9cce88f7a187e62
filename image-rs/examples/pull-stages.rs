//! CPU seconds per GiB for each stage of a pull, measured alone on this machine's CPU (thread CPU
//! time, so other load on the machine does not count): the SHA-256 candidates (sha2, which picks
//! SHA-NI at run time through cpufeatures, aws-lc-rs and ring), HMAC-SHA256, AES-256-CTR,
//! gzip and zstd decompression (with the flate2 backend this build has), and the unpacker
//! writing files into a directory; then the whole one-pass pipeline (decrypt + HMAC +
//! decompress + diff_id + unpack) over the same layer.
//!
//! The layer is a real tree (`/usr` by default, or the directory given), tarred to at most
//! `--mib` MiB (default 256). Unpacking goes to `--into` (default a directory under /dev/shm,
//! as a guest's tmpfs). Run: `cargo run --release -p ward-image --example pull-stages`.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::Instant;

use sha2::Digest as _;
use ward_image::digest::{Digest, VerifyingReader};
use ward_image::ocicrypt::{Compression, LayerDecryptor, LayerEncryptor};
use ward_image::unpack::{UnpackPolicy, apply_layer};

fn thread_cpu() -> f64 {
    let t = nix::time::clock_gettime(nix::time::ClockId::CLOCK_THREAD_CPUTIME_ID).unwrap();
    t.tv_sec() as f64 + t.tv_nsec() as f64 / 1e9
}

/// Runs `f` `reps` times; the best CPU seconds per GiB of `bytes`, and the wall of that run.
fn measure(name: &str, bytes: usize, reps: usize, mut f: impl FnMut()) -> f64 {
    let mut best = f64::MAX;
    let mut wall = 0.0;
    for _ in 0..reps {
        let (c, w) = (thread_cpu(), Instant::now());
        f();
        let cpu = thread_cpu() - c;
        if cpu < best {
            best = cpu;
            wall = w.elapsed().as_secs_f64();
        }
    }
    let per_gib = best * (1u64 << 30) as f64 / bytes as f64;
    println!(
        "{name:<44} {per_gib:7.3} CPU s/GiB  ({:7.0} MiB/s; wall {wall:.3} s)",
        bytes as f64 / (1 << 20) as f64 / best
    );
    per_gib
}

/// A tar of the regular files, directories and symlinks under `src`, at most `limit` bytes of
/// file data.
fn tar_of(src: &Path, limit: u64) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    b.follow_symlinks(false);
    let mut total = 0u64;
    let mut todo = vec![PathBuf::new()];
    while let Some(rel) = todo.pop() {
        let Ok(entries) = std::fs::read_dir(src.join(&rel)) else {
            continue;
        };
        let mut entries: Vec<_> = entries.flatten().collect();
        entries.sort_by_key(|e| e.file_name());
        for e in entries {
            let name = rel.join(e.file_name());
            let Ok(meta) = e.metadata() else { continue };
            if meta.is_file() {
                if total + meta.len() > limit {
                    return b.into_inner().unwrap();
                }
                total += meta.len();
            }
            if meta.is_dir() {
                todo.push(name.clone());
            }
            if meta.is_file() || meta.is_dir() || e.file_type().is_ok_and(|t| t.is_symlink()) {
                let _ = b.append_path_with_name(e.path(), &name);
            }
        }
    }
    b.into_inner().unwrap()
}

fn main() {
    let mut args = std::env::args().skip(1);
    let (mut src, mut mib, mut into) = (
        PathBuf::from("/usr"),
        256u64,
        PathBuf::from("/dev/shm/ward-pull-stages"),
    );
    while let Some(a) = args.next() {
        match a.as_str() {
            "--mib" => mib = args.next().unwrap().parse().unwrap(),
            "--into" => into = PathBuf::from(args.next().unwrap()),
            other => src = PathBuf::from(other),
        }
    }
    let tar = tar_of(&src, mib << 20);
    let n = tar.len();
    let gz = {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        e.write_all(&tar).unwrap();
        e.finish().unwrap()
    };
    let zs = zstd::stream::encode_all(&tar[..], 3).unwrap();
    println!(
        "layer: {} MiB tar of {} (gzip -6: {} MiB, zstd -3: {} MiB); CPU s per GiB of tar",
        n >> 20,
        src.display(),
        gz.len() >> 20,
        zs.len() >> 20
    );
    let reps = 3;
    measure("sha256, sha2 (SHA-NI if the CPU has it)", n, reps, || {
        std::hint::black_box(sha2::Sha256::digest(&tar));
    });
    measure("sha256, aws-lc-rs", n, reps, || {
        std::hint::black_box(aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, &tar));
    });
    measure("sha256, ring", n, reps, || {
        std::hint::black_box(ring::digest::digest(&ring::digest::SHA256, &tar));
    });
    measure("hmac-sha256 (hmac + sha2)", n, reps, || {
        use hmac::Mac;
        let mut m = <hmac::Hmac<sha2::Sha256> as Mac>::new_from_slice(&[7u8; 32]).unwrap();
        m.update(&tar);
        std::hint::black_box(m.finalize());
    });
    let mut enc = LayerEncryptor::new(&tar[..]);
    let mut ct = Vec::with_capacity(n);
    enc.read_to_end(&mut ct).unwrap();
    let keys = enc.finish().unwrap();
    measure("aes-256-ctr + hmac (LayerDecryptor)", n, reps, || {
        let mut d = LayerDecryptor::new(&ct[..], &keys.private, &keys.public);
        std::io::copy(&mut d, &mut std::io::sink()).unwrap();
    });
    measure(
        "gzip inflate (flate2, this build's backend)",
        n,
        reps,
        || {
            let mut d = ward_image::pull::decompress(&gz[..], Compression::Gzip).unwrap();
            std::io::copy(&mut d, &mut std::io::sink()).unwrap();
        },
    );
    measure("zstd decompress", n, reps, || {
        let mut d = ward_image::pull::decompress(&zs[..], Compression::Zstd).unwrap();
        std::io::copy(&mut d, &mut std::io::sink()).unwrap();
    });
    let policy = UnpackPolicy::default();
    let fresh = |i: usize| {
        let dir = into.join(format!("u{i}"));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    };
    let mut i = 0;
    measure("unpack (tar -> files)", n, reps, || {
        i += 1;
        apply_layer(&tar[..], &fresh(i), &policy).unwrap();
    });
    let diff_id = Digest::of(&tar);
    // The encrypted gzip layer through the whole pipeline, as a pull runs it.
    let mut genc = LayerEncryptor::new(&gz[..]);
    let mut gct = Vec::with_capacity(gz.len());
    genc.read_to_end(&mut gct).unwrap();
    let gkeys = genc.finish().unwrap();
    let blob_digest = Digest::of(&gct);
    measure(
        "one pass, encrypted gzip layer (all stages)",
        n,
        reps,
        || {
            i += 1;
            let blob = VerifyingReader::new(&gct[..], u64::MAX);
            let mut plain = LayerDecryptor::new(blob, &gkeys.private, &gkeys.public);
            let t = ward_image::pull::decompress(&mut plain, Compression::Gzip).unwrap();
            let mut v = VerifyingReader::new(t, u64::MAX);
            apply_layer(&mut v, &fresh(i), &policy).unwrap();
            v.finish(&diff_id, None).unwrap().unwrap();
            std::io::copy(&mut plain, &mut std::io::sink()).unwrap();
            assert!(plain.is_verified());
            std::hint::black_box(&blob_digest);
        },
    );
    let _ = std::fs::remove_dir_all(&into);
}
