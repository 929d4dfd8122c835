//! The Llama recipe, in one file, over any [`Backend`] (after llama-burn's
//! `TransformerBlock::forward` and candle's `quantized_llama.rs`): embed, then per
//! block RMSNorm, attention with RoPE over the KV cache, residual, RMSNorm, SwiGLU
//! feed-forward, residual; then the final norm and the output head.
//!
//! The weights are resolved once at load into the backend's typed handles (the CPU
//! backend's point into the mapped file: nothing is copied but the norm vectors). Prompt
//! tokens go through in batches ([`Model::prefill`]); decoding is the batch of one.

use crate::backend::{
    Act, Backend, BackendError, CpuBackend, KvStore, KvType, ModelShape, NormInput, Projection,
    ScratchInfo, ScratchSize, WeightSource,
};
use glint_format::{BlockTensor, GlintFile, LlamaTensor, LoadedGlint, ModelConfig, OpenError};
use std::fs::File;
use std::ops::{ControlFlow, Range};
use std::path::PathBuf;
use std::sync::Arc;

/// Why a model could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The bytes could not be mapped or are not a valid `.glint` file.
    #[error(transparent)]
    Open(#[from] OpenError),
    /// The file is valid but this runtime cannot run it.
    #[error("unsupported model: {0}")]
    Unsupported(String),
    /// The backend could not take the model.
    #[error(transparent)]
    Backend(#[from] BackendError),
}

/// Why a forward pass was refused (nothing ran).
#[derive(Clone, Debug, thiserror::Error, PartialEq, Eq)]
pub enum ForwardError {
    /// No tokens.
    #[error("no tokens to run")]
    Empty,
    /// More tokens than the scratch's batch.
    #[error("{tokens} tokens exceed the batch of {batch}")]
    BatchTooLarge {
        /// Tokens given.
        tokens: usize,
        /// The scratch's batch.
        batch: usize,
    },
    /// The cache cannot hold the tokens.
    #[error("{tokens} tokens do not fit: {used} of {capacity} positions are used")]
    ContextFull {
        /// Tokens given.
        tokens: usize,
        /// Positions already filled.
        used: usize,
        /// The cache's capacity.
        capacity: usize,
    },
    /// The scratch attends over fewer positions than the cache holds.
    #[error("the scratch is sized for {scratch} positions, the cache for {cache}")]
    ScratchTooSmall {
        /// The scratch's capacity.
        scratch: usize,
        /// The cache's capacity.
        cache: usize,
    },
    /// A token id is not in the vocabulary.
    #[error("token id {0} is outside the vocabulary")]
    BadToken(u32),
    /// A [`Probe`] was given but the backend cannot read or write its activations
    /// (the forward stopped part-way; its positions were not committed).
    #[error("cannot probe the forward pass: {0}")]
    Probe(BackendError),
}

/// A point of the forward pass where a [`Probe`] sees an activation, one row per token
/// of the batch.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Tap {
    /// The residual stream entering block `i`; `i == n_layers`: leaving the last block
    /// (before the final norm). Rows of `dim`.
    Residual(usize),
    /// The normalised input of block `i`'s Q, K and V projections. Rows of `dim`.
    AttnInput(usize),
    /// The attention's output, the input of block `i`'s output projection. Rows of
    /// `n_heads * head_dim`.
    AttnOutput(usize),
    /// The normalised input of block `i`'s gate and up projections. Rows of `dim`.
    FfnInput(usize),
    /// SwiGLU's output, the input of block `i`'s down projection. Rows of `ffn_dim`.
    DownInput(usize),
    /// The normalised final residual, the head's input: the rows whose logits are kept
    /// (every token's, or the last one's). Rows of `dim`.
    HeadInput,
}

/// Sees (and may replace) activations of [`Model::forward_probed`]: calibration
/// collects the inputs of every matrix, evaluation feeds a block the reference's input.
pub trait Probe {
    /// Whether [`Probe::visit`] wants `tap` (activations are copied only then).
    fn wants(&self, tap: Tap) -> bool;
    /// `rows` holds the activation at `tap`, `rows.len() / width` rows of `width`.
    /// Returns true when it changed them: the forward pass then goes on with `rows`.
    fn visit(&mut self, tap: Tap, rows: &mut [f32], width: usize) -> bool;
}

/// The probe of an unprobed forward pass: wants nothing.
struct NoProbe;

impl Probe for NoProbe {
    fn wants(&self, _: Tap) -> bool {
        false
    }

    fn visit(&mut self, _: Tap, _: &mut [f32], _: usize) -> bool {
        false
    }
}

/// Where a model's bytes come from.
#[derive(Debug)]
pub enum ModelSource {
    /// A file, memory-mapped whole. The file must not be truncated or rewritten in place
    /// while the model lives (see `LoadedGlint::open`); replace it with a rename.
    Path(PathBuf),
    /// A file read whole into memory (llama.cpp's `--no-mmap`): the model no longer
    /// depends on the file, for the weights' size in resident memory.
    ReadIntoMemory(PathBuf),
    /// A range of an open file, memory-mapped: a model stored inside an APK, or a
    /// `ParcelFileDescriptor` with an offset and a length.
    FileRange {
        /// The open file (the mapping outlives it).
        file: File,
        /// First byte of the model.
        offset: u64,
        /// Bytes of the model.
        len: u64,
    },
    /// Bytes in memory (tests, flash images, the emulator).
    Bytes(Arc<[u8]>),
}

impl From<PathBuf> for ModelSource {
    fn from(p: PathBuf) -> Self {
        ModelSource::Path(p)
    }
}

impl From<&std::path::Path> for ModelSource {
    fn from(p: &std::path::Path) -> Self {
        ModelSource::Path(p.to_path_buf())
    }
}

impl From<&PathBuf> for ModelSource {
    fn from(p: &PathBuf) -> Self {
        ModelSource::Path(p.clone())
    }
}

impl From<&str> for ModelSource {
    fn from(p: &str) -> Self {
        ModelSource::Path(p.into())
    }
}

impl From<Arc<[u8]>> for ModelSource {
    fn from(b: Arc<[u8]>) -> Self {
        ModelSource::Bytes(b)
    }
}

impl From<Vec<u8>> for ModelSource {
    fn from(b: Vec<u8>) -> Self {
        ModelSource::Bytes(b.into())
    }
}

impl ModelSource {
    /// Maps (or takes) and validates the bytes. Costs O(header).
    pub fn open(self) -> Result<LoadedGlint, OpenError> {
        match self {
            ModelSource::Path(p) => LoadedGlint::open(p),
            ModelSource::ReadIntoMemory(p) => LoadedGlint::read(p),
            ModelSource::FileRange { file, offset, len } => {
                LoadedGlint::open_range(&file, offset, len, &format!("file range {offset}+{len}"))
            }
            ModelSource::Bytes(b) => LoadedGlint::from_shared(b, "<memory>"),
        }
    }
}

/// One transformer block's weights.
struct Block<B: Backend> {
    attn_norm: B::Vector,
    q: B::Weight,
    k: B::Weight,
    v: B::Weight,
    /// Q, K and V biases (Qwen2).
    qkv_bias: Option<[B::Vector; 3]>,
    o: B::Weight,
    ffn_norm: B::Vector,
    gate: B::Weight,
    up: B::Weight,
    down: B::Weight,
}

/// Every weight of the model, as the backend's handles.
struct Weights<B: Backend> {
    token_embd: B::Weight,
    blocks: Vec<Block<B>>,
    output_norm: B::Vector,
    /// `None` with tied embeddings: the head is `token_embd`.
    output: Option<B::Weight>,
    /// RoPE inverse frequencies, one per rotated pair, with rope scaling applied.
    inv_freq: B::Vector,
}

/// A loaded model on a backend. Immutable after load, so one model serves any number
/// of sessions and threads.
pub struct Model<B: Backend = CpuBackend> {
    backend: B,
    file: Arc<LoadedGlint>,
    config: ModelConfig,
    shape: ModelShape,
    weights: Weights<B>,
}

impl<B: Backend> Model<B> {
    /// Opens `source` and hands every weight to `backend`. Costs O(header) plus what
    /// the backend does with the weights (the CPU uses them in place).
    pub fn load(source: impl Into<ModelSource>, backend: B) -> Result<Self, LoadError> {
        let file = Arc::new(source.into().open()?);
        let f = file.file();
        let config = *f.config();
        let tensor = |t: LlamaTensor| {
            // The parser checked the tensor set and shapes against the config.
            let name = t.name();
            f.tensor(&name)
                .ok_or_else(|| LoadError::Unsupported(format!("missing tensor {name}")))
                .map(|x| (name, x))
        };
        let weight = |t: LlamaTensor| -> Result<B::Weight, LoadError> {
            let (name, x) = tensor(t)?;
            let m = x
                .matrix()
                .map_err(|e| LoadError::Unsupported(format!("{name}: {e}")))?;
            Ok(backend.weight(WeightSource::new(t, m, &file))?)
        };
        let vector = |t: LlamaTensor| -> Result<B::Vector, LoadError> {
            let (name, x) = tensor(t)?;
            let v = x
                .to_f32_vec()
                .map_err(|e| LoadError::Unsupported(format!("{name}: {e}")))?;
            Ok(backend.vector(&v)?)
        };
        let blocks = (0..config.n_layers)
            .map(|i| {
                let b = |t| LlamaTensor::Block(i, t);
                use BlockTensor::*;
                Ok(Block {
                    attn_norm: vector(b(AttnNorm))?,
                    q: weight(b(AttnQ))?,
                    k: weight(b(AttnK))?,
                    v: weight(b(AttnV))?,
                    qkv_bias: match config.qkv_bias {
                        true => Some([
                            vector(b(AttnQBias))?,
                            vector(b(AttnKBias))?,
                            vector(b(AttnVBias))?,
                        ]),
                        false => None,
                    },
                    o: weight(b(AttnOutput))?,
                    ffn_norm: vector(b(FfnNorm))?,
                    gate: weight(b(FfnGate))?,
                    up: weight(b(FfnUp))?,
                    down: weight(b(FfnDown))?,
                })
            })
            .collect::<Result<Vec<_>, LoadError>>()?;
        let weights = Weights {
            token_embd: weight(LlamaTensor::TokenEmbd)?,
            blocks,
            output_norm: vector(LlamaTensor::OutputNorm)?,
            output: match config.tied_embeddings {
                true => None,
                false => Some(weight(LlamaTensor::Output)?),
            },
            inv_freq: backend.vector(&rope_inv_freq(&config))?,
        };
        Ok(Self {
            backend,
            shape: ModelShape::new(&config),
            file,
            config,
            weights,
        })
    }

    /// The backend.
    pub fn backend(&self) -> &B {
        &self.backend
    }

    /// The model's config.
    pub fn config(&self) -> &ModelConfig {
        &self.config
    }

    /// Every size the forward pass uses.
    pub fn shape(&self) -> &ModelShape {
        &self.shape
    }

    /// The validated file.
    pub fn file(&self) -> &GlintFile<'_> {
        self.file.file()
    }

    /// A KV cache of `kv` elements for `capacity` positions.
    pub fn cache(&self, capacity: usize, kv: KvType) -> Result<B::Cache, BackendError> {
        self.backend.cache(&self.shape, capacity, kv)
    }

    /// Activation buffers for batches of up to `batch` tokens over a cache of
    /// `capacity` positions; with `all_logits`, the logits of every token of a batch
    /// are kept (perplexity), else of the last.
    pub fn scratch(
        &self,
        batch: usize,
        capacity: usize,
        all_logits: bool,
    ) -> Result<B::Scratch, BackendError> {
        let size = ScratchSize {
            batch,
            capacity,
            all_logits,
        };
        self.backend.scratch(&self.shape, size)
    }

    /// Bytes [`Model::scratch`] allocates for the same arguments, without allocating.
    pub fn scratch_bytes(&self, batch: usize, capacity: usize, all_logits: bool) -> u64 {
        let size = ScratchSize {
            batch,
            capacity,
            all_logits,
        };
        self.backend.scratch_bytes(&self.shape, size)
    }

    /// Bytes of the model kept resident while it runs: the whole file (mapped or in
    /// memory; every matrix is read per token) and the f32 vectors made from it.
    pub fn resident_bytes(&self) -> u64 {
        let c = &self.config;
        let per_layer = 2 * c.dim as u64
            + if c.qkv_bias {
                (c.n_heads as u64 + 2 * c.n_kv_heads as u64) * c.head_dim as u64
            } else {
                0
            };
        let vectors = (c.n_layers as u64 * per_layer + c.dim as u64 + c.head_dim as u64 / 2) * 4;
        self.file.file().file_len() + vectors
    }

    /// Bytes of weights read to decode one token (every matrix once, one embedding row).
    pub fn weight_bytes_per_token(&self) -> u64 {
        let f = self.file.file();
        let all: u64 = f.tensors().iter().map(|t| t.bytes.len() as u64).sum();
        let embd = f
            .tensor(&LlamaTensor::TokenEmbd.name())
            .map_or(0, |t| t.bytes.len() as u64);
        let per_row = embd / self.config.vocab_size.max(1) as u64;
        if self.config.tied_embeddings {
            all + per_row
        } else {
            all - embd + per_row
        }
    }

    /// Runs `tokens` at positions `cache.len()..` through the model, appending their
    /// keys and values to `cache`. Afterwards [`Model::logits`] holds the logits of the
    /// last token, or, when `s` keeps all logits, of every token (`[n][vocab]`).
    pub fn forward(
        &self,
        tokens: &[u32],
        cache: &mut B::Cache,
        s: &mut B::Scratch,
    ) -> Result<(), ForwardError> {
        self.run(tokens, cache, s, &mut NoProbe)
    }

    /// [`Model::forward`], showing `probe` the activations at every [`Tap`] it wants
    /// (and going on with the rows it replaces). Needs a backend that implements
    /// [`Backend::read_act`] (and [`Backend::write_act`] for replacing).
    pub fn forward_probed(
        &self,
        tokens: &[u32],
        cache: &mut B::Cache,
        s: &mut B::Scratch,
        probe: &mut dyn Probe,
    ) -> Result<(), ForwardError> {
        self.run(tokens, cache, s, probe)
    }

    /// The forward pass, probed or not.
    fn run(
        &self,
        tokens: &[u32],
        cache: &mut B::Cache,
        s: &mut B::Scratch,
        probe: &mut dyn Probe,
    ) -> Result<(), ForwardError> {
        self.check(tokens, cache, s)?;
        let (b, w, n) = (&self.backend, &self.weights, tokens.len());
        b.embed(s, &w.token_embd, tokens);
        b.rope_angles(s, &w.inv_freq, cache.len(), n);
        for (layer, blk) in w.blocks.iter().enumerate() {
            self.tap(probe, s, Tap::Residual(layer), Act::X, n)?;
            // Attention: x += Wo attend(rope(Wq xn), rope(Wk xn), Wv xn), xn = norm(x).
            let qkv = [(&blk.q, Act::Q), (&blk.k, Act::K), (&blk.v, Act::V)];
            let attn_in = NormInput {
                input: Act::X,
                rows: 0..n,
                weight: &blk.attn_norm,
            };
            self.norm_project(
                probe,
                s,
                Tap::AttnInput(layer),
                attn_in,
                Projection::Into(&qkv),
            )?;
            if let Some([bq, bk, bv]) = &blk.qkv_bias {
                b.add_bias(s, Act::Q, n, bq);
                b.add_bias(s, Act::K, n, bk);
                b.add_bias(s, Act::V, n, bv);
            }
            b.rope_append_kv(cache, layer, s, n);
            b.attention(cache, layer, s, n);
            self.tap(probe, s, Tap::AttnOutput(layer), Act::Att, n)?;
            b.project_residual(s, Act::Att, n, &blk.o);
            // Feed-forward: x += Wdown (silu(Wgate xn) * Wup xn), xn = norm(x).
            let ffn_in = NormInput {
                input: Act::X,
                rows: 0..n,
                weight: &blk.ffn_norm,
            };
            let swiglu = Projection::Swiglu {
                gate: &blk.gate,
                up: &blk.up,
            };
            self.norm_project(probe, s, Tap::FfnInput(layer), ffn_in, swiglu)?;
            self.tap(probe, s, Tap::DownInput(layer), Act::Gate, n)?;
            b.project_residual(s, Act::Gate, n, &blk.down);
        }
        self.tap(probe, s, Tap::Residual(w.blocks.len()), Act::X, n)?;
        cache.commit(n);
        // Logits: of every token, or of the last only (one row of the head, not n).
        let rows: Range<usize> = if s.size().all_logits { 0..n } else { n - 1..n };
        let head = [(w.output.as_ref().unwrap_or(&w.token_embd), Act::Logits)];
        let head_in = NormInput {
            input: Act::X,
            rows,
            weight: &w.output_norm,
        };
        self.norm_project(probe, s, Tap::HeadInput, head_in, Projection::Into(&head))
    }

    /// `norm`'s rows normalised, then projected by `p`: one backend operation
    /// ([`Backend::norm_project`], fused on a GPU), unless `probe` wants to see (or
    /// replace) the normalised rows at `tap` in between.
    fn norm_project(
        &self,
        probe: &mut dyn Probe,
        s: &mut B::Scratch,
        tap: Tap,
        norm: NormInput<'_, B::Vector>,
        p: Projection<'_, B::Weight>,
    ) -> Result<(), ForwardError> {
        let b = &self.backend;
        if !probe.wants(tap) {
            b.norm_project(s, norm, p);
            return Ok(());
        }
        let n = norm.rows.len();
        b.rms_norm(s, norm.input, norm.rows, norm.weight, Act::Xn);
        self.tap(probe, s, tap, Act::Xn, n)?;
        p.run(b, s, Act::Xn, n);
        Ok(())
    }

    /// Shows `probe` the first `rows` rows of `act` at `tap`, if it wants them, and
    /// writes back what it changed.
    fn tap(
        &self,
        probe: &mut dyn Probe,
        s: &mut B::Scratch,
        tap: Tap,
        act: Act,
        rows: usize,
    ) -> Result<(), ForwardError> {
        if !probe.wants(tap) {
            return Ok(());
        }
        let sh = &self.shape;
        let width = match tap {
            Tap::AttnOutput(_) => sh.attn.q_dim,
            Tap::DownInput(_) => sh.ffn_dim,
            Tap::Residual(_) | Tap::AttnInput(_) | Tap::FfnInput(_) | Tap::HeadInput => sh.dim,
        };
        let len = rows * width;
        let mut rows = Vec::with_capacity(len);
        self.backend
            .read_act(s, act, len, &mut rows)
            .map_err(ForwardError::Probe)?;
        if probe.visit(tap, &mut rows, width) {
            self.backend
                .write_act(s, act, &rows)
                .map_err(ForwardError::Probe)?;
        }
        Ok(())
    }

    /// The logits the last [`Model::forward`] wrote into `s`.
    pub fn logits<'s>(&self, s: &'s mut B::Scratch) -> &'s [f32] {
        self.backend.logits(s)
    }

    /// The index of the largest logit of the last token of the last [`Model::forward`]
    /// into `s` (a scratch that keeps the last token's logits only); `None` when a logit
    /// is NaN or infinite (broken weights).
    pub fn argmax(&self, s: &mut B::Scratch) -> Option<u32> {
        self.backend.argmax(s)
    }

    /// [`Backend::top_logits`] of the last token of the last [`Model::forward`] into `s`.
    pub fn top_logits(&self, s: &mut B::Scratch, k: usize, out: &mut Vec<(f32, u32)>) -> bool {
        self.backend.top_logits(s, k, out)
    }

    /// The one prefill loop: runs `tokens` through the model in batches of `s`'s size;
    /// after each, calls `after(range, logits)` with the batch's range of `tokens` and
    /// its logits, and stops early if it breaks. Refuses (running nothing) tokens that
    /// do not fit in the cache or are outside the vocabulary.
    pub fn prefill(
        &self,
        tokens: &[u32],
        cache: &mut B::Cache,
        s: &mut B::Scratch,
        after: impl FnMut(Range<usize>, &[f32]) -> ControlFlow<()>,
    ) -> Result<ControlFlow<()>, ForwardError> {
        self.prefill_with(tokens, cache, s, &mut NoProbe, after)
    }

    /// [`Model::prefill`] with every batch run by [`Model::forward_probed`].
    pub fn prefill_probed(
        &self,
        tokens: &[u32],
        cache: &mut B::Cache,
        s: &mut B::Scratch,
        probe: &mut dyn Probe,
        after: impl FnMut(Range<usize>, &[f32]) -> ControlFlow<()>,
    ) -> Result<ControlFlow<()>, ForwardError> {
        self.prefill_with(tokens, cache, s, probe, after)
    }

    fn prefill_with(
        &self,
        tokens: &[u32],
        cache: &mut B::Cache,
        s: &mut B::Scratch,
        probe: &mut dyn Probe,
        mut after: impl FnMut(Range<usize>, &[f32]) -> ControlFlow<()>,
    ) -> Result<ControlFlow<()>, ForwardError> {
        self.check_fits(tokens, cache)?;
        let batch = s.size().batch;
        for start in (0..tokens.len()).step_by(batch) {
            let r = start..(start + batch).min(tokens.len());
            self.run(&tokens[r.clone()], cache, s, probe)?;
            if after(r, self.backend.logits(s)).is_break() {
                return Ok(ControlFlow::Break(()));
            }
        }
        Ok(ControlFlow::Continue(()))
    }

    /// The checks of [`Model::prefill`]: every token in the vocabulary, all fitting.
    fn check_fits(&self, tokens: &[u32], cache: &B::Cache) -> Result<(), ForwardError> {
        if let Some(&t) = tokens.iter().find(|&&t| t >= self.config.vocab_size) {
            return Err(ForwardError::BadToken(t));
        }
        if cache.len() + tokens.len() > cache.capacity() {
            return Err(ForwardError::ContextFull {
                tokens: tokens.len(),
                used: cache.len(),
                capacity: cache.capacity(),
            });
        }
        Ok(())
    }

    /// Everything the backend's operations assume of one forward pass.
    fn check(&self, tokens: &[u32], cache: &B::Cache, s: &B::Scratch) -> Result<(), ForwardError> {
        let size = s.size();
        if tokens.is_empty() {
            return Err(ForwardError::Empty);
        }
        if tokens.len() > size.batch {
            return Err(ForwardError::BatchTooLarge {
                tokens: tokens.len(),
                batch: size.batch,
            });
        }
        if size.capacity < cache.capacity() {
            return Err(ForwardError::ScratchTooSmall {
                scratch: size.capacity,
                cache: cache.capacity(),
            });
        }
        self.check_fits(tokens, cache)
    }
}

/// RoPE inverse frequencies `theta^(-2i/d)`, with Llama-3 scaling where configured.
fn rope_inv_freq(c: &ModelConfig) -> Vec<f32> {
    let hd = c.head_dim as usize;
    (0..hd / 2)
        .map(|i| {
            let f = 1.0 / c.rope_theta.powf(2.0 * i as f32 / hd as f32);
            c.rope_scaling.map_or(f, |s| s.scale(f))
        })
        .collect()
}
