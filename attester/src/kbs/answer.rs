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
    pub(super) cookie: Option<SessionCookie>,
    pub(super) body: Vec<u8>,
}

/// The KBS session cookie: its id, and when the KBS said it expires (`Expires`, or `Max-Age`
/// from when it was received), after which the session is gone on the KBS's side.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct SessionCookie {
    pub(super) id: String,
    pub(super) expires: Option<std::time::SystemTime>,
}

/// Extracts the session cookie from a `Set-Cookie` value.
pub(super) fn session_cookie(header: &str) -> Option<SessionCookie> {
    let mut parts = header.split(';');
    let first = parts.next()?.trim();
    let (name, value) = first.split_once('=')?;
    if name.trim() != SESSION_COOKIE || value.trim().is_empty() {
        return None;
    }
    let mut expires = None;
    for attr in parts {
        let (k, v) = attr.split_once('=').unwrap_or((attr, ""));
        let (k, v) = (k.trim(), v.trim());
        if k.eq_ignore_ascii_case("max-age") {
            // Max-Age wins over Expires (RFC 6265 5.3).
            if let Ok(secs) = v.parse::<u64>() {
                expires =
                    std::time::SystemTime::now().checked_add(std::time::Duration::from_secs(secs));
                break;
            }
        } else if k.eq_ignore_ascii_case("expires") {
            expires = http_date(v).or(expires);
        }
    }
    Some(SessionCookie {
        id: value.trim().to_string(),
        expires,
    })
}

/// An IMF-fixdate (`Wed, 21 Oct 2026 07:28:00 GMT`), as actix writes cookie expiry.
fn http_date(v: &str) -> Option<std::time::SystemTime> {
    let format = time::macros::format_description!(
        "[weekday repr:short], [day] [month repr:short] [year] [hour]:[minute]:[second] GMT"
    );
    let t = time::PrimitiveDateTime::parse(v, format).ok()?.assume_utc();
    let secs = u64::try_from(t.unix_timestamp()).ok()?;
    std::time::UNIX_EPOCH.checked_add(std::time::Duration::from_secs(secs))
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
        let c =
            session_cookie("kbs-session-id=abc123; Expires=Wed, 21 Oct 2026 07:28:00 GMT").unwrap();
        assert_eq!(c.id, "abc123");
        assert_eq!(
            c.expires,
            Some(std::time::UNIX_EPOCH + std::time::Duration::from_secs(1_792_567_680))
        );
        let c =
            session_cookie("kbs-session-id=x; Expires=Wed, 21 Oct 2026 07:28:00 GMT; Max-Age=0")
                .unwrap();
        assert!(
            c.expires.unwrap() <= std::time::SystemTime::now(),
            "Max-Age wins"
        );
        assert_eq!(session_cookie("kbs-session-id=y").unwrap().expires, None);
        assert_eq!(
            session_cookie("kbs-session-id=z; Expires=garbage")
                .unwrap()
                .expires,
            None
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
