//! Llama-family models from GGUF (`general.architecture` llama or qwen2): the forward pass of
//! candle's `quantized_llama` and `quantized_qwen2` (the llama block; Qwen2 adds biases on q/k/v
//! and rotates NeoX-style), restated so that the weights are shared and each sequence's KV cache
//! lives apart ([`KvCache`]), and so that one decode step can run many sequences at once
//! ([`QuantizedWeights::forward_batch`]): their projections and MLPs as one matmul over all of
//! them (each weight read once per step, not once per sequence), their attention each over its
//! own cache at its own position. Tests check the logits against candle's own models.
//!
//! `gguf.rs` checks every hyper-parameter and tensor shape before
//! [`QuantizedWeights::from_gguf`] runs: nothing here re-validates, and nothing here reads the
//! disk.

use candle_core::{DType, Device, IndexOp, Module, Tensor};
use candle_nn::Embedding;
use candle_transformers::quantized_nn::RmsNorm;
use candle_transformers::utils::{build_causal_mask, repeat_kv};

use super::gguf_source::{PackedRows, TensorReader};
use super::qlinear::{Joined, QLinear};

mod decode;
use decode::RawKv;

/// The hyper-parameters the loader checked.
#[derive(Debug, Clone, Copy)]
pub(super) struct QuantizedParams {
    pub heads: usize,
    pub kv_heads: usize,
    pub hidden: usize,
    pub layers: usize,
    pub eps: f64,
    pub rope_base: f32,
    /// Rows of the rotary tables: the context this runtime allows, not the model's claim.
    pub context: usize,
    /// Qwen2: biases on q/k/v, and NeoX rotation (pairs i, i + d/2); llama: neither
    /// (interleaved pairs 2i, 2i + 1, as llama.cpp's converter permuted q and k for).
    pub qwen2: bool,
}

#[derive(Debug, Clone)]
struct Layer {
    /// q, k and v.
    qkv: Joined,
    /// q, k and v biases (Qwen2).
    biases: Option<(Tensor, Tensor, Tensor)>,
    /// The same, one after the other, as values (the CPU decode step; empty without biases).
    bias_values: Vec<f32>,
    wo: QLinear,
    attn_norm: Norm,
    /// gate and up.
    gate_up: Joined,
    down: QLinear,
    ffn_norm: Norm,
}

/// An RMS norm: candle's, and its weights as values for the CPU decode step.
#[derive(Debug, Clone)]
struct Norm {
    candle: RmsNorm,
    /// The weights (empty off the CPU, where the decode step does not run).
    weight: Vec<f32>,
    eps: f32,
}

impl Norm {
    fn new(t: candle_core::quantized::QTensor, eps: f64) -> candle_core::Result<Self> {
        let weight = if t.device().is_cpu() {
            t.dequantize(&Device::Cpu)?.flatten_all()?.to_vec1()?
        } else {
            Vec::new()
        };
        Ok(Norm {
            candle: RmsNorm::from_qtensor(t, eps)?,
            weight,
            eps: eps as f32,
        })
    }

    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        self.candle.forward(x)
    }
}

/// The token embedding: on the CPU, rows are dequantised on lookup from the file's blocks
/// (llama.cpp does the same), instead of an f32 copy of the table (SmolLM2's would be 113 MB
/// against its 27 MB of Q4_1 blocks; Llama 3 8B's 2.1 GB).
#[derive(Debug, Clone)]
enum TokenEmbedding {
    /// f32 rows (GPUs; `WARD_CPU_KERNELS=candle`).
    Dense(Embedding),
    /// The head's own matrix (tied embeddings: `output` is `token_embd`).
    Head,
    /// A matrix of its own, on ward's kernels.
    Quantized(QLinear),
    /// Other formats (K-quants, f16, f32), through candle's block decoder row by row.
    Packed(PackedRows),
}

/// Quantised llama-family weights, shared by every sequence (tensors are reference-counted).
#[derive(Debug, Clone)]
pub(crate) struct QuantizedWeights {
    embed: TokenEmbedding,
    device: Device,
    layers: Vec<Layer>,
    norm: Norm,
    output: QLinear,
    cos: Tensor,
    sin: Tensor,
    neg_inf: Tensor,
    heads: usize,
    kv_heads: usize,
    head_dim: usize,
    neox: bool,
    /// On the CPU with ward's kernels for every layer: every forward pass (prompt passes and
    /// decode steps) runs [`decode`]'s fused path, and caches are [`RawKv`]s.
    fused_cpu: bool,
}

/// Prompt tokens one forward pass takes at most; a longer prompt is taken in passes of this
/// many. On candle's path (the GPU, and formats without ward's kernels) its attention scores
/// (with the mask and the softmax, three buffers of `heads x pass x context` floats) are what
/// bound prefill memory at long prompts: at a 1,024-token prompt (SmolLM2, 2 threads), in one
/// pass peak RSS was 293 MB and prefill 0.81-0.88x llama.cpp's; passes of 512, 256 and 128
/// tokens gave 236, 201 and 184 MB, all at 1.04-1.16x. On the fused CPU path (no score
/// buffers; the pass's activations, `pass x 2 ffn` floats at the widest) passes of 512 against
/// 128 tokens prefilled 1,024-token prompts within the run-to-run spread (SmolLM2 517-598
/// against 531-569 tok/s, TinyLlama Q4_K_M 158-168 against 156-167), for some 30 MB more of
/// TinyLlama's activations.
const PREFILL_PASS: usize = 128;

/// Tokens by which a sequence's cache grows: room is allocated in blocks of this many, and new
/// keys and values are written in place, so a decode step copies no cache (appending to a
/// concatenated cache copied all of it at every token).
const CACHE_BLOCK: usize = 256;

/// One sequence's attention state: per layer, keys and values `(1, kv_heads, len, head_dim)`
/// in buffers that grow by [`CACHE_BLOCK`] tokens. Not `Clone`: the buffers are written in
/// place, so a clone would share them.
#[derive(Debug, Default)]
pub(crate) struct KvCache {
    layers: Vec<candle_nn::kv_cache::KvCache>,
    /// The same for models that run the fused CPU path (`fused_cpu`).
    raw: Vec<RawKv>,
}

/// The rotary rows of a forward pass: `(seq_len, head_dim / 2)` for one sequence, or
/// `(sequences, 1, head_dim / 2)` for a decode step of many (each at its own position).
struct Rotation {
    cos: Tensor,
    sin: Tensor,
}

/// One sequence in a forward pass: its cache and the position of its first new token.
struct Seq<'c> {
    cache: &'c mut KvCache,
    pos: usize,
}

/// Rotary tables (cos and sin per position and frequency), as candle's quantized models compute
/// them; the same tables serve the NeoX and the interleaved rotation.
fn rope_tables(
    head_dim: usize,
    base: f32,
    context: usize,
    device: &Device,
) -> candle_core::Result<(Tensor, Tensor)> {
    let theta: Vec<f32> = (0..head_dim)
        .step_by(2)
        .map(|i| 1f32 / base.powf(i as f32 / head_dim as f32))
        .collect();
    let n = theta.len();
    let theta = Tensor::from_vec(theta, (1, n), device)?;
    let positions = Tensor::arange(0, context as u32, device)?
        .to_dtype(DType::F32)?
        .reshape((context, 1))?;
    let angles = positions.matmul(&theta)?;
    Ok((angles.cos()?, angles.sin()?))
}

impl QuantizedWeights {
    /// The embedding rows of `tokens`, one after the other (`tokens.len() x hidden`).
    pub(super) fn embedding_rows(&self, tokens: &[u32]) -> candle_core::Result<Vec<f32>> {
        let matrix = match &self.embed {
            TokenEmbedding::Dense(e) => {
                let ids = Tensor::new(tokens, &self.device)?;
                return e
                    .embeddings()
                    .index_select(&ids, 0)?
                    .flatten_all()?
                    .to_vec1();
            }
            TokenEmbedding::Head => self.output.own_matrix(),
            TokenEmbedding::Quantized(m) => m.own_matrix(),
            TokenEmbedding::Packed(rows) => {
                let mut out = Vec::new();
                for &t in tokens {
                    rows.row_into(usize::try_from(t).unwrap_or(usize::MAX), &mut out)?;
                }
                return Ok(out);
            }
        }
        .ok_or_else(|| candle_core::Error::Msg("the embedding matrix is not ward's".into()))?;
        let mut out = Vec::with_capacity(tokens.len().saturating_mul(matrix.cols()));
        for &t in tokens {
            let row = usize::try_from(t).unwrap_or(usize::MAX);
            matrix
                .dequantize_row_into(row, &mut out)
                .map_err(|e| candle_core::Error::Msg(format!("token {t}: {e}")))?;
        }
        Ok(out)
    }

    /// The embeddings of the token ids `x` (`(batch, seq)` to `(batch, seq, hidden)`).
    fn embed(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        if let TokenEmbedding::Dense(e) = &self.embed {
            return e.forward(x);
        }
        let (b, seq) = x.dims2()?;
        let rows = self.embedding_rows(&x.flatten_all()?.to_vec1::<u32>()?)?;
        let hidden = rows.len() / (b * seq).max(1);
        Tensor::from_vec(rows, (b, seq, hidden), &self.device)
    }

    pub(super) fn from_gguf(
        t: &mut TensorReader<'_>,
        p: QuantizedParams,
    ) -> candle_core::Result<Self> {
        let device = &t.device.clone();
        let norm = Norm::new(t.tensor("output_norm.weight")?, p.eps)?;
        let tied = !t.content.tensor_infos.contains_key("output.weight");
        // Tied embeddings: the (possibly quantised) embedding matrix is the head.
        let output = t.linear(if tied {
            "token_embd.weight"
        } else {
            "output.weight"
        })?;
        let embed = if device.is_cpu() && tied && output.own_matrix().is_some() {
            TokenEmbedding::Head
        } else {
            let name = "token_embd.weight";
            if let Some(m) = t.own_linear(name)? {
                TokenEmbedding::Quantized(m)
            } else if let Some(rows) = t.packed_rows(name)? {
                TokenEmbedding::Packed(rows)
            } else {
                TokenEmbedding::Dense(Embedding::new(
                    t.tensor(name)?.dequantize(device)?,
                    p.hidden,
                ))
            }
        };
        let mut layers = Vec::with_capacity(p.layers);
        for i in 0..p.layers {
            let n = |n: &str| format!("blk.{i}.{n}");
            let biases = if p.qwen2 {
                Some((
                    t.tensor(&n("attn_q.bias"))?.dequantize(device)?,
                    t.tensor(&n("attn_k.bias"))?.dequantize(device)?,
                    t.tensor(&n("attn_v.bias"))?.dequantize(device)?,
                ))
            } else {
                None
            };
            let qkv = vec![
                t.linear(&n("attn_q.weight"))?,
                t.linear(&n("attn_k.weight"))?,
                t.linear(&n("attn_v.weight"))?,
            ];
            let gate_up = vec![
                t.linear(&n("ffn_gate.weight"))?,
                t.linear(&n("ffn_up.weight"))?,
            ];
            let mut bias_values = Vec::new();
            if let Some((bq, bk, bv)) = &biases {
                for b in [bq, bk, bv] {
                    bias_values.extend(b.flatten_all()?.to_vec1::<f32>()?);
                }
            }
            layers.push(Layer {
                qkv: Joined::new(qkv)?,
                biases,
                bias_values,
                wo: t.linear(&n("attn_output.weight"))?,
                attn_norm: Norm::new(t.tensor(&n("attn_norm.weight"))?, p.eps)?,
                gate_up: Joined::new(gate_up)?,
                down: t.linear(&n("ffn_down.weight"))?,
                ffn_norm: Norm::new(t.tensor(&n("ffn_norm.weight"))?, p.eps)?,
            });
        }
        let fused_cpu = device.is_cpu()
            && layers.iter().all(|l| {
                l.qkv.own_matrix().is_some()
                    && l.gate_up.own_matrix().is_some()
                    && l.wo.own_matrix().is_some()
                    && l.down.own_matrix().is_some()
            });
        let head_dim = p.hidden / p.heads;
        let (cos, sin) = rope_tables(head_dim, p.rope_base, p.context, device)?;
        Ok(Self {
            embed,
            device: device.clone(),
            layers,
            norm,
            output,
            cos,
            sin,
            neg_inf: Tensor::new(f32::NEG_INFINITY, device)?,
            heads: p.heads,
            kv_heads: p.kv_heads,
            head_dim,
            neox: p.qwen2,
            fused_cpu,
        })
    }

    /// Makes room in `cache` for a sequence of `tokens` tokens in all, so that it never grows
    /// (copying every layer's keys and values) while it runs. Only the fused CPU path's caches
    /// take the hint.
    pub(crate) fn reserve(&self, cache: &mut KvCache, tokens: usize) {
        if !self.fused_cpu {
            return;
        }
        while cache.raw.len() < self.layers.len() {
            cache.raw.push(RawKv::default());
        }
        for raw in &mut cache.raw {
            raw.reserve_exact(self.kv_heads, self.head_dim, tokens);
        }
    }

    /// Logits `(1, vocab)` of the last of `x`'s tokens (`(1, seq_len)`), at positions `pos..`
    /// of the sequence whose state is `cache` (`pos == 0` starts it afresh).
    pub(crate) fn forward(
        &self,
        cache: &mut KvCache,
        x: &Tensor,
        pos: usize,
    ) -> candle_core::Result<Tensor> {
        let (_, seq_len) = x.dims2()?;
        if seq_len > PREFILL_PASS {
            // On candle's path each pass's attention scores are `heads x PREFILL_PASS x (pos +
            // PREFILL_PASS)`, not `heads x seq_len x seq_len` (a 1,024-token prompt: 38 MB a
            // layer for SmolLM2's 9 heads, three times over for the mask and the softmax).
            let mut logits = None;
            for start in (0..seq_len).step_by(PREFILL_PASS) {
                let n = PREFILL_PASS.min(seq_len - start);
                logits = Some(self.forward(cache, &x.narrow(1, start, n)?, pos + start)?);
            }
            return logits.ok_or_else(|| candle_core::Error::Msg("an empty prompt".into()));
        }
        if self.fused_cpu {
            let tokens = x.flatten_all()?.to_vec1::<u32>()?;
            return self.prefill_pass(cache, &tokens, pos);
        }
        let mask = if seq_len > 1 {
            Some(build_causal_mask(seq_len, pos, x.device())?)
        } else {
            None
        };
        let rotation = Rotation {
            cos: self.cos.narrow(0, pos, seq_len)?,
            sin: self.sin.narrow(0, pos, seq_len)?,
        };
        let h = self.embed(x)?;
        let h = self.layers_forward(h, &mut [Seq { cache, pos }], &rotation, mask.as_ref())?;
        self.output.forward(&h.i((.., seq_len - 1, ..))?)
    }

    /// One decode step of many sequences: `tokens[i]` at position `positions[i]` of the
    /// sequence whose state is `caches[i]`. Returns logits `(n, vocab)`, row `i` for sequence
    /// `i`; the same as `n` separate [`QuantizedWeights::forward`] calls, within float rounding.
    pub(crate) fn forward_batch(
        &self,
        caches: &mut [&mut KvCache],
        tokens: &[u32],
        positions: &[usize],
        device: &Device,
    ) -> candle_core::Result<Tensor> {
        if caches.len() != tokens.len() || tokens.len() != positions.len() || tokens.is_empty() {
            return Err(candle_core::Error::Msg(format!(
                "a batch of {} caches, {} tokens and {} positions",
                caches.len(),
                tokens.len(),
                positions.len()
            )));
        }
        if self.fused_cpu {
            return self.decode_step(caches, tokens, positions);
        }
        let x = Tensor::new(tokens, device)?.unsqueeze(1)?;
        // Each sequence's row of the rotary tables, `(n, 1, head_dim / 2)`: one rotation call
        // per layer rotates them all.
        let at: Vec<u32> = positions
            .iter()
            .map(|&p| u32::try_from(p).unwrap_or(u32::MAX))
            .collect();
        let at = Tensor::new(at.as_slice(), device)?;
        let rotation = Rotation {
            cos: self.cos.index_select(&at, 0)?.unsqueeze(1)?,
            sin: self.sin.index_select(&at, 0)?.unsqueeze(1)?,
        };
        let mut seqs: Vec<Seq<'_>> = caches
            .iter_mut()
            .zip(positions)
            .map(|(cache, &pos)| Seq { cache, pos })
            .collect();
        let h = self.embed(&x)?;
        let h = self.layers_forward(h, &mut seqs, &rotation, None)?;
        self.output.forward(&h.i((.., 0, ..))?)
    }

    /// The blocks and the final norm over `h` `(seqs, seq_len, hidden)`.
    fn layers_forward(
        &self,
        mut h: Tensor,
        seqs: &mut [Seq<'_>],
        rotation: &Rotation,
        mask: Option<&Tensor>,
    ) -> candle_core::Result<Tensor> {
        for (l, layer) in self.layers.iter().enumerate() {
            let x = layer.attn_norm.forward(&h)?;
            let attn = self.attention(layer, l, &x, seqs, rotation, mask)?;
            h = (attn + h)?;
            let m = layer.ffn_norm.forward(&h)?;
            let (gate, up) = match layer.gate_up.forward(&m)?.as_slice() {
                [g, u] => (g.clone(), u.clone()),
                _ => return Err(candle_core::Error::Msg("gate and up expected".into())),
            };
            let act = candle_nn::ops::silu(&gate)?;
            let m = layer.down.forward(&(act * up)?)?;
            h = (m + h)?;
        }
        self.norm.forward(&h)
    }

    /// Attention of layer `l`: projections over every sequence at once, then each sequence's
    /// rotation, cache and softmax on its own.
    fn attention(
        &self,
        layer: &Layer,
        l: usize,
        x: &Tensor,
        seqs: &mut [Seq<'_>],
        rotation: &Rotation,
        mask: Option<&Tensor>,
    ) -> candle_core::Result<Tensor> {
        let (b, seq_len, hidden) = x.dims3()?;
        let split = |t: Tensor, n: usize| {
            t.reshape((b, seq_len, n, self.head_dim))?
                .transpose(1, 2)?
                .contiguous()
        };
        let (mut q, mut k, mut v) = match layer.qkv.forward(x)?.as_slice() {
            [q, k, v] => (q.clone(), k.clone(), v.clone()),
            _ => return Err(candle_core::Error::Msg("q, k and v expected".into())),
        };
        if let Some((bq, bk, bv)) = &layer.biases {
            q = q.broadcast_add(bq)?;
            k = k.broadcast_add(bk)?;
            v = v.broadcast_add(bv)?;
        }
        let (q, k, v) = (
            split(q, self.heads)?,
            split(k, self.kv_heads)?,
            split(v, self.kv_heads)?,
        );
        let (cos, sin) = (&rotation.cos, &rotation.sin);
        let (q, k) = if self.neox {
            (
                candle_nn::rotary_emb::rope(&q, cos, sin)?,
                candle_nn::rotary_emb::rope(&k, cos, sin)?,
            )
        } else {
            (
                candle_nn::rotary_emb::rope_i(&q, cos, sin)?,
                candle_nn::rotary_emb::rope_i(&k, cos, sin)?,
            )
        };
        let mut ys = Vec::with_capacity(seqs.len());
        for (i, seq) in seqs.iter_mut().enumerate() {
            let (q, k, v) = (q.narrow(0, i, 1)?, k.narrow(0, i, 1)?, v.narrow(0, i, 1)?);
            while seq.cache.layers.len() <= l {
                seq.cache
                    .layers
                    .push(candle_nn::kv_cache::KvCache::new(2, CACHE_BLOCK));
            }
            let cache = &mut seq.cache.layers[l];
            if seq.pos == 0 {
                cache.reset();
            }
            if cache.current_seq_len() != seq.pos {
                return Err(candle_core::Error::Msg(format!(
                    "a forward pass at position {} of a sequence holding {} tokens",
                    seq.pos,
                    cache.current_seq_len()
                )));
            }
            // Views of the cache's first tokens, not copies (CUDA's matmul wants them dense).
            let (k, v) = cache.append(&k, &v)?;
            let (k, v) = if x.device().is_cpu() {
                (k, v)
            } else {
                (k.contiguous()?, v.contiguous()?)
            };
            ys.push(self.attend(&q, k, v, seq_len, mask)?);
        }
        let y = if ys.len() == 1 {
            ys.swap_remove(0)
        } else {
            Tensor::cat(&ys, 0)?
        };
        let y = y.transpose(1, 2)?.reshape((b, seq_len, hidden))?;
        layer.wo.forward(&y)
    }

    /// Softmax attention of one sequence's queries `(1, heads, seq_len, head_dim)` over its
    /// keys and values `(1, kv_heads, len, head_dim)`. A decode step groups the query heads
    /// that share a key head (`(1, kv_heads, heads / kv_heads, head_dim)`) instead of repeating
    /// the keys and values per query head, which would copy the whole cache at every token.
    fn attend(
        &self,
        q: &Tensor,
        k: Tensor,
        v: Tensor,
        seq_len: usize,
        mask: Option<&Tensor>,
    ) -> candle_core::Result<Tensor> {
        let scale = (self.head_dim as f64).sqrt();
        let group = self.heads / self.kv_heads;
        if seq_len == 1 && mask.is_none() {
            let q = q.reshape((1, self.kv_heads, group, self.head_dim))?;
            let att = (q.matmul(&k.t()?)? / scale)?;
            let att = candle_nn::ops::softmax_last_dim(&att)?;
            return att.matmul(&v)?.reshape((1, self.heads, 1, self.head_dim));
        }
        let k = repeat_kv(k, group)?;
        let v = repeat_kv(v, group)?;
        let att = (q.matmul(&k.t()?)? / scale)?;
        let att = match mask {
            Some(m) => m
                .broadcast_as(att.shape())?
                .where_cond(&self.neg_inf.broadcast_as(att.shape().dims())?, &att)?,
            None => att,
        };
        let att = candle_nn::ops::softmax_last_dim(&att)?;
        att.matmul(&v.contiguous()?)
    }
}
