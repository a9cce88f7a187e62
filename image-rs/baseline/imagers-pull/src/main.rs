//! `imagers-pull`: one image pull with CoCo's image-rs (guest-components 8246e5e0), made the way
//! confidential-data-hub's `pull_image` makes it, as a baseline for ward's `bench-pull`.
//!
//! CDH (confidential-data-hub/hub/src/hub.rs:98-110, 179-185) turns its `ImageConfig` into a
//! `ClientBuilder`, builds an `ImageClient` and calls
//! `pull_image(image_url, bundle_path, &None, &None)`. Its `ImageConfig` comes from the `[image]`
//! section of its config file, or, without one, from `ImageConfig::from_kernel_cmdline()`
//! (confidential-data-hub/hub/src/config/mod.rs:111-115, 142), which is the defaults
//! (image-rs/src/config.rs:275-321) plus `agent.*` kernel parameters. This does the same with
//! three differences a benchmark needs:
//!
//! - `work_dir` is `--work-dir` instead of `/run/kata-containers/image/`;
//! - the image's registry gets a `[[registry]]` rule with `insecure = true` (location = prefix =
//!   the registry), so image-rs pulls it over plain HTTP (image-rs/src/registry/mod.rs:269-286,
//!   image-rs/src/image.rs:334-337), like CDH's `[image.registry_config]`; `--tls` leaves it out;
//! - `decrypt_config` is the `--decryption-key` path when given (ocicrypt-rs
//!   `create_decrypt_config([path])`, image-rs/src/decrypt.rs:131-153) instead of `None` (CDH
//!   unwraps layer keys through its key provider).
//!
//! The snapshotter is image-rs's only one, `overlay` (image-rs/src/snapshots/mod.rs:12-16): the
//! layers are unpacked under `WORK_DIR/layers/N` and the bundle's `rootfs` is an overlay mount of
//! them (needs root), left mounted when this exits, as CDH leaves it for the container.

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use image_rs::builder::ClientBuilder;
use image_rs::config::ImageConfig;
use image_rs::registry::{Config as RegistryConfig, Registry};

const USAGE: &str = "usage: imagers-pull --work-dir DIR --bundle DIR \
                     [--decryption-key PRIVATE_KEY_PEM] [--tls] IMAGE_REF";

struct Args {
    work_dir: PathBuf,
    bundle: PathBuf,
    decryption_key: Option<String>,
    tls: bool,
    image: String,
}

fn parse_args() -> Result<Args> {
    let (mut work_dir, mut bundle, mut decryption_key, mut tls, mut image) =
        (None, None, None, false, None);
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut value = || args.next().with_context(|| format!("{a} needs a value\n{USAGE}"));
        match a.as_str() {
            "--work-dir" => work_dir = Some(PathBuf::from(value()?)),
            "--bundle" => bundle = Some(PathBuf::from(value()?)),
            "--decryption-key" => decryption_key = Some(value()?),
            "--tls" => tls = true,
            "-h" | "--help" => {
                println!("{USAGE}");
                std::process::exit(0);
            }
            s if s.starts_with('-') => bail!("unknown option {s}\n{USAGE}"),
            s => {
                if image.replace(s.to_string()).is_some() {
                    bail!("more than one IMAGE_REF\n{USAGE}");
                }
            }
        }
    }
    Ok(Args {
        work_dir: work_dir.context(USAGE)?,
        bundle: bundle.context(USAGE)?,
        decryption_key,
        tls,
        image: image.context(USAGE)?,
    })
}

/// The registry part of an image reference that names one (`HOST[:PORT]/...`).
fn registry_of(image: &str) -> Result<String> {
    match image.split_once('/') {
        Some((host, _)) if host.contains(['.', ':']) || host == "localhost" => Ok(host.to_string()),
        _ => bail!("{image}: name the registry (HOST[:PORT]/REPO:TAG)"),
    }
}

#[tokio::main]
async fn main() -> Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let args = parse_args()?;

    // CDH's default when its config has no `[image]` section.
    let mut config = ImageConfig::from_kernel_cmdline();
    config.work_dir = args.work_dir.clone();
    if !args.tls {
        let host = registry_of(&args.image)?;
        config.registry_config = Some(RegistryConfig {
            unqualified_search_registries: vec!["docker.io".into()],
            registry: vec![Registry {
                prefix: host.clone(),
                insecure: true,
                blocked: false,
                location: host,
                mirror: Vec::new(),
            }],
        });
    }
    std::fs::create_dir_all(&args.work_dir)
        .with_context(|| format!("creating {}", args.work_dir.display()))?;

    let mut client = ClientBuilder::from(config)
        .build()
        .await
        .context("building the image client")?;
    let decrypt_config = args.decryption_key.as_deref();
    let info = client
        .pull_image(&args.image, &args.bundle, &None, &decrypt_config)
        .await
        .map_err(anyhow::Error::from)
        .with_context(|| format!("pulling {}", args.image))?;
    println!("image digest: {}", info.manifest_digest);
    Ok(())
}
