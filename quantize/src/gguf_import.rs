//! Import of a GGUF file (llama.cpp's format) as a [`Imported`] checkpoint. GGUF's
//! llama tensor names are Glint's canonical names, and its Q/K weights are already in
//! the interleaved rope layout, so tensors are referenced as they are.

use crate::fetch::sha256_file;
use crate::gguf::{GgmlType, GgufError, GgufFile};
use crate::source::{Encoding, Imported, SourceTensor};
use glint_format::{
    Arch, LlamaTensor, ModelConfig, RopeScaling, RopeStyle, SamplingDefaults, TokenizerModel,
    TokenizerSpec, expected_llama_tensors,
};
use memmap2::Mmap;
use std::path::Path;

/// Why a GGUF file could not be imported.
#[derive(Debug, thiserror::Error)]
pub enum GgufImportError {
    /// The file could not be read.
    #[error("cannot read {path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The OS error.
        source: std::io::Error,
    },
    /// The file is not valid GGUF.
    #[error(transparent)]
    Gguf(#[from] GgufError),
    /// A metadata key the import needs is absent or has the wrong type.
    #[error("GGUF metadata key {0} is missing or has the wrong type")]
    Missing(String),
    /// The architecture or a feature of it is not supported.
    #[error("unsupported: {0}")]
    Unsupported(String),
    /// The config read from the metadata is invalid.
    #[error("invalid config: {0}")]
    Config(#[from] glint_format::FormatError),
}

/// Imports the GGUF file at `path`.
pub fn import_gguf(path: &Path) -> Result<Imported, GgufImportError> {
    let io = |source| GgufImportError::Io {
        path: path.display().to_string(),
        source,
    };
    let file = std::fs::File::open(path).map_err(io)?;
    // SAFETY: read-only map of a file this tool does not modify while it runs.
    let map = unsafe { Mmap::map(&file) }.map_err(io)?;
    let g = GgufFile::parse(&map)?;
    let arch = g
        .get_str("general.architecture")
        .ok_or_else(|| GgufImportError::Missing("general.architecture".into()))?;
    let (rope_style, qkv_bias) = match arch {
        "llama" => (RopeStyle::Interleaved, false),
        "qwen2" => (RopeStyle::Neox, true),
        other => {
            return Err(GgufImportError::Unsupported(format!(
                "architecture {other:?}"
            )));
        }
    };
    let key = |k: &str| format!("{arch}.{k}");
    let req = |k: &str| {
        g.get_u32(&key(k))
            .ok_or_else(|| GgufImportError::Missing(key(k)))
    };
    let tokens = g
        .get_str_array("tokenizer.ggml.tokens")
        .ok_or_else(|| GgufImportError::Missing("tokenizer.ggml.tokens".into()))?;
    let dim = req("embedding_length")?;
    let n_heads = req("attention.head_count")?;
    let token_id = |k: &str| g.get_u32(k).filter(|&t| (t as usize) < tokens.len());
    let find = |s: &str| tokens.iter().position(|t| *t == s).map(|i| i as u32);
    let eos = token_id("tokenizer.ggml.eos_token_id");
    let eot = token_id("tokenizer.ggml.eot_token_id")
        .or_else(|| find("<|im_end|>"))
        .or_else(|| find("<|eot_id|>"))
        .or(eos);
    let mut config = ModelConfig {
        arch: Arch::Llama,
        dim,
        n_layers: req("block_count")?,
        n_heads,
        n_kv_heads: g
            .get_u32(&key("attention.head_count_kv"))
            .unwrap_or(n_heads),
        head_dim: g
            .get_u32(&key("attention.key_length"))
            .unwrap_or(dim / n_heads.max(1)),
        ffn_dim: req("feed_forward_length")?,
        vocab_size: g.get_u32(&key("vocab_size")).unwrap_or(tokens.len() as u32),
        context_len: req("context_length")?,
        rope_theta: g.get_f32(&key("rope.freq_base")).unwrap_or(10000.0),
        norm_eps: g
            .get_f32(&key("attention.layer_norm_rms_epsilon"))
            .ok_or_else(|| GgufImportError::Missing(key("attention.layer_norm_rms_epsilon")))?,
        rope_style,
        rope_scaling: None,
        tied_embeddings: g.tensor(&LlamaTensor::Output.name()).is_none(),
        qkv_bias,
        bos: token_id("tokenizer.ggml.bos_token_id"),
        eos,
        pad: token_id("tokenizer.ggml.padding_token_id"),
        eot,
        sampling: gguf_sampling(&g),
    };
    config.rope_scaling = rope_scaling(&g, &config, &key)?;
    config.validate()?;
    let model = match g.get_str("tokenizer.ggml.model") {
        Some("gpt2") => TokenizerModel::ByteLevelBpe,
        Some("llama") => TokenizerModel::SentencePiece,
        other => {
            return Err(GgufImportError::Unsupported(format!(
                "tokenizer model {other:?}"
            )));
        }
    };
    let token_types = match g.get_i32_array("tokenizer.ggml.token_type") {
        Some(t) => t.into_iter().map(|t| t.clamp(0, 255) as u8).collect(),
        None => vec![1; tokens.len()],
    };
    let tokenizer = TokenizerSpec {
        model,
        add_bos: g
            .get_bool("tokenizer.ggml.add_bos_token")
            .unwrap_or(model == TokenizerModel::SentencePiece),
        add_eos: g.get_bool("tokenizer.ggml.add_eos_token").unwrap_or(false),
        add_space_prefix: g
            .get_bool("tokenizer.ggml.add_space_prefix")
            .unwrap_or(model == TokenizerModel::SentencePiece),
        pre: g
            .get_str("tokenizer.ggml.pre")
            .unwrap_or("default")
            .to_string(),
        tokens: tokens.iter().map(|s| s.to_string()).collect(),
        token_types,
        scores: g.get_f32_array("tokenizer.ggml.scores"),
        merges: g
            .get_str_array("tokenizer.ggml.merges")
            .unwrap_or_default()
            .into_iter()
            .map(String::from)
            .collect(),
    };
    let base = map.as_ptr() as usize;
    let mut tensors = Vec::new();
    for (name, shape) in expected_llama_tensors(&config) {
        let t = g
            .tensor(&name)
            .ok_or_else(|| GgufImportError::Unsupported(format!("missing tensor {name}")))?;
        let encoding = match t.ggml_type {
            GgmlType::F32 => Encoding::F32,
            GgmlType::F16 => Encoding::F16,
            GgmlType::BF16 => Encoding::Bf16,
            other if other.can_dequantize() => Encoding::Gguf(other),
            other => {
                return Err(GgufImportError::Unsupported(format!(
                    "tensor {name} of GGUF type {other:?}"
                )));
            }
        };
        // GGUF lists dims fastest-first; Glint outermost-first.
        let dims: Vec<u64> = t.dims.iter().rev().copied().collect();
        if dims != shape {
            return Err(GgufImportError::Unsupported(format!(
                "tensor {name} has shape {dims:?}, the config implies {shape:?}"
            )));
        }
        let start = t.data.as_ptr() as usize - base;
        tensors.push(SourceTensor {
            name,
            shape,
            encoding,
            file: 0,
            range: start..start + t.data.len(),
        });
    }
    if let Some(extra) = g
        .tensors()
        .iter()
        .find(|t| t.name != ROPE_FREQS && !tensors.iter().any(|s| s.name == t.name))
    {
        return Err(GgufImportError::Unsupported(format!(
            "tensor {} is not part of the llama architecture",
            extra.name
        )));
    }
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().to_string())
        .unwrap_or_default();
    let sha = sha256_file(path).map_err(|e| GgufImportError::Unsupported(e.to_string()))?;
    let chat_template = g
        .get_str("tokenizer.chat_template")
        .unwrap_or_default()
        .to_string();
    let mut provenance = vec![
        ("source".into(), name),
        ("source_sha256".into(), sha),
        ("source_format".into(), "gguf".into()),
    ];
    // Synthetic models (`glint-quantize synth`) say what they are made of here.
    if let Some(d) = g.get_str("general.description") {
        provenance.push(("source_description".into(), d.to_string()));
    }
    drop(g);
    Ok(Imported {
        config,
        tokenizer,
        chat_template,
        provenance,
        tensors,
        files: vec![map],
    })
}

/// The tensor in which GGUF stores Llama-3 rope scaling: per pair of dimensions, the
/// divisor of its frequency.
const ROPE_FREQS: &str = "rope_freqs.weight";

/// Llama-3 rope scaling, recovered from `rope_freqs.weight` (llama.cpp's converter writes
/// the divisors, not the parameters): `factor` is the largest divisor, the band between
/// unscaled and fully scaled pairs gives the two wavelength bounds (least squares over
/// its pairs), `original_context` is `{arch}.rope.scaling.original_context_length` or
/// Llama 3.1/3.2's 8192 (only the bounds' ratios to it matter). Every pair's frequency
/// is then recomputed and must match the file's to 1e-3.
fn rope_scaling(
    g: &GgufFile<'_>,
    c: &ModelConfig,
    key: &dyn Fn(&str) -> String,
) -> Result<Option<RopeScaling>, GgufImportError> {
    let Some(t) = g.tensor(ROPE_FREQS) else {
        return Ok(None);
    };
    let bad = |why: &str| GgufImportError::Unsupported(format!("{ROPE_FREQS}: {why}"));
    let half = c.head_dim as usize / 2;
    if t.ggml_type != GgmlType::F32 || t.n_elements() != half as u64 {
        return Err(bad("not head_dim / 2 f32 values"));
    }
    let divisors: Vec<f32> = t
        .data
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect();
    let factor = divisors.iter().copied().fold(1f32, f32::max);
    if divisors.iter().all(|&d| (d - 1.0).abs() < 1e-6) {
        return Ok(None);
    }
    let original_context = g
        .get_u32(&key("rope.scaling.original_context_length"))
        .unwrap_or(8192);
    let old = original_context as f64;
    let inv_freq = |i: usize| 1.0 / c.rope_theta.powf(2.0 * i as f32 / c.head_dim as f32);
    // In the band, divisor d = 1 / ((1 - s) / factor + s) with smooth
    // s = (old / wavelen - low) / (high - low), i.e. s high + (1 - s) low = old / wavelen.
    let (mut a, mut b, mut cc, mut r0, mut r1) = (0f64, 0f64, 0f64, 0f64, 0f64);
    let mut band = 0;
    for (i, &d) in divisors.iter().enumerate() {
        if d <= 1.0 + 1e-4 || d >= factor * (1.0 - 1e-4) {
            continue;
        }
        let s = ((1.0 / d as f64) - 1.0 / factor as f64) / (1.0 - 1.0 / factor as f64);
        let y = old * inv_freq(i) as f64 / (2.0 * std::f64::consts::PI);
        // Normal equations for (high, low) with rows (s, 1 - s).
        (a, b, cc) = (a + s * s, b + s * (1.0 - s), cc + (1.0 - s) * (1.0 - s));
        (r0, r1) = (r0 + s * y, r1 + (1.0 - s) * y);
        band += 1;
    }
    let det = a * cc - b * b;
    if band < 2 || det.abs() < 1e-12 {
        return Err(bad(
            "fewer than two pairs in the smoothing band: parameters ambiguous",
        ));
    }
    let high = (r0 * cc - b * r1) / det;
    let low = (a * r1 - b * r0) / det;
    let s = RopeScaling {
        factor,
        low_freq_factor: low as f32,
        high_freq_factor: high as f32,
        original_context,
    };
    for (i, &d) in divisors.iter().enumerate() {
        let f = inv_freq(i);
        if ((f / s.scale(f)) / d - 1.0).abs() > 1e-3 {
            return Err(bad("not Llama-3 scaling"));
        }
    }
    Ok(Some(s))
}

/// The file's `general.sampling.*` keys (llama.cpp's names; absent ones take llama.cpp's
/// defaults), else the table's recommendation for the model's name, else none.
fn gguf_sampling(g: &GgufFile<'_>) -> Option<SamplingDefaults> {
    let key = |k: &str| format!("general.sampling.{k}");
    let keys = ["temp", "top_k", "top_p", "min_p", "penalty_repeat"];
    if keys.iter().any(|k| g.metadata(&key(k)).is_some()) {
        let d = SamplingDefaults {
            temperature: g.get_f32(&key("temp")).unwrap_or(0.8),
            top_k: g
                .get_i32(&key("top_k"))
                .map_or(40, |k| k.max(0).unsigned_abs()),
            top_p: g.get_f32(&key("top_p")).unwrap_or(0.95),
            min_p: g.get_f32(&key("min_p")).unwrap_or(0.05),
            repeat_penalty: g.get_f32(&key("penalty_repeat")).unwrap_or(1.0),
        };
        return d.is_valid().then_some(d);
    }
    ["general.basename", "general.name"]
        .iter()
        .filter_map(|k| g.get_str(k))
        .find_map(glint_models::known_sampling)
}
