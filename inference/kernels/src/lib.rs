//! ward-kernels: ward's own CPU kernels for the ggml block formats its GGUF models carry, where
//! candle's are the bottleneck (candle 0.11 has no SIMD kernel for Q4_1 at all).
//!
//! What it owns:
//! - [`QMatrix`]: a weight matrix in Q4_0, Q4_1, Q8_0, Q4_K, Q5_K or Q6_K blocks (the GGUF bytes
//!   as they are; its parts may differ in format) and
//!   its product with f32 activations, which are quantised once per matmul input to 8-bit
//!   blocks ([`blocks::Q8Block`]); one vector dot per output for a single row (decode), a tiled
//!   product for many (prefill: each weight block is unpacked once for 4 activation rows);
//! - the kernels: AVX2 + FMA chosen at run time (`is_x86_feature_detected!`, so the portable
//!   build runs them too; VNNI for prefill where the CPU has AVX-VNNI or AVX512-VNNI), NEON on
//!   aarch64 (with `sdot` where the CPU has the dot-product extension), and the scalar code
//!   that is their reference ([`blocks::dot_scalar`]);
//! - [`Pool`]: one persistent set of worker threads that splits each matmul's rows.
//!
//! What it must never do: read outside the slices it is given (every length is checked before
//! any SIMD code runs, sizes with checked arithmetic), spawn a thread per operation, or depend
//! on candle (ward-inference hooks it in at the matmul, so one model definition serves CPU and GPU).

#[cfg(target_arch = "aarch64")]
mod aarch64;
pub mod blocks;
pub mod f32ops;
pub mod kquants;
mod matmul;
mod pool;
#[cfg(target_arch = "x86_64")]
mod x86;

pub use blocks::{Format, Q8Block, QK, QK_K};
pub use kquants::Q8KBlock;
pub use matmul::{QMatrix, QuantizedInput};
pub use pool::{Pool, Runner};

/// Which implementation of the dot products runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kernel {
    /// Portable scalar code: the reference.
    Scalar,
    /// AVX2 + FMA + F16C (x86-64-v3 CPUs), detected at run time.
    Avx2,
    /// [`Kernel::Avx2`] with AVX-VNNI (`vpdpbusd` on 256-bit vectors: Alder Lake, Sapphire
    /// Rapids, Zen 5) where a kernel has a use for it: the prefill GEMMs (every format).
    AvxVnni,
    /// AVX512-VNNI (with AVX512F, BW and VL): the prefill GEMMs on 512-bit vectors, 16 weight
    /// rows to a panel; everything else as [`Kernel::Avx2`]. The CPUs with AVX-512 but not
    /// AVX-VNNI (Cascade Lake, Ice Lake, AMD Zen 4, the EPYC Genoa hosts of SEV-SNP guests).
    Avx512Vnni,
    /// NEON on aarch64 (every such CPU) with widening multiplies: the body for cores without
    /// the dot-product extension.
    Neon,
    /// NEON with the dot-product extension (`sdot`: Armv8.2-A and later, Graviton 2 on, Ampere
    /// Altra, Neoverse), detected at run time.
    NeonDot,
}

impl Kernel {
    /// The fastest kernel this CPU runs, or a slower one `WARD_KERNEL` names (`scalar`, `avx2`,
    /// `neon`: a switch for benchmarks and bisecting, read once per process; nothing else
    /// reads it).
    pub fn best() -> Kernel {
        static BEST: std::sync::OnceLock<Kernel> = std::sync::OnceLock::new();
        *BEST.get_or_init(|| {
            let fastest = [
                Kernel::AvxVnni,
                Kernel::Avx512Vnni,
                Kernel::Avx2,
                Kernel::NeonDot,
                Kernel::Neon,
            ]
            .into_iter()
            .find(|k| k.available())
            .unwrap_or(Kernel::Scalar);
            let named = match std::env::var("WARD_KERNEL").as_deref() {
                Ok("scalar") => Kernel::Scalar,
                Ok("avx2") => Kernel::Avx2,
                Ok("neon") => Kernel::Neon,
                _ => fastest,
            };
            if named.available() { named } else { fastest }
        })
    }

    /// Whether this CPU runs `self`.
    pub fn available(self) -> bool {
        match self {
            Kernel::Scalar => true,
            Kernel::Avx2 => kernel::avx2(),
            Kernel::AvxVnni => kernel::avx_vnni(),
            Kernel::Avx512Vnni => kernel::avx512_vnni(),
            Kernel::Neon => cfg!(target_arch = "aarch64"),
            Kernel::NeonDot => kernel::neon_dot(),
        }
    }
}

pub(crate) mod kernel {
    /// AVX2, FMA and F16C are there (detected once).
    pub(crate) fn avx2() -> bool {
        #[cfg(target_arch = "x86_64")]
        {
            static AVX2: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
            *AVX2.get_or_init(crate::x86::available)
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            false
        }
    }

    /// [`avx2`] and AVX-VNNI (detected once).
    pub(crate) fn avx_vnni() -> bool {
        #[cfg(target_arch = "x86_64")]
        {
            static VNNI: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
            *VNNI.get_or_init(|| avx2() && std::arch::is_x86_feature_detected!("avxvnni"))
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            false
        }
    }

    /// [`avx2`], AVX512-VNNI, AVX512F, AVX512BW and AVX512VL (every CPU with AVX512-VNNI has
    /// the other three; detected once, the detection includes the OS's saving of the AVX-512
    /// state).
    pub(crate) fn avx512_vnni() -> bool {
        #[cfg(target_arch = "x86_64")]
        {
            static VNNI: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
            *VNNI.get_or_init(|| {
                avx2()
                    && std::arch::is_x86_feature_detected!("avx512vnni")
                    && std::arch::is_x86_feature_detected!("avx512f")
                    && std::arch::is_x86_feature_detected!("avx512bw")
                    && std::arch::is_x86_feature_detected!("avx512vl")
            })
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            false
        }
    }

    /// NEON's dot-product extension (detected once).
    pub(crate) fn neon_dot() -> bool {
        #[cfg(target_arch = "aarch64")]
        {
            static DOT: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
            *DOT.get_or_init(crate::aarch64::dotprod)
        }
        #[cfg(not(target_arch = "aarch64"))]
        {
            false
        }
    }
}

/// What a matmul was given that it cannot work with.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum KernelError {
    /// A row of `cols` weights is not a whole number of the format's blocks.
    #[error("rows of {cols} weights are not whole blocks of {block}")]
    PartialBlock { cols: usize, block: usize },
    /// The weight bytes do not hold `rows x cols` weights of the format.
    #[error("{format:?} weights of {rows} x {cols}: {expected} bytes expected, {got} given")]
    WeightBytes {
        format: Format,
        rows: usize,
        cols: usize,
        expected: usize,
        got: usize,
    },
    /// A size overflowed `usize`.
    #[error("{rows} x {cols} weights overflow the address space")]
    TooLarge { rows: usize, cols: usize },
    /// The input or the output is not `m` rows of the matrix's width.
    #[error("{what}: {expected} values expected for {m} rows, {got} given")]
    Operand {
        what: &'static str,
        m: usize,
        expected: usize,
        got: usize,
    },
    /// Matrices joined by [`QMatrix::concat`] differ in width (or there are none).
    #[error("only matrices of one width are joined")]
    Concat,
    /// The kernel asked for does not run on this CPU.
    #[error("the {0:?} kernel does not run on this CPU")]
    Unavailable(Kernel),
}
#[cfg(test)]
mod tests;
