//! The Concat KDF of RFC 7518 §4.6.2 (NIST SP 800-56A) with SHA-256: how `ECDH-ES` JWE key
//! management turns the ECDH shared secret into a key. Owns only the derivation; the callers
//! (the KBS client's resource JWEs, ocicrypt's JWE recipients) do the ECDH and the key unwrap.

use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

/// The Concat KDF of RFC 7518 §4.6.2 (NIST SP 800-56A) with SHA-256, for keys of at most
/// 256 bits (one hash round). Shared with ocicrypt's JWE recipients.
pub fn concat_kdf(
    z: &[u8],
    alg: &str,
    apu: &[u8],
    apv: &[u8],
    key_bits: u32,
) -> Zeroizing<Vec<u8>> {
    let len = |b: &[u8]| u32::try_from(b.len()).unwrap_or(u32::MAX).to_be_bytes();
    let mut h = Sha256::new();
    h.update(1u32.to_be_bytes());
    h.update(z);
    h.update(len(alg.as_bytes()));
    h.update(alg.as_bytes());
    h.update(len(apu));
    h.update(apu);
    h.update(len(apv));
    h.update(apv);
    h.update(key_bits.to_be_bytes());
    let digest = h.finalize();
    let n = usize::try_from(key_bits / 8)
        .unwrap_or(32)
        .min(digest.len());
    Zeroizing::new(digest[..n].to_vec())
}

#[cfg(test)]
mod tests {
    use base64::Engine;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;

    use super::*;

    /// RFC 7518 Appendix C: the ECDH-ES example derives this A128GCM key from this Z.
    #[test]
    fn concat_kdf_matches_rfc7518_appendix_c() {
        let z: [u8; 32] = [
            158, 86, 217, 29, 129, 113, 53, 211, 114, 131, 66, 131, 191, 132, 38, 156, 251, 49,
            110, 163, 218, 128, 106, 72, 246, 218, 167, 121, 140, 254, 144, 196,
        ];
        let k = concat_kdf(&z, "A128GCM", b"Alice", b"Bob", 128);
        assert_eq!(URL_SAFE_NO_PAD.encode(&k[..]), "VqqN6vgjbSBcIijNcacQGg");
    }
}
