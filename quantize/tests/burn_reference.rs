//! The float reference model in burn (`glint_models::burn_llama`, as distillation builds
//! its teacher) against the runtime's CPU forward, on the same weights: the tiny
//! synthetic model of each shape family and the real model's first tokens. The runtime
//! runs with exact activations and an f32 cache, so only summation order differs.

#[path = "../../tests/tests/common/mod.rs"]
mod common;

use burn::tensor::{Device, Int, Tensor, TensorData};
use common::{gguf_path, logits_after, model_path, tiny_families, tiny_prompt, write_tiny_gguf};
use glint_pack::distill::Teacher;
use glint_pack::{Scheme, import, write_packed};
use glint_runtime::Engine;
use glint_runtime::backend::{CpuOptions, Precision};
use std::path::Path;

fn exact() -> CpuOptions {
    CpuOptions {
        threads: 2,
        precision: Precision::Exact,
        kernel: None,
    }
}

/// burn's logits after `prompt` (the last position's), from the teacher at `source`.
fn burn_logits(source: &Path, prompt: &[u32]) -> Vec<f32> {
    let device = Device::flex();
    let model = Teacher::open(source).unwrap().model(&device).unwrap();
    let ids = prompt.iter().map(|&t| i64::from(t)).collect::<Vec<_>>();
    let tokens = Tensor::<2, Int>::from_data(TensorData::new(ids, [1, prompt.len()]), &device);
    let logits = model.forward(tokens);
    let [_, n, vocab] = logits.dims();
    logits
        .narrow(1, n - 1, 1)
        .reshape([vocab])
        .into_data()
        .try_into_vec_as::<f32>()
        .unwrap()
}

/// Largest |difference| and the root mean square of `want`.
fn compare(want: &[f32], got: &[f32]) -> (f32, f32) {
    assert_eq!(want.len(), got.len());
    let worst = want
        .iter()
        .zip(got)
        .map(|(a, b)| (a - b).abs())
        .fold(0f32, f32::max);
    let rms = (want.iter().map(|x| x * x).sum::<f32>() / want.len() as f32).sqrt();
    (worst, rms)
}

fn argmax(v: &[f32]) -> usize {
    (0..v.len()).max_by(|&a, &b| v[a].total_cmp(&v[b])).unwrap()
}

#[test]
fn burn_reference_matches_the_runtime_on_tiny_models_of_every_family() {
    let base = import(&gguf_path()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let prompt = tiny_prompt(&base);
    for (family, config) in tiny_families(base.tokenizer.tokens.len()) {
        let gguf = dir.path().join("tiny.gguf");
        write_tiny_gguf(&base, family, config, &gguf);
        // Q4_0 → q4g32 (and Q8_0 → q8g32) is a transcode: both run the same values.
        let glint = dir.path().join("tiny.glint");
        write_packed(&import(&gguf).unwrap(), Scheme::Q4g32, &glint, |_, _| {}).unwrap();
        let want = logits_after(&Engine::load(glint.as_path(), exact()).unwrap(), &prompt);
        let got = burn_logits(&gguf, &prompt);
        let (worst, rms) = compare(&want, &got);
        eprintln!("{family}: burn vs runtime: logits rms {rms}, max |diff| {worst}");
        assert!(
            rms > 0.1 && worst < 1e-3 * rms.max(1.0),
            "{family}: max |diff| {worst}"
        );
    }
}

#[test]
fn burn_reference_matches_the_runtime_on_the_real_model() {
    // The packed default model transcodes the GGUF's blocks: the same values (measured
    // max |diff| 4.4e-5 at logits rms 4.0).
    let engine = Engine::load(model_path(), exact()).unwrap();
    let prompt = engine.prompt_tokens("The capital of France is", true);
    let want = logits_after(&engine, &prompt);
    let got = burn_logits(&gguf_path(), &prompt);
    let (worst, rms) = compare(&want, &got);
    eprintln!(
        "real model, {} tokens: logits rms {rms}, max |diff| {worst}",
        prompt.len()
    );
    assert_eq!(argmax(&want), argmax(&got));
    assert!(worst < 1e-3, "max |diff| {worst}");
}
