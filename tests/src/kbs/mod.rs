//! A development KBS: the server side of KBS protocol 0.4.0 (RCAR) as PROTOCOLS.md §1 describes
//! Trustee, with the `sample` verifier, an in-memory resource store, an allow/deny policy per
//! resource, Trustee's status codes and error bodies, and switches that make it misbehave on
//! purpose (slow, 500s, garbage, damaged JWEs, forgotten sessions).
//!
//! Its checks are derived from the protocol text, not from ward's client: it parses requests as
//! plain JSON by member name, computes the binding with its own canonical JSON (serde_json's
//! sorted maps) and seals JWEs with its own code (`seal.rs`). It is for tests and the demo only:
//! the sample verifier accepts any evidence that is correctly bound, which proves nothing.

mod appraise;
pub mod seal;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use rand::RngCore;
use sha2::{Digest, Sha256};

pub use seal::JweFault;

use appraise::{appraise_devices, expected_report_data, sign_jwt, verify_jwt};

/// Whether a resource may be released.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Policy {
    Allow,
    Deny,
}

/// Misbehaviour to inject; all off by default.
#[derive(Clone, Debug, Default)]
pub struct Faults {
    /// Sleep this long before answering any request.
    pub delay: Option<Duration>,
    /// Answer this many requests with HTTP 500 before behaving.
    pub fail_next: u32,
    /// Answer 200s with a body that is not JSON.
    pub garbage: bool,
    /// Damage resource JWEs.
    pub jwe: JweFault,
    /// Answer this many resource requests with Trustee's 401 `PluginInternalError`, as it does
    /// for a transient backend failure (and for a missing resource alike).
    pub plugin_error_next: u32,
}

/// Request counts, to check how often a client ran the handshake.
#[derive(Debug, Default)]
pub struct Counts {
    pub auth: AtomicU64,
    pub attest: AtomicU64,
    pub resource: AtomicU64,
}

struct Session {
    nonce: String,
    tee: String,
    expires: Instant,
    token: Option<String>,
}

struct Inner {
    sessions: Mutex<HashMap<String, Session>>,
    resources: Mutex<HashMap<String, (Vec<u8>, Policy)>>,
    signing: Mutex<p256::ecdsa::SigningKey>,
    faults: Mutex<Faults>,
    counts: Counts,
    token_ttl: Mutex<Duration>,
    /// Lifetime of sessions (the cookie's `Expires`), as Trustee's `timeout` config.
    session_ttl: Mutex<Duration>,
    /// The operator's key: admin JWTs must be signed by it (Ed25519, `alg: EdDSA`).
    admin: ed25519_dalek::SigningKey,
    /// The `iss` and `aud` the admin endpoint requires, when set.
    admin_identity: Mutex<AdminIdentity>,
    /// The operator's public key given as Trustee's `public_key_uri` file, in place of `admin`.
    admin_public: Mutex<Option<ed25519_dalek::VerifyingKey>>,
}

/// A running dev KBS on 127.0.0.1.
pub struct DevKbs {
    pub addr: SocketAddr,
    inner: Arc<Inner>,
    task: tokio::task::JoinHandle<()>,
    tls: bool,
}

/// Accepts TLS connections and serves `app` on each.
async fn serve_tls(
    listener: tokio::net::TcpListener,
    app: Router,
    config: Arc<rustls::ServerConfig>,
) {
    let acceptor = tokio_rustls::TlsAcceptor::from(config);
    while let Ok((tcp, _)) = listener.accept().await {
        let acceptor = acceptor.clone();
        let app = app.clone();
        tokio::spawn(async move {
            // A client that refuses our certificate ends the handshake here.
            let Ok(tls) = acceptor.accept(tcp).await else {
                return;
            };
            let service = hyper_util::service::TowerToHyperService::new(app);
            let _ =
                hyper_util::server::conn::auto::Builder::new(hyper_util::rt::TokioExecutor::new())
                    .serve_connection(hyper_util::rt::TokioIo::new(tls), service)
                    .await;
        });
    }
}

const ERR_PREFIX: &str = "https://github.com/confidential-containers/kbs/errors/";

fn error(status: StatusCode, variant: &str, detail: impl Into<String>) -> Response {
    let body =
        serde_json::json!({"type": format!("{ERR_PREFIX}{variant}"), "detail": detail.into()});
    (
        status,
        [(header::CONTENT_TYPE, "application/json")],
        body.to_string(),
    )
        .into_response()
}

fn unauthorized(variant: &str, detail: impl Into<String>) -> Response {
    error(StatusCode::UNAUTHORIZED, variant, detail)
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn http_date(at: SystemTime) -> String {
    let t = time::OffsetDateTime::from(at);
    t.format(time::macros::format_description!(
        "[weekday repr:short], [day] [month repr:short] [year] [hour]:[minute]:[second] GMT"
    ))
    .unwrap_or_default()
}

fn segment_ok(s: &str) -> bool {
    // [A-Za-z0-9_-]+[A-Za-z0-9_.-]*
    let mut c = s.chars();
    matches!(c.next(), Some(f) if f.is_ascii_alphanumeric() || f == '_' || f == '-')
        && c.all(|x| x.is_ascii_alphanumeric() || matches!(x, '_' | '-' | '.'))
}

impl DevKbs {
    /// Starts a dev KBS on a free 127.0.0.1 port.
    pub async fn start() -> std::io::Result<DevKbs> {
        DevKbs::start_on("127.0.0.1:0").await
    }

    /// Starts a dev KBS on `addr` (loopback only).
    pub async fn start_on(addr: &str) -> std::io::Result<DevKbs> {
        DevKbs::start_inner(addr, None).await
    }

    /// Starts a dev KBS serving HTTPS with `cert_pem` (chain) and `key_pem` on a free 127.0.0.1
    /// port; its URL is `https://localhost:PORT`.
    pub async fn start_tls(cert_pem: &str, key_pem: &str) -> std::io::Result<DevKbs> {
        use rustls::pki_types::pem::PemObject;
        let certs = rustls::pki_types::CertificateDer::pem_slice_iter(cert_pem.as_bytes())
            .collect::<Result<Vec<_>, _>>()
            .map_err(std::io::Error::other)?;
        let key = rustls::pki_types::PrivateKeyDer::from_pem_slice(key_pem.as_bytes())
            .map_err(std::io::Error::other)?;
        let config = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::aws_lc_rs::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .map_err(std::io::Error::other)?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(std::io::Error::other)?;
        DevKbs::start_inner("127.0.0.1:0", Some(Arc::new(config))).await
    }

    async fn start_inner(
        addr: &str,
        tls: Option<Arc<rustls::ServerConfig>>,
    ) -> std::io::Result<DevKbs> {
        let listener = tokio::net::TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        if !addr.ip().is_loopback() {
            return Err(std::io::Error::other(
                "the dev KBS listens on loopback only",
            ));
        }
        let admin = ed25519_dalek::SigningKey::generate(&mut rand::rngs::OsRng);
        let inner = Arc::new(Inner {
            sessions: Mutex::new(HashMap::new()),
            resources: Mutex::new(HashMap::new()),
            signing: Mutex::new(p256::ecdsa::SigningKey::random(&mut rand::rngs::OsRng)),
            faults: Mutex::new(Faults::default()),
            counts: Counts::default(),
            token_ttl: Mutex::new(Duration::from_secs(300)),
            session_ttl: Mutex::new(Duration::from_secs(300)),
            admin,
            admin_identity: Mutex::new(AdminIdentity::default()),
            admin_public: Mutex::new(None),
        });
        let app = Router::new()
            .route("/kbs/v0/auth", post(auth))
            .route("/kbs/v0/attest", post(attest))
            .route("/kbs/v0/{*path}", get(get_resource).post(put_resource))
            .with_state(inner.clone());
        let tls_enabled = tls.is_some();
        let task = match tls {
            None => tokio::spawn(async move {
                let _ = axum::serve(listener, app).await;
            }),
            Some(config) => tokio::spawn(serve_tls(listener, app, config)),
        };
        Ok(DevKbs {
            addr,
            inner,
            task,
            tls: tls_enabled,
        })
    }

    /// `http://127.0.0.1:PORT`, or `https://localhost:PORT` when serving TLS.
    pub fn url(&self) -> String {
        if self.tls {
            format!("https://localhost:{}", self.addr.port())
        } else {
            format!("http://{}", self.addr)
        }
    }

    /// Stores a resource at `repo/type/tag`.
    pub fn put(&self, path: &str, value: &[u8], policy: Policy) {
        self.inner
            .resources
            .lock()
            .unwrap()
            .insert(path.to_string(), (value.to_vec(), policy));
    }

    /// Changes what misbehaviour is injected.
    pub fn set_faults(&self, faults: Faults) {
        *self.inner.faults.lock().unwrap() = faults;
    }

    /// Forgets every session and rotates the token signing key, as a restarted KBS would:
    /// every cookie and token a client holds is now rejected.
    pub fn forget_sessions(&self) {
        self.inner.sessions.lock().unwrap().clear();
        *self.inner.signing.lock().unwrap() =
            p256::ecdsa::SigningKey::random(&mut rand::rngs::OsRng);
    }

    /// Lifetime of sessions started from now on (their cookie's `Expires`).
    pub fn set_session_ttl(&self, ttl: Duration) {
        *self.inner.session_ttl.lock().unwrap() = ttl;
    }

    /// Lifetime of tokens issued from now on.
    pub fn set_token_ttl(&self, ttl: Duration) {
        *self.inner.token_ttl.lock().unwrap() = ttl;
    }

    /// How many auth, attest and resource requests arrived.
    pub fn counts(&self) -> (u64, u64, u64) {
        let c = &self.inner.counts;
        (
            c.auth.load(Ordering::SeqCst),
            c.attest.load(Ordering::SeqCst),
            c.resource.load(Ordering::SeqCst),
        )
    }

    /// Requires admin tokens to carry this issuer and audience (Trustee's identity provider
    /// `issuer` and `audience`); unset, neither is checked, as Trustee.
    pub fn set_admin_identity(&self, identity: AdminIdentity) {
        *self.inner.admin_identity.lock().unwrap() = identity;
    }

    /// Trusts admin tokens signed by the key of this public key PEM (what `openssl pkey -pubout`
    /// writes, Trustee's `public_key_uri`) instead of [`DevKbs::admin_key_pem`]'s.
    pub fn set_admin_public_key_pem(&self, pem: &str) {
        use ed25519_dalek::pkcs8::DecodePublicKey as _;
        *self.inner.admin_public.lock().unwrap() =
            Some(ed25519_dalek::VerifyingKey::from_public_key_pem(pem).unwrap());
    }

    /// The operator's Ed25519 private key (PKCS#8 PEM) whose JWTs the admin endpoint
    /// (`POST /kbs/v0/resource/...`) accepts, as Trustee's `auth_public_key` would.
    pub fn admin_key_pem(&self) -> String {
        use ed25519_dalek::pkcs8::EncodePrivateKey as _;
        self.inner
            .admin
            .to_pkcs8_pem(Default::default())
            .map(|p| p.to_string())
            .unwrap()
    }
}

impl Drop for DevKbs {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Applies injected delay and 500s; `Some` is the response to send instead.
async fn misbehave(inner: &Inner) -> Option<Response> {
    let faults = inner.faults.lock().unwrap().clone();
    if let Some(d) = faults.delay {
        tokio::time::sleep(d).await;
    }
    if faults.fail_next > 0 {
        inner.faults.lock().unwrap().fail_next -= 1;
        return Some((StatusCode::INTERNAL_SERVER_ERROR, "internal error").into_response());
    }
    None
}

fn ok_json(inner: &Inner, body: String) -> Response {
    let body = if inner.faults.lock().unwrap().garbage {
        "<html>not json".to_string()
    } else {
        body
    };
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "application/json")],
        body,
    )
        .into_response()
}

async fn auth(State(inner): State<Arc<Inner>>, body: Bytes) -> Response {
    inner.counts.auth.fetch_add(1, Ordering::SeqCst);
    if let Some(r) = misbehave(&inner).await {
        return r;
    }
    let Ok(req) = serde_json::from_slice::<serde_json::Value>(&body) else {
        return unauthorized("SerdeError", "auth request is not JSON");
    };
    if req["version"] != "0.4.0" {
        return unauthorized(
            "ProtocolVersion",
            format!("version {} is not 0.4.0", req["version"]),
        );
    }
    let Some(tee) = req["tee"].as_str() else {
        return unauthorized("SerdeError", "auth request has no `tee`");
    };
    let mut nonce = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut nonce);
    let nonce = STANDARD.encode(nonce);
    let mut id = [0u8; 16];
    rand::rngs::OsRng.fill_bytes(&mut id);
    let id = hex::encode(id);
    let ttl = *inner.session_ttl.lock().unwrap();
    inner.sessions.lock().unwrap().insert(
        id.clone(),
        Session {
            nonce: nonce.clone(),
            tee: tee.to_string(),
            expires: Instant::now() + ttl,
            token: None,
        },
    );
    let mut resp = ok_json(
        &inner,
        serde_json::json!({"nonce": nonce, "extra-params": ""}).to_string(),
    );
    let cookie = format!(
        "kbs-session-id={id}; Expires={}",
        http_date(SystemTime::now() + ttl)
    );
    if let Ok(v) = cookie.parse() {
        resp.headers_mut().insert(header::SET_COOKIE, v);
    }
    resp
}

fn session_id(headers: &HeaderMap) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == "kbs-session-id")
        .map(|(_, v)| v.to_string())
}

async fn attest(State(inner): State<Arc<Inner>>, headers: HeaderMap, body: Bytes) -> Response {
    inner.counts.attest.fetch_add(1, Ordering::SeqCst);
    if let Some(r) = misbehave(&inner).await {
        return r;
    }
    let Some(id) = session_id(&headers) else {
        return unauthorized("UnAuthenticatedCookie", "no kbs-session-id cookie");
    };
    let (nonce, tee, old_token) = {
        let sessions = inner.sessions.lock().unwrap();
        match sessions.get(&id) {
            Some(s) if s.expires > Instant::now() => {
                (s.nonce.clone(), s.tee.clone(), s.token.clone())
            }
            _ => return unauthorized("UnAuthenticatedCookie", "unknown or expired session"),
        }
    };
    if let Some(token) = old_token {
        return ok_json(&inner, serde_json::json!({"token": token}).to_string());
    }
    let Ok(req) = serde_json::from_slice::<serde_json::Value>(&body) else {
        return unauthorized("SerdeError", "attest request is not JSON");
    };
    let runtime = &req["runtime-data"];
    let pubkey = &runtime["tee-pubkey"];
    if runtime["nonce"].as_str() != Some(nonce.as_str()) {
        return unauthorized(
            "AttestationFailed",
            "runtime-data nonce is not this session's nonce",
        );
    }
    if !pubkey.is_object() {
        return unauthorized("SerdeError", "runtime-data has no tee-pubkey");
    }
    let evidence = &req["tee-evidence"];
    let Some(additional) = evidence["additional_evidence"].as_str() else {
        return unauthorized(
            "SerdeError",
            "tee-evidence.additional_evidence is required (a string)",
        );
    };
    let primary = &evidence["primary_evidence"];
    if tee != "sample" {
        return unauthorized(
            "AttestationFailed",
            format!("the dev KBS verifies only sample evidence, not {tee}"),
        );
    }
    let reported = primary["report_data"]
        .as_str()
        .and_then(|s| STANDARD.decode(s).ok())
        .unwrap_or_default();
    let expected = expected_report_data(additional, &nonce, pubkey);
    if reported != expected {
        return unauthorized(
            "AttestationFailed",
            "sample evidence report_data does not bind this nonce and tee-pubkey",
        );
    }
    let gpus = match appraise_devices(additional, &nonce, pubkey) {
        Ok(g) => g,
        Err(why) => return unauthorized("AttestationFailed", why),
    };
    let init_data = match &req["init-data"] {
        serde_json::Value::Null => serde_json::Value::Null,
        v => match v["body"].as_str() {
            Some(b) if v["format"] == "toml" => hex::encode(Sha256::digest(b.as_bytes())).into(),
            _ => return unauthorized("SerdeError", "init-data must be {format: toml, body}"),
        },
    };
    let ttl = *inner.token_ttl.lock().unwrap();
    let now = now_secs();
    let mut claims = serde_json::json!({
        "eat_profile": "tag:github.com,2023:veraison/ear",
        "iat": now,
        "exp": now + ttl.as_secs(),
        "ear.verifier-id": {"developer": "ward dev KBS", "build": env!("CARGO_PKG_VERSION")},
        "submods": {
            "cpu0": {
                "ear.status": "affirming",
                "ear.trustworthiness-vector": {},
                "ear.veraison.annotated-evidence": {
                    "init_data": init_data,
                    "report_data": hex::encode(&reported),
                    "runtime_data_claims": {"nonce": nonce, "tee-pubkey": pubkey},
                    "sample": primary,
                },
            },
        },
    });
    for (i, gpu) in gpus.into_iter().enumerate() {
        claims["submods"][format!("gpu{i}")] = gpu;
    }
    let token = sign_jwt(&inner, &claims);
    if let Some(s) = inner.sessions.lock().unwrap().get_mut(&id) {
        s.token = Some(token.clone());
    }
    ok_json(&inner, serde_json::json!({"token": token}).to_string())
}

/// `resource/<repo>/<type>/<tag>` -> `repo/type/tag`, or Trustee's 404 answer.
fn resource_path(path: &str) -> Result<&str, Box<Response>> {
    let Some(rest) = path.strip_prefix("resource/") else {
        return Err(Box::new(error(
            StatusCode::NOT_FOUND,
            "PluginNotFound",
            format!("no plugin for `{path}`"),
        )));
    };
    let segments: Vec<&str> = rest.split('/').collect();
    if segments.len() != 3 || !segments.iter().all(|s| segment_ok(s)) {
        return Err(Box::new(error(
            StatusCode::NOT_FOUND,
            "InvalidRequestPath",
            format!("invalid path `{rest}`"),
        )));
    }
    Ok(rest)
}

async fn get_resource(
    State(inner): State<Arc<Inner>>,
    Path(path): Path<String>,
    headers: HeaderMap,
) -> Response {
    inner.counts.resource.fetch_add(1, Ordering::SeqCst);
    if let Some(r) = misbehave(&inner).await {
        return r;
    }
    // The token comes as a bearer token or through the attested session's cookie.
    let bearer = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::to_string);
    let token = bearer.or_else(|| {
        let id = session_id(&headers)?;
        let sessions = inner.sessions.lock().unwrap();
        sessions.get(&id).and_then(|s| s.token.clone())
    });
    let Some(token) = token else {
        return unauthorized("TokenNotFound", "Attestation Token not found");
    };
    let claims = match verify_jwt(&inner, &token) {
        Ok(c) => c,
        Err(why) => return unauthorized("TokenVerifierError", why),
    };
    let rest = match resource_path(&path) {
        Ok(r) => r,
        Err(response) => return *response,
    };
    {
        let mut faults = inner.faults.lock().unwrap();
        if faults.plugin_error_next > 0 {
            faults.plugin_error_next -= 1;
            return unauthorized("PluginInternalError", "the storage backend is unavailable");
        }
    }
    let entry = inner.resources.lock().unwrap().get(rest).cloned();
    let Some((value, policy)) = entry else {
        return unauthorized(
            "PluginInternalError",
            format!("resource `{rest}` not found"),
        );
    };
    if policy == Policy::Deny {
        return unauthorized("PolicyDeny", "Access denied by policy");
    }
    let pubkey = &claims["submods"]["cpu0"]["ear.veraison.annotated-evidence"]["runtime_data_claims"]
        ["tee-pubkey"];
    let fault = inner.faults.lock().unwrap().jwe;
    match seal::seal(pubkey, &value, fault) {
        Ok(jwe) => ok_json(&inner, jwe),
        Err(e) => unauthorized("JweError", e),
    }
}

/// The identity provider the admin endpoint trusts, as one entry of Trustee's
/// `[admin] identity_providers` (bearer_jwt.rs): the admin key, and the `iss` and `aud` a
/// token must carry when configured.
#[derive(Clone, Debug, Default)]
pub struct AdminIdentity {
    pub issuer: Option<String>,
    pub audience: Option<String>,
}

/// Checks an admin JWT the way Trustee 78962cd4 does (`kbs/src/admin/authentication/
/// bearer_jwt.rs`, `authorization/regex_acl.rs`): EdDSA over `header.claims` with the admin key
/// inside its `nbf`..`exp` window, a `role` claim, then the provider's `iss` (missing counts as
/// "") and `aud` (a string or an array holding it), then the ACL of Trustee's examples
/// (`role = "admin"`, `^/kbs/.+$`). The error is Trustee's reason text.
fn admin_token_ok(
    admin: &ed25519_dalek::VerifyingKey,
    identity: &AdminIdentity,
    token: &str,
    uri: &str,
) -> Result<(), String> {
    use base64::Engine as _;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use ed25519_dalek::Verifier as _;
    // A token no issuer verifies (bad signature, algorithm, shape, or times) ends the same way.
    const NO_ISSUER: &str = "Cannot verify token with any of the issuers";
    let mut parts = token.split('.');
    let (Some(h), Some(c), Some(s), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(NO_ISSUER.into());
    };
    let header: Option<serde_json::Value> = URL_SAFE_NO_PAD
        .decode(h)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok());
    if header.is_none_or(|h| h["alg"] != "EdDSA") {
        return Err(NO_ISSUER.into());
    }
    let sig = URL_SAFE_NO_PAD
        .decode(s)
        .ok()
        .and_then(|b| ed25519_dalek::Signature::from_slice(&b).ok())
        .ok_or(NO_ISSUER)?;
    admin
        .verify(format!("{h}.{c}").as_bytes(), &sig)
        .map_err(|_| NO_ISSUER)?;
    let claims: serde_json::Value = URL_SAFE_NO_PAD
        .decode(c)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .ok_or(NO_ISSUER)?;
    let now = now_secs();
    let exp = claims["exp"].as_u64().ok_or(NO_ISSUER)?;
    let nbf = claims["nbf"].as_u64().unwrap_or(0);
    if now >= exp || now + 60 < nbf {
        return Err(NO_ISSUER.into());
    }
    let Some(role) = claims["role"].as_str() else {
        return Err(
            "Failed to parse claims from token: AdminAccessDenied { reason: \"Missing \
                    required `role` claim in JWT\" }"
                .into(),
        );
    };
    if let Some(issuer) = &identity.issuer
        && claims["iss"].as_str().unwrap_or_default() != issuer
    {
        return Err(NO_ISSUER.into());
    }
    if let Some(audience) = &identity.audience {
        let ok = match &claims["aud"] {
            serde_json::Value::String(a) => a == audience,
            serde_json::Value::Array(list) => list.iter().any(|a| a.as_str() == Some(audience)),
            _ => false,
        };
        if !ok {
            return Err(NO_ISSUER.into());
        }
    }
    if role == "admin" && uri.starts_with("/kbs/") && uri.len() > "/kbs/".len() {
        Ok(())
    } else {
        Err(format!("Role {role} not allowed for path {uri}"))
    }
}

async fn put_resource(
    State(inner): State<Arc<Inner>>,
    Path(path): Path<String>,
    uri: axum::http::Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let identity = inner.admin_identity.lock().unwrap().clone();
    let admin = inner
        .admin_public
        .lock()
        .unwrap()
        .unwrap_or_else(|| inner.admin.verifying_key());
    let checked = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .ok_or_else(|| "Failed to parse HTTP Auth Bearer header".to_string())
        .and_then(|t| admin_token_ok(&admin, &identity, t, &uri.to_string()));
    if let Err(why) = checked {
        // Trustee's resource plugin applies `check_admin_access(&request)?`, whose `From` makes
        // every refusal `AdminAuthInitialization` (kbs/src/error.rs, api_server.rs).
        return unauthorized(
            "AdminAuthInitialization",
            match why.as_str() {
                "Failed to parse HTTP Auth Bearer header" => {
                    format!("failed to initialize [admin] configuration: {why}")
                }
                _ => format!(
                    "failed to initialize [admin] configuration: Admin access denied: {why}"
                ),
            },
        );
    }
    let rest = match resource_path(&path) {
        Ok(r) => r,
        Err(response) => return *response,
    };
    inner
        .resources
        .lock()
        .unwrap()
        .insert(rest.to_string(), (body.to_vec(), Policy::Allow));
    StatusCode::OK.into_response()
}
