//! Recommended sampling: read from a checkpoint's `generation_config.json`, or, for
//! known models whose releases ship none, from the table below (their model cards).

use glint_format::SamplingDefaults;

/// Known models that ship no sampling settings, by a lowercase substring of their name
/// (GGUF `general.basename`/`general.name`, or the checkpoint's folder), with what their
/// model cards recommend.
const KNOWN: &[(&str, SamplingDefaults)] = &[(
    // SmolLM2's card: `temperature=0.2, top_p=0.9`.
    "smollm2",
    SamplingDefaults {
        temperature: 0.2,
        top_k: 0,
        top_p: 0.9,
        min_p: 0.0,
        repeat_penalty: 1.0,
    },
)];

/// The table's recommendation for a model named `name`, if it is a known one.
pub fn known_sampling(name: &str) -> Option<SamplingDefaults> {
    let name = name.to_lowercase();
    KNOWN
        .iter()
        .find(|(key, _)| name.contains(key))
        .map(|(_, d)| *d)
}

/// The sampling settings of a Hugging Face `generation_config.json`, if it has any:
/// `do_sample: false` is greedy; absent fields take the runtime's neutral values (no
/// top-k, top-p or min-p filter, no repetition penalty, temperature 1).
pub fn sampling_from_generation_config(v: &serde_json::Value) -> Option<SamplingDefaults> {
    let f = |k: &str| {
        v.get(k)
            .and_then(serde_json::Value::as_f64)
            .map(|x| x as f32)
    };
    let keys = [
        "temperature",
        "top_p",
        "top_k",
        "repetition_penalty",
        "do_sample",
    ];
    if keys.iter().all(|k| v.get(*k).is_none()) {
        return None;
    }
    let greedy = v.get("do_sample").and_then(serde_json::Value::as_bool) == Some(false);
    let d = SamplingDefaults {
        temperature: if greedy {
            0.0
        } else {
            f("temperature").unwrap_or(1.0)
        },
        top_k: v
            .get("top_k")
            .and_then(serde_json::Value::as_u64)
            .map_or(0, |k| k.min(u32::MAX as u64) as u32),
        top_p: f("top_p").unwrap_or(1.0),
        min_p: f("min_p").unwrap_or(0.0),
        repeat_penalty: f("repetition_penalty").unwrap_or(1.0),
    };
    d.is_valid().then_some(d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn smollm2_is_known_by_any_spelling() {
        let d = known_sampling("Smollm2 135M 8k Lc100K Mix1 Ep2").unwrap();
        assert_eq!((d.temperature, d.top_p), (0.2, 0.9));
        assert_eq!(known_sampling("SmolLM2-360M-Instruct"), Some(d));
        assert_eq!(known_sampling("TinyLlama-1.1B"), None);
    }

    #[test]
    fn generation_configs_map_to_defaults() {
        let v = serde_json::json!({"temperature": 0.6, "top_p": 0.9, "do_sample": true});
        let d = sampling_from_generation_config(&v).unwrap();
        assert_eq!((d.temperature, d.top_p, d.top_k), (0.6, 0.9, 0));
        let greedy = serde_json::json!({"do_sample": false, "temperature": 0.7});
        assert_eq!(
            sampling_from_generation_config(&greedy).map(|d| d.temperature),
            Some(0.0)
        );
        assert_eq!(
            sampling_from_generation_config(&serde_json::json!({"bos_token_id": 1})),
            None
        );
        let bad = serde_json::json!({"temperature": -1.0});
        assert_eq!(sampling_from_generation_config(&bad), None);
    }
}
