//! The K-quant formats (ggml's Q4_K, Q5_K and Q6_K, super-blocks of [`QK_K`] weights) in scalar
//! code: how their bits are laid out, their dequantisation, the activations they take
//! ([`Q8KBlock`], llama.cpp's `block_q8_K`: one f32 scale per 256 values and the sums of every
//! 16) and the dot product with them, which the SIMD kernels are tested against.
//!
//! As in llama.cpp, a super-block's products are summed in integers (each sub-block's exact dot
//! times its integer scale), so there is one float multiply per 256 weights, not per 32: the
//! activations' single scale per super-block is what allows it, and quantising them as
//! llama.cpp does keeps the logits next to its own.
//!
//! Layouts as ggml's `dequantize_row_q{4,5,6}_K` (checked against candle's port of them, which
//! reads the same GGUF bytes, in ward-inference's tests).

use crate::blocks::{ActBlock, Format, QK, QK_K, f16_at};

/// 256 activations quantised to 8 bits as llama.cpp's `quantize_row_q8_K_ref`: `a = qs * d`
/// with `d` the largest magnitude over -127 (f32, signed: the extreme value becomes -127), and
/// `bsums[i]` the sum of `qs[16 i..16 i + 16]` (what the K-quants' mins and Q6_K's offset need).
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Q8KBlock {
    pub d: f32,
    pub qs: [i8; QK_K],
    pub bsums: [i16; QK_K / 16],
}

impl Q8KBlock {
    pub const ZERO: Q8KBlock = Q8KBlock {
        d: 0.0,
        qs: [0; QK_K],
        bsums: [0; QK_K / 16],
    };
}

impl ActBlock for Q8KBlock {
    const VALUES: usize = QK_K;
    const ZEROS: Self = Q8KBlock::ZERO;
    /// The K-quants' panels are built once per 256-weight super-block.
    const GEMM_ROWS: usize = 8;
    fn takes(fmt: Format) -> bool {
        fmt.block_weights() == QK_K
    }
    fn quantize(x: &[f32], out: &mut [Self]) {
        quantize_row_k(x, out)
    }
    fn dot_scalar(fmt: Format, row: &[u8], a: &[Self]) -> f32 {
        dot_scalar(fmt, row, a)
    }
    // Elsewhere the trait's defaults: no SIMD kernel, the scalar path runs.
    #[cfg(target_arch = "x86_64")]
    fn tile_simd<const R: usize>(
        _kernel: crate::Kernel,
        fmt: Format,
        w: &[u8],
        nb: usize,
        a: [&[Self]; R],
        out: &mut [[f32; R]],
    ) -> bool {
        crate::x86::tile_k(fmt, w, nb, a, out)
    }
    #[cfg(target_arch = "aarch64")]
    fn tile_simd<const R: usize>(
        kernel: crate::Kernel,
        fmt: Format,
        w: &[u8],
        nb: usize,
        a: [&[Self]; R],
        out: &mut [[f32; R]],
    ) -> bool {
        crate::aarch64::tile_k(kernel, fmt, w, nb, a, out)
    }
    #[cfg(target_arch = "x86_64")]
    fn gemm_simd(
        kernel: crate::Kernel,
        fmt: Format,
        w: &[u8],
        rows: usize,
        nb: usize,
        acts: &[Self],
        m: usize,
        res: &mut [f32],
    ) -> bool {
        crate::x86::gemm_k(crate::x86::Vnni::of(kernel), fmt, w, rows, nb, acts, m, res)
    }
}

/// Quantises `x` (a multiple of [`QK_K`] long) into `out` (`x.len() / QK_K` blocks), as
/// llama.cpp's `quantize_row_q8_K_ref` (its x86 build uses that one): `iscale = -127 / max`
/// with `max` the value of largest magnitude, `q = round_half_even(iscale x)` (its
/// `nearest_int`) capped at 127, `d = 1 / iscale`. Extra `out` blocks are left alone.
pub fn quantize_row_k(x: &[f32], out: &mut [Q8KBlock]) {
    #[cfg(target_arch = "x86_64")]
    if crate::kernel::avx2() {
        // SAFETY: the CPU has AVX2, FMA and F16C (detected above).
        return unsafe { quantize_row_k_avx2(x, out) };
    }
    quantize_row_k_body(x, out)
}

/// [`quantize_row_k`] compiled for AVX2 (`round_ties_even` is one instruction there).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn quantize_row_k_avx2(x: &[f32], out: &mut [Q8KBlock]) {
    quantize_row_k_body(x, out)
}

#[inline(always)]
fn quantize_row_k_body(x: &[f32], out: &mut [Q8KBlock]) {
    for (xs, o) in x.chunks_exact(QK_K).zip(out.iter_mut()) {
        let (mut amax, mut max) = (0f32, 0f32);
        for &v in xs {
            if v.abs() > amax {
                (amax, max) = (v.abs(), v);
            }
        }
        if amax == 0.0 {
            *o = Q8KBlock::ZERO;
            continue;
        }
        let iscale = -127.0 / max;
        for (q, &v) in o.qs.iter_mut().zip(xs) {
            // |iscale v| <= 127 up to rounding: the cast saturates nowhere but at the cap.
            *q = (iscale * v).round_ties_even().min(127.0) as i8;
        }
        for (s, qs) in o.bsums.iter_mut().zip(o.qs.chunks_exact(16)) {
            // 16 values of at most 127 in magnitude: fits i16.
            *s = qs.iter().map(|&q| i16::from(q)).sum();
        }
        o.d = 1.0 / iscale;
    }
}

/// Sub-blocks of [`QK`] weights per super-block.
pub(crate) const SUBS: usize = QK_K / QK;

/// The 6-bit scale and min of sub-block `j < 8` from a Q4_K or Q5_K super-block's 12 `scales`
/// bytes (ggml's `get_scale_min_k4`): the first four pairs are the low six bits of bytes
/// `j` and `j + 4`; the last four take their low four bits from byte `j + 4`'s nibbles and the
/// top two from the spare bits of bytes `j - 4` and `j`.
pub fn scale_min(scales: &[u8; 12], j: usize) -> (u8, u8) {
    let s = |i: usize| scales.get(i).copied().unwrap_or(0);
    if j < 4 {
        (s(j) & 63, s(j + 4) & 63)
    } else {
        (
            (s(j + 4) & 0x0f) | ((s(j - 4) >> 6) << 4),
            (s(j + 4) >> 4) | ((s(j) >> 6) << 4),
        )
    }
}

/// The eight scales (bytes 0..8) and eight mins (bytes 8..16) of a Q4_K / Q5_K super-block
/// from its 12 packed bytes, all at once with 32-bit masks (llama.cpp's `utmp` shuffle): the
/// same values as [`scale_min`] for each `j`.
pub(crate) fn unpack_scales(packed: [u8; 12]) -> [u8; 16] {
    const KMASK1: u32 = 0x3f3f_3f3f;
    const KMASK2: u32 = 0x0f0f_0f0f;
    const KMASK3: u32 = 0x0303_0303;
    let word = |i: usize| {
        u32::from_le_bytes([
            packed[4 * i],
            packed[4 * i + 1],
            packed[4 * i + 2],
            packed[4 * i + 3],
        ])
    };
    let (u0, u1, u2) = (word(0), word(1), word(2));
    let scales = [u0 & KMASK1, (u2 & KMASK2) | (((u0 >> 6) & KMASK3) << 4)];
    let mins = [
        u1 & KMASK1,
        ((u2 >> 4) & KMASK2) | (((u1 >> 6) & KMASK3) << 4),
    ];
    let mut out = [0u8; 16];
    for (o, w) in out.chunks_exact_mut(4).zip(scales.iter().chain(&mins)) {
        o.copy_from_slice(&w.to_le_bytes());
    }
    out
}

/// The 12 packed scale bytes of a Q4_K / Q5_K super-block (bytes 4..16).
pub(crate) fn packed_scales(block: &[u8]) -> [u8; 12] {
    let mut packed = [0u8; 12];
    if let Some(b) = block.get(4..16) {
        packed.copy_from_slice(b);
    }
    packed
}

/// The unsigned 6-bit quant (0..64, `w = d sc (q - 32)`) of element `l < 32` of sub-block
/// `j < 8` of a Q6_K super-block: half `h = j / 4` holds `ql[64 h..64 h + 64]`,
/// `qh[32 h..32 h + 32]` and `scales[8 h..8 h + 8]`; sub-block `s = j % 4` of it takes the low
/// (`s < 2`) or high nibble of `ql[64 h + 32 (s % 2) + l]`, bits `2 s, 2 s + 1` of `qh[32 h + l]`,
/// and scale `scales[8 h + 2 s + l / 16]`.
pub fn q6_k_at(block: &[u8], j: usize, l: usize) -> (u8, i8) {
    let (h, s) = (j / 4, j % 4);
    let get = |i: usize| block.get(i).copied().unwrap_or(0);
    let ql = get(64 * h + 32 * (s % 2) + l);
    let low = if s < 2 { ql & 0x0f } else { ql >> 4 };
    let high = (get(128 + 32 * h + l) >> (2 * s)) & 3;
    let scale = get(192 + 8 * h + 2 * s + l / 16) as i8;
    (low | (high << 4), scale)
}

/// The unsigned quant (0..16 for Q4_K, 0..32 for Q5_K) of element `l < 32` of sub-block `j`.
fn q45_k_at(fmt: Format, block: &[u8], j: usize, l: usize) -> u8 {
    let get = |i: usize| block.get(i).copied().unwrap_or(0);
    let qs = if fmt == Format::Q5K { 48 } else { 16 };
    let byte = get(qs + 32 * (j / 2) + l);
    let nibble = if j.is_multiple_of(2) {
        byte & 0x0f
    } else {
        byte >> 4
    };
    if fmt == Format::Q5K {
        nibble | (((get(16 + l) >> j) & 1) << 4)
    } else {
        nibble
    }
}

/// The scalar reference for the K-quants (see [`crate::blocks::dot_scalar`]) against
/// activations quantised by [`quantize_row_k`], in llama.cpp's arithmetic: per super-block the
/// exact integer sum of each sub-block's dot times its integer scale, then `d da sum - dmin da
/// sum(m bsums)` (Q4_K, Q5_K) or `d da (sum(sc dot16) - 32 sum(sc bsums))` (Q6_K).
pub(crate) fn dot_scalar(fmt: Format, row: &[u8], a: &[Q8KBlock]) -> f32 {
    let mut sum = 0f32;
    for (w, a) in row.chunks_exact(fmt.block_bytes()).zip(a) {
        match fmt {
            Format::Q6K => {
                let mut dot = 0i32;
                for j in 0..SUBS {
                    for l in 0..QK {
                        let (q, sc) = q6_k_at(w, j, l);
                        let x = i32::from(a.qs[j * QK + l]);
                        dot += i32::from(sc) * i32::from(q) * x;
                    }
                }
                let offset: i32 = (0..16)
                    .map(|g| i32::from(w.get(192 + g).copied().unwrap_or(0) as i8))
                    .zip(a.bsums)
                    .map(|(sc, s)| sc * i32::from(s))
                    .sum();
                sum += f16_at(w, 208) * a.d * (dot - 32 * offset) as f32;
            }
            _ => {
                let (d, dmin) = (f16_at(w, 0), f16_at(w, 2));
                let sm = unpack_scales(packed_scales(w));
                let mut dot = 0i32;
                let mut mins = 0i32;
                for j in 0..SUBS {
                    let sub: i32 = (0..QK)
                        .map(|l| i32::from(q45_k_at(fmt, w, j, l)) * i32::from(a.qs[j * QK + l]))
                        .sum();
                    dot += i32::from(sm[j]) * sub;
                    let bsum = i32::from(a.bsums[2 * j]) + i32::from(a.bsums[2 * j + 1]);
                    mins += i32::from(sm[8 + j]) * bsum;
                }
                sum += d * a.d * dot as f32 - dmin * a.d * mins as f32;
            }
        }
    }
    sum
}

/// Appends one row of K-quant weights (whole super-blocks), dequantised, to `out`.
pub(crate) fn dequantize_row_into(fmt: Format, row: &[u8], out: &mut Vec<f32>) {
    for w in row.chunks_exact(fmt.block_bytes()) {
        match fmt {
            Format::Q6K => {
                let d = f16_at(w, 208);
                for j in 0..SUBS {
                    out.extend((0..QK).map(|l| {
                        let (q, sc) = q6_k_at(w, j, l);
                        d * f32::from(sc) * f32::from(i16::from(q) - 32)
                    }));
                }
            }
            _ => {
                let (d, dmin) = (f16_at(w, 0), f16_at(w, 2));
                let packed = packed_scales(w);
                for j in 0..SUBS {
                    let (sc, m) = scale_min(&packed, j);
                    let (scale, min) = (d * f32::from(sc), dmin * f32::from(m));
                    out.extend((0..QK).map(|l| scale * f32::from(q45_k_at(fmt, w, j, l)) - min));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The 32-bit unpacking of the scales equals ggml's per-index `get_scale_min_k4` for every
    /// byte pattern's bits (walking ones, all ones, random).
    #[test]
    fn unpacked_scales_equal_the_per_index_reading() {
        let mut patterns: Vec<[u8; 12]> = vec![[0; 12], [0xff; 12]];
        for bit in 0..96 {
            let mut p = [0u8; 12];
            p[bit / 8] = 1 << (bit % 8);
            patterns.push(p);
        }
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        for _ in 0..200 {
            patterns.push(std::array::from_fn(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            }));
        }
        for p in patterns {
            let u = unpack_scales(p);
            for j in 0..SUBS {
                assert_eq!((u[j], u[8 + j]), scale_min(&p, j), "{p:?} {j}");
            }
        }
    }

    /// llama.cpp's `quantize_row_q8_K_ref`: the value of largest magnitude becomes -127 (so
    /// `d` takes the opposite sign of it), ties round to even, `bsums` are the 16-value sums,
    /// zeros stay zero.
    #[test]
    fn q8_k_quantisation_is_llama_cpps() {
        let mut x: Vec<f32> = (0..QK_K).map(|i| (i as f32 - 100.0) / 50.0).collect();
        x[7] = 4.0;
        let mut out = [Q8KBlock::ZERO];
        quantize_row_k(&x, &mut out);
        let b = out[0];
        assert_eq!(b.qs[7], -127);
        assert_eq!(b.d, 1.0 / (-127.0 / 4.0));
        // -100 / 50 = -2: -2 * -31.75 = 63.5, a tie: to 64 (even).
        assert_eq!(b.qs[0], 64);
        for (i, s) in b.bsums.iter().enumerate() {
            let want: i16 = b.qs[16 * i..16 * i + 16]
                .iter()
                .map(|&q| i16::from(q))
                .sum();
            assert_eq!(*s, want);
        }
        for (q, v) in b.qs.iter().zip(&x) {
            assert!((f32::from(*q) * b.d - v).abs() <= b.d.abs() / 2.0 * 1.0001);
        }
        quantize_row_k(&[0.0; QK_K], &mut out);
        assert_eq!(out[0], Q8KBlock::ZERO);
    }
}
