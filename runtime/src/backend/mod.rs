//! The seam between the Llama recipe ([`crate::model`]) and the hardware that runs it.
//!
//! A [`Backend`] owns the weights it is given at load (as its own handles), the
//! activations of a batch ([`Backend::Scratch`], addressed by [`Act`]) and the KV cache
//! ([`Backend::Cache`]), and implements the dozen operations the recipe is made of:
//! embed, RMSNorm, projections (several matrices over one input), RoPE, KV append,
//! attention, SwiGLU, residual add and logits. The recipe calls them in order and never
//! touches a buffer itself, so the same `forward` runs on any backend:
//!
//! * [`cpu::CpuBackend`]: SIMD kernels (or the scalar reference, chosen by value) on a
//!   thread pool, weights used in place from the mapped file.
//! * `gpu::GpuBackend` (feature `gpu`): WGSL kernels over `wgpu`; operations are
//!   recorded and submitted once per forward pass, when the logits are read.
//!
//! A new backend (the GPU, a test double) implements [`Backend`]; nothing in `model.rs`
//! changes.

pub mod cpu;
#[cfg(feature = "gpu")]
pub mod gpu;

use core::ops::Range;
use glint_format::{BLOCK, LlamaTensor, LoadedGlint, Matrix, ModelConfig, RopeStyle};
use std::sync::Arc;

pub use cpu::{CpuBackend, CpuOptions};

/// How the matrix products treat activations.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Precision {
    /// f32 activations, weights dequantized on the fly, f32 accumulation: matches
    /// "dequantize, then f32 matmul" (llama.cpp's f32 reference) to rounding; what the
    /// accuracy tests against llama.cpp pin down. About 0.7× the int8 paths' decode.
    Exact,
    /// Activations quantized to int8 per 32-block once per input vector and integer dot
    /// products (`vpdpbusd`), like llama.cpp's default CPU path; float matrices stay
    /// exact. Faster; perplexity and logits effects are in `benches/README.md`.
    Int8,
    /// [`Precision::Int8`] everywhere but the matrices of the first
    /// [`Precision::EXACT_BLOCKS`] blocks, which keep f32 activations: int8 rounding
    /// there flips near-ties that decide answers ("What is the capital of France?"
    /// goes from "L'Étoile…" to "Paris" with the AVX-512 kernels; not with the scalar
    /// or NEON ones); measured in `benches/README.md`. The
    /// default: on the shipped QA set it answers 67/105 with the model's recommended
    /// sampling (exact 72, int8 64) at 0.96–0.99× int8's decode speed.
    #[default]
    Mixed,
}

impl Precision {
    /// Blocks whose matrices keep f32 activations under [`Precision::Mixed`].
    pub const EXACT_BLOCKS: u32 = 2;

    /// `"exact"`, `"int8"` or `"mixed"`.
    pub fn name(self) -> &'static str {
        match self {
            Precision::Exact => "exact",
            Precision::Int8 => "int8",
            Precision::Mixed => "mixed",
        }
    }

    /// Parses [`Precision::name`].
    pub fn from_name(name: &str) -> Option<Self> {
        [Precision::Exact, Precision::Int8, Precision::Mixed]
            .into_iter()
            .find(|p| p.name() == name.trim())
    }

    /// Whether the products with `tensor` quantize their activations to int8.
    pub fn int8_activations(self, tensor: LlamaTensor) -> bool {
        match (self, tensor) {
            (Precision::Exact, _) => false,
            (Precision::Int8, _) => true,
            (Precision::Mixed, LlamaTensor::Block(i, _)) => i >= Self::EXACT_BLOCKS,
            (Precision::Mixed, _) => true,
        }
    }
}

/// Element type of a KV cache.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum KvType {
    /// f32: exact.
    F32,
    /// f16 (rounded to nearest on append): half the bytes of f32. The default: measured
    /// on the exact path (`benches/README.md`), the last-position top-10 logits move
    /// from 3e-5 to 0.005 of llama.cpp's f32 reference (bound 0.05) and perplexity from
    /// 18.2994 to 18.2990.
    #[default]
    F16,
    /// int8 per 32-element block with an f32 scale (llama.cpp's `q8_0` cache rule):
    /// 9 bits per element, 56% of f16. Needs a head dimension that is a multiple of 32.
    Int8,
}

impl KvType {
    /// `"f32"`, `"f16"` or `"int8"`.
    pub fn name(self) -> &'static str {
        match self {
            KvType::F32 => "f32",
            KvType::F16 => "f16",
            KvType::Int8 => "int8",
        }
    }

    /// Parses [`KvType::name`].
    pub fn from_name(name: &str) -> Option<Self> {
        [KvType::F32, KvType::F16, KvType::Int8]
            .into_iter()
            .find(|k| k.name() == name.trim())
    }

    /// Bits per cached element, its share of the block scale included.
    pub fn bits(self) -> u64 {
        match self {
            KvType::F32 => 32,
            KvType::F16 => 16,
            KvType::Int8 => 8 + 32 / BLOCK as u64,
        }
    }

    /// Bytes a cache of this type takes for `capacity` positions of `shape`'s model.
    pub fn cache_bytes(self, shape: &ModelShape, capacity: usize) -> u64 {
        2 * self.bits() * shape.n_layers as u64 * capacity as u64 * shape.attn.kv_dim as u64 / 8
    }
}

/// The attention's shape, computed once from the config.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AttnShape {
    /// Elements per head.
    pub head_dim: usize,
    /// Query heads.
    pub n_heads: usize,
    /// Key/value heads.
    pub n_kv_heads: usize,
    /// Query heads per key/value head.
    pub group: usize,
    /// `n_heads * head_dim`.
    pub q_dim: usize,
    /// `n_kv_heads * head_dim`.
    pub kv_dim: usize,
    /// `1 / sqrt(head_dim)`.
    pub scale: f32,
    /// How RoPE pairs elements.
    pub rope_style: RopeStyle,
}

/// Every size the forward pass needs, computed once from the config.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ModelShape {
    /// Width of the residual stream.
    pub dim: usize,
    /// Width of the feed-forward hidden layer.
    pub ffn_dim: usize,
    /// Tokens in the vocabulary (width of the logits).
    pub vocab: usize,
    /// Transformer blocks.
    pub n_layers: usize,
    /// The attention.
    pub attn: AttnShape,
    /// RMSNorm epsilon.
    pub norm_eps: f32,
}

impl ModelShape {
    /// The shape of `c`'s model.
    pub fn new(c: &ModelConfig) -> Self {
        let head_dim = c.head_dim as usize;
        let (n_heads, n_kv_heads) = (c.n_heads as usize, c.n_kv_heads as usize);
        Self {
            dim: c.dim as usize,
            ffn_dim: c.ffn_dim as usize,
            vocab: c.vocab_size as usize,
            n_layers: c.n_layers as usize,
            attn: AttnShape {
                head_dim,
                n_heads,
                n_kv_heads,
                group: n_heads / n_kv_heads,
                q_dim: n_heads * head_dim,
                kv_dim: n_kv_heads * head_dim,
                scale: 1.0 / (head_dim as f32).sqrt(),
                rope_style: c.rope_style,
            },
            norm_eps: c.norm_eps,
        }
    }

    /// Elements per token of activation `a`.
    pub fn width(&self, a: Act) -> usize {
        match a {
            Act::X => self.dim,
            Act::Xn => self.dim.max(self.attn.q_dim),
            Act::Q | Act::Att => self.attn.q_dim,
            Act::K | Act::V => self.attn.kv_dim,
            Act::Gate | Act::Up => self.ffn_dim,
            Act::Logits => self.vocab,
        }
    }
}

/// An activation buffer of a batch: `[batch][width]` (see [`ModelShape::width`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Act {
    /// The residual stream.
    X,
    /// A normalised copy of `X`, or a projection's output before it joins `X`.
    Xn,
    /// Queries.
    Q,
    /// New keys.
    K,
    /// New values.
    V,
    /// The attention's output.
    Att,
    /// The feed-forward gate (SwiGLU's output in place).
    Gate,
    /// The feed-forward up projection.
    Up,
    /// Next-token logits.
    Logits,
}

impl Act {
    /// Every buffer, in index order.
    pub const ALL: [Act; 9] = [
        Act::X,
        Act::Xn,
        Act::Q,
        Act::K,
        Act::V,
        Act::Att,
        Act::Gate,
        Act::Up,
        Act::Logits,
    ];
}

/// Sizes of a [`Backend::Scratch`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ScratchSize {
    /// Most tokens per forward call.
    pub batch: usize,
    /// Positions of the cache it attends over.
    pub capacity: usize,
    /// Keep the logits of every token of a batch (perplexity), not only the last.
    pub all_logits: bool,
}

/// The RMSNorm in front of a projection ([`Backend::norm_project`]): rows `rows` of
/// `input`, normalised and scaled by `weight`.
pub struct NormInput<'a, V> {
    /// The activation normalised (the residual stream).
    pub input: Act,
    /// Its rows; the projection runs over `rows.len()` rows.
    pub rows: Range<usize>,
    /// The norm's weights.
    pub weight: &'a V,
}

/// What a projection computes from its input rows `x`.
#[derive(Clone, Copy)]
pub enum Projection<'a, W> {
    /// `out_j = W_j x` for each `(W_j, out_j)`: [`Backend::project`].
    Into(&'a [(&'a W, Act)]),
    /// `Gate = silu(W_gate x) * W_up x`: [`Backend::project_swiglu`].
    Swiglu {
        /// The gate matrix.
        gate: &'a W,
        /// The up matrix.
        up: &'a W,
    },
}

impl<W> Projection<'_, W> {
    /// Runs it on `b` over `n` rows of `input`.
    pub fn run<B: Backend<Weight = W>>(self, b: &B, s: &mut B::Scratch, input: Act, n: usize) {
        match self {
            Projection::Into(outs) => b.project(s, input, n, outs),
            Projection::Swiglu { gate, up } => b.project_swiglu(s, input, n, gate, up),
        }
    }
}

/// One weight matrix of the file, as a backend receives it at load: the planes,
/// borrowed from the model's bytes, and those bytes, for a backend that keeps using
/// them in place.
#[derive(Clone, Copy)]
pub struct WeightSource<'a> {
    tensor: LlamaTensor,
    matrix: Matrix<'a>,
    file: &'a Arc<LoadedGlint>,
}

impl<'a> WeightSource<'a> {
    /// `matrix` must borrow from `file`'s bytes: [`cpu::CpuBackend`] relies on it.
    pub(crate) fn new(tensor: LlamaTensor, matrix: Matrix<'a>, file: &'a Arc<LoadedGlint>) -> Self {
        Self {
            tensor,
            matrix,
            file,
        }
    }

    /// Which tensor of the model it is.
    pub fn tensor(&self) -> LlamaTensor {
        self.tensor
    }

    /// The matrix.
    pub fn matrix(&self) -> Matrix<'a> {
        self.matrix
    }

    /// The loaded file the matrix lies in.
    pub fn file(&self) -> &'a Arc<LoadedGlint> {
        self.file
    }
}

/// Why a backend could not prepare a weight, a cache or a scratch.
#[derive(Clone, Debug, thiserror::Error, PartialEq, Eq)]
pub enum BackendError {
    /// The backend cannot run this model or setting.
    #[error("unsupported: {0}")]
    Unsupported(String),
    /// More threads were asked for than the CPU backend accepts
    /// ([`cpu::MAX_THREADS_PER_CORE`] per core this process may run on).
    #[error(
        "{requested} threads requested, at most {max} accepted ({cores} cores available to this process)"
    )]
    TooManyThreads {
        /// Threads asked for.
        requested: usize,
        /// Cores this process may run on ([`cpu::available_cores`]).
        cores: usize,
        /// The most accepted.
        max: usize,
    },
    /// No GPU adapter (of the name asked for) exists, or none is built in (a build
    /// without the `gpu` feature): the caller may run on the CPU instead.
    #[error("no GPU: {0}")]
    NoGpu(String),
    /// An allocation failed.
    #[error("out of memory: {what} needs {bytes} bytes")]
    OutOfMemory {
        /// What was being allocated.
        what: &'static str,
        /// Bytes asked for.
        bytes: u64,
    },
}

/// What every KV cache tells: positions filled and available, and its size.
pub trait KvStore {
    /// Positions filled.
    fn len(&self) -> usize;
    /// Positions it can hold.
    fn capacity(&self) -> usize;
    /// True when no position is filled.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Forgets positions from `len` on (e.g. to re-run a changed suffix).
    fn truncate(&mut self, len: usize);
    /// Marks `n` more positions as filled (after a forward pass appended them).
    fn commit(&mut self, n: usize);
    /// The element type.
    fn kv_type(&self) -> KvType;
    /// Bytes allocated.
    fn bytes(&self) -> u64;
}

/// What every scratch tells: its sizes.
pub trait ScratchInfo {
    /// The sizes it was made with.
    fn size(&self) -> ScratchSize;
    /// Bytes allocated.
    fn bytes(&self) -> u64;
}

/// The operations of a Llama forward pass on one kind of hardware. Each operation
/// works on the first `n` tokens of a batch in [`Backend::Scratch`]; the cache's new
/// positions are `cache.len()..cache.len() + n` until [`KvStore::commit`].
pub trait Backend: Send + Sync + Sized {
    /// A weight matrix, ready for [`Backend::project`] and [`Backend::embed`].
    type Weight: Send + Sync;
    /// A small f32 vector: a norm's weights, a bias, RoPE frequencies.
    type Vector: Send + Sync;
    /// Keys and values of every layer.
    type Cache: KvStore + Send;
    /// The activations of a batch.
    type Scratch: ScratchInfo + Send;

    /// What runs, for `glint info` and benches (e.g. `cpu avx512, int8, 2 threads`).
    fn describe(&self) -> String;
    /// Prepares a weight matrix.
    fn weight(&self, w: WeightSource<'_>) -> Result<Self::Weight, BackendError>;
    /// Prepares a vector.
    fn vector(&self, v: &[f32]) -> Result<Self::Vector, BackendError>;
    /// A cache of `kv` elements for `capacity` positions of `shape`'s model.
    fn cache(
        &self,
        shape: &ModelShape,
        capacity: usize,
        kv: KvType,
    ) -> Result<Self::Cache, BackendError>;
    /// Activation buffers of `size` for `shape`'s model.
    fn scratch(&self, shape: &ModelShape, size: ScratchSize)
    -> Result<Self::Scratch, BackendError>;
    /// Bytes [`Backend::scratch`] allocates for `size` (`u64::MAX` if it could not be
    /// allocated at all): planned before allocating, for the memory budget.
    fn scratch_bytes(&self, shape: &ModelShape, size: ScratchSize) -> u64;

    /// `X[i] = table[tokens[i]]`.
    fn embed(&self, s: &mut Self::Scratch, table: &Self::Weight, tokens: &[u32]);
    /// The RoPE angles of positions `pos0..pos0 + n` from the inverse frequencies,
    /// used by every later [`Backend::rope`] of this batch.
    fn rope_angles(&self, s: &mut Self::Scratch, inv_freq: &Self::Vector, pos0: usize, n: usize);
    /// `out[j] = rmsnorm(input[rows.start + j]) * weight` for `j < rows.len()`.
    fn rms_norm(
        &self,
        s: &mut Self::Scratch,
        input: Act,
        rows: Range<usize>,
        weight: &Self::Vector,
        out: Act,
    );
    /// `out_j = W_j input` for `n` rows and each `(W_j, out_j)` (at most 3, all with
    /// `input`'s width as columns; outputs distinct from each other and from `input`).
    fn project(&self, s: &mut Self::Scratch, input: Act, n: usize, outs: &[(&Self::Weight, Act)]);
    /// `a[i] += bias` for `n` rows.
    fn add_bias(&self, s: &mut Self::Scratch, a: Act, n: usize, bias: &Self::Vector);
    /// Rotates every head of `Q` and `K` (`n` rows) by their positions' angles.
    fn rope(&self, s: &mut Self::Scratch, n: usize);
    /// Stores `K` and `V` (`n` rows) as layer `layer`'s new positions. (The scratch is
    /// mutable because a backend that records commands, the GPU's, keeps them there.)
    fn append_kv(&self, cache: &mut Self::Cache, layer: usize, s: &mut Self::Scratch, n: usize);
    /// `Att` = causal grouped-query attention of `Q` (`n` rows, the new positions) over
    /// layer `layer`'s cached positions up to each.
    fn attention(&self, cache: &Self::Cache, layer: usize, s: &mut Self::Scratch, n: usize);
    /// `Gate = silu(Gate) * Up` for `n` rows.
    fn swiglu(&self, s: &mut Self::Scratch, n: usize);
    /// `into += from` for `n` rows (the residual connection).
    fn add(&self, s: &mut Self::Scratch, into: Act, from: Act, n: usize);

    /// [`Backend::rope`], then [`Backend::append_kv`]: the rotated keys and the values
    /// of `n` rows become layer `layer`'s new positions. One operation, so a backend that
    /// pays per operation (a GPU, per dispatch) can do both in one.
    fn rope_append_kv(
        &self,
        cache: &mut Self::Cache,
        layer: usize,
        s: &mut Self::Scratch,
        n: usize,
    ) {
        self.rope(s, n);
        self.append_kv(cache, layer, s, n);
    }
    /// `Gate = silu(W_gate input) * W_up input` for `n` rows: [`Backend::project`] into
    /// `Gate` and `Up`, then [`Backend::swiglu`]. Afterwards `Up` holds the up projection
    /// or what it held before (a fused kernel never writes it).
    fn project_swiglu(
        &self,
        s: &mut Self::Scratch,
        input: Act,
        n: usize,
        gate: &Self::Weight,
        up: &Self::Weight,
    ) {
        self.project(s, input, n, &[(gate, Act::Gate), (up, Act::Up)]);
        self.swiglu(s, n);
    }
    /// `X += W input` for `n` rows (a projection joining the residual stream):
    /// [`Backend::project`] into `Xn`, then [`Backend::add`]. Afterwards `Xn` holds the
    /// projection or what it held before (a fused kernel adds in place).
    fn project_residual(&self, s: &mut Self::Scratch, input: Act, n: usize, w: &Self::Weight) {
        self.project(s, input, n, &[(w, Act::Xn)]);
        self.add(s, Act::X, Act::Xn, n);
    }
    /// [`Backend::rms_norm`] of `norm`'s rows into `Xn`, then `p` over them: the
    /// normalised input of a block's attention or feed-forward, or of the head. One
    /// operation, so a GPU can normalise as it reads (no dispatch, no `Xn` written);
    /// afterwards `Xn` holds the normalised rows or what it held before.
    fn norm_project(
        &self,
        s: &mut Self::Scratch,
        norm: NormInput<'_, Self::Vector>,
        p: Projection<'_, Self::Weight>,
    ) {
        let n = norm.rows.len();
        self.rms_norm(s, norm.input, norm.rows, norm.weight, Act::Xn);
        p.run(self, s, Act::Xn, n);
    }
    /// The logits written by the last forward pass: `[rows][vocab]`.
    fn logits<'s>(&self, s: &'s mut Self::Scratch) -> &'s [f32];
    /// The index of the largest logit (the first of equals) of the last forward pass,
    /// on a scratch that keeps the last token's logits only: greedy decoding. A GPU
    /// computes it where the logits are, so 4 bytes come back instead of the vocabulary.
    /// `None` when a logit is NaN or infinite (broken weights).
    fn argmax(&self, s: &mut Self::Scratch) -> Option<u32> {
        let logits = self.logits(s);
        logits
            .iter()
            .all(|l| l.is_finite())
            .then(|| crate::sampler::argmax(logits.iter().copied()))
    }

    /// Every `(logit, id)` of the last forward pass's last row whose logit is at least
    /// the `k`-th largest (ties included), in any order, into `out`, on a scratch that
    /// keeps the last token's logits only: what a sampler keeping the top k needs
    /// ([`crate::sampler::Sampler::sample_among`]). A GPU finds them where the logits are,
    /// so a few KB come back instead of the vocabulary. `false` when the backend does not
    /// narrow (this default) or cannot here (a logit not finite, too many ties): read
    /// [`Backend::logits`] instead.
    fn top_logits(&self, s: &mut Self::Scratch, k: usize, out: &mut Vec<(f32, u32)>) -> bool {
        let _ = (s, k, out);
        false
    }

    /// Copies the first `len` elements of activation `a` (rows of the width the
    /// operation that wrote them used) into `out`: how a [`crate::model::Probe`] sees
    /// the forward pass (calibration, per-layer error). A backend that cannot hand its
    /// activations out keeps this default, which refuses.
    /// Takes the scratch mutably: a GPU finishes the recorded work before reading back.
    fn read_act(
        &self,
        s: &mut Self::Scratch,
        a: Act,
        len: usize,
        out: &mut Vec<f32>,
    ) -> Result<(), BackendError> {
        let _ = (s, a, len, out);
        Err(BackendError::Unsupported(format!(
            "reading activations back ({})",
            self.describe()
        )))
    }

    /// Overwrites the first `data.len()` elements of activation `a`: a probe replacing
    /// a block's input. The default refuses, as [`Backend::read_act`]'s.
    fn write_act(&self, s: &mut Self::Scratch, a: Act, data: &[f32]) -> Result<(), BackendError> {
        let _ = (s, a, data);
        Err(BackendError::Unsupported(format!(
            "writing activations ({})",
            self.describe()
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use glint_format::BlockTensor;

    #[test]
    fn mixed_precision_keeps_the_first_blocks_exact() {
        let q = |i| LlamaTensor::Block(i, BlockTensor::AttnQ);
        let down = |i| LlamaTensor::Block(i, BlockTensor::FfnDown);
        for p in [Precision::Exact, Precision::Int8, Precision::Mixed] {
            assert_eq!(Precision::from_name(p.name()), Some(p));
        }
        assert!(!Precision::Exact.int8_activations(q(5)));
        assert!(Precision::Int8.int8_activations(q(0)));
        let m = Precision::Mixed;
        assert!(!m.int8_activations(q(0)) && !m.int8_activations(down(1)));
        assert!(m.int8_activations(q(Precision::EXACT_BLOCKS)));
        assert!(m.int8_activations(down(29)));
        assert!(m.int8_activations(LlamaTensor::TokenEmbd));
        assert!(m.int8_activations(LlamaTensor::Output));
    }
}
