//! Measures the hosts' costs for `hosts/README.md` (run through `/work/tools/quiet.sh`):
//! - per-token time of a greedy chat answer through the Rust API and through the C ABI
//!   (the callback crossing), same prompt and settings, medians of `REPS`;
//! - how long `glint_cancel` from a second thread takes to stop a generation: from the
//!   cancel call to `glint_chat` returning, `TRIES` cancels at random moments
//!   (prefill and decode), worst case and median.
//!
//! usage: host_bench MODEL [THREADS]

use glint::c_api::{
    GlintModel, GlintSession, GlintStats, glint_cancel, glint_chat, glint_default_params,
    glint_model_free, glint_model_load, glint_model_options_default, glint_session_free,
    glint_session_new, glint_session_reset,
};
use glint_runtime::engine::GenerateParams;
use glint_runtime::sampler::SamplerConfig;
use glint_runtime::{CpuOptions, Engine, SessionOptions};
use std::ffi::{CString, c_char, c_int, c_void};
use std::ops::ControlFlow;
use std::sync::mpsc;
use std::time::{Duration, Instant};

const PROMPT: &str = "Tell me a long story about a dragon who learns to fly.";
const TOKENS: usize = 64;
const REPS: usize = 5;
const TRIES: usize = 100;

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

unsafe extern "C" fn count(_text: *const c_char, _len: usize, user: *mut c_void) -> c_int {
    // SAFETY: `user` is the `usize` counter passed to glint_chat below.
    unsafe { *user.cast::<usize>() += 1 };
    0
}

/// A session handle usable from the canceller thread (a handle is a plain number).
#[derive(Clone, Copy)]
struct SessionHandle(*mut GlintSession);
// SAFETY: handles are checked numbers, never dereferenced; every function takes them on
// any thread.
unsafe impl Send for SessionHandle {}

impl SessionHandle {
    fn get(self) -> *mut GlintSession {
        self.0
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let path = args.get(1).expect("usage: host_bench MODEL [THREADS]");
    let threads: usize = args.get(2).map_or(2, |t| t.parse().expect("threads"));

    // The Rust API.
    let engine = Engine::load(
        path.as_str(),
        CpuOptions {
            threads,
            ..CpuOptions::default()
        },
    )
    .expect("load");
    let params = GenerateParams {
        max_tokens: TOKENS,
        sampler: SamplerConfig {
            temperature: 0.0,
            ..SamplerConfig::for_model(engine.model().config().sampling)
        },
        ..GenerateParams::default()
    };
    let mut rust_ms = Vec::new();
    let mut rust_tokens = 0;
    for _ in 0..REPS {
        let mut s = engine.session(SessionOptions::default()).expect("session");
        let mut pieces = 0usize;
        let t = Instant::now();
        let st = s
            .chat(PROMPT, &params, |_| {
                pieces += 1;
                ControlFlow::Continue(())
            })
            .expect("chat")
            .1;
        rust_ms.push(t.elapsed().as_secs_f64() * 1e3 / st.generated_tokens as f64);
        rust_tokens = st.generated_tokens;
    }
    drop(engine);

    // The C ABI.
    let cpath = CString::new(path.as_str()).expect("path");
    let cprompt = CString::new(PROMPT).expect("prompt");
    let mut opts = glint_model_options_default();
    opts.threads = threads as u32;
    // SAFETY: valid NUL-terminated strings and options; err may be null.
    let model: *mut GlintModel =
        unsafe { glint_model_load(cpath.as_ptr(), &opts, std::ptr::null_mut()) };
    assert!(!model.is_null(), "glint_model_load");
    let mut p = glint_default_params(model);
    p.temperature = 0.0;
    p.max_tokens = TOKENS as u32;
    let mut c_ms = Vec::new();
    let mut c_tokens = 0;
    for _ in 0..REPS {
        // SAFETY: a live model; err may be null.
        let s = unsafe { glint_session_new(model, 0, std::ptr::null_mut()) };
        let mut pieces = 0usize;
        let mut st = std::mem::MaybeUninit::<GlintStats>::uninit();
        let t = Instant::now();
        // SAFETY: valid prompt, params, callback and user pointer; stats writable.
        let rc = unsafe {
            glint_chat(
                s,
                cprompt.as_ptr(),
                &p,
                Some(count),
                (&raw mut pieces).cast(),
                st.as_mut_ptr(),
            )
        };
        assert_eq!(rc, 0, "glint_chat");
        // SAFETY: filled by the successful call.
        let st = unsafe { st.assume_init() };
        c_ms.push(t.elapsed().as_secs_f64() * 1e3 / st.generated_tokens as f64);
        c_tokens = st.generated_tokens;
        glint_session_free(s);
    }
    let (r, c) = (median(rust_ms), median(c_ms));
    println!(
        "per token, {threads} threads, {TOKENS}-token greedy generation, median of {REPS}: \
         Rust API {r:.3} ms ({rust_tokens} tokens), C ABI {c:.3} ms ({c_tokens} tokens), \
         difference {:+.1} us",
        (c - r) * 1e3
    );

    // Cancel latency.
    // SAFETY: a live model; err may be null.
    let session = SessionHandle(unsafe { glint_session_new(model, 0, std::ptr::null_mut()) });
    let mut latencies = Vec::new();
    let mut rng = 0x2545_f491_4f6c_dd1d_u64;
    let mut finished_first = 0;
    while latencies.len() < TRIES {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        let delay = Duration::from_micros(rng % 400_000);
        glint_session_reset(session.0);
        let (tx, rx) = mpsc::channel();
        let canceller = std::thread::spawn(move || {
            std::thread::sleep(delay);
            let at = Instant::now();
            glint_cancel(session.get());
            tx.send(at).expect("send");
        });
        let mut st = std::mem::MaybeUninit::<GlintStats>::uninit();
        // SAFETY: valid prompt and params; no callback; stats writable.
        let rc = unsafe {
            glint_chat(
                session.0,
                cprompt.as_ptr(),
                &p,
                None,
                std::ptr::null_mut(),
                st.as_mut_ptr(),
            )
        };
        let returned = Instant::now();
        assert_eq!(rc, 0, "glint_chat");
        canceller.join().expect("canceller");
        let cancelled_at = rx.recv().expect("cancel time");
        // SAFETY: filled by the successful call.
        let st = unsafe { st.assume_init() };
        if st.stop_reason != 4 || cancelled_at > returned {
            // Finished before the cancel: the stale flag is cleared by the next reset's
            // generation; not a sample.
            finished_first += 1;
            glint_cancel(session.0);
            glint_session_reset(session.0);
            // SAFETY: as above.
            unsafe {
                glint_chat(
                    session.0,
                    cprompt.as_ptr(),
                    &p,
                    None,
                    std::ptr::null_mut(),
                    std::ptr::null_mut(),
                )
            };
            continue;
        }
        latencies.push(returned.duration_since(cancelled_at).as_secs_f64() * 1e3);
    }
    let worst = latencies.iter().copied().fold(0.0, f64::max);
    println!(
        "cancel to return, {TRIES} cancels at random moments ({finished_first} runs finished \
         first, not counted): worst {worst:.2} ms, median {:.2} ms",
        median(latencies)
    );
    glint_session_free(session.0);
    glint_model_free(model);
}
