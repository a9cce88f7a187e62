//! ward-inference: a local inference runtime on candle, served by wardd.
//!
//! What it owns (issue #7, runtime core):
//! - [`Model`]: llama-family models (Llama 2/3, Mistral, SmolLM2...) and Qwen2 loaded from decrypted
//!   in-memory buffers, as GGUF (quantised, tokenizer and chat template in the metadata) or as
//!   safetensors (`config.json`, `tokenizer.json`, `tokenizer_config.json`);
//! - the generation loop: chat template, KV cache, sampling, stop sequences, streaming, usage;
//! - [`Engine`]: a bounded queue with back-pressure, a continuous batch of sequences on one
//!   scheduler thread (one decode step for all of them, where the model batches), cancellation;
//! - CPU by default, NVIDIA GPUs with the `cuda` feature ([`DeviceKind`]).
//!
//! What it must never do: read model bytes from disk on its own (the sealed-model loader hands
//! them over), log prompts or generated text, or panic on a malformed model.
//! - [`openai`]: the OpenAI-compatible HTTP API over [`Engine`]s, which wardd serves over HTTP
//!   and ttrpc behind end-to-end encryption (the `ward-e2e` crate).

pub mod chat;
mod engine;
mod error;
mod generate;
pub mod gguf_names;
mod gguf_tokenizer;
pub mod model;
pub mod openai;
mod request;
pub mod sampling;
mod text_stream;

#[cfg(test)]
mod openai_tests;
/// Tiny llama models generated in memory (fixed seed), for tests here and in other crates.
#[cfg(any(test, feature = "test-util"))]
pub mod test_models;
#[cfg(test)]
mod tests;

pub use chat::{ChatMessage, ChatTemplate};
pub use engine::{CancelHandle, Engine, EngineConfig, EngineStats, GenerationStream};
pub use error::InferenceError;
pub use model::{
    DeviceKind, LoadOptions, Model, ModelInfo, ModelSource, SafetensorsFiles, Session,
};
pub use request::{
    Completion, FinishReason, Finished, MAX_STOP_LEN, MAX_STOPS, Prompt, Request, StreamEvent,
    Usage,
};
pub use sampling::SamplingParams;
