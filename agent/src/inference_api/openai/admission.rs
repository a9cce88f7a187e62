//! A model's access policy applied to one request (`crate::access`): who asks (the request's
//! [`Client`], put there by the encryption layer or the unix listener), what for, and the
//! OpenAI-shaped refusal (403, or 429 with `Retry-After`) when the policy says no.

use axum::http::StatusCode;
use serde_json::{Value, json};

use super::{ApiError, Kind, MAX_TOKENS_CAP, OutcomeSlot, Serving, error};
use crate::access::{Admitted, Ask, Client, Endpoint, Refusal, workload_digest};

/// The OpenAI-shaped answer to a policy's refusal: 403 for what the client may not do, 429
/// with `Retry-After` for a limit it reached.
fn refusal(r: &Refusal) -> ApiError {
    let (status, kind, code) = match r {
        Refusal::RateLimited { .. } => (
            StatusCode::TOO_MANY_REQUESTS,
            "requests",
            "rate_limit_exceeded",
        ),
        Refusal::QuotaExhausted { .. } => {
            (StatusCode::TOO_MANY_REQUESTS, "tokens", "quota_exceeded")
        }
        _ => (
            StatusCode::FORBIDDEN,
            "permission_error",
            "permission_denied",
        ),
    };
    let mut e = error(status, kind, Some(code), r.to_string());
    e.retry_after = r.retry_after().map(|d| d.as_secs());
    e
}

/// Applies the policy of the body's model, if it has one: the grant that lets `client` through
/// (noted, with the answer's token limit written into the body when the request set none), or
/// the refusal, noted and answered. A model without a policy serves anyone who reaches it.
pub(super) fn admit(
    serving: &Serving,
    body: &mut Value,
    kind: Kind,
    client: Option<Client>,
    outcome: &OutcomeSlot,
) -> Result<Option<Admitted>, ApiError> {
    outcome.update(|o| o.client.clone_from(&client));
    let Some(policy) = body
        .get("model")
        .and_then(Value::as_str)
        .and_then(|m| serving.policy(m))
    else {
        return Ok(None);
    };
    let asked = ["max_completion_tokens", "max_tokens"]
        .iter()
        .find_map(|k| body.get(*k).filter(|v| !v.is_null()));
    // Whatever does not read as a count is the handlers' 400, not the policy's business; as a
    // count past any limit it cannot slip under one.
    let max_tokens = asked.map(|v| {
        v.as_u64()
            .map_or(usize::MAX, |n| usize::try_from(n).unwrap_or(usize::MAX))
    });
    let ask = Ask {
        endpoint: match kind {
            Kind::Chat => Endpoint::Chat,
            Kind::Text => Endpoint::Completions,
        },
        stream: body.get("stream").and_then(Value::as_bool).unwrap_or(false),
        max_tokens,
        workload: workload_digest(body),
    };
    match policy.admit(client.as_ref(), &ask) {
        Ok(admitted) => {
            if let (None, Some(limit)) = (asked, admitted.max_output_tokens) {
                body["max_tokens"] = json!(limit.min(MAX_TOKENS_CAP));
            }
            outcome.update(|o| o.grant = Some(admitted.grant.clone()));
            Ok(Some(admitted))
        }
        Err(r) => {
            tracing::warn!(reason = r.reason(), "refused by the model's policy");
            outcome.update(|o| {
                o.refused = Some(r.reason());
                o.model = body
                    .get("model")
                    .and_then(Value::as_str)
                    .map(str::to_string);
            });
            Err(refusal(&r))
        }
    }
}

/// An external engine tokenizes where wardd cannot see: a prompt limit would not be enforced,
/// so a request under one is refused (wardd also refuses to serve such a model at load).
pub(super) fn unlimited_prompts(admitted: Option<&Admitted>) -> Result<(), ApiError> {
    match admitted.and_then(|a| a.max_prompt_tokens) {
        None => Ok(()),
        Some(_) => Err(error(
            StatusCode::FORBIDDEN,
            "permission_error",
            Some("policy_unenforceable"),
            "this model's policy limits prompts, which its engine cannot enforce",
        )),
    }
}
