//! The inference part of the self-check: what a remote client of an inference listener does,
//! over ttrpc. It asks for a model that does not exist, so no generation runs and nothing but
//! the word "self-check" is ever sent.

use std::time::Duration;

use base64::Engine as _;
use ward_e2e::{KeyConfig, RequestSealer, report_data};
use ward_protos::ward_inference::{AttestationRequest, InferenceRequest, InferenceResponse};
use ward_protos::ward_inference_ttrpc::InferenceServiceClient;

/// A model name no one serves.
const PROBE_MODEL: &str = "ward-self-check";

fn json(r: &InferenceResponse) -> Result<serde_json::Value, String> {
    serde_json::from_slice(&r.body).map_err(|e| format!("the answer is not JSON: {e}"))
}

/// Attestation, an encrypted request answered (sealed) with OpenAI's 404 for an unknown model,
/// and, when `encrypted_only`, plaintext refused with 415.
pub(super) async fn check(
    addr: &str,
    encrypted_only: bool,
    timeout: Duration,
) -> Result<(), String> {
    let client = ttrpc::asynchronous::Client::connect(addr)
        .await
        .map_err(|e| format!("cannot connect: {e}"))?;
    let c = InferenceServiceClient::new(client);
    let ctx =
        || ttrpc::context::with_timeout(i64::try_from(timeout.as_nanos()).unwrap_or(i64::MAX));
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;

    let nonce: [u8; 32] = rand::random();
    let att = c
        .attestation(
            ctx(),
            &AttestationRequest {
                nonce: nonce.to_vec(),
                ..Default::default()
            },
        )
        .await
        .map_err(|e| format!("Attestation: {e}"))?;
    if att.status != 200 {
        return Err(format!("Attestation answered {}", att.status));
    }
    let att = json(&att)?;
    let field = |name: &str| att[name].as_str().unwrap_or_default().to_string();
    let key_config = b64
        .decode(field("key_config"))
        .map_err(|_| "the key configuration is not base64url".to_string())?;
    let gpus = match att["gpus_raw"].as_str() {
        Some(g) => Some(
            b64.decode(g)
                .map_err(|_| "the GPU evidence is not base64url".to_string())?,
        ),
        None => None,
    };
    if hex::encode(report_data(&nonce, &key_config, gpus.as_deref())) != field("report_data") {
        return Err("the report data does not bind the nonce and the key".into());
    }
    let key = KeyConfig::decode(&key_config).map_err(|e| e.to_string())?;

    let body = serde_json::json!({"model": PROBE_MODEL, "max_tokens": 1,
        "messages": [{"role": "user", "content": "self-check"}]});
    if encrypted_only {
        let plain = c
            .chat_completion(
                ctx(),
                &InferenceRequest {
                    content_type: "application/json".into(),
                    body: body.to_string().into_bytes(),
                    ..Default::default()
                },
            )
            .await
            .map_err(|e| format!("ChatCompletion: {e}"))?;
        if plain.status != 415 {
            return Err(format!(
                "plaintext answered {} on an encrypted-only listener",
                plain.status
            ));
        }
    }
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let (msg, opener) = RequestSealer::seal(&key, "POST", "/v1/chat/completions", &body, now)
        .map_err(|e| e.to_string())?;
    let sealed = c
        .chat_completion(
            ctx(),
            &InferenceRequest {
                content_type: "application/ward-e2e".into(),
                body: msg,
                ..Default::default()
            },
        )
        .await
        .map_err(|e| format!("encrypted ChatCompletion: {e}"))?;
    if sealed.status != 404 || sealed.content_type != "application/ward-e2e" {
        return Err(format!(
            "the encrypted request answered {} ({})",
            sealed.status, sealed.content_type
        ));
    }
    let answer = opener
        .open_whole(&sealed.body)
        .map_err(|e| format!("the sealed answer does not open: {e}"))?;
    let answer: serde_json::Value = serde_json::from_slice(&answer)
        .map_err(|e| format!("the opened answer is not JSON: {e}"))?;
    if answer["error"]["code"] != "model_not_found" {
        return Err("the opened answer is not OpenAI's model_not_found".into());
    }
    Ok(())
}
