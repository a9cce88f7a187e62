//! NEON dot products of weight rows in the ggml block formats with 8-bit activation blocks, for
//! aarch64 CPUs (Graviton, Ampere Altra, Cobalt, Neoverse cores; Arm CCA realms), in llama.cpp's
//! arithmetic as the x86 kernels: per 16 weights an exact integer dot, per block one
//! conversion and one fused multiply-add by the two scales into a vector accumulator, one
//! horizontal sum per row at the end; the K-quants sum a whole super-block in integers first.
//!
//! Two bodies, one source: [`Kernel::NeonDot`] with the dot-product extension (`sdot`, four
//! 4-way i8 products into each i32 lane: Armv8.2-A and later, detected at run time), and
//! [`Kernel::Neon`] with widening multiplies (`smull` + `sadalp`) for the cores without it
//! (Cortex-A53/A72, Graviton 1). `sdot` is written as inline assembly: its intrinsic
//! (`vdotq_s32`) is not stable in Rust yet. So is the f16 conversion (`fcvt`: the f16 vector
//! types are not stable either).
//!
//! A tile is weight rows, one at a time (one stream through memory, as in `x86`), against `R`
//! activation rows: each weight block is unpacked once for all `R` (the prefill's reuse).
//! There is no packed-panel GEMM here (the x86 one is AVX-VNNI's); prefill takes 4-row tiles.
//!
//! Only called through [`tile`] and [`tile_k`], which check every length first. Tested (every
//! format, both bodies, against the scalar reference and the f32 product) under qemu-aarch64
//! (`just test-aarch64`); not measured on aarch64 hardware.
//!
//! [`Kernel::NeonDot`]: crate::Kernel::NeonDot
//! [`Kernel::Neon`]: crate::Kernel::Neon

// The kernels index register arrays (one per weight row, activation row or sub-block) by the
// same counters; iterator chains would hide which register is which.
#![allow(clippy::needless_range_loop)]

use std::arch::aarch64::*;
use std::arch::asm;

use crate::Kernel;
use crate::blocks::{Format, Q8Block, tile_row_bytes};
use crate::kquants::{Q8KBlock, SUBS, packed_scales, unpack_scales};

/// Whether this CPU has the dot-product extension (detected once by the caller, cached).
pub(crate) fn dotprod() -> bool {
    std::arch::is_aarch64_feature_detected!("dotprod")
}

/// 16 products of `w` and `a` added into the lanes of `acc` (which lane gets which products
/// differs between the bodies; only the lanes' sum is used): with `DOT`, one `sdot` (lane `i`
/// gets the products of bytes `4 i..4 i + 4`); without, `smull` and `sadalp`.
///
/// # Safety
/// `DOT` only where the CPU has the dot-product extension.
#[target_feature(enable = "neon")]
#[inline]
unsafe fn dot16<const DOT: bool>(acc: int32x4_t, w: int8x16_t, a: int8x16_t) -> int32x4_t {
    if DOT {
        let mut acc = acc;
        // SAFETY: `sdot` reads and writes only these registers; the caller runs `DOT` only
        // where the CPU has it. The directive lets the assembler take `sdot` in a function not
        // compiled for the extension (the `DOT` bodies are inlined into ones that are).
        unsafe {
            asm!(
                ".arch_extension dotprod",
                "sdot {acc:v}.4s, {w:v}.16b, {a:v}.16b",
                acc = inout(vreg) acc,
                w = in(vreg) w,
                a = in(vreg) a,
                options(pure, nomem, nostack, preserves_flags)
            );
        }
        acc
    } else {
        // |w a| <= 128 x 127: each i16 product is exact, pairs are added into i32 lanes.
        let lo = vmull_s8(vget_low_s8(w), vget_low_s8(a));
        let hi = vmull_high_s8(w, a);
        vpadalq_s16(vpadalq_s16(acc, lo), hi)
    }
}

/// The little-endian f16 at `p` as f32 (`fcvt`, in every aarch64 FPU).
///
/// # Safety
/// `p..p + 2` is readable.
#[target_feature(enable = "neon")]
#[inline]
unsafe fn load_f16(p: *const u8) -> f32 {
    // SAFETY: the caller guarantees 2 readable bytes; unaligned read.
    let bits = unsafe { std::ptr::read_unaligned(p.cast::<u16>()) };
    let out: f32;
    // SAFETY: a register-to-register conversion.
    unsafe {
        asm!(
            "fcvt {out:s}, {h:h}",
            out = out(vreg) out,
            h = in(vreg) i32::from(bits),
            options(pure, nomem, nostack, preserves_flags)
        );
    }
    out
}

/// `out[j][r]` = row `j` of `w` (`out.len()` rows of `nb` blocks of `fmt`, a 32-weight format)
/// dotted with `a[r]` (at least `nb` blocks each), with `kernel`'s body. Returns false
/// (computing nothing) if the lengths do not hold or `kernel` is not a NEON one this CPU runs.
pub(crate) fn tile<const R: usize>(
    kernel: Kernel,
    fmt: Format,
    w: &[u8],
    nb: usize,
    a: [&[Q8Block]; R],
    out: &mut [[f32; R]],
) -> bool {
    let Some(row_bytes) = tile_row_bytes(fmt, w, out.len(), nb, &a) else {
        return false;
    };
    match kernel {
        // SAFETY: the CPU has the dot-product extension (`available` was checked); every row
        // of `w` holds `nb` whole blocks and every `a[r]` at least `nb` (checked above).
        Kernel::NeonDot if kernel.available() => unsafe {
            rows_q8_dot::<R>(fmt, w, row_bytes, nb, a, out)
        },
        // SAFETY: NEON is in every aarch64 CPU; the lengths as above.
        Kernel::Neon => unsafe { rows_q8::<R, false>(fmt, w, row_bytes, nb, a, out) },
        _ => return false,
    }
    true
}

/// [`rows_q8`] compiled with the dot-product extension.
///
/// # Safety
/// As [`rows_q8`], and the CPU has the extension.
#[target_feature(enable = "neon,dotprod")]
unsafe fn rows_q8_dot<const R: usize>(
    fmt: Format,
    w: &[u8],
    row_bytes: usize,
    nb: usize,
    a: [&[Q8Block]; R],
    out: &mut [[f32; R]],
) {
    // SAFETY: the caller's contract, and the extension for `DOT`.
    unsafe { rows_q8::<R, true>(fmt, w, row_bytes, nb, a, out) }
}

/// Q4_0 (nibbles minus 8), Q4_1 (nibbles, then `m s` per block: summed apart from the products
/// it cancels against and added once, as the scalar reference) and Q8_0: the weights are
/// signed bytes either way, so `sdot` (or `smull`) takes them as they are.
///
/// # Safety
/// `w` holds `out.len()` rows of `row_bytes` (`nb` blocks of `fmt`); `a[r]` holds `nb` blocks;
/// `DOT` only where the CPU has the dot-product extension.
#[target_feature(enable = "neon")]
#[inline]
unsafe fn rows_q8<const R: usize, const DOT: bool>(
    fmt: Format,
    w: &[u8],
    row_bytes: usize,
    nb: usize,
    a: [&[Q8Block]; R],
    out: &mut [[f32; R]],
) {
    let block = fmt.block_bytes();
    let low = vdupq_n_u8(0x0f);
    let eight = vdupq_n_s8(8);
    for (j, o) in out.iter_mut().enumerate() {
        let mut acc = [vdupq_n_f32(0.0); R];
        let mut offs = [0f32; R];
        // SAFETY: row `j` starts inside `w` (caller's contract).
        let row = unsafe { w.as_ptr().add(j * row_bytes) };
        for b in 0..nb {
            // SAFETY: block `b` of row `j` lies inside `w`: `b < nb` whole blocks of a row the
            // caller vouched for.
            let p = unsafe { row.add(b * block) };
            // SAFETY: every block starts with its f16 `d`.
            let d = unsafe { load_f16(p) };
            let mut m = 0f32;
            let wq = match fmt {
                Format::Q8_0 => {
                    // SAFETY: 32 weight bytes at offset 2, the rest of the block.
                    unsafe { [vld1q_s8(p.add(2).cast()), vld1q_s8(p.add(18).cast())] }
                }
                _ => {
                    let at = if fmt == Format::Q4_1 {
                        // SAFETY: Q4_1's `m` follows `d`.
                        m = unsafe { load_f16(p.add(2)) };
                        4
                    } else {
                        2
                    };
                    // SAFETY: 16 nibble bytes at `at`, the rest of the block.
                    let raw = unsafe { vld1q_u8(p.add(at)) };
                    let lo = vreinterpretq_s8_u8(vandq_u8(raw, low));
                    let hi = vreinterpretq_s8_u8(vshrq_n_u8::<4>(raw));
                    if fmt == Format::Q4_0 {
                        [vsubq_s8(lo, eight), vsubq_s8(hi, eight)]
                    } else {
                        [lo, hi]
                    }
                }
            };
            for r in 0..R {
                // SAFETY: `b < nb <= a[r].len()`.
                let ab = unsafe { &*a[r].as_ptr().add(b) };
                // SAFETY: `qs` is 32 bytes; `DOT` as the caller vouched.
                let dot = unsafe {
                    let (a0, a1) = (vld1q_s8(ab.qs.as_ptr()), vld1q_s8(ab.qs.as_ptr().add(16)));
                    dot16::<DOT>(dot16::<DOT>(vdupq_n_s32(0), wq[0], a0), wq[1], a1)
                };
                acc[r] = vfmaq_n_f32(acc[r], vcvtq_f32_s32(dot), d * ab.d);
                offs[r] += m * ab.s;
            }
        }
        for r in 0..R {
            o[r] = vaddvq_f32(acc[r]) + offs[r];
        }
    }
}

/// [`tile`] for the K-quants (Q4_K, Q5_K, Q6_K) and their [`Q8KBlock`] activations.
pub(crate) fn tile_k<const R: usize>(
    kernel: Kernel,
    fmt: Format,
    w: &[u8],
    nb: usize,
    a: [&[Q8KBlock]; R],
    out: &mut [[f32; R]],
) -> bool {
    let Some(row_bytes) = tile_row_bytes(fmt, w, out.len(), nb, &a) else {
        return false;
    };
    match kernel {
        // SAFETY: the CPU has the dot-product extension (`available` was checked); every row
        // of `w` holds `nb` whole super-blocks and every `a[r]` at least `nb` (checked above).
        Kernel::NeonDot if kernel.available() => unsafe {
            rows_k_dot::<R>(fmt, w, row_bytes, nb, a, out)
        },
        // SAFETY: NEON is in every aarch64 CPU; the lengths as above.
        Kernel::Neon => unsafe { rows_k::<R, false>(fmt, w, row_bytes, nb, a, out) },
        _ => return false,
    }
    true
}

/// [`rows_k`] compiled with the dot-product extension.
///
/// # Safety
/// As [`rows_k`], and the CPU has the extension.
#[target_feature(enable = "neon,dotprod")]
unsafe fn rows_k_dot<const R: usize>(
    fmt: Format,
    w: &[u8],
    row_bytes: usize,
    nb: usize,
    a: [&[Q8KBlock]; R],
    out: &mut [[f32; R]],
) {
    // SAFETY: the caller's contract, and the extension for `DOT`.
    unsafe { rows_k::<R, true>(fmt, w, row_bytes, nb, a, out) }
}

/// The K-quants in llama.cpp's integer arithmetic (see `kquants::dot_scalar`): per super-block
/// every sub-block's exact dot times its integer scale is summed in i32 lanes, then one float
/// multiply; Q4_K and Q5_K take their mins from the activations' 16-value sums, Q6_K's quants
/// are offset by -32 before the products (so it needs no sums).
///
/// Sizes: a lane takes at most 8 products per 32 weights of |q| <= 63 and |a| <= 127, times a
/// scale of at most 128, over 8 sub-blocks: < 2^24.
///
/// # Safety
/// `w` holds `out.len()` rows of `row_bytes` (`nb` super-blocks of `fmt`); `a[r]` holds `nb`
/// blocks; `DOT` only where the CPU has the dot-product extension.
#[target_feature(enable = "neon")]
#[inline]
unsafe fn rows_k<const R: usize, const DOT: bool>(
    fmt: Format,
    w: &[u8],
    row_bytes: usize,
    nb: usize,
    a: [&[Q8KBlock]; R],
    out: &mut [[f32; R]],
) {
    let block = fmt.block_bytes();
    for (j, o) in out.iter_mut().enumerate() {
        let mut acc = [0f32; R];
        for sb in 0..nb {
            let at = j * row_bytes + sb * block;
            let b = &w[at..at + block];
            // SAFETY: `b` is one whole super-block of `fmt`; `DOT` as the caller vouched.
            let sums = unsafe {
                if fmt == Format::Q6K {
                    super_q6k::<R, DOT>(b, a, sb)
                } else {
                    super_q45k::<R, DOT>(fmt == Format::Q5K, b, a, sb)
                }
            };
            for r in 0..R {
                acc[r] += sums[r];
            }
        }
        *o = acc;
    }
}

/// One Q4_K (`q5` false) or Q5_K super-block `b` against super-block `sb` of each `a[r]`:
/// `d da sum_j sc_j dot_j - dmin da sum_j m_j bsum_j`.
///
/// # Safety
/// `b` is a whole super-block (144 or 176 bytes); `sb < a[r].len()`; `DOT` as [`rows_k`].
#[target_feature(enable = "neon")]
#[inline]
unsafe fn super_q45k<const R: usize, const DOT: bool>(
    q5: bool,
    b: &[u8],
    a: [&[Q8KBlock]; R],
    sb: usize,
) -> [f32; R] {
    let qs_at = if q5 { 48 } else { 16 };
    let low = vdupq_n_u8(0x0f);
    let sixteen = vdupq_n_u8(16);
    // SAFETY: `d` and `dmin`, the block's first 4 bytes.
    let (d, dmin) = unsafe { (load_f16(b.as_ptr()), load_f16(b.as_ptr().add(2))) };
    let sm = unpack_scales(packed_scales(b));
    let high = if q5 {
        // SAFETY: `qh`, bytes 16..48 of the block.
        unsafe { [vld1q_u8(b.as_ptr().add(16)), vld1q_u8(b.as_ptr().add(32))] }
    } else {
        [vdupq_n_u8(0); 2]
    };
    let mut sumi = [vdupq_n_s32(0); R];
    for pair in 0..SUBS / 2 {
        // SAFETY: the 32 quant bytes of sub-blocks 2 pair (low nibbles) and 2 pair + 1 (high),
        // inside the block.
        let raw = unsafe {
            let p = b.as_ptr().add(qs_at + 32 * pair);
            [vld1q_u8(p), vld1q_u8(p.add(16))]
        };
        for half in 0..2 {
            let j = 2 * pair + half;
            let mut q = if half == 0 {
                [vandq_u8(raw[0], low), vandq_u8(raw[1], low)]
            } else {
                [vshrq_n_u8::<4>(raw[0]), vshrq_n_u8::<4>(raw[1])]
            };
            if q5 {
                let bit = vdupq_n_u8(1 << j);
                for i in 0..2 {
                    q[i] = vorrq_u8(q[i], vandq_u8(vtstq_u8(high[i], bit), sixteen));
                }
            }
            let (q0, q1) = (vreinterpretq_s8_u8(q[0]), vreinterpretq_s8_u8(q[1]));
            for r in 0..R {
                let x = a[r][sb].qs.as_ptr();
                // SAFETY: 32 of the block's 256 activation bytes; `DOT` as vouched.
                let dot = unsafe {
                    let (x0, x1) = (vld1q_s8(x.add(32 * j)), vld1q_s8(x.add(32 * j + 16)));
                    dot16::<DOT>(dot16::<DOT>(vdupq_n_s32(0), q0, x0), q1, x1)
                };
                sumi[r] = vmlaq_n_s32(sumi[r], dot, i32::from(sm[j]));
            }
        }
    }
    std::array::from_fn(|r| {
        let ab = &a[r][sb];
        let mins: i32 = (0..SUBS)
            .map(|j| {
                i32::from(sm[8 + j]) * (i32::from(ab.bsums[2 * j]) + i32::from(ab.bsums[2 * j + 1]))
            })
            .sum();
        d * ab.d * vaddvq_s32(sumi[r]) as f32 - dmin * ab.d * mins as f32
    })
}

/// One Q6_K super-block `b` against super-block `sb` of each `a[r]`: `d da sum_g sc_g
/// (q - 32) . a` over its sixteen groups of 16 weights.
///
/// # Safety
/// As [`super_q45k`] (`b` 210 bytes).
#[target_feature(enable = "neon")]
#[inline]
unsafe fn super_q6k<const R: usize, const DOT: bool>(
    b: &[u8],
    a: [&[Q8KBlock]; R],
    sb: usize,
) -> [f32; R] {
    let low = vdupq_n_u8(0x0f);
    let three = vdupq_n_u8(3);
    let offset = vdupq_n_s8(32);
    // SAFETY: `d`, bytes 208..210.
    let d = unsafe { load_f16(b.as_ptr().add(208)) };
    let mut sumi = [vdupq_n_s32(0); R];
    for h in 0..2 {
        // SAFETY: `ql` bytes 64 h..64 h + 64 and `qh` bytes 128 + 32 h..+ 32, inside the block.
        let (ql, qh) = unsafe {
            let p = b.as_ptr();
            (
                [
                    vld1q_u8(p.add(64 * h)),
                    vld1q_u8(p.add(64 * h + 16)),
                    vld1q_u8(p.add(64 * h + 32)),
                    vld1q_u8(p.add(64 * h + 48)),
                ],
                [
                    vld1q_u8(p.add(128 + 32 * h)),
                    vld1q_u8(p.add(128 + 32 * h + 16)),
                ],
            )
        };
        for s in 0..4 {
            // Sub-block s of this half: the low (s < 2) or high nibbles of ql[32 (s % 2)..],
            // bits 2 s and 2 s + 1 of qh; the first 16 weights take scale 8 h + 2 s, the rest
            // 8 h + 2 s + 1.
            let q: [int8x16_t; 2] = std::array::from_fn(|i| {
                let l = ql[2 * (s % 2) + i];
                let nib = if s < 2 {
                    vandq_u8(l, low)
                } else {
                    vshrq_n_u8::<4>(l)
                };
                let two = match s {
                    0 => vandq_u8(qh[i], three),
                    1 => vandq_u8(vshrq_n_u8::<2>(qh[i]), three),
                    2 => vandq_u8(vshrq_n_u8::<4>(qh[i]), three),
                    _ => vshrq_n_u8::<6>(qh[i]),
                };
                let q = vorrq_u8(nib, vshlq_n_u8::<4>(two));
                vsubq_s8(vreinterpretq_s8_u8(q), offset)
            });
            let group = 8 * h + 2 * s;
            let (s0, s1) = (
                i32::from(b[192 + group] as i8),
                i32::from(b[192 + group + 1] as i8),
            );
            for r in 0..R {
                let x = a[r][sb].qs.as_ptr();
                // SAFETY: 32 of the block's 256 activation bytes; `DOT` as vouched.
                let (d0, d1) = unsafe {
                    let at = 128 * h + 32 * s;
                    (
                        dot16::<DOT>(vdupq_n_s32(0), q[0], vld1q_s8(x.add(at))),
                        dot16::<DOT>(vdupq_n_s32(0), q[1], vld1q_s8(x.add(at + 16))),
                    )
                };
                sumi[r] = vmlaq_n_s32(vmlaq_n_s32(sumi[r], d0, s0), d1, s1);
            }
        }
    }
    std::array::from_fn(|r| d * a[r][sb].d * vaddvq_s32(sumi[r]) as f32)
}
