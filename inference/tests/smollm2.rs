//! End to end on a real model: SmolLM2-135M-Instruct (Q4_1 GGUF, llama architecture, tokenizer and
//! chat template in the metadata). Fetch it with `scripts/fetch-model.sh`; the test is skipped,
//! with a message, when the file is absent. Set `WARD_SMOLLM2_GGUF` to use another path.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::PathBuf;

use ward_inference::{
    ChatMessage, Engine, EngineConfig, FinishReason, LoadOptions, Model, Request,
};

fn model_path() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("WARD_SMOLLM2_GGUF") {
        return Some(PathBuf::from(p));
    }
    let cache = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))?;
    Some(cache.join("ward/models/SmolLM2-135M-Instruct.Q4_1.gguf"))
}

#[test]
fn smollm2_chat_generates_readable_text() {
    let Some(path) = model_path().filter(|p| p.exists()) else {
        eprintln!(
            "SKIPPED: SmolLM2 GGUF not found (run scripts/fetch-model.sh or set WARD_SMOLLM2_GGUF)"
        );
        return;
    };
    let model = Model::from_gguf_file(&path, &LoadOptions::default()).unwrap();
    assert_eq!(model.info().format, "gguf-llama");
    assert_eq!(model.info().vocab_size, 49152);
    let rendered = model
        .render_chat(&[ChatMessage::new("user", "What is the capital of France?")])
        .unwrap();
    assert!(rendered.contains("<|im_start|>user\nWhat is the capital of France?<|im_end|>"));
    assert!(rendered.ends_with("<|im_start|>assistant\n"));

    let engine = Engine::new(model, EngineConfig::default()).unwrap();
    let request = Request::chat(vec![ChatMessage::new(
        "user",
        "What is the capital of France? Answer in one sentence.",
    )])
    .with_max_tokens(40);
    let started = std::time::Instant::now();
    let done = engine.submit(request).unwrap().blocking_collect().unwrap();
    eprintln!(
        "SmolLM2 ({:?}, {} prompt + {} completion tokens, {:?}): {:?}",
        done.finish_reason,
        done.usage.prompt_tokens,
        done.usage.completion_tokens,
        started.elapsed(),
        done.text
    );
    assert!(done.text.contains("Paris"), "{:?}", done.text);
    assert!(done.text.is_ascii(), "{:?}", done.text);
    assert_eq!(
        done.finish_reason,
        FinishReason::Stop,
        "ends with <|im_end|>"
    );
}
