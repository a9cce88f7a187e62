//! Bulk AES-256-GCM figures for sealed model weights (issue #6, item 5), every candidate in one
//! run on this machine: RustCrypto `aes-gcm` 0.10 and 0.11, `ring` and `aws-lc-rs`, sealing and
//! opening 1 GiB in memory in fixed-size chunks (nonce from the chunk index, as the sealed format
//! does), on 1 core and on all cores, next to `openssl speed -evp aes-256-gcm` from the same run.
//! Then SHA-256 on 1 core (the whole-file plaintext digest is sequential), and the real
//! `ward_image::sealed` opener end to end (parallel decrypt + pipelined digest) against those.
//! Run it on release builds: `just bench-aead` (`--size-mib N` to change the 1 GiB).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::process::Command;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use aes_gcm::aead::{AeadInPlace, KeyInit as _};
use aes_gcm_011::aead::{AeadInOut as _, KeyInit as _};
use sha2::Digest as _;
use zeroize::Zeroizing;

const CHUNK_SIZES: [usize; 4] = [64 << 10, 256 << 10, 1 << 20, 4 << 20];
const KEY: [u8; 32] = [0x42; 32];
/// Best of this many passes unless `--passes N` (the machine is shared with other builds).
const PASSES: usize = 3;

/// One bulk AEAD candidate: seals/opens one chunk in place, tag apart.
trait Backend: Sync {
    fn seal(&self, nonce: [u8; 12], buf: &mut [u8]) -> [u8; 16];
    fn open(&self, nonce: [u8; 12], buf: &mut [u8], tag: &[u8; 16]) -> bool;
}

struct RustCrypto010(aes_gcm::Aes256Gcm);
struct RustCrypto011(aes_gcm_011::Aes256Gcm);
struct Ring(ring::aead::LessSafeKey);
struct AwsLc(aws_lc_rs::aead::LessSafeKey);

impl Backend for RustCrypto010 {
    fn seal(&self, nonce: [u8; 12], buf: &mut [u8]) -> [u8; 16] {
        let tag = self
            .0
            .encrypt_in_place_detached(&nonce.into(), b"", buf)
            .unwrap();
        tag.into()
    }
    fn open(&self, nonce: [u8; 12], buf: &mut [u8], tag: &[u8; 16]) -> bool {
        self.0
            .decrypt_in_place_detached(&nonce.into(), b"", buf, tag.into())
            .is_ok()
    }
}

impl Backend for RustCrypto011 {
    fn seal(&self, nonce: [u8; 12], buf: &mut [u8]) -> [u8; 16] {
        let tag = self
            .0
            .encrypt_inout_detached(&nonce.into(), b"", buf.into())
            .unwrap();
        tag.into()
    }
    fn open(&self, nonce: [u8; 12], buf: &mut [u8], tag: &[u8; 16]) -> bool {
        self.0
            .decrypt_inout_detached(&nonce.into(), b"", buf.into(), &(*tag).into())
            .is_ok()
    }
}

impl Backend for Ring {
    fn seal(&self, nonce: [u8; 12], buf: &mut [u8]) -> [u8; 16] {
        let n = ring::aead::Nonce::assume_unique_for_key(nonce);
        let tag = self
            .0
            .seal_in_place_separate_tag(n, ring::aead::Aad::empty(), buf)
            .unwrap();
        tag.as_ref().try_into().unwrap()
    }
    fn open(&self, nonce: [u8; 12], buf: &mut [u8], tag: &[u8; 16]) -> bool {
        let n = ring::aead::Nonce::assume_unique_for_key(nonce);
        let tag = ring::aead::Tag::from(*tag);
        self.0
            .open_in_place_separate_tag(n, ring::aead::Aad::empty(), tag, buf, 0..)
            .is_ok()
    }
}

impl Backend for AwsLc {
    fn seal(&self, nonce: [u8; 12], buf: &mut [u8]) -> [u8; 16] {
        let n = aws_lc_rs::aead::Nonce::assume_unique_for_key(nonce);
        let tag = self
            .0
            .seal_in_place_separate_tag(n, aws_lc_rs::aead::Aad::empty(), buf)
            .unwrap();
        tag.as_ref().try_into().unwrap()
    }
    fn open(&self, nonce: [u8; 12], buf: &mut [u8], tag: &[u8; 16]) -> bool {
        let n = aws_lc_rs::aead::Nonce::assume_unique_for_key(nonce);
        self.0
            .open_in_place_separate_tag(n, aws_lc_rs::aead::Aad::empty(), tag, buf)
            .is_ok()
    }
}

fn backends() -> Vec<(&'static str, Box<dyn Backend>)> {
    vec![
        (
            "aes-gcm 0.10",
            Box::new(RustCrypto010(aes_gcm::Aes256Gcm::new(&KEY.into()))),
        ),
        (
            "aes-gcm 0.11",
            Box::new(RustCrypto011(
                aes_gcm_011::Aes256Gcm::new_from_slice(&KEY).unwrap(),
            )),
        ),
        (
            "ring 0.17",
            Box::new(Ring(ring::aead::LessSafeKey::new(
                ring::aead::UnboundKey::new(&ring::aead::AES_256_GCM, &KEY).unwrap(),
            ))),
        ),
        (
            "aws-lc-rs 1",
            Box::new(AwsLc(aws_lc_rs::aead::LessSafeKey::new(
                aws_lc_rs::aead::UnboundKey::new(&aws_lc_rs::aead::AES_256_GCM, &KEY).unwrap(),
            ))),
        ),
    ]
}

fn nonce(index: u64, last: bool) -> [u8; 12] {
    let mut n = [0u8; 12];
    n[..8].copy_from_slice(&index.to_be_bytes());
    n[11] = u8::from(last);
    n
}

/// What [`over_chunks`] does to one chunk: `(index, last, bytes, tag)`.
type ChunkOp<'a> = dyn Fn(u64, bool, &mut [u8], &mut [u8; 16]) + Sync + 'a;

/// Runs `f(index, chunk, tag)` over every chunk of `buf` on `threads` threads (a shared queue,
/// as the opener schedules them) and returns the elapsed time.
fn over_chunks(
    buf: &mut [u8],
    tags: &mut [[u8; 16]],
    chunk: usize,
    threads: usize,
    f: &ChunkOp<'_>,
) -> Duration {
    let n = tags.len();
    let work: Vec<_> = buf
        .chunks_mut(chunk)
        .zip(tags.iter_mut())
        .enumerate()
        .collect();
    let queue = Mutex::new(work.into_iter());
    let t = Instant::now();
    std::thread::scope(|s| {
        for _ in 0..threads {
            s.spawn(|| {
                loop {
                    let next = queue.lock().unwrap().next();
                    let Some((i, (c, tag))) = next else { break };
                    f(i as u64, i + 1 == n, c, tag);
                }
            });
        }
    });
    t.elapsed()
}

fn gbps(bytes: usize, d: Duration) -> f64 {
    bytes as f64 / d.as_secs_f64() / 1e9
}

/// `openssl speed -elapsed -evp ALG -bytes 16384 -seconds 2 [-multi N]` in GB/s, if openssl
/// runs. `-elapsed`: wall-clock time like every other figure here (openssl's default divides by
/// user CPU time, which reads higher than wall clock on a machine shared with other builds).
fn openssl_speed(alg: &str, multi: Option<usize>) -> Result<f64, String> {
    let mut cmd = Command::new("openssl");
    cmd.args([
        "speed", "-elapsed", "-evp", alg, "-bytes", "16384", "-seconds", "2",
    ]);
    if let Some(m) = multi {
        cmd.args(["-multi", &m.to_string()]);
    }
    let out = cmd.output().map_err(|e| format!("openssl not run: {e}"))?;
    if !out.status.success() {
        return Err(format!("openssl speed failed: {}", out.status));
    }
    let text = String::from_utf8_lossy(&out.stdout);
    // The last table line: `AES-256-GCM  12345678.90k` (thousands of bytes per second).
    let line = text
        .lines()
        .rev()
        .find(|l| l.to_ascii_lowercase().starts_with(alg))
        .ok_or(format!("no {alg} line in openssl speed output"))?;
    let last = line.split_whitespace().last().ok_or("empty line")?;
    let k: f64 = last
        .trim_end_matches('k')
        .parse()
        .map_err(|_| format!("cannot parse `{last}`"))?;
    Ok(k * 1e3 / 1e9)
}

fn main() -> anyhow::Result<()> {
    let mut size_mib = 1024usize;
    let mut passes = PASSES;
    let mut skip_aead = false;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--size-mib" => size_mib = args.next().unwrap_or_default().parse()?,
            "--passes" => passes = args.next().unwrap_or_default().parse()?,
            "--skip-aead" => skip_aead = true,
            other => {
                anyhow::bail!("unknown argument `{other}` (--size-mib N, --passes N, --skip-aead)")
            }
        }
    }
    let size = size_mib << 20;
    let all = std::thread::available_parallelism().map_or(1, |n| n.get());
    println!("bench-aead: {size_mib} MiB in memory, best of {passes}, 1 core and {all} cores");
    println!(
        "cpu: {}",
        std::fs::read_to_string("/proc/cpuinfo")
            .ok()
            .and_then(
                |c| c.lines().find(|l| l.starts_with("model name")).map(|l| l
                    .split(':')
                    .nth(1)
                    .unwrap_or("")
                    .trim()
                    .to_string())
            )
            .unwrap_or_default()
    );

    let ossl_1 = openssl_speed("aes-256-gcm", None);
    let ossl_n = if all > 1 {
        openssl_speed("aes-256-gcm", Some(all))
    } else {
        Err("one core".into())
    };
    match (&ossl_1, &ossl_n) {
        (Ok(a), Ok(b)) => println!(
            "openssl speed -elapsed -evp aes-256-gcm -bytes 16384: {a:.2} GB/s (1 core), {b:.2} GB/s (-multi {all})"
        ),
        (Ok(a), Err(_)) => {
            println!("openssl speed -elapsed -evp aes-256-gcm -bytes 16384: {a:.2} GB/s")
        }
        (Err(e), _) => println!("openssl speed skipped: {e}"),
    }
    let baseline = ossl_1.as_ref().ok().copied();

    let mut buf = vec![0x5au8; size];
    if !skip_aead {
        println!();
        println!(
            "{:<13} {:>6} {:>8} {:>8} {:>8} {:>8} {:>9} {:>9}",
            "backend",
            "chunk",
            "seal 1c",
            "open 1c",
            "seal Nc",
            "open Nc",
            "open1c/ossl",
            "openNc/1c"
        );
        // Passes outside, every (chunk size, backend, threads) inside, so that load from other
        // processes drifts over all of them alike; the best pass of each is kept.
        let backends = backends();
        let mut times = vec![[Duration::MAX; 4]; CHUNK_SIZES.len() * backends.len()];
        for pass in 0..passes {
            for (ci, &chunk) in CHUNK_SIZES.iter().enumerate() {
                let mut tags = vec![[0u8; 16]; size.div_ceil(chunk)];
                for k in 0..backends.len() {
                    // Alternate the order on odd passes.
                    let bi = if pass % 2 == 0 {
                        k
                    } else {
                        backends.len() - 1 - k
                    };
                    let b = &backends[bi].1;
                    let seal = |i: u64, last: bool, c: &mut [u8], t: &mut [u8; 16]| {
                        *t = b.seal(nonce(i, last), c);
                    };
                    let open = |i: u64, last: bool, c: &mut [u8], t: &mut [u8; 16]| {
                        assert!(b.open(nonce(i, last), c, t), "chunk {i} did not open");
                    };
                    let slot = &mut times[ci * backends.len() + bi];
                    for (k, threads) in [1, all].into_iter().enumerate() {
                        let s = over_chunks(&mut buf, &mut tags, chunk, threads, &seal);
                        let o = over_chunks(&mut buf, &mut tags, chunk, threads, &open);
                        slot[2 * k] = slot[2 * k].min(s);
                        slot[2 * k + 1] = slot[2 * k + 1].min(o);
                    }
                }
            }
        }
        let mut best: Option<(f64, &'static str, usize)> = None;
        for (ci, &chunk) in CHUNK_SIZES.iter().enumerate() {
            for (bi, (name, _)) in backends.iter().enumerate() {
                let t = times[ci * backends.len() + bi];
                let figures = t.map(|d| gbps(size, d));
                let vs_ossl =
                    baseline.map_or("-".to_string(), |b| format!("{:.2}", figures[1] / b));
                println!(
                    "{:<13} {:>5}K {:>8.2} {:>8.2} {:>8.2} {:>8.2} {:>9} {:>9.2}",
                    name,
                    chunk >> 10,
                    figures[0],
                    figures[1],
                    figures[2],
                    figures[3],
                    vs_ossl,
                    figures[3] / figures[1]
                );
                if best.is_none_or(|(g, _, _)| figures[3] > g) {
                    best = Some((figures[3], *name, chunk));
                }
            }
        }
        if let Some((g, name, chunk)) = best {
            println!(
                "fastest open on all cores: {name} at {} KiB chunks, {g:.2} GB/s",
                chunk >> 10
            );
        }
        assert!(
            buf.iter().all(|&b| b == 0x5a),
            "round trip changed the data"
        );
    }

    // The plaintext SHA-256 over the whole file is sequential: 1 core, each implementation.
    println!();
    let sha = |name: &str, f: &dyn Fn(&[u8]) -> [u8; 32]| {
        let mut d = Duration::MAX;
        let mut out = [0u8; 32];
        for _ in 0..passes {
            let t = Instant::now();
            out = f(&buf);
            d = d.min(t.elapsed());
        }
        println!("sha256 {name:<12} {:>6.2} GB/s (1 core)", gbps(size, d));
        out
    };
    let a = sha("sha2 0.10", &|b| sha2::Sha256::digest(b).into());
    let b = sha("aws-lc-rs", &|b| {
        aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, b)
            .as_ref()
            .try_into()
            .unwrap()
    });
    let c = sha("ring", &|b| {
        ring::digest::digest(&ring::digest::SHA256, b)
            .as_ref()
            .try_into()
            .unwrap()
    });
    assert!(a == b && b == c, "sha256 implementations disagree");
    // The same bytes from cache (16 KiB, as openssl speed hashes them) rather than from memory.
    let cached = |name: &str, f: &dyn Fn(&[u8], usize)| {
        let mut d = Duration::MAX;
        for _ in 0..passes {
            let t = Instant::now();
            f(&buf[..16384], size / 16384);
            d = d.min(t.elapsed());
        }
        println!(
            "sha256 {name:<12} {:>6.2} GB/s (1 core, one cached 16 KiB block over and over)",
            gbps(size, d)
        );
    };
    cached("sha2 0.10", &|block, n| {
        let mut h = sha2::Sha256::new();
        for _ in 0..n {
            h.update(std::hint::black_box(block));
        }
        std::hint::black_box(h.finalize());
    });
    cached("aws-lc-rs", &|block, n| {
        let mut h = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256);
        for _ in 0..n {
            h.update(std::hint::black_box(block));
        }
        std::hint::black_box(h.finish());
    });
    match openssl_speed("sha256", None) {
        Ok(g) => println!(
            "sha256 openssl      {g:>6.2} GB/s (1 core, openssl speed -elapsed -evp sha256)"
        ),
        Err(e) => println!("openssl speed sha256 skipped: {e}"),
    }

    // What a fresh plaintext buffer costs before any crypto: page faults on first touch.
    let t = Instant::now();
    let mut fresh = std::hint::black_box(vec![0u8; size]);
    fresh.fill(1);
    std::hint::black_box(&mut fresh);
    let touch = t.elapsed();
    drop(fresh);
    println!(
        "fresh buffer, first touch (1 core)  {:>6.2} GB/s",
        gbps(size, touch)
    );

    // The sealed-model opener end to end: parallel decrypt into one buffer, digest pipelined.
    println!();
    let kek = ward_image::sealed::Kek::new(Zeroizing::new([7u8; 32]));
    let kek_id = ward_image::sealed::KekId::parse("kbs:///default/model/bench")?;
    for chunk in CHUNK_SIZES {
        let params = ward_image::sealed::SealParams::new("model.bin", kek_id.clone())?
            .with_chunk_size(chunk as u32)?;
        let mut sealed = Vec::with_capacity(size + size / chunk * 16 + 4096);
        let t = Instant::now();
        ward_image::sealed::seal(std::io::Cursor::new(&buf), &mut sealed, &kek, &params)?;
        let seal_t = t.elapsed();
        let opts = ward_image::sealed::OpenOptions::default();
        let mut d = Duration::MAX;
        for _ in 0..passes {
            let t = Instant::now();
            let opened = ward_image::sealed::open(&sealed, &kek, &opts)?;
            d = d.min(t.elapsed());
            assert_eq!(opened.plaintext.len(), size);
        }
        let mut inc = Duration::MAX;
        for _ in 0..passes {
            let t = Instant::now();
            let opened = ward_image::sealed::StreamOpener::new(&kek, opts.clone())
                .open(sealed.chunks(64 << 10))?;
            inc = inc.min(t.elapsed());
            assert_eq!(opened.plaintext.len(), size);
        }
        println!(
            "ward sealed {:>5}K: seal {:>6.2} GB/s (1 core), open {:>6.2} GB/s, streamed open (64 KiB pushes) {:>6.2} GB/s ({all} cores, sha256 checked)",
            chunk >> 10,
            gbps(size, seal_t),
            gbps(size, d),
            gbps(size, inc),
        );
    }
    Ok(())
}
