//! The self-test an adapter passes before `auto` uses it, and the `auto` choice.
//!
//! Peers' GPU paths give garbage on some phone drivers; so before an adapter runs a model
//! unasked, a small synthetic model (two layers, int4 weights, sizes that are not
//! multiples of the workgroup size) runs on it and on the CPU's scalar reference from
//! the same fixed tokens, at each precision (exact, then int8 activations: each kernel
//! family), and their logits must agree (cosine and largest error). The verdict is kept
//! per adapter and driver version in a file the caller names.

use super::{GpuBackend, GpuOptions, adapters};
use crate::backend::cpu::kernels::Kernel;
use crate::backend::{BackendError, CpuBackend, CpuOptions, KvType, Precision};
use crate::model::Model;
use glint_format::quant::{quantize, test_values};
use glint_format::{
    Arch, DType, FileMeta, ModelConfig, RopeStyle, TensorOut, TokenizerModel, TokenizerSpec,
    expected_llama_tensors, write_glint,
};
use std::path::{Path, PathBuf};

/// A Llama config of the given sizes, 2 layers: NeoX RoPE, Q/K/V biases and an own
/// output head with `neox`, else interleaved RoPE and a tied head.
pub(crate) fn synthetic_config(
    dim: u32,
    heads: u32,
    kv_heads: u32,
    ffn: u32,
    vocab: u32,
    neox: bool,
) -> ModelConfig {
    ModelConfig {
        arch: Arch::Llama,
        dim,
        n_layers: 2,
        n_heads: heads,
        n_kv_heads: kv_heads,
        head_dim: dim / heads,
        ffn_dim: ffn,
        vocab_size: vocab,
        context_len: 64,
        rope_theta: 10000.0,
        norm_eps: 1e-5,
        rope_style: if neox {
            RopeStyle::Neox
        } else {
            RopeStyle::Interleaved
        },
        rope_scaling: None,
        tied_embeddings: !neox,
        qkv_bias: neox,
        bos: Some(1),
        eos: Some(2),
        pad: None,
        eot: Some(2),
        sampling: None,
    }
}

/// The bytes of a model file of config `c` with every matrix in `dtype` and
/// pseudo-random weights (norm weights near 1, biases small).
pub(crate) fn synthetic_model(c: ModelConfig, dtype: DType) -> Vec<u8> {
    let vocab = c.vocab_size as usize;
    let meta = FileMeta {
        config: c,
        tokenizer: TokenizerSpec {
            model: TokenizerModel::ByteLevelBpe,
            add_bos: false,
            add_eos: false,
            add_space_prefix: false,
            pre: "smollm".into(),
            token_types: vec![1; vocab],
            tokens: (0..vocab).map(|i| format!("t{i}")).collect(),
            scores: None,
            merges: vec![],
        },
        chat_template: String::new(),
        provenance: vec![],
    };
    let tensors: Vec<TensorOut> = expected_llama_tensors(&c)
        .into_iter()
        .enumerate()
        .map(|(i, (name, shape))| {
            let n: u64 = shape.iter().product();
            let mut data = test_values(n as usize, 7 + i as u32);
            let dtype = if shape.len() == 1 {
                let base = if name.contains("norm") { 1.0 } else { 0.0 };
                data.iter_mut().for_each(|v| *v = base + 0.1 * *v);
                DType::F32
            } else {
                dtype
            };
            TensorOut {
                name,
                dtype,
                shape,
                bytes: quantize(dtype, &data),
            }
        })
        .collect();
    let mut out = Vec::new();
    // Writing to a vector fails only when memory does.
    write_glint(&mut out, &meta, &tensors).expect("writing to memory");
    out
}

/// One adapter's self-test result.
#[derive(Clone, Debug, PartialEq)]
pub struct SelfTest {
    /// The adapter and driver ([`super::AdapterReport::key`]).
    pub key: String,
    /// How the logits agreed at each precision run, in order (the run that failed last).
    pub runs: Vec<Agreement>,
    /// Why it failed (an error of the device or the bounds missed); empty when passed.
    pub failure: String,
}

/// How a self-test run's logits agreed with the CPU's.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Agreement {
    /// The precision both backends ran at.
    pub precision: Precision,
    /// Cosine similarity of the GPU's logits to the CPU's.
    pub cosine: f64,
    /// Largest absolute difference of the logits over the CPU's largest magnitude.
    pub max_error: f64,
}

/// Bounds of [`SelfTest`] with exact activations: the same f32 sums in another order
/// differ by ~1e-6 here.
pub const MIN_COSINE: f64 = 0.9999;
/// See [`MIN_COSINE`].
pub const MAX_ERROR: f64 = 1e-3;
/// [`MAX_ERROR`] with int8 activations: an activation that differs from the CPU's in
/// its last bit becomes a different int8 value now and then, which moves a logit by a
/// step of the block's scale times a weight (measured on lavapipe: 5.9e-3 with every
/// matrix in int8, 4.8e-3 with the head only; cosine 0.999992).
pub const MAX_ERROR_INT8: f64 = 3e-2;

impl Agreement {
    /// Within the bounds of its precision.
    fn within_bounds(&self) -> bool {
        let max = match self.precision {
            Precision::Exact => MAX_ERROR,
            _ => MAX_ERROR_INT8,
        };
        self.cosine >= MIN_COSINE && self.max_error <= max
    }

    fn to_json(self) -> serde_json::Value {
        serde_json::json!({
            "precision": self.precision.name(),
            "cosine": self.cosine,
            "max_error": self.max_error,
        })
    }

    fn from_json(v: &serde_json::Value) -> Option<Self> {
        Some(Self {
            precision: Precision::from_name(v.get("precision")?.as_str()?)?,
            cosine: v.get("cosine")?.as_f64()?,
            max_error: v.get("max_error")?.as_f64()?,
        })
    }
}

impl SelfTest {
    /// True when the adapter agreed with the CPU.
    pub fn passed(&self) -> bool {
        self.failure.is_empty()
    }

    /// One line: `passed (exact: cosine .., max error ..; int8: ..)` or `FAILED: why (..)`.
    pub fn verdict(&self) -> String {
        let numbers: Vec<String> = self
            .runs
            .iter()
            .map(|a| {
                format!(
                    "{}: cosine {:.6}, max error {:.2e} of the largest logit",
                    a.precision.name(),
                    a.cosine,
                    a.max_error
                )
            })
            .collect();
        let numbers = numbers.join("; ");
        match self.passed() {
            true => format!("passed ({numbers})"),
            false => format!("FAILED: {} ({numbers})", self.failure),
        }
    }

    fn to_json(&self) -> serde_json::Value {
        let runs: Vec<serde_json::Value> = self.runs.iter().map(|a| a.to_json()).collect();
        serde_json::json!({
            "runs": runs,
            "failure": self.failure,
        })
    }

    fn from_json(key: &str, v: &serde_json::Value) -> Option<Self> {
        let runs = v.get("runs")?.as_array()?;
        Some(Self {
            key: key.to_string(),
            runs: runs
                .iter()
                .map(Agreement::from_json)
                .collect::<Option<_>>()?,
            failure: v.get("failure")?.as_str()?.to_string(),
        })
    }
}

/// Runs the self-test on the adapter `opts` picks (whatever precision `opts` asks for,
/// both are tested): the synthetic model's logits after an 8-token prompt and 2 decoded
/// tokens, GPU against the CPU's scalar reference, with exact activations, then (if
/// those passed) int8 ones.
pub fn self_test(opts: &GpuOptions) -> Result<SelfTest, BackendError> {
    let mut runs = Vec::new();
    let mut key = String::new();
    for precision in [Precision::Exact, Precision::Int8] {
        let gpu = GpuBackend::new(&GpuOptions {
            precision,
            ..opts.clone()
        })?;
        let t = check(gpu)?;
        let passed = t.passed();
        runs.extend(t.runs);
        key = t.key;
        if !passed {
            return Ok(SelfTest {
                key,
                runs,
                failure: t.failure,
            });
        }
    }
    Ok(SelfTest {
        key,
        runs,
        failure: String::new(),
    })
}

/// The self-test on `gpu`, at its precision.
pub(super) fn check(gpu: GpuBackend) -> Result<SelfTest, BackendError> {
    let key = adapters()
        .into_iter()
        .find(|a| a.name == gpu.info.name)
        .map_or_else(|| gpu.info.name.clone(), |a| a.key());
    let precision = gpu.precision();
    let bytes: std::sync::Arc<[u8]> =
        synthetic_model(synthetic_config(96, 3, 1, 160, 300, false), DType::Q4G32A).into();
    let cpu = CpuBackend::new(CpuOptions {
        threads: 1,
        kernel: Some(Kernel::Scalar),
        precision,
    })?;
    let load = |e: crate::model::LoadError| BackendError::Unsupported(e.to_string());
    let gm = Model::load(bytes.clone(), gpu).map_err(load)?;
    let cm = Model::load(bytes, cpu).map_err(load)?;
    let run = |r: Result<(), crate::model::ForwardError>| {
        r.map_err(|e| BackendError::Unsupported(e.to_string()))
    };
    let (mut gc, mut cc) = (gm.cache(16, KvType::F16)?, cm.cache(16, KvType::F16)?);
    let (mut gs, mut cs) = (gm.scratch(8, 16, false)?, cm.scratch(8, 16, false)?);
    let (mut g, mut c) = (Vec::new(), Vec::new());
    for tokens in [&[5u32, 299, 17, 150, 3, 64, 200, 1][..], &[42], &[7]] {
        run(gm.forward(tokens, &mut gc, &mut gs))?;
        run(cm.forward(tokens, &mut cc, &mut cs))?;
        g.extend_from_slice(gm.logits(&mut gs));
        c.extend_from_slice(cm.logits(&mut cs));
    }
    let dot: f64 = g.iter().zip(&c).map(|(a, b)| *a as f64 * *b as f64).sum();
    let norm = |v: &[f32]| v.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
    let cosine = dot / (norm(&g) * norm(&c)).max(f64::MIN_POSITIVE);
    let largest = c.iter().fold(0f64, |m, v| m.max(v.abs() as f64));
    let max_error = g
        .iter()
        .zip(&c)
        .map(|(a, b)| (*a as f64 - *b as f64).abs())
        .fold(0f64, f64::max)
        / largest.max(f64::MIN_POSITIVE);
    let agreement = Agreement {
        precision,
        cosine,
        max_error,
    };
    let mut failure = gm.backend().device_error().unwrap_or_default();
    if failure.is_empty() && !agreement.within_bounds() {
        failure = format!(
            "{} logits differ from the CPU's (bounds: cosine >= {MIN_COSINE}, max error <= \
             {MAX_ERROR} exact, {MAX_ERROR_INT8} int8)",
            precision.name()
        );
    }
    Ok(SelfTest {
        key,
        runs: vec![agreement],
        failure,
    })
}

/// The self-test of the adapter `opts` picks, from the verdict file `verdicts` when it
/// holds one for this adapter and driver, else run and stored there.
pub fn cached_self_test(
    opts: &GpuOptions,
    verdicts: Option<&Path>,
) -> Result<SelfTest, BackendError> {
    let key = |name: &str| {
        adapters()
            .into_iter()
            .find(|a| a.name.to_lowercase().contains(&name.to_lowercase()))
            .map(|a| a.key())
    };
    let wanted = match &opts.adapter {
        Some(n) => key(n),
        None => adapters().first().map(|a| a.key()),
    };
    let mut all: serde_json::Map<String, serde_json::Value> = verdicts
        .and_then(|p| std::fs::read_to_string(p).ok())
        .and_then(|t| serde_json::from_str(&t).ok())
        .unwrap_or_default();
    if let Some(k) = &wanted
        && !opts.inject_fault
        && let Some(t) = all.get(k).and_then(|v| SelfTest::from_json(k, v))
    {
        return Ok(t);
    }
    let t = self_test(opts)?;
    if let Some(p) = verdicts
        && !opts.inject_fault
    {
        all.insert(t.key.clone(), t.to_json());
        // A verdict that cannot be stored is run again next time: not an error. Written
        // whole or not at all, so two processes testing at once never leave half a file.
        let json = serde_json::Value::Object(all).to_string();
        let _ = super::start::write_atomically(p, json.as_bytes());
    }
    Ok(t)
}

/// Where [`auto`] looks.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AutoOptions {
    /// Options of the GPU backend it may create (its `adapter` narrows the candidates).
    pub gpu: GpuOptions,
    /// The verdict file ([`cached_self_test`]); `None`: the self-test runs every time.
    pub verdicts: Option<PathBuf>,
    /// Consider software adapters too (tests on lavapipe); normally they run only when
    /// asked for explicitly.
    pub allow_software: bool,
}

/// What [`auto`] chose.
pub enum AutoChoice {
    /// A GPU that passed its self-test (boxed: a backend is large, a reason is not).
    Gpu(Box<GpuBackend>, SelfTest),
    /// The CPU, and why not a GPU.
    Cpu(String),
}

/// A hardware GPU that passed its self-test, else the CPU with the reason.
pub fn auto(opts: &AutoOptions) -> AutoChoice {
    let found = adapters();
    let wanted = |a: &super::AdapterReport| {
        opts.gpu
            .adapter
            .as_ref()
            .is_none_or(|n| a.name.to_lowercase().contains(&n.to_lowercase()))
    };
    let Some(a) = found
        .iter()
        .find(|a| wanted(a) && (!a.software || opts.allow_software))
    else {
        let soft: Vec<&str> = found
            .iter()
            .filter(|a| a.software)
            .map(|a| a.name.as_str())
            .collect();
        return AutoChoice::Cpu(match soft.is_empty() {
            true => "no GPU adapter".to_string(),
            false => format!(
                "no hardware GPU adapter (software adapters {soft:?} run only with --backend gpu)"
            ),
        });
    };
    let gpu = GpuOptions {
        adapter: Some(a.name.clone()),
        ..opts.gpu.clone()
    };
    let test = match cached_self_test(&gpu, opts.verdicts.as_deref()) {
        Ok(t) if t.passed() => t,
        Ok(t) => return AutoChoice::Cpu(format!("{}: self-test {}", a.name, t.verdict())),
        Err(e) => return AutoChoice::Cpu(format!("{}: {e}", a.name)),
    };
    match GpuBackend::new(&gpu) {
        Ok(b) => AutoChoice::Gpu(Box::new(b), test),
        Err(e) => AutoChoice::Cpu(format!("{}: {e}", a.name)),
    }
}
