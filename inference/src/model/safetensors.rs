//! Llama-layout safetensors checkpoints (Llama 2/3, Mistral, SmolLM2...) from buffers:
//! `config.json`, `tokenizer.json`, optional `tokenizer_config.json` (chat template, special
//! tokens), and one or more weight shards. Every tensor candle's llama loader reads is checked for
//! presence and shape first: that loader unwraps per layer and would panic on a missing tensor.

use std::collections::HashMap;

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use candle_transformers::models::llama::{self, LlamaConfig, LlamaEosToks};
use serde::Deserialize;
use tokenizers::Tokenizer;

use super::{LoadOptions, ModelInfo, ModelInner, Vocab, Weights, chat_template, check_dims};
use crate::error::InferenceError;

/// The files of a Hugging Face checkpoint, as bytes.
#[derive(Debug, Clone, Default)]
pub struct SafetensorsFiles {
    pub config_json: Vec<u8>,
    pub tokenizer_json: Vec<u8>,
    /// Carries `chat_template`, `bos_token`, `eos_token`; ChatML is used without it.
    pub tokenizer_config_json: Option<Vec<u8>>,
    /// `model.safetensors`, or every `model-0000N-of-0000M.safetensors` shard.
    pub weights: Vec<Vec<u8>>,
}

/// `config.json` fields beyond what candle's `LlamaConfig` reads.
#[derive(Deserialize)]
struct ArchConfig {
    #[serde(default)]
    architectures: Vec<String>,
}

const ARCHITECTURES: &[&str] = &["LlamaForCausalLM", "MistralForCausalLM"];

/// A token in `tokenizer_config.json`: a string or an `AddedToken` object.
#[derive(Deserialize)]
#[serde(untagged)]
enum TokenSpec {
    Text(String),
    Added { content: String },
}

impl TokenSpec {
    fn text(self) -> String {
        match self {
            Self::Text(s) | Self::Added { content: s } => s,
        }
    }
}

#[derive(Deserialize)]
#[serde(untagged)]
enum TemplateSpec {
    One(String),
    Named(Vec<NamedTemplate>),
}

#[derive(Deserialize)]
struct NamedTemplate {
    name: String,
    template: String,
}

#[derive(Deserialize, Default)]
struct TokenizerConfig {
    chat_template: Option<TemplateSpec>,
    bos_token: Option<TokenSpec>,
    eos_token: Option<TokenSpec>,
}

fn json<'a, T: Deserialize<'a>>(file: &'static str, bytes: &'a [u8]) -> Result<T, InferenceError> {
    serde_json::from_slice(bytes).map_err(|source| InferenceError::ConfigJson { file, source })
}

pub(super) fn load(
    files: SafetensorsFiles,
    options: &LoadOptions,
    device: Device,
) -> Result<ModelInner, InferenceError> {
    let arch: ArchConfig = json("config.json", &files.config_json)?;
    if let Some(a) = arch
        .architectures
        .iter()
        .find(|a| !ARCHITECTURES.contains(&a.as_str()))
    {
        return Err(InferenceError::UnsupportedArchitecture(a.clone()));
    }
    let cfg: LlamaConfig = json("config.json", &files.config_json)?;
    let tok_cfg: TokenizerConfig = match &files.tokenizer_config_json {
        Some(b) => json("tokenizer_config.json", b)?,
        None => TokenizerConfig::default(),
    };
    let heads = cfg.num_attention_heads;
    let kv_heads = cfg.num_key_value_heads();
    check_dims(
        cfg.hidden_size,
        heads,
        kv_heads,
        cfg.num_hidden_layers,
        cfg.intermediate_size,
        cfg.vocab_size,
    )?;
    if cfg.max_position_embeddings == 0 || cfg.max_position_embeddings > 1 << 20 {
        return Err(InferenceError::InvalidConfig(format!(
            "max_position_embeddings {}",
            cfg.max_position_embeddings
        )));
    }
    let positive = |x: f64| x.is_finite() && x > 0.0;
    if !positive(cfg.rms_norm_eps) || !positive(f64::from(cfg.rope_theta)) {
        return Err(InferenceError::InvalidConfig(
            "rms_norm_eps and rope_theta must be positive".into(),
        ));
    }
    let config_eos: Vec<u32> = match &cfg.eos_token_id {
        Some(LlamaEosToks::Single(id)) => vec![*id],
        Some(LlamaEosToks::Multiple(ids)) => ids.clone(),
        None => Vec::new(),
    };
    let config = cfg.into_config(false);
    let dtype = if device.is_cpu() {
        DType::F32
    } else {
        DType::BF16
    };

    let mut tensors: HashMap<String, Tensor> = HashMap::new();
    for shard in &files.weights {
        let loaded = candle_core::safetensors::load_buffer(shard, &device)
            .map_err(InferenceError::Safetensors)?;
        tensors.extend(loaded);
    }
    drop(files.weights);
    check_tensors(&tensors, &config)?;
    let vb = VarBuilder::from_tensors(tensors, dtype, &device);
    let model = llama::Llama::load(vb, &config)?;

    let tokenizer =
        Tokenizer::from_bytes(&files.tokenizer_json).map_err(InferenceError::tokenizer)?;
    if tokenizer.get_vocab_size(true) > config.vocab_size {
        return Err(InferenceError::InvalidConfig(format!(
            "tokenizer has {} tokens, the model {}",
            tokenizer.get_vocab_size(true),
            config.vocab_size
        )));
    }
    let bos = tok_cfg.bos_token.map(TokenSpec::text).unwrap_or_default();
    let eos = tok_cfg.eos_token.map(TokenSpec::text).unwrap_or_default();
    let mut eos_ids = config_eos;
    if let Some(id) = tokenizer.token_to_id(&eos)
        && !eos_ids.contains(&id)
    {
        eos_ids.push(id);
    }
    let template_source = tok_cfg.chat_template.and_then(|t| match t {
        TemplateSpec::One(s) => Some(s),
        TemplateSpec::Named(list) => list
            .into_iter()
            .find(|t| t.name == "default")
            .map(|t| t.template),
    });
    let template = chat_template(template_source, &bos, &eos)?;
    Ok(ModelInner {
        info: ModelInfo {
            name: options.name.clone().unwrap_or_else(|| "model".to_owned()),
            format: "safetensors-llama",
            vocab_size: config.vocab_size,
            context_length: config.max_position_embeddings,
            num_layers: config.num_hidden_layers,
        },
        vocab: Vocab {
            bos_id: tokenizer.token_to_id(&bos),
            tokenizer,
            add_bos: false,
            eos_ids,
            chat_template: template,
        },
        weights: Weights::Llama {
            model,
            config,
            dtype,
        },
        device,
    })
}

/// Every tensor `llama::Llama::load` reads, with its shape.
fn check_tensors(
    tensors: &HashMap<String, Tensor>,
    cfg: &llama::Config,
) -> Result<(), InferenceError> {
    let h = cfg.hidden_size;
    let kv = h / cfg.num_attention_heads * cfg.num_key_value_heads;
    let ff = cfg.intermediate_size;
    let mut expected: Vec<(String, Vec<usize>)> = vec![
        ("model.embed_tokens.weight".into(), vec![cfg.vocab_size, h]),
        ("model.norm.weight".into(), vec![h]),
    ];
    if !cfg.tie_word_embeddings {
        expected.push(("lm_head.weight".into(), vec![cfg.vocab_size, h]));
    }
    for i in 0..cfg.num_hidden_layers {
        let p = format!("model.layers.{i}");
        expected.extend([
            (format!("{p}.self_attn.q_proj.weight"), vec![h, h]),
            (format!("{p}.self_attn.k_proj.weight"), vec![kv, h]),
            (format!("{p}.self_attn.v_proj.weight"), vec![kv, h]),
            (format!("{p}.self_attn.o_proj.weight"), vec![h, h]),
            (format!("{p}.mlp.gate_proj.weight"), vec![ff, h]),
            (format!("{p}.mlp.up_proj.weight"), vec![ff, h]),
            (format!("{p}.mlp.down_proj.weight"), vec![h, ff]),
            (format!("{p}.input_layernorm.weight"), vec![h]),
            (format!("{p}.post_attention_layernorm.weight"), vec![h]),
        ]);
    }
    for (name, shape) in expected {
        let t = tensors
            .get(&name)
            .ok_or_else(|| InferenceError::tensor(&name, "missing"))?;
        if t.dims() != shape.as_slice() {
            return Err(InferenceError::tensor(
                &name,
                format!("shape {:?}, expected {shape:?}", t.dims()),
            ));
        }
    }
    Ok(())
}
