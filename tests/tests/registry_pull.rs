//! Pulling from a real registry (`docker-registry` on 127.0.0.1) images made by real tools
//! (`umoci`, `skopeo`): manifests, indexes and blobs verified by digest; tampering detected.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use ward_image::digest::Digest;
use ward_image::registry::{Registry, RegistryConfig, RegistryError};
use ward_tests::registry::{ImageBuilder, TestRegistry, image_tools};

fn two_layer_image() -> ImageBuilder {
    let img = ImageBuilder::new("v1");
    let root = img.rootfs();
    std::fs::create_dir_all(root.join("etc")).unwrap();
    std::fs::write(root.join("etc/hello"), "hello\n").unwrap();
    std::fs::write(root.join("gone"), "to be removed\n").unwrap();
    img.layer();
    std::fs::remove_file(root.join("gone")).unwrap();
    std::fs::write(root.join("etc/second"), "second layer\n").unwrap();
    img.layer();
    img
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resolves_and_fetches_verified_blobs() {
    if let Err(skip) = image_tools() {
        eprintln!("{skip}");
        return;
    }
    let (reg, reference) = tokio::task::spawn_blocking(|| {
        let reg = TestRegistry::start();
        let img = two_layer_image();
        let r = reg.push(&img.layout, "v1", "test/two-layers");
        (reg, r)
    })
    .await
    .unwrap();
    let r = reg.client();
    let image = r
        .resolve(&Registry::reference(&reference).unwrap())
        .await
        .unwrap();
    assert_eq!(image.layers.len(), 2);
    assert_eq!(image.diff_ids.len(), 2);
    assert_eq!(Digest::of(&image.config), image.config_digest);

    // Pinned by digest: the same manifest.
    let pinned = format!(
        "{}@{}",
        reference.split(':').take(2).collect::<Vec<_>>().join(":"),
        image.manifest_digest
    );
    let again = r
        .resolve(&Registry::reference(&pinned).unwrap())
        .await
        .unwrap();
    assert_eq!(again.manifest_digest, image.manifest_digest);

    let dir = tempfile::tempdir().unwrap();
    let dest = dir.path().join("layer0");
    r.fetch_blob_to(&image.reference, &image.layers[0], &dest, 1 << 30)
        .await
        .unwrap();
    assert_eq!(
        Digest::of(&std::fs::read(&dest).unwrap()).to_string(),
        image.layers[0].digest
    );

    // One flipped bit in the registry's copy: refused, and nothing is left behind.
    let blob = reg.blob_path(&image.layers[1].digest);
    let mut bytes = std::fs::read(&blob).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 1;
    std::fs::write(&blob, bytes).unwrap();
    let dest = dir.path().join("layer1");
    let e = r
        .fetch_blob_to(&image.reference, &image.layers[1], &dest, 1 << 30)
        .await
        .unwrap_err();
    assert!(
        matches!(
            e,
            RegistryError::Verify { .. } | RegistryError::Fetch { .. }
        ),
        "{e}"
    );
    assert!(!dest.exists(), "a failed blob leaves no file");

    // A digest that names no manifest.
    let bogus = format!(
        "{}@sha256:{}",
        reference.split(':').take(2).collect::<Vec<_>>().join(":"),
        "0".repeat(64)
    );
    assert!(
        r.resolve(&Registry::reference(&bogus).unwrap())
            .await
            .is_err()
    );
}

mod pulls {
    use std::path::Path;
    use std::process::Command;
    use std::sync::Arc;

    use super::*;
    use ward_image::ocicrypt::PrivateKey;
    use ward_image::pull::{Decryption, PullError, PullOptions, Puller};
    use ward_image::unpack::UnpackPolicy;
    use ward_tests::registry::{rsa_keypair, run};
    use ward_tests::registry_gate::BlobGate;

    /// A puller on `registry` keeping blobs in `cache` when given, else none (the default).
    pub(super) fn puller_on(registry: Registry, cache: Option<&Path>) -> Arc<Puller> {
        Arc::new(
            Puller::new(
                registry,
                PullOptions {
                    blob_cache: cache.map(Path::to_path_buf),
                    concurrency: 8,
                    unpack: UnpackPolicy::default(),
                    require_encrypted: false,
                },
            )
            .unwrap(),
        )
    }

    /// A puller on the test registry, keeping blobs in `cache` when given.
    fn puller(reg: &TestRegistry, cache: Option<&Path>) -> Arc<Puller> {
        puller_on(reg.client(), cache)
    }

    /// Every path under `root` with its kind and content, for comparing two trees.
    fn tree(root: &Path) -> Vec<(String, String)> {
        let out = run(Command::new("sh").arg("-c").arg(format!(
            "cd {} && find . -mindepth 1 -printf '%P %y %m %s %l\\n' | sort",
            root.display()
        )));
        out.lines()
            .map(|l| {
                let path = l.split(' ').next().unwrap().to_string();
                let content = if l.split(' ').nth(1) == Some("f") {
                    hex::encode(std::fs::read(root.join(&path)).unwrap())
                } else {
                    String::new()
                };
                (l.to_string(), content)
            })
            .collect()
    }

    fn rich_image() -> ImageBuilder {
        use std::os::unix::fs::{PermissionsExt, symlink};
        let img = ImageBuilder::new("v1");
        let root = img.rootfs();
        std::fs::create_dir_all(root.join("etc/conf.d")).unwrap();
        std::fs::create_dir_all(root.join("opaque/old")).unwrap();
        std::fs::write(root.join("etc/hello"), "hello\n").unwrap();
        std::fs::write(root.join("etc/conf.d/a"), "a\n").unwrap();
        std::fs::write(root.join("opaque/old/file"), "old\n").unwrap();
        std::fs::write(root.join("gone"), "to be removed\n").unwrap();
        std::fs::hard_link(root.join("etc/hello"), root.join("etc/hello.link")).unwrap();
        symlink("../etc/hello", root.join("etc/conf.d/rel")).unwrap();
        symlink("/etc/hello", root.join("abs")).unwrap();
        std::fs::write(root.join("secret"), "0600\n").unwrap();
        std::fs::set_permissions(root.join("secret"), std::fs::Permissions::from_mode(0o600))
            .unwrap();
        if nix::unistd::geteuid().is_root() {
            std::os::unix::fs::chown(root.join("secret"), Some(1000), Some(1000)).unwrap();
        }
        img.layer();
        std::fs::remove_file(root.join("gone")).unwrap();
        std::fs::remove_dir_all(root.join("opaque")).unwrap();
        std::fs::create_dir_all(root.join("opaque")).unwrap();
        std::fs::write(root.join("opaque/new"), "new\n").unwrap();
        std::fs::write(root.join("etc/second"), "second layer\n").unwrap();
        img.layer();
        img
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_plain_multi_layer_image_unpacks_like_umoci() {
        if let Err(skip) = image_tools() {
            eprintln!("{skip}");
            return;
        }
        let (reg, img, reference) = tokio::task::spawn_blocking(|| {
            let reg = TestRegistry::start();
            let img = rich_image();
            let r = reg.push(&img.layout, "v1", "test/rich");
            (reg, img, r)
        })
        .await
        .unwrap();
        let work = tempfile::tempdir().unwrap();
        let p = puller(&reg, Some(&work.path().join("cache")));
        let bundle = work.path().join("bundle");
        let pulled = p
            .pull(&reference, &bundle, &Decryption::default())
            .await
            .unwrap();
        assert_eq!(pulled.layers, 2);
        assert!(bundle.join("config.json").exists());
        // umoci's own unpack of the same image is the reference tree.
        let reference_bundle = work.path().join("umoci");
        run(Command::new("umoci")
            .args(["unpack", "--image"])
            .arg(format!("{}:v1", img.layout.display()))
            .arg(&reference_bundle));
        assert_eq!(
            tree(&bundle.join("rootfs")),
            tree(&reference_bundle.join("rootfs"))
        );
        assert!(!bundle.join("rootfs/gone").exists());
        assert!(!bundle.join("rootfs/opaque/old").exists());

        // A second pull of the same image reuses every blob from the cache.
        let again = p
            .pull(
                &reference,
                &work.path().join("bundle2"),
                &Decryption::default(),
            )
            .await
            .unwrap();
        assert_eq!(again.bytes_fetched, 0);
        assert_eq!(again.manifest_digest, pulled.manifest_digest);
    }

    /// Opens `gate` shortly after the second pull resolved its image: by then both pulls have
    /// chosen their layer sources (nothing awaits between `resolved` and that choice), and the
    /// layer's first byte has not been served, so the second must join the first's download.
    struct OpenOnSecondResolve {
        seen: std::sync::atomic::AtomicUsize,
        gate: Arc<BlobGate>,
    }

    impl ward_image::progress::PullProgress for OpenOnSecondResolve {
        fn resolved(&self, _image: &str, _layers: &[ward_image::progress::LayerInfo]) {
            if self.seen.fetch_add(1, std::sync::atomic::Ordering::SeqCst) == 1 {
                let gate = self.gate.clone();
                std::thread::spawn(move || {
                    std::thread::sleep(std::time::Duration::from_millis(300));
                    gate.open();
                });
            }
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_pulls_of_one_image_share_the_download() {
        if let Err(skip) = image_tools() {
            eprintln!("{skip}");
            return;
        }
        let (reg, reference) = tokio::task::spawn_blocking(|| {
            let reg = TestRegistry::start();
            let img = ImageBuilder::new("v1");
            std::fs::write(img.rootfs().join("big"), vec![7u8; 8 << 20]).unwrap();
            img.layer();
            let r = reg.push(&img.layout, "v1", "test/shared");
            (reg, r)
        })
        .await
        .unwrap();
        let layer = reg
            .client()
            .resolve(&Registry::reference(&reference).unwrap())
            .await
            .unwrap()
            .layers[0]
            .digest
            .clone();
        // The layer's bytes are held until both pulls resolved: they overlap by construction,
        // not by luck (CI once saw the first pull finish a 21 KB layer before the second began).
        let gate = Arc::new(BlobGate::start(&reg.host(), &layer));
        let reference = reference.replace(&reg.host(), &gate.host());
        let registry = Registry::new(RegistryConfig {
            insecure: vec![gate.host()],
            ..Default::default()
        })
        .unwrap();
        let p = puller_on(registry, None);
        let progress: Arc<dyn ward_image::progress::PullProgress> = Arc::new(OpenOnSecondResolve {
            seen: Default::default(),
            gate: gate.clone(),
        });
        let work = tempfile::tempdir().unwrap();
        let (bundle_a, bundle_b) = (work.path().join("a"), work.path().join("b"));
        let none = Decryption::default();
        let (a, b) = tokio::join!(
            p.pull_with_progress(&reference, &bundle_a, &none, progress.clone()),
            p.pull_with_progress(&reference, &bundle_b, &none, progress.clone()),
        );
        let (a, b) = (a.unwrap(), b.unwrap());
        assert_eq!(gate.gets(), 1, "one GET of the layer");
        assert_eq!(
            a.bytes_fetched + b.bytes_fetched,
            a.bytes_fetched.max(b.bytes_fetched),
            "one download"
        );
        for bundle in ["a", "b"] {
            assert_eq!(
                std::fs::read(work.path().join(bundle).join("rootfs/big"))
                    .unwrap()
                    .len(),
                8 << 20
            );
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_skopeo_encrypted_image_needs_its_key_and_detects_tampering() {
        if let Err(skip) = image_tools() {
            eprintln!("{skip}");
            return;
        }
        let keys = tempfile::tempdir().unwrap();
        let (key, public) = rsa_keypair(keys.path());
        let (reg, reference) = tokio::task::spawn_blocking(move || {
            let reg = TestRegistry::start();
            let img = rich_image();
            let reference = reg.push_encrypted(&img.layout, "v1", "test/encrypted", &public);
            (reg, reference)
        })
        .await
        .unwrap();
        let work = tempfile::tempdir().unwrap();
        let p = puller(&reg, None);
        let bundle = work.path().join("bundle");

        // No key: a clear error naming what the layer carries; nothing published.
        let e = p
            .pull(&reference, &bundle, &Decryption::default())
            .await
            .unwrap_err();
        assert!(matches!(e, PullError::NoKey { .. }), "{e}");
        assert!(
            e.to_string()
                .contains("org.opencontainers.image.enc.keys.jwe"),
            "{e}"
        );
        assert!(!bundle.join("rootfs").exists());

        let pem = std::fs::read_to_string(&key).unwrap();
        let decryption = Decryption {
            keys: PrivateKey::all_from_pem(&pem).unwrap(),
            kek: None,
        };
        let pulled = p.pull(&reference, &bundle, &decryption).await.unwrap();
        assert_eq!(pulled.encrypted_layers, 2);
        assert_eq!(
            std::fs::read_to_string(bundle.join("rootfs/etc/second")).unwrap(),
            "second layer\n"
        );

        // One flipped bit in an encrypted layer: refused, and the
        // bundle published before stays as it was.
        let image = reg
            .client()
            .resolve(&Registry::reference(&reference).unwrap())
            .await
            .unwrap();
        let blob = reg.blob_path(&image.layers[1].digest);
        let mut bytes = std::fs::read(&blob).unwrap();
        let mid = bytes.len() / 2;
        bytes[mid] ^= 1;
        std::fs::write(&blob, bytes).unwrap();
        let fresh = puller(&reg, None);
        let e = fresh
            .pull(&reference, &bundle, &decryption)
            .await
            .unwrap_err();
        assert!(matches!(e, PullError::Registry(_)), "{e}");
        assert_eq!(
            std::fs::read_to_string(bundle.join("rootfs/etc/second")).unwrap(),
            "second layer\n"
        );
    }
}

mod formats {
    use std::path::Path;
    use std::process::Command;
    use std::sync::Arc;

    use super::*;
    use ward_image::ocicrypt::PrivateKey;
    use ward_image::pull::{Decryption, PullError, Puller};
    use ward_image::registry::Platform;
    use ward_tests::registry::{rsa_keypair, run};

    fn puller_with(reg: &TestRegistry, platform: Option<Platform>) -> Arc<Puller> {
        let registry = Registry::new(RegistryConfig {
            insecure: vec![reg.host()],
            platform,
            ..Default::default()
        })
        .unwrap();
        super::pulls::puller_on(registry, None)
    }

    fn read_json(path: &Path) -> serde_json::Value {
        serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
    }

    fn write_blob(layout: &Path, bytes: &[u8]) -> (String, usize) {
        let d = Digest::of(bytes);
        std::fs::write(layout.join("blobs/sha256").join(d.hex()), bytes).unwrap();
        (d.to_string(), bytes.len())
    }

    fn blob(layout: &Path, digest: &str) -> std::path::PathBuf {
        layout
            .join("blobs/sha256")
            .join(digest.trim_start_matches("sha256:"))
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn docker_v2s2_and_multi_arch_indexes() {
        if let Err(skip) = image_tools() {
            eprintln!("{skip}");
            return;
        }
        let (reg, docker_ref, index_ref) = tokio::task::spawn_blocking(|| {
            let reg = TestRegistry::start();
            // amd64 image with one file, arm64 image with another.
            let amd = ImageBuilder::new("v1");
            std::fs::write(amd.rootfs().join("arch"), "amd64\n").unwrap();
            amd.layer();
            let docker_ref = format!("{}/test/docker:v1", reg.host());
            run(Command::new("skopeo").args([
                "copy", "--quiet", "--dest-tls-verify=false", "--format", "v2s2",
                &format!("oci:{}:v1", amd.layout.display()), &format!("docker://{docker_ref}"),
            ]));
            // An OCI index in amd's layout pointing at amd's manifest and a variant claiming arm64.
            let index = read_json(&amd.layout.join("index.json"));
            let amd_desc = index["manifests"][0].clone();
            let mut arm_manifest = read_json(&blob(&amd.layout, amd_desc["digest"].as_str().unwrap()));
            let mut arm_config = read_json(&blob(&amd.layout, arm_manifest["config"]["digest"].as_str().unwrap()));
            arm_config["architecture"] = "arm64".into();
            let (cd, cs) = write_blob(&amd.layout, arm_config.to_string().as_bytes());
            arm_manifest["config"]["digest"] = cd.into();
            arm_manifest["config"]["size"] = cs.into();
            let (md, ms) = write_blob(&amd.layout, arm_manifest.to_string().as_bytes());
            let mut amd_entry = amd_desc.clone();
            amd_entry["platform"] = serde_json::json!({"os": "linux", "architecture": "amd64"});
            amd_entry.as_object_mut().unwrap().remove("annotations");
            let arm_entry = serde_json::json!({"mediaType": "application/vnd.oci.image.manifest.v1+json",
                "digest": md, "size": ms, "platform": {"os": "linux", "architecture": "arm64"}});
            let oci_index = serde_json::json!({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json",
                "manifests": [arm_entry, amd_entry]});
            let (idx, idx_size) = write_blob(&amd.layout, oci_index.to_string().as_bytes());
            let top = serde_json::json!({"schemaVersion": 2, "manifests": [{"mediaType": "application/vnd.oci.image.index.v1+json",
                "digest": idx, "size": idx_size, "annotations": {"org.opencontainers.image.ref.name": "multi"}}]});
            std::fs::write(amd.layout.join("index.json"), top.to_string()).unwrap();
            let index_ref = format!("{}/test/multi:v1", reg.host());
            run(Command::new("skopeo").args([
                "copy", "--quiet", "--all", "--dest-tls-verify=false",
                &format!("oci:{}:multi", amd.layout.display()), &format!("docker://{index_ref}"),
            ]));
            (reg, docker_ref, index_ref)
        })
        .await
        .unwrap();
        let work = tempfile::tempdir().unwrap();

        let p = puller_with(&reg, None);
        p.pull(
            &docker_ref,
            &work.path().join("docker"),
            &Decryption::default(),
        )
        .await
        .unwrap();
        assert_eq!(
            std::fs::read_to_string(work.path().join("docker/rootfs/arch")).unwrap(),
            "amd64\n"
        );

        let amd64 = Platform {
            os: "linux".into(),
            architecture: "amd64".into(),
            variant: None,
        };
        let p = puller_with(&reg, Some(amd64));
        let pulled = p
            .pull(
                &index_ref,
                &work.path().join("multi"),
                &Decryption::default(),
            )
            .await
            .unwrap();
        assert_eq!(pulled.layers, 1);

        let s390 = Platform {
            os: "linux".into(),
            architecture: "s390x".into(),
            variant: None,
        };
        let p = puller_with(&reg, Some(s390));
        let e = p
            .pull(
                &index_ref,
                &work.path().join("none"),
                &Decryption::default(),
            )
            .await
            .unwrap_err();
        assert!(
            e.to_string().contains("no manifest for linux/s390x")
                && e.to_string().contains("linux/arm64"),
            "{e}"
        );
    }

    /// A tar header's checksum field, recomputed after an edit (GNU tar's "%06o\0 " layout).
    fn fix_tar_checksum(header: &mut [u8]) {
        header[148..156].fill(b' ');
        let sum: u32 = header[..512].iter().map(|&b| u32::from(b)).sum();
        header[148..156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
    }

    /// `layout:v1` encrypted by skopeo for the JWE recipient `public` into `<layout>/../enc`,
    /// its layers kept uncompressed when they are.
    fn skopeo_encrypt(layout: &Path, public: &Path) -> std::path::PathBuf {
        let enc = layout.with_file_name("enc");
        run(Command::new("skopeo").args([
            "copy",
            "--quiet",
            "--dest-oci-accept-uncompressed-layers",
            "--encryption-key",
            &format!("jwe:{}", public.display()),
            &format!("oci:{}:v1", layout.display()),
            &format!("oci:{}:v1", enc.display()),
        ]));
        enc
    }

    /// The only manifest of `layout` and its only layer's descriptor and bytes.
    fn only_layer(layout: &Path) -> (serde_json::Value, serde_json::Value, Vec<u8>) {
        let index = read_json(&layout.join("index.json"));
        let manifest = read_json(&blob(
            layout,
            index["manifests"][0]["digest"].as_str().unwrap(),
        ));
        let layer = manifest["layers"][0].clone();
        let bytes = std::fs::read(blob(layout, layer["digest"].as_str().unwrap())).unwrap();
        (manifest, layer, bytes)
    }

    /// What a malicious registry does: the only layer of `layout` replaced by `bytes`, and every
    /// digest above it fixed up (manifest, index), so that only the layer's own HMAC can tell.
    fn replace_only_layer(layout: &Path, bytes: &[u8]) {
        let (mut manifest, _, _) = only_layer(layout);
        let (nd, ns) = write_blob(layout, bytes);
        manifest["layers"][0]["digest"] = nd.into();
        manifest["layers"][0]["size"] = ns.into();
        let (md, ms) = write_blob(layout, manifest.to_string().as_bytes());
        let mut index = read_json(&layout.join("index.json"));
        index["manifests"][0]["digest"] = md.into();
        index["manifests"][0]["size"] = ms.into();
        std::fs::write(layout.join("index.json"), index.to_string()).unwrap();
    }

    /// Pulls `reference` with the private key at `key` into `<work>/bundle`, which must fail:
    /// the error, and the work directory.
    async fn pull_fails(
        reg: &TestRegistry,
        reference: &str,
        key: &Path,
    ) -> (PullError, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let work = dir.path();
        let p = puller_with(reg, None);
        let decryption = Decryption {
            keys: PrivateKey::all_from_pem(&std::fs::read_to_string(key).unwrap()).unwrap(),
            kek: None,
        };
        let bundle = work.join("bundle");
        let e = p.pull(reference, &bundle, &decryption).await.unwrap_err();
        assert!(!bundle.join("rootfs").exists(), "nothing published");
        (e, dir)
    }

    /// The outside review's decryption oracle: AES-CTR lets the host flip chosen plaintext bits
    /// of an encrypted layer. Turning the first entry's typeflag `0` into `L` (with the tar
    /// checksum fixed) makes the unpacker read that file's decrypted content as the next entry's
    /// name, before the HMAC is checked at the end. The error (which goes back to kata-agent,
    /// so to the host, and into the log) must carry nothing of it: only the HMAC failure.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_bit_flipped_encrypted_layer_leaks_no_plaintext_in_its_error() {
        if let Err(skip) = image_tools() {
            eprintln!("{skip}");
            return;
        }
        const SECRET: &str = "../../PLAINTEXT-ONLY-THE-GUEST-MAY-READ-hunter2";
        let keys = tempfile::tempdir().unwrap();
        let (key, public) = rsa_keypair(keys.path());
        let (reg, reference) = tokio::task::spawn_blocking(move || {
            let reg = TestRegistry::start();
            let img = ImageBuilder::new("v1");
            // An uncompressed layer made by GNU tar: `a` holds the secret, `b` follows it.
            let files = img.dir.path().join("files");
            std::fs::create_dir_all(&files).unwrap();
            std::fs::write(files.join("a"), SECRET).unwrap();
            std::fs::write(files.join("b"), "next entry").unwrap();
            let tar_path = img.dir.path().join("layer.tar");
            run(Command::new("tar")
                .args(["--format=gnu", "--owner=0", "--group=0", "-cf"])
                .arg(&tar_path)
                .arg("-C")
                .arg(&files)
                .args(["a", "b"]));
            let plain = std::fs::read(&tar_path).unwrap();
            let (ld, ls) = write_blob(&img.layout, &plain);
            let mut index = read_json(&img.layout.join("index.json"));
            let mdigest = index["manifests"][0]["digest"]
                .as_str()
                .unwrap()
                .to_string();
            let mut manifest = read_json(&blob(&img.layout, &mdigest));
            let cdigest = manifest["config"]["digest"].as_str().unwrap().to_string();
            let mut config = read_json(&blob(&img.layout, &cdigest));
            config["rootfs"]["diff_ids"] = serde_json::json!([ld]);
            let (cd, cs) = write_blob(&img.layout, config.to_string().as_bytes());
            manifest["config"]["digest"] = cd.into();
            manifest["config"]["size"] = cs.into();
            manifest["layers"] = serde_json::json!([{
                "mediaType": "application/vnd.oci.image.layer.v1.tar",
                "digest": ld,
                "size": ls,
            }]);
            let (md, ms) = write_blob(&img.layout, manifest.to_string().as_bytes());
            index["manifests"][0]["digest"] = md.into();
            index["manifests"][0]["size"] = ms.into();
            std::fs::write(img.layout.join("index.json"), index.to_string()).unwrap();

            let enc = skopeo_encrypt(&img.layout, &public);
            let (_, layer, mut cipher) = only_layer(&enc);
            assert_eq!(
                layer["mediaType"], "application/vnd.oci.image.layer.v1.tar+encrypted",
                "skopeo kept the layer uncompressed"
            );
            assert_eq!(
                cipher.len(),
                plain.len(),
                "AES-CTR: the ciphertext is the tar's length"
            );
            // What the host does: XOR the plaintext change into the ciphertext.
            let mut forged = plain.clone();
            assert_eq!(forged[156], b'0');
            forged[156] = b'L';
            fix_tar_checksum(&mut forged[..512]);
            for (c, (p, f)) in cipher.iter_mut().zip(plain.iter().zip(&forged)) {
                *c ^= p ^ f;
            }
            replace_only_layer(&enc, &cipher);
            let r = reg.push(&enc, "v1", "test/oracle");
            (reg, r)
        })
        .await
        .unwrap();
        let (e, _) = pull_fails(&reg, &reference, &key).await;
        let shown = format!("{e} {e:?}");
        assert!(shown.to_lowercase().contains("hmac"), "{shown}");
        for piece in ["PLAINTEXT", "hunter2", "../..", "next entry"] {
            assert!(
                !shown.contains(piece),
                "the error carries plaintext ({piece}): {shown}"
            );
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_re_digested_tampered_encrypted_layer_fails_its_hmac() {
        if let Err(skip) = image_tools() {
            eprintln!("{skip}");
            return;
        }
        // A malicious registry that flips a ciphertext bit and fixes up every digest: only the
        // layer's HMAC can catch it, and the pull must publish nothing.
        let keys = tempfile::tempdir().unwrap();
        let (key, public) = rsa_keypair(keys.path());
        let (reg, reference) = tokio::task::spawn_blocking(move || {
            let reg = TestRegistry::start();
            let img = ImageBuilder::new("v1");
            std::fs::write(img.rootfs().join("data"), vec![b'x'; 200_000]).unwrap();
            img.layer();
            let enc = skopeo_encrypt(&img.layout, &public);
            let (_, _, mut bytes) = only_layer(&enc);
            let mid = bytes.len() / 2;
            bytes[mid] ^= 1;
            replace_only_layer(&enc, &bytes);
            let r = reg.push(&enc, "v1", "test/tampered");
            (reg, r)
        })
        .await
        .unwrap();
        let (e, work) = pull_fails(&reg, &reference, &key).await;
        let bundle = work.path().join("bundle");
        assert!(
            matches!(e, PullError::Decrypt { .. } | PullError::Unpack { .. }),
            "{e}"
        );
        assert!(e.to_string().to_lowercase().contains("hmac"), "{e}");
        // The gzip stream decompressed into garbage before the HMAC failed: none of what the
        // tar parser read (entry names, sizes) is in the error.
        assert!(!format!("{e:?}").contains("entry"), "{e:?}");
        let leftovers: Vec<_> = std::fs::read_dir(&bundle)
            .map(|d| d.flatten().map(|e| e.file_name()).collect())
            .unwrap_or_default();
        assert!(
            leftovers
                .iter()
                .all(|n| !n.to_string_lossy().contains("staging")),
            "{leftovers:?}"
        );
    }
}

/// A guest without a CA store (a minimal initrd) gets a clear registry error from a pull, not a
/// panic from inside the registry client (oci-client builds a default reqwest client, which
/// panics there). rustls-native-certs reads only SSL_CERT_FILE / SSL_CERT_DIR when they are set.
#[test]
fn without_a_ca_store_a_pull_fails_with_a_message_not_a_panic() {
    let dir = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(ward_tests::bin("ward"))
        .args([
            "pull",
            "127.0.0.1:9/none/such:v1",
            "--insecure-registry",
            "127.0.0.1:9",
        ])
        .arg("--bundle")
        .arg(dir.path().join("bundle"))
        .arg("--blob-cache")
        .arg(dir.path().join("cache"))
        .env("SSL_CERT_FILE", dir.path().join("no-such-bundle.pem"))
        .env("SSL_CERT_DIR", dir.path().join("no-such-dir"))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!err.contains("panicked"), "{err}");
    assert_ne!(out.status.code(), Some(101), "{err}");
    assert!(!out.status.success(), "{err}");
    assert!(err.contains("no usable system CA store"), "{err}");
}
