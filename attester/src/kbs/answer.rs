//! Reading the KBS's answers: the session cookie, JSON bodies, and Trustee's error bodies mapped to
//! [`KbsError`]s that say whether the failure is final or worth one re-attestation.

use serde::Deserialize;
use ward_kbs_wire::ResourceUri;

use super::KbsError;

/// Name of the session cookie Trustee sets.
pub(super) const SESSION_COOKIE: &str = "kbs-session-id";

#[derive(Deserialize)]
pub(super) struct ErrorBody {
    #[serde(rename = "type", default)]
    kind: String,
    #[serde(default)]
    detail: String,
}

/// One HTTP answer, read within the size limit.
pub(super) struct Answer {
    pub(super) status: u16,
    pub(super) cookie: Option<String>,
    pub(super) body: Vec<u8>,
}

/// Extracts the session id from a `Set-Cookie` value.
pub(super) fn session_cookie(header: &str) -> Option<String> {
    let first = header.split(';').next()?.trim();
    let (name, value) = first.split_once('=')?;
    (name.trim() == SESSION_COOKIE && !value.trim().is_empty()).then(|| value.trim().to_string())
}

/// Whether `e` is the TLS handshake refusing the server's certificate (rustls'
/// `InvalidCertificate`, wherever it sits in the chain: reqwest wraps it in I/O errors inside
/// I/O errors, whose `source` skips the error they carry, so those are opened with `get_ref`).
pub(super) fn refused_certificate(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut cur = Some(e);
    while let Some(err) = cur {
        if matches!(
            err.downcast_ref::<rustls::Error>(),
            Some(rustls::Error::InvalidCertificate(_))
        ) {
            return true;
        }
        cur = match err.downcast_ref::<std::io::Error>() {
            Some(io) => io
                .get_ref()
                .map(|inner| inner as &(dyn std::error::Error + 'static)),
            None => err.source(),
        };
    }
    false
}

pub(super) fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(inner) = cur {
        s.push_str(": ");
        s.push_str(&inner.to_string());
        cur = inner.source();
    }
    s
}

pub(super) fn parse_json<T: serde::de::DeserializeOwned>(
    what: &str,
    body: &[u8],
) -> Result<T, KbsError> {
    serde_json::from_slice(body).map_err(|e| KbsError::Protocol {
        what: what.to_string(),
        detail: format!("not the expected JSON: {e}"),
    })
}

/// Maps an error answer to a [`KbsError`], reading Trustee's `{"type": ".../<Variant>"}` body.
pub(super) fn error_from(what: &str, answer: &Answer, uri: Option<&ResourceUri>) -> KbsError {
    let parsed: Option<ErrorBody> = serde_json::from_slice(&answer.body).ok();
    let (kind, detail) = match parsed {
        Some(b) => (
            b.kind.rsplit('/').next().unwrap_or_default().to_string(),
            b.detail,
        ),
        None => (
            String::new(),
            String::from_utf8_lossy(&answer.body)
                .chars()
                .take(200)
                .collect(),
        ),
    };
    let lower = kind.to_ascii_lowercase();
    match (answer.status, lower.as_str()) {
        (_, "policydeny") => KbsError::PolicyDenied {
            what: uri.map_or_else(|| what.to_string(), ToString::to_string),
            detail,
        },
        (_, "pluginnotfound") | (_, "plugininternalerror") | (404, _) if uri.is_some() => {
            KbsError::ResourceUnavailable {
                uri: uri.map(ToString::to_string).unwrap_or_default(),
                detail,
            }
        }
        (401, k)
            if k.contains("token")
                || k.contains("session")
                || k.contains("cookie")
                || k.contains("expire")
                || k.contains("jwt") =>
        {
            KbsError::Unauthorized { kind, detail }
        }
        (status, _) => KbsError::Status {
            what: what.to_string(),
            status,
            kind,
            detail,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn session_cookie_is_read_from_set_cookie() {
        assert_eq!(
            session_cookie("kbs-session-id=abc123; Expires=Wed, 21 Oct 2026 07:28:00 GMT"),
            Some("abc123".to_string())
        );
        assert_eq!(session_cookie("other=1"), None);
        assert_eq!(session_cookie("kbs-session-id=; Path=/"), None);
    }

    fn answer(status: u16, body: &str) -> Answer {
        Answer {
            status,
            cookie: None,
            body: body.as_bytes().to_vec(),
        }
    }

    #[test]
    fn trustee_errors_map_to_final_or_retryable_kinds() {
        let uri = ResourceUri::parse("kbs:///a/b/c").unwrap();
        let e = error_from(
            "GET",
            &answer(
                401,
                r#"{"type":"https://x/errors/PolicyDeny","detail":"no"}"#,
            ),
            Some(&uri),
        );
        assert!(matches!(e, KbsError::PolicyDenied { .. }), "{e}");
        let e = error_from(
            "GET",
            &answer(
                401,
                r#"{"type":"https://x/errors/PluginInternalError","detail":"x"}"#,
            ),
            Some(&uri),
        );
        assert!(matches!(e, KbsError::ResourceUnavailable { .. }), "{e}");
        let e = error_from(
            "GET",
            &answer(
                401,
                r#"{"type":"https://x/errors/TokenNotFound","detail":"x"}"#,
            ),
            Some(&uri),
        );
        assert!(e.is_session_gone(), "{e}");
        let e = error_from("GET", &answer(500, "garbage"), Some(&uri));
        assert!(matches!(e, KbsError::Status { status: 500, .. }), "{e}");
    }
}
