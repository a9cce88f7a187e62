//! Where a GGUF model's tensors come from: the file's bytes, borrowed or shared, and the reader
//! that turns a tensor name into a layer. The matrices ward's kernels run are taken straight
//! from the file's blocks (GGUF stores them as the kernels read them): sliced out of a shared
//! buffer, no copy, or copied once out of a borrowed one. Everything else goes through candle's
//! reader (its own copy, in its own layout).

use std::io::Cursor;
use std::ops::Range;

use bytes::Bytes;
use candle_core::Device;
use candle_core::quantized::QTensor;
use candle_core::quantized::gguf_file::Content;
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
        self.all().get(range.clone())?;
        Some(match self {
            GgufBytes::Borrowed(b) => Bytes::copy_from_slice(b.get(range)?),
            GgufBytes::Shared(b) => b.slice(range),
        })
    }
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
    pub(super) fn new(content: &'a Content, bytes: GgufBytes<'a>, device: Device) -> Self {
        TensorReader {
            content,
            bytes,
            reader: Cursor::new(bytes.all()),
            kernels: Kernels::from_env(),
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

    /// Weight tensor `name` on ward's kernels, its bytes taken from the file (sliced or
    /// copied, never through candle); `None` where ward's kernels do not run it.
    pub(super) fn own_linear(&mut self, name: &str) -> candle_core::Result<Option<QLinear>> {
        let info = self.content.tensor_infos.get(name).ok_or_else(|| {
            candle_core::Error::Msg(format!("cannot find tensor info for {name}"))
        })?;
        let Some((format, rows, cols)) = QLinear::own_layout_of(
            self.kernels,
            &self.device,
            info.ggml_dtype,
            info.shape.dims(),
        ) else {
            return Ok(None);
        };
        let too_large = || candle_core::Error::Msg(format!("tensor {name} does not fit in memory"));
        let len = (cols / ward_kernels::QK)
            .checked_mul(format.block_bytes())
            .and_then(|row| row.checked_mul(rows))
            .ok_or_else(too_large)?;
        let start = self
            .content
            .tensor_data_offset
            .checked_add(info.offset)
            .and_then(|s| usize::try_from(s).ok())
            .ok_or_else(too_large)?;
        let end = start.checked_add(len).ok_or_else(too_large)?;
        let data = self.bytes.slice(start..end).ok_or_else(|| {
            candle_core::Error::Msg(format!(
                "tensor {name} needs bytes {start}..{end}, the file has {}",
                self.bytes.all().len()
            ))
        })?;
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
        if Kernels::from_env() != Kernels::Own {
            eprintln!("skipped: WARD_CPU_KERNELS=candle keeps candle's kernels");
            return;
        }
        let file = q8_gguf();
        let ct = Content::read(&mut Cursor::new(&file)).unwrap();
        let shared = Bytes::from(file.clone());
        let name = "blk.0.attn_q.weight";
        let mut from_shared = TensorReader::new(&ct, GgufBytes::Shared(&shared), Device::Cpu);
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
        if Kernels::from_env() != Kernels::Own {
            eprintln!("skipped: WARD_CPU_KERNELS=candle keeps candle's kernels");
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
            let mut reader = TensorReader::new(&ct, bytes, Device::Cpu);
            let err = reader.own_linear(last).unwrap_err().to_string();
            assert!(
                err.contains(last.as_str()) && err.contains("the file has"),
                "{err}"
            );
        }
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
