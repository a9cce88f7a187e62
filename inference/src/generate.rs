//! The generation loop of one sequence, run on an engine worker thread: prompt to tokens, chunked
//! prefill into the sequence's KV cache, then sample / decode / stop-check one token at a time,
//! handing text deltas to a sink. Blocking and CPU-bound: never call it on the async runtime.

use crate::error::InferenceError;
use crate::model::Model;
use crate::request::{FinishReason, Finished, Prompt, Request, Usage};
use crate::sampling::Sampler;
use crate::text_stream::{IncrementalDecoder, StopMatcher};

/// Prompt tokens run through the model per forward pass (bounds the attention scratch memory).
const PREFILL_CHUNK: usize = 512;

/// Turns the request's prompt into token ids (chat template applied for chat prompts).
pub(crate) fn prompt_tokens(model: &Model, prompt: &Prompt) -> Result<Vec<u32>, InferenceError> {
    match prompt {
        Prompt::Text(text) => model.encode(text, false),
        Prompt::Chat(messages) => model.encode(&model.render_chat(messages)?, true),
    }
}

/// Runs one request to completion. `sink` receives each non-empty text delta and returns false
/// when nobody listens any more; `cancelled` is polled before every forward pass.
pub(crate) fn generate(
    model: &Model,
    request: &Request,
    cancelled: &dyn Fn() -> bool,
    sink: &mut dyn FnMut(String) -> bool,
) -> Result<Finished, InferenceError> {
    request.validate()?;
    let prompt = prompt_tokens(model, &request.prompt)?;
    let context = model.info().context_length;
    if prompt.is_empty() {
        return Err(InferenceError::InvalidRequest(
            "prompt encodes to no tokens".into(),
        ));
    }
    if prompt.len() >= context {
        return Err(InferenceError::PromptTooLong {
            prompt_tokens: prompt.len(),
            context,
        });
    }
    let max_new = request.max_tokens.min(context - prompt.len());
    tracing::debug!(prompt_tokens = prompt.len(), max_new, "prefill");

    let mut session = model.new_session()?;
    let mut logits = Vec::new();
    for (i, chunk) in prompt.chunks(PREFILL_CHUNK).enumerate() {
        if cancelled() {
            return Err(InferenceError::Cancelled);
        }
        logits = session.forward(chunk, i * PREFILL_CHUNK)?;
    }

    let mut sampler = Sampler::new(request.sampling.clone());
    let mut decoder = IncrementalDecoder::new(model.tokenizer());
    let mut stops = StopMatcher::new(request.stop.clone());
    let mut history = prompt.clone();
    let mut usage = Usage {
        prompt_tokens: prompt.len(),
        completion_tokens: 0,
    };
    let mut send = |text: String| -> Result<(), InferenceError> {
        if text.is_empty() || sink(text) {
            Ok(())
        } else {
            Err(InferenceError::Cancelled)
        }
    };

    let mut finish_reason = loop {
        let next = sampler.sample(&mut logits, &history)?;
        usage.completion_tokens += 1;
        if model.is_eos(next) {
            break FinishReason::Stop;
        }
        history.push(next);
        let outcome = stops.push(&decoder.push(next)?);
        send(outcome.text)?;
        if outcome.stopped {
            // The stop sequence and everything after it are dropped.
            return Ok(Finished {
                finish_reason: FinishReason::Stop,
                usage,
            });
        }
        if usage.completion_tokens >= max_new {
            break FinishReason::Length;
        }
        if cancelled() {
            return Err(InferenceError::Cancelled);
        }
        logits = session.forward(&[next], history.len() - 1)?;
    };
    // End of sequence or length: release the decoder's tail and the held-back text, unless the
    // tail completes a stop sequence.
    let tail = stops.push(&decoder.finish()?);
    send(tail.text)?;
    if tail.stopped {
        finish_reason = FinishReason::Stop;
    } else {
        send(stops.flush())?;
    }
    tracing::debug!(
        completion_tokens = usage.completion_tokens,
        ?finish_reason,
        "finished"
    );
    Ok(Finished {
        finish_reason,
        usage,
    })
}
