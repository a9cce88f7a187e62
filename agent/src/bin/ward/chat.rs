//! `ward chat`: a prompt encrypted end to end to a key the TEE's attestation vouches for
//! (`docs/encrypted-inference.md`). Fetch `/v1/attestation` for a fresh nonce, verify it, then
//! send the prompt encrypted and print the decrypted stream.
//!
//! Verification fails closed, through the verifier library (ward-verifier, `agent/verifier/`):
//! whatever ward chat cannot check is refused, naming the check, and `--insecure` is the only
//! way past (it then says on stderr, loudly, each check it skipped). A check that runs and fails
//! is refused even with `--insecure`. What it checks:
//! - every kind: the report data binds the nonce, the offered HPKE key and any GPU evidence;
//! - TDX: the quote's signature, its PCK chain to Intel's SGX root CA (pinned), the collateral
//!   given with `--tdx-collateral` (signed by Intel, fresh at the wall clock), the TCB status,
//!   the DEBUG attribute, MRTD, RTMR0-3 and MRCONFIGID against `--reference`;
//! - SNP: the VCEK/VLEK given with `--vcek` and its chain to AMD's pinned root, the report
//!   signature, the TCB, the guest policy, VMPL, MEASUREMENT and HOST_DATA against
//!   `--reference`;
//! - `--measurement HEX` pins MRTD or MEASUREMENT alone (over what `--reference` says);
//! - GPU evidence: bound to the key, but its SPDM signatures are not checked yet (`--insecure`);
//! - sample evidence (development only, it proves nothing): `--allow-sample`.

use std::io::Write as _;
use std::path::Path;

use anyhow::{Context, anyhow, bail};
use base64::Engine as _;
use ward_attester::explain::{Explanation, explain_json};
use ward_e2e::{KeyConfig, RequestSealer, check_binding};
use ward_verifier::{
    Hex, Options, ReferenceValues, ValueError, Verified,
    snp::{self, AmdCerts, SnpError},
    tdx::{self, Collateral, TdxError},
};

/// What `ward chat` needs.
pub struct ChatArgs<'a> {
    pub url: &'a str,
    pub model: &'a str,
    pub prompt: &'a str,
    /// SNP: the VCEK or VLEK (DER or PEM), or a directory with it and KDS's cert_chain.
    pub vcek: Option<&'a Path>,
    /// TDX: Intel's collateral for the quote's platform (PCS JSON).
    pub tdx_collateral: Option<&'a Path>,
    /// The reference values (docs/reference-values.md).
    pub reference: Option<&'a Path>,
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

/// The flag that supplies what a refusal says is missing.
fn hint(e: &ValueError) -> &'static str {
    match e {
        ValueError::NotPinned { .. } => {
            " (pin it with --reference or --measurement; --insecure skips what cannot be checked)"
        }
        ValueError::ReportData { .. } => " (the evidence does not vouch for the offered key)",
        ValueError::Mismatch { .. } => "",
    }
}

fn tdx_refused(e: TdxError) -> anyhow::Error {
    let hint = match &e {
        TdxError::NoCollateral => {
            " (give Intel's collateral with --tdx-collateral; --insecure skips what cannot be checked)"
        }
        TdxError::Value(v) => hint(v),
        _ => "",
    };
    anyhow!("the attestation is refused: {e}{hint}")
}

fn snp_refused(e: SnpError) -> anyhow::Error {
    let hint = match &e {
        SnpError::NoCertificate => {
            " (give the VCEK or VLEK with --vcek; --insecure skips what cannot be checked)"
        }
        SnpError::Value(v) => hint(v),
        _ => "",
    };
    anyhow!("the attestation is refused: {e}{hint}")
}

/// Prints what was verified, and loudly what --insecure skipped.
fn print_verified(v: &Verified) {
    for what in &v.checked {
        eprintln!("ward chat: verified: {what}");
    }
    for what in &v.skipped {
        eprintln!("ward chat: INSECURE (--insecure): NOT checked: {what}");
    }
}

fn pin_measurement<const N: usize>(
    measurement: Option<&str>,
    slot: &mut Option<Vec<Hex<N>>>,
) -> anyhow::Result<()> {
    if let Some(m) = measurement {
        let h: Hex<N> = m.parse().map_err(|e| anyhow!("--measurement: {e}"))?;
        *slot = Some(vec![h]);
    }
    Ok(())
}

/// Verifies the attestation answer for `nonce` as of `at`; returns the key to encrypt to.
fn verify(
    att: &serde_json::Value,
    nonce: &[u8],
    a: &ChatArgs<'_>,
    at: u64,
) -> anyhow::Result<KeyConfig> {
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let key_config = b64
        .decode(att["key_config"].as_str().context("no key_config")?)
        .context("key_config is not base64url")?;
    let gpus = match att["gpus_raw"].as_str() {
        Some(g) => Some(b64.decode(g).context("gpus_raw is not base64url")?),
        None => None,
    };
    let evidence = explain_json(&att["evidence"]).context("the evidence does not parse")?;
    let reference = match a.reference {
        Some(p) => ReferenceValues::load(p)?,
        None => ReferenceValues {
            version: 1,
            ..ReferenceValues::default()
        },
    };
    let opts = Options {
        at,
        insecure: a.insecure,
    };
    let want = ward_e2e::report_data(nonce, &key_config, gpus.as_deref());
    match &evidence {
        Explanation::SampleEvidence { report_data, .. } => {
            if !a.allow_sample {
                bail!(
                    "the server offers sample evidence, which proves nothing; pass --allow-sample for development"
                );
            }
            if a.measurement.is_some() || a.reference.is_some() {
                bail!(
                    "the attestation is refused: sample evidence has no measurement to match --measurement or --reference"
                );
            }
            eprintln!("ward chat: sample evidence (development): only the key binding is checked");
            check_binding(report_data, nonce, &key_config, gpus.as_deref()).map_err(|e| {
                anyhow!("the attestation is refused: the evidence does not vouch for the offered key: {e}")
            })?;
        }
        Explanation::SnpEvidence { report, .. } => {
            let mut r = reference.snp.clone().unwrap_or_default();
            pin_measurement(a.measurement, &mut r.measurement)?;
            let certs = a
                .vcek
                .map(AmdCerts::load)
                .transpose()
                .map_err(snp_refused)?;
            let raw = snp::report_bytes(&report.report).map_err(snp_refused)?;
            let v = snp::verify(&raw, certs.as_ref(), &r, &want, &opts).map_err(snp_refused)?;
            print_verified(&v);
        }
        Explanation::TdxEvidence { .. } => {
            let quote = base64::engine::general_purpose::STANDARD
                .decode(att["evidence"]["quote"].as_str().context("no TDX quote")?)
                .context("the TDX quote is not base64")?;
            let mut r = reference.tdx.clone().unwrap_or_default();
            pin_measurement(a.measurement, &mut r.mrtd)?;
            let collateral = a
                .tdx_collateral
                .map(Collateral::load)
                .transpose()
                .map_err(tdx_refused)?;
            let v =
                tdx::verify(&quote, collateral.as_ref(), &r, &want, &opts).map_err(tdx_refused)?;
            print_verified(&v);
        }
        other => bail!("unsupported evidence kind: {other:?}"),
    }
    if gpus.is_some() {
        let what = "the GPU evidence's signatures and certificate chains (not implemented yet)";
        if !a.insecure {
            bail!(
                "the attestation is refused: ward chat cannot check {what} (--insecure skips what cannot be checked)"
            );
        }
        eprintln!("ward chat: INSECURE (--insecure): NOT checked: {what}");
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
    let config = verify(&att, &nonce, &a, now())?;
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

    /// Inside the tdx-dcap collateral's window (2025-06-19..2025-07-19).
    const AS_OF: u64 = 1_750_377_600;

    fn fixture_path(rel: &str) -> String {
        format!(
            "{}/../../shared/fixtures/evidence/{rel}",
            env!("CARGO_MANIFEST_DIR")
        )
    }

    fn fixture(rel: &str) -> Vec<u8> {
        let path = fixture_path(rel);
        std::fs::read(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
    }

    fn args<'a>(
        measurement: Option<&'a str>,
        insecure: bool,
        collateral: Option<&'a Path>,
    ) -> ChatArgs<'a> {
        ChatArgs {
            url: "http://127.0.0.1:1/v1",
            model: "m",
            prompt: "p",
            vcek: None,
            tdx_collateral: collateral,
            reference: None,
            measurement,
            allow_sample: false,
            insecure,
            max_tokens: 1,
            temperature: 0.0,
        }
    }

    /// What a hostile host answers: the real DCAP quote, edited (an invented MRTD, DEBUG set or
    /// not, report data binding the host's own key). Nothing signs the edit.
    fn forged_tdx(nonce: &[u8], debug: bool) -> (serde_json::Value, [u8; 48]) {
        let key = ServerKey::generate(Suite::XWing).config().encode();
        let mut quote = fixture("tdx-dcap/tdx_quote");
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

    /// A reference file pinning MRTD and leaving the rest any value.
    fn reference_file(dir: &Path, mrtd: &str) -> std::path::PathBuf {
        let p = dir.join("reference.toml");
        std::fs::write(
            &p,
            format!(
                "version = 1\n[tdx]\nmrtd = [\"{mrtd}\"]\nunpinned = [\"rtmr0\", \"rtmr1\", \"rtmr2\", \"rtmr3\", \"mrconfigid\"]\n"
            ),
        )
        .unwrap();
        p
    }

    #[test]
    fn a_forged_tdx_quote_is_refused() {
        let nonce = [7u8; 32];
        let collateral = fixture_path("tdx-dcap/tdx_quote_collateral.json");
        let collateral = Some(Path::new(&collateral));
        let (att, mrtd) = forged_tdx(&nonce, false);
        let mrtd = hex::encode(mrtd);
        // The review's case, now with Intel's collateral: the quote's signature fails.
        let e = verify(&att, &nonce, &args(Some(&mrtd), false, collateral), AS_OF)
            .unwrap_err()
            .to_string();
        assert!(e.contains("does not verify to Intel's SGX root CA"), "{e}");
        // --insecure does not skip a check that ran and failed.
        let e = verify(&att, &nonce, &args(Some(&mrtd), true, collateral), AS_OF)
            .unwrap_err()
            .to_string();
        assert!(e.contains("does not verify to Intel's SGX root CA"), "{e}");
        // The same collateral at today's clock: stale, refused.
        let e = verify(&att, &nonce, &args(Some(&mrtd), false, collateral), now())
            .unwrap_err()
            .to_string();
        assert!(e.contains("stale collateral"), "{e}");
        // Without collateral, refused, naming the flag that would supply it.
        let e = verify(&att, &nonce, &args(Some(&mrtd), false, None), AS_OF)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("--tdx-collateral") && e.contains("--insecure"),
            "{e}"
        );
        // --insecure is the only way past, and only for what cannot be checked.
        assert!(verify(&att, &nonce, &args(Some(&mrtd), true, None), AS_OF).is_ok());
        let e = verify(
            &att,
            &nonce,
            &args(Some(&"00".repeat(48)), true, None),
            AS_OF,
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("tdx.mrtd is abab"), "{e}");
        let (debug, _) = forged_tdx(&nonce, true);
        let e = verify(&debug, &nonce, &args(Some(&mrtd), true, None), AS_OF)
            .unwrap_err()
            .to_string();
        assert!(e.contains("DEBUG"), "{e}");
        // A quote bound to another nonce fails the binding.
        let e = verify(&att, &[8u8; 32], &args(Some(&mrtd), true, None), AS_OF)
            .unwrap_err()
            .to_string();
        assert!(e.contains("does not vouch"), "{e}");
    }

    #[test]
    fn the_real_tdx_quote_passes_every_check_but_the_binding() {
        // Signed by Intel's chain, as of its collateral: refused only because it binds another
        // key (a real quote for this nonce cannot be made here).
        let std = base64::engine::general_purpose::STANDARD;
        let quote = fixture("tdx-dcap/tdx_quote");
        let key = ServerKey::generate(Suite::XWing).config().encode();
        let att = serde_json::json!({
            "evidence": {"cc_eventlog": null, "quote": std.encode(&quote)},
            "key_config": base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(&key),
        });
        let dir = tempfile::tempdir().unwrap();
        let reference = reference_file(dir.path(), &hex::encode(&quote[48 + 136..48 + 184]));
        let collateral = fixture_path("tdx-dcap/tdx_quote_collateral.json");
        let mut a = args(None, false, Some(Path::new(&collateral)));
        a.reference = Some(&reference);
        let e = verify(&att, &[1u8; 32], &a, AS_OF).unwrap_err().to_string();
        assert!(
            e.contains("the report data is") && e.contains("does not vouch"),
            "{e}"
        );
        // And with another MRTD in the reference, the MRTD is what fails.
        let reference = reference_file(dir.path(), &"cd".repeat(48));
        a.reference = Some(&reference);
        let e = verify(&att, &[1u8; 32], &a, AS_OF).unwrap_err().to_string();
        assert!(e.contains("tdx.mrtd is"), "{e}");
    }

    #[test]
    fn a_bad_reference_file_is_refused_by_name() {
        let (att, _) = forged_tdx(&[7u8; 32], false);
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("r.toml");
        std::fs::write(&p, "version = 1\n[tdx]\nmrtd = [\"00\"]\n").unwrap();
        let mut a = args(None, true, None);
        a.reference = Some(&p);
        let e = verify(&att, &[7u8; 32], &a, AS_OF).unwrap_err().to_string();
        assert!(e.contains("r.toml") && e.contains("1 bytes, not 48"), "{e}");
        // And sample evidence with reference values is refused: it has nothing to match.
        let att = serde_json::json!({
            "evidence": {"svn": "1", "report_data": "AAAA"},
            "key_config": base64::engine::general_purpose::URL_SAFE_NO_PAD.encode([1u8; 4]),
        });
        std::fs::write(&p, "version = 1\n").unwrap();
        a.allow_sample = true;
        let e = verify(&att, &[7u8; 32], &a, AS_OF).unwrap_err().to_string();
        assert!(e.contains("sample evidence has no measurement"), "{e}");
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
        let e = verify(&att, &[1u8; 32], &args(None, false, None), AS_OF)
            .unwrap_err()
            .to_string();
        assert!(e.contains("--vcek"), "{e}");
        // With its VCEK the chain and signature pass (the JSON form re-encodes to the signed
        // bytes); the guest policy allows SMT, which the default reference values refuse.
        let vcek = fixture_path("snp/test-vcek.der");
        let mut a = args(None, false, None);
        a.vcek = Some(Path::new(&vcek));
        let e = verify(&att, &[1u8; 32], &a, AS_OF).unwrap_err().to_string();
        assert!(e.contains("SMT"), "{e}");
        let dir = tempfile::tempdir().unwrap();
        let reference = dir.path().join("r.toml");
        std::fs::write(
            &reference,
            "version = 1\n[snp]\nallow_smt = true\nunpinned = [\"host_data\", \"min_tcb\"]\n",
        )
        .unwrap();
        a.reference = Some(&reference);
        let e = verify(&att, &[1u8; 32], &a, AS_OF).unwrap_err().to_string();
        assert!(
            e.contains("snp.measurement is not pinned") && e.contains("--measurement"),
            "{e}"
        );
        // The real report binds another key: refused even with --insecure (which skips only
        // the unpinned measurement here, and says so).
        a.insecure = true;
        let e = verify(&att, &[1u8; 32], &a, AS_OF).unwrap_err().to_string();
        assert!(e.contains("does not vouch"), "{e}");
    }
}
