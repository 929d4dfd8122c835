//! The GPU backend over `wgpu` (Vulkan, Metal): WGSL kernels (`wgsl/`) that read the
//! `.glint` planes as packed `u32` words from the uploaded file bytes (no f32 copy of a
//! weight exists), an f32, f16 or int8 KV cache in GPU buffers, and the activations of
//! a batch in one buffer per [`Act`].
//!
//! Every operation of [`Backend`] only records a dispatch; the forward pass's dispatches
//! go into one compute pass and one queue submit, made when the logits (or their argmax,
//! or the few largest a sampler needs: `top.wgsl`) are read back. The fused operations cut a decoded token of SmolLM2-135M from 481 to
//! 258 dispatches (8 a layer): Q, K and V in one dispatch, gate and up with SwiGLU in
//! one, the output and down projections adding into the residual stream, RoPE with the
//! KV append. Buffers are allocated once per session. Matrix products accumulate in
//! f32, at the precision of [`GpuOptions::precision`], per tensor as on the CPU
//! ([`Precision::int8_activations`]): f32 activations (`matvec.wgsl`), or int8 ones
//! (`matvec_int8.wgsl`: each workgroup quantizes its input into workgroup memory, the
//! CPU's rounding bit for bit, and dots it with `dot4I8Packed`, which wgpu 30 turns into
//! Vulkan's `OpSDot` wherever the device has `shaderIntegerDotProduct` (Vulkan 1.3) and
//! polyfills elsewhere). Quantizing in the matrix kernel keeps the dispatch count: 258 a
//! decoded token at every precision, where a quantize dispatch per input would add up
//! to 121. Where the projections with f32 activations also compute the RMSNorm of their
//! input ([`GpuOptions::fuse_norm`]: hardware GPUs), 194 at exact precision (6 a layer).
//!
//! A weight larger than the device's storage-binding limit is split by rows into chunks
//! (each its own buffer with the file's plane layout), so a large output head runs on a
//! phone GPU's 128 MiB bindings.

mod kernels;
pub mod select;
pub mod selftest;
mod start;
#[cfg(test)]
mod tests;

use super::cpu::kernels::int8_supported;
use super::{
    Act, Backend, BackendError, KvStore, KvType, ModelShape, NormInput, Precision, Projection,
    ScratchInfo, ScratchSize, WeightSource,
};
use glint_format::{BLOCK, DType, Matrix, RopeStyle, TENSOR_ALIGN};
use kernels::{Bind, Kernels, Recorder, grid, upload};
use std::ops::Range;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

pub use select::{AdapterReport, adapters};
pub use selftest::{
    Agreement, AutoChoice, AutoOptions, SelfTest, auto, cached_self_test, self_test,
};
pub use start::{PipelineCacheUse, StartReport};

/// How the GPU backend starts.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct GpuOptions {
    /// The adapter: the first whose name contains this (case-insensitive); `None`: the
    /// first hardware adapter, else the first software one (lavapipe).
    pub adapter: Option<String>,
    /// Largest weight chunk in bytes; 0: the device's storage-binding and buffer limits.
    /// (Tests set it small to exercise the split of a matrix over several buffers.)
    pub max_chunk_bytes: u64,
    /// Scales every projection's output by 1.5: a deliberately wrong kernel, so tests
    /// can show the self-test failing and `auto` falling back to the CPU.
    pub inject_fault: bool,
    /// A directory for compiled kernels (wgpu's `PipelineCache`, one file per adapter;
    /// Vulkan only): read when the device starts, written back (atomically) when
    /// compiling changed it. A missing, corrupt or foreign file is ignored. Keep it
    /// private to the application: a file forged with valid headers goes to the driver.
    /// `None`: compile every start. Kernels are compiled once per process and adapter,
    /// so only the first backend on an adapter uses it.
    pub pipeline_cache_dir: Option<std::path::PathBuf>,
    /// Whether a projection computes the RMSNorm of its input itself
    /// ([`Backend::norm_project`]: two dispatches fewer a layer, the norm staged in
    /// workgroup memory with barriers). `None`: on hardware GPUs, not on software ones:
    /// on lavapipe, which is bound by its compute and runs barriers as coroutines, it
    /// measured 0.93x decode and 0.89x prefill (`benches/README.md`).
    pub fuse_norm: Option<bool>,
    /// Whether batches of [`MATMUL_MIN_TOKENS`] or more tokens (prefill) with f32
    /// activations run the tiled `matmul.wgsl` (tiles of 32 rows x 32 tokens staged in
    /// workgroup memory) instead of `matvec.wgsl` (64 rows x 4 tokens, no staging).
    /// `None`: on hardware GPUs, not on software ones: on lavapipe it measured 0.62x
    /// prefill (`benches/README.md`).
    pub tiled_prefill: Option<bool>,
    /// Activations of the matrix products, per tensor as on the CPU
    /// ([`Precision::int8_activations`]; float matrices always exact).
    pub precision: Precision,
}

/// Dispatches and queue submits a backend made.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct WorkCounts {
    /// Compute dispatches recorded.
    pub dispatches: u64,
    /// Queue submits.
    pub submits: u64,
}

/// The GPU backend; see the module docs.
pub struct GpuBackend {
    device: wgpu::Device,
    queue: wgpu::Queue,
    info: wgpu::AdapterInfo,
    /// Compiled once per process and adapter (`start.rs`), shared.
    kernels: Arc<Kernels>,
    /// Largest weight chunk.
    max_chunk: u64,
    /// Largest buffer the device binds.
    max_binding: u64,
    fault: bool,
    /// [`GpuOptions::fuse_norm`], decided.
    fuse_norm: bool,
    /// [`GpuOptions::tiled_prefill`], decided.
    tiled_prefill: bool,
    precision: Precision,
    counts: Counters,
    /// The first error the device (shared by this process's backends on the adapter)
    /// reported outside an error scope.
    device_error: Arc<Mutex<Option<String>>>,
    start: StartReport,
}

#[derive(Default)]
struct Counters {
    dispatches: AtomicU64,
    submits: AtomicU64,
}

impl GpuBackend {
    /// A backend on the adapter `opts` names (see [`GpuOptions::adapter`]): the device
    /// and kernels this process started on that adapter, else a new device with every
    /// kernel compiled. `Err` when no adapter matches or the device cannot be created.
    pub fn new(opts: &GpuOptions) -> Result<Self, BackendError> {
        let adapter = select::pick(opts.adapter.as_deref())?;
        let (started, start) = start::shared(adapter, opts.pipeline_cache_dir.as_deref())?;
        Ok(Self::on(&started, start, opts))
    }

    /// A backend on a started device.
    fn on(started: &start::Started, start: StartReport, opts: &GpuOptions) -> Self {
        let limits = &started.limits;
        let device_max = limits
            .max_storage_buffer_binding_size
            .min(limits.max_buffer_size);
        let max_chunk = match opts.max_chunk_bytes {
            0 => device_max,
            m => m.min(device_max),
        };
        let hardware = started.info.device_type != wgpu::DeviceType::Cpu;
        Self {
            device: started.device.clone(),
            queue: started.queue.clone(),
            info: started.info.clone(),
            kernels: Arc::clone(&started.kernels),
            max_chunk,
            max_binding: device_max,
            fault: opts.inject_fault,
            fuse_norm: opts.fuse_norm.unwrap_or(hardware),
            tiled_prefill: opts.tiled_prefill.unwrap_or(hardware),
            precision: opts.precision,
            counts: Counters::default(),
            device_error: Arc::clone(&started.device_error),
            start,
        }
    }

    /// How this backend started: device and pipeline times, the pipeline cache.
    pub fn start_report(&self) -> &StartReport {
        &self.start
    }

    /// The precision of the matrix products.
    pub fn precision(&self) -> Precision {
        self.precision
    }

    /// The adapter's name, driver and driver version.
    pub fn adapter_info(&self) -> &wgpu::AdapterInfo {
        &self.info
    }

    /// Dispatches and submits so far (all sessions).
    pub fn work_counts(&self) -> WorkCounts {
        WorkCounts {
            dispatches: self.counts.dispatches.load(Ordering::Relaxed),
            submits: self.counts.submits.load(Ordering::Relaxed),
        }
    }

    /// The first error the device reported (a failed dispatch, a lost device), if any.
    pub fn device_error(&self) -> Option<String> {
        self.device_error
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Runs `f` inside an out-of-memory and validation error scope; `Err` names `what`.
    fn allocating<T>(
        &self,
        what: &'static str,
        bytes: u64,
        f: impl FnOnce() -> T,
    ) -> Result<T, BackendError> {
        let oom = self.device.push_error_scope(wgpu::ErrorFilter::OutOfMemory);
        let valid = self.device.push_error_scope(wgpu::ErrorFilter::Validation);
        let t = f();
        let v = pollster::block_on(valid.pop());
        let o = pollster::block_on(oom.pop());
        match (o, v) {
            (None, None) => Ok(t),
            (Some(_), _) => Err(BackendError::OutOfMemory { what, bytes }),
            (None, Some(e)) => Err(BackendError::Unsupported(format!("{what}: {e}"))),
        }
    }

    fn buffer(&self, label: &'static str, bytes: u64) -> Result<wgpu::Buffer, BackendError> {
        if bytes > self.max_binding {
            return Err(BackendError::OutOfMemory { what: label, bytes });
        }
        self.allocating(label, bytes, || {
            self.device.create_buffer(&wgpu::BufferDescriptor {
                label: Some(label),
                size: bytes.max(16).next_multiple_of(4),
                usage: wgpu::BufferUsages::STORAGE
                    | wgpu::BufferUsages::COPY_SRC
                    | wgpu::BufferUsages::COPY_DST,
                mapped_at_creation: false,
            })
        })
    }

    /// Submits what `s` recorded and waits for it.
    fn submit(&self, rec: &mut Recorder) {
        let before = (rec.dispatches, rec.submits);
        rec.submit(&self.device, &self.queue);
        self.count(rec, before);
    }

    fn count(&self, rec: &Recorder, before: (u64, u64)) {
        self.counts
            .dispatches
            .fetch_add(rec.dispatches - before.0, Ordering::Relaxed);
        self.counts
            .submits
            .fetch_add(rec.submits - before.1, Ordering::Relaxed);
    }

    /// Records one dispatch into `rec`, counting it (and any submit it forced).
    fn dispatch(
        &self,
        rec: &mut Recorder,
        k: &kernels::Kernel,
        params: &[u32],
        binds: &[Bind<'_>],
        groups: (u32, u32, u32),
    ) {
        let before = (rec.dispatches, rec.submits);
        rec.dispatch(&self.device, &self.queue, k, params, binds, groups);
        self.count(rec, before);
    }

    /// Copies `bytes` of `from` to a host vector (submits what is recorded first).
    fn read_back(&self, rec: &mut Recorder, from: &wgpu::Buffer, bytes: u64) -> Vec<u8> {
        let staging = self.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("read back"),
            size: bytes.max(4),
            usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        rec.copy(&self.device, from, &staging, bytes);
        self.submit(rec);
        let slice = staging.slice(..bytes);
        let done = Arc::new(Mutex::new(None));
        let flag = Arc::clone(&done);
        slice.map_async(wgpu::MapMode::Read, move |r| {
            *flag.lock().unwrap_or_else(|p| p.into_inner()) = Some(r.is_ok());
        });
        // The device is shared by every backend on the adapter: another thread's poll may
        // be the one running this callback when ours returns, so wait for the callback
        // itself (wgpu always calls it, with an error on a lost device). Reading the flag
        // right after our poll returned zeros under concurrent sessions: greedy ids and
        // perplexity (49.7 vs 18.2) went wrong in the lavapipe gates.
        let ok = loop {
            let _ = self.device.poll(wgpu::PollType::wait_indefinitely());
            if let Some(ok) = *done.lock().unwrap_or_else(|p| p.into_inner()) {
                break ok;
            }
            std::thread::yield_now();
        };
        if !ok {
            // A lost device or failed map: zeros, and `device_error` says why.
            let mut slot = self.device_error.lock().unwrap_or_else(|p| p.into_inner());
            slot.get_or_insert_with(|| "reading a result back failed".to_string());
            return vec![0; bytes as usize];
        }
        let out = match slice.get_mapped_range() {
            Ok(view) => view.to_vec(),
            Err(_) => vec![0; bytes as usize],
        };
        staging.unmap();
        out
    }
}

/// Batches of at least this many tokens run `matmul.wgsl` (tiles of 32 rows x 32
/// tokens) where [`GpuOptions::tiled_prefill`], smaller ones `matvec.wgsl` (64 rows x 4
/// tokens).
pub const MATMUL_MIN_TOKENS: usize = 8;

/// One weight chunk of a matrix kernel's dispatch (`matvec.wgsl`, `matvec_int8.wgsl`,
/// `matmul.wgsl`) and the activation its rows go to.
#[derive(Clone, Copy)]
struct Part<'a> {
    w: &'a GpuWeight,
    chunk: &'a WeightChunk,
    out: Act,
}

/// What the matrix kernels do with a result (their `mode`).
#[derive(Clone, Copy, PartialEq, Eq)]
enum MatvecMode {
    /// `y = W x`.
    Store,
    /// `y += W x`.
    Add,
    /// Parts 0 and 1 are gate and up: `y0 = silu(W0 x) * W1 x`.
    Swiglu,
}

/// Most (logit, id) pairs [`Backend::top_logits`] sends back from the GPU: a sampler's
/// top-k (llama.cpp's default 40) plus its penalised recent tokens (64 by default), with
/// room for ties.
const TOP_CAP: usize = 1024;

/// Widest rows `matvec_xnorm.wgsl` stages: its workgroup memory holds 4 tokens of 1024.
const NORM_STAGE_COLS: usize = 1024;

/// A `matvec.wgsl` dispatch's input: `n` rows of `act`, or, with a norm, the RMSNorm of
/// its rows `row0 .. row0 + n` scaled by `norm`.
struct MatvecInput<'a> {
    act: Act,
    n: usize,
    row0: usize,
    norm: Option<&'a GpuVector>,
}

impl MatvecInput<'_> {
    fn plain(act: Act, n: usize) -> Self {
        Self {
            act,
            n,
            row0: 0,
            norm: None,
        }
    }
}

impl GpuBackend {
    /// One dispatch over up to three `parts` with the same columns and the same
    /// precision: `matvec_int8.wgsl` when their products take int8 activations, else
    /// `matvec.wgsl` (`matvec_xnorm.wgsl`'s input with a norm; `matmul.wgsl` for a
    /// batch, where [`GpuOptions::tiled_prefill`]).
    fn matvec(
        &self,
        s: &mut GpuScratch,
        x: &MatvecInput<'_>,
        parts: &[Part<'_>],
        mode: MatvecMode,
    ) {
        let (input, n) = (x.act, x.n);
        assert!((1..=3).contains(&parts.len()), "one to three parts");
        let int8 = parts[0].w.int8;
        assert!(
            parts.iter().all(|p| p.w.int8 == int8),
            "parts of one precision"
        );
        let tiled = self.tiled_prefill && n >= MATMUL_MIN_TOKENS;
        // The kernel, and the rows and tokens of its workgroups.
        let (kernel, tile_rows, tile_tokens) = match (int8, x.norm, tiled) {
            (true, None, _) => (&self.kernels.matvec_int8, 64, 4),
            (false, None, true) => (&self.kernels.matmul, 32, 32),
            (false, None, false) => (&self.kernels.matvec, 64, 4),
            (false, Some(_), _) => (&self.kernels.matvec_norm, 64, 4),
            (true, Some(_), _) => unreachable!("int8 activations read a separate RMSNorm"),
        };
        let cols = parts[0].w.cols;
        assert!(
            parts.iter().all(|p| p.w.cols == cols) && cols <= s.shape.width(input),
            "parts of the input's width"
        );
        let scale = if self.fault { 1.5f32 } else { 1.0f32 };
        let mut params = vec![n as u32, cols as u32, mode as u32, scale.to_bits()];
        // Swiglu: part 1 (up) is read by part 0's threads and has no workgroups of its own.
        let own = if mode == MatvecMode::Swiglu {
            1
        } else {
            parts.len()
        };
        let mut groups = 0u32;
        for m in 0..3 {
            let Some(p) = parts.get(m) else {
                params.extend([0, 0, 0, u32::MAX, 0, 0, 0, 0, 0, 0, 0, 0]);
                continue;
            };
            let first = if m < own { groups } else { u32::MAX };
            if m < own {
                groups += p.chunk.rows.div_ceil(tile_rows) as u32;
            }
            params.extend([
                p.chunk.rows as u32,
                p.chunk.row0 as u32,
                p.w.rows as u32,
                first,
            ]);
            params.extend(p.w.view(p.chunk));
            params.extend([0; 3]);
        }
        params.extend([x.row0 as u32, s.shape.norm_eps.to_bits(), 0, 0]);

        // Absent parts: the first part's buffers, never read or written.
        let part = |m: usize| parts.get(m).unwrap_or(&parts[0]);
        let GpuScratch { rec, acts, .. } = s;
        self.dispatch(
            rec,
            kernel,
            &params,
            &[
                Bind::all(&part(0).chunk.buffer),
                Bind::all(&part(1).chunk.buffer),
                Bind::all(&part(2).chunk.buffer),
                Bind::all(&acts[input as usize]),
                Bind::all(&acts[part(0).out as usize]),
                Bind::all(&acts[part(1).out as usize]),
                Bind::all(&acts[part(2).out as usize]),
                Bind::all(x.norm.map_or(&acts[input as usize], |v| &v.buffer)),
            ],
            (groups, n.div_ceil(tile_tokens) as u32, 1),
        );
    }

    /// `parts` in dispatches of up to three of one precision (one dispatch for Q, K and V,
    /// or a split head's chunks, when their precision is the same).
    fn matvecs(
        &self,
        s: &mut GpuScratch,
        x: &MatvecInput<'_>,
        parts: &[Part<'_>],
        mode: MatvecMode,
    ) {
        let (int8, exact): (Vec<Part<'_>>, Vec<Part<'_>>) =
            parts.iter().copied().partition(|p| p.w.int8);
        for same in [exact, int8] {
            for group in same.chunks(3) {
                self.matvec(s, x, group, mode);
            }
        }
    }

    /// [`Backend::project`] of `x`: each output's chunks, three to a dispatch.
    fn project_from(&self, s: &mut GpuScratch, x: &MatvecInput<'_>, outs: &[(&GpuWeight, Act)]) {
        if outs.iter().any(|(_, a)| *a == Act::Logits) {
            s.logit_rows = x.n;
        }
        for (j, (_, a)) in outs.iter().enumerate() {
            assert!(
                *a != x.act && outs[..j].iter().all(|(_, b)| b != a),
                "outputs distinct from each other and from the input"
            );
        }
        let parts: Vec<Part<'_>> = outs
            .iter()
            .flat_map(|&(w, out)| w.chunks.iter().map(move |chunk| Part { w, chunk, out }))
            .collect();
        self.matvecs(s, x, &parts, MatvecMode::Store);
    }

    /// [`Backend::project_swiglu`] of `x`: one dispatch when gate and up are one chunk
    /// each, else the projections, then [`Backend::swiglu`].
    fn swiglu_from(
        &self,
        s: &mut GpuScratch,
        x: &MatvecInput<'_>,
        gate: &GpuWeight,
        up: &GpuWeight,
    ) {
        match (&gate.chunks[..], &up.chunks[..]) {
            ([g], [u]) if g.rows == u.rows && gate.int8 == up.int8 => {
                let parts = [
                    Part {
                        w: gate,
                        chunk: g,
                        out: Act::Gate,
                    },
                    Part {
                        w: up,
                        chunk: u,
                        out: Act::Up,
                    },
                ];
                self.matvec(s, x, &parts, MatvecMode::Swiglu);
            }
            _ => {
                self.project_from(s, x, &[(gate, Act::Gate), (up, Act::Up)]);
                self.swiglu(s, x.n);
            }
        }
    }

    /// One `rope_kv.wgsl` dispatch over heads `heads.0 .. heads.1` (Q heads, then K, then
    /// V): rotated when the range starts at a Q head, stored into `cache` when given.
    fn rope_kv(
        &self,
        cache: Option<&GpuCache>,
        layer: usize,
        s: &mut GpuScratch,
        n: usize,
        heads: (usize, usize),
    ) {
        let at = s.shape.attn;
        let (dst, kv, scales) = match &cache {
            Some(c) => {
                assert!(c.len + n <= c.capacity, "cache overflow");
                let dst = (layer * c.capacity + c.len) * c.kv_dim;
                (dst, c.kv_code(), c.scales)
            }
            None => (0, 0, 0),
        };
        let params = [
            at.q_dim as u32,
            at.kv_dim as u32,
            at.head_dim as u32,
            u32::from(at.rope_style == RopeStyle::Neox),
            s.angles,
            heads.0 as u32,
            u32::from(heads.0 < at.n_heads),
            u32::from(cache.is_some()),
            dst as u32,
            kv,
            scales,
        ];
        let data = s.rec.data_buffer();
        let GpuScratch {
            rec, acts, scores, ..
        } = s;
        // Without a cache nothing is stored: any buffer fills its bindings.
        let (kc, vc) = match &cache {
            Some(c) => (&c.k, &c.v),
            None => (&*scores, &*scores),
        };
        self.dispatch(
            rec,
            &self.kernels.rope_kv,
            &params,
            &[
                Bind::all(&data),
                Bind::all(&acts[Act::Q as usize]),
                Bind::all(&acts[Act::K as usize]),
                Bind::all(&acts[Act::V as usize]),
                Bind::all(kc),
                Bind::all(vc),
            ],
            ((heads.1 - heads.0) as u32, n as u32, 1),
        );
    }
}

/// The sizes a scratch for `size` gets (its batch clamped to the capacity), the bytes of
/// each activation buffer and of the attention scores.
fn scratch_sizes(shape: &ModelShape, size: ScratchSize) -> (ScratchSize, [u64; 9], u64) {
    let batch = size.batch.clamp(1, size.capacity.max(1));
    let size = ScratchSize { batch, ..size };
    let acts = Act::ALL.map(|a| {
        let rows = if a == Act::Logits && !size.all_logits {
            1
        } else {
            batch
        };
        (rows as u64)
            .saturating_mul(shape.width(a) as u64)
            .saturating_mul(4)
    });
    let scores = ((batch * shape.attn.n_heads) as u64)
        .saturating_mul(size.capacity as u64)
        .saturating_mul(4);
    (size, acts, scores)
}

fn f32s(raw: &[u8]) -> Vec<f32> {
    raw.chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect()
}

/// A weight matrix in GPU buffers: its rows in chunks, each with the file's plane
/// layout (values at 0, scales and mins at 256-aligned offsets after).
pub struct GpuWeight {
    dtype: DType,
    rows: usize,
    cols: usize,
    /// Its products quantize their activations to int8 (`matvec_int8.wgsl`).
    int8: bool,
    chunks: Vec<WeightChunk>,
}

struct WeightChunk {
    buffer: wgpu::Buffer,
    row0: usize,
    rows: usize,
    /// Word offsets of the scales and mins planes.
    scales: u32,
    mins: u32,
}

impl GpuWeight {
    /// The matrix's element type.
    pub fn dtype(&self) -> DType {
        self.dtype
    }

    /// Whether its products take int8 activations (the precision asks for them for this
    /// tensor and it is block-quantized).
    pub fn int8(&self) -> bool {
        self.int8
    }

    /// Row chunks it is stored in.
    pub fn chunks(&self) -> usize {
        self.chunks.len()
    }

    /// Parameter words describing chunk `c` for `weight.wgsl`'s `WeightView`:
    /// dtype, cols, group, scales, mins.
    fn view(&self, c: &WeightChunk) -> [u32; 5] {
        [
            self.dtype as u32,
            self.cols as u32,
            self.dtype.group().unwrap_or(1) as u32,
            c.scales,
            c.mins,
        ]
    }
}

/// Bytes of each plane for `rows` rows of `m`: values, scales, mins.
fn plane_bytes(m: &Matrix<'_>, rows: usize) -> [usize; 3] {
    let per_row = |plane: &[u8]| plane.len() / m.rows.max(1);
    [
        per_row(m.values) * rows,
        per_row(m.scales) * rows,
        per_row(m.mins) * rows,
    ]
}

/// The byte layout of a chunk of `rows` rows: offsets of the scales and mins planes and
/// the total.
fn chunk_layout(m: &Matrix<'_>, rows: usize) -> (usize, usize, usize) {
    let [v, s, mn] = plane_bytes(m, rows);
    let s_at = v.next_multiple_of(TENSOR_ALIGN as usize);
    match mn {
        // No mins plane: it is the empty range at the end.
        0 => (s_at, s_at + s, s_at + s),
        _ => {
            let m_at = (s_at + s).next_multiple_of(TENSOR_ALIGN as usize);
            (s_at, m_at, m_at + mn)
        }
    }
}

/// A small f32 vector on the GPU, with a host copy (RoPE frequencies are used on the
/// host).
pub struct GpuVector {
    buffer: wgpu::Buffer,
    host: Vec<f32>,
}

/// Keys and values of every layer in two GPU buffers (`u32` words: f32 bits, two f16,
/// or four int8 followed by their blocks' f32 scales).
pub struct GpuCache {
    k: wgpu::Buffer,
    v: wgpu::Buffer,
    kv: KvType,
    /// int8: the word offset of the block scales in each buffer (after the values).
    scales: u32,
    kv_dim: usize,
    capacity: usize,
    len: usize,
}

impl GpuCache {
    /// The cache's element type as `rope_kv.wgsl` and `attention.wgsl` name it.
    fn kv_code(&self) -> u32 {
        match self.kv {
            KvType::F32 => 0,
            KvType::F16 => 1,
            KvType::Int8 => 2,
        }
    }
}

impl KvStore for GpuCache {
    fn len(&self) -> usize {
        self.len
    }
    fn capacity(&self) -> usize {
        self.capacity
    }
    fn truncate(&mut self, len: usize) {
        self.len = self.len.min(len);
    }
    fn commit(&mut self, n: usize) {
        // As the CPU's `KvCache`: `Model` refuses what does not fit before running it.
        assert!(self.len + n <= self.capacity, "cache overflow");
        self.len += n;
    }
    fn kv_type(&self) -> KvType {
        self.kv
    }
    fn bytes(&self) -> u64 {
        self.k.size() + self.v.size()
    }
}

/// The activations of a batch in GPU buffers, allocated once per session, with the
/// recorder of the commands not yet submitted and the host copy of the logits.
pub struct GpuScratch {
    shape: ModelShape,
    size: ScratchSize,
    acts: [wgpu::Buffer; Act::ALL.len()],
    /// Attention scores: `[batch][n_heads][capacity]`.
    scores: wgpu::Buffer,
    argmax: wgpu::Buffer,
    /// `top.wgsl`'s result: a count, then up to [`TOP_CAP`] (logit, id) pairs.
    top: wgpu::Buffer,
    rec: Recorder,
    /// Word offset of this batch's RoPE angles in the recorder's data buffer.
    angles: u32,
    /// Rows of logits the last forward wrote.
    logit_rows: usize,
    logits: Vec<f32>,
}

impl ScratchInfo for GpuScratch {
    fn size(&self) -> ScratchSize {
        self.size
    }

    fn bytes(&self) -> u64 {
        self.acts.iter().map(|b| b.size()).sum::<u64>() + self.scores.size()
    }
}

impl Backend for GpuBackend {
    type Weight = GpuWeight;
    type Vector = GpuVector;
    type Cache = GpuCache;
    type Scratch = GpuScratch;

    fn describe(&self) -> String {
        format!(
            "gpu {} ({:?}, {:?}, driver {} {}), {} activations",
            self.info.name,
            self.info.backend,
            self.info.device_type,
            self.info.driver,
            self.info.driver_info,
            self.precision.name()
        )
    }

    fn weight(&self, w: WeightSource<'_>) -> Result<GpuWeight, BackendError> {
        let m = w.matrix();
        if m.dtype == DType::F16 && !m.cols.is_multiple_of(2) {
            return Err(BackendError::Unsupported(format!(
                "an f16 matrix with an odd row length ({})",
                m.cols
            )));
        }
        let whole = chunk_layout(&m, m.rows).2 as u64;
        let [vr, sr, mr] = plane_bytes(&m, 1);
        // Rows per chunk: all, or as many as fit with the planes' alignment padding.
        let rows_per_chunk = if whole <= self.max_chunk {
            m.rows.max(1)
        } else {
            let per_row = (vr + sr + mr) as u64;
            (self.max_chunk.saturating_sub(TENSOR_ALIGN * 2) / per_row).max(1) as usize
        };
        let mut chunks = Vec::new();
        for row0 in (0..m.rows).step_by(rows_per_chunk) {
            let rows = rows_per_chunk.min(m.rows - row0);
            let (s_at, m_at, total) = chunk_layout(&m, rows);
            // The chunk's bytes: the rows' slices of each plane, as the file lays them.
            let mut bytes = vec![0u8; total];
            bytes[..vr * rows].copy_from_slice(&m.values[vr * row0..vr * (row0 + rows)]);
            bytes[s_at..s_at + sr * rows].copy_from_slice(&m.scales[sr * row0..sr * (row0 + rows)]);
            bytes[m_at..m_at + mr * rows].copy_from_slice(&m.mins[mr * row0..mr * (row0 + rows)]);
            if total as u64 > self.max_binding {
                return Err(BackendError::Unsupported(format!(
                    "a weight row of {} bytes exceeds the device's {} byte binding",
                    total, self.max_binding
                )));
            }
            let buffer = self.allocating("weights", total as u64, || {
                upload(&self.device, "weight", &bytes)
            })?;
            chunks.push(WeightChunk {
                buffer,
                row0,
                rows,
                scales: (s_at / 4) as u32,
                mins: (m_at / 4) as u32,
            });
        }
        Ok(GpuWeight {
            dtype: m.dtype,
            rows: m.rows,
            cols: m.cols,
            // The CPU's rule: the same tensors take int8 activations on both.
            int8: self.precision.int8_activations(w.tensor()) && int8_supported(m.dtype),
            chunks,
        })
    }

    fn vector(&self, v: &[f32]) -> Result<GpuVector, BackendError> {
        let bytes: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
        let buffer = self.allocating("vector", bytes.len() as u64, || {
            upload(&self.device, "vector", &bytes)
        })?;
        Ok(GpuVector {
            buffer,
            host: v.to_vec(),
        })
    }

    fn cache(
        &self,
        shape: &ModelShape,
        capacity: usize,
        kv: KvType,
    ) -> Result<GpuCache, BackendError> {
        let hd = shape.attn.head_dim;
        if kv == KvType::Int8 && !hd.is_multiple_of(BLOCK) {
            return Err(BackendError::Unsupported(format!(
                "an int8 KV cache needs a head dimension that is a multiple of 32, not {hd}"
            )));
        }
        if !shape.attn.kv_dim.is_multiple_of(2) {
            return Err(BackendError::Unsupported(
                "the GPU backend needs an even key/value width".into(),
            ));
        }
        let elems = (shape.n_layers as u64)
            .saturating_mul(capacity as u64)
            .saturating_mul(shape.attn.kv_dim as u64);
        // Each buffer holds half of `KvType::cache_bytes` (saturating here: a huge
        // capacity is refused, not wrapped): for int8 the values, then one f32 scale per
        // 32 of them.
        let bytes = elems.saturating_mul(kv.bits()) / 8;
        let scales = match kv {
            KvType::Int8 => u32::try_from(elems / 4).map_err(|_| BackendError::OutOfMemory {
                what: "KV cache",
                bytes,
            })?,
            _ => 0,
        };
        Ok(GpuCache {
            k: self.buffer("KV cache", bytes)?,
            v: self.buffer("KV cache", bytes)?,
            kv,
            scales,
            kv_dim: shape.attn.kv_dim,
            capacity,
            len: 0,
        })
    }

    fn scratch(&self, shape: &ModelShape, size: ScratchSize) -> Result<GpuScratch, BackendError> {
        let hd = shape.attn.head_dim;
        if hd > 256 || !hd.is_multiple_of(2) {
            return Err(BackendError::Unsupported(format!(
                "the GPU backend rotates even heads of at most 256 elements, not {hd}"
            )));
        }
        let (size, act_bytes, scores) = scratch_sizes(shape, size);
        let mut acts = Vec::new();
        for bytes in act_bytes {
            acts.push(self.buffer("activations", bytes)?);
        }
        let batch = size.batch;
        // Per forward pass: 8 dispatches a layer (11 with Q/K/V biases), the head's
        // chunks, embed and norms; the rest is headroom (a split weight or a fallback).
        let slots = shape.n_layers * 20 + 64;
        let data = (batch * (shape.attn.head_dim + 1) * 4) as u64 * 2 + 1024;
        Ok(GpuScratch {
            shape: *shape,
            size,
            acts: acts
                .try_into()
                .map_err(|_| BackendError::Unsupported("activation buffers".into()))?,
            scores: self.buffer("attention scores", scores)?,
            argmax: self.buffer("argmax", 4)?,
            top: self.buffer("top logits", 8 + 8 * TOP_CAP as u64)?,
            rec: self.allocating("command rings", slots as u64 * kernels::SLOT, || {
                Recorder::new(&self.device, slots, data)
            })?,
            angles: 0,
            logit_rows: 0,
            logits: Vec::new(),
        })
    }

    fn scratch_bytes(&self, shape: &ModelShape, size: ScratchSize) -> u64 {
        let (_, acts, scores) = scratch_sizes(shape, size);
        acts.iter().fold(scores, |a, b| a.saturating_add(*b))
    }

    fn embed(&self, s: &mut GpuScratch, table: &GpuWeight, tokens: &[u32]) {
        let n = tokens.len();
        s.rec.reserve(
            &self.device,
            &self.queue,
            table.chunks.len() + 1,
            n * 4 + 256,
        );
        let tok_off = s.rec.push_data(tokens);
        let data = s.rec.data_buffer();
        for c in &table.chunks {
            // Tokens outside this chunk's rows are skipped by giving the kernel the
            // chunk's rows only: the kernel reads row `token - row0`.
            let v = table.view(c);
            let mut params = vec![n as u32, tok_off];
            params.extend(v);
            params.extend([c.row0 as u32, c.rows as u32]);
            let (x, y) = grid(n * table.cols);
            let GpuScratch { rec, acts, .. } = s;
            self.dispatch(
                rec,
                &self.kernels.embed,
                &params,
                &[
                    Bind::all(&c.buffer),
                    Bind::all(&data),
                    Bind::all(&acts[Act::X as usize]),
                ],
                (x, y, 1),
            );
        }
    }

    fn rope_angles(&self, s: &mut GpuScratch, inv_freq: &GpuVector, pos0: usize, n: usize) {
        let hd = s.shape.attn.head_dim;
        let mut words = vec![0u32; n * hd];
        for (i, cs) in words.chunks_exact_mut(hd).enumerate() {
            let (cos, sin) = cs.split_at_mut(hd / 2);
            for ((c, sn), &f) in cos.iter_mut().zip(sin).zip(&inv_freq.host) {
                let (a, b) = ((pos0 + i) as f32 * f).sin_cos();
                (*sn, *c) = (a.to_bits(), b.to_bits());
            }
        }
        // Reserved with the rope dispatch's data: the layers' rope calls read it.
        s.rec.reserve(
            &self.device,
            &self.queue,
            s.shape.n_layers * 20,
            words.len() * 4,
        );
        s.angles = s.rec.push_data(&words);
    }

    fn rms_norm(
        &self,
        s: &mut GpuScratch,
        input: Act,
        rows: Range<usize>,
        weight: &GpuVector,
        out: Act,
    ) {
        assert_ne!(input, out, "an operation's input and output must differ");
        let d = weight.host.len();
        let params = [d as u32, rows.start as u32, s.shape.norm_eps.to_bits()];
        let GpuScratch { rec, acts, .. } = s;
        self.dispatch(
            rec,
            &self.kernels.rms_norm,
            &params,
            &[
                Bind::all(&weight.buffer),
                Bind::all(&acts[input as usize]),
                Bind::all(&acts[out as usize]),
            ],
            (rows.len() as u32, 1, 1),
        );
    }

    /// Each output's chunks, three to a dispatch (Q, K and V together; a split head
    /// in one).
    fn project(&self, s: &mut GpuScratch, input: Act, n: usize, outs: &[(&GpuWeight, Act)]) {
        self.project_from(s, &MatvecInput::plain(input, n), outs);
    }

    fn add_bias(&self, s: &mut GpuScratch, a: Act, n: usize, bias: &GpuVector) {
        let len = n * bias.host.len();
        let (x, y) = grid(len);
        let GpuScratch { rec, acts, .. } = s;
        self.dispatch(
            rec,
            &self.kernels.elementwise,
            &[len as u32, 1, bias.host.len() as u32],
            &[Bind::all(&acts[a as usize]), Bind::all(&bias.buffer)],
            (x, y, 1),
        );
    }

    fn rope(&self, s: &mut GpuScratch, n: usize) {
        let heads = s.shape.attn.n_heads + s.shape.attn.n_kv_heads;
        self.rope_kv(None, 0, s, n, (0, heads));
    }

    fn append_kv(&self, cache: &mut GpuCache, layer: usize, s: &mut GpuScratch, n: usize) {
        let at = s.shape.attn;
        let heads = (at.n_heads, at.n_heads + 2 * at.n_kv_heads);
        self.rope_kv(Some(&*cache), layer, s, n, heads);
    }

    /// One dispatch instead of two (`rope_kv.wgsl` both rotates and stores).
    fn rope_append_kv(&self, cache: &mut GpuCache, layer: usize, s: &mut GpuScratch, n: usize) {
        let at = s.shape.attn;
        let heads = (0, at.n_heads + 2 * at.n_kv_heads);
        self.rope_kv(Some(&*cache), layer, s, n, heads);
    }

    fn attention(&self, cache: &GpuCache, layer: usize, s: &mut GpuScratch, n: usize) {
        let at = s.shape.attn;
        let params = [
            cache.len as u32,
            at.q_dim as u32,
            at.kv_dim as u32,
            at.head_dim as u32,
            at.group as u32,
            at.n_heads as u32,
            s.size.capacity as u32,
            (layer * cache.capacity * cache.kv_dim) as u32,
            cache.kv_code(),
            at.scale.to_bits(),
            cache.scales,
        ];
        let GpuScratch {
            rec, acts, scores, ..
        } = s;
        self.dispatch(
            rec,
            &self.kernels.attention,
            &params,
            &[
                Bind::all(&acts[Act::Q as usize]),
                Bind::all(&cache.k),
                Bind::all(&cache.v),
                Bind::all(scores),
                Bind::all(&acts[Act::Att as usize]),
            ],
            (at.n_heads as u32, n as u32, 1),
        );
    }

    fn swiglu(&self, s: &mut GpuScratch, n: usize) {
        let len = n * s.shape.ffn_dim;
        let (x, y) = grid(len);
        let GpuScratch { rec, acts, .. } = s;
        self.dispatch(
            rec,
            &self.kernels.elementwise,
            &[len as u32, 2, 0],
            &[
                Bind::all(&acts[Act::Gate as usize]),
                Bind::all(&acts[Act::Up as usize]),
            ],
            (x, y, 1),
        );
    }

    fn add(&self, s: &mut GpuScratch, into: Act, from: Act, n: usize) {
        assert_ne!(into, from, "an operation's input and output must differ");
        let len = n * s.shape.width(into);
        let (x, y) = grid(len);
        let GpuScratch { rec, acts, .. } = s;
        self.dispatch(
            rec,
            &self.kernels.elementwise,
            &[len as u32, 0, 0],
            &[
                Bind::all(&acts[into as usize]),
                Bind::all(&acts[from as usize]),
            ],
            (x, y, 1),
        );
    }

    /// Gate and up in one dispatch, each thread computing both rows and storing
    /// `silu(gate) * up`, when each is one chunk of the same precision; else [`Backend::project`] and
    /// [`Backend::swiglu`].
    fn project_swiglu(
        &self,
        s: &mut GpuScratch,
        input: Act,
        n: usize,
        gate: &GpuWeight,
        up: &GpuWeight,
    ) {
        self.swiglu_from(s, &MatvecInput::plain(input, n), gate, up);
    }

    /// The norm computed by the projection's own dispatches as they read `X` when
    /// [`GpuOptions::fuse_norm`], for matrices with f32 activations, rows of at most
    /// [`NORM_STAGE_COLS`] and batches `matmul.wgsl` does not take; others take a
    /// separate RMSNorm.
    fn norm_project(
        &self,
        s: &mut GpuScratch,
        norm: NormInput<'_, GpuVector>,
        p: Projection<'_, GpuWeight>,
    ) {
        let int8 = match p {
            Projection::Into(outs) => outs.iter().any(|(w, _)| w.int8),
            Projection::Swiglu { gate, up } => gate.int8 || up.int8,
        };
        let tiled = self.tiled_prefill && norm.rows.len() >= MATMUL_MIN_TOKENS;
        if !self.fuse_norm || int8 || tiled || norm.weight.host.len() > NORM_STAGE_COLS {
            let n = norm.rows.len();
            self.rms_norm(s, norm.input, norm.rows, norm.weight, Act::Xn);
            p.run(self, s, Act::Xn, n);
            return;
        }
        let x = MatvecInput {
            act: norm.input,
            n: norm.rows.len(),
            row0: norm.rows.start,
            norm: Some(norm.weight),
        };
        match p {
            Projection::Into(outs) => self.project_from(s, &x, outs),
            Projection::Swiglu { gate, up } => self.swiglu_from(s, &x, gate, up),
        }
    }

    /// The projection adds its rows into `X` in the same dispatch.
    fn project_residual(&self, s: &mut GpuScratch, input: Act, n: usize, w: &GpuWeight) {
        let parts: Vec<Part<'_>> = w
            .chunks
            .iter()
            .map(|chunk| Part {
                w,
                chunk,
                out: Act::X,
            })
            .collect();
        self.matvecs(s, &MatvecInput::plain(input, n), &parts, MatvecMode::Add);
    }

    fn logits<'s>(&self, s: &'s mut GpuScratch) -> &'s [f32] {
        let rows = if s.size.all_logits { s.size.batch } else { 1 };
        let bytes = (rows * s.shape.vocab * 4) as u64;
        let GpuScratch {
            rec, acts, logits, ..
        } = s;
        *logits = f32s(&self.read_back(rec, &acts[Act::Logits as usize], bytes));
        &s.logits
    }

    /// On the GPU, over the last row the last forward pass wrote: 4 bytes come back
    /// (`u32::MAX` when a logit is not finite).
    fn argmax(&self, s: &mut GpuScratch) -> Option<u32> {
        let vocab = s.shape.vocab;
        let GpuScratch {
            rec,
            acts,
            argmax,
            logit_rows,
            ..
        } = s;
        let off = (logit_rows.saturating_sub(1) * vocab) as u32;
        self.dispatch(
            rec,
            &self.kernels.argmax,
            &[vocab as u32, off],
            &[Bind::all(&acts[Act::Logits as usize]), Bind::all(argmax)],
            (1, 1, 1),
        );
        let raw = self.read_back(rec, argmax, 4);
        Some(u32::from_le_bytes([raw[0], raw[1], raw[2], raw[3]])).filter(|&i| i != u32::MAX)
    }

    /// On the GPU (`top.wgsl`), over the last row the last forward pass wrote: at most
    /// [`TOP_CAP`] pairs come back (8 KiB); more ties than that, or a logit not finite,
    /// and the caller reads the logits.
    fn top_logits(&self, s: &mut GpuScratch, k: usize, out: &mut Vec<(f32, u32)>) -> bool {
        let vocab = s.shape.vocab;
        if k == 0 || k > TOP_CAP {
            return false;
        }
        let GpuScratch {
            rec,
            acts,
            top,
            logit_rows,
            ..
        } = s;
        let off = (logit_rows.saturating_sub(1) * vocab) as u32;
        self.dispatch(
            rec,
            &self.kernels.top,
            &[vocab as u32, off, k as u32, TOP_CAP as u32],
            &[Bind::all(&acts[Act::Logits as usize]), Bind::all(top)],
            (1, 1, 1),
        );
        let words: Vec<u32> = self
            .read_back(rec, top, top.size())
            .chunks_exact(4)
            .map(|w| u32::from_le_bytes([w[0], w[1], w[2], w[3]]))
            .collect();
        let n = words[0] as usize;
        if n > TOP_CAP {
            return false;
        }
        out.clear();
        out.extend(
            words[2..2 + 2 * n]
                .chunks_exact(2)
                .map(|p| (f32::from_bits(p[0]), p[1])),
        );
        true
    }

    /// Finishes the recorded work, then reads `len` elements back.
    fn read_act(
        &self,
        s: &mut GpuScratch,
        a: Act,
        len: usize,
        out: &mut Vec<f32>,
    ) -> Result<(), BackendError> {
        let GpuScratch { rec, acts, .. } = s;
        let buf = &acts[a as usize];
        let bytes = len as u64 * 4;
        if bytes > buf.size() {
            return Err(BackendError::Unsupported(format!(
                "{len} elements of {a:?}, which holds {}",
                buf.size() / 4
            )));
        }
        out.clear();
        out.extend(f32s(&self.read_back(rec, buf, bytes)));
        Ok(())
    }

    /// Submits the recorded work, then queues the write: it lands before anything
    /// recorded after it.
    fn write_act(&self, s: &mut GpuScratch, a: Act, data: &[f32]) -> Result<(), BackendError> {
        let buf = &s.acts[a as usize];
        if data.len() as u64 * 4 > buf.size() {
            return Err(BackendError::Unsupported(format!(
                "{} elements of {a:?}, which holds {}",
                data.len(),
                buf.size() / 4
            )));
        }
        let bytes: Vec<u8> = data.iter().flat_map(|v| v.to_le_bytes()).collect();
        self.submit(&mut s.rec);
        self.queue.write_buffer(&s.acts[a as usize], 0, &bytes);
        Ok(())
    }
}
