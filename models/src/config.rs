//! Hugging Face `config.json` → [`ModelConfig`].

use glint_format::{Arch, FormatError, ModelConfig, RopeScaling, RopeStyle};
use serde_json::Value;

/// Why a Hugging Face `config.json` cannot be turned into a [`ModelConfig`].
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum ModelError {
    /// `model_type` is not one of the supported Llama-family types.
    #[error("unsupported model_type {0:?} (supported: llama, qwen2, mobilellm)")]
    UnknownModelType(String),
    /// A required field is absent (or null).
    #[error("config.json lacks required field {0:?}")]
    MissingField(&'static str),
    /// A field is present but has the wrong type or an impossible value.
    #[error("config.json field {field:?} {why}")]
    BadField {
        /// The field (dotted for nested fields, e.g. `rope_scaling.factor`).
        field: &'static str,
        /// What is wrong with it.
        why: &'static str,
    },
    /// `rope_scaling` names a scaling type Glint does not implement.
    #[error("unsupported rope_scaling type {0:?} (supported: llama3)")]
    UnsupportedRopeScaling(String),
    /// The config asks for an architectural feature Glint does not implement.
    #[error("unsupported model feature: {0}")]
    Unsupported(&'static str),
    /// The resulting config fails [`ModelConfig::validate`].
    #[error("invalid model config: {0}")]
    Invalid(#[from] FormatError),
}

/// The model types this crate knows, with their per-type defaults.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Family {
    Llama,
    Qwen2,
    MobileLlm,
}

/// `v[field]`, treating JSON `null` as absent.
fn get<'a>(v: &'a Value, field: &str) -> Option<&'a Value> {
    v.get(field).filter(|x| !x.is_null())
}

fn as_u32(x: &Value, field: &'static str) -> Result<u32, ModelError> {
    x.as_u64()
        .and_then(|n| u32::try_from(n).ok())
        .ok_or(ModelError::BadField {
            field,
            why: "is not an unsigned 32-bit integer",
        })
}

fn as_f32(x: &Value, field: &'static str) -> Result<f32, ModelError> {
    x.as_f64().map(|f| f as f32).ok_or(ModelError::BadField {
        field,
        why: "is not a number",
    })
}

fn as_bool(x: &Value, field: &'static str) -> Result<bool, ModelError> {
    x.as_bool().ok_or(ModelError::BadField {
        field,
        why: "is not a boolean",
    })
}

fn req_u32(v: &Value, field: &'static str) -> Result<u32, ModelError> {
    as_u32(get(v, field).ok_or(ModelError::MissingField(field))?, field)
}

fn opt_u32(v: &Value, field: &'static str) -> Result<Option<u32>, ModelError> {
    get(v, field).map(|x| as_u32(x, field)).transpose()
}

fn req_f32(v: &Value, field: &'static str) -> Result<f32, ModelError> {
    as_f32(get(v, field).ok_or(ModelError::MissingField(field))?, field)
}

fn opt_bool(v: &Value, field: &'static str) -> Result<Option<bool>, ModelError> {
    get(v, field).map(|x| as_bool(x, field)).transpose()
}

/// A token id field: an integer, a list whose first element is taken, or null/absent.
fn token_id(v: &Value, field: &'static str, vocab: u32) -> Result<Option<u32>, ModelError> {
    let id = match get(v, field) {
        None => return Ok(None),
        Some(Value::Array(ids)) => match ids.first() {
            None => return Ok(None),
            Some(first) => as_u32(first, field)?,
        },
        Some(x) => as_u32(x, field)?,
    };
    if id >= vocab {
        return Err(ModelError::BadField {
            field,
            why: "is outside the vocabulary",
        });
    }
    Ok(Some(id))
}

fn rope_scaling(v: &Value) -> Result<Option<RopeScaling>, ModelError> {
    let Some(s) = get(v, "rope_scaling") else {
        return Ok(None);
    };
    if !s.is_object() {
        return Err(ModelError::BadField {
            field: "rope_scaling",
            why: "is not an object",
        });
    }
    let kind = get(s, "rope_type")
        .or_else(|| get(s, "type"))
        .ok_or(ModelError::MissingField("rope_scaling.rope_type"))?;
    let kind = kind.as_str().ok_or(ModelError::BadField {
        field: "rope_scaling.rope_type",
        why: "is not a string",
    })?;
    match kind {
        // Transformers' normalised spelling of "no scaling".
        "default" => Ok(None),
        "llama3" => Ok(Some(RopeScaling {
            factor: req_f32(s, "factor").map_err(nested("rope_scaling.factor"))?,
            low_freq_factor: req_f32(s, "low_freq_factor")
                .map_err(nested("rope_scaling.low_freq_factor"))?,
            high_freq_factor: req_f32(s, "high_freq_factor")
                .map_err(nested("rope_scaling.high_freq_factor"))?,
            original_context: req_u32(s, "original_max_position_embeddings")
                .map_err(nested("rope_scaling.original_max_position_embeddings"))?,
        })),
        other => Err(ModelError::UnsupportedRopeScaling(other.to_owned())),
    }
}

/// Renames the field of an error about a field of a nested object.
fn nested(full: &'static str) -> impl Fn(ModelError) -> ModelError {
    move |e| match e {
        ModelError::MissingField(_) => ModelError::MissingField(full),
        ModelError::BadField { why, .. } => ModelError::BadField { field: full, why },
        e => e,
    }
}

/// Builds a [`ModelConfig`] from a Hugging Face `config.json` of a Llama-family model
/// (`model_type` `llama`: Llama 2/3.x, TinyLlama, SmolLM2; `qwen2`; `mobilellm`).
///
/// The result uses [`RopeStyle::Neox`] (HF weights are stored in the half-split rope
/// layout, so no weight permutation is needed) and has no end-of-turn token (the
/// tokenizer importer knows it). Token ids are checked against `vocab_size`, and the
/// whole config against [`ModelConfig::validate`].
pub fn config_from_hf(config_json: &Value) -> Result<ModelConfig, ModelError> {
    let v = config_json;
    let model_type = get(v, "model_type").ok_or(ModelError::MissingField("model_type"))?;
    let model_type = model_type.as_str().ok_or(ModelError::BadField {
        field: "model_type",
        why: "is not a string",
    })?;
    let family = match model_type {
        "llama" => Family::Llama,
        "qwen2" => Family::Qwen2,
        "mobilellm" => Family::MobileLlm,
        other => return Err(ModelError::UnknownModelType(other.to_owned())),
    };

    if let Some(act) = get(v, "hidden_act")
        && act.as_str() != Some("silu")
    {
        return Err(ModelError::Unsupported("hidden_act other than silu"));
    }
    if opt_bool(v, "mlp_bias")? == Some(true) {
        return Err(ModelError::Unsupported("mlp_bias"));
    }
    if family == Family::Qwen2 && opt_bool(v, "use_sliding_window")? == Some(true) {
        return Err(ModelError::Unsupported("sliding-window attention"));
    }

    let dim = req_u32(v, "hidden_size")?;
    let n_layers = req_u32(v, "num_hidden_layers")?;
    let n_heads = req_u32(v, "num_attention_heads")?;
    let n_kv_heads = opt_u32(v, "num_key_value_heads")?.unwrap_or(n_heads);
    let head_dim = match opt_u32(v, "head_dim")? {
        Some(h) => h,
        None if n_heads > 0 && dim.is_multiple_of(n_heads) => dim / n_heads,
        None => {
            return Err(ModelError::BadField {
                field: "num_attention_heads",
                why: "does not divide hidden_size (and head_dim is not given)",
            });
        }
    };
    let ffn_dim = req_u32(v, "intermediate_size")?;
    let vocab_size = req_u32(v, "vocab_size")?;
    let context_len = req_u32(v, "max_position_embeddings")?;
    let rope_theta = match get(v, "rope_theta") {
        Some(x) => as_f32(x, "rope_theta")?,
        None => 10000.0,
    };
    let norm_eps = req_f32(v, "rms_norm_eps")?;

    let tied_embeddings = match (opt_bool(v, "tie_word_embeddings")?, family) {
        (Some(t), _) => t,
        (None, Family::MobileLlm) => opt_bool(v, "share_embedding")?.unwrap_or(true),
        (None, Family::Llama | Family::Qwen2) => false,
    };
    let qkv_bias = match family {
        Family::Qwen2 => true,
        Family::Llama | Family::MobileLlm => opt_bool(v, "attention_bias")?.unwrap_or(false),
    };

    let config = ModelConfig {
        arch: Arch::Llama,
        dim,
        n_layers,
        n_heads,
        n_kv_heads,
        head_dim,
        ffn_dim,
        vocab_size,
        context_len,
        rope_theta,
        norm_eps,
        rope_style: RopeStyle::Neox,
        rope_scaling: rope_scaling(v)?,
        tied_embeddings,
        qkv_bias,
        bos: token_id(v, "bos_token_id", vocab_size)?,
        eos: token_id(v, "eos_token_id", vocab_size)?,
        pad: token_id(v, "pad_token_id", vocab_size)?,
        eot: None,
        // Sampling lives in generation_config.json: the importer reads it.
        sampling: None,
    };
    config.validate()?;
    Ok(config)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn smollm2_135m() -> Value {
        json!({
            "architectures": ["LlamaForCausalLM"],
            "attention_bias": false,
            "bos_token_id": 1,
            "eos_token_id": 2,
            "hidden_act": "silu",
            "hidden_size": 576,
            "intermediate_size": 1536,
            "max_position_embeddings": 8192,
            "model_type": "llama",
            "num_attention_heads": 9,
            "num_hidden_layers": 30,
            "num_key_value_heads": 3,
            "pad_token_id": 2,
            "rms_norm_eps": 1e-5,
            "rope_scaling": null,
            "rope_theta": 100000,
            "tie_word_embeddings": true,
            "vocab_size": 49152
        })
    }

    #[test]
    fn smollm2() {
        let c = config_from_hf(&smollm2_135m()).unwrap();
        assert_eq!(
            (c.dim, c.n_layers, c.n_heads, c.n_kv_heads, c.head_dim),
            (576, 30, 9, 3, 64)
        );
        assert_eq!(
            (c.ffn_dim, c.vocab_size, c.context_len),
            (1536, 49152, 8192)
        );
        assert_eq!((c.rope_theta, c.norm_eps), (100000.0, 1e-5));
        assert_eq!(c.rope_style, RopeStyle::Neox);
        assert!(c.tied_embeddings && !c.qkv_bias && c.rope_scaling.is_none());
        assert_eq!(
            (c.bos, c.eos, c.pad, c.eot),
            (Some(1), Some(2), Some(2), None)
        );
    }

    #[test]
    fn llama32_with_rope_scaling_and_eos_list() {
        let v = json!({
            "model_type": "llama",
            "hidden_size": 2048, "num_hidden_layers": 16, "num_attention_heads": 32,
            "num_key_value_heads": 8, "head_dim": 64, "intermediate_size": 8192,
            "vocab_size": 128256, "max_position_embeddings": 131072,
            "rope_theta": 500000.0, "rms_norm_eps": 1e-5,
            "rope_scaling": {"factor": 32.0, "high_freq_factor": 4.0, "low_freq_factor": 1.0,
                             "original_max_position_embeddings": 8192, "rope_type": "llama3"},
            "tie_word_embeddings": true, "bos_token_id": 128000,
            "eos_token_id": [128001, 128008, 128009]
        });
        let c = config_from_hf(&v).unwrap();
        assert_eq!(
            c.rope_scaling,
            Some(RopeScaling {
                factor: 32.0,
                low_freq_factor: 1.0,
                high_freq_factor: 4.0,
                original_context: 8192
            })
        );
        assert_eq!((c.bos, c.eos), (Some(128000), Some(128001)));
    }

    #[test]
    fn defaults_per_model_type() {
        let mut v = smollm2_135m();
        let o = v.as_object_mut().unwrap();
        for k in [
            "num_key_value_heads",
            "rope_theta",
            "tie_word_embeddings",
            "bos_token_id",
            "pad_token_id",
        ] {
            o.remove(k);
        }
        let c = config_from_hf(&v).unwrap();
        assert_eq!((c.n_kv_heads, c.rope_theta), (9, 10000.0));
        assert!(!c.tied_embeddings);
        assert_eq!((c.bos, c.eos, c.pad), (None, Some(2), None));

        v["model_type"] = json!("mobilellm");
        assert!(config_from_hf(&v).unwrap().tied_embeddings);

        v["model_type"] = json!("qwen2");
        let c = config_from_hf(&v).unwrap();
        assert!(c.qkv_bias && !c.tied_embeddings);

        v["model_type"] = json!("llama");
        v["attention_bias"] = json!(true);
        assert!(config_from_hf(&v).unwrap().qkv_bias);
    }

    #[test]
    fn errors_name_the_field() {
        let mut v = smollm2_135m();
        v.as_object_mut().unwrap().remove("intermediate_size");
        assert_eq!(
            config_from_hf(&v),
            Err(ModelError::MissingField("intermediate_size"))
        );
        let msg = config_from_hf(&v).unwrap_err().to_string();
        assert!(msg.contains("intermediate_size"), "{msg}");

        let mut v = smollm2_135m();
        v["hidden_size"] = json!("576");
        assert!(matches!(
            config_from_hf(&v),
            Err(ModelError::BadField {
                field: "hidden_size",
                ..
            })
        ));

        let mut v = smollm2_135m();
        v["model_type"] = json!("gpt2");
        assert_eq!(
            config_from_hf(&v),
            Err(ModelError::UnknownModelType("gpt2".into()))
        );

        let mut v = smollm2_135m();
        v["rope_scaling"] = json!({"type": "linear", "factor": 2.0});
        assert_eq!(
            config_from_hf(&v),
            Err(ModelError::UnsupportedRopeScaling("linear".into()))
        );

        let mut v = smollm2_135m();
        v["rope_scaling"] = json!({"rope_type": "llama3", "factor": 8.0,
            "low_freq_factor": 1.0, "high_freq_factor": 4.0});
        assert_eq!(
            config_from_hf(&v),
            Err(ModelError::MissingField(
                "rope_scaling.original_max_position_embeddings"
            ))
        );

        let mut v = smollm2_135m();
        v["eos_token_id"] = json!(49152);
        assert!(matches!(
            config_from_hf(&v),
            Err(ModelError::BadField {
                field: "eos_token_id",
                ..
            })
        ));

        let mut v = smollm2_135m();
        v["num_key_value_heads"] = json!(4);
        assert!(matches!(config_from_hf(&v), Err(ModelError::Invalid(_))));
    }
}
