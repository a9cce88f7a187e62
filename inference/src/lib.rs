//! ward-inference: a local inference runtime on candle, served by wardd.
//!
//! Will own (issue "Inference runtime over vsock"): llama-family models loaded from decrypted
//! in-memory buffers (safetensors and GGUF), tokenizer and chat templates, sampling, a bounded
//! request queue, an OpenAI-compatible HTTP API, and end-to-end encrypted sessions (HPKE) bound
//! to the attestation.
//!
//! Implemented so far: [`e2e`], the message layer of end-to-end encrypted inference
//! (`docs/encrypted-inference.md`).

pub mod e2e;
