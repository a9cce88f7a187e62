//! The one-pass pull (#23) against a real registry: what a pull leaves on the filesystem (the
//! rootfs, no blob, unless a blob cache is configured), what a digest that fails after the
//! whole layer was unpacked leaves (nothing published, nothing staged), the space check before
//! a pull and a filesystem that fills while unpacking, and pulls of images sharing blobs in opposite orders (no deadlock).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use ward_image::digest::Digest;
use ward_image::pull::{Decryption, PullError, PullOptions, Puller};
use ward_image::registry::{Registry, RegistryError};
use ward_image::unpack::UnpackPolicy;
use ward_tests::registry::{ImageBuilder, TestRegistry, image_tools, random_file};

fn puller(reg: &TestRegistry, cache: Option<&Path>, concurrency: usize) -> Arc<Puller> {
    Arc::new(
        Puller::new(
            reg.client(),
            PullOptions {
                blob_cache: cache.map(Path::to_path_buf),
                concurrency,
                unpack: UnpackPolicy::default(),
                require_encrypted: false,
            },
        )
        .unwrap(),
    )
}

/// A tmpfs of `size` at `<dir>/small`, unmounted on drop; `None` (with a message) without root.
struct SmallTmpfs(PathBuf);

impl SmallTmpfs {
    fn mount(dir: &Path, size: &str) -> Option<SmallTmpfs> {
        let small = dir.join("small");
        std::fs::create_dir_all(&small).unwrap();
        let mounted = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(&small)
            .status()
            .is_ok_and(|s| s.success());
        if !mounted {
            eprintln!("skipped: cannot mount a tmpfs (needs root)");
            return None;
        }
        Some(SmallTmpfs(small))
    }
}

impl Drop for SmallTmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

/// Every regular file under `root`, with its size.
fn files(root: &Path) -> Vec<(PathBuf, u64)> {
    let mut out = Vec::new();
    let mut todo = vec![root.to_path_buf()];
    while let Some(dir) = todo.pop() {
        for e in std::fs::read_dir(&dir).unwrap().flatten() {
            let t = e.file_type().unwrap();
            if t.is_dir() {
                todo.push(e.path());
            } else if t.is_file() {
                out.push((e.path(), e.metadata().unwrap().len()));
            }
        }
    }
    out
}

/// A three-layer image of random files (2, 3 and 1 MiB) and its reference.
fn three_layers(reg: &TestRegistry) -> String {
    let img = ImageBuilder::new("v1");
    let root = img.rootfs();
    for (name, mib) in [("a", 2), ("b", 3), ("c", 1)] {
        random_file(&root.join(name), mib << 20);
        img.layer();
    }
    reg.push(&img.layout, "v1", "test/three")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pull_leaves_the_rootfs_and_no_blob_unless_a_cache_is_configured() {
    if let Err(skip) = image_tools() {
        eprintln!("{skip}");
        return;
    }
    let (reg, reference) = tokio::task::spawn_blocking(|| {
        let reg = TestRegistry::start();
        let r = three_layers(&reg);
        (reg, r)
    })
    .await
    .unwrap();
    let image = reg
        .client()
        .resolve(&Registry::reference(&reference).unwrap())
        .await
        .unwrap();
    let digests: Vec<Digest> = image
        .layers
        .iter()
        .map(|l| Digest::parse(&l.digest).unwrap())
        .collect();

    // By default: the work directory holds the bundle's rootfs and config.json, nothing else,
    // and no file anywhere is a layer blob.
    let work = tempfile::tempdir().unwrap();
    let bundle = work.path().join("bundle");
    let pulled = puller(&reg, None, 4)
        .pull(&reference, &bundle, &Decryption::default())
        .await
        .unwrap();
    assert_eq!(pulled.layers, 3);
    let all = files(work.path());
    let rootfs: u64 = files(&bundle.join("rootfs")).iter().map(|f| f.1).sum();
    let config = std::fs::metadata(bundle.join("config.json")).unwrap().len();
    let total: u64 = all.iter().map(|f| f.1).sum();
    assert_eq!(total, rootfs + config, "{all:?}");
    assert_eq!(rootfs, 6 << 20);
    for (path, _) in &all {
        let d = Digest::of(&std::fs::read(path).unwrap());
        assert!(!digests.contains(&d), "{} is a layer blob", path.display());
    }
    let names: Vec<_> = std::fs::read_dir(&bundle)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().to_string())
        .collect();
    assert_eq!(names.len(), 2, "rootfs and config.json only: {names:?}");

    // With a cache: every blob is kept there under its digest, verified, nothing partial; a
    // later pull (another puller, same cache) downloads nothing.
    let cache = work.path().join("cache");
    puller(&reg, Some(&cache), 4)
        .pull(&reference, &work.path().join("b2"), &Decryption::default())
        .await
        .unwrap();
    let kept = files(&cache);
    assert_eq!(kept.len(), 3, "{kept:?}");
    for d in &digests {
        let blob = cache.join("blobs").join(d.hex());
        assert_eq!(&Digest::of(&std::fs::read(&blob).unwrap()), d);
    }
    let again = puller(&reg, Some(&cache), 4)
        .pull(&reference, &work.path().join("b3"), &Decryption::default())
        .await
        .unwrap();
    assert_eq!(again.bytes_fetched, 0);
    assert_eq!(
        files(&work.path().join("b3/rootfs"))
            .iter()
            .map(|f| f.1)
            .sum::<u64>(),
        6 << 20
    );
}

/// A registry that alters a gzip layer's header (its OS byte): the layer decompresses to the
/// same tar, so it unpacks completely and its diff_id holds; only its digest, checked when the
/// stream ends, tells. Nothing may be published, and no staging directory stay behind.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_digest_that_fails_after_the_unpack_publishes_nothing_and_leaves_nothing_staged() {
    if let Err(skip) = image_tools() {
        eprintln!("{skip}");
        return;
    }
    let (reg, reference) = tokio::task::spawn_blocking(|| {
        let reg = TestRegistry::start();
        let img = ImageBuilder::new("v1");
        random_file(&img.rootfs().join("data"), 3 << 20);
        img.layer();
        let r = reg.push(&img.layout, "v1", "test/altered");
        (reg, r)
    })
    .await
    .unwrap();
    let work = tempfile::tempdir().unwrap();
    let bundle = work.path().join("bundle");
    // A bundle published before stays as it was.
    let p = puller(&reg, None, 4);
    p.pull(&reference, &bundle, &Decryption::default())
        .await
        .unwrap();
    let before = std::fs::read(bundle.join("rootfs/data")).unwrap();

    let image = reg
        .client()
        .resolve(&Registry::reference(&reference).unwrap())
        .await
        .unwrap();
    let blob = reg.blob_path(&image.layers[0].digest);
    let mut bytes = std::fs::read(&blob).unwrap();
    assert_eq!(&bytes[..3], &[0x1f, 0x8b, 8], "a gzip layer");
    bytes[9] ^= 0x01;
    std::fs::write(&blob, &bytes).unwrap();
    // The altered blob still decompresses to the layer's tar: its diff_id would hold.
    let mut tar = Vec::new();
    ward_image::pull::decompress(&bytes[..], ward_image::ocicrypt::Compression::Gzip)
        .unwrap()
        .read_to_end(&mut tar)
        .unwrap();
    assert_eq!(Digest::of(&tar), image.diff_ids[0]);

    for (name, cache) in [("none", None), ("cache", Some(work.path().join("cache")))] {
        let e = puller(&reg, cache.as_deref(), 4)
            .pull(&reference, &bundle, &Decryption::default())
            .await
            .unwrap_err();
        assert!(
            matches!(e, PullError::Registry(RegistryError::Verify { .. })),
            "{name}: {e}"
        );
        assert_eq!(
            std::fs::read(bundle.join("rootfs/data")).unwrap(),
            before,
            "{name}"
        );
        let mut left: Vec<_> = std::fs::read_dir(&bundle)
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().to_string())
            .collect();
        left.sort();
        assert_eq!(left, ["config.json", "rootfs"], "{name}: nothing staged");
        if let Some(cache) = cache {
            assert!(files(&cache).is_empty(), "a failed blob is not cached");
        }
    }
    // Into a new bundle: nothing at all is published.
    let fresh = work.path().join("fresh");
    puller(&reg, None, 4)
        .pull(&reference, &fresh, &Decryption::default())
        .await
        .unwrap_err();
    assert!(files(&fresh).is_empty());
    assert_eq!(std::fs::read_dir(&fresh).unwrap().count(), 0);
}

/// An image larger than the filesystem it is pulled to fails before any download, naming the
/// space needed and available. Needs root (a 1 MiB tmpfs); skipped otherwise.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_image_that_cannot_fit_fails_before_downloading() {
    if let Err(skip) = image_tools() {
        eprintln!("{skip}");
        return;
    }
    let work = tempfile::tempdir().unwrap();
    let Some(mounted) = SmallTmpfs::mount(work.path(), "1m") else {
        return;
    };
    let small = mounted.0.clone();
    let (reg, reference) = tokio::task::spawn_blocking(|| {
        let reg = TestRegistry::start();
        let img = ImageBuilder::new("v1");
        random_file(&img.rootfs().join("data"), 3 << 20);
        img.layer();
        let r = reg.push(&img.layout, "v1", "test/large");
        (reg, r)
    })
    .await
    .unwrap();
    let e = puller(&reg, None, 4)
        .pull(&reference, &small.join("bundle"), &Decryption::default())
        .await
        .unwrap_err();
    let PullError::NoSpace {
        needed, available, ..
    } = &e
    else {
        panic!("{e}");
    };
    assert!(*needed > 3 << 20 && *available <= 1 << 20, "{e}");
    assert!(e.to_string().contains(&needed.to_string()), "{e}");
    assert!(files(&small).is_empty(), "nothing written");
    // Where it fits, the same pull works.
    puller(&reg, None, 4)
        .pull(
            &reference,
            &work.path().join("bundle"),
            &Decryption::default(),
        )
        .await
        .unwrap();
}

/// An image whose compressed size passes the check but which unpacks larger than the
/// filesystem: `PullError::Full`, nothing published, nothing staged left behind.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_image_that_unpacks_past_the_free_space_fails_and_leaves_nothing() {
    if let Err(skip) = image_tools() {
        eprintln!("{skip}");
        return;
    }
    let work = tempfile::tempdir().unwrap();
    let Some(mounted) = SmallTmpfs::mount(work.path(), "2m") else {
        return;
    };
    let small = mounted.0.clone();
    let (reg, reference) = tokio::task::spawn_blocking(|| {
        let reg = TestRegistry::start();
        let img = ImageBuilder::new("v1");
        // 8 MiB of zeros: a gzip of a few KiB.
        std::fs::write(img.rootfs().join("zeros"), vec![0u8; 8 << 20]).unwrap();
        img.layer();
        let r = reg.push(&img.layout, "v1", "test/inflating");
        (reg, r)
    })
    .await
    .unwrap();
    let bundle = small.join("bundle");
    let e = puller(&reg, None, 4)
        .pull(&reference, &bundle, &Decryption::default())
        .await
        .unwrap_err();
    assert!(matches!(e, PullError::Full { index: 0, .. }), "{e}");
    assert!(e.to_string().contains("filesystem is full"), "{e}");
    assert!(
        files(&small).is_empty(),
        "something was left: {:?}",
        files(&small)
    );
    assert!(!bundle.join("config.json").exists() && !bundle.join("rootfs").exists());
}

/// Two images holding the same two blobs in opposite orders, pulled at once with shared
/// downloads: each pull's reader of its second layer holds back a download the other pull
/// reads first. Eviction of readers that never read breaks the wait; both pulls finish. (With
/// eviction disabled this test fails at its timeout: its runtime is shut down in the
/// background so that unpackers still waiting do not hold the test.)
#[test]
fn pulls_sharing_blobs_in_opposite_orders_both_finish() {
    if let Err(skip) = image_tools() {
        eprintln!("{skip}");
        return;
    }
    let (reg, forward, backward) = {
        let reg = TestRegistry::start();
        let img = ImageBuilder::new("v1");
        random_file(&img.rootfs().join("p"), 12 << 20);
        img.layer();
        random_file(&img.rootfs().join("z"), 12 << 20);
        img.layer();
        let forward = reg.push(&img.layout, "v1", "test/forward");
        // The same layers swapped (each only adds its file, so either order unpacks).
        let read = |p: &Path| -> serde_json::Value {
            serde_json::from_slice(&std::fs::read(p).unwrap()).unwrap()
        };
        let blob = |d: &str| {
            img.layout
                .join("blobs/sha256")
                .join(d.trim_start_matches("sha256:"))
        };
        let write = |v: &serde_json::Value| {
            let bytes = v.to_string().into_bytes();
            let d = Digest::of(&bytes);
            std::fs::write(blob(&d.to_string()), &bytes).unwrap();
            (d.to_string(), bytes.len())
        };
        let mut index = read(&img.layout.join("index.json"));
        let mut manifest = read(&blob(index["manifests"][0]["digest"].as_str().unwrap()));
        let mut config = read(&blob(manifest["config"]["digest"].as_str().unwrap()));
        config["rootfs"]["diff_ids"]
            .as_array_mut()
            .unwrap()
            .reverse();
        config.as_object_mut().unwrap().remove("history");
        let (cd, cs) = write(&config);
        manifest["config"]["digest"] = cd.into();
        manifest["config"]["size"] = cs.into();
        manifest["layers"].as_array_mut().unwrap().reverse();
        let (md, ms) = write(&manifest);
        index["manifests"][0]["digest"] = md.into();
        index["manifests"][0]["size"] = ms.into();
        std::fs::write(img.layout.join("index.json"), index.to_string()).unwrap();
        let backward = reg.push(&img.layout, "v1", "test/backward");
        (reg, forward, backward)
    };
    let work = tempfile::tempdir().unwrap();
    let (a, b) = (work.path().join("a"), work.path().join("b"));
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let outcome = rt.block_on(async {
        let p = puller(&reg, None, 2);
        let none = Decryption::default();
        let both =
            async { tokio::join!(p.pull(&forward, &a, &none), p.pull(&backward, &b, &none)) };
        tokio::time::timeout(Duration::from_secs(60), both).await
    });
    rt.shutdown_background();
    let (x, y) = outcome.expect("the two pulls wait on each other");
    x.unwrap();
    y.unwrap();
    for bundle in [&a, &b] {
        for f in ["p", "z"] {
            assert_eq!(
                std::fs::metadata(bundle.join("rootfs").join(f))
                    .unwrap()
                    .len(),
                12 << 20
            );
        }
    }
}
