//! Qwen2 on the tiny generated model (`test_models`, `Arch::Qwen2`: q/k/v biases, tied head) from
//! GGUF and safetensors: agreement with candle's own Qwen2 code, determinism, streaming, the
//! Qwen2 pre-tokenizer, and malformed checkpoints refused with typed errors.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::Cursor;
use std::sync::OnceLock;

use candle_core::quantized::GgmlDType;
use candle_core::quantized::gguf_file::{Content, Value};
use candle_core::{Device, Tensor};
use candle_transformers::models::quantized_qwen2;

use crate::test_models::{self, Arch, SEED, special_id};
use crate::{
    Engine, EngineConfig, FinishReason, InferenceError, LoadOptions, Model, Request,
    SafetensorsFiles, StreamEvent,
};

fn gguf(matmul: GgmlDType) -> Vec<u8> {
    test_models::gguf_bytes_for(Arch::Qwen2, matmul, &test_models::qwen2_gguf_metadata())
}

fn q8_gguf() -> &'static [u8] {
    static B: OnceLock<Vec<u8>> = OnceLock::new();
    B.get_or_init(|| gguf(GgmlDType::Q8_0))
}

fn config_json() -> serde_json::Value {
    serde_json::json!({
        "architectures": ["Qwen2ForCausalLM"],
        "hidden_size": test_models::HIDDEN,
        "intermediate_size": test_models::FFN,
        "vocab_size": test_models::VOCAB,
        "num_hidden_layers": test_models::LAYERS,
        "num_attention_heads": test_models::HEADS,
        "num_key_value_heads": test_models::KV_HEADS,
        "max_position_embeddings": test_models::CONTEXT,
        "max_window_layers": test_models::LAYERS,
        "sliding_window": null,
        "use_sliding_window": false,
        "tie_word_embeddings": true,
        "rope_theta": 1_000_000.0,
        "rms_norm_eps": 1e-5,
        "hidden_act": "silu",
        "eos_token_id": special_id("<|im_end|>"),
    })
}

fn files_with(cfg: serde_json::Value, weights: Vec<u8>) -> SafetensorsFiles<'static> {
    let mut files = test_models::safetensors_files(special_id("<|im_end|>"));
    files.config_json = cfg.to_string().into_bytes();
    files.weights = vec![weights.into()];
    files
}

fn st_bytes() -> &'static [u8] {
    static B: OnceLock<Vec<u8>> = OnceLock::new();
    B.get_or_init(|| test_models::safetensors_bytes(SEED, Arch::Qwen2))
}

fn st_model() -> Model {
    Model::from_safetensors(
        files_with(config_json(), st_bytes().to_vec()),
        &LoadOptions::default(),
    )
    .unwrap()
}

fn gguf_model() -> Model {
    static M: OnceLock<Model> = OnceLock::new();
    M.get_or_init(|| Model::from_gguf(q8_gguf(), &LoadOptions::default()).unwrap())
        .clone()
}

/// Greedy continuation of `prompt` by `n` tokens, through `Session` directly.
fn greedy_ids(model: &Model, prompt: &[u32], n: usize) -> Vec<u32> {
    let mut s = model.new_session().unwrap();
    let mut logits = s.forward(prompt, 0).unwrap();
    let mut out = Vec::new();
    for i in 0..n {
        let id = crate::sampling::argmax(&logits).unwrap();
        out.push(id);
        logits = s.forward(&[id], prompt.len() + i).unwrap();
    }
    out
}

const PROMPT: &[u32] = &[72, 101, 108, 108, 111, 32, 116, 104, 101, 114, 101];

fn run(model: &Model, request: Request) -> crate::Completion {
    let engine = Engine::new(
        model.clone(),
        EngineConfig {
            max_concurrent: 1,
            queue_capacity: 4,
        },
    )
    .unwrap();
    engine.submit(request).unwrap().blocking_collect().unwrap()
}

#[test]
fn loads_as_qwen2_in_both_formats() {
    let g = gguf_model();
    assert_eq!(g.info().format, "gguf-qwen2");
    assert_eq!(g.info().context_length, test_models::CONTEXT);
    let s = st_model();
    assert_eq!(s.info().format, "safetensors-qwen2");
    assert_eq!(
        (s.info().vocab_size, s.info().num_layers),
        (test_models::VOCAB, test_models::LAYERS)
    );
}

#[test]
fn gguf_forward_matches_candles_quantized_qwen2() {
    let bytes = q8_gguf();
    let mut reader = Cursor::new(bytes);
    let ct = Content::read(&mut reader).unwrap();
    let mut reference = quantized_qwen2::ModelWeights::from_gguf(ct, &mut reader, &Device::Cpu)
        .expect("candle loads the fixture");
    // A prompt, then single tokens, then a second multi-token chunk (chunked prefill).
    let chunks: [(&[u32], Option<usize>); 4] = [
        (PROMPT, None),
        (&[5], None),
        (&[17], None),
        (&[40, 41, 42], None),
    ];
    super::batch::matches_reference(&gguf_model(), &chunks, |x, pos| {
        reference.forward(x, pos).unwrap()
    });
}

#[test]
fn f32_gguf_and_safetensors_agree() {
    // Same weights, unquantised: our GGUF forward and candle's safetensors Qwen2 pick the
    // same tokens (the biases, the NeoX rotation and the tied head all line up).
    let g = Model::from_gguf(&gguf(GgmlDType::F32), &LoadOptions::default()).unwrap();
    let s = st_model();
    let a = greedy_ids(&g, PROMPT, 12);
    assert_eq!(a, greedy_ids(&s, PROMPT, 12));
    assert!(a.iter().any(|t| *t != a[0]), "degenerate output {a:?}");
}

/// The token-by-token path that a continuing chunk takes on a GPU (candle's Qwen2 cannot build
/// its mask in bf16) gives the logits of the chunked forward, here on the CPU.
#[test]
fn continuing_chunks_token_by_token_equal_chunked() {
    let model = st_model();
    let crate::model::Weights::Qwen2(weights) = &model.inner.weights else {
        panic!("not a safetensors Qwen2");
    };
    let prompt: Vec<u32> = (0..40u32).map(|i| 5 + i * 3 % 200).collect();
    let input = |r: std::ops::Range<usize>| {
        candle_core::Tensor::new(&prompt[r], &candle_core::Device::Cpu)
            .unwrap()
            .unsqueeze(0)
            .unwrap()
    };
    let run = |by_token: bool| -> Vec<f32> {
        let mut m = weights.clone();
        m.clear_kv_cache();
        crate::model::qwen2_forward(&mut m, &input(0..16), 0, by_token).unwrap();
        crate::model::qwen2_forward(&mut m, &input(16..40), 16, by_token)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap()
    };
    let (chunked, by_token) = (run(false), run(true));
    let diff = super::batch::max_diff(&chunked, &by_token);
    assert!(diff < 1e-4, "logits differ by {diff}");
}

#[test]
fn greedy_is_deterministic_and_streaming_equals_collecting() {
    for model in [gguf_model(), st_model()] {
        let request = || Request::text("hello there, the tiny qwen says").with_max_tokens(16);
        let a = run(&model, request());
        let reloaded = match model.info().format {
            "gguf-qwen2" => Model::from_gguf(q8_gguf(), &LoadOptions::default()).unwrap(),
            _ => st_model(),
        };
        assert_eq!(a, run(&reloaded, request()));
        assert_eq!(a.finish_reason, FinishReason::Length);
        assert_eq!(a.usage.completion_tokens, 16);

        let engine = Engine::new(
            model.clone(),
            EngineConfig {
                max_concurrent: 1,
                queue_capacity: 2,
            },
        )
        .unwrap();
        let mut stream = engine.submit(request()).unwrap();
        let mut deltas = Vec::new();
        let finished = loop {
            match stream.blocking_next().unwrap().unwrap() {
                StreamEvent::Delta(d) => deltas.push(d),
                StreamEvent::Finished(f) => break f,
            }
        };
        assert!(deltas.len() > 1, "{deltas:?}");
        assert_eq!(deltas.concat(), a.text);
        assert_eq!(finished.usage, a.usage);
    }
}

#[test]
fn qwen2_pre_tokenizer_splits_like_qwen2() {
    use tokenizers::{OffsetReferential, OffsetType, PreTokenizedString, PreTokenizer as _};
    let model = gguf_model();
    let pre = model.tokenizer().get_pre_tokenizer().unwrap();
    let mut pts = PreTokenizedString::from("12345 x,hello\n\nWe'LL");
    pre.pre_tokenize(&mut pts).unwrap();
    let splits: Vec<String> = pts
        .get_splits(OffsetReferential::Original, OffsetType::Byte)
        .into_iter()
        .map(|(s, _, _)| s.to_owned())
        .collect();
    // Digits one by one, punctuation glued to the next word, case-insensitive contractions
    // (the GPT-2 regex would give "12345", ",", "hello", "'", "LL").
    assert_eq!(
        splits,
        ["1", "2", "3", "4", "5", "Ġx", ",hello", "ĊĊ", "We", "'LL"]
    );
    let ids = model.encode("12345 x,hello", true).unwrap();
    assert_eq!(
        model.tokenizer().decode(&ids, false).unwrap(),
        "12345 x,hello"
    );
}

type Metadata = Vec<(String, Value)>;

fn set(md: &mut [(String, Value)], key: &str, v: Value) {
    md.iter_mut().find(|(k, _)| k == key).unwrap().1 = v;
}

#[test]
fn malformed_qwen2_gguf_is_refused() {
    let opts = LoadOptions::default();
    let with = |edit: &dyn Fn(&mut Metadata)| {
        let mut md = test_models::qwen2_gguf_metadata();
        edit(&mut md);
        test_models::gguf_bytes_for(Arch::Qwen2, GgmlDType::Q8_0, &md)
    };
    let cases: Vec<(&str, Vec<u8>)> = vec![
        (
            "kv heads not dividing",
            with(&|m| set(m, "qwen2.attention.head_count_kv", Value::U32(3))),
        ),
        (
            "zero heads",
            with(&|m| set(m, "qwen2.attention.head_count", Value::U32(0))),
        ),
        (
            "layers beyond the tensors",
            with(&|m| set(m, "qwen2.block_count", Value::U32(3))),
        ),
        (
            "rope dimension",
            with(&|m| m.push(("qwen2.rope.dimension_count".into(), Value::U32(8)))),
        ),
        (
            "negative rope base",
            with(&|m| set(m, "qwen2.rope.freq_base", Value::F32(-1.0))),
        ),
        (
            "missing epsilon",
            with(&|m| m.retain(|(k, _)| k != "qwen2.attention.layer_norm_rms_epsilon")),
        ),
    ];
    for (what, bytes) in cases {
        match Model::from_gguf(&bytes, &opts) {
            Ok(_) => panic!("{what}: loaded"),
            Err(e) => eprintln!("{what}: {e}"),
        }
    }
    // A qwen2 GGUF without the q/k/v biases (a llama file relabelled) names the missing bias.
    let no_bias = test_models::gguf_bytes_for(
        Arch::Llama,
        GgmlDType::Q8_0,
        &test_models::qwen2_gguf_metadata(),
    );
    match Model::from_gguf(&no_bias, &opts) {
        Err(InferenceError::Tensor { name, .. }) => assert_eq!(name, "blk.0.attn_q.bias"),
        other => panic!("{:?}", other.map(|_| ())),
    }
    // Truncations and byte flips in the parsed header: errors or (harmless flips) a model.
    let good = q8_gguf();
    for len in [0, 4, 100, good.len() / 2, good.len() - 1] {
        assert!(Model::from_gguf(&good[..len], &opts).is_err(), "{len}");
    }
    let header_end = Content::read(&mut Cursor::new(good))
        .unwrap()
        .tensor_data_offset as usize;
    let mut rng = <rand::rngs::StdRng as rand::SeedableRng>::seed_from_u64(11);
    for _ in 0..60 {
        let mut bad = good.to_vec();
        for _ in 0..3 {
            let at = rand::Rng::gen_range(&mut rng, 0..header_end);
            bad[at] = rand::Rng::r#gen(&mut rng);
        }
        let _ = Model::from_gguf(&bad, &opts);
    }
}

/// The tiny Qwen2's safetensors with one tensor replaced (or removed when `shape` is empty).
fn st_with_tensor(name: &str, shape: &[usize]) -> Vec<u8> {
    let mut map: std::collections::HashMap<String, Tensor> =
        test_models::weights(SEED, Arch::Qwen2)
            .into_iter()
            .map(|(n, s, d)| (n, Tensor::from_vec(d, s, &Device::Cpu).unwrap()))
            .collect();
    if shape.is_empty() {
        map.remove(name);
    } else {
        map.insert(
            name.to_owned(),
            Tensor::zeros(shape, candle_core::DType::F32, &Device::Cpu).unwrap(),
        );
    }
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("model.safetensors");
    candle_core::safetensors::save(&map, &path).unwrap();
    std::fs::read(path).unwrap()
}

#[test]
fn malformed_qwen2_safetensors_are_refused() {
    let opts = LoadOptions::default();
    let kv = test_models::HIDDEN / test_models::HEADS * test_models::KV_HEADS;
    for (name, shape) in [
        ("model.layers.1.self_attn.k_proj.bias", &[][..]),
        ("model.layers.0.self_attn.v_proj.bias", &[kv + 1][..]),
        (
            "model.layers.0.self_attn.q_proj.bias",
            &[test_models::HIDDEN, 1][..],
        ),
        ("lm_head.weight", &[test_models::VOCAB, 3][..]),
    ] {
        let files = files_with(config_json(), st_with_tensor(name, shape));
        match Model::from_safetensors(files, &opts) {
            Err(InferenceError::Tensor { name: n, .. }) => assert_eq!(n, name),
            other => panic!("{name}: {:?}", other.map(|_| ())),
        }
    }
    let bad_cfg = |edit: &dyn Fn(&mut serde_json::Value)| {
        let mut cfg = config_json();
        edit(&mut cfg);
        Model::from_safetensors(files_with(cfg, st_bytes().to_vec()), &opts)
    };
    for (what, result) in [
        (
            "kv heads",
            bad_cfg(&|c| c["num_key_value_heads"] = 3.into()),
        ),
        ("layers", bad_cfg(&|c| c["num_hidden_layers"] = 3.into())),
        ("activation", bad_cfg(&|c| c["hidden_act"] = "gelu".into())),
        (
            "rope scaling",
            bad_cfg(&|c| c["rope_scaling"] = serde_json::json!({"type": "yarn", "factor": 4.0})),
        ),
        ("no eps", bad_cfg(&|c| c["rms_norm_eps"] = 0.0.into())),
        (
            "missing field",
            bad_cfg(&|c| c["hidden_size"] = serde_json::Value::Null),
        ),
    ] {
        match result {
            Ok(_) => panic!("{what}: loaded"),
            Err(e) => eprintln!("{what}: {e}"),
        }
    }
}

#[test]
fn sliding_windows_cap_the_context() {
    let opts = LoadOptions::default();
    let mut cfg = config_json();
    cfg["use_sliding_window"] = true.into();
    cfg["sliding_window"] = 64.into();
    let m = Model::from_safetensors(files_with(cfg, st_bytes().to_vec()), &opts).unwrap();
    assert_eq!(m.info().context_length, 64);
    let long = Request::text("x ".repeat(10)).with_max_tokens(100);
    let done = run(&m, long);
    assert_eq!(done.finish_reason, FinishReason::Length);
    assert_eq!(done.usage.prompt_tokens + done.usage.completion_tokens, 64);

    // Mistral: a window shorter than the positions caps the llama context the same way.
    let mut f = test_models::safetensors_files(special_id("<|im_end|>"));
    let mut cfg: serde_json::Value = serde_json::from_slice(&f.config_json).unwrap();
    cfg["architectures"] = serde_json::json!(["MistralForCausalLM"]);
    cfg["sliding_window"] = 128.into();
    f.config_json = cfg.to_string().into_bytes();
    assert_eq!(
        Model::from_safetensors(f, &opts)
            .unwrap()
            .info()
            .context_length,
        128
    );
}
