//! wardd serving a sealed model, as the inference API tests need it: the model's files sealed
//! under a KEK that the development KBS releases, named in `[[model]]` as a local layout (or
//! pushed to a registry on 127.0.0.1, [`serve_model_from_registry`]), and waited for until its
//! inference engine is up.

use std::time::{Duration, Instant};

use ward_image::model_artifact::seal_dir;
use ward_image::sealed::Kek;
use zeroize::Zeroizing;

use crate::kbs::{DevKbs, Policy};
use crate::{Wardd, config_text};

/// A wardd with one model loaded and served.
pub struct ServedModel {
    pub wardd: Wardd,
    /// The KBS that released the model's KEK (kept alive with wardd).
    pub kbs: DevKbs,
    /// The sealed model's manifest digest, as wardd audits it.
    pub manifest_digest: String,
    /// The registry the model came from, if it came from one.
    pub registry: Option<crate::registry::TestRegistry>,
    _work: tempfile::TempDir,
}

/// Seals `files` (name, bytes) as model `name`, and starts wardd (sample TEE) with it and with
/// `listeners` (`[[listener]]` tables; the harness's unix listener serving `all` comes after
/// them). `listeners` may use `{dir}` for wardd's private directory. Waits up to 120 s for
/// the engine.
pub async fn serve_model(name: &str, files: &[(&str, &[u8])], listeners: &str) -> ServedModel {
    serve_model_with(name, files, listeners, "", "inference engine ready").await
}

/// [`serve_model`] with more keys in the `[[model]]` table (`model_keys`, TOML lines) and the
/// log line that says the model serves (`ready`: an external engine says `external engine
/// serving`). Waits up to 300 s.
pub async fn serve_model_with(
    name: &str,
    files: &[(&str, &[u8])],
    listeners: &str,
    model_keys: &str,
    ready: &str,
) -> ServedModel {
    serve_model_with_resources(name, files, listeners, model_keys, ready, &[]).await
}

/// As [`serve_model_with`], with more resources in the KBS before wardd starts (a model's
/// access policy): (path `repo/type/tag`, bytes, policy).
pub async fn serve_model_with_resources(
    name: &str,
    files: &[(&str, &[u8])],
    listeners: &str,
    model_keys: &str,
    ready: &str,
    resources: &[(&str, &[u8], Policy)],
) -> ServedModel {
    serve(name, files, listeners, model_keys, ready, resources, false).await
}

/// [`serve_model_with`], the sealed model pushed to a `docker-registry` on 127.0.0.1 and
/// named in `[[model]]` by its reference: the path of a model shipped through a registry.
pub async fn serve_model_from_registry(
    name: &str,
    files: &[(&str, &[u8])],
    listeners: &str,
    model_keys: &str,
    ready: &str,
) -> ServedModel {
    serve(name, files, listeners, model_keys, ready, &[], true).await
}

async fn serve(
    name: &str,
    files: &[(&str, &[u8])],
    listeners: &str,
    model_keys: &str,
    ready: &str,
    resources: &[(&str, &[u8], Policy)],
    via_registry: bool,
) -> ServedModel {
    let kbs = DevKbs::start().await.unwrap();
    for (path, bytes, policy) in resources {
        kbs.put(path, bytes, *policy);
    }
    let kek = [0x42u8; 32];
    let kid = format!("kbs:///default/model-kek/{name}");
    kbs.put(&format!("default/model-kek/{name}"), &kek, Policy::Allow);
    let work = tempfile::tempdir().unwrap();
    let model = work.path().join("model");
    std::fs::create_dir_all(&model).unwrap();
    for (file, bytes) in files {
        std::fs::write(model.join(file), bytes).unwrap();
    }
    let layout = work.path().join("sealed");
    let sealed = seal_dir(
        &model,
        &layout,
        &Kek::new(Zeroizing::new(kek)),
        &kid,
        1 << 20,
    )
    .unwrap();
    let digests: String = sealed
        .digests
        .iter()
        .map(|(n, d)| format!("{n:?} = \"{d}\"\n"))
        .collect();
    let (name_owned, kbs_url, listeners) = (name.to_string(), kbs.url(), listeners.to_string());
    let model_keys = model_keys.to_string();
    let (registry, source, images) = if via_registry {
        let registry = tokio::task::spawn_blocking(crate::registry::TestRegistry::start)
            .await
            .unwrap();
        let reference = format!("{}/models/{name}:v1", registry.host());
        registry
            .client()
            .push_layout(
                &layout,
                "model",
                &ward_image::registry::Registry::reference(&reference).unwrap(),
            )
            .await
            .unwrap();
        let images = format!("[images]\ninsecure_registries = [{:?}]\n", registry.host());
        (Some(registry), reference, images)
    } else {
        (None, layout.display().to_string(), "[images]\n".to_string())
    };
    let wardd = tokio::task::spawn_blocking(move || {
        let dir = tempfile::tempdir().unwrap();
        let listeners = listeners.replace("{dir}", &dir.path().display().to_string());
        let config = config_text(dir.path(), &["all"])
            .replace("[images]\n", &images)
            .replace(
                "[[listener]]",
                &format!(
                    "[[model]]\nname = \"{name_owned}\"\nsource = \"{source}\"\n{model_keys}\n\
                     [model.digests]\n{digests}\n{listeners}\n[[listener]]"
                ),
            )
            + &format!("\n[kbs]\nurl = \"{kbs_url}\"\n");
        Wardd::start_with(dir, &config, "ward.tee=sample", &[])
    })
    .await
    .unwrap();
    let until = Instant::now() + Duration::from_secs(300);
    loop {
        let stderr = wardd.stderr();
        if stderr.contains(ready) {
            break;
        }
        assert!(
            !stderr.contains("model not loaded")
                && !stderr.contains("refused the model")
                && !stderr.contains("external engine not started"),
            "the model did not load:\n{stderr}"
        );
        assert!(Instant::now() < until, "no engine after 300 s:\n{stderr}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let audit = std::fs::read_to_string(&wardd.audit).unwrap();
    let manifest_digest = audit
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|e| e["event"] == "model.load" && e["subject"] == name)
        .and_then(|e| e["detail"]["manifest"].as_str().map(str::to_string))
        .unwrap_or_else(|| panic!("no model.load entry for {name}: {audit}"));
    ServedModel {
        wardd,
        kbs,
        manifest_digest,
        registry,
        _work: work,
    }
}

/// The `inference.request` entries of an audit log, in order.
pub fn inference_entries(audit: &std::path::Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(audit)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|e| e["event"] == "inference.request")
        .collect()
}
