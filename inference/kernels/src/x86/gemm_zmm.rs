//! The prefill GEMMs' panel kernels ([`super::kgemm`]'s for the K-quants, [`super::qgemm`]'s
//! for Q4_0, Q4_1 and Q8_0) on 512-bit vectors, for CPUs with AVX512-VNNI: a panel of 16
//! weight rows (two 8-row halves side by side) meets each activation row with one `vpdpbusd`
//! per 64 multiply-adds, twice the 256-bit kernels' for the same loads, broadcasts and loop.
//! That is what they are for: on an AMD EPYC (Zen 4) the 256-bit K-quant kernel ran at about a
//! third of `vpdpbusd`'s peak (80 of 220 G multiply-adds a second on one core), bound by the
//! instructions around each `vpdpbusd` rather than by it or by its latency (two accumulators
//! per row changed nothing). Zen 4 runs a 512-bit `vpdpbusd` as two 256-bit halves, so the
//! peak in multiply-adds is the same; the instructions around them halve. Measured in the
//! inference README ("Where #22 stands").

// The kernels index register arrays (one per activation row) by the same counters as the
// panel; iterator chains would hide which register is which.
#![allow(clippy::needless_range_loop)]

use std::arch::x86_64::*;

use super::kgemm::{PANEL, Panel};
use super::qgemm;
use crate::blocks::{Format, Q8Block};
use crate::kquants::Q8KBlock;

/// The panel's 16 rows dotted with each of `a` (one super-block each), added to `sums[r]`:
/// [`super::kgemm`]'s VNNI kernel with vectors of 16 lanes.
///
/// # Safety
/// AVX512F, AVX512BW, AVX512VL, AVX512-VNNI, AVX2, FMA and F16C.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
pub(super) unsafe fn panel_dot_k<const R: usize>(
    fmt: Format,
    p: &Panel<2>,
    a: [&Q8KBlock; R],
    sums: &mut [[[f32; PANEL]; 2]],
) {
    let halves = if fmt == Format::Q6K { 2 } else { 1 };
    let mut sumi = [_mm512_setzero_si512(); R];
    for j in 0..8 {
        for half in 0..halves {
            let groups = 8 / halves;
            let mut s32 = [_mm512_setzero_si512(); R];
            for g in half * groups..(half + 1) * groups {
                // SAFETY: `q[j][g]` is 64 bytes.
                let wv = unsafe { _mm512_loadu_si512(p.q[j][g].as_ptr().cast()) };
                for r in 0..R {
                    s32[r] = _mm512_dpbusd_epi32(s32[r], wv, activations(a[r], j, g));
                }
            }
            // Each row's scale, an i16 in its lane's low half (sign-extended to the lane).
            let sc = load16(if half == 1 {
                &p.scales_hi[j]
            } else {
                &p.scales[j]
            });
            let sc = _mm512_srai_epi32(_mm512_slli_epi32(sc, 16), 16);
            for r in 0..R {
                sumi[r] = _mm512_add_epi32(sumi[r], _mm512_mullo_epi32(s32[r], sc));
            }
        }
    }
    let six = fmt == Format::Q6K;
    // SAFETY: the panel's d and dmin are 16 f32 each.
    let (d, dmin) = unsafe {
        (
            _mm512_loadu_ps(p.d.as_ptr().cast()),
            _mm512_loadu_ps(p.dmin.as_ptr().cast()),
        )
    };
    for (r, sums) in sums.iter_mut().enumerate().take(R) {
        // The mins (Q6_K: the offset of 32) against the activations' 16-value sums.
        let bs = &a[r].bsums;
        let mut m32 = _mm512_setzero_si512();
        if six {
            for (pair, mins) in p.mins.iter().enumerate() {
                let both = pack_i16(bs[2 * pair], bs[2 * pair + 1]);
                m32 = _mm512_add_epi32(m32, _mm512_madd_epi16(load16(mins), both));
            }
        } else {
            for (pair, mins) in p.mins.iter().take(4).enumerate() {
                let sum = |j: usize| bs[2 * j].wrapping_add(bs[2 * j + 1]);
                let both = pack_i16(sum(2 * pair), sum(2 * pair + 1));
                m32 = _mm512_add_epi32(m32, _mm512_madd_epi16(load16(mins), both));
            }
        }
        let da = _mm512_set1_ps(a[r].d);
        // SAFETY: 16 f32.
        let mut acc = unsafe { _mm512_loadu_ps(sums.as_ptr().cast()) };
        if six {
            let total = _mm512_sub_epi32(sumi[r], _mm512_slli_epi32(m32, 5));
            acc = _mm512_fmadd_ps(_mm512_mul_ps(d, da), _mm512_cvtepi32_ps(total), acc);
        } else {
            acc = _mm512_fmadd_ps(_mm512_mul_ps(d, da), _mm512_cvtepi32_ps(sumi[r]), acc);
            acc = _mm512_fnmadd_ps(_mm512_mul_ps(dmin, da), _mm512_cvtepi32_ps(m32), acc);
        }
        // SAFETY: 16 f32.
        unsafe { _mm512_storeu_ps(sums.as_mut_ptr().cast(), acc) };
    }
}

/// The panel's 32 i16 (both halves).
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
fn load16(v: &[[i16; 16]; 2]) -> __m512i {
    // SAFETY: 64 bytes.
    unsafe { _mm512_loadu_si512(v.as_ptr().cast()) }
}

/// Activations `4 g..4 g + 4` of sub-block `j` of `a`, broadcast to every i32 lane.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
fn activations(a: &Q8KBlock, j: usize, g: usize) -> __m512i {
    let at = (32 * j + 4 * g).min(a.qs.len() - 4);
    // SAFETY: `at + 4 <= 256 = qs.len()`; unaligned read.
    let x = unsafe { std::ptr::read_unaligned(a.qs.as_ptr().add(at).cast::<i32>()) };
    _mm512_set1_epi32(x)
}

/// Two i16 broadcast as the i16 pair of every i32 lane (see [`super::kgemm`]'s).
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
fn pack_i16(lo: i16, hi: i16) -> __m512i {
    _mm512_set1_epi32(i32::from(lo as u16) | (i32::from(hi as u16) << 16))
}

/// One 32-weight block of 16 weight rows ([`qgemm::Panel`]'s two halves side by side).
pub(super) struct PanelQ8 {
    q: [__m512i; 8],
    qsum: __m512i,
    d: __m512,
    m: __m512,
}

/// The panel of `blocks` (whole, in `fmt`; its first 16); missing rows are zeros.
///
/// # Safety
/// As [`panel_dot_k`].
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
pub(super) unsafe fn pack_q8(fmt: Format, blocks: &[&[u8]]) -> PanelQ8 {
    let (lo, hi) = blocks.split_at(blocks.len().min(PANEL));
    // SAFETY: AVX2, FMA, F16C and AVX512-VNNI with AVX512VL (this function's contract).
    let (lo, hi) = unsafe { (qgemm::pack::<true>(fmt, lo), qgemm::pack::<true>(fmt, hi)) };
    let join = |l: __m256i, h: __m256i| _mm512_inserti64x4(_mm512_castsi256_si512(l), h, 1);
    let join_ps = |l: __m256, h: __m256| {
        _mm512_castsi512_ps(join(_mm256_castps_si256(l), _mm256_castps_si256(h)))
    };
    PanelQ8 {
        q: std::array::from_fn(|g| join(lo.q[g], hi.q[g])),
        qsum: join(lo.qsum, hi.qsum),
        d: join_ps(lo.d, hi.d),
        m: join_ps(lo.m, hi.m),
    }
}

/// [`qgemm`]'s panel kernel on [`PanelQ8`]: the panel's 16 rows dotted with each of `a` (one
/// block each) added to `sums[r]`, Q4_1's `m s` terms to `mins[r]`.
///
/// # Safety
/// As [`panel_dot_k`].
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
pub(super) unsafe fn panel_dot_q8<const R: usize>(
    p: &PanelQ8,
    a: [&Q8Block; R],
    sums: &mut [[[f32; PANEL]; 2]],
    mins: &mut [[[f32; PANEL]; 2]],
) {
    let mut s32 = [_mm512_setzero_si512(); R];
    let shifted = qgemm::shifted(a);
    for g in 0..8 {
        for r in 0..R {
            s32[r] = _mm512_dpbusd_epi32(s32[r], _mm512_set1_epi32(shifted[r][g]), p.q[g]);
        }
    }
    // sum((a + 128) w) - 128 sum(w) = sum(a w).
    let offset = _mm512_slli_epi32(p.qsum, 7);
    for (r, (sums, mins)) in sums.iter_mut().zip(mins.iter_mut()).enumerate().take(R) {
        let dot = _mm512_cvtepi32_ps(_mm512_sub_epi32(s32[r], offset));
        // SAFETY: 16 f32 each.
        unsafe {
            let acc = _mm512_loadu_ps(sums.as_ptr().cast());
            let acc = _mm512_fmadd_ps(_mm512_mul_ps(p.d, _mm512_set1_ps(a[r].d)), dot, acc);
            _mm512_storeu_ps(sums.as_mut_ptr().cast(), acc);
            let acc = _mm512_loadu_ps(mins.as_ptr().cast());
            let acc = _mm512_fmadd_ps(p.m, _mm512_set1_ps(a[r].s), acc);
            _mm512_storeu_ps(mins.as_mut_ptr().cast(), acc);
        }
    }
}
