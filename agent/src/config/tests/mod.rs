//! Table tests for config files and kernel command-line overrides.

use std::path::Path;

use super::*;

mod models;

pub(super) fn from_text(text: &str, cmdline: Option<&str>) -> Result<Config, ConfigError> {
    let raw = RawConfig::from_toml(Path::new("ward.toml"), text)?;
    let mut config = Config::from_raw(raw)?;
    if let Some(line) = cmdline {
        config.apply(parse_cmdline(line)?.0);
    }
    config.check()?;
    Ok(config)
}

#[test]
fn defaults_serve_coco_sockets_and_only_health_on_vsock() {
    let c = from_text("", None).unwrap();
    assert_eq!(c.listeners.len(), 5);
    let vsock: Vec<_> = c
        .listeners
        .iter()
        .filter(|l| !l.addr.is_in_guest())
        .collect();
    assert_eq!(vsock.len(), 1);
    assert_eq!(
        vsock[0].services.iter().copied().collect::<Vec<_>>(),
        vec![ServiceKind::Health]
    );
    let aa = &c.listeners[0];
    assert_eq!(
        aa.addr.to_string(),
        "unix:///run/confidential-containers/attestation-agent/attestation-agent.sock"
    );
    assert!(aa.services.contains(&ServiceKind::AttestationAgent));
    assert!(c.listeners[1].services.contains(&ServiceKind::GetResource));
    assert_eq!(c.log_format, LogFormat::Human);
    assert_eq!(c.oom_score_adj, -997);
}

#[test]
fn printed_defaults_parse_back_to_the_same_config() {
    let text = RawConfig::default().to_toml().unwrap();
    assert_eq!(
        from_text(&text, None).unwrap(),
        from_text("", None).unwrap()
    );
}

#[test]
fn valid_files() {
    let cases: &[(&str, &str)] = &[
        ("log level", "[log]\nlevel = \"debug\"\nformat = \"json\"\n"),
        (
            "filter directive",
            "[log]\nlevel = \"ward_agent=trace,warn\"\n",
        ),
        ("audit off", "[audit]\npath = \"\"\n"),
        (
            "one listener",
            "[[listener]]\naddress = \"unix:///tmp/w.sock\"\nservices = [\"all\"]\nmode = 0o660\n",
        ),
        (
            "vsock health",
            "[[listener]]\naddress = \"vsock://-1:2000\"\nservices = [\"health\"]\n",
        ),
        (
            "daemon",
            "[daemon]\nshutdown_timeout_secs = 3\noom_score_adj = 0\n",
        ),
    ];
    for (name, text) in cases {
        if let Err(e) = from_text(text, None) {
            panic!("{name}: refused: {e}");
        }
    }
    let c = from_text(cases[2].1, None).unwrap();
    assert_eq!(c.audit_log, None);
    let c = from_text(cases[3].1, None).unwrap();
    assert_eq!(c.listeners.len(), 1);
    assert_eq!(c.listeners[0].mode, 0o660);
    assert_eq!(c.listeners[0].services.len(), ServiceKind::ALL.len());
}

#[test]
fn invalid_files_name_the_key() {
    // (name, file, a fragment the one-line error must contain)
    let cases: &[(&str, &str, &str)] = &[
        ("syntax", "[log\n", "ward.toml:1:"),
        ("unknown top key", "colour = 1\n", "unknown field `colour`"),
        (
            "unknown nested key",
            "[log]\nlevl = \"x\"\n",
            "unknown field `levl`",
        ),
        (
            "wrong type",
            "[daemon]\nshutdown_timeout_secs = \"ten\"\n",
            "ward.toml:2:",
        ),
        (
            "bad format",
            "[log]\nformat = \"xml\"\n",
            "unknown variant `xml`",
        ),
        ("bad filter", "[log]\nlevel = \"a=b=c\"\n", "log.level"),
        (
            // tracing-subscriber's parser panicked on it (the wardd_config fuzz target).
            "non-ASCII filter",
            "# h\n[log]\nlevel = \"\t\t\tlevel ? \u{396}n=fo\"\n",
            "log.level: a log filter is printable ASCII; this one has the control character 0x09",
        ),
        (
            "non-ASCII filter, no tab",
            "[log]\nlevel = \"level ? \u{396}n=fo\"\n",
            "log.level: a log filter is printable ASCII; this one has a character outside ASCII",
        ),
        (
            "bad address",
            "[[listener]]\naddress = \"tcp://1.2.3.4:5\"\nservices = [\"health\"]\n",
            "listener[0].address",
        ),
        (
            "unknown service",
            "[[listener]]\naddress = \"unix:///a\"\nservices = [\"helth\"]\n",
            "listener[0].services: unknown service `helth`",
        ),
        (
            "empty services",
            "[[listener]]\naddress = \"unix:///a\"\nservices = []\n",
            "listener[0].services: the list is empty",
        ),
        (
            "missing services",
            "[[listener]]\naddress = \"unix:///a\"\n",
            "missing field `services`",
        ),
        (
            "secrets on vsock",
            "[[listener]]\naddress = \"vsock://-1:1\"\nservices = [\"cdh\"]\n",
            "listener[0].services: `get-resource` may not be served on vsock://-1:1",
        ),
        (
            "duplicate address",
            "[[listener]]\naddress = \"unix:///a\"\nservices = [\"health\"]\n\
             [[listener]]\naddress = \"unix:///a\"\nservices = [\"all\"]\n",
            "listener[1].address: unix:///a is configured twice",
        ),
        (
            "bad mode",
            "[[listener]]\naddress = \"unix:///a\"\nservices = [\"health\"]\nmode = 0o4755\n",
            "listener[0].mode",
        ),
        (
            "zero timeout",
            "[daemon]\nrequest_timeout_secs = 0\n",
            "daemon.request_timeout_secs",
        ),
        (
            "stream timeout range",
            "[daemon]\nstream_timeout_secs = 3601\n",
            "daemon.stream_timeout_secs",
        ),
        (
            "oom range",
            "[daemon]\noom_score_adj = -1001\n",
            "daemon.oom_score_adj",
        ),
    ];
    for (name, text, want) in cases {
        match from_text(text, None) {
            Ok(_) => panic!("{name}: accepted"),
            Err(e) => {
                let msg = e.to_string();
                assert!(msg.contains(want), "{name}: `{msg}` lacks `{want}`");
                assert!(!msg.contains('\n'), "{name}: error is not one line: {msg}");
            }
        }
    }
}

#[test]
fn cmdline_overrides_file_values() {
    let file = "[log]\nlevel = \"info\"\n";
    let c = from_text(
        file,
        Some(
            "console=hvc0 ward.log_level=debug ward.log_format=json ward.audit_log=off \
             ward.shutdown_timeout=5 ward.request_timeout=30 ward.stream_timeout=900 ward.oom_score_adj=-500 \
             ward.listen=vsock://-1:4000#health ward.listen=unix:///run/w.sock#cdh,health",
        ),
    )
    .unwrap();
    assert_eq!(c.log_filter, "debug");
    assert_eq!(c.log_format, LogFormat::Json);
    assert_eq!(c.audit_log, None);
    assert_eq!(c.shutdown_timeout, Duration::from_secs(5));
    assert_eq!(c.request_timeout, Duration::from_secs(30));
    assert_eq!(c.stream_timeout, Duration::from_secs(900));
    assert_eq!(c.oom_score_adj, -500);
    assert_eq!(
        c.listeners.len(),
        2,
        "ward.listen replaces the listener list"
    );
    assert_eq!(c.listeners[0].origin, Origin::Cmdline);
    assert!(c.listeners[1].services.contains(&ServiceKind::ImagePull));
}

#[test]
fn cmdline_audit_path() {
    let c = from_text("", Some("ward.audit_log=/run/a.jsonl")).unwrap();
    assert_eq!(c.audit_log, Some(PathBuf::from("/run/a.jsonl")));
}

#[test]
fn invalid_cmdline_values_name_the_key() {
    let cases: &[(&str, &str)] = &[
        (
            "ward.log_format=xml",
            "ward.log_format: `xml` is not a log format",
        ),
        ("ward.log_level=a=b=c", "ward.log_level"),
        (
            "ward.log_level=level?\u{396}n=fo",
            "ward.log_level: a log filter is printable ASCII",
        ),
        ("ward.log_level", "ward.log_level: needs a value"),
        (
            "ward.audit_log=relative",
            "ward.audit_log: `relative` is not an absolute path",
        ),
        (
            "ward.shutdown_timeout=ten",
            "ward.shutdown_timeout: `ten` is not a whole number",
        ),
        (
            "ward.request_timeout=0",
            "ward.request_timeout: 0 is out of range",
        ),
        (
            "ward.oom_score_adj=2000",
            "ward.oom_score_adj: 2000 is out of range",
        ),
        (
            "ward.listen=unix:///a",
            "ward.listen: `unix:///a` lacks `#services`",
        ),
        (
            "ward.listen=vsock://x:1#health",
            "ward.listen: `vsock://x:1` is not a valid vsock",
        ),
        (
            "ward.listen=unix:///a#nope",
            "ward.listen: unknown service `nope`",
        ),
        ("ward.listen=unix:///a#", "ward.listen: the list is empty"),
    ];
    for (line, want) in cases {
        match parse_cmdline(line) {
            Ok(_) => panic!("`{line}` accepted"),
            Err(e) => assert!(
                e.to_string().contains(want),
                "`{line}`: `{e}` lacks `{want}`"
            ),
        }
    }
}

#[test]
fn cmdline_cannot_put_secrets_on_vsock() {
    let err = from_text("", Some("ward.listen=vsock://-1:1#attestation-agent")).unwrap_err();
    assert!(
        err.to_string()
            .starts_with("ward.listen: `attestation-agent` may not be served on vsock"),
        "{err}"
    );
}

#[test]
fn unknown_cmdline_keys_are_reported_not_fatal() {
    let (o, unknown) = parse_cmdline("ward.colour=red ward.log_format=json ward.x").unwrap();
    assert_eq!(o.log_format, Some(LogFormat::Json));
    assert_eq!(unknown, vec!["ward.colour", "ward.x"]);
}

#[test]
fn load_uses_defaults_only_when_the_default_file_is_missing() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("absent.toml");
    let (c, _) = Config::load(&missing, false, None).unwrap();
    assert_eq!(c.listeners.len(), 5);
    let err = Config::load(&missing, true, None).unwrap_err();
    assert!(matches!(err, ConfigError::Read { .. }), "{err}");

    let file = dir.path().join("ward.toml");
    std::fs::write(&file, "[log]\nformat = \"json\"\n").unwrap();
    let (c, unknown) = Config::load(&file, true, Some("ward.typo=1 ward.log_level=warn")).unwrap();
    assert_eq!(c.log_format, LogFormat::Json);
    assert_eq!(c.log_filter, "warn");
    assert_eq!(unknown, vec!["ward.typo"]);
}

#[test]
fn attestation_and_kbs_settings() {
    let c = from_text(
        "[attestation]\ntee = \"sample\"\n[kbs]\nurl = \"https://kbs.example:8080/\"\nkey = \"rsa\"\n",
        None,
    )
    .unwrap();
    assert_eq!(c.attestation.tee, Some(ward_attester::tee::Tee::Sample));
    let kbs = c.kbs.unwrap();
    assert_eq!(kbs.url, "https://kbs.example:8080");
    assert_eq!(kbs.key, ward_attester::kbs::KeyKind::Rsa2048);
    assert!(
        !kbs.insecure_http,
        "plain HTTP is off unless the file says so"
    );
    let c = from_text(
        "[kbs]\nurl = \"http://k:8080\"\ninsecure_http = true\n",
        Some("ward.kbs_url=http://other:8080"),
    )
    .unwrap();
    let kbs = c.kbs.unwrap();
    assert!(kbs.insecure_http);
    assert_eq!(
        kbs.url, "http://other:8080",
        "the command line moves the URL"
    );
    assert!(!kbs.coco_token_reply);
    assert_eq!(from_text("", None).unwrap().kbs, None);

    let bad: &[(&str, &str)] = &[
        (
            "[attestation]\ntee = \"sgx\"\n",
            "attestation.tee: `sgx` is not a TEE",
        ),
        (
            "[kbs]\nurl = \"ftp://x\"\n",
            "kbs.url: `ftp://x` is not an http(s) URL",
        ),
        (
            "[kbs]\nurl = \"https://\"\n",
            "kbs.url: `https://` has no host",
        ),
        ("[kbs]\nurl = \"http://k\"\nkey = \"dsa\"\n", "kbs.key"),
        ("[kbs]\nurl = \"http://k\"\nattempts = 0\n", "kbs.attempts"),
        ("[kbs]\nkey = \"ec\"\n", "missing field `url`"),
    ];
    for (text, want) in bad {
        let e = from_text(text, None).unwrap_err().to_string();
        assert!(e.contains(want), "`{e}` lacks `{want}`");
    }
}

#[test]
fn cmdline_attestation_keys() {
    let c = from_text(
        "",
        Some("ward.tee=sample ward.allow_sample=true ward.kbs_url=http://10.0.2.2:8080"),
    )
    .unwrap();
    assert_eq!(c.attestation.tee, Some(ward_attester::tee::Tee::Sample));
    assert!(c.attestation.allow_sample);
    assert_eq!(c.kbs.unwrap().url, "http://10.0.2.2:8080");
    let c = from_text("[attestation]\ntee = \"tdx\"\n", Some("ward.tee=auto")).unwrap();
    assert_eq!(c.attestation.tee, None);
    for (line, want) in [
        ("ward.tee=sev", "ward.tee: `sev` is not a TEE"),
        (
            "ward.allow_sample=maybe",
            "ward.allow_sample: `maybe` is not a boolean",
        ),
        (
            "ward.kbs_url=kbs",
            "ward.kbs_url: `kbs` is not an http(s) URL",
        ),
    ] {
        let e = parse_cmdline(line).unwrap_err().to_string();
        assert!(e.contains(want), "`{e}` lacks `{want}`");
    }
}

#[test]
fn image_policy_and_mirrors() {
    let c = from_text(
        "[images]\npolicy = \"reject\"\n\
         [[images.signed]]\nscope = \"registry.example/team\"\nkey = \"kbs:///default/cosign-key/1\"\n\
         [[images.mirror]]\nregistry = \"docker.io\"\nmirrors = [\"mirror.local:5000\"]\ndigest_only = true\n",
        None,
    )
    .unwrap();
    assert_eq!(c.images.policy, PolicySource::Reject);
    assert_eq!(
        c.images.signed,
        [(
            "registry.example/team".to_string(),
            "kbs:///default/cosign-key/1".to_string()
        )]
    );
    assert_eq!(c.images.mirrors[0].mirrors, ["mirror.local:5000"]);
    assert!(c.images.mirrors[0].digest_only);
    assert_eq!(
        from_text(
            "[images]\npolicy = \"kbs:///default/security-policy/test\"\n",
            None
        )
        .unwrap()
        .images
        .policy,
        PolicySource::Kbs("kbs:///default/security-policy/test".into())
    );
    assert_eq!(
        from_text("", None).unwrap().images.policy,
        PolicySource::Accept,
        "containers' and CoCo's default"
    );
    let defaults = from_text("", None).unwrap().images;
    assert_eq!(defaults.blob_cache, None, "no blob kept by default");
    assert_eq!(defaults.concurrency, 2);
    assert_eq!(
        from_text("[images]\nblob_cache = \"/mnt/secure/blobs\"\n", None)
            .unwrap()
            .images
            .blob_cache,
        Some(std::path::PathBuf::from("/mnt/secure/blobs"))
    );

    for (text, key) in [
        ("[images]\npolicy = \"maybe\"\n", "images.policy"),
        ("[images]\npolicy = \"kbs:///two/parts\"\n", "images.policy"),
        (
            "[images]\npolicy = \"/etc/containers/policy.json\"\n[[images.signed]]\nscope = \"r.io\"\nkey = \"/k.pub\"\n",
            "images.signed",
        ),
        (
            "[images]\n[[images.signed]]\nscope = \"r.io\"\nkey = \"relative.pub\"\n",
            "images.signed",
        ),
        (
            "[images]\n[[images.mirror]]\nregistry = \"docker.io\"\nmirrors = []\n",
            "images.mirror",
        ),
        (
            "[images]\n[[images.mirror]]\nregistry = \"docker.io\"\nmirrors = [\"m.local/path\"]\n",
            "images.mirror",
        ),
        (
            "[images]\nblob_cache = \"relative/blobs\"\n",
            "images.blob_cache",
        ),
        // The blob store is gone (#23): a pull keeps no blob unless blob_cache says where.
        ("[images]\nstore = \"/run/ward/images\"\n", "store"),
    ] {
        let e = from_text(text, None).unwrap_err().to_string();
        assert!(e.contains(key), "{text}: {e}");
    }
}

#[test]
fn cmdline_boot_keys() {
    let c = from_text(
        "",
        Some(
            "ward.net=eth0:10.0.2.15/24:10.0.2.2 ward.self_check=poweroff \
             ward.self_check_resource=kbs:///default/key/boot",
        ),
    )
    .unwrap();
    assert_eq!(
        c.net.as_ref().map(ToString::to_string).as_deref(),
        Some("eth0:10.0.2.15/24:10.0.2.2")
    );
    assert_eq!(
        c.self_check,
        Some(SelfCheckSettings {
            then: AfterSelfCheck::PowerOff,
            resource: Some("kbs:///default/key/boot".to_string()),
            image: None,
            volumes: vec![],
        })
    );
    let c = from_text("", Some("ward.self_check_image=10.0.2.2:5000/boot/app:v1")).unwrap();
    assert_eq!(
        c.self_check,
        Some(SelfCheckSettings {
            then: AfterSelfCheck::Serve,
            resource: None,
            image: Some("10.0.2.2:5000/boot/app:v1".to_string()),
            volumes: vec![],
        })
    );
    // Volumes, in order: a blank one, and one opened with a KBS key.
    let c = from_text(
        "",
        Some("ward.self_check_volume=vdb ward.self_check_volume=vdc,kbs:///default/disk/key"),
    )
    .unwrap();
    assert_eq!(
        c.self_check.map(|s| s.volumes),
        Some(vec![
            crate::config::VolumeCheck {
                device: "vdb".to_string(),
                key: None
            },
            crate::config::VolumeCheck {
                device: "vdc".to_string(),
                key: Some("kbs:///default/disk/key".to_string())
            },
        ])
    );
    for bad in [
        "ward.self_check_volume=../sda",
        "ward.self_check_volume=",
        "ward.self_check_volume=vdb,file:///etc/passwd",
        "ward.self_check_volume=vdb,default/disk/key",
    ] {
        assert!(from_text("", Some(bad)).is_err(), "{bad} accepted");
    }
    // None of them is on by default, and a file cannot turn them on.
    let c = from_text("", None).unwrap();
    assert_eq!((c.net, c.self_check), (None, None));
    // A resource alone asks for a check that keeps serving.
    let c = from_text("", Some("ward.self_check_resource=kbs:///a/b/c")).unwrap();
    assert_eq!(c.self_check.map(|s| s.then), Some(AfterSelfCheck::Serve));
    for (line, want) in [
        (
            "ward.net=eth0",
            "ward.net: `eth0` is not IFACE:ADDRESS/PREFIX",
        ),
        (
            "ward.net=eth0:10.0.2.15/40",
            "ward.net: `40` is not a prefix length",
        ),
        (
            "ward.net=eth0:10.0.2.15/24:10.9.9.9",
            "ward.net: gateway 10.9.9.9 is not another address in 10.0.2.15/24",
        ),
        (
            "ward.self_check=reboot",
            "ward.self_check: `reboot` is not serve or poweroff",
        ),
        (
            "ward.self_check_resource=/etc/passwd",
            "ward.self_check_resource: `/etc/passwd`",
        ),
        ("ward.net=", "ward.net: needs a value"),
    ] {
        let e = parse_cmdline(line).unwrap_err().to_string();
        assert!(e.contains(want), "`{e}` lacks `{want}`");
    }
}

#[test]
fn inference_threads() {
    assert_eq!(from_text("", None).unwrap().inference_threads, None);
    let c = from_text("[inference]\nthreads = 1\n", None).unwrap();
    assert_eq!(c.inference_threads, std::num::NonZeroUsize::new(1));
    assert_eq!(
        from_text("[inference]\nthreads = 0\n", None)
            .unwrap()
            .inference_threads,
        None
    );
    let e = from_text("[inference]\nthreads = 5000\n", None)
        .unwrap_err()
        .to_string();
    assert!(e.contains("inference.threads"), "{e}");
}
