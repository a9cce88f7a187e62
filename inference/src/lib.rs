//! ward-inference: a local inference runtime on candle, served by wardd.
//!
//! Will own (issue "Inference runtime over vsock"): llama-family models loaded from decrypted
//! in-memory buffers (safetensors and GGUF), tokenizer and chat templates, sampling, a bounded
//! request queue, an OpenAI-compatible HTTP API, and end-to-end encrypted sessions (HPKE) bound
//! to the attestation.
//!
//! Nothing is implemented yet.
