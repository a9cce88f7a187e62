//! The attestation token (an EAR JWT) the KBS returns: kept as it came (it is a bearer secret,
//! never logged) plus the few claims the client reads. The guest does not verify the KBS's
//! signature on it: it only presents the token back to the same KBS, which does.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use zeroize::Zeroizing;

/// Why a token could not be read.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("the KBS token is not a JWT with a JSON payload: {0}")]
pub struct TokenError(String);

/// A token and the claims ward uses.
pub struct Token {
    raw: Zeroizing<String>,
    claims: serde_json::Value,
    expires: Option<SystemTime>,
}

impl Token {
    /// Splits the JWT and decodes its payload.
    pub fn parse(raw: String) -> Result<Token, TokenError> {
        let raw = Zeroizing::new(raw);
        let mut parts = raw.split('.');
        let (Some(_header), Some(payload), Some(_sig), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(TokenError("expected three dot-separated parts".to_string()));
        };
        let bytes = URL_SAFE_NO_PAD
            .decode(payload.trim_end_matches('='))
            .map_err(|e| TokenError(e.to_string()))?;
        let claims: serde_json::Value =
            serde_json::from_slice(&bytes).map_err(|e| TokenError(e.to_string()))?;
        if !claims.is_object() {
            return Err(TokenError("the payload is not a JSON object".to_string()));
        }
        // `exp` comes from the wire: a value past what `SystemTime` holds is refused, not added
        // (`UNIX_EPOCH + u64::MAX s` panics, and a panic in PID 1 powers the guest off).
        let expires =
            match claims["exp"].as_u64() {
                Some(s) => Some(UNIX_EPOCH.checked_add(Duration::from_secs(s)).ok_or_else(
                    || {
                        TokenError(format!(
                            "exp {s} is past any time this system can represent"
                        ))
                    },
                )?),
                None => None,
            };
        Ok(Token {
            raw,
            claims,
            expires,
        })
    }

    /// The JWT as received, for `Authorization: Bearer`.
    pub fn as_str(&self) -> &str {
        &self.raw
    }

    /// The decoded claims (public: they describe the appraisal, not a secret).
    pub fn claims(&self) -> &serde_json::Value {
        &self.claims
    }

    /// Whether the token expires within `margin` from now.
    pub fn expires_within(&self, margin: Duration) -> bool {
        self.expires.is_some_and(|exp| {
            SystemTime::now()
                .checked_add(margin)
                .is_none_or(|soon| soon >= exp)
        })
    }

    /// The `submods` names the KBS appraised (`cpu0`, `gpu0`, ...).
    pub fn submods(&self) -> Vec<String> {
        self.claims["submods"]
            .as_object()
            .map(|m| m.keys().cloned().collect())
            .unwrap_or_default()
    }
}

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Token(submods: {:?}, raw redacted)", self.submods())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn jwt(claims: &str) -> String {
        format!(
            "{}.{}.sig",
            URL_SAFE_NO_PAD.encode(r#"{"alg":"ES256"}"#),
            URL_SAFE_NO_PAD.encode(claims)
        )
    }

    #[test]
    fn reads_claims_and_expiry() {
        let t = Token::parse(jwt(r#"{"exp":1,"submods":{"cpu0":{},"gpu0":{}}}"#)).unwrap();
        assert!(t.expires_within(Duration::ZERO));
        assert_eq!(t.submods(), vec!["cpu0", "gpu0"]);
        let far = Token::parse(jwt(r#"{"exp":99999999999}"#)).unwrap();
        assert!(!far.expires_within(Duration::from_secs(60)));
        let none = Token::parse(jwt("{}")).unwrap();
        assert!(!none.expires_within(Duration::from_secs(60)));
        assert!(!format!("{t:?}").contains("sig"));
    }

    /// A KBS (or whoever answers in its place) naming an `exp` that `SystemTime` cannot hold gets
    /// a typed error; adding it panicked, and as PID 1 a panic powers the guest off.
    #[test]
    fn huge_exp_is_an_error_not_a_panic() {
        for exp in [u64::MAX, i64::MAX as u64 + 1] {
            let e = Token::parse(jwt(&format!(r#"{{"exp":{exp}}}"#))).unwrap_err();
            assert!(e.to_string().contains("past any time"), "{e}");
        }
        let far = Token::parse(jwt(r#"{"exp":99999999999}"#)).unwrap();
        assert!(
            far.expires_within(Duration::MAX),
            "an unrepresentable margin means soon"
        );
    }

    #[test]
    fn refuses_non_jwts() {
        for bad in ["", "a.b", "a.b.c.d", "a.!!!.c", &jwt("[1]"), &jwt("nope")] {
            assert!(Token::parse(bad.to_string()).is_err(), "{bad}");
        }
    }
}
