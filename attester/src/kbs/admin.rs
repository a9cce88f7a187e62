//! Trustee's admin API, for owners' tooling (never the guest): uploading a resource with
//! `POST /kbs/v0/resource/<repo>/<type>/<tag>` and `Authorization: Bearer <admin JWT>`.
//!
//! The JWT is either made here, signed with the operator's Ed25519 key (`alg: EdDSA`), or one
//! the operator already has (an identity provider's, as Trustee's `kbs-client` now takes a token
//! file). Trustee's bearer-JWT admin (trustee 78962cd4, `kbs/src/admin/authentication/
//! bearer_jwt.rs`) verifies it against a configured key, then checks `iss` and `aud` when its
//! identity provider names them, and requires a `role` claim, which its ACL maps to the
//! endpoints allowed (`role = "admin"` in its examples). Tokens made here carry `role`
//! (default `admin`), `iat`/`nbf`/`exp` (two hours) and, when given, `iss` and `aud`.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ed25519_dalek::Signer as _;
use ed25519_dalek::pkcs8::DecodePrivateKey as _;

use ward_kbs_wire::ResourceUri;

/// Lifetime of an admin token.
pub const ADMIN_TOKEN_SECS: u64 = 2 * 3600;

/// Why an admin call failed.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    #[error("admin key: {0}")]
    Key(String),
    #[error("KBS admin configuration: {0}")]
    Config(String),
    #[error("KBS {url}: {detail}")]
    Request { url: String, detail: String },
    #[error("KBS refused {url} ({status}): {body}")]
    Refused {
        url: String,
        status: u16,
        body: String,
    },
}

/// The operator's Ed25519 signing key.
pub struct AdminKey(ed25519_dalek::SigningKey);

impl std::fmt::Debug for AdminKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AdminKey(Ed25519)")
    }
}

impl AdminKey {
    /// Reads a PKCS#8 `PRIVATE KEY` PEM (`openssl genpkey -algorithm ed25519`).
    pub fn from_pem(pem: &str) -> Result<AdminKey, AdminError> {
        ed25519_dalek::SigningKey::from_pkcs8_pem(pem)
            .map(AdminKey)
            .map_err(|e| AdminError::Key(format!("not an Ed25519 PKCS#8 PEM private key: {e}")))
    }

    /// An admin JWT with `claims`, valid from `now` (seconds since the epoch) for
    /// [`ADMIN_TOKEN_SECS`].
    pub fn token(&self, claims: &AdminClaims, now: u64) -> String {
        let header = URL_SAFE_NO_PAD.encode(br#"{"alg":"EdDSA","typ":"JWT"}"#);
        let mut body = serde_json::json!({
            "iat": now,
            "nbf": now,
            "exp": now.saturating_add(ADMIN_TOKEN_SECS),
            "role": claims.role,
        });
        if let Some(iss) = &claims.issuer {
            body["iss"] = iss.as_str().into();
        }
        if let Some(aud) = &claims.audience {
            body["aud"] = aud.as_str().into();
        }
        let claims = URL_SAFE_NO_PAD.encode(body.to_string());
        let signing_input = format!("{header}.{claims}");
        let sig = self.0.sign(signing_input.as_bytes());
        format!("{signing_input}.{}", URL_SAFE_NO_PAD.encode(sig.to_bytes()))
    }
}

/// The claims Trustee's admin authorization reads.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AdminClaims {
    /// The admin role its ACL grants endpoints to.
    pub role: String,
    /// `iss`, for an identity provider configured with an issuer.
    pub issuer: Option<String>,
    /// `aud`, for an identity provider configured with an audience.
    pub audience: Option<String>,
}

impl Default for AdminClaims {
    /// `role: admin`, the role of Trustee's example ACL.
    fn default() -> Self {
        AdminClaims {
            role: "admin".to_string(),
            issuer: None,
            audience: None,
        }
    }
}

/// How an admin call authenticates.
pub enum AdminAuth {
    /// A token made and signed here.
    Key {
        key: Box<AdminKey>,
        claims: AdminClaims,
    },
    /// A token the operator already holds (kept as given, never logged).
    Token(zeroize::Zeroizing<String>),
}

impl std::fmt::Debug for AdminAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            AdminAuth::Key { claims, .. } => write!(f, "AdminAuth::Key({claims:?})"),
            AdminAuth::Token(_) => f.write_str("AdminAuth::Token(redacted)"),
        }
    }
}

impl AdminAuth {
    fn bearer(&self) -> String {
        match self {
            AdminAuth::Key { key, claims } => key.token(claims, now()),
            AdminAuth::Token(t) => t.trim().to_string(),
        }
    }
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Uploads `value` as the resource `uri` to the KBS at `base_url` (trusting only `ca_pem` for
/// TLS when given).
pub async fn put_resource(
    base_url: &str,
    ca_pem: Option<&[u8]>,
    auth: &AdminAuth,
    uri: &ResourceUri,
    value: &[u8],
) -> Result<(), AdminError> {
    let base = base_url.trim_end_matches('/');
    if !(base.starts_with("http://") || base.starts_with("https://")) {
        return Err(AdminError::Config(format!(
            "`{base_url}` is not an http(s) URL"
        )));
    }
    let mut builder = reqwest::Client::builder()
        .timeout(std::time::Duration::from_secs(60))
        .redirect(reqwest::redirect::Policy::none())
        .no_proxy();
    if let Some(pem) = ca_pem {
        // As the guest's client trusts it: the CA, or the KBS's own self-signed certificate.
        builder = builder
            .use_preconfigured_tls(super::tls::client_config(pem).map_err(AdminError::Config)?);
    }
    let http = builder
        .build()
        .map_err(|e| AdminError::Config(format!("HTTP client: {e}")))?;
    let url = format!("{base}/kbs/v0/{}", uri.kbs_path());
    let resp = http
        .post(&url)
        .bearer_auth(auth.bearer())
        .header(reqwest::header::CONTENT_TYPE, "application/octet-stream")
        .body(value.to_vec())
        .send()
        .await
        .map_err(|e| AdminError::Request {
            url: url.clone(),
            detail: e.to_string(),
        })?;
    let status = resp.status();
    if status.is_success() {
        return Ok(());
    }
    let body = resp.text().await.unwrap_or_default();
    Err(AdminError::Refused {
        url,
        status: status.as_u16(),
        body: body.chars().take(512).collect(),
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use ed25519_dalek::Verifier as _;
    use ed25519_dalek::pkcs8::EncodePrivateKey as _;

    use super::*;

    #[test]
    fn tokens_are_eddsa_jwts_over_the_claims() {
        let sk = ed25519_dalek::SigningKey::from_bytes(&[9u8; 32]);
        let pem = sk.to_pkcs8_pem(Default::default()).unwrap();
        let key = AdminKey::from_pem(&pem).unwrap();
        let token = key.token(&AdminClaims::default(), 1_000);
        let parts: Vec<&str> = token.split('.').collect();
        assert_eq!(parts.len(), 3);
        let header: serde_json::Value =
            serde_json::from_slice(&URL_SAFE_NO_PAD.decode(parts[0]).unwrap()).unwrap();
        assert_eq!(header["alg"], "EdDSA");
        let claims: serde_json::Value =
            serde_json::from_slice(&URL_SAFE_NO_PAD.decode(parts[1]).unwrap()).unwrap();
        assert_eq!(claims["exp"], 1_000 + ADMIN_TOKEN_SECS);
        assert_eq!(
            claims["role"], "admin",
            "Trustee refuses a token without `role`"
        );
        assert!(claims.get("iss").is_none() && claims.get("aud").is_none());
        let named = key.token(
            &AdminClaims {
                role: "owner".into(),
                issuer: Some("https://idp.example".into()),
                audience: Some("kbs".into()),
            },
            1_000,
        );
        let named: serde_json::Value = serde_json::from_slice(
            &URL_SAFE_NO_PAD
                .decode(named.split('.').nth(1).unwrap())
                .unwrap(),
        )
        .unwrap();
        assert_eq!(
            (&named["role"], &named["iss"], &named["aud"]),
            (
                &serde_json::json!("owner"),
                &serde_json::json!("https://idp.example"),
                &serde_json::json!("kbs")
            )
        );
        let sig = URL_SAFE_NO_PAD.decode(parts[2]).unwrap();
        let sig = ed25519_dalek::Signature::from_slice(&sig).unwrap();
        sk.verifying_key()
            .verify(format!("{}.{}", parts[0], parts[1]).as_bytes(), &sig)
            .unwrap();
        assert!(
            AdminKey::from_pem("-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n")
                .is_err()
        );
    }
}
