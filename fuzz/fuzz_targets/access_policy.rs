//! Arbitrary bytes as a model access policy (`docs/model-policy.md`), into
//! `ward_agent::access::AccessPolicy::from_bytes` (JSON, then TOML), and each policy that reads
//! asked to admit a request: what the KBS (or whoever answers in its place) releases with a
//! model's KEK. Refusals are fine; panics are not.

#![no_main]

use libfuzzer_sys::fuzz_target;
use ward_agent::access::{AccessPolicy, Ask, Client, Endpoint, workload_digest};

fuzz_target!(|data: &[u8]| {
    let Ok(policy) = AccessPolicy::from_bytes(data) else {
        return;
    };
    let body = serde_json::from_slice::<serde_json::Value>(data).unwrap_or_default();
    let ask = Ask {
        endpoint: Endpoint::Chat,
        stream: data.len() % 2 == 0,
        max_tokens: Some(data.len()),
        workload: workload_digest(&body),
    };
    for client in [Client::Uid(0), Client::Uid(1000)] {
        if policy.admit(Some(&client), &ask).is_ok() {
            policy.consumed(&client, u64::MAX);
            let _ = policy.admit(Some(&client), &ask);
        }
    }
    let _ = policy.admit(None, &ask);
});
