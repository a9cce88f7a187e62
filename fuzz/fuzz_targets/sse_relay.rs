//! Arbitrary bytes as an external engine's SSE answer, cut into chunks of the first byte's
//! size, through `ward_agent::inference_api::openai::upstream::SseRelay`: what wardd relays from
//! llama.cpp, vLLM or SGLang to the client. Refusals are fine; panics are not.

#![no_main]

use libfuzzer_sys::fuzz_target;
use ward_agent::inference_api::openai::upstream::{Relayed, SseRelay};

fuzz_target!(|data: &[u8]| {
    let Some((&size, body)) = data.split_first() else {
        return;
    };
    let size = usize::from(size).max(1);
    let mut relay = SseRelay::new("model", size % 2 == 0);
    for chunk in body.chunks(size) {
        let Some(out) = relay.push(chunk) else {
            return;
        };
        if out.iter().any(|r| matches!(r, Relayed::Done | Relayed::Garbage)) {
            break;
        }
    }
    let _ = relay.usage();
});
