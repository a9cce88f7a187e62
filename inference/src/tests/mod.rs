//! Behaviour of models, generation and the engine on the tiny generated llama
//! (see `test_models`): determinism, streaming, chat templates, stops, limits, concurrency,
//! cancellation, back-pressure, malformed inputs. By subject, beside them: `batch` (the
//! quantised forward pass and batched decode), `qwen2`, and `cuda` (the GPU against the CPU).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod batch;
/// Only in a build with the `cuda` feature: CI has no nvcc.
#[cfg(feature = "cuda")]
mod cuda;
mod qwen2;

use std::time::{Duration, Instant};

use candle_core::quantized::gguf_file::Value;

use crate::test_models::{self, gguf_model, safetensors_model, special_id};
use crate::{
    ChatMessage, Completion, Engine, EngineConfig, FinishReason, InferenceError, LoadOptions,
    Model, Request, SamplingParams, StreamEvent,
};

fn engine(model: Model, max_concurrent: usize, queue_capacity: usize) -> Engine {
    Engine::new(
        model,
        EngineConfig {
            max_concurrent,
            queue_capacity,
        },
    )
    .unwrap()
}

fn run(model: &Model, request: Request) -> Completion {
    engine(model.clone(), 1, 4)
        .submit(request)
        .unwrap()
        .blocking_collect()
        .unwrap()
}

fn hello(max_tokens: usize) -> Request {
    Request::text("hello there, the tiny llama says").with_max_tokens(max_tokens)
}

fn sampled(seed: u64) -> SamplingParams {
    SamplingParams {
        temperature: 0.9,
        top_k: Some(40),
        top_p: Some(0.95),
        seed,
        repetition_penalty: 1.1,
        repetition_window: 16,
    }
}

/// Waits until `f` holds (for states another thread reaches), failing after 10 s.
fn eventually(what: &str, f: impl Fn() -> bool) {
    let start = Instant::now();
    while !f() {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "timed out: {what}"
        );
        std::thread::sleep(Duration::from_millis(2));
    }
}

#[test]
fn models_are_shareable_across_threads() {
    fn is_send_sync<T: Send + Sync>() {}
    is_send_sync::<Model>();
    is_send_sync::<Engine>();
    is_send_sync::<crate::GenerationStream>();
}

#[test]
fn greedy_is_deterministic_across_loads_and_formats() {
    for model in [safetensors_model(), gguf_model()] {
        let a = run(&model, hello(12));
        // A fresh load of the same bytes gives the same text.
        let reloaded = match model.info().format {
            "gguf-llama" => {
                Model::from_gguf(&test_models::fixture().gguf, &LoadOptions::default()).unwrap()
            }
            _ => Model::from_safetensors(
                test_models::safetensors_files(special_id("<|im_end|>")),
                &LoadOptions::default(),
            )
            .unwrap(),
        };
        let b = run(&reloaded, hello(12));
        assert_eq!(a, b);
        assert!(!a.text.is_empty());
        assert_eq!(a.finish_reason, FinishReason::Length);
        assert_eq!(a.usage.completion_tokens, 12);
    }
}

#[test]
fn seeded_sampling_is_reproducible() {
    let model = safetensors_model();
    let a = run(&model, hello(10).with_sampling(sampled(1)));
    assert_eq!(a, run(&model, hello(10).with_sampling(sampled(1))));
    let greedy = run(&model, hello(10));
    let others: Vec<String> = (2..6)
        .map(|s| run(&model, hello(10).with_sampling(sampled(s))).text)
        .collect();
    assert!(
        others.iter().any(|t| *t != greedy.text),
        "sampling never leaves the greedy path"
    );
}

#[test]
fn streaming_equals_non_streaming() {
    let model = gguf_model();
    let e = engine(model.clone(), 1, 4);
    let whole = e.submit(hello(20)).unwrap().blocking_collect().unwrap();
    let mut stream = e.submit(hello(20)).unwrap();
    let mut deltas = Vec::new();
    let finished = loop {
        match stream.blocking_next().unwrap().unwrap() {
            StreamEvent::Delta(d) => deltas.push(d),
            StreamEvent::Finished(f) => break f,
        }
    };
    assert!(stream.blocking_next().is_none(), "nothing after Finished");
    assert!(deltas.len() > 1, "{deltas:?}");
    assert!(deltas.iter().all(|d| !d.is_empty()));
    assert_eq!(deltas.concat(), whole.text);
    assert_eq!(finished.usage, whole.usage);
    assert_eq!(finished.finish_reason, whole.finish_reason);
}

#[test]
fn async_stream_api() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let model = gguf_model();
    let e = engine(model.clone(), 1, 4);
    let expected = run(&model, hello(8));
    let got = rt.block_on(async {
        use futures_util::StreamExt;
        let mut text = String::new();
        let mut s = e.submit(hello(8)).unwrap();
        while let Some(ev) = s.next().await {
            if let StreamEvent::Delta(d) = ev.unwrap() {
                text.push_str(&d);
            }
        }
        let collected = e.submit(hello(8)).unwrap().collect().await.unwrap();
        (text, collected)
    });
    assert_eq!(got.0, expected.text);
    assert_eq!(got.1, expected);
}

#[test]
fn chat_template_is_applied() {
    for model in [safetensors_model(), gguf_model()] {
        let messages = vec![
            ChatMessage::new("system", "be kind"),
            ChatMessage::new("user", "hello"),
        ];
        let rendered = model.render_chat(&messages).unwrap();
        assert_eq!(
            rendered,
            "<|im_start|>system\nbe kind<|im_end|>\n<|im_start|>user\nhello<|im_end|>\n<|im_start|>assistant\n"
        );
        let ids = model.encode(&rendered, true).unwrap();
        // Chat markers are single special tokens, not spelled out byte by byte.
        assert_eq!(ids[0], special_id("<|im_start|>"));
        assert_eq!(
            ids.iter()
                .filter(|i| **i == special_id("<|im_end|>"))
                .count(),
            2
        );
        let done = run(&model, Request::chat(messages.clone()).with_max_tokens(3));
        assert_eq!(done.usage.prompt_tokens, ids.len());
        // The chat prompt generates differently from the same words as plain text.
        let plain = run(&model, Request::text("hello").with_max_tokens(3));
        assert_ne!(plain.usage.prompt_tokens, done.usage.prompt_tokens);
    }
}

#[test]
fn stop_sequences_end_generation_before_the_match() {
    let model = gguf_model();
    let full = run(&model, hello(16)).text;
    let chars: Vec<char> = full.chars().collect();
    assert!(chars.len() >= 8, "{full:?}");
    // A stop sequence taken from the middle of the greedy output.
    let stop: String = chars[4..7].iter().collect();
    let cut = full.find(&stop).unwrap();
    let done = run(
        &model,
        hello(16).with_stop([stop.clone(), "never-there".into()]),
    );
    assert_eq!(done.text, full[..cut], "stop {stop:?} in {full:?}");
    assert_eq!(done.finish_reason, FinishReason::Stop);
    assert!(done.usage.completion_tokens < 16);
}

#[test]
fn max_tokens_and_eos() {
    let model = safetensors_model();
    for n in [1, 5] {
        let d = run(&model, hello(n));
        assert_eq!(d.usage.completion_tokens, n);
        assert_eq!(d.finish_reason, FinishReason::Length);
    }
    // Declare the 3rd greedy token the end-of-sequence token: generation stops there.
    let ids = {
        let prompt = model
            .encode("hello there, the tiny llama says", false)
            .unwrap();
        let mut s = model.new_session().unwrap();
        let mut logits = s.forward(&prompt, 0).unwrap();
        let mut ids = Vec::new();
        for i in 0..3 {
            let id = crate::sampling::argmax(&logits).unwrap();
            ids.push(id);
            logits = s.forward(&[id], prompt.len() + i).unwrap();
        }
        ids
    };
    let eos = ids[2];
    let first = ids.iter().position(|i| *i == eos).unwrap();
    let with_eos =
        Model::from_safetensors(test_models::safetensors_files(eos), &LoadOptions::default())
            .unwrap();
    let d = run(&with_eos, hello(10));
    assert_eq!(d.finish_reason, FinishReason::Stop);
    assert_eq!(d.usage.completion_tokens, first + 1);
}

#[test]
fn prompt_longer_than_the_context_is_refused() {
    let model = gguf_model();
    let long = "x ".repeat(test_models::CONTEXT);
    let err = engine(model, 1, 1)
        .submit(Request::text(long))
        .unwrap()
        .blocking_collect()
        .unwrap_err();
    assert!(matches!(err, InferenceError::PromptTooLong { .. }), "{err}");
}

#[test]
fn a_prompt_over_the_requests_limit_is_refused_and_one_at_it_runs() {
    let model = gguf_model();
    let prompt = "a b c d e f";
    let engine = engine(model, 1, 1);
    let used = engine
        .submit(Request::text(prompt).with_max_tokens(1))
        .unwrap()
        .blocking_collect()
        .unwrap()
        .usage
        .prompt_tokens;
    let err = engine
        .submit(Request::text(prompt).with_max_prompt_tokens(Some(used - 1)))
        .unwrap()
        .blocking_collect()
        .unwrap_err();
    assert!(
        matches!(err, InferenceError::PromptOverLimit { prompt_tokens, limit }
            if prompt_tokens == used && limit == used - 1),
        "{err}"
    );
    engine
        .submit(
            Request::text(prompt)
                .with_max_tokens(1)
                .with_max_prompt_tokens(Some(used)),
        )
        .unwrap()
        .blocking_collect()
        .unwrap();
}

#[test]
fn concurrent_requests_match_sequential_ones() {
    // GGUF decodes them as one batch; safetensors one after the other.
    for (model, batches) in [(gguf_model(), true), (safetensors_model(), false)] {
        concurrent_match_sequential(model, batches);
    }
}

fn concurrent_match_sequential(model: Model, batches: bool) {
    let requests: Vec<Request> = (0..6)
        .map(|i| {
            let r = Request::text(format!("request number {i} says")).with_max_tokens(10 + i);
            if i % 2 == 0 {
                r
            } else {
                r.with_sampling(sampled(i as u64))
            }
        })
        .collect();
    let sequential: Vec<Completion> = requests.iter().map(|r| run(&model, r.clone())).collect();
    let e = engine(model, 3, 8);
    let streams: Vec<_> = requests
        .iter()
        .map(|r| e.submit(r.clone()).unwrap())
        .collect();
    let concurrent: Vec<Completion> = streams
        .into_iter()
        .map(|s| s.blocking_collect().unwrap())
        .collect();
    assert_eq!(concurrent, sequential);
    // Decode steps ran several sequences at once (three slots, six requests of 10-15 tokens,
    // all queued within microseconds; how many overlap depends on scheduling, so only "some").
    let stats = e.stats();
    assert!(stats.decode_steps > 0);
    assert!(
        stats.decoded_tokens > stats.decode_steps,
        "no decode step ran two sequences: {stats:?}"
    );
    assert_eq!(e.model().batches(), batches);
}

#[test]
fn cancellation_frees_the_slot() {
    let model = gguf_model();
    let e = engine(model, 1, 1);
    let long = || Request::text("a long one").with_max_tokens(3000);

    // Explicit cancel: the stream ends with Cancelled, and at most the decode step under way
    // when the flag was set, and one that began as it was set, run after it. (The deltas
    // already sent before the cancel are still delivered: how many depends on how soon this
    // thread woke up, dozens of tiny-model steps on a busy machine, so they are not counted.)
    let mut a = e.submit(long()).unwrap();
    assert!(matches!(a.blocking_next(), Some(Ok(StreamEvent::Delta(_)))));
    a.cancel_handle().cancel();
    let steps_at_cancel = e.stats().decode_steps;
    let end = loop {
        match a.blocking_next().unwrap() {
            Ok(StreamEvent::Delta(_)) => {}
            Ok(StreamEvent::Finished(f)) => panic!("finished despite cancel: {f:?}"),
            Err(e) => break e,
        }
    };
    assert!(matches!(end, InferenceError::Cancelled), "{end}");
    eventually("worker free after cancel", || e.stats().running == 0);
    let after = e.stats().decode_steps - steps_at_cancel;
    assert!(after <= 2, "{after} decode steps ran after the cancel");

    // Dropping the stream cancels too, and the next request runs on the freed worker.
    let b = e.submit(long()).unwrap();
    eventually("b running", || e.stats().running == 1);
    drop(b);
    eventually("worker free after drop", || e.stats().running == 0);
    let c = e.submit(hello(3)).unwrap().blocking_collect().unwrap();
    assert_eq!(c.usage.completion_tokens, 3);
}

#[test]
fn full_queue_pushes_back() {
    let model = gguf_model();
    let e = engine(model, 1, 1);
    let long = || Request::text("a long one").with_max_tokens(3000);
    let running = e.submit(long()).unwrap();
    eventually("first request running", || e.stats().running == 1);
    let queued = e.submit(long()).unwrap();
    assert_eq!(e.stats().queued, 1);
    let err = e.submit(hello(2)).unwrap_err();
    assert!(
        matches!(err, InferenceError::QueueFull { capacity: 1 }),
        "{err}"
    );
    // A request cancelled while waiting leaves the queue at once.
    drop(queued);
    assert_eq!(e.stats().queued, 0);
    let next = e.submit(hello(2)).unwrap();
    drop(running);
    assert_eq!(next.blocking_collect().unwrap().usage.completion_tokens, 2);
}

#[test]
fn shutdown_ends_streams() {
    let e = engine(gguf_model(), 1, 2);
    let running = e
        .submit(Request::text("a long one").with_max_tokens(3000))
        .unwrap();
    let queued = e.submit(hello(2)).unwrap();
    eventually("running", || e.stats().running == 1);
    e.shutdown();
    assert!(matches!(
        running.blocking_collect(),
        Err(InferenceError::ShutDown)
    ));
    assert!(matches!(
        queued.blocking_collect(),
        Err(InferenceError::ShutDown)
    ));
}

#[test]
fn invalid_requests_are_refused_at_submit() {
    let e = engine(gguf_model(), 1, 1);
    for r in [
        Request::text(""),
        Request::chat(vec![]),
        hello(0),
        hello(4).with_stop([""]),
        hello(4).with_sampling(SamplingParams {
            temperature: -1.0,
            ..SamplingParams::default()
        }),
    ] {
        assert!(matches!(
            e.submit(r),
            Err(InferenceError::InvalidRequest(_))
        ));
    }
}

#[test]
fn gguf_tokenizer_matches_tokenizer_json() {
    let st = safetensors_model();
    let gg = gguf_model();
    for text in ["hello hell the 123 tea", "é ü 日本 \n\t<|im_start|>x", ""] {
        assert_eq!(
            st.encode(text, true).unwrap(),
            gg.encode(text, true).unwrap(),
            "{text:?}"
        );
    }
    let ids = gg.encode("hello", true).unwrap();
    // "hello" = "hell" + "o" through the merges h+e, l+l, he+ll.
    assert_eq!(ids.len(), 2);
}

fn gguf_with(edit: impl FnOnce(&mut Vec<(String, Value)>)) -> Vec<u8> {
    let mut md = test_models::gguf_metadata();
    edit(&mut md);
    test_models::gguf_bytes_with(&md)
}

fn set(md: &mut [(String, Value)], key: &str, v: Value) {
    md.iter_mut().find(|(k, _)| k == key).unwrap().1 = v;
}

#[test]
fn malformed_models_are_typed_errors() {
    let opts = LoadOptions::default();
    assert!(matches!(
        Model::from_gguf(b"not a gguf file", &opts),
        Err(InferenceError::GgufParse(_))
    ));
    let cases: Vec<(&str, Vec<u8>)> = vec![
        (
            "zero heads",
            gguf_with(|m| set(m, "llama.attention.head_count", Value::U32(0))),
        ),
        (
            "kv heads not dividing",
            gguf_with(|m| set(m, "llama.attention.head_count_kv", Value::U32(3))),
        ),
        (
            "layers beyond the tensors",
            gguf_with(|m| set(m, "llama.block_count", Value::U32(3))),
        ),
        (
            "width mismatch",
            gguf_with(|m| set(m, "llama.embedding_length", Value::U32(32))),
        ),
        (
            "zero alignment",
            gguf_with(|m| m.push(("general.alignment".into(), Value::U32(0)))),
        ),
        (
            // the gguf_header fuzz target's find: candle strips a key's trailing NULs
            "zero alignment, NUL-padded key",
            gguf_with(|m| m.push(("general.alignment\0\0".into(), Value::U8(0)))),
        ),
        (
            "other arch",
            gguf_with(|m| set(m, "general.architecture", Value::String("bert".into()))),
        ),
        (
            "tokenizer kind",
            gguf_with(|m| set(m, "tokenizer.ggml.model", Value::String("bert".into()))),
        ),
        (
            "short vocab",
            gguf_with(|m| {
                set(
                    m,
                    "tokenizer.ggml.tokens",
                    Value::Array(vec![Value::String("a".into())]),
                )
            }),
        ),
        (
            "bad template",
            gguf_with(|m| {
                set(
                    m,
                    "tokenizer.chat_template",
                    Value::String("{% for %}".into()),
                )
            }),
        ),
    ];
    for (what, bytes) in cases {
        match Model::from_gguf(&bytes, &opts) {
            Ok(_) => panic!("{what}: loaded"),
            Err(e) => eprintln!("{what}: {e}"),
        }
    }
}

#[test]
fn truncated_and_corrupted_gguf_never_panic() {
    use rand::{Rng, SeedableRng};
    let good = &test_models::fixture().gguf;
    let opts = LoadOptions::default();
    for len in [0, 3, 4, 8, 24, 100, 1000, good.len() / 2, good.len() - 1] {
        assert!(
            Model::from_gguf(&good[..len], &opts).is_err(),
            "truncated at {len}"
        );
    }
    // Byte flips in the metadata and tensor-info region (the part that is parsed, not data).
    let header_end =
        candle_core::quantized::gguf_file::Content::read(&mut std::io::Cursor::new(good))
            .unwrap()
            .tensor_data_offset as usize;
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    for _ in 0..150 {
        let mut bad = good.clone();
        for _ in 0..3 {
            let at = rng.gen_range(0..header_end.max(1));
            bad[at] = rng.r#gen();
        }
        let _ = Model::from_gguf(&bad, &opts);
    }
}

#[test]
fn malformed_safetensors_are_typed_errors() {
    let opts = LoadOptions::default();
    let eos = special_id("<|im_end|>");
    let mut f = test_models::safetensors_files(eos);
    f.weights = vec![b"garbage".to_vec().into()];
    assert!(matches!(
        Model::from_safetensors(f, &opts),
        Err(InferenceError::Safetensors(_))
    ));

    let mut f = test_models::safetensors_files(eos);
    f.config_json = b"{".to_vec();
    assert!(matches!(
        Model::from_safetensors(f, &opts),
        Err(InferenceError::ConfigJson { .. })
    ));

    // A config promising more layers than the weights hold: candle's loader would panic.
    let mut f = test_models::safetensors_files(eos);
    let mut cfg: serde_json::Value = serde_json::from_slice(&f.config_json).unwrap();
    cfg["num_hidden_layers"] = 3.into();
    f.config_json = cfg.to_string().into_bytes();
    assert!(matches!(
        Model::from_safetensors(f, &opts),
        Err(InferenceError::Tensor { .. })
    ));

    let mut f = test_models::safetensors_files(eos);
    let mut cfg: serde_json::Value = serde_json::from_slice(&f.config_json).unwrap();
    cfg["architectures"] = serde_json::json!(["GemmaForCausalLM"]);
    f.config_json = cfg.to_string().into_bytes();
    assert!(matches!(
        Model::from_safetensors(f, &opts),
        Err(InferenceError::UnsupportedArchitecture(_))
    ));

    let mut f = test_models::safetensors_files(eos);
    f.tokenizer_json = b"{}".to_vec();
    assert!(matches!(
        Model::from_safetensors(f, &opts),
        Err(InferenceError::Tokenizer(_))
    ));
}
