//! Where a GGUF model's tensors come from: the file's bytes, borrowed or shared, and the reader
//! that turns a tensor name into a layer. The matrices ward's kernels run are taken straight
//! from the file's blocks (GGUF stores them as the kernels read them): sliced out of a shared
//! buffer, no copy, or copied once out of a borrowed one. Everything else goes through candle's
//! reader (its own copy, in its own layout).

use std::io::Cursor;
use std::ops::Range;

use bytes::Bytes;
use candle_core::Device;
use candle_core::quantized::ggml_file::qtensor_from_ggml;
use candle_core::quantized::gguf_file::{Content, TensorInfo};
use candle_core::quantized::{GgmlDType, QTensor};
use ward_kernels::QMatrix;

use super::qlinear::{Kernels, QLinear};

/// A GGUF file's bytes, as the caller handed them over.
#[derive(Debug, Clone, Copy)]
pub(super) enum GgufBytes<'a> {
    /// Borrowed: the weights ward's kernels run are copied out, the caller keeps the buffer.
    Borrowed(&'a [u8]),
    /// Shared: those weights are slices of this buffer, which lives as long as the model.
    Shared(&'a Bytes),
}

impl<'a> GgufBytes<'a> {
    /// The whole file.
    pub(super) fn all(&self) -> &'a [u8] {
        match *self {
            GgufBytes::Borrowed(b) => b,
            GgufBytes::Shared(b) => b,
        }
    }

    /// Bytes `range` of the file: a slice of a shared buffer, a copy of a borrowed one; `None`
    /// when the file is shorter.
    fn slice(&self, range: Range<usize>) -> Option<Bytes> {
        match self {
            GgufBytes::Borrowed(b) => b.get(range).map(Bytes::copy_from_slice),
            // `Bytes::slice` panics out of range: checked first.
            GgufBytes::Shared(b) => b.get(range.clone()).map(|_| b.slice(range)),
        }
    }
}

/// The rows of a 2-D tensor in the file's own blocks (any ggml format), dequantised one at a
/// time through candle's block decoder: a token embedding looked up by row, instead of an f32
/// copy of the whole table (4.9 times the size of Q6_K blocks, 7.1 times Q4_K's).
#[derive(Debug, Clone)]
pub(crate) struct PackedRows {
    data: Bytes,
    dtype: GgmlDType,
    rows: usize,
    cols: usize,
    row_bytes: usize,
}

impl PackedRows {
    /// Appends row `r`, dequantised, to `out`.
    pub(crate) fn row_into(&self, r: usize, out: &mut Vec<f32>) -> candle_core::Result<()> {
        let bytes = (r < self.rows)
            .then(|| {
                let start = r.checked_mul(self.row_bytes)?;
                self.data.get(start..start.checked_add(self.row_bytes)?)
            })
            .flatten()
            .ok_or_else(|| {
                candle_core::Error::Msg(format!("row {r} of a {}-row table", self.rows))
            })?;
        let row = qtensor_from_ggml(self.dtype, bytes, vec![1, self.cols], &Device::Cpu)?;
        out.extend(
            row.dequantize(&Device::Cpu)?
                .flatten_all()?
                .to_vec1::<f32>()?,
        );
        Ok(())
    }
}

/// Whether the tensors ward's kernels would run hold at least half of a `file_len`-byte file.
fn mostly_own(content: &Content, file_len: usize, kernels: Kernels, device: &Device) -> bool {
    let own: u64 = content
        .tensor_infos
        .values()
        .filter(|i| QLinear::own_layout_of(kernels, device, i.ggml_dtype, i.shape.dims()).is_some())
        .map(|i| {
            let blocks = i.shape.elem_count() / i.ggml_dtype.block_size().max(1);
            u64::try_from(blocks.saturating_mul(i.ggml_dtype.type_size())).unwrap_or(u64::MAX)
        })
        .fold(0, u64::saturating_add);
    own.saturating_mul(2) >= u64::try_from(file_len).unwrap_or(u64::MAX)
}

/// The tensors of one parsed GGUF, by name.
pub(super) struct TensorReader<'a> {
    pub content: &'a Content,
    bytes: GgufBytes<'a>,
    reader: Cursor<&'a [u8]>,
    kernels: Kernels,
    pub device: Device,
}

impl<'a> TensorReader<'a> {
    /// A reader of `content`'s tensors in `bytes`. A shared buffer is only kept (sliced) when
    /// ward's kernels run most of it, by bytes: a slice keeps its whole buffer alive, so in a
    /// file of mostly other formats (K-quants, which candle copies) the few slices would pin
    /// the entire file beside candle's copies; there it is read as borrowed (what is kept is
    /// copied, the buffer goes after the load).
    pub(super) fn new(content: &'a Content, bytes: GgufBytes<'a>, device: Device) -> Self {
        let kernels = Kernels::from_env();
        let bytes = match bytes {
            GgufBytes::Shared(b) if !mostly_own(content, b.len(), kernels, &device) => {
                GgufBytes::Borrowed(&b[..])
            }
            other => other,
        };
        TensorReader {
            content,
            bytes,
            reader: Cursor::new(bytes.all()),
            kernels,
            device,
        }
    }

    /// Tensor `name` through candle's reader (a copy in candle's layout).
    pub(super) fn tensor(&mut self, name: &str) -> candle_core::Result<QTensor> {
        self.content.tensor(&mut self.reader, name, &self.device)
    }

    /// A linear layer of weight tensor `name`: ward's kernels on the file's own blocks where
    /// they run it, candle's `QMatMul` otherwise.
    pub(super) fn linear(&mut self, name: &str) -> candle_core::Result<QLinear> {
        match self.own_linear(name)? {
            Some(l) => Ok(l),
            None => QLinear::from_qtensor(self.tensor(name)?, self.kernels),
        }
    }

    /// Tensor `name` (`rows x cols`) as [`PackedRows`] over the file's bytes (sliced or copied),
    /// on the CPU; `None` on other devices and with `WARD_CPU_KERNELS=candle` (candle's dense
    /// table then, as before).
    pub(super) fn packed_rows(&self, name: &str) -> candle_core::Result<Option<PackedRows>> {
        let info = self.info(name)?;
        let (dtype, dims) = (info.ggml_dtype, info.shape.dims().to_vec());
        let (&[rows, cols], true, Kernels::Own) =
            (dims.as_slice(), self.device.is_cpu(), self.kernels)
        else {
            return Ok(None);
        };
        let block = dtype.block_size();
        if block == 0 || cols % block != 0 {
            return Err(candle_core::Error::Msg(format!(
                "tensor {name}: {dtype:?} blocks do not tile {cols} columns"
            )));
        }
        let too_large = || candle_core::Error::Msg(format!("tensor {name} does not fit in memory"));
        let row_bytes = (cols / block)
            .checked_mul(dtype.type_size())
            .ok_or_else(too_large)?;
        let len = row_bytes.checked_mul(rows).ok_or_else(too_large)?;
        let data = self.tensor_bytes(name, len)?;
        Ok(Some(PackedRows {
            data,
            dtype,
            rows,
            cols,
            row_bytes,
        }))
    }

    fn info(&self, name: &str) -> candle_core::Result<&'a TensorInfo> {
        self.content
            .tensor_infos
            .get(name)
            .ok_or_else(|| candle_core::Error::Msg(format!("cannot find tensor info for {name}")))
    }

    /// The `len` bytes of tensor `name` in the file: sliced from a shared buffer, copied from
    /// a borrowed one.
    fn tensor_bytes(&self, name: &str, len: usize) -> candle_core::Result<Bytes> {
        let info = self.info(name)?;
        let too_large = || candle_core::Error::Msg(format!("tensor {name} does not fit in memory"));
        let start = self
            .content
            .tensor_data_offset
            .checked_add(info.offset)
            .and_then(|s| usize::try_from(s).ok())
            .ok_or_else(too_large)?;
        let end = start.checked_add(len).ok_or_else(too_large)?;
        self.bytes.slice(start..end).ok_or_else(|| {
            candle_core::Error::Msg(format!(
                "tensor {name} needs bytes {start}..{end}, the file has {}",
                self.bytes.all().len()
            ))
        })
    }

    /// Weight tensor `name` on ward's kernels, its bytes taken from the file (sliced or
    /// copied, never through candle); `None` where ward's kernels do not run it.
    pub(super) fn own_linear(&self, name: &str) -> candle_core::Result<Option<QLinear>> {
        let info = self.info(name)?;
        let Some((format, rows, cols)) = QLinear::own_layout_of(
            self.kernels,
            &self.device,
            info.ggml_dtype,
            info.shape.dims(),
        ) else {
            return Ok(None);
        };
        let too_large = || candle_core::Error::Msg(format!("tensor {name} does not fit in memory"));
        let len = format
            .row_bytes(cols)
            .and_then(|row| row.checked_mul(rows))
            .ok_or_else(too_large)?;
        let data = self.tensor_bytes(name, len)?;
        let m = QMatrix::new(format, rows, cols, data).map_err(candle_core::Error::wrap)?;
        Ok(Some(QLinear::own(m)))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use std::io::Cursor;

    use bytes::Bytes;
    use candle_core::Device;
    use candle_core::quantized::GgmlDType;
    use candle_core::quantized::gguf_file::Content;

    use super::{GgufBytes, TensorReader};
    use crate::model::qlinear::{Kernels, QLinear};
    use crate::test_models::{Arch, gguf_bytes_for, gguf_metadata};
    use crate::{LoadOptions, Model};

    /// Whether ward's kernels run: under `WARD_CPU_KERNELS=candle` these tests skip.
    fn own_kernels() -> bool {
        let own = Kernels::from_env() == Kernels::Own;
        if !own {
            eprintln!("skipped: WARD_CPU_KERNELS=candle keeps candle's kernels and dense table");
        }
        own
    }

    fn q8_gguf() -> Vec<u8> {
        gguf_bytes_for(Arch::Llama, GgmlDType::Q8_0, &gguf_metadata())
    }

    /// Whether every byte of `m`'s weights lies inside `buf`.
    fn inside(m: &QLinear, buf: &[u8]) -> bool {
        let range = buf.as_ptr_range();
        m.own_matrix().unwrap().segments().all(|s| {
            let r = s.as_ptr_range();
            range.start <= r.start && r.end <= range.end
        })
    }

    /// From a shared buffer the matrices are slices of it; from a borrowed one, copies; either
    /// way the same bytes as the file's tensor.
    #[test]
    fn shared_buffers_are_sliced_borrowed_ones_copied() {
        if !own_kernels() {
            return;
        }
        let file = q8_gguf();
        let ct = Content::read(&mut Cursor::new(&file)).unwrap();
        let shared = Bytes::from(file.clone());
        let name = "blk.0.attn_q.weight";
        let from_shared = TensorReader::new(&ct, GgufBytes::Shared(&shared), Device::Cpu);
        let mut from_borrowed = TensorReader::new(&ct, GgufBytes::Borrowed(&file), Device::Cpu);
        let a = from_shared.own_linear(name).unwrap().unwrap();
        let b = from_borrowed.own_linear(name).unwrap().unwrap();
        assert!(inside(&a, &shared));
        assert!(!inside(&b, &file));
        let bytes = |l: &QLinear| -> Vec<u8> {
            l.own_matrix()
                .unwrap()
                .segments()
                .flatten()
                .copied()
                .collect()
        };
        assert_eq!(bytes(&a), bytes(&b));
        // candle's own copy of the tensor holds the same blocks.
        let candle = from_borrowed
            .tensor(name)
            .unwrap()
            .data()
            .unwrap()
            .into_owned();
        assert_eq!(bytes(&a), candle);
        // The embeddings are f32 here: not a format of ward's kernels.
        assert!(
            from_shared
                .own_linear("token_embd.weight")
                .unwrap()
                .is_none()
        );
        assert!(from_shared.own_linear("no.such.weight").is_err());
    }

    /// A tensor whose blocks run past the end of the file is refused by name, shared or not.
    #[test]
    fn a_tensor_past_the_end_of_the_file_is_refused() {
        if !own_kernels() {
            return;
        }
        let file = q8_gguf();
        let ct = Content::read(&mut Cursor::new(&file)).unwrap();
        let (last, info) = ct
            .tensor_infos
            .iter()
            .filter(|(_, i)| i.ggml_dtype == GgmlDType::Q8_0)
            .max_by_key(|(_, i)| i.offset)
            .unwrap();
        // The file cut one byte before that tensor's last block ends (34 bytes a block).
        let end = ct.tensor_data_offset + info.offset + info.shape.elem_count() as u64 / 32 * 34;
        let short = &file[..usize::try_from(end).unwrap() - 1];
        let shared = Bytes::copy_from_slice(short);
        for bytes in [GgufBytes::Borrowed(short), GgufBytes::Shared(&shared)] {
            let reader = TensorReader::new(&ct, bytes, Device::Cpu);
            let err = reader.own_linear(last).unwrap_err().to_string();
            assert!(
                err.contains(last.as_str()) && err.contains("the file has"),
                "{err}"
            );
        }
    }

    /// Token embedding rows looked up in the file's blocks equal the rows of candle's whole
    /// dequantised table, for K-quants, f16 and f32; a row past the table is an error.
    #[test]
    fn packed_rows_equal_candles_dequantised_table() {
        if !own_kernels() {
            return;
        }
        let (rows, cols) = (5, 512);
        let values: Vec<f32> = (0..rows * cols)
            .map(|i| ((i * 37 % 101) as f32 - 50.0) / 17.0)
            .collect();
        let table = candle_core::Tensor::from_vec(values, (rows, cols), &Device::Cpu).unwrap();
        for dtype in [
            GgmlDType::Q4K,
            GgmlDType::Q5K,
            GgmlDType::Q6K,
            GgmlDType::F16,
            GgmlDType::F32,
        ] {
            let q = candle_core::quantized::QTensor::quantize(&table, dtype).unwrap();
            let mut file = Cursor::new(Vec::new());
            candle_core::quantized::gguf_file::write(&mut file, &[], &[("token_embd.weight", &q)])
                .unwrap();
            let file = Bytes::from(file.into_inner());
            let ct = Content::read(&mut Cursor::new(&file[..])).unwrap();
            let reader = TensorReader::new(&ct, GgufBytes::Shared(&file), Device::Cpu);
            let packed = reader.packed_rows("token_embd.weight").unwrap().unwrap();
            let want: Vec<Vec<f32>> = q.dequantize(&Device::Cpu).unwrap().to_vec2().unwrap();
            for (r, want) in want.iter().enumerate() {
                let mut got = Vec::new();
                packed.row_into(r, &mut got).unwrap();
                assert_eq!(&got, want, "{dtype:?} row {r}");
            }
            assert!(packed.row_into(rows, &mut Vec::new()).is_err(), "{dtype:?}");
        }
    }

    /// A shared buffer whose bytes are mostly in formats ward's kernels do not run is not
    /// kept: its one Q8_0 matrix is copied out, so that a slice does not pin the whole file.
    #[test]
    fn a_buffer_mostly_of_other_formats_is_not_kept() {
        if !own_kernels() {
            return;
        }
        let t = |rows: usize, cols: usize, dtype| {
            let v: Vec<f32> = (0..rows * cols).map(|i| (i % 13) as f32 - 6.0).collect();
            let t = candle_core::Tensor::from_vec(v, (rows, cols), &Device::Cpu).unwrap();
            candle_core::quantized::QTensor::quantize(&t, dtype).unwrap()
        };
        let (big, small) = (t(64, 512, GgmlDType::Q5_0), t(2, 64, GgmlDType::Q8_0));
        let mut file = Cursor::new(Vec::new());
        candle_core::quantized::gguf_file::write(
            &mut file,
            &[],
            &[("big.weight", &big), ("small.weight", &small)],
        )
        .unwrap();
        let file = Bytes::from(file.into_inner());
        let ct = Content::read(&mut Cursor::new(&file[..])).unwrap();
        let reader = TensorReader::new(&ct, GgufBytes::Shared(&file), Device::Cpu);
        let m = reader.own_linear("small.weight").unwrap().unwrap();
        assert!(!inside(&m, &file));
        assert!(reader.own_linear("big.weight").unwrap().is_none());
    }

    /// A model loaded from a shared buffer computes what one loaded from a borrowed slice
    /// does, bit for bit.
    #[test]
    fn shared_and_borrowed_loads_give_the_same_logits() {
        let file = q8_gguf();
        let opts = LoadOptions::default();
        let borrowed = Model::from_gguf(&file, &opts).unwrap();
        let shared = Model::from_gguf_buffer(Bytes::from(file.clone()), &opts).unwrap();
        let tokens = [1u32, 5, 9, 3, 7];
        let logits = |m: &Model| m.new_session().unwrap().forward(&tokens, 0).unwrap();
        assert_eq!(logits(&borrowed), logits(&shared));
    }
}
