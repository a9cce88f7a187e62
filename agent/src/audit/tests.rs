use super::*;

fn sample_log(dir: &Path, n: u64) -> PathBuf {
    let path = dir.join("audit.jsonl");
    let log = AuditLog::open(&path).unwrap();
    for i in 0..n {
        log.record(
            "resource.release",
            &format!("kbs:///default/key/{i}"),
            Some(serde_json::json!({"z": i, "a": "x"})),
        )
        .unwrap();
    }
    path
}

fn lines(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(str::to_string)
        .collect()
}

fn write_lines(path: &Path, lines: &[String]) {
    let mut text = lines.join("\n");
    text.push('\n');
    std::fs::write(path, text).unwrap();
}

#[test]
fn a_fresh_chain_verifies_and_reopening_continues_it() {
    let dir = tempfile::tempdir().unwrap();
    let path = sample_log(dir.path(), 5);
    let head = verify(&path).unwrap();
    assert_eq!(head.entries, 5);

    let log = AuditLog::open(&path).unwrap();
    assert_eq!(log.head(), (head.hash.clone(), 5));
    let h = log.record("agent.stop", "wardd", None).unwrap();
    let head = verify(&path).unwrap();
    assert_eq!(
        head,
        ChainHead {
            hash: h,
            entries: 6
        }
    );
    assert!(lines(&path)[0].contains(&format!("\"prev\":\"{GENESIS}\"")));
}

#[test]
fn an_empty_file_is_an_empty_chain() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("a.jsonl");
    std::fs::write(&path, "").unwrap();
    assert_eq!(verify(&path).unwrap(), ChainHead::empty());
}

#[test]
fn editing_any_field_of_any_line_is_detected() {
    let dir = tempfile::tempdir().unwrap();
    let path = sample_log(dir.path(), 4);
    let original = lines(&path);
    let edits: &[(&str, &str)] = &[
        ("resource.release", "resource.relEase"),
        ("kbs:///default/key/", "kbs:///default/kex/"),
        ("\"a\":\"x\"", "\"a\":\"y\""),
        ("\"z\":", "\"zz\":"),
        ("T", "t"),
    ];
    for idx in 0..original.len() {
        for (from, to) in edits {
            let mut l = original.clone();
            l[idx] = l[idx].replacen(from, to, 1);
            assert_ne!(l[idx], original[idx]);
            write_lines(&path, &l);
            let err = verify(&path).unwrap_err();
            assert!(
                matches!(err, VerifyError::Hash { line } if line == idx as u64 + 1),
                "edit {from}->{to} on line {idx}: {err}"
            );
        }
    }
}

#[test]
fn a_recomputed_hash_still_breaks_the_next_link() {
    let dir = tempfile::tempdir().unwrap();
    let path = sample_log(dir.path(), 3);
    let mut l = lines(&path);
    let mut e: Entry = serde_json::from_str(&l[1]).unwrap();
    e.subject = "kbs:///forged/key/1".to_string();
    e.hash = e.compute_hash();
    l[1] = serde_json::to_string(&e).unwrap();
    write_lines(&path, &l);
    assert!(matches!(
        verify(&path).unwrap_err(),
        VerifyError::Chain { line: 3 }
    ));
}

#[test]
fn dropped_duplicated_and_reordered_lines_are_detected() {
    let dir = tempfile::tempdir().unwrap();
    let path = sample_log(dir.path(), 4);
    let original = lines(&path);

    let mut dropped = original.clone();
    dropped.remove(1);
    write_lines(&path, &dropped);
    assert!(matches!(
        verify(&path).unwrap_err(),
        VerifyError::Sequence {
            line: 2,
            expected: 1,
            found: 2
        }
    ));

    let mut first_dropped = original.clone();
    first_dropped.remove(0);
    write_lines(&path, &first_dropped);
    assert!(matches!(
        verify(&path).unwrap_err(),
        VerifyError::Sequence { line: 1, .. }
    ));

    let mut dup = original.clone();
    dup.insert(2, original[1].clone());
    write_lines(&path, &dup);
    assert!(matches!(
        verify(&path).unwrap_err(),
        VerifyError::Sequence { line: 3, .. }
    ));

    let mut swapped = original.clone();
    swapped.swap(1, 2);
    write_lines(&path, &swapped);
    assert!(matches!(
        verify(&path).unwrap_err(),
        VerifyError::Sequence { line: 2, .. }
    ));
}

#[test]
fn garbage_and_torn_lines_are_malformed() {
    let dir = tempfile::tempdir().unwrap();
    let path = sample_log(dir.path(), 2);
    let mut text = std::fs::read_to_string(&path).unwrap();
    text.push_str("{\"seq\":2");
    std::fs::write(&path, &text).unwrap();
    assert!(matches!(
        verify(&path).unwrap_err(),
        VerifyError::Malformed { line: 3, .. }
    ));

    std::fs::write(&path, "not json\n").unwrap();
    assert!(matches!(
        verify(&path).unwrap_err(),
        VerifyError::Malformed { line: 1, .. }
    ));
}

#[test]
fn a_broken_log_is_not_extended() {
    let dir = tempfile::tempdir().unwrap();
    let path = sample_log(dir.path(), 3);
    let mut l = lines(&path);
    l.remove(0);
    write_lines(&path, &l);
    let before = std::fs::read(&path).unwrap();
    assert!(matches!(
        AuditLog::open(&path),
        Err(AuditError::Broken { .. })
    ));
    assert_eq!(std::fs::read(&path).unwrap(), before);
}

#[test]
fn usage_sums_the_verified_requests_per_client_and_model() {
    use super::usage::{UsageFilter, usage};
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.log");
    let log = AuditLog::open(&path).unwrap();
    let req = |client: Option<&str>, model: &str, status: u16, p: u64, c: u64| {
        let mut d = serde_json::json!({"model": model, "status": status,
            "prompt_tokens": p, "completion_tokens": c, "grant": "g"});
        if let Some(client) = client {
            d["client"] = client.into();
        }
        log.record("inference.request", "/v1/chat/completions", Some(d))
            .unwrap();
    };
    req(Some("ed25519:a"), "m", 200, 10, 5);
    log.record("model.load", "m", None).unwrap();
    req(Some("ed25519:a"), "m", 200, 7, 3);
    req(Some("ed25519:a"), "m", 429, 0, 0);
    req(Some("ed25519:b"), "m", 200, 1, 1);
    req(None, "m", 403, 0, 0);
    let all = usage(
        std::io::BufReader::new(std::fs::File::open(&path).unwrap()),
        &UsageFilter::default(),
    )
    .unwrap();
    assert_eq!(all.entries, 6);
    assert_eq!(all.head, log.head().0);
    let a = &all.rows[1];
    assert_eq!(
        (
            a.client.as_str(),
            a.requests,
            a.refused,
            a.prompt_tokens,
            a.completion_tokens
        ),
        ("ed25519:a", 2, 1, 17, 8)
    );
    assert_eq!(all.rows[0].client, "-");
    assert_eq!(all.rows.len(), 3);
    let only_b = usage(
        std::io::BufReader::new(std::fs::File::open(&path).unwrap()),
        &UsageFilter {
            client: Some("ed25519:b".into()),
            since: None,
        },
    )
    .unwrap();
    assert_eq!(only_b.rows.len(), 1);
    let future = usage(
        std::io::BufReader::new(std::fs::File::open(&path).unwrap()),
        &UsageFilter {
            client: None,
            since: Some(time::OffsetDateTime::now_utc() + time::Duration::hours(1)),
        },
    )
    .unwrap();
    assert!(future.rows.is_empty());
    // An edited log gives no report at all.
    let text = std::fs::read_to_string(&path).unwrap();
    let edited = text.replacen("\"prompt_tokens\":10", "\"prompt_tokens\":1", 1);
    assert!(usage(edited.as_bytes(), &UsageFilter::default()).is_err());
}

/// The exported copy is the file's lines byte for byte: it verifies as the same chain.
#[tokio::test]
async fn the_export_socket_gets_the_same_chain() {
    use tokio::io::AsyncBufReadExt as _;
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("export.sock");
    let target = super::export::ExportTarget::parse(&format!("unix://{}", sock.display())).unwrap();
    let exporter = super::export::Exporter::start(&target).unwrap();
    let log = AuditLog::open(&dir.path().join("audit.jsonl"))
        .unwrap()
        .with_export(exporter);
    let stream = tokio::net::UnixStream::connect(&sock).await.unwrap();
    // Let the server subscribe the new client before anything is written.
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    for i in 0..3 {
        log.record("resource.release", &format!("kbs:///r/k/{i}"), None)
            .unwrap();
    }
    let mut lines = tokio::io::BufReader::new(stream).lines();
    let mut got = String::new();
    for _ in 0..3 {
        got.push_str(&lines.next_line().await.unwrap().unwrap());
        got.push('\n');
    }
    assert_eq!(
        got,
        std::fs::read_to_string(dir.path().join("audit.jsonl")).unwrap()
    );
    assert_eq!(verify_reader(got.as_bytes()).unwrap().hash, log.head().0);
    for bad in ["", "stderr", "unix://relative", "tcp://127.0.0.1:1"] {
        assert!(super::export::ExportTarget::parse(bad).is_err(), "{bad}");
    }
}
