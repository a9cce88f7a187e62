//! The OpenAI-compatible HTTP API over ward-inference's [`Engine`]s: `GET /v1/models`,
//! `POST /v1/chat/completions` and `POST /v1/completions`, non-streaming and streaming (SSE
//! `chat.completion.chunk` / `text_completion` events, `data: [DONE]` last), usage counts, and
//! OpenAI-shaped errors (`{"error": {"message", "type", "param", "code"}}`). Existing OpenAI
//! clients work by changing only the base URL. Prompts and outputs are never logged.
//!
//! A server that audits requests puts an [`OutcomeSlot`] in a request's extensions and reads
//! back what the request came to (model, token counts, finish reason), never its text.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::sync::Arc;

use axum::Json;
use axum::Router;
use axum::extract::{Extension, State};
use axum::http::StatusCode;
use axum::response::sse::{Event, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use futures_util::StreamExt as _;
use serde::Deserialize;
use serde_json::{Value, json};

use crate::access::{AccessPolicy, Client};
use ward_inference::{
    ChatMessage, Engine, FinishReason, GenerationStream, InferenceError, Request, SamplingParams,
    StreamEvent, Usage,
};

/// The wall clock in unix seconds (0 before 1970): `created` of OpenAI answers and the clock an
/// encrypted request's `created` is checked against.
pub(crate) fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Largest `max_tokens` accepted.
pub const MAX_TOKENS_CAP: usize = 8192;
/// `max_tokens` when the request gives none.
pub const DEFAULT_MAX_TOKENS: usize = 256;

mod admission;
pub mod upstream;

use admission::{admit, unlimited_prompts};

/// What serves one model.
#[derive(Clone)]
pub enum Backend {
    /// candle, in wardd.
    Embedded(Arc<Engine>),
    /// An OpenAI-compatible engine in the guest (`[[model]] engine`), reached on loopback.
    External(Arc<upstream::Upstream>),
}

/// The engines served, by model id.
pub type Engines = BTreeMap<String, Backend>;
/// Engines that come and go while the server runs (models load after wardd is ready).
pub type SharedEngines = Arc<std::sync::RwLock<Engines>>;
/// The access policies of the models that have one, by model id. A model's policy is in place
/// before its engine is served.
pub type SharedPolicies = Arc<std::sync::RwLock<BTreeMap<String, Arc<AccessPolicy>>>>;

/// What the routes serve: the engines and their models' policies.
#[derive(Clone, Default)]
pub struct Serving {
    pub engines: SharedEngines,
    pub policies: SharedPolicies,
}

impl From<SharedEngines> for Serving {
    fn from(engines: SharedEngines) -> Serving {
        Serving {
            engines,
            policies: SharedPolicies::default(),
        }
    }
}

impl Serving {
    /// The policy of `model`, if it has one.
    pub fn policy(&self, model: &str) -> Option<Arc<AccessPolicy>> {
        self.policies.read().ok()?.get(model).cloned()
    }
}

fn snapshot(engines: &SharedEngines) -> Engines {
    engines.read().map(|e| e.clone()).unwrap_or_default()
}

/// What one completion request came to: the model it named and, once generation finished, its
/// token counts and finish reason. Holds no prompt or generated text.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Outcome {
    /// The `model` of the request body, once it parsed.
    pub model: Option<String>,
    /// Whether the response was streamed (SSE).
    pub stream: bool,
    /// Token counts, when generation finished.
    pub usage: Option<Usage>,
    /// `stop` or `length`, when generation finished.
    pub finish_reason: Option<&'static str>,
    /// Who asked, when wardd knows (a signed request's key, a unix peer's uid).
    pub client: Option<Client>,
    /// The policy grant that let the request through.
    pub grant: Option<String>,
    /// Why the model's policy refused the request.
    pub refused: Option<&'static str>,
    /// Text deltas streamed so far: what a client that leaves mid-stream is charged.
    pub streamed: usize,
}

/// Where a handler leaves the [`Outcome`] of the request that carries this slot in its
/// extensions; the server keeps a clone and reads it once the response body has been sent.
#[derive(Clone, Debug, Default)]
pub struct OutcomeSlot(Arc<std::sync::Mutex<Outcome>>);

impl OutcomeSlot {
    /// The outcome so far.
    pub fn get(&self) -> Outcome {
        self.0.lock().map(|o| o.clone()).unwrap_or_default()
    }

    fn update(&self, f: impl FnOnce(&mut Outcome)) {
        if let Ok(mut o) = self.0.lock() {
            f(&mut o);
        }
    }

    fn finished(&self, usage: Usage, reason: FinishReason) {
        self.update(|o| {
            o.usage = Some(usage);
            o.finish_reason = Some(finish_reason(reason));
        });
    }
}

/// The request's slot, or a fresh one nobody reads.
fn slot(ext: Option<Extension<OutcomeSlot>>) -> OutcomeSlot {
    ext.map(|Extension(s)| s).unwrap_or_default()
}

/// An OpenAI-shaped error: `{"error": {"message", "type", "param", "code"}}` with its status.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    kind: &'static str,
    code: Option<&'static str>,
    message: String,
    /// Seconds for `Retry-After` (429).
    retry_after: Option<u64>,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut response = (
            self.status,
            Json(json!({"error": {"message": self.message, "type": self.kind,
                                   "param": null, "code": self.code}})),
        )
            .into_response();
        if let Some(secs) = self.retry_after {
            response.headers_mut().insert(
                axum::http::header::RETRY_AFTER,
                axum::http::HeaderValue::from(secs),
            );
        }
        response
    }
}

/// An OpenAI-shaped error.
pub fn error(
    status: StatusCode,
    kind: &'static str,
    code: Option<&'static str>,
    message: impl Into<String>,
) -> ApiError {
    ApiError {
        status,
        kind,
        code,
        message: message.into(),
        retry_after: None,
    }
}

fn engine_error(e: &InferenceError) -> ApiError {
    match e {
        InferenceError::QueueFull { .. } => error(
            StatusCode::TOO_MANY_REQUESTS,
            "rate_limit_error",
            Some("queue_full"),
            e.to_string(),
        ),
        InferenceError::InvalidRequest(_) | InferenceError::PromptTooLong { .. } => error(
            StatusCode::BAD_REQUEST,
            "invalid_request_error",
            None,
            e.to_string(),
        ),
        InferenceError::PromptOverLimit { .. } => error(
            StatusCode::FORBIDDEN,
            "permission_error",
            Some("prompt_over_limit"),
            e.to_string(),
        ),
        InferenceError::ShutDown => error(
            StatusCode::SERVICE_UNAVAILABLE,
            "server_error",
            Some("shutting_down"),
            e.to_string(),
        ),
        _ => error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "server_error",
            None,
            "generation failed",
        ),
    }
}

#[derive(Deserialize)]
#[serde(untagged)]
enum Stop {
    One(String),
    Many(Vec<String>),
}

#[derive(Deserialize)]
struct StreamOptions {
    #[serde(default)]
    include_usage: bool,
}

/// The fields both endpoints share (unknown fields are ignored, as OpenAI's server does).
#[derive(Deserialize)]
struct Common {
    model: String,
    #[serde(default)]
    max_tokens: Option<usize>,
    #[serde(default)]
    max_completion_tokens: Option<usize>,
    #[serde(default)]
    temperature: Option<f32>,
    #[serde(default)]
    top_p: Option<f32>,
    #[serde(default)]
    top_k: Option<usize>,
    #[serde(default)]
    seed: Option<u64>,
    #[serde(default)]
    repetition_penalty: Option<f32>,
    #[serde(default)]
    stop: Option<Stop>,
    #[serde(default)]
    stream: bool,
    #[serde(default)]
    stream_options: Option<StreamOptions>,
    #[serde(default)]
    n: Option<usize>,
}

#[derive(Deserialize)]
struct ChatBody {
    #[serde(flatten)]
    common: Common,
    messages: Vec<ChatIn>,
}

#[derive(Deserialize)]
struct ChatIn {
    role: String,
    content: Content,
}

/// A message's content: a string, or OpenAI's list of parts (only text parts are accepted).
#[derive(Deserialize)]
#[serde(untagged)]
enum Content {
    Text(String),
    Parts(Vec<Value>),
}

impl Content {
    fn text(self) -> Result<String, String> {
        match self {
            Content::Text(t) => Ok(t),
            Content::Parts(parts) => parts
                .iter()
                .map(|p| match (p["type"].as_str(), p["text"].as_str()) {
                    (Some("text"), Some(t)) => Ok(t.to_string()),
                    _ => Err("only text content parts are supported".to_string()),
                })
                .collect::<Result<Vec<_>, _>>()
                .map(|v| v.join("")),
        }
    }
}

#[derive(Deserialize)]
struct CompletionBody {
    #[serde(flatten)]
    common: Common,
    prompt: Value,
}

/// The engine request for `common` and `prompt`, or an OpenAI-shaped 400.
fn build(common: &Common, request: Request) -> Result<Request, ApiError> {
    let bad = |m: String| error(StatusCode::BAD_REQUEST, "invalid_request_error", None, m);
    if common.n.is_some_and(|n| n != 1) {
        return Err(bad("only n = 1 is supported".into()));
    }
    let max_tokens = common
        .max_completion_tokens
        .or(common.max_tokens)
        .unwrap_or(DEFAULT_MAX_TOKENS);
    if max_tokens == 0 || max_tokens > MAX_TOKENS_CAP {
        return Err(bad(format!("max_tokens must be 1 to {MAX_TOKENS_CAP}")));
    }
    let mut sampling = SamplingParams {
        temperature: common.temperature.unwrap_or(1.0),
        top_p: common.top_p,
        top_k: common.top_k,
        ..SamplingParams::default()
    };
    if let Some(seed) = common.seed {
        sampling.seed = seed;
    }
    if let Some(p) = common.repetition_penalty {
        sampling.repetition_penalty = p;
    }
    let stop = match &common.stop {
        None => Vec::new(),
        Some(Stop::One(s)) => vec![s.clone()],
        Some(Stop::Many(v)) => v.clone(),
    };
    let r = request
        .with_max_tokens(max_tokens)
        .with_sampling(sampling)
        .with_stop(stop);
    r.validate().map_err(|e| engine_error(&e))?;
    Ok(r)
}

fn engine(engines: &Engines, model: &str) -> Result<Arc<Engine>, ApiError> {
    match engines.get(model) {
        Some(Backend::Embedded(e)) => Ok(e.clone()),
        _ => Err(error(
            StatusCode::NOT_FOUND,
            "invalid_request_error",
            Some("model_not_found"),
            format!("The model `{model}` does not exist"),
        )),
    }
}

/// The external engine of the body's `model`, with the outcome noted; `None` when the model
/// is embedded or unknown (the typed path answers those).
fn external(
    engines: &SharedEngines,
    body: &Value,
    outcome: &OutcomeSlot,
) -> Option<Arc<upstream::Upstream>> {
    let model = body.get("model")?.as_str()?;
    let Backend::External(up) = snapshot(engines).get(model)?.clone() else {
        return None;
    };
    outcome.update(|o| {
        o.model = Some(model.to_string());
        o.stream = body.get("stream").and_then(Value::as_bool).unwrap_or(false);
    });
    Some(up)
}

/// The typed body of an embedded model's request, or an OpenAI-shaped 400.
fn typed<T: serde::de::DeserializeOwned>(body: Value) -> Result<T, ApiError> {
    serde_json::from_value(body).map_err(|e| invalid(e.to_string()))
}

fn finish_reason(r: FinishReason) -> &'static str {
    match r {
        FinishReason::Stop => "stop",
        FinishReason::Length => "length",
    }
}

async fn models(State(serving): State<Serving>) -> Response {
    let data: Vec<Value> = snapshot(&serving.engines)
        .keys()
        .map(|id| json!({"id": id, "object": "model", "created": 0, "owned_by": "ward"}))
        .collect();
    Json(json!({"object": "list", "data": data})).into_response()
}

#[derive(Clone, Copy, PartialEq)]
enum Kind {
    Chat,
    Text,
}

type JsonBody = Result<Json<Value>, axum::extract::rejection::JsonRejection>;

fn invalid(message: impl Into<String>) -> ApiError {
    error(
        StatusCode::BAD_REQUEST,
        "invalid_request_error",
        None,
        message,
    )
}

/// The identity of the request's client, when wardd has one.
type ClientExt = Option<Extension<Client>>;

async fn chat(
    State(serving): State<Serving>,
    outcome: Option<Extension<OutcomeSlot>>,
    client: ClientExt,
    body: JsonBody,
) -> Response {
    let client = client.map(|Extension(c)| c);
    chat_request(serving, slot(outcome), client, body)
        .await
        .unwrap_or_else(IntoResponse::into_response)
}

async fn chat_request(
    serving: Serving,
    outcome: OutcomeSlot,
    client: Option<Client>,
    body: JsonBody,
) -> Result<Response, ApiError> {
    let Json(mut body) = body.map_err(|e| invalid(e.body_text()))?;
    let admitted = admit(&serving, &mut body, Kind::Chat, client, &outcome)?;
    if let Some(up) = external(&serving.engines, &body, &outcome) {
        unlimited_prompts(admitted.as_ref())?;
        return up.forward(Kind::Chat, body, outcome).await;
    }
    let body: ChatBody = typed(body)?;
    noted(&outcome, &body.common);
    let engine = engine(&snapshot(&serving.engines), &body.common.model)?;
    let messages = body
        .messages
        .into_iter()
        .map(|m| m.content.text().map(|t| ChatMessage::new(m.role, t)))
        .collect::<Result<Vec<_>, _>>()
        .map_err(invalid)?;
    let request = build(&body.common, Request::chat(messages))?
        .with_max_prompt_tokens(admitted.and_then(|a| a.max_prompt_tokens));
    Ok(run(engine, request, &body.common, Kind::Chat, outcome).await)
}

async fn completions(
    State(serving): State<Serving>,
    outcome: Option<Extension<OutcomeSlot>>,
    client: ClientExt,
    body: JsonBody,
) -> Response {
    let client = client.map(|Extension(c)| c);
    completion_request(serving, slot(outcome), client, body)
        .await
        .unwrap_or_else(IntoResponse::into_response)
}

async fn completion_request(
    serving: Serving,
    outcome: OutcomeSlot,
    client: Option<Client>,
    body: JsonBody,
) -> Result<Response, ApiError> {
    let Json(mut body) = body.map_err(|e| invalid(e.body_text()))?;
    let admitted = admit(&serving, &mut body, Kind::Text, client, &outcome)?;
    if let Some(up) = external(&serving.engines, &body, &outcome) {
        unlimited_prompts(admitted.as_ref())?;
        return up.forward(Kind::Text, body, outcome).await;
    }
    let body: CompletionBody = typed(body)?;
    noted(&outcome, &body.common);
    let engine = engine(&snapshot(&serving.engines), &body.common.model)?;
    let prompt = match &body.prompt {
        Value::String(s) => s.clone(),
        Value::Array(a) if a.len() == 1 && a[0].is_string() => {
            a[0].as_str().unwrap_or_default().to_string()
        }
        _ => return Err(invalid("prompt must be one string")),
    };
    let request = build(&body.common, Request::text(prompt))?
        .with_max_prompt_tokens(admitted.and_then(|a| a.max_prompt_tokens));
    Ok(run(engine, request, &body.common, Kind::Text, outcome).await)
}

/// Notes the model and streaming of a request whose body parsed.
fn noted(outcome: &OutcomeSlot, common: &Common) {
    outcome.update(|o| {
        o.model = Some(common.model.clone());
        o.stream = common.stream;
    });
}

async fn run(
    engine: Arc<Engine>,
    request: Request,
    common: &Common,
    kind: Kind,
    outcome: OutcomeSlot,
) -> Response {
    let stream = match engine.submit(request) {
        Ok(s) => s,
        Err(e) => return engine_error(&e).into_response(),
    };
    let (id, object) = match kind {
        Kind::Chat => (
            format!("chatcmpl-{:016x}", rand::random::<u64>()),
            "chat.completion",
        ),
        Kind::Text => (
            format!("cmpl-{:016x}", rand::random::<u64>()),
            "text_completion",
        ),
    };
    let created = now();
    let model = common.model.clone();
    if !common.stream {
        let done = match stream.collect().await {
            Ok(c) => c,
            Err(e) => return engine_error(&e).into_response(),
        };
        outcome.finished(done.usage, done.finish_reason);
        let choice = match kind {
            Kind::Chat => {
                json!({"index": 0, "message": {"role": "assistant", "content": done.text},
                                 "logprobs": null, "finish_reason": finish_reason(done.finish_reason)})
            }
            Kind::Text => json!({"index": 0, "text": done.text, "logprobs": null,
                                 "finish_reason": finish_reason(done.finish_reason)}),
        };
        return Json(json!({
            "id": id, "object": object, "created": created, "model": model,
            "choices": [choice],
            "usage": {"prompt_tokens": done.usage.prompt_tokens,
                      "completion_tokens": done.usage.completion_tokens,
                      "total_tokens": done.usage.total_tokens()},
        }))
        .into_response();
    }
    let include_usage = common
        .stream_options
        .as_ref()
        .is_some_and(|o| o.include_usage);
    let chunk_object = match kind {
        Kind::Chat => "chat.completion.chunk",
        Kind::Text => "text_completion",
    };
    let events = sse_events(
        stream,
        kind,
        id,
        chunk_object,
        created,
        model,
        include_usage,
        outcome,
    );
    Sse::new(events).into_response()
}

/// The SSE events of a streamed generation; dropping the stream (the client went away)
/// cancels the generation and frees its slot.
#[allow(clippy::too_many_arguments)]
fn sse_events(
    stream: GenerationStream,
    kind: Kind,
    id: String,
    object: &'static str,
    created: u64,
    model: String,
    include_usage: bool,
    outcome: OutcomeSlot,
) -> impl futures_util::Stream<Item = Result<Event, Infallible>> {
    let chunk = move |delta: Value, finish: Value| {
        let choice = match kind {
            Kind::Chat => {
                json!({"index": 0, "delta": delta, "logprobs": null, "finish_reason": finish})
            }
            Kind::Text => json!({"index": 0, "text": delta["content"].as_str().unwrap_or_default(),
                                 "logprobs": null, "finish_reason": finish}),
        };
        json!({"id": id, "object": object, "created": created, "model": model, "choices": [choice]})
    };
    let event = |v: Value| Event::default().data(v.to_string());
    let first = (kind == Kind::Chat).then(|| {
        event(chunk(
            json!({"role": "assistant", "content": ""}),
            Value::Null,
        ))
    });
    let body = stream.flat_map(move |ev| {
        let out: Vec<Event> = match ev {
            Ok(StreamEvent::Delta(text)) => {
                outcome.update(|o| o.streamed = o.streamed.saturating_add(1));
                vec![event(chunk(json!({"content": text}), Value::Null))]
            }
            Ok(StreamEvent::Finished(f)) => {
                outcome.finished(f.usage, f.finish_reason);
                let mut v = vec![event(chunk(
                    json!({}),
                    json!(finish_reason(f.finish_reason)),
                ))];
                if include_usage {
                    // OpenAI's usage chunk: the same envelope, no choices.
                    let mut last = chunk(json!({}), Value::Null);
                    last["choices"] = json!([]);
                    last["usage"] = json!({"prompt_tokens": f.usage.prompt_tokens,
                                           "completion_tokens": f.usage.completion_tokens,
                                           "total_tokens": f.usage.total_tokens()});
                    v.push(event(last));
                }
                v.push(Event::default().data("[DONE]"));
                v
            }
            Err(e) => vec![event(json!({"error": {"message": e.to_string(),
                "type": "server_error", "param": null, "code": null}}))],
        };
        futures_util::stream::iter(out.into_iter().map(Ok))
    });
    futures_util::stream::iter(first.into_iter().map(Ok)).chain(body)
}

/// The router of the OpenAI-compatible API over `serving`'s engines, under their policies.
pub fn router(serving: impl Into<Serving>) -> Router {
    Router::new()
        .route("/v1/models", get(models))
        .route("/v1/chat/completions", post(chat))
        .route("/v1/completions", post(completions))
        .with_state(serving.into())
}

#[cfg(test)]
mod tests;
