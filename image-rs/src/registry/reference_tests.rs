//! The hand parser against oci-spec's own (the regex it replaces), which stays the oracle here.

use super::*;
use proptest::prelude::*;

/// oci-spec's answer, which must be ours for every ASCII input.
fn oracle(s: &str) -> Result<Reference, ParseError> {
    s.parse::<Reference>()
}

fn same(s: &str) {
    assert_eq!(parse(s), oracle(s), "{s:?}");
}

const HEX64: &str = "ffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff";

#[test]
fn oci_spec_and_distribution_cases_parse_alike() {
    let long = format!("a/{}", "b".repeat(254));
    let cases = [
        "busybox",
        "test.com:tag",
        "test.com:5000",
        "test.com/repo:tag",
        "test:5000/repo",
        "test:5000/repo:tag",
        &format!("test:5000/repo@sha256:{HEX64}"),
        &format!("test:5000/repo:tag@sha256:{HEX64}"),
        "lowercase:Uppercase",
        "sub-dom1.foo.com/bar/baz/quux",
        "sub-dom1.foo.com/bar/baz/quux:some-long-tag",
        "b.gcr.io/test.example.com/my-app:test.example.com",
        "xn--n3h.com/myimage:xn--n3h.com",
        &format!("xn--7o8h.com/myimage:xn--7o8h.com@sha512:{HEX64}{HEX64}"),
        "foo_bar.com:8080",
        "foo/foo_bar.com:8080",
        "opensuse/leap:15.3",
        "localhost/app",
        "localhost:5000/app:v1",
        "index.docker.io/app",
        "index.docker.io/org/app:1",
        "docker.io/library/app",
        "Uppercase.Domain:1/lower/case",
        "a--b/c__d/e.f_g",
        "127.0.0.1:5000/boot/secret-app:v1",
        "",
        ":justtag",
        &format!("@sha256:{HEX64}"),
        "repo@sha256:ffffffffffffffffffffffffffffffffff",
        &format!("validname@invaliddigest:{HEX64}"),
        "Uppercase:tag",
        "test:5000/Uppercase/lowercase:tag",
        "aa/asdf$$^/aa",
        &long,
        &format!("{long}b"),
        &format!("repo:{}", "t".repeat(128)),
        &format!("repo:{}", "t".repeat(129)),
        "repo:",
        "repo@",
        "a___b",
        "a_.b",
        "a.-b",
        "-a",
        "a-",
        "host:/repo",
        "host:port/repo",
        "-host.com/repo",
        "host-.com/repo",
        "host..com/repo",
        "a//b",
        "a/",
        "/a",
        &format!("repo@sha256:{}", HEX64.to_uppercase()),
        &format!("repo@SHA256:{HEX64}"),
        &format!("repo@sha-256+x.y:{HEX64}"),
        &format!("repo@sha256:{HEX64}@sha256:{HEX64}"),
        &format!("repo:tag:{HEX64}"),
    ];
    for s in cases {
        same(s);
    }
}

/// Tags are ASCII in the distribution grammar (Go's `\w`); oci-spec's Unicode `\w` takes more.
#[test]
fn non_ascii_tags_are_refused_where_oci_spec_takes_them() {
    for s in ["repo:ü", "repo:tag\u{0663}", "repo:\u{5b57}"] {
        assert!(oracle(s).is_ok(), "{s:?}");
        assert_eq!(parse(s), Err(ParseError::ReferenceInvalidFormat), "{s:?}");
    }
    for s in ["rëpo:tag", "host.cöm/repo"] {
        same(s);
    }
}

/// Pieces a reference is made of, and ones that break it.
fn piece() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => "[a-z0-9]{1,4}",
        1 => "[A-Z]{1,2}",
        2 => prop::sample::select(vec![
            ".", "_", "__", "___", "-", "--", "/", ":", "@", "localhost", "docker.io",
            "index.docker.io", "5000", "sha256:", "sha512:", "latest", "x-y",
        ])
        .prop_map(str::to_string),
        1 => "[0-9a-f]{30,66}",
        1 => prop::sample::select(vec!["$", " ", "+", "a.-b", "\n"]).prop_map(str::to_string),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(4000))]

    /// Strings made of reference pieces: the two parsers agree on every one.
    #[test]
    fn generated_strings_parse_alike(pieces in prop::collection::vec(piece(), 1..12)) {
        let s: String = pieces.concat();
        prop_assert_eq!(parse(&s), oracle(&s), "{:?}", s);
    }

    /// Well-formed references with their optional parts: both parsers agree (and accept).
    #[test]
    fn well_formed_references_parse_alike(
        domain in prop::option::of("[a-zA-Z0-9]([a-zA-Z0-9-]{0,3}[a-zA-Z0-9])?(\\.[a-z0-9]{1,3}){0,2}(:[0-9]{1,5})?"),
        path in prop::collection::vec("[a-z0-9]{1,3}((\\.|_|__|-{1,3})[a-z0-9]{1,3}){0,2}", 1..4),
        tag in prop::option::of("[A-Za-z0-9_][A-Za-z0-9_.-]{0,20}"),
        digest in prop::option::of(prop::sample::select(vec![
            format!("sha256:{HEX64}"),
            format!("sha512:{HEX64}{HEX64}"),
            format!("sha384:{}", &HEX64[..48].repeat(2)),
            format!("sha256:{}", &HEX64[..40]),
            format!("md5:{HEX64}"),
        ])),
    ) {
        let mut s = String::new();
        if let Some(d) = &domain {
            s.push_str(d);
            s.push('/');
        }
        s.push_str(&path.join("/"));
        if let Some(t) = &tag {
            s.push(':');
            s.push_str(t);
        }
        if let Some(d) = &digest {
            s.push('@');
            s.push_str(d);
        }
        prop_assert_eq!(parse(&s), oracle(&s), "{:?}", s);
    }
}
