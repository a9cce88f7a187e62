#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use zeroize::Zeroizing;

use super::*;
use crate::sealed::Kek;

const KID: &str = "kbs:///default/model-kek/1";

fn kek(b: u8) -> Kek {
    Kek::new(Zeroizing::new([b; 32]))
}

fn model_dir() -> tempfile::TempDir {
    let d = tempfile::tempdir().unwrap();
    std::fs::write(d.path().join("config.json"), br#"{"hidden_size": 8}"#).unwrap();
    std::fs::create_dir(d.path().join("shards")).unwrap();
    let weights: Vec<u8> = (0..200_000u32).map(|i| (i % 253) as u8).collect();
    std::fs::write(d.path().join("shards/model-00001.safetensors"), &weights).unwrap();
    std::fs::write(d.path().join("empty.txt"), b"").unwrap();
    d
}

#[test]
fn seal_then_unseal_gives_the_same_tree() {
    let src = model_dir();
    let work = tempfile::tempdir().unwrap();
    let out = work.path().join("sealed");
    let m = seal_dir(src.path(), &out, &kek(1), KID, 4096).unwrap();
    assert_eq!(
        m.digests.keys().collect::<Vec<_>>(),
        ["config.json", "empty.txt", "shards/model-00001.safetensors"]
    );
    let back = work.path().join("plain");
    let digests = unseal_layout(&out, &kek(1), &back).unwrap();
    assert_eq!(digests, m.digests);
    for name in m.digests.keys() {
        assert_eq!(
            std::fs::read(back.join(name)).unwrap(),
            std::fs::read(src.path().join(name)).unwrap(),
            "{name}"
        );
    }
    let entry = policy_entry("m", "r.io/m", &m.manifest_digest, KID, &m.digests);
    assert!(
        entry.contains("\"shards/model-00001.safetensors\" = \"sha256:"),
        "{entry}"
    );
    // No plaintext in the sealed layout.
    for e in std::fs::read_dir(out.join("blobs/sha256")).unwrap() {
        let bytes = std::fs::read(e.unwrap().path()).unwrap();
        assert!(!bytes.windows(11).any(|w| w == b"hidden_size"));
    }
}

#[test]
fn any_tampering_or_wrong_key_fails_and_writes_nothing() {
    let src = model_dir();
    let work = tempfile::tempdir().unwrap();
    let out = work.path().join("sealed");
    let m = seal_dir(src.path(), &out, &kek(1), KID, 4096).unwrap();

    let e = unseal_layout(&out, &kek(2), &work.path().join("a")).unwrap_err();
    assert!(
        e.to_string().contains("KEK") || e.to_string().contains("kek"),
        "{e}"
    );
    assert!(!work.path().join("a").exists());

    // Flip one bit in the largest sealed blob: its digest no longer matches the manifest.
    let (_, manifest) = package::layout_manifest(&out).unwrap();
    let layer = manifest["layers"]
        .as_array()
        .unwrap()
        .iter()
        .max_by_key(|l| l["size"].as_u64().unwrap())
        .unwrap()
        .clone();
    let d = crate::digest::Digest::parse(layer["digest"].as_str().unwrap()).unwrap();
    let path = out.join("blobs/sha256").join(d.hex());
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[5000] ^= 1;
    std::fs::write(&path, &bytes).unwrap();
    let e = unseal_layout(&out, &kek(1), &work.path().join("b")).unwrap_err();
    assert!(e.to_string().contains("does not match its digest"), "{e}");
    assert!(!work.path().join("b").exists());
    assert_eq!(m.digests.len(), 3);

    // Existing outputs are never overwritten.
    assert!(seal_dir(src.path(), &out, &kek(1), KID, 4096).is_err());
}

#[test]
fn bad_inputs_are_refused() {
    let work = tempfile::tempdir().unwrap();
    let empty = tempfile::tempdir().unwrap();
    assert!(seal_dir(empty.path(), &work.path().join("x"), &kek(1), KID, 4096).is_err());
    let src = model_dir();
    assert!(
        seal_dir(
            src.path(),
            &work.path().join("y"),
            &kek(1),
            "not-a-uri",
            4096
        )
        .is_err()
    );
    std::os::unix::fs::symlink("/etc/passwd", src.path().join("link")).unwrap();
    let e = seal_dir(src.path(), &work.path().join("z"), &kek(1), KID, 4096).unwrap_err();
    assert!(e.to_string().contains("not a regular file"), "{e}");
    assert!(!work.path().join("z").exists());
}
