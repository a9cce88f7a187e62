//! Signature policy against real components: images signed by the real `skopeo` with a sigstore
//! key (signatures stored beside the image, `sha256-<hex>.sig`, as cosign does), pushed to a real
//! registry, and pulled by `ward pull` and by wardd under `policy.json`-style rules. Also registry
//! mirrors: an image named on an unreachable registry, served by its mirror.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::Path;

use ward_tests::kbs::{DevKbs, Policy};
use ward_tests::registry::{ImageBuilder, TestRegistry, image_tools};
use ward_tests::sigstore::SigstoreKey;
use ward_tests::{Wardd, config_text, run_ward};

fn pull(reference: &str, dir: &Path, bundle: &str, extra: &[&str]) -> (i32, String, String) {
    let host = reference.split('/').next().unwrap().to_string();
    let mut args = vec![
        "pull".to_string(),
        reference.to_string(),
        "--bundle".into(),
        dir.join(bundle).display().to_string(),
        "--blob-cache".into(),
        dir.join("store").display().to_string(),
        "--insecure-registry".into(),
        host,
    ];
    args.extend(extra.iter().map(|s| s.to_string()));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    run_ward("ward", &args)
}

#[test]
fn ward_pull_enforces_sigstore_signatures_made_by_skopeo() {
    if let Err(skip) = image_tools() {
        eprintln!("{skip}");
        return;
    }
    let work = tempfile::tempdir().unwrap();
    let w = work.path();
    let key = SigstoreKey::generate(w, "owner");
    let other = SigstoreKey::generate(w, "other");
    let reg = TestRegistry::start();
    let img = ImageBuilder::new("v1");
    std::fs::write(img.rootfs().join("app"), "signed payload\n").unwrap();
    img.layer();
    let signed = reg.push_signed(&img.layout, "v1", "team/signed", &key, None);
    // The same layers, unsigned, in another repository of the same namespace.
    let unsigned = reg.push(&img.layout, "v1", "team/unsigned");
    let by_other = reg.push_signed(&img.layout, "v1", "team/other-key", &other, None);

    let scope = format!("{}/team", reg.host());
    let rule = format!("{scope}={}", key.public.display());
    let strict = ["--policy", "reject", "--signed", rule.as_str(), "--quiet"];

    let (code, out, err) = pull(&signed, w, "ok", &strict);
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains(&format!("sigstoreSigned by {}", key.public.display()))
            && out.contains(&format!("scope {scope}")),
        "{out}"
    );
    assert_eq!(
        std::fs::read_to_string(w.join("ok/rootfs/app")).unwrap(),
        "signed payload\n"
    );
    // Not a terminal: one line per finished layer instead of bars.
    assert!(
        err.contains("layer 1/1 sha256:") && err.contains("verified, unpacked"),
        "{err}"
    );

    // Unsigned: refused although every layer is already in the store (a cache hit is checked too).
    let (code, out, err) = pull(&unsigned, w, "unsigned", &strict);
    assert_eq!(code, 1, "{out}{err}");
    assert!(err.contains("none is stored"), "{err}");
    assert!(
        !w.join("unsigned").exists(),
        "nothing is unpacked for a refused image"
    );

    // Signed by a key the policy does not trust.
    let (code, _, err) = pull(&by_other, w, "other", &strict);
    assert_eq!(code, 1);
    assert!(err.contains("does not verify"), "{err}");

    // Outside the signed scope, `reject` refuses outright; `accept` takes it.
    let elsewhere = reg.push(&img.layout, "v1", "elsewhere/app");
    let (code, _, err) = pull(&elsewhere, w, "elsewhere", &strict);
    assert_eq!(code, 1);
    assert!(err.contains("`reject`"), "{err}");
    let (code, out, _) = pull(&elsewhere, w, "elsewhere", &["--quiet"]);
    assert_eq!(code, 0);
    assert!(
        out.contains("insecureAcceptAnything (scope default)"),
        "{out}"
    );

    // A containers policy.json: the signature must name this repository, any tag.
    let policy = w.join("policy.json");
    std::fs::write(
        &policy,
        serde_json::json!({
            "default": [{"type": "reject"}],
            "transports": {"docker": {scope.clone(): [{
                "type": "sigstoreSigned",
                "keyPath": key.public.display().to_string(),
                "signedIdentity": {"type": "matchRepository"},
            }]}},
        })
        .to_string(),
    )
    .unwrap();
    let policy_arg = ["--policy", policy.to_str().unwrap(), "--quiet"];
    let (code, out, err) = pull(&signed, w, "by-file", &policy_arg);
    assert_eq!(code, 0, "{out}{err}");
    // A signature made for another repository, stored under this one: the identity does not match.
    let replayed = reg.push_signed(
        &img.layout,
        "v1",
        "team/replayed",
        &key,
        Some(&format!("{}/team/signed", reg.host())),
    );
    let (code, _, err) = pull(&replayed, w, "replayed", &policy_arg);
    assert_eq!(code, 1);
    assert!(
        err.contains("team/signed`") && err.contains("does not match"),
        "{err}"
    );
}

#[test]
fn mirrors_serve_images_named_on_another_registry() {
    if let Err(skip) = image_tools() {
        eprintln!("{skip}");
        return;
    }
    let work = tempfile::tempdir().unwrap();
    let w = work.path();
    let key = SigstoreKey::generate(w, "owner");
    let reg = TestRegistry::start();
    let img = ImageBuilder::new("v1");
    std::fs::write(img.rootfs().join("m"), "mirrored\n").unwrap();
    img.layer();
    // Signed under its canonical name on a registry that cannot be reached from here.
    let origin = "origin.invalid:5000";
    reg.push_signed(
        &img.layout,
        "v1",
        "team/app",
        &key,
        Some(&format!("{origin}/team/app")),
    );
    let mirror = format!("{origin}={}", reg.host());
    let rule = format!("{origin}={}", key.public.display());
    let reference = format!("{origin}/team/app:v1");
    let args = [
        "pull",
        &reference,
        "--bundle",
        &w.join("b").display().to_string(),
        "--blob-cache",
        &w.join("store").display().to_string(),
        "--insecure-registry",
        &reg.host(),
        "--mirror",
        &mirror,
        "--policy",
        "reject",
        "--signed",
        &rule,
        "--quiet",
    ]
    .map(str::to_string);
    let (code, out, err) = run_ward("ward", &args.iter().map(String::as_str).collect::<Vec<_>>());
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(
        std::fs::read_to_string(w.join("b/rootfs/m")).unwrap(),
        "mirrored\n"
    );
    assert!(out.contains(&format!("scope {origin}")), "{out}");

    // Without the mirror, the origin is tried and fails with the reason.
    let (code, _, err) = run_ward(
        "ward",
        &[
            "pull",
            &reference,
            "--bundle",
            &w.join("c").display().to_string(),
            "--blob-cache",
            &w.join("store").display().to_string(),
            "--quiet",
        ],
    );
    assert_eq!(code, 1);
    assert!(err.contains("origin.invalid"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wardd_checks_signatures_with_a_key_the_kbs_releases() {
    if let Err(skip) = image_tools() {
        eprintln!("{skip}");
        return;
    }
    let kbs = DevKbs::start().await.unwrap();
    let (reg, work, key, signed, unsigned) = tokio::task::spawn_blocking(|| {
        let work = tempfile::tempdir().unwrap();
        let key = SigstoreKey::generate(work.path(), "owner");
        let reg = TestRegistry::start();
        let img = ImageBuilder::new("v1");
        std::fs::write(img.rootfs().join("svc"), "served\n").unwrap();
        img.layer();
        let signed = reg.push_signed(&img.layout, "v1", "prod/svc", &key, None);
        let unsigned = reg.push(&img.layout, "v1", "prod/unsigned");
        (reg, work, key, signed, unsigned)
    })
    .await
    .unwrap();
    kbs.put(
        "default/cosign-key/1",
        &std::fs::read(&key.public).unwrap(),
        Policy::Allow,
    );
    let host = reg.host();
    let kbs_url = kbs.url();
    let w = tokio::task::spawn_blocking(move || {
        let dir = tempfile::tempdir().unwrap();
        let config = config_text(dir.path(), &["all"])
            .replace(
                "[images]\n",
                &format!("[images]\ninsecure_registries = [{host:?}]\npolicy = \"reject\"\n"),
            )
            .replace(
                "[[listener]]",
                &format!(
                    "[[images.signed]]\nscope = \"{host}/prod\"\nkey = \"kbs:///default/cosign-key/1\"\n\n[[listener]]"
                ),
            )
            + &format!("\n[kbs]\nurl = \"{kbs_url}\"\n");
        Wardd::start_with(dir, &config, "ward.tee=sample", &[])
    })
    .await
    .unwrap();
    let addr = w.addr.clone();
    let bundles = w.dir.path().join("bundles");
    let audit_path = w.audit.clone();
    let (ok, refused) = tokio::task::spawn_blocking(move || {
        let b = |n: &str| bundles.join(n).display().to_string();
        let ok = run_ward(
            "ward",
            &["pull", &signed, "--bundle", &b("ok"), "--addr", &addr],
        );
        let refused = run_ward(
            "ward",
            &["pull", &unsigned, "--bundle", &b("no"), "--addr", &addr],
        );
        (ok, refused)
    })
    .await
    .unwrap();
    assert_eq!(ok.0, 0, "{ok:?}");
    assert_eq!(refused.0, 1, "{refused:?}");
    assert!(
        refused.2.contains("PERMISSION_DENIED") || refused.2.contains("none is stored"),
        "{refused:?}"
    );
    let audit = std::fs::read_to_string(&audit_path).unwrap();
    assert!(
        audit.contains("sigstoreSigned by kbs:///default/cosign-key/1"),
        "{audit}"
    );
    assert!(
        audit.contains(r#""event":"image.policy_refused""#),
        "{audit}"
    );
    assert!(
        audit.contains(r#""event":"resource.release","subject":"kbs:///default/cosign-key/1""#),
        "{audit}"
    );
    drop(work);
}
