//! KBS figures against the development KBS on loopback, printed with a baseline from the same
//! run: handshake latency (auth + attest + first resource), cached-session resource latency
//! (median of 50 each), and resources per second with 32 concurrent callers sharing one
//! session, next to CoCo's behaviour (a full handshake for every resource) emulated with a fresh
//! client per resource. Run it on release builds: `just bench-kbs`.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use ward_attester::kbs::{KbsClient, KbsConfig};
use ward_attester::tee::SampleAttester;
use ward_kbs_wire::ResourceUri;
use ward_tests::kbs::{DevKbs, Policy};

const RUNS: usize = 50;
const CONCURRENT: usize = 32;
const PER_CALLER: usize = 20;

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

#[tokio::main(flavor = "multi_thread")]
async fn main() {
    let kbs = DevKbs::start().await.unwrap();
    kbs.put("default/key/1", &[7u8; 32], Policy::Allow);
    let uri = ResourceUri::parse("kbs:///default/key/1").unwrap();
    let client = || KbsClient::new(KbsConfig::new(kbs.url()), Arc::new(SampleAttester)).unwrap();

    // Handshake + first resource, each with a new client (= a new session).
    let mut handshake = Vec::with_capacity(RUNS);
    for _ in 0..RUNS {
        let c = client();
        let t = Instant::now();
        c.get_resource(&uri).await.unwrap();
        handshake.push(t.elapsed());
    }
    // Resources on an established session.
    let c = client();
    c.get_resource(&uri).await.unwrap();
    let mut cached = Vec::with_capacity(RUNS);
    for _ in 0..RUNS {
        let t = Instant::now();
        c.get_resource(&uri).await.unwrap();
        cached.push(t.elapsed());
    }
    // 32 concurrent callers sharing one client.
    let shared = Arc::new(client());
    let (_, attest_before, _) = kbs.counts();
    let t = Instant::now();
    let tasks: Vec<_> = (0..CONCURRENT)
        .map(|_| {
            let c = shared.clone();
            let uri = uri.clone();
            tokio::spawn(async move {
                for _ in 0..PER_CALLER {
                    c.get_resource(&uri).await.unwrap();
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap();
    }
    let shared_rate = (CONCURRENT * PER_CALLER) as f64 / t.elapsed().as_secs_f64();
    let (_, attest_after, _) = kbs.counts();
    // CoCo-style: a fresh handshake for every resource, same concurrency.
    let t = Instant::now();
    let tasks: Vec<_> = (0..CONCURRENT)
        .map(|_| {
            let url = kbs.url();
            let uri = uri.clone();
            tokio::spawn(async move {
                for _ in 0..PER_CALLER {
                    let c = KbsClient::new(KbsConfig::new(url.clone()), Arc::new(SampleAttester))
                        .unwrap();
                    c.get_resource(&uri).await.unwrap();
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap();
    }
    let coco_rate = (CONCURRENT * PER_CALLER) as f64 / t.elapsed().as_secs_f64();

    let h = median(handshake);
    let r = median(cached);
    println!(
        "handshake (auth + attest + first resource), median of {RUNS}: {:.2} ms",
        ms(h)
    );
    println!(
        "resource on the cached session, median of {RUNS}: {:.2} ms ({:.1}x faster than a handshake per resource)",
        ms(r),
        h.as_secs_f64() / r.as_secs_f64()
    );
    println!(
        "{CONCURRENT} concurrent callers x {PER_CALLER}: {shared_rate:.0} resources/s on one shared session \
         ({} handshake), vs {coco_rate:.0}/s with a handshake per resource (CoCo's behaviour): {:.1}x",
        attest_after - attest_before,
        shared_rate / coco_rate
    );
}
