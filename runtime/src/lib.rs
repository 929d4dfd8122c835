//! The Glint runtime: maps a `.glint` file (no copy, O(header) load), tokenizes, runs
//! the Llama forward over a [`backend::Backend`] (today the CPU, with int4/int8 kernels
//! that dequantize on the fly), samples and streams tokens. Options are passed as
//! values; the library reads no environment variable.
//!
//! ```no_run
//! use glint_runtime::backend::CpuOptions;
//! use glint_runtime::engine::{Engine, GenerateParams, SessionOptions};
//! use std::ops::ControlFlow;
//! let engine = Engine::load("model.glint", CpuOptions { threads: 2, ..CpuOptions::default() })?;
//! let mut session = engine.session(SessionOptions { context: 2048, ..SessionOptions::default() })?;
//! let params = GenerateParams { max_tokens: 64, ..GenerateParams::default() };
//! session.chat("What is the capital of France?", &params, |ev| {
//!     print!("{}", ev.text);
//!     ControlFlow::Continue(())
//! })?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

pub mod backend;
pub mod chat;
pub mod engine;
pub mod eval;
pub mod memory;
pub mod model;
pub mod sampler;
pub mod tokenizer;

pub use backend::{Backend, CpuBackend, CpuOptions, KvType, Precision};
pub use chat::{Message, Role};
pub use engine::{
    CancelToken, Engine, GenerateParams, GenerateStats, Session, SessionError, SessionOptions,
    StopReason,
};
pub use memory::MemoryPlan;
pub use model::{Model, ModelSource};

/// Peak resident set size of this process (Linux `VmHWM`), if the OS reports it.
pub fn peak_rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// A human-readable summary of a loaded model for `glint info`: the file's header
/// ([`glint_format::GlintFile::summary`]), memory with a KV cache of type `kv`, and
/// what runs it.
pub fn describe<B: Backend>(model: &Model<B>, kv: KvType) -> String {
    let f = model.file();
    let c = model.config();
    let mut s = f.summary();
    s += &format!(
        "memory: weights mapped {:.1} MiB; {} KV cache {:.1} KiB per position ({:.1} MiB at full context)\n",
        f.file_len() as f64 / (1 << 20) as f64,
        kv.name(),
        kv.cache_bytes(model.shape(), 1) as f64 / 1024.0,
        kv.cache_bytes(model.shape(), c.context_len as usize) as f64 / (1 << 20) as f64
    );
    s += &format!(
        "decode reads {:.1} MB of weights per token\n",
        model.weight_bytes_per_token() as f64 / 1e6
    );
    s += &format!("backend: {}\n", model.backend().describe());
    s
}
