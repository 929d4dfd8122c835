//! Tiny synthetic models of each shape family `glint-quantize synth` builds (the real
//! structure — qkv bias, Llama-3 rope scaling, tied and untied heads — at small
//! dimensions): written as GGUF, imported like a real release, and run by the fastest
//! kernels and by the scalar reference, whose logits must agree.

mod common;

use common::{gguf_path, logits_after};
use glint_format::ModelConfig;
use glint_quantize::synth::{SynthModel, WeightType, write_synth_gguf};
use glint_quantize::{Scheme, import, write_packed};
use glint_runtime::Engine;
use glint_runtime::backend::cpu::kernels::Kernel;
use glint_runtime::backend::{Backend, CpuOptions, Precision};

/// The real shape `name` shrunk to 2 layers of 128 columns (2 heads of 64: the real
/// head width, which Llama-3 scaling needs to have pairs in its smoothing band), a
/// 320-wide FFN (10 blocks: not a multiple of 512 or 576) and the tokenizer's vocabulary
/// plus 64 padding tokens.
fn tiny(name: &str, tokens: usize) -> ModelConfig {
    let mut c = glint_models::known_shape(name).unwrap().config().unwrap();
    (c.dim, c.n_layers, c.n_heads, c.n_kv_heads, c.head_dim) = (128, 2, 2, 1, 64);
    c.ffn_dim = 320;
    c.vocab_size = tokens as u32 + 64;
    c
}

#[test]
fn tiny_synthetic_models_of_every_family_match_the_scalar_reference() {
    let base = import(&gguf_path()).unwrap();
    let b = &base.config;
    let dir = tempfile::tempdir().unwrap();
    let mut untied = tiny("smollm2-135m", base.tokenizer.tokens.len());
    untied.tied_embeddings = false;
    let families = [
        (
            "smollm2 (tied)",
            tiny("smollm2-135m", base.tokenizer.tokens.len()),
        ),
        ("smollm2 (untied head)", untied),
        (
            "qwen2.5 (qkv bias)",
            tiny("qwen2.5-0.5b", base.tokenizer.tokens.len()),
        ),
        (
            "llama-3.2 (rope scaling)",
            tiny("llama-3.2-1b", base.tokenizer.tokens.len()),
        ),
    ];
    for (family, config) in families {
        let gguf = dir.path().join("tiny.gguf");
        let model = SynthModel {
            name: family,
            config,
            weights: WeightType::Q4_0,
            seed: 7,
            tokenizer: &base.tokenizer,
            special: (b.bos, b.eos, b.pad),
            chat_template: &base.chat_template,
        };
        write_synth_gguf(&model, &gguf).unwrap();
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

        let prompt = [b.bos.unwrap_or(1), 504, 1083, 282, 253, 1345, 30, 54, 49160];
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
