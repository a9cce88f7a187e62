//! The ggml block formats of the weights (bytes exactly as a GGUF file stores them), the 8-bit
//! blocks the activations are quantised to once per matmul input, and the scalar dot products
//! that are the reference every SIMD kernel is tested against.
//!
//! Never reads past a slice: the scalar code indexes checked slices, and the lengths the SIMD
//! kernels rely on are established by [`crate::QMatrix::new`].

/// Activations per quantised block ([`Q8Block`]), and weights per block of Q4_0, Q4_1 and Q8_0.
pub const QK: usize = 32;
/// Weights per super-block of the K-quants (Q4_K, Q5_K, Q6_K): [`QK_K`] / [`QK`] activation
/// blocks each.
pub const QK_K: usize = 256;

/// A ggml weight block format ward has its own kernels for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Format {
    /// `{ d: f16, qs: [u8; 16] }`: `w = (nibble - 8) * d`; element `i < 16` is the low nibble of
    /// byte `i`, element `16 + i` its high nibble.
    Q4_0,
    /// `{ d: f16, m: f16, qs: [u8; 16] }`: `w = nibble * d + m`, nibbles as in Q4_0.
    Q4_1,
    /// `{ d: f16, qs: [i8; 32] }`: `w = q * d`.
    Q8_0,
    /// `{ d: f16, dmin: f16, scales: [u8; 12], qs: [u8; 128] }` over 256 weights: eight
    /// sub-blocks `j` of 32, each with a 6-bit scale `sc` and min `m` packed in `scales`
    /// ([`crate::kquants::scale_min`]), `w = d sc q - dmin m`; `q` is the low nibble of
    /// `qs[32 (j / 2) + l]` for even `j`, the high one for odd.
    Q4K,
    /// Q4_K with a fifth bit: `{ d, dmin, scales: [u8; 12], qh: [u8; 32], qs: [u8; 128] }`,
    /// `q = nibble + 16 * bit j of qh[l]`.
    Q5K,
    /// `{ ql: [u8; 128], qh: [u8; 64], scales: [i8; 16], d: f16 }` over 256 weights:
    /// `w = d sc (q - 32)` with a signed 8-bit scale per 16 weights and 6-bit `q` (four bits
    /// from `ql`, two from `qh`; layout in [`crate::kquants::q6_k_at`]).
    Q6K,
}

impl Format {
    /// Bytes of one block of [`QK`] weights.
    pub const fn block_bytes(self) -> usize {
        match self {
            Format::Q4_0 => 18,
            Format::Q4_1 => 20,
            Format::Q8_0 => 34,
            Format::Q4K => 144,
            Format::Q5K => 176,
            Format::Q6K => 210,
        }
    }

    /// Weights per block: [`QK`], or [`QK_K`] for the K-quants.
    pub const fn block_weights(self) -> usize {
        match self {
            Format::Q4_0 | Format::Q4_1 | Format::Q8_0 => QK,
            Format::Q4K | Format::Q5K | Format::Q6K => QK_K,
        }
    }

    /// Bytes of a row of `cols` weights, if `cols` is whole blocks and the size fits.
    pub const fn row_bytes(self, cols: usize) -> Option<usize> {
        if !cols.is_multiple_of(self.block_weights()) {
            return None;
        }
        (cols / self.block_weights()).checked_mul(self.block_bytes())
    }

    /// ggml's type id (`GGML_TYPE_*`) of this format.
    pub const fn ggml_type(self) -> u32 {
        match self {
            Format::Q4_0 => 2,
            Format::Q4_1 => 3,
            Format::Q8_0 => 8,
            Format::Q4K => 12,
            Format::Q5K => 13,
            Format::Q6K => 14,
        }
    }

    /// The format of a ggml type id, if ward has kernels for it.
    pub const fn from_ggml_type(t: u32) -> Option<Self> {
        match t {
            2 => Some(Format::Q4_0),
            3 => Some(Format::Q4_1),
            8 => Some(Format::Q8_0),
            12 => Some(Format::Q4K),
            13 => Some(Format::Q5K),
            14 => Some(Format::Q6K),
            _ => None,
        }
    }
}

/// 32 activations quantised to 8 bits, as llama.cpp's `block_q8_1` holds them (its f16 values
/// widened to f32): `a = qs * d`, `s = d * sum(qs)` (what Q4_1's offset needs), both rounded to
/// f16 as llama.cpp stores them, so that the products match its arithmetic. Also serves as its
/// `block_q8_0` (`s` unused).
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Q8Block {
    pub d: f32,
    pub s: f32,
    pub qs: [i8; QK],
}

impl Q8Block {
    pub const ZERO: Q8Block = Q8Block {
        d: 0.0,
        s: 0.0,
        qs: [0; QK],
    };
}

/// Quantised activations in the blocks one family of weight formats takes: [`Q8Block`] (32
/// values) for Q4_0, Q4_1 and Q8_0, [`crate::kquants::Q8KBlock`] (256) for the K-quants.
pub trait ActBlock: Copy + Send + Sync + 'static {
    /// Activations per block.
    const VALUES: usize;
    /// A block of zeros.
    const ZEROS: Self;
    /// Activation rows from which a product takes the packed-panel GEMM ([`ActBlock::gemm_simd`])
    /// instead of the 4-row tiles: the panel's unpacking is paid once for all of them, and must
    /// be paid for.
    const GEMM_ROWS: usize;
    /// Whether weights in `fmt` take these blocks.
    fn takes(fmt: Format) -> bool;
    /// Quantises `x` (whole blocks) into `out`.
    fn quantize(x: &[f32], out: &mut [Self]);
    /// The scalar reference: a row of `fmt` (a format that takes these) dotted with `a`.
    fn dot_scalar(fmt: Format, row: &[u8], a: &[Self]) -> f32;
    /// `kernel`'s SIMD code for a tile, where this CPU and `fmt` have one (see `x86::tile`,
    /// `aarch64::tile`); false if nothing was computed.
    fn tile_simd<const R: usize>(
        kernel: crate::Kernel,
        fmt: Format,
        w: &[u8],
        nb: usize,
        a: [&[Self]; R],
        out: &mut [[f32; R]],
    ) -> bool {
        let _ = (kernel, fmt, w, nb, a, out);
        false
    }
    /// The SIMD product of `rows` weight rows (`w`, in `fmt`) with `m` activation rows at
    /// once, into `res` (`m x rows`), where this CPU and `fmt` have one: false if nothing was
    /// computed (then the tiles do it).
    /// `kernel` says which instructions may be used (VNNI: [`crate::Kernel::AvxVnni`],
    /// [`crate::Kernel::Avx512Vnni`]).
    #[allow(clippy::too_many_arguments)]
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
        let _ = (kernel, fmt, w, rows, nb, acts, m, res);
        false
    }
}

impl ActBlock for Q8Block {
    const VALUES: usize = QK;
    const ZEROS: Self = Q8Block::ZERO;
    /// Measured on SmolLM2 Q4_1 (inference README, "Batched decode"): at 8 rows the VNNI panels
    /// (packed per 32-weight block, a transpose each) decoded 8 sequences at 168 tok/s where
    /// two 4-row tiles did 242-263; at 128 (prefill) a step's matmuls ran 1.12-1.33x faster
    /// than on the tiles with 2 threads, 1.26-1.59x with one.
    const GEMM_ROWS: usize = 32;
    fn takes(fmt: Format) -> bool {
        fmt.block_weights() == QK
    }
    fn quantize(x: &[f32], out: &mut [Self]) {
        quantize_row(x, out)
    }
    fn dot_scalar(fmt: Format, row: &[u8], a: &[Self]) -> f32 {
        dot_scalar_q8(fmt, row, a)
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
        crate::x86::tile(fmt, w, nb, a, out)
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
        crate::aarch64::tile(kernel, fmt, w, nb, a, out)
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
        crate::x86::gemm_q8(crate::x86::Vnni::of(kernel), fmt, w, rows, nb, acts, m, res)
    }
}

/// What every tile kernel checks before its pointer arithmetic: that `fmt` takes `A` blocks,
/// `w` holds `rows` rows of `nb` blocks of `fmt`, and each of `a` at least `nb` blocks. The
/// bytes of one row if so (checked arithmetic: the sizes come from a model file's header).
#[cfg_attr(
    not(any(target_arch = "x86_64", target_arch = "aarch64")),
    allow(dead_code) // no SIMD kernel there
)]
pub(crate) fn tile_row_bytes<A: ActBlock, const R: usize>(
    fmt: Format,
    w: &[u8],
    rows: usize,
    nb: usize,
    a: &[&[A]; R],
) -> Option<usize> {
    if !A::takes(fmt) {
        return None;
    }
    let row_bytes = nb.checked_mul(fmt.block_bytes())?;
    let holds = rows.checked_mul(row_bytes).is_some_and(|n| n <= w.len())
        && a.iter().all(|a| a.len() >= nb);
    holds.then_some(row_bytes)
}

/// IEEE half to single precision (every f16 value, subnormals, infinities and NaN included).
pub fn f16_to_f32(h: u16) -> f32 {
    let sign = u32::from(h & 0x8000) << 16;
    let exp = u32::from((h >> 10) & 0x1f);
    let man = u32::from(h & 0x3ff);
    let bits = match (exp, man) {
        (0, 0) => sign,
        (0, _) => {
            // Subnormal: value = man * 2^-24, exactly representable in f32.
            let v = man as f32 * f32::from_bits(0x3380_0000); // 2^-24
            return if sign != 0 { -v } else { v };
        }
        (0x1f, _) => sign | 0x7f80_0000 | (man << 13),
        _ => sign | ((exp + 112) << 23) | (man << 13),
    };
    f32::from_bits(bits)
}

/// Single to half precision, rounding to nearest even (as F16C's `vcvtps2ph` and ggml's
/// `GGML_FP32_TO_FP16`): overflow to infinity, underflow through the subnormals to zero.
pub fn f32_to_f16(x: f32) -> u16 {
    let bits = x.to_bits();
    let sign = ((bits >> 16) & 0x8000) as u16;
    let exp = ((bits >> 23) & 0xff) as i32;
    let man = bits & 0x7f_ffff;
    if exp == 0xff {
        // Infinity, or NaN kept quiet.
        return sign
            | 0x7c00
            | if man != 0 {
                0x200 | (man >> 13) as u16
            } else {
                0
            };
    }
    let e = exp - 127 + 15;
    if e >= 0x1f {
        return sign | 0x7c00;
    }
    // The significand with its implicit bit, and how far it shifts right to land in f16.
    let (sig, shift) = if e <= 0 {
        if e < -10 {
            return sign;
        }
        (man | 0x80_0000, (14 - e) as u32)
    } else {
        (man, 13)
    };
    let half = 1u32 << (shift - 1);
    let rest = sig & ((1u32 << shift) - 1);
    let mut h = sig >> shift;
    if rest > half || (rest == half && h & 1 == 1) {
        h += 1; // may carry into the exponent: still correct
    }
    if e > 0 {
        h += (e as u32) << 10;
    }
    sign | h as u16
}

/// `x` rounded to the nearest f16 value.
pub fn round_f16(x: f32) -> f32 {
    f16_to_f32(f32_to_f16(x))
}

/// The little-endian f16 at `b[at..at + 2]` as f32 (0 when out of range, which
/// [`crate::QMatrix::new`] rules out).
pub(crate) fn f16_at(b: &[u8], at: usize) -> f32 {
    match b.get(at..at + 2) {
        Some(&[lo, hi]) => f16_to_f32(u16::from_le_bytes([lo, hi])),
        _ => 0.0,
    }
}

/// Quantises `x` (a multiple of [`QK`] long) into `out` (`x.len() / QK` blocks), as llama.cpp's
/// x86 `quantize_row_q8_1`: `q = round_half_even(x * 127 / max|x|)`, `d = f16(max|x| / 127)`,
/// `s = f16(d * sum(q))` with the rounded `d`: Q4_1's dot is `d_w d sum(q_w q) + m s`, two large
/// terms that cancel, so `s` must be the sum of the activations as `d` and `q` represent them
/// (with the unrounded `d`, SmolLM2's logits drifted from llama.cpp's: cosine 0.9979 against
/// 0.99965). Extra `out` blocks are left alone.
pub fn quantize_row(x: &[f32], out: &mut [Q8Block]) {
    #[cfg(target_arch = "x86_64")]
    if crate::kernel::avx2() {
        // SAFETY: the CPU has AVX2, FMA and F16C (detected above).
        return unsafe { quantize_row_avx2(x, out) };
    }
    quantize_row_body(x, out)
}

/// [`quantize_row`] compiled for AVX2: `round_ties_even` is one instruction there (SSE4.1's
/// `roundps`), where the portable build (SSE2) calls libm's `roundevenf` per activation.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn quantize_row_avx2(x: &[f32], out: &mut [Q8Block]) {
    quantize_row_body(x, out)
}

#[inline(always)]
fn quantize_row_body(x: &[f32], out: &mut [Q8Block]) {
    for (xs, o) in x.chunks_exact(QK).zip(out.iter_mut()) {
        let amax = xs.iter().fold(0f32, |m, v| m.max(v.abs()));
        let d = amax / 127.0;
        let id = if amax > 0.0 { 127.0 / amax } else { 0.0 };
        let mut sum = 0i32;
        for (q, &v) in o.qs.iter_mut().zip(xs) {
            // |v * id| <= 127 (up to rounding), so the cast cannot saturate but at +-127.
            let r = (v * id).round_ties_even() as i8;
            *q = r;
            sum += i32::from(r);
        }
        o.d = round_f16(d);
        o.s = round_f16(o.d * sum as f32);
    }
}

/// The unsigned nibble of element `i` (0..32) of a 4-bit block's 16 `qs` bytes.
fn nibble(qs: &[u8], i: usize) -> i32 {
    let b = qs.get(i % 16).copied().unwrap_or(0);
    i32::from(if i < 16 { b & 0x0f } else { b >> 4 })
}

/// The scalar reference: the dot product of one row of weights (`row`, whole blocks of `fmt`)
/// with quantised activations `a` (one block per weight block), in ggml's arithmetic: an exact
/// integer dot per block, scaled by the two block scales, summed in f32.
pub fn dot_scalar<A: ActBlock>(fmt: Format, row: &[u8], a: &[A]) -> f32 {
    A::dot_scalar(fmt, row, a)
}

/// [`dot_scalar`] for the formats of [`QK`] weights.
fn dot_scalar_q8(fmt: Format, row: &[u8], a: &[Q8Block]) -> f32 {
    let mut sum = 0f32;
    // Q4_1's `m s` terms, summed apart from the products they cancel against and added once
    // (as the SIMD kernels do): one running total of both lost more to rounding.
    let mut offsets = 0f32;
    for (w, a) in row.chunks_exact(fmt.block_bytes()).zip(a) {
        let dw = f16_at(w, 0);
        match fmt {
            Format::Q4_0 => {
                let qs = w.get(2..).unwrap_or_default();
                let dot: i32 = (0..QK)
                    .map(|i| (nibble(qs, i) - 8) * i32::from(a.qs[i]))
                    .sum();
                sum += dw * a.d * dot as f32;
            }
            Format::Q4_1 => {
                let m = f16_at(w, 2);
                let qs = w.get(4..).unwrap_or_default();
                let dot: i32 = (0..QK).map(|i| nibble(qs, i) * i32::from(a.qs[i])).sum();
                sum += dw * a.d * dot as f32;
                offsets += m * a.s;
            }
            // Never: a matrix in these formats takes `Q8KBlock`s (`ActBlock::takes`).
            Format::Q4K | Format::Q5K | Format::Q6K => {}
            Format::Q8_0 => {
                let qs = w.get(2..).unwrap_or_default();
                let dot: i32 = qs
                    .iter()
                    .zip(a.qs)
                    .map(|(&q, x)| i32::from(q as i8) * i32::from(x))
                    .sum();
                sum += dw * a.d * dot as f32;
            }
        }
    }
    sum + offsets
}

/// One row of weights dequantised to f32 (the tests' route through full precision).
pub fn dequantize_row(fmt: Format, row: &[u8]) -> Vec<f32> {
    let mut out = Vec::with_capacity(row.len() / fmt.block_bytes() * fmt.block_weights());
    if fmt.block_weights() == QK_K {
        crate::kquants::dequantize_row_into(fmt, row, &mut out);
        return out;
    }
    for w in row.chunks_exact(fmt.block_bytes()) {
        let d = f16_at(w, 0);
        match fmt {
            Format::Q4_0 => {
                let qs = w.get(2..).unwrap_or_default();
                out.extend((0..QK).map(|i| (nibble(qs, i) - 8) as f32 * d));
            }
            Format::Q4_1 => {
                let (m, qs) = (f16_at(w, 2), w.get(4..).unwrap_or_default());
                out.extend((0..QK).map(|i| nibble(qs, i) as f32 * d + m));
            }
            Format::Q8_0 => {
                out.extend(w.iter().skip(2).map(|&q| f32::from(q as i8) * d));
            }
            Format::Q4K | Format::Q5K | Format::Q6K => {}
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn f16_conversion_matches_known_values() {
        assert_eq!(f16_to_f32(0x3c00), 1.0);
        assert_eq!(f16_to_f32(0xc000), -2.0);
        assert_eq!(f16_to_f32(0x7bff), 65504.0);
        assert_eq!(f16_to_f32(0x0001), 5.960_464_5e-8);
        assert_eq!(f16_to_f32(0x8000).to_bits(), 0x8000_0000);
        assert_eq!(f16_to_f32(0x7c00), f32::INFINITY);
        assert!(f16_to_f32(0x7e00).is_nan());
        assert_eq!(f16_to_f32(0x3555), 0.333_251_95);
    }

    #[test]
    fn f32_to_f16_rounds_to_nearest_even_and_inverts_f16_to_f32() {
        for h in 0..=u16::MAX {
            let f = f16_to_f32(h);
            if !f.is_nan() {
                assert_eq!(f32_to_f16(f), h, "{h:#06x} -> {f}");
            }
        }
        assert_eq!(f32_to_f16(1.0 + 1.0 / 2048.0), 0x3c00); // halfway, even below
        assert_eq!(f32_to_f16(1.0 + 3.0 / 2048.0), 0x3c02); // halfway, even above
        assert_eq!(f32_to_f16(1.0 + 1.1 / 2048.0), 0x3c01);
        assert_eq!(f32_to_f16(65520.0), 0x7c00); // rounds past the largest finite
        assert_eq!(f32_to_f16(65519.0), 0x7bff);
        assert_eq!(f32_to_f16(2.9e-8), 0x0000); // below half the smallest subnormal
        assert_eq!(f32_to_f16(3.0e-8), 0x0001);
        assert_eq!(f32_to_f16(-1e10), 0xfc00);
        assert!(f16_to_f32(f32_to_f16(f32::NAN)).is_nan());
    }

    #[test]
    fn quantize_row_keeps_the_extremes_and_the_sum() {
        let mut x: Vec<f32> = (0..64).map(|i| (i as f32 - 31.5) / 7.0).collect();
        x[40] = -100.0;
        let mut q = [Q8Block::ZERO; 2];
        quantize_row(&x, &mut q);
        assert_eq!(q[1].qs[8], -127);
        assert_eq!(q[1].d, round_f16(100.0 / 127.0));
        for (b, xs) in q.iter().zip(x.chunks(QK)) {
            let sum: i32 = b.qs.iter().map(|&v| i32::from(v)).sum();
            assert!((b.s - b.d * sum as f32).abs() <= b.s.abs() / 1024.0);
            for (&v, &f) in b.qs.iter().zip(xs) {
                // Half a step, plus the f16 rounding of the step over 127 steps.
                assert!((f32::from(v) * b.d - f).abs() <= b.d * (0.5 + 127.0 / 2048.0));
            }
        }
        let mut z = [Q8Block::ZERO];
        quantize_row(&[0.0; QK], &mut z);
        assert_eq!(z[0], Q8Block::ZERO);
    }
}
