//! wardd's side: the boot-time key, opening requests (with the replay cache and clock check),
//! and sealing responses chunk by chunk.

use std::collections::{HashSet, VecDeque};
use std::sync::Mutex;
use std::time::Instant;

use aes_gcm::aead::{Aead as _, KeyInit as _, Payload};
use sha2::{Digest as _, Sha256};
use zeroize::Zeroizing;

use super::identity::ClientId;
use super::suite::{self, KeyConfig, Secret, Suite};
use super::{
    E2eError, FINAL_AAD, MAX_REPLAY_ENTRIES, MAX_REQUEST, MAX_SKEW_SECS, REPLAY_WINDOW_SECS,
    REQUEST_LABEL, chunk_nonce, put_varint, response_keys,
};

/// Hashes of accepted `enc`s, oldest first, for the replay window. Entries age on the monotonic
/// clock (seconds since the key was made), never the wall clock the host can move; an entry that
/// ages out raises `floor`, the newest `created` ever forgotten, and nothing created at or
/// before it is accepted again.
#[derive(Default)]
struct ReplayCache {
    seen: HashSet<[u8; 32]>,
    /// (hash, created, accepted at on the monotonic clock), oldest first.
    order: VecDeque<([u8; 32], u64, u64)>,
    floor: Option<u64>,
}

impl ReplayCache {
    /// Records `h` (created at `created`, wall clock) at monotonic second `mono`.
    fn insert(&mut self, h: [u8; 32], created: u64, mono: u64) -> Result<(), E2eError> {
        while let Some(&(old, old_created, at)) = self.order.front() {
            if mono.saturating_sub(at) < REPLAY_WINDOW_SECS {
                break;
            }
            self.order.pop_front();
            self.seen.remove(&old);
            self.floor = Some(self.floor.map_or(old_created, |f| f.max(old_created)));
        }
        if self.seen.contains(&h) || self.floor.is_some_and(|f| created <= f) {
            return Err(E2eError::Replay);
        }
        if self.order.len() >= MAX_REPLAY_ENTRIES {
            return Err(E2eError::Busy);
        }
        self.seen.insert(h);
        self.order.push_back((h, created, mono));
        Ok(())
    }
}

/// The server's HPKE key, made at boot and never exported.
pub struct ServerKey {
    pub(crate) config: KeyConfig,
    pub(crate) secret: Secret,
    replay: Mutex<ReplayCache>,
    /// The monotonic clock of the replay cache.
    born: Instant,
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

/// A request that opened: its JSON body (without the `ward_e2e` member), the client key that
/// signed it (when one did) and the sealer for its response.
pub struct OpenedRequest {
    pub body: Zeroizing<Vec<u8>>,
    pub client: Option<ClientId>,
    pub sealer: ResponseSealer,
}

impl ServerKey {
    /// Accepts a request whose `enc` hashes to `seen`, made at `created` (unix seconds) and
    /// received at `now`: refused when too far from the clock or seen before.
    pub(crate) fn accept(&self, seen: [u8; 32], created: u64, now: u64) -> Result<(), E2eError> {
        let skew = created.abs_diff(now);
        if skew > MAX_SKEW_SECS {
            return Err(E2eError::Stale { skew });
        }
        self.replay
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(seen, created, self.born.elapsed().as_secs())
    }

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
            born: Instant::now(),
        }
    }

    pub fn config(&self) -> &KeyConfig {
        &self.config
    }

    /// Opens `message` (`hdr || enc || ct`) received at `now` (unix seconds) as `method path`
    /// (`POST /v1/chat/completions`): the request must have been sealed for that route.
    pub fn open_request(
        &self,
        message: &[u8],
        method: &str,
        path: &str,
        now: u64,
    ) -> Result<OpenedRequest, E2eError> {
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
        let (plain, secret, binding) = suite::open(&self.secret, enc, &info, ct)?;
        let mut body: serde_json::Value = serde_json::from_slice(&plain)
            .map_err(|_| E2eError::Malformed("the request is not JSON".into()))?;
        let meta = body
            .get("ward_e2e")
            .ok_or_else(|| E2eError::Malformed("`ward_e2e` is missing".into()))?;
        let created = meta
            .get("created")
            .and_then(serde_json::Value::as_u64)
            .ok_or_else(|| E2eError::Malformed("`ward_e2e.created` is missing".into()))?;
        let sealed_route = (
            meta.get("method").and_then(serde_json::Value::as_str),
            meta.get("path").and_then(serde_json::Value::as_str),
        );
        if sealed_route != (Some(method), Some(path)) {
            return Err(E2eError::Route {
                sealed: format!(
                    "{} {}",
                    sealed_route.0.unwrap_or("?"),
                    sealed_route.1.unwrap_or("?")
                ),
                got: format!("{method} {path}"),
            });
        }
        // A signature that does not hold is refused, never read as "no identity".
        let client = match meta.get("client") {
            None => None,
            Some(member) => Some(ClientId::verify_member(member, &binding)?),
        };
        self.accept(Sha256::digest(enc).into(), created, now)?;
        if let Some(obj) = body.as_object_mut() {
            obj.remove("ward_e2e");
        }
        let body = Zeroizing::new(
            serde_json::to_vec(&body).map_err(|e| E2eError::Malformed(e.to_string()))?,
        );
        Ok(OpenedRequest {
            body,
            client,
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

#[cfg(test)]
mod replay_tests {
    use super::*;

    /// The review's findings: eviction by wall clock, an entry accepted again at the edge of
    /// the skew, and a cache that only grew.
    #[test]
    fn replays_stay_refused_whatever_the_wall_clock_does() {
        let mut c = ReplayCache::default();
        let created = 1_000_000;
        c.insert([1; 32], created, 0).unwrap();
        // Within the window on the monotonic clock: refused, at the skew's edge too.
        assert_eq!(
            c.insert([1; 32], created, 2 * MAX_SKEW_SECS),
            Err(E2eError::Replay)
        );
        // Past it the entry is forgotten, but its `created` is the floor: a host that turns the
        // wall clock back so the skew check passes again still gets a refusal.
        assert_eq!(
            c.insert([1; 32], created, REPLAY_WINDOW_SECS + 1),
            Err(E2eError::Replay)
        );
        assert!(c.seen.is_empty());
        // A new request, created later, is fine.
        c.insert([2; 32], created + 1, REPLAY_WINDOW_SECS + 2)
            .unwrap();
    }

    #[test]
    fn a_full_cache_refuses_rather_than_forgets() {
        let mut c = ReplayCache::default();
        for i in 0..MAX_REPLAY_ENTRIES {
            let mut h = [0u8; 32];
            h[..8].copy_from_slice(&(i as u64).to_le_bytes());
            c.insert(h, 5, 1).unwrap();
        }
        assert_eq!(c.insert([0xff; 32], 5, 2), Err(E2eError::Busy));
        let mut first = [0u8; 32];
        first[..8].copy_from_slice(&0u64.to_le_bytes());
        assert_eq!(
            c.insert(first, 5, 2),
            Err(E2eError::Replay),
            "nothing forgotten"
        );
    }
}
