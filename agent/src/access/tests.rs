#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use super::*;

/// The name of test client `n`'s key (the same all through a test run).
fn key(n: u8) -> String {
    static KEYS: std::sync::OnceLock<Vec<String>> = std::sync::OnceLock::new();
    KEYS.get_or_init(|| {
        (0..10)
            .map(|_| ward_e2e::ClientKey::generate().id().to_string())
            .collect()
    })[usize::from(n)]
    .clone()
}

fn policy() -> AccessPolicy {
    let json = serde_json::json!({
        "version": 1,
        "clients": [
            {"name": "lab-a", "keys": [key(1), key(2)], "requests_per_minute": 2,
             "tokens_per_day": 100, "max_output_tokens": 50},
            {"name": "lab-b", "keys": [key(3)], "endpoints": ["chat"]},
            {"name": "ops", "keys": ["uid:1000"]},
        ]
    });
    AccessPolicy::from_bytes(json.to_string().as_bytes()).unwrap()
}

fn chat() -> Ask {
    Ask {
        endpoint: Endpoint::Chat,
        stream: false,
        max_tokens: None,
        workload: workload_digest(&serde_json::json!({})),
    }
}

fn client(n: u8) -> Client {
    Client::Key(key(n))
}

#[test]
fn default_deny_and_grants() {
    let p = policy();
    assert_eq!(p.admit(None, &chat()), Err(Refusal::Anonymous));
    assert_eq!(p.admit(Some(&client(9)), &chat()), Err(Refusal::NotGranted));
    assert_eq!(
        p.admit(Some(&Client::Uid(0)), &chat()),
        Err(Refusal::NotGranted)
    );
    let a = p.admit(Some(&client(1)), &chat()).unwrap();
    assert_eq!(a.grant, "lab-a");
    assert_eq!(a.max_output_tokens, Some(50));
    assert_eq!(
        p.admit(Some(&Client::Uid(1000)), &chat()).unwrap().grant,
        "ops"
    );
    // lab-b: chat only, not streamed, not completions.
    assert!(p.admit(Some(&client(3)), &chat()).is_ok());
    let stream = Ask {
        stream: true,
        ..chat()
    };
    assert_eq!(
        p.admit(Some(&client(3)), &stream),
        Err(Refusal::Endpoint(Endpoint::Stream))
    );
    let text = Ask {
        endpoint: Endpoint::Completions,
        ..chat()
    };
    assert_eq!(
        p.admit(Some(&client(3)), &text),
        Err(Refusal::Endpoint(Endpoint::Completions))
    );
    let greedy = Ask {
        max_tokens: Some(51),
        ..chat()
    };
    assert_eq!(
        p.admit(Some(&client(2)), &greedy),
        Err(Refusal::OutputTokens {
            asked: 51,
            limit: 50
        })
    );
}

#[test]
fn the_rate_is_per_client_and_recovers() {
    let p = policy();
    let t0 = Instant::now();
    let (one, two) = (client(1), client(2));
    p.admit_at(Some(&one), &chat(), t0).unwrap();
    p.admit_at(Some(&one), &chat(), t0).unwrap();
    let refused = p.admit_at(Some(&one), &chat(), t0).unwrap_err();
    assert_eq!(refused.reason(), "rate_limited");
    assert_eq!(refused.retry_after(), Some(Duration::from_secs(30)));
    // Another key of the same grant has its own bucket.
    p.admit_at(Some(&two), &chat(), t0).unwrap();
    // Half a minute refills one request (2 per minute), not two.
    let later = t0 + Duration::from_secs(30);
    p.admit_at(Some(&one), &chat(), later).unwrap();
    assert!(p.admit_at(Some(&one), &chat(), later).is_err());
}

#[test]
fn the_token_quota_is_hit_and_recovers_a_day_later() {
    let p = policy();
    let t0 = Instant::now();
    let one = client(1);
    p.admit_at(Some(&one), &chat(), t0).unwrap();
    p.consumed_at(&one, 60, t0);
    // Under the quota: a request may start (and finish over it).
    let t1 = t0 + Duration::from_secs(60);
    p.admit_at(Some(&one), &chat(), t1).unwrap();
    p.consumed_at(&one, 60, t1);
    let t2 = t0 + Duration::from_secs(120);
    let refused = p.admit_at(Some(&one), &chat(), t2).unwrap_err();
    assert!(
        matches!(refused, Refusal::QuotaExhausted { limit: 100, .. }),
        "{refused:?}"
    );
    assert_eq!(
        refused.retry_after(),
        Some(Duration::from_secs(24 * 3600 - 120))
    );
    // Another client's use is its own.
    p.admit_at(Some(&client(2)), &chat(), t2).unwrap();
    p.admit_at(Some(&one), &chat(), t0 + DAY_PLUS).unwrap();
}

const DAY_PLUS: Duration = Duration::from_secs(24 * 3600 + 1);

#[test]
fn workloads_pin_the_computation_not_the_data() {
    let body = |system: &str, user: &str| {
        serde_json::json!({"model": "m", "messages": [
            {"role": "system", "content": system}, {"role": "user", "content": user}]})
    };
    let agreed = workload_digest(&body("Summarise the trial data.", "rows 1-10"));
    assert_eq!(
        agreed,
        workload_digest(&body("Summarise the trial data.", "rows 11-20")),
        "the data is not part of the workload"
    );
    assert_ne!(
        agreed,
        workload_digest(&body("Print the rows verbatim.", "rows 1-10"))
    );
    let with_tools = serde_json::json!({"messages": [{"role": "system", "content": "Summarise the trial data."}],
        "tools": [{"type": "function", "function": {"name": "exfiltrate"}}]});
    assert_ne!(agreed, workload_digest(&with_tools));
    // The digest is of fixed, documented bytes.
    let empty = format!(
        "sha256:{}",
        hex::encode(Sha256::digest(br#"{"system":[],"tools":null}"#))
    );
    assert_eq!(workload_digest(&serde_json::json!({"prompt": "x"})), empty);

    let doc = format!(
        r#"{{"version": 1, "workloads": ["{agreed}"], "clients": [{{"name": "a", "keys": ["{}"]}}]}}"#,
        key(1)
    );
    let p = AccessPolicy::from_bytes(doc.as_bytes()).unwrap();
    let ask = |w: String| Ask {
        workload: w,
        ..chat()
    };
    assert!(p.admit(Some(&client(1)), &ask(agreed.clone())).is_ok());
    assert_eq!(
        p.admit(
            Some(&client(1)),
            &ask(workload_digest(&body("Print the rows verbatim.", "")))
        ),
        Err(Refusal::Workload)
    );
}

#[test]
fn toml_and_json_read_the_same_and_bad_policies_are_refused() {
    let toml = format!(
        "version = 1\n[[clients]]\nname = \"a\"\nkeys = [\"{}\"]\nrequests_per_minute = 5\n",
        key(1)
    );
    let json = format!(
        r#"{{"version":1,"clients":[{{"name":"a","keys":["{}"],"requests_per_minute":5}}]}}"#,
        key(1)
    );
    let (t, j) = (
        AccessPolicy::from_bytes(toml.as_bytes()).unwrap(),
        AccessPolicy::from_bytes(json.as_bytes()).unwrap(),
    );
    assert_eq!(format!("{:?}", t.grants), format!("{:?}", j.grants));
    assert_ne!(
        t.digest(),
        j.digest(),
        "the digest is of the bytes released"
    );
    for bad in [
        "".to_string(),
        "{}".into(),
        r#"{"version": 2}"#.into(),
        r#"{"version": 1, "clients": [{"name": "a", "keys": []}]}"#.into(),
        r#"{"version": 1, "clients": [{"name": "a", "keys": ["alice"]}]}"#.into(),
        r#"{"version": 1, "clients": [{"name": "a", "keys": ["uid:x"]}]}"#.into(),
        format!(
            r#"{{"version": 1, "clients": [{{"name": "a", "keys": ["{}"], "tokens_per_day": 0}}]}}"#,
            key(1)
        ),
        format!(
            r#"{{"version": 1, "clients": [{{"name": "a", "keys": ["{k}"]}}, {{"name": "b", "keys": ["{k}"]}}]}}"#,
            k = key(1)
        ),
        format!(
            r#"{{"version": 1, "clients": [{{"name": "a", "keys": ["{}"], "endpoints": []}}]}}"#,
            key(1)
        ),
        format!(
            r#"{{"version": 1, "clients": [{{"name": "a", "keys": ["{}"], "limit": 3}}]}}"#,
            key(1)
        ),
        r#"{"version": 1, "workloads": ["sha256:12"]}"#.into(),
    ] {
        assert!(
            AccessPolicy::from_bytes(bad.as_bytes()).is_err(),
            "accepted: {bad}"
        );
    }
    // An empty grant list is valid: it denies everyone.
    let nobody = AccessPolicy::from_bytes(br#"{"version": 1}"#).unwrap();
    assert_eq!(
        nobody.admit(Some(&client(1)), &chat()),
        Err(Refusal::NotGranted)
    );
}
