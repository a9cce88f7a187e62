//! ward-image: pulling, verifying and decrypting OCI images and sealed model artifacts inside
//! guest memory.
//!
//! Will own (issues "Encrypted OCI images" and "Sealed model weights"): registry pulls, ocicrypt
//! (JWE recipients and CoCo key-provider packets, AES-256-CTR + HMAC-SHA256 layers), a streaming
//! verify → decrypt → decompress → unpack pipeline that publishes nothing before every digest and
//! tag holds, escape-proof unpacking, signature policy, and the chunked-AEAD sealed model format.
//!
//! Implemented so far:
//! - [`unpack`]: applying untrusted OCI layer tar streams onto a rootfs without escaping it
//!   (`openat2` in-root resolution, whiteouts, limits).
//!
//! The rest is not implemented yet; wardd answers the image-pull API with `UNIMPLEMENTED`.

pub mod unpack;
