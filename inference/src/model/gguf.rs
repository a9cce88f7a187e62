//! GGUF (llama architecture) from a byte slice: parse the container, check every hyper-parameter
//! and tensor shape the candle loader will rely on (so a hostile file gets a typed error, not a
//! panic or a division by zero inside candle), then build the quantised weights and the
//! tokenizer from the metadata.

use std::collections::HashMap;
use std::io::Cursor;

use candle_core::Device;
use candle_core::quantized::gguf_file::{Content, Value};
use candle_transformers::models::quantized_llama::{self, MAX_SEQ_LEN};

use super::{LoadOptions, ModelInfo, ModelInner, Vocab, Weights, chat_template, check_dims};
use crate::error::InferenceError;
use crate::gguf_tokenizer::{self, metadata_u64};

/// Architectures whose GGUF layout is the llama one (`llama.*` keys, `blk.N.attn_q` tensors).
const LLAMA_ARCHS: &[&str] = &["llama"];

fn md_usize(md: &HashMap<String, Value>, key: &str) -> Result<usize, InferenceError> {
    metadata_u64(md, key)
        .and_then(|v| usize::try_from(v).ok())
        .ok_or_else(|| InferenceError::metadata(key, "missing or not an unsigned integer"))
}

fn md_f32(md: &HashMap<String, Value>, key: &str) -> Option<f32> {
    match md.get(key)? {
        Value::F32(v) => Some(*v),
        Value::F64(v) => Some(*v as f32),
        _ => None,
    }
}

fn md_string(md: &HashMap<String, Value>, key: &str) -> Option<String> {
    md.get(key).and_then(|v| v.to_string().ok()).cloned()
}

/// The shape candle reports for a tensor must be exactly `expected`.
fn expect_shape(ct: &Content, name: &str, expected: &[usize]) -> Result<(), InferenceError> {
    let info = ct
        .tensor_infos
        .get(name)
        .ok_or_else(|| InferenceError::tensor(name, "missing"))?;
    let dims = info.shape.dims();
    if dims != expected {
        return Err(InferenceError::tensor(
            name,
            format!("shape {dims:?}, expected {expected:?}"),
        ));
    }
    let elems = expected
        .iter()
        .try_fold(1usize, |acc, d| acc.checked_mul(*d))
        .ok_or_else(|| InferenceError::tensor(name, "size overflows"))?;
    let block = info.ggml_dtype.block_size();
    if block == 0 || elems % block != 0 || expected.last().is_some_and(|d| d % block != 0) {
        return Err(InferenceError::tensor(
            name,
            format!(
                "{:?} blocks do not tile shape {expected:?}",
                info.ggml_dtype
            ),
        ));
    }
    Ok(())
}

pub(super) fn load(
    bytes: &[u8],
    options: &LoadOptions,
    device: Device,
) -> Result<ModelInner, InferenceError> {
    if super::gguf_precheck::has_zero_alignment(bytes) {
        return Err(InferenceError::metadata("general.alignment", "zero"));
    }
    let mut reader = Cursor::new(bytes);
    let ct = Content::read(&mut reader).map_err(InferenceError::GgufParse)?;
    let md = &ct.metadata;

    let arch = md_string(md, "general.architecture")
        .ok_or_else(|| InferenceError::metadata("general.architecture", "missing"))?;
    if !LLAMA_ARCHS.contains(&arch.as_str()) {
        return Err(InferenceError::UnsupportedArchitecture(arch));
    }
    if metadata_u64(md, "llama.expert_count").unwrap_or(0) > 1 {
        return Err(InferenceError::UnsupportedArchitecture(
            "llama mixture-of-experts".into(),
        ));
    }
    let heads = md_usize(md, "llama.attention.head_count")?;
    let kv_heads = md_usize(md, "llama.attention.head_count_kv")?;
    let layers = md_usize(md, "llama.block_count")?;
    let hidden = md_usize(md, "llama.embedding_length")?;
    let rope_dim = md_usize(md, "llama.rope.dimension_count")?;
    let eps_key = "llama.attention.layer_norm_rms_epsilon";
    let eps = md_f32(md, eps_key).ok_or_else(|| InferenceError::metadata(eps_key, "missing"))?;
    if !(eps.is_finite() && eps > 0.0) {
        return Err(InferenceError::metadata(eps_key, "not a positive number"));
    }
    if let Some(base) = md_f32(md, "llama.rope.freq_base")
        && !(base.is_finite() && base > 0.0)
    {
        return Err(InferenceError::metadata(
            "llama.rope.freq_base",
            "not a positive number",
        ));
    }
    let vocab = ct
        .tensor_infos
        .get("token_embd.weight")
        .and_then(|t| t.shape.dims().first().copied())
        .ok_or_else(|| InferenceError::tensor("token_embd.weight", "missing"))?;
    let ffn = ct
        .tensor_infos
        .get("blk.0.ffn_gate.weight")
        .and_then(|t| t.shape.dims().first().copied())
        .ok_or_else(|| InferenceError::tensor("blk.0.ffn_gate.weight", "missing"))?;
    check_dims(hidden, heads, kv_heads, layers, ffn, vocab)?;
    let head_dim = hidden / heads;
    if rope_dim != head_dim {
        return Err(InferenceError::InvalidConfig(format!(
            "rope dimension {rope_dim} differs from head dimension {head_dim}"
        )));
    }
    let kv_dim = head_dim * kv_heads;

    expect_shape(&ct, "token_embd.weight", &[vocab, hidden])?;
    expect_shape(&ct, "output_norm.weight", &[hidden])?;
    if ct.tensor_infos.contains_key("output.weight") {
        expect_shape(&ct, "output.weight", &[vocab, hidden])?;
    }
    for i in 0..layers {
        let t = |n: &str| format!("blk.{i}.{n}.weight");
        expect_shape(&ct, &t("attn_q"), &[hidden, hidden])?;
        expect_shape(&ct, &t("attn_k"), &[kv_dim, hidden])?;
        expect_shape(&ct, &t("attn_v"), &[kv_dim, hidden])?;
        expect_shape(&ct, &t("attn_output"), &[hidden, hidden])?;
        expect_shape(&ct, &t("ffn_gate"), &[ffn, hidden])?;
        expect_shape(&ct, &t("ffn_up"), &[ffn, hidden])?;
        expect_shape(&ct, &t("ffn_down"), &[hidden, ffn])?;
        expect_shape(&ct, &t("attn_norm"), &[hidden])?;
        expect_shape(&ct, &t("ffn_norm"), &[hidden])?;
    }

    let tok = gguf_tokenizer::from_metadata(md)?;
    if tok.vocab_size != vocab {
        return Err(InferenceError::InvalidConfig(format!(
            "tokenizer has {} tokens, the embedding {vocab} rows",
            tok.vocab_size
        )));
    }
    let token_text = |id: Option<u32>| {
        id.and_then(|id| tok.tokenizer.id_to_token(id))
            .unwrap_or_default()
    };
    let bos = token_text(tok.bos_id);
    let eos = token_text(tok.eos_ids.first().copied());
    let template = chat_template(md_string(md, "tokenizer.chat_template"), &bos, &eos)?;
    let context_length = metadata_u64(md, "llama.context_length")
        .and_then(|c| usize::try_from(c).ok())
        .unwrap_or(MAX_SEQ_LEN)
        .clamp(1, MAX_SEQ_LEN);
    let name = options
        .name
        .clone()
        .or_else(|| md_string(md, "general.name"))
        .unwrap_or_else(|| "model".to_owned());

    let weights = quantized_llama::ModelWeights::from_gguf(ct, &mut reader, &device)
        .map_err(InferenceError::GgufParse)?;
    Ok(ModelInner {
        info: ModelInfo {
            name,
            format: "gguf-llama",
            vocab_size: vocab,
            context_length,
            num_layers: layers,
        },
        weights: Weights::Gguf(weights),
        vocab: Vocab {
            tokenizer: tok.tokenizer,
            bos_id: tok.bos_id,
            add_bos: tok.add_bos,
            eos_ids: tok.eos_ids,
            chat_template: template,
        },
        device,
    })
}
