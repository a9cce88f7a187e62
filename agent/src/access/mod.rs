//! Per-model access policy (`docs/model-policy.md`): which clients may use a model, how often,
//! with what limits, and for which computation. A policy comes with the model, released by the
//! KBS (`[[model]] policy = "kbs:///…"`, fetched in the session that released its KEK) or set
//! inline in the config; once a model has one, every request is refused unless a grant allows
//! it (default deny).
//!
//! Who asks: the Ed25519 key that signed an encrypted request (`ward_e2e.client`, which the
//! host can neither read, strip nor swap), or on an in-guest unix socket the peer's uid from the
//! kernel. Nothing else counts: a name in a request body, a header or a TCP address is
//! whatever the sender says.
//!
//! Limits are kept per client (key or uid) and model, in guest memory, on the monotonic clock:
//! the host moves the guest's wall clock at will, so a quota window that followed it could be
//! reset by the host. They start afresh when wardd starts (in a Kata guest, with the VM).

mod limits;
#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};
use ward_e2e::ClientId;

use limits::Usage;

/// Why a policy document is refused.
#[derive(Debug, thiserror::Error)]
pub enum AccessPolicyError {
    #[error("the policy is not valid JSON or TOML for a model policy: {0}")]
    Parse(String),
    #[error("the policy is invalid: {0}")]
    Invalid(String),
}

/// Who sent a request, as wardd can prove it.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Client {
    /// The key that signed an encrypted request.
    Key(String),
    /// The uid of an in-guest unix socket's peer (`SO_PEERCRED`).
    Uid(u32),
}

impl Client {
    /// The client of a signed request.
    pub fn key(id: &ClientId) -> Client {
        Client::Key(id.to_string())
    }

    fn parse(s: &str) -> Result<Client, String> {
        if let Some(uid) = s.strip_prefix("uid:") {
            return uid
                .parse()
                .map(Client::Uid)
                .map_err(|_| format!("`{s}`: a uid is `uid:<number>`"));
        }
        ClientId::parse(s)
            .map(|id| Client::key(&id))
            .map_err(|e| format!("`{s}`: {e}"))
    }
}

impl std::fmt::Display for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Client::Key(k) => f.write_str(k),
            Client::Uid(u) => write!(f, "uid:{u}"),
        }
    }
}

/// What a request is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Endpoint {
    /// `POST /v1/chat/completions`.
    Chat,
    /// `POST /v1/completions`.
    Completions,
    /// A streamed answer (`"stream": true`), on either.
    Stream,
}

/// A policy as its owner writes it (JSON from the KBS, or a TOML table in the config).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AccessPolicyDoc {
    /// 1.
    pub version: u32,
    /// Who may use the model; everyone else is refused.
    #[serde(default)]
    pub clients: Vec<GrantDoc>,
    /// When set, only requests whose workload digest is listed run ([`workload_digest`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workloads: Option<Vec<String>>,
}

/// One grant: a client key, or a group of them, and the limits each of them gets.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GrantDoc {
    /// The grant's name, in audit entries and usage reports.
    pub name: String,
    /// `ed25519:<base64url>` client keys, or `uid:<n>` for in-guest unix peers.
    pub keys: Vec<String>,
    /// Requests each client may start per minute (a bucket that refills evenly).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requests_per_minute: Option<u32>,
    /// Prompt and completion tokens each client may use per 24 hours.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tokens_per_day: Option<u64>,
    /// The longest prompt, in the model's tokens.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_prompt_tokens: Option<usize>,
    /// The most tokens one answer may have; a request asking more is refused, one asking
    /// nothing gets this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_output_tokens: Option<usize>,
    /// What the clients may call (default: all of `chat`, `completions`, `stream`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoints: Option<Vec<Endpoint>>,
}

/// A grant, checked.
#[derive(Debug)]
struct Grant {
    name: String,
    requests_per_minute: Option<u32>,
    tokens_per_day: Option<u64>,
    max_prompt_tokens: Option<usize>,
    max_output_tokens: Option<usize>,
    endpoints: BTreeSet<Endpoint>,
}

/// A model's policy, checked, with its clients' usage.
#[derive(Debug)]
pub struct AccessPolicy {
    grants: Vec<Grant>,
    by_client: BTreeMap<Client, usize>,
    workloads: Option<BTreeSet<String>>,
    /// The policy's digest (SHA-256 of the bytes it came as), for audit entries.
    digest: String,
    usage: Mutex<BTreeMap<Client, Usage>>,
}

/// What a request asks for, as far as the policy cares.
#[derive(Clone, Debug)]
pub struct Ask {
    pub endpoint: Endpoint,
    pub stream: bool,
    /// `max_tokens` / `max_completion_tokens`, when the request gives one.
    pub max_tokens: Option<usize>,
    /// [`workload_digest`] of the request.
    pub workload: String,
}

/// A request the policy let through: the grant and the limits the engine must apply.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Admitted {
    pub grant: String,
    /// The answer's token limit to set when the request gives none.
    pub max_output_tokens: Option<usize>,
    pub max_prompt_tokens: Option<usize>,
}

/// Why a request was refused. The message is for the client (it names no other client and no
/// secret); [`Refusal::reason`] is the short form for audit entries and metrics.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("this model requires an identified client (a signed encrypted request)")]
    Anonymous,
    #[error("this client is not granted access to this model")]
    NotGranted,
    #[error("this client may not call {0:?} on this model")]
    Endpoint(Endpoint),
    #[error("this request's workload is not one the model's policy allows")]
    Workload,
    #[error("max_tokens {asked} is over this client's limit of {limit}")]
    OutputTokens { asked: usize, limit: usize },
    #[error("rate limit reached: {limit} requests per minute")]
    RateLimited { limit: u32, retry_after: Duration },
    #[error("token quota reached: {limit} tokens per day")]
    QuotaExhausted { limit: u64, retry_after: Duration },
}

impl Refusal {
    /// The refusal's short name.
    pub fn reason(&self) -> &'static str {
        match self {
            Refusal::Anonymous => "anonymous",
            Refusal::NotGranted => "not_granted",
            Refusal::Endpoint(_) => "endpoint",
            Refusal::Workload => "workload",
            Refusal::OutputTokens { .. } => "output_tokens",
            Refusal::RateLimited { .. } => "rate_limited",
            Refusal::QuotaExhausted { .. } => "quota",
        }
    }

    /// When the client may try again, for 429's `Retry-After`.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            Refusal::RateLimited { retry_after, .. }
            | Refusal::QuotaExhausted { retry_after, .. } => Some(*retry_after),
            _ => None,
        }
    }
}

impl AccessPolicy {
    /// A policy from its bytes: JSON (as the KBS releases it) or TOML.
    pub fn from_bytes(bytes: &[u8]) -> Result<AccessPolicy, AccessPolicyError> {
        let text =
            std::str::from_utf8(bytes).map_err(|_| AccessPolicyError::Parse("not UTF-8".into()))?;
        let doc: AccessPolicyDoc = match serde_json::from_str(text) {
            Ok(doc) => doc,
            Err(json) => toml::from_str(text).map_err(|toml| {
                AccessPolicyError::Parse(format!("as JSON: {json}; as TOML: {}", toml.message()))
            })?,
        };
        AccessPolicy::new(doc, hex::encode(Sha256::digest(bytes)))
    }

    /// A policy from the config's inline table.
    pub fn from_doc(doc: AccessPolicyDoc) -> Result<AccessPolicy, AccessPolicyError> {
        let json = serde_json::to_vec(&doc).map_err(|e| AccessPolicyError::Parse(e.to_string()))?;
        AccessPolicy::new(doc, hex::encode(Sha256::digest(json)))
    }

    fn new(doc: AccessPolicyDoc, digest: String) -> Result<AccessPolicy, AccessPolicyError> {
        let bad = |m: String| Err(AccessPolicyError::Invalid(m));
        if doc.version != 1 {
            return bad(format!(
                "version {} (this wardd reads version 1)",
                doc.version
            ));
        }
        let mut grants = Vec::new();
        let mut by_client = BTreeMap::new();
        for g in doc.clients {
            if g.name.is_empty() || grants.iter().any(|o: &Grant| o.name == g.name) {
                return bad("grant names must be non-empty and unique".into());
            }
            if g.keys.is_empty() {
                return bad(format!("grant `{}` lists no keys", g.name));
            }
            if g.requests_per_minute == Some(0)
                || g.tokens_per_day == Some(0)
                || g.max_prompt_tokens == Some(0)
                || g.max_output_tokens == Some(0)
            {
                return bad(format!(
                    "grant `{}`: a limit of 0 grants nothing; remove the grant instead",
                    g.name
                ));
            }
            for key in &g.keys {
                let client = Client::parse(key).map_err(AccessPolicyError::Invalid)?;
                if by_client.insert(client, grants.len()).is_some() {
                    return bad(format!("`{key}` is in two grants"));
                }
            }
            let endpoints = match g.endpoints {
                Some(e) if e.is_empty() => {
                    return bad(format!("grant `{}` allows no endpoint", g.name));
                }
                Some(e) => e.into_iter().collect(),
                None => [Endpoint::Chat, Endpoint::Completions, Endpoint::Stream].into(),
            };
            grants.push(Grant {
                name: g.name,
                requests_per_minute: g.requests_per_minute,
                tokens_per_day: g.tokens_per_day,
                max_prompt_tokens: g.max_prompt_tokens,
                max_output_tokens: g.max_output_tokens,
                endpoints,
            });
        }
        let workloads = match doc.workloads {
            None => None,
            Some(w) => {
                for d in &w {
                    let ok = d
                        .strip_prefix("sha256:")
                        .is_some_and(|h| h.len() == 64 && h.bytes().all(|b| b.is_ascii_hexdigit()));
                    if !ok {
                        return bad(format!("workload `{d}` is not sha256:<64 hex digits>"));
                    }
                }
                Some(w.into_iter().map(|d| d.to_ascii_lowercase()).collect())
            }
        };
        Ok(AccessPolicy {
            grants,
            by_client,
            workloads,
            digest,
            usage: Mutex::new(BTreeMap::new()),
        })
    }

    /// The SHA-256 of the policy as it came.
    pub fn digest(&self) -> &str {
        &self.digest
    }

    /// Whether any grant limits prompts (which only a tokenizer in wardd can enforce).
    pub fn limits_prompts(&self) -> bool {
        self.grants.iter().any(|g| g.max_prompt_tokens.is_some())
    }

    /// Lets `ask` from `client` through, or says why not; an admitted request counts against
    /// the client's rate at once, and its tokens once they are known ([`AccessPolicy::consumed`]).
    pub fn admit(&self, client: Option<&Client>, ask: &Ask) -> Result<Admitted, Refusal> {
        self.admit_at(client, ask, Instant::now())
    }

    fn admit_at(
        &self,
        client: Option<&Client>,
        ask: &Ask,
        now: Instant,
    ) -> Result<Admitted, Refusal> {
        let client = client.ok_or(Refusal::Anonymous)?;
        let grant = self
            .by_client
            .get(client)
            .and_then(|i| self.grants.get(*i))
            .ok_or(Refusal::NotGranted)?;
        if !grant.endpoints.contains(&ask.endpoint) {
            return Err(Refusal::Endpoint(ask.endpoint));
        }
        if ask.stream && !grant.endpoints.contains(&Endpoint::Stream) {
            return Err(Refusal::Endpoint(Endpoint::Stream));
        }
        if let Some(w) = &self.workloads
            && !w.contains(&ask.workload)
        {
            return Err(Refusal::Workload);
        }
        if let (Some(asked), Some(limit)) = (ask.max_tokens, grant.max_output_tokens)
            && asked > limit
        {
            return Err(Refusal::OutputTokens { asked, limit });
        }
        let mut usage = self.usage.lock().unwrap_or_else(|e| e.into_inner());
        let u = usage
            .entry(client.clone())
            .or_insert_with(|| Usage::new(now));
        u.admit(grant.requests_per_minute, grant.tokens_per_day, now)?;
        Ok(Admitted {
            grant: grant.name.clone(),
            max_output_tokens: grant.max_output_tokens,
            max_prompt_tokens: grant.max_prompt_tokens,
        })
    }

    /// Counts `tokens` (prompt and completion) against `client`'s daily quota.
    pub fn consumed(&self, client: &Client, tokens: u64) {
        self.consumed_at(client, tokens, Instant::now());
    }

    fn consumed_at(&self, client: &Client, tokens: u64, now: Instant) {
        let mut usage = self.usage.lock().unwrap_or_else(|e| e.into_inner());
        usage
            .entry(client.clone())
            .or_insert_with(|| Usage::new(now))
            .consume(tokens, now);
    }
}

/// The digest of the computation a request asks for, for `workloads`: SHA-256 of the JSON
/// `{"system": [the system messages' texts, in order], "tools": the request's tools or null}`
/// (keys sorted, no whitespace). The data (user and assistant turns, a completion's prompt) is
/// not in it: the owners agree on the instructions and tools, and each party brings its data.
pub fn workload_digest(body: &serde_json::Value) -> String {
    let system: Vec<serde_json::Value> = body
        .get("messages")
        .and_then(serde_json::Value::as_array)
        .map(|m| {
            m.iter()
                .filter(|m| {
                    matches!(
                        m.get("role").and_then(serde_json::Value::as_str),
                        Some("system" | "developer")
                    )
                })
                .map(|m| m.get("content").cloned().unwrap_or_default())
                .collect()
        })
        .unwrap_or_default();
    let tools = body.get("tools").cloned().unwrap_or_default();
    let canonical = serde_json::json!({"system": system, "tools": tools});
    format!(
        "sha256:{}",
        hex::encode(Sha256::digest(canonical.to_string().as_bytes()))
    )
}
