//! AVX2 dot products of K-quant weight rows (Q4_K, Q5_K, Q6_K: super-blocks of 256) with
//! activations quantised to [`Q8KBlock`]s, in llama.cpp's integer arithmetic
//! (`ggml_vec_dot_q{4,5,6}_K_q8_K`): per 32 weights `vpmaddubsw` (unsigned quants x signed
//! activations, i16 pairs) then `vpmaddwd` with the sub-block's integer scale, summed as i32
//! across the whole super-block; one conversion and one FMA per super-block. The K-quants' mins
//! (and Q6_K's offset of 32) meet the activations' 16-value sums (`bsums`) the same way.
//!
//! A tile is weight rows, one at a time, against `R` activation rows: each super-block's scales
//! are unpacked once per weight row for all `R`.
//!
//! Only called after `available` said yes; lengths are checked by [`tile_k`], the one entry.
//!
//! Sizes (no i16 or i32 overflow): activations are in [-127, 127]; a `vpmaddubsw` pair is at
//! most 2 x 63 x 127 = 16002 (Q6_K's 6-bit quants; 3810 for Q4_K, 7874 for Q5_K); times an
//! integer scale (6-bit unsigned, or Q6_K's signed 8-bit) and summed over a super-block's eight
//! sub-blocks, at most 8 x 2 x 128 x 16002 < 2^25 per i32 lane.

// The kernels index register arrays (one per weight row, activation row or sub-block) by the
// same counters; iterator chains would hide which register is which.
#![allow(clippy::needless_range_loop)]

use std::arch::x86_64::*;

use super::{hsum, two_f16};
use crate::blocks::{Format, f16_at, tile_row_bytes};
use crate::kquants::Q8KBlock;
#[cfg(test)]
use crate::kquants::{packed_scales, unpack_scales};

/// `out[j][r]` = row `j` of `w` (`out.len()` rows of `nb` super-blocks of `fmt`, a K-quant)
/// dotted with `a[r]` (at least `nb` blocks each). Returns false (computing nothing) if the
/// lengths do not hold, `fmt` is not a K-quant or the CPU lacks the features.
pub(crate) fn tile_k<const R: usize>(
    fmt: Format,
    w: &[u8],
    nb: usize,
    a: [&[Q8KBlock]; R],
    out: &mut [[f32; R]],
) -> bool {
    let Some(row_bytes) = tile_row_bytes(fmt, w, out.len(), nb, &a) else {
        return false;
    };
    if !crate::kernel::avx2() {
        return false;
    }
    // SAFETY: the CPU has AVX2, FMA and F16C (checked just above); every row of `w` holds
    // `nb` whole super-blocks and every `a[r]` at least `nb` blocks (checked above), which is
    // all the pointer arithmetic below relies on.
    unsafe {
        match fmt {
            Format::Q4K => rows_q45k::<R, false>(w, row_bytes, nb, a, out),
            Format::Q5K => rows_q45k::<R, true>(w, row_bytes, nb, a, out),
            Format::Q6K => rows_q6k::<R>(w, row_bytes, nb, a, out),
            _ => return false,
        }
    }
    true
}

/// [`unpack_scales`] in SSE registers: `packed` holds the 12 scale bytes in its low lanes
/// (32-bit words `u0`, `u1`, `u2`; the fourth is ignored); the eight scales come out in bytes
/// 0..8, the eight mins in 8..16.
#[target_feature(enable = "avx2,fma,f16c")]
fn unpack_scales_simd(packed: __m128i) -> __m128i {
    // Lanes: [u0, u1, u0, u1] and [.., .., u2, u2 >> 4].
    let a = _mm_shuffle_epi32(packed, 0b01_00_01_00);
    let b = _mm_srlv_epi32(
        _mm_shuffle_epi32(packed, 0b10_10_10_10),
        _mm_set_epi32(4, 0, 0, 0),
    );
    // Low words: u & 0x3f3f3f3f; high words: (u2' & 0x0f0f0f0f) | ((u >> 6) & 0x03030303) << 4.
    let low = _mm_and_si128(a, _mm_set1_epi32(0x3f3f_3f3f));
    let top = _mm_slli_epi32(
        _mm_and_si128(_mm_srli_epi32(a, 6), _mm_set1_epi32(0x0303_0303)),
        4,
    );
    let high = _mm_or_si128(_mm_and_si128(b, _mm_set1_epi32(0x0f0f_0f0f)), top);
    // [s0..3, m0..3, s4..7, m4..7] -> [s0..7, m0..7].
    let words = _mm_blend_epi32(low, high, 0b1100);
    _mm_shuffle_epi32(words, 0b11_01_10_00)
}

/// `vpshufb` indices that broadcast i16 lane `j` to every lane.
#[target_feature(enable = "avx2,fma,f16c")]
fn lane16(j: usize) -> __m256i {
    let lo = (2 * j) as i16;
    _mm256_set1_epi16(((lo + 1) << 8) | lo)
}

/// Q4_K (`Q5` false) and Q5_K (`Q5` true): `w = d sc q - dmin m` per 32-weight sub-block,
/// so a super-block's dot is `d da sum_j sc_j dot_j - dmin da sum_j m_j bsum_j`.
///
/// # Safety
/// AVX2, FMA and F16C; `w` holds `out.len()` rows of `row_bytes` (`nb` super-blocks); `a[r]`
/// holds `nb` blocks.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn rows_q45k<const R: usize, const Q5: bool>(
    w: &[u8],
    row_bytes: usize,
    nb: usize,
    a: [&[Q8KBlock]; R],
    out: &mut [[f32; R]],
) {
    let (block, qs_at) = if Q5 { (176, 48) } else { (144, 16) };
    let low = _mm256_set1_epi8(0x0f);
    let sixteen = _mm256_set1_epi8(16);
    for (j, o) in out.iter_mut().enumerate() {
        let mut acc = [_mm256_setzero_ps(); R];
        for sb in 0..nb {
            let at = j * row_bytes + sb * block;
            let b = &w[at..at + block];
            // SAFETY: d and dmin, the block's first 4 bytes.
            let dm = unsafe { two_f16(b.as_ptr()) };
            let (d, dmin) = (_mm_cvtss_f32(dm), _mm_cvtss_f32(_mm_movehdup_ps(dm)));
            // SAFETY: bytes 4..20 of the block: the 12 scale bytes and 4 more of it.
            let sm = unpack_scales_simd(unsafe { _mm_loadu_si128(b.as_ptr().add(4).cast()) });
            let scales = _mm_cvtepu8_epi16(sm);
            let scales = _mm256_set_m128i(scales, scales);
            let mins = _mm_cvtepu8_epi16(_mm_srli_si128(sm, 8));
            let high = if Q5 {
                // SAFETY: qh, bytes 16..48 of the block.
                unsafe { _mm256_loadu_si256(b.as_ptr().add(16).cast()) }
            } else {
                _mm256_setzero_si256()
            };
            let mut sumi = [_mm256_setzero_si256(); R];
            for pair in 0..4 {
                // SAFETY: the 32 quant bytes of sub-blocks 2 pair (low nibbles) and
                // 2 pair + 1 (high), inside the block.
                let raw = unsafe { _mm256_loadu_si256(b.as_ptr().add(qs_at + 32 * pair).cast()) };
                let mut q0 = _mm256_and_si256(raw, low);
                let mut q1 = _mm256_and_si256(_mm256_srli_epi16(raw, 4), low);
                if Q5 {
                    let bit = |j: usize| {
                        let m = _mm256_set1_epi8((1u8 << j) as i8);
                        let set = _mm256_cmpeq_epi8(_mm256_and_si256(high, m), m);
                        _mm256_and_si256(set, sixteen)
                    };
                    q0 = _mm256_or_si256(q0, bit(2 * pair));
                    q1 = _mm256_or_si256(q1, bit(2 * pair + 1));
                }
                let s0 = _mm256_shuffle_epi8(scales, lane16(2 * pair));
                let s1 = _mm256_shuffle_epi8(scales, lane16(2 * pair + 1));
                for r in 0..R {
                    let qs = a[r][sb].qs.as_ptr();
                    // SAFETY: 64 of the block's 256 activation bytes.
                    let (a0, a1) = unsafe {
                        (
                            _mm256_loadu_si256(qs.add(64 * pair).cast()),
                            _mm256_loadu_si256(qs.add(64 * pair + 32).cast()),
                        )
                    };
                    let p0 = _mm256_madd_epi16(s0, _mm256_maddubs_epi16(q0, a0));
                    let p1 = _mm256_madd_epi16(s1, _mm256_maddubs_epi16(q1, a1));
                    sumi[r] = _mm256_add_epi32(sumi[r], _mm256_add_epi32(p0, p1));
                }
            }
            for r in 0..R {
                let ab = &a[r][sb];
                acc[r] = _mm256_fmadd_ps(
                    _mm256_set1_ps(d * ab.d),
                    _mm256_cvtepi32_ps(sumi[r]),
                    acc[r],
                );
                // SAFETY: `bsums` is 16 i16 (32 bytes).
                let (b0, b1) = unsafe {
                    (
                        _mm_loadu_si128(ab.bsums.as_ptr().cast()),
                        _mm_loadu_si128(ab.bsums.as_ptr().add(8).cast()),
                    )
                };
                // The mins' four products in the low lanes, zeros above: into the same sum.
                let prod = _mm_madd_epi16(mins, _mm_hadd_epi16(b0, b1));
                acc[r] = _mm256_fmadd_ps(
                    _mm256_set1_ps(-dmin * ab.d),
                    _mm256_cvtepi32_ps(_mm256_zextsi128_si256(prod)),
                    acc[r],
                );
            }
        }
        for r in 0..R {
            o[r] = hsum(acc[r]);
        }
    }
}

/// Q6_K: `w = d sc (q - 32)` with a signed scale per 16 weights: `d da (sum_g sc_g dot_g -
/// 32 sum_g sc_g bsum_g)`.
///
/// # Safety
/// As [`rows_q45k`].
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn rows_q6k<const R: usize>(
    w: &[u8],
    row_bytes: usize,
    nb: usize,
    a: [&[Q8KBlock]; R],
    out: &mut [[f32; R]],
) {
    const BLOCK: usize = 210;
    let low = _mm256_set1_epi8(0x0f);
    let three = _mm256_set1_epi8(3);
    for (j, o) in out.iter_mut().enumerate() {
        let mut acc = [_mm256_setzero_ps(); R];
        for sb in 0..nb {
            let at = j * row_bytes + sb * BLOCK;
            let b = &w[at..at + BLOCK];
            let d = f16_at(b, 208);
            // SAFETY: the 16 scales, bytes 192..208.
            let scales = unsafe { _mm_loadu_si128(b.as_ptr().add(192).cast()) };
            let mut sumi = [_mm256_setzero_si256(); R];
            for r in 0..R {
                // SAFETY: `bsums` is 16 i16 (32 bytes).
                let bsums = unsafe { _mm256_loadu_si256(a[r][sb].bsums.as_ptr().cast()) };
                let offset = _mm256_madd_epi16(bsums, _mm256_cvtepi8_epi16(scales));
                sumi[r] = _mm256_sub_epi32(sumi[r], _mm256_slli_epi32(offset, 5));
            }
            for h in 0..2 {
                // SAFETY: ql bytes 64 h..64 h + 64 and qh bytes 128 + 32 h..+ 32, inside the
                // block.
                let (ql0, ql1, qh) = unsafe {
                    (
                        _mm256_loadu_si256(b.as_ptr().add(64 * h).cast()),
                        _mm256_loadu_si256(b.as_ptr().add(64 * h + 32).cast()),
                        _mm256_loadu_si256(b.as_ptr().add(128 + 32 * h).cast()),
                    )
                };
                let two = |shift: i32| {
                    let hi =
                        _mm256_and_si256(_mm256_srl_epi16(qh, _mm_cvtsi32_si128(shift)), three);
                    _mm256_slli_epi16(hi, 4)
                };
                let q = [
                    _mm256_or_si256(_mm256_and_si256(ql0, low), two(0)),
                    _mm256_or_si256(_mm256_and_si256(ql1, low), two(2)),
                    _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(ql0, 4), low), two(4)),
                    _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(ql1, 4), low), two(6)),
                ];
                for (s, q) in q.into_iter().enumerate() {
                    // Scales 8 h + 2 s for the sub-block's first 16 weights, 8 h + 2 s + 1
                    // for the rest.
                    let (s0, s1) = ((8 * h + 2 * s) as i8, (8 * h + 2 * s + 1) as i8);
                    let pick = _mm_set_epi64x(
                        i64::from_ne_bytes([s1 as u8; 8]),
                        i64::from_ne_bytes([s0 as u8; 8]),
                    );
                    let sc = _mm256_cvtepi8_epi16(_mm_shuffle_epi8(scales, pick));
                    for r in 0..R {
                        // SAFETY: 32 of the block's 256 activation bytes.
                        let x = unsafe {
                            _mm256_loadu_si256(a[r][sb].qs.as_ptr().add(128 * h + 32 * s).cast())
                        };
                        let p = _mm256_madd_epi16(sc, _mm256_maddubs_epi16(q, x));
                        sumi[r] = _mm256_add_epi32(sumi[r], p);
                    }
                }
            }
            for r in 0..R {
                acc[r] = _mm256_fmadd_ps(
                    _mm256_set1_ps(d * a[r][sb].d),
                    _mm256_cvtepi32_ps(sumi[r]),
                    acc[r],
                );
            }
        }
        for r in 0..R {
            o[r] = hsum(acc[r]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The SSE unpacking of the scales equals the scalar one on every bit pattern tried.
    #[test]
    fn simd_unpacked_scales_equal_the_scalar_ones() {
        if !crate::kernel::avx2() {
            eprintln!("skipped: this CPU has no AVX2");
            return;
        }
        let mut x = 0x2545_f491_4f6c_dd1du64;
        for i in 0..500 {
            let mut block = [0u8; 16];
            for b in &mut block {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                *b = x as u8;
            }
            if i < 96 {
                block = [0; 16];
                block[i / 8] = 1 << (i % 8);
            }
            let mut padded = [0u8; 16];
            padded[4..16].copy_from_slice(&block[..12]);
            let want = unpack_scales(packed_scales(&padded));
            // SAFETY: AVX2 checked above; `block` is 16 bytes.
            let got = unsafe { unpack_scales_simd(_mm_loadu_si128(block.as_ptr().cast())) };
            let mut bytes = [0u8; 16];
            // SAFETY: 16 bytes.
            unsafe { _mm_storeu_si128(bytes.as_mut_ptr().cast(), got) };
            assert_eq!(bytes, want, "{block:?}");
        }
    }
}
