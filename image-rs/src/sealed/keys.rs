//! Key derivation of the sealed format (`docs/sealed-model.md`, "Keys and nonces"): the KEK,
//! its fingerprint, the header MAC and the per-file data key bound to the header hash.
//!
//! Owns every secret of the format. Secrets live in `Zeroizing` and are wiped on drop; nothing
//! here formats, logs or returns key bytes in an error.

use std::fmt;

use hkdf::Hkdf;
use hmac::{Hmac, Mac};
use sha2::{Digest as _, Sha256};
use zeroize::Zeroizing;

use super::SealedError;
use super::header::{MAC_LEN, SealedHeader};

const INFO_FINGERPRINT: &[u8] = b"ward sealed-model v1 kek fingerprint";
const INFO_HEADER_MAC: &[u8] = b"ward sealed-model v1 header mac";
const INFO_DATA_KEY: &[u8] = b"ward sealed-model v1 data key";

/// A 32-byte key-encryption key, as the KBS releases it. Wiped on drop, never printed.
#[derive(Clone)]
pub struct Kek(Zeroizing<[u8; 32]>);

impl Kek {
    /// Wraps a KEK.
    pub fn new(key: Zeroizing<[u8; 32]>) -> Kek {
        Kek(key)
    }

    /// Copies a KEK from a KBS resource, which must be exactly 32 bytes.
    pub fn from_slice(key: &[u8]) -> Result<Kek, SealedError> {
        let mut k = Zeroizing::new([0u8; 32]);
        if key.len() != k.len() {
            return Err(SealedError::KekLength { len: key.len() });
        }
        k.copy_from_slice(key);
        Ok(Kek(k))
    }

    fn bytes(&self) -> &[u8] {
        self.0.as_slice()
    }
}

impl fmt::Debug for Kek {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Kek(..)")
    }
}

/// The AES-256-GCM key of one sealed file.
pub(crate) struct DataKey(pub(crate) Zeroizing<[u8; 32]>);

fn expand(hkdf: &Hkdf<Sha256>, info: &[&[u8]]) -> Result<Zeroizing<[u8; 32]>, SealedError> {
    let mut out = Zeroizing::new([0u8; 32]);
    hkdf.expand_multi_info(info, out.as_mut_slice())
        .map_err(|_| SealedError::Crypto("HKDF-SHA256 refused a 32-byte output"))?;
    Ok(out)
}

/// HKDF("", KEK, "ward sealed-model v1 kek fingerprint"): depends on the KEK alone.
pub(crate) fn kek_fingerprint(kek: &Kek) -> Result<[u8; 32], SealedError> {
    let hkdf = Hkdf::<Sha256>::new(None, kek.bytes());
    Ok(*expand(&hkdf, &[INFO_FINGERPRINT])?)
}

/// The keys of one file (one salt): the header MAC key and the extract step for the data key.
pub(crate) struct FileKeys {
    hkdf: Hkdf<Sha256>,
}

impl FileKeys {
    pub(crate) fn new(kek: &Kek, salt: &[u8; 32]) -> FileKeys {
        FileKeys {
            hkdf: Hkdf::<Sha256>::new(Some(salt), kek.bytes()),
        }
    }

    fn mac(&self) -> Result<Hmac<Sha256>, SealedError> {
        let key = expand(&self.hkdf, &[INFO_HEADER_MAC])?;
        <Hmac<Sha256> as Mac>::new_from_slice(key.as_slice())
            .map_err(|_| SealedError::Crypto("HMAC-SHA256 refused a 32-byte key"))
    }

    /// HMAC-SHA256(mac_key, header bytes before the MAC).
    pub(crate) fn header_mac(&self, authenticated: &[u8]) -> Result<[u8; MAC_LEN], SealedError> {
        let mut m = self.mac()?;
        m.update(authenticated);
        Ok(m.finalize().into_bytes().into())
    }

    /// Whether `mac` holds over `authenticated` (constant time).
    pub(crate) fn verify_header_mac(
        &self,
        authenticated: &[u8],
        mac: &[u8; MAC_LEN],
    ) -> Result<bool, SealedError> {
        let mut m = self.mac()?;
        m.update(authenticated);
        Ok(m.verify_slice(mac).is_ok())
    }

    /// HKDF(salt, KEK, "ward sealed-model v1 data key" || SHA-256(header before the MAC)).
    pub(crate) fn data_key(&self, header: &SealedHeader) -> Result<DataKey, SealedError> {
        let header_hash = Sha256::digest(header.authenticated_bytes());
        Ok(DataKey(expand(
            &self.hkdf,
            &[INFO_DATA_KEY, header_hash.as_slice()],
        )?))
    }
}

/// Equality of two fingerprints without an early exit.
pub(crate) fn same_fingerprint(a: &[u8; 32], b: &[u8; 32]) -> bool {
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Checks a parsed header against `kek`: its fingerprint, then its MAC. Returns the data key.
pub(crate) fn authenticate(header: &SealedHeader, kek: &Kek) -> Result<DataKey, SealedError> {
    if !same_fingerprint(&kek_fingerprint(kek)?, header.kek_fingerprint()) {
        return Err(SealedError::WrongKek {
            kek_id: header.kek_id().to_string(),
        });
    }
    let keys = FileKeys::new(kek, header.salt());
    if !keys.verify_header_mac(header.authenticated_bytes(), header.mac())? {
        return Err(SealedError::HeaderAuthentication {
            name: header.name().to_string(),
        });
    }
    keys.data_key(header)
}
