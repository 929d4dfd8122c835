//! The CPU runtime against llama.cpp's outputs for the same GGUF
//! (`tests/fixtures/llamacpp-smollm2.json`): tokens, logits, greedy ids, perplexity, on
//! the exact path and on the int8-activation path and int8 KV cache.

mod common;

use common::{fixture, ids, model_path};
use glint_runtime::backend::{CpuOptions, KvType, Precision};
use glint_runtime::sampler::argmax;
use glint_runtime::{Engine, Model};
use std::sync::OnceLock;

fn engine_with(precision: Precision) -> Engine {
    let opts = CpuOptions {
        threads: 2,
        precision,
        kernel: None,
    };
    Engine::load(model_path(), opts).expect("load the model")
}

/// The exact path (f32 activations).
fn engine() -> &'static Engine {
    static E: OnceLock<Engine> = OnceLock::new();
    E.get_or_init(|| engine_with(Precision::Exact))
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

/// Logits at the last position after `prompt`, from an empty cache of `kv` elements.
fn last_logits_with(model: &Model, kv: KvType, prompt: &[u32]) -> Vec<f32> {
    let mut cache = model.cache(prompt.len(), kv).unwrap();
    let mut scratch = model.scratch(prompt.len(), prompt.len(), false).unwrap();
    model.forward(prompt, &mut cache, &mut scratch).unwrap();
    model.logits(&mut scratch).to_vec()
}

/// Logits at the last position after `prompt` on the exact path, f32 cache.
fn last_logits(prompt: &[u32]) -> Vec<f32> {
    last_logits_with(engine().model(), KvType::F32, prompt)
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
    let m = engine().model();
    let mut cache = m.cache(128, KvType::F32).unwrap();
    let mut scratch = m.scratch(64, 128, false).unwrap();
    m.forward(&ids(&g["prompt_token_ids"]), &mut cache, &mut scratch)
        .unwrap();
    for (step, &w) in want.iter().enumerate() {
        let logits = m.logits(&mut scratch);
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
        m.forward(&[w], &mut cache, &mut scratch).unwrap();
    }
}

#[test]
fn perplexity_is_within_one_percent_of_llamacpp() {
    let p = &fx()["perplexity"]["results"];
    let want = p["Q4_1 source, llama.cpp defaults"].as_f64().unwrap();
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/fixtures/eval-gpl3.txt"
    ))
    .unwrap();
    let ppl =
        glint_runtime::eval::perplexity(engine(), &text, 512, KvType::F16, |_, _| {}).unwrap();
    eprintln!(
        "perplexity {ppl:.4} (llama.cpp Q4_1 {want}, exact f32 {})",
        p["same weights dequantized to F32 (exact)"]
    );
    assert!(
        (ppl / want - 1.0).abs() < 0.01,
        "perplexity {ppl} vs llama.cpp {want}"
    );
}

/// The llama.cpp fixture's last-position top-10 case `name`.
fn top10_case(name: &str) -> &'static serde_json::Value {
    &fx()["last_position_logits_top10"][name]
}

/// Largest |difference| over `case`'s top-10 logits.
fn top10_diff(logits: &[f32], case: &serde_json::Value) -> f32 {
    let mut worst = 0f32;
    for t in case["top10"].as_array().unwrap() {
        let (id, want) = (
            t["id"].as_u64().unwrap() as usize,
            t["logit"].as_f64().unwrap() as f32,
        );
        worst = worst.max((logits[id] - want).abs());
    }
    worst
}

/// The int8-activation path against llama.cpp's own default (int8-activation, f16 KV)
/// run of the same Q4_1 weights: same top token, and the last-position top-10 logits
/// within 1.0. Why 1.0: on this prompt llama.cpp's default itself is 0.47 away from
/// its f32 reference (activation rounding, not a bug; our exact path is 3e-5 away),
/// ours is 1.00 from the f32 reference and 0.64 from llama.cpp's default; perplexity
/// agrees to 1e-4 (18.3916 vs 18.3914).
#[test]
fn int8_path_matches_llamacpp_default_top10() {
    let case = top10_case("llamacpp_default_q4_1");
    let reference = top10_case("reference_f32");
    let prompt = ids(&case["prompt_token_ids"]);
    let exact = last_logits_with(engine().model(), KvType::F16, &prompt);
    let int8 = engine_with(Precision::Int8);
    let logits = last_logits_with(int8.model(), KvType::F16, &prompt);
    let worst = top10_diff(&logits, case);
    eprintln!(
        "max |top-10 logit diff|: int8 vs llama.cpp default {worst}, int8 vs f32 reference {}, exact vs llama.cpp default {}, exact vs f32 reference {}",
        top10_diff(&logits, reference),
        top10_diff(&exact, case),
        top10_diff(&exact, reference)
    );
    assert!(worst < 1.0, "max top-10 logit difference {worst}");
    let top = case["top10"][0]["id"].as_u64().unwrap() as u32;
    assert_eq!(argmax(logits.iter().copied()), top);
}

/// The int8 KV cache on the exact path against llama.cpp's f32 reference: same top
/// token, top-10 logits within 0.5 (measured 0.23; with the f16 cache 0.0036).
#[test]
fn int8_kv_cache_stays_close_to_the_f32_reference() {
    let case = top10_case("reference_f32");
    let logits = last_logits_with(
        engine().model(),
        KvType::Int8,
        &ids(&case["prompt_token_ids"]),
    );
    let worst = top10_diff(&logits, case);
    eprintln!("int8 KV, exact path: max |top-10 logit diff| vs f32 reference {worst}");
    assert!(worst < 0.5, "max top-10 logit difference {worst}");
    let top = case["top10"][0]["id"].as_u64().unwrap() as u32;
    assert_eq!(argmax(logits.iter().copied()), top);
}
