//! Arbitrary bytes as a model's chat template (Jinja, from GGUF metadata or
//! `tokenizer_config.json`) into `ward_inference::ChatTemplate::new`, rendered over a short
//! conversation: compile and render errors are fine; panics, hangs and unbounded output are
//! not (the template runs under minijinja's fuel limit).

#![no_main]

use libfuzzer_sys::fuzz_target;
use ward_inference::{ChatMessage, ChatTemplate};

fuzz_target!(|data: &[u8]| {
    let Ok(source) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(t) = ChatTemplate::new(source, "<s>", "</s>") else {
        return;
    };
    let messages = [
        ChatMessage::new("system", "be brief"),
        ChatMessage::new("user", "hi"),
        ChatMessage::new("assistant", "hello"),
    ];
    let _ = t.render(&messages, true);
    let _ = t.render(&[], false);
});
