//! The quantised linear layers of GGUF models: ward's own kernels (`ward-kernels`: AVX2 picked
//! at run time, one persistent worker pool, a tiled product for prefill) for the block formats
//! they cover on the CPU, candle's `QMatMul` for everything else (other formats, GPUs). The
//! model definition (`quantized.rs`) only sees [`QLinear::forward`], so it stays one for CPU
//! and GPU.
//!
//! `WARD_CPU_KERNELS=candle` in the environment keeps candle's kernels everywhere: a switch for
//! benchmarks and bisecting, read once per process; nothing else reads it.

use std::sync::{Arc, OnceLock};

use candle_core::backend::BackendStorage;
use candle_core::quantized::{GgmlDType, QMatMul, QTensor};
use candle_core::{CpuStorage, CustomOp1, Device, Layout, Module, Shape, Tensor};
use ward_kernels::{Format, QMatrix};

/// A linear layer `y = x W^T` over quantised weights `W` (`out x in`).
#[derive(Debug, Clone)]
pub(crate) enum QLinear {
    /// ward's kernels (CPU, Q4_0 / Q4_1 / Q8_0 / Q4_K / Q5_K / Q6_K).
    Own(Arc<OwnMatMul>),
    /// candle's.
    Candle(QMatMul),
}

/// Which kernels [`QLinear::from_qtensor`] picks where both could run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kernels {
    Own,
    Candle,
}

impl Kernels {
    /// ward's own, unless `WARD_CPU_KERNELS=candle`.
    pub(crate) fn from_env() -> Kernels {
        static CHOICE: OnceLock<Kernels> = OnceLock::new();
        *CHOICE.get_or_init(|| match std::env::var("WARD_CPU_KERNELS") {
            Ok(v) if v.eq_ignore_ascii_case("candle") => Kernels::Candle,
            _ => Kernels::Own,
        })
    }
}

/// The formats ward has kernels for.
fn own_format(dtype: GgmlDType) -> Option<Format> {
    match dtype {
        GgmlDType::Q4_0 => Some(Format::Q4_0),
        GgmlDType::Q4_1 => Some(Format::Q4_1),
        GgmlDType::Q8_0 => Some(Format::Q8_0),
        GgmlDType::Q4K => Some(Format::Q4K),
        GgmlDType::Q5K => Some(Format::Q5K),
        GgmlDType::Q6K => Some(Format::Q6K),
        _ => None,
    }
}

impl QLinear {
    /// The format and shape ward's kernels would take a tensor of `dtype` and `dims` on
    /// `device` in, where they run it: rows of whole blocks (a K-quant tensor whose rows are not
    /// whole 256-weight super-blocks stays with candle, which refuses it too).
    pub(crate) fn own_layout_of(
        kernels: Kernels,
        device: &Device,
        dtype: GgmlDType,
        dims: &[usize],
    ) -> Option<(Format, usize, usize)> {
        match (kernels, device.is_cpu(), own_format(dtype), dims) {
            (Kernels::Own, true, Some(format), &[rows, cols])
                if cols % format.block_weights() == 0 =>
            {
                Some((format, rows, cols))
            }
            _ => None,
        }
    }

    /// Ward's kernels on `m`.
    pub(crate) fn own(m: QMatrix) -> Self {
        QLinear::Own(Arc::new(OwnMatMul(m)))
    }

    /// Takes a weight tensor (`out x in`); ward's kernels when `kernels` is [`Kernels::Own`], the
    /// tensor is on the CPU and in a format they cover, candle's otherwise.
    pub(crate) fn from_qtensor(t: QTensor, kernels: Kernels) -> candle_core::Result<Self> {
        match Self::own_layout_of(kernels, &t.device(), t.dtype(), t.shape().dims()) {
            Some((format, rows, cols)) => {
                let bytes = t.data()?.into_owned();
                drop(t);
                let m =
                    QMatrix::new(format, rows, cols, bytes).map_err(candle_core::Error::wrap)?;
                Ok(QLinear::own(m))
            }
            None => Ok(QLinear::Candle(QMatMul::from_qtensor(t)?)),
        }
    }

    pub(crate) fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        match self {
            QLinear::Own(w) => x.contiguous()?.apply_op1_no_bwd(w.as_ref()),
            QLinear::Candle(m) => m.forward(x),
        }
    }

    /// The weights, where ward's kernels run this layer.
    pub(crate) fn own_matrix(&self) -> Option<&QMatrix> {
        match self {
            QLinear::Own(w) => Some(&w.0),
            QLinear::Candle(_) => None,
        }
    }
}

/// Linear layers that take the same input (q, k and v; gate and up): where ward's kernels run
/// them all, one matrix of their rows one under the other, so the input is quantised once and
/// the pool gets one job instead of one per layer; candle's layers apart otherwise.
#[derive(Debug, Clone)]
pub(crate) enum Joined {
    /// The joined matrix and each part's output width, in order.
    Own(Arc<OwnMatMul>, Vec<usize>),
    Apart(Vec<QLinear>),
}

impl Joined {
    pub(crate) fn new(parts: Vec<QLinear>) -> candle_core::Result<Self> {
        let own: Option<Vec<&QMatrix>> = parts.iter().map(QLinear::own_matrix).collect();
        let Some(own) = own else {
            return Ok(Joined::Apart(parts));
        };
        let widths = own.iter().map(|m| m.rows()).collect();
        match QMatrix::concat(&own) {
            Ok(m) => Ok(Joined::Own(Arc::new(OwnMatMul(m)), widths)),
            // Parts in different formats: each keeps its own matrix.
            Err(_) => Ok(Joined::Apart(parts)),
        }
    }

    /// Each part's output for `x`.
    pub(crate) fn forward(&self, x: &Tensor) -> candle_core::Result<Vec<Tensor>> {
        match self {
            Joined::Own(w, widths) => {
                let y = x.contiguous()?.apply_op1_no_bwd(w.as_ref())?;
                let last = y.rank().saturating_sub(1);
                let mut at = 0;
                widths
                    .iter()
                    .map(|&n| {
                        let part = y.narrow(last, at, n)?.contiguous();
                        at += n;
                        part
                    })
                    .collect()
            }
            Joined::Apart(parts) => parts.iter().map(|p| p.forward(x)).collect(),
        }
    }

    /// The joined weights, where ward's kernels run these layers.
    pub(crate) fn own_matrix(&self) -> Option<&QMatrix> {
        match self {
            Joined::Own(w, _) => Some(&w.0),
            Joined::Apart(_) => None,
        }
    }
}

/// [`QMatrix`] as a candle operation on f32 CPU tensors `(..., in)` -> `(..., out)`.
#[derive(Debug)]
pub(crate) struct OwnMatMul(QMatrix);

impl CustomOp1 for OwnMatMul {
    fn name(&self) -> &'static str {
        "ward-qmatmul"
    }

    fn cpu_fwd(
        &self,
        storage: &CpuStorage,
        layout: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let CpuStorage::F32(data) = storage else {
            return Err(candle_core::Error::Msg(format!(
                "ward-qmatmul takes f32 activations, not {:?}",
                storage.dtype()
            )));
        };
        let (start, end) = layout.contiguous_offsets().ok_or_else(|| {
            candle_core::Error::Msg("ward-qmatmul takes contiguous activations".to_owned())
        })?;
        let x = data.get(start..end).ok_or_else(|| {
            candle_core::Error::Msg("ward-qmatmul: layout outside its storage".to_owned())
        })?;
        let dims = layout.shape().dims();
        let (cols, rows) = (self.0.cols(), self.0.rows());
        if dims.last() != Some(&cols) {
            return Err(candle_core::Error::Msg(format!(
                "ward-qmatmul: activations {dims:?} against weights {rows} x {cols}"
            )));
        }
        let m = x.len() / cols.max(1);
        let len = m
            .checked_mul(rows)
            .ok_or_else(|| candle_core::Error::Msg("ward-qmatmul: output too large".to_owned()))?;
        let mut out = vec![0f32; len];
        self.0
            .matmul(x, m, &mut out)
            .map_err(candle_core::Error::wrap)?;
        let mut shape = dims.to_vec();
        if let Some(last) = shape.last_mut() {
            *last = rows;
        }
        Ok((CpuStorage::F32(out), Shape::from(shape)))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use candle_core::{DType, Device};

    /// ward's kernels against candle's `QMatMul` and against candle's dequantise-then-f32
    /// matmul, on candle-quantised random weights, for decode (1 row) and prefill shapes
    /// (rows not a multiple of the 4-row tile). 128 columns (512 for the K-quants' 256-weight
    /// super-blocks): candle's Q4_1 dot asserts an even number of blocks in debug builds. For
    /// the K-quants this is also the check of ward's reading of their bit layouts against
    /// another implementation's (candle's port of ggml's).
    #[test]
    fn own_kernels_match_candles_qmatmul_and_the_f32_product() {
        let dev = Device::Cpu;
        for dtype in [
            GgmlDType::Q4_0,
            GgmlDType::Q4_1,
            GgmlDType::Q8_0,
            GgmlDType::Q4K,
            GgmlDType::Q5K,
            GgmlDType::Q6K,
        ] {
            let cols = if dtype.block_size() == 256 { 512 } else { 128 };
            let w = Tensor::randn(0f32, 1.0, (72, cols), &dev).unwrap();
            let q = || QTensor::quantize(&w, dtype).unwrap();
            let own = QLinear::from_qtensor(q(), Kernels::Own).unwrap();
            assert!(
                matches!(own, QLinear::Own(_)),
                "{dtype:?} takes ward's kernels"
            );
            let candle = QLinear::from_qtensor(q(), Kernels::Candle).unwrap();
            assert!(matches!(candle, QLinear::Candle(_)));
            let deq = q().dequantize(&dev).unwrap();
            for rows in [1, 7] {
                let x = Tensor::randn(0f32, 1.0, (1, rows, cols), &dev).unwrap();
                let ours = own.forward(&x).unwrap();
                assert_eq!(ours.dims(), &[1, rows, 72]);
                let theirs = candle.forward(&x).unwrap();
                let f32_product = x.broadcast_matmul(&deq.t().unwrap()).unwrap();
                let scale = f32_product
                    .abs()
                    .unwrap()
                    .max_all()
                    .unwrap()
                    .to_scalar::<f32>()
                    .unwrap();
                let diff = |t: &Tensor| {
                    (t - &ours)
                        .unwrap()
                        .abs()
                        .unwrap()
                        .max_all()
                        .unwrap()
                        .to_dtype(DType::F32)
                        .unwrap()
                        .to_scalar::<f32>()
                        .unwrap()
                };
                // Same block arithmetic as candle's (ggml's): float summation order only, but
                // for Q4_1's activation sums `s`, which candle rounds as f16(f16(sum) f16(d))
                // and ward as llama.cpp does, f16(d sum): up to 2^-10 of m s per block. The
                // K-quants take llama.cpp's Q8_K activations in both.
                let tolerance = if dtype == GgmlDType::Q4_1 { 3e-3 } else { 1e-4 };
                assert!(
                    diff(&theirs) <= tolerance * scale,
                    "{dtype:?} {rows}: {} (scale {scale})",
                    diff(&theirs)
                );
                // Against full precision: the 8-bit activations' rounding (~1%).
                assert!(
                    diff(&f32_product) <= 2e-2 * scale,
                    "{dtype:?} {rows}: {}",
                    diff(&f32_product)
                );
            }
        }
    }
}
