//! Imports tiny random Llama checkpoints written in Hugging Face layout.

use glint_format::{RopeStyle, TokenizerModel, expected_llama_tensors};
use glint_models::{Mapped, ModelError, canonical_name};
use glint_quantize::hf::{ImportError, import_hf};
use glint_quantize::source::{Encoding, Imported};
use half::{bf16, f16};
use safetensors::{Dtype, tensor::TensorView};
use serde_json::{Value, json};
use std::collections::BTreeMap;
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
