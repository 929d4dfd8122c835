//! The backend seam: a second backend runs the real model through the same
//! `Model::forward` and gives the same greedy ids and logits as the CPU backend. The
//! second backend is a wrapper that counts every operation the recipe calls, over the
//! CPU backend with the scalar reference kernels (chosen by value).

mod common;

use common::{fixture, ids, logits_after, model_path};
use glint_runtime::backend::cpu::kernels::Kernel;
use glint_runtime::backend::{
    Act, Backend, BackendError, CpuBackend, CpuOptions, KvType, ModelShape, Precision, ScratchSize,
    WeightSource,
};
use glint_runtime::engine::SessionOptions;
use glint_runtime::sampler::SamplerConfig;
use glint_runtime::{Engine, GenerateParams};
use std::collections::BTreeMap;
use std::ops::{ControlFlow, Range};
use std::sync::Mutex;

/// A backend that forwards every call to `inner` and counts it by name.
struct Counting<B> {
    inner: B,
    calls: Mutex<BTreeMap<&'static str, usize>>,
}

impl<B> Counting<B> {
    fn new(inner: B) -> Self {
        Self {
            inner,
            calls: Mutex::new(BTreeMap::new()),
        }
    }

    fn count(&self, op: &'static str) {
        *self.calls.lock().unwrap().entry(op).or_default() += 1;
    }

    /// The counts so far, then zero.
    fn take(&self) -> BTreeMap<&'static str, usize> {
        std::mem::take(&mut self.calls.lock().unwrap())
    }
}

impl<B: Backend> Backend for Counting<B> {
    type Weight = B::Weight;
    type Vector = B::Vector;
    type Cache = B::Cache;
    type Scratch = B::Scratch;

    fn describe(&self) -> String {
        format!("counting over {}", self.inner.describe())
    }
    fn weight(&self, w: WeightSource<'_>) -> Result<B::Weight, BackendError> {
        self.count("weight");
        self.inner.weight(w)
    }
    fn vector(&self, v: &[f32]) -> Result<B::Vector, BackendError> {
        self.count("vector");
        self.inner.vector(v)
    }
    fn cache(&self, s: &ModelShape, capacity: usize, kv: KvType) -> Result<B::Cache, BackendError> {
        self.inner.cache(s, capacity, kv)
    }
    fn scratch(&self, s: &ModelShape, size: ScratchSize) -> Result<B::Scratch, BackendError> {
        self.inner.scratch(s, size)
    }
    fn scratch_bytes(&self, s: &ModelShape, size: ScratchSize) -> u64 {
        self.inner.scratch_bytes(s, size)
    }
    fn embed(&self, s: &mut B::Scratch, table: &B::Weight, tokens: &[u32]) {
        self.count("embed");
        self.inner.embed(s, table, tokens)
    }
    fn rope_angles(&self, s: &mut B::Scratch, inv_freq: &B::Vector, pos0: usize, n: usize) {
        self.count("rope_angles");
        self.inner.rope_angles(s, inv_freq, pos0, n)
    }
    fn rms_norm(&self, s: &mut B::Scratch, x: Act, rows: Range<usize>, w: &B::Vector, out: Act) {
        self.count("rms_norm");
        self.inner.rms_norm(s, x, rows, w, out)
    }
    fn project(&self, s: &mut B::Scratch, x: Act, n: usize, outs: &[(&B::Weight, Act)]) {
        self.count("project");
        self.inner.project(s, x, n, outs)
    }
    fn add_bias(&self, s: &mut B::Scratch, a: Act, n: usize, bias: &B::Vector) {
        self.count("add_bias");
        self.inner.add_bias(s, a, n, bias)
    }
    fn rope(&self, s: &mut B::Scratch, n: usize) {
        self.count("rope");
        self.inner.rope(s, n)
    }
    fn append_kv(&self, c: &mut B::Cache, layer: usize, s: &mut B::Scratch, n: usize) {
        self.count("append_kv");
        self.inner.append_kv(c, layer, s, n)
    }
    fn attention(&self, c: &B::Cache, layer: usize, s: &mut B::Scratch, n: usize) {
        self.count("attention");
        self.inner.attention(c, layer, s, n)
    }
    fn swiglu(&self, s: &mut B::Scratch, n: usize) {
        self.count("swiglu");
        self.inner.swiglu(s, n)
    }
    fn add(&self, s: &mut B::Scratch, into: Act, from: Act, n: usize) {
        self.count("add");
        self.inner.add(s, into, from, n)
    }
    fn logits<'s>(&self, s: &'s mut B::Scratch) -> &'s [f32] {
        self.inner.logits(s)
    }
}

/// Exact activations: the bound below is the kernels' f32 summation order alone.
fn cpu(kernel: Option<Kernel>) -> CpuOptions {
    CpuOptions {
        threads: 2,
        kernel,
        precision: Precision::Exact,
    }
}

/// Logits after `prompt` ([`logits_after`]) and the greedy ids that follow it (8 at most).
fn run<B: Backend>(engine: &Engine<B>, prompt: &[u32]) -> (Vec<f32>, Vec<u32>) {
    let logits = logits_after(engine, prompt);
    let opts = SessionOptions {
        context: 128,
        kv: KvType::F16,
        ..SessionOptions::default()
    };
    let mut session = engine.session(opts).unwrap();
    let params = GenerateParams {
        max_tokens: 8,
        sampler: SamplerConfig::greedy(),
        ..GenerateParams::default()
    };
    let stats = session
        .generate_tokens(prompt, &params, |_| ControlFlow::Continue(()))
        .unwrap();
    let mut generated = session.tokens()[stats.prompt_tokens..].to_vec();
    generated.extend(session.pending());
    (logits, generated)
}

#[test]
fn a_second_backend_runs_the_same_forward_to_the_same_ids_and_logits() {
    let prompt = ids(&fixture("llamacpp-smollm2.json")["greedy"]["prompt_token_ids"]);
    let fast = Engine::load(model_path(), cpu(None)).expect("load on the CPU");
    let counting = Counting::new(CpuBackend::new(cpu(Some(Kernel::Scalar))).unwrap());
    let slow = Engine::with_backend(model_path(), counting).expect("load on the second backend");
    let c = *slow.model().config();
    let layers = c.n_layers as usize;

    // Load: every matrix of every block, the embedding (tied head); norms and RoPE.
    let load = slow.model().backend().take();
    assert_eq!(load["weight"], 7 * layers + 1, "{load:?}");
    assert_eq!(load["vector"], 2 * layers + 2, "{load:?}");

    let (want_logits, want_ids) = run(&fast, &prompt);
    let (logits, got_ids) = run(&slow, &prompt);
    assert!(!want_ids.is_empty());
    assert_eq!(got_ids, want_ids, "greedy ids");
    let worst = want_logits
        .iter()
        .zip(&logits)
        .map(|(a, b)| (a - b).abs())
        .fold(0f32, f32::max);
    eprintln!(
        "{} vs {}: max |logit diff| {worst}",
        slow.model().backend().describe(),
        fast.model().backend().describe()
    );
    assert!(worst < 1e-3, "max |logit difference| {worst}");

    // One forward pass calls the recipe's operations once per block (the projections
    // four times: QKV, output, gate/up, down) plus the embedding and the head.
    slow.model().backend().take();
    let m = slow.model();
    let mut cache = m.cache(4, KvType::F16).unwrap();
    let mut scratch = m.scratch(4, 4, false).unwrap();
    m.forward(&prompt[..4], &mut cache, &mut scratch).unwrap();
    let calls = m.backend().take();
    let want: BTreeMap<&str, usize> = [
        ("embed", 1),
        ("rope_angles", 1),
        ("rms_norm", 2 * layers + 1),
        ("project", 4 * layers + 1),
        ("rope", layers),
        ("append_kv", layers),
        ("attention", layers),
        ("swiglu", layers),
        ("add", 2 * layers),
    ]
    .into_iter()
    .collect();
    assert_eq!(calls, want);
}

#[test]
fn a_model_loads_from_bytes_and_from_a_range_of_a_file() {
    use std::io::Write;
    let bytes = std::fs::read(model_path()).expect("read the model");
    let prompt = [1u32, 4093, 198, 26843];
    let (want, _) = run(&Engine::load(model_path(), cpu(None)).unwrap(), &prompt);
    // The whole file in memory.
    let (from_bytes, _) = run(&Engine::load(bytes.clone(), cpu(None)).unwrap(), &prompt);
    assert_eq!(from_bytes, want);
    // The file at an odd offset inside a bigger one (as in an APK).
    let mut f = tempfile::tempfile().unwrap();
    f.write_all(&[0xAB; 12345]).unwrap();
    f.write_all(&bytes).unwrap();
    f.write_all(&[0xCD; 100]).unwrap();
    let source = glint_runtime::ModelSource::FileRange {
        file: f.try_clone().unwrap(),
        offset: 12345,
        len: bytes.len() as u64,
    };
    let (from_range, _) = run(&Engine::load(source, cpu(None)).unwrap(), &prompt);
    assert_eq!(from_range, want);
    // A range past the end of the file is an error, not a mapping that faults later.
    let past = glint_runtime::ModelSource::FileRange {
        file: f,
        offset: 12345,
        len: bytes.len() as u64 + 101,
    };
    let err = Engine::load(past, cpu(None)).err().expect("refused");
    assert!(err.to_string().contains("outside the file"), "{err}");
}

#[test]
fn a_forward_pass_refuses_what_would_not_fit_with_typed_errors() {
    use glint_runtime::model::ForwardError;
    let engine = Engine::load(model_path(), cpu(Some(Kernel::Scalar))).unwrap();
    let m = engine.model();
    let vocab = m.config().vocab_size;
    let mut cache = m.cache(4, KvType::F16).unwrap();
    let mut scratch = m.scratch(2, 4, false).unwrap();
    let mut run = |tokens: &[u32]| m.forward(tokens, &mut cache, &mut scratch);
    assert_eq!(run(&[]), Err(ForwardError::Empty));
    assert_eq!(run(&[vocab]), Err(ForwardError::BadToken(vocab)));
    assert_eq!(
        run(&[1, 2, 3]),
        Err(ForwardError::BatchTooLarge {
            tokens: 3,
            batch: 2
        })
    );
    run(&[1, 2]).unwrap();
    run(&[3, 4]).unwrap();
    assert_eq!(
        run(&[5]),
        Err(ForwardError::ContextFull {
            tokens: 1,
            used: 4,
            capacity: 4
        })
    );
    // A scratch that attends over fewer positions than the cache holds.
    let mut big = m.cache(8, KvType::F16).unwrap();
    let mut small = m.scratch(2, 4, false).unwrap();
    assert_eq!(
        m.forward(&[1], &mut big, &mut small),
        Err(ForwardError::ScratchTooSmall {
            scratch: 4,
            cache: 8
        })
    );
}

/// The pool hands each thread whatever chunks it claims, but every output row and
/// attention head is computed the same way on any thread: the logits of a prefill and
/// the greedy ids after it are the same bits on 1, 2 and 3 threads, for both precisions.
#[test]
fn any_thread_count_gives_the_same_bits() {
    use glint_runtime::backend::Precision;
    let prompt = ids(&fixture("llamacpp-smollm2.json")["greedy"]["prompt_token_ids"]);
    for precision in [Precision::Exact, Precision::Int8] {
        let opts = |threads| CpuOptions {
            threads,
            precision,
            kernel: None,
        };
        let (want_logits, want_ids) = run(&Engine::load(model_path(), opts(1)).unwrap(), &prompt);
        assert!(!want_ids.is_empty());
        for threads in [2, 3] {
            let (logits, got_ids) =
                run(&Engine::load(model_path(), opts(threads)).unwrap(), &prompt);
            assert_eq!(got_ids, want_ids, "{precision:?}, {threads} threads");
            assert!(
                logits
                    .iter()
                    .zip(&want_logits)
                    .all(|(a, b)| a.to_bits() == b.to_bits()),
                "{precision:?}, {threads} threads: logits differ from one thread's"
            );
        }
    }
}

/// Thread counts: 0 means every core this process may run on; more than
/// `MAX_THREADS_PER_CORE` per core is a typed error, whatever the value.
#[test]
fn thread_counts_default_to_the_cores_and_absurd_ones_are_refused() {
    use glint_runtime::backend::cpu::{MAX_THREADS_PER_CORE, available_cores};
    let cores = available_cores();
    let backend = CpuBackend::new(CpuOptions::default()).unwrap();
    assert_eq!(backend.threads(), cores);
    let max = cores * MAX_THREADS_PER_CORE;
    assert_eq!(
        CpuBackend::new(CpuOptions {
            threads: max,
            ..CpuOptions::default()
        })
        .unwrap()
        .threads(),
        max
    );
    for threads in [max + 1, 100_000, usize::MAX] {
        let err = CpuBackend::new(CpuOptions {
            threads,
            ..CpuOptions::default()
        })
        .err()
        .expect("refused");
        assert_eq!(
            err,
            BackendError::TooManyThreads {
                requested: threads,
                cores,
                max
            }
        );
        assert!(err.to_string().contains("threads requested"), "{err}");
    }
}
