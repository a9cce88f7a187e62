//! [`QMatrix`]: a quantised weight matrix and its product with f32 activations, split by
//! output rows across a [`Pool`].

use bytes::Bytes;

use crate::blocks::{ActBlock, Format, Q8Block, QK, QK_K};
use crate::kquants::Q8KBlock;
use crate::{Kernel, KernelError, Pool, Runner};

/// Activation rows a prefill tile takes at once: each weight block is unpacked once for all.
const TILE: usize = 4;
/// Weight rows walked together under one activation tile (at most 16 rows x 48 blocks x 20
/// bytes = 15 KiB: they stay in L1 while every tile of activations passes over them).
const ROW_BLOCK: usize = 16;
/// Activation rows from which quantising them is split across the pool too.
const PARALLEL_QUANTISE: usize = 16;

/// An input quantised for the matrices that take it ([`QMatrix::quantize_input`]): kept by its
/// caller so that its buffers are reused from one product to the next.
#[derive(Debug, Clone, Default)]
pub struct QuantizedInput {
    m: usize,
    cols: usize,
    k_quants: bool,
    blocks: Vec<Q8Block>,
    supers: Vec<Q8KBlock>,
}

/// `rows` x `cols` weights in ggml blocks, row-major as GGUF stores them (the
/// `out_features x in_features` of a linear layer). The bytes are shared, not owned: a
/// [`Bytes`] can be a slice of the model file's buffer (no copy of the weights), and a matrix
/// joined by [`QMatrix::concat`] keeps its parts' slices one under the other as segments, each
/// in its own [`Format`] (Q4_K_M stores some layers' v projection in Q6_K beside q and k in
/// Q4_K). The formats of one matrix take the same activations: all of [`QK`] weights
/// ([`Q8Block`]s) or all K-quants ([`Q8KBlock`]s), so its input is quantised once.
#[derive(Clone)]
pub struct QMatrix {
    rows: usize,
    cols: usize,
    /// Whether the formats are K-quants (activations in [`Q8KBlock`]s, else [`Q8Block`]s).
    k_quants: bool,
    /// Activation blocks per row of input ([`QK`] or [`QK_K`] values each).
    nb: usize,
    /// Whole rows, in order; each segment's first row is the sum of the earlier ones' rows.
    segments: Vec<Segment>,
}

/// Consecutive rows of a [`QMatrix`] in one buffer and one format.
#[derive(Clone)]
struct Segment {
    /// The matrix row this segment starts at.
    first: usize,
    rows: usize,
    format: Format,
    /// Bytes of one of its rows.
    row_bytes: usize,
    data: Bytes,
}

impl std::fmt::Debug for QMatrix {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QMatrix")
            .field(
                "formats",
                &self.segments.iter().map(|s| s.format).collect::<Vec<_>>(),
            )
            .field("rows", &self.rows)
            .field("cols", &self.cols)
            .finish()
    }
}

/// A pointer to the output that the pool's threads write disjoint elements of.
#[derive(Clone, Copy)]
struct Out(*mut f32);
// SAFETY: each element behind the pointer is written by exactly one thread (the rows are cut
// into chunks, each run once), and `Runner::run` returns only when every chunk has.
unsafe impl Sync for Out {}
// SAFETY: as above.
unsafe impl Send for Out {}

/// Same, for the quantised activations (rows partitioned between threads).
#[derive(Clone, Copy)]
struct Acts<A>(*mut A);
// SAFETY: as for `Out`: disjoint rows per thread, joined by `Pool::run`.
unsafe impl<A> Sync for Acts<A> {}
// SAFETY: as above.
unsafe impl<A> Send for Acts<A> {}

impl Out {
    /// The element at `i` (a method, so that closures capture the `Sync` wrapper, not the field).
    ///
    /// # Safety
    /// `i` is inside the output.
    unsafe fn at(self, i: usize) -> *mut f32 {
        // SAFETY: the caller keeps `i` inside the output.
        unsafe { self.0.add(i) }
    }
}

impl<A> Acts<A> {
    /// As [`Out::at`].
    ///
    /// # Safety
    /// `i` is inside the activations.
    unsafe fn at(self, i: usize) -> *mut A {
        // SAFETY: the caller keeps `i` inside the activations.
        unsafe { self.0.add(i) }
    }
}

/// Chunks per thread a matmul is cut into: threads take chunks as they come free, so a thread
/// the OS did not schedule (a shared machine) holds a matmul up by one small chunk at most.
const CHUNKS_PER_THREAD: usize = 8;

/// Chunk `c` of `n` items cut into `chunks` near-equal ranges, each a multiple of `align`
/// items but the last.
fn chunk(n: usize, chunks: usize, align: usize, c: usize) -> std::ops::Range<usize> {
    let per = n.div_ceil(chunks.max(1)).div_ceil(align) * align;
    (c * per).min(n)..((c + 1) * per).min(n)
}

/// That an operand holds `m` rows of `width` values: `got` of them.
fn operand(what: &'static str, m: usize, width: usize, got: usize) -> Result<(), KernelError> {
    let expected = m.checked_mul(width).ok_or(KernelError::TooLarge {
        rows: m,
        cols: width,
    })?;
    if expected == got {
        Ok(())
    } else {
        Err(KernelError::Operand {
            what,
            m,
            expected,
            got,
        })
    }
}

impl QMatrix {
    /// Takes `data`, `rows * cols` weights in `format`'s blocks, as a GGUF tensor stores them
    /// (a `Vec<u8>` becomes a [`Bytes`] without a copy; a slice of a larger buffer is shared).
    pub fn new(
        format: Format,
        rows: usize,
        cols: usize,
        data: impl Into<Bytes>,
    ) -> Result<Self, KernelError> {
        let data = data.into();
        if !cols.is_multiple_of(format.block_weights()) {
            return Err(KernelError::PartialBlock {
                cols,
                block: format.block_weights(),
            });
        }
        let k_quants = format.block_weights() == QK_K;
        let nb = cols / if k_quants { QK_K } else { QK };
        let row_bytes = format
            .row_bytes(cols)
            .ok_or(KernelError::TooLarge { rows, cols })?;
        let expected = row_bytes
            .checked_mul(rows)
            .ok_or(KernelError::TooLarge { rows, cols })?;
        if data.len() != expected {
            return Err(KernelError::WeightBytes {
                format,
                rows,
                cols,
                expected,
                got: data.len(),
            });
        }
        Ok(QMatrix {
            rows,
            cols,
            k_quants,
            nb,
            segments: vec![Segment {
                first: 0,
                rows,
                format,
                row_bytes,
                data,
            }],
        })
    }

    /// The formats of the weights, one per segment (see [`QMatrix::segments`]).
    pub fn formats(&self) -> impl Iterator<Item = Format> {
        self.segments.iter().map(|s| s.format)
    }

    /// Output features (weight rows).
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Input features (weights per row).
    pub fn cols(&self) -> usize {
        self.cols
    }

    /// The size of the weights in bytes.
    pub fn byte_len(&self) -> usize {
        // Each segment's bytes are a buffer in memory: the sum cannot overflow.
        self.segments.iter().map(|s| s.data.len()).sum()
    }

    /// The weight bytes, one slice per buffer they sit in: one for a matrix from
    /// [`QMatrix::new`], one per part for a joined one.
    pub fn segments(&self) -> impl Iterator<Item = &[u8]> {
        self.segments.iter().map(|s| &s.data[..])
    }

    /// The segment holding row `r < rows`, and `r`'s index in it.
    fn segment(&self, r: usize) -> Option<(&Segment, usize)> {
        self.segments
            .iter()
            .find(|s| r >= s.first && r - s.first < s.rows)
            .map(|s| (s, r - s.first))
    }

    /// Appends row `r`'s weights, dequantised, to `out`: an embedding lookup served from the
    /// quantised matrix instead of an f32 copy of it.
    pub fn dequantize_row_into(&self, r: usize, out: &mut Vec<f32>) -> Result<(), KernelError> {
        let bytes = self
            .segment(r)
            .and_then(|(s, i)| {
                let start = i.checked_mul(s.row_bytes)?;
                let bytes = s.data.get(start..start.checked_add(s.row_bytes)?)?;
                Some((s.format, bytes))
            })
            .ok_or(KernelError::Operand {
                what: "row index",
                m: r,
                expected: self.rows,
                got: r,
            })?;
        out.extend(crate::blocks::dequantize_row(bytes.0, bytes.1));
        Ok(())
    }

    /// `out` (`m x rows`) = `x` (`m x cols`) times the transposed weights, with the fastest
    /// kernel on the shared [`Pool::global`].
    pub fn matmul(&self, x: &[f32], m: usize, out: &mut [f32]) -> Result<(), KernelError> {
        self.matmul_with(x, m, out, Kernel::best(), Pool::global())
    }

    /// [`QMatrix::matmul`] with a given kernel and pool (or other [`Runner`]).
    pub fn matmul_with(
        &self,
        x: &[f32],
        m: usize,
        out: &mut [f32],
        kernel: Kernel,
        pool: &dyn Runner,
    ) -> Result<(), KernelError> {
        operand("input", m, self.cols, x.len())?;
        operand("output", m, self.rows, out.len())?;
        if !kernel.available() {
            return Err(KernelError::Unavailable(kernel));
        }
        if m == 0 || self.rows == 0 {
            return Ok(());
        }
        if self.k_quants {
            let acts: Vec<Q8KBlock> = self.quantize_with(x, m, pool);
            self.run_quantized(&acts, m, out, kernel, pool);
        } else {
            let acts: Vec<Q8Block> = self.quantize_with(x, m, pool);
            self.run_quantized(&acts, m, out, kernel, pool);
        }
        Ok(())
    }

    /// `x` (`m x cols`, checked by the caller) quantised to `m` rows of `A` blocks.
    fn quantize_with<A: ActBlock>(&self, x: &[f32], m: usize, pool: &dyn Runner) -> Vec<A> {
        let mut acts = Vec::new();
        self.quantize_into(x, m, pool, &mut acts);
        acts
    }

    /// [`QMatrix::quantize_with`] into a buffer kept between calls.
    fn quantize_into<A: ActBlock>(
        &self,
        x: &[f32],
        m: usize,
        pool: &dyn Runner,
        acts: &mut Vec<A>,
    ) {
        let nb = self.nb;
        acts.clear();
        // m * nb <= x.len() / QK: cannot overflow.
        acts.resize(m * nb, A::ZEROS);
        if m >= PARALLEL_QUANTISE {
            let ptr = Acts(acts.as_mut_ptr());
            let chunks = m.min(pool.threads() * CHUNKS_PER_THREAD);
            pool.run(chunks, &|c| {
                for i in chunk(m, chunks, 1, c) {
                    // SAFETY: row `i < m` of `acts` (m * nb blocks) is written by this chunk
                    // only: the chunks partition 0..m.
                    let row = unsafe { std::slice::from_raw_parts_mut(ptr.at(i * nb), nb) };
                    A::quantize(&x[i * self.cols..(i + 1) * self.cols], row);
                }
            });
        } else {
            for (xs, q) in x.chunks_exact(self.cols).zip(acts.chunks_exact_mut(nb)) {
                A::quantize(xs, q);
            }
        }
    }

    /// Quantises `x` (`m` rows of `cols`) for this matrix's formats into `input`, whose buffers
    /// are reused: an input quantised once for several products ([`QMatrix::matmul_quantized`]).
    pub fn quantize_input(
        &self,
        x: &[f32],
        m: usize,
        input: &mut QuantizedInput,
    ) -> Result<(), KernelError> {
        operand("input", m, self.cols, x.len())?;
        let pool = Pool::global();
        if self.k_quants {
            self.quantize_into(x, m, pool, &mut input.supers);
        } else {
            self.quantize_into(x, m, pool, &mut input.blocks);
        }
        (input.m, input.cols, input.k_quants) = (m, self.cols, self.k_quants);
        Ok(())
    }

    /// `out` (`m x rows`) = an input quantised by [`QMatrix::quantize_input`] (of this matrix
    /// or of one of the same width and kind of formats) times the transposed weights. The
    /// fastest kernel, on [`Pool::global`].
    pub fn matmul_quantized(
        &self,
        input: &QuantizedInput,
        out: &mut [f32],
    ) -> Result<(), KernelError> {
        let m = input.m;
        if (input.cols, input.k_quants) != (self.cols, self.k_quants) {
            return Err(KernelError::Operand {
                what: "quantised input",
                m,
                expected: self.cols,
                got: input.cols,
            });
        }
        operand("output", m, self.rows, out.len())?;
        if m == 0 || self.rows == 0 {
            return Ok(());
        }
        let (kernel, pool) = (Kernel::best(), Pool::global());
        if self.k_quants {
            operand("quantised input", m, self.nb, input.supers.len())?;
            self.run_quantized(&input.supers, m, out, kernel, pool);
        } else {
            operand("quantised input", m, self.nb, input.blocks.len())?;
            self.run_quantized(&input.blocks, m, out, kernel, pool);
        }
        Ok(())
    }

    /// The rows of `matrices` one under the other (same width, formats that take the same
    /// activations): one matrix whose product is theirs side by side, so that projections of
    /// the same input (q, k and v; gate and up) are one job for the pool.
    pub fn concat(matrices: &[&QMatrix]) -> Result<QMatrix, KernelError> {
        let Some(first) = matrices.first() else {
            return Err(KernelError::Concat);
        };
        if matrices
            .iter()
            .any(|m| m.cols != first.cols || m.k_quants != first.k_quants)
        {
            return Err(KernelError::Concat);
        }
        // Shares the parts' buffers: joining copies no weights.
        let mut segments = Vec::new();
        let mut rows = 0usize;
        for m in matrices {
            for s in &m.segments {
                segments.push(Segment {
                    first: rows,
                    ..s.clone()
                });
                rows = rows.checked_add(s.rows).ok_or(KernelError::TooLarge {
                    rows: usize::MAX,
                    cols: first.cols,
                })?;
            }
        }
        Ok(QMatrix {
            rows,
            cols: first.cols,
            k_quants: first.k_quants,
            nb: first.nb,
            segments,
        })
    }

    /// The product, lengths checked: `acts` is `m * nb` blocks, `out` `m * rows` values.
    fn run_quantized<A: ActBlock>(
        &self,
        acts: &[A],
        m: usize,
        out: &mut [f32],
        kernel: Kernel,
        pool: &dyn Runner,
    ) {
        let out_ptr = Out(out.as_mut_ptr());
        let chunks = self
            .rows
            .div_ceil(ROW_BLOCK)
            .min(pool.threads() * CHUNKS_PER_THREAD);
        pool.run(chunks, &|c| {
            self.rows_range(
                kernel,
                acts,
                m,
                chunk(self.rows, chunks, ROW_BLOCK, c),
                out_ptr,
            );
        });
    }

    /// Outputs of weight rows `rows` for every activation row.
    fn rows_range<A: ActBlock>(
        &self,
        kernel: Kernel,
        acts: &[A],
        m: usize,
        rows: std::ops::Range<usize>,
        out: Out,
    ) {
        let nb = self.nb;
        let act = |t: usize| &acts[t * nb..(t + 1) * nb];
        let mut start = rows.start;
        if kernel != Kernel::Scalar && m >= A::GEMM_ROWS {
            // Many activation rows: the whole range at once where the format has a GEMM, a
            // segment's part at a time.
            let mut res = Vec::new();
            while start < rows.end {
                let Some((segment, i)) = self.segment(start) else {
                    return;
                };
                let end = rows.end.min(segment.first + segment.rows);
                let n = end - start;
                let rb = segment.row_bytes;
                res.clear();
                res.resize(m * n, 0f32);
                let w = &segment.data[i * rb..(i + n) * rb];
                if !A::gemm_simd(kernel, segment.format, w, n, nb, acts, m, &mut res) {
                    break;
                }
                for (t, r) in res.chunks_exact(n).enumerate() {
                    // SAFETY: t < m and start + n <= rows: the n outputs from `t * rows +
                    // start` are inside the m x rows output, and this chunk alone owns rows
                    // `rows`; `r` is another buffer. (One copy a row, not a store per element:
                    // the portable build did not vectorise that loop, 8% of a SmolLM2 prefill.)
                    unsafe {
                        std::ptr::copy_nonoverlapping(r.as_ptr(), out.at(t * self.rows + start), n)
                    };
                }
                start = end;
            }
        }
        let mut tile4 = [[0f32; TILE]; ROW_BLOCK];
        let mut tile1 = [[0f32; 1]; ROW_BLOCK];
        while start < rows.end {
            // A block of rows never straddles two segments: it ends where its segment does.
            let Some((segment, i)) = self.segment(start) else {
                return;
            };
            let end = rows
                .end
                .min(start + ROW_BLOCK)
                .min(segment.first + segment.rows);
            let rb = segment.row_bytes;
            let w = &segment.data[i * rb..(i + end - start) * rb];
            let fmt = segment.format;
            let mut t = 0;
            while t + TILE <= m {
                let o = &mut tile4[..end - start];
                self.tile(
                    kernel,
                    fmt,
                    w,
                    [act(t), act(t + 1), act(t + 2), act(t + 3)],
                    o,
                );
                for (j, v) in o.iter().enumerate() {
                    for (i, &v) in v.iter().enumerate() {
                        // SAFETY: (t + i) < m and start + j < rows: inside the m x rows
                        // output; this chunk alone owns rows `rows`.
                        unsafe { out.at((t + i) * self.rows + start + j).write(v) };
                    }
                }
                t += TILE;
            }
            while t < m {
                let o = &mut tile1[..end - start];
                self.tile(kernel, fmt, w, [act(t)], o);
                for (j, v) in o.iter().enumerate() {
                    // SAFETY: as above.
                    unsafe { out.at(t * self.rows + start + j).write(v[0]) };
                }
                t += 1;
            }
            start = end;
        }
    }

    /// `out[j][r]`: weight row `j` of `w` (rows of `fmt`) dotted with activation row `a[r]`.
    fn tile<A: ActBlock, const R: usize>(
        &self,
        kernel: Kernel,
        fmt: Format,
        w: &[u8],
        a: [&[A]; R],
        out: &mut [[f32; R]],
    ) {
        if kernel != Kernel::Scalar && A::tile_simd(kernel, fmt, w, self.nb, a, out) {
            return;
        }
        let row_bytes = w.len() / out.len().max(1);
        for (row, o) in w.chunks_exact(row_bytes.max(1)).zip(out.iter_mut()) {
            for (o, a) in o.iter_mut().zip(a) {
                *o = A::dot_scalar(fmt, row, a);
            }
        }
    }
}
