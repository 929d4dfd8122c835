//! Synthetic models: a GGUF file with random weights at a given shape ([`SynthModel`]),
//! which llama.cpp and Glint both load, so the two engines run the same bytes at the
//! shape of a model whose weights are not at hand (`glint-quantize synth`).
//!
//! The weights are random blocks of the chosen ggml type with a standard deviation of
//! [`WEIGHT_STD`] (zero mean), norms are 1 and biases small, so activations stay finite
//! through every layer (pre-norm blocks: each projection sees unit-RMS inputs and adds
//! O(1) to the residual). The tokenizer is a given one (the default model's) padded with
//! `[PAD<id>]` placeholder tokens of type unused up to the shape's vocabulary, as
//! llama.cpp's converter pads Qwen2's; the file's `general.description` says so.

use crate::gguf::{GgmlType, ValueType};
use glint_format::{LlamaTensor, ModelConfig, TokenizerModel, TokenizerSpec};
use half::f16;
use std::io::Write;
use std::path::{Path, PathBuf};

/// Standard deviation of every random matrix (the initialisation scale of these models).
pub const WEIGHT_STD: f32 = 0.02;

/// The GGUF token type llama.cpp gives padding tokens (`UNUSED`).
const TOKEN_UNUSED: i32 = 5;

/// The ggml type the matrices of a synthetic model are stored in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WeightType {
    /// 4-bit, symmetric (`Q4_0`), with the embedding (and an untied head) in `Q8_0`, as
    /// in 4-bit releases whose embedding is kept at 8 bits. Glint imports it as `q4g32`
    /// block for block.
    Q4_0,
    /// 4-bit with a minimum (`Q4_1`), embedding in `Q8_0`; Glint's `q4g32a`.
    Q4_1,
    /// 8-bit everywhere (`Q8_0`).
    Q8_0,
    /// `F16` everywhere.
    F16,
}

impl WeightType {
    /// Every type, for help texts.
    pub const ALL: [WeightType; 4] = [Self::Q4_0, Self::Q4_1, Self::Q8_0, Self::F16];

    /// The command-line name (llama.cpp's file type names, lower case).
    pub fn name(self) -> &'static str {
        match self {
            Self::Q4_0 => "q4_0",
            Self::Q4_1 => "q4_1",
            Self::Q8_0 => "q8_0",
            Self::F16 => "f16",
        }
    }

    /// Parses a command-line name.
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|t| t.name() == name)
    }

    fn matrix(self) -> GgmlType {
        match self {
            Self::Q4_0 => GgmlType::Q4_0,
            Self::Q4_1 => GgmlType::Q4_1,
            Self::Q8_0 => GgmlType::Q8_0,
            Self::F16 => GgmlType::F16,
        }
    }

    fn embedding(self) -> GgmlType {
        match self {
            Self::F16 => GgmlType::F16,
            _ => GgmlType::Q8_0,
        }
    }
}

/// What a synthetic model is made of.
pub struct SynthModel<'a> {
    /// Name written as `general.name` (e.g. the shape's name).
    pub name: &'a str,
    /// The shape. Its `bos`/`eos`/`pad` are replaced by the tokenizer's (`special`).
    pub config: ModelConfig,
    /// The ggml type of the matrices.
    pub weights: WeightType,
    /// Seed of the random weights (same seed, same bytes).
    pub seed: u64,
    /// The tokenizer to pad up to `config.vocab_size` (a byte-level BPE one: GGUF's
    /// `gpt2` model).
    pub tokenizer: &'a TokenizerSpec,
    /// The tokenizer's special tokens: (bos, eos, pad).
    pub special: (Option<u32>, Option<u32>, Option<u32>),
    /// Chat template written as `tokenizer.chat_template` (may be empty).
    pub chat_template: &'a str,
}

/// Why a synthetic model could not be written.
#[derive(Debug, thiserror::Error)]
pub enum SynthError {
    /// The tokenizer has more tokens than the shape's vocabulary, or is not byte-level BPE.
    #[error("tokenizer: {0}")]
    Tokenizer(String),
    /// The shape's config is not valid.
    #[error("shape: {0}")]
    Shape(#[from] glint_models::ModelError),
    /// A matrix row is not a whole number of 32-value blocks.
    #[error("tensor {0}: rows of {1} values are not whole 32-value blocks")]
    Blocks(String, u64),
    /// Writing the file failed.
    #[error("cannot write {path}: {source}")]
    Write {
        /// Output path.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
}

/// The tokens of `spec` padded to `vocab` with `[PAD<id>]` tokens of type unused.
fn padded_tokens(
    spec: &TokenizerSpec,
    vocab: usize,
) -> Result<(Vec<String>, Vec<i32>), SynthError> {
    let n = spec.tokens.len();
    if n > vocab {
        return Err(SynthError::Tokenizer(format!(
            "{n} tokens do not fit a vocabulary of {vocab}"
        )));
    }
    let mut tokens = spec.tokens.clone();
    let mut types: Vec<i32> = if spec.token_types.is_empty() {
        vec![1; n]
    } else {
        spec.token_types.iter().map(|&t| i32::from(t)).collect()
    };
    tokens.extend((n..vocab).map(|i| format!("[PAD{i}]")));
    types.resize(vocab, TOKEN_UNUSED);
    Ok((tokens, types))
}

/// Writes `m` as a GGUF file at `out` (through a temporary file renamed into place).
/// Returns the file length.
pub fn write_synth_gguf(m: &SynthModel<'_>, out: &Path) -> Result<u64, SynthError> {
    if m.tokenizer.model != TokenizerModel::ByteLevelBpe {
        return Err(SynthError::Tokenizer(
            "not a byte-level BPE tokenizer".into(),
        ));
    }
    let c = &m.config;
    let vocab = c.vocab_size as usize;
    let (tokens, types) = padded_tokens(m.tokenizer, vocab)?;
    // Qwen2's GGUF architecture carries the qkv bias (and NEOX rope); Llama the rest.
    let arch = if c.qkv_bias { "qwen2" } else { "llama" };
    let key = |k: &str| format!("{arch}.{k}");
    let description = format!(
        "synthetic model (glint-quantize synth): random weights (seed {}, std {WEIGHT_STD}, \
         {}) at the shape of {}; tokenizer: the default model's {} tokens padded with {} \
         [PAD<id>] placeholder tokens to {vocab}",
        m.seed,
        m.weights.name(),
        m.name,
        m.tokenizer.tokens.len(),
        vocab - m.tokenizer.tokens.len(),
    );
    let mut meta: Vec<(String, Meta)> = vec![
        ("general.architecture".into(), Meta::Str(arch.into())),
        (
            "general.name".into(),
            Meta::Str(format!("synthetic {}", m.name)),
        ),
        ("general.description".into(), Meta::Str(description)),
        (key("context_length"), Meta::U32(c.context_len)),
        (key("embedding_length"), Meta::U32(c.dim)),
        (key("block_count"), Meta::U32(c.n_layers)),
        (key("feed_forward_length"), Meta::U32(c.ffn_dim)),
        (key("attention.head_count"), Meta::U32(c.n_heads)),
        (key("attention.head_count_kv"), Meta::U32(c.n_kv_heads)),
        (key("attention.key_length"), Meta::U32(c.head_dim)),
        (key("attention.value_length"), Meta::U32(c.head_dim)),
        (
            key("attention.layer_norm_rms_epsilon"),
            Meta::F32(c.norm_eps),
        ),
        (key("rope.freq_base"), Meta::F32(c.rope_theta)),
        (key("rope.dimension_count"), Meta::U32(c.head_dim)),
        (key("vocab_size"), Meta::U32(c.vocab_size)),
        ("tokenizer.ggml.model".into(), Meta::Str("gpt2".into())),
        (
            "tokenizer.ggml.pre".into(),
            Meta::Str(m.tokenizer.pre.clone()),
        ),
        ("tokenizer.ggml.tokens".into(), Meta::Strs(tokens)),
        ("tokenizer.ggml.token_type".into(), Meta::I32s(types)),
        (
            "tokenizer.ggml.merges".into(),
            Meta::Strs(m.tokenizer.merges.clone()),
        ),
        (
            "tokenizer.ggml.add_bos_token".into(),
            Meta::Bool(m.tokenizer.add_bos),
        ),
    ];
    let (bos, eos, pad) = m.special;
    for (k, id) in [("bos", bos), ("eos", eos), ("padding", pad)] {
        if let Some(id) = id {
            meta.push((format!("tokenizer.ggml.{k}_token_id"), Meta::U32(id)));
        }
    }
    if !m.chat_template.is_empty() {
        meta.push((
            "tokenizer.chat_template".into(),
            Meta::Str(m.chat_template.into()),
        ));
    }

    let mut tensors: Vec<(String, Vec<u64>, GgmlType)> = Vec::new();
    if c.rope_scaling.is_some() {
        // llama.cpp reads Llama-3 scaling only as per-pair frequency divisors.
        tensors.push((
            "rope_freqs.weight".into(),
            vec![u64::from(c.head_dim / 2)],
            GgmlType::F32,
        ));
    }
    for t in LlamaTensor::all(c) {
        let shape = t.shape(c);
        let ty = match t {
            _ if shape.len() == 1 => GgmlType::F32,
            LlamaTensor::TokenEmbd | LlamaTensor::Output => m.weights.embedding(),
            _ => m.weights.matrix(),
        };
        let name = t.name();
        if ty != GgmlType::F32 && ty != GgmlType::F16 && !shape[shape.len() - 1].is_multiple_of(32)
        {
            return Err(SynthError::Blocks(name, shape[shape.len() - 1]));
        }
        tensors.push((name, shape, ty));
    }

    let werr = |source| SynthError::Write {
        path: out.to_path_buf(),
        source,
    };
    let tmp = out.with_extension(format!("tmp-{}", std::process::id()));
    let file = std::fs::File::create(&tmp).map_err(werr)?;
    let mut w = std::io::BufWriter::with_capacity(4 << 20, file);
    let len = write_gguf(&mut w, &meta, &tensors, |i, buf| {
        let (name, shape, ty) = &tensors[i];
        let mut rng = Rng::new(m.seed ^ (i as u64 + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15));
        let n: u64 = shape.iter().product();
        if name == "rope_freqs.weight" {
            let s = c.rope_scaling.expect("rope_freqs only with scaling");
            let hd = c.head_dim as f32;
            for j in 0..n {
                let f = 1.0 / c.rope_theta.powf(2.0 * j as f32 / hd);
                buf.extend_from_slice(&(f / s.scale(f)).to_le_bytes());
            }
        } else if name.ends_with("norm.weight") {
            buf.extend((0..n).flat_map(|_| 1f32.to_le_bytes()));
        } else {
            random_tensor(*ty, n, &mut rng, buf);
        }
    })
    .and_then(|len| {
        w.flush()?;
        w.get_ref().sync_all()?;
        Ok(len)
    })
    .map_err(werr)?;
    drop(w);
    std::fs::rename(&tmp, out).map_err(werr)?;
    Ok(len)
}

/// xorshift64* — fast, seedable, good enough for random weights.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Self {
        Self(seed | 1)
    }

    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// Uniform in [-1, 1).
    fn unit(&mut self) -> f32 {
        (self.next() >> 40) as f32 / (1u64 << 23) as f32 - 1.0
    }
}

/// `n` random values of type `ty` (zero mean, standard deviation [`WEIGHT_STD`]; block
/// scales vary by ±25% so that kernels cannot get away with one scale).
fn random_tensor(ty: GgmlType, n: u64, rng: &mut Rng, buf: &mut Vec<u8>) {
    // Uniform on [-a, a] has standard deviation a / sqrt(3).
    let a = WEIGHT_STD * 3f32.sqrt();
    let scale = |rng: &mut Rng, std_of_q: f32| WEIGHT_STD / std_of_q * (1.0 + 0.25 * rng.unit());
    match ty {
        GgmlType::F32 => buf.extend((0..n).flat_map(|_| (a * rng.unit()).to_le_bytes())),
        GgmlType::F16 => {
            buf.extend((0..n).flat_map(|_| f16::from_f32(a * rng.unit()).to_le_bytes()))
        }
        GgmlType::Q8_0 => {
            for _ in 0..n / 32 {
                // q uniform in -127..=127: standard deviation 73.6.
                buf.extend_from_slice(&f16::from_f32(scale(rng, 73.6)).to_le_bytes());
                for _ in 0..4 {
                    let r = rng.next();
                    buf.extend((0..8).map(|k| {
                        let b = u32::from((r >> (8 * k)) as u8);
                        (((b * 255) >> 8) as i32 - 127) as i8 as u8
                    }));
                }
            }
        }
        GgmlType::Q4_0 | GgmlType::Q4_1 => {
            for _ in 0..n / 32 {
                // Q4_0: q - 8 with q uniform in 1..=15 (zero mean, sd 4.32); Q4_1: q in
                // 0..=15 with minimum -7.5 d (sd 4.61).
                if ty == GgmlType::Q4_0 {
                    buf.extend_from_slice(&f16::from_f32(scale(rng, 4.32)).to_le_bytes());
                } else {
                    let d = scale(rng, 4.61);
                    buf.extend_from_slice(&f16::from_f32(d).to_le_bytes());
                    buf.extend_from_slice(&f16::from_f32(-7.5 * d).to_le_bytes());
                }
                for _ in 0..2 {
                    let r = rng.next();
                    buf.extend((0..8).map(|k| {
                        let b = (r >> (8 * k)) as u8;
                        let (lo, hi) = (b & 15, b >> 4);
                        if ty == GgmlType::Q4_0 {
                            // 0 -> 1 keeps it in 1..=15 (the bias that leaves is < 1/16).
                            lo.max(1) | hi.max(1) << 4
                        } else {
                            b
                        }
                    }));
                }
            }
        }
        other => unreachable!("synth writes no {other:?}"),
    }
}

/// A metadata value this writer writes.
enum Meta {
    U32(u32),
    F32(f32),
    Bool(bool),
    Str(String),
    Strs(Vec<String>),
    I32s(Vec<i32>),
}

const ALIGNMENT: u64 = 32;

fn put_str(w: &mut impl Write, s: &str) -> std::io::Result<u64> {
    w.write_all(&(s.len() as u64).to_le_bytes())?;
    w.write_all(s.as_bytes())?;
    Ok(8 + s.len() as u64)
}

/// Writes a GGUF v3 file: `meta`, then `tensors` (name, shape outermost-first, type),
/// whose bytes `data(i, buf)` appends, one tensor at a time. Returns the length.
fn write_gguf(
    w: &mut impl Write,
    meta: &[(String, Meta)],
    tensors: &[(String, Vec<u64>, GgmlType)],
    mut data: impl FnMut(usize, &mut Vec<u8>),
) -> std::io::Result<u64> {
    let mut pos = 0u64;
    let mut put = |w: &mut dyn Write, b: &[u8]| -> std::io::Result<()> {
        pos += b.len() as u64;
        w.write_all(b)
    };
    let mut head = Vec::new();
    head.extend_from_slice(b"GGUF");
    head.extend_from_slice(&3u32.to_le_bytes());
    head.extend_from_slice(&(tensors.len() as u64).to_le_bytes());
    head.extend_from_slice(&(meta.len() as u64).to_le_bytes());
    for (k, v) in meta {
        put_str(&mut head, k)?;
        let code = |t: ValueType| (t as u32).to_le_bytes();
        match v {
            Meta::U32(x) => {
                head.extend_from_slice(&code(ValueType::U32));
                head.extend_from_slice(&x.to_le_bytes());
            }
            Meta::F32(x) => {
                head.extend_from_slice(&code(ValueType::F32));
                head.extend_from_slice(&x.to_le_bytes());
            }
            Meta::Bool(x) => {
                head.extend_from_slice(&code(ValueType::Bool));
                head.push(u8::from(*x));
            }
            Meta::Str(s) => {
                head.extend_from_slice(&code(ValueType::String));
                put_str(&mut head, s)?;
            }
            Meta::Strs(v) => {
                head.extend_from_slice(&code(ValueType::Array));
                head.extend_from_slice(&code(ValueType::String));
                head.extend_from_slice(&(v.len() as u64).to_le_bytes());
                for s in v {
                    put_str(&mut head, s)?;
                }
            }
            Meta::I32s(v) => {
                head.extend_from_slice(&code(ValueType::Array));
                head.extend_from_slice(&code(ValueType::I32));
                head.extend_from_slice(&(v.len() as u64).to_le_bytes());
                for x in v {
                    head.extend_from_slice(&x.to_le_bytes());
                }
            }
        }
    }
    let size = |shape: &[u64], ty: GgmlType| {
        let n: u64 = shape.iter().product();
        ty.byte_size(n)
            .expect("whole blocks, checked by the caller")
    };
    let mut offset = 0u64;
    for (name, shape, ty) in tensors {
        put_str(&mut head, name)?;
        head.extend_from_slice(&(shape.len() as u32).to_le_bytes());
        // GGUF lists dims fastest-first.
        for d in shape.iter().rev() {
            head.extend_from_slice(&d.to_le_bytes());
        }
        head.extend_from_slice(&ty.code().to_le_bytes());
        head.extend_from_slice(&offset.to_le_bytes());
        offset += size(shape, *ty).next_multiple_of(ALIGNMENT);
    }
    head.resize((head.len() as u64).next_multiple_of(ALIGNMENT) as usize, 0);
    put(w, &head)?;
    let mut buf = Vec::new();
    for (i, (_, shape, ty)) in tensors.iter().enumerate() {
        buf.clear();
        data(i, &mut buf);
        debug_assert_eq!(buf.len() as u64, size(shape, *ty));
        buf.resize((buf.len() as u64).next_multiple_of(ALIGNMENT) as usize, 0);
        put(w, &buf)?;
    }
    Ok(pos)
}

/// Writes a synthetic model of `shape` at `out`, with the default model's tokenizer
/// (fetched into the cache if needed) padded to the shape's vocabulary. Returns the
/// file length.
pub fn write_known_shape(
    shape: &glint_models::KnownShape,
    weights: WeightType,
    seed: u64,
    out: &Path,
) -> Result<u64, crate::QuantizeError> {
    let config = shape.config().map_err(SynthError::Shape)?;
    let base = crate::import(&crate::fetch::fetch_gguf(&crate::fetch::cache_dir())?)?;
    let b = &base.config;
    let model = SynthModel {
        name: shape.name,
        config,
        weights,
        seed,
        tokenizer: &base.tokenizer,
        special: (b.bos, b.eos, b.pad),
        chat_template: &base.chat_template,
    };
    Ok(write_synth_gguf(&model, out)?)
}
