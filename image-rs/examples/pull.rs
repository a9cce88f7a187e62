//! `ward pull`'s pull without the rest of the `ward` CLI: the same `Puller` call with the same
//! options, for benchmarks on machines where a release build of `ward` (which links the
//! inference engine) does not fit. Takes the arguments bench-pull gives `ward pull`:
//!
//! `pull IMAGE --bundle DIR [--insecure-registry HOST] [--decryption-key PEM]
//!  [--concurrency N] [--blob-cache DIR] [--quiet]`

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::PathBuf;
use std::sync::Arc;

use ward_image::ocicrypt::PrivateKey;
use ward_image::pull::{Decryption, PullOptions, Puller};
use ward_image::registry::{Registry, RegistryConfig};
use ward_image::unpack::UnpackPolicy;

#[tokio::main]
async fn main() {
    let mut args = std::env::args().skip(1);
    assert_eq!(
        args.next().as_deref(),
        Some("pull"),
        "usage: pull IMAGE --bundle DIR ..."
    );
    let image = args.next().expect("IMAGE");
    let (mut bundle, mut insecure, mut keys, mut concurrency, mut cache) =
        (None, Vec::new(), Vec::new(), 2usize, None);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--bundle" => bundle = args.next().map(PathBuf::from),
            "--insecure-registry" => insecure.push(args.next().unwrap()),
            "--decryption-key" => keys.extend(
                PrivateKey::all_from_pem(&std::fs::read_to_string(args.next().unwrap()).unwrap())
                    .unwrap(),
            ),
            "--concurrency" => concurrency = args.next().unwrap().parse().unwrap(),
            "--blob-cache" => cache = args.next().map(PathBuf::from),
            "--quiet" => {}
            other => panic!("unknown argument {other}"),
        }
    }
    let registry = Registry::new(RegistryConfig {
        insecure,
        ..Default::default()
    })
    .unwrap();
    let puller = Arc::new(
        Puller::new(
            registry,
            PullOptions {
                blob_cache: cache,
                concurrency,
                unpack: UnpackPolicy::default(),
                require_encrypted: false,
            },
        )
        .unwrap(),
    );
    let pulled = puller
        .pull(
            &image,
            &bundle.expect("--bundle"),
            &Decryption { keys, kek: None },
        )
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    println!(
        "{} layers, {} bytes fetched",
        pulled.layers, pulled.bytes_fetched
    );
}
