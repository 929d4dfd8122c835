//! Imports tiny random Llama checkpoints written in Hugging Face layout, packs them
//! with every scheme and runs the packed files in the runtime.

use glint_format::quant::dequantize_row;
use glint_format::{DType, GlintFile, RopeStyle, TokenizerModel, expected_llama_tensors};
use glint_models::{Mapped, ModelError, canonical_name};
use glint_quantize::hf::{ImportError, import_hf};
use glint_quantize::source::{Encoding, Imported};
use glint_quantize::{Scheme, write_packed};
use glint_runtime::backend::{CpuOptions, KvType};
use glint_runtime::engine::SessionOptions;
use glint_runtime::engine::{Engine, GenerateParams, GenerateStats};
use glint_runtime::sampler::{SamplerConfig, argmax};
use half::{bf16, f16};
use safetensors::{Dtype, tensor::TensorView};
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::ops::ControlFlow;
use std::path::Path;

const DIM: usize = 64;
const LAYERS: usize = 2;
const HEADS: usize = 4;
const KV_HEADS: usize = 2;
const HEAD_DIM: usize = DIM / HEADS;
const FFN: usize = 128;
const VOCAB: usize = 300;
const TEMPLATE: &str =
    "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}";

/// One tensor of a test checkpoint: its source values and how they are stored.
#[derive(Clone)]
struct T {
    name: String,
    dtype: Dtype,
    shape: Vec<usize>,
    values: Vec<f32>,
}

impl T {
    /// The values as the checkpoint holds them (rounded to its dtype).
    fn stored_values(&self) -> Vec<f32> {
        let v = &self.values;
        match self.dtype {
            Dtype::F32 => v.clone(),
            Dtype::F16 => v.iter().map(|&x| f16::from_f32(x).to_f32()).collect(),
            Dtype::BF16 => v.iter().map(|&x| bf16::from_f32(x).to_f32()).collect(),
            d => panic!("test stores no {d:?}"),
        }
    }

    fn bytes(&self) -> Vec<u8> {
        let v = &self.values;
        match self.dtype {
            Dtype::F32 => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
            Dtype::F16 => v
                .iter()
                .flat_map(|&x| f16::from_f32(x).to_le_bytes())
                .collect(),
            Dtype::BF16 => v
                .iter()
                .flat_map(|&x| bf16::from_f32(x).to_le_bytes())
                .collect(),
            Dtype::I32 => v
                .iter()
                .flat_map(|&x| ((x * 100.0) as i32).to_le_bytes())
                .collect(),
            d => panic!("test writes no {d:?}"),
        }
    }
}

fn config() -> Value {
    json!({
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_act": "silu",
        "hidden_size": DIM,
        "num_hidden_layers": LAYERS,
        "num_attention_heads": HEADS,
        "num_key_value_heads": KV_HEADS,
        "intermediate_size": FFN,
        "vocab_size": VOCAB,
        "max_position_embeddings": 2048,
        "rope_theta": 10000.0,
        "rms_norm_eps": 1e-5,
        "rope_scaling": null,
        "tie_word_embeddings": false,
        "attention_bias": false,
        "bos_token_id": 0,
        "eos_token_id": 1,
        "torch_dtype": "bfloat16"
    })
}

/// The HF tensors of the config above; attention in F16, MLP in BF16, the rest F32.
fn llama_tensors() -> Vec<T> {
    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    let mut t = |name: String, shape: &[usize]| {
        let n: usize = shape.iter().product();
        let values = (0..n)
            .map(|_| {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                (seed >> 40) as f32 / (1u64 << 23) as f32 - 1.0
            })
            .collect();
        let dtype = if name.contains(".mlp.") {
            Dtype::BF16
        } else if name.contains(".self_attn.") {
            Dtype::F16
        } else {
            Dtype::F32
        };
        T {
            name,
            dtype,
            shape: shape.to_vec(),
            values,
        }
    };
    let (q, kv) = (HEADS * HEAD_DIM, KV_HEADS * HEAD_DIM);
    let mut v = vec![t("model.embed_tokens.weight".into(), &[VOCAB, DIM])];
    for i in 0..LAYERS {
        let p = format!("model.layers.{i}");
        v.push(t(format!("{p}.input_layernorm.weight"), &[DIM]));
        v.push(t(format!("{p}.self_attn.q_proj.weight"), &[q, DIM]));
        v.push(t(format!("{p}.self_attn.k_proj.weight"), &[kv, DIM]));
        v.push(t(format!("{p}.self_attn.v_proj.weight"), &[kv, DIM]));
        v.push(t(format!("{p}.self_attn.o_proj.weight"), &[DIM, q]));
        v.push(t(format!("{p}.post_attention_layernorm.weight"), &[DIM]));
        v.push(t(format!("{p}.mlp.gate_proj.weight"), &[FFN, DIM]));
        v.push(t(format!("{p}.mlp.up_proj.weight"), &[FFN, DIM]));
        v.push(t(format!("{p}.mlp.down_proj.weight"), &[DIM, FFN]));
    }
    let mut inv_freq = t("model.layers.0.self_attn.rotary_emb.inv_freq".into(), &[8]);
    inv_freq.dtype = Dtype::F32;
    v.push(inv_freq);
    v.push(t("model.norm.weight".into(), &[DIM]));
    v.push(t("lm_head.weight".into(), &[VOCAB, DIM]));
    v
}

/// GPT-2's byte-to-unicode alphabet: the token text of each byte.
fn byte_alphabet() -> Vec<String> {
    let printable = |b: u32| (0x21..=0x7e).contains(&b) || (0xa1..=0xac).contains(&b) || b >= 0xae;
    let mut shifted = 0;
    (0u32..256)
        .map(|b| {
            let cp = if printable(b) {
                b
            } else {
                shifted += 1;
                255 + shifted
            };
            char::from_u32(cp).unwrap().to_string()
        })
        .collect()
}

const MERGES: [(&str, &str); 4] = [("Ġ", "t"), ("h", "e"), ("Ġt", "he"), ("i", "n")];

fn tokenizer_json() -> Value {
    let mut vocab: BTreeMap<String, usize> = byte_alphabet()
        .into_iter()
        .enumerate()
        .map(|(i, t)| (t, i))
        .collect();
    for (i, (a, b)) in MERGES.iter().enumerate() {
        vocab.insert(format!("{a}{b}"), 256 + i);
    }
    vocab.insert("<|im_start|>".into(), 260);
    vocab.insert("<|im_end|>".into(), 261);
    let added = |id: usize, content: &str, special: bool| {
        json!({"id": id, "content": content, "single_word": false, "lstrip": false,
               "rstrip": false, "normalized": false, "special": special})
    };
    json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": [
            added(260, "<|im_start|>", true),
            added(261, "<|im_end|>", true),
            added(262, "<tool>", false),
        ],
        "normalizer": null,
        "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": false,
                          "trim_offsets": true, "use_regex": true},
        "post_processor": {"type": "ByteLevel", "add_prefix_space": true,
                           "trim_offsets": false, "use_regex": true},
        "decoder": {"type": "ByteLevel", "add_prefix_space": true,
                    "trim_offsets": true, "use_regex": true},
        "model": {
            "type": "BPE", "dropout": null, "unk_token": null,
            "continuing_subword_prefix": "", "end_of_word_suffix": "",
            "fuse_unk": false, "byte_fallback": false, "ignore_merges": false,
            "vocab": vocab,
            "merges": MERGES.iter().map(|(a, b)| json!([a, b])).collect::<Vec<_>>()
        }
    })
}

fn tokenizer_config() -> Value {
    json!({
        "bos_token": "<|im_start|>",
        "eos_token": {"content": "<|im_end|>", "special": true},
        "pad_token": null,
        "chat_template": TEMPLATE,
        "model_max_length": 2048
    })
}

fn write_json(path: &Path, v: &Value) {
    std::fs::write(path, serde_json::to_vec_pretty(v).unwrap()).unwrap();
}

fn write_safetensors(path: &Path, tensors: &[&T]) {
    let bytes: Vec<Vec<u8>> = tensors.iter().map(|t| t.bytes()).collect();
    let views = tensors.iter().zip(&bytes).map(|(t, b)| {
        (
            t.name.clone(),
            TensorView::new(t.dtype, t.shape.clone(), b).unwrap(),
        )
    });
    safetensors::serialize_to_file(views, &None, path).unwrap();
}

/// Writes a checkpoint into `dir`: config, tokenizer and the tensors, split into two
/// shards with an index (embedding and layer 0 first) or as one `model.safetensors`.
fn write_checkpoint(dir: &Path, config: &Value, tensors: &[T], sharded: bool) {
    write_json(&dir.join("config.json"), config);
    write_json(&dir.join("tokenizer.json"), &tokenizer_json());
    write_json(&dir.join("tokenizer_config.json"), &tokenizer_config());
    if !sharded {
        let all: Vec<&T> = tensors.iter().collect();
        write_safetensors(&dir.join("model.safetensors"), &all);
        return;
    }
    let first =
        |t: &T| t.name.starts_with("model.embed_tokens") || t.name.starts_with("model.layers.0.");
    let names = [
        "model-00001-of-00002.safetensors",
        "model-00002-of-00002.safetensors",
    ];
    let (a, b): (Vec<&T>, Vec<&T>) = tensors.iter().partition(|t| first(t));
    write_safetensors(&dir.join(names[0]), &a);
    write_safetensors(&dir.join(names[1]), &b);
    let weight_map: BTreeMap<&str, &str> = tensors
        .iter()
        .map(|t| (t.name.as_str(), names[usize::from(!first(t))]))
        .collect();
    write_json(
        &dir.join("model.safetensors.index.json"),
        &json!({"metadata": {"total_size": 0}, "weight_map": weight_map}),
    );
}

fn import(config: &Value, tensors: &[T], sharded: bool) -> Result<Imported, ImportError> {
    let dir = tempfile::tempdir().unwrap();
    write_checkpoint(dir.path(), config, tensors, sharded);
    import_hf(dir.path())
}

fn import_err(config: &Value, tensors: &[T]) -> ImportError {
    match import(config, tensors, true) {
        Ok(_) => panic!("import should fail"),
        Err(e) => e,
    }
}

#[test]
fn imports_sharded_checkpoint() {
    let source = llama_tensors();
    let imp = import(&config(), &source, true).unwrap();

    let c = &imp.config;
    assert_eq!(
        (
            c.dim,
            c.n_layers,
            c.n_heads,
            c.n_kv_heads,
            c.head_dim,
            c.ffn_dim
        ),
        (64, 2, 4, 2, 16, 128)
    );
    assert_eq!((c.vocab_size, c.context_len), (300, 2048));
    assert_eq!((c.rope_theta, c.norm_eps), (10000.0, 1e-5));
    assert_eq!(c.rope_style, RopeStyle::Neox);
    assert!(!c.tied_embeddings && !c.qkv_bias && c.rope_scaling.is_none());
    // tokenizer_config.json's special tokens override config.json's ids.
    assert_eq!(
        (c.bos, c.eos, c.pad, c.eot),
        (Some(260), Some(261), None, Some(261))
    );

    let tok = &imp.tokenizer;
    assert_eq!(tok.model, TokenizerModel::ByteLevelBpe);
    assert_eq!(tok.pre, "gpt2");
    assert!(!tok.add_bos && !tok.add_eos && !tok.add_space_prefix);
    assert_eq!(tok.tokens.len(), 263);
    assert_eq!(tok.tokens[..256], byte_alphabet()[..]);
    assert_eq!(tok.tokens[b' ' as usize], "Ġ");
    assert_eq!(tok.tokens[258], "Ġthe");
    assert_eq!(tok.tokens[260..], ["<|im_start|>", "<|im_end|>", "<tool>"]);
    assert!(tok.token_types[..260].iter().all(|&t| t == 1));
    assert_eq!(tok.token_types[260..], [3, 3, 4]);
    assert_eq!(tok.merges, ["Ġ t", "h e", "Ġt he", "i n"]);
    assert_eq!(tok.scores, None);
    assert_eq!(imp.chat_template, TEMPLATE);

    assert!(
        imp.provenance
            .contains(&("source_format".into(), "safetensors".into()))
    );
    assert!(
        imp.provenance
            .iter()
            .any(|(k, v)| k == "source" && !v.is_empty())
    );

    let expected = expected_llama_tensors(c);
    let names: Vec<&str> = imp.tensors.iter().map(|t| t.name.as_str()).collect();
    let expected_names: Vec<&str> = expected.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, expected_names);
    assert_eq!(imp.files.len(), 2);
    for (t, (_, shape)) in imp.tensors.iter().zip(&expected) {
        assert_eq!(&t.shape, shape, "{}", t.name);
        let src = source
            .iter()
            .find(|s| canonical_name(&s.name) == Mapped::Tensor(t.name.clone()))
            .unwrap();
        let encoding = match src.dtype {
            Dtype::F32 => Encoding::F32,
            Dtype::F16 => Encoding::F16,
            Dtype::BF16 => Encoding::Bf16,
            d => panic!("{d:?}"),
        };
        assert_eq!(t.encoding, encoding, "{}", t.name);
        let shard = usize::from(!(t.name == "token_embd.weight" || t.name.starts_with("blk.0.")));
        assert_eq!(t.file, shard, "{}", t.name);
        assert_eq!(imp.bytes(t), src.bytes(), "{}", t.name);
    }

    // Decode one tensor of each encoding back to values.
    let decode = |name: &str| -> Vec<f32> {
        let t = imp.tensors.iter().find(|t| t.name == name).unwrap();
        let b = imp.bytes(t);
        match t.encoding {
            Encoding::F32 => b
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
                .collect(),
            Encoding::F16 => b
                .chunks_exact(2)
                .map(|c| f16::from_le_bytes([c[0], c[1]]).to_f32())
                .collect(),
            Encoding::Bf16 => b
                .chunks_exact(2)
                .map(|c| bf16::from_le_bytes([c[0], c[1]]).to_f32())
                .collect(),
            e => panic!("{e:?}"),
        }
    };
    for (hf, glint, tol) in [
        ("model.embed_tokens.weight", "token_embd.weight", 0.0),
        (
            "model.layers.1.self_attn.k_proj.weight",
            "blk.1.attn_k.weight",
            1e-3,
        ),
        (
            "model.layers.1.mlp.down_proj.weight",
            "blk.1.ffn_down.weight",
            1e-2,
        ),
    ] {
        let want = &source.iter().find(|s| s.name == hf).unwrap().values;
        let got = decode(glint);
        assert_eq!(got.len(), want.len());
        assert!(
            got.iter().zip(want).all(|(g, w)| (g - w).abs() <= tol),
            "{glint}"
        );
    }
}

#[test]
fn single_file_without_head_is_tied() {
    let tensors: Vec<T> = llama_tensors()
        .into_iter()
        .filter(|t| t.name != "lm_head.weight")
        .collect();
    let imp = import(&config(), &tensors, false).unwrap();
    assert!(imp.config.tied_embeddings);
    assert_eq!(imp.files.len(), 1);
    assert_eq!(imp.tensors.last().unwrap().name, "output_norm.weight");
    assert!(imp.tensors.iter().all(|t| t.name != "output.weight"));
    assert_eq!(imp.tensors.len(), expected_llama_tensors(&imp.config).len());
}

#[test]
fn missing_config_field() {
    let mut cfg = config();
    cfg.as_object_mut().unwrap().remove("intermediate_size");
    let err = import_err(&cfg, &llama_tensors());
    assert!(
        matches!(
            err,
            ImportError::Config(ModelError::MissingField("intermediate_size"))
        ),
        "{err}"
    );
    assert!(err.to_string().contains("intermediate_size"));
}

#[test]
fn unknown_tensor_name() {
    let mut tensors = llama_tensors();
    let mut extra = tensors[1].clone();
    extra.name = "model.layers.1.mlp.extra_proj.weight".into();
    tensors.push(extra);
    let err = import_err(&config(), &tensors);
    assert!(
        matches!(&err, ImportError::UnknownTensor(n) if n == "model.layers.1.mlp.extra_proj.weight"),
        "{err}"
    );
}

#[test]
fn unsupported_dtype() {
    let mut tensors = llama_tensors();
    let up = tensors
        .iter_mut()
        .find(|t| t.name == "model.layers.1.mlp.up_proj.weight")
        .unwrap();
    up.dtype = Dtype::I32;
    let err = import_err(&config(), &tensors);
    assert!(
        matches!(&err, ImportError::UnsupportedDtype { tensor, dtype }
            if tensor == "model.layers.1.mlp.up_proj.weight" && dtype == "I32"),
        "{err}"
    );
}

#[test]
fn missing_tensor() {
    let tensors: Vec<T> = llama_tensors()
        .into_iter()
        .filter(|t| t.name != "model.layers.1.mlp.down_proj.weight")
        .collect();
    let err = import_err(&config(), &tensors);
    assert!(
        matches!(&err, ImportError::MissingTensor(n) if n == "blk.1.ffn_down.weight"),
        "{err}"
    );
}

#[test]
fn wrong_shape_and_unused_bias() {
    let mut tensors = llama_tensors();
    let k = tensors
        .iter_mut()
        .find(|t| t.name == "model.layers.0.self_attn.k_proj.weight")
        .unwrap();
    k.shape = vec![DIM, HEADS * HEAD_DIM];
    k.values.resize(DIM * HEADS * HEAD_DIM, 0.5);
    let err = import_err(&config(), &tensors);
    assert!(
        matches!(&err, ImportError::BadShape { name, .. } if name == "blk.0.attn_k.weight"),
        "{err}"
    );

    let mut tensors = llama_tensors();
    let mut bias = tensors[0].clone();
    bias.name = "model.layers.0.self_attn.q_proj.bias".into();
    bias.shape = vec![DIM];
    bias.values.truncate(DIM);
    tensors.push(bias);
    let err = import_err(&config(), &tensors);
    assert!(
        matches!(&err, ImportError::UnexpectedTensor(n) if n == "model.layers.0.self_attn.q_proj.bias"),
        "{err}"
    );
}

#[test]
fn no_weights() {
    let dir = tempfile::tempdir().unwrap();
    write_json(&dir.path().join("config.json"), &config());
    write_json(&dir.path().join("tokenizer.json"), &tokenizer_json());
    assert!(matches!(
        import_hf(dir.path()),
        Err(ImportError::NoWeights(_))
    ));
}

/// The largest error packing into `dtype` may put on the values of one quantization
/// group: half a step where values round to nearest (q8, asymmetric q4), a whole
/// eighth of the magnitude for symmetric q4 (the value opposite the group's extreme
/// clamps from -8 to 7 steps), plus the f16 rounding of the scale and minimum
/// (under 2^-11 relative each, times at most 15 steps).
fn group_bound(dtype: DType, group: &[f32]) -> f32 {
    let amax = group.iter().fold(0f32, |a, x| a.max(x.abs()));
    let min = group.iter().fold(f32::INFINITY, |a, &x| a.min(x));
    let max = group.iter().fold(f32::NEG_INFINITY, |a, &x| a.max(x));
    let f16_rounding = 2e-3 * amax;
    match dtype {
        DType::F32 => 0.0,
        // Per element, see `element_bound`.
        DType::F16 => f32::INFINITY,
        DType::Q8G32 => amax / 127.0 / 2.0 + f16_rounding,
        DType::Q4G32A => (max - min) / 15.0 / 2.0 + f16_rounding,
        DType::Q4G32 | DType::Q4G64 | DType::Q4G128 => amax / 8.0 + f16_rounding,
    }
}

/// The largest error on one value: f16 keeps 1e-3 relative (down to its subnormal
/// spacing); f32 is exact; the quantized types are bounded per group.
fn element_bound(dtype: DType, x: f32) -> f32 {
    match dtype {
        DType::F16 => 1e-3 * x.abs() + 2f32.powi(-24),
        DType::F32 => 0.0,
        _ => f32::INFINITY,
    }
}

/// Logits after `prompt` from an empty cache.
fn logits_after(engine: &Engine, prompt: &[u32]) -> Vec<f32> {
    let m = engine.model();
    let mut cache = m.cache(32, KvType::F32).unwrap();
    let mut scratch = m.scratch(32, 32, false).unwrap();
    m.forward(prompt, &mut cache, &mut scratch).unwrap();
    m.logits(&mut scratch).to_vec()
}

/// The runtime on one thread.
fn load(path: &std::path::Path) -> Result<Engine, glint_runtime::engine::EngineError> {
    let opts = CpuOptions {
        threads: 1,
        ..CpuOptions::default()
    };
    Engine::load(path, opts)
}

/// Up to 6 greedy tokens after `prompt` in a new session: the ids the context holds
/// after the prompt plus the last one, not yet run.
fn greedy(engine: &Engine, prompt: &[u32]) -> (Vec<u32>, GenerateStats) {
    greedy_with(engine, prompt, KvType::F16)
}

/// [`greedy`] with a KV cache of `kv`.
fn greedy_with(engine: &Engine, prompt: &[u32], kv: KvType) -> (Vec<u32>, GenerateStats) {
    let opts = SessionOptions {
        context: 32,
        kv,
        ..SessionOptions::default()
    };
    let mut session = engine.session(opts).expect("a session");
    let params = GenerateParams {
        max_tokens: 6,
        sampler: SamplerConfig::greedy(),
        ..GenerateParams::default()
    };
    let stats = session
        .generate_tokens(prompt, &params, |_| ControlFlow::Continue(()))
        .expect("generate");
    let mut ids = session.tokens()[prompt.len()..].to_vec();
    ids.extend(session.pending());
    (ids, stats)
}

fn cosine(a: &[f32], b: &[f32]) -> f64 {
    let dot = |x: &[f32], y: &[f32]| {
        x.iter()
            .zip(y)
            .map(|(&p, &q)| p as f64 * q as f64)
            .sum::<f64>()
    };
    dot(a, b) / (dot(a, a).sqrt() * dot(b, b).sqrt())
}

#[test]
fn packs_with_every_scheme_and_runs_in_the_runtime() {
    let source = llama_tensors();
    let dir = tempfile::tempdir().unwrap();
    let checkpoint = dir.path().join("tiny-llama");
    std::fs::create_dir(&checkpoint).unwrap();
    write_checkpoint(&checkpoint, &config(), &source, true);
    let imp = import_hf(&checkpoint).unwrap();
    let original = |name: &str| -> Vec<f32> {
        source
            .iter()
            .find(|s| canonical_name(&s.name) == Mapped::Tensor(name.to_owned()))
            .unwrap_or_else(|| panic!("no source tensor for {name}"))
            .stored_values()
    };

    let mut packed = Vec::new();
    for scheme in Scheme::ALL {
        let name = scheme.name();
        let path = dir.path().join(format!("tiny.{name}.glint"));
        let len = write_packed(&imp, scheme, &path, |_, _| {}).unwrap();
        let bytes = std::fs::read(&path).unwrap();
        assert_eq!(len, bytes.len() as u64, "{name}");
        let f = GlintFile::parse(&bytes).unwrap_or_else(|e| panic!("{name}: {e}"));
        f.verify().unwrap_or_else(|e| panic!("{name}: {e}"));

        // Config, tokenizer, chat template and provenance survive.
        assert_eq!(*f.config(), imp.config, "{name}");
        let (tok, want) = (f.tokenizer(), &imp.tokenizer);
        assert_eq!(tok.model, want.model);
        assert_eq!(
            (tok.add_bos, tok.add_eos, tok.add_space_prefix),
            (want.add_bos, want.add_eos, want.add_space_prefix)
        );
        assert_eq!(tok.pre, want.pre);
        assert_eq!(tok.tokens.iter().collect::<Vec<_>>(), want.tokens);
        assert_eq!(tok.token_types, want.token_types);
        assert_eq!(tok.merges.iter().collect::<Vec<_>>(), want.merges);
        assert!(tok.scores.is_none());
        assert_eq!(f.chat_template(), TEMPLATE);
        assert_eq!(f.provenance_value("scheme"), Some(name));
        assert_eq!(f.provenance_value("source"), Some("tiny-llama"));
        assert_eq!(f.provenance_value("source_format"), Some("safetensors"));
        assert_eq!(f.provenance_value("tool"), Some("glint-quantize"));

        // Every tensor, in order, in the scheme's dtype, within its error bound.
        let names: Vec<&str> = f.tensors().iter().map(|t| t.name).collect();
        let expected: Vec<String> = expected_llama_tensors(&imp.config)
            .into_iter()
            .map(|(n, _)| n)
            .collect();
        assert_eq!(names, expected, "{name}");
        for t in f.tensors() {
            let dtype = scheme.dtype_for(t.name, t.shape());
            assert_eq!(t.dtype, dtype, "{name} {}", t.name);
            if t.shape().len() == 1 {
                assert_eq!(dtype, DType::F32, "{name} {}: vectors stay f32", t.name);
            }
            let want = original(t.name);
            let m = t.matrix().unwrap();
            let mut got = vec![0f32; m.rows * m.cols];
            for (r, row) in got.chunks_exact_mut(m.cols).enumerate() {
                dequantize_row(&m, r, row);
            }
            assert_eq!(got.len(), want.len());
            let group = dtype.group().unwrap_or(m.cols);
            for (g, (w, x)) in want.chunks(group).zip(got.chunks(group)).enumerate() {
                let bound = group_bound(dtype, w);
                for (&a, &b) in w.iter().zip(x) {
                    let bound = bound.min(element_bound(dtype, a));
                    assert!(
                        (a - b).abs() <= bound,
                        "{name} {} ({}) group {g}: {a} packed as {b}, bound {bound}",
                        t.name,
                        dtype.name()
                    );
                }
            }
        }
        packed.push((scheme, path));
    }

    // Each packed file loads in the runtime and generates greedily.
    let mut reference: Option<Vec<f32>> = None;
    for (scheme, path) in packed.iter().rev() {
        let name = scheme.name();
        let engine = load(path).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(*engine.model().config(), imp.config);
        let prompt = engine.tokenizer().encode("the in the", false);
        // t he | Ġ in | Ġthe: the merges work, the word split is GPT-2's.
        assert_eq!(prompt, [116, 257, 32, 259, 258], "{name}");
        let logits = logits_after(&engine, &prompt);
        assert_eq!(logits.len(), VOCAB);
        assert!(logits.iter().all(|l| l.is_finite()), "{name}: {logits:?}");
        // f16 (packed last, run first) is the reference: the others' logits point the
        // same way.
        match &reference {
            None => reference = Some(logits.clone()),
            Some(r) => {
                let cos = cosine(r, &logits);
                eprintln!("{name}: cosine to f16 logits {cos:.5}");
                let floor = if *scheme == Scheme::Q8 { 0.999 } else { 0.95 };
                assert!(cos > floor, "{name}: cosine {cos} to the f16 logits");
            }
        }

        let (ids, stats) = greedy(&engine, &prompt);
        assert!(stats.generated_tokens >= 1, "{name}: {stats:?}");
        assert_eq!(ids.len(), stats.generated_tokens, "{name}: {ids:?}");
        assert!(
            ids.iter().all(|&id| (id as usize) < VOCAB),
            "{name}: {ids:?}"
        );
        assert_eq!(ids[0], argmax(logits.iter().copied()), "{name}");
        // Greedy decoding is deterministic.
        assert_eq!(greedy(&engine, &prompt).0, ids, "{name}");
    }
}

#[test]
fn qwen2_pre_tokenizer_imports_and_runs() {
    // Qwen2's tokenizer.json: the regex split (single digits), then byte-level mapping.
    let regex = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
    let dir = tempfile::tempdir().unwrap();
    write_checkpoint(dir.path(), &config(), &llama_tensors(), false);
    let mut tok = tokenizer_json();
    tok["pre_tokenizer"] = json!({"type": "Sequence", "pretokenizers": [
        {"type": "Split", "pattern": {"Regex": regex}, "behavior": "Isolated", "invert": false},
        {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": false, "use_regex": false}]});
    write_json(&dir.path().join("tokenizer.json"), &tok);
    let imp = import_hf(dir.path()).unwrap();
    assert_eq!(imp.tokenizer.pre, "qwen2");

    let path = dir.path().join("tiny.glint");
    write_packed(&imp, Scheme::Q8, &path, |_, _| {}).unwrap();
    let engine = load(&path).unwrap();
    let tok = engine.tokenizer();
    assert_eq!(
        tok.pre_tokenizer(),
        glint_runtime::tokenizer::PreTokenizer::Qwen2
    );
    // Every digit is its own word; letters still merge.
    let ids = tok.encode("in 2024 the", false);
    assert_eq!(ids, [259, 32, 50, 48, 50, 52, 258]);
    assert_eq!(tok.decode(&ids, false), "in 2024 the");
    let (generated, _) = greedy(&engine, &ids);
    assert!(!generated.is_empty());
}

/// The tiny model's heads are 16 wide: an int8 KV cache (32-element blocks) is refused
/// with a typed error; the float caches still run.
#[test]
fn int8_kv_cache_needs_heads_a_multiple_of_32_wide() {
    let dir = tempfile::tempdir().unwrap();
    write_checkpoint(dir.path(), &config(), &llama_tensors(), false);
    let imp = import_hf(dir.path()).unwrap();
    assert_eq!(imp.config.head_dim, 16);
    let path = dir.path().join("tiny.glint");
    write_packed(&imp, Scheme::Q8, &path, |_, _| {}).unwrap();
    let engine = load(&path).unwrap();
    let opts = SessionOptions {
        context: 32,
        kv: KvType::Int8,
        ..SessionOptions::default()
    };
    let err = engine
        .session(opts)
        .err()
        .expect("an int8 cache is refused");
    assert!(err.to_string().contains("multiple of 32"), "{err}");
    let prompt = engine.tokenizer().encode("the in the", false);
    assert!(!greedy_with(&engine, &prompt, KvType::F32).0.is_empty());
    assert!(!greedy(&engine, &prompt).0.is_empty());
}

/// Evaluation against the float reference on the tiny model: the f32 file is the
/// reference itself (KL 0, every argmax agreeing, no per-layer error); int4 by
/// round-to-nearest differs; GPTQ calibrated on one text lowers its KL on another.
#[test]
fn packed_files_are_evaluated_against_the_float_reference() {
    use glint_quantize::calibrate::{CalibrationOptions, collect_hessians, self_generated};
    use glint_quantize::evaluate::reference_engine;
    use glint_quantize::{PackPlan, pack_to_bytes};
    use glint_runtime::backend::Precision;
    use glint_runtime::eval::{CompareOptions, compare};
    use glint_runtime::model::ModelSource;

    let dir = tempfile::tempdir().unwrap();
    write_checkpoint(dir.path(), &config(), &llama_tensors(), false);
    let imp = import_hf(dir.path()).unwrap();
    let reference = reference_engine(&imp, 1).unwrap();
    let engine = |plan: &PackPlan| {
        let opts = CpuOptions {
            threads: 1,
            precision: Precision::Exact,
            kernel: None,
        };
        let bytes = pack_to_bytes(&imp, plan).unwrap();
        Engine::load(ModelSource::Bytes(bytes.into()), opts).unwrap()
    };
    let eval_text = "then the theme in the thin tin, then the hint in the night; ".repeat(4);
    let calibration = "a bird sat in the tree and sang to the thin moon at night. ".repeat(8);
    let opts = CompareOptions {
        window: 32,
        kv: KvType::F32,
        reference_kv: KvType::F32,
        layer_windows: 2,
    };
    let measure =
        |plan: &PackPlan| compare(&reference, &engine(plan), &eval_text, opts, |_, _| {}).unwrap();

    let same = measure(&PackPlan::rtn(Scheme::F32));
    assert!(same.scored >= 2 * 15, "{} positions", same.scored);
    assert_eq!((same.kl, same.top1), (0.0, 1.0));
    assert_eq!(same.ppl, same.reference_ppl);
    assert_eq!(same.layer_error, vec![0.0; LAYERS]);

    let rtn = measure(&PackPlan::rtn(Scheme::Q4g32));
    assert!(rtn.kl > 0.0 && rtn.ppl.is_finite());
    assert_eq!(rtn.layer_error.len(), LAYERS);
    assert!(
        rtn.layer_error.iter().all(|&e| e > 0.0 && e < 1.0),
        "{:?}",
        rtn.layer_error
    );

    let cal = CalibrationOptions {
        window: 32,
        max_tokens: 512,
    };
    let calibration = reference.tokenizer().encode(&calibration, false);
    let (hessians, tokens) = collect_hessians(&reference, &calibration, cal, |_, _| {}).unwrap();
    assert!(tokens >= 256);
    // Q, K, V, O, gate, up and down of each block, and the head.
    assert_eq!(hessians.len(), 7 * LAYERS + 1);
    let mut plan = PackPlan::rtn(Scheme::Q4g32);
    plan.hessians = Some(hessians);
    let gptq = measure(&plan);
    assert!(
        gptq.kl < rtn.kl,
        "GPTQ KL {} vs round-to-nearest {}",
        gptq.kl,
        rtn.kl
    );

    // With no text, the reference writes its own: as many tokens as asked, the same
    // for the same seed, other tokens for another. GPTQ on one such text beats rounding
    // on another (this random model's own text, not the English above, is what its
    // Hessians describe).
    let written = self_generated(&reference, cal, 7, |_, _| {}).unwrap();
    assert_eq!(written.len(), cal.max_tokens);
    assert_eq!(
        written,
        self_generated(&reference, cal, 7, |_, _| {}).unwrap()
    );
    let held_out = self_generated(&reference, cal, 8, |_, _| {}).unwrap();
    assert_ne!(written, held_out);
    let held_out = reference.tokenizer().decode(&held_out, false);
    let measure =
        |plan: &PackPlan| compare(&reference, &engine(plan), &held_out, opts, |_, _| {}).unwrap();
    let (hessians, _) = collect_hessians(&reference, &written, cal, |_, _| {}).unwrap();
    assert_eq!(hessians.len(), 7 * LAYERS + 1);
    plan.hessians = Some(hessians);
    let self_calibrated = measure(&plan);
    let rtn = measure(&PackPlan::rtn(Scheme::Q4g32));
    assert!(
        self_calibrated.kl < rtn.kl,
        "self-calibrated GPTQ KL {} vs round-to-nearest {}",
        self_calibrated.kl,
        rtn.kl
    );
}

/// A model with fewer blocks than its reference (a pruned student: block 0 of the tiny
/// model) compares by its logits; per-layer errors asked of it are a typed error.
#[test]
fn a_model_with_fewer_blocks_compares_by_its_logits_only() {
    use glint_quantize::evaluate::reference_engine;
    use glint_runtime::eval::{CompareOptions, EvalError, compare};

    let dir = tempfile::tempdir().unwrap();
    let (teacher, student) = (dir.path().join("teacher"), dir.path().join("student"));
    std::fs::create_dir_all(&teacher).unwrap();
    std::fs::create_dir_all(&student).unwrap();
    write_checkpoint(&teacher, &config(), &llama_tensors(), false);
    let mut student_config = config();
    student_config["num_hidden_layers"] = json!(1);
    let student_tensors: Vec<T> = llama_tensors()
        .into_iter()
        .filter(|t| !t.name.starts_with("model.layers.1."))
        .collect();
    write_checkpoint(&student, &student_config, &student_tensors, false);
    let reference = reference_engine(&import_hf(&teacher).unwrap(), 1).unwrap();
    let out = dir.path().join("student.glint");
    write_packed(&import_hf(&student).unwrap(), Scheme::F32, &out, |_, _| {}).unwrap();
    let student = load(&out).unwrap();
    assert_eq!(student.model().config().n_layers, 1);

    let text = "then the theme in the thin tin, then the hint in the night; ".repeat(4);
    let mut opts = CompareOptions {
        window: 32,
        kv: KvType::F32,
        reference_kv: KvType::F32,
        layer_windows: 0,
    };
    let c = compare(&reference, &student, &text, opts, |_, _| {}).unwrap();
    assert!(c.scored >= 2 * 15, "{} positions", c.scored);
    assert!(c.kl > 0.0 && c.kl.is_finite(), "KL {}", c.kl);
    assert!(c.ppl.is_finite() && c.ppl != c.reference_ppl);
    assert!(c.layer_error.is_empty());

    opts.layer_windows = 1;
    assert_eq!(
        compare(&reference, &student, &text, opts, |_, _| {}),
        Err(EvalError::LayerMismatch {
            reference_layers: LAYERS as u32,
            reference_dim: DIM as u32,
            layers: 1,
            dim: DIM as u32,
        })
    );
}
