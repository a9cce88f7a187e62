//! The client's check of a server's attestation, shared by `ward chat` and `ward proxy`
//! (`docs/encrypted-inference.md`): fetch `GET /v1/attestation` for a fresh nonce, verify the
//! evidence with the verifier library (ward-verifier, `agent/verifier/`) and the key binding,
//! and return the key to encrypt to.
//!
//! Verification fails closed: whatever cannot be checked is refused, naming the check, and
//! `--insecure` is the only way past (it then says on stderr, loudly, each check it skipped). A
//! check that runs and fails is refused even with `--insecure`. What it checks:
//! - every kind: the report data binds the nonce, the offered HPKE key and any GPU evidence;
//! - TDX: the quote's signature, its PCK chain to Intel's SGX root CA (pinned), the collateral
//!   given with `--tdx-collateral` (signed by Intel, fresh at the wall clock), the TCB status,
//!   the DEBUG attribute, MRTD, RTMR0-3 and MRCONFIGID against `--reference`;
//! - SNP: the VCEK/VLEK given with `--vcek` (else the one the evidence's certificate table
//!   carries, which the host fills: safe, since it is held to the same chain) and its chain to AMD's pinned root, the report
//!   signature, the TCB, the guest policy, VMPL, MEASUREMENT and HOST_DATA against
//!   `--reference`;
//! - Azure vTPM (SNP or TDX behind the paravisor): the vTPM quote's signature by the key the
//!   HCL report holds, its nonce, its PCRs, the hardware report's binding of that key, then the
//!   SNP report or TD quote as above (SNP: the VCEK the evidence carries unless `--vcek`), and
//!   the PCRs `--reference`'s `[vtpm]` pins;
//! - `--measurement HEX` pins MRTD or MEASUREMENT alone (over what `--reference` says);
//! - NVIDIA GPU evidence: bound by the CPU's report data, then each report's nonce, its
//!   signature, its chain to NVIDIA's pinned root, and the driver and VBIOS versions, the
//!   measurements and the number of GPUs against `--reference`'s `[gpu]`;
//! - sample evidence (development only, it proves nothing): `--allow-sample`.

use std::path::PathBuf;

use anyhow::{Context, anyhow, bail};
use base64::Engine as _;
use ward_attester::explain::{Explanation, explain_json};
use ward_e2e::{KeyConfig, check_binding};
use ward_verifier::{
    Hex, Options, ReferenceValues, ValueError, Verified, azure, nvidia,
    snp::{self, AmdCerts, SnpError},
    tdx::{self, Collateral, TdxError},
};

/// What the client trusts, from the command line: the same flags for `ward chat` and
/// `ward proxy`.
#[derive(Clone, Debug, Default, clap::Args)]
pub struct TrustArgs {
    /// The command, for what it prints (`ward chat`, `ward proxy`).
    #[arg(skip)]
    pub who: &'static str,
    /// SNP: the VCEK or VLEK (DER or PEM, as AMD KDS serves it), or a directory holding it
    /// and KDS's cert_chain and crl; checked up to AMD's pinned root. Never fetched; without
    /// it, the certificates the evidence carries.
    #[arg(long)]
    pub vcek: Option<PathBuf>,
    /// TDX: Intel's collateral for the quote's platform (TCB info, QE identity, CRLs and
    /// their chains, as PCS serves them, in one JSON file), or a directory of such files (a
    /// cache: the one for the quote's FMSPC that is fresh is used); checked up to Intel's
    /// pinned root and for freshness at the wall clock. Never fetched.
    #[arg(long)]
    pub tdx_collateral: Option<PathBuf>,
    /// The reference values the evidence must match (docs/reference-values.md).
    #[arg(long)]
    pub reference: Option<PathBuf>,
    /// The expected launch measurement (SNP MEASUREMENT or TDX MRTD), hex; over what
    /// --reference says.
    #[arg(long)]
    pub measurement: Option<String>,
    /// Accept sample evidence (development only: it proves nothing about hardware).
    #[arg(long)]
    pub allow_sample: bool,
    /// Encrypt to the key even where the evidence cannot be fully checked (no collateral,
    /// no --vcek, a value the reference values do not pin); every skipped check is printed.
    /// A check that runs and fails is refused even so.
    #[arg(long)]
    pub insecure: bool,
}

/// The largest attestation answer read (evidence, GPU reports and chains, certificate tables).
const MAX_ATTESTATION: usize = 4 << 20;

/// The key a verified attestation vouches for.
#[derive(Clone, Debug)]
pub struct VerifiedKey {
    pub key: KeyConfig,
    /// The key configuration's encoding, to notice a change of key.
    pub encoded: Vec<u8>,
}

/// Fetches `{base}/attestation` for a fresh nonce and verifies it at the wall clock; the key to
/// encrypt to, or why it is refused.
pub async fn fetch_verified_key(
    http: &reqwest::Client,
    base: &str,
    trust: &TrustArgs,
) -> anyhow::Result<VerifiedKey> {
    let nonce: [u8; 32] = rand::random();
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let mut resp = http
        .get(format!("{base}/attestation?nonce={}", b64.encode(nonce)))
        .send()
        .await
        .with_context(|| format!("GET {base}/attestation"))?
        .error_for_status()
        .with_context(|| format!("GET {base}/attestation"))?;
    // Whoever is on the path answers this before anything is verified: read at most
    // MAX_ATTESTATION bytes (eight GPUs' evidence is about 100 KiB) rather than whatever it sends.
    let mut body = Vec::new();
    while let Some(chunk) = resp.chunk().await.context("the attestation answer")? {
        if body.len().saturating_add(chunk.len()) > MAX_ATTESTATION {
            bail!("the attestation answer is larger than {MAX_ATTESTATION} bytes: refused");
        }
        body.extend_from_slice(&chunk);
    }
    let att: serde_json::Value =
        serde_json::from_slice(&body).context("the attestation answer is not JSON")?;
    let key = verify_answer(&att, &nonce, trust, now())?;
    Ok(VerifiedKey {
        encoded: key.encode(),
        key,
    })
}

pub fn now() -> u64 {
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

fn azure_refused(e: azure::AzureError) -> anyhow::Error {
    match e {
        azure::AzureError::Snp(e) => snp_refused(e),
        azure::AzureError::Tdx(e) => tdx_refused(e),
        azure::AzureError::Value(v) => {
            let hint = hint(&v);
            anyhow!("the attestation is refused: {v}{hint}")
        }
        e => anyhow!("the attestation is refused: {e}"),
    }
}

fn gpu_refused(e: nvidia::GpuError) -> anyhow::Error {
    let hint = match &e {
        nvidia::GpuError::Value(v) => hint(v),
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
fn print_verified(who: &str, v: &Verified) {
    for what in &v.checked {
        eprintln!("{who}: verified: {what}");
    }
    for what in &v.skipped {
        eprintln!("{who}: INSECURE (--insecure): NOT checked: {what}");
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
pub fn verify_answer(
    att: &serde_json::Value,
    nonce: &[u8],
    a: &TrustArgs,
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
    let reference = match &a.reference {
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
            eprintln!(
                "{}: sample evidence (development): only the key binding is checked",
                a.who
            );
            check_binding(report_data, nonce, &key_config, gpus.as_deref()).map_err(|e| {
                anyhow!("the attestation is refused: the evidence does not vouch for the offered key: {e}")
            })?;
        }
        Explanation::SnpEvidence { report, .. } => {
            let mut r = reference.snp.clone().unwrap_or_default();
            pin_measurement(a.measurement.as_deref(), &mut r.measurement)?;
            let certs = match a.vcek.as_deref() {
                Some(p) => Some(AmdCerts::load(p).map_err(snp_refused)?),
                None => {
                    let carried = AmdCerts::from_cert_table(&att["evidence"]["cert_chain"])
                        .map_err(snp_refused)?;
                    if carried.is_some() {
                        eprintln!(
                            "{}: using the certificates the evidence carries (the host's certificate table; they must chain to AMD's pinned root like any other)",
                            a.who
                        );
                    }
                    carried
                }
            };
            let raw = snp::report_bytes(&report.report).map_err(snp_refused)?;
            let v = snp::verify(&raw, certs.as_ref(), &r, &want, &opts).map_err(snp_refused)?;
            print_verified(a.who, &v);
        }
        Explanation::TdxEvidence { .. } => {
            let quote = base64::engine::general_purpose::STANDARD
                .decode(att["evidence"]["quote"].as_str().context("no TDX quote")?)
                .context("the TDX quote is not base64")?;
            let mut r = reference.tdx.clone().unwrap_or_default();
            pin_measurement(a.measurement.as_deref(), &mut r.mrtd)?;
            let collateral = a
                .tdx_collateral
                .as_deref()
                .map(|p| Collateral::for_quote(p, &quote, at))
                .transpose()
                .map_err(tdx_refused)?;
            let v =
                tdx::verify(&quote, collateral.as_ref(), &r, &want, &opts).map_err(tdx_refused)?;
            print_verified(a.who, &v);
        }
        Explanation::Azure(az) => {
            let mut r = reference.clone();
            if az.td_quote.is_some() {
                let mut t = r.tdx.unwrap_or_default();
                pin_measurement(a.measurement.as_deref(), &mut t.mrtd)?;
                r.tdx = Some(t);
            } else {
                let mut s = r.snp.unwrap_or_default();
                pin_measurement(a.measurement.as_deref(), &mut s.measurement)?;
                r.snp = Some(s);
            }
            let certs = a
                .vcek
                .as_deref()
                .map(AmdCerts::load)
                .transpose()
                .map_err(snp_refused)?;
            let td_quote = att["evidence"]["td_quote"].as_str().and_then(|q| {
                base64::engine::general_purpose::URL_SAFE_NO_PAD
                    .decode(q.trim_end_matches('='))
                    .ok()
            });
            let collateral = match (a.tdx_collateral.as_deref(), td_quote) {
                (Some(p), Some(q)) => Some(Collateral::for_quote(p, &q, at)),
                (Some(p), None) => Some(Collateral::load(p)),
                (None, _) => None,
            }
            .transpose()
            .map_err(tdx_refused)?;
            let vouchers = azure::Vouchers {
                amd: certs.as_ref(),
                intel: collateral.as_ref(),
            };
            let v = azure::verify(&att["evidence"], &vouchers, &r, &want, &opts)
                .map_err(azure_refused)?;
            print_verified(a.who, &v);
        }
        other => bail!("unsupported evidence kind: {other:?}"),
    }
    // The GPU evidence is bound by the CPU's report data (checked above); now its own chain,
    // signatures, nonce and values.
    match (&gpus, &reference.gpu) {
        (Some(g), r) => {
            let r = r.clone().unwrap_or_default();
            let v = nvidia::verify(g, &r, &nvidia::gpu_nonce(nonce), &opts).map_err(gpu_refused)?;
            for what in &v.checked {
                eprintln!("{}: verified: {what}", a.who);
            }
            for what in &v.skipped {
                eprintln!("{}: INSECURE (--insecure): NOT checked: {what}", a.who);
            }
        }
        (None, Some(_)) => return Err(gpu_refused(nvidia::GpuError::Missing)),
        (None, None) => {}
    }
    KeyConfig::decode(&key_config).context("key_config")
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use base64::Engine as _;
    use ward_e2e::{ServerKey, Suite, report_data};

    use std::path::Path;

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

    fn args(measurement: Option<&str>, insecure: bool, collateral: Option<&Path>) -> TrustArgs {
        TrustArgs {
            who: "test",
            vcek: None,
            tdx_collateral: collateral.map(Path::to_path_buf),
            reference: None,
            measurement: measurement.map(str::to_string),
            allow_sample: false,
            insecure,
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
        let e = verify_answer(&att, &nonce, &args(Some(&mrtd), false, collateral), AS_OF)
            .unwrap_err()
            .to_string();
        assert!(e.contains("does not verify to Intel's SGX root CA"), "{e}");
        // --insecure does not skip a check that ran and failed.
        let e = verify_answer(&att, &nonce, &args(Some(&mrtd), true, collateral), AS_OF)
            .unwrap_err()
            .to_string();
        assert!(e.contains("does not verify to Intel's SGX root CA"), "{e}");
        // The same collateral at today's clock: stale, refused.
        let e = verify_answer(&att, &nonce, &args(Some(&mrtd), false, collateral), now())
            .unwrap_err()
            .to_string();
        assert!(e.contains("stale collateral"), "{e}");
        // Without collateral, refused, naming the flag that would supply it.
        let e = verify_answer(&att, &nonce, &args(Some(&mrtd), false, None), AS_OF)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("--tdx-collateral") && e.contains("--insecure"),
            "{e}"
        );
        // --insecure is the only way past, and only for what cannot be checked.
        assert!(verify_answer(&att, &nonce, &args(Some(&mrtd), true, None), AS_OF).is_ok());
        let e = verify_answer(
            &att,
            &nonce,
            &args(Some(&"00".repeat(48)), true, None),
            AS_OF,
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("tdx.mrtd is abab"), "{e}");
        let (debug, _) = forged_tdx(&nonce, true);
        let e = verify_answer(&debug, &nonce, &args(Some(&mrtd), true, None), AS_OF)
            .unwrap_err()
            .to_string();
        assert!(e.contains("DEBUG"), "{e}");
        // A quote bound to another nonce fails the binding.
        let e = verify_answer(&att, &[8u8; 32], &args(Some(&mrtd), true, None), AS_OF)
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
        a.reference = Some(reference.clone());
        let e = verify_answer(&att, &[1u8; 32], &a, AS_OF)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("the report data is") && e.contains("does not vouch"),
            "{e}"
        );
        // And with another MRTD in the reference, the MRTD is what fails.
        let reference = reference_file(dir.path(), &"cd".repeat(48));
        a.reference = Some(reference.clone());
        let e = verify_answer(&att, &[1u8; 32], &a, AS_OF)
            .unwrap_err()
            .to_string();
        assert!(e.contains("tdx.mrtd is"), "{e}");
    }

    #[test]
    fn a_bad_reference_file_is_refused_by_name() {
        let (att, _) = forged_tdx(&[7u8; 32], false);
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("r.toml");
        std::fs::write(&p, "version = 1\n[tdx]\nmrtd = [\"00\"]\n").unwrap();
        let mut a = args(None, true, None);
        a.reference = Some(p.clone());
        let e = verify_answer(&att, &[7u8; 32], &a, AS_OF)
            .unwrap_err()
            .to_string();
        assert!(e.contains("r.toml") && e.contains("1 bytes, not 48"), "{e}");
        // And sample evidence with reference values is refused: it has nothing to match.
        let att = serde_json::json!({
            "evidence": {"svn": "1", "report_data": "AAAA"},
            "key_config": base64::engine::general_purpose::URL_SAFE_NO_PAD.encode([1u8; 4]),
        });
        std::fs::write(&p, "version = 1\n").unwrap();
        a.allow_sample = true;
        let e = verify_answer(&att, &[7u8; 32], &a, AS_OF)
            .unwrap_err()
            .to_string();
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
        let e = verify_answer(&att, &[1u8; 32], &args(None, false, None), AS_OF)
            .unwrap_err()
            .to_string();
        assert!(e.contains("--vcek"), "{e}");
        // With its VCEK the chain and signature pass (the JSON form re-encodes to the signed
        // bytes); the guest policy allows SMT, which the default reference values refuse.
        let vcek = fixture_path("snp/test-vcek.der");
        let mut a = args(None, false, None);
        a.vcek = Some(vcek.into());
        let e = verify_answer(&att, &[1u8; 32], &a, AS_OF)
            .unwrap_err()
            .to_string();
        assert!(e.contains("SMT"), "{e}");
        let dir = tempfile::tempdir().unwrap();
        let reference = dir.path().join("r.toml");
        std::fs::write(
            &reference,
            "version = 1\n[snp]\nallow_smt = true\nunpinned = [\"host_data\", \"min_tcb\"]\n",
        )
        .unwrap();
        a.reference = Some(reference.clone());
        let e = verify_answer(&att, &[1u8; 32], &a, AS_OF)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("snp.measurement is not pinned") && e.contains("--measurement"),
            "{e}"
        );
        // The real report binds another key: refused even with --insecure (which skips only
        // the unpinned measurement here, and says so).
        a.insecure = true;
        let e = verify_answer(&att, &[1u8; 32], &a, AS_OF)
            .unwrap_err()
            .to_string();
        assert!(e.contains("does not vouch"), "{e}");
    }

    /// wardd's GPU evidence document around the real H100 report and chain.
    fn gpu_evidence() -> Vec<u8> {
        let std = base64::engine::general_purpose::STANDARD;
        let report = hex::decode(
            String::from_utf8(fixture("nvidia/hopperAttestationReport.txt"))
                .unwrap()
                .trim(),
        )
        .unwrap();
        serde_json::to_vec(&serde_json::json!({"nvidia": {"device_evidence_list": [{
            "arch": "HOPPER", "uuid": "unknown",
            "evidence": std.encode(report),
            "certificate": std.encode(fixture("nvidia/hopper_cert_chain_case1.txt")),
        }]}}))
        .unwrap()
    }

    #[test]
    fn gpu_evidence_is_verified_not_just_bound() {
        // Bound correctly by the CPU's report data, but the GPU signed another nonce than the
        // one this attestation derives: a replayed GPU report. Refused even with --insecure.
        let nonce = [7u8; 32];
        let key = ServerKey::generate(Suite::XWing).config().encode();
        let gpus = gpu_evidence();
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let std = base64::engine::general_purpose::STANDARD;
        let att = serde_json::json!({
            "evidence": {"svn": "1", "report_data": std.encode(report_data(&nonce, &key, Some(&gpus)))},
            "gpus_raw": b64.encode(&gpus),
            "key_config": b64.encode(&key),
        });
        let mut a = args(None, true, None);
        a.allow_sample = true;
        let e = verify_answer(&att, &nonce, &a, AS_OF)
            .unwrap_err()
            .to_string();
        assert!(e.contains("GPU device 0 (HOPPER) signed the nonce"), "{e}");
        // Reference values with a [gpu] section and a server that offers no GPU evidence.
        let (att, mrtd) = forged_tdx(&nonce, false);
        let dir = tempfile::tempdir().unwrap();
        let p = reference_file(dir.path(), &hex::encode(mrtd));
        let text = std::fs::read_to_string(&p).unwrap();
        std::fs::write(&p, format!("{text}[gpu]\ncount = 1\n")).unwrap();
        let mut a = args(None, true, None);
        a.reference = Some(p);
        let e = verify_answer(&att, &nonce, &a, AS_OF)
            .unwrap_err()
            .to_string();
        assert!(e.contains("offered no GPU evidence"), "{e}");
    }

    #[test]
    fn azure_vtpm_evidence_is_verified() {
        // The real Azure SNP evidence: its VCEK chain, report, vTPM key and quote all verify,
        // and it is refused because its quote binds another nonce and key than this client's.
        let ev: serde_json::Value =
            serde_json::from_slice(&fixture("az-snp-vtpm/evidence-v2.json")).unwrap();
        let key = ServerKey::generate(Suite::XWing).config().encode();
        let att = serde_json::json!({
            "evidence": ev,
            "key_config": base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(&key),
        });
        let e = verify_answer(&att, &[1u8; 32], &args(None, true, None), AS_OF)
            .unwrap_err()
            .to_string();
        assert!(e.contains("the vTPM quote's nonce is 982f5c6e"), "{e}");
    }

    #[test]
    fn snp_uses_the_certificates_the_evidence_carries() {
        // The host's certificate table holds the VCEK: used as --vcek would be (the chain and
        // signature pass; the guest policy allows SMT, which the default refuses).
        let report =
            ward_attester::explain::parse_snp_report(&fixture("snp/test-report.bin")).unwrap();
        let key = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .encode(ServerKey::generate(Suite::XWing).config().encode());
        let table = |kind: &str, der: Vec<u8>| {
            serde_json::json!({
                "evidence": {"attestation_report": report.report, "cert_chain": [
                    {"cert_type": kind, "data": der}
                ]},
                "key_config": key,
            })
        };
        let att = table("VCEK", fixture("snp/test-vcek.der"));
        let e = verify_answer(&att, &[1u8; 32], &args(None, false, None), AS_OF)
            .unwrap_err()
            .to_string();
        assert!(e.contains("SMT"), "{e}");
        // Another platform's key in the table: refused.
        let att = table("VLEK", fixture("snp/test-vlek.der"));
        let e = verify_answer(&att, &[1u8; 32], &args(None, true, None), AS_OF)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("signed by VCEK, and no VCEK certificate was given"),
            "{e}"
        );
        // Junk in the table is an error naming it, not a panic.
        let att = table("VCEK", vec![1, 2, 3]);
        let e = verify_answer(&att, &[1u8; 32], &args(None, true, None), AS_OF)
            .unwrap_err()
            .to_string();
        assert!(e.contains("cert_chain"), "{e}");
    }

    #[tokio::test]
    async fn an_endless_attestation_answer_is_cut_off() {
        // Whoever is on the path answers before anything is verified: 5 MiB of JSON-looking
        // bytes is refused, not read into memory to the end.
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let (mut sock, _) = listener.accept().await.unwrap();
            let mut req = [0u8; 4096];
            let _ = sock.read(&mut req).await;
            let len = 5usize << 20;
            let head = format!(
                "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {len}\r\n\r\n"
            );
            let _ = sock.write_all(head.as_bytes()).await;
            let chunk = vec![b' '; 64 << 10];
            for _ in 0..(len / chunk.len()) {
                if sock.write_all(&chunk).await.is_err() {
                    break;
                }
            }
        });
        let e = fetch_verified_key(
            &reqwest::Client::new(),
            &format!("http://{addr}/v1"),
            &args(None, true, None),
        )
        .await
        .unwrap_err()
        .to_string();
        assert!(e.contains("larger than 4194304 bytes"), "{e}");
    }
}
