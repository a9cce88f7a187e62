//! wardd's side: the boot-time key, opening requests (with the replay cache and clock check),
//! and sealing responses chunk by chunk.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;

use aes_gcm::aead::{Aead as _, KeyInit as _, Payload};
use sha2::{Digest as _, Sha256};
use zeroize::Zeroizing;

use super::suite::{self, KeyConfig, Secret, Suite};
use super::{
    E2eError, FINAL_AAD, MAX_REQUEST, MAX_SKEW_SECS, REPLAY_WINDOW_SECS, REQUEST_LABEL,
    chunk_nonce, put_varint, response_keys,
};

/// Hashes of accepted `enc`s, oldest first, for the replay window.
#[derive(Default)]
struct ReplayCache {
    seen: HashMap<[u8; 32], u64>,
    order: VecDeque<([u8; 32], u64)>,
}

impl ReplayCache {
    /// Records `h` at `now`; false if it was already there within the window.
    fn insert(&mut self, h: [u8; 32], now: u64) -> bool {
        while let Some(&(old, at)) = self.order.front() {
            if at + REPLAY_WINDOW_SECS > now {
                break;
            }
            self.order.pop_front();
            if self.seen.get(&old) == Some(&at) {
                self.seen.remove(&old);
            }
        }
        if self.seen.contains_key(&h) {
            return false;
        }
        self.seen.insert(h, now);
        self.order.push_back((h, now));
        true
    }
}

/// The server's HPKE key, made at boot and never exported.
pub struct ServerKey {
    config: KeyConfig,
    secret: Secret,
    replay: Mutex<ReplayCache>,
}

impl std::fmt::Debug for ServerKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "ServerKey({:?}, id {})",
            self.config.suite, self.config.key_id
        )
    }
}

/// A request that opened: its JSON body (without the `ward_e2e` member) and the sealer for its
/// response.
pub struct OpenedRequest {
    pub body: Zeroizing<Vec<u8>>,
    pub sealer: ResponseSealer,
}

impl ServerKey {
    /// A fresh key pair for `suite`.
    pub fn generate(suite: Suite) -> ServerKey {
        let (secret, public_key) = suite::generate(suite);
        ServerKey {
            config: KeyConfig {
                key_id: rand::random(),
                suite,
                public_key,
            },
            secret,
            replay: Mutex::new(ReplayCache::default()),
        }
    }

    pub fn config(&self) -> &KeyConfig {
        &self.config
    }

    /// Opens `message` (`hdr || enc || ct`) received at `now` (unix seconds).
    pub fn open_request(&self, message: &[u8], now: u64) -> Result<OpenedRequest, E2eError> {
        if message.len() > MAX_REQUEST {
            return Err(E2eError::Malformed("request too large".into()));
        }
        let hdr = self.config.header();
        let rest = message.strip_prefix(&hdr[..]).ok_or(E2eError::WrongKey)?;
        let nenc = self.config.suite.nenc();
        let enc = rest
            .get(..nenc)
            .ok_or_else(|| E2eError::Malformed("too short".into()))?;
        let ct = &rest[nenc..];
        let mut info = REQUEST_LABEL.to_vec();
        info.push(0);
        info.extend_from_slice(&hdr);
        let (plain, secret) = suite::open(&self.secret, enc, &info, ct)?;
        let mut body: serde_json::Value = serde_json::from_slice(&plain)
            .map_err(|_| E2eError::Malformed("the request is not JSON".into()))?;
        let created = body
            .get("ward_e2e")
            .and_then(|w| w.get("created"))
            .and_then(serde_json::Value::as_u64)
            .ok_or_else(|| E2eError::Malformed("`ward_e2e.created` is missing".into()))?;
        let skew = created.abs_diff(now);
        if skew > MAX_SKEW_SECS {
            return Err(E2eError::Stale { skew });
        }
        let seen = Sha256::digest(enc).into();
        if !self
            .replay
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(seen, now)
        {
            return Err(E2eError::Replay);
        }
        if let Some(obj) = body.as_object_mut() {
            obj.remove("ward_e2e");
        }
        let body = Zeroizing::new(
            serde_json::to_vec(&body).map_err(|e| E2eError::Malformed(e.to_string()))?,
        );
        Ok(OpenedRequest {
            body,
            sealer: ResponseSealer::new(&secret, enc),
        })
    }
}

/// Seals one response: the 32-byte response nonce first, then numbered chunks, the last marked.
pub struct ResponseSealer {
    response_nonce: [u8; 32],
    key: Zeroizing<[u8; 32]>,
    nonce: [u8; 12],
    next: u64,
    finished: bool,
}

impl ResponseSealer {
    fn new(secret: &[u8; 32], enc: &[u8]) -> ResponseSealer {
        let response_nonce: [u8; 32] = rand::random();
        let (key, nonce) = response_keys(secret, enc, &response_nonce);
        ResponseSealer {
            response_nonce,
            key,
            nonce,
            next: 0,
            finished: false,
        }
    }

    /// The bytes that start the response body.
    pub fn prelude(&self) -> [u8; 32] {
        self.response_nonce
    }

    /// The next chunk (`varint(len) || sealed`), the last one when `last`.
    pub fn seal_chunk(&mut self, data: &[u8], last: bool) -> Result<Vec<u8>, E2eError> {
        if self.finished {
            return Err(E2eError::AfterFinal);
        }
        let cipher = aes_gcm::Aes256Gcm::new_from_slice(&self.key[..])
            .map_err(|_| E2eError::Malformed("response key".into()))?;
        let nonce = chunk_nonce(&self.nonce, self.next);
        let sealed = cipher
            .encrypt(
                (&nonce).into(),
                Payload {
                    msg: data,
                    aad: if last { FINAL_AAD } else { b"" },
                },
            )
            .map_err(|_| E2eError::Malformed("response too large".into()))?;
        self.next += 1;
        self.finished = last;
        let mut out = Vec::with_capacity(sealed.len() + 8);
        put_varint(&mut out, sealed.len() as u64);
        out.extend_from_slice(&sealed);
        Ok(out)
    }

    /// A whole (non-streamed) response body: prelude and one final chunk.
    pub fn seal_whole(mut self, data: &[u8]) -> Result<Vec<u8>, E2eError> {
        let mut out = self.prelude().to_vec();
        out.extend(self.seal_chunk(data, true)?);
        Ok(out)
    }
}
