//! The ggml block formats of the weights (bytes exactly as a GGUF file stores them), the 8-bit
//! blocks the activations are quantised to once per matmul input, and the scalar dot products
//! that are the reference every SIMD kernel is tested against.
//!
//! Never reads past a slice: the scalar code indexes checked slices, and the lengths the SIMD
//! kernels rely on are established by [`crate::QMatrix::new`].

/// Weights (and activations) per block in every format here.
pub const QK: usize = 32;

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
}

impl Format {
    /// Bytes of one block of [`QK`] weights.
    pub const fn block_bytes(self) -> usize {
        match self {
            Format::Q4_0 => 18,
            Format::Q4_1 => 20,
            Format::Q8_0 => 34,
        }
    }

    /// ggml's type id (`GGML_TYPE_*`) of this format.
    pub const fn ggml_type(self) -> u32 {
        match self {
            Format::Q4_0 => 2,
            Format::Q4_1 => 3,
            Format::Q8_0 => 8,
        }
    }

    /// The format of a ggml type id, if ward has kernels for it.
    pub const fn from_ggml_type(t: u32) -> Option<Self> {
        match t {
            2 => Some(Format::Q4_0),
            3 => Some(Format::Q4_1),
            8 => Some(Format::Q8_0),
            _ => None,
        }
    }
}

/// 32 activations quantised to 8 bits: `a = qs * d`; `s = d * sum(qs)` (what Q4_0 and Q4_1 need
/// for their offsets). ggml's Q8_1 with f32 scales; also serves as Q8_0 (`s` unused).
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

/// The little-endian f16 at `b[at..at + 2]` as f32 (0 when out of range, which
/// [`crate::QMatrix::new`] rules out).
pub(crate) fn f16_at(b: &[u8], at: usize) -> f32 {
    match b.get(at..at + 2) {
        Some(&[lo, hi]) => f16_to_f32(u16::from_le_bytes([lo, hi])),
        _ => 0.0,
    }
}

/// Quantises `x` (a multiple of [`QK`] long) into `out` (`x.len() / QK` blocks), as ggml's
/// `quantize_row_q8_1`: `d = max|x| / 127`, `q = round(x / d)`. Extra `out` blocks are left alone.
pub fn quantize_row(x: &[f32], out: &mut [Q8Block]) {
    for (xs, o) in x.chunks_exact(QK).zip(out.iter_mut()) {
        let amax = xs.iter().fold(0f32, |m, v| m.max(v.abs()));
        let d = amax / 127.0;
        let id = if d > 0.0 { 1.0 / d } else { 0.0 };
        let mut sum = 0i32;
        for (q, &v) in o.qs.iter_mut().zip(xs) {
            // |v * id| <= 127 (up to rounding), so the cast cannot saturate but at +-127.
            let r = (v * id).round() as i8;
            *q = r;
            sum += i32::from(r);
        }
        o.d = d;
        o.s = d * sum as f32;
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
pub fn dot_scalar(fmt: Format, row: &[u8], a: &[Q8Block]) -> f32 {
    let mut sum = 0f32;
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
                sum += dw * a.d * dot as f32 + m * a.s;
            }
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
    sum
}

/// One row of weights dequantised to f32 (the tests' route through full precision).
pub fn dequantize_row(fmt: Format, row: &[u8]) -> Vec<f32> {
    let mut out = Vec::with_capacity(row.len() / fmt.block_bytes() * QK);
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
    fn quantize_row_keeps_the_extremes_and_the_sum() {
        let mut x: Vec<f32> = (0..64).map(|i| (i as f32 - 31.5) / 7.0).collect();
        x[40] = -100.0;
        let mut q = [Q8Block::ZERO; 2];
        quantize_row(&x, &mut q);
        assert_eq!(q[1].qs[8], -127);
        assert!((q[1].d - 100.0 / 127.0).abs() < 1e-6);
        for (b, xs) in q.iter().zip(x.chunks(QK)) {
            let sum: i32 = b.qs.iter().map(|&v| i32::from(v)).sum();
            assert_eq!(b.s, b.d * sum as f32);
            for (&v, &f) in b.qs.iter().zip(xs) {
                assert!((f32::from(v) * b.d - f).abs() <= b.d / 2.0 + 1e-6);
            }
        }
        let mut z = [Q8Block::ZERO];
        quantize_row(&[0.0; QK], &mut z);
        assert_eq!(z[0], Q8Block::ZERO);
    }
}
