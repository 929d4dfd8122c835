//! The CPU runtime against llama.cpp's outputs for the same GGUF
//! (`../shared/fixtures/llamacpp-smollm2.json`): tokens, logits, greedy ids, perplexity.

mod common;

use common::{fixture, ids, model_path};
use glint_runtime::Engine;
use glint_runtime::model::{KvCache, Scratch};
use glint_runtime::sampler::argmax;
use std::sync::OnceLock;

fn engine() -> &'static Engine {
    static E: OnceLock<Engine> = OnceLock::new();
    E.get_or_init(|| Engine::load(model_path(), 2).expect("load the model"))
}

fn fx() -> &'static serde_json::Value {
    static F: OnceLock<serde_json::Value> = OnceLock::new();
    F.get_or_init(|| fixture("llamacpp-smollm2.json"))
}

#[test]
fn tokenize_matches_llamacpp_for_every_fixture_string() {
    for case in fx()["tokenize"]["cases"].as_array().unwrap() {
        let text = case["text"].as_str().unwrap();
        assert_eq!(
            engine().tokenizer().encode(text, true),
            ids(&case["ids"]),
            "{text:?}"
        );
    }
    let g = &fx()["greedy"];
    assert_eq!(
        engine()
            .tokenizer()
            .encode(g["prompt"].as_str().unwrap(), true),
        ids(&g["prompt_token_ids"])
    );
}

/// Logits at the last position after `prompt`, from an empty cache.
fn last_logits(prompt: &[u32]) -> Vec<f32> {
    let e = engine();
    let c = e.model().config();
    let mut cache = KvCache::new(c, 64);
    let mut scratch = Scratch::new(c, 64, 64, e.threads(), false);
    e.forward(prompt, &mut cache, &mut scratch);
    scratch.logits().to_vec()
}

#[test]
fn last_position_logits_match_the_f32_reference_top10() {
    // Glint's CPU path dequantizes weights exactly and keeps activations and the KV cache
    // in f32, so it is compared with llama.cpp's exact-f32 run.
    let reference = &fx()["last_position_logits_top10"]["reference_f32"];
    let logits = last_logits(&ids(&reference["prompt_token_ids"]));
    for entry in reference["top10"].as_array().unwrap() {
        let id = entry["id"].as_u64().unwrap() as usize;
        let want = entry["logit"].as_f64().unwrap() as f32;
        assert!(
            (logits[id] - want).abs() < 0.05,
            "token {id}: {} vs llama.cpp {want}",
            logits[id]
        );
    }
    let stats = &reference["stats"];
    let max = logits.iter().fold(f32::MIN, |a, &b| a.max(b));
    assert!((max - stats["max"].as_f64().unwrap() as f32).abs() < 0.05);
    let lse = glint_runtime::eval::log_sum_exp(&logits);
    assert!(
        (lse - stats["logsumexp"].as_f64().unwrap()).abs() < 0.05,
        "logsumexp {lse}"
    );
}

#[test]
fn greedy_decoding_reproduces_the_f32_reference_ids() {
    let g = &fx()["greedy"];
    let want = ids(&g["exact_f32"]["greedy_token_ids_32"]);
    let e = engine();
    let c = e.model().config();
    let mut cache = KvCache::new(c, 128);
    let mut scratch = Scratch::new(c, 64, 128, e.threads(), false);
    e.forward(&ids(&g["prompt_token_ids"]), &mut cache, &mut scratch);
    for (step, &w) in want.iter().enumerate() {
        let logits = scratch.logits();
        let got = argmax(logits.iter().copied());
        if got != w {
            // Only acceptable at a near-tie (see the fixture's note).
            let margin = (logits[got as usize] - logits[w as usize]).abs();
            assert!(
                margin < 0.05,
                "step {step}: got {got}, llama.cpp {w}, margin {margin}"
            );
            return;
        }
        e.forward(&[w], &mut cache, &mut scratch);
    }
}

#[test]
fn perplexity_is_within_one_percent_of_llamacpp() {
    let p = &fx()["perplexity"]["results"];
    let want = p["Q4_1 source, llama.cpp defaults"].as_f64().unwrap();
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../shared/fixtures/eval-gpl3.txt"
    ))
    .unwrap();
    let ppl = glint_runtime::eval::perplexity(engine(), &text, 512, |_, _| {}).unwrap();
    eprintln!(
        "perplexity {ppl:.4} (llama.cpp Q4_1 {want}, exact f32 {})",
        p["same weights dequantized to F32 (exact)"]
    );
    assert!(
        (ppl / want - 1.0).abs() < 0.01,
        "perplexity {ppl} vs llama.cpp {want}"
    );
}
