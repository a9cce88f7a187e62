//! The forward pass on the CPU, fused: where ward's kernels run every layer (`fused_cpu`), a
//! decode step of one or more sequences (one new token each) and a prompt pass of one
//! sequence (up to `PREFILL_PASS` tokens) run on plain buffers instead of candle's per-op
//! tensors. Per layer: RMS norm, the input quantised once for q, k and v (one joined matrix,
//! one pool job), biases and rotation in place, the new keys and values written into the
//! sequence's [`RawKv`], attention of each token's query heads straight over the cache up to
//! that token (the causal mask without a mask; one pool job for all tokens and heads), the
//! output projection added into the residual in place, then the same for the MLP (gate and up
//! one job, SiLU-gate fused into the down projection's input).
//!
//! A decode step through candle ran some 25 ops per layer, each allocating its output and
//! several waking candle's (rayon) threads for a few microseconds of work: three quarters of a
//! SmolLM2 step was there, not in the matmuls (inference/README.md). A prompt pass through
//! candle spent a third of its time in attention's ops (f32 matmuls over copied keys and
//! values, mask, softmax) and in candle's thread pool, whose worker spins for a while after
//! each op and so took a core from ward's pool running the next matmul; fused, SmolLM2's
//! 1,024-token prefill ran 1.8x faster (medians of three runs). The arithmetic is candle's op
//! for op (its RMS norm, rotation, softmax and SiLU formulas), so the logits match the candle
//! path within float summation order; the tests hold both to candle's own models.

use std::sync::Mutex;

use candle_core::{IndexOp, Tensor};
use ward_kernels::{Pool, QMatrix, QuantizedInput, f32ops};

use super::{CACHE_BLOCK, KvCache, Norm, QuantizedWeights};

/// One layer's keys and values of one sequence, `len` of `cap` tokens filled; room grows by
/// [`CACHE_BLOCK`] tokens. Keys are stored transposed, `heads x dim x cap` (for each head and
/// dimension, the tokens in a row: attention scores a block of tokens at once), values
/// `heads x cap x dim` (a head's tokens in order, for the weighted sum).
#[derive(Debug, Default)]
pub(crate) struct RawKv {
    k: Vec<f32>,
    v: Vec<f32>,
    cap: usize,
    len: usize,
    heads: usize,
    dim: usize,
}

impl RawKv {
    /// Tokens held.
    fn len(&self) -> usize {
        self.len
    }

    /// Makes room for `need` tokens of `heads x dim` (keeping those held), in blocks of
    /// [`CACHE_BLOCK`] tokens.
    fn reserve(&mut self, heads: usize, dim: usize, need: usize) {
        if (heads, dim) == (self.heads, self.dim) && need <= self.cap {
            return;
        }
        self.reserve_exact(heads, dim, need.div_ceil(CACHE_BLOCK) * CACHE_BLOCK);
    }

    /// Makes room for exactly `cap` tokens, if it holds less: a sequence whose length is known
    /// up front reserves it once, and never copies its cache to grow it. The buffers are zeroed
    /// allocations, so pages no token has reached are not resident.
    pub(super) fn reserve_exact(&mut self, heads: usize, dim: usize, cap: usize) {
        if (heads, dim) != (self.heads, self.dim) {
            *self = RawKv {
                heads,
                dim,
                ..RawKv::default()
            };
        }
        if cap <= self.cap {
            return;
        }
        let (old_cap, len) = (self.cap, self.len);
        // Both are rows of `old_cap` (keys: heads x dim rows of tokens) or of `old_cap * dim`
        // (values: heads rows of tokens x dim), of which the first `len` tokens are held.
        let grow = |old: &[f32], rows: usize, unit: usize| {
            let mut new = vec![0f32; rows * cap * unit];
            for r in 0..rows {
                let from = &old[r * old_cap * unit..][..len * unit];
                new[r * cap * unit..][..len * unit].copy_from_slice(from);
            }
            new
        };
        self.k = grow(&self.k, heads * dim, 1);
        self.v = grow(&self.v, heads, dim);
        self.cap = cap;
    }

    /// Appends `t` tokens: `k` and `v` are `heads x t x dim` (one token: `heads x dim`).
    fn append(&mut self, t: usize, k: &[f32], v: &[f32]) {
        let (heads, dim) = (self.heads, self.dim);
        self.reserve(heads, dim, self.len + t);
        let (cap, len) = (self.cap, self.len);
        for h in 0..heads {
            let from = h * t * dim..(h + 1) * t * dim;
            for (i, key) in k[from.clone()].chunks_exact(dim).enumerate() {
                for (d, &x) in key.iter().enumerate() {
                    self.k[(h * dim + d) * cap + len + i] = x;
                }
            }
            let at = (h * cap + len) * dim;
            self.v[at..at + t * dim].copy_from_slice(&v[from]);
        }
        self.len += t;
    }

    /// Head `h`'s keys (transposed: `dim` rows of `cap`, see [`RawKv`]) and values
    /// (`len x dim`).
    fn head(&self, h: usize) -> (&[f32], &[f32]) {
        let n = self.dim * self.cap;
        let at = (h * self.cap) * self.dim;
        (
            &self.k[h * n..(h + 1) * n],
            &self.v[at..at + self.len * self.dim],
        )
    }
}

/// The cache of layer `l` of a sequence at position `pos` (`0` starts it afresh), checked to
/// hold exactly `pos` tokens.
fn layer_cache(cache: &mut KvCache, l: usize, pos: usize) -> candle_core::Result<&mut RawKv> {
    while cache.raw.len() <= l {
        cache.raw.push(RawKv::default());
    }
    let raw = &mut cache.raw[l];
    if pos == 0 {
        raw.len = 0;
    }
    if raw.len() != pos {
        return Err(candle_core::Error::Msg(format!(
            "a forward pass at position {pos} of a sequence holding {} tokens",
            raw.len()
        )));
    }
    Ok(raw)
}

/// `out = x / sqrt(mean(x^2) + eps) * w`, per row of `w.len()`, as candle's `rms_norm`.
fn rms_norm(x: &[f32], norm: &Norm, out: &mut [f32]) {
    let n = norm.weight.len();
    for (x, o) in x.chunks_exact(n).zip(out.chunks_exact_mut(n)) {
        let sum2 = x.iter().map(|&v| v * v).sum::<f32>();
        let m = (sum2 / n as f32 + norm.eps).sqrt();
        for ((o, &x), &w) in o.iter_mut().zip(x).zip(&norm.weight) {
            *o = x / m * w;
        }
    }
}

/// Rotates each `dim`-wide head of `x` by the angles whose cosines and sines are `cos`, `sin`
/// (`dim / 2`): pairs `(i, i + dim / 2)` (NeoX) or `(2i, 2i + 1)`, as candle's `rope`/`rope_i`.
fn rotate(x: &mut [f32], dim: usize, cos: &[f32], sin: &[f32], neox: bool) {
    let half = dim / 2;
    for head in x.chunks_exact_mut(dim) {
        for i in 0..half {
            let (a, b) = if neox {
                (i, i + half)
            } else {
                (2 * i, 2 * i + 1)
            };
            let (x1, x2) = (head[a], head[b]);
            head[a] = x1 * cos[i] - x2 * sin[i];
            head[b] = x1 * sin[i] + x2 * cos[i];
        }
    }
}

/// `out` = `x` (`rows` rows) times `w`'s transposed weights, `x` quantised into `acts` (whose
/// buffers are reused from one product to the next).
fn matmul(
    w: &QMatrix,
    x: &[f32],
    rows: usize,
    acts: &mut QuantizedInput,
    out: &mut [f32],
) -> candle_core::Result<()> {
    w.quantize_input(x, rows, acts)
        .and_then(|()| w.matmul_quantized(acts, out))
        .map_err(candle_core::Error::wrap)
}

fn missing() -> candle_core::Error {
    candle_core::Error::Msg("the fused CPU path runs only on ward's kernels".into())
}

/// The sequence (an index into a fused pass's caches) and position of one row of the pass.
#[derive(Debug, Clone, Copy)]
struct Row {
    seq: usize,
    pos: usize,
}

impl QuantizedWeights {
    /// One decode step: `tokens[i]` at `positions[i]` of the sequence whose state is
    /// `caches[i]`; logits `(n, vocab)`.
    pub(super) fn decode_step(
        &self,
        caches: &mut [&mut KvCache],
        tokens: &[u32],
        positions: &[usize],
    ) -> candle_core::Result<Tensor> {
        let rows: Vec<Row> = positions
            .iter()
            .enumerate()
            .map(|(seq, &pos)| Row { seq, pos })
            .collect();
        self.fused_pass(caches, tokens, &rows, false)
    }

    /// A prompt pass of one sequence: `tokens` at positions `pos..` of the sequence whose state
    /// is `cache` (`pos == 0` starts it afresh); logits `(1, vocab)` of the last token. Each
    /// token attends over the cache up to itself (the causal mask, without a mask).
    pub(super) fn prefill_pass(
        &self,
        cache: &mut KvCache,
        tokens: &[u32],
        pos: usize,
    ) -> candle_core::Result<Tensor> {
        let rows: Vec<Row> = (0..tokens.len())
            .map(|i| Row {
                seq: 0,
                pos: pos + i,
            })
            .collect();
        self.fused_pass(&mut [cache], tokens, &rows, true)
    }

    /// `tokens[i]` at `rows[i]`: one token of each of several sequences (a decode step), or
    /// several consecutive tokens of one (a prompt pass), or both. A sequence's rows are in
    /// order of position, the first where its cache ends. Logits `(n, vocab)`, one row per
    /// token, or `(1, vocab)` of the last token only (`last_only`).
    fn fused_pass(
        &self,
        caches: &mut [&mut KvCache],
        tokens: &[u32],
        rows: &[Row],
        last_only: bool,
    ) -> candle_core::Result<Tensor> {
        let b = tokens.len();
        if rows.len() != b || b == 0 {
            return Err(candle_core::Error::Msg(format!(
                "a pass of {b} tokens at {} positions",
                rows.len()
            )));
        }
        let (hd, heads, kv_heads) = (self.head_dim, self.heads, self.kv_heads);
        let (qd, kd) = (heads * hd, kv_heads * hd);
        let device = self.device.clone();
        // Each sequence's cache checked to end where its first row is, its rows checked to
        // follow one another, and room made for them in every layer.
        let mut end: Vec<Option<usize>> = vec![None; caches.len()];
        for r in rows {
            let (Some(cache), Some(next)) = (caches.get_mut(r.seq), end.get_mut(r.seq)) else {
                return Err(candle_core::Error::Msg(format!(
                    "a row of sequence {} in a pass of {} sequences",
                    r.seq,
                    end.len()
                )));
            };
            match *next {
                None => {
                    for l in 0..self.layers.len() {
                        layer_cache(cache, l, r.pos)?;
                    }
                }
                Some(p) if p == r.pos => {}
                Some(p) => {
                    return Err(candle_core::Error::Msg(format!(
                        "a row at position {} after one at {}",
                        r.pos,
                        p - 1
                    )));
                }
            }
            *next = Some(r.pos + 1);
        }
        for (cache, end) in caches.iter_mut().zip(&end) {
            if let Some(end) = *end {
                for raw in &mut cache.raw {
                    raw.reserve(kv_heads, hd, end);
                }
            }
        }
        let mut h: Vec<f32> = self.embedding_rows(tokens)?;
        let hidden = h.len() / b;
        // Each row's rotation.
        let mut rot = Vec::with_capacity(b);
        for r in rows {
            rot.push((
                self.cos.i(r.pos)?.to_vec1::<f32>()?,
                self.sin.i(r.pos)?.to_vec1::<f32>()?,
            ));
        }
        let mut x = vec![0f32; b * hidden];
        let mut acts = QuantizedInput::default();
        let mut att = vec![0f32; b * qd];
        let mut sum = vec![0f32; b * hidden];
        let (mut qkv, mut gu, mut act) = (Vec::new(), Vec::new(), Vec::new());
        for (l, layer) in self.layers.iter().enumerate() {
            // Attention.
            rms_norm(&h, &layer.attn_norm, &mut x);
            let w = layer.qkv.own_matrix().ok_or_else(missing)?;
            let width = w.rows();
            qkv.resize(b * width, 0.0);
            matmul(w, &x, b, &mut acts, &mut qkv)?;
            for (i, row) in qkv.chunks_exact_mut(width).enumerate() {
                for (x, b) in row.iter_mut().zip(&layer.bias_values) {
                    *x += b;
                }
                let (cos, sin) = &rot[i];
                let (q, kv) = row.split_at_mut(qd);
                rotate(q, hd, cos, sin, self.neox);
                rotate(&mut kv[..kd], hd, cos, sin, self.neox);
                if let Some(cache) = caches[rows[i].seq].raw.get_mut(l) {
                    cache.append(1, &kv[..kd], &kv[kd..2 * kd]);
                }
            }
            self.attend_cached(caches, rows, l, &qkv, width, &mut att);
            let wo = layer.wo.own_matrix().ok_or_else(missing)?;
            matmul(wo, &att, b, &mut acts, &mut sum)?;
            h.iter_mut().zip(&sum).for_each(|(h, s)| *h += s);
            // MLP.
            rms_norm(&h, &layer.ffn_norm, &mut x);
            let w = layer.gate_up.own_matrix().ok_or_else(missing)?;
            let ff = w.rows() / 2;
            gu.resize(b * 2 * ff, 0.0);
            matmul(w, &x, b, &mut acts, &mut gu)?;
            act.resize(b * ff, 0.0);
            for (gu, a) in gu.chunks_exact(2 * ff).zip(act.chunks_exact_mut(ff)) {
                let (g, u) = gu.split_at(ff);
                f32ops::silu_mul(g, u, a);
            }
            let down = layer.down.own_matrix().ok_or_else(missing)?;
            matmul(down, &act, b, &mut acts, &mut sum)?;
            h.iter_mut().zip(&sum).for_each(|(h, s)| *h += s);
        }
        let (h, n) = if last_only {
            (&h[(b - 1) * hidden..], 1)
        } else {
            (&h[..], b)
        };
        let x = &mut x[..n * hidden];
        rms_norm(h, &self.norm, x);
        match self.output.own_matrix() {
            Some(w) => {
                let mut logits = vec![0f32; n * w.rows()];
                matmul(w, x, n, &mut acts, &mut logits)?;
                Tensor::from_vec(logits, (n, w.rows()), &device)
            }
            None => self
                .output
                .forward(&Tensor::from_vec(x.to_vec(), (n, hidden), &device)?),
        }
    }

    /// Each row's query heads (at the start of its row of `qkv`, `width` wide) over its
    /// sequence's cache of layer `l` up to the row's own token, into `att` (`rows x heads x
    /// head_dim`): one pool job of a chunk per group of rows and head. A group is
    /// [`f32ops::QUERY_GROUP`] consecutive tokens of one sequence (a prompt pass), whose
    /// queries read each key once together, or one row (a decode step's). Query heads
    /// `g * group..(g + 1) * group` share key head `g`, as candle's grouped attention.
    fn attend_cached(
        &self,
        caches: &[&mut KvCache],
        rows: &[Row],
        l: usize,
        qkv: &[f32],
        width: usize,
        att: &mut [f32],
    ) {
        let (hd, heads) = (self.head_dim, self.heads);
        let group = heads / self.kv_heads.max(1);
        let scale = (1.0 / (hd as f64).sqrt()) as f32;
        // Each group's first row and its number of rows.
        let mut groups: Vec<(usize, usize)> = Vec::new();
        let mut i = 0;
        while i < rows.len() {
            let n = f32ops::QUERY_GROUP.min(rows.len() - i);
            let together = rows[i..i + n]
                .iter()
                .enumerate()
                .all(|(k, r)| r.seq == rows[i].seq && r.pos == rows[i].pos + k);
            let n = if n == f32ops::QUERY_GROUP && together {
                n
            } else {
                1
            };
            groups.push((i, n));
            i += n;
        }
        let outs: Vec<Mutex<&mut [f32]>> = att.chunks_exact_mut(hd).map(Mutex::new).collect();
        let job = |c: usize| {
            let ((first, n), head) = (groups[c / heads], c % heads);
            let Some(cache) = rows
                .get(first)
                .and_then(|r| caches.get(r.seq))
                .and_then(|c| c.raw.get(l))
            else {
                return;
            };
            let (keys, values) = cache.head(head / group.max(1));
            // Row `first + k`'s query, and the values it attends over: the tokens up to its own
            // (the causal mask).
            let query = |k: usize| &qkv[(first + k) * width + head * hd..][..hd];
            let seen = |k: usize| {
                let tokens = rows.get(first + k).map_or(0, |r| r.pos + 1);
                &values[..tokens.saturating_mul(hd).min(values.len())]
            };
            let lock = |k: usize| {
                outs.get((first + k) * heads + head)
                    .map(|o| o.lock().unwrap_or_else(|e| e.into_inner()))
            };
            let mut scores = Vec::new();
            if n == f32ops::QUERY_GROUP {
                let (Some(mut o0), Some(mut o1), Some(mut o2), Some(mut o3)) =
                    (lock(0), lock(1), lock(2), lock(3))
                else {
                    return;
                };
                f32ops::attend_group(
                    [query(0), query(1), query(2), query(3)],
                    keys,
                    cache.cap,
                    [seen(0), seen(1), seen(2), seen(3)],
                    scale,
                    &mut scores,
                    [&mut o0[..], &mut o1[..], &mut o2[..], &mut o3[..]],
                );
            } else if let Some(mut out) = lock(0) {
                f32ops::attend(
                    query(0),
                    keys,
                    cache.cap,
                    seen(0),
                    scale,
                    &mut scores,
                    &mut out,
                );
            }
        };
        Pool::global().run(groups.len() * heads, &job);
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::RawKv;

    /// A cache reserved for a sequence's length never grows while the sequence fills it (its
    /// buffers are the ones first allocated), and holds what a cache grown block by block does.
    #[test]
    fn a_reserved_cache_is_not_grown() {
        let (heads, dim, tokens) = (2, 4, 300);
        let mut reserved = RawKv::default();
        reserved.reserve_exact(heads, dim, tokens);
        let buffers = (reserved.k.as_ptr(), reserved.v.as_ptr());
        let mut grown = RawKv::default();
        grown.reserve(heads, dim, 0);
        for t in 0..tokens {
            let k: Vec<f32> = (0..heads * dim).map(|i| (t * 10 + i) as f32).collect();
            let v: Vec<f32> = k.iter().map(|x| -x).collect();
            reserved.append(1, &k, &v);
            grown.append(1, &k, &v);
        }
        assert_eq!((reserved.cap, grown.cap), (tokens, 512));
        assert_eq!((reserved.k.as_ptr(), reserved.v.as_ptr()), buffers);
        // Each head's keys of the tokens held (one row of `cap` per dimension) and values.
        let held = |c: &RawKv| {
            (0..heads)
                .map(|h| {
                    let (k, v) = c.head(h);
                    let k: Vec<f32> = (0..dim)
                        .flat_map(|d| k[d * c.cap..][..c.len].to_vec())
                        .collect();
                    (k, v.to_vec())
                })
                .collect::<Vec<_>>()
        };
        assert_eq!(held(&reserved), held(&grown));
    }
}
