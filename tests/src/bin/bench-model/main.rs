//! Sealed-model loading figures, with baselines from the same run: a 1 GiB model file (random
//! bytes) in a local `docker-registry`, loaded into guest memory by ward's model loader, against
//! a plain digest-checked download of the same number of bytes into memory.
//!
//! - **plain**: the sealed blob fetched and digest-checked into one pre-sized buffer: the
//!   registry, the loopback and SHA-256, nothing else (the floor any loader pays);
//! - **sealed**: `fetch_model` on the sealed artifact: KEK from the dev KBS (RCAR handshake),
//!   download, parallel AES-256-GCM open while downloading, plaintext SHA-256, pins;
//! - **ocicrypt image**: the same file in an ordinary image layer (umoci, gzip) encrypted by
//!   `ward image encrypt` for the KBS key provider, loaded by the image path (CTR + HMAC,
//!   gunzip, tar, diff_id and file SHA-256: sequential by design of ocicrypt);
//! - **skopeo copy** of that image to an `oci:` directory (still encrypted: skopeo cannot open
//!   key-provider packets without a keyprovider daemon): what existing tooling does with the
//!   same bytes.
//!
//! Each is the median of `RUNS` rounds (the three paths in turn each round); peak RSS is measured per phase in this process (VmHWM, reset
//! through /proc/self/clear_refs) and printed above the resident size before the phase.
//!
//! Then (`ttft.rs`): wardd started on a config naming a sealed ~1 GiB model in the registry, timed
//! from spawn to READY, to the model being served and to the first streamed token, next to the
//! same GGUF loaded from memory by the runtime alone. Run on release builds: `just bench-model`.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod ttft;

use std::io::Write;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ward_agent::images::KbsClientResources;
use ward_attester::kbs::{KbsClient, KbsConfig};
use ward_attester::tee::SampleAttester;
use ward_image::digest::Digest;
use ward_image::model_artifact::{PinnedDigests, fetch_model, seal_dir};
use ward_image::registry::Registry;
use ward_image::sealed::Kek;
use ward_tests::kbs::{DevKbs, Policy};
use ward_tests::registry::{ImageBuilder, TestRegistry, image_tools};
use zeroize::Zeroizing;

const RUNS: usize = 5;
const KID: &str = "kbs:///default/model-kek/bench";

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn status_kib(field: &str) -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// User + system CPU time of this process so far (every thread: ward's side of the work, not
/// the registry's).
fn cpu_time() -> Duration {
    let mut u = std::mem::MaybeUninit::<libc::rusage>::zeroed();
    // SAFETY: getrusage fills the struct it is given; RUSAGE_SELF is always valid.
    let u = unsafe {
        libc::getrusage(libc::RUSAGE_SELF, u.as_mut_ptr());
        u.assume_init()
    };
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    tv(u.ru_utime) + tv(u.ru_stime)
}

/// One path's figures over the rounds.
#[derive(Default)]
struct Figures {
    times: Vec<Duration>,
    cpu: Vec<Duration>,
    peak_growth: u64,
}

impl Figures {
    /// Runs `phase` once and records it.
    async fn run<Fut: std::future::Future<Output = ()>>(&mut self, phase: Fut) {
        // Reset the high-water mark to the current RSS (Linux >= 4.0).
        let _ = std::fs::write("/proc/self/clear_refs", "5");
        let before = status_kib("VmRSS:");
        let c = cpu_time();
        let t = Instant::now();
        phase.await;
        self.times.push(t.elapsed());
        self.cpu.push(cpu_time().saturating_sub(c));
        self.peak_growth = self
            .peak_growth
            .max(status_kib("VmHWM:").saturating_sub(before));
    }

    /// Prints the figures; returns the median wall time.
    fn print(self, name: &str, bytes: u64) -> Duration {
        let m = median(self.times);
        println!(
            "{name:<44} {:>6.2} s {:>5.2} GB/s  ward CPU {:>5.2} s  peak RSS +{} MiB ({:.3}x the file)",
            m.as_secs_f64(),
            bytes as f64 / m.as_secs_f64() / 1e9,
            median(self.cpu).as_secs_f64(),
            self.peak_growth / 1024,
            (self.peak_growth * 1024) as f64 / bytes as f64
        );
        m
    }
}

#[tokio::main(flavor = "multi_thread")]
async fn main() {
    if let Err(skip) = image_tools() {
        eprintln!("{skip}");
        return;
    }
    let mib: u64 = std::env::var("WARD_BENCH_MODEL_MIB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1024);
    let bytes = mib << 20;
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let kbs = DevKbs::start().await.unwrap();
    let kek = [0x42u8; 32];
    kbs.put("default/model-kek/bench", &kek, Policy::Allow);
    let work = tempfile::tempdir().unwrap();
    let model_dir = work.path().join("model");
    std::fs::create_dir_all(&model_dir).unwrap();
    let (reg, img) = tokio::task::spawn_blocking({
        let model_dir = model_dir.clone();
        move || {
            let reg = TestRegistry::start();
            let img = ImageBuilder::new("v1");
            let dir = img.rootfs().join("models");
            std::fs::create_dir_all(&dir).unwrap();
            let mut a = std::fs::File::create(model_dir.join("model.bin")).unwrap();
            let mut b = std::fs::File::create(dir.join("model.bin")).unwrap();
            let mut buf = vec![0u8; 1 << 20];
            for _ in 0..mib {
                rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut buf);
                a.write_all(&buf).unwrap();
                b.write_all(&buf).unwrap();
            }
            drop((a, b));
            img.layer();
            (reg, img)
        }
    })
    .await
    .unwrap();
    let registry = reg.client();

    // Owner side: seal (1 MiB chunks) and push; encrypt the image for the key provider and push.
    let layout = work.path().join("sealed");
    let sealed = seal_dir(
        &model_dir,
        &layout,
        &Kek::new(Zeroizing::new(kek)),
        KID,
        1 << 20,
    )
    .unwrap();
    let sealed_ref = format!("{}/bench/sealed:v1", reg.host());
    registry
        .push_layout(&layout, "model", &Registry::reference(&sealed_ref).unwrap())
        .await
        .unwrap();
    let plain_digest = sealed.digests["model.bin"].clone();
    img.encrypt_for_key_provider(KID, &kek);
    let image_ref = {
        let (reg, layout) = (&reg, img.layout.clone());
        reg.push(&layout, "v1", "bench/image")
    };
    drop(std::fs::remove_dir_all(&model_dir));

    let keks = KbsClientResources(
        KbsClient::new(KbsConfig::new(kbs.url()), Arc::new(SampleAttester)).unwrap(),
    );
    let r = Registry::reference(&sealed_ref).unwrap();
    let artifact = registry.resolve_artifact(&r).await.unwrap();
    let blob = artifact.layers[0].clone();
    let blob_digest = Digest::parse(&blob.digest).unwrap();
    let mut pins = PinnedDigests::new();
    pins.insert("model.bin".into(), plain_digest.clone());
    let mut image_pins = PinnedDigests::new();
    image_pins.insert("models/model.bin".into(), plain_digest.clone());

    println!(
        "{mib} MiB model file, registry on 127.0.0.1, {cores} cores, median of {RUNS}; \
         mlock: {}",
        if ward_image::sealed::PlaintextBuffer::allocate(1 << 20)
            .unwrap()
            .locked()
        {
            "yes"
        } else {
            "refused (RLIMIT_MEMLOCK): buffers unlocked"
        }
    );
    // Rounds of the three paths in turn, so that a change in the machine's load (other
    // tenants: steal time) falls on all three rather than on whichever ran at that moment.
    let (mut plain, mut sealed_f, mut image_f) = Default::default();
    for _ in 0..RUNS {
        Figures::run(&mut plain, async {
            let mut sink = Vec::with_capacity(usize::try_from(blob.size).unwrap());
            registry
                .stream_blob(
                    &artifact.reference,
                    &blob,
                    &blob_digest,
                    &mut sink,
                    u64::MAX,
                )
                .await
                .unwrap();
            assert_eq!(sink.len() as i64, blob.size);
        })
        .await;
        Figures::run(&mut sealed_f, async {
            let m = fetch_model(&registry, &sealed_ref, &keks, &[], Some(&pins), cores)
                .await
                .unwrap();
            assert_eq!(m.files[0].data.len() as u64, bytes);
        })
        .await;
        Figures::run(&mut image_f, async {
            let m = fetch_model(&registry, &image_ref, &keks, &[], Some(&image_pins), cores)
                .await
                .unwrap();
            assert_eq!(m.files[0].data.len() as u64, bytes);
        })
        .await;
    }
    let plain = Figures::print(plain, "plain download into memory (digest-checked)", bytes);
    let sealed_t = Figures::print(sealed_f, "sealed model -> verified plaintext", bytes);
    let image_t = Figures::print(
        image_f,
        "ocicrypt image (KBS key provider) -> memory",
        bytes,
    );
    println!(
        "sealed / plain: {:.2}x   ocicrypt image / plain: {:.2}x   (target for sealed: <= 1.2x)",
        sealed_t.as_secs_f64() / plain.as_secs_f64(),
        image_t.as_secs_f64() / plain.as_secs_f64()
    );
    first_token(&work, &registry, &reg, &kbs, kek).await;

    // What existing tooling does with the same image: skopeo cannot decrypt key-provider packets
    // without a keyprovider daemon, so it copies the image as it is (still encrypted) to disk.
    let mut times = Vec::new();
    for i in 0..RUNS {
        let dest = work.path().join(format!("skopeo-{i}"));
        let t = Instant::now();
        let status = Command::new("skopeo")
            .args(["copy", "--quiet", "--src-tls-verify=false"])
            .arg(format!("docker://{image_ref}"))
            .arg(format!("oci:{}:v1", dest.display()))
            .status()
            .unwrap();
        assert!(status.success());
        times.push(t.elapsed());
        let _ = std::fs::remove_dir_all(&dest);
    }
    let skopeo = median(times);
    println!(
        "{:<44} {:>7.2} s  {:>5.2} GB/s  (to disk, still encrypted; sealed / skopeo: {:.2}x)",
        "skopeo copy of the encrypted image (no decrypt)",
        skopeo.as_secs_f64(),
        bytes as f64 / skopeo.as_secs_f64() / 1e9,
        sealed_t.as_secs_f64() / skopeo.as_secs_f64()
    );
}

/// wardd start to first token with a sealed ~1 GiB model, and the runtime alone on the same GGUF.
async fn first_token(
    work: &tempfile::TempDir,
    registry: &Registry,
    reg: &TestRegistry,
    kbs: &DevKbs,
    kek: [u8; 32],
) {
    let Some(tokenizer) = ttft::smollm2() else {
        println!("wardd start -> first token: skipped (no SmolLM2 GGUF: scripts/fetch-model.sh)");
        return;
    };
    let dir = work.path().join("model-1g");
    std::fs::create_dir_all(&dir).unwrap();
    let gguf = dir.join("model.gguf");
    let size = tokio::task::spawn_blocking({
        let gguf = gguf.clone();
        move || ttft::write_model(&tokenizer, &gguf)
    })
    .await
    .unwrap();
    let bytes = std::fs::read(&gguf).unwrap();
    let (loaded, first) = ttft::in_memory_first_token(&bytes).await;
    drop(bytes);
    let layout = work.path().join("model-1g.sealed");
    let sealed = seal_dir(&dir, &layout, &Kek::new(Zeroizing::new(kek)), KID, 1 << 20).unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
    let reference = format!("{}/bench/model-1g:v1", reg.host());
    let pushed = registry
        .push_layout(&layout, "model", &Registry::reference(&reference).unwrap())
        .await
        .unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let (host, kbs_url) = (reg.host(), kbs.url());
    let digest = sealed.digests["model.gguf"].to_string();
    let started = Instant::now();
    let w = tokio::task::spawn_blocking(move || {
        let dir = tempfile::tempdir().unwrap();
        let config = ward_tests::config_text(dir.path(), &["all"])
            .replace(
                "[images]\n",
                &format!("[images]\ninsecure_registries = [{host:?}]\n"),
            )
            .replace(
                "[[listener]]",
                &format!(
                    "[[model]]\nname = \"bench\"\nsource = \"{host}/bench/model-1g@{pushed}\"\n\
                     [model.digests]\n\"model.gguf\" = \"{digest}\"\n\n\
                     [[listener]]\naddress = \"tcp://127.0.0.1:{port}\"\n\
                     services = [\"inference\", \"health\"]\nprotocol = \"http\"\n\n[[listener]]"
                ),
            )
            .replace("level = \"debug\"", "level = \"info\"")
            + &format!("\n[kbs]\nurl = \"{kbs_url}\"\n");
        ward_tests::Wardd::start_with(dir, &config, "ward.tee=sample", &[])
    })
    .await
    .unwrap();
    let ready = w.ready_after;
    let http = reqwest::Client::new();
    let base = format!("http://127.0.0.1:{port}/v1");
    let until = Instant::now() + Duration::from_secs(600);
    loop {
        let served = match http.get(format!("{base}/models")).send().await {
            Ok(r) => r.text().await.unwrap_or_default().contains("\"bench\""),
            Err(_) => false,
        };
        if served {
            break;
        }
        assert!(Instant::now() < until, "not served: {}", w.stderr());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let served = started.elapsed();
    ttft::first_streamed_token(&http, &base, "bench").await;
    let token = started.elapsed();
    println!(
        "\nsealed {:.2} GiB model (llama Q8_0, random weights, SmolLM2 tokenizer) in wardd:",
        size as f64 / (1u64 << 30) as f64
    );
    println!(
        "  spawn -> READY {:.3} s, -> model served {:.2} s, -> first token {:.2} s",
        ready.as_secs_f64(),
        served.as_secs_f64(),
        token.as_secs_f64()
    );
    println!(
        "  baseline, the same GGUF already in memory: engine ready {:.2} s, first token {:.2} s \
         (wardd / baseline: {:.2}x)",
        loaded.as_secs_f64(),
        first.as_secs_f64(),
        token.as_secs_f64() / first.as_secs_f64()
    );
    drop(w);
}
