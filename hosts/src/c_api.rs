//! The C ABI (`include/glint.h`, generated from this file by cbindgen). Every entry
//! point runs inside [`host::guard`] (a panic becomes `GLINT_STATUS_INTERNAL`), checks
//! every pointer for null, and takes handles through the registry (a freed or made-up
//! handle is refused, never dereferenced). Enum-like settings are plain integers
//! checked here, never Rust enums, so no value a C caller passes is undefined behaviour.

use crate::host::{self, BackendChoice, HostError, LoadOptions, PromptKind, Status};
use glint_runtime::engine::GenerateParams;
use glint_runtime::{KvType, ModelSource, Precision};
use std::cell::RefCell;
use std::ffi::{CStr, CString, OsStr, c_char, c_int, c_void};
use std::fs::File;
use std::ops::ControlFlow;
use std::os::fd::BorrowedFd;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

/// A loaded model (opaque; a checked handle, not a pointer to memory).
pub struct GlintModel {
    _opaque: [u8; 0],
}

/// A session: a context, its KV cache and chat history (opaque; a checked handle).
pub struct GlintSession {
    _opaque: [u8; 0],
}

/// Bytes of `glint_error.message`, its NUL included.
pub const GLINT_ERROR_MESSAGE_BYTES: usize = 256;

/// Where a failed call describes what happened. The caller owns it (on its stack is
/// fine); Glint fills it on every call that takes one, success included.
#[repr(C)]
pub struct GlintError {
    /// A `glint_status`: 0 on success.
    pub code: c_int,
    /// The message, NUL-terminated UTF-8 (cut at a character boundary if longer).
    pub message: [c_char; GLINT_ERROR_MESSAGE_BYTES],
}

/// Activations of the matrix products (`glint_model_options.precision`).
#[repr(C)]
pub enum GlintPrecision {
    /// int8 activations except in the first two blocks: the runtime's default.
    Mixed = 0,
    /// f32 activations: matches the f32 reference to rounding.
    Exact = 1,
    /// int8 activations and integer dot products everywhere: fastest.
    Int8 = 2,
}

/// Element type of the KV cache (`glint_model_options.kv_type`).
#[repr(C)]
pub enum GlintKvType {
    /// f16: half the bytes of f32. The default.
    F16 = 0,
    /// f32: exact.
    F32 = 1,
    /// int8 per 32-element block: 56% of f16.
    Int8 = 2,
}

/// The backend (`glint_model_options.backend`).
#[repr(C)]
pub enum GlintBackend {
    /// The default. In a library built with the `gpu` feature: a hardware GPU that
    /// passed its self-test (run once per adapter and driver, the verdict kept in
    /// `glint_model_options.gpu_cache_dir`), else the CPU. Without it: the CPU.
    Auto = 0,
    /// The CPU.
    Cpu = 1,
    /// The GPU (Vulkan; the first hardware adapter, else a software one such as
    /// Mesa's lavapipe), without a self-test. Needs the `gpu` feature; where there is
    /// no GPU or no such feature the load fails with `GLINT_STATUS_NO_GPU`.
    Gpu = 2,
}

/// Why a generation ended (`glint_stats.stop_reason`).
#[repr(C)]
pub enum GlintStopReason {
    /// The model ended its answer.
    EndOfText = 0,
    /// A stop string appeared.
    StopString = 1,
    /// `max_tokens` were generated.
    MaxTokens = 2,
    /// The session's context is full.
    ContextFull = 3,
    /// `glint_cancel`, or the token callback returned non-zero.
    Cancelled = 4,
}

/// Called while a model loads with the fraction done (0 to 1), on the loading thread;
/// return non-zero to stop loading (the load then fails with `GLINT_STATUS_CALLBACK`).
pub type GlintProgressFn = Option<unsafe extern "C" fn(fraction: f32, user: *mut c_void) -> c_int>;

/// Called with each piece of generated text: `len` bytes of UTF-8 at `text` (not
/// NUL-terminated; valid only during the call; never split inside a character), on the
/// thread that called `glint_generate`/`glint_chat`. Return non-zero to stop.
pub type GlintTokenFn =
    Option<unsafe extern "C" fn(text: *const c_char, len: usize, user: *mut c_void) -> c_int>;

/// How a model is loaded. All zeros is the defaults, as is passing NULL.
#[repr(C)]
pub struct GlintModelOptions {
    /// CPU threads in all (the caller's included); 0: one per core.
    pub threads: u32,
    /// A `glint_precision`.
    pub precision: c_int,
    /// A `glint_kv_type`: the element type of the sessions' KV caches.
    pub kv_type: c_int,
    /// A `glint_backend`.
    pub backend: c_int,
    /// Most bytes the model and a session on it may hold resident (weights, KV cache,
    /// activations), checked by `glint_session_new`; 0: no limit.
    pub mem_budget: u64,
    /// Load progress; NULL: none.
    pub progress: GlintProgressFn,
    /// Passed to `progress`.
    pub progress_user: *mut c_void,
    /// A folder private to the application (Android: the app's cache folder) where the
    /// GPU backend keeps its compiled kernels and `GLINT_BACKEND_AUTO` its GPU
    /// self-test verdicts, so later starts skip both; NULL: none (compiled and tested
    /// at every process start). Read during the load only.
    pub gpu_cache_dir: *const c_char,
}

/// Settings of one generation. NULL for the session's defaults, or start from
/// `glint_default_params(model)`.
#[repr(C)]
pub struct GlintGenerateParams {
    /// Most tokens to generate.
    pub max_tokens: u32,
    /// Softmax temperature; 0: greedy (the most likely token).
    pub temperature: f32,
    /// Keep the k most likely tokens; 0: all.
    pub top_k: u32,
    /// Keep the most likely tokens up to this probability mass; 1: all.
    pub top_p: f32,
    /// Drop tokens less likely than this times the most likely; 0: none.
    pub min_p: f32,
    /// Penalty on recently seen tokens; 1: off.
    pub repeat_penalty: f32,
    /// Seed of the draw: the same seed, prompt and settings give the same text.
    pub seed: u64,
}

/// Statistics of one generation.
#[repr(C)]
pub struct GlintStats {
    /// Tokens run through the model as prompt.
    pub prompt_tokens: u64,
    /// Tokens generated.
    pub generated_tokens: u64,
    /// Milliseconds from the call to the first generated token.
    pub time_to_first_token_ms: f64,
    /// Prompt tokens per second.
    pub prefill_tok_s: f64,
    /// Generated tokens per second after the first.
    pub decode_tok_s: f64,
    /// Bytes of KV cache in use at the end.
    pub kv_bytes: u64,
    /// A `glint_stop_reason`.
    pub stop_reason: c_int,
}

thread_local! {
    /// The message of this thread's last status-returning call ("" after a success).
    static LAST_ERROR: RefCell<CString> = RefCell::new(CString::default());
}

fn c_string(s: &str) -> CString {
    CString::new(s.replace('\0', " ")).unwrap_or_default()
}

/// Records `r` as this thread's last error; returns its code.
fn record(r: Result<(), HostError>) -> c_int {
    let (code, message) = match &r {
        Ok(()) => (Status::Ok, ""),
        Err(e) => (e.status, e.message.as_str()),
    };
    LAST_ERROR.with(|m| *m.borrow_mut() = c_string(message));
    code as c_int
}

/// Writes `r`'s code and message into `err` (when not null).
///
/// # Safety
/// `err` is null or points to a writable `GlintError`.
unsafe fn report(err: *mut GlintError, r: Result<(), &HostError>) {
    // SAFETY: the caller passes null or a writable GlintError.
    let Some(err) = (unsafe { err.as_mut() }) else {
        return;
    };
    let (code, message) = match r {
        Ok(()) => (Status::Ok, ""),
        Err(e) => (e.status, e.message.as_str()),
    };
    err.code = code as c_int;
    let mut n = message.len().min(GLINT_ERROR_MESSAGE_BYTES - 1);
    while !message.is_char_boundary(n) {
        n -= 1;
    }
    for (d, s) in err.message.iter_mut().zip(&message.as_bytes()[..n]) {
        *d = *s as c_char;
    }
    err.message[n] = 0;
}

/// A NUL-terminated argument as `&str`.
///
/// # Safety
/// `p` is null or points to a NUL-terminated string that outlives `'a`.
unsafe fn text<'a>(p: *const c_char, what: &str) -> Result<&'a str, HostError> {
    if p.is_null() {
        return Err(HostError::new(
            Status::NullArgument,
            format!("{what} is NULL"),
        ));
    }
    // SAFETY: non-null and NUL-terminated by the caller's contract.
    unsafe { CStr::from_ptr(p) }
        .to_str()
        .map_err(|_| HostError::new(Status::InvalidArgument, format!("{what} is not UTF-8")))
}

fn handle<T>(p: *const T) -> usize {
    p.addr()
}

fn model_ptr(h: usize) -> *mut GlintModel {
    std::ptr::without_provenance_mut(h)
}

fn session_ptr(h: usize) -> *mut GlintSession {
    std::ptr::without_provenance_mut(h)
}

/// The options behind `opts` (NULL: the defaults), checked.
///
/// # Safety
/// `opts` is null or points to a readable `GlintModelOptions` whose `gpu_cache_dir` is null
/// or NUL-terminated.
unsafe fn load_options(
    opts: *const GlintModelOptions,
) -> Result<(LoadOptions, GlintProgressFn, *mut c_void), HostError> {
    // SAFETY: null or readable by the caller's contract.
    let Some(o) = (unsafe { opts.as_ref() }) else {
        return Ok((LoadOptions::default(), None, std::ptr::null_mut()));
    };
    let bad = |what: &str, v: c_int| {
        HostError::new(Status::InvalidArgument, format!("unknown {what} {v}"))
    };
    let precision = match o.precision {
        0 => Precision::Mixed,
        1 => Precision::Exact,
        2 => Precision::Int8,
        v => return Err(bad("precision", v)),
    };
    let kv = match o.kv_type {
        0 => KvType::F16,
        1 => KvType::F32,
        2 => KvType::Int8,
        v => return Err(bad("kv_type", v)),
    };
    let backend = match o.backend {
        0 => BackendChoice::Auto,
        1 => BackendChoice::Cpu,
        2 => BackendChoice::Gpu,
        v => return Err(bad("backend", v)),
    };
    // SAFETY: null or a NUL-terminated string by the caller's contract.
    let gpu_cache_dir = (!o.gpu_cache_dir.is_null())
        .then(|| unsafe { CStr::from_ptr(o.gpu_cache_dir) })
        .map(|c| Path::new(OsStr::from_bytes(c.to_bytes())).to_path_buf());
    let opts = LoadOptions {
        threads: o.threads as usize,
        precision,
        kv,
        backend,
        mem_budget: o.mem_budget,
        gpu_cache_dir,
    };
    Ok((opts, o.progress, o.progress_user))
}

/// Loads from `source()` with `opts`; the shared body of both load functions.
///
/// # Safety
/// `opts` and `err` as in `glint_model_load`.
unsafe fn load_with(
    source: impl FnOnce() -> Result<ModelSource, HostError>,
    opts: *const GlintModelOptions,
    err: *mut GlintError,
) -> *mut GlintModel {
    let r = host::guard(|| {
        // SAFETY: forwarded from the caller.
        let (opts, progress, user) = unsafe { load_options(opts) }?;
        let mut on_progress = |f: f32| match progress {
            // SAFETY: the caller's function, called as documented.
            Some(p) if unsafe { p(f, user) } != 0 => ControlFlow::Break(()),
            _ => ControlFlow::Continue(()),
        };
        host::load(source()?, &opts, &mut on_progress)
    });
    // SAFETY: forwarded from the caller.
    unsafe { report(err, r.as_ref().map(drop)) };
    r.map_or(std::ptr::null_mut(), model_ptr)
}

/// Glint's version, e.g. "0.1.0". Static; any thread.
#[unsafe(no_mangle)]
pub extern "C" fn glint_version() -> *const c_char {
    concat!(env!("CARGO_PKG_VERSION"), "\0").as_ptr().cast()
}

/// The message in `err` (NUL-terminated; "" after a success; "" for NULL). Lives as
/// long as `*err`. Any thread.
///
/// # Safety
/// `err` is null or points to a `glint_error` filled by Glint.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn glint_error_message(err: *const GlintError) -> *const c_char {
    // SAFETY: null or a GlintError by the caller's contract.
    match unsafe { err.as_ref() } {
        Some(e) => e.message.as_ptr(),
        None => c"".as_ptr(),
    }
}

/// The message of the calling thread's last call that returns a status
/// (`glint_generate`, `glint_chat`, `glint_session_reset`): "" after a success. Valid
/// until this thread's next such call. Any thread (each sees its own).
#[unsafe(no_mangle)]
pub extern "C" fn glint_last_error_message() -> *const c_char {
    LAST_ERROR.with(|m| m.borrow().as_ptr())
}

/// The default options (all zeros: as NULL). Any thread.
#[unsafe(no_mangle)]
pub extern "C" fn glint_model_options_default() -> GlintModelOptions {
    GlintModelOptions {
        threads: 0,
        precision: GlintPrecision::Mixed as c_int,
        kv_type: GlintKvType::F16 as c_int,
        backend: GlintBackend::Auto as c_int,
        mem_budget: 0,
        progress: None,
        progress_user: std::ptr::null_mut(),
        gpu_cache_dir: std::ptr::null(),
    }
}

/// Loads a `.glint` model from `path` (NULL `opts`: the defaults). Returns NULL on
/// failure with `err` (may be NULL) filled: `GLINT_STATUS_IO` for a missing file,
/// `GLINT_STATUS_BAD_MODEL` for a truncated or corrupt one. The file is memory-mapped;
/// only the header is read. Any thread; any number of loads at once.
///
/// # Safety
/// `path` is null or NUL-terminated; `opts` null or a `glint_model_options`; `err` null
/// or writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn glint_model_load(
    path: *const c_char,
    opts: *const GlintModelOptions,
    err: *mut GlintError,
) -> *mut GlintModel {
    let source = || {
        if path.is_null() {
            return Err(HostError::new(Status::NullArgument, "path is NULL"));
        }
        // SAFETY: non-null and NUL-terminated by the caller's contract.
        let bytes = unsafe { CStr::from_ptr(path) }.to_bytes();
        Ok(ModelSource::Path(
            Path::new(OsStr::from_bytes(bytes)).into(),
        ))
    };
    // SAFETY: forwarded from the caller.
    unsafe { load_with(source, opts, err) }
}

/// Loads a model stored at `offset`, `length` bytes, in the open file `fd` (a model
/// inside an APK, an Android `ParcelFileDescriptor`). The descriptor is duplicated, not
/// taken: the caller may close it after this returns. Otherwise as `glint_model_load`.
///
/// # Safety
/// `fd` is an open descriptor (or negative: refused); `opts` and `err` as in
/// `glint_model_load`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn glint_model_load_fd(
    fd: c_int,
    offset: u64,
    length: u64,
    opts: *const GlintModelOptions,
    err: *mut GlintError,
) -> *mut GlintModel {
    let source = || {
        if fd < 0 {
            return Err(HostError::new(Status::InvalidArgument, format!("fd {fd}")));
        }
        // SAFETY: non-negative, and open for this call by the caller's contract.
        let file = File::from(
            unsafe { BorrowedFd::borrow_raw(fd) }
                .try_clone_to_owned()
                .map_err(|e| {
                    HostError::new(Status::Io, format!("cannot duplicate fd {fd}: {e}"))
                })?,
        );
        Ok(ModelSource::FileRange {
            file,
            offset,
            len: length,
        })
    };
    // SAFETY: forwarded from the caller.
    unsafe { load_with(source, opts, err) }
}

/// Frees a model handle (NULL, or an already freed handle: nothing happens). Sessions
/// made from it keep working; the model's memory goes with the last of them. Any
/// thread, also while its sessions generate.
#[unsafe(no_mangle)]
pub extern "C" fn glint_model_free(model: *mut GlintModel) {
    if !model.is_null() {
        let _ = host::guard(|| host::free_model(handle(model)));
    }
}

/// The generation settings `model` recommends (its sampling, at most 512 tokens); for
/// an invalid handle, the general defaults. Any thread.
#[unsafe(no_mangle)]
pub extern "C" fn glint_default_params(model: *const GlintModel) -> GlintGenerateParams {
    let p = host::guard(|| host::model_defaults(handle(model))).unwrap_or_default();
    let s = &p.sampler;
    GlintGenerateParams {
        max_tokens: p.max_tokens.try_into().unwrap_or(u32::MAX),
        temperature: s.temperature,
        top_k: s.top_k.try_into().unwrap_or(u32::MAX),
        top_p: s.top_p,
        min_p: s.min_p,
        repeat_penalty: s.repeat_penalty,
        seed: s.seed,
    }
}

/// A new session on `model` with `context` positions (at most the model's trained
/// context, else `GLINT_STATUS_INVALID_ARGUMENT`; 0: the runtime's default of 2048, or
/// less to fit the memory budget). Checked against `mem_budget` before anything is
/// allocated (`GLINT_STATUS_OVER_BUDGET`, the message naming weights, KV cache and
/// activations); its KV cache is allocated now (`GLINT_STATUS_OUT_OF_MEMORY` if it
/// cannot be). NULL on failure with `err` filled. Any thread.
///
/// # Safety
/// `err` is null or writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn glint_session_new(
    model: *mut GlintModel,
    context: u32,
    err: *mut GlintError,
) -> *mut GlintSession {
    let r = host::guard(|| host::session_new(handle(model), context as usize));
    // SAFETY: forwarded from the caller.
    unsafe { report(err, r.as_ref().map(drop)) };
    r.map_or(std::ptr::null_mut(), session_ptr)
}

/// Frees a session handle (NULL or already freed: nothing happens). A generation
/// running on it on another thread is cancelled and returns normally; the memory goes
/// then. Any thread.
#[unsafe(no_mangle)]
pub extern "C" fn glint_session_free(session: *mut GlintSession) {
    if !session.is_null() {
        let _ = host::guard(|| host::free_session(handle(session)));
    }
}

/// Asks the session's generation to stop: the one running (it stops within one
/// decode step, or one prefill batch), else the next one to start (which then returns
/// at once with `GLINT_STOP_REASON_CANCELLED`). Any thread, any time; an invalid
/// handle is ignored. Never blocks.
#[unsafe(no_mangle)]
pub extern "C" fn glint_cancel(session: *mut GlintSession) {
    let _ = host::guard(|| host::cancel(handle(session)));
}

/// Forgets the session's context and chat history. Returns a `glint_status`
/// (`GLINT_STATUS_BUSY` while it generates on another thread).
#[unsafe(no_mangle)]
pub extern "C" fn glint_session_reset(session: *mut GlintSession) -> c_int {
    record(host::guard(|| host::reset(handle(session))))
}

/// The shared body of `glint_generate` and `glint_chat`.
///
/// # Safety
/// As `glint_generate`.
unsafe fn run(
    kind: PromptKind,
    session: *mut GlintSession,
    prompt: *const c_char,
    p: *const GlintGenerateParams,
    on_token: GlintTokenFn,
    user: *mut c_void,
    stats: *mut GlintStats,
) -> c_int {
    let r = host::guard(|| {
        // SAFETY: forwarded from the caller.
        let prompt = unsafe { text(prompt, "prompt") }?;
        // SAFETY: null or readable by the caller's contract.
        let params = match unsafe { p.as_ref() } {
            None => None,
            Some(p) => Some(params(session, p)?),
        };
        let mut on_text = |t: &str| match on_token {
            // SAFETY: the caller's function, called as documented.
            Some(f) if unsafe { f(t.as_ptr().cast(), t.len(), user) } != 0 => {
                ControlFlow::Break(())
            }
            _ => ControlFlow::Continue(()),
        };
        let st = host::generate(handle(session), kind, prompt, params, &mut on_text)?;
        // SAFETY: null or writable by the caller's contract.
        if let Some(out) = unsafe { stats.as_mut() } {
            *out = GlintStats {
                prompt_tokens: st.prompt_tokens as u64,
                generated_tokens: st.generated_tokens as u64,
                time_to_first_token_ms: st.time_to_first_token.as_secs_f64() * 1e3,
                prefill_tok_s: st.prefill_tok_s,
                decode_tok_s: st.decode_tok_s,
                kv_bytes: st.kv_bytes,
                stop_reason: host::stop_code(st.stop),
            };
        }
        Ok(())
    });
    record(r)
}

/// `p` as the runtime's settings over the session's defaults (stop strings, cancel).
fn params(
    session: *mut GlintSession,
    p: &GlintGenerateParams,
) -> Result<GenerateParams, HostError> {
    let d = host::session_defaults(handle(session))?;
    Ok(GenerateParams {
        max_tokens: p.max_tokens as usize,
        sampler: glint_runtime::sampler::SamplerConfig {
            temperature: p.temperature,
            top_k: p.top_k as usize,
            top_p: p.top_p,
            min_p: p.min_p,
            repeat_penalty: p.repeat_penalty,
            seed: p.seed,
            ..d.sampler
        },
        ..d
    })
}

/// Continues the session's context with `prompt` (UTF-8; special tokens such as
/// `<|im_start|>` are parsed) and generates, streaming text to `on_token` (may be
/// NULL). `p` NULL: the session's defaults. `stats` (may be NULL) is filled on success.
/// Returns a `glint_status` (0 on success, including a cancelled generation: see
/// `stats.stop_reason`); the message is `glint_last_error_message()`. A failed call
/// leaves the session as it was (`GLINT_STATUS_PROMPT_TOO_LONG`: the prompt does not
/// fit the context left). One generation per session at a time: a second thread gets
/// `GLINT_STATUS_BUSY`; different sessions generate in parallel, also on one model.
/// Runs on the calling thread (and the model's worker threads); `on_token` is called
/// on the calling thread.
///
/// # Safety
/// `prompt` null or NUL-terminated; `p` null or a `glint_generate_params`; `on_token`
/// null or a function as `glint_token_fn`, which must not unwind; `stats` null or writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn glint_generate(
    session: *mut GlintSession,
    prompt: *const c_char,
    p: *const GlintGenerateParams,
    on_token: GlintTokenFn,
    user: *mut c_void,
    stats: *mut GlintStats,
) -> c_int {
    // SAFETY: forwarded from the caller.
    unsafe { run(PromptKind::Plain, session, prompt, p, on_token, user, stats) }
}

/// As `glint_generate`, with `message` as a user turn: the session keeps the chat
/// history and renders it with the model's chat template (`GLINT_STATUS_TEMPLATE` if
/// the model has none); the reply joins the history.
///
/// # Safety
/// As `glint_generate`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn glint_chat(
    session: *mut GlintSession,
    message: *const c_char,
    p: *const GlintGenerateParams,
    on_token: GlintTokenFn,
    user: *mut c_void,
    stats: *mut GlintStats,
) -> c_int {
    // SAFETY: forwarded from the caller.
    unsafe { run(PromptKind::Chat, session, message, p, on_token, user, stats) }
}
