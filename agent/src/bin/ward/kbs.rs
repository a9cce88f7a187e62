//! `ward evidence`, `ward attest` and `ward get-resource`: attestation from the command line,
//! either on its own (running the KBS handshake in this process, for debugging and for guests
//! without wardd) or through a running wardd's CoCo-compatible API.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use ward_attester::kbs::{KbsClient, KbsConfig, KeyKind};
use ward_attester::report_data::ReportData;
use ward_attester::tee::{self, DetectOptions, Tee};
use ward_kbs_wire::ResourceUri;
use ward_protos::confidential_data_hub::GetResourceRequest;
use ward_protos::confidential_data_hub_ttrpc::GetResourceServiceClient;
use zeroize::Zeroizing;

/// Parses `--tee`: `auto` or a TEE name.
pub fn parse_tee(s: &str) -> anyhow::Result<Option<Tee>> {
    Ok(match s {
        "auto" => None,
        "sample" => Some(Tee::Sample),
        "snp" => Some(Tee::Snp),
        "tdx" => Some(Tee::Tdx),
        "az-snp-vtpm" => Some(Tee::AzSnpVtpm),
        "az-tdx-vtpm" => Some(Tee::AzTdxVtpm),
        other => bail!("`{other}` is not a TEE (auto, snp, tdx, az-snp-vtpm, az-tdx-vtpm, sample)"),
    })
}

fn attester(tee: Option<Tee>) -> anyhow::Result<Arc<dyn tee::Attester>> {
    let opts = DetectOptions {
        want: tee,
        ..Default::default()
    };
    tee::detect(&opts).context("choosing the TEE (use --tee sample for development)")
}

fn client(
    kbs: &str,
    tee: Option<Tee>,
    cacert: Option<&Path>,
    rsa: bool,
) -> anyhow::Result<KbsClient> {
    let mut config = KbsConfig::new(kbs);
    if let Some(path) = cacert {
        config.ca_pem =
            Some(std::fs::read(path).with_context(|| format!("reading {}", path.display()))?);
    }
    if rsa {
        config.key_kind = KeyKind::Rsa2048;
    }
    Ok(KbsClient::new(config, attester(tee)?)?)
}

/// `ward evidence`: collects evidence for the given report data and prints it as JSON; with
/// GPUs, as `{"primary_evidence": .., "additional_evidence": {"nvidia": ..}}`.
pub async fn evidence(
    tee: Option<Tee>,
    report_data_hex: &str,
    with_gpus: bool,
) -> anyhow::Result<bool> {
    let bytes = hex::decode(report_data_hex).context("--report-data is not hex")?;
    let rd = ReportData::new(bytes)?;
    let primary = attester(tee)?.evidence(&rd).await?;
    if !with_gpus {
        println!("{}", serde_json::to_string_pretty(&primary)?);
        return Ok(true);
    }
    let mut nonce = [0u8; 32];
    nonce.copy_from_slice(&rd.padded()[..32]);
    let gpus = crate::gpu::evidence(nonce).await.context("GPU evidence")?;
    let out = serde_json::json!({"primary_evidence": primary, "additional_evidence": gpus});
    println!("{}", serde_json::to_string_pretty(&out)?);
    Ok(true)
}

/// `ward evidence --explain`: parses saved evidence of any supported format and prints it;
/// with a VCEK, checks the SNP report's signature (only the signature: the VCEK's chain to
/// AMD's roots is the verifier's job).
pub fn explain(file: &Path, vcek: Option<&Path>) -> anyhow::Result<bool> {
    let bytes = std::fs::read(file).with_context(|| format!("reading {}", file.display()))?;
    let explanation = ward_attester::explain::explain(&bytes)
        .with_context(|| format!("{} is not evidence ward can read", file.display()))?;
    println!("{explanation}");
    // NVIDIA evidence carries its own chain: a report that does not verify with it fails.
    if let ward_attester::explain::Explanation::Nvidia(ev) = &explanation
        && ev.devices.iter().any(|d| d.signature.is_err())
    {
        return Ok(false);
    }
    let Some(vcek) = vcek else {
        return Ok(true);
    };
    let der = std::fs::read(vcek).with_context(|| format!("reading {}", vcek.display()))?;
    let Some(report) = explanation.snp_report() else {
        bail!(
            "--vcek applies to SNP reports, and {} holds none",
            file.display()
        );
    };
    match ward_attester::explain::verify_snp_signature(report, &der) {
        Ok(()) => {
            println!("signature: OK (verified with {})", vcek.display());
            Ok(true)
        }
        Err(e) => {
            println!("signature: BAD ({e})");
            Ok(false)
        }
    }
}

/// `ward attest`: runs the handshake and prints the token's claims.
pub async fn attest(
    kbs: &str,
    tee: Option<Tee>,
    cacert: Option<&Path>,
    rsa: bool,
) -> anyhow::Result<bool> {
    let c = client(kbs, tee, cacert, rsa)?;
    let claims = c.token_claims().await?;
    println!("{}", serde_json::to_string_pretty(&claims)?);
    Ok(true)
}

/// Where `ward get-resource` gets the resource from.
pub enum Source<'a> {
    /// Run the handshake in this process.
    Kbs {
        url: &'a str,
        tee: Option<Tee>,
        cacert: Option<&'a Path>,
    },
    /// Ask a running wardd (`api.GetResourceService`).
    Wardd { addr: &'a str },
}

/// `ward get-resource`: prints the resource to stdout, or writes it to `out` (mode 0600).
pub async fn get_resource(
    source: Source<'_>,
    uri: &str,
    out: Option<&PathBuf>,
) -> anyhow::Result<bool> {
    let uri = ResourceUri::parse(uri)?;
    let value: Zeroizing<Vec<u8>> = match source {
        Source::Kbs { url, tee, cacert } => {
            client(url, tee, cacert, false)?.get_resource(&uri).await?
        }
        Source::Wardd { addr } => {
            let c = ttrpc::asynchronous::Client::connect(addr)
                .await
                .with_context(|| format!("connecting to wardd at {addr}"))?;
            let mut req = GetResourceRequest::new();
            req.ResourcePath = uri.to_string();
            let ctx = ttrpc::context::with_timeout(Duration::from_secs(60).as_nanos() as i64);
            let resp = GetResourceServiceClient::new(c)
                .get_resource(ctx, &req)
                .await
                .map_err(rpc_error)
                .with_context(|| format!("GetResource {uri} from wardd at {addr}"))?;
            Zeroizing::new(resp.Resource)
        }
    };
    match out {
        Some(path) => write_private(path, &value)?,
        None => {
            use std::io::Write;
            std::io::stdout().write_all(&value)?;
        }
    }
    Ok(true)
}

/// A ttrpc error as one readable line: `CODE: message` for statuses.
pub fn rpc_error(e: ttrpc::Error) -> anyhow::Error {
    match e {
        ttrpc::Error::RpcStatus(s) => anyhow::anyhow!("{:?}: {}", s.code(), s.message()),
        other => anyhow::anyhow!("{other}"),
    }
}

/// Writes a secret to a new file readable only by its owner.
fn write_private(path: &Path, value: &[u8]) -> anyhow::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("creating {}", path.display()))?;
    f.write_all(value)
        .with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}
