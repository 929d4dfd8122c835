//! The JNI entry points of `com.glint.Native` (the Java package in `java/com/glint/`).
//! Each runs inside `EnvUnowned::with_env` (which catches panics) and resolves with
//! [`ThrowGlint`]: every failure, a caught panic included, is thrown as
//! `com.glint.GlintException` with its [`Status`] code. Callbacks (tokens, load
//! progress) run on the calling Java thread, so no thread is ever attached here; each
//! token's local references are freed with a local frame; no global reference is kept;
//! no JNI critical section is ever entered. A Java exception thrown by a callback stops
//! the call and becomes the `GlintException`'s cause.

use crate::host::{self, BackendChoice, HostError, LoadOptions, PromptKind, Status};
use glint_runtime::engine::GenerateParams;
use glint_runtime::{KvType, ModelSource, Precision};
use jni::errors::ErrorPolicy;
use jni::objects::{JClass, JObject, JString, JThrowable, JValue};
use jni::sys::{jboolean, jdouble, jfloat, jint, jlong};
use jni::{Env, EnvUnowned, jni_sig, jni_str};
use std::fs::File;
use std::ops::ControlFlow;
use std::os::fd::BorrowedFd;

impl From<jni::errors::Error> for HostError {
    fn from(e: jni::errors::Error) -> Self {
        match e {
            jni::errors::Error::JavaException => {
                HostError::new(Status::Callback, "a Java callback threw")
            }
            e => HostError::new(Status::Internal, format!("JNI: {e}")),
        }
    }
}

/// Throws `GlintException(code, message, cause)`, the cause being the Java exception
/// pending (thrown by a callback), if any.
struct ThrowGlint;

fn throw(env: &mut Env<'_>, e: &HostError) -> jni::errors::Result<()> {
    let cause = env.exception_occurred();
    env.exception_clear();
    let cause: JObject = cause.map(Into::into).unwrap_or_default();
    let message = env.new_string(&e.message)?;
    let ex = env.new_object(
        jni_str!("com/glint/GlintException"),
        jni_sig!("(ILjava/lang/String;Ljava/lang/Throwable;)V"),
        &[
            JValue::Int(e.status as jint),
            JValue::Object(&message),
            JValue::Object(&cause),
        ],
    )?;
    let ex = env.cast_local::<JThrowable>(ex)?;
    // `throw` reports the now-pending exception as an error: that is the point.
    let _ = env.throw(&ex);
    Ok(())
}

impl<T: Default> ErrorPolicy<T, HostError> for ThrowGlint {
    type Captures<'unowned_env_local: 'native_method, 'native_method> = ();

    fn on_error<'unowned_env_local: 'native_method, 'native_method>(
        env: &mut Env<'unowned_env_local>,
        _cap: &mut Self::Captures<'unowned_env_local, 'native_method>,
        err: HostError,
    ) -> jni::errors::Result<T> {
        throw(env, &err)?;
        Ok(T::default())
    }

    fn on_panic<'unowned_env_local: 'native_method, 'native_method>(
        env: &mut Env<'unowned_env_local>,
        _cap: &mut Self::Captures<'unowned_env_local, 'native_method>,
        payload: Box<dyn std::any::Any + Send + 'static>,
    ) -> jni::errors::Result<T> {
        throw(env, &HostError::panic(&*payload))?;
        Ok(T::default())
    }
}

fn null(what: &str) -> HostError {
    HostError::new(Status::NullArgument, format!("{what} is null"))
}

/// A Java string argument that may be null.
fn optional_string(env: &Env<'_>, s: &JString<'_>) -> Result<Option<String>, HostError> {
    match s.is_null() {
        true => Ok(None),
        false => Ok(Some(s.try_to_string(env)?)),
    }
}

/// A Java string argument as a Rust string.
fn string(env: &Env<'_>, s: &JString<'_>, what: &str) -> Result<String, HostError> {
    if s.is_null() {
        return Err(null(what));
    }
    Ok(s.try_to_string(env)?)
}

/// The Java `Options` fields (passed as primitives by `Glint.java`), checked.
fn load_options(
    threads: jint,
    precision: jint,
    kv: jint,
    backend: jint,
    mem_budget: jlong,
    gpu_cache_dir: Option<String>,
) -> Result<LoadOptions, HostError> {
    let bad = |what: &str, v: i64| HostError::new(Status::InvalidArgument, format!("{what} {v}"));
    Ok(LoadOptions {
        threads: usize::try_from(threads).map_err(|_| bad("threads", threads.into()))?,
        precision: match precision {
            0 => Precision::Mixed,
            1 => Precision::Exact,
            2 => Precision::Int8,
            v => return Err(bad("precision", v.into())),
        },
        kv: match kv {
            0 => KvType::F16,
            1 => KvType::F32,
            2 => KvType::Int8,
            v => return Err(bad("kv type", v.into())),
        },
        backend: match backend {
            0 => BackendChoice::Auto,
            1 => BackendChoice::Cpu,
            2 => BackendChoice::Gpu,
            v => return Err(bad("backend", v.into())),
        },
        mem_budget: u64::try_from(mem_budget).map_err(|_| bad("memory budget", mem_budget))?,
        gpu_cache_dir: gpu_cache_dir.map(Into::into),
    })
}

/// Loads `source` reporting progress to the Java `listener` (may be null).
fn load(
    env: &mut Env<'_>,
    source: ModelSource,
    opts: LoadOptions,
    listener: &JObject<'_>,
) -> Result<jlong, HostError> {
    let mut on_progress = |f: f32| {
        if listener.is_null() {
            return ControlFlow::Continue(());
        }
        let r = env.with_local_frame(4, |env| {
            env.call_method(
                listener,
                jni_str!("onProgress"),
                jni_sig!("(F)V"),
                &[JValue::Float(f)],
            )
            .map(drop)
        });
        match r {
            Ok(()) => ControlFlow::Continue(()),
            Err(_) => ControlFlow::Break(()),
        }
    };
    let handle = host::load(source, &opts, &mut on_progress)?;
    Ok(handle as jlong)
}

/// `Native.loadPath(String, int, int, int, int, long, String, ProgressListener)`.
#[unsafe(no_mangle)]
pub extern "system" fn Java_com_glint_Native_loadPath<'local>(
    mut env: EnvUnowned<'local>,
    _class: JClass<'local>,
    path: JString<'local>,
    threads: jint,
    precision: jint,
    kv: jint,
    backend: jint,
    mem_budget: jlong,
    gpu_cache_dir: JString<'local>,
    listener: JObject<'local>,
) -> jlong {
    env.with_env(|env| -> Result<jlong, HostError> {
        let path = string(env, &path, "path")?;
        let dir = optional_string(env, &gpu_cache_dir)?;
        let opts = load_options(threads, precision, kv, backend, mem_budget, dir)?;
        load(env, ModelSource::Path(path.into()), opts, &listener)
    })
    .resolve::<ThrowGlint>()
}

/// The `int` inside a `java.io.FileDescriptor` (`descriptor` on Android, `fd` on
/// OpenJDK; JNI reads private fields).
fn raw_fd(env: &mut Env<'_>, fd: &JObject<'_>) -> Result<i32, HostError> {
    if fd.is_null() {
        return Err(null("file descriptor"));
    }
    for name in [jni_str!("descriptor"), jni_str!("fd")] {
        match env.get_field(fd, name, jni_sig!("I")) {
            Ok(v) => return Ok(v.i()?),
            // NoSuchFieldError: try the other name.
            Err(_) => env.exception_clear(),
        }
    }
    Err(HostError::new(
        Status::InvalidArgument,
        "this FileDescriptor has no int field",
    ))
}

/// `Native.loadFd(FileDescriptor, long, long, int, int, int, int, long, String,
/// ProgressListener)`.
#[unsafe(no_mangle)]
pub extern "system" fn Java_com_glint_Native_loadFd<'local>(
    mut env: EnvUnowned<'local>,
    _class: JClass<'local>,
    fd: JObject<'local>,
    offset: jlong,
    length: jlong,
    threads: jint,
    precision: jint,
    kv: jint,
    backend: jint,
    mem_budget: jlong,
    gpu_cache_dir: JString<'local>,
    listener: JObject<'local>,
) -> jlong {
    env.with_env(|env| -> Result<jlong, HostError> {
        let raw = raw_fd(env, &fd)?;
        let (Ok(offset), Ok(len), true) = (u64::try_from(offset), u64::try_from(length), raw >= 0)
        else {
            return Err(HostError::new(
                Status::InvalidArgument,
                format!("fd {raw}, offset {offset}, length {length}"),
            ));
        };
        // SAFETY: a valid FileDescriptor object holds an open descriptor (or -1, refused
        // above) while the caller holds it, which it does during this call.
        let file = File::from(
            unsafe { BorrowedFd::borrow_raw(raw) }
                .try_clone_to_owned()
                .map_err(|e| {
                    HostError::new(Status::Io, format!("cannot duplicate fd {raw}: {e}"))
                })?,
        );
        let dir = optional_string(env, &gpu_cache_dir)?;
        let opts = load_options(threads, precision, kv, backend, mem_budget, dir)?;
        load(
            env,
            ModelSource::FileRange { file, offset, len },
            opts,
            &listener,
        )
    })
    .resolve::<ThrowGlint>()
}

/// `Native.modelFree(long)`.
#[unsafe(no_mangle)]
pub extern "system" fn Java_com_glint_Native_modelFree<'local>(
    mut env: EnvUnowned<'local>,
    _class: JClass<'local>,
    model: jlong,
) {
    env.with_env(|_| host::free_model(model as usize))
        .resolve::<ThrowGlint>()
}

/// `Native.sessionNew(long, int)`.
#[unsafe(no_mangle)]
pub extern "system" fn Java_com_glint_Native_sessionNew<'local>(
    mut env: EnvUnowned<'local>,
    _class: JClass<'local>,
    model: jlong,
    context: jint,
) -> jlong {
    env.with_env(|_| -> Result<jlong, HostError> {
        let context = usize::try_from(context)
            .map_err(|_| HostError::new(Status::InvalidArgument, format!("context {context}")))?;
        Ok(host::session_new(model as usize, context)? as jlong)
    })
    .resolve::<ThrowGlint>()
}

/// `Native.sessionFree(long)`.
#[unsafe(no_mangle)]
pub extern "system" fn Java_com_glint_Native_sessionFree<'local>(
    mut env: EnvUnowned<'local>,
    _class: JClass<'local>,
    session: jlong,
) {
    env.with_env(|_| host::free_session(session as usize))
        .resolve::<ThrowGlint>()
}

/// `Native.cancel(long)`.
#[unsafe(no_mangle)]
pub extern "system" fn Java_com_glint_Native_cancel<'local>(
    mut env: EnvUnowned<'local>,
    _class: JClass<'local>,
    session: jlong,
) {
    env.with_env(|_| host::cancel(session as usize))
        .resolve::<ThrowGlint>()
}

/// `Native.reset(long)`.
#[unsafe(no_mangle)]
pub extern "system" fn Java_com_glint_Native_reset<'local>(
    mut env: EnvUnowned<'local>,
    _class: JClass<'local>,
    session: jlong,
) {
    env.with_env(|_| host::reset(session as usize))
        .resolve::<ThrowGlint>()
}

/// The Java `GenerateParams` over the session's defaults: NaN (or a negative `topK`)
/// keeps the model's recommendation.
struct JavaParams {
    max_tokens: jint,
    temperature: jfloat,
    top_k: jint,
    top_p: jfloat,
    min_p: jfloat,
    repeat_penalty: jfloat,
    seed: jlong,
}

impl JavaParams {
    fn over(&self, d: GenerateParams) -> Result<GenerateParams, HostError> {
        let or = |v: f32, d: f32| if v.is_nan() { d } else { v };
        let max_tokens = usize::try_from(self.max_tokens).map_err(|_| {
            HostError::new(
                Status::InvalidArgument,
                format!("maxTokens {}", self.max_tokens),
            )
        })?;
        let s = d.sampler.clone();
        Ok(GenerateParams {
            max_tokens,
            sampler: glint_runtime::sampler::SamplerConfig {
                temperature: or(self.temperature, s.temperature),
                top_k: usize::try_from(self.top_k).unwrap_or(s.top_k),
                top_p: or(self.top_p, s.top_p),
                min_p: or(self.min_p, s.min_p),
                repeat_penalty: or(self.repeat_penalty, s.repeat_penalty),
                seed: self.seed as u64,
                ..s
            },
            ..d
        })
    }
}

/// `Native.generate(long, boolean, String, int, float, int, float, float, float, long,
/// TokenCallback)`: the statistics as `double[7]` (`Stats`'s constructor order).
#[unsafe(no_mangle)]
pub extern "system" fn Java_com_glint_Native_generate<'local>(
    mut env: EnvUnowned<'local>,
    _class: JClass<'local>,
    session: jlong,
    chat: jboolean,
    prompt: JString<'local>,
    max_tokens: jint,
    temperature: jfloat,
    top_k: jint,
    top_p: jfloat,
    min_p: jfloat,
    repeat_penalty: jfloat,
    seed: jlong,
    callback: JObject<'local>,
) -> jni::objects::JDoubleArray<'local> {
    let params = JavaParams {
        max_tokens,
        temperature,
        top_k,
        top_p,
        min_p,
        repeat_penalty,
        seed,
    };
    env.with_env(|env| -> Result<_, HostError> {
        let prompt = string(env, &prompt, "prompt")?;
        if callback.is_null() {
            return Err(null("callback"));
        }
        let params = params.over(host::session_defaults(session as usize)?)?;
        let kind = match chat {
            true => PromptKind::Chat,
            false => PromptKind::Plain,
        };
        let mut threw = false;
        let mut on_text = |t: &str| {
            let r = env.with_local_frame(4, |env| -> jni::errors::Result<bool> {
                let s = env.new_string(t)?;
                env.call_method(
                    &callback,
                    jni_str!("onToken"),
                    jni_sig!("(Ljava/lang/String;)Z"),
                    &[JValue::Object(&s)],
                )?
                .z()
            });
            match r {
                Ok(true) => ControlFlow::Continue(()),
                Ok(false) => ControlFlow::Break(()),
                Err(_) => {
                    threw = true;
                    ControlFlow::Break(())
                }
            }
        };
        let st = host::generate(session as usize, kind, &prompt, Some(params), &mut on_text)?;
        if threw {
            return Err(HostError::new(Status::Callback, "the token callback threw"));
        }
        let values: [jdouble; 7] = [
            st.prompt_tokens as f64,
            st.generated_tokens as f64,
            st.time_to_first_token.as_secs_f64() * 1e3,
            st.prefill_tok_s,
            st.decode_tok_s,
            st.kv_bytes as f64,
            host::stop_code(st.stop) as f64,
        ];
        let out = env.new_double_array(values.len())?;
        out.set_region(env, 0, &values)?;
        Ok(out)
    })
    .resolve::<ThrowGlint>()
}

/// `Native.version()`.
#[unsafe(no_mangle)]
pub extern "system" fn Java_com_glint_Native_version<'local>(
    mut env: EnvUnowned<'local>,
    _class: JClass<'local>,
) -> JString<'local> {
    env.with_env(|env| -> Result<_, HostError> { Ok(env.new_string(env!("CARGO_PKG_VERSION"))?) })
        .resolve::<ThrowGlint>()
}
