//! Hugging Face tensor names → Glint's canonical names (the table in
//! [`glint_format::LlamaTensor`]).

use glint_format::{BlockTensor, LlamaTensor};

/// What a Hugging Face tensor name maps to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Mapped {
    /// A tensor Glint uses, under its canonical name (e.g. `blk.3.attn_q.weight`).
    Tensor(String),
    /// A tensor that carries no weights Glint needs (e.g. `rotary_emb.inv_freq`).
    Ignore,
    /// Not a tensor of a Llama-family model.
    Unknown,
}

/// Maps a Hugging Face Llama-family tensor name (`model.layers.3.self_attn.q_proj.weight`)
/// to its canonical Glint name (`blk.3.attn_q.weight`).
pub fn canonical_name(hf_name: &str) -> Mapped {
    if hf_name.ends_with(".rotary_emb.inv_freq") {
        return Mapped::Ignore;
    }
    let fixed = match hf_name {
        "model.embed_tokens.weight" => Some(LlamaTensor::TokenEmbd),
        "model.norm.weight" => Some(LlamaTensor::OutputNorm),
        "lm_head.weight" => Some(LlamaTensor::Output),
        _ => None,
    };
    if let Some(t) = fixed {
        return Mapped::Tensor(t.name());
    }
    let Some(rest) = hf_name.strip_prefix("model.layers.") else {
        return Mapped::Unknown;
    };
    let Some((layer, part)) = rest.split_once('.') else {
        return Mapped::Unknown;
    };
    if layer.is_empty()
        || !layer.bytes().all(|b| b.is_ascii_digit())
        || (layer.len() > 1 && layer.starts_with('0'))
    {
        return Mapped::Unknown;
    }
    let Ok(layer) = layer.parse::<u32>() else {
        return Mapped::Unknown;
    };
    let t = match part {
        "input_layernorm.weight" => BlockTensor::AttnNorm,
        "self_attn.q_proj.weight" => BlockTensor::AttnQ,
        "self_attn.k_proj.weight" => BlockTensor::AttnK,
        "self_attn.v_proj.weight" => BlockTensor::AttnV,
        "self_attn.q_proj.bias" => BlockTensor::AttnQBias,
        "self_attn.k_proj.bias" => BlockTensor::AttnKBias,
        "self_attn.v_proj.bias" => BlockTensor::AttnVBias,
        "self_attn.o_proj.weight" => BlockTensor::AttnOutput,
        "post_attention_layernorm.weight" => BlockTensor::FfnNorm,
        "mlp.gate_proj.weight" => BlockTensor::FfnGate,
        "mlp.up_proj.weight" => BlockTensor::FfnUp,
        "mlp.down_proj.weight" => BlockTensor::FfnDown,
        _ => return Mapped::Unknown,
    };
    Mapped::Tensor(LlamaTensor::Block(layer, t).name())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: &str) -> Mapped {
        Mapped::Tensor(s.to_owned())
    }

    #[test]
    fn maps_every_llama_tensor() {
        let cases = [
            ("model.embed_tokens.weight", "token_embd.weight"),
            ("model.norm.weight", "output_norm.weight"),
            ("lm_head.weight", "output.weight"),
            (
                "model.layers.0.input_layernorm.weight",
                "blk.0.attn_norm.weight",
            ),
            (
                "model.layers.12.self_attn.q_proj.weight",
                "blk.12.attn_q.weight",
            ),
            (
                "model.layers.1.self_attn.k_proj.weight",
                "blk.1.attn_k.weight",
            ),
            (
                "model.layers.1.self_attn.v_proj.weight",
                "blk.1.attn_v.weight",
            ),
            ("model.layers.2.self_attn.q_proj.bias", "blk.2.attn_q.bias"),
            ("model.layers.2.self_attn.k_proj.bias", "blk.2.attn_k.bias"),
            ("model.layers.2.self_attn.v_proj.bias", "blk.2.attn_v.bias"),
            (
                "model.layers.3.self_attn.o_proj.weight",
                "blk.3.attn_output.weight",
            ),
            (
                "model.layers.3.post_attention_layernorm.weight",
                "blk.3.ffn_norm.weight",
            ),
            (
                "model.layers.4.mlp.gate_proj.weight",
                "blk.4.ffn_gate.weight",
            ),
            ("model.layers.4.mlp.up_proj.weight", "blk.4.ffn_up.weight"),
            (
                "model.layers.4.mlp.down_proj.weight",
                "blk.4.ffn_down.weight",
            ),
        ];
        for (hf, glint) in cases {
            assert_eq!(canonical_name(hf), t(glint), "{hf}");
        }
    }

    #[test]
    fn ignores_and_rejects() {
        assert_eq!(
            canonical_name("model.layers.0.self_attn.rotary_emb.inv_freq"),
            Mapped::Ignore
        );
        for bad in [
            "model.layers.x.mlp.up_proj.weight",
            "model.layers..mlp.up_proj.weight",
            "model.layers.01.mlp.up_proj.weight",
            "model.layers.0.mlp.up_proj.bias",
            "model.layers.0",
            "model.embed_tokens.bias",
            "transformer.wte.weight",
        ] {
            assert_eq!(canonical_name(bad), Mapped::Unknown, "{bad}");
        }
    }
}
