//! One sequence's generation as a state machine the scheduler steps: prompt to tokens, chunked
//! prefill into the sequence's KV cache, then, per decode step, sample / stop-check / hand text
//! deltas to a sink. The forward pass of a decode step is the caller's, so that the engine can
//! run many sequences' steps as one batch ([`crate::Model::forward_batch`]). Blocking and
//! CPU-bound: never call it on the async runtime.

use crate::error::InferenceError;
use crate::model::{Model, Session};
use crate::request::{FinishReason, Finished, Prompt, Request, Usage};
use crate::sampling::Sampler;
use crate::text_stream::{IncrementalDecoder, StopMatcher};

/// Prompt tokens run through the model per forward pass (bounds the attention scratch memory).
pub(crate) const PREFILL_CHUNK: usize = 512;

/// Turns the request's prompt into token ids (chat template applied for chat prompts).
pub(crate) fn prompt_tokens(model: &Model, prompt: &Prompt) -> Result<Vec<u32>, InferenceError> {
    match prompt {
        Prompt::Text(text) => model.encode(text, false),
        Prompt::Chat(messages) => model.encode(&model.render_chat(messages)?, true),
    }
}

/// What a sequence wants after its latest logits were sampled.
#[derive(Debug)]
pub(crate) enum Advance {
    /// Run `token` at `pos` (a decode step), then hand the logits back.
    Decode { token: u32, pos: usize },
    /// Done: every delta was sent.
    Finished(Finished),
}

/// One request being generated. See the module docs.
pub(crate) struct Sequence<'m> {
    pub(crate) session: Session,
    prompt: Vec<u32>,
    /// Prompt tokens already run.
    prefilled: usize,
    /// Logits of the last token run, waiting to be sampled.
    logits: Option<Vec<f32>>,
    sampler: Sampler,
    decoder: IncrementalDecoder<'m>,
    stops: StopMatcher,
    history: Vec<u32>,
    usage: Usage,
    max_new: usize,
}

impl<'m> Sequence<'m> {
    /// Validates and tokenizes `request` and opens a session; no forward pass yet.
    pub(crate) fn start(model: &'m Model, request: &Request) -> Result<Self, InferenceError> {
        request.validate()?;
        let prompt = prompt_tokens(model, &request.prompt)?;
        let context = model.info().context_length;
        if prompt.is_empty() {
            return Err(InferenceError::InvalidRequest(
                "prompt encodes to no tokens".into(),
            ));
        }
        if let Some(limit) = request.max_prompt_tokens
            && prompt.len() > limit
        {
            return Err(InferenceError::PromptOverLimit {
                prompt_tokens: prompt.len(),
                limit,
            });
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
        session.reserve(prompt.len() + max_new);
        Ok(Self {
            session,
            sampler: Sampler::new(request.sampling.clone()),
            decoder: IncrementalDecoder::new(model.tokenizer()),
            stops: StopMatcher::new(request.stop.clone()),
            history: prompt.clone(),
            usage: Usage {
                prompt_tokens: prompt.len(),
                completion_tokens: 0,
            },
            prompt,
            prefilled: 0,
            logits: None,
            max_new,
        })
    }

    /// Whether the whole prompt has run.
    pub(crate) fn prefilled(&self) -> bool {
        self.prefilled == self.prompt.len()
    }

    /// Runs the next at most `max_tokens` prompt tokens.
    pub(crate) fn prefill(&mut self, max_tokens: usize) -> Result<(), InferenceError> {
        let end = self.prompt.len().min(self.prefilled + max_tokens.max(1));
        let chunk = self.prompt.get(self.prefilled..end).unwrap_or_default();
        if chunk.is_empty() {
            return Ok(());
        }
        self.logits = Some(self.session.forward(chunk, self.prefilled)?);
        self.prefilled = end;
        Ok(())
    }

    /// Whether logits wait to be sampled ([`Sequence::advance`]).
    pub(crate) fn ready(&self) -> bool {
        self.logits.is_some()
    }

    /// Hands over the logits of the decode step [`Advance::Decode`] asked for.
    pub(crate) fn set_logits(&mut self, logits: Vec<f32>) {
        self.logits = Some(logits);
    }

    /// Samples the next token from the latest logits and sends its text to `sink` (which returns
    /// false when nobody listens any more: the sequence is then cancelled).
    pub(crate) fn advance(
        &mut self,
        sink: &mut dyn FnMut(String) -> bool,
    ) -> Result<Advance, InferenceError> {
        let mut send = |text: String| -> Result<(), InferenceError> {
            if text.is_empty() || sink(text) {
                Ok(())
            } else {
                Err(InferenceError::Cancelled)
            }
        };
        let mut logits = self.logits.take().ok_or_else(|| {
            InferenceError::InvalidRequest("no logits to sample: the sequence did not run".into())
        })?;
        let next = self.sampler.sample(&mut logits, &self.history)?;
        self.usage.completion_tokens += 1;
        let mut finish_reason = if self.session.model().is_eos(next) {
            FinishReason::Stop
        } else {
            self.history.push(next);
            let outcome = self.stops.push(&self.decoder.push(next)?);
            send(outcome.text)?;
            if outcome.stopped {
                // The stop sequence and everything after it are dropped.
                return Ok(Advance::Finished(self.finished(FinishReason::Stop)));
            }
            if self.usage.completion_tokens < self.max_new {
                return Ok(Advance::Decode {
                    token: next,
                    pos: self.history.len() - 1,
                });
            }
            FinishReason::Length
        };
        // End of sequence or length: release the decoder's tail and the held-back text, unless
        // the tail completes a stop sequence.
        let tail = self.stops.push(&self.decoder.finish()?);
        send(tail.text)?;
        if tail.stopped {
            finish_reason = FinishReason::Stop;
        } else {
            send(self.stops.flush())?;
        }
        Ok(Advance::Finished(self.finished(finish_reason)))
    }

    fn finished(&self, finish_reason: FinishReason) -> Finished {
        tracing::debug!(
            completion_tokens = self.usage.completion_tokens,
            ?finish_reason,
            "finished"
        );
        Finished {
            finish_reason,
            usage: self.usage,
        }
    }
}
