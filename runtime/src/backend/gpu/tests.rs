//! Every GPU kernel against its CPU twin (the CPU backend with the scalar reference
//! kernels) on synthetic models whose sizes are not multiples of the workgroup size, in
//! every weight dtype; then whole forward passes. These tests need a Vulkan adapter
//! (CI installs Mesa's lavapipe) and fail, never skip, without one.

use super::selftest::{synthetic_config, synthetic_model};
use super::*;
use crate::backend::Precision;
use crate::backend::cpu::kernels::Kernel;
use crate::backend::cpu::{CpuBackend, CpuOptions, CpuScratch};
use crate::model::Model;
use glint_format::quant::test_values;
use glint_format::*;
use std::time::Duration;

fn gpu(opts: &GpuOptions) -> GpuBackend {
    GpuBackend::new(opts).unwrap_or_else(|e| {
        panic!(
            "the `gpu` feature's tests need a Vulkan adapter (CI installs Mesa's lavapipe: \
             apt-get install mesa-vulkan-drivers libvulkan1): {e}"
        )
    })
}

/// The CPU's scalar reference at `precision` (the GPU's twin's).
fn cpu(precision: Precision) -> CpuBackend {
    CpuBackend::new(CpuOptions {
        threads: 1,
        kernel: Some(Kernel::Scalar),
        precision,
    })
    .unwrap()
}

/// Sizes not multiples of 64 (dim 96, ffn 160, vocab 300), interleaved RoPE, tied head.
fn odd() -> ModelConfig {
    synthetic_config(96, 3, 1, 160, 300, false)
}

/// Group-128 friendly sizes (dim 256, ffn 384, vocab 77), NeoX RoPE, biases, own head.
fn wide() -> ModelConfig {
    synthetic_config(256, 4, 2, 384, 77, true)
}

/// A loaded synthetic model file of config `c` with every matrix in `dtype`.
fn synthetic(c: ModelConfig, dtype: DType) -> Arc<LoadedGlint> {
    let bytes = synthetic_model(c, dtype);
    Arc::new(LoadedGlint::from_shared(bytes.into(), "synthetic").unwrap())
}

/// Every matrix of `file`, by role.
fn matrices(file: &LoadedGlint) -> Vec<(LlamaTensor, Matrix<'_>)> {
    let f = file.file();
    LlamaTensor::all(f.config())
        .into_iter()
        .filter_map(|t| Some((t, f.tensor(&t.name())?)))
        .filter(|(_, m)| m.shape().len() == 2)
        .map(|(t, m)| (t, m.matrix().unwrap()))
        .collect()
}

/// The pair of backends and their scratches for one shape.
struct Twin {
    gpu: GpuBackend,
    cpu: CpuBackend,
    shape: ModelShape,
    gs: GpuScratch,
    cs: CpuScratch,
}

impl Twin {
    fn new(c: &ModelConfig, opts: &GpuOptions, batch: usize) -> Self {
        let (gpu, cpu) = (gpu(opts), cpu(opts.precision));
        let shape = ModelShape::new(c);
        let size = ScratchSize {
            batch,
            capacity: c.context_len as usize,
            all_logits: true,
        };
        let gs = gpu.scratch(&shape, size).unwrap();
        let cs = cpu.scratch(&shape, size).unwrap();
        Self {
            gpu,
            cpu,
            shape,
            gs,
            cs,
        }
    }

    /// Sets `n` rows of `a` to the same pseudo-random values on both.
    fn fill(&mut self, a: Act, n: usize, seed: u32) {
        let v = test_values(n * self.shape.width(a), seed);
        self.cs.act_mut(a, n).copy_from_slice(&v);
        self.gpu.write_act(&mut self.gs, a, &v).unwrap();
    }

    /// Sets `n` rows of `a` on the CPU to the GPU's.
    fn same_as_gpu(&mut self, a: Act, n: usize) {
        let mut g = Vec::new();
        let len = n * self.shape.width(a);
        self.gpu.read_act(&mut self.gs, a, len, &mut g).unwrap();
        self.cs.act_mut(a, n).copy_from_slice(&g);
    }

    /// Checks `n` rows of `a` agree within `tol` of the largest magnitude; returns the
    /// error as that fraction.
    fn check(&mut self, a: Act, n: usize, tol: f32, what: &str) -> f32 {
        let mut g = Vec::new();
        let len = n * self.gs.shape.width(a);
        self.gpu.read_act(&mut self.gs, a, len, &mut g).unwrap();
        assert_eq!(self.gpu.device_error(), None, "{what}");
        let c = self.cs.act(a, n);
        assert_close(&g, c, tol, what)
    }
}

/// Checks `g` is within `tol` of `c`'s largest magnitude everywhere; returns the largest
/// error as that fraction.
fn assert_close(g: &[f32], c: &[f32], tol: f32, what: &str) -> f32 {
    assert_eq!(g.len(), c.len(), "{what}: lengths");
    let scale = c.iter().fold(1e-3f32, |m, v| m.max(v.abs()));
    let (i, err) = g
        .iter()
        .zip(c)
        .map(|(a, b)| (a - b).abs())
        .enumerate()
        .fold((0, 0f32), |m, (i, e)| if e > m.1 { (i, e) } else { m });
    assert!(
        err <= tol * scale,
        "{what}: max error {err} at {i} (gpu {}, cpu {}), bound {}",
        g[i],
        c[i],
        tol * scale
    );
    err / scale
}

const ALL_DTYPES: [DType; 7] = DType::ALL;

/// Rows of 100 and 70 columns, not whole 32-element blocks (f32 and f16 only).
fn ragged() -> ModelConfig {
    synthetic_config(100, 2, 1, 70, 300, false)
}

/// Batch sizes the projections are tested at: one token, a tile of `matvec.wgsl`,
/// `matmul.wgsl`'s smallest (MATMUL_MIN_TOKENS, a short tile), one past a tile of 32
/// tokens, and the synthetic models' whole context (two tiles).
const BATCHES: [usize; 5] = [1, 4, MATMUL_MIN_TOKENS, 33, 64];

/// Rows longer than `matvec_int8.wgsl` quantizes in one pass (36 blocks of 32: a pass of
/// 32 and one of 4), group-128 friendly (dim 128, ffn 1152, vocab 100).
fn long() -> ModelConfig {
    synthetic_config(128, 2, 1, 1152, 100, false)
}

/// Bound on the GPU's projections against the CPU's scalar reference, a fraction of the
/// largest output: f32 sums in another order (exact activations) differ by ~1e-6; with
/// int8 activations the integer sums and the quantization are the same, and the float
/// steps too (measured: see the test's output).
const PROJECT_TOLERANCE: f32 = 1e-5;

#[test]
fn project_matches_cpu_in_every_dtype_whole_and_split() {
    for precision in [Precision::Exact, Precision::Int8] {
        let mut worst = 0f32;
        for dtype in ALL_DTYPES {
            let short = match dtype {
                DType::F32 | DType::F16 => vec![odd(), ragged()],
                _ if dtype.group().unwrap_or(32) > 32 => vec![wide()],
                _ => vec![odd()],
            };
            let configs = short.into_iter().map(|c| (c, &[0, 1024][..]));
            for (c, splits) in configs.chain([(long(), &[0][..])]) {
                let file = synthetic(c, dtype);
                // Whole matrices, then chunks of at most 1 KiB (a few rows per buffer, the
                // last chunk short; every matrix here is larger).
                for &max_chunk_bytes in splits {
                    let opts = GpuOptions {
                        max_chunk_bytes,
                        precision,
                        fuse_norm: Some(true),
                        tiled_prefill: Some(true),
                        ..GpuOptions::default()
                    };
                    let what = format!(
                        "{} {dtype:?} dim {} chunk={max_chunk_bytes}",
                        precision.name(),
                        c.dim
                    );
                    let e = project_every_matrix(&mut Twin::new(&c, &opts, 64), &file, &what);
                    worst = worst.max(e);
                }
            }
        }
        eprintln!(
            "{} activations: largest projection error {worst:.2e} of the largest output",
            precision.name()
        );
    }
}

/// Every matrix of `file` alone, then a block's fused projections, on both backends of
/// `t`; returns the largest error.
fn project_every_matrix(t: &mut Twin, file: &Arc<LoadedGlint>, what: &str) -> f32 {
    let mut worst = 0f32;
    let split = t.gpu.max_chunk < t.gpu.max_binding;
    for (name, m) in matrices(file) {
        let gw = t.gpu.weight(WeightSource::new(name, m, file)).unwrap();
        let cw = t.cpu.weight(WeightSource::new(name, m, file)).unwrap();
        if split {
            assert!(gw.chunks() > 1, "{name:?} split");
        }
        let int8 = t.gpu.precision() == Precision::Int8 && m.dtype.is_quantized();
        assert_eq!(gw.int8(), int8, "{what} {name:?}");
        let input = [Act::Xn, Act::Att, Act::Gate]
            .into_iter()
            .find(|&a| t.shape.width(a) == m.cols)
            .unwrap_or(Act::Xn);
        let out = [Act::Q, Act::K, Act::Up, Act::Logits, Act::X]
            .into_iter()
            .find(|&a| t.shape.width(a) == m.rows)
            .unwrap();
        for n in BATCHES {
            t.fill(input, n, n as u32 + 3);
            t.gpu.project(&mut t.gs, input, n, &[(&gw, out)]);
            t.cpu.project(&mut t.cs, input, n, &[(&cw, out)]);
            let what = format!("{what} {name:?} n={n}");
            worst = worst.max(t.check(out, n, PROJECT_TOLERANCE, &what));
        }
    }
    worst.max(fused_projections_match_cpu(t, file, what))
}

/// The int8 quantization of activations rounds as the CPU's, ties to even: blocks whose
/// largest magnitude is 127 (so `d` is 1) of halves (every odd one a tie), a zero block,
/// and scaled copies (`d` not a power of two), into every int8 dtype.
#[test]
fn int8_activations_round_as_the_cpu() {
    let c = odd();
    let opts = GpuOptions {
        precision: Precision::Int8,
        ..GpuOptions::default()
    };
    let mut t = Twin::new(&c, &opts, 5);
    let dim = c.dim as usize;
    let mut x: Vec<f32> = (0..5 * dim)
        .map(|i| ((i * 37 % 255) as f32 - 127.0) / 2.0)
        .collect();
    for (b, block) in x.chunks_mut(32).enumerate() {
        block[b % 32] = if b % 2 == 0 { 127.0 } else { -127.0 };
        let scale = [1.0, 0.37, 1e-3, 0.0, 3.3e4][b % 5];
        block.iter_mut().for_each(|v| *v *= scale);
    }
    for dtype in [DType::Q4G32A, DType::Q4G32, DType::Q8G32] {
        let file = synthetic(c, dtype);
        let name = LlamaTensor::Block(1, BlockTensor::AttnQ);
        let m = file.file().tensor(&name.name()).unwrap().matrix().unwrap();
        let gw = t.gpu.weight(WeightSource::new(name, m, &file)).unwrap();
        let cw = t.cpu.weight(WeightSource::new(name, m, &file)).unwrap();
        assert!(gw.int8());
        t.cs.act_mut(Act::Xn, 5).copy_from_slice(&x);
        t.gpu.write_act(&mut t.gs, Act::Xn, &x).unwrap();
        t.gpu.project(&mut t.gs, Act::Xn, 5, &[(&gw, Act::Q)]);
        t.cpu.project(&mut t.cs, Act::Xn, 5, &[(&cw, Act::Q)]);
        // One activation a step off moves an output by ~1e-2 of the largest here.
        let e = t.check(Act::Q, 5, PROJECT_TOLERANCE, &format!("{dtype:?}"));
        eprintln!("{dtype:?}: error {e:.2e} of the largest output");
    }
}

/// A block's fused projections on both: Q, K and V in one call, gate and up with
/// SwiGLU, the output and down projections added into the residual stream. Returns the
/// largest error.
fn fused_projections_match_cpu(t: &mut Twin, file: &Arc<LoadedGlint>, what: &str) -> f32 {
    let weight = |t: &Twin, b: BlockTensor| {
        let name = LlamaTensor::Block(0, b);
        let m = file.file().tensor(&name.name()).unwrap().matrix().unwrap();
        let src = WeightSource::new(name, m, file);
        (t.gpu.weight(src).unwrap(), t.cpu.weight(src).unwrap())
    };
    use BlockTensor::*;
    let [q, k, v, o, gate, up, down] =
        [AttnQ, AttnK, AttnV, AttnOutput, FfnGate, FfnUp, FfnDown].map(|b| weight(t, b));
    let tol = PROJECT_TOLERANCE;
    let mut worst = 0f32;
    for n in BATCHES {
        let what = format!("{what} n={n}");
        t.fill(Act::Xn, n, n as u32 + 20);
        let qkv = [(&q, Act::Q), (&k, Act::K), (&v, Act::V)];
        let gpu_qkv = qkv.map(|(w, a)| (&w.0, a));
        let cpu_qkv = qkv.map(|(w, a)| (&w.1, a));
        t.gpu.project(&mut t.gs, Act::Xn, n, &gpu_qkv);
        t.cpu.project(&mut t.cs, Act::Xn, n, &cpu_qkv);
        for a in [Act::Q, Act::K, Act::V] {
            worst = worst.max(t.check(a, n, tol, &format!("{what} {a:?}")));
        }
        t.gpu.project_swiglu(&mut t.gs, Act::Xn, n, &gate.0, &up.0);
        t.cpu.project_swiglu(&mut t.cs, Act::Xn, n, &gate.1, &up.1);
        worst = worst.max(t.check(Act::Gate, n, tol, &format!("{what} swiglu")));
        // The down projection's input: the GPU's SwiGLU on both (int8 activations turn
        // a last-bit difference of an input into a different int8 value now and then).
        t.same_as_gpu(Act::Gate, n);
        t.fill(Act::X, n, n as u32 + 21);
        t.fill(Act::Att, n, n as u32 + 22);
        t.gpu.project_residual(&mut t.gs, Act::Att, n, &o.0);
        t.cpu.project_residual(&mut t.cs, Act::Att, n, &o.1);
        let e = t.check(Act::X, n, tol, &format!("{what} output + residual"));
        worst = worst.max(e);
        t.gpu.project_residual(&mut t.gs, Act::Gate, n, &down.0);
        t.cpu.project_residual(&mut t.cs, Act::Gate, n, &down.1);
        let e = t.check(Act::X, n, tol, &format!("{what} down + residual"));
        worst = worst.max(e);
        // The norm computed by the projections as they read X (`norm_project`), over
        // every row and over the last one (the head's rows). With f32 activations only:
        // int8 ones take a separate RMSNorm, whose last-bit differences from the CPU's
        // move an int8 value now and then (see the down projection above).
        if q.0.int8() {
            continue;
        }
        let g: Vec<f32> = test_values(t.shape.dim, n as u32 + 23)
            .iter()
            .map(|v| 1.0 + v)
            .collect();
        let (gg, cg) = (t.gpu.vector(&g).unwrap(), t.cpu.vector(&g).unwrap());
        t.fill(Act::X, n, n as u32 + 24);
        for rows in [0..n, n - 1..n] {
            let (m, what) = (rows.len(), format!("{what} norm rows {rows:?}"));
            let gn = || NormInput {
                input: Act::X,
                rows: rows.clone(),
                weight: &gg,
            };
            let cn = || NormInput {
                input: Act::X,
                rows: rows.clone(),
                weight: &cg,
            };
            t.gpu
                .norm_project(&mut t.gs, gn(), Projection::Into(&gpu_qkv));
            t.cpu
                .norm_project(&mut t.cs, cn(), Projection::Into(&cpu_qkv));
            for a in [Act::Q, Act::K, Act::V] {
                worst = worst.max(t.check(a, m, tol, &format!("{what} {a:?}")));
            }
            let (gate, up) = ((&gate.0, &gate.1), (&up.0, &up.1));
            let gpu_swiglu = Projection::Swiglu {
                gate: gate.0,
                up: up.0,
            };
            let cpu_swiglu = Projection::Swiglu {
                gate: gate.1,
                up: up.1,
            };
            t.gpu.norm_project(&mut t.gs, gn(), gpu_swiglu);
            t.cpu.norm_project(&mut t.cs, cn(), cpu_swiglu);
            worst = worst.max(t.check(Act::Gate, m, tol, &format!("{what} swiglu")));
        }
    }
    worst
}

#[test]
fn embed_matches_cpu_whole_and_split() {
    for (dtype, max_chunk_bytes) in [(DType::Q4G32A, 0), (DType::Q4G32A, 2048), (DType::F16, 0)] {
        let c = odd();
        let file = synthetic(c, dtype);
        let opts = GpuOptions {
            max_chunk_bytes,
            ..GpuOptions::default()
        };
        let mut t = Twin::new(&c, &opts, 8);
        let m = file.file().tensor(&LlamaTensor::TokenEmbd.name()).unwrap();
        let m = m.matrix().unwrap();
        let embd = LlamaTensor::TokenEmbd;
        let gw = t.gpu.weight(WeightSource::new(embd, m, &file)).unwrap();
        let cw = t.cpu.weight(WeightSource::new(embd, m, &file)).unwrap();
        let tokens = [0, 299, 17, 150, 151, 3, 298, 64];
        t.gpu.embed(&mut t.gs, &gw, &tokens);
        t.cpu.embed(&mut t.cs, &cw, &tokens);
        t.check(
            Act::X,
            8,
            1e-6,
            &format!("embed {dtype:?} chunk={max_chunk_bytes}"),
        );
    }
}

#[test]
fn norm_rope_swiglu_bias_and_add_match_cpu() {
    for c in [odd(), wide()] {
        let mut t = Twin::new(&c, &GpuOptions::default(), 7);
        let w = test_values(c.dim as usize, 5);
        let (gv, cv) = (t.gpu.vector(&w).unwrap(), t.cpu.vector(&w).unwrap());
        t.fill(Act::X, 7, 11);
        t.gpu.rms_norm(&mut t.gs, Act::X, 2..7, &gv, Act::Xn);
        t.cpu.rms_norm(&mut t.cs, Act::X, 2..7, &cv, Act::Xn);
        t.check(Act::Xn, 5, 1e-6, "rms_norm");

        let freq: Vec<f32> = (0..c.head_dim / 2)
            .map(|i| 1.0 / 10000f32.powf(2.0 * i as f32 / c.head_dim as f32))
            .collect();
        let (gf, cf) = (t.gpu.vector(&freq).unwrap(), t.cpu.vector(&freq).unwrap());
        t.fill(Act::Q, 7, 12);
        t.fill(Act::K, 7, 13);
        t.gpu.rope_angles(&mut t.gs, &gf, 41, 7);
        t.cpu.rope_angles(&mut t.cs, &cf, 41, 7);
        t.gpu.rope(&mut t.gs, 7);
        t.cpu.rope(&mut t.cs, 7);
        t.check(Act::Q, 7, 1e-6, "rope q");
        t.check(Act::K, 7, 1e-6, "rope k");

        let b = test_values(t.shape.attn.q_dim, 9);
        let (gb, cb) = (t.gpu.vector(&b).unwrap(), t.cpu.vector(&b).unwrap());
        t.gpu.add_bias(&mut t.gs, Act::Q, 7, &gb);
        t.cpu.add_bias(&mut t.cs, Act::Q, 7, &cb);
        t.check(Act::Q, 7, 0.0, "add_bias");

        t.fill(Act::Gate, 6, 14);
        t.fill(Act::Up, 6, 15);
        t.gpu.swiglu(&mut t.gs, 6);
        t.cpu.swiglu(&mut t.cs, 6);
        t.check(Act::Gate, 6, 1e-6, "swiglu");

        t.fill(Act::X, 5, 16);
        t.fill(Act::Xn, 5, 17);
        t.gpu.add(&mut t.gs, Act::X, Act::Xn, 5);
        t.cpu.add(&mut t.cs, Act::X, Act::Xn, 5);
        t.check(Act::X, 5, 0.0, "add");
    }
}

#[test]
fn kv_cache_and_attention_match_cpu() {
    for kv in [KvType::F32, KvType::F16, KvType::Int8] {
        for c in [odd(), wide()] {
            let mut t = Twin::new(&c, &GpuOptions::default(), 9);
            let cap = c.context_len as usize;
            let mut gc = t.gpu.cache(&t.shape, cap, kv).unwrap();
            let mut cc = t.cpu.cache(&t.shape, cap, kv).unwrap();
            let planned = kv.cache_bytes(&t.shape, cap);
            assert_eq!((gc.bytes(), cc.bytes()), (planned, planned), "{kv:?} bytes");
            let freq = test_values(c.head_dim as usize / 2, 7);
            let (gf, cf) = (t.gpu.vector(&freq).unwrap(), t.cpu.vector(&freq).unwrap());
            // Batches of 9, 1, 5 and 1 positions into layer 1 (layer 0 stays empty),
            // appended as they are, or rotated and appended in one operation.
            for (step, n) in [9, 1, 5, 1].into_iter().enumerate() {
                let seed = 100 * step as u32;
                t.fill(Act::K, n, seed + 1);
                t.fill(Act::V, n, seed + 2);
                t.fill(Act::Q, n, seed + 3);
                if step % 2 == 0 {
                    t.gpu.append_kv(&mut gc, 1, &mut t.gs, n);
                    t.cpu.append_kv(&mut cc, 1, &mut t.cs, n);
                } else {
                    t.gpu.rope_angles(&mut t.gs, &gf, gc.len(), n);
                    t.cpu.rope_angles(&mut t.cs, &cf, cc.len(), n);
                    t.gpu.rope_append_kv(&mut gc, 1, &mut t.gs, n);
                    t.cpu.rope_append_kv(&mut cc, 1, &mut t.cs, n);
                    t.check(
                        Act::Q,
                        n,
                        1e-6,
                        &format!("rope_append_kv q {kv:?} step {step}"),
                    );
                    t.check(
                        Act::K,
                        n,
                        1e-6,
                        &format!("rope_append_kv k {kv:?} step {step}"),
                    );
                }
                t.gpu.attention(&gc, 1, &mut t.gs, n);
                t.cpu.attention(&cc, 1, &mut t.cs, n);
                t.check(Act::Att, n, 2e-6, &format!("attention {kv:?} step {step}"));
                gc.commit(n);
                cc.commit(n);
            }
        }
    }
}

/// The int8 cache's bytes are the CPU's `store_q8` of the same keys and values, bit for
/// bit: values and f32 block scales, ties rounded to even, an all-zero block (scale 0),
/// at two positions of layer 1 after one of layer 0.
#[test]
fn int8_cache_holds_the_cpus_quantization_bit_for_bit() {
    use crate::backend::cpu::kernels::attn::store_q8;
    let c = wide();
    let mut t = Twin::new(&c, &GpuOptions::default(), 2);
    let (cap, kv_dim) = (c.context_len as usize, t.shape.attn.kv_dim);
    let mut gc = t.gpu.cache(&t.shape, cap, KvType::Int8).unwrap();
    let mut k = test_values(2 * kv_dim, 31);
    // Block 0: halves, with |x| / d exactly k + 0.5 (d = 1); block 1: zeros; block 2:
    // one huge value, the rest rounding to 0 or 1.
    for (j, x) in k[..32].iter_mut().enumerate() {
        *x = if j == 0 { 127.0 } else { j as f32 - 15.5 };
    }
    k[32..64].fill(0.0);
    k[64] = -3e4;
    let v = test_values(2 * kv_dim, 32);
    t.gpu.write_act(&mut t.gs, Act::K, &k).unwrap();
    t.gpu.write_act(&mut t.gs, Act::V, &v).unwrap();
    t.gpu.append_kv(&mut gc, 0, &mut t.gs, 1);
    gc.commit(1);
    t.gpu.append_kv(&mut gc, 1, &mut t.gs, 2);
    let n = t.shape.n_layers * cap * kv_dim;
    for (buf, x, what) in [(&gc.k, &k, "keys"), (&gc.v, &v, "values")] {
        let raw = t.gpu.read_back(&mut t.gs.rec, buf, buf.size());
        let (mut q, mut d) = (vec![0i8; x.len()], vec![0f32; x.len() / 32]);
        store_q8(&mut q, &mut d, x);
        // Layer 0 holds the first row at position 0; layer 1 both rows from position 1.
        for (layer, pos, rows) in [(0, 0, 0..1), (1, 1, 0..2)] {
            let at = (layer * cap + pos) * kv_dim;
            let len = rows.len() * kv_dim;
            let src = rows.start * kv_dim..rows.start * kv_dim + len;
            let got: Vec<i8> = raw[at..at + len].iter().map(|&b| b as i8).collect();
            assert_eq!(got, q[src.clone()], "{what} layer {layer}");
            let scales = f32s(&raw[n + at / 8..n + (at + len) / 8]);
            let want = &d[src.start / 32..src.end / 32];
            let bits = |s: &[f32]| s.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
            assert_eq!(bits(&scales), bits(want), "{what} layer {layer} scales");
        }
    }
    // Block 0 did hold ties (-14.5 -> -14, -13.5 -> -14, ...), rounded to even.
    let (mut q, mut d) = ([0i8; 32], [0f32; 1]);
    store_q8(&mut q, &mut d, &k[..32]);
    assert_eq!(d[0], 1.0);
    assert!((1..32).all(|j| q[j] as f32 == (j as f32 - 15.5).round_ties_even()));
    assert_eq!(t.gpu.device_error(), None);
}

/// An int8 cache needs whole 32-element blocks per head: the same typed error as the CPU.
#[test]
fn int8_cache_needs_heads_of_whole_blocks() {
    // dim 96 over 2 heads: head dimension 48.
    let c = synthetic_config(96, 2, 1, 160, 300, false);
    let shape = ModelShape::new(&c);
    let g = gpu(&GpuOptions::default()).cache(&shape, 8, KvType::Int8);
    let cpu_err = cpu(Precision::Exact)
        .cache(&shape, 8, KvType::Int8)
        .err()
        .unwrap();
    match g {
        Err(e @ BackendError::Unsupported(_)) => assert_eq!(e.to_string(), cpu_err.to_string()),
        Err(e) => panic!("{e}"),
        Ok(_) => panic!("an int8 cache of 48-element heads"),
    }
    assert!(
        gpu(&GpuOptions::default())
            .cache(&shape, 8, KvType::F16)
            .is_ok()
    );
}

#[test]
fn argmax_matches_cpu_with_ties() {
    let c = odd();
    let mut t = Twin::new(&c, &GpuOptions::default(), 3);
    for seed in 1..6u32 {
        let mut v = test_values(3 * 300, seed);
        // A tie between two maxima of the last row: the first wins.
        v[600 + 17 * seed as usize] = 2.0;
        v[600 + 250] = 2.0;
        t.gpu.write_act(&mut t.gs, Act::Logits, &v).unwrap();
        t.gs.logit_rows = 3;
        let want = crate::sampler::argmax(v[600..].iter().copied());
        assert_eq!(t.gpu.argmax(&mut t.gs), Some(want), "seed {seed}");
    }
    // A NaN or an infinity anywhere in the last row: no index, as the CPU's check.
    for bad in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY] {
        let mut v = test_values(3 * 300, 9);
        v[600 + 123] = bad;
        t.gpu.write_act(&mut t.gs, Act::Logits, &v).unwrap();
        assert_eq!(t.gpu.argmax(&mut t.gs), None, "{bad}");
    }
}

/// Whole forward passes at each precision: prefill in batches, then decoding, logits of
/// every position. Three layers, so [`Precision::Mixed`] has an int8 block after its
/// exact ones.
#[test]
fn forward_matches_cpu_on_synthetic_models() {
    for precision in [Precision::Exact, Precision::Int8, Precision::Mixed] {
        let mut worst = [0f32; 3];
        for (c, dtype) in [
            (odd(), DType::Q4G32A),
            (wide(), DType::Q4G64),
            (odd(), DType::Q8G32),
        ] {
            let c = ModelConfig { n_layers: 3, ..c };
            for (k, kv) in [KvType::F16, KvType::F32, KvType::Int8]
                .into_iter()
                .enumerate()
            {
                let what = format!("{} {dtype:?} {kv:?}", precision.name());
                let e = forward_error(c, dtype, precision, kv, &what);
                worst[k] = worst[k].max(e);
            }
        }
        eprintln!(
            "{} activations: largest logit error {:.2e} (f16 cache), {:.2e} (f32 cache), \
             {:.2e} (int8 cache) of the largest logit",
            precision.name(),
            worst[0],
            worst[1],
            worst[2]
        );
    }
}

/// The largest logit error of the GPU against the CPU on a synthetic model.
fn forward_error(
    c: ModelConfig,
    dtype: DType,
    precision: Precision,
    kv: KvType,
    what: &str,
) -> f32 {
    // With an f32 cache, the norm fused into the projections (with f32 activations);
    // with the others, prefill's batches in the tiled `matmul.wgsl`.
    let opts = GpuOptions {
        precision,
        fuse_norm: Some(kv == KvType::F32),
        tiled_prefill: Some(kv != KvType::F32),
        ..GpuOptions::default()
    };
    let mut worst = 0f32;
    {
        {
            let bytes: Arc<[u8]> = synthetic_model(c, dtype).into();
            let gm = Model::load(bytes.clone(), gpu(&opts)).unwrap();
            let cm = Model::load(bytes, cpu(precision)).unwrap();
            let (mut gc, mut cc) = (gm.cache(40, kv).unwrap(), cm.cache(40, kv).unwrap());
            let (mut gs, mut cs) = (
                gm.scratch(8, 40, true).unwrap(),
                cm.scratch(8, 40, true).unwrap(),
            );
            let tokens: Vec<u32> = (0..30u32).map(|i| (i * 37 + 5) % c.vocab_size).collect();
            for chunk in tokens.chunks(8).chain(tokens.chunks(1).take(3)) {
                gm.forward(chunk, &mut gc, &mut gs).unwrap();
                cm.forward(chunk, &mut cc, &mut cs).unwrap();
                let n = chunk.len() * c.vocab_size as usize;
                let g = gm.logits(&mut gs)[..n].to_vec();
                // f32 sums in another order differ by ~1e-6; an f16 cache rounds a key
                // that differs in its last bit to the other neighbour now and then, which
                // the later layers amplify (measured up to 2e-3 on lavapipe, q8 weights).
                // An int8 cache's steps are coarse enough that no such flip happened: up
                // to 8e-6, as f32's 1.2e-5 (lavapipe). Int8 activations: an input that differs in its last bit becomes another
                // int8 value now and then, a step of its block's scale, which these random
                // weights amplify (measured up to 3.6e-2 with an f16 cache, 1.0e-2 with
                // f32, on lavapipe).
                let tol = match (precision, kv) {
                    (Precision::Exact, KvType::F16) => 5e-3,
                    (Precision::Exact, _) => 1e-4,
                    _ => 0.1,
                };
                let e = assert_close(&g, &cm.logits(&mut cs)[..n], tol, what);
                worst = worst.max(e);
            }
        }
    }
    worst
}

#[test]
fn self_test_passes_and_a_corrupted_kernel_makes_auto_fall_back_to_the_cpu() {
    let t = self_test(&GpuOptions::default()).unwrap();
    assert!(t.passed(), "{}", t.verdict());
    eprintln!("self-test: {}", t.verdict());
    let precisions: Vec<Precision> = t.runs.iter().map(|a| a.precision).collect();
    assert_eq!(precisions, [Precision::Exact, Precision::Int8]);
    let dir = tempfile::tempdir().unwrap();
    let verdicts = dir.path().join("gpu-verdicts.json");
    let opts = AutoOptions {
        verdicts: Some(verdicts.clone()),
        allow_software: true,
        ..AutoOptions::default()
    };
    match auto(&opts) {
        AutoChoice::Gpu(b, t) => assert!(t.passed() && b.device_error().is_none()),
        AutoChoice::Cpu(reason) => panic!("a working adapter was not chosen: {reason}"),
    }
    let stored = std::fs::read_to_string(&verdicts).unwrap();
    assert!(stored.contains(&t.key), "{stored}");
    // Every projection's output scaled by 1.5: the self-test catches it, `auto` says why.
    let corrupted = AutoOptions {
        gpu: GpuOptions {
            inject_fault: true,
            ..GpuOptions::default()
        },
        ..opts
    };
    match auto(&corrupted) {
        AutoChoice::Cpu(reason) => assert!(reason.contains("self-test FAILED"), "{reason}"),
        AutoChoice::Gpu(..) => panic!("a corrupted kernel passed the self-test"),
    }
    // Software adapters (lavapipe) run only when asked for.
    if adapters().iter().all(|a| a.software) {
        match auto(&AutoOptions::default()) {
            AutoChoice::Cpu(reason) => assert!(reason.contains("no hardware GPU"), "{reason}"),
            AutoChoice::Gpu(..) => panic!("auto chose a software adapter"),
        }
    }
}

/// A probe's reads and writes past an activation's buffer are errors, not panics.
#[test]
fn activations_out_of_range_are_refused() {
    let c = odd();
    let mut t = Twin::new(&c, &GpuOptions::default(), 3);
    let mut out = Vec::new();
    assert!(
        t.gpu
            .read_act(&mut t.gs, Act::X, 1 << 22, &mut out)
            .is_err()
    );
    assert!(
        t.gpu
            .write_act(&mut t.gs, Act::X, &vec![0.0; 1 << 22])
            .is_err()
    );
    let n = c.dim as usize;
    t.gpu.write_act(&mut t.gs, Act::X, &vec![1.5; n]).unwrap();
    t.gpu.read_act(&mut t.gs, Act::X, n, &mut out).unwrap();
    assert_eq!(out, vec![1.5; n]);
}

/// Backends on one adapter share the device and the kernels: a second backend (other
/// options, as a second engine would have) compiles nothing.
#[test]
fn kernels_are_compiled_once_per_process() {
    let a = gpu(&GpuOptions::default());
    let b = gpu(&GpuOptions {
        max_chunk_bytes: 4096,
        ..GpuOptions::default()
    });
    assert!(Arc::ptr_eq(&a.kernels, &b.kernels));
    let r = b.start_report();
    assert!(r.reused, "{r:?}");
    assert_eq!((r.device, r.pipelines), (Duration::ZERO, Duration::ZERO));
}

/// A fresh device (not the process's shared one) on the first adapter, its kernels
/// compiled through the pipeline cache in `dir`.
fn fresh(dir: &std::path::Path) -> (GpuBackend, PipelineCacheUse) {
    let adapter = select::pick(None).unwrap();
    let started = start::start(adapter, Some(dir)).unwrap();
    let report = started.report.clone();
    let cache = report.cache.clone();
    (
        GpuBackend::on(&started, report, &GpuOptions::default()),
        cache,
    )
}

/// Bytes read from and written to the cache file, and the file.
fn file_use(u: &PipelineCacheUse) -> (u64, u64, std::path::PathBuf) {
    match u {
        PipelineCacheUse::File {
            path,
            read,
            written,
            write_error: None,
        } => (*read, *written, path.clone()),
        other => panic!("the pipeline cache was not used: {other:?}"),
    }
}

/// wgpu's pipeline cache header starts so (`wgpu-core`'s `pipeline_cache.rs`).
const CACHE_MAGIC: &[u8] = b"WGPUPLCH";

/// The cache file is written at the first start and read at the next; a garbage,
/// truncated or foreign (another adapter's) file is ignored: the device starts, the
/// kernels agree with the CPU, and the file is rewritten whole.
#[test]
fn pipeline_cache_is_persisted_and_a_bad_file_is_ignored() {
    let dir = tempfile::tempdir().unwrap();
    let (_, cold) = fresh(dir.path());
    let (read, written, path) = file_use(&cold);
    let good = std::fs::read(&path).unwrap();
    assert_eq!((read, written), (0, good.len() as u64));
    assert!(good.starts_with(CACHE_MAGIC), "{good:?}");
    let (_, warm) = fresh(dir.path());
    assert_eq!(file_use(&warm).0, good.len() as u64);

    // The adapter key sits after the magic, header version, ABI and backend bytes.
    let mut foreign = good.clone();
    foreign[17..32].iter_mut().for_each(|b| *b ^= 0x5a);
    let garbage: Vec<u8> = (0..1000u32).map(|i| (i * 7919 % 251) as u8).collect();
    for (what, bad) in [
        ("garbage", garbage),
        ("truncated", good[..good.len() / 2].to_vec()),
        ("foreign", foreign),
    ] {
        std::fs::write(&path, &bad).unwrap();
        let (g, u) = fresh(dir.path());
        assert_eq!(file_use(&u).0, bad.len() as u64, "{what}");
        let t = selftest::check(g).unwrap();
        assert!(t.passed(), "{what}: {}", t.verdict());
        let now = std::fs::read(&path).unwrap();
        assert!(
            now.starts_with(CACHE_MAGIC) && now != bad,
            "{what}: not rewritten"
        );
    }
}

/// A cache folder that cannot be made: the device starts and the report says why the
/// cache was not written.
#[test]
fn an_unwritable_pipeline_cache_is_not_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("a file");
    std::fs::write(&file, b"not a folder").unwrap();
    let started = start::start(select::pick(None).unwrap(), Some(&file.join("cache"))).unwrap();
    match &started.report.cache {
        PipelineCacheUse::File {
            read: 0,
            written: 0,
            write_error: Some(_),
            ..
        } => {}
        other => panic!("{other:?}"),
    }
    assert!(started.device_error.lock().unwrap().is_none());
}

/// `top.wgsl`: every logit at least the k-th largest (by `total_cmp`, as the sampler
/// orders them), ties and signed zeros included; a logit not finite refuses.
#[test]
fn top_logits_are_every_logit_at_least_the_kth_largest() {
    let c = odd();
    let mut t = Twin::new(&c, &GpuOptions::default(), 1);
    let vocab = c.vocab_size as usize;
    // 50 values, each ~6 times, and both zeros.
    let mut logits: Vec<f32> = (0..vocab)
        .map(|i| ((i * 7919) % 50) as f32 * 0.37 - 9.0)
        .collect();
    logits[17] = 0.0;
    logits[18] = -0.0;
    t.gpu.write_act(&mut t.gs, Act::Logits, &logits).unwrap();
    let mut top = Vec::new();
    for k in [1, 2, 7, 40, 104, vocab - 1, vocab, vocab + 5] {
        assert!(t.gpu.top_logits(&mut t.gs, k, &mut top), "k={k}");
        let mut sorted = logits.clone();
        sorted.sort_unstable_by(|a, b| b.total_cmp(a));
        let kth = sorted[k.min(vocab) - 1];
        let mut want: Vec<(u32, u32)> = (0..vocab as u32)
            .filter(|&i| logits[i as usize].total_cmp(&kth).is_ge())
            .map(|i| (logits[i as usize].to_bits(), i))
            .collect();
        let mut got: Vec<(u32, u32)> = top.iter().map(|&(l, i)| (l.to_bits(), i)).collect();
        got.sort_unstable_by_key(|p| p.1);
        want.sort_unstable_by_key(|p| p.1);
        assert_eq!(got, want, "k={k}");
        assert!(got.len() >= k.min(vocab));
    }
    // Both zeros in one set: the 0.0 is above the -0.0.
    let zeros = logits.iter().filter(|l| l.total_cmp(&0.0).is_ge()).count();
    assert!(t.gpu.top_logits(&mut t.gs, zeros, &mut top));
    assert!(top.iter().any(|&(_, i)| i == 17) && top.iter().all(|&(_, i)| i != 18));
    logits[40] = f32::NAN;
    t.gpu.write_act(&mut t.gs, Act::Logits, &logits).unwrap();
    assert!(!t.gpu.top_logits(&mut t.gs, 5, &mut top));
    assert!(!t.gpu.top_logits(&mut t.gs, TOP_CAP + 1, &mut top));
    assert_eq!(t.gpu.device_error(), None);
}
