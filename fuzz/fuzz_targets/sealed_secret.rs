//! Arbitrary bytes as a CoCo sealed secret (`sealed.<header>.<payload>.<signature>`) into
//! `ward_agent::unseal::parse`, then its signature check against a fixed P-256 JWK (which must
//! fail cleanly unless the input was signed by it); the same bytes as a JWK, too.

#![no_main]

use libfuzzer_sys::fuzz_target;
use ward_agent::unseal::parse;

const JWK: &[u8] = br#"{"kty":"EC","crv":"P-256","x":"f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU","y":"x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0"}"#;

fuzz_target!(|data: &[u8]| {
    if let Ok(u) = parse(data) {
        let _ = u.kid();
        let _ = u.verify(JWK);
    }
    if let Ok(u) = parse(b"sealed.eyJhbGciOiJFUzI1NiIsImtpZCI6ImsifQ.e30.AAAA") {
        let _ = u.verify(data);
    }
});
