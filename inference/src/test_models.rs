//! Tiny llama and Qwen2 models for tests: real architecture, random weights from a fixed seed,
//! written as safetensors and as GGUF (Q8_0 or F32 matmuls) with a small byte-level BPE
//! tokenizer, all in memory.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::HashMap;
use std::io::Cursor;
use std::sync::OnceLock;

use candle_core::quantized::gguf_file::{self, Value};
use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{Device, Tensor};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokenizers::decoders::byte_level::ByteLevel as ByteLevelDecoder;
use tokenizers::models::bpe::BPE;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::{AddedToken, Tokenizer};

use crate::chat::CHATML_TEMPLATE;
use crate::gguf_names::gguf_tensor_name;
use crate::model::{LoadOptions, Model, SafetensorsFiles};

pub const HIDDEN: usize = 64;
pub const FFN: usize = 128;
pub const LAYERS: usize = 2;
pub const HEADS: usize = 4;
pub const KV_HEADS: usize = 2;
pub const CONTEXT: usize = 4096;
pub const MERGES: &[(&str, &str)] = &[("h", "e"), ("l", "l"), ("he", "ll"), ("Ġ", "t")];
pub const SPECIALS: &[&str] = &["<|endoftext|>", "<|im_start|>", "<|im_end|>"];
pub const VOCAB: usize = 256 + 4 + 3;

/// GPT-2's byte-to-character table: printable bytes map to themselves, the rest to U+0100...
fn byte_chars() -> Vec<char> {
    let mut out = Vec::with_capacity(256);
    let mut extra = 0u32;
    for b in 0u32..256 {
        let printable =
            (33..=126).contains(&b) || (161..=172).contains(&b) || (174..=255).contains(&b);
        if printable {
            out.push(char::from_u32(b).unwrap());
        } else {
            out.push(char::from_u32(256 + extra).unwrap());
            extra += 1;
        }
    }
    out
}

/// The vocabulary in id order: 256 bytes, the merged tokens, the special tokens.
pub fn tokens() -> Vec<String> {
    let mut t: Vec<String> = byte_chars().into_iter().map(String::from).collect();
    t.extend(MERGES.iter().map(|(a, b)| format!("{a}{b}")));
    t.extend(SPECIALS.iter().map(|s| s.to_string()));
    assert_eq!(t.len(), VOCAB);
    t
}

pub fn special_id(s: &str) -> u32 {
    tokens().iter().position(|t| t == s).unwrap() as u32
}

fn tokenizer_json() -> Vec<u8> {
    let vocab: tokenizers::models::bpe::Vocab = tokens()
        .into_iter()
        .enumerate()
        .map(|(i, t)| (t, i as u32))
        .collect();
    let merges = MERGES
        .iter()
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect();
    let bpe = BPE::builder()
        .vocab_and_merges(vocab, merges)
        .build()
        .unwrap();
    let mut tok = Tokenizer::new(bpe);
    tok.with_pre_tokenizer(Some(ByteLevel::new(false, true, true)));
    tok.with_decoder(Some(ByteLevelDecoder::default()));
    let specials: Vec<AddedToken> = SPECIALS
        .iter()
        .map(|s| AddedToken::from(*s, true))
        .collect();
    tok.add_special_tokens(specials).unwrap();
    tok.to_string(false).unwrap().into_bytes()
}

/// The architectures of the tiny models.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arch {
    /// Untied head.
    Llama,
    /// Biases on q/k/v, head tied to the embeddings (as in the small Qwen2.5 models).
    Qwen2,
}

/// Named f32 weights of the tiny model (HF names), deterministic for a seed.
pub fn weights(seed: u64, arch: Arch) -> Vec<(String, Vec<usize>, Vec<f32>)> {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut rand = |shape: &[usize], scale: f32| -> Vec<f32> {
        (0..shape.iter().product::<usize>())
            .map(|_| rng.gen_range(-scale..scale))
            .collect()
    };
    let kv = HIDDEN / HEADS * KV_HEADS;
    let mut w = Vec::new();
    let mut push = |name: String, shape: Vec<usize>, data: Vec<f32>| w.push((name, shape, data));
    // Special tokens get zero logits so that greedy decoding never ends early by chance.
    let zero_specials = |mut m: Vec<f32>| {
        for s in SPECIALS {
            let row = special_id(s) as usize;
            m[row * HIDDEN..(row + 1) * HIDDEN].fill(0.0);
        }
        m
    };
    let mut embed = rand(&[VOCAB, HIDDEN], 1.0);
    if arch == Arch::Qwen2 {
        embed = zero_specials(embed);
    }
    push(
        "model.embed_tokens.weight".into(),
        vec![VOCAB, HIDDEN],
        embed,
    );
    push("model.norm.weight".into(), vec![HIDDEN], vec![1.0; HIDDEN]);
    if arch == Arch::Llama {
        let head = zero_specials(rand(&[VOCAB, HIDDEN], 0.5));
        push("lm_head.weight".into(), vec![VOCAB, HIDDEN], head);
    }
    for i in 0..LAYERS {
        let p = format!("model.layers.{i}");
        for (n, shape) in [
            ("self_attn.q_proj", vec![HIDDEN, HIDDEN]),
            ("self_attn.k_proj", vec![kv, HIDDEN]),
            ("self_attn.v_proj", vec![kv, HIDDEN]),
            ("self_attn.o_proj", vec![HIDDEN, HIDDEN]),
            ("mlp.gate_proj", vec![FFN, HIDDEN]),
            ("mlp.up_proj", vec![FFN, HIDDEN]),
            ("mlp.down_proj", vec![HIDDEN, FFN]),
        ] {
            let data = rand(&shape, 0.3);
            push(format!("{p}.{n}.weight"), shape, data);
        }
        if arch == Arch::Qwen2 {
            for (n, len) in [("q_proj", HIDDEN), ("k_proj", kv), ("v_proj", kv)] {
                let data = rand(&[len], 0.5);
                push(format!("{p}.self_attn.{n}.bias"), vec![len], data);
            }
        }
        push(
            format!("{p}.input_layernorm.weight"),
            vec![HIDDEN],
            vec![1.0; HIDDEN],
        );
        push(
            format!("{p}.post_attention_layernorm.weight"),
            vec![HIDDEN],
            vec![1.0; HIDDEN],
        );
    }
    w
}

pub fn config_json(eos: u32) -> Vec<u8> {
    serde_json::json!({
        "architectures": ["LlamaForCausalLM"],
        "hidden_size": HIDDEN,
        "intermediate_size": FFN,
        "vocab_size": VOCAB,
        "num_hidden_layers": LAYERS,
        "num_attention_heads": HEADS,
        "num_key_value_heads": KV_HEADS,
        "rms_norm_eps": 1e-5,
        "rope_theta": 10000.0,
        "bos_token_id": special_id("<|endoftext|>"),
        "eos_token_id": eos,
        "max_position_embeddings": CONTEXT,
        "tie_word_embeddings": false,
    })
    .to_string()
    .into_bytes()
}

pub fn safetensors_bytes(seed: u64, arch: Arch) -> Vec<u8> {
    let map: HashMap<String, Tensor> = weights(seed, arch)
        .into_iter()
        .map(|(n, s, d)| (n, Tensor::from_vec(d, s, &Device::Cpu).unwrap()))
        .collect();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("model.safetensors");
    candle_core::safetensors::save(&map, &path).unwrap();
    std::fs::read(path).unwrap()
}

/// The GGUF metadata of the tiny model; tests tamper with a copy.
pub fn gguf_metadata() -> Vec<(String, Value)> {
    let tokens = tokens();
    let types: Vec<Value> = tokens
        .iter()
        .map(|t| Value::I32(if SPECIALS.contains(&t.as_str()) { 3 } else { 1 }))
        .collect();
    vec![
        ("general.architecture".into(), Value::String("llama".into())),
        ("general.name".into(), Value::String("tiny-llama".into())),
        ("llama.context_length".into(), Value::U32(CONTEXT as u32)),
        ("llama.embedding_length".into(), Value::U32(HIDDEN as u32)),
        ("llama.feed_forward_length".into(), Value::U32(FFN as u32)),
        ("llama.block_count".into(), Value::U32(LAYERS as u32)),
        (
            "llama.attention.head_count".into(),
            Value::U32(HEADS as u32),
        ),
        (
            "llama.attention.head_count_kv".into(),
            Value::U32(KV_HEADS as u32),
        ),
        (
            "llama.rope.dimension_count".into(),
            Value::U32((HIDDEN / HEADS) as u32),
        ),
        (
            "llama.attention.layer_norm_rms_epsilon".into(),
            Value::F32(1e-5),
        ),
        ("tokenizer.ggml.model".into(), Value::String("gpt2".into())),
        (
            "tokenizer.ggml.tokens".into(),
            Value::Array(tokens.into_iter().map(Value::String).collect()),
        ),
        ("tokenizer.ggml.token_type".into(), Value::Array(types)),
        (
            "tokenizer.ggml.merges".into(),
            Value::Array(
                MERGES
                    .iter()
                    .map(|(a, b)| Value::String(format!("{a} {b}")))
                    .collect(),
            ),
        ),
        (
            "tokenizer.ggml.bos_token_id".into(),
            Value::U32(special_id("<|endoftext|>")),
        ),
        (
            "tokenizer.ggml.eos_token_id".into(),
            Value::U32(special_id("<|im_end|>")),
        ),
        ("tokenizer.ggml.add_bos_token".into(), Value::Bool(false)),
        (
            "tokenizer.chat_template".into(),
            Value::String(CHATML_TEMPLATE.into()),
        ),
    ]
}

/// Writes a GGUF of the tiny llama's weights with the given metadata.
pub fn gguf_bytes_with(metadata: &[(String, Value)]) -> Vec<u8> {
    gguf_bytes_for(Arch::Llama, GgmlDType::Q8_0, metadata)
}

/// The tiny Qwen2's GGUF metadata: the llama one under `qwen2.` keys, Qwen2's pre-tokenizer.
pub fn qwen2_gguf_metadata() -> Vec<(String, Value)> {
    let mut md: Vec<(String, Value)> = gguf_metadata()
        .into_iter()
        .filter(|(k, _)| k != "llama.rope.dimension_count")
        .map(|(k, v)| match k.strip_prefix("llama.") {
            Some(rest) => (format!("qwen2.{rest}"), v),
            None => (k, v),
        })
        .collect();
    md[0].1 = Value::String("qwen2".into());
    md.push(("qwen2.rope.freq_base".into(), Value::F32(1_000_000.0)));
    md.push(("tokenizer.ggml.pre".into(), Value::String("qwen2".into())));
    md
}

/// Writes a GGUF of the tiny model's weights, matrices (but the embeddings) as `matmul`.
pub fn gguf_bytes_for(arch: Arch, matmul: GgmlDType, metadata: &[(String, Value)]) -> Vec<u8> {
    let tensors: Vec<(String, QTensor)> = weights(SEED, arch)
        .into_iter()
        .map(|(n, s, d)| {
            let t = Tensor::from_vec(d, s.clone(), &Device::Cpu).unwrap();
            let dtype = if s.len() == 2 && n != "model.embed_tokens.weight" {
                matmul
            } else {
                GgmlDType::F32
            };
            (
                gguf_tensor_name(&n).unwrap(),
                QTensor::quantize(&t, dtype).unwrap(),
            )
        })
        .collect();
    let md: Vec<(&str, &Value)> = metadata.iter().map(|(k, v)| (k.as_str(), v)).collect();
    let ts: Vec<(&str, &QTensor)> = tensors.iter().map(|(k, v)| (k.as_str(), v)).collect();
    let mut out = Cursor::new(Vec::new());
    gguf_file::write(&mut out, &md, &ts).unwrap();
    out.into_inner()
}

pub const SEED: u64 = 42;

pub struct Fixture {
    pub tokenizer_json: Vec<u8>,
    pub tokenizer_config_json: Vec<u8>,
    pub safetensors: Vec<u8>,
    pub gguf: Vec<u8>,
}

pub fn fixture() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(|| Fixture {
        tokenizer_json: tokenizer_json(),
        tokenizer_config_json: serde_json::json!({
            "chat_template": CHATML_TEMPLATE,
            "bos_token": "<|endoftext|>",
            "eos_token": {"content": "<|im_end|>", "special": true},
        })
        .to_string()
        .into_bytes(),
        safetensors: safetensors_bytes(SEED, Arch::Llama),
        gguf: gguf_bytes_with(&gguf_metadata()),
    })
}

pub fn safetensors_files(eos: u32) -> SafetensorsFiles<'static> {
    let f = fixture();
    SafetensorsFiles {
        config_json: config_json(eos),
        tokenizer_json: f.tokenizer_json.clone(),
        tokenizer_config_json: Some(f.tokenizer_config_json.clone()),
        weights: vec![f.safetensors.clone().into()],
    }
}

/// The tiny model from safetensors (shared across tests: loading is the slow part in debug).
pub fn safetensors_model() -> Model {
    static M: OnceLock<Model> = OnceLock::new();
    M.get_or_init(|| {
        Model::from_safetensors(
            safetensors_files(special_id("<|im_end|>")),
            &LoadOptions::default(),
        )
        .unwrap()
    })
    .clone()
}

pub fn gguf_model() -> Model {
    static M: OnceLock<Model> = OnceLock::new();
    M.get_or_init(|| Model::from_gguf(&fixture().gguf, &LoadOptions::default()).unwrap())
        .clone()
}
