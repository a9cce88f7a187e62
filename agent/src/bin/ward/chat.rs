//! `ward chat`: a prompt encrypted end to end to a key the TEE's attestation vouches for
//! (`docs/encrypted-inference.md`). Fetch `/v1/attestation` for a fresh nonce, verify it, then
//! send the prompt encrypted and print the decrypted stream.
//!
//! Verification fails closed: whatever ward chat cannot check is refused, naming the check, and
//! `--insecure` is the only way past (it then says on stderr, loudly, each check it skipped).
//! What it checks today:
//! - every kind: the report data binds the nonce, the offered HPKE key and any GPU evidence;
//! - SNP: the report signature against the VCEK/VLEK given with `--vcek` (trusted as given: its
//!   chain to AMD's root is the verified-client work), the debug policy bit (refused when set),
//!   and MEASUREMENT against `--measurement`;
//! - TDX: the DEBUG TD attribute (refused when set) and MRTD against `--measurement`. The quote's
//!   signature, PCK chain and collateral are not checked yet, so TDX needs `--insecure`;
//! - GPU evidence: bound to the key, but its SPDM signatures are not checked yet (`--insecure`);
//! - sample evidence (development only, it proves nothing): `--allow-sample`.

use std::io::Write as _;
use std::path::Path;

use anyhow::{Context, bail};
use base64::Engine as _;
use ward_attester::explain::{Explanation, TdAttributes, explain_json, verify_snp_signature};
use ward_e2e::{KeyConfig, RequestSealer, check_binding};

/// What `ward chat` needs.
pub struct ChatArgs<'a> {
    pub url: &'a str,
    pub model: &'a str,
    pub prompt: &'a str,
    pub vcek: Option<&'a Path>,
    pub measurement: Option<&'a str>,
    pub allow_sample: bool,
    /// Skip what cannot be checked instead of refusing (each skip is printed).
    pub insecure: bool,
    pub max_tokens: usize,
    pub temperature: f32,
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// The outcome of the checks: what failed, and what could not be checked.
#[derive(Default)]
struct Verdict {
    failed: Vec<String>,
    unchecked: Vec<String>,
}

impl Verdict {
    /// Refuses on any failure, and on anything unchecked unless `insecure`; a refusal names
    /// everything that failed and everything that could not be checked.
    fn conclude(self, insecure: bool) -> anyhow::Result<()> {
        let cannot = (!self.unchecked.is_empty()).then(|| {
            format!(
                "ward chat cannot check {} (--insecure skips what cannot be checked)",
                self.unchecked.join("; ")
            )
        });
        if !self.failed.is_empty() {
            let mut why = self.failed;
            why.extend(cannot.filter(|_| !insecure));
            bail!("the attestation is refused: {}", why.join("; "));
        }
        if let Some(cannot) = cannot {
            if !insecure {
                bail!("the attestation is refused: {cannot}");
            }
            for what in &self.unchecked {
                eprintln!("ward chat: INSECURE (--insecure): NOT checked: {what}");
            }
        }
        Ok(())
    }
}

/// Compares a measurement with `--measurement`, or notes that it was not pinned.
fn pin_measurement(v: &mut Verdict, name: &str, got: &[u8], want: Option<&str>) {
    match want {
        Some(want) if hex::encode(got).eq_ignore_ascii_case(want.trim()) => {
            eprintln!("ward chat: {name} matches --measurement");
        }
        Some(want) => v.failed.push(format!(
            "{name} is {}, --measurement says {want}",
            hex::encode(got)
        )),
        None => v
            .unchecked
            .push(format!("{name} (pin it with --measurement)")),
    }
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
    let mut v = Verdict::default();
    let report_data: Vec<u8> = match &evidence {
        Explanation::SampleEvidence { report_data, .. } => {
            if !a.allow_sample {
                bail!(
                    "the server offers sample evidence, which proves nothing; pass --allow-sample for development"
                );
            }
            if a.measurement.is_some() {
                v.failed
                    .push("sample evidence has no measurement to match --measurement".into());
            }
            eprintln!("ward chat: sample evidence (development): only the key binding is checked");
            report_data.clone()
        }
        Explanation::SnpEvidence { report, .. } => {
            let r = &report.report;
            match a.vcek {
                Some(p) => {
                    let der =
                        std::fs::read(p).with_context(|| format!("reading {}", p.display()))?;
                    match verify_snp_signature(report, &der) {
                        Ok(()) => eprintln!(
                            "ward chat: SNP report signature verified with {}",
                            p.display()
                        ),
                        Err(e) => v.failed.push(format!("SNP report signature: {e}")),
                    }
                }
                None => v
                    .unchecked
                    .push("the SNP report signature (give the VCEK or VLEK with --vcek)".into()),
            }
            if r.policy.debug_allowed() {
                v.failed.push(
                    "the SNP guest policy allows debugging (the host can read the guest)".into(),
                );
            }
            pin_measurement(&mut v, "SNP MEASUREMENT", &r.measurement, a.measurement);
            r.report_data.to_vec()
        }
        Explanation::TdxEvidence { quote, .. } => {
            v.unchecked.push(
                "the TDX quote's signature, PCK chain and collateral (not implemented yet)".into(),
            );
            if TdAttributes::from_bytes(quote.body.td_attributes).debug {
                v.failed
                    .push("the TD has the DEBUG attribute (the host can read the guest)".into());
            }
            pin_measurement(&mut v, "TDX MRTD", &quote.body.mr_td, a.measurement);
            quote.body.report_data.to_vec()
        }
        other => bail!("unsupported evidence kind: {other:?}"),
    };
    if gpus.is_some() {
        v.unchecked.push(
            "the GPU evidence's signatures and certificate chains (not implemented yet)".into(),
        );
    }
    if let Err(e) = check_binding(&report_data, nonce, &key_config, gpus.as_deref()) {
        v.failed.push(format!(
            "the evidence does not vouch for the offered key: {e}"
        ));
    }
    v.conclude(a.insecure)?;
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
    let (msg, mut opener) =
        RequestSealer::seal(&config, "POST", "/v1/chat/completions", &body, now())?;
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

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use base64::Engine as _;
    use ward_e2e::{ServerKey, Suite, report_data};

    use super::*;

    fn fixture(rel: &str) -> Vec<u8> {
        let path = format!(
            "{}/../../shared/fixtures/evidence/{rel}",
            env!("CARGO_MANIFEST_DIR")
        );
        std::fs::read(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
    }

    fn args(measurement: Option<&str>, insecure: bool) -> ChatArgs<'_> {
        ChatArgs {
            url: "http://127.0.0.1:1/v1",
            model: "m",
            prompt: "p",
            vcek: None,
            measurement,
            allow_sample: false,
            insecure,
            max_tokens: 1,
            temperature: 0.0,
        }
    }

    /// What a hostile host answers: a TDX quote from real hardware, edited (an invented MRTD,
    /// DEBUG set, report data binding the host's own key). Nothing signs the edit.
    fn forged_tdx(nonce: &[u8], debug: bool) -> (serde_json::Value, [u8; 48]) {
        let key = ServerKey::generate(Suite::XWing).config().encode();
        let mut quote = fixture("tdx/tdx_quote_4.dat");
        // v4 quote: a 48-byte header, then TDATTRIBUTES at body offset 120, MRTD at 136 and
        // REPORTDATA at 520.
        let mrtd = [0xab; 48];
        if debug {
            quote[48 + 120] |= 1;
        } else {
            quote[48 + 120] &= !1;
        }
        quote[48 + 136..48 + 184].copy_from_slice(&mrtd);
        quote[48 + 520..48 + 584].copy_from_slice(&report_data(nonce, &key, None));
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let std = base64::engine::general_purpose::STANDARD;
        let att = serde_json::json!({
            "evidence": {"cc_eventlog": null, "quote": std.encode(&quote)},
            "key_config": b64.encode(&key),
        });
        (att, mrtd)
    }

    #[test]
    fn a_forged_tdx_quote_is_refused() {
        let nonce = [7u8; 32];
        let (att, mrtd) = forged_tdx(&nonce, true);
        let mrtd = hex::encode(mrtd);
        // The review's case: accepted before, the prompt encrypted to the host's key.
        let e = verify(&att, &nonce, &args(None, false))
            .unwrap_err()
            .to_string();
        assert!(e.contains("DEBUG"), "{e}");
        // Even pinned to the forged MRTD, the unsigned quote is refused.
        let (att, _) = forged_tdx(&nonce, false);
        let e = verify(&att, &nonce, &args(Some(&mrtd), false))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("TDX quote's signature") && e.contains("--insecure"),
            "{e}"
        );
        // --insecure is the only way past, and only for what cannot be checked.
        assert!(verify(&att, &nonce, &args(Some(&mrtd), true)).is_ok());
        let e = verify(&att, &nonce, &args(Some(&"00".repeat(48)), true))
            .unwrap_err()
            .to_string();
        assert!(e.contains("TDX MRTD is abab"), "{e}");
        // A quote bound to another nonce fails the binding.
        let e = verify(&att, &[8u8; 32], &args(Some(&mrtd), true))
            .unwrap_err()
            .to_string();
        assert!(e.contains("does not vouch"), "{e}");
    }

    #[test]
    fn snp_needs_its_vcek_and_measurement() {
        let report =
            ward_attester::explain::parse_snp_report(&fixture("snp/test-report.bin")).unwrap();
        let att = serde_json::json!({
            "evidence": {"attestation_report": report.report, "cert_chain": null},
            "key_config": base64::engine::general_purpose::URL_SAFE_NO_PAD
                .encode(ServerKey::generate(Suite::XWing).config().encode()),
        });
        let e = verify(&att, &[1u8; 32], &args(None, false))
            .unwrap_err()
            .to_string();
        assert!(e.contains("--vcek") && e.contains("--measurement"), "{e}");
        // The real report binds another key: refused even with --insecure.
        let e = verify(&att, &[1u8; 32], &args(None, true))
            .unwrap_err()
            .to_string();
        assert!(e.contains("does not vouch"), "{e}");
    }
}
