//! `ward pull` (pull an image into a bundle on its own, for owners and debugging) and
//! `ward image encrypt` (the owner side: encrypt an OCI layout for JWE recipients and/or a
//! KBS-held key-encryption key).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, bail};
use ward_agent::images::KbsClientResources;
use ward_attester::kbs::{KbsClient, KbsConfig};
use ward_attester::tee::{self, DetectOptions, Tee};
use ward_image::encrypt::{Recipients, encrypt_layout};
use ward_image::kbs::KbsResources;
use ward_image::ocicrypt::{PacketVersion, PrivateKey, ProviderRecipient, PublicKey};
use ward_image::policy::Policy;
use ward_image::pull::{Decryption, PullOptions, Puller};
use ward_image::registry::{Mirror, Registry, RegistryConfig};
use ward_image::unpack::UnpackPolicy;
use ward_kbs_wire::ResourceUri;
use zeroize::Zeroizing;

use crate::progress::Bars;

/// What `ward pull` needs.
pub struct PullArgs<'a> {
    pub image: &'a str,
    pub bundle: &'a Path,
    pub keys: &'a [PathBuf],
    pub insecure: &'a [String],
    pub kbs: Option<&'a str>,
    pub tee: Option<Tee>,
    pub blob_cache: Option<&'a Path>,
    pub concurrency: usize,
    /// `accept`, `reject` or a policy.json path.
    pub policy: &'a str,
    /// `SCOPE=KEY` pairs.
    pub signed: &'a [String],
    /// `REGISTRY=MIRROR` pairs.
    pub mirrors: &'a [String],
    pub quiet: bool,
}

/// The signature policy `ward pull` was asked for.
fn cli_policy(policy: &str, signed: &[String]) -> anyhow::Result<Policy> {
    let mut p = match policy {
        "accept" => Policy::accept_anything(),
        "reject" => Policy::reject(),
        path => {
            if !signed.is_empty() {
                bail!(
                    "--signed goes with --policy accept or reject; a policy.json names its own keys"
                );
            }
            return Ok(Policy::from_file(Path::new(path))?);
        }
    };
    for s in signed {
        let (scope, key) = s
            .split_once('=')
            .with_context(|| format!("--signed {s}: give SCOPE=KEY"))?;
        p.require_signature(scope, key, None)?;
    }
    Ok(p)
}

fn cli_mirrors(pairs: &[String]) -> anyhow::Result<Vec<Mirror>> {
    let mut out: Vec<Mirror> = Vec::new();
    for pair in pairs {
        let (registry, mirror) = pair
            .split_once('=')
            .with_context(|| format!("--mirror {pair}: give REGISTRY=MIRROR"))?;
        match out.iter_mut().find(|m| m.registry == registry) {
            Some(m) => m.mirrors.push(mirror.to_string()),
            None => out.push(Mirror {
                registry: registry.to_string(),
                mirrors: vec![mirror.to_string()],
                digest_only: false,
            }),
        }
    }
    Ok(out)
}

pub async fn pull(a: PullArgs<'_>) -> anyhow::Result<bool> {
    let mut keys = Vec::new();
    for k in a.keys {
        let pem = Zeroizing::new(
            std::fs::read_to_string(k).with_context(|| format!("reading {}", k.display()))?,
        );
        keys.extend(PrivateKey::all_from_pem(&pem).with_context(|| k.display().to_string())?);
    }
    let policy = Arc::new(cli_policy(a.policy, a.signed)?);
    let kbs: Option<Arc<dyn KbsResources>> = match a.kbs {
        Some(url) => {
            let attester = tee::detect(&DetectOptions {
                want: a.tee,
                ..Default::default()
            })?;
            Some(Arc::new(KbsClientResources(KbsClient::new(
                KbsConfig::new(url),
                attester,
            )?)))
        }
        None => None,
    };
    let kek = kbs.clone();
    let resources = kbs;
    let registry = Registry::new(RegistryConfig {
        insecure: a.insecure.to_vec(),
        mirrors: cli_mirrors(a.mirrors)?,
        ..Default::default()
    })?;
    let puller = Arc::new(
        Puller::new(
            registry,
            PullOptions {
                blob_cache: a.blob_cache.map(Path::to_path_buf),
                concurrency: a.concurrency,
                unpack: UnpackPolicy::default(),
                require_encrypted: false,
            },
        )?
        .with_policy(policy, resources),
    );
    let started = Instant::now();
    let bars = Arc::new(Bars::new(a.quiet));
    let pulled = puller
        .pull_with_progress(a.image, a.bundle, &Decryption { keys, kek }, bars)
        .await?;
    println!(
        "pulled {} ({}) into {}: {} layers ({} encrypted), {:.1} MiB fetched in {:.2} s; \
         signature policy: {}",
        a.image,
        pulled.manifest_digest,
        a.bundle.display(),
        pulled.layers,
        pulled.encrypted_layers,
        pulled.bytes_fetched as f64 / 1048576.0,
        started.elapsed().as_secs_f64(),
        pulled.policy
    );
    Ok(true)
}

/// `ward pull --addr`: asks wardd (`api.ImagePullService/PullImage`) to pull into `bundle`.
pub async fn pull_via_wardd(addr: &str, image: &str, bundle: &Path) -> anyhow::Result<bool> {
    use ward_protos::confidential_data_hub::ImagePullRequest;
    use ward_protos::confidential_data_hub_ttrpc::ImagePullServiceClient;
    let bundle = std::path::absolute(bundle)?;
    let client = ttrpc::asynchronous::Client::connect(addr)
        .await
        .with_context(|| format!("connecting to wardd at {addr}"))?;
    let mut req = ImagePullRequest::new();
    req.image_url = image.to_string();
    req.bundle_path = bundle.display().to_string();
    let started = Instant::now();
    let ctx = ttrpc::context::with_timeout(600_000_000_000);
    let resp = ImagePullServiceClient::new(client)
        .pull_image(ctx, &req)
        .await
        .map_err(crate::kbs::rpc_error)
        .with_context(|| format!("PullImage {image} through wardd at {addr}"))?;
    println!(
        "wardd pulled {image} ({}) into {} in {:.2} s",
        resp.manifest_digest,
        bundle.display(),
        started.elapsed().as_secs_f64()
    );
    Ok(true)
}

/// `ward image encrypt LAYOUT:TAG`: encrypts every layer in place.
pub fn encrypt(
    image: &str,
    jwe: &[PathBuf],
    kid: Option<&str>,
    kek_file: Option<&Path>,
) -> anyhow::Result<bool> {
    let (layout, tag) = image
        .rsplit_once(':')
        .context("give the image as OCI-LAYOUT-DIR:TAG")?;
    let mut recipients = Recipients::default();
    for p in jwe {
        let pem = std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))?;
        recipients
            .jwe
            .push(PublicKey::from_pem(&pem).with_context(|| p.display().to_string())?);
    }
    match (kid, kek_file) {
        (Some(kid), Some(f)) => {
            ResourceUri::parse(kid)?;
            let kek = Zeroizing::new(
                std::fs::read(f).with_context(|| format!("reading {}", f.display()))?,
            );
            if kek.len() != 32 {
                bail!(
                    "{}: a KEK is 32 bytes, this file has {}",
                    f.display(),
                    kek.len()
                );
            }
            recipients.providers.push(ProviderRecipient {
                kid: kid.to_string(),
                kek,
                version: PacketVersion::V2,
            });
        }
        (None, None) => {}
        _ => bail!("--kid and --kek-file go together"),
    }
    let digest = encrypt_layout(Path::new(layout), tag, &recipients)?;
    println!("encrypted {image}: new manifest {digest}");
    Ok(true)
}
