//! ward-inference: the local inference runtime on candle that wardd serves.
//!
//! What it owns (the runtime, and only the runtime):
//! - [`Model`]: llama-family models (Llama 2/3, Mistral, SmolLM2...) and Qwen2 loaded from decrypted
//!   in-memory buffers, as GGUF (quantised, tokenizer and chat template in the metadata) or as
//!   safetensors (`config.json`, `tokenizer.json`, `tokenizer_config.json`);
//! - tokenizers (`tokenizer.json`, or built from GGUF metadata), chat templates ([`chat`]),
//!   sampling ([`sampling`]), and the generation loop: KV cache, stop sequences, streaming, usage;
//! - [`Engine`]: a bounded queue with back-pressure, a continuous batch of sequences on one
//!   scheduler thread (one decode step for all of them, where the model batches), cancellation;
//! - CPU by default, NVIDIA GPUs with the `cuda` feature ([`DeviceKind`]).
//!
//! What it must never do: read model bytes from disk on its own (the sealed-model loader hands
//! them over), log prompts or generated text, or panic on a malformed model.
//!
//! What it is not: the API in front of it. The OpenAI-compatible HTTP handlers, end-to-end
//! encryption (the `ward-e2e` crate) and the audit of requests are wardd's inference front
//! (`agent/src/inference_api/`); the benchmarks and the benchmark-model generator are the
//! `ward-inference-bench` crate (`inference/bench/`).
//!
//! [`gguf_names`] serves the tools that write GGUF files from safetensors weights: `test_models`
//! (feature `test-util`, the tests' tiny models) and `gen-bench-model`.

pub mod chat;
mod engine;
mod error;
mod generate;
pub mod gguf_names;
mod gguf_tokenizer;
pub mod model;
mod request;
pub mod sampling;
mod text_stream;

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
