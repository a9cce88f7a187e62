//! Time from wardd's start to the first token of a sealed ~1 GiB model, next to the same model
//! loaded from plaintext already in memory (the runtime alone) in the same run.
//!
//! The model is a llama with random Q8_0 weights (hidden 2048, 32 heads, 4 KV heads, FFN 5632,
//! 17 layers) and SmolLM2's real tokenizer and chat template (copied from its GGUF, which
//! `scripts/fetch-model.sh` fetches): real shapes and real tokenization, meaningless text.

use std::io::Cursor;
use std::time::{Duration, Instant};

use candle_core::quantized::gguf_file::{self, Value};
use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{Device, Tensor};

const HIDDEN: usize = 2048;
const HEADS: usize = 32;
const KV_HEADS: usize = 4;
const FFN: usize = 5632;
const LAYERS: usize = 17;

/// xorshift64*: fast, deterministic weights in [-0.05, 0.05).
struct Weights(u64);

impl Weights {
    fn tensor(&mut self, shape: &[usize]) -> Tensor {
        let n: usize = shape.iter().product();
        let v: Vec<f32> = (0..n)
            .map(|_| {
                self.0 ^= self.0 >> 12;
                self.0 ^= self.0 << 25;
                self.0 ^= self.0 >> 27;
                let x = self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 40;
                (x as f32 / (1u64 << 24) as f32 - 0.5) * 0.1
            })
            .collect();
        Tensor::from_vec(v, shape, &Device::Cpu).unwrap()
    }
}

/// The SmolLM2 GGUF, or `None` (the section is skipped) when it was not fetched.
pub fn smollm2() -> Option<std::path::PathBuf> {
    let p = std::env::var_os("WARD_SMOLLM2_GGUF")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| {
            std::path::PathBuf::from(std::env::var_os("HOME").unwrap_or_default())
                .join(".cache/ward/models/SmolLM2-135M-Instruct.Q4_1.gguf")
        });
    p.exists().then_some(p)
}

/// Writes the ~1 GiB GGUF, with the tokenizer metadata of `tokenizer_from`.
pub fn write_model(tokenizer_from: &std::path::Path, out: &std::path::Path) -> u64 {
    let mut f = std::fs::File::open(tokenizer_from).unwrap();
    let real = gguf_file::Content::read(&mut f).unwrap();
    let vocab = match real.metadata.get("tokenizer.ggml.tokens") {
        Some(Value::Array(t)) => t.len(),
        _ => panic!("no tokenizer in {}", tokenizer_from.display()),
    };
    let u = |v: usize| Value::U32(v as u32);
    let mut md: Vec<(String, Value)> = vec![
        ("general.architecture".into(), Value::String("llama".into())),
        ("general.name".into(), Value::String("ward-bench-1g".into())),
        ("llama.context_length".into(), u(2048)),
        ("llama.embedding_length".into(), u(HIDDEN)),
        ("llama.feed_forward_length".into(), u(FFN)),
        ("llama.block_count".into(), u(LAYERS)),
        ("llama.attention.head_count".into(), u(HEADS)),
        ("llama.attention.head_count_kv".into(), u(KV_HEADS)),
        ("llama.rope.dimension_count".into(), u(HIDDEN / HEADS)),
        (
            "llama.attention.layer_norm_rms_epsilon".into(),
            Value::F32(1e-5),
        ),
    ];
    for (k, v) in &real.metadata {
        if k.starts_with("tokenizer.") {
            md.push((k.clone(), v.clone()));
        }
    }
    let mut w = Weights(0x9E37_79B9_7F4A_7C15);
    let q = |t: Tensor| QTensor::quantize(&t, GgmlDType::Q8_0).unwrap();
    let norm = |n: usize| {
        QTensor::quantize(
            &Tensor::ones(n, candle_core::DType::F32, &Device::Cpu).unwrap(),
            GgmlDType::F32,
        )
        .unwrap()
    };
    let kv = HIDDEN / HEADS * KV_HEADS;
    let mut tensors: Vec<(String, QTensor)> = vec![
        ("token_embd.weight".into(), q(w.tensor(&[vocab, HIDDEN]))),
        ("output_norm.weight".into(), norm(HIDDEN)),
        ("output.weight".into(), q(w.tensor(&[vocab, HIDDEN]))),
    ];
    for l in 0..LAYERS {
        let b = |n: &str| format!("blk.{l}.{n}.weight");
        tensors.push((b("attn_q"), q(w.tensor(&[HIDDEN, HIDDEN]))));
        tensors.push((b("attn_k"), q(w.tensor(&[kv, HIDDEN]))));
        tensors.push((b("attn_v"), q(w.tensor(&[kv, HIDDEN]))));
        tensors.push((b("attn_output"), q(w.tensor(&[HIDDEN, HIDDEN]))));
        tensors.push((b("ffn_gate"), q(w.tensor(&[FFN, HIDDEN]))));
        tensors.push((b("ffn_up"), q(w.tensor(&[FFN, HIDDEN]))));
        tensors.push((b("ffn_down"), q(w.tensor(&[HIDDEN, FFN]))));
        tensors.push((b("attn_norm"), norm(HIDDEN)));
        tensors.push((b("ffn_norm"), norm(HIDDEN)));
    }
    let md_refs: Vec<(&str, &Value)> = md.iter().map(|(k, v)| (k.as_str(), v)).collect();
    let t_refs: Vec<(&str, &QTensor)> = tensors.iter().map(|(k, v)| (k.as_str(), v)).collect();
    let mut buf = Cursor::new(Vec::new());
    gguf_file::write(&mut buf, &md_refs, &t_refs).unwrap();
    let bytes = buf.into_inner();
    std::fs::write(out, &bytes).unwrap();
    bytes.len() as u64
}

/// Loads the GGUF from memory into an engine and times the first token of a short chat.
pub async fn in_memory_first_token(gguf: &[u8]) -> (Duration, Duration) {
    use ward_inference::{
        ChatMessage, Engine, EngineConfig, LoadOptions, Model, Request, StreamEvent,
    };
    let t = Instant::now();
    let model = Model::from_gguf(gguf, &LoadOptions::default()).unwrap();
    let engine = Engine::new(model, EngineConfig::default()).unwrap();
    let loaded = t.elapsed();
    let mut s = engine
        .submit(
            Request::chat(vec![ChatMessage::new("user", "Hello, who are you?")]).with_max_tokens(4),
        )
        .unwrap();
    // The first event is the first token (or the end, for an empty answer).
    let _: StreamEvent = s.next_event().await.unwrap().unwrap();
    (loaded, t.elapsed())
}

/// Streams one chat completion from wardd and returns when its first content chunk arrives.
pub async fn first_streamed_token(http: &reqwest::Client, base: &str, model: &str) {
    let resp = http
        .post(format!("{base}/chat/completions"))
        .json(&serde_json::json!({
            "model": model,
            "stream": true,
            "max_tokens": 4,
            "messages": [{"role": "user", "content": "Hello, who are you?"}],
        }))
        .send()
        .await
        .unwrap();
    assert!(resp.status().is_success(), "{}", resp.status());
    let mut resp = resp;
    let mut seen = String::new();
    while let Some(chunk) = resp.chunk().await.unwrap() {
        seen.push_str(&String::from_utf8_lossy(&chunk));
        // The first event may only announce the role: wait for generated text (or the end).
        for data in seen.lines().filter_map(|l| l.strip_prefix("data: ")) {
            let Ok(v) = serde_json::from_str::<serde_json::Value>(data) else {
                continue;
            };
            let choice = &v["choices"][0];
            let text = choice["delta"]["content"].as_str().unwrap_or_default();
            if !text.is_empty() || !choice["finish_reason"].is_null() {
                return;
            }
        }
    }
    panic!("no token streamed: {seen}");
}
