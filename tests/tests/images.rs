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

fn client(reg: &TestRegistry) -> Registry {
    Registry::new(RegistryConfig {
        insecure: vec![reg.host()],
        ..Default::default()
    })
    .unwrap()
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
    let r = client(&reg);
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
    use ward_tests::registry::run;

    fn puller(reg: &TestRegistry, store: &Path) -> Arc<Puller> {
        Arc::new(
            Puller::new(
                client(reg),
                PullOptions {
                    store: store.to_path_buf(),
                    concurrency: 8,
                    unpack: UnpackPolicy::default(),
                    require_encrypted: false,
                },
            )
            .unwrap(),
        )
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
        let p = puller(&reg, &work.path().join("store"));
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

        // A second pull of the same image reuses every blob.
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

    fn rsa_keypair(dir: &Path) -> (std::path::PathBuf, std::path::PathBuf) {
        let key = dir.join("key.pem");
        let public = dir.join("pub.pem");
        run(Command::new("openssl")
            .args(["genrsa", "-out"])
            .arg(&key)
            .arg("2048"));
        run(Command::new("openssl")
            .args(["rsa", "-in"])
            .arg(&key)
            .args(["-pubout", "-out"])
            .arg(&public));
        (key, public)
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
            let reference = format!("{}/test/encrypted:v1", reg.host());
            run(Command::new("skopeo").args([
                "copy",
                "--quiet",
                "--dest-tls-verify=false",
                "--encryption-key",
                &format!("jwe:{}", public.display()),
                &format!("oci:{}:v1", img.layout.display()),
                &format!("docker://{reference}"),
            ]));
            (reg, reference)
        })
        .await
        .unwrap();
        let work = tempfile::tempdir().unwrap();
        let p = puller(&reg, &work.path().join("store"));
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

        // One flipped bit in an encrypted layer (with the blob store bypassed): refused, and the
        // bundle published before stays as it was.
        let image = client(&reg)
            .resolve(&Registry::reference(&reference).unwrap())
            .await
            .unwrap();
        let blob = reg.blob_path(&image.layers[1].digest);
        let mut bytes = std::fs::read(&blob).unwrap();
        let mid = bytes.len() / 2;
        bytes[mid] ^= 1;
        std::fs::write(&blob, bytes).unwrap();
        let fresh = puller(&reg, &work.path().join("store2"));
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
