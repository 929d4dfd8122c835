//! The CPU backend: int4/int8 kernels that dequantize on the fly ([`kernels`]), a
//! worker pool whose threads claim chunks of each operation ([`pool`]), an f32/f16/int8 [`KvCache`] and the activation
//! buffers of a batch ([`CpuScratch`]).
//!
//! Weights are used in place from the mapped file: a [`CpuWeight`] is the matrix's
//! planes inside the mapping plus a reference count on it. The kernel is a value
//! ([`CpuOptions::kernel`]): any [`Kernel::available`] one, the scalar reference
//! included, can run the model.

pub mod kernels;
mod kv;
pub mod pool;

use core::ops::Range;
use glint_format::quant::dequantize_row;
use glint_format::{LoadedGlint, Matrix};
use std::sync::Arc;

use super::{
    Act, Backend, BackendError, KvType, ModelShape, Precision, ScratchInfo, ScratchSize,
    WeightSource,
};
use kernels::{Kernel, QuantActs};
pub use kv::KvCache;
use pool::{MAX_CHUNKS, ThreadPool, split};

/// How the CPU backend runs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CpuOptions {
    /// Threads in all (the caller's included); 0: one per available core
    /// ([`available_cores`]). At most [`MAX_THREADS_PER_CORE`] per available core.
    pub threads: usize,
    /// Activations of the matrix products.
    pub precision: Precision,
    /// The kernel family; `None`: the fastest this CPU runs ([`Kernel::best`]).
    pub kernel: Option<Kernel>,
}

/// The cores this process may run on: its CPU affinity mask (`taskset`,
/// `sched_setaffinity`) and cgroup CPU quota, as [`std::thread::available_parallelism`]
/// reads them on Linux; 1 when unknown.
pub fn available_cores() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// Most threads per available core that [`CpuOptions::threads`] may ask for. Threads
/// beyond the cores only take turns on them: jobs still finish, since each thread
/// claims its chunks as it runs, but no faster; far more than that is a mistake (each
/// thread costs a stack), refused before any thread starts.
pub const MAX_THREADS_PER_CORE: usize = 4;

/// The CPU backend; see the module docs.
pub struct CpuBackend {
    kernel: Kernel,
    precision: Precision,
    pool: ThreadPool,
}

impl CpuBackend {
    /// A backend with `opts`; starts its worker threads. `Err` if the CPU cannot run
    /// the kernel asked for, if more than [`MAX_THREADS_PER_CORE`] threads per available
    /// core are asked for ([`BackendError::TooManyThreads`]) or the OS refuses the
    /// threads.
    pub fn new(opts: CpuOptions) -> Result<Self, BackendError> {
        let kernel = opts.kernel.unwrap_or_else(Kernel::best);
        if !kernel.available() {
            return Err(BackendError::Unsupported(format!(
                "this CPU cannot run the {} kernels",
                kernel.name()
            )));
        }
        let cores = available_cores();
        let max = cores.saturating_mul(MAX_THREADS_PER_CORE);
        let threads = match opts.threads {
            0 => cores,
            t if t > max => {
                return Err(BackendError::TooManyThreads {
                    requested: t,
                    cores,
                    max,
                });
            }
            t => t,
        };
        Ok(Self {
            kernel,
            precision: opts.precision,
            pool: ThreadPool::new(threads).map_err(|e| {
                BackendError::Unsupported(format!("cannot start {threads} threads: {e}"))
            })?,
        })
    }

    /// The kernel family.
    pub fn kernel(&self) -> Kernel {
        self.kernel
    }

    /// The precision of the matrix products.
    pub fn precision(&self) -> Precision {
        self.precision
    }

    /// Threads each operation runs on.
    pub fn threads(&self) -> usize {
        self.pool.threads()
    }
}

/// A weight matrix used in place: its planes inside the loaded file, which the
/// reference count keeps alive.
pub struct CpuWeight {
    /// Borrows from `_file`'s bytes (see [`CpuWeight::matrix`]).
    matrix: Matrix<'static>,
    /// Products with it quantize their activations ([`Precision::int8_activations`]).
    int8: bool,
    _file: Arc<LoadedGlint>,
}

impl CpuWeight {
    /// The matrix, for as long as the weight lives.
    pub fn matrix(&self) -> Matrix<'_> {
        self.matrix
    }
}

/// The activations of a batch, allocated once per session.
pub struct CpuScratch {
    shape: ModelShape,
    size: ScratchSize,
    /// One `[batch][width]` buffer per [`Act`] (`Logits`: one row unless `all_logits`).
    acts: [Vec<f32>; Act::ALL.len()],
    /// Attention scores: per thread, `group` rows of `capacity`.
    scores: Vec<f32>,
    /// `[batch][head_dim]`: per position, the RoPE cosines then sines.
    rope: Vec<f32>,
    /// Quantized activations for [`Precision::Int8`] and [`Precision::Mixed`].
    qa: QuantActs,
}

impl CpuScratch {
    pub(crate) fn act(&self, a: Act, n: usize) -> &[f32] {
        &self.acts[a as usize][..n * self.shape.width(a)]
    }

    pub(crate) fn act_mut(&mut self, a: Act, n: usize) -> &mut [f32] {
        let w = self.shape.width(a);
        &mut self.acts[a as usize][..n * w]
    }

    /// `into` mutably and `from` shared, `n` rows each (two distinct buffers).
    fn pair(&mut self, into: Act, from: Act, n: usize) -> (&mut [f32], &[f32]) {
        assert_ne!(into, from, "an operation's input and output must differ");
        let (wi, wf) = (self.shape.width(into), self.shape.width(from));
        let [i, f] = self
            .acts
            .get_disjoint_mut([into as usize, from as usize])
            .expect("distinct buffers");
        (&mut i[..n * wi], &f[..n * wf])
    }
}

impl ScratchInfo for CpuScratch {
    fn size(&self) -> ScratchSize {
        self.size
    }

    fn bytes(&self) -> u64 {
        let f32s: usize =
            self.acts.iter().map(Vec::len).sum::<usize>() + self.scores.len() + self.rope.len();
        f32s as u64 * 4 + self.qa.bytes()
    }
}

/// A zeroed buffer of `n` elements, or a typed error when the allocation fails. Zeroed
/// memory comes from `calloc`-style allocation, so pages are backed only once written:
/// a cache sized for the whole context but filled a little stays small.
fn zeroed<T: kv::ZeroBits>(n: usize, what: &'static str) -> Result<Vec<T>, BackendError> {
    let oom = BackendError::OutOfMemory {
        what,
        bytes: (n as u64).saturating_mul(size_of::<T>() as u64),
    };
    let layout = std::alloc::Layout::array::<T>(n).map_err(|_| oom.clone())?;
    if layout.size() == 0 {
        return Ok(Vec::new());
    }
    // SAFETY: `layout` has a non-zero size (checked above).
    let ptr = unsafe { std::alloc::alloc_zeroed(layout) }.cast::<T>();
    if ptr.is_null() {
        return Err(oom);
    }
    // SAFETY: `ptr` was allocated by the global allocator with `T`'s alignment and room
    // for exactly `n` elements (`Layout::array`), and all-zero bytes are a valid `T`
    // (`ZeroBits`), so all `n` are initialised.
    Ok(unsafe { Vec::from_raw_parts(ptr, n, n) })
}

/// Element counts of a [`CpuScratch`]: computed once for allocating it and for
/// planning its memory before allocating.
struct ScratchLens {
    /// The size with the batch clamped to the capacity.
    size: ScratchSize,
    /// Per [`Act`], in index order.
    acts: [usize; Act::ALL.len()],
    scores: usize,
    rope: usize,
    /// Widest row the int8 path quantizes.
    qa_cols: usize,
}

impl CpuBackend {
    /// The buffers' lengths for `size`, `None` when a length overflows.
    fn scratch_lens(&self, shape: &ModelShape, size: ScratchSize) -> Option<ScratchLens> {
        // More tokens per call than the cache holds could never run.
        let batch = size.batch.clamp(1, size.capacity.max(1));
        let size = ScratchSize { batch, ..size };
        let mut acts = [0; Act::ALL.len()];
        for a in Act::ALL {
            let rows = if a == Act::Logits && !size.all_logits {
                1
            } else {
                batch
            };
            acts[a as usize] = rows.checked_mul(shape.width(a))?;
        }
        Some(ScratchLens {
            size,
            acts,
            scores: (self.threads() * shape.attn.group).checked_mul(size.capacity)?,
            rope: batch.checked_mul(shape.attn.head_dim)?,
            qa_cols: shape.dim.max(shape.attn.q_dim).max(shape.ffn_dim),
        })
    }
}

impl Backend for CpuBackend {
    type Weight = CpuWeight;
    type Vector = Vec<f32>;
    type Cache = KvCache;
    type Scratch = CpuScratch;

    fn describe(&self) -> String {
        let features = Kernel::detected_features();
        format!(
            "cpu {}, {} activations, {} threads (cpu features: {})",
            self.kernel.name(),
            self.precision.name(),
            self.threads(),
            if features.is_empty() {
                "none detected".to_string()
            } else {
                features.join(" ")
            }
        )
    }

    fn weight(&self, w: WeightSource<'_>) -> Result<CpuWeight, BackendError> {
        let m = w.matrix();
        // SAFETY: `m` borrows from the bytes of `w.file()` (`WeightSource::new`'s
        // contract), which never move and live as long as any `Arc` to them: the one
        // stored next to the matrix. The `'static` view is only handed out re-borrowed
        // for `&self` (`CpuWeight::matrix`).
        let matrix = unsafe { std::mem::transmute::<Matrix<'_>, Matrix<'static>>(m) };
        Ok(CpuWeight {
            matrix,
            int8: self.precision.int8_activations(w.tensor()) && kernels::int8_supported(m.dtype),
            _file: Arc::clone(w.file()),
        })
    }

    fn vector(&self, v: &[f32]) -> Result<Vec<f32>, BackendError> {
        Ok(v.to_vec())
    }

    fn cache(
        &self,
        shape: &ModelShape,
        capacity: usize,
        kv: KvType,
    ) -> Result<KvCache, BackendError> {
        KvCache::new(shape, capacity, kv)
    }

    fn scratch(&self, shape: &ModelShape, size: ScratchSize) -> Result<CpuScratch, BackendError> {
        let too_big = BackendError::OutOfMemory {
            what: "activations",
            bytes: u64::MAX,
        };
        let lens = self.scratch_lens(shape, size).ok_or(too_big)?;
        let mut acts: [Vec<f32>; Act::ALL.len()] = Default::default();
        for (buf, &n) in acts.iter_mut().zip(&lens.acts) {
            *buf = zeroed(n, "activations")?;
        }
        Ok(CpuScratch {
            shape: *shape,
            size: lens.size,
            acts,
            scores: zeroed(lens.scores, "attention scores")?,
            rope: zeroed(lens.rope, "rope angles")?,
            qa: QuantActs::new(lens.size.batch, lens.qa_cols).map_err(|_| {
                BackendError::OutOfMemory {
                    what: "quantized activations",
                    bytes: QuantActs::bytes_for(lens.size.batch, lens.qa_cols),
                }
            })?,
        })
    }

    fn scratch_bytes(&self, shape: &ModelShape, size: ScratchSize) -> u64 {
        let Some(lens) = self.scratch_lens(shape, size) else {
            return u64::MAX;
        };
        let f32s = lens.acts.iter().sum::<usize>() as u64 + lens.scores as u64 + lens.rope as u64;
        f32s.saturating_mul(4)
            .saturating_add(QuantActs::bytes_for(lens.size.batch, lens.qa_cols))
    }

    fn embed(&self, s: &mut CpuScratch, table: &CpuWeight, tokens: &[u32]) {
        let table = table.matrix();
        let x = s.act_mut(Act::X, tokens.len());
        for (row, &t) in x.chunks_exact_mut(table.cols).zip(tokens) {
            dequantize_row(&table, t as usize, row);
        }
    }

    fn rope_angles(&self, s: &mut CpuScratch, inv_freq: &Vec<f32>, pos0: usize, n: usize) {
        let hd = s.shape.attn.head_dim;
        for (i, cs) in s.rope[..n * hd].chunks_exact_mut(hd).enumerate() {
            let (cos, sin) = cs.split_at_mut(hd / 2);
            for ((c, sn), &f) in cos.iter_mut().zip(sin).zip(inv_freq) {
                (*sn, *c) = ((pos0 + i) as f32 * f).sin_cos();
            }
        }
    }

    fn rms_norm(
        &self,
        s: &mut CpuScratch,
        input: Act,
        rows: Range<usize>,
        weight: &Vec<f32>,
        out: Act,
    ) {
        let eps = s.shape.norm_eps;
        let d = weight.len();
        let (o, x) = s.pair(out, input, rows.end);
        for (xr, or) in x[rows.start * d..]
            .chunks_exact(d)
            .zip(o.chunks_exact_mut(d))
        {
            let ss = xr.iter().map(|v| v * v).sum::<f32>() / d as f32;
            let scale = 1.0 / (ss + eps).sqrt();
            for ((o, v), w) in or.iter_mut().zip(xr).zip(weight) {
                *o = v * scale * w;
            }
        }
    }

    fn project(&self, s: &mut CpuScratch, input: Act, n: usize, outs: &[(&CpuWeight, Act)]) {
        project(self, s, input, n, outs);
    }

    fn add_bias(&self, s: &mut CpuScratch, a: Act, n: usize, bias: &Vec<f32>) {
        for row in s.act_mut(a, n).chunks_exact_mut(bias.len()) {
            add_in_place(row, bias);
        }
    }

    fn rope(&self, s: &mut CpuScratch, n: usize) {
        let attn = s.shape.attn;
        let hd = attn.head_dim;
        let CpuScratch { acts, rope, .. } = s;
        let [q, k] = acts
            .get_disjoint_mut([Act::Q as usize, Act::K as usize])
            .expect("distinct buffers");
        for i in 0..n {
            let (cos, sin) = rope[i * hd..(i + 1) * hd].split_at(hd / 2);
            for row in [
                &mut q[i * attn.q_dim..(i + 1) * attn.q_dim],
                &mut k[i * attn.kv_dim..(i + 1) * attn.kv_dim],
            ] {
                for head in row.chunks_exact_mut(hd) {
                    rotate(head, attn.rope_style, cos, sin);
                }
            }
        }
    }

    fn append_kv(&self, cache: &mut KvCache, layer: usize, s: &mut CpuScratch, n: usize) {
        cache.append(self.kernel, layer, s.act(Act::K, n), s.act(Act::V, n));
    }

    fn attention(&self, cache: &KvCache, layer: usize, s: &mut CpuScratch, n: usize) {
        let CpuScratch {
            shape,
            acts,
            scores,
            ..
        } = s;
        let [q, att] = acts
            .get_disjoint_mut([Act::Q as usize, Act::Att as usize])
            .expect("distinct buffers");
        let job = kv::AttentionJob {
            attn: &shape.attn,
            q: &q[..n * shape.attn.q_dim],
            out: &mut att[..n * shape.attn.q_dim],
            scores,
            pool: &self.pool,
            kernel: self.kernel,
        };
        cache.attend(layer, n, job);
    }

    fn swiglu(&self, s: &mut CpuScratch, n: usize) {
        let (g, u) = s.pair(Act::Gate, Act::Up, n);
        kernels::attn::silu_mul(self.kernel, g, u);
    }

    fn add(&self, s: &mut CpuScratch, into: Act, from: Act, n: usize) {
        let (i, f) = s.pair(into, from, n);
        add_in_place(i, f);
    }

    fn logits<'s>(&self, s: &'s mut CpuScratch) -> &'s [f32] {
        &s.acts[Act::Logits as usize]
    }

    fn read_act(
        &self,
        s: &mut CpuScratch,
        a: Act,
        len: usize,
        out: &mut Vec<f32>,
    ) -> Result<(), BackendError> {
        let buf = &s.acts[a as usize];
        let src = buf.get(..len).ok_or_else(|| {
            BackendError::Unsupported(format!(
                "{len} elements of {a:?}, which holds {}",
                buf.len()
            ))
        })?;
        out.clear();
        out.extend_from_slice(src);
        Ok(())
    }

    fn write_act(&self, s: &mut CpuScratch, a: Act, data: &[f32]) -> Result<(), BackendError> {
        let buf = &mut s.acts[a as usize];
        let held = buf.len();
        buf.get_mut(..data.len())
            .ok_or_else(|| {
                BackendError::Unsupported(format!(
                    "{} elements of {a:?}, which holds {held}",
                    data.len()
                ))
            })?
            .copy_from_slice(data);
        Ok(())
    }
}

/// Rotates the pairs of one head by the angles whose cosines and sines are `cos` and
/// `sin` (one per pair).
fn rotate(head: &mut [f32], style: glint_format::RopeStyle, cos: &[f32], sin: &[f32]) {
    match style {
        glint_format::RopeStyle::Interleaved => {
            for (p, (&c, &sn)) in head.chunks_exact_mut(2).zip(cos.iter().zip(sin)) {
                let (x0, x1) = (p[0], p[1]);
                p[0] = x0 * c - x1 * sn;
                p[1] = x0 * sn + x1 * c;
            }
        }
        glint_format::RopeStyle::Neox => {
            let (a, b) = head.split_at_mut(head.len() / 2);
            for (((x0, x1), &c), &sn) in a.iter_mut().zip(b).zip(cos).zip(sin) {
                let (u, w) = (*x0, *x1);
                *x0 = u * c - w * sn;
                *x1 = u * sn + w * c;
            }
        }
    }
}

fn add_in_place(x: &mut [f32], y: &[f32]) {
    x.iter_mut().zip(y).for_each(|(a, b)| *a += b);
}

/// A raw pointer that may cross to worker threads; users guarantee disjoint access.
#[derive(Clone, Copy)]
struct SyncPtr(*mut f32);

impl SyncPtr {
    /// The pointer (a method, so closures capture the whole `Sync` wrapper).
    fn get(self) -> *mut f32 {
        self.0
    }
}
// SAFETY: only used for writes to disjoint ranges, documented at each use.
unsafe impl Sync for SyncPtr {}
// SAFETY: as above.
unsafe impl Send for SyncPtr {}

/// Most matrices one [`Backend::project`] call takes.
const MAX_PROJECTIONS: usize = 3;

/// Chunks of a matrix start at multiples of this many rows: 16 f32 outputs fill a
/// 64-byte cache line (no two threads write one line), and it is a multiple of every
/// kernel's row tile (at most 8), so no chunk ends in a padded partial tile.
const ROW_ALIGN: usize = 16;

/// Chunks per thread and matrix of a projection: enough that a thread running late (or
/// not at all, on a shared CPU) leaves small pieces for the others to pick up, few
/// enough that claiming them costs nothing measurable. Measured at 2 threads (SmolLM2,
/// int8, 4 alternating rounds, decode / prefill against the static split): 1 chunk
/// 1.04 / 0.96, 2: 0.98 / 1.04, 4: 1.02 / 1.03, 8: 0.99 / 1.03, 16: 0.89 / 1.01.
const CHUNKS_PER_THREAD: usize = 4;

/// `out_j = W_j x` for `n` rows of `x` and up to 3 matrices reading the same input
/// (Q/K/V, gate/up), in one pool dispatch: the output rows of every matrix are cut into
/// chunks of whole [`ROW_ALIGN`] rows that the pool's threads claim as they go. When
/// every matrix takes int8 activations (`CpuWeight::int8`), `x` is quantized once and
/// all matrices read that.
fn project(b: &CpuBackend, s: &mut CpuScratch, input: Act, n: usize, outs: &[(&CpuWeight, Act)]) {
    assert!(
        (1..=MAX_PROJECTIONS).contains(&outs.len()),
        "1 to 3 projections"
    );
    let cols = outs[0].0.matrix.cols;
    assert!(
        cols <= s.shape.width(input),
        "input narrower than the matrix"
    );
    let mut targets = [(SyncPtr(std::ptr::null_mut()), 0usize); MAX_PROJECTIONS];
    for (j, ((w, a), t)) in outs.iter().zip(targets.iter_mut()).enumerate() {
        assert!(
            *a != input && outs[..j].iter().all(|(_, b)| b != a),
            "outputs distinct from each other and from the input"
        );
        assert_eq!(w.matrix.cols, cols, "every matrix reads the same input");
        let buf = &mut s.acts[*a as usize];
        assert!(buf.len() >= n * w.matrix.rows, "output buffer too small");
        *t = (SyncPtr(buf.as_mut_ptr()), w.matrix.rows);
    }
    let ws: [Option<Matrix<'_>>; MAX_PROJECTIONS] =
        core::array::from_fn(|j| outs.get(j).map(|(w, _)| w.matrix()));
    let x = &s.acts[input as usize][..n * cols];
    // One quantization of the input serves every output, so all or none use it.
    let quant = outs.iter().all(|(w, _)| w.int8);
    if quant {
        s.qa.quantize(b.kernel, x, n, cols);
    }
    let qa = &s.qa;
    let kernel = b.kernel;
    // Each matrix in up to `CHUNKS_PER_THREAD` chunks per thread (one chunk on a single
    // thread), one matrix after the other.
    let per_matrix = match b.threads() {
        1 => 1,
        t => t * CHUNKS_PER_THREAD,
    };
    let chunks: [usize; MAX_PROJECTIONS] = core::array::from_fn(|j| {
        ws[j].as_ref().map_or(0, |w| {
            w.rows
                .div_ceil(ROW_ALIGN)
                .min(per_matrix)
                .min(MAX_CHUNKS / MAX_PROJECTIONS)
        })
    });
    b.pool.run(chunks.iter().sum(), &|mut c, _| {
        let mut j = 0;
        while c >= chunks[j] {
            c -= chunks[j];
            j += 1;
        }
        let (Some(w), (out, ld)) = (&ws[j], targets[j]) else {
            unreachable!("chunks only for the matrices given")
        };
        let rows = split(w.rows, chunks[j], c, ROW_ALIGN);
        // SAFETY: each output holds at least `n * w.rows` elements (asserted above,
        // `ld == w.rows`) and is a buffer other than the input's; each chunk is run once
        // and writes only its own rows of it.
        unsafe {
            if quant {
                kernel.matmul_q8act_rows_raw(w, qa, rows, out.get(), ld);
            } else {
                kernel.matmul_rows_raw(w, x, n, rows, out.get(), ld);
            }
        }
    });
}
