//! The message layer on its own: round trips in both suites, streamed chunks however they are
//! fragmented, refused requests (tampered, foreign, stale, replayed) and responses (altered,
//! reordered, spliced, truncated), the report-data binding, strict parsing.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use super::*;

const NOW: u64 = 1_800_000_000;

fn body() -> serde_json::Value {
    serde_json::json!({"model": "m", "messages": [{"role": "user", "content": "the secret prompt"}]})
}

#[test]
fn requests_and_responses_round_trip_in_both_suites() {
    for suite in [Suite::XWing, Suite::X25519] {
        let server = ServerKey::generate(suite);
        let config = KeyConfig::decode(&server.config().encode()).unwrap();
        assert_eq!(&config, server.config());
        let (msg, opener) =
            RequestSealer::seal(&config, "POST", "/v1/chat/completions", &body(), NOW).unwrap();
        assert!(
            !msg.windows(6).any(|w| w == b"secret"),
            "no plaintext on the wire"
        );
        let opened = server
            .open_request(&msg, "POST", "/v1/chat/completions", NOW + 3)
            .unwrap();
        let got: serde_json::Value = serde_json::from_slice(&opened.body).unwrap();
        assert_eq!(got, body(), "the ward_e2e member is removed");
        let resp = opened.sealer.seal_whole(b"the secret answer").unwrap();
        assert_eq!(&opener.open_whole(&resp).unwrap()[..], b"the secret answer");
    }
}

#[test]
fn streamed_chunks_arrive_in_order_whatever_the_fragmentation() {
    let server = ServerKey::generate(Suite::X25519);
    let (msg, mut opener) = RequestSealer::seal(
        server.config(),
        "POST",
        "/v1/chat/completions",
        &body(),
        NOW,
    )
    .unwrap();
    let mut sealer = server
        .open_request(&msg, "POST", "/v1/chat/completions", NOW)
        .unwrap()
        .sealer;
    let mut wire = sealer.prelude().to_vec();
    let parts = ["Hel", "lo, ", "wor", "ld"];
    for (i, p) in parts.iter().enumerate() {
        wire.extend(
            sealer
                .seal_chunk(p.as_bytes(), i == parts.len() - 1)
                .unwrap(),
        );
    }
    assert!(
        sealer.seal_chunk(b"more", true).is_err(),
        "nothing after final"
    );
    let mut text = Vec::new();
    for byte in wire.chunks(5) {
        for c in opener.feed(byte).unwrap() {
            text.extend_from_slice(&c);
        }
    }
    assert_eq!(text, b"Hello, world");
    opener.finish().unwrap();
}

#[test]
fn tampered_foreign_stale_and_replayed_requests_are_refused() {
    let server = ServerKey::generate(Suite::XWing);
    let other = ServerKey::generate(Suite::XWing);
    let (msg, _) = RequestSealer::seal(
        server.config(),
        "POST",
        "/v1/chat/completions",
        &body(),
        NOW,
    )
    .unwrap();

    let mut flipped = msg.clone();
    *flipped.last_mut().unwrap() ^= 1;
    assert_eq!(
        server
            .open_request(&flipped, "POST", "/v1/chat/completions", NOW)
            .err(),
        Some(E2eError::Decrypt)
    );
    let mut flipped_enc = msg.clone();
    flipped_enc[10] ^= 1;
    assert!(
        server
            .open_request(&flipped_enc, "POST", "/v1/chat/completions", NOW)
            .is_err()
    );

    let (for_other, _) =
        RequestSealer::seal(other.config(), "POST", "/v1/chat/completions", &body(), NOW).unwrap();
    let e = server
        .open_request(&for_other, "POST", "/v1/chat/completions", NOW)
        .err()
        .unwrap();
    assert!(matches!(e, E2eError::WrongKey | E2eError::Decrypt), "{e:?}");

    assert_eq!(
        server
            .open_request(&msg, "POST", "/v1/chat/completions", NOW + 301)
            .err(),
        Some(E2eError::Stale { skew: 301 })
    );
    server
        .open_request(&msg, "POST", "/v1/chat/completions", NOW)
        .unwrap();
    assert_eq!(
        server
            .open_request(&msg, "POST", "/v1/chat/completions", NOW + 1)
            .err(),
        Some(E2eError::Replay)
    );
    assert!(
        server
            .open_request(&msg[..20], "POST", "/v1/chat/completions", NOW)
            .is_err()
    );
}

#[test]
fn altered_reordered_spliced_and_truncated_responses_are_refused() {
    let server = ServerKey::generate(Suite::X25519);
    let stream = |server: &ServerKey| {
        let (msg, opener) = RequestSealer::seal(
            server.config(),
            "POST",
            "/v1/chat/completions",
            &body(),
            NOW,
        )
        .unwrap();
        let mut sealer = server
            .open_request(&msg, "POST", "/v1/chat/completions", NOW)
            .unwrap()
            .sealer;
        let prelude = sealer.prelude().to_vec();
        let chunks: Vec<Vec<u8>> = (0..3)
            .map(|i| {
                sealer
                    .seal_chunk(format!("part {i}").as_bytes(), i == 2)
                    .unwrap()
            })
            .collect();
        (opener, prelude, chunks)
    };

    let (mut o, p, c) = stream(&server);
    let mut altered = c[1].clone();
    *altered.last_mut().unwrap() ^= 1;
    o.feed(&p).unwrap();
    o.feed(&c[0]).unwrap();
    assert_eq!(o.feed(&altered).err(), Some(E2eError::Chunk { index: 1 }));

    let (mut o, p, c) = stream(&server);
    o.feed(&p).unwrap();
    assert_eq!(
        o.feed(&c[1]).err(),
        Some(E2eError::Chunk { index: 0 }),
        "reordered"
    );

    let (mut o, p, c) = stream(&server);
    o.feed(&p).unwrap();
    o.feed(&c[0]).unwrap();
    o.feed(&c[1]).unwrap();
    assert_eq!(
        o.finish().err(),
        Some(E2eError::Truncated),
        "final chunk dropped"
    );

    let (mut o, p, c) = stream(&server);
    for x in [&p, &c[0], &c[1], &c[2]] {
        o.feed(x).unwrap();
    }
    assert_eq!(o.feed(&c[2]).err(), Some(E2eError::AfterFinal));

    // A response to another request cannot be spliced in.
    let (mut o, _, _) = stream(&server);
    let (_, p2, c2) = stream(&server);
    o.feed(&p2).unwrap();
    assert_eq!(o.feed(&c2[0]).err(), Some(E2eError::Chunk { index: 0 }));
}

#[test]
fn the_binding_covers_nonce_key_and_gpus() {
    let server = ServerKey::generate(Suite::XWing);
    let kc = server.config().encode();
    let nonce = [7u8; 32];
    let rd = report_data(&nonce, &kc, Some(b"[gpu]"));
    check_binding(&rd, &nonce, &kc, Some(b"[gpu]")).unwrap();
    assert!(check_binding(&rd, &[8u8; 32], &kc, Some(b"[gpu]")).is_err());
    let other = ServerKey::generate(Suite::XWing).config().encode();
    assert!(check_binding(&rd, &nonce, &other, Some(b"[gpu]")).is_err());
    assert!(check_binding(&rd, &nonce, &kc, None).is_err());
    assert!(check_binding(&rd, &[7u8; 16], &kc, Some(b"[gpu]")).is_err());
}

#[test]
fn key_configs_and_varints_parse_strictly() {
    let kc = ServerKey::generate(Suite::X25519).config().encode();
    assert_eq!(kc.len(), 1 + 2 + 32 + 2 + 12);
    assert!(KeyConfig::decode(&kc[..kc.len() - 1]).is_err());
    let mut unknown = kc.clone();
    unknown[1] = 0x99;
    assert!(KeyConfig::decode(&unknown).is_err());
    for v in [0u64, 63, 64, 16383, 16384, (1 << 30) - 1, 1 << 30, 1 << 40] {
        let mut b = Vec::new();
        put_varint(&mut b, v);
        assert_eq!(get_varint(&b), Some((v, b.len())), "{v}");
        assert_eq!(get_varint(&b[..b.len() - 1]), None);
    }
}

/// A sealed chat request was answered on `/v1/completions`: the route is sealed with the body,
/// and a request opened on another method or path is refused (and stays unused: the right route
/// still opens it once).
#[test]
fn a_request_opens_only_on_the_route_it_was_sealed_for() {
    let server = ServerKey::generate(Suite::X25519);
    let (msg, _) = RequestSealer::seal(
        server.config(),
        "POST",
        "/v1/chat/completions",
        &body(),
        NOW,
    )
    .unwrap();
    for (method, path) in [("POST", "/v1/completions"), ("GET", "/v1/chat/completions")] {
        match server.open_request(&msg, method, path, NOW) {
            Err(E2eError::Route { sealed, got }) => {
                assert_eq!(sealed, "POST /v1/chat/completions");
                assert_eq!(got, format!("{method} {path}"));
            }
            other => panic!("{method} {path}: {:?}", other.err()),
        }
    }
    server
        .open_request(&msg, "POST", "/v1/chat/completions", NOW)
        .unwrap();
}

#[test]
fn a_signed_request_names_its_client_and_an_unsigned_one_none() {
    let server = ServerKey::generate(Suite::XWing);
    let client = ClientKey::generate();
    let route = ("POST", "/v1/chat/completions");
    let (msg, _) = RequestSealer::seal_as(
        server.config(),
        route.0,
        route.1,
        &body(),
        NOW,
        Some(&client),
    )
    .unwrap();
    let opened = server.open_request(&msg, route.0, route.1, NOW).unwrap();
    assert_eq!(opened.client, Some(client.id()));
    let got: serde_json::Value = serde_json::from_slice(&opened.body).unwrap();
    assert_eq!(got, body(), "the identity is not passed on to the model");
    let (msg, _) = RequestSealer::seal(server.config(), route.0, route.1, &body(), NOW).unwrap();
    assert_eq!(
        server
            .open_request(&msg, route.0, route.1, NOW)
            .unwrap()
            .client,
        None
    );
}

/// A signature is bound to its request's HPKE context: lifted into another request (by anyone
/// who saw it, or by a client replaying someone else's), it does not hold.
#[test]
fn a_signature_lifted_into_another_request_is_refused() {
    let server = ServerKey::generate(Suite::X25519);
    let victim = ClientKey::generate();
    let hdr = server.config().header();
    let mut info = REQUEST_LABEL.to_vec();
    info.push(0);
    info.extend_from_slice(&hdr);
    // The victim's member for one context...
    let mut lifted = None;
    let mut first = |binding: &[u8; 32]| {
        lifted = Some(victim.member(binding));
        Ok(zeroize::Zeroizing::new(b"{}".to_vec()))
    };
    suite::seal(server.config(), &info, &mut first).unwrap();
    let lifted = lifted.unwrap();
    // ...put into a request sealed under a fresh one.
    let mut second = |_: &[u8; 32]| {
        let mut b = body();
        b["ward_e2e"] = serde_json::json!({"created": NOW, "method": "POST",
            "path": "/v1/chat/completions", "client": lifted.clone()});
        Ok(zeroize::Zeroizing::new(serde_json::to_vec(&b).unwrap()))
    };
    let (enc, ct, _) = suite::seal(server.config(), &info, &mut second).unwrap();
    let msg = [&hdr[..], &enc, &ct].concat();
    assert!(matches!(
        server.open_request(&msg, "POST", "/v1/chat/completions", NOW),
        Err(E2eError::ClientSignature)
    ));
    // A member that is not a signature at all is refused too, never read as anonymous.
    for member in [
        serde_json::json!({"key": victim.id().to_string()}),
        serde_json::json!({"key": "ed25519:AAAA", "sig": "AAAA"}),
        serde_json::json!("alice"),
    ] {
        let mut bad = |_: &[u8; 32]| {
            let mut b = body();
            b["ward_e2e"] = serde_json::json!({"created": NOW, "method": "POST",
                "path": "/v1/chat/completions", "client": member.clone()});
            Ok(zeroize::Zeroizing::new(serde_json::to_vec(&b).unwrap()))
        };
        let (enc, ct, _) = suite::seal(server.config(), &info, &mut bad).unwrap();
        let msg = [&hdr[..], &enc, &ct].concat();
        assert!(matches!(
            server.open_request(&msg, "POST", "/v1/chat/completions", NOW),
            Err(E2eError::ClientSignature)
        ));
    }
}

#[test]
fn client_keys_round_trip_through_pem_and_their_names() {
    let key = ClientKey::generate();
    let again = ClientKey::from_pkcs8_pem(&key.to_pkcs8_pem().unwrap()).unwrap();
    assert_eq!(again.id(), key.id());
    let name = key.id().to_string();
    assert!(
        name.starts_with("ed25519:") && name.len() == 8 + 43,
        "{name}"
    );
    assert_eq!(ClientId::parse(&name).unwrap(), key.id());
    for bad in ["", "ed25519:", "ed25519:AAAA", "x25519:AAAA", &name[1..]] {
        assert!(ClientId::parse(bad).is_err(), "{bad}");
    }
    assert!(ClientKey::from_pkcs8_pem("-----BEGIN PRIVATE KEY-----\n").is_err());
}

mod ohttp_interop {
    //! Oblivious HTTP against Mozilla's implementation (the `ohttp` crate on its own HPKE, the
    //! `hpke` crate's other major version): its client encapsulates, ward-e2e decapsulates and
    //! answers, its client opens the answer; RFC 9458 and the chunked variant, both suites.

    use futures::io::{AsyncReadExt as _, AsyncWriteExt as _};

    use super::*;

    /// A writer whose bytes the test reads while the writer lives on.
    #[derive(Clone, Default)]
    struct Sink(std::rc::Rc<std::cell::RefCell<Vec<u8>>>);

    impl futures::io::AsyncWrite for Sink {
        fn poll_write(
            self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
            buf: &[u8],
        ) -> std::task::Poll<std::io::Result<usize>> {
            self.0.borrow_mut().extend_from_slice(buf);
            std::task::Poll::Ready(Ok(buf.len()))
        }
        fn poll_flush(
            self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
        ) -> std::task::Poll<std::io::Result<()>> {
            std::task::Poll::Ready(Ok(()))
        }
        fn poll_close(
            self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
        ) -> std::task::Poll<std::io::Result<()>> {
            std::task::Poll::Ready(Ok(()))
        }
    }

    fn bhttp_request() -> Vec<u8> {
        let mut m = bhttp::Message::request(
            b"POST".to_vec(),
            b"https".to_vec(),
            b"wardd".to_vec(),
            b"/v1/chat/completions".to_vec(),
        );
        m.put_header("content-type", "application/json");
        m.write_content(body().to_string());
        let mut out = Vec::new();
        m.write_bhttp(bhttp::Mode::KnownLength, &mut out).unwrap();
        out
    }

    #[test]
    fn rfc9458_round_trips_with_mozillas_client() {
        for suite in [Suite::XWing, Suite::X25519] {
            let server = ServerKey::generate(suite);
            let keys = server.ohttp_keys();
            let client = ::ohttp::ClientRequest::from_encoded_config_list(&keys).unwrap();
            let (msg, client_response) = client.encapsulate(&bhttp_request()).unwrap();
            let opened = server.open_ohttp(&msg, false).unwrap();
            assert_eq!(&opened.bhttp[..], &bhttp_request()[..]);
            server.accept_ohttp(&opened, NOW, NOW).unwrap();
            assert_eq!(
                server.accept_ohttp(&opened, NOW, NOW),
                Err(E2eError::Replay),
                "the same enc twice"
            );
            let answer = opened.sealer.seal_whole(b"the secret answer").unwrap();
            assert_eq!(
                client_response.decapsulate(&answer).unwrap(),
                b"the secret answer"
            );
            // Not the ward-e2e labels: a ward-e2e opener of the same bytes fails.
            assert!(
                server
                    .open_request(&msg, "POST", "/v1/chat/completions", NOW)
                    .is_err()
            );
        }
    }

    #[test]
    fn chunked_ohttp_round_trips_with_mozillas_client() {
        futures::executor::block_on(async {
            for suite in [Suite::XWing, Suite::X25519] {
                let server = ServerKey::generate(suite);
                // The same key offering AES-128-GCM only: Mozilla's chunked client reads a
                // response nonce of at most 16 bytes (max(Nn, Nk) of AES-128-GCM) and panics on
                // the 32 of the 256-bit AEADs (ohttp 0.8.0, stream.rs `read_nonce`).
                let mut encoded = server.config().encode();
                let cut = encoded.len() - 14;
                encoded.truncate(cut);
                encoded.extend_from_slice(&[0, 4, 0, 1, 0, 1]);
                let mut config = ::ohttp::KeyConfig::decode(&encoded).unwrap();
                let sink = Sink::default();
                let request = ::ohttp::ClientRequest::from_config(&mut config).unwrap();
                let mut writer = request.encapsulate_stream(sink.clone()).unwrap();
                let bhttp = bhttp_request();
                // In three writes: three chunks and the final one.
                for part in bhttp.chunks(bhttp.len() / 3 + 1) {
                    writer.write_all(part).await.unwrap();
                }
                writer.close().await.unwrap();
                let sent = sink.0.borrow().clone();
                let opened = server.open_ohttp(&sent, true).unwrap();
                assert_eq!(&opened.bhttp[..], &bhttp[..]);
                assert!(server.open_ohttp(&sent, false).is_err(), "labels differ");
                let mut sealer = opened.sealer;
                let mut answer = sealer.prelude().to_vec();
                assert_eq!(answer.len(), 16, "max(Nn, Nk) of AES-128-GCM");
                for event in ["data: one\n\n", "data: two\n\n"] {
                    answer.extend(sealer.seal_chunk(event.as_bytes(), false).unwrap());
                }
                answer.extend(sealer.seal_chunk(b"", true).unwrap());
                let mut reader = writer.response(&answer[..]).unwrap();
                let mut got = Vec::new();
                reader.read_to_end(&mut got).await.unwrap();
                assert_eq!(got, b"data: one\n\ndata: two\n\n");
                // Cut before the final chunk: Mozilla's client refuses it too.
                let cut = &answer[..answer.len() - 20];
                let mut reader = writer.response(cut).unwrap();
                assert!(reader.read_to_end(&mut Vec::new()).await.is_err());
            }
        });
    }

    #[test]
    fn altered_or_cut_ohttp_requests_are_refused() {
        let server = ServerKey::generate(Suite::X25519);
        let client =
            ::ohttp::ClientRequest::from_encoded_config_list(&server.ohttp_keys()).unwrap();
        let (msg, _) = client.encapsulate(&bhttp_request()).unwrap();
        let mut altered = msg.clone();
        let last = altered.len() - 1;
        altered[last] ^= 1;
        assert_eq!(
            server.open_ohttp(&altered, false).err(),
            Some(E2eError::Decrypt)
        );
        assert!(server.open_ohttp(&msg[..40], false).is_err());
        assert_eq!(
            server.open_ohttp(&msg[1..], false).err(),
            Some(E2eError::WrongKey)
        );
        for chunked in [
            b"\x00".to_vec(),
            b"\x7f\xff".to_vec(),
            b"\x40".to_vec(),
            Vec::new(),
        ] {
            let mut m = msg[..7 + 32].to_vec();
            m.extend(chunked);
            assert!(server.open_ohttp(&m, true).is_err());
        }
    }
}
