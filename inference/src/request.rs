//! What a client asks for and what it gets back: requests, stream events, usage and finish
//! reasons. Plain data, serde-ready for the HTTP/ttrpc layers that come next.

use serde::{Deserialize, Serialize};

use crate::chat::ChatMessage;
use crate::error::InferenceError;
use crate::sampling::SamplingParams;

/// At most this many stop sequences per request, each at most [`MAX_STOP_LEN`] bytes.
pub const MAX_STOPS: usize = 16;
pub const MAX_STOP_LEN: usize = 256;

/// The prompt: raw text (completions) or a conversation (chat completions).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Prompt {
    Text(String),
    Chat(Vec<ChatMessage>),
}

/// One generation request.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Request {
    pub prompt: Prompt,
    /// Most tokens to generate; also capped by what is left of the model's context.
    pub max_tokens: usize,
    pub sampling: SamplingParams,
    /// Generation ends before any of these strings; they are not part of the output.
    pub stop: Vec<String>,
    /// The longest prompt accepted, in tokens, below the model's context (a caller's policy).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_prompt_tokens: Option<usize>,
}

impl Request {
    pub const DEFAULT_MAX_TOKENS: usize = 256;

    /// A completion of `text`, greedy, default limits.
    pub fn text(text: impl Into<String>) -> Self {
        Self::new(Prompt::Text(text.into()))
    }

    /// A chat completion of `messages` through the model's chat template, greedy.
    pub fn chat(messages: Vec<ChatMessage>) -> Self {
        Self::new(Prompt::Chat(messages))
    }

    fn new(prompt: Prompt) -> Self {
        Self {
            prompt,
            max_tokens: Self::DEFAULT_MAX_TOKENS,
            sampling: SamplingParams::default(),
            stop: Vec::new(),
            max_prompt_tokens: None,
        }
    }

    /// Refuses prompts longer than `limit` tokens ([`InferenceError::PromptOverLimit`]).
    pub fn with_max_prompt_tokens(mut self, limit: Option<usize>) -> Self {
        self.max_prompt_tokens = limit;
        self
    }

    pub fn with_max_tokens(mut self, max_tokens: usize) -> Self {
        self.max_tokens = max_tokens;
        self
    }

    pub fn with_sampling(mut self, sampling: SamplingParams) -> Self {
        self.sampling = sampling;
        self
    }

    pub fn with_stop(mut self, stop: impl IntoIterator<Item = impl Into<String>>) -> Self {
        self.stop = stop.into_iter().map(Into::into).collect();
        self
    }

    /// Checks the limits that do not depend on the model.
    pub fn validate(&self) -> Result<(), InferenceError> {
        let bad = |m: &str| Err(InferenceError::InvalidRequest(m.to_owned()));
        match &self.prompt {
            Prompt::Text(t) if t.is_empty() => return bad("empty prompt"),
            Prompt::Chat(m) if m.is_empty() => return bad("no messages"),
            _ => {}
        }
        if self.max_tokens == 0 {
            return bad("max_tokens must be >= 1");
        }
        if self.stop.len() > MAX_STOPS {
            return bad("too many stop sequences");
        }
        if self
            .stop
            .iter()
            .any(|s| s.is_empty() || s.len() > MAX_STOP_LEN)
        {
            return bad("stop sequences must be 1 to 256 bytes");
        }
        self.sampling.validate()
    }
}

/// Why generation ended (OpenAI's `finish_reason`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FinishReason {
    /// An end-of-sequence token or a stop sequence.
    Stop,
    /// `max_tokens` or the context length.
    Length,
}

/// Token counts of one request.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Usage {
    pub prompt_tokens: usize,
    /// Tokens sampled, the end-of-sequence token included.
    pub completion_tokens: usize,
}

impl Usage {
    pub fn total_tokens(&self) -> usize {
        self.prompt_tokens + self.completion_tokens
    }
}

/// The last event of a successful stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Finished {
    pub finish_reason: FinishReason,
    pub usage: Usage,
}

/// One event of a generation stream: text deltas, then `Finished`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StreamEvent {
    /// New text (complete UTF-8 characters; may be empty of tokens' worth but never split).
    Delta(String),
    Finished(Finished),
}

/// A whole generation, as a non-streaming caller sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Completion {
    pub text: String,
    pub finish_reason: FinishReason,
    pub usage: Usage,
}
