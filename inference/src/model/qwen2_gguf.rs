//! Qwen2 from GGUF (`general.architecture = qwen2`): the forward pass of candle's
//! `quantized_qwen2` (the llama block with biases on q/k/v and NeoX-style rotary embeddings), in a
//! form that can be cloned. candle's `quantized_qwen2::ModelWeights` is not `Clone`, and the
//! runtime needs one copy of the weights (reference-counted tensors) shared by many sessions, each
//! with its own KV cache; a test checks that this forward gives candle's logits.
//!
//! `gguf.rs` checks every hyper-parameter and tensor shape before [`Qwen2Weights::from_gguf`]
//! runs: nothing here re-validates, and nothing here reads the disk.

use std::io::{Read, Seek};

use candle_core::quantized::QMatMul;
use candle_core::quantized::gguf_file::Content;
use candle_core::{DType, Device, IndexOp, Module, Tensor};
use candle_nn::Embedding;
use candle_transformers::quantized_nn::RmsNorm;
use candle_transformers::utils::{build_causal_mask, repeat_kv};

/// The hyper-parameters the loader checked.
#[derive(Debug, Clone, Copy)]
pub(super) struct Qwen2Params {
    pub heads: usize,
    pub kv_heads: usize,
    pub hidden: usize,
    pub layers: usize,
    pub eps: f64,
    pub rope_base: f32,
    /// Rows of the rotary tables: the context this runtime allows, not the model's claim.
    pub context: usize,
}

#[derive(Debug, Clone)]
struct Layer {
    wq: QMatMul,
    wk: QMatMul,
    wv: QMatMul,
    bq: Tensor,
    bk: Tensor,
    bv: Tensor,
    wo: QMatMul,
    attn_norm: RmsNorm,
    gate: QMatMul,
    up: QMatMul,
    down: QMatMul,
    ffn_norm: RmsNorm,
    kv_cache: Option<(Tensor, Tensor)>,
}

/// Quantised Qwen2 weights plus one sequence's KV cache; clones share the weights.
#[derive(Debug, Clone)]
pub(crate) struct Qwen2Weights {
    embed: Embedding,
    layers: Vec<Layer>,
    norm: RmsNorm,
    output: QMatMul,
    cos: Tensor,
    sin: Tensor,
    neg_inf: Tensor,
    heads: usize,
    kv_heads: usize,
    head_dim: usize,
}

/// NeoX rotary tables, as candle's `quantized_qwen2` computes them.
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

impl Qwen2Weights {
    pub(super) fn from_gguf<R: Read + Seek>(
        ct: &Content,
        reader: &mut R,
        p: Qwen2Params,
        device: &Device,
    ) -> candle_core::Result<Self> {
        let mut q = |name: &str| ct.tensor(reader, name, device);
        let embed = q("token_embd.weight")?.dequantize(device)?;
        let norm = RmsNorm::from_qtensor(q("output_norm.weight")?, p.eps)?;
        let output = if ct.tensor_infos.contains_key("output.weight") {
            QMatMul::from_qtensor(q("output.weight")?)?
        } else {
            // Tied embeddings: the (possibly quantised) embedding matrix is the head.
            QMatMul::from_qtensor(q("token_embd.weight")?)?
        };
        let mut layers = Vec::with_capacity(p.layers);
        for i in 0..p.layers {
            let mut t = |n: &str| q(&format!("blk.{i}.{n}"));
            let mm = |x: candle_core::quantized::QTensor| QMatMul::from_qtensor(x);
            layers.push(Layer {
                wq: mm(t("attn_q.weight")?)?,
                wk: mm(t("attn_k.weight")?)?,
                wv: mm(t("attn_v.weight")?)?,
                bq: t("attn_q.bias")?.dequantize(device)?,
                bk: t("attn_k.bias")?.dequantize(device)?,
                bv: t("attn_v.bias")?.dequantize(device)?,
                wo: mm(t("attn_output.weight")?)?,
                attn_norm: RmsNorm::from_qtensor(t("attn_norm.weight")?, p.eps)?,
                gate: mm(t("ffn_gate.weight")?)?,
                up: mm(t("ffn_up.weight")?)?,
                down: mm(t("ffn_down.weight")?)?,
                ffn_norm: RmsNorm::from_qtensor(t("ffn_norm.weight")?, p.eps)?,
                kv_cache: None,
            });
        }
        let head_dim = p.hidden / p.heads;
        let (cos, sin) = rope_tables(head_dim, p.rope_base, p.context, device)?;
        Ok(Self {
            embed: Embedding::new(embed, p.hidden),
            layers,
            norm,
            output,
            cos,
            sin,
            neg_inf: Tensor::new(f32::NEG_INFINITY, device)?,
            heads: p.heads,
            kv_heads: p.kv_heads,
            head_dim,
        })
    }

    /// Forgets the sequence: the next forward starts at position 0.
    pub(crate) fn clear_kv_cache(&mut self) {
        for layer in &mut self.layers {
            layer.kv_cache = None;
        }
    }

    /// Logits `(batch, vocab)` of the last of `x`'s tokens, at positions `pos..`.
    pub(crate) fn forward(&mut self, x: &Tensor, pos: usize) -> candle_core::Result<Tensor> {
        let (_, seq_len) = x.dims2()?;
        let mask = if seq_len > 1 {
            Some(build_causal_mask(seq_len, pos, x.device())?)
        } else {
            None
        };
        let ctx = Step {
            mask: mask.as_ref(),
            cos: &self.cos.narrow(0, pos, seq_len)?,
            sin: &self.sin.narrow(0, pos, seq_len)?,
            neg_inf: &self.neg_inf,
            pos,
            heads: self.heads,
            kv_heads: self.kv_heads,
            head_dim: self.head_dim,
        };
        let mut h = self.embed.forward(x)?;
        for layer in &mut self.layers {
            let attn = layer.attention(&layer.attn_norm.forward(&h)?, &ctx)?;
            h = (attn + h)?;
            let m = layer.ffn_norm.forward(&h)?;
            let act = candle_nn::ops::silu(&layer.gate.forward(&m)?)?;
            let m = layer.down.forward(&(act * layer.up.forward(&m)?)?)?;
            h = (m + h)?;
        }
        let h = self.norm.forward(&h)?;
        self.output.forward(&h.i((.., seq_len - 1, ..))?)
    }
}

/// What every layer's attention needs for one forward pass.
struct Step<'a> {
    mask: Option<&'a Tensor>,
    cos: &'a Tensor,
    sin: &'a Tensor,
    neg_inf: &'a Tensor,
    pos: usize,
    heads: usize,
    kv_heads: usize,
    head_dim: usize,
}

impl Layer {
    fn attention(&mut self, x: &Tensor, s: &Step<'_>) -> candle_core::Result<Tensor> {
        let (b, seq_len, hidden) = x.dims3()?;
        let split = |t: Tensor, n: usize| {
            t.reshape((b, seq_len, n, s.head_dim))?
                .transpose(1, 2)?
                .contiguous()
        };
        let q = split(self.wq.forward(x)?.broadcast_add(&self.bq)?, s.heads)?;
        let k = split(self.wk.forward(x)?.broadcast_add(&self.bk)?, s.kv_heads)?;
        let v = split(self.wv.forward(x)?.broadcast_add(&self.bv)?, s.kv_heads)?;
        let q = candle_nn::rotary_emb::rope(&q, s.cos, s.sin)?;
        let k = candle_nn::rotary_emb::rope(&k, s.cos, s.sin)?;
        let (k, v) = match &self.kv_cache {
            Some((pk, pv)) if s.pos > 0 => (Tensor::cat(&[pk, &k], 2)?, Tensor::cat(&[pv, &v], 2)?),
            _ => (k, v),
        };
        self.kv_cache = Some((k.clone(), v.clone()));
        let k = repeat_kv(k, s.heads / s.kv_heads)?;
        let v = repeat_kv(v, s.heads / s.kv_heads)?;
        let att = (q.matmul(&k.t()?)? / (s.head_dim as f64).sqrt())?;
        let att = match s.mask {
            Some(m) => m
                .broadcast_as(att.shape())?
                .where_cond(&s.neg_inf.broadcast_as(att.shape().dims())?, &att)?,
            None => att,
        };
        let att = candle_nn::ops::softmax_last_dim(&att)?;
        let y = att.matmul(&v.contiguous()?)?;
        let y = y.transpose(1, 2)?.reshape((b, seq_len, hidden))?;
        self.wo.forward(&y)
    }
}
