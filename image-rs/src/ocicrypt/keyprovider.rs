//! The ocicrypt key-provider protocol (containers/ocicrypt `keywrap/keyprovider/keyprovider.go`),
//! as `keyprovider.KeyProviderService/UnWrapKey` carries it in `KeyProviderKeyWrapProtocolInput`:
//! input `{"op":"keyunwrap","keyunwrapparams":{"dc":{...},"annotation":<bytes>}}`, output
//! `{"keyunwrapresults":{"optsdata":<bytes>}}`, where `annotation` is the packet (the annotation
//! entry, base64-decoded) and `optsdata` the private options JSON.
//!
//! `<bytes>` is standard base64 in a string when Go's `encoding/json` wrote it (ocicrypt,
//! containerd, skopeo) and a JSON array of integers when serde wrote a `Vec<u8>` (CoCo's Rust
//! `ocicrypt-rs`). Both are accepted; the answer uses the form the request used, so each
//! caller reads it with the decoder it already has (Go's decoder takes both anyway).
//!
//! Owns the message format only; the unwrapping is [`super::provider`]. The answer holds the
//! layer key: it is returned zeroizing and never logged.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use serde::Deserialize;
use serde_json::Value;
use zeroize::Zeroizing;

use super::provider::{ProviderError, unwrap_packet};
use crate::kbs::KbsResources;

/// Largest request accepted.
pub const MAX_REQUEST_BYTES: usize = 1 << 20;

/// Why a key-provider request was refused.
#[derive(Debug, thiserror::Error)]
pub enum KeyProviderError {
    /// Not the protocol JSON, or a byte field that is neither base64 nor a byte array.
    #[error("malformed key-provider request: {0}")]
    Malformed(String),
    /// An operation other than `keyunwrap` (ward holds no wrapping keys for others).
    #[error("key-provider operation `{0}` is not supported (only `keyunwrap`)")]
    Operation(String),
    /// The packet did not unwrap.
    #[error("key-provider unwrap")]
    Provider(#[from] ProviderError),
}

/// A byte field in either encoding.
#[derive(Deserialize)]
#[serde(untagged)]
enum Bytes {
    Base64(String),
    Array(Vec<u8>),
}

impl Bytes {
    fn decode(self, field: &str) -> Result<Vec<u8>, KeyProviderError> {
        match self {
            Bytes::Base64(s) => STANDARD
                .decode(s.trim())
                .map_err(|_| KeyProviderError::Malformed(format!("`{field}` is not base64"))),
            Bytes::Array(a) => Ok(a),
        }
    }
}

#[derive(Deserialize)]
struct Input {
    op: String,
    #[serde(default)]
    keyunwrapparams: Option<UnwrapParams>,
}

#[derive(Deserialize)]
struct UnwrapParams {
    /// The decrypt config; CoCo's provider ignores it, and so does ward.
    #[serde(default)]
    #[allow(dead_code)]
    dc: Option<Value>,
    #[serde(default)]
    annotation: Option<Bytes>,
}

/// Answers one `UnWrapKey` request: unwraps the packet in `input` (its annotation as a base64
/// string, as Go's ocicrypt writes `[]byte`, or an integer array, as CoCo's Rust does) with KEKs
/// from `kek` and returns the output JSON with `optsdata` as an integer array, always: that is
/// what CoCo's key provider answers, what ocicrypt-rs (CoCo's own client) parses ("expected a
/// sequence" otherwise), and what Go's `encoding/json` also decodes into `[]byte`.
pub async fn unwrap_key_request(
    input: &[u8],
    kek: &dyn KbsResources,
) -> Result<Zeroizing<Vec<u8>>, KeyProviderError> {
    if input.len() > MAX_REQUEST_BYTES {
        return Err(KeyProviderError::Malformed(format!(
            "{} bytes is more than the {MAX_REQUEST_BYTES} accepted",
            input.len()
        )));
    }
    let req: Input = serde_json::from_slice(input)
        .map_err(|e| KeyProviderError::Malformed(format!("not protocol JSON: {e}")))?;
    if req.op != "keyunwrap" {
        return Err(KeyProviderError::Operation(req.op));
    }
    let packet = req
        .keyunwrapparams
        .and_then(|p| p.annotation)
        .ok_or_else(|| KeyProviderError::Malformed("no `keyunwrapparams.annotation`".to_string()))?
        .decode("keyunwrapparams.annotation")?;
    let opts = unwrap_packet(&packet, kek).await?;
    Ok(unwrap_output(&opts))
}

/// `{"keyunwrapresults":{"optsdata":..}}`, written by hand so no copy of the key is left in
/// an unzeroized `serde_json::Value`.
fn unwrap_output(opts: &[u8]) -> Zeroizing<Vec<u8>> {
    let mut out = Zeroizing::new(Vec::with_capacity(opts.len() * 4 + 40));
    out.extend_from_slice(br#"{"keyunwrapresults":{"optsdata":["#);
    for (i, b) in opts.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        let mut digits = [0u8; 3];
        let mut n = *b;
        let mut len = 0;
        loop {
            if let Some(d) = digits.get_mut(len) {
                *d = b'0' + n % 10;
            }
            len += 1;
            n /= 10;
            if n == 0 {
                break;
            }
        }
        out.extend(digits.iter().take(len).rev());
        digits.fill(0);
    }
    out.extend_from_slice(b"]}}");
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ocicrypt::provider::tests::keks;
    use crate::ocicrypt::provider::{PacketVersion, wrap_packet};

    fn packet() -> Vec<u8> {
        wrap_packet(
            &[5; 32],
            "kbs:///default/key/1",
            br#"{"symkey":"k"}"#,
            PacketVersion::V2,
        )
        .unwrap()
    }

    fn optsdata(out: &[u8]) -> Value {
        let v: Value = serde_json::from_slice(out).unwrap();
        v["keyunwrapresults"]["optsdata"].clone()
    }

    /// Go's `encoding/json` writes `[]byte` as base64 strings; the answer is CoCo's integer array
    /// all the same (ocicrypt-rs failed on a string with "expected a sequence").
    #[tokio::test]
    async fn base64_request_gets_an_array_answer() {
        let req = serde_json::json!({
            "op": "keyunwrap",
            "keywrapparams": {},
            "keyunwrapparams": {"dc": {"Parameters": {}}, "annotation": STANDARD.encode(packet())},
        });
        let out = unwrap_key_request(&serde_json::to_vec(&req).unwrap(), &keks())
            .await
            .unwrap();
        let got: Vec<u8> = serde_json::from_value(optsdata(&out)).unwrap();
        assert_eq!(got, br#"{"symkey":"k"}"#);
    }

    /// CoCo's Rust writes `Vec<u8>` as integer arrays.
    #[tokio::test]
    async fn array_request_gets_array_answer() {
        let req = serde_json::json!({
            "op": "keyunwrap",
            "keywrapparams": {"ec": null, "optsdata": null},
            "keyunwrapparams": {"dc": null, "annotation": packet()},
        });
        let out = unwrap_key_request(&serde_json::to_vec(&req).unwrap(), &keks())
            .await
            .unwrap();
        let got: Vec<u8> = serde_json::from_value(optsdata(&out)).unwrap();
        assert_eq!(got, br#"{"symkey":"k"}"#);
    }

    #[test]
    fn array_output_is_valid_json_for_every_byte() {
        let all: Vec<u8> = (0..=255).collect();
        let out = unwrap_output(&all);
        let got: Vec<u8> = serde_json::from_value(optsdata(&out)).unwrap();
        assert_eq!(got, all);
    }

    #[tokio::test]
    async fn refusals() {
        let wrap = br#"{"op":"keywrap","keywrapparams":{}}"#;
        assert!(matches!(
            unwrap_key_request(wrap, &keks()).await,
            Err(KeyProviderError::Operation(op)) if op == "keywrap"
        ));
        let none = br#"{"op":"keyunwrap","keyunwrapparams":{"dc":null}}"#;
        assert!(matches!(
            unwrap_key_request(none, &keks()).await,
            Err(KeyProviderError::Malformed(_))
        ));
        let bad = br#"{"op":"keyunwrap","keyunwrapparams":{"annotation":"%%%"}}"#;
        assert!(matches!(
            unwrap_key_request(bad, &keks()).await,
            Err(KeyProviderError::Malformed(_))
        ));
        let wrong_kek =
            wrap_packet(&[1; 32], "kbs:///default/key/1", b"x", PacketVersion::V1).unwrap();
        let req =
            serde_json::json!({"op": "keyunwrap", "keyunwrapparams": {"annotation": wrong_kek}});
        assert!(matches!(
            unwrap_key_request(&serde_json::to_vec(&req).unwrap(), &keks()).await,
            Err(KeyProviderError::Provider(
                ProviderError::Authentication { .. }
            ))
        ));
    }
}
