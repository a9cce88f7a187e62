//! AVX2 + FMA (+ F16C for the block scales) dot products of weight rows in the ggml block
//! formats with 8-bit activation blocks, as llama.cpp's `ggml_vec_dot_q4_1_q8_1` and friends:
//! per block, 32 weights unpacked to bytes, `vpmaddubsw` (u8 x i8 -> i16 pairs) and `vpmaddwd`
//! (-> i32 quads), converted and multiplied into one f32 vector accumulator by the product of the
//! two block scales (FMA), one horizontal sum per row at the end.
//!
//! A tile is one weight row against `R` activation rows: each weight block is loaded and
//! unpacked once for all `R` (the prefill GEMM's reuse), `R` accumulators live in registers.
//!
//! Only called after [`available`] said yes; lengths are checked by [`tile`], the one entry.

use std::arch::x86_64::*;

use crate::Kernel;
use crate::blocks::{Format, Q8Block, tile_row_bytes};

mod gemm_zmm;
mod kgemm;
mod kquants;
mod qgemm;
pub(crate) use kgemm::gemm_k;
pub(crate) use kquants::tile_k;
pub(crate) use qgemm::gemm_q8;

/// A GEMM's operands: `rows` weight rows of `nb` blocks of `fmt` in `w`, `row_bytes` each,
/// and `m` activation rows of `nb` blocks in `acts`; made only by [`Gemm::checked`].
#[derive(Clone, Copy)]
struct Gemm<'a, A> {
    fmt: Format,
    w: &'a [u8],
    row_bytes: usize,
    rows: usize,
    nb: usize,
    acts: &'a [A],
    m: usize,
}

impl<'a, A> Gemm<'a, A> {
    /// The operands, if the slices hold what the sizes say, with `m x rows` results in
    /// `res_len` (checked arithmetic: the sizes come from a model file's header).
    #[allow(clippy::too_many_arguments)]
    fn checked(
        fmt: Format,
        w: &'a [u8],
        rows: usize,
        nb: usize,
        acts: &'a [A],
        m: usize,
        res_len: usize,
    ) -> Option<Self> {
        let row_bytes = nb.checked_mul(fmt.block_bytes())?;
        let holds = rows.checked_mul(row_bytes).is_some_and(|n| n <= w.len())
            && m.checked_mul(nb).is_some_and(|n| n <= acts.len())
            && m.checked_mul(rows).is_some_and(|n| n <= res_len);
        holds.then_some(Gemm {
            fmt,
            w,
            row_bytes,
            rows,
            nb,
            acts,
            m,
        })
    }
}

/// Asks for bytes `at..at + len` of each of `rows` (rows of `row_bytes` in `w`) to be fetched
/// into the cache: a GEMM's next block of its panel's rows, fetched while the activations
/// meet this one. The panel's rows are as many streams through memory as it has rows (16),
/// more than the hardware prefetchers follow: on TinyLlama Q4_K_M (weights from memory) this
/// made prefill 1.09x faster. Ranges outside `w` are skipped.
fn prefetch_blocks(
    w: &[u8],
    rows: std::ops::Range<usize>,
    row_bytes: usize,
    at: usize,
    len: usize,
) {
    for r in rows {
        let Some(bytes) = r
            .checked_mul(row_bytes)
            .and_then(|s| s.checked_add(at))
            .and_then(|s| w.get(s..s.checked_add(len)?))
        else {
            return;
        };
        // Each 64-byte cache line the bytes touch, by an address inside them: the first byte,
        // then each line's start (a block need not start on a line: 144 bytes can span four).
        let first_line = 64 - (bytes.as_ptr() as usize) % 64;
        for at in std::iter::once(0).chain((first_line..bytes.len()).step_by(64)) {
            if let Some(b) = bytes.get(at) {
                // SAFETY: a hint, on an address inside `w`; SSE is x86-64's baseline.
                unsafe { _mm_prefetch::<_MM_HINT_T0>(std::ptr::from_ref(b).cast()) };
            }
        }
    }
}

/// Which encoding of `vpdpbusd` (u8 x i8, 4 products into each i32 lane) a GEMM may use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Vnni {
    /// None: `vpmaddubsw` and `vpmaddwd` (AVX2).
    None,
    /// AVX-VNNI's VEX encoding ([`Kernel::AvxVnni`]).
    Vex,
    /// AVX512-VNNI ([`Kernel::Avx512Vnni`]): the 512-bit panel kernels, and the EVEX encoding
    /// where they share a 256-bit step with [`Vnni::Vex`]'s.
    Evex,
}

impl Vnni {
    /// What `kernel` allows, where this CPU runs it.
    pub(crate) fn of(kernel: Kernel) -> Vnni {
        match kernel {
            Kernel::AvxVnni if kernel.available() => Vnni::Vex,
            Kernel::Avx512Vnni if kernel.available() => Vnni::Evex,
            _ => Vnni::None,
        }
    }
}

/// `acc` plus, in each i32 lane, the 4 products of `u`'s unsigned bytes with `s`'s signed bytes
/// in that lane: `vpdpbusd` in AVX512-VNNI's EVEX encoding (`EVEX`) or AVX-VNNI's VEX one. The
/// same instruction and result either way; written as inline assembly because one kernel body
/// serves both, and a function cannot be compiled for either feature set but not both (their
/// intrinsics, `_mm256_dpbusd_epi32` and `_mm256_dpbusd_avx_epi32`, need one each).
///
/// # Safety
/// The CPU has AVX512-VNNI and AVX512VL (`EVEX`) or AVX-VNNI (not `EVEX`).
#[target_feature(enable = "avx2")]
#[inline]
pub(super) unsafe fn dpbusd<const EVEX: bool>(acc: __m256i, u: __m256i, s: __m256i) -> __m256i {
    let mut acc = acc;
    // SAFETY: one instruction on these registers; the caller vouches for the feature.
    unsafe {
        if EVEX {
            std::arch::asm!(
                "{{evex}} vpdpbusd {acc}, {u}, {s}",
                acc = inout(ymm_reg) acc,
                u = in(ymm_reg) u,
                s = in(ymm_reg) s,
                options(pure, nomem, nostack, preserves_flags)
            );
        } else {
            std::arch::asm!(
                "{{vex}} vpdpbusd {acc}, {u}, {s}",
                acc = inout(ymm_reg) acc,
                u = in(ymm_reg) u,
                s = in(ymm_reg) s,
                options(pure, nomem, nostack, preserves_flags)
            );
        }
    }
    acc
}

/// Whether this CPU has what the kernels here need (checked once by the caller, cached).
pub(crate) fn available() -> bool {
    is_x86_feature_detected!("avx2")
        && is_x86_feature_detected!("fma")
        && is_x86_feature_detected!("f16c")
}

/// `out[j][r]` = row `j` of `w` (`out.len()` rows of `nb` blocks of `fmt`) dotted with
/// `a[r]` (at least `nb` blocks each). Returns false (computing nothing) if the lengths do not
/// hold or the CPU lacks the features.
pub(crate) fn tile<const R: usize>(
    fmt: Format,
    w: &[u8],
    nb: usize,
    a: [&[Q8Block]; R],
    out: &mut [[f32; R]],
) -> bool {
    let Some(row_bytes) = tile_row_bytes(fmt, w, out.len(), nb, &a) else {
        return false;
    };
    if !crate::kernel::avx2() {
        return false;
    }
    // One weight row at a time, decode included: a single stream through memory per thread,
    // which the hardware prefetchers follow (measured: the inference README, "One stream per
    // thread in decode").
    // SAFETY: the CPU has AVX2, FMA and F16C (checked just above); every row of `w` holds
    // `nb` whole blocks and every `a[r]` at least `nb` blocks (checked above), which is all
    // the pointer arithmetic below relies on.
    unsafe {
        match fmt {
            Format::Q4_0 => rows_signed::<R, true>(w, row_bytes, nb, a, out),
            Format::Q4_1 => rows_q4_1::<R>(w, row_bytes, nb, a, out),
            Format::Q8_0 => rows_signed::<R, false>(w, row_bytes, nb, a, out),
            // These take `Q8KBlock`s: `tile_k`.
            Format::Q4K | Format::Q5K | Format::Q6K => return false,
        }
    }
    true
}

/// Sum of the 8 lanes.
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) fn hsum(v: __m256) -> f32 {
    let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    let s = _mm_add_ss(s, _mm_movehdup_ps(s));
    _mm_cvtss_f32(s)
}

/// The two f16 at `p` (little-endian) as f32 lanes 0 and 1.
///
/// # Safety
/// `p..p + 4` is readable.
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn two_f16(p: *const u8) -> __m128 {
    // SAFETY: the caller guarantees 4 readable bytes; unaligned read.
    let bits = unsafe { std::ptr::read_unaligned(p.cast::<i32>()) };
    _mm_cvtph_ps(_mm_cvtsi32_si128(bits))
}

/// Q4_1: `w = q d + m`, so the dot is `d da sum(q a) + m s`: the unsigned nibbles are
/// `vpmaddubsw`'s unsigned operand as they are.
///
/// # Safety
/// AVX2, FMA and F16C; `w` holds `out.len()` rows of `row_bytes` (`nb` blocks); `a[r]` holds
/// `nb` blocks.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn rows_q4_1<const R: usize>(
    w: &[u8],
    row_bytes: usize,
    nb: usize,
    a: [&[Q8Block]; R],
    out: &mut [[f32; R]],
) {
    let low = _mm256_set1_epi8(0x0f);
    let ones = _mm256_set1_epi16(1);
    for (j, o) in out.iter_mut().enumerate() {
        let mut acc = [_mm256_setzero_ps(); R];
        let mut offs = [0f32; R];
        // SAFETY: row `j` starts inside `w` (caller's contract).
        let row = unsafe { w.as_ptr().add(j * row_bytes) };
        for b in 0..nb {
            // SAFETY: block `b` of row `j` lies inside `w`: `b < nb` whole 20-byte blocks of a
            // row the caller vouched for.
            let p = unsafe { row.add(b * 20) };
            // SAFETY: a Q4_1 block starts with d and m, two f16.
            let dm = unsafe { two_f16(p) };
            let d = _mm_cvtss_f32(dm);
            let m = _mm_cvtss_f32(_mm_movehdup_ps(dm));
            // SAFETY: 16 bytes of nibbles at offset 4, the rest of the block.
            let raw = unsafe { _mm_loadu_si128(p.add(4).cast::<__m128i>()) };
            let q = _mm256_and_si256(_mm256_set_m128i(_mm_srli_epi16(raw, 4), raw), low);
            for r in 0..R {
                // SAFETY: `b < nb <= a[r].len()`.
                let ab = unsafe { &*a[r].as_ptr().add(b) };
                // SAFETY: `qs` is 32 bytes; unaligned load.
                let av = unsafe { _mm256_loadu_si256(ab.qs.as_ptr().cast::<__m256i>()) };
                let dot = _mm256_madd_epi16(_mm256_maddubs_epi16(q, av), ones);
                acc[r] = _mm256_fmadd_ps(_mm256_set1_ps(d * ab.d), _mm256_cvtepi32_ps(dot), acc[r]);
                offs[r] += m * ab.s;
            }
        }
        for r in 0..R {
            o[r] = hsum(acc[r]) + offs[r];
        }
    }
}

/// Q8_0 (`Q4` false) and Q4_0 (`Q4` true: nibbles minus 8): signed weights, so `vpmaddubsw`
/// gets `|w|` and `a` with `w`'s sign (`vpsignb`), as llama.cpp's `mul_sum_i8_pairs`.
///
/// # Safety
/// As [`rows_q4_1`].
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn rows_signed<const R: usize, const Q4: bool>(
    w: &[u8],
    row_bytes: usize,
    nb: usize,
    a: [&[Q8Block]; R],
    out: &mut [[f32; R]],
) {
    let block = if Q4 { 18 } else { 34 };
    let ones = _mm256_set1_epi16(1);
    let low = _mm256_set1_epi8(0x0f);
    let eight = _mm256_set1_epi8(8);
    for (j, o) in out.iter_mut().enumerate() {
        let mut acc = [_mm256_setzero_ps(); R];
        // SAFETY: row `j` starts inside `w` (caller's contract).
        let row = unsafe { w.as_ptr().add(j * row_bytes) };
        for b in 0..nb {
            // SAFETY: block `b` of row `j` lies inside `w`: f16 d, then 16 (Q4_0) or 32 bytes.
            let p = unsafe { row.add(b * block) };
            // SAFETY: d and the first two quant bytes (unused), inside the block.
            let d = _mm_cvtss_f32(unsafe { two_f16(p) });
            let wq = if Q4 {
                // SAFETY: 16 nibble bytes at offset 2, the rest of the block.
                let raw = unsafe { _mm_loadu_si128(p.add(2).cast::<__m128i>()) };
                let q = _mm256_and_si256(_mm256_set_m128i(_mm_srli_epi16(raw, 4), raw), low);
                _mm256_sub_epi8(q, eight)
            } else {
                // SAFETY: 32 weight bytes at offset 2, the rest of the block.
                unsafe { _mm256_loadu_si256(p.add(2).cast::<__m256i>()) }
            };
            let wabs = _mm256_sign_epi8(wq, wq);
            for r in 0..R {
                // SAFETY: `b < nb <= a[r].len()`.
                let ab = unsafe { &*a[r].as_ptr().add(b) };
                // SAFETY: `qs` is 32 bytes; unaligned load.
                let av = unsafe { _mm256_loadu_si256(ab.qs.as_ptr().cast::<__m256i>()) };
                let signed = _mm256_sign_epi8(av, wq);
                let dot = _mm256_madd_epi16(_mm256_maddubs_epi16(wabs, signed), ones);
                acc[r] = _mm256_fmadd_ps(_mm256_set1_ps(d * ab.d), _mm256_cvtepi32_ps(dot), acc[r]);
            }
        }
        for r in 0..R {
            o[r] = hsum(acc[r]);
        }
    }
}
