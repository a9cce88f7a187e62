//! The f32 vector loops of attention over a KV cache (a query against each cached key, then
//! the weighted sum of the cached values): written so that the compiler vectorises them, and
//! compiled a second time with AVX2 + FMA for CPUs that have them (chosen at run time, like the
//! block kernels), so the portable build runs them 8 lanes wide too.

/// Lanes summed apart: independent accumulators the compiler keeps in vector registers.
const LANES: usize = 16;

/// `sum(a[i] * b[i])` over the shorter of the two.
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    #[cfg(target_arch = "x86_64")]
    if crate::kernel::avx2() {
        // SAFETY: the CPU has AVX2 and FMA (detected above).
        return unsafe { dot_avx2(a, b) };
    }
    dot_body(a, b)
}

/// `y[i] += alpha * x[i]` over the shorter of the two.
pub fn axpy(y: &mut [f32], alpha: f32, x: &[f32]) {
    #[cfg(target_arch = "x86_64")]
    if crate::kernel::avx2() {
        // SAFETY: the CPU has AVX2 and FMA (detected above).
        return unsafe { axpy_avx2(y, alpha, x) };
    }
    axpy_body(y, alpha, x)
}

/// Softmax attention of one query `q` (`dim` values) over `len` cached tokens:
/// `out = sum_t p_t v_t` with `p = softmax(scale * k_t . q)`, in candle's order of operations
/// after the dot products (scores scaled, the maximum subtracted, `exp`, each divided by their
/// sum, then the weighted sum). The keys are stored transposed, `keys_t[d * stride + t]` for
/// token `t < len <= stride`, so that the scores are computed for a block of tokens at once
/// (a vector accumulator per 8 tokens, no horizontal sums); the values are rows,
/// `values[t * dim..][..dim]`. `scores` is scratch space. One run-time dispatch per head, so
/// the loops inline.
pub fn attend(
    q: &[f32],
    keys_t: &[f32],
    stride: usize,
    values: &[f32],
    scale: f32,
    scores: &mut Vec<f32>,
    out: &mut [f32],
) {
    #[cfg(target_arch = "x86_64")]
    if crate::kernel::avx2() {
        // SAFETY: the CPU has AVX2 and FMA (detected above).
        return unsafe { attend_avx2(q, keys_t, stride, values, scale, scores, out) };
    }
    attend_body::<false>(q, keys_t, stride, values, scale, scores, out)
}

/// Queries [`attend_group`] scores together.
pub const QUERY_GROUP: usize = 4;

/// [`attend`] for [`QUERY_GROUP`] queries of one head over one cache (consecutive tokens of a
/// prompt pass): query `i` over the tokens of `values[i]` (`values[i].len() / dim` of them).
/// Each block of keys is read once for all the queries, where [`attend`] reads the head's keys
/// once a query (at a 1,024-token prompt, SmolLM2's attention was 38% of its prefill); the
/// scores, the softmax and the weighted sums are [`attend`]'s, bit for bit. `scores` is
/// scratch space. Measured, and worth knowing before changing this: the weighted sums stay one
/// query at a time (summed for all four at once, each row of values read once, the loop was
/// compiled to scalar code and SmolLM2's prefill ran 3.5x slower), and the values come as one
/// slice per query (one slice of the head's values with a length per query, the same
/// arithmetic, also compiled to scalar code: 2x slower).
pub fn attend_group(
    qs: [&[f32]; QUERY_GROUP],
    keys_t: &[f32],
    stride: usize,
    values: [&[f32]; QUERY_GROUP],
    scale: f32,
    scores: &mut Vec<f32>,
    outs: [&mut [f32]; QUERY_GROUP],
) {
    #[cfg(target_arch = "x86_64")]
    if crate::kernel::avx2() {
        // SAFETY: the CPU has AVX2 and FMA (detected above).
        return unsafe { attend_group_avx2(qs, keys_t, stride, values, scale, scores, outs) };
    }
    attend_group_body::<false>(qs, keys_t, stride, values, scale, scores, outs)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn attend_group_avx2(
    qs: [&[f32]; QUERY_GROUP],
    keys_t: &[f32],
    stride: usize,
    values: [&[f32]; QUERY_GROUP],
    scale: f32,
    scores: &mut Vec<f32>,
    outs: [&mut [f32]; QUERY_GROUP],
) {
    attend_group_body::<true>(qs, keys_t, stride, values, scale, scores, outs)
}

/// Tokens whose scores [`attend_group`] accumulates together for all its queries (their
/// accumulators fill 8 of AVX2's 16 vector registers).
const GROUP_BLOCK: usize = 16;

#[inline(always)]
fn attend_group_body<const FMA: bool>(
    qs: [&[f32]; QUERY_GROUP],
    keys_t: &[f32],
    stride: usize,
    values: [&[f32]; QUERY_GROUP],
    scale: f32,
    scores: &mut Vec<f32>,
    outs: [&mut [f32]; QUERY_GROUP],
) {
    let dim = qs[0].len();
    if dim == 0 || qs.iter().any(|q| q.len() != dim) {
        return;
    }
    let lens = values.map(|v| (v.len() / dim).min(stride));
    let most = lens.iter().copied().max().unwrap_or(0);
    scores.clear();
    scores.resize(QUERY_GROUP * most, 0.0);
    let mut t = 0;
    while t < most {
        let n = GROUP_BLOCK.min(most - t);
        let Some(acc) = group_scores::<FMA>(&qs, keys_t, stride, t, n) else {
            return;
        };
        for (r, acc) in acc.iter().enumerate() {
            for (s, a) in scores[r * most + t..][..n].iter_mut().zip(acc) {
                *s = a * scale;
            }
        }
        t += n;
    }
    for (r, (out, values)) in outs.into_iter().zip(values).enumerate() {
        let own = &mut scores[r * most..][..lens[r]];
        softmax_and_sum::<FMA>(own, values, dim, out);
    }
}

/// The queries' unscaled scores for tokens `t..t + n` (`n <= GROUP_BLOCK`), each query's
/// accumulated as [`attend`] does; `None` if `keys_t` is too short. A whole block has its own
/// loop, with accumulators the compiler keeps in registers (shared with the partial block's
/// loop, they lived on the stack: a load and a store per multiply-add).
#[inline(always)]
fn group_scores<const FMA: bool>(
    qs: &[&[f32]; QUERY_GROUP],
    keys_t: &[f32],
    stride: usize,
    t: usize,
    n: usize,
) -> Option<[[f32; GROUP_BLOCK]; QUERY_GROUP]> {
    let dim = qs[0].len();
    let row = |d: usize| keys_t.get(d * stride + t..d * stride + t + n);
    // The queries' element `d` (all `dim` long: checked by the caller).
    let qd = |d: usize| qs.map(|q| q.get(d).copied().unwrap_or(0.0));
    let mut acc = [[0f32; GROUP_BLOCK]; QUERY_GROUP];
    if n == GROUP_BLOCK {
        for d in 0..dim {
            let row: &[f32; GROUP_BLOCK] = row(d)?.try_into().ok()?;
            let qd = qd(d);
            for r in 0..QUERY_GROUP {
                for i in 0..GROUP_BLOCK {
                    acc[r][i] = madd::<FMA>(qd[r], row[i], acc[r][i]);
                }
            }
        }
    } else {
        for d in 0..dim {
            let row = row(d)?;
            for (acc, qd) in acc.iter_mut().zip(qd(d)) {
                for (a, &k) in acc.iter_mut().zip(row) {
                    *a = madd::<FMA>(qd, k, *a);
                }
            }
        }
    }
    Some(acc)
}

/// `out[i] = silu(gate[i]) * up[i]` (`silu(g) = g / (1 + e^-g)`, candle's formula), over the
/// shortest of the three.
pub fn silu_mul(gate: &[f32], up: &[f32], out: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if crate::kernel::avx2() {
        // SAFETY: the CPU has AVX2 and FMA (detected above).
        return unsafe { silu_mul_avx2(gate, up, out) };
    }
    silu_mul_body(gate, up, out)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn silu_mul_avx2(gate: &[f32], up: &[f32], out: &mut [f32]) {
    silu_mul_body(gate, up, out)
}

#[inline(always)]
fn silu_mul_body(gate: &[f32], up: &[f32], out: &mut [f32]) {
    for ((o, &g), &u) in out.iter_mut().zip(gate).zip(up) {
        *o = g / (1.0 + exp(-g)) * u;
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn attend_avx2(
    q: &[f32],
    keys_t: &[f32],
    stride: usize,
    values: &[f32],
    scale: f32,
    scores: &mut Vec<f32>,
    out: &mut [f32],
) {
    attend_body::<true>(q, keys_t, stride, values, scale, scores, out)
}

/// `a * b + c`: fused (one rounding) where the CPU has FMA (`FMA`, in code compiled for it),
/// else a product and a sum (`mul_add` without FMA would be a libm call per element).
#[inline(always)]
fn madd<const FMA: bool>(a: f32, b: f32, c: f32) -> f32 {
    if FMA { a.mul_add(b, c) } else { a * b + c }
}

/// Tokens whose scores are accumulated together.
const SCORE_BLOCK: usize = 64;

#[inline(always)]
fn attend_body<const FMA: bool>(
    q: &[f32],
    keys_t: &[f32],
    stride: usize,
    values: &[f32],
    scale: f32,
    scores: &mut Vec<f32>,
    out: &mut [f32],
) {
    let dim = q.len();
    if dim == 0 {
        return;
    }
    let len = (values.len() / dim).min(stride);
    scores.clear();
    scores.resize(len, 0.0);
    let mut t = 0;
    while t < len {
        let n = SCORE_BLOCK.min(len - t);
        let mut acc = [0f32; SCORE_BLOCK];
        for (d, &qd) in q.iter().enumerate() {
            let Some(row) = keys_t.get(d * stride + t..d * stride + t + n) else {
                return;
            };
            if n == SCORE_BLOCK {
                for i in 0..SCORE_BLOCK {
                    acc[i] = madd::<FMA>(qd, row[i], acc[i]);
                }
            } else {
                for (a, &k) in acc.iter_mut().zip(row) {
                    *a = madd::<FMA>(qd, k, *a);
                }
            }
        }
        for (s, a) in scores[t..t + n].iter_mut().zip(&acc) {
            *s = a * scale;
        }
        t += n;
    }
    softmax_and_sum::<FMA>(scores, values, dim, out);
}

/// The rest of [`attend`] after the scores: `scores` (scaled) made a softmax in place, then
/// `out = sum_t p_t v_t` over `values`' rows of `dim`.
#[inline(always)]
fn softmax_and_sum<const FMA: bool>(
    scores: &mut [f32],
    values: &[f32],
    dim: usize,
    out: &mut [f32],
) {
    softmax(scores);
    let scores = &*scores;
    match dim {
        64 => weighted_sum::<64, FMA>(scores, values, out),
        128 => weighted_sum::<128, FMA>(scores, values, out),
        _ => {
            out.fill(0.0);
            for (p, v) in scores.iter().zip(values.chunks_exact(dim)) {
                axpy_body(out, *p, v);
            }
        }
    }
}

/// `scores` made a softmax in place, in candle's order of operations.
#[inline(always)]
fn softmax(scores: &mut [f32]) {
    let mut maxes = [f32::NEG_INFINITY; LANES];
    for c in scores.chunks(LANES) {
        for (m, &s) in maxes.iter_mut().zip(c) {
            *m = m.max(s);
        }
    }
    let max = maxes.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    for s in scores.iter_mut() {
        *s = exp(*s - max);
    }
    let mut totals = [0f32; LANES];
    for c in scores.chunks(LANES) {
        for (t, &s) in totals.iter_mut().zip(c) {
            *t += s;
        }
    }
    let total: f32 = totals.iter().sum();
    for s in scores.iter_mut() {
        *s /= total;
    }
}

/// `e^x` within 2 ulp (Cephes' `expf`: `x = n ln 2 + r`, a degree-6 polynomial in `r`, times
/// `2^n`), branch-free so that a loop of it vectorises (the softmax of a long context called
/// libm's scalar `expf` once per cached token and head: 5% of a decode step at 1,000 tokens);
/// below `e^-87.3` it returns that rather than a subnormal or 0, above `e^88` that.
#[inline(always)]
fn exp(x: f32) -> f32 {
    let x = x.clamp(-87.336_55, 88.0);
    let n = (x * std::f32::consts::LOG2_E).round();
    let r = x - n * 0.693_359_4 + n * 2.121_944_4e-4;
    let mut p = 1.987_569_1e-4_f32;
    p = p * r + 1.398_199_9e-3;
    p = p * r + 8.333_452e-3;
    p = p * r + 4.166_579_6e-2;
    p = p * r + 1.666_666_5e-1;
    p = p * r + 0.5;
    let y = p * r * r + r + 1.0;
    // n is in -126..=127: a normal power of two.
    y * f32::from_bits(((n as i32 + 127) as u32) << 23)
}

/// `out = sum_t p_t v_t` for `D`-wide rows, the sum kept in registers.
#[inline(always)]
fn weighted_sum<const D: usize, const FMA: bool>(p: &[f32], values: &[f32], out: &mut [f32]) {
    let mut acc = [0f32; D];
    for (p, v) in p.iter().zip(values.chunks_exact(D)) {
        for i in 0..D {
            acc[i] = madd::<FMA>(*p, v[i], acc[i]);
        }
    }
    for (o, a) in out.iter_mut().zip(&acc) {
        *o = *a;
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn dot_avx2(a: &[f32], b: &[f32]) -> f32 {
    dot_body(a, b)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn axpy_avx2(y: &mut [f32], alpha: f32, x: &[f32]) {
    axpy_body(y, alpha, x)
}

#[inline(always)]
fn dot_body(a: &[f32], b: &[f32]) -> f32 {
    let n = a.len().min(b.len());
    let (a, b) = (&a[..n], &b[..n]);
    let mut acc = [0f32; LANES];
    let (ca, cb) = (a.chunks_exact(LANES), b.chunks_exact(LANES));
    let (ra, rb) = (ca.remainder(), cb.remainder());
    for (x, y) in ca.zip(cb) {
        for i in 0..LANES {
            acc[i] += x[i] * y[i];
        }
    }
    for (i, (x, y)) in ra.iter().zip(rb).enumerate() {
        acc[i] += x * y;
    }
    // Pairwise, as a vector reduction would.
    let mut width = LANES / 2;
    while width > 0 {
        for i in 0..width {
            acc[i] += acc[i + width];
        }
        width /= 2;
    }
    acc[0]
}

#[inline(always)]
fn axpy_body(y: &mut [f32], alpha: f32, x: &[f32]) {
    for (y, x) in y.iter_mut().zip(x) {
        *y += alpha * x;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dot_and_axpy_match_plain_loops() {
        for n in [0, 1, 15, 16, 17, 64, 100] {
            let a: Vec<f32> = (0..n).map(|i| (i as f32 * 0.37).sin()).collect();
            let b: Vec<f32> = (0..n).map(|i| (i as f32 * 0.11).cos()).collect();
            let want: f64 = a.iter().zip(&b).map(|(x, y)| f64::from(x * y)).sum();
            assert!((f64::from(dot(&a, &b)) - want).abs() < 1e-4, "{n}");
            assert!((f64::from(dot_body(&a, &b)) - want).abs() < 1e-4, "{n}");
            let mut y = b.clone();
            axpy(&mut y, 0.5, &a);
            for i in 0..n {
                assert_eq!(y[i], b[i] + 0.5 * a[i]);
            }
        }
    }

    #[test]
    fn exp_is_within_two_ulp_of_libm() {
        let mut x = -87.0f32;
        while x < 88.0 {
            let (got, want) = (exp(x), x.exp());
            assert!(
                (got - want).abs() <= 2.5e-7 * want,
                "exp({x}) = {got}, not {want}"
            );
            x += 0.0137;
        }
        assert!(exp(-1000.0) < 1e-37);
        assert!(exp(f32::NEG_INFINITY) < 1e-37);
        assert_eq!(exp(0.0), 1.0);
        let g = [-100.0, -3.0, 0.0, 0.5, 20.0, 100.0];
        let up = [2.0; 6];
        let mut out = [0f32; 6];
        silu_mul(&g, &up, &mut out);
        for ((&o, &g), &u) in out.iter().zip(&g).zip(&up) {
            let want = g / (1.0 + (-g).exp()) * u;
            assert!(
                (o - want).abs() <= 1e-6 * want.abs() + 1e-30,
                "{g}: {o} {want}"
            );
        }
    }

    #[test]
    fn attention_is_the_softmax_weighted_sum_of_the_values() {
        for dim in [8, 64] {
            for len in [1, 3, 40, 130] {
                let stride = len + 5;
                let q: Vec<f32> = (0..dim).map(|i| (i as f32 * 0.7).sin()).collect();
                let keys: Vec<f32> = (0..len * dim).map(|i| (i as f32 * 0.3).cos()).collect();
                let values: Vec<f32> = (0..len * dim).map(|i| (i as f32 * 0.9).sin()).collect();
                let mut keys_t = vec![f32::NAN; dim * stride];
                for t in 0..len {
                    for d in 0..dim {
                        keys_t[d * stride + t] = keys[t * dim + d];
                    }
                }
                let scale = 0.35f32;
                let s: Vec<f64> = keys
                    .chunks(dim)
                    .map(|k| {
                        let dot: f64 = k.iter().zip(&q).map(|(a, b)| f64::from(a * b)).sum();
                        f64::from(scale) * dot
                    })
                    .collect();
                let max = s.iter().copied().fold(f64::NEG_INFINITY, f64::max);
                let e: Vec<f64> = s.iter().map(|v| (v - max).exp()).collect();
                let total: f64 = e.iter().sum();
                let mut out = vec![0f32; dim];
                let mut plain = vec![0f32; dim];
                let mut scratch = Vec::new();
                attend(&q, &keys_t, stride, &values, scale, &mut scratch, &mut out);
                attend_body::<false>(
                    &q,
                    &keys_t,
                    stride,
                    &values,
                    scale,
                    &mut scratch,
                    &mut plain,
                );
                for (a, b) in out.iter().zip(&plain) {
                    assert!((a - b).abs() < 1e-6, "{dim} {len}: fused {a}, plain {b}");
                }
                for d in 0..dim {
                    let want: f64 = (0..len)
                        .map(|t| e[t] / total * f64::from(values[t * dim + d]))
                        .sum();
                    assert!((f64::from(out[d]) - want).abs() < 1e-5, "{dim} {len} {d}");
                }
            }
        }
    }

    /// A group's queries over their own lengths (a prompt pass: each a token later) give
    /// [`attend`]'s outputs bit for bit, in both bodies, where the keys past a query's tokens
    /// hold other values (the later queries' tokens) and past the cache NaN.
    #[test]
    fn a_query_group_attends_as_its_queries_alone() {
        for dim in [8, 64, 128] {
            for first in [1, 5, 16, 61, 200] {
                let (len, stride) = (first + QUERY_GROUP - 1, first + QUERY_GROUP + 7);
                let qs: Vec<Vec<f32>> = (0..QUERY_GROUP)
                    .map(|r| {
                        (0..dim)
                            .map(|i| ((i + 13 * r) as f32 * 0.7).sin())
                            .collect()
                    })
                    .collect();
                let mut keys_t = vec![f32::NAN; dim * stride];
                for t in 0..len {
                    for d in 0..dim {
                        keys_t[d * stride + t] = ((t * dim + d) as f32 * 0.3).cos();
                    }
                }
                let values: Vec<f32> = (0..len * dim).map(|i| (i as f32 * 0.9).sin()).collect();
                let lens: Vec<usize> = (0..QUERY_GROUP).map(|r| first + r).collect();
                let scale = 0.35f32;
                let mut scratch = Vec::new();
                let mut alone = vec![vec![0f32; dim]; QUERY_GROUP];
                for r in 0..QUERY_GROUP {
                    let v = &values[..lens[r] * dim];
                    attend(
                        &qs[r],
                        &keys_t,
                        stride,
                        v,
                        scale,
                        &mut scratch,
                        &mut alone[r],
                    );
                }
                for fma in [true, false] {
                    let mut grouped = vec![vec![0f32; dim]; QUERY_GROUP];
                    let [o0, o1, o2, o3] = &mut grouped[..] else {
                        unreachable!()
                    };
                    let q = [&qs[0][..], &qs[1][..], &qs[2][..], &qs[3][..]];
                    let v: Vec<&[f32]> = lens.iter().map(|&l| &values[..l * dim]).collect();
                    let v = [v[0], v[1], v[2], v[3]];
                    let outs = [&mut o0[..], &mut o1[..], &mut o2[..], &mut o3[..]];
                    if fma && crate::kernel::avx2() {
                        attend_group(q, &keys_t, stride, v, scale, &mut scratch, outs);
                        assert_eq!(grouped, alone, "{dim} {first}");
                    } else if !fma {
                        let mut plain = vec![vec![0f32; dim]; QUERY_GROUP];
                        for r in 0..QUERY_GROUP {
                            let v = &values[..lens[r] * dim];
                            attend_body::<false>(
                                &qs[r],
                                &keys_t,
                                stride,
                                v,
                                scale,
                                &mut scratch,
                                &mut plain[r],
                            );
                        }
                        attend_group_body::<false>(
                            q,
                            &keys_t,
                            stride,
                            v,
                            scale,
                            &mut scratch,
                            outs,
                        );
                        assert_eq!(grouped, plain, "{dim} {first}, plain");
                    }
                }
            }
        }
    }
}
