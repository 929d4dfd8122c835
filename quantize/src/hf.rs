//! Import of a Hugging Face checkpoint directory: `config.json`, `tokenizer.json`,
//! `tokenizer_config.json` (optional) and safetensors weights, single-file
//! (`model.safetensors`) or sharded (`model.safetensors.index.json`).
//!
//! The weights are memory-mapped, not read: each [`SourceTensor`] is a byte range
//! into one of [`Imported::files`].

use crate::source::{Encoding, Imported, SourceTensor};
use glint_format::{
    LlamaTensor, ModelConfig, TokenizerModel, TokenizerSpec, expected_llama_tensors,
};
use glint_models::{Mapped, ModelError, canonical_name, config_from_hf};
use memmap2::Mmap;
use safetensors::{Dtype, SafeTensorError, SafeTensors};
use serde_json::Value;
use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::path::{Component, Path, PathBuf};

/// Why a Hugging Face checkpoint cannot be imported.
#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    /// A file could not be read or mapped.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// A JSON file does not parse.
    #[error("{}: invalid JSON: {source}", path.display())]
    Json {
        /// The file.
        path: PathBuf,
        /// The parse error.
        #[source]
        source: serde_json::Error,
    },
    /// `config.json` does not describe a supported model.
    #[error("config.json: {0}")]
    Config(#[from] ModelError),
    /// `tokenizer.json` or `tokenizer_config.json` is unsupported or inconsistent.
    #[error("tokenizer: {0}")]
    Tokenizer(String),
    /// Neither `model.safetensors` nor `model.safetensors.index.json` exists.
    #[error(
        "{}: no weights (expected model.safetensors or model.safetensors.index.json)",
        .0.display()
    )]
    NoWeights(PathBuf),
    /// The shard index is malformed.
    #[error("{}: bad shard index: {why}", path.display())]
    BadIndex {
        /// The index file.
        path: PathBuf,
        /// What is wrong.
        why: String,
    },
    /// A safetensors file is malformed.
    #[error("{}: bad safetensors file: {source}", path.display())]
    Safetensors {
        /// The file.
        path: PathBuf,
        /// The parse error.
        #[source]
        source: SafeTensorError,
    },
    /// A tensor's element type is not F32, F16 or BF16.
    #[error("tensor {tensor:?} has dtype {dtype}; only F32, F16 and BF16 are supported")]
    UnsupportedDtype {
        /// Source (Hugging Face) tensor name.
        tensor: String,
        /// Its dtype, as safetensors spells it.
        dtype: String,
    },
    /// A tensor name that is not part of a Llama-family model.
    #[error("unknown tensor {0:?} (not part of a Llama-family model)")]
    UnknownTensor(String),
    /// Two source tensors map to the same canonical name.
    #[error("tensor {0:?} appears more than once")]
    DuplicateTensor(String),
    /// A known tensor that this model's config does not use (e.g. a Q bias without
    /// `attention_bias`).
    #[error("tensor {0:?} is not used by this model's config")]
    UnexpectedTensor(String),
    /// A tensor the config requires is absent (canonical name).
    #[error("missing tensor {0:?}")]
    MissingTensor(String),
    /// A tensor's shape disagrees with the config.
    #[error("tensor {name:?} has shape {actual:?}, the config implies {expected:?}")]
    BadShape {
        /// Canonical name.
        name: String,
        /// Shape in the checkpoint.
        actual: Vec<u64>,
        /// Shape the config implies.
        expected: Vec<u64>,
    },
}

fn tok_err(msg: impl Into<String>) -> ImportError {
    ImportError::Tokenizer(msg.into())
}

fn read_json(path: &Path) -> Result<Value, ImportError> {
    let text = std::fs::read(path).map_err(|source| ImportError::Io {
        path: path.to_owned(),
        source,
    })?;
    serde_json::from_slice(&text).map_err(|source| ImportError::Json {
        path: path.to_owned(),
        source,
    })
}

/// Imports the Hugging Face checkpoint in `dir` (a Llama-family model with
/// `config.json`, `tokenizer.json`, optionally `tokenizer_config.json` /
/// `chat_template.jinja`, and safetensors weights).
///
/// Tensors come out under their canonical names, in the order of
/// [`expected_llama_tensors`]; a checkpoint without `lm_head.weight` is treated as
/// having tied embeddings. The tokenizer's special tokens override the BOS/EOS/PAD ids
/// of `config.json`, and the end-of-turn token is `<|im_end|>` or `<|eot_id|>` where
/// the vocabulary has one, else EOS.
pub fn import_hf(dir: &Path) -> Result<Imported, ImportError> {
    let mut config = config_from_hf(&read_json(&dir.join("config.json"))?)?;
    // Recommended sampling: the checkpoint's generation_config.json, else the table of
    // known models by the folder's name.
    let generation = dir.join("generation_config.json");
    config.sampling = if generation.exists() {
        glint_models::sampling_from_generation_config(&read_json(&generation)?)
    } else {
        None
    }
    .or_else(|| glint_models::known_sampling(&dir.file_name()?.to_string_lossy()));

    let tokenizer_json = read_json(&dir.join("tokenizer.json"))?;
    let tc_path = dir.join("tokenizer_config.json");
    let tokenizer_config = if tc_path.exists() {
        read_json(&tc_path)?
    } else {
        Value::Null
    };
    let tok = import_tokenizer(&tokenizer_json, &tokenizer_config, config.vocab_size)?;
    let mut chat_template = tok.chat_template;
    let jinja = dir.join("chat_template.jinja");
    if chat_template.is_empty() && jinja.exists() {
        chat_template = std::fs::read_to_string(&jinja).map_err(|source| ImportError::Io {
            path: jinja,
            source,
        })?;
    }
    config.bos = tok.bos.or(config.bos);
    config.eos = tok.eos.or(config.eos);
    config.pad = tok.pad.or(config.pad);
    config.eot = tok.eot.or(config.eos);

    let (files, found) = read_weights(dir)?;
    let tensors = order_tensors(&mut config, found)?;

    let source = std::fs::canonicalize(dir)
        .ok()
        .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
        .unwrap_or_else(|| dir.display().to_string());
    Ok(Imported {
        config,
        tokenizer: tok.spec,
        chat_template,
        provenance: vec![
            ("source".into(), source),
            ("source_format".into(), "safetensors".into()),
        ],
        tensors,
        files,
    })
}

/// The weight files of `dir`, and for a sharded checkpoint the tensor names the index
/// assigns to each.
fn weight_files(dir: &Path) -> Result<Vec<(PathBuf, Vec<String>)>, ImportError> {
    let single = dir.join("model.safetensors");
    let index_path = dir.join("model.safetensors.index.json");
    if !index_path.exists() {
        if single.exists() {
            return Ok(vec![(single, Vec::new())]);
        }
        return Err(ImportError::NoWeights(dir.to_owned()));
    }
    let bad = |why: String| ImportError::BadIndex {
        path: index_path.clone(),
        why,
    };
    let index = read_json(&index_path)?;
    let map = index
        .get("weight_map")
        .and_then(Value::as_object)
        .ok_or_else(|| bad("no \"weight_map\" object".into()))?;
    let mut by_file: BTreeMap<&str, Vec<String>> = BTreeMap::new();
    for (name, file) in map {
        let file = file
            .as_str()
            .ok_or_else(|| bad(format!("file of {name:?} is not a string")))?;
        let plain = Path::new(file)
            .components()
            .all(|c| matches!(c, Component::Normal(_)));
        if !plain || file.is_empty() {
            return Err(bad(format!("shard {file:?} is not a file name in {dir:?}")));
        }
        by_file.entry(file).or_default().push(name.clone());
    }
    if by_file.is_empty() {
        return Err(bad("empty weight_map".into()));
    }
    Ok(by_file
        .into_iter()
        .map(|(f, names)| (dir.join(f), names))
        .collect())
}

/// A tensor found in the weights, before ordering.
struct Found {
    hf_name: String,
    tensor: SourceTensor,
}

/// Maps every weight file and collects its tensors under their canonical names.
fn read_weights(dir: &Path) -> Result<(Vec<Mmap>, HashMap<String, Found>), ImportError> {
    let mut files = Vec::new();
    let mut found: HashMap<String, Found> = HashMap::new();
    for (path, indexed) in weight_files(dir)? {
        let file = File::open(&path).map_err(|source| ImportError::Io {
            path: path.clone(),
            source,
        })?;
        // SAFETY: the map is read-only; like every mmap-based loader we rely on the
        // checkpoint not being modified while it is imported.
        let map = unsafe { Mmap::map(&file) }.map_err(|source| ImportError::Io {
            path: path.clone(),
            source,
        })?;
        let (header_len, meta) =
            SafeTensors::read_metadata(&map).map_err(|source| ImportError::Safetensors {
                path: path.clone(),
                source,
            })?;
        let data_start = 8 + header_len;
        let infos = meta.tensors();
        if let Some(name) = indexed.iter().find(|n| !infos.contains_key(*n)) {
            return Err(ImportError::BadIndex {
                path: dir.join("model.safetensors.index.json"),
                why: format!("tensor {name:?} is not in {}", path.display()),
            });
        }
        let file_index = files.len();
        for (hf_name, info) in infos {
            let canonical = match canonical_name(&hf_name) {
                Mapped::Tensor(c) => c,
                Mapped::Ignore => continue,
                Mapped::Unknown => return Err(ImportError::UnknownTensor(hf_name)),
            };
            let encoding = match info.dtype {
                Dtype::F32 => Encoding::F32,
                Dtype::F16 => Encoding::F16,
                Dtype::BF16 => Encoding::Bf16,
                other => {
                    return Err(ImportError::UnsupportedDtype {
                        tensor: hf_name,
                        dtype: format!("{other:?}"),
                    });
                }
            };
            let (start, end) = info.data_offsets;
            let tensor = SourceTensor {
                name: canonical.clone(),
                shape: info.shape.iter().map(|&d| d as u64).collect(),
                encoding,
                file: file_index,
                range: data_start + start..data_start + end,
            };
            if let Some(prev) = found.insert(canonical, Found { hf_name, tensor }) {
                return Err(ImportError::DuplicateTensor(prev.hf_name));
            }
        }
        files.push(map);
    }
    Ok((files, found))
}

/// Settles tied embeddings, then puts the tensors in [`expected_llama_tensors`] order,
/// checking that each is present with the right shape and that none is left over.
fn order_tensors(
    config: &mut ModelConfig,
    mut found: HashMap<String, Found>,
) -> Result<Vec<SourceTensor>, ImportError> {
    let head = LlamaTensor::Output.name();
    if !found.contains_key(&head) {
        config.tied_embeddings = true;
    }
    if config.tied_embeddings {
        // A tied checkpoint that stores the head anyway stores the embedding twice.
        found.remove(&head);
    }
    let mut tensors = Vec::with_capacity(found.len());
    for (name, shape) in expected_llama_tensors(config) {
        let t = found
            .remove(&name)
            .ok_or_else(|| ImportError::MissingTensor(name.clone()))?
            .tensor;
        if t.shape != shape {
            return Err(ImportError::BadShape {
                name,
                actual: t.shape,
                expected: shape,
            });
        }
        tensors.push(t);
    }
    if let Some(extra) = found.into_values().map(|f| f.hf_name).min() {
        return Err(ImportError::UnexpectedTensor(extra));
    }
    Ok(tensors)
}

/// The tokenizer as imported, with the special-token ids it resolves.
struct Tok {
    spec: TokenizerSpec,
    chat_template: String,
    bos: Option<u32>,
    eos: Option<u32>,
    pad: Option<u32>,
    eot: Option<u32>,
}

/// GGUF token type codes.
const TYPE_NORMAL: u8 = 1;
const TYPE_UNKNOWN: u8 = 2;
const TYPE_CONTROL: u8 = 3;
const TYPE_USER: u8 = 4;
const TYPE_BYTE: u8 = 6;

/// `<0xAB>`: a SentencePiece byte-fallback token.
fn is_byte_token(t: &str) -> bool {
    let b = t.as_bytes();
    b.len() == 6
        && t.starts_with("<0x")
        && t.ends_with('>')
        && b[3..5].iter().all(u8::is_ascii_hexdigit)
}

/// The pre-tokenizers of a `pre_tokenizer`/`normalizer`, flattening a `Sequence`.
fn flatten<'a>(v: &'a Value, list_key: &str) -> Vec<&'a Value> {
    match v.get("type").and_then(Value::as_str) {
        Some("Sequence") => v
            .get(list_key)
            .and_then(Value::as_array)
            .map(|a| a.iter().flat_map(|x| flatten(x, list_key)).collect())
            .unwrap_or_default(),
        Some(_) => vec![v],
        None => Vec::new(),
    }
}

fn type_of(v: &Value) -> &str {
    v.get("type").and_then(Value::as_str).unwrap_or("")
}

/// Tokenizer model, pre-tokenizer name and whether a space is prepended.
fn classify(tok: &Value) -> Result<(TokenizerModel, &'static str, bool), ImportError> {
    let pre = flatten(&tok["pre_tokenizer"], "pretokenizers");
    let norm = flatten(&tok["normalizer"], "normalizers");
    let byte_fallback = tok["model"]["byte_fallback"].as_bool().unwrap_or(false);
    let metaspace = pre.iter().find(|p| type_of(p) == "Metaspace");
    let byte_level = pre.iter().any(|p| type_of(p) == "ByteLevel");

    if let Some(m) = metaspace {
        let prefix = match m.get("prepend_scheme").and_then(Value::as_str) {
            Some(scheme) => scheme != "never",
            None => m["add_prefix_space"].as_bool().unwrap_or(true),
        };
        return Ok((TokenizerModel::SentencePiece, "default", prefix));
    }
    if byte_fallback && !byte_level {
        let prefix = norm.iter().any(|n| type_of(n) == "Prepend");
        return Ok((TokenizerModel::SentencePiece, "default", prefix));
    }
    if !byte_level {
        return Err(tok_err(format!(
            "unsupported pre-tokenizer {} (expected ByteLevel or Metaspace)",
            tok["pre_tokenizer"]
        )));
    }
    let digits = pre
        .iter()
        .any(|p| type_of(p) == "Digits" && p["individual_digits"].as_bool() == Some(true));
    let regexes: Vec<&str> = pre
        .iter()
        .filter(|p| type_of(p) == "Split")
        .filter_map(|p| p["pattern"]["Regex"].as_str())
        .collect();
    let name = if pre.len() == 1 {
        "gpt2"
    } else if digits && regexes.is_empty() {
        "smollm"
    } else if regexes.iter().any(|r| r.contains(r"\p{N}{1,3}")) {
        "llama3"
    } else if regexes.iter().any(|r| r.contains(r"|\p{N}|")) {
        "qwen2"
    } else {
        return Err(tok_err(format!(
            "unrecognised byte-level pre-tokenizer {}",
            tok["pre_tokenizer"]
        )));
    };
    Ok((TokenizerModel::ByteLevelBpe, name, false))
}

/// Whether the post-processor's single-sequence template starts (BOS) and ends (EOS)
/// with a special token; `None` without a `TemplateProcessing`.
fn template_adds(tok: &Value) -> Option<(bool, bool)> {
    let procs = flatten(&tok["post_processor"], "processors");
    let single = procs
        .iter()
        .find(|p| type_of(p) == "TemplateProcessing")?
        .get("single")?
        .as_array()?;
    let special = |x: Option<&Value>| x.is_some_and(|x| x.get("SpecialToken").is_some());
    Some((special(single.first()), special(single.last())))
}

/// A special token from `tokenizer_config.json`: a string, `{"content": ...}` or null.
fn special_token<'a>(tc: &'a Value, key: &str) -> Result<Option<&'a str>, ImportError> {
    match tc.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(v) => match v.get("content").and_then(Value::as_str) {
            Some(s) => Ok(Some(s)),
            None => Err(tok_err(format!("tokenizer_config.json: bad {key}: {v}"))),
        },
    }
}

fn chat_template(tc: &Value) -> Result<String, ImportError> {
    match tc.get("chat_template") {
        None | Some(Value::Null) => Ok(String::new()),
        Some(Value::String(s)) => Ok(s.clone()),
        Some(Value::Array(list)) => list
            .iter()
            .find(|t| t["name"].as_str() == Some("default"))
            .and_then(|t| t["template"].as_str())
            .map(str::to_owned)
            .ok_or_else(|| tok_err("tokenizer_config.json: chat_template has no \"default\"")),
        Some(_) => Err(tok_err("tokenizer_config.json: bad chat_template")),
    }
}

fn opt_flag(tc: &Value, key: &str) -> Result<Option<bool>, ImportError> {
    match tc.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Bool(b)) => Ok(Some(*b)),
        Some(v) => Err(tok_err(format!("tokenizer_config.json: bad {key}: {v}"))),
    }
}

fn id_of(v: &Value, what: &str) -> Result<u32, ImportError> {
    v.as_u64()
        .and_then(|n| u32::try_from(n).ok())
        .ok_or_else(|| tok_err(format!("{what}: bad token id {v}")))
}

/// Reads `tokenizer.json` (+ `tokenizer_config.json`, `Null` if absent) for a model
/// with `vocab_size` embedding rows.
fn import_tokenizer(tok: &Value, tc: &Value, vocab_size: u32) -> Result<Tok, ImportError> {
    let model = &tok["model"];
    match model["type"].as_str() {
        Some("BPE") => {}
        other => {
            return Err(tok_err(format!(
                "unsupported tokenizer model type {} (expected BPE)",
                other.unwrap_or("(none)")
            )));
        }
    }
    let (kind, pre, add_space_prefix) = classify(tok)?;

    // Tokens by id: the BPE vocabulary, then the added tokens (which may extend it).
    let mut slots: Vec<Option<(String, u8)>> = Vec::new();
    let mut put = |id: u32, text: &str, ty: u8| -> Result<(), ImportError> {
        if id >= vocab_size {
            return Err(tok_err(format!(
                "token {text:?} has id {id}, beyond the model's vocab_size {vocab_size}"
            )));
        }
        let id = id as usize;
        if slots.len() <= id {
            slots.resize(id + 1, None);
        }
        match &mut slots[id] {
            Some((prev, _)) if prev != text => {
                Err(tok_err(format!("id {id} is both {prev:?} and {text:?}")))
            }
            slot => {
                *slot = Some((text.to_owned(), ty));
                Ok(())
            }
        }
    };
    let vocab = model["vocab"]
        .as_object()
        .ok_or_else(|| tok_err("tokenizer.json: model.vocab is not an object"))?;
    let unk = model["unk_token"].as_str();
    for (text, id) in vocab {
        let ty = if Some(text.as_str()) == unk {
            TYPE_UNKNOWN
        } else if kind == TokenizerModel::SentencePiece && is_byte_token(text) {
            TYPE_BYTE
        } else {
            TYPE_NORMAL
        };
        put(id_of(id, text)?, text, ty)?;
    }
    for added in tok["added_tokens"].as_array().into_iter().flatten() {
        let text = added["content"]
            .as_str()
            .ok_or_else(|| tok_err(format!("added token without content: {added}")))?;
        let ty = match added["special"].as_bool() {
            _ if Some(text) == unk => TYPE_UNKNOWN,
            Some(true) => TYPE_CONTROL,
            _ => TYPE_USER,
        };
        put(id_of(&added["id"], text)?, text, ty)?;
    }
    let mut tokens = Vec::with_capacity(slots.len());
    let mut token_types = Vec::with_capacity(slots.len());
    for (id, slot) in slots.into_iter().enumerate() {
        let (text, ty) = slot.ok_or_else(|| tok_err(format!("no token has id {id}")))?;
        tokens.push(text);
        token_types.push(ty);
    }
    if tokens.is_empty() {
        return Err(tok_err("empty vocabulary"));
    }

    let merges = model["merges"]
        .as_array()
        .ok_or_else(|| tok_err("tokenizer.json: model.merges is not a list"))?
        .iter()
        .map(|m| match m {
            Value::String(s) if s.contains(' ') => Ok(s.clone()),
            Value::Array(pair) => match pair.as_slice() {
                [Value::String(a), Value::String(b)] => Ok(format!("{a} {b}")),
                _ => Err(tok_err(format!("bad merge {m}"))),
            },
            _ => Err(tok_err(format!("bad merge {m}"))),
        })
        .collect::<Result<Vec<_>, _>>()?;

    let ids: HashMap<&str, u32> = tokens
        .iter()
        .enumerate()
        .map(|(i, t)| (t.as_str(), i as u32))
        .collect();
    let resolve = |key: &str| -> Result<Option<u32>, ImportError> {
        special_token(tc, key)?
            .map(|t| {
                ids.get(t).copied().ok_or_else(|| {
                    tok_err(format!(
                        "tokenizer_config.json: {key} {t:?} is not in the vocabulary"
                    ))
                })
            })
            .transpose()
    };
    let (bos, eos, pad) = (
        resolve("bos_token")?,
        resolve("eos_token")?,
        resolve("pad_token")?,
    );
    let eot = ["<|im_end|>", "<|eot_id|>"]
        .iter()
        .find_map(|t| ids.get(t).copied());

    let (template_bos, template_eos) = template_adds(tok).unwrap_or((false, false));
    let add_bos = opt_flag(tc, "add_bos_token")?.unwrap_or(match template_adds(tok) {
        Some(_) => template_bos,
        None => kind == TokenizerModel::SentencePiece,
    });
    let add_eos = opt_flag(tc, "add_eos_token")?.unwrap_or(template_eos);

    Ok(Tok {
        spec: TokenizerSpec {
            model: kind,
            add_bos,
            add_eos,
            add_space_prefix,
            pre: pre.to_owned(),
            tokens,
            token_types,
            scores: None,
            merges,
        },
        chat_template: chat_template(tc)?,
        bos,
        eos,
        pad,
        eot: eot.or(eos),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn bpe(pre_tokenizer: Value) -> Value {
        json!({
            "added_tokens": [{"id": 3, "content": "<s>", "special": true}],
            "normalizer": null,
            "pre_tokenizer": pre_tokenizer,
            "post_processor": {"type": "ByteLevel"},
            "model": {"type": "BPE", "vocab": {"a": 0, "b": 1, "ab": 2},
                      "merges": ["a b"]}
        })
    }

    fn pre_of(pre_tokenizer: Value) -> &'static str {
        classify(&bpe(pre_tokenizer)).unwrap().1
    }

    #[test]
    fn detects_pre_tokenizers() {
        let byte_level = json!({"type": "ByteLevel", "add_prefix_space": false,
                                "trim_offsets": true, "use_regex": true});
        assert_eq!(pre_of(byte_level.clone()), "gpt2");
        assert_eq!(
            pre_of(json!({"type": "Sequence", "pretokenizers": [
                {"type": "Digits", "individual_digits": true}, byte_level]})),
            "smollm"
        );
        let llama3 = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
        let split = |re: &str| {
            json!({"type": "Sequence", "pretokenizers": [
                {"type": "Split", "pattern": {"Regex": re}, "behavior": "Isolated", "invert": false},
                {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": false}]})
        };
        assert_eq!(pre_of(split(llama3)), "llama3");
        assert_eq!(pre_of(split(&llama3.replace("{1,3}", ""))), "qwen2");
        assert!(classify(&bpe(split(r"\w+"))).is_err());
        assert!(classify(&bpe(json!({"type": "Whitespace"}))).is_err());
    }

    #[test]
    fn detects_sentencepiece() {
        // Llama 2 / TinyLlama style: no pre-tokenizer, Prepend normalizer, byte fallback.
        let mut t = bpe(Value::Null);
        t["normalizer"] = json!({"type": "Sequence", "normalizers": [
            {"type": "Prepend", "prepend": "▁"},
            {"type": "Replace", "pattern": {"String": " "}, "content": "▁"}]});
        t["model"]["byte_fallback"] = json!(true);
        assert_eq!(
            classify(&t).unwrap(),
            (TokenizerModel::SentencePiece, "default", true)
        );
        // Newer Metaspace style.
        let t = bpe(json!({"type": "Metaspace", "replacement": "▁",
                           "prepend_scheme": "first", "split": false}));
        assert_eq!(
            classify(&t).unwrap(),
            (TokenizerModel::SentencePiece, "default", true)
        );
    }

    #[test]
    fn sentencepiece_token_types_and_bos_default() {
        let t = json!({
            "added_tokens": [
                {"id": 0, "content": "<unk>", "special": true},
                {"id": 1, "content": "<s>", "special": true},
                {"id": 2, "content": "</s>", "special": true}],
            "normalizer": {"type": "Prepend", "prepend": "▁"},
            "pre_tokenizer": null,
            "model": {"type": "BPE", "byte_fallback": true, "unk_token": "<unk>",
                      "vocab": {"<unk>": 0, "<s>": 1, "</s>": 2, "<0x0A>": 3, "▁a": 4},
                      "merges": [["▁", "a"]]}
        });
        let tc = json!({"bos_token": {"content": "<s>"}, "eos_token": "</s>"});
        let tok = import_tokenizer(&t, &tc, 32).unwrap();
        assert_eq!(tok.spec.token_types, [2, 3, 3, 6, 1]);
        assert_eq!(tok.spec.merges, ["▁ a"]);
        assert!(tok.spec.add_bos && !tok.spec.add_eos && tok.spec.add_space_prefix);
        assert_eq!((tok.bos, tok.eos, tok.eot), (Some(1), Some(2), Some(2)));
    }

    #[test]
    fn llama3_template_adds_bos() {
        let mut t = bpe(json!({"type": "ByteLevel"}));
        t["post_processor"] = json!({"type": "Sequence", "processors": [
            {"type": "ByteLevel"},
            {"type": "TemplateProcessing",
             "single": [{"SpecialToken": {"id": "<s>", "type_id": 0}},
                        {"Sequence": {"id": "A", "type_id": 0}}]}]});
        let tok = import_tokenizer(&t, &Value::Null, 8).unwrap();
        assert!(tok.spec.add_bos && !tok.spec.add_eos);
        let tok = import_tokenizer(&t, &json!({"add_bos_token": false}), 8).unwrap();
        assert!(!tok.spec.add_bos);
    }

    #[test]
    fn tokenizer_errors() {
        // Gap at id 3 (the added token moved to 4).
        let mut t = bpe(json!({"type": "ByteLevel"}));
        t["added_tokens"][0]["id"] = json!(4);
        assert!(import_tokenizer(&t, &Value::Null, 8).is_err());
        // Id clash.
        t["added_tokens"][0]["id"] = json!(2);
        assert!(import_tokenizer(&t, &Value::Null, 8).is_err());
        // More tokens than embedding rows.
        let t = bpe(json!({"type": "ByteLevel"}));
        assert!(import_tokenizer(&t, &Value::Null, 3).is_err());
        // Unknown special token.
        let err = import_tokenizer(&t, &json!({"eos_token": "</s>"}), 8)
            .err()
            .unwrap();
        assert!(err.to_string().contains("</s>"), "{err}");
        // Not BPE.
        let mut t = bpe(json!({"type": "ByteLevel"}));
        t["model"]["type"] = json!("Unigram");
        assert!(import_tokenizer(&t, &Value::Null, 8).is_err());
    }
}
