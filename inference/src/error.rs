//! The one error type of the inference runtime: what failed, and on which input.
//!
//! Model bytes come from a sealed artifact but are still parsed defensively: every malformed
//! input maps to a variant here, never to a panic.

/// Errors of model loading, prompt rendering, generation and scheduling.
#[derive(Debug, thiserror::Error)]
pub enum InferenceError {
    /// The GGUF container could not be parsed.
    #[error("malformed GGUF model")]
    GgufParse(#[source] candle_core::Error),
    /// A required GGUF metadata key is missing or has the wrong type.
    #[error("GGUF metadata key `{key}` is missing or invalid: {reason}")]
    GgufMetadata { key: String, reason: String },
    /// The GGUF architecture is not one this runtime runs.
    #[error("unsupported model architecture `{0}`")]
    UnsupportedArchitecture(String),
    /// A weight tensor is missing or has an unexpected shape.
    #[error("tensor `{name}`: {reason}")]
    Tensor { name: String, reason: String },
    /// The model hyper-parameters are inconsistent (zero heads, heads not dividing the width...).
    #[error("invalid model configuration: {0}")]
    InvalidConfig(String),
    /// `config.json` (or `tokenizer_config.json`) is not valid JSON of the expected shape.
    #[error("invalid {file}")]
    ConfigJson {
        file: &'static str,
        #[source]
        source: serde_json::Error,
    },
    /// The safetensors buffer could not be parsed.
    #[error("malformed safetensors weights")]
    Safetensors(#[source] candle_core::Error),
    /// The tokenizer could not be built or used.
    #[error("tokenizer: {0}")]
    Tokenizer(String),
    /// The chat template is missing, does not compile, or failed to render.
    #[error("chat template: {0}")]
    ChatTemplate(String),
    /// The request is not acceptable (empty prompt, bad sampling parameters...).
    #[error("invalid request: {0}")]
    InvalidRequest(String),
    /// The prompt leaves no room for a single generated token in the model's context.
    #[error("prompt of {prompt_tokens} tokens does not fit the context of {context} tokens")]
    PromptTooLong {
        prompt_tokens: usize,
        context: usize,
    },
    /// The prompt is longer than the request allows (`Request::max_prompt_tokens`).
    #[error("prompt of {prompt_tokens} tokens is over the limit of {limit} tokens")]
    PromptOverLimit { prompt_tokens: usize, limit: usize },
    /// The request queue is full: back-pressure, retry later.
    #[error("request queue is full ({capacity} waiting)")]
    QueueFull { capacity: usize },
    /// The engine is shutting down or its workers are gone.
    #[error("inference engine is shut down")]
    ShutDown,
    /// The request was cancelled by its caller.
    #[error("request cancelled")]
    Cancelled,
    /// A tensor operation failed while running the model.
    #[error("model execution failed")]
    Candle(#[from] candle_core::Error),
    /// The device asked for is not available in this build or on this machine.
    #[error("device: {0}")]
    Device(String),
}

impl InferenceError {
    pub(crate) fn tokenizer(e: impl std::fmt::Display) -> Self {
        Self::Tokenizer(e.to_string())
    }

    pub(crate) fn metadata(key: &str, reason: impl Into<String>) -> Self {
        Self::GgufMetadata {
            key: key.to_owned(),
            reason: reason.into(),
        }
    }

    pub(crate) fn tensor(name: &str, reason: impl Into<String>) -> Self {
        Self::Tensor {
            name: name.to_owned(),
            reason: reason.into(),
        }
    }
}
