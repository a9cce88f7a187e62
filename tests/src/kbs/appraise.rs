//! The dev KBS's appraisal: the binding recomputed from the protocol text (its own canonical
//! JSON), device evidence checked against the device binding, and its ES256 tokens.

use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use p256::ecdsa::signature::{Signer, Verifier};
use sha2::{Digest, Sha384};

use super::{Inner, now_secs};

/// The binding as the protocol text defines it: SHA-384 over the canonical JSON of
/// `{"additional-evidence", "nonce", "tee-pubkey"}` (sorted keys, no whitespace).
pub(super) fn expected_report_data(
    additional: &str,
    nonce: &str,
    pubkey: &serde_json::Value,
) -> Vec<u8> {
    // JCS (RFC 8785), as the attester writes it: keys sorted at every level, no spaces. (Not
    // serde_json's `to_string`: a dependency (dcap-qvl) turns on its `preserve_order`, and the
    // tee-pubkey's members then keep the order they arrived in.)
    let mut m = serde_json::Map::new();
    m.insert("additional-evidence".into(), additional.into());
    m.insert("nonce".into(), nonce.into());
    m.insert("tee-pubkey".into(), pubkey.clone());
    Sha384::digest(canonical(&serde_json::Value::Object(m))).to_vec()
}

/// JCS (RFC 8785) bytes of `v`.
fn canonical(v: &serde_json::Value) -> Vec<u8> {
    serde_jcs::to_vec(v).unwrap_or_default()
}

/// Checks device evidence against the device binding `SHA-384(canonical({"nonce", "tee-pubkey"}))`:
/// `sampledevice` must carry it whole as `report_data`; each NVIDIA report must echo its first 32
/// bytes as the SPDM request nonce (bytes 4..36). Returns one appraisal per device.
pub(super) fn appraise_devices(
    additional: &str,
    nonce: &str,
    pubkey: &serde_json::Value,
) -> Result<Vec<serde_json::Value>, String> {
    if additional.is_empty() {
        return Ok(Vec::new());
    }
    let map: serde_json::Map<String, serde_json::Value> = serde_json::from_str(additional)
        .map_err(|e| format!("additional_evidence is not a JSON object string: {e}"))?;
    let mut m = serde_json::Map::new();
    m.insert("nonce".into(), nonce.into());
    m.insert("tee-pubkey".into(), pubkey.clone());
    let expected = Sha384::digest(canonical(&serde_json::Value::Object(m))).to_vec();
    let mut gpus = Vec::new();
    for (tee, ev) in map {
        match tee.as_str() {
            "sampledevice" => {
                // Trustee's sample device verifier requires `svn`: evidence without it fails.
                if ev["svn"].as_str().is_none() {
                    return Err("sampledevice evidence has no `svn`".into());
                }
                let got = ev["report_data"]
                    .as_str()
                    .and_then(|s| STANDARD.decode(s).ok())
                    .unwrap_or_default();
                if got != expected {
                    return Err(
                        "sampledevice report_data does not bind this nonce and tee-pubkey".into(),
                    );
                }
                gpus.push(serde_json::json!({"ear.status": "affirming", "device": "sampledevice"}));
            }
            "nvidia" => {
                let list = ev["device_evidence_list"]
                    .as_array()
                    .ok_or("nvidia evidence has no device_evidence_list")?;
                for d in list {
                    let report = d["evidence"]
                        .as_str()
                        .and_then(|s| STANDARD.decode(s).ok())
                        .ok_or("nvidia evidence is not base64")?;
                    if report.get(4..36) != expected.get(..32) {
                        return Err(format!(
                            "GPU {} report does not echo the device nonce",
                            d["uuid"]
                        ));
                    }
                    gpus.push(serde_json::json!({
                        "ear.status": "affirming",
                        "device": "nvidia",
                        "uuid": d["uuid"],
                        "arch": d["arch"],
                    }));
                }
            }
            other => return Err(format!("the dev KBS cannot appraise `{other}` evidence")),
        }
    }
    Ok(gpus)
}

pub(super) fn sign_jwt(inner: &Inner, claims: &serde_json::Value) -> String {
    let header = URL_SAFE_NO_PAD.encode(r#"{"alg":"ES256","typ":"JWT"}"#);
    let payload = URL_SAFE_NO_PAD.encode(claims.to_string());
    let input = format!("{header}.{payload}");
    let sig: p256::ecdsa::Signature = inner.signing.lock().unwrap().sign(input.as_bytes());
    format!("{input}.{}", URL_SAFE_NO_PAD.encode(sig.to_bytes()))
}

/// Verifies one of our tokens; returns its claims.
pub(super) fn verify_jwt(inner: &Inner, token: &str) -> Result<serde_json::Value, &'static str> {
    let (input, sig) = token.rsplit_once('.').ok_or("not a JWT")?;
    let sig = URL_SAFE_NO_PAD
        .decode(sig)
        .map_err(|_| "bad signature encoding")?;
    let sig = p256::ecdsa::Signature::from_slice(&sig).map_err(|_| "bad signature")?;
    let key = *inner.signing.lock().unwrap().verifying_key();
    key.verify(input.as_bytes(), &sig)
        .map_err(|_| "signature does not verify")?;
    let payload = input.split('.').nth(1).ok_or("not a JWT")?;
    let claims: serde_json::Value = serde_json::from_slice(
        &URL_SAFE_NO_PAD
            .decode(payload)
            .map_err(|_| "bad payload encoding")?,
    )
    .map_err(|_| "payload is not JSON")?;
    if claims["exp"].as_u64().unwrap_or(0) <= now_secs() {
        return Err("token expired");
    }
    Ok(claims)
}
