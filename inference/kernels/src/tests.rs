//! Every kernel against the scalar reference and against the dequantise-then-f32 product, on
//! random blocks and on edge values (all-negative weights and activations, the largest f16
//! scales, zero blocks), at shapes that are not multiples of the tiles.

use crate::blocks::{Format, Q8Block, QK, dequantize_row, dot_scalar, quantize_row};
use crate::{Kernel, KernelError, Pool, QMatrix};

const FORMATS: [Format; 3] = [Format::Q4_0, Format::Q4_1, Format::Q8_0];

/// xorshift64*: reproducible without a dependency.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn byte(&mut self) -> u8 {
        (self.next() >> 56) as u8
    }
    /// Uniform in [-1, 1).
    fn unit(&mut self) -> f32 {
        ((self.next() >> 40) as f32 / (1u64 << 23) as f32) - 1.0
    }
    /// A finite f16 scale between 2^-9 and 2^5, either sign.
    fn scale(&mut self) -> [u8; 2] {
        let exp = 6 + (self.next() % 15) as u16;
        let bits = ((self.next() as u16) & 0x8000) | (exp << 10) | (self.next() as u16 & 0x3ff);
        bits.to_le_bytes()
    }
}

/// How the weight blocks are filled.
#[derive(Clone, Copy, Debug)]
enum Fill {
    Random,
    /// The most negative weights each format can hold, at the largest f16 scale.
    MostNegative,
    /// The largest f16 scale (65504) with random quants.
    MaxScale,
    Zero,
}

fn weights(rng: &mut Rng, fmt: Format, rows: usize, cols: usize, fill: Fill) -> Vec<u8> {
    let blocks = rows * cols / QK;
    let mut data = Vec::with_capacity(blocks * fmt.block_bytes());
    for _ in 0..blocks {
        let mut b: Vec<u8> = (0..fmt.block_bytes()).map(|_| rng.byte()).collect();
        match fill {
            Fill::Random => {
                b[..2].copy_from_slice(&rng.scale());
                if fmt == Format::Q4_1 {
                    b[2..4].copy_from_slice(&rng.scale());
                }
            }
            Fill::MostNegative => {
                // +65504 with q = 0 (Q4_0: -8 d; Q4_1: m = -65504) or q = -128 (Q8_0).
                b[..2].copy_from_slice(&0x7bffu16.to_le_bytes());
                let q_at = if fmt == Format::Q4_1 { 4 } else { 2 };
                if fmt == Format::Q4_1 {
                    b[2..4].copy_from_slice(&0xfbffu16.to_le_bytes());
                }
                let q = if fmt == Format::Q8_0 { 0x80 } else { 0x00 };
                b[q_at..].fill(q);
            }
            Fill::MaxScale => {
                let s = if rng.byte() & 1 == 0 {
                    0x7bffu16
                } else {
                    0xfbff
                };
                b[..2].copy_from_slice(&s.to_le_bytes());
                if fmt == Format::Q4_1 {
                    b[2..4].copy_from_slice(&0x7bffu16.to_le_bytes());
                }
            }
            Fill::Zero => b.fill(0),
        }
        data.extend(b);
    }
    data
}

fn activations(rng: &mut Rng, n: usize, negative: bool) -> Vec<f32> {
    (0..n)
        .map(|_| {
            let v = rng.unit() * 4.0;
            if negative { -v.abs() - 1e-3 } else { v }
        })
        .collect()
}

fn kernels() -> Vec<Kernel> {
    [Kernel::Scalar, Kernel::Avx2]
        .into_iter()
        .filter(|k| k.available())
        .collect()
}

/// Checks one product every way: against the per-row scalar reference (within f32 summation
/// order) and against f32 arithmetic on the dequantised weights (within the activation
/// quantisation's error bound: each activation moves by at most half its block's step).
fn check(fmt: Format, rows: usize, cols: usize, m: usize, fill: Fill, seed: u64) {
    let mut rng = Rng(seed);
    let data = weights(&mut rng, fmt, rows, cols, fill);
    let x = activations(&mut rng, m * cols, seed % 3 == 0);
    let w = QMatrix::new(fmt, rows, cols, data.clone()).unwrap();
    let nb = cols / QK;
    let mut acts = vec![Q8Block::ZERO; m * nb];
    for (xs, q) in x.chunks(cols).zip(acts.chunks_mut(nb)) {
        quantize_row(xs, q);
    }
    let row_bytes = nb * fmt.block_bytes();
    for kernel in kernels() {
        for threads in [1, 3] {
            let pool = Pool::new(threads);
            let mut out = vec![f32::NAN; m * rows];
            w.matmul_with(&x, m, &mut out, kernel, &pool).unwrap();
            for t in 0..m {
                let a = &acts[t * nb..(t + 1) * nb];
                let xs = &x[t * cols..(t + 1) * cols];
                for r in 0..rows {
                    let row = &data[r * row_bytes..(r + 1) * row_bytes];
                    let got = out[t * rows + r];
                    let reference = dot_scalar(fmt, row, a);
                    let deq = dequantize_row(fmt, row);
                    let exact: f64 = deq
                        .iter()
                        .zip(xs)
                        .map(|(&w, &x)| f64::from(w) * f64::from(x))
                        .sum();
                    let magnitude: f64 = deq
                        .iter()
                        .zip(xs)
                        .map(|(&w, &x)| f64::from((w * x).abs()))
                        .sum();
                    // Each activation is off by at most d / 2 of its block.
                    let quant_err: f64 = deq
                        .chunks(QK)
                        .zip(a)
                        .map(|(ws, b)| {
                            ws.iter().map(|w| f64::from(w.abs())).sum::<f64>() * f64::from(b.d)
                                / 2.0
                        })
                        .sum();
                    let what = format!(
                        "{fmt:?} {kernel:?} {threads}t {fill:?} {rows}x{cols} m={m} row {r} act {t}"
                    );
                    let rounding = 1e-5 * (magnitude + quant_err) + 1e-30;
                    assert!(got.is_finite(), "{what}: {got}");
                    assert!(
                        (f64::from(got) - f64::from(reference)).abs() <= rounding,
                        "{what}: kernel {got} vs scalar reference {reference}"
                    );
                    assert!(
                        (f64::from(got) - exact).abs() <= quant_err * 1.0001 + rounding,
                        "{what}: kernel {got} vs f32 product {exact} (bound {quant_err})"
                    );
                }
            }
        }
    }
}

#[test]
fn random_blocks_match_the_reference_and_the_f32_product() {
    let mut seed = 1;
    for fmt in FORMATS {
        for (rows, cols) in [(1, 32), (5, 96), (17, 64), (37, 576), (16, 1536)] {
            for m in [1, 3, 4, 5, 9, 17] {
                seed += 1;
                check(fmt, rows, cols, m, Fill::Random, seed);
            }
        }
    }
}

#[test]
fn edge_values_match_the_reference_and_the_f32_product() {
    let mut seed = 100;
    for fmt in FORMATS {
        for fill in [Fill::MostNegative, Fill::MaxScale, Fill::Zero] {
            for (rows, cols, m) in [(3, 32, 1), (19, 96, 6), (33, 64, 18)] {
                seed += 1;
                check(fmt, rows, cols, m, fill, seed);
            }
        }
    }
}

#[test]
fn all_negative_weights_and_activations_give_the_exact_positive_product() {
    // Q8_0 with q = -128 and Q4_0 with nibble 0 (w = -8 d), d = 1, against activations of -1:
    // exact in every kernel (x quantises to -127 with d = f16(1/127)).
    let da = crate::blocks::round_f16(1.0 / 127.0);
    for (fmt, q, expect) in [(Format::Q8_0, 0x80u8, 128.0), (Format::Q4_0, 0x00, 8.0)] {
        let mut block = vec![0u8; fmt.block_bytes()];
        block[..2].copy_from_slice(&0x3c00u16.to_le_bytes());
        block[2..].fill(q);
        let data: Vec<u8> = block
            .iter()
            .copied()
            .cycle()
            .take(block.len() * 6)
            .collect();
        let w = QMatrix::new(fmt, 2, 96, data).unwrap();
        for kernel in kernels() {
            let mut out = [0f32; 10];
            w.matmul_with(&[-1.0; 96 * 5], 5, &mut out, kernel, &Pool::new(2))
                .unwrap();
            for o in out {
                let want = expect * 127.0 * 96.0 * da;
                assert!(
                    (o - want).abs() <= want * 1e-6,
                    "{fmt:?} {kernel:?}: {o} vs {want}"
                );
            }
        }
    }
}

#[test]
fn threads_do_not_change_the_result() {
    let mut rng = Rng(7);
    for fmt in FORMATS {
        let w = QMatrix::new(fmt, 50, 128, weights(&mut rng, fmt, 50, 128, Fill::Random)).unwrap();
        let x = activations(&mut rng, 128 * 21, false);
        let mut one = vec![0f32; 50 * 21];
        let mut three = one.clone();
        w.matmul_with(&x, 21, &mut one, Kernel::best(), &Pool::new(1))
            .unwrap();
        w.matmul_with(&x, 21, &mut three, Kernel::best(), &Pool::new(3))
            .unwrap();
        assert_eq!(one, three, "{fmt:?}");
    }
}

#[test]
fn bad_shapes_are_errors_not_panics() {
    assert_eq!(
        QMatrix::new(Format::Q4_1, 2, 40, vec![0; 40]).err(),
        Some(KernelError::PartialBlock { cols: 40 })
    );
    assert!(matches!(
        QMatrix::new(Format::Q8_0, 2, 64, vec![0; 135]),
        Err(KernelError::WeightBytes {
            expected: 136,
            got: 135,
            ..
        })
    ));
    assert!(matches!(
        QMatrix::new(Format::Q4_0, usize::MAX / 2, 64, vec![]),
        Err(KernelError::TooLarge { .. })
    ));
    let w = QMatrix::new(Format::Q4_0, 2, 32, vec![0; 36]).unwrap();
    let pool = Pool::new(1);
    let mut out = [0f32; 2];
    assert!(matches!(
        w.matmul_with(&[0.0; 31], 1, &mut out, Kernel::Scalar, &pool),
        Err(KernelError::Operand { what: "input", .. })
    ));
    assert!(matches!(
        w.matmul_with(&[0.0; 64], 2, &mut out, Kernel::Scalar, &pool),
        Err(KernelError::Operand { what: "output", .. })
    ));
}

/// Joined matrices over once-quantised activations give each part's product, bit for bit
/// (a row's sum does not depend on the rows beside it), and only like matrices join. The
/// parts' row counts are not multiples of the 16-row blocks the kernels walk, so blocks end
/// at the parts' boundaries (a joined matrix keeps each part's bytes as a segment); 5
/// activation rows take the 4-row tile and the single-row path.
#[test]
fn joined_matrices_on_quantised_activations_equal_separate_products() {
    let mut rng = Rng(11);
    for fmt in FORMATS {
        let (cols, m) = (96, 5);
        let parts: Vec<QMatrix> = [5usize, 17, 4]
            .into_iter()
            .map(|rows| {
                let data = weights(&mut rng, fmt, rows, cols, Fill::Random);
                QMatrix::new(fmt, rows, cols, data).unwrap()
            })
            .collect();
        let x = activations(&mut rng, m * cols, false);
        // Joined in two steps: a joined matrix joins again (its segments carry over).
        let first_two = QMatrix::concat(&[&parts[0], &parts[1]]).unwrap();
        let joined = QMatrix::concat(&[&first_two, &parts[2]]).unwrap();
        assert_eq!(joined.rows(), 26);
        assert_eq!(
            joined.byte_len(),
            parts.iter().map(QMatrix::byte_len).sum::<usize>()
        );
        let mut acts = vec![Q8Block::ZERO; m * cols / QK];
        for (xs, a) in x.chunks_exact(cols).zip(acts.chunks_exact_mut(cols / QK)) {
            quantize_row(xs, a);
        }
        let mut out = vec![0f32; m * joined.rows()];
        joined.matmul_quantized(&acts, m, &mut out).unwrap();
        let mut at = 0;
        for p in &parts {
            let mut want = vec![0f32; m * p.rows()];
            p.matmul(&x, m, &mut want).unwrap();
            for i in 0..m {
                assert_eq!(
                    &out[i * joined.rows() + at..][..p.rows()],
                    &want[i * p.rows()..][..p.rows()],
                    "{fmt:?}"
                );
            }
            for r in 0..p.rows() {
                let (mut ours, mut theirs) = (Vec::new(), Vec::new());
                joined.dequantize_row_into(at + r, &mut ours).unwrap();
                p.dequantize_row_into(r, &mut theirs).unwrap();
                assert_eq!(ours, theirs, "{fmt:?} row {r}");
            }
            at += p.rows();
        }
        assert!(matches!(
            joined.matmul_quantized(&acts[1..], m, &mut out),
            Err(KernelError::Operand { .. })
        ));
        assert!(joined.dequantize_row_into(26, &mut Vec::new()).is_err());
    }
    let a = QMatrix::new(Format::Q8_0, 1, 32, vec![0; 34]).unwrap();
    let b = QMatrix::new(Format::Q4_0, 1, 32, vec![0; 18]).unwrap();
    assert_eq!(QMatrix::concat(&[&a, &b]).unwrap_err(), KernelError::Concat);
    assert_eq!(QMatrix::concat(&[]).unwrap_err(), KernelError::Concat);
}
