//! The HPKE suites and the key configuration that names one (RFC 9458 section 3, one suite).

use hpke::aead::{AesGcm128, AesGcm256, ChaCha20Poly1305};
use hpke::kdf::HkdfSha256;
use hpke::kem::{X25519HkdfSha256, XWing};
use hpke::{Deserializable, Kem as KemTrait, OpModeR, OpModeS, Serializable};
use zeroize::Zeroizing;

use super::identity::CLIENT_LABEL;
use super::{E2eError, RESPONSE_LABEL};

const KDF_ID: u16 = 0x0001;
const AEAD_ID: u16 = 0x0002;
const AES128_ID: u16 = 0x0001;
const CHACHA_ID: u16 = 0x0003;
/// The symmetric suites a key configuration offers, all with HKDF-SHA256: AES-256-GCM (ward's
/// own requests), then for Oblivious HTTP clients ChaCha20-Poly1305 and AES-128-GCM (RFC 9458's
/// common suite; Mozilla's implementation has no AES-256-GCM).
const SYMMETRIC: [u8; 14] = [0, 12, 0, 1, 0, 2, 0, 1, 0, 3, 0, 1, 0, 1];

/// An AEAD a request may use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Aead {
    Aes256Gcm,
    ChaCha20Poly1305,
    Aes128Gcm,
}

impl Aead {
    pub fn id(self) -> u16 {
        match self {
            Aead::Aes256Gcm => AEAD_ID,
            Aead::ChaCha20Poly1305 => CHACHA_ID,
            Aead::Aes128Gcm => AES128_ID,
        }
    }

    pub(super) fn from_id(id: u16) -> Option<Aead> {
        match id {
            AEAD_ID => Some(Aead::Aes256Gcm),
            CHACHA_ID => Some(Aead::ChaCha20Poly1305),
            AES128_ID => Some(Aead::Aes128Gcm),
            _ => None,
        }
    }

    /// Key length, Nk.
    pub fn nk(self) -> usize {
        match self {
            Aead::Aes128Gcm => 16,
            Aead::Aes256Gcm | Aead::ChaCha20Poly1305 => 32,
        }
    }
}

/// An HPKE suite (KDF HKDF-SHA256 and AEAD AES-256-GCM in both).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Suite {
    /// X-Wing: ML-KEM-768 + X25519, post-quantum hybrid (the default).
    XWing,
    /// DHKEM(X25519, HKDF-SHA256).
    X25519,
}

impl Suite {
    pub fn kem_id(self) -> u16 {
        match self {
            Suite::XWing => 0x647a,
            Suite::X25519 => 0x0020,
        }
    }

    fn from_kem_id(id: u16) -> Option<Suite> {
        match id {
            0x647a => Some(Suite::XWing),
            0x0020 => Some(Suite::X25519),
            _ => None,
        }
    }

    pub fn parse(name: &str) -> Option<Suite> {
        match name {
            "xwing" => Some(Suite::XWing),
            "x25519" => Some(Suite::X25519),
            _ => None,
        }
    }

    /// Public key length.
    pub fn npk(self) -> usize {
        match self {
            Suite::XWing => 1216,
            Suite::X25519 => 32,
        }
    }

    /// Encapsulated key length.
    pub fn nenc(self) -> usize {
        match self {
            Suite::XWing => 1120,
            Suite::X25519 => 32,
        }
    }
}

/// A key configuration: what a client needs to encrypt to a server key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyConfig {
    pub key_id: u8,
    pub suite: Suite,
    pub public_key: Vec<u8>,
}

impl KeyConfig {
    /// `key_id || kem_id || public_key || 00 08 || 0001 0002 || 0001 0003` (RFC 9458 section
    /// 3.1: HKDF-SHA256 with AES-256-GCM, then with ChaCha20-Poly1305).
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(3 + self.public_key.len() + SYMMETRIC.len());
        out.push(self.key_id);
        out.extend_from_slice(&self.suite.kem_id().to_be_bytes());
        out.extend_from_slice(&self.public_key);
        out.extend_from_slice(&SYMMETRIC);
        out
    }

    pub fn decode(bytes: &[u8]) -> Result<KeyConfig, E2eError> {
        let bad = |d: &str| E2eError::Malformed(format!("key configuration: {d}"));
        let (&key_id, rest) = bytes.split_first().ok_or_else(|| bad("empty"))?;
        let kem = rest.get(..2).ok_or_else(|| bad("too short"))?;
        let suite = Suite::from_kem_id(u16::from_be_bytes([kem[0], kem[1]]))
            .ok_or_else(|| bad("unknown KEM"))?;
        let rest = &rest[2..];
        let pk = rest
            .get(..suite.npk())
            .ok_or_else(|| bad("short public key"))?;
        if rest.get(suite.npk()..) != Some(&SYMMETRIC[..]) {
            return Err(bad(
                "not ward's suites (HKDF-SHA256 with AES-256-GCM and ChaCha20-Poly1305)",
            ));
        }
        Ok(KeyConfig {
            key_id,
            suite,
            public_key: pk.to_vec(),
        })
    }

    /// The request header of ward's own requests: `key_id || kem_id || kdf_id || aead_id`,
    /// AES-256-GCM.
    pub fn header(&self) -> [u8; 7] {
        self.header_for(Aead::Aes256Gcm)
    }

    /// The request header for `aead`.
    pub fn header_for(&self, aead: Aead) -> [u8; 7] {
        let k = self.suite.kem_id().to_be_bytes();
        let f = KDF_ID.to_be_bytes();
        let a = aead.id().to_be_bytes();
        [self.key_id, k[0], k[1], f[0], f[1], a[0], a[1]]
    }
}

/// A server's private key.
pub(super) enum Secret {
    XWing(Box<<XWing as KemTrait>::PrivateKey>),
    X25519(<X25519HkdfSha256 as KemTrait>::PrivateKey),
}

/// A new key pair for `suite`: the private key and the public key bytes.
pub(super) fn generate(suite: Suite) -> (Secret, Vec<u8>) {
    match suite {
        Suite::XWing => {
            let (sk, pk) = XWing::gen_keypair();
            (Secret::XWing(Box::new(sk)), pk.to_bytes().to_vec())
        }
        Suite::X25519 => {
            let (sk, pk) = X25519HkdfSha256::gen_keypair();
            (Secret::X25519(sk), pk.to_bytes().to_vec())
        }
    }
}

type Sealed = (Vec<u8>, Vec<u8>, Zeroizing<[u8; 32]>);

/// The plaintext of a request, made once the context's client binding (the value a client key
/// signs) is known.
pub(super) type Plaintext<'a> =
    &'a mut dyn FnMut(&[u8; 32]) -> Result<Zeroizing<Vec<u8>>, E2eError>;

fn seal_with<K: KemTrait>(
    pk: &[u8],
    info: &[u8],
    plaintext: Plaintext<'_>,
) -> Result<Sealed, E2eError> {
    let pk = K::PublicKey::from_bytes(pk)
        .map_err(|_| E2eError::Malformed("the public key does not parse".into()))?;
    let (enc, mut ctx) = hpke::setup_sender::<AesGcm256, HkdfSha256, K>(&OpModeS::Base, &pk, info)
        .map_err(|_| E2eError::Malformed("HPKE setup failed".into()))?;
    let mut binding = [0u8; 32];
    ctx.export(CLIENT_LABEL, &mut binding)
        .map_err(|_| E2eError::Malformed("HPKE export failed".into()))?;
    let plaintext = plaintext(&binding)?;
    let ct = ctx
        .seal(&plaintext, b"")
        .map_err(|_| E2eError::Malformed("HPKE seal failed".into()))?;
    let mut secret = Zeroizing::new([0u8; 32]);
    ctx.export(RESPONSE_LABEL, &mut secret[..])
        .map_err(|_| E2eError::Malformed("HPKE export failed".into()))?;
    Ok((enc.to_bytes().to_vec(), ct, secret))
}

/// Encrypts the plaintext `plaintext` makes to `config`: (enc, ciphertext, response secret).
pub(super) fn seal(
    config: &KeyConfig,
    info: &[u8],
    plaintext: Plaintext<'_>,
) -> Result<Sealed, E2eError> {
    match config.suite {
        Suite::XWing => seal_with::<XWing>(&config.public_key, info, plaintext),
        Suite::X25519 => seal_with::<X25519HkdfSha256>(&config.public_key, info, plaintext),
    }
}

/// (plaintext, response secret, client binding).
type Opened = (Zeroizing<Vec<u8>>, Zeroizing<[u8; 32]>, [u8; 32]);

fn open_with<K: KemTrait>(
    sk: &K::PrivateKey,
    enc: &[u8],
    info: &[u8],
    ct: &[u8],
) -> Result<Opened, E2eError> {
    let enc = K::EncappedKey::from_bytes(enc).map_err(|_| E2eError::Decrypt)?;
    let mut ctx = hpke::setup_receiver::<AesGcm256, HkdfSha256, K>(&OpModeR::Base, sk, &enc, info)
        .map_err(|_| E2eError::Decrypt)?;
    let pt = Zeroizing::new(ctx.open(ct, b"").map_err(|_| E2eError::Decrypt)?);
    let mut secret = Zeroizing::new([0u8; 32]);
    ctx.export(RESPONSE_LABEL, &mut secret[..])
        .map_err(|_| E2eError::Decrypt)?;
    let mut binding = [0u8; 32];
    ctx.export(CLIENT_LABEL, &mut binding)
        .map_err(|_| E2eError::Decrypt)?;
    Ok((pt, secret, binding))
}

/// Decrypts a request: (plaintext, response secret, client binding).
pub(super) fn open(sk: &Secret, enc: &[u8], info: &[u8], ct: &[u8]) -> Result<Opened, E2eError> {
    match sk {
        Secret::XWing(k) => open_with::<XWing>(k, enc, info, ct),
        Secret::X25519(k) => open_with::<X25519HkdfSha256>(k, enc, info, ct),
    }
}

/// (plaintext, response secret exported under the caller's label, max(Nn, Nk) bytes).
type OpenedChunks = (Zeroizing<Vec<u8>>, Zeroizing<Vec<u8>>);

fn open_chunks_with<A: hpke::aead::Aead, K: KemTrait>(
    sk: &K::PrivateKey,
    enc: &[u8],
    info: &[u8],
    chunks: &[(&[u8], &[u8])],
    label: &[u8],
    secret_len: usize,
) -> Result<OpenedChunks, E2eError> {
    let enc = K::EncappedKey::from_bytes(enc).map_err(|_| E2eError::Decrypt)?;
    let mut ctx = hpke::setup_receiver::<A, HkdfSha256, K>(&OpModeR::Base, sk, &enc, info)
        .map_err(|_| E2eError::Decrypt)?;
    let mut pt = Zeroizing::new(Vec::new());
    for (ct, aad) in chunks {
        let p = Zeroizing::new(ctx.open(ct, aad).map_err(|_| E2eError::Decrypt)?);
        pt.extend_from_slice(&p);
    }
    let mut secret = Zeroizing::new(vec![0u8; secret_len]);
    ctx.export(label, &mut secret[..])
        .map_err(|_| E2eError::Decrypt)?;
    Ok((pt, secret))
}

/// Decrypts a request sent as HPKE ciphertexts in order under `aead`, each with its AAD (one
/// for Oblivious HTTP, several for its chunked variant), exporting the response secret under
/// `label`.
pub(super) fn open_chunks(
    sk: &Secret,
    aead: Aead,
    enc: &[u8],
    info: &[u8],
    chunks: &[(&[u8], &[u8])],
    label: &[u8],
) -> Result<OpenedChunks, E2eError> {
    // max(Nn, Nk) (RFC 9458 section 4.4), Nn being 12 for all three.
    let n = aead.nk().max(12);
    type C = ChaCha20Poly1305;
    type G = AesGcm256;
    type H = AesGcm128;
    type X = X25519HkdfSha256;
    match (sk, aead) {
        (Secret::XWing(k), Aead::Aes256Gcm) => {
            open_chunks_with::<G, XWing>(k, enc, info, chunks, label, n)
        }
        (Secret::XWing(k), Aead::ChaCha20Poly1305) => {
            open_chunks_with::<C, XWing>(k, enc, info, chunks, label, n)
        }
        (Secret::XWing(k), Aead::Aes128Gcm) => {
            open_chunks_with::<H, XWing>(k, enc, info, chunks, label, n)
        }
        (Secret::X25519(k), Aead::Aes256Gcm) => {
            open_chunks_with::<G, X>(k, enc, info, chunks, label, n)
        }
        (Secret::X25519(k), Aead::ChaCha20Poly1305) => {
            open_chunks_with::<C, X>(k, enc, info, chunks, label, n)
        }
        (Secret::X25519(k), Aead::Aes128Gcm) => {
            open_chunks_with::<H, X>(k, enc, info, chunks, label, n)
        }
    }
}
