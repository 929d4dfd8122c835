//! The GPU backend on the real model against the CPU backend, same precision (exact f32
//! activations, f16 KV cache): teacher-forced logits at every position of a 256-token
//! text, greedy ids, perplexity; and the teacher-forced logits at the default precision
//! (mixed: int8 activations but in the first two blocks). Built only with the `gpu` feature (CI runs it on Mesa's
//! lavapipe: `cargo test --release -p glint-tests --features gpu --test gpu`); without a
//! Vulkan adapter the tests fail and say so.

mod common;

use common::{fixture, ids, model_path};
use glint_runtime::backend::gpu::{GpuBackend, GpuOptions};
use glint_runtime::backend::{CpuOptions, KvType, Precision};
use glint_runtime::sampler::argmax;
use glint_runtime::{CpuBackend, Engine};

fn gpu_engine_at(precision: Precision) -> Engine<GpuBackend> {
    let opts = GpuOptions {
        precision,
        ..GpuOptions::default()
    };
    let b = GpuBackend::new(&opts).unwrap_or_else(|e| {
        panic!("these tests need a Vulkan adapter (lavapipe: mesa-vulkan-drivers libvulkan1): {e}")
    });
    Engine::with_backend(model_path(), b).unwrap()
}

fn cpu_engine_at(precision: Precision) -> Engine<CpuBackend> {
    let opts = CpuOptions {
        precision,
        ..CpuOptions::default()
    };
    Engine::load(model_path(), opts).unwrap()
}

fn gpu_engine() -> Engine<GpuBackend> {
    gpu_engine_at(Precision::Exact)
}

fn cpu_engine() -> Engine<CpuBackend> {
    cpu_engine_at(Precision::Exact)
}

fn text() -> String {
    std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/fixtures/eval-gpl3.txt"
    ))
    .unwrap()
}

/// The logits of every position of `tokens`, prefilled in batches of 64.
fn all_logits<B: glint_runtime::Backend>(e: &Engine<B>, tokens: &[u32]) -> Vec<f32> {
    let m = e.model();
    let mut cache = m.cache(tokens.len(), KvType::F16).unwrap();
    let mut s = m.scratch(64, tokens.len(), true).unwrap();
    let vocab = m.config().vocab_size as usize;
    let mut out = Vec::new();
    let _ = m
        .prefill(tokens, &mut cache, &mut s, |r, l| {
            out.extend_from_slice(&l[..r.len() * vocab]);
            std::ops::ControlFlow::Continue(())
        })
        .unwrap();
    out
}

/// Bound on |gpu - cpu| over every logit of every position, as a fraction of the
/// position's largest CPU logit magnitude (measured on lavapipe: see the test's output).
const LOGIT_TOLERANCE: f32 = 2e-3;

/// [`LOGIT_TOLERANCE`] with int8 activations: an activation that differs from the CPU's
/// in its last bit becomes a different int8 value now and then, a step of its block's
/// scale, and 28 int8 blocks compound those steps (measured on lavapipe: 9.6e-2 at
/// position 56; the kernels alone agree with the CPU's to 5e-7 on equal inputs, the unit
/// tests in `runtime/src/backend/gpu/tests.rs`). Two CPU kernel families differ as much:
/// the scalar reference against AVX-512 at mixed precision, the same 256 tokens, 8.85e-2,
/// also at position 56 (exact: 1.0e-3). A loose bound: it catches a broken kernel or
/// driver, not a last-bit difference.
const MIXED_LOGIT_TOLERANCE: f32 = 0.2;

#[test]
fn teacher_forced_logits_match_the_cpu_at_every_position_of_256_tokens() {
    teacher_forced_logits_match(Precision::Exact, LOGIT_TOLERANCE);
}

#[test]
fn teacher_forced_mixed_precision_logits_match_the_cpu_at_every_position_of_256_tokens() {
    teacher_forced_logits_match(Precision::Mixed, MIXED_LOGIT_TOLERANCE);
}

/// GPU and CPU at `precision`: the logits of every position of 256 tokens of the text,
/// within `tolerance` of each position's largest CPU logit.
fn teacher_forced_logits_match(precision: Precision, tolerance: f32) {
    let (g, c) = (gpu_engine_at(precision), cpu_engine_at(precision));
    let tokens: Vec<u32> = c.tokenizer().encode(&text(), false)[..256].to_vec();
    let (gl, cl) = (all_logits(&g, &tokens), all_logits(&c, &tokens));
    let vocab = c.model().config().vocab_size as usize;
    assert_eq!(gl.len(), 256 * vocab);
    let mut worst = (0f32, 0usize);
    for (pos, (gr, cr)) in gl
        .chunks_exact(vocab)
        .zip(cl.chunks_exact(vocab))
        .enumerate()
    {
        let scale = cr.iter().fold(0f32, |m, v| m.max(v.abs()));
        let err = gr
            .iter()
            .zip(cr)
            .fold(0f32, |m, (a, b)| m.max((a - b).abs()))
            / scale;
        if err > worst.0 {
            worst = (err, pos);
        }
    }
    eprintln!(
        "{}: largest relative logit error {:.2e} at position {}",
        precision.name(),
        worst.0,
        worst.1
    );
    assert!(
        worst.0 <= tolerance,
        "position {}: logits differ by {} of the largest",
        worst.1,
        worst.0
    );
}

#[test]
fn greedy_ids_equal_the_cpu_up_to_the_first_near_tie() {
    let g = &fixture("llamacpp-smollm2.json")["greedy"];
    let prompt = ids(&g["prompt_token_ids"]);
    let (ge, ce) = (gpu_engine(), cpu_engine());
    let (gm, cm) = (ge.model(), ce.model());
    let mut gc = gm.cache(128, KvType::F16).unwrap();
    let mut cc = cm.cache(128, KvType::F16).unwrap();
    let mut gs = gm.scratch(64, 128, false).unwrap();
    let mut cs = cm.scratch(64, 128, false).unwrap();
    gm.forward(&prompt, &mut gc, &mut gs).unwrap();
    cm.forward(&prompt, &mut cc, &mut cs).unwrap();
    for step in 0..32 {
        let got = gm.argmax(&mut gs).expect("finite logits");
        let logits = cm.logits(&mut cs);
        let want = argmax(logits.iter().copied());
        if got != want {
            let margin = (logits[got as usize] - logits[want as usize]).abs();
            assert!(
                margin < 0.05,
                "step {step}: gpu {got}, cpu {want}, margin {margin}"
            );
            return;
        }
        gm.forward(&[want], &mut gc, &mut gs).unwrap();
        cm.forward(&[want], &mut cc, &mut cs).unwrap();
    }
    let w = gm.backend().work_counts();
    assert_eq!(gm.backend().device_error(), None);
    eprintln!("{} dispatches, {} submits", w.dispatches, w.submits);
}

#[test]
fn perplexity_is_within_half_a_percent_of_the_cpu() {
    // The first 4 windows of 512 tokens (the whole text takes minutes on lavapipe).
    let text: String = text().chars().take(10_000).collect();
    let g = glint_runtime::eval::perplexity(&gpu_engine(), &text, 512, KvType::F16, |_, _| {});
    let c = glint_runtime::eval::perplexity(&cpu_engine(), &text, 512, KvType::F16, |_, _| {});
    let (g, c) = (g.unwrap(), c.unwrap());
    eprintln!("perplexity gpu {g:.4}, cpu {c:.4}");
    assert!((g / c - 1.0).abs() < 0.005, "gpu {g} vs cpu {c}");
}
