//! Shared helpers: the real model and llama.cpp's fixture. Also used by the runtime's
//! CLI tests (`runtime/tests/cli.rs`, through `#[path]`), so paths do not depend on
//! which crate includes it.
#![allow(dead_code)]

use glint_runtime::Engine;
use glint_runtime::backend::{Backend, KvType};
use std::path::PathBuf;
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
