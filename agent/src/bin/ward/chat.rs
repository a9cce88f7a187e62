//! `ward chat`: a prompt encrypted end to end to a key the TEE's attestation vouches for
//! (`docs/encrypted-inference.md`). Fetch `/v1/attestation` for a fresh nonce, verify it (sample:
//! the binding only, which proves nothing about hardware; SNP: the binding, the report signature
//! against a VCEK/VLEK given with --vcek, and the launch measurement with --measurement; TDX: the
//! binding and MRTD with --measurement, without Intel's collateral), then send the prompt
//! encrypted and print the decrypted stream. Any mismatch names what did not match.

use std::io::Write as _;
use std::path::Path;

use anyhow::{Context, bail};
use base64::Engine as _;
use ward_attester::explain::{Explanation, explain_json, verify_snp_signature};
use ward_e2e::{KeyConfig, RequestSealer, check_binding};

/// What `ward chat` needs.
pub struct ChatArgs<'a> {
    pub url: &'a str,
    pub model: &'a str,
    pub prompt: &'a str,
    pub vcek: Option<&'a Path>,
    pub measurement: Option<&'a str>,
    pub allow_sample: bool,
    pub max_tokens: usize,
    pub temperature: f32,
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Verifies the attestation answer for `nonce`; returns the key to encrypt to.
fn verify(att: &serde_json::Value, nonce: &[u8], a: &ChatArgs<'_>) -> anyhow::Result<KeyConfig> {
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let key_config = b64
        .decode(att["key_config"].as_str().context("no key_config")?)
        .context("key_config is not base64url")?;
    let gpus = match att["gpus_raw"].as_str() {
        Some(g) => Some(b64.decode(g).context("gpus_raw is not base64url")?),
        None => None,
    };
    let evidence = explain_json(&att["evidence"]).context("the evidence does not parse")?;
    let (report_data, measurement): (Vec<u8>, Option<Vec<u8>>) = match &evidence {
        Explanation::SampleEvidence { report_data, .. } => {
            if !a.allow_sample {
                bail!(
                    "the server offers sample evidence, which proves nothing; pass --allow-sample for development"
                );
            }
            eprintln!("ward chat: sample evidence (development): only the key binding is checked");
            (report_data.clone(), None)
        }
        Explanation::SnpEvidence { report, .. } => {
            match a.vcek {
                Some(p) => {
                    let der =
                        std::fs::read(p).with_context(|| format!("reading {}", p.display()))?;
                    verify_snp_signature(report, &der).context("SNP report signature")?;
                    eprintln!(
                        "ward chat: SNP report signature verified with {}",
                        p.display()
                    );
                }
                None => eprintln!("ward chat: SNP report signature NOT checked (no --vcek)"),
            }
            (
                report.report.report_data.to_vec(),
                Some(report.report.measurement.to_vec()),
            )
        }
        Explanation::TdxEvidence { quote, .. } => {
            eprintln!("ward chat: TDX quote signature not checked here (needs Intel's collateral)");
            (
                quote.body.report_data.to_vec(),
                Some(quote.body.mr_td.to_vec()),
            )
        }
        other => bail!("unsupported evidence kind: {other:?}"),
    };
    check_binding(&report_data, nonce, &key_config, gpus.as_deref())
        .context("the attestation does not vouch for this key")?;
    if let Some(want) = a.measurement {
        let got = measurement.map(hex::encode).unwrap_or_default();
        if !got.eq_ignore_ascii_case(want) {
            bail!("launch measurement is {got}, expected {want}");
        }
    }
    KeyConfig::decode(&key_config).context("key_config")
}

pub async fn chat(a: ChatArgs<'_>) -> anyhow::Result<bool> {
    let base = a.url.trim_end_matches('/');
    let http = reqwest::Client::builder()
        .no_proxy()
        .build()
        .context("HTTP client")?;
    let nonce: [u8; 32] = rand::random();
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let att: serde_json::Value = http
        .get(format!("{base}/attestation?nonce={}", b64.encode(nonce)))
        .send()
        .await
        .with_context(|| format!("GET {base}/attestation"))?
        .error_for_status()?
        .json()
        .await
        .context("attestation answer")?;
    let config = verify(&att, &nonce, &a)?;
    let body = serde_json::json!({
        "model": a.model, "stream": true, "max_tokens": a.max_tokens, "temperature": a.temperature,
        "messages": [{"role": "user", "content": a.prompt}],
    });
    let (msg, mut opener) = RequestSealer::seal(&config, &body, now())?;
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
