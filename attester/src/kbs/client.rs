//! The HTTP side of the RCAR handshake and resource retrieval, with the session shared by every
//! caller. See the module docs of `kbs` for the guarantees.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use kbs_types::{Attestation, Challenge, CompositeEvidence, InitData, Request, RuntimeData, Tee};
use serde::Deserialize;
use ward_kbs_wire::ResourceUri;
use zeroize::Zeroizing;

use super::answer::{
    Answer, SESSION_COOKIE, error_chain, error_from, parse_json, refused_certificate,
    session_cookie,
};
use super::binding::{BindingHash, device_report_data, primary_report_data};
use super::jwe;
use super::tee_key::{KeyKind, TeeKey};
use super::token::Token;
use super::{KbsError, PROTOCOL_VERSION};
use crate::report_data::ReportData;
use crate::tee::{Attester, DeviceAttester};

/// Largest response body read from the KBS (tokens and JWEs are far smaller).
const MAX_BODY: usize = super::jwe::MAX_JWE_BYTES;
/// A token this close to expiry is renewed before use.
const EXPIRY_MARGIN: Duration = Duration::from_secs(30);

/// How network failures are retried. 4xx answers are never retried.
#[derive(Clone, Copy, Debug)]
pub struct RetryPolicy {
    /// Total attempts per call, including the first.
    pub attempts: u32,
    /// Wait before the second attempt; doubles each time.
    pub first_backoff: Duration,
    /// Timeout of each attempt.
    pub timeout: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            attempts: 3,
            first_backoff: Duration::from_millis(200),
            timeout: Duration::from_secs(10),
        }
    }
}

/// Where the KBS is and how to talk to it.
#[derive(Clone, Debug)]
pub struct KbsConfig {
    /// Base URL, e.g. `https://kbs.example:8080`.
    pub url: String,
    /// PEM CA certificate(s) to trust for the KBS instead of the system roots.
    pub ca_pem: Option<Vec<u8>>,
    pub key_kind: KeyKind,
    pub retry: RetryPolicy,
    /// initdata (TOML) sent with the attestation.
    pub init_data: Option<String>,
}

impl KbsConfig {
    /// Defaults for `url`: EC P-256 keys, three attempts, ten-second timeouts.
    pub fn new(url: impl Into<String>) -> KbsConfig {
        KbsConfig {
            url: url.into(),
            ca_pem: None,
            key_kind: KeyKind::default(),
            retry: RetryPolicy::default(),
            init_data: None,
        }
    }
}

/// An attested session: the token, the key the KBS encrypts to, and the cookie.
pub(super) struct Session {
    cookie: Zeroizing<String>,
    /// When the KBS said the session cookie expires.
    cookie_expires: Option<std::time::SystemTime>,
    token: Token,
    key: TeeKey,
    generation: u64,
}

/// Called after each successful attestation with the new token's claims (public appraisal data,
/// never the token itself), so the caller can audit it.
pub type AttestObserver = Arc<dyn Fn(&serde_json::Value) + Send + Sync>;

/// Called after each handshake, successful or not, with how long it took (for metrics).
pub type HandshakeTimer = Arc<dyn Fn(std::time::Duration, bool) + Send + Sync>;

/// The shared KBS client. Cheap to clone the `Arc` around it; all callers share one session.
pub struct KbsClient {
    observer: Option<AttestObserver>,
    timer: Option<HandshakeTimer>,
    devices: Vec<Arc<dyn DeviceAttester>>,
    config: KbsConfig,
    base: String,
    http: reqwest::Client,
    attester: Arc<dyn Attester>,
    current: Mutex<Option<Arc<Session>>>,
    /// Serialises handshakes only; resource reads never wait on it once a token exists.
    handshake: tokio::sync::Mutex<u64>,
}

#[derive(Deserialize)]
struct TokenBody {
    token: String,
}

impl KbsClient {
    /// A client for `config` attesting with `attester`.
    pub fn new(config: KbsConfig, attester: Arc<dyn Attester>) -> Result<KbsClient, KbsError> {
        let base = config.url.trim_end_matches('/').to_string();
        if !(base.starts_with("http://") || base.starts_with("https://")) {
            return Err(KbsError::Config(format!(
                "`{}` is not an http(s) URL",
                config.url
            )));
        }
        let mut builder = reqwest::Client::builder()
            .timeout(config.retry.timeout)
            .connect_timeout(config.retry.timeout)
            .redirect(reqwest::redirect::Policy::none())
            .no_proxy();
        if let Some(pem) = &config.ca_pem {
            builder = builder
                .use_preconfigured_tls(super::tls::client_config(pem).map_err(KbsError::Config)?);
        } else if base.starts_with("http://") {
            // Plain HTTP never uses TLS, so trust no root rather than load the platform's: a
            // minimal initrd has no CA store, and building the platform verifier would fail.
            builder = builder.tls_certs_only(Vec::new());
        }
        let http = builder
            .build()
            .map_err(|e| KbsError::Config(format!("HTTP client: {e}")))?;
        Ok(KbsClient {
            observer: None,
            timer: None,
            devices: Vec::new(),
            config,
            base,
            http,
            attester,
            current: Mutex::new(None),
            handshake: tokio::sync::Mutex::new(0),
        })
    }

    /// Adds device attesters (GPUs) whose evidence goes into every attestation as
    /// `additional_evidence`.
    pub fn with_devices(mut self, devices: Vec<Arc<dyn DeviceAttester>>) -> KbsClient {
        self.devices = devices;
        self
    }

    /// The device attesters.
    pub fn devices(&self) -> &[Arc<dyn DeviceAttester>] {
        &self.devices
    }

    /// Calls `observer` after every successful attestation.
    pub fn with_observer(mut self, observer: AttestObserver) -> KbsClient {
        self.observer = Some(observer);
        self
    }

    /// Calls `timer` after every handshake with its duration and whether it succeeded.
    pub fn with_handshake_timer(mut self, timer: HandshakeTimer) -> KbsClient {
        self.timer = Some(timer);
        self
    }

    /// The TEE this client attests as.
    pub fn tee(&self) -> Tee {
        self.attester.tee()
    }

    /// The current token, running the handshake first when there is no valid one.
    pub async fn token(&self) -> Result<String, KbsError> {
        let session = self.session(None).await?;
        Ok(session.token.as_str().to_string())
    }

    /// The current token and the session's TEE private key as PEM (PKCS#8), for callers that
    /// need CoCo's exact GetToken reply. Prefer [`Self::token`]: the key should not leave wardd.
    pub async fn token_with_keypair_pem(
        &self,
    ) -> Result<(Zeroizing<String>, Zeroizing<String>), KbsError> {
        let session = self.session(None).await?;
        let pem = session
            .key
            .private_pem()
            .map_err(|e| KbsError::Crypto(e.to_string()))?;
        Ok((Zeroizing::new(session.token.as_str().to_string()), pem))
    }

    /// The claims of the current token (running the handshake when needed).
    pub async fn token_claims(&self) -> Result<serde_json::Value, KbsError> {
        Ok(self.session(None).await?.token.claims().clone())
    }

    /// Fetches and decrypts a resource. Re-attests once if the KBS says the session is gone.
    pub async fn get_resource(&self, uri: &ResourceUri) -> Result<Zeroizing<Vec<u8>>, KbsError> {
        let session = self.session(None).await?;
        match self.fetch(&session, uri).await {
            Err(e) if e.is_session_gone() => {
                tracing::info!(%uri, "KBS session or token gone; attesting again");
                let fresh = self.session(Some(session.generation)).await?;
                self.fetch(&fresh, uri).await
            }
            other => other,
        }
    }

    /// Returns a valid session, running one handshake if needed. `stale` names a session
    /// generation the caller found rejected, so it is replaced even if not expired.
    async fn session(&self, stale: Option<u64>) -> Result<Arc<Session>, KbsError> {
        let usable = |s: &Arc<Session>| {
            Some(s.generation) != stale
                && !s.token.expires_within(EXPIRY_MARGIN)
                && s.cookie_expires.is_none_or(|at| {
                    std::time::SystemTime::now()
                        .checked_add(EXPIRY_MARGIN)
                        .is_some_and(|soon| soon < at)
                })
        };
        if let Some(s) = self.current_session().filter(usable) {
            return Ok(s);
        }
        let mut generation = self.handshake.lock().await;
        // Another caller may have finished a handshake while this one waited.
        if let Some(s) = self.current_session().filter(usable) {
            return Ok(s);
        }
        *generation += 1;
        let started = std::time::Instant::now();
        let result = self.run_handshake(*generation).await;
        if let Some(timer) = &self.timer {
            timer(started.elapsed(), result.is_ok());
        }
        let session = Arc::new(result?);
        if let Some(observe) = &self.observer {
            observe(session.token.claims());
        }
        *self.current.lock().unwrap_or_else(|p| p.into_inner()) = Some(session.clone());
        Ok(session)
    }

    fn current_session(&self) -> Option<Arc<Session>> {
        self.current
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    async fn run_handshake(&self, generation: u64) -> Result<Session, KbsError> {
        let tee = self.attester.tee();
        let span = tracing::info_span!("kbs_handshake", %tee, generation);
        let _enter = span.enter();
        drop(_enter);

        // 1. auth -> challenge
        let request = Request {
            version: PROTOCOL_VERSION.to_string(),
            tee,
            extra_params: serde_json::json!({
                "supported-hash-algorithms": ["sha256", "sha384", "sha512"],
            }),
        };
        let body = serde_json::to_vec(&request).map_err(|e| KbsError::Crypto(e.to_string()))?;
        let auth = self
            .send("auth", reqwest::Method::POST, "auth", None, Some(body))
            .await?;
        if auth.status != 200 {
            return Err(error_from("auth", &auth, None));
        }
        let cookie = auth.cookie.ok_or_else(|| KbsError::Protocol {
            what: "auth".to_string(),
            detail: format!("no `{SESSION_COOKIE}` cookie in the answer"),
        })?;
        let challenge: Challenge = parse_json("auth", &auth.body)?;
        let hash = match &challenge.extra_params {
            serde_json::Value::Object(m) => {
                let name = m.get("selected-hash-algorithm").and_then(|v| v.as_str());
                BindingHash::from_kbs(name).ok_or_else(|| KbsError::Protocol {
                    what: "auth".to_string(),
                    detail: format!("unsupported selected-hash-algorithm {name:?}"),
                })?
            }
            _ => BindingHash::Sha384,
        };
        if challenge.nonce.is_empty() {
            return Err(KbsError::Protocol {
                what: "auth".to_string(),
                detail: "empty nonce".to_string(),
            });
        }

        // 2. a fresh key, bound with the nonce into the evidence
        let kind = self.config.key_kind;
        let key = tokio::task::spawn_blocking(move || TeeKey::generate(kind))
            .await
            .map_err(|e| KbsError::Crypto(e.to_string()))?
            .map_err(|e| KbsError::Crypto(e.to_string()))?;
        let jwk = key.public_jwk();
        let additional_evidence = self.device_evidence(hash, &challenge.nonce, &jwk).await?;
        let report_data = primary_report_data(hash, &challenge.nonce, &jwk, &additional_evidence)
            .map_err(|e| KbsError::Crypto(e.to_string()))?;
        let report_data =
            ReportData::new(report_data).map_err(|e| KbsError::Crypto(e.to_string()))?;
        let evidence = self.attester.evidence(&report_data).await?;

        // 3. attest -> token
        let attestation = Attestation {
            init_data: self.config.init_data.as_ref().map(|body| InitData {
                format: "toml".to_string(),
                body: body.clone(),
            }),
            runtime_data: RuntimeData {
                nonce: challenge.nonce.clone(),
                tee_pubkey: jwk,
            },
            tee_evidence: CompositeEvidence {
                primary_evidence: evidence,
                additional_evidence,
            },
        };
        let body = serde_json::to_vec(&attestation).map_err(|e| KbsError::Crypto(e.to_string()))?;
        let attest = self
            .send(
                "attest",
                reqwest::Method::POST,
                "attest",
                Some(&cookie.id),
                Some(body),
            )
            .await?;
        if attest.status != 200 {
            return Err(match error_from("attest", &attest, None) {
                KbsError::Unauthorized { kind, detail } | KbsError::Status { kind, detail, .. } => {
                    KbsError::AttestationRejected { kind, detail }
                }
                other => other,
            });
        }
        let token: TokenBody = parse_json("attest", &attest.body)?;
        let token = Token::parse(token.token).map_err(|e| KbsError::Protocol {
            what: "attest".to_string(),
            detail: e.to_string(),
        })?;
        tracing::info!(submods = ?token.submods(), "attested to the KBS");
        Ok(Session {
            cookie: Zeroizing::new(cookie.id),
            cookie_expires: cookie.expires,
            token,
            key,
            generation,
        })
    }

    /// `additional_evidence`: the JSON string of `{"<tee>": evidence}` over every device
    /// attester, or `""` when there are none.
    async fn device_evidence(
        &self,
        hash: BindingHash,
        nonce: &str,
        jwk: &kbs_types::TeePubKey,
    ) -> Result<String, KbsError> {
        if self.devices.is_empty() {
            return Ok(String::new());
        }
        let rd =
            device_report_data(hash, nonce, jwk).map_err(|e| KbsError::Crypto(e.to_string()))?;
        let mut map = serde_json::Map::new();
        for d in &self.devices {
            map.insert(d.tee().to_string(), d.evidence(&rd).await?);
        }
        serde_json::to_string(&map).map_err(|e| KbsError::Crypto(e.to_string()))
    }

    async fn fetch(
        &self,
        session: &Session,
        uri: &ResourceUri,
    ) -> Result<Zeroizing<Vec<u8>>, KbsError> {
        let what = format!("GET {uri}");
        // Trustee answers 401 `PluginInternalError` for a missing resource and for a transient
        // backend failure alike: asked once more after a pause, a missing resource costs one
        // extra round trip and a backend that hiccuped gets its second chance.
        let mut asked_again = false;
        let answer = loop {
            let answer = self
                .send(
                    &what,
                    reqwest::Method::GET,
                    &uri.kbs_path(),
                    Some(&session.cookie),
                    None,
                )
                .await?;
            if answer.status == 200 {
                break answer;
            }
            let e = error_from(&what, &answer, Some(uri));
            if matches!(e, KbsError::ResourceUnavailable { .. }) && !asked_again {
                asked_again = true;
                tracing::warn!(%uri, "KBS plugin error; asking once more");
                tokio::time::sleep(self.config.retry.first_backoff).await;
                continue;
            }
            return Err(e);
        };
        let body = Zeroizing::new(answer.body);
        jwe::decrypt(&body, &session.key).map_err(|source| KbsError::Jwe {
            uri: uri.to_string(),
            source,
        })
    }

    /// One call with retries on network errors and 5xx. `path` is under `/kbs/v0/`.
    async fn send(
        &self,
        what: &str,
        method: reqwest::Method,
        path: &str,
        cookie: Option<&str>,
        body: Option<Vec<u8>>,
    ) -> Result<Answer, KbsError> {
        let url = format!("{}/kbs/v0/{path}", self.base);
        let policy = self.config.retry;
        let attempts = policy.attempts.max(1);
        let mut backoff = policy.first_backoff;
        let mut last = None;
        for attempt in 1..=attempts {
            let mut req = self.http.request(method.clone(), &url);
            if let Some(c) = cookie {
                req = req.header(reqwest::header::COOKIE, format!("{SESSION_COOKIE}={c}"));
            }
            if let Some(b) = &body {
                req = req
                    .header(reqwest::header::CONTENT_TYPE, "application/json")
                    .body(b.clone());
            }
            match self.read(req).await {
                Ok(a) if a.status >= 500 && attempt < attempts => {
                    tracing::warn!(
                        what,
                        status = a.status,
                        attempt,
                        "KBS server error; retrying"
                    );
                    last = Some(Err(a));
                }
                Ok(a) => return Ok(a),
                Err(e) if refused_certificate(&e) => {
                    return Err(KbsError::Certificate {
                        url,
                        detail: error_chain(&e),
                    });
                }
                Err(e) => {
                    tracing::warn!(what, attempt, error = %e, "KBS call failed");
                    last = Some(Ok(e));
                }
            }
            if attempt < attempts {
                tokio::time::sleep(backoff).await;
                backoff = backoff.saturating_mul(2);
            }
        }
        Err(match last {
            Some(Err(answer)) => error_from(what, &answer, None),
            Some(Ok(e)) if e.is_timeout() => KbsError::Timeout {
                url,
                timeout: policy.timeout,
                attempts,
            },
            Some(Ok(e)) => KbsError::Unreachable {
                url,
                attempts,
                detail: error_chain(&e),
            },
            None => KbsError::Unreachable {
                url,
                attempts,
                detail: "no attempt made".to_string(),
            },
        })
    }

    async fn read(&self, req: reqwest::RequestBuilder) -> Result<Answer, reqwest::Error> {
        let mut resp = req.send().await?;
        let status = resp.status().as_u16();
        let cookie = resp
            .headers()
            .get_all(reqwest::header::SET_COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .find_map(session_cookie);
        let mut body = Vec::new();
        while let Some(chunk) = resp.chunk().await? {
            if body.len() + chunk.len() > MAX_BODY {
                // Keep what fits; the parser reports the truncation.
                break;
            }
            body.extend_from_slice(&chunk);
        }
        Ok(Answer {
            status,
            cookie,
            body,
        })
    }
}
