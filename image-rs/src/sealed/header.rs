//! The sealed-file header: its byte layout (`docs/sealed-model.md`, "Byte layout"), the
//! validated name and KEK id types, and the chunk geometry it implies.
//!
//! Owns encoding and parsing only; authentication (fingerprint, MAC) is `keys`'. Parsing never
//! panics and never allocates by a length from the wire before that length is bounded: it is
//! fuzzed (`fuzz/`) and property-tested over random bytes.

use std::fmt;
use std::ops::Range;

use ward_kbs_wire::ResourceUri;

use super::SealedError;
use crate::digest::Digest;

/// The first 8 bytes of every sealed file.
pub const MAGIC: [u8; 8] = *b"WARDSEAL";
/// The format version this build writes and opens.
pub const FORMAT_VERSION: u16 = 1;
/// Bytes before the variable part: magic, version, flags, header_len. Enough to learn `H`.
pub const PREFIX_LEN: usize = 16;
/// Smallest chunk size accepted (one AES block).
pub const MIN_CHUNK_SIZE: u32 = 16;
/// Largest chunk size accepted.
pub const MAX_CHUNK_SIZE: u32 = 16 << 20;
/// The chunk size the sealer uses unless told otherwise (chosen by `bench-aead`, see the doc).
pub const DEFAULT_CHUNK_SIZE: u32 = 1 << 20;
/// Largest plaintext one sealed file (one data key) may hold: 1 TiB.
pub const MAX_PLAINTEXT_LEN: u64 = 1 << 40;
/// Longest file name, in bytes.
pub const MAX_NAME_LEN: usize = 1024;
/// Longest KEK id, in bytes.
pub const MAX_KEK_ID_LEN: usize = 512;
/// Shortest KEK id (`kbs:///a/b/c`).
pub const MIN_KEK_ID_LEN: usize = 12;
/// Fixed bytes of a header: everything but the name and the KEK id.
pub const FIXED_HEADER_LEN: usize = 160;
/// Shortest possible header.
pub const MIN_HEADER_LEN: usize = FIXED_HEADER_LEN + 1 + MIN_KEK_ID_LEN;
/// Longest possible header.
pub const MAX_HEADER_LEN: usize = FIXED_HEADER_LEN + MAX_NAME_LEN + MAX_KEK_ID_LEN;
/// The GCM tag after each chunk.
pub const TAG_LEN: usize = 16;
/// Bytes of the header MAC, the header's last field.
pub const MAC_LEN: usize = 32;

/// A file name as the format allows it: a relative `/`-separated path without `.`/`..`,
/// empty components, backslashes or control characters, 1 to [`MAX_NAME_LEN`] bytes.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct FileName(String);

impl FileName {
    /// Validates `name`.
    pub fn parse(name: &str) -> Result<FileName, SealedError> {
        let bad = |reason: &str| SealedError::InvalidName {
            reason: reason.to_string(),
        };
        if name.is_empty() || name.len() > MAX_NAME_LEN {
            return Err(bad(&format!("{} bytes (1 to {MAX_NAME_LEN})", name.len())));
        }
        if name.chars().any(|c| c.is_control() || c == '\\') {
            return Err(bad("control character or backslash"));
        }
        if name
            .split('/')
            .any(|c| c.is_empty() || c == "." || c == "..")
        {
            return Err(bad("empty, `.` or `..` path component"));
        }
        Ok(FileName(name.to_string()))
    }

    /// The name.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for FileName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for FileName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "FileName({:?})", self.0)
    }
}

/// The KBS resource that holds the KEK, in the one canonical form `kbs:///repo/type/tag`.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct KekId {
    text: String,
    uri: ResourceUri,
}

impl KekId {
    /// Validates `kek_id`: exactly `kbs:///repo/type/tag`, at most [`MAX_KEK_ID_LEN`] bytes.
    pub fn parse(kek_id: &str) -> Result<KekId, SealedError> {
        let bad = || SealedError::InvalidKekId {
            kek_id: kek_id.chars().take(MAX_KEK_ID_LEN).collect(),
        };
        if kek_id.len() > MAX_KEK_ID_LEN || !kek_id.starts_with("kbs:///") || kek_id.contains('?') {
            return Err(bad());
        }
        let uri = ResourceUri::parse(kek_id).map_err(|_| bad())?;
        if uri.to_string() != kek_id {
            return Err(bad());
        }
        Ok(KekId {
            text: kek_id.to_string(),
            uri,
        })
    }

    /// The URI as written in the header.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// The parsed URI, to ask the KBS for the KEK.
    pub fn resource_uri(&self) -> &ResourceUri {
        &self.uri
    }
}

impl fmt::Display for KekId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl fmt::Debug for KekId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "KekId({})", self.text)
    }
}

/// Chunk geometry: chunk size and plaintext length, both within the format's limits, so every
/// derived offset fits in a `u64` without overflow (at most 2^40 + 16·2^36 + H).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Layout {
    chunk_size: u32,
    plaintext_len: u64,
}

impl Layout {
    /// Checks both values against the limits.
    pub fn new(chunk_size: u32, plaintext_len: u64) -> Result<Layout, SealedError> {
        if !(MIN_CHUNK_SIZE..=MAX_CHUNK_SIZE).contains(&chunk_size) {
            return Err(SealedError::HeaderField {
                field: "chunk_size",
                reason: format!("{chunk_size} is outside {MIN_CHUNK_SIZE}..={MAX_CHUNK_SIZE}"),
            });
        }
        if plaintext_len > MAX_PLAINTEXT_LEN {
            return Err(SealedError::HeaderField {
                field: "plaintext_len",
                reason: format!("{plaintext_len} is more than {MAX_PLAINTEXT_LEN}"),
            });
        }
        Ok(Layout {
            chunk_size,
            plaintext_len,
        })
    }

    /// The chunk size C.
    pub fn chunk_size(&self) -> u32 {
        self.chunk_size
    }

    /// The plaintext length L.
    pub fn plaintext_len(&self) -> u64 {
        self.plaintext_len
    }

    /// n = max(1, ceil(L / C)).
    pub fn chunk_count(&self) -> u64 {
        self.plaintext_len
            .div_ceil(u64::from(self.chunk_size))
            .max(1)
    }

    /// Plaintext bytes of chunk `index` (C, or the remainder for the last one).
    pub fn chunk_plaintext_len(&self, index: u64) -> Result<usize, SealedError> {
        let count = self.chunk_count();
        if index >= count {
            return Err(SealedError::ChunkIndex { index, count });
        }
        let start = index * u64::from(self.chunk_size);
        let len =
            (self.plaintext_len - start.min(self.plaintext_len)).min(u64::from(self.chunk_size));
        // len <= MAX_CHUNK_SIZE, which fits any usize ward runs on (32 bits and up).
        Ok(len as usize)
    }

    /// Where chunk `index`'s plaintext starts in the whole plaintext.
    pub fn plaintext_offset(&self, index: u64) -> u64 {
        index.saturating_mul(u64::from(self.chunk_size))
    }

    /// Where chunk `index` (ciphertext and tag) starts, counted from the end of the header.
    pub fn sealed_offset(&self, index: u64) -> u64 {
        index.saturating_mul(u64::from(self.chunk_size) + TAG_LEN as u64)
    }

    /// Bytes after the header: L + 16·n.
    pub fn body_len(&self) -> u64 {
        self.plaintext_len + TAG_LEN as u64 * self.chunk_count()
    }

    /// Whether `index` is the last chunk.
    pub fn is_last(&self, index: u64) -> bool {
        index + 1 == self.chunk_count()
    }
}

/// A parsed (or freshly built) header. Parsing checks the layout, limits, name and KEK id; the
/// fingerprint and MAC are checked by [`super::SealedOpener`] with the KEK.
#[derive(Clone)]
pub struct SealedHeader {
    layout: Layout,
    plaintext_sha256: Digest,
    salt: [u8; 32],
    name: FileName,
    kek_id: KekId,
    kek_fingerprint: [u8; 32],
    mac: [u8; MAC_LEN],
    /// The exact header bytes, MAC included.
    encoded: Vec<u8>,
}

impl fmt::Debug for SealedHeader {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SealedHeader")
            .field("name", &self.name)
            .field("kek_id", &self.kek_id)
            .field("chunk_size", &self.layout.chunk_size)
            .field("plaintext_len", &self.layout.plaintext_len)
            .field("plaintext_sha256", &self.plaintext_sha256)
            .finish_non_exhaustive()
    }
}

/// A bounds-checked reader over the header bytes.
struct Cursor<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize, field: &'static str) -> Result<&'a [u8], SealedError> {
        let end = self.pos.checked_add(n).filter(|&e| e <= self.buf.len());
        let Some(end) = end else {
            return Err(SealedError::HeaderField {
                field,
                reason: "runs past header_len".to_string(),
            });
        };
        let out = self
            .buf
            .get(self.pos..end)
            .ok_or(SealedError::HeaderField {
                field,
                reason: "runs past header_len".to_string(),
            })?;
        self.pos = end;
        Ok(out)
    }

    fn array<const N: usize>(&mut self, field: &'static str) -> Result<[u8; N], SealedError> {
        let b = self.take(N, field)?;
        <[u8; N]>::try_from(b).map_err(|_| SealedError::HeaderField {
            field,
            reason: "length".to_string(),
        })
    }

    fn u16(&mut self, field: &'static str) -> Result<u16, SealedError> {
        Ok(u16::from_be_bytes(self.array(field)?))
    }

    fn u32(&mut self, field: &'static str) -> Result<u32, SealedError> {
        Ok(u32::from_be_bytes(self.array(field)?))
    }

    fn u64(&mut self, field: &'static str) -> Result<u64, SealedError> {
        Ok(u64::from_be_bytes(self.array(field)?))
    }
}

impl SealedHeader {
    /// Reads the 16-byte prefix and returns the header length H it declares, after checking
    /// magic, version, flags and the bounds of H. Needs only the first [`PREFIX_LEN`] bytes.
    pub fn declared_len(prefix: &[u8]) -> Result<usize, SealedError> {
        let prefix = prefix
            .get(..PREFIX_LEN)
            .ok_or(SealedError::HeaderTruncated {
                needed: PREFIX_LEN,
                got: prefix.len(),
            })?;
        let mut c = Cursor {
            buf: prefix,
            pos: 0,
        };
        if c.array::<8>("magic")? != MAGIC {
            return Err(SealedError::BadMagic);
        }
        let version = c.u16("version")?;
        if version != FORMAT_VERSION {
            return Err(SealedError::UnsupportedVersion(version));
        }
        let flags = c.u16("flags")?;
        if flags != 0 {
            return Err(SealedError::UnsupportedFlags(flags));
        }
        let len = c.u32("header_len")? as usize;
        if !(MIN_HEADER_LEN..=MAX_HEADER_LEN).contains(&len) {
            return Err(SealedError::HeaderField {
                field: "header_len",
                reason: format!("{len} is outside {MIN_HEADER_LEN}..={MAX_HEADER_LEN}"),
            });
        }
        Ok(len)
    }

    /// Parses the header at the start of `bytes` (which may go on with the chunks). Checks
    /// structure and limits only, not authenticity.
    pub fn parse(bytes: &[u8]) -> Result<SealedHeader, SealedError> {
        let len = Self::declared_len(bytes)?;
        let buf = bytes.get(..len).ok_or(SealedError::HeaderTruncated {
            needed: len,
            got: bytes.len(),
        })?;
        let mut c = Cursor {
            buf,
            pos: PREFIX_LEN,
        };
        let chunk_size = c.u32("chunk_size")?;
        let plaintext_len = c.u64("plaintext_len")?;
        let layout = Layout::new(chunk_size, plaintext_len)?;
        let plaintext_sha256 = Digest::from_bytes(c.array("plaintext_sha256")?);
        let salt = c.array("salt")?;
        let name_len = usize::from(c.u16("name_len")?);
        if !(1..=MAX_NAME_LEN).contains(&name_len) {
            return Err(SealedError::HeaderField {
                field: "name_len",
                reason: format!("{name_len} is outside 1..={MAX_NAME_LEN}"),
            });
        }
        let name = std::str::from_utf8(c.take(name_len, "name")?).map_err(|_| {
            SealedError::InvalidName {
                reason: "not UTF-8".to_string(),
            }
        })?;
        let name = FileName::parse(name)?;
        let kek_len = usize::from(c.u16("kek_id_len")?);
        if !(MIN_KEK_ID_LEN..=MAX_KEK_ID_LEN).contains(&kek_len) {
            return Err(SealedError::HeaderField {
                field: "kek_id_len",
                reason: format!("{kek_len} is outside {MIN_KEK_ID_LEN}..={MAX_KEK_ID_LEN}"),
            });
        }
        let kek_id = c.take(kek_len, "kek_id")?;
        let kek_id = std::str::from_utf8(kek_id).map_err(|_| SealedError::InvalidKekId {
            kek_id: String::from_utf8_lossy(kek_id).into_owned(),
        })?;
        let kek_id = KekId::parse(kek_id)?;
        let kek_fingerprint = c.array("kek_fingerprint")?;
        let mac = c.array("header_mac")?;
        if c.pos != len {
            return Err(SealedError::HeaderField {
                field: "header_len",
                reason: format!("{len} declared, the fields take {}", c.pos),
            });
        }
        Ok(SealedHeader {
            layout,
            plaintext_sha256,
            salt,
            name,
            kek_id,
            kek_fingerprint,
            mac,
            encoded: buf.to_vec(),
        })
    }

    /// Builds the header for the sealer; `mac_of` computes the MAC over the bytes before it.
    pub(crate) fn build(
        layout: Layout,
        plaintext_sha256: Digest,
        salt: [u8; 32],
        name: FileName,
        kek_id: KekId,
        kek_fingerprint: [u8; 32],
        mac_of: impl FnOnce(&[u8]) -> Result<[u8; MAC_LEN], SealedError>,
    ) -> Result<SealedHeader, SealedError> {
        let len = FIXED_HEADER_LEN + name.0.len() + kek_id.text.len();
        let mut b = Vec::with_capacity(len);
        b.extend_from_slice(&MAGIC);
        b.extend_from_slice(&FORMAT_VERSION.to_be_bytes());
        b.extend_from_slice(&0u16.to_be_bytes());
        // len <= MAX_HEADER_LEN: FileName and KekId enforce their limits.
        b.extend_from_slice(&(len as u32).to_be_bytes());
        b.extend_from_slice(&layout.chunk_size.to_be_bytes());
        b.extend_from_slice(&layout.plaintext_len.to_be_bytes());
        b.extend_from_slice(plaintext_sha256.as_bytes());
        b.extend_from_slice(&salt);
        b.extend_from_slice(&(name.0.len() as u16).to_be_bytes());
        b.extend_from_slice(name.0.as_bytes());
        b.extend_from_slice(&(kek_id.text.len() as u16).to_be_bytes());
        b.extend_from_slice(kek_id.text.as_bytes());
        b.extend_from_slice(&kek_fingerprint);
        let mac = mac_of(&b)?;
        b.extend_from_slice(&mac);
        Ok(SealedHeader {
            layout,
            plaintext_sha256,
            salt,
            name,
            kek_id,
            kek_fingerprint,
            mac,
            encoded: b,
        })
    }

    /// The exact header bytes (H of them).
    pub fn as_bytes(&self) -> &[u8] {
        &self.encoded
    }

    /// H, the header length.
    pub fn len(&self) -> usize {
        self.encoded.len()
    }

    /// Never true: a header has at least [`MIN_HEADER_LEN`] bytes.
    pub fn is_empty(&self) -> bool {
        self.encoded.is_empty()
    }

    /// The bytes the MAC covers (all but the MAC).
    pub(crate) fn authenticated_bytes(&self) -> &[u8] {
        let end = self.encoded.len().saturating_sub(MAC_LEN);
        self.encoded.get(..end).unwrap_or_default()
    }

    /// The chunk geometry.
    pub fn layout(&self) -> Layout {
        self.layout
    }

    /// The SHA-256 of the whole plaintext, as the sealer recorded it.
    pub fn plaintext_sha256(&self) -> &Digest {
        &self.plaintext_sha256
    }

    /// The file name.
    pub fn name(&self) -> &FileName {
        &self.name
    }

    /// The KEK's KBS resource.
    pub fn kek_id(&self) -> &KekId {
        &self.kek_id
    }

    /// The per-file salt.
    pub(crate) fn salt(&self) -> &[u8; 32] {
        &self.salt
    }

    /// The KEK fingerprint recorded by the sealer.
    pub(crate) fn kek_fingerprint(&self) -> &[u8; 32] {
        &self.kek_fingerprint
    }

    /// The header MAC.
    pub(crate) fn mac(&self) -> &[u8; MAC_LEN] {
        &self.mac
    }

    /// Total sealed file length: H + L + 16·n.
    pub fn sealed_len(&self) -> u64 {
        self.encoded.len() as u64 + self.layout.body_len()
    }

    /// The byte range of chunk `index` (ciphertext and tag) in the sealed file, for random
    /// access (an HTTP range request, a `pread`).
    pub fn chunk_range(&self, index: u64) -> Result<Range<u64>, SealedError> {
        let plain = self.layout.chunk_plaintext_len(index)? as u64;
        let start = self.encoded.len() as u64 + self.layout.sealed_offset(index);
        Ok(start..start + plain + TAG_LEN as u64)
    }
}
