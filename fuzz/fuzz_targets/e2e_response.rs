//! Arbitrary bytes as an end-to-end encrypted (chunked) response into
//! `ward_e2e::ResponseOpener::feed`, fed in pieces whose lengths the first byte picks, then
//! `finish`; and the whole body into `open_whole`.

#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use ward_e2e::{RequestSealer, ServerKey, Suite};

fn key() -> &'static ServerKey {
    static KEY: OnceLock<ServerKey> = OnceLock::new();
    KEY.get_or_init(|| ServerKey::generate(Suite::X25519))
}

fuzz_target!(|data: &[u8]| {
    let body = serde_json::json!({ "model": "m" });
    let Some((&step, rest)) = data.split_first() else {
        return;
    };
    let step = usize::from(step).max(1);
    if let Ok((_, mut opener)) = RequestSealer::seal(
        key().config(),
        "POST",
        "/v1/chat/completions",
        &body,
        1_700_000_000,
    ) {
        let mut ok = true;
        for piece in rest.chunks(step) {
            if opener.feed(piece).is_err() {
                ok = false;
                break;
            }
        }
        if ok {
            let _ = opener.finished();
            let _ = opener.finish();
        }
    }
    if let Ok((_, opener)) = RequestSealer::seal(
        key().config(),
        "POST",
        "/v1/chat/completions",
        &body,
        1_700_000_000,
    ) {
        let _ = opener.open_whole(rest);
    }
});
