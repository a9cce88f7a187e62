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
mod tests;
