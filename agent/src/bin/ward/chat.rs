//! `ward chat`: a prompt encrypted end to end to a key the TEE's attestation vouches for
//! (`docs/encrypted-inference.md`). Fetch `/v1/attestation` for a fresh nonce, verify it
//! ([`crate::attested`], shared with `ward proxy`: fails closed, `--insecure` the only way past
//! what cannot be checked), then send the prompt encrypted and print the decrypted stream.

use std::io::Write as _;

use anyhow::{Context, bail};
use ward_e2e::RequestSealer;

use crate::attested::{TrustArgs, fetch_verified_key, now};

/// What `ward chat` needs.
pub struct ChatArgs<'a> {
    pub url: &'a str,
    pub model: &'a str,
    pub prompt: &'a str,
    /// What the client trusts (`--vcek`, `--tdx-collateral`, `--reference`, ...).
    pub trust: TrustArgs,
    pub max_tokens: usize,
    pub temperature: f32,
    /// Signs the request (the model's policy may require a granted key).
    pub client_key: Option<ward_e2e::ClientKey>,
}

pub async fn chat(a: ChatArgs<'_>) -> anyhow::Result<bool> {
    let base = a.url.trim_end_matches('/');
    let http = reqwest::Client::builder()
        .no_proxy()
        .build()
        .context("HTTP client")?;
    let config = fetch_verified_key(&http, base, &a.trust).await?.key;
    let body = serde_json::json!({
        "model": a.model, "stream": true, "max_tokens": a.max_tokens, "temperature": a.temperature,
        "messages": [{"role": "user", "content": a.prompt}],
    });
    let (msg, mut opener) = RequestSealer::seal_as(
        &config,
        "POST",
        "/v1/chat/completions",
        &body,
        now(),
        a.client_key.as_ref(),
    )?;
    let mut resp = http
        .post(format!("{base}/chat/completions"))
        .header("content-type", "application/ward-e2e")
        .body(msg)
        .send()
        .await
        .with_context(|| format!("POST {base}/chat/completions"))?;
    let status = resp.status();
    let sealed = resp
        .headers()
        .get("content-type")
        .is_some_and(|v| v.as_bytes().starts_with(b"application/ward-e2e"));
    if !sealed {
        // Refused before it was opened (wardd says no more than that).
        let text = resp.text().await.unwrap_or_default();
        bail!("{status}: {text}");
    }
    let mut pending = String::new();
    let mut out = std::io::stdout();
    while let Some(bytes) = resp.chunk().await? {
        for c in opener.feed(&bytes)? {
            pending.push_str(&String::from_utf8_lossy(&c));
            if !status.is_success() {
                continue;
            }
            while let Some(end) = pending.find("\n\n") {
                let event: String = pending.drain(..end + 2).collect();
                let Some(data) = event.trim().strip_prefix("data: ") else {
                    continue;
                };
                if data == "[DONE]" {
                    continue;
                }
                let v: serde_json::Value = serde_json::from_str(data).unwrap_or_default();
                if let Some(t) = v["choices"][0]["delta"]["content"].as_str() {
                    out.write_all(t.as_bytes())?;
                    out.flush()?;
                }
            }
        }
    }
    opener.finish().context("the encrypted answer")?;
    if !status.is_success() {
        let v: serde_json::Value = serde_json::from_str(&pending).unwrap_or_default();
        bail!(
            "{status}: {}",
            v["error"]["message"].as_str().unwrap_or(pending.as_str())
        );
    }
    println!();
    Ok(true)
}
