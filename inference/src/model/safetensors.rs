//! Safetensors checkpoints of the llama layout (Llama 2/3, Mistral, SmolLM2...: candle's `llama`)
//! and of Qwen2 (candle's `qwen2`: the same tensors plus q/k/v biases) from buffers:
//! `config.json`, `tokenizer.json`, optional `tokenizer_config.json` (chat template, special
//! tokens), and one or more weight shards. Every tensor the candle loader reads is checked for
//! presence and shape first: the llama loader unwraps per layer and would panic on a missing one.

use std::collections::HashMap;

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use candle_transformers::models::llama::{self, LlamaConfig, LlamaEosToks};
use candle_transformers::models::qwen2;
use serde::Deserialize;
use tokenizers::Tokenizer;

use std::borrow::Cow;

use super::{LoadOptions, ModelInfo, ModelInner, Vocab, Weights, chat_template, check_dims};
use crate::error::InferenceError;

/// The files of a Hugging Face checkpoint, as bytes. The weights may be borrowed: wardd lends the
/// loader's locked, zeroized plaintext buffers rather than copying them into ordinary memory.
#[derive(Debug, Clone, Default)]
pub struct SafetensorsFiles<'a> {
    pub config_json: Vec<u8>,
    pub tokenizer_json: Vec<u8>,
    /// Carries `chat_template`, `bos_token`, `eos_token`; ChatML is used without it.
    pub tokenizer_config_json: Option<Vec<u8>>,
    /// `model.safetensors`, or every `model-0000N-of-0000M.safetensors` shard.
    pub weights: Vec<Cow<'a, [u8]>>,
}

/// `config.json` fields beyond what candle's `LlamaConfig` reads.
#[derive(Deserialize)]
struct ArchConfig {
    #[serde(default)]
    architectures: Vec<String>,
    /// Mistral's sliding-window attention span (`null` or absent: full attention).
    #[serde(default)]
    sliding_window: Option<usize>,
}

/// Architectures run by candle's llama model.
const LLAMA_ARCHITECTURES: &[&str] = &["LlamaForCausalLM", "MistralForCausalLM"];
const QWEN2_ARCHITECTURE: &str = "Qwen2ForCausalLM";

/// The longest context a Qwen2 checkpoint gets (as for Qwen2 GGUFs).
const QWEN2_MAX_CONTEXT: usize = super::gguf::QWEN2_MAX_CONTEXT;

/// Qwen2's `config.json`, leniently: `transformers` writes `sliding_window: null` when
/// `use_sliding_window` is off, which candle's `qwen2::Config` does not accept.
#[derive(Deserialize)]
struct Qwen2Json {
    vocab_size: usize,
    hidden_size: usize,
    intermediate_size: usize,
    num_hidden_layers: usize,
    num_attention_heads: usize,
    num_key_value_heads: Option<usize>,
    max_position_embeddings: usize,
    #[serde(default)]
    sliding_window: Option<usize>,
    #[serde(default)]
    use_sliding_window: bool,
    #[serde(default)]
    tie_word_embeddings: bool,
    #[serde(default = "default_qwen2_rope_theta")]
    rope_theta: f64,
    rms_norm_eps: f64,
    #[serde(default)]
    hidden_act: Option<String>,
    #[serde(default)]
    rope_scaling: Option<serde_json::Value>,
    #[serde(default)]
    eos_token_id: Option<LlamaEosToks>,
}

fn default_qwen2_rope_theta() -> f64 {
    10_000.0
}

/// The tensors a checkpoint must hold: the llama layout, with q/k/v biases for Qwen2.
struct Layout {
    hidden: usize,
    kv: usize,
    ffn: usize,
    vocab: usize,
    layers: usize,
    tied: bool,
    qkv_bias: bool,
}

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
    mut files: SafetensorsFiles<'_>,
    options: &LoadOptions,
    device: Device,
) -> Result<ModelInner, InferenceError> {
    let arch: ArchConfig = json("config.json", &files.config_json)?;
    let qwen2 = match arch.architectures.as_slice() {
        [] => false,
        [one] if one == QWEN2_ARCHITECTURE => true,
        list => {
            if let Some(a) = list
                .iter()
                .find(|a| !LLAMA_ARCHITECTURES.contains(&a.as_str()))
            {
                return Err(InferenceError::UnsupportedArchitecture(a.clone()));
            }
            false
        }
    };
    let tok_cfg: TokenizerConfig = match &files.tokenizer_config_json {
        Some(b) => json("tokenizer_config.json", b)?,
        None => TokenizerConfig::default(),
    };
    let dtype = if device.is_cpu() {
        DType::F32
    } else {
        DType::BF16
    };
    // The shards are freed as soon as their tensors are built.
    let shards = std::mem::take(&mut files.weights);
    let (model, config_eos) = if qwen2 {
        load_qwen2(&files.config_json, shards, dtype, &device)?
    } else {
        load_llama(
            &files.config_json,
            shards,
            arch.sliding_window,
            dtype,
            &device,
        )?
    };

    let tokenizer =
        Tokenizer::from_bytes(&files.tokenizer_json).map_err(InferenceError::tokenizer)?;
    if tokenizer.get_vocab_size(true) > model.vocab {
        return Err(InferenceError::InvalidConfig(format!(
            "tokenizer has {} tokens, the model {}",
            tokenizer.get_vocab_size(true),
            model.vocab
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
            format: model.format,
            vocab_size: model.vocab,
            context_length: model.context,
            num_layers: model.layers,
        },
        vocab: Vocab {
            bos_id: tokenizer.token_to_id(&bos),
            tokenizer,
            add_bos: false,
            eos_ids,
            chat_template: template,
        },
        weights: model.weights,
        device,
    })
}

/// A checkpoint's weights, loaded, with what `ModelInfo` needs.
struct Loaded {
    weights: Weights,
    format: &'static str,
    vocab: usize,
    context: usize,
    layers: usize,
}

/// Every shard's tensors in one map (later shards win on a duplicate name).
fn load_shards(
    shards: Vec<Cow<'_, [u8]>>,
    device: &Device,
) -> Result<HashMap<String, Tensor>, InferenceError> {
    let mut tensors: HashMap<String, Tensor> = HashMap::new();
    for shard in shards {
        let loaded = candle_core::safetensors::load_buffer(&shard, device)
            .map_err(InferenceError::Safetensors)?;
        tensors.extend(loaded);
    }
    Ok(tensors)
}

fn check_positive(rms_norm_eps: f64, rope_theta: f64) -> Result<(), InferenceError> {
    let positive = |x: f64| x.is_finite() && x > 0.0;
    if !positive(rms_norm_eps) || !positive(rope_theta) {
        return Err(InferenceError::InvalidConfig(
            "rms_norm_eps and rope_theta must be positive".into(),
        ));
    }
    Ok(())
}

fn check_positions(max_position_embeddings: usize) -> Result<(), InferenceError> {
    if max_position_embeddings == 0 || max_position_embeddings > 1 << 20 {
        return Err(InferenceError::InvalidConfig(format!(
            "max_position_embeddings {max_position_embeddings}"
        )));
    }
    Ok(())
}

fn eos_list(eos: Option<&LlamaEosToks>) -> Vec<u32> {
    match eos {
        Some(LlamaEosToks::Single(id)) => vec![*id],
        Some(LlamaEosToks::Multiple(ids)) => ids.clone(),
        None => Vec::new(),
    }
}

/// Llama, Mistral: candle's `llama`. A Mistral sliding window shorter than the context caps the
/// context at the window, where full attention and sliding-window attention agree.
fn load_llama(
    config_json: &[u8],
    shards: Vec<Cow<'_, [u8]>>,
    sliding_window: Option<usize>,
    dtype: DType,
    device: &Device,
) -> Result<(Loaded, Vec<u32>), InferenceError> {
    let cfg: LlamaConfig = json("config.json", config_json)?;
    let kv_heads = cfg.num_key_value_heads();
    check_dims(
        cfg.hidden_size,
        cfg.num_attention_heads,
        kv_heads,
        cfg.num_hidden_layers,
        cfg.intermediate_size,
        cfg.vocab_size,
    )?;
    check_positions(cfg.max_position_embeddings)?;
    check_positive(cfg.rms_norm_eps, f64::from(cfg.rope_theta))?;
    let config_eos = eos_list(cfg.eos_token_id.as_ref());
    let mut config = cfg.into_config(false);
    if let Some(window) = sliding_window.filter(|w| *w > 0) {
        config.max_position_embeddings = config.max_position_embeddings.min(window);
    }
    let tensors = load_shards(shards, device)?;
    check_tensors(
        &tensors,
        &Layout {
            hidden: config.hidden_size,
            kv: config.hidden_size / config.num_attention_heads * kv_heads,
            ffn: config.intermediate_size,
            vocab: config.vocab_size,
            layers: config.num_hidden_layers,
            tied: config.tie_word_embeddings,
            qkv_bias: false,
        },
    )?;
    let vb = VarBuilder::from_tensors(tensors, dtype, device);
    let model = llama::Llama::load(vb, &config)?;
    let loaded = Loaded {
        format: "safetensors-llama",
        vocab: config.vocab_size,
        context: config.max_position_embeddings,
        layers: config.num_hidden_layers,
        weights: Weights::Llama {
            model,
            config,
            dtype,
        },
    };
    Ok((loaded, config_eos))
}

/// Qwen2 and Qwen2.5: candle's `qwen2`. Sliding-window attention, where a checkpoint turns it
/// on, caps the context at the window (candle applies the window to the prompt's mask only).
fn load_qwen2(
    config_json: &[u8],
    shards: Vec<Cow<'_, [u8]>>,
    dtype: DType,
    device: &Device,
) -> Result<(Loaded, Vec<u32>), InferenceError> {
    let cfg: Qwen2Json = json("config.json", config_json)?;
    let kv_heads = cfg.num_key_value_heads.unwrap_or(cfg.num_attention_heads);
    check_dims(
        cfg.hidden_size,
        cfg.num_attention_heads,
        kv_heads,
        cfg.num_hidden_layers,
        cfg.intermediate_size,
        cfg.vocab_size,
    )?;
    check_positions(cfg.max_position_embeddings)?;
    check_positive(cfg.rms_norm_eps, cfg.rope_theta)?;
    if let Some(act) = cfg.hidden_act.as_deref().filter(|a| *a != "silu") {
        return Err(InferenceError::InvalidConfig(format!(
            "Qwen2 with hidden_act `{act}` (silu expected)"
        )));
    }
    if cfg.rope_scaling.as_ref().is_some_and(|r| !r.is_null()) {
        return Err(InferenceError::InvalidConfig(
            "Qwen2 rope_scaling is not supported".into(),
        ));
    }
    let mut context = cfg.max_position_embeddings.min(QWEN2_MAX_CONTEXT);
    if cfg.use_sliding_window
        && let Some(window) = cfg.sliding_window.filter(|w| *w > 0)
    {
        context = context.min(window);
    }
    let config = qwen2::Config {
        vocab_size: cfg.vocab_size,
        hidden_size: cfg.hidden_size,
        intermediate_size: cfg.intermediate_size,
        num_hidden_layers: cfg.num_hidden_layers,
        num_attention_heads: cfg.num_attention_heads,
        num_key_value_heads: kv_heads,
        // Sizes the rotary tables: only the context this runtime allows.
        max_position_embeddings: context,
        // No query is further than `context` from its key: the window never cuts.
        sliding_window: context,
        max_window_layers: cfg.num_hidden_layers,
        tie_word_embeddings: cfg.tie_word_embeddings,
        rope_theta: cfg.rope_theta,
        rms_norm_eps: cfg.rms_norm_eps,
        use_sliding_window: false,
        hidden_act: candle_nn::Activation::Silu,
    };
    let tensors = load_shards(shards, device)?;
    check_tensors(
        &tensors,
        &Layout {
            hidden: cfg.hidden_size,
            kv: cfg.hidden_size / cfg.num_attention_heads * kv_heads,
            ffn: cfg.intermediate_size,
            vocab: cfg.vocab_size,
            layers: cfg.num_hidden_layers,
            tied: cfg.tie_word_embeddings,
            qkv_bias: true,
        },
    )?;
    let vb = VarBuilder::from_tensors(tensors, dtype, device);
    let model = qwen2::ModelForCausalLM::new(&config, vb)?;
    let loaded = Loaded {
        weights: Weights::Qwen2(Box::new(model)),
        format: "safetensors-qwen2",
        vocab: cfg.vocab_size,
        context,
        layers: cfg.num_hidden_layers,
    };
    Ok((loaded, eos_list(cfg.eos_token_id.as_ref())))
}

/// Every tensor the candle loader reads, with its shape (a present `lm_head` is checked even
/// when tied: candle's Qwen2 prefers it).
fn check_tensors(tensors: &HashMap<String, Tensor>, l: &Layout) -> Result<(), InferenceError> {
    let (h, kv, ff) = (l.hidden, l.kv, l.ffn);
    let mut expected: Vec<(String, Vec<usize>)> = vec![
        ("model.embed_tokens.weight".into(), vec![l.vocab, h]),
        ("model.norm.weight".into(), vec![h]),
    ];
    if !l.tied || tensors.contains_key("lm_head.weight") {
        expected.push(("lm_head.weight".into(), vec![l.vocab, h]));
    }
    for i in 0..l.layers {
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
        if l.qkv_bias {
            expected.extend([
                (format!("{p}.self_attn.q_proj.bias"), vec![h]),
                (format!("{p}.self_attn.k_proj.bias"), vec![kv]),
                (format!("{p}.self_attn.v_proj.bias"), vec![kv]),
            ]);
        }
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
