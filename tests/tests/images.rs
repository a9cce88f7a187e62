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
