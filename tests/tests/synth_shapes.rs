//! Tiny synthetic models of each shape family `glint-quantize synth` builds (the real
//! structure — qkv bias, Llama-3 rope scaling, tied and untied heads — at small
//! dimensions): written as GGUF, imported like a real release, and run by the fastest
//! kernels and by the scalar reference, whose logits must agree.

mod common;

use common::{gguf_path, logits_after, tiny_families, tiny_prompt, write_tiny_gguf};
use glint_quantize::{Scheme, import, write_packed};
use glint_runtime::Engine;
use glint_runtime::backend::cpu::kernels::Kernel;
use glint_runtime::backend::{Backend, CpuOptions, Precision};

#[test]
fn tiny_synthetic_models_of_every_family_match_the_scalar_reference() {
    let base = import(&gguf_path()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    for (family, config) in tiny_families(base.tokenizer.tokens.len()) {
        let gguf = dir.path().join("tiny.gguf");
        write_tiny_gguf(&base, family, config, &gguf);
        let imported = import(&gguf).unwrap();
        let got = imported.config;
        assert_eq!(
            (got.qkv_bias, got.tied_embeddings, got.rope_scaling),
            (config.qkv_bias, config.tied_embeddings, config.rope_scaling),
            "{family}: imported like the real one"
        );
        assert_eq!(got.vocab_size, config.vocab_size);
        let glint = dir.path().join("tiny.glint");
        write_packed(&imported, Scheme::Q4g32, &glint, |_, _| {}).unwrap();

        let prompt = tiny_prompt(&base);
        for precision in [Precision::Exact, Precision::Int8] {
            let load = |kernel| {
                let opts = CpuOptions {
                    threads: 2,
                    precision,
                    kernel,
                };
                Engine::load(glint.as_path(), opts).unwrap()
            };
            let fast = load(None);
            let want = logits_after(&load(Some(Kernel::Scalar)), &prompt);
            let logits = logits_after(&fast, &prompt);
            let rms = (want.iter().map(|x| x * x).sum::<f32>() / want.len() as f32).sqrt();
            assert!(
                want.iter().all(|x| x.is_finite()) && rms > 0.1 && rms < 100.0,
                "{family}: logits rms {rms}"
            );
            let worst = want
                .iter()
                .zip(&logits)
                .map(|(a, b)| (a - b).abs())
                .fold(0f32, f32::max);
            eprintln!(
                "{family}, {precision:?}: {} vs scalar: logits rms {rms}, max |diff| {worst}",
                fast.model().backend().describe()
            );
            assert!(
                worst < 1e-3,
                "{family} {precision:?}: max |logit diff| {worst}"
            );
        }
    }
}
