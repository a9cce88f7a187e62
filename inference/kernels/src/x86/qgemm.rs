//! The prefill product of Q4_0, Q4_1 and Q8_0 weights (8 or more activation rows) with
//! VNNI's `vpdpbusd` (AVX-VNNI here; AVX512-VNNI in [`super::gemm_zmm`] with 16 rows to a
//! panel), as a packed-panel GEMM like the K-quants' ([`super::kgemm`]): for 8 weight rows and
//! one 32-weight block, the quants are unpacked to signed bytes and transposed so that each
//! vector holds 4 of every row; each activation row meets them with a broadcast of 4 bytes and
//! one `vpdpbusd` per 32 multiply-adds, the sums staying in the lanes of their rows.
//!
//! `vpdpbusd` multiplies unsigned by signed bytes: the activations (signed, `|a| <= 127`) are
//! offset by 128 to make them unsigned (`a ^ 0x80`), and `128 sum(w)` per row and block (one
//! more `vpdpbusd` of the panel against ones) is taken back off: exact integer arithmetic.
//! Without VNNI (AVX-VNNI or AVX512-VNNI) these formats keep the 4-row tiles.

// The kernels index register arrays (one per weight row, activation row or group) by the same
// counters; iterator chains would hide which register is which.
#![allow(clippy::needless_range_loop)]

use std::arch::x86_64::*;

use super::gemm_zmm as zmm;
use super::kgemm::{PANEL, transpose8};
use super::{Gemm, Vnni, dpbusd};
use crate::blocks::{Format, Q8Block, QK, f16_at};

/// One 32-weight block of [`PANEL`] weight rows, unpacked.
pub(super) struct Panel {
    /// `q[g]`: weights `4 g..4 g + 4` of rows 0..8 as signed bytes (Q4_1: its unsigned
    /// nibbles), 4 bytes a row.
    pub(super) q: [__m256i; 8],
    /// Each row's `sum(q)`, in its i32 lane.
    pub(super) qsum: __m256i,
    pub(super) d: __m256,
    /// Q4_1's `m` per row (zero for the others).
    pub(super) m: __m256,
}

/// `res[t * rows + i]` = weight row `i` of `w` (`rows` rows of `nb` blocks of `fmt`, a format
/// of 32 weights) dotted with activation row `t` of `acts` (`m` rows of `nb` blocks). Returns
/// false (computing nothing) where the lengths do not hold or `vnni` is [`Vnni::None`] (it is
/// checked against the CPU by [`Vnni::of`]).
#[allow(clippy::too_many_arguments)]
pub(crate) fn gemm_q8(
    vnni: Vnni,
    fmt: Format,
    w: &[u8],
    rows: usize,
    nb: usize,
    acts: &[Q8Block],
    m: usize,
    res: &mut [f32],
) -> bool {
    let Some(g) = Gemm::checked(fmt, w, rows, nb, acts, m, res.len()) else {
        return false;
    };
    if fmt.block_weights() != QK || vnni == Vnni::None || !crate::kernel::avx2() {
        return false;
    }
    // SAFETY: AVX2, FMA and F16C were detected above, and `vnni`'s instructions by
    // `Vnni::of` (`Vnni::Evex`: AVX512F, AVX512BW, AVX512VL and AVX512-VNNI, which the
    // 512-bit kernels use).
    unsafe {
        if vnni == Vnni::Evex {
            let (pack, dot4, dot1) = (zmm::pack_q8, zmm::panel_dot_q8::<4>, zmm::panel_dot_q8::<1>);
            drive::<_, 2>(g, res, pack, dot4, dot1)
        } else {
            drive::<_, 1>(g, res, pack::<false>, panel_dot::<4>, panel_dot::<1>)
        }
    }
    true
}

/// A panel kernel: adds the panel's rows dotted with each of `R` activation rows (one block
/// each) to that row's sums, Q4_1's `m s` terms to its mins.
type PanelDot<P, const H: usize, const R: usize> =
    unsafe fn(&P, [&Q8Block; R], &mut [[[f32; PANEL]; H]], &mut [[[f32; PANEL]; H]]);

/// [`gemm_q8`]'s loop, lengths checked by it, for panels `P` of `H` x [`PANEL`] rows: for each
/// panel of rows and each block, the panel is packed once (`pack`, given at most `H` x
/// [`PANEL`] rows' blocks) and met by every activation row, 4 at a time (`dot4`) and then one
/// at a time (`dot1`).
///
/// # Safety
/// The CPU runs `pack`, `dot4` and `dot1`, and has AVX2, FMA and F16C (compiled for them, so
/// that the portable build runs this loop's copies and sums in 256-bit vectors too).
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn drive<P, const H: usize>(
    g: Gemm<'_, Q8Block>,
    res: &mut [f32],
    pack: unsafe fn(Format, &[&[u8]]) -> P,
    dot4: PanelDot<P, H, 4>,
    dot1: PanelDot<P, H, 1>,
) {
    let Gemm {
        fmt,
        w,
        row_bytes,
        rows,
        nb,
        acts,
        m,
    } = g;
    let block = fmt.block_bytes();
    let mut sums = vec![[[0f32; PANEL]; H]; m];
    // Q4_1's `m s` terms apart from the products they cancel against, added once at the end
    // (as the tiles do): summed block by block into one total, their rounding outgrew the
    // products' (SmolLM2's logits moved from llama.cpp's by cosine 0.9992 against 0.99965).
    let mut mins = vec![[[0f32; PANEL]; H]; m];
    let mut first = 0;
    while first < rows {
        let n = (H * PANEL).min(rows - first);
        sums.fill([[0.0; PANEL]; H]);
        mins.fill([[0.0; PANEL]; H]);
        for b in 0..nb {
            let mut blocks = [&[][..]; 2 * PANEL];
            for (i, blk) in blocks.iter_mut().enumerate().take(n) {
                let at = (first + i) * row_bytes + b * block;
                *blk = &w[at..at + block];
            }
            // SAFETY: the CPU runs `pack` (this function's contract).
            let panel = unsafe { pack(fmt, &blocks[..n]) };
            if b + 1 < nb {
                super::prefetch_blocks(w, first..first + n, row_bytes, (b + 1) * block, block);
            }
            let act = |t: usize| &acts[t * nb + b];
            let mut t = 0;
            while t + 4 <= m {
                let a = [act(t), act(t + 1), act(t + 2), act(t + 3)];
                let (s, mn) = (&mut sums[t..t + 4], &mut mins[t..t + 4]);
                // SAFETY: the CPU runs `dot4` (this function's contract).
                unsafe { dot4(&panel, a, s, mn) };
                t += 4;
            }
            while t < m {
                let (s, mn) = (&mut sums[t..t + 1], &mut mins[t..t + 1]);
                // SAFETY: the CPU runs `dot1` (this function's contract).
                unsafe { dot1(&panel, [act(t)], s, mn) };
                t += 1;
            }
        }
        for (t, (s, mn)) in sums.iter().zip(&mins).enumerate() {
            for (o, (s, mn)) in res[t * rows + first..][..n]
                .iter_mut()
                .zip(s.as_flattened().iter().zip(mn.as_flattened()))
            {
                *o = s + mn;
            }
        }
        first += n;
    }
}

/// The panel of `blocks` (whole, in `fmt`; its first [`PANEL`]); missing rows are zeros.
///
/// # Safety
/// AVX2, FMA, F16C, and AVX512-VNNI with AVX512VL (`EVEX`) or AVX-VNNI.
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn pack<const EVEX: bool>(fmt: Format, blocks: &[&[u8]]) -> Panel {
    let low = _mm_set1_epi8(0x0f);
    let mut rows = [_mm256_setzero_si256(); PANEL];
    let (mut d, mut m) = ([0f32; PANEL], [0f32; PANEL]);
    for (i, b) in blocks.iter().take(PANEL).enumerate() {
        d[i] = f16_at(b, 0);
        let nibbles = |at: usize| match b.get(at..at + 16) {
            Some(raw) => {
                // SAFETY: 16 bytes.
                let raw = unsafe { _mm_loadu_si128(raw.as_ptr().cast()) };
                let lo = _mm_and_si128(raw, low);
                let hi = _mm_and_si128(_mm_srli_epi16(raw, 4), low);
                _mm256_set_m128i(hi, lo)
            }
            None => _mm256_setzero_si256(),
        };
        rows[i] = match fmt {
            Format::Q8_0 => match b.get(2..34) {
                // SAFETY: 32 bytes.
                Some(q) => unsafe { _mm256_loadu_si256(q.as_ptr().cast()) },
                None => _mm256_setzero_si256(),
            },
            Format::Q4_0 => _mm256_sub_epi8(nibbles(2), _mm256_set1_epi8(8)),
            _ => {
                m[i] = f16_at(b, 2);
                nibbles(4)
            }
        };
    }
    let q = transpose8(rows);
    let ones = _mm256_set1_epi8(1);
    let mut qsum = _mm256_setzero_si256();
    for v in q {
        // SAFETY: the CPU has `EVEX`'s encoding (this function's contract).
        qsum = unsafe { dpbusd::<EVEX>(qsum, ones, v) };
    }
    Panel {
        q,
        qsum,
        // SAFETY: 8 f32 each.
        d: unsafe { _mm256_loadu_ps(d.as_ptr()) },
        // SAFETY: as above.
        m: unsafe { _mm256_loadu_ps(m.as_ptr()) },
    }
}

/// Each of `a`'s 32 activations plus 128 (unsigned, for `vpdpbusd`), 4 to an i32.
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) fn shifted<const R: usize>(a: [&Q8Block; R]) -> [[i32; 8]; R] {
    let flip = _mm256_set1_epi8(-128);
    let mut shifted = [[0i32; 8]; R];
    for r in 0..R {
        // SAFETY: `qs` is 32 bytes, `shifted[r]` too; unaligned loads and stores.
        unsafe {
            let x = _mm256_xor_si256(_mm256_loadu_si256(a[r].qs.as_ptr().cast()), flip);
            _mm256_storeu_si256(shifted[r].as_mut_ptr().cast(), x);
        }
    }
    shifted
}

/// Adds the panel's 8 rows dotted with each of `a` (one block each) to `sums[r]`, Q4_1's
/// `m s` terms to `mins[r]`.
///
/// # Safety
/// AVX2, FMA, F16C and AVX-VNNI.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn panel_dot<const R: usize>(
    p: &Panel,
    a: [&Q8Block; R],
    sums: &mut [[[f32; PANEL]; 1]],
    mins: &mut [[[f32; PANEL]; 1]],
) {
    let mut s32 = [_mm256_setzero_si256(); R];
    let shifted = shifted(a);
    for g in 0..8 {
        for r in 0..R {
            let x = _mm256_set1_epi32(shifted[r][g]);
            // SAFETY: the CPU has AVX-VNNI (this function's contract).
            s32[r] = unsafe { dpbusd::<false>(s32[r], x, p.q[g]) };
        }
    }
    // sum((a + 128) w) - 128 sum(w) = sum(a w).
    let offset = _mm256_slli_epi32(p.qsum, 7);
    for (r, (sums, mins)) in sums.iter_mut().zip(mins.iter_mut()).enumerate().take(R) {
        let dot = _mm256_cvtepi32_ps(_mm256_sub_epi32(s32[r], offset));
        // SAFETY: 8 f32 each.
        unsafe {
            let acc = _mm256_loadu_ps(sums[0].as_ptr());
            let acc = _mm256_fmadd_ps(_mm256_mul_ps(p.d, _mm256_set1_ps(a[r].d)), dot, acc);
            _mm256_storeu_ps(sums[0].as_mut_ptr(), acc);
            let acc = _mm256_loadu_ps(mins[0].as_ptr());
            let acc = _mm256_fmadd_ps(p.m, _mm256_set1_ps(a[r].s), acc);
            _mm256_storeu_ps(mins[0].as_mut_ptr(), acc);
        }
    }
}
