//! Arbitrary bytes as an ocicrypt key-provider packet (`ward_image::ocicrypt::provider::Packet::parse`
//! and `unwrap_packet`), as a whole key-provider `UnWrapKey` request
//! (`ward_image::ocicrypt::unwrap_key_request`), and as a `kbs:///` resource URI
//! (`ward_kbs_wire::ResourceUri::parse`). The KBS is a stub that answers every URI with the
//! same 32-byte KEK at once.

#![no_main]

use std::future::Future;
use std::pin::pin;
use std::task::{Context, Poll, Waker};

use async_trait::async_trait;
use libfuzzer_sys::fuzz_target;
use ward_image::kbs::{KbsResources, ResourceError};
use ward_image::ocicrypt::provider::{Packet, unwrap_packet};
use ward_image::ocicrypt::unwrap_key_request;
use ward_kbs_wire::ResourceUri;
use zeroize::Zeroizing;

struct FixedKek;

#[async_trait]
impl KbsResources for FixedKek {
    async fn resource(&self, _uri: &ResourceUri) -> Result<Zeroizing<Vec<u8>>, ResourceError> {
        Ok(Zeroizing::new(vec![7u8; 32]))
    }
}

/// Polls a future that never waits (the stub answers at once) to its end.
fn run<F: Future>(f: F) -> Option<F::Output> {
    let mut f = pin!(f);
    let mut cx = Context::from_waker(Waker::noop());
    for _ in 0..64 {
        if let Poll::Ready(v) = f.as_mut().poll(&mut cx) {
            return Some(v);
        }
    }
    None
}

fuzz_target!(|data: &[u8]| {
    let _ = Packet::parse(data);
    let _ = run(unwrap_packet(data, &FixedKek));
    let _ = run(unwrap_key_request(data, &FixedKek));
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = ResourceUri::parse(text);
    }
});
