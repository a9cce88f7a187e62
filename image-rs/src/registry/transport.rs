//! The pull side of the distribution protocol, over HTTP, with every body read capped while it
//! streams: manifests and indexes, blobs, bearer tokens and error answers.
//!
//! A registry (and any token server it names) is hostile: it chooses how much it sends. The
//! registry client that pushes (oci-client) buffers whole answers (a manifest, a token, an error
//! page) before anything can look at their size, so a 1 GiB manifest took a pull to 2 GB of
//! guest memory. Here nothing is read past its limit: the read stops and the pull fails saying
//! which limit.
//!
//! Authentication as registries do it: anonymous first; on `401` with a `Bearer` challenge, a
//! token from the realm it names (with the `auth.json` credentials, if any, as Basic), cached
//! per registry and repository; on a `Basic` challenge, the credentials themselves. A realm
//! reached over plain HTTP is refused unless its registry is configured insecure, so credentials
//! never travel in clear to a place the registry picked. Redirects (blob storage) are followed
//! by reqwest, which drops `Authorization` when the host changes. Credentials and tokens are
//! never logged or put in an error.

use std::collections::HashMap;

use oci_client::Reference;
use reqwest::StatusCode;
use reqwest::header::{ACCEPT, AUTHORIZATION, WWW_AUTHENTICATE};
use tokio::sync::Mutex;
use zeroize::Zeroizing;

use super::{RegistryConfig, RegistryError};

/// Largest token answer read.
const MAX_TOKEN_ANSWER: usize = 64 << 10;
/// Largest error answer read (for its message).
const MAX_ERROR_ANSWER: usize = 4 << 10;

/// HTTP to registries, pull side.
pub(super) struct Transport {
    http: reqwest::Client,
    config: RegistryConfig,
    /// Bearer tokens by (registry, repository). Secrets: never logged.
    tokens: Mutex<HashMap<(String, String), Zeroizing<String>>>,
}

/// A challenge from a `WWW-Authenticate` header.
#[derive(Debug, PartialEq, Eq)]
enum Challenge {
    Basic,
    Bearer {
        realm: String,
        service: Option<String>,
        scope: Option<String>,
    },
}

/// Parses `Bearer realm="...",service="...",scope="..."` or `Basic realm="..."`.
fn parse_challenge(header: &str) -> Option<Challenge> {
    let (scheme, params) = header.trim().split_once(' ').unwrap_or((header.trim(), ""));
    if scheme.eq_ignore_ascii_case("basic") {
        return Some(Challenge::Basic);
    }
    if !scheme.eq_ignore_ascii_case("bearer") {
        return None;
    }
    let mut values: HashMap<String, String> = HashMap::new();
    let mut rest = params.trim();
    while !rest.is_empty() {
        let (key, after) = rest.split_once('=')?;
        let key = key.trim().to_ascii_lowercase();
        let after = after.trim_start();
        let (value, tail) = if let Some(quoted) = after.strip_prefix('"') {
            let end = quoted.find('"')?;
            (&quoted[..end], &quoted[end + 1..])
        } else {
            after.split_at(after.find(',').unwrap_or(after.len()))
        };
        values.insert(key, value.to_string());
        rest = tail.trim_start().trim_start_matches(',').trim_start();
    }
    Some(Challenge::Bearer {
        realm: values.remove("realm")?,
        service: values.remove("service"),
        scope: values.remove("scope"),
    })
}

/// Reads `response`'s body, failing as soon as it passes `limit` bytes.
pub(super) async fn read_capped(
    mut response: reqwest::Response,
    limit: usize,
) -> Result<Vec<u8>, String> {
    if let Some(len) = response.content_length()
        && len > limit as u64
    {
        return Err(format!("{len} bytes is more than {limit}"));
    }
    let mut out = Vec::new();
    while let Some(chunk) = response.chunk().await.map_err(|e| e.to_string())? {
        if out.len().saturating_add(chunk.len()) > limit {
            return Err(format!("more than {limit} bytes"));
        }
        out.extend_from_slice(&chunk);
    }
    Ok(out)
}

/// A short, printable summary of an error answer: its status and at most a few hundred bytes
/// of what it says (registries answer `{"errors":[{"code","message"}]}`).
async fn error_summary(response: reqwest::Response) -> String {
    let status = response.status();
    let body = read_capped(response, MAX_ERROR_ANSWER)
        .await
        .unwrap_or_default();
    let text: String = String::from_utf8_lossy(&body)
        .chars()
        .filter(|c| !c.is_control())
        .take(300)
        .collect();
    if text.is_empty() {
        status.to_string()
    } else {
        format!("{status}: {text}")
    }
}

impl Transport {
    pub(super) fn new(config: &RegistryConfig) -> Result<Transport, RegistryError> {
        let mut builder = reqwest::Client::builder()
            .user_agent(concat!("ward/", env!("CARGO_PKG_VERSION")))
            .redirect(reqwest::redirect::Policy::limited(5));
        if let Some(t) = config.timeout {
            builder = builder.connect_timeout(t).read_timeout(t);
        }
        if let Some(pem) = &config.ca_pem {
            for cert in reqwest::Certificate::from_pem_bundle(pem)
                .map_err(|e| RegistryError::Config(format!("registry CA: {e}")))?
            {
                builder = builder.add_root_certificate(cert);
            }
        }
        let http = builder
            .build()
            .map_err(|e| RegistryError::Config(format!("registry HTTP client: {e}")))?;
        Ok(Transport {
            http,
            config: config.clone(),
            tokens: Mutex::new(HashMap::new()),
        })
    }

    fn scheme(&self, registry: &str) -> &'static str {
        if self.config.insecure.iter().any(|h| h == registry) {
            "http"
        } else {
            "https"
        }
    }

    /// `scheme://registry/v2/repository/{kind}/{tag or digest}`.
    fn url(&self, reference: &Reference, kind: &str, target: &str) -> String {
        let registry = reference.resolve_registry();
        format!(
            "{}://{registry}/v2/{}/{kind}/{target}",
            self.scheme(registry),
            reference.repository()
        )
    }

    /// GETs `url` for `reference`'s repository, authenticating as the registry asks. The answer
    /// may be any status; the caller reads it with a cap.
    async fn get(
        &self,
        reference: &Reference,
        url: &str,
        accept: &[&str],
    ) -> Result<reqwest::Response, String> {
        let registry = reference.resolve_registry().to_string();
        let key = (registry.clone(), reference.repository().to_string());
        let request = |auth: Option<String>| {
            let mut r = self.http.get(url);
            if !accept.is_empty() {
                r = r.header(ACCEPT, accept.join(", "));
            }
            if let Some(a) = auth {
                r = r.header(AUTHORIZATION, a);
            }
            r
        };
        let cached = self
            .tokens
            .lock()
            .await
            .get(&key)
            .map(|t| format!("Bearer {}", t.as_str()));
        let response = request(cached.clone())
            .send()
            .await
            .map_err(|e| e.to_string())?;
        if response.status() != StatusCode::UNAUTHORIZED {
            return Ok(response);
        }
        let challenge = response
            .headers()
            .get(WWW_AUTHENTICATE)
            .and_then(|v| v.to_str().ok())
            .and_then(parse_challenge);
        let auth = match challenge {
            Some(Challenge::Basic) => match self.basic(&registry) {
                Some(b) => b,
                None => return Ok(response),
            },
            Some(Challenge::Bearer {
                realm,
                service,
                scope,
            }) => {
                let token = self
                    .token(&registry, &realm, service.as_deref(), scope.as_deref())
                    .await?;
                let header = format!("Bearer {}", token.as_str());
                self.tokens.lock().await.insert(key, token);
                header
            }
            None => return Ok(response),
        };
        request(Some(auth)).send().await.map_err(|e| e.to_string())
    }

    /// `Basic base64(user:password)` for `registry`, from `auth.json`.
    fn basic(&self, registry: &str) -> Option<String> {
        use base64::Engine as _;
        let (user, password) = self.config.auths.get(registry)?;
        let pair = Zeroizing::new(format!("{user}:{}", password.as_str()));
        Some(format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(pair.as_bytes())
        ))
    }

    /// A bearer token from `realm`, the answer capped at [`MAX_TOKEN_ANSWER`].
    async fn token(
        &self,
        registry: &str,
        realm: &str,
        service: Option<&str>,
        scope: Option<&str>,
    ) -> Result<Zeroizing<String>, String> {
        let realm_url =
            url::Url::parse(realm).map_err(|_| "the token realm is not a URL".to_string())?;
        match realm_url.scheme() {
            "https" => {}
            "http" if self.scheme(registry) == "http" => {}
            other => {
                return Err(format!(
                    "the token realm uses `{other}`; only https (or http for an insecure registry)"
                ));
            }
        }
        let mut query: Vec<(&str, &str)> = Vec::new();
        if let Some(s) = service {
            query.push(("service", s));
        }
        if let Some(s) = scope {
            query.push(("scope", s));
        }
        let mut request = self.http.get(realm_url).query(&query);
        if let Some(b) = self.basic(registry) {
            request = request.header(AUTHORIZATION, b);
        }
        let response = request.send().await.map_err(|e| e.to_string())?;
        if !response.status().is_success() {
            return Err(format!(
                "the token server answered {}",
                error_summary(response).await
            ));
        }
        let body = Zeroizing::new(
            read_capped(response, MAX_TOKEN_ANSWER)
                .await
                .map_err(|e| format!("token answer: {e}"))?,
        );
        #[derive(serde::Deserialize)]
        struct Answer {
            token: Option<String>,
            access_token: Option<String>,
        }
        let answer: Answer = serde_json::from_slice(&body)
            .map_err(|e| format!("token answer: {}", ward_kbs_wire::redacted_json_error(&e)))?;
        answer
            .token
            .or(answer.access_token)
            .filter(|t| !t.is_empty())
            .map(Zeroizing::new)
            .ok_or_else(|| "the token answer has no token".to_string())
    }

    /// The manifest (or index) at `target` (a tag or digest), at most `limit` bytes.
    pub(super) async fn manifest(
        &self,
        reference: &Reference,
        target: &str,
        accept: &[&str],
        limit: usize,
    ) -> Result<Fetched<Vec<u8>>, String> {
        let response = self
            .get(reference, &self.url(reference, "manifests", target), accept)
            .await?;
        if response.status() == StatusCode::NOT_FOUND {
            return Ok(Fetched::NotFound);
        }
        if !response.status().is_success() {
            return Err(error_summary(response).await);
        }
        read_capped(response, limit).await.map(Fetched::Found)
    }

    /// The blob `digest`, as a response to read piece by piece (the caller caps and checks it).
    pub(super) async fn blob(
        &self,
        reference: &Reference,
        digest: &str,
    ) -> Result<reqwest::Response, String> {
        let response = self
            .get(reference, &self.url(reference, "blobs", digest), &[])
            .await?;
        if !response.status().is_success() {
            return Err(error_summary(response).await);
        }
        Ok(response)
    }
}

/// What a GET found.
pub(super) enum Fetched<T> {
    Found(T),
    NotFound,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn challenges() {
        assert_eq!(
            parse_challenge(
                r#"Bearer realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:library/alpine:pull""#
            ),
            Some(Challenge::Bearer {
                realm: "https://auth.docker.io/token".into(),
                service: Some("registry.docker.io".into()),
                scope: Some("repository:library/alpine:pull".into()),
            })
        );
        assert_eq!(
            parse_challenge(r#"bearer realm=https://r/t, scope="a,b""#),
            Some(Challenge::Bearer {
                realm: "https://r/t".into(),
                service: None,
                scope: Some("a,b".into()),
            })
        );
        assert_eq!(
            parse_challenge(r#"Basic realm="r""#),
            Some(Challenge::Basic)
        );
        assert_eq!(parse_challenge("Bearer service=\"x\""), None, "no realm");
        assert_eq!(parse_challenge("Negotiate abc"), None);
        assert_eq!(parse_challenge(r#"Bearer realm="unterminated"#), None);
    }
}
