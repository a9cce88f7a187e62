//! GGUF (llama and qwen2 architectures) from a byte slice: parse the container, check every
//! hyper-parameter and tensor shape the model code will rely on (so a hostile file gets a typed
//! error, not a panic or a division by zero inside candle), then build the quantised weights and
//! the tokenizer from the metadata.

use std::collections::HashMap;
use std::io::Cursor;

use candle_core::Device;
use candle_core::quantized::gguf_file::{Content, Value};
use candle_transformers::models::quantized_llama::MAX_SEQ_LEN;

use super::gguf_source::{GgufBytes, TensorReader};
use super::quantized::{QuantizedParams, QuantizedWeights};
use super::{LoadOptions, ModelInfo, ModelInner, Vocab, Weights, chat_template, check_dims};
use crate::error::InferenceError;
use crate::gguf_tokenizer::{self, metadata_u64};

/// The GGUF architectures this runtime runs; both use the llama tensor names (`blk.N.attn_q`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Arch {
    /// Llama 2/3, Mistral, SmolLM2, TinyLlama...: the block of candle's `quantized_llama`.
    Llama,
    /// Qwen2 and Qwen2.5: biases on q/k/v, NeoX rotary embeddings.
    Qwen2,
}

impl Arch {
    fn parse(name: &str) -> Option<Self> {
        match name {
            "llama" => Some(Self::Llama),
            "qwen2" => Some(Self::Qwen2),
            _ => None,
        }
    }

    /// The prefix of the hyper-parameter keys (`llama.block_count`, `qwen2.block_count`).
    fn key(self, name: &str) -> String {
        match self {
            Self::Llama => format!("llama.{name}"),
            Self::Qwen2 => format!("qwen2.{name}"),
        }
    }
}

/// The longest context a Qwen2 GGUF gets here (its rotary tables and KV cache grow with it);
/// Qwen2 and Qwen2.5 declare 32768 without rope scaling.
pub(crate) const QWEN2_MAX_CONTEXT: usize = 32768;

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
    bytes: GgufBytes<'_>,
    options: &LoadOptions,
    device: Device,
) -> Result<ModelInner, InferenceError> {
    if super::gguf_precheck::has_zero_alignment(bytes.all()) {
        return Err(InferenceError::metadata("general.alignment", "zero"));
    }
    let mut reader = Cursor::new(bytes.all());
    let ct = Content::read(&mut reader).map_err(InferenceError::GgufParse)?;
    let md = &ct.metadata;

    let arch_name = md_string(md, "general.architecture")
        .ok_or_else(|| InferenceError::metadata("general.architecture", "missing"))?;
    let arch = Arch::parse(&arch_name)
        .ok_or_else(|| InferenceError::UnsupportedArchitecture(arch_name.clone()))?;
    if metadata_u64(md, &arch.key("expert_count")).unwrap_or(0) > 1 {
        return Err(InferenceError::UnsupportedArchitecture(format!(
            "{arch_name} mixture-of-experts"
        )));
    }
    let heads = md_usize(md, &arch.key("attention.head_count"))?;
    let kv_heads = md_usize(md, &arch.key("attention.head_count_kv"))?;
    let layers = md_usize(md, &arch.key("block_count"))?;
    let hidden = md_usize(md, &arch.key("embedding_length"))?;
    let eps_key = arch.key("attention.layer_norm_rms_epsilon");
    let eps = md_f32(md, &eps_key).ok_or_else(|| InferenceError::metadata(&eps_key, "missing"))?;
    if !(eps.is_finite() && eps > 0.0) {
        return Err(InferenceError::metadata(&eps_key, "not a positive number"));
    }
    let base_key = arch.key("rope.freq_base");
    let rope_base = md_f32(md, &base_key);
    if let Some(base) = rope_base
        && !(base.is_finite() && base > 0.0)
    {
        return Err(InferenceError::metadata(&base_key, "not a positive number"));
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
    // candle's llama reads the rotary dimension; Qwen2 rotates whole heads (the key is optional).
    let rope_key = arch.key("rope.dimension_count");
    let rope_dim = match arch {
        Arch::Llama => Some(md_usize(md, &rope_key)?),
        Arch::Qwen2 => metadata_u64(md, &rope_key).and_then(|d| usize::try_from(d).ok()),
    };
    if let Some(rope_dim) = rope_dim
        && rope_dim != head_dim
    {
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
        if arch == Arch::Qwen2 {
            let b = |n: &str| format!("blk.{i}.{n}.bias");
            expect_shape(&ct, &b("attn_q"), &[hidden])?;
            expect_shape(&ct, &b("attn_k"), &[kv_dim])?;
            expect_shape(&ct, &b("attn_v"), &[kv_dim])?;
        }
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
    let max_context = match arch {
        Arch::Llama => MAX_SEQ_LEN,
        Arch::Qwen2 => QWEN2_MAX_CONTEXT,
    };
    let context_length = metadata_u64(md, &arch.key("context_length"))
        .and_then(|c| usize::try_from(c).ok())
        .unwrap_or(max_context)
        .clamp(1, max_context);
    let name = options
        .name
        .clone()
        .or_else(|| md_string(md, "general.name"))
        .unwrap_or_else(|| "model".to_owned());

    let params = QuantizedParams {
        heads,
        kv_heads,
        hidden,
        layers,
        eps: f64::from(eps),
        rope_base: rope_base.unwrap_or(10_000.0),
        context: context_length,
        qwen2: arch == Arch::Qwen2,
    };
    let mut tensors = TensorReader::new(&ct, bytes, device.clone());
    let weights =
        QuantizedWeights::from_gguf(&mut tensors, params).map_err(InferenceError::GgufParse)?;
    let format = match arch {
        Arch::Llama => "gguf-llama",
        Arch::Qwen2 => "gguf-qwen2",
    };
    Ok(ModelInner {
        info: ModelInfo {
            name,
            format,
            vocab_size: vocab,
            context_length,
            num_layers: layers,
        },
        weights: Weights::Quantized(weights),
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
