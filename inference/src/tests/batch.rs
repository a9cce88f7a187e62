//! The quantised GGUF forward pass (`model::quantized`): the same logits as candle's own llama,
//! and a batched decode step equal to separate ones, for llama and Qwen2, with the fallback for
//! models that do not batch.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::Cursor;

use candle_core::quantized::GgmlDType;
use candle_core::quantized::gguf_file::Content;
use candle_core::{Device, Tensor};
use candle_transformers::models::quantized_llama;

use crate::model::Session;
use crate::test_models::{self, Arch, fixture, gguf_model, safetensors_model};
use crate::{InferenceError, LoadOptions, Model};

pub(crate) fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0f32, f32::max)
}

fn qwen2_q8() -> Model {
    let bytes = test_models::gguf_bytes_for(
        Arch::Qwen2,
        GgmlDType::Q8_0,
        &test_models::qwen2_gguf_metadata(),
    );
    Model::from_gguf(&bytes, &LoadOptions::default()).unwrap()
}

/// Runs `ours` and `reference` (a candle model's forward: input ids `(1, n)`, position) over
/// the same chunks (`Some(p)` restarts at position `p`): the logits agree within 1e-4.
pub(crate) fn matches_reference(
    ours: &Model,
    chunks: &[(&[u32], Option<usize>)],
    mut reference: impl FnMut(&Tensor, usize) -> Tensor,
) {
    let mut session = ours.new_session().unwrap();
    let mut pos = 0;
    for (chunk, at) in chunks {
        if let Some(at) = at {
            pos = *at;
        }
        let input = Tensor::new(*chunk, &Device::Cpu)
            .unwrap()
            .unsqueeze(0)
            .unwrap();
        let want: Vec<f32> = reference(&input, pos)
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        let got = session.forward(chunk, pos).unwrap();
        let diff = max_diff(&want, &got);
        assert!(diff < 1e-4, "logits differ by {diff} at position {pos}");
        pos += chunk.len();
    }
}

#[test]
fn llama_gguf_forward_matches_candles_quantized_llama() {
    let bytes = &fixture().gguf;
    let mut reader = Cursor::new(bytes);
    let ct = Content::read(&mut reader).unwrap();
    let mut reference = quantized_llama::ModelWeights::from_gguf(ct, &mut reader, &Device::Cpu)
        .expect("candle loads the fixture");
    // A prompt, single tokens, a second multi-token chunk (chunked prefill), a long chunk (two
    // forward passes of at most 128 tokens here, one in candle's) and tokens past the cache's
    // first block (256 tokens), then restarts, the second with the long chunk at position 0.
    let long: Vec<u32> = (0..250u32).map(|i| (i * 7) % 250).collect();
    let chunks: [(&[u32], Option<usize>); 10] = [
        (&[1, 2, 3, 4, 5, 6, 7], None),
        (&[9], None),
        (&[30], None),
        (&[40, 41, 42], None),
        (&long, None),
        (&[11], None),
        (&[12], None),
        (&[7, 8], Some(0)),
        (&long, Some(0)),
        (&[3], None),
    ];
    matches_reference(&gguf_model(), &chunks, |x, pos| {
        reference.forward(x, pos).unwrap()
    });
}

/// Prefills three sequences of different lengths, then decodes them step by step both as one
/// batch and one by one: the logits agree at every step.
fn batched_equals_separate(model: &Model) {
    let prompts: [&[u32]; 3] = [&[1, 2, 3], &[10, 11, 12, 13, 14, 15, 16, 17], &[50]];
    let mut batched: Vec<Session> = Vec::new();
    let mut separate: Vec<Session> = Vec::new();
    let mut next: Vec<u32> = Vec::new();
    let mut pos: Vec<usize> = Vec::new();
    for p in prompts {
        let mut a = model.new_session().unwrap();
        let mut b = model.new_session().unwrap();
        let la = a.forward(p, 0).unwrap();
        let lb = b.forward(p, 0).unwrap();
        assert_eq!(la, lb);
        batched.push(a);
        separate.push(b);
        next.push(argmax(&la));
        pos.push(p.len());
    }
    for step in 0..6 {
        let mut refs: Vec<&mut Session> = batched.iter_mut().collect();
        let got = model.forward_batch(&mut refs, &next, &pos).unwrap();
        assert_eq!(got.len(), 3);
        for i in 0..3 {
            let want = separate[i].forward(&[next[i]], pos[i]).unwrap();
            let diff = max_diff(&want, &got[i]);
            assert!(
                diff < 1e-4,
                "sequence {i}, step {step}: logits differ by {diff}"
            );
        }
        for i in 0..3 {
            next[i] = argmax(&got[i]);
            pos[i] += 1;
        }
        // A sequence leaves the batch half-way, as a finished request would.
        if step == 2 {
            batched.remove(1);
            separate.remove(1);
            next.remove(1);
            pos.remove(1);
            batched.push(model.new_session().unwrap());
            separate.push(model.new_session().unwrap());
            let l = batched[2].forward(&[5, 6], 0).unwrap();
            separate[2].forward(&[5, 6], 0).unwrap();
            next.push(argmax(&l));
            pos.push(2);
        }
    }
}

fn argmax(v: &[f32]) -> u32 {
    crate::sampling::argmax(v).unwrap()
}

#[test]
fn batched_decode_equals_separate_decodes_llama() {
    let m = gguf_model();
    assert!(m.batches());
    batched_equals_separate(&m);
}

#[test]
fn batched_decode_equals_separate_decodes_qwen2() {
    let m = qwen2_q8();
    assert!(m.batches());
    batched_equals_separate(&m);
}

#[test]
fn models_that_do_not_batch_decode_one_after_the_other() {
    let m = safetensors_model();
    assert!(!m.batches());
    batched_equals_separate(&m);
}

#[test]
fn bad_batches_are_errors() {
    let m = gguf_model();
    let mut a = m.new_session().unwrap();
    let mut b = m.new_session().unwrap();
    a.forward(&[1, 2], 0).unwrap();
    b.forward(&[3], 0).unwrap();
    let r = m.forward_batch(&mut [&mut a, &mut b], &[1], &[2, 1]);
    assert!(matches!(r, Err(InferenceError::InvalidRequest(_))));
    let r = m.forward_batch(&mut [&mut a, &mut b], &[1, 100_000], &[2, 1]);
    assert!(matches!(r, Err(InferenceError::InvalidRequest(_))));
    let r = m.forward_batch(&mut [&mut a, &mut b], &[1, 2], &[2, 1_000_000]);
    assert!(matches!(r, Err(InferenceError::PromptTooLong { .. })));
    let other = qwen2_q8();
    let mut c = other.new_session().unwrap();
    c.forward(&[3], 0).unwrap();
    let r = m.forward_batch(&mut [&mut a, &mut c], &[1, 2], &[2, 1]);
    assert!(matches!(r, Err(InferenceError::InvalidConfig(_))));
}

#[test]
fn a_forward_pass_must_continue_where_the_sequence_is() {
    let m = gguf_model();
    let mut s = m.new_session().unwrap();
    s.forward(&[1, 2, 3], 0).unwrap();
    // Skipping ahead or going back (other than restarting at 0) is refused, not misplaced.
    assert!(matches!(s.forward(&[4], 5), Err(InferenceError::Candle(_))));
    assert!(matches!(s.forward(&[4], 1), Err(InferenceError::Candle(_))));
    s.forward(&[4], 3).unwrap();
    s.forward(&[9, 9], 0).unwrap();
    s.forward(&[4], 2).unwrap();
}
