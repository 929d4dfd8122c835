//! What the C ABI and the JNI binding share: the loaded models and sessions behind
//! handles, and each operation as a Rust function with a typed error ([`HostError`],
//! a [`Status`] code and a message). The bindings only convert arguments and results.

use crate::registry::Registry;
use glint_runtime::backend::BackendError;
use glint_runtime::engine::{
    EngineError, GenerateError, GenerateParams, GenerateStats, SessionError,
};
use glint_runtime::model::LoadError;
use glint_runtime::sampler::SamplerConfig;
use glint_runtime::{Backend, CancelToken, CpuOptions, Engine, KvType, ModelSource, Precision};
use glint_runtime::{Session, SessionOptions, StopReason};
use std::ops::ControlFlow;
use std::path::PathBuf;
use std::sync::{Mutex, MutexGuard, TryLockError};

#[cfg(feature = "gpu")]
use glint_runtime::backend::gpu::GpuBackend;

/// Status of a call: 0 for success, one code per kind of failure. C: the
/// `glint_status` constants; Java: `GlintException.code()`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Status {
    /// Success.
    Ok = 0,
    /// A required pointer or reference was null.
    NullArgument = 1,
    /// A model or session handle is not live: freed, closed, or never returned by Glint.
    InvalidHandle = 2,
    /// An argument is out of range or not UTF-8.
    InvalidArgument = 3,
    /// The model file could not be opened or mapped.
    Io = 4,
    /// The bytes are not a valid `.glint` model (truncated, corrupt, wrong format).
    BadModel = 5,
    /// The model or a setting is valid but not supported here.
    Unsupported = 6,
    /// An allocation failed.
    OutOfMemory = 7,
    /// The prompt does not fit in the session's context.
    PromptTooLong = 8,
    /// The model's chat template failed or is missing.
    Template = 9,
    /// The session is generating on another thread.
    Busy = 10,
    /// The token callback or the progress listener failed (Java: threw).
    Callback = 11,
    /// A bug in Glint (a caught panic): the call did nothing more and returned.
    Internal = 12,
    /// The session does not fit in the memory budget (the message names each part).
    OverBudget = 13,
    /// The GPU was asked for and there is none: no adapter, or a library built without
    /// the `gpu` feature. The CPU (or `Auto`) still works.
    NoGpu = 14,
}

/// A failed call: the code and what happened.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HostError {
    /// The kind of failure.
    pub status: Status,
    /// A message for people.
    pub message: String,
}

impl HostError {
    /// An error of `status` with `message`.
    pub fn new(status: Status, message: impl Into<String>) -> Self {
        Self {
            status,
            message: message.into(),
        }
    }

    /// A handle that is not live.
    pub fn handle(what: &str) -> Self {
        Self::new(
            Status::InvalidHandle,
            format!("invalid {what} handle (freed, closed, or not from Glint)"),
        )
    }

    /// A caught panic.
    pub fn panic(payload: &(dyn std::any::Any + Send)) -> Self {
        let what = payload
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| payload.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "unknown".into());
        Self::new(Status::Internal, format!("internal error (panic): {what}"))
    }
}

impl From<BackendError> for HostError {
    fn from(e: BackendError) -> Self {
        let status = match e {
            BackendError::OutOfMemory { .. } => Status::OutOfMemory,
            BackendError::Unsupported(_) => Status::Unsupported,
            BackendError::TooManyThreads { .. } => Status::InvalidArgument,
            BackendError::NoGpu(_) => Status::NoGpu,
        };
        Self::new(status, e.to_string())
    }
}

impl From<SessionError> for HostError {
    fn from(e: SessionError) -> Self {
        let status = match e {
            SessionError::OverBudget { .. } => Status::OverBudget,
            SessionError::ContextTooLong { .. } => Status::InvalidArgument,
            SessionError::Backend(b) => return b.into(),
        };
        Self::new(status, e.to_string())
    }
}

impl From<EngineError> for HostError {
    fn from(e: EngineError) -> Self {
        let status = match &e {
            EngineError::Load(LoadError::Open(glint_format::OpenError::Io { .. })) => Status::Io,
            EngineError::Load(LoadError::Open(_)) | EngineError::Tokenizer(_) => Status::BadModel,
            EngineError::Load(LoadError::Unsupported(_)) => Status::Unsupported,
            EngineError::Load(LoadError::Backend(b)) | EngineError::Backend(b) => {
                return b.clone().into();
            }
        };
        Self::new(status, e.to_string())
    }
}

impl From<GenerateError> for HostError {
    fn from(e: GenerateError) -> Self {
        let status = match e {
            GenerateError::PromptTooLong { .. } => Status::PromptTooLong,
            GenerateError::Template(_) => Status::Template,
            GenerateError::EmptyPrompt
            | GenerateError::BadToken(_)
            | GenerateError::TextTooLong { .. }
            | GenerateError::Sampler(_) => Status::InvalidArgument,
            GenerateError::Forward(_) | GenerateError::NonFiniteLogits { .. } => Status::Internal,
        };
        Self::new(status, e.to_string())
    }
}

/// Which backend runs a model.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum BackendChoice {
    /// With the `gpu` feature: a hardware GPU that passed its self-test (run once per
    /// adapter and driver, the verdict kept in [`LoadOptions::gpu_cache_dir`]), else the
    /// CPU. Without it: the CPU.
    #[default]
    Auto,
    /// The CPU.
    Cpu,
    /// The GPU: the first hardware adapter, else a software one (lavapipe), without a
    /// self-test. [`Status::NoGpu`] where there is none or without the `gpu` feature.
    Gpu,
}

/// How a model is loaded (both bindings' options, as values).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LoadOptions {
    /// CPU threads in all; 0: one per core.
    pub threads: usize,
    /// Activations of the matrix products.
    pub precision: Precision,
    /// Element type of the sessions' KV caches.
    pub kv: KvType,
    /// The backend.
    pub backend: BackendChoice,
    /// Most bytes the model and each session on it may hold resident
    /// ([`SessionOptions::mem_budget`]); 0: no limit.
    pub mem_budget: u64,
    /// A folder private to the application where the GPU backend keeps its compiled
    /// kernels (one pipeline cache file per adapter) and `Auto` its self-test verdicts;
    /// `None`: kernels compiled and (`Auto`) the self-test run at every process start.
    pub gpu_cache_dir: Option<PathBuf>,
}

/// A model's engine, on the backend it was loaded on.
enum HostEngine {
    Cpu(Engine),
    #[cfg(feature = "gpu")]
    Gpu(Engine<GpuBackend>),
}

/// A session's engine state, on its model's backend (boxed: a GPU session is 1,264
/// bytes, a CPU one 816).
enum HostEngineSession {
    Cpu(Box<Session>),
    #[cfg(feature = "gpu")]
    Gpu(Box<Session<GpuBackend>>),
}

/// `$body` with `$x` bound to what the `$kind` (`HostEngine` or `HostEngineSession`)
/// value `$v` holds, whichever backend it is on.
macro_rules! on_backend {
    ($kind:ident, $v:expr, |$x:ident| $body:expr) => {
        match $v {
            $kind::Cpu($x) => $body,
            #[cfg(feature = "gpu")]
            $kind::Gpu($x) => $body,
        }
    };
}

/// A loaded model and the session settings it hands on.
pub struct HostModel {
    engine: HostEngine,
    kv: KvType,
    mem_budget: Option<u64>,
}

/// A session: its engine state behind a lock (one generation at a time) and the
/// cancel flag, which any thread may set without the lock.
pub struct HostSession {
    session: Mutex<HostEngineSession>,
    cancel: CancelToken,
    defaults: GenerateParams,
}

/// The live models.
pub static MODELS: Registry<HostModel> = Registry::new();
/// The live sessions.
pub static SESSIONS: Registry<HostSession> = Registry::new();

/// What a prompt is: text to continue, or a user turn for the chat template.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PromptKind {
    /// Continue the context with the text ([`Session::generate`]).
    Plain,
    /// A user turn ([`Session::chat`]).
    Chat,
}

/// Loads a model; returns its handle. `progress` gets fractions from 0 to 1.
pub fn load(
    source: ModelSource,
    opts: &LoadOptions,
    progress: &mut dyn FnMut(f32) -> ControlFlow<()>,
) -> Result<usize, HostError> {
    let cpu = CpuOptions {
        threads: opts.threads,
        precision: opts.precision,
        kernel: None,
    };
    if progress(0.0).is_break() {
        return Err(HostError::new(
            Status::Callback,
            "loading stopped by the progress callback",
        ));
    }
    let engine = engine(source, cpu, opts)?;
    if progress(1.0).is_break() {
        return Err(HostError::new(
            Status::Callback,
            "loading stopped by the progress callback",
        ));
    }
    MODELS
        .insert(HostModel {
            engine,
            kv: opts.kv,
            mem_budget: (opts.mem_budget != 0).then_some(opts.mem_budget),
        })
        .ok_or_else(|| HostError::new(Status::OutOfMemory, "too many live models"))
}

/// The engine of `source` on the backend `opts` chooses.
fn engine(
    source: ModelSource,
    cpu: CpuOptions,
    opts: &LoadOptions,
) -> Result<HostEngine, HostError> {
    #[cfg(feature = "gpu")]
    {
        use glint_runtime::backend::gpu::{AutoChoice, AutoOptions, GpuOptions, auto};
        let gpu = GpuOptions {
            pipeline_cache_dir: opts.gpu_cache_dir.clone(),
            precision: opts.precision,
            ..GpuOptions::default()
        };
        let backend = match opts.backend {
            BackendChoice::Cpu => None,
            BackendChoice::Gpu => Some(GpuBackend::new(&gpu)?),
            BackendChoice::Auto => match auto(&AutoOptions {
                gpu,
                verdicts: opts
                    .gpu_cache_dir
                    .as_ref()
                    .map(|d| d.join("gpu-selftest.json")),
                allow_software: false,
            }) {
                AutoChoice::Gpu(b, _) => Some(*b),
                AutoChoice::Cpu(_) => None,
            },
        };
        if let Some(b) = backend {
            return Ok(HostEngine::Gpu(Engine::with_backend(source, b)?));
        }
    }
    #[cfg(not(feature = "gpu"))]
    if opts.backend == BackendChoice::Gpu {
        return Err(
            BackendError::NoGpu("this library was built without the `gpu` feature".into()).into(),
        );
    }
    Ok(HostEngine::Cpu(Engine::load(source, cpu)?))
}

/// The generation settings a model recommends (its sampling, 512 tokens at most).
pub fn model_defaults(model: usize) -> Result<GenerateParams, HostError> {
    let m = MODELS
        .get(model)
        .ok_or_else(|| HostError::handle("model"))?;
    Ok(on_backend!(HostEngine, &m.engine, |e| defaults_of(e)))
}

fn defaults_of<B: Backend>(engine: &Engine<B>) -> GenerateParams {
    GenerateParams {
        sampler: SamplerConfig::for_model(engine.model().config().sampling),
        ..GenerateParams::default()
    }
}

/// Frees a model's handle. Its sessions keep working; the memory goes with the last.
pub fn free_model(model: usize) -> Result<(), HostError> {
    MODELS
        .remove(model)
        .map(drop)
        .ok_or_else(|| HostError::handle("model"))
}

/// A new session on `model` with `context` positions (0: the runtime's default, shrunk
/// to fit the model's memory budget), checked against that budget.
pub fn session_new(model: usize, context: usize) -> Result<usize, HostError> {
    let m = MODELS
        .get(model)
        .ok_or_else(|| HostError::handle("model"))?;
    let opts = SessionOptions {
        context,
        kv: m.kv,
        mem_budget: m.mem_budget,
    };
    let session = match &m.engine {
        HostEngine::Cpu(e) => HostEngineSession::Cpu(Box::new(e.session(opts)?)),
        #[cfg(feature = "gpu")]
        HostEngine::Gpu(e) => HostEngineSession::Gpu(Box::new(e.session(opts)?)),
    };
    SESSIONS
        .insert(HostSession {
            session: Mutex::new(session),
            cancel: CancelToken::new(),
            defaults: on_backend!(HostEngine, &m.engine, |e| defaults_of(e)),
        })
        .ok_or_else(|| HostError::new(Status::OutOfMemory, "too many live sessions"))
}

/// Frees a session's handle. A generation running on it is cancelled and finishes on
/// its own thread; the memory goes when it returns.
pub fn free_session(session: usize) -> Result<(), HostError> {
    let s = SESSIONS
        .remove(session)
        .ok_or_else(|| HostError::handle("session"))?;
    s.cancel.cancel();
    Ok(())
}

/// Asks the session's generation to stop: the one running, else the next one to start.
pub fn cancel(session: usize) -> Result<(), HostError> {
    let s = SESSIONS
        .get(session)
        .ok_or_else(|| HostError::handle("session"))?;
    s.cancel.cancel();
    Ok(())
}

/// The session's default generation settings (its model's [`model_defaults`]).
pub fn session_defaults(session: usize) -> Result<GenerateParams, HostError> {
    let s = SESSIONS
        .get(session)
        .ok_or_else(|| HostError::handle("session"))?;
    Ok(s.defaults.clone())
}

/// The session's engine state, locked for one call; `Busy` while another thread holds it.
fn lock(s: &HostSession) -> Result<MutexGuard<'_, HostEngineSession>, HostError> {
    match s.session.try_lock() {
        Ok(g) => Ok(g),
        // A panic inside a call was caught and reported; the session is still
        // memory-safe, and every generation checks its state before running.
        Err(TryLockError::Poisoned(p)) => Ok(p.into_inner()),
        Err(TryLockError::WouldBlock) => Err(HostError::new(
            Status::Busy,
            "the session is generating on another thread",
        )),
    }
}

/// Forgets the session's context and chat history.
pub fn reset(session: usize) -> Result<(), HostError> {
    let s = SESSIONS
        .get(session)
        .ok_or_else(|| HostError::handle("session"))?;
    on_backend!(HostEngineSession, &mut *lock(&s)?, |x| x.reset());
    Ok(())
}

/// Runs `prompt` on the session and streams the generated text to `on_text` (non-empty
/// pieces; `Break` stops). `params`: `None` for the session's defaults.
pub fn generate(
    session: usize,
    kind: PromptKind,
    prompt: &str,
    params: Option<GenerateParams>,
    on_text: &mut dyn FnMut(&str) -> ControlFlow<()>,
) -> Result<GenerateStats, HostError> {
    let s = SESSIONS
        .get(session)
        .ok_or_else(|| HostError::handle("session"))?;
    let mut session = lock(&s)?;
    let params = GenerateParams {
        cancel: s.cancel.clone(),
        ..params.unwrap_or_else(|| s.defaults.clone())
    };
    let mut stream = |ev: glint_runtime::engine::TokenEvent<'_>| match ev.text.is_empty() {
        true => ControlFlow::Continue(()),
        false => on_text(ev.text),
    };
    let result = on_backend!(HostEngineSession, &mut *session, |x| match kind {
        PromptKind::Plain => x.generate(prompt, &params, &mut stream),
        PromptKind::Chat => x.chat(prompt, &params, &mut stream).map(|(_, st)| st),
    });
    // A cancel is for the generation it found (or the next one): not the one after.
    s.cancel.reset();
    Ok(result?)
}

/// The code of a [`StopReason`] in both bindings.
pub fn stop_code(stop: StopReason) -> i32 {
    match stop {
        StopReason::EndOfText => 0,
        StopReason::StopString => 1,
        StopReason::MaxTokens => 2,
        StopReason::ContextFull => 3,
        StopReason::Cancelled => 4,
    }
}

/// Runs `f`, turning a panic into [`Status::Internal`]: the one guard every entry point
/// of both bindings goes through.
pub fn guard<T>(f: impl FnOnce() -> Result<T, HostError>) -> Result<T, HostError> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(f))
        .unwrap_or_else(|p| Err(HostError::panic(&*p)))
}
