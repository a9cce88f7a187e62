//! Models loaded from memory: the llama family (Llama 2/3, Mistral, SmolLM2 and other llama-layout
//! models) and Qwen2 from GGUF (quantised) or safetensors buffers, with their tokenizer, special
//! tokens and chat template.
//!
//! The runtime API takes buffers only: the sealed-model loader hands over decrypted bytes and this
//! module never opens a file (the `*_file` conveniences for tests and the CLI read into memory
//! first). A loaded [`Model`] is immutable and shared through an `Arc`; each generation gets its
//! own [`Session`] holding its KV cache.

mod gguf;
mod gguf_precheck;
mod gguf_source;
mod qlinear;
mod quantized;
mod safetensors;

use std::sync::Arc;

use bytes::Bytes;
use candle_core::{DType, Device, Tensor};
use candle_transformers::models::{llama, qwen2};
use tokenizers::Tokenizer;

use crate::chat::{CHATML_TEMPLATE, ChatMessage, ChatTemplate};
use crate::error::InferenceError;
use gguf_source::GgufBytes;

pub use safetensors::SafetensorsFiles;

/// Where the model runs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum DeviceKind {
    /// The CPU, with the SIMD features the crate was built for.
    #[default]
    Cpu,
    /// An NVIDIA GPU by ordinal (needs the `cuda` feature).
    Cuda(usize),
}

/// `cpu`, `cuda` (GPU 0) or `cuda:N`, as configuration files and command lines spell it.
impl std::str::FromStr for DeviceKind {
    type Err = InferenceError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || InferenceError::Device(format!("`{s}`: expected cpu, cuda or cuda:N"));
        match s {
            "cpu" => Ok(Self::Cpu),
            "cuda" => Ok(Self::Cuda(0)),
            _ => s
                .strip_prefix("cuda:")
                .and_then(|n| n.parse().ok())
                .map(Self::Cuda)
                .ok_or_else(bad),
        }
    }
}

impl std::fmt::Display for DeviceKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Cpu => f.write_str("cpu"),
            Self::Cuda(n) => write!(f, "cuda:{n}"),
        }
    }
}

impl DeviceKind {
    /// Whether this build can run on the device at all (GPUs need the `cuda` feature); says
    /// why not. Whether the device is present is known only when a model loads.
    pub fn supported(self) -> Result<(), InferenceError> {
        match self {
            Self::Cuda(_) if !cfg!(feature = "cuda") => Err(InferenceError::Device(format!(
                "{self}: this build has no CUDA support (build ward-inference with the `cuda` feature)"
            ))),
            _ => Ok(()),
        }
    }

    pub(crate) fn device(self) -> Result<Device, InferenceError> {
        match self {
            Self::Cpu => Ok(Device::Cpu),
            Self::Cuda(ordinal) => Device::new_cuda(ordinal)
                .map_err(|e| InferenceError::Device(format!("CUDA device {ordinal}: {e}"))),
        }
    }
}

/// Options of [`Model::load`].
#[derive(Debug, Clone, Default)]
pub struct LoadOptions {
    pub device: DeviceKind,
    /// A name for logs and `/v1/models`; defaults to the GGUF `general.name` or `model`.
    pub name: Option<String>,
}

/// The serialized model handed over by the sealed-model loader.
#[derive(Debug, Clone)]
pub enum ModelSource<'a> {
    /// A GGUF file's bytes (weights, tokenizer and chat template in its metadata).
    Gguf(Vec<u8>),
    /// A Hugging Face checkpoint: `config.json`, `tokenizer.json`, weights.
    Safetensors(SafetensorsFiles<'a>),
}

/// What a loaded model is, for listings and limits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelInfo {
    pub name: String,
    /// `gguf-llama`, `gguf-qwen2`, `safetensors-llama` or `safetensors-qwen2`.
    pub format: &'static str,
    pub vocab_size: usize,
    /// The most tokens (prompt + completion) one sequence may hold.
    pub context_length: usize,
    pub num_layers: usize,
}

/// The weights of a loaded model. candle's Qwen2 holds its KV cache inside and is cloned per
/// session (tensors are reference-counted, only the caches differ); the others keep each
/// sequence's cache apart.
pub(crate) enum Weights {
    /// Quantised llama and Qwen2 from GGUF (`quantized`): batched decoding.
    Quantized(quantized::QuantizedWeights),
    /// Llama from safetensors: the cache lives apart from the model.
    Llama {
        model: llama::Llama,
        config: llama::Config,
        dtype: DType,
    },
    /// Qwen2 from safetensors (candle's `qwen2`).
    Qwen2(Box<qwen2::ModelForCausalLM>),
}

/// Special tokens and prompt conventions of a model.
pub(crate) struct Vocab {
    pub tokenizer: Tokenizer,
    pub bos_id: Option<u32>,
    /// Prepend BOS ourselves (GGUF); safetensors tokenizers do it in their post-processor.
    pub add_bos: bool,
    pub eos_ids: Vec<u32>,
    pub chat_template: ChatTemplate,
}

pub(crate) struct ModelInner {
    pub info: ModelInfo,
    pub weights: Weights,
    pub vocab: Vocab,
    pub device: Device,
}

/// A loaded model: weights, tokenizer and chat template, cheap to clone and share across threads.
#[derive(Clone)]
pub struct Model {
    pub(crate) inner: Arc<ModelInner>,
}

impl std::fmt::Debug for Model {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Model")
            .field("info", &self.inner.info)
            .finish()
    }
}

impl Model {
    /// Loads a model from its in-memory serialization.
    pub fn load(source: ModelSource<'_>, options: &LoadOptions) -> Result<Self, InferenceError> {
        match source {
            ModelSource::Gguf(bytes) => Self::from_gguf_buffer(Bytes::from(bytes), options),
            ModelSource::Safetensors(files) => Self::from_safetensors(files, options),
        }
    }

    /// Loads a GGUF (llama or qwen2 architecture) from memory the caller keeps: the weights
    /// are copied out of it.
    pub fn from_gguf(bytes: &[u8], options: &LoadOptions) -> Result<Self, InferenceError> {
        Self::gguf(GgufBytes::Borrowed(bytes), options)
    }

    /// Loads a GGUF from a buffer the model keeps: the weight matrices ward's CPU kernels run
    /// (Q4_0, Q4_1, Q8_0; nearly all of a model in those formats) stay in `bytes`, sliced, not
    /// copied, so a model costs its file's size in memory once, not twice; the buffer is
    /// released when the last clone of the model is. A locked, zeroized plaintext buffer stays
    /// that (`Bytes::from_owner`). Other tensors (norms, other formats, GPU) are copied as
    /// [`Model::from_gguf`] copies them.
    pub fn from_gguf_buffer(bytes: Bytes, options: &LoadOptions) -> Result<Self, InferenceError> {
        Self::gguf(GgufBytes::Shared(&bytes), options)
    }

    fn gguf(bytes: GgufBytes<'_>, options: &LoadOptions) -> Result<Self, InferenceError> {
        let span = tracing::info_span!("model_load", format = "gguf", bytes = bytes.all().len());
        let _enter = span.enter();
        let device = options.device.device()?;
        let inner = gguf::load(bytes, options, device)?;
        tracing::info!(name = %inner.info.name, vocab = inner.info.vocab_size, layers = inner.info.num_layers, "model loaded");
        Ok(Self {
            inner: Arc::new(inner),
        })
    }

    /// Loads a safetensors checkpoint (llama, Mistral or Qwen2) from memory.
    pub fn from_safetensors(
        files: SafetensorsFiles<'_>,
        options: &LoadOptions,
    ) -> Result<Self, InferenceError> {
        let span = tracing::info_span!("model_load", format = "safetensors");
        let _enter = span.enter();
        let device = options.device.device()?;
        let inner = safetensors::load(files, options, device)?;
        tracing::info!(name = %inner.info.name, vocab = inner.info.vocab_size, layers = inner.info.num_layers, "model loaded");
        Ok(Self {
            inner: Arc::new(inner),
        })
    }

    /// Convenience for tests and the CLI: reads a GGUF file into memory, then
    /// [`Model::from_gguf_buffer`].
    pub fn from_gguf_file(
        path: &std::path::Path,
        options: &LoadOptions,
    ) -> Result<Self, InferenceError> {
        let bytes = std::fs::read(path).map_err(|e| {
            InferenceError::InvalidRequest(format!("cannot read {}: {e}", path.display()))
        })?;
        Self::from_gguf_buffer(Bytes::from(bytes), options)
    }

    pub fn info(&self) -> &ModelInfo {
        &self.inner.info
    }

    /// The tokenizer (for counting tokens, or decoding ids).
    pub fn tokenizer(&self) -> &Tokenizer {
        &self.inner.vocab.tokenizer
    }

    /// Renders a conversation with the model's chat template, opening the assistant turn.
    pub fn render_chat(&self, messages: &[ChatMessage]) -> Result<String, InferenceError> {
        self.inner.vocab.chat_template.render(messages, true)
    }

    /// Tokenizes a prompt. `chat` prompts come from the template, which writes BOS itself where
    /// the model wants it; plain prompts get the model's BOS convention.
    pub fn encode(&self, text: &str, chat: bool) -> Result<Vec<u32>, InferenceError> {
        let vocab = &self.inner.vocab;
        // A chat template writes special tokens as text: never let the tokenizer add more.
        let encoding = vocab
            .tokenizer
            .encode(text, !chat)
            .map_err(InferenceError::tokenizer)?;
        let mut ids = encoding.get_ids().to_vec();
        if vocab.add_bos
            && let Some(bos) = vocab.bos_id
            && ids.first() != Some(&bos)
        {
            ids.insert(0, bos);
        }
        Ok(ids)
    }

    pub(crate) fn is_eos(&self, id: u32) -> bool {
        self.inner.vocab.eos_ids.contains(&id)
    }

    /// A fresh sequence state (empty KV cache) sharing this model's weights.
    pub fn new_session(&self) -> Result<Session, InferenceError> {
        let state = match &self.inner.weights {
            Weights::Quantized(_) => SessionState::Quantized(quantized::KvCache::default()),
            Weights::Llama { config, dtype, .. } => SessionState::Llama(Box::new(
                llama::Cache::new(true, *dtype, config, &self.inner.device)?,
            )),
            Weights::Qwen2(m) => {
                let mut m = m.clone();
                m.clear_kv_cache();
                SessionState::Qwen2(m)
            }
        };
        Ok(Session {
            model: self.clone(),
            state,
        })
    }
}

enum SessionState {
    Quantized(quantized::KvCache),
    Llama(Box<llama::Cache>),
    Qwen2(Box<qwen2::ModelForCausalLM>),
}

/// One sequence being generated: the model plus this sequence's KV cache.
pub struct Session {
    model: Model,
    state: SessionState,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session").finish_non_exhaustive()
    }
}

impl Session {
    /// The model this session runs.
    pub(crate) fn model(&self) -> &Model {
        &self.model
    }

    /// Makes room for a sequence of `tokens` tokens in all (prompt and completion, capped at
    /// the context length) before it runs, so that its KV cache is sized by the request and
    /// never copied to grow. A hint: models whose caches cannot take it ignore it.
    pub fn reserve(&mut self, tokens: usize) {
        let inner = &self.model.inner;
        let tokens = tokens.min(inner.info.context_length);
        if let (SessionState::Quantized(cache), Weights::Quantized(w)) =
            (&mut self.state, &inner.weights)
        {
            w.reserve(cache, tokens);
        }
    }

    /// Runs `tokens` at positions `pos..pos + tokens.len()` and returns the logits of the last one.
    /// `pos == 0` starts a new sequence.
    pub fn forward(&mut self, tokens: &[u32], pos: usize) -> Result<Vec<f32>, InferenceError> {
        let inner = &self.model.inner;
        if tokens.is_empty() {
            return Err(InferenceError::InvalidRequest("no tokens to run".into()));
        }
        check_input(&inner.info, tokens, pos.saturating_add(tokens.len()))?;
        let input = Tensor::new(tokens, &inner.device)?.unsqueeze(0)?;
        let logits = match (&mut self.state, &inner.weights) {
            (SessionState::Quantized(cache), Weights::Quantized(w)) => {
                w.forward(cache, &input, pos)?
            }
            (SessionState::Qwen2(m), _) => qwen2_forward(m, &input, pos, !inner.device.is_cpu())?,
            (SessionState::Llama(cache), Weights::Llama { model, .. }) => {
                model.forward(&input, pos, cache)?
            }
            (SessionState::Llama(_) | SessionState::Quantized(_), _) => {
                return Err(InferenceError::InvalidConfig(
                    "session does not match its model".into(),
                ));
            }
        };
        // `(1, vocab)`, or `(1, 1, vocab)` from candle's Qwen2.
        Ok(logits
            .flatten_all()?
            .to_dtype(DType::F32)?
            .to_vec1::<f32>()?)
    }
}

/// candle's safetensors Qwen2 builds the causal mask of a chunk that continues a sequence by
/// joining an f32 block to one of the model's dtype, which fails in bf16 (on a GPU). There such a
/// chunk runs token by token (`by_token`), where no mask is needed: slower, and the same logits.
pub(crate) fn qwen2_forward(
    m: &mut qwen2::ModelForCausalLM,
    input: &Tensor,
    pos: usize,
    by_token: bool,
) -> candle_core::Result<Tensor> {
    let len = input.dim(1)?;
    if !by_token || pos == 0 || len == 1 {
        return m.forward(input, pos);
    }
    let mut logits = None;
    for i in 0..len {
        logits = Some(m.forward(&input.narrow(1, i, 1)?, pos + i)?);
    }
    logits.ok_or_else(|| candle_core::Error::Msg("an empty chunk".into()))
}

impl Model {
    /// Whether [`Model::forward_batch`] runs its sequences as one batch (quantised GGUF
    /// models) rather than one after the other.
    pub fn batches(&self) -> bool {
        matches!(self.inner.weights, Weights::Quantized(_))
    }

    /// One decode step of several sequences: `tokens[i]` at position `positions[i]` of
    /// `sessions[i]` (each at least 1: decoding continues a prefilled sequence). Returns each
    /// sequence's logits. Quantised GGUF models run all of them through each weight matrix
    /// once; other models run them one after the other.
    pub fn forward_batch(
        &self,
        sessions: &mut [&mut Session],
        tokens: &[u32],
        positions: &[usize],
    ) -> Result<Vec<Vec<f32>>, InferenceError> {
        if sessions.len() != tokens.len() || tokens.len() != positions.len() {
            return Err(InferenceError::InvalidRequest(format!(
                "a batch of {} sessions, {} tokens and {} positions",
                sessions.len(),
                tokens.len(),
                positions.len()
            )));
        }
        if sessions
            .iter()
            .any(|s| !Arc::ptr_eq(&s.model.inner, &self.inner))
        {
            return Err(InferenceError::InvalidConfig(
                "a session of another model in the batch".into(),
            ));
        }
        let w = match &self.inner.weights {
            // Position 0 starts a sequence (not a decode step), and one sequence has nothing
            // to share.
            Weights::Quantized(w) if sessions.len() > 1 && !positions.contains(&0) => w,
            _ => {
                return sessions
                    .iter_mut()
                    .zip(tokens.iter().zip(positions))
                    .map(|(s, (&t, &p))| s.forward(&[t], p))
                    .collect();
            }
        };
        let end = positions.iter().max().map_or(0, |p| p.saturating_add(1));
        check_input(&self.inner.info, tokens, end)?;
        let mut caches = Vec::with_capacity(sessions.len());
        for s in sessions.iter_mut() {
            match &mut s.state {
                SessionState::Quantized(c) => caches.push(c),
                _ => {
                    return Err(InferenceError::InvalidConfig(
                        "session does not match its model".into(),
                    ));
                }
            }
        }
        let logits = w
            .forward_batch(&mut caches, tokens, positions, &self.inner.device)?
            .to_dtype(DType::F32)?;
        Ok(logits.to_vec2::<f32>()?)
    }
}

/// Refuses a forward pass whose tokens are outside the vocabulary or that would end (`end`:
/// the last position plus one) past the context.
fn check_input(info: &ModelInfo, tokens: &[u32], end: usize) -> Result<(), InferenceError> {
    if end > info.context_length {
        return Err(InferenceError::PromptTooLong {
            prompt_tokens: end,
            context: info.context_length,
        });
    }
    if let Some(bad) = tokens.iter().find(|t| **t as usize >= info.vocab_size) {
        return Err(InferenceError::InvalidRequest(format!(
            "token id {bad} outside the vocabulary"
        )));
    }
    Ok(())
}

/// Picks the chat template: the model's own, else ChatML.
pub(crate) fn chat_template(
    source: Option<String>,
    bos: &str,
    eos: &str,
) -> Result<ChatTemplate, InferenceError> {
    ChatTemplate::new(
        source.unwrap_or_else(|| CHATML_TEMPLATE.to_owned()),
        bos,
        eos,
    )
}

/// Checks shared by both formats: positive sizes that divide as attention needs.
pub(crate) fn check_dims(
    hidden: usize,
    heads: usize,
    kv_heads: usize,
    layers: usize,
    ffn: usize,
    vocab: usize,
) -> Result<(), InferenceError> {
    let bad = |m: String| Err(InferenceError::InvalidConfig(m));
    if hidden == 0 || heads == 0 || kv_heads == 0 || layers == 0 || ffn == 0 || vocab == 0 {
        return bad(format!(
            "zero size (hidden {hidden}, heads {heads}, kv heads {kv_heads}, layers {layers}, ffn {ffn}, vocab {vocab})"
        ));
    }
    if layers > 1024 || heads > 4096 || hidden > 1 << 20 || ffn > 1 << 22 || vocab > 1 << 24 {
        return bad("sizes beyond any supported model".into());
    }
    if !hidden.is_multiple_of(heads) {
        return bad(format!(
            "hidden size {hidden} not divisible by {heads} heads"
        ));
    }
    if !heads.is_multiple_of(kv_heads) {
        return bad(format!(
            "{heads} heads not divisible by {kv_heads} kv heads"
        ));
    }
    if !(hidden / heads).is_multiple_of(2) {
        return bad(format!("odd head dimension {}", hidden / heads));
    }
    Ok(())
}
