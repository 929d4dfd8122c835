//! The shapes of the sub-1B assistants Glint targets, as their published `config.json`
//! files (the fields [`config_from_hf`] reads), so that models of exactly these shapes
//! can be built without their weights (`glint-quantize synth`).

use crate::config::{ModelError, config_from_hf};
use glint_format::ModelConfig;
use serde_json::{Value, json};

/// A model shape known by name: its Hugging Face `config.json` (architecture fields).
#[derive(Clone, Debug, PartialEq)]
pub struct KnownShape {
    /// The name `glint-quantize synth --shape` takes.
    pub name: &'static str,
    /// The checkpoint the shape is taken from.
    pub source: &'static str,
    /// The checkpoint's `config.json` (the fields that decide the shape).
    pub hf_config: Value,
}

impl KnownShape {
    /// The shape's [`ModelConfig`], parsed from [`Self::hf_config`] like an import would.
    pub fn config(&self) -> Result<ModelConfig, ModelError> {
        config_from_hf(&self.hf_config)
    }
}

/// The names [`known_shape`] accepts, smallest model first.
pub const SHAPE_NAMES: [&str; 4] = [
    "smollm2-135m",
    "smollm2-360m",
    "qwen2.5-0.5b",
    "llama-3.2-1b",
];

/// The shape called `name` (one of [`SHAPE_NAMES`]), or `None`.
pub fn known_shape(name: &str) -> Option<KnownShape> {
    let (source, hf_config) = match name {
        "smollm2-135m" => (
            "HuggingFaceTB/SmolLM2-135M-Instruct",
            json!({
                "model_type": "llama", "hidden_act": "silu",
                "hidden_size": 576, "intermediate_size": 1536, "num_hidden_layers": 30,
                "num_attention_heads": 9, "num_key_value_heads": 3,
                "vocab_size": 49152, "max_position_embeddings": 8192,
                "rope_theta": 100000.0, "rms_norm_eps": 1e-5, "rope_scaling": null,
                "tie_word_embeddings": true, "attention_bias": false,
                "bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 2
            }),
        ),
        "smollm2-360m" => (
            "HuggingFaceTB/SmolLM2-360M-Instruct",
            json!({
                "model_type": "llama", "hidden_act": "silu",
                "hidden_size": 960, "intermediate_size": 2560, "num_hidden_layers": 32,
                "num_attention_heads": 15, "num_key_value_heads": 5,
                "vocab_size": 49152, "max_position_embeddings": 8192,
                "rope_theta": 100000.0, "rms_norm_eps": 1e-5, "rope_scaling": null,
                "tie_word_embeddings": true, "attention_bias": false,
                "bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 2
            }),
        ),
        "qwen2.5-0.5b" => (
            "Qwen/Qwen2.5-0.5B-Instruct",
            json!({
                "model_type": "qwen2", "hidden_act": "silu",
                "hidden_size": 896, "intermediate_size": 4864, "num_hidden_layers": 24,
                "num_attention_heads": 14, "num_key_value_heads": 2,
                "vocab_size": 151936, "max_position_embeddings": 32768,
                "rope_theta": 1000000.0, "rms_norm_eps": 1e-6, "rope_scaling": null,
                "tie_word_embeddings": true, "use_sliding_window": false,
                "bos_token_id": 151643, "eos_token_id": 151645
            }),
        ),
        "llama-3.2-1b" => (
            "meta-llama/Llama-3.2-1B-Instruct",
            json!({
                "model_type": "llama", "hidden_act": "silu",
                "hidden_size": 2048, "intermediate_size": 8192, "num_hidden_layers": 16,
                "num_attention_heads": 32, "num_key_value_heads": 8, "head_dim": 64,
                "vocab_size": 128256, "max_position_embeddings": 131072,
                "rope_theta": 500000.0, "rms_norm_eps": 1e-5,
                "rope_scaling": {"factor": 32.0, "high_freq_factor": 4.0, "low_freq_factor": 1.0,
                                 "original_max_position_embeddings": 8192, "rope_type": "llama3"},
                "tie_word_embeddings": true, "attention_bias": false, "mlp_bias": false,
                "bos_token_id": 128000, "eos_token_id": [128001, 128008, 128009]
            }),
        ),
        _ => return None,
    };
    let name = SHAPE_NAMES.into_iter().find(|n| *n == name)?;
    Some(KnownShape {
        name,
        source,
        hf_config,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_known_shape_parses_to_its_real_config() {
        let got: Vec<_> = SHAPE_NAMES
            .iter()
            .map(|n| {
                let c = known_shape(n).unwrap().config().unwrap();
                (
                    c.dim,
                    c.n_layers,
                    c.n_heads,
                    c.n_kv_heads,
                    c.head_dim,
                    c.ffn_dim,
                )
            })
            .collect();
        assert_eq!(
            got,
            [
                (576, 30, 9, 3, 64, 1536),
                (960, 32, 15, 5, 64, 2560),
                (896, 24, 14, 2, 64, 4864),
                (2048, 16, 32, 8, 64, 8192)
            ]
        );
        let qwen = known_shape("qwen2.5-0.5b").unwrap().config().unwrap();
        assert!(qwen.qkv_bias && qwen.tied_embeddings && qwen.rope_scaling.is_none());
        let llama = known_shape("llama-3.2-1b").unwrap().config().unwrap();
        assert!(!llama.qkv_bias && llama.tied_embeddings);
        assert_eq!(llama.rope_scaling.map(|s| s.factor), Some(32.0));
        assert!(known_shape("gpt2").is_none());
    }
}
