//! Shared helpers: the real model and llama.cpp's fixture. Also used by the runtime's
//! CLI tests (`runtime/tests/cli.rs`, through `#[path]`), so paths do not depend on
//! which crate includes it.
#![allow(dead_code)]

use glint_format::ModelConfig;
use glint_quantize::source::Imported;
use glint_quantize::synth::{SynthModel, WeightType, write_synth_gguf};
use glint_runtime::Engine;
use glint_runtime::backend::{Backend, KvType};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

/// The packed default model: `$GLINT_MODEL`, else fetched and packed into the cache
/// (CI fetches it before the tests run).
pub fn model_path() -> PathBuf {
    static PATH: OnceLock<PathBuf> = OnceLock::new();
    PATH.get_or_init(|| match std::env::var_os("GLINT_MODEL") {
        Some(p) => PathBuf::from(p),
        None => glint_quantize::default_model(|m| eprintln!("{m}"))
            .expect("fetch and pack the default model"),
    })
    .clone()
}

/// The source GGUF in the cache (fetched if needed).
pub fn gguf_path() -> PathBuf {
    model_path();
    glint_quantize::fetch::fetch_gguf(&glint_quantize::fetch::cache_dir()).expect("fetch the GGUF")
}

/// The fixtures folder, `tests/fixtures/` (llama.cpp's outputs, copied in).
pub const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/fixtures");

/// `tests/fixtures/<name>` parsed as JSON.
pub fn fixture(name: &str) -> serde_json::Value {
    let path = PathBuf::from(FIXTURES).join(name);
    let text =
        std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    serde_json::from_str(&text).expect("fixture JSON")
}

/// A JSON array of integers as token ids.
pub fn ids(v: &serde_json::Value) -> Vec<u32> {
    v.as_array()
        .expect("array")
        .iter()
        .map(|x| x.as_u64().expect("id") as u32)
        .collect()
}

/// Logits after `prompt`, through a fresh f32 cache (so between two kernels only their
/// summation order can differ: measured 4e-5 between the scalar and AVX-512 kernels on
/// the real model, while through an f16 cache one rounding flip moves them by ~0.01).
pub fn logits_after<B: Backend>(engine: &Engine<B>, prompt: &[u32]) -> Vec<f32> {
    let m = engine.model();
    let mut cache = m.cache(prompt.len(), KvType::F32).unwrap();
    let mut scratch = m.scratch(prompt.len(), prompt.len(), false).unwrap();
    m.forward(prompt, &mut cache, &mut scratch).unwrap();
    m.logits(&mut scratch).to_vec()
}

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

/// One tiny model of each shape family `glint-quantize synth` builds (the real structure
/// — qkv bias, Llama-3 rope scaling, tied and untied heads — at [`tiny`] dimensions), for
/// a tokenizer of `tokens` tokens.
pub fn tiny_families(tokens: usize) -> [(&'static str, ModelConfig); 4] {
    let mut untied = tiny("smollm2-135m", tokens);
    untied.tied_embeddings = false;
    [
        ("smollm2 (tied)", tiny("smollm2-135m", tokens)),
        ("smollm2 (untied head)", untied),
        ("qwen2.5 (qkv bias)", tiny("qwen2.5-0.5b", tokens)),
        ("llama-3.2 (rope scaling)", tiny("llama-3.2-1b", tokens)),
    ]
}

/// Writes the tiny model `config` as a Q4_0 GGUF (seed 7) at `path`, with the tokenizer
/// and template of `base` (the default model, imported).
pub fn write_tiny_gguf(base: &Imported, family: &str, config: ModelConfig, path: &Path) {
    let b = &base.config;
    let model = SynthModel {
        name: family,
        config,
        weights: WeightType::Q4_0,
        seed: 7,
        tokenizer: &base.tokenizer,
        special: (b.bos, b.eos, b.pad),
        chat_template: &base.chat_template,
    };
    write_synth_gguf(&model, path).unwrap();
}

/// A prompt of the default model's tokens that every tiny model's vocabulary holds.
pub fn tiny_prompt(base: &Imported) -> [u32; 9] {
    [
        base.config.bos.unwrap_or(1),
        504,
        1083,
        282,
        253,
        1345,
        30,
        54,
        49160,
    ]
}
