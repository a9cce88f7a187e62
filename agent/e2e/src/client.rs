//! The client's side: encrypting a request to a verified key configuration, and opening the
//! response stream as it arrives, refusing anything altered, reordered, spliced or truncated.

use aes_gcm::aead::{Aead as _, KeyInit as _, Payload};
use zeroize::Zeroizing;

use super::identity::ClientKey;
use super::suite::{self, KeyConfig};
use super::{
    E2eError, FINAL_AAD, MAX_CHUNK, REQUEST_LABEL, chunk_nonce, get_varint, response_keys,
};

/// Encrypts requests.
pub struct RequestSealer;

impl RequestSealer {
    /// Encrypts the JSON `body` to `config` at `now` (unix seconds), for `method path` only
    /// (`POST /v1/chat/completions`: the route is sealed with the body, so the host cannot
    /// replay it to another endpoint): the message to send and the opener for its response.
    pub fn seal(
        config: &KeyConfig,
        method: &str,
        path: &str,
        body: &serde_json::Value,
        now: u64,
    ) -> Result<(Vec<u8>, ResponseOpener), E2eError> {
        Self::seal_as(config, method, path, body, now, None)
    }

    /// As [`RequestSealer::seal`], signed by `client` when given: wardd then knows the request
    /// came from that key (its policy may require it), and the host cannot strip or swap it.
    pub fn seal_as(
        config: &KeyConfig,
        method: &str,
        path: &str,
        body: &serde_json::Value,
        now: u64,
        client: Option<&ClientKey>,
    ) -> Result<(Vec<u8>, ResponseOpener), E2eError> {
        let mut body = body.clone();
        if !body.is_object() {
            return Err(E2eError::Malformed(
                "the request must be a JSON object".into(),
            ));
        }
        let mut plaintext = |binding: &[u8; 32]| {
            let mut meta = serde_json::json!({ "created": now, "method": method, "path": path });
            if let Some(client) = client {
                meta["client"] = client.member(binding);
            }
            body["ward_e2e"] = meta;
            serde_json::to_vec(&body)
                .map(Zeroizing::new)
                .map_err(|e| E2eError::Malformed(e.to_string()))
        };
        let hdr = config.header();
        let mut info = REQUEST_LABEL.to_vec();
        info.push(0);
        info.extend_from_slice(&hdr);
        let (enc, ct, secret) = suite::seal(config, &info, &mut plaintext)?;
        let mut message = Vec::with_capacity(hdr.len() + enc.len() + ct.len());
        message.extend_from_slice(&hdr);
        message.extend_from_slice(&enc);
        message.extend_from_slice(&ct);
        Ok((
            message,
            ResponseOpener {
                secret,
                enc,
                keys: None,
                buf: Vec::new(),
                next: 0,
                finished: false,
            },
        ))
    }
}

/// Opens one response, incrementally.
pub struct ResponseOpener {
    secret: Zeroizing<[u8; 32]>,
    enc: Vec<u8>,
    keys: Option<(Zeroizing<[u8; 32]>, [u8; 12])>,
    buf: Vec<u8>,
    next: u64,
    finished: bool,
}

impl ResponseOpener {
    /// Feeds response bytes as they arrive; returns the chunks that completed, in order.
    pub fn feed(&mut self, bytes: &[u8]) -> Result<Vec<Zeroizing<Vec<u8>>>, E2eError> {
        self.buf.extend_from_slice(bytes);
        let mut out = Vec::new();
        if self.keys.is_none() {
            if self.buf.len() < 32 {
                return Ok(out);
            }
            let rest = self.buf.split_off(32);
            self.keys = Some(response_keys(&self.secret[..], &self.enc, &self.buf));
            self.buf = rest;
        }
        loop {
            if self.buf.is_empty() {
                return Ok(out);
            }
            if self.finished {
                return Err(E2eError::AfterFinal);
            }
            let Some((len, used)) = get_varint(&self.buf) else {
                return Ok(out);
            };
            let len = usize::try_from(len)
                .ok()
                .filter(|l| *l <= MAX_CHUNK + 16)
                .ok_or_else(|| E2eError::Malformed("chunk too large".into()))?;
            if self.buf.len() < used + len {
                return Ok(out);
            }
            let sealed: Vec<u8> = self.buf.drain(..used + len).skip(used).collect();
            out.push(self.open_chunk(&sealed)?);
        }
    }

    fn open_chunk(&mut self, sealed: &[u8]) -> Result<Zeroizing<Vec<u8>>, E2eError> {
        let (key, base) = self.keys.as_ref().ok_or(E2eError::Truncated)?;
        let index = self.next;
        let cipher =
            aes_gcm::Aes256Gcm::new_from_slice(&key[..]).map_err(|_| E2eError::Chunk { index })?;
        let nonce = chunk_nonce(base, index);
        // A chunk opens under exactly one of the two AADs: "final" marks the end.
        for (aad, last) in [(&b""[..], false), (FINAL_AAD, true)] {
            if let Ok(p) = cipher.decrypt((&nonce).into(), Payload { msg: sealed, aad }) {
                self.next += 1;
                self.finished = last;
                return Ok(Zeroizing::new(p));
            }
        }
        Err(E2eError::Chunk { index })
    }

    /// Whether the final chunk arrived.
    pub fn finished(&self) -> bool {
        self.finished
    }

    /// Ends the stream: an error unless the final chunk arrived and nothing is left over.
    pub fn finish(self) -> Result<(), E2eError> {
        if !self.finished {
            return Err(E2eError::Truncated);
        }
        Ok(())
    }

    /// Opens a whole response body: every chunk, concatenated, once the final one held.
    pub fn open_whole(mut self, body: &[u8]) -> Result<Zeroizing<Vec<u8>>, E2eError> {
        let chunks = self.feed(body)?;
        if !self.finished {
            return Err(E2eError::Truncated);
        }
        let mut out = Zeroizing::new(Vec::new());
        for c in chunks {
            out.extend_from_slice(&c);
        }
        Ok(out)
    }
}
