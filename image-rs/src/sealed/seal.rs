//! The owner side: sealing a plaintext file (`Read`) into a sealed file (`Write`) under a KEK,
//! with a fresh random salt from the OS RNG.
//!
//! The header records the plaintext's length and SHA-256 and every chunk's key depends on the
//! header, so both are known before the first chunk is written: [`seal`] reads its input twice
//! (`Read + Seek`), [`seal_stream`] takes them from the caller and checks them at the end. Never
//! writes a byte of plaintext to the output.

use std::io::{self, Read, Seek, SeekFrom, Write};

use rand::RngCore;

use super::SealedError;
use super::backend::{chunk_cipher, plaintext_hasher};
use super::header::{DEFAULT_CHUNK_SIZE, FileName, KekId, Layout, MAX_PLAINTEXT_LEN, SealedHeader};
use super::keys::{FileKeys, Kek, kek_fingerprint};
use crate::digest::Digest;

/// What to seal a file as.
#[derive(Clone, Debug)]
pub struct SealParams {
    name: FileName,
    kek_id: KekId,
    chunk_size: u32,
}

impl SealParams {
    /// A file `name` sealed under the KEK `kek_id`, in [`DEFAULT_CHUNK_SIZE`] chunks.
    pub fn new(name: &str, kek_id: KekId) -> Result<SealParams, SealedError> {
        Ok(SealParams {
            name: FileName::parse(name)?,
            kek_id,
            chunk_size: DEFAULT_CHUNK_SIZE,
        })
    }

    /// Another chunk size, within the format's limits.
    pub fn with_chunk_size(mut self, chunk_size: u32) -> Result<SealParams, SealedError> {
        Layout::new(chunk_size, 0)?;
        self.chunk_size = chunk_size;
        Ok(self)
    }
}

fn io(e: io::Error) -> SealedError {
    SealedError::Io(e)
}

/// Reads until `buf` is full or EOF; returns the bytes read.
fn read_full(input: &mut impl Read, buf: &mut [u8]) -> Result<usize, SealedError> {
    let mut got = 0;
    while got < buf.len() {
        let rest = buf.get_mut(got..).unwrap_or_default();
        match input.read(rest) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(io(e)),
        }
    }
    Ok(got)
}

/// Seals `input` (read twice: once for its length and SHA-256, once to encrypt) into `output`.
/// Returns the header written.
pub fn seal<R: Read + Seek, W: Write>(
    mut input: R,
    output: W,
    kek: &Kek,
    params: &SealParams,
) -> Result<SealedHeader, SealedError> {
    let start = input.stream_position().map_err(io)?;
    let mut hasher = plaintext_hasher();
    let mut buf = vec![0u8; 1 << 20];
    let mut len = 0u64;
    loop {
        let n = read_full(&mut input, &mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(buf.get(..n).unwrap_or_default());
        len += n as u64;
        if len > MAX_PLAINTEXT_LEN {
            return Err(SealedError::HeaderField {
                field: "plaintext_len",
                reason: format!("the input is more than {MAX_PLAINTEXT_LEN} bytes"),
            });
        }
    }
    input.seek(SeekFrom::Start(start)).map_err(io)?;
    seal_stream(input, len, &hasher.finish()?, output, kek, params)
}

/// Seals `input`, which the caller says holds `plaintext_len` bytes with SHA-256
/// `plaintext_sha256`, into `output` in one pass. If the input disagrees (other length or
/// digest), returns [`SealedError::InputChanged`] after writing: discard the output then.
pub fn seal_stream<R: Read, W: Write>(
    mut input: R,
    plaintext_len: u64,
    plaintext_sha256: &Digest,
    mut output: W,
    kek: &Kek,
    params: &SealParams,
) -> Result<SealedHeader, SealedError> {
    let layout = Layout::new(params.chunk_size, plaintext_len)?;
    let mut salt = [0u8; 32];
    rand::rngs::OsRng
        .try_fill_bytes(&mut salt)
        .map_err(|_| SealedError::Crypto("the OS random number generator failed"))?;
    let keys = FileKeys::new(kek, &salt);
    let header = SealedHeader::build(
        layout,
        plaintext_sha256.clone(),
        salt,
        params.name.clone(),
        params.kek_id.clone(),
        kek_fingerprint(kek)?,
        |authenticated| keys.header_mac(authenticated),
    )?;
    let cipher = chunk_cipher(&keys.data_key(&header)?)?;
    output.write_all(header.as_bytes()).map_err(io)?;

    // The chunk buffer holds plaintext until sealed in place: zeroize it when done.
    let mut buf = zeroize::Zeroizing::new(vec![0u8; params.chunk_size as usize]);
    let mut hasher = plaintext_hasher();
    for index in 0..layout.chunk_count() {
        let len = layout.chunk_plaintext_len(index)?;
        let chunk = buf.get_mut(..len).unwrap_or_default();
        if read_full(&mut input, chunk)? != len {
            return Err(SealedError::InputChanged);
        }
        hasher.update(chunk);
        let tag = cipher.seal_in_place(index, layout.is_last(index), chunk)?;
        output.write_all(chunk).map_err(io)?;
        output.write_all(&tag).map_err(io)?;
    }
    let mut probe = [0u8; 1];
    if read_full(&mut input, &mut probe)? != 0 || &hasher.finish()? != plaintext_sha256 {
        return Err(SealedError::InputChanged);
    }
    output.flush().map_err(io)?;
    Ok(header)
}
