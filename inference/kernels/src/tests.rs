//! Every kernel against the scalar reference and against the dequantise-then-f32 product, on
//! random blocks and on edge values (all-negative weights and activations, the largest f16
//! scales, zero blocks), at shapes that are not multiples of the tiles.

use crate::blocks::{ActBlock, Format, Q8Block, QK, QK_K, dequantize_row, dot_scalar};
use crate::kquants::Q8KBlock;
use crate::{Kernel, KernelError, Pool, QMatrix, QuantizedInput};

/// The activation blocks of either family, with the step their quantisation rounds to.
trait TestAct: ActBlock {
    fn step(&self) -> f32;
}

impl TestAct for Q8Block {
    fn step(&self) -> f32 {
        self.d
    }
}

impl TestAct for Q8KBlock {
    fn step(&self) -> f32 {
        self.d.abs()
    }
}

const FORMATS: [Format; 6] = [
    Format::Q4_0,
    Format::Q4_1,
    Format::Q8_0,
    Format::Q4K,
    Format::Q5K,
    Format::Q6K,
];

/// A shape's width for `fmt`: `cols` 32-weight blocks become as many 256-weight super-blocks
/// for the K-quants (so that odd block counts stay odd).
fn width(fmt: Format, cols: usize) -> usize {
    cols / QK * fmt.block_weights()
}

/// Where a block's f16 scales sit: `d` (and Q4_1's `m`, the K-quants' `dmin` after it).
fn scale_offsets(fmt: Format) -> &'static [usize] {
    match fmt {
        Format::Q4_0 | Format::Q8_0 => &[0],
        Format::Q4_1 | Format::Q4K | Format::Q5K => &[0, 2],
        Format::Q6K => &[208],
    }
}

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
    let blocks = rows * cols / fmt.block_weights();
    let mut data = Vec::with_capacity(blocks * fmt.block_bytes());
    for _ in 0..blocks {
        let mut b: Vec<u8> = (0..fmt.block_bytes()).map(|_| rng.byte()).collect();
        if fmt.block_weights() == QK_K {
            kquant_fill(rng, fmt, &mut b, fill);
            data.extend(b);
            continue;
        }
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

/// A K-quant super-block filled as `fill` says: random quants and scales with random f16 `d`
/// and `dmin`; the most negative weights (Q4_K/Q5_K: q = 0 with the largest mins and `dmin`;
/// Q6_K: q = 0, i.e. -32, with the largest positive scales); the largest `d` with random quants;
/// or zeros.
fn kquant_fill(rng: &mut Rng, fmt: Format, b: &mut [u8], fill: Fill) {
    let offsets = scale_offsets(fmt);
    match fill {
        Fill::Random => {
            for &at in offsets {
                b[at..at + 2].copy_from_slice(&rng.scale());
            }
        }
        Fill::MostNegative => {
            b.fill(0);
            for &at in offsets {
                b[at..at + 2].copy_from_slice(&0x7bffu16.to_le_bytes());
            }
            if fmt == Format::Q6K {
                b[192..208].fill(127);
            } else {
                // Every 6-bit scale 0, every 6-bit min 63.
                b[8..12].fill(63);
                b[4..8].fill(0xc0);
                b[12..16].fill(0xf0);
            }
        }
        Fill::MaxScale => {
            let s = if rng.byte() & 1 == 0 {
                0x7bffu16
            } else {
                0xfbff
            };
            b[offsets[0]..offsets[0] + 2].copy_from_slice(&s.to_le_bytes());
            if let Some(&at) = offsets.get(1) {
                b[at..at + 2].copy_from_slice(&0x7bffu16.to_le_bytes());
            }
        }
        Fill::Zero => b.fill(0),
    }
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
    [
        Kernel::Scalar,
        Kernel::Avx2,
        Kernel::AvxVnni,
        Kernel::Avx512Vnni,
        Kernel::Neon,
        Kernel::NeonDot,
    ]
    .into_iter()
    .filter(|k| k.available())
    .collect()
}

/// Checks one product every way: against the per-row scalar reference (within f32 summation
/// order) and against f32 arithmetic on the dequantised weights (within the activation
/// quantisation's error bound: each activation moves by at most half its block's step).
fn check(fmt: Format, rows: usize, cols: usize, m: usize, fill: Fill, seed: u64) {
    if fmt.block_weights() == QK_K {
        check_with::<Q8KBlock>(fmt, rows, cols, m, fill, seed)
    } else {
        check_with::<Q8Block>(fmt, rows, cols, m, fill, seed)
    }
}

fn check_with<A: TestAct>(fmt: Format, rows: usize, cols: usize, m: usize, fill: Fill, seed: u64) {
    let mut rng = Rng(seed);
    let data = weights(&mut rng, fmt, rows, cols, fill);
    let x = activations(&mut rng, m * cols, seed.is_multiple_of(3));
    let w = QMatrix::new(fmt, rows, cols, data.clone()).unwrap();
    let nb = cols / A::VALUES;
    let mut acts = vec![A::ZEROS; m * nb];
    for (xs, q) in x.chunks(cols).zip(acts.chunks_mut(nb)) {
        A::quantize(xs, q);
    }
    let row_bytes = fmt.row_bytes(cols).unwrap();
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
                        .chunks(A::VALUES)
                        .zip(a)
                        .map(|(ws, b)| {
                            ws.iter().map(|w| f64::from(w.abs())).sum::<f64>() * f64::from(b.step())
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
            // The K-quants' widths are 8 times these: fewer rows keep the test quick.
            let rows = if fmt.block_weights() == QK_K && rows > 16 {
                rows / 4
            } else {
                rows
            };
            // 9 and 17 rows take the K-quants' GEMM, 33 every format's (`ActBlock::GEMM_ROWS`).
            for m in [1, 3, 4, 5, 9, 17, 33] {
                seed += 1;
                check(fmt, rows, width(fmt, cols), m, Fill::Random, seed);
            }
        }
    }
}

#[test]
fn edge_values_match_the_reference_and_the_f32_product() {
    let mut seed = 100;
    for fmt in FORMATS {
        for fill in [Fill::MostNegative, Fill::MaxScale, Fill::Zero] {
            for (rows, cols, m) in [(3, 32, 1), (19, 96, 6), (33, 64, 18), (9, 64, 34)] {
                seed += 1;
                check(fmt, rows, width(fmt, cols), m, fill, seed);
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
        let cols = width(fmt, 128);
        let w = QMatrix::new(
            fmt,
            50,
            cols,
            weights(&mut rng, fmt, 50, cols, Fill::Random),
        )
        .unwrap();
        let x = activations(&mut rng, cols * 21, false);
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
        Some(KernelError::PartialBlock {
            cols: 40,
            block: 32
        })
    );
    assert_eq!(
        QMatrix::new(Format::Q6K, 2, 96, vec![0; 210]).err(),
        Some(KernelError::PartialBlock {
            cols: 96,
            block: 256
        })
    );
    assert!(matches!(
        QMatrix::new(Format::Q4K, 2, 256, vec![0; 287]),
        Err(KernelError::WeightBytes {
            expected: 288,
            got: 287,
            ..
        })
    ));
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
/// (a row's sum does not depend on the rows beside it), whether the parts share a format or
/// not (Q4_K_M's q and k in Q4_K beside v in Q6_K), and only matrices of one width join. The
/// parts' row counts are not multiples of the 16-row blocks the kernels walk, so blocks end
/// at the parts' boundaries (a joined matrix keeps each part's bytes as a segment); 5
/// activation rows take the 4-row tile and the single-row path.
#[test]
fn joined_matrices_on_quantised_activations_equal_separate_products() {
    let mut rng = Rng(11);
    let mixed = [Format::Q4K, Format::Q6K, Format::Q5K];
    let sets = FORMATS.map(|f| [f; 3]).into_iter().chain([mixed]);
    for formats in sets {
        let fmt = formats[0];
        let (cols, m) = (
            if fmt == Format::Q4K {
                512
            } else {
                width(fmt, 96)
            },
            5,
        );
        let parts: Vec<QMatrix> = [5usize, 17, 4]
            .into_iter()
            .zip(formats)
            .map(|(rows, fmt)| {
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
        let mut input = QuantizedInput::default();
        // Quantised for one part, used by the joined matrix: the same activations.
        parts[2].quantize_input(&x, m, &mut input).unwrap();
        let mut out = vec![0f32; m * joined.rows()];
        joined.matmul_quantized(&input, &mut out).unwrap();
        let mut at = 0;
        for p in &parts {
            let mut want = vec![0f32; m * p.rows()];
            p.matmul(&x, m, &mut want).unwrap();
            for i in 0..m {
                assert_eq!(
                    &out[i * joined.rows() + at..][..p.rows()],
                    &want[i * p.rows()..][..p.rows()],
                    "{formats:?}"
                );
            }
            for r in 0..p.rows() {
                let (mut ours, mut theirs) = (Vec::new(), Vec::new());
                joined.dequantize_row_into(at + r, &mut ours).unwrap();
                p.dequantize_row_into(r, &mut theirs).unwrap();
                assert_eq!(ours, theirs, "{formats:?} row {r}");
            }
            at += p.rows();
        }
        assert!(matches!(
            joined.matmul_quantized(&input, &mut out[1..]),
            Err(KernelError::Operand { .. })
        ));
        assert!(joined.dequantize_row_into(26, &mut Vec::new()).is_err());
    }
    let a = QMatrix::new(Format::Q8_0, 1, 32, vec![0; 34]).unwrap();
    let b = QMatrix::new(Format::Q4_0, 1, 64, vec![0; 36]).unwrap();
    assert_eq!(QMatrix::concat(&[&a, &b]).unwrap_err(), KernelError::Concat);
    // K-quants and 32-weight formats take different activations: not joined, and an input
    // quantised for one is refused by the other.
    let k = QMatrix::new(Format::Q4K, 1, 256, vec![0; 144]).unwrap();
    let q8 = QMatrix::new(Format::Q8_0, 1, 256, vec![0; 272]).unwrap();
    assert_eq!(
        QMatrix::concat(&[&k, &q8]).unwrap_err(),
        KernelError::Concat
    );
    let mut input = QuantizedInput::default();
    q8.quantize_input(&[0.5; 256], 1, &mut input).unwrap();
    assert!(matches!(
        k.matmul_quantized(&input, &mut [0.0]),
        Err(KernelError::Operand { .. })
    ));
    assert_eq!(QMatrix::concat(&[]).unwrap_err(), KernelError::Concat);
}

/// Each architecture's SIMD kernels are the ones chosen (unless `WARD_KERNEL` names another), and
/// the other architecture's are never available.
#[test]
fn the_cpu_s_own_kernels_are_chosen() {
    let named = std::env::var_os("WARD_KERNEL").is_some();
    #[cfg(target_arch = "aarch64")]
    {
        assert!(Kernel::Neon.available());
        assert!(!Kernel::Avx2.available() && !Kernel::AvxVnni.available());
        let best = if Kernel::NeonDot.available() {
            Kernel::NeonDot
        } else {
            Kernel::Neon
        };
        assert!(named || Kernel::best() == best);
    }
    #[cfg(target_arch = "x86_64")]
    {
        assert!(!Kernel::Neon.available() && !Kernel::NeonDot.available());
        if Kernel::Avx2.available() && !named {
            assert!(matches!(
                Kernel::best(),
                Kernel::Avx2 | Kernel::AvxVnni | Kernel::Avx512Vnni
            ));
        }
    }
    let _ = named;
}
