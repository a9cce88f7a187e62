//! The prefill product of K-quant weights (many activation rows at once) with AVX2, as a
//! packed-panel GEMM: for 8 weight rows and one super-block, the quants are unpacked once into
//! a [`Panel`] where each 32-byte vector holds 4 consecutive quants of all 8 rows, with the
//! rows' scales and mins laid out beside them; then every activation row meets the panel with
//! a broadcast of 4 activation bytes, one `vpmaddubsw` per 32 multiply-adds, and sums that stay
//! in the lanes of their weight row (no horizontal sums). The panel is rebuilt per super-block
//! (2.5 KiB, in L1; 5 KiB for the 16 rows of [`super::gemm_zmm`]) and used by all activation
//! rows: packing and the loop around it were 10% of a TinyLlama Q4_K_M 128-token prefill with
//! the 512-bit kernel (inference README). Decode (one row) keeps the row-at-a-time kernel of
//! [`super::kquants`].
//!
//! Nothing is repacked at load: the weights stay as the GGUF file has them, in the buffer they
//! arrived in (llama.cpp repacks Q4_K into interleaved rows when it loads a model).
//!
//! i16 sums (no overflow): a `vpmaddubsw` lane is two products of a quant and an activation
//! (|a| <= 127): at most 2 x 15 x 127 = 3810 (Q4_K), 7874 (Q5_K), 16002 (Q6_K), so 8, 4 and 2
//! of them are added before `vpmaddwd` widens them with the sub-block's scale.

// The kernels index register arrays (one per weight row, activation row or sub-block) by the
// same counters; iterator chains would hide which register is which.
#![allow(clippy::needless_range_loop)]

use std::arch::x86_64::*;

use super::gemm_zmm as zmm;
use super::{Gemm, Vnni, dpbusd};
use crate::blocks::{Format, f16_at};
use crate::kquants::{Q8KBlock, packed_scales, unpack_scales};

/// Weight rows in a panel: the 8 i32 lanes of a vector.
pub(crate) const PANEL: usize = 8;

/// One super-block of `H` x [`PANEL`] weight rows, unpacked for the GEMM: `H` is 1 for the
/// 256-bit kernels here, 2 for the 512-bit ones of [`super::gemm_zmm`], whose vectors hold
/// both halves (`[h]`, rows `8 h..8 h + 8`) side by side.
#[repr(C, align(64))]
pub(super) struct Panel<const H: usize> {
    /// `q[j][g][h]`: quants `4 g..4 g + 4` of sub-block `j` of rows 0..8 of half `h`, 4 bytes a
    /// row (Q4_K 0..16, Q5_K 0..32, Q6_K 0..64).
    pub(super) q: [[[[u8; 32]; H]; 8]; 8],
    /// `scales[j][h]`: i16 lanes `2 i, 2 i + 1` hold row `i`'s scale of sub-block `j` (Q6_K: of
    /// its first 16 weights).
    pub(super) scales: [[[i16; 16]; H]; 8],
    /// Q6_K: the scale of sub-block `j`'s last 16 weights, laid out as `scales`.
    pub(super) scales_hi: [[[i16; 16]; H]; 8],
    /// Q4_K/Q5_K: `mins[p][h]` (p < 4) lanes `2 i, 2 i + 1` hold row `i`'s mins of sub-blocks
    /// `2 p, 2 p + 1`; Q6_K: `mins[p][h]` (p < 8) its scales `2 p, 2 p + 1` (for the offset of
    /// 32).
    pub(super) mins: [[[i16; 16]; H]; 8],
    pub(super) d: [[f32; 8]; H],
    pub(super) dmin: [[f32; 8]; H],
}

impl<const H: usize> Panel<H> {
    const ZERO: Panel<H> = Panel {
        q: [[[[0; 32]; H]; 8]; 8],
        scales: [[[0; 16]; H]; 8],
        scales_hi: [[[0; 16]; H]; 8],
        mins: [[[0; 16]; H]; 8],
        d: [[0.0; 8]; H],
        dmin: [[0.0; 8]; H],
    };

    /// Rows `0..blocks.len()` (at most [`PANEL`]) of half `h < H` of the panel from their
    /// super-blocks (whole, in `fmt`); the half's other rows must be zero. The quants are
    /// unpacked in registers, a sub-block of all 8 rows at a time, and transposed so that each
    /// vector holds 4 quants of every row.
    ///
    /// # Safety
    /// AVX2, FMA and F16C.
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn pack(&mut self, fmt: Format, blocks: &[&[u8]], h: usize) {
        let h = h.min(H - 1);
        let low = _mm256_set1_epi8(0x0f);
        let load = |b: &[u8], at: usize| match b.get(at..at + 32) {
            // SAFETY: 32 bytes.
            Some(v) => unsafe { _mm256_loadu_si256(v.as_ptr().cast()) },
            None => _mm256_setzero_si256(),
        };
        let mut store = |j: usize, rows: [__m256i; PANEL]| {
            for (g, v) in transpose8(rows).into_iter().enumerate() {
                // SAFETY: `q[j][g]` is 32 bytes.
                unsafe { _mm256_storeu_si256(self.q[j][g][h].as_mut_ptr().cast(), v) };
            }
        };
        let n = blocks.len().min(PANEL);
        if fmt == Format::Q6K {
            let three = _mm256_set1_epi8(3);
            for part in 0..2 {
                let mut subs = [[_mm256_setzero_si256(); PANEL]; 4];
                for (i, b) in blocks.iter().take(n).enumerate() {
                    let (ql0, ql1, qh) = (
                        load(b, 64 * part),
                        load(b, 64 * part + 32),
                        load(b, 128 + 32 * part),
                    );
                    let two = |shift: i32| {
                        let count = _mm_cvtsi32_si128(shift);
                        _mm256_slli_epi16(_mm256_and_si256(_mm256_srl_epi16(qh, count), three), 4)
                    };
                    let nib = |v: __m256i, shift: i32| {
                        _mm256_and_si256(_mm256_srl_epi16(v, _mm_cvtsi32_si128(shift)), low)
                    };
                    subs[0][i] = _mm256_or_si256(nib(ql0, 0), two(0));
                    subs[1][i] = _mm256_or_si256(nib(ql1, 0), two(2));
                    subs[2][i] = _mm256_or_si256(nib(ql0, 4), two(4));
                    subs[3][i] = _mm256_or_si256(nib(ql1, 4), two(6));
                }
                for (s, rows) in subs.into_iter().enumerate() {
                    store(4 * part + s, rows);
                }
            }
            for (i, b) in blocks.iter().take(n).enumerate() {
                self.d[h][i] = f16_at(b, 208);
                let sc = |g: usize| i16::from(b.get(192 + g).copied().unwrap_or(0) as i8);
                for j in 0..8 {
                    self.scales[j][h][2 * i..2 * i + 2].fill(sc(2 * j));
                    self.scales_hi[j][h][2 * i..2 * i + 2].fill(sc(2 * j + 1));
                    self.mins[j][h][2 * i] = sc(2 * j);
                    self.mins[j][h][2 * i + 1] = sc(2 * j + 1);
                }
            }
            return;
        }
        let q5 = fmt == Format::Q5K;
        let qs_at = if q5 { 48 } else { 16 };
        let sixteen = _mm256_set1_epi8(16);
        for pair in 0..4 {
            let mut lo = [_mm256_setzero_si256(); PANEL];
            let mut hi = [_mm256_setzero_si256(); PANEL];
            for (i, b) in blocks.iter().take(n).enumerate() {
                let raw = load(b, qs_at + 32 * pair);
                lo[i] = _mm256_and_si256(raw, low);
                hi[i] = _mm256_and_si256(_mm256_srli_epi16(raw, 4), low);
                if q5 {
                    let high = load(b, 16);
                    let bit = |j: usize| {
                        let m = _mm256_set1_epi8((1u8 << j) as i8);
                        _mm256_and_si256(_mm256_cmpeq_epi8(_mm256_and_si256(high, m), m), sixteen)
                    };
                    lo[i] = _mm256_or_si256(lo[i], bit(2 * pair));
                    hi[i] = _mm256_or_si256(hi[i], bit(2 * pair + 1));
                }
            }
            store(2 * pair, lo);
            store(2 * pair + 1, hi);
        }
        for (i, b) in blocks.iter().take(n).enumerate() {
            self.d[h][i] = f16_at(b, 0);
            self.dmin[h][i] = f16_at(b, 2);
            let sm = unpack_scales(packed_scales(b));
            for j in 0..8 {
                self.scales[j][h][2 * i..2 * i + 2].fill(i16::from(sm[j]));
            }
            for pair in 0..4 {
                self.mins[pair][h][2 * i] = i16::from(sm[8 + 2 * pair]);
                self.mins[pair][h][2 * i + 1] = i16::from(sm[8 + 2 * pair + 1]);
            }
        }
    }
}

/// The 8 x 8 transpose of 32-bit elements: `out[g]` holds element `g` of every `rows[i]`, in
/// lane `i`.
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) fn transpose8(r: [__m256i; PANEL]) -> [__m256i; PANEL] {
    let t0 = _mm256_unpacklo_epi32(r[0], r[1]);
    let t1 = _mm256_unpackhi_epi32(r[0], r[1]);
    let t2 = _mm256_unpacklo_epi32(r[2], r[3]);
    let t3 = _mm256_unpackhi_epi32(r[2], r[3]);
    let t4 = _mm256_unpacklo_epi32(r[4], r[5]);
    let t5 = _mm256_unpackhi_epi32(r[4], r[5]);
    let t6 = _mm256_unpacklo_epi32(r[6], r[7]);
    let t7 = _mm256_unpackhi_epi32(r[6], r[7]);
    let u0 = _mm256_unpacklo_epi64(t0, t2);
    let u1 = _mm256_unpackhi_epi64(t0, t2);
    let u2 = _mm256_unpacklo_epi64(t1, t3);
    let u3 = _mm256_unpackhi_epi64(t1, t3);
    let u4 = _mm256_unpacklo_epi64(t4, t6);
    let u5 = _mm256_unpackhi_epi64(t4, t6);
    let u6 = _mm256_unpacklo_epi64(t5, t7);
    let u7 = _mm256_unpackhi_epi64(t5, t7);
    [
        _mm256_permute2x128_si256(u0, u4, 0x20),
        _mm256_permute2x128_si256(u1, u5, 0x20),
        _mm256_permute2x128_si256(u2, u6, 0x20),
        _mm256_permute2x128_si256(u3, u7, 0x20),
        _mm256_permute2x128_si256(u0, u4, 0x31),
        _mm256_permute2x128_si256(u1, u5, 0x31),
        _mm256_permute2x128_si256(u2, u6, 0x31),
        _mm256_permute2x128_si256(u3, u7, 0x31),
    ]
}

/// `res[t * rows + i]` = weight row `i` of `w` (`rows` rows of `nb` super-blocks of `fmt`, a
/// K-quant) dotted with activation row `t` of `acts` (`m` rows of `nb` blocks). Returns false
/// (computing nothing) if the lengths do not hold or the CPU lacks the features. `vnni`: the
/// `vpdpbusd` to use, if any (checked by [`Vnni::of`]).
#[allow(clippy::too_many_arguments)]
pub(crate) fn gemm_k(
    vnni: Vnni,
    fmt: Format,
    w: &[u8],
    rows: usize,
    nb: usize,
    acts: &[Q8KBlock],
    m: usize,
    res: &mut [f32],
) -> bool {
    let Some(g) = Gemm::checked(fmt, w, rows, nb, acts, m, res.len()) else {
        return false;
    };
    if fmt.block_weights() != crate::blocks::QK_K || !crate::kernel::avx2() {
        return false;
    }
    // SAFETY: AVX2, FMA and F16C were detected above, and `vnni`'s instructions by
    // `Vnni::of` (`Vnni::Evex`: AVX512F, AVX512BW, AVX512VL and AVX512-VNNI, which the
    // 512-bit kernels use).
    unsafe {
        match vnni {
            Vnni::Evex => drive::<2>(g, res, zmm::panel_dot_k::<4>, zmm::panel_dot_k::<1>),
            Vnni::Vex => drive::<1>(g, res, panel_dot_vnni::<4>, panel_dot_vnni::<1>),
            Vnni::None => drive::<1>(g, res, panel_dot::<4>, panel_dot::<1>),
        }
    }
    true
}

/// A panel kernel: adds the panel's rows dotted with each of `R` activation rows (one
/// super-block each) to that row's sums.
type PanelDot<const H: usize, const R: usize> =
    unsafe fn(Format, &Panel<H>, [&Q8KBlock; R], &mut [[[f32; PANEL]; H]]);

/// [`gemm_k`]'s loop, lengths checked by it, for panels of `H` x [`PANEL`] rows: for each
/// panel of rows and each super-block, the panel is packed once and met by every activation
/// row, 4 at a time (`dot4`) and then one at a time (`dot1`).
///
/// # Safety
/// The CPU runs `dot4` and `dot1`, and has AVX2, FMA and F16C (compiled for them, so that the
/// portable build runs this loop's copies and sums in 256-bit vectors too).
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn drive<const H: usize>(
    g: Gemm<'_, Q8KBlock>,
    res: &mut [f32],
    dot4: PanelDot<H, 4>,
    dot1: PanelDot<H, 1>,
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
    let mut panel = Box::new(Panel::<H>::ZERO);
    // Per activation row, the panel's rows' sums so far (f32 lanes).
    let mut sums = vec![[[0f32; PANEL]; H]; m];
    let mut first = 0;
    while first < rows {
        let n = (H * PANEL).min(rows - first);
        sums.fill([[0.0; PANEL]; H]);
        for sb in 0..nb {
            if n < H * PANEL {
                // Rows past the matrix's last stay zero.
                *panel = Panel::ZERO;
            }
            for h in 0..H {
                let in_half = n.saturating_sub(h * PANEL).min(PANEL);
                let mut blocks: [&[u8]; PANEL] = [&[]; PANEL];
                for (i, b) in blocks.iter_mut().enumerate().take(in_half) {
                    let at = (first + h * PANEL + i) * row_bytes + sb * block;
                    *b = &w[at..at + block];
                }
                // SAFETY: AVX2, FMA and F16C (this function's contract).
                unsafe { panel.pack(fmt, &blocks[..in_half], h) };
            }
            if sb + 1 < nb {
                super::prefetch_blocks(w, first..first + n, row_bytes, (sb + 1) * block, block);
            }
            let act = |t: usize| &acts[t * nb + sb];
            let mut t = 0;
            while t + 4 <= m {
                let a = [act(t), act(t + 1), act(t + 2), act(t + 3)];
                // SAFETY: the CPU runs `dot4` (this function's contract).
                unsafe { dot4(fmt, &panel, a, &mut sums[t..t + 4]) };
                t += 4;
            }
            while t < m {
                // SAFETY: the CPU runs `dot1` (this function's contract).
                unsafe { dot1(fmt, &panel, [act(t)], &mut sums[t..t + 1]) };
                t += 1;
            }
        }
        for (t, s) in sums.iter().enumerate() {
            res[t * rows + first..][..n].copy_from_slice(&s.as_flattened()[..n]);
        }
        first += n;
    }
}

/// Adds the panel's 8 rows dotted with each of `a` (one super-block each) to `sums[r]`:
/// `vpmaddubsw` products added as i16, widened and scaled by `vpmaddwd`.
///
/// # Safety
/// AVX2, FMA and F16C.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn panel_dot<const R: usize>(
    fmt: Format,
    p: &Panel<1>,
    a: [&Q8KBlock; R],
    sums: &mut [[[f32; PANEL]; 1]],
) {
    // Groups of 4 quants whose i16 products are added before widening (see the module).
    let per_madd = match fmt {
        Format::Q4K => 8,
        Format::Q5K => 4,
        _ => 2,
    };
    let six = fmt == Format::Q6K;
    let mut sumi = [_mm256_setzero_si256(); R];
    for j in 0..8 {
        for half in 0..8 / per_madd {
            let mut s16 = [_mm256_setzero_si256(); R];
            for g in half * per_madd..(half + 1) * per_madd {
                let wv = load(&p.q[j][g][0]);
                for r in 0..R {
                    let prod = _mm256_maddubs_epi16(wv, activations(a[r], j, g));
                    s16[r] = _mm256_add_epi16(s16[r], prod);
                }
            }
            // Q6_K's last 16 weights of a sub-block (groups 4..8) take its second scale.
            let sc = if six && half >= 8 / per_madd / 2 {
                load16(&p.scales_hi[j][0])
            } else {
                load16(&p.scales[j][0])
            };
            for r in 0..R {
                sumi[r] = _mm256_add_epi32(sumi[r], _mm256_madd_epi16(s16[r], sc));
            }
        }
    }
    // SAFETY: AVX2, FMA and F16C (this function's contract).
    unsafe { finish(fmt, p, a, sumi, sums) };
}

/// [`panel_dot`] with VNNI: `vpdpbusd` multiplies and adds 4 quant-activation pairs into
/// each i32 lane in one instruction (no i16 stage, so no limit on how many are added), and a
/// sub-block's (Q6_K: 16 weights') sum is scaled with one `vpmulld`.
///
/// # Safety
/// AVX2, FMA, F16C and AVX-VNNI.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn panel_dot_vnni<const R: usize>(
    fmt: Format,
    p: &Panel<1>,
    a: [&Q8KBlock; R],
    sums: &mut [[[f32; PANEL]; 1]],
) {
    let halves = if fmt == Format::Q6K { 2 } else { 1 };
    let mut sumi = [_mm256_setzero_si256(); R];
    for j in 0..8 {
        for half in 0..halves {
            let groups = 8 / halves;
            let mut s32 = [_mm256_setzero_si256(); R];
            for g in half * groups..(half + 1) * groups {
                let wv = load(&p.q[j][g][0]);
                for r in 0..R {
                    // SAFETY: the CPU has AVX-VNNI (this function's contract).
                    s32[r] = unsafe { dpbusd::<false>(s32[r], wv, activations(a[r], j, g)) };
                }
            }
            // Each row's scale, an i16 in its lane's low half (sign-extended to the lane).
            let sc = load16(if half == 1 {
                &p.scales_hi[j][0]
            } else {
                &p.scales[j][0]
            });
            let sc = _mm256_srai_epi32(_mm256_slli_epi32(sc, 16), 16);
            for r in 0..R {
                sumi[r] = _mm256_add_epi32(sumi[r], _mm256_mullo_epi32(s32[r], sc));
            }
        }
    }
    // SAFETY: AVX2, FMA and F16C (this function's contract).
    unsafe { finish(fmt, p, a, sumi, sums) };
}

/// A panel's 32 bytes.
#[target_feature(enable = "avx2,fma,f16c")]
fn load(v: &[u8; 32]) -> __m256i {
    // SAFETY: 32 bytes.
    unsafe { _mm256_loadu_si256(v.as_ptr().cast()) }
}

/// A panel's 16 i16.
#[target_feature(enable = "avx2,fma,f16c")]
fn load16(v: &[i16; 16]) -> __m256i {
    // SAFETY: 32 bytes.
    unsafe { _mm256_loadu_si256(v.as_ptr().cast()) }
}

/// Activations `4 g..4 g + 4` of sub-block `j` of `a`, broadcast to every i32 lane.
#[target_feature(enable = "avx2,fma,f16c")]
fn activations(a: &Q8KBlock, j: usize, g: usize) -> __m256i {
    let at = (32 * j + 4 * g).min(a.qs.len() - 4);
    // SAFETY: `at + 4 <= 256 = qs.len()`; unaligned read.
    let x = unsafe { std::ptr::read_unaligned(a.qs.as_ptr().add(at).cast::<i32>()) };
    _mm256_set1_epi32(x)
}

/// Adds `sumi[r]` (the 8 rows' integer sums against activation row `r`) to `sums[r]` with the
/// scales, after the mins (Q6_K: the offset of 32) met the activations' 16-value sums.
///
/// # Safety
/// AVX2, FMA and F16C.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn finish<const R: usize>(
    fmt: Format,
    p: &Panel<1>,
    a: [&Q8KBlock; R],
    sumi: [__m256i; R],
    sums: &mut [[[f32; PANEL]; 1]],
) {
    let six = fmt == Format::Q6K;
    // SAFETY: the panel's d and dmin are 8 f32 each.
    let (d, dmin) = unsafe {
        (
            _mm256_loadu_ps(p.d[0].as_ptr()),
            _mm256_loadu_ps(p.dmin[0].as_ptr()),
        )
    };
    for (r, sums) in sums.iter_mut().enumerate().take(R) {
        let bs = &a[r].bsums;
        let mut m32 = _mm256_setzero_si256();
        if six {
            for (pair, mins) in p.mins.iter().enumerate() {
                let both = pack_i16(bs[2 * pair], bs[2 * pair + 1]);
                m32 = _mm256_add_epi32(m32, _mm256_madd_epi16(load16(&mins[0]), both));
            }
        } else {
            for (pair, mins) in p.mins.iter().take(4).enumerate() {
                let sum = |j: usize| bs[2 * j].wrapping_add(bs[2 * j + 1]);
                let both = pack_i16(sum(2 * pair), sum(2 * pair + 1));
                m32 = _mm256_add_epi32(m32, _mm256_madd_epi16(load16(&mins[0]), both));
            }
        }
        let da = _mm256_set1_ps(a[r].d);
        // SAFETY: 8 f32.
        let mut acc = unsafe { _mm256_loadu_ps(sums[0].as_ptr()) };
        if six {
            let total = _mm256_sub_epi32(sumi[r], _mm256_slli_epi32(m32, 5));
            acc = _mm256_fmadd_ps(_mm256_mul_ps(d, da), _mm256_cvtepi32_ps(total), acc);
        } else {
            acc = _mm256_fmadd_ps(_mm256_mul_ps(d, da), _mm256_cvtepi32_ps(sumi[r]), acc);
            acc = _mm256_fnmadd_ps(_mm256_mul_ps(dmin, da), _mm256_cvtepi32_ps(m32), acc);
        }
        // SAFETY: 8 f32.
        unsafe { _mm256_storeu_ps(sums[0].as_mut_ptr(), acc) };
    }
}

/// Two i16 (each a sum of at most 32 activations of at most 127: no overflow) broadcast as the
/// i16 pair of every i32 lane.
#[target_feature(enable = "avx2,fma,f16c")]
fn pack_i16(lo: i16, hi: i16) -> __m256i {
    _mm256_set1_epi32(i32::from(lo as u16) | (i32::from(hi as u16) << 16))
}
