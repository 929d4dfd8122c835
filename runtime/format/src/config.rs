//! The model config section (docs/FORMAT.md, "Config").

use crate::FormatError;
use crate::bytes::Reader;
#[cfg(feature = "std")]
use no_std_compat::vec::Vec;

/// Bytes of the config section in format 1.0, the least a reader accepts. Later minor
/// versions append fields; readers ignore bytes past the ones they know.
pub const CONFIG_LEN: usize = 96;

/// Bytes of the config section written by format 1.1: 1.0's, then the sampling defaults
/// (`present`, temperature, top-k, top-p, min-p, repeat penalty: 6 words).
pub const CONFIG_LEN_1_1: usize = CONFIG_LEN + 24;

/// The sampling settings a model's authors recommend (HF `generation_config.json`, GGUF
/// `general.sampling.*`, or Glint's table of known models): the defaults a runtime
/// offers when the user gives none.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SamplingDefaults {
    /// Temperature (0: greedy).
    pub temperature: f32,
    /// Top-k (0: off).
    pub top_k: u32,
    /// Top-p (1: off).
    pub top_p: f32,
    /// Min-p (0: off).
    pub min_p: f32,
    /// Repetition penalty (1: off).
    pub repeat_penalty: f32,
}

impl SamplingDefaults {
    /// Whether every value is finite and in its range.
    pub fn is_valid(&self) -> bool {
        let unit = |x: f32| (0.0..=1.0).contains(&x);
        self.temperature.is_finite()
            && (0.0..=100.0).contains(&self.temperature)
            && unit(self.top_p)
            && self.top_p > 0.0
            && unit(self.min_p)
            && self.repeat_penalty.is_finite()
            && self.repeat_penalty > 0.0
            && self.repeat_penalty <= 100.0
    }
}

/// Upper bounds that reject absurd headers before anything is sized from them.
pub mod limits {
    /// Largest model width, FFN width or head dim accepted.
    pub const MAX_DIM: u32 = 1 << 16;
    /// Most layers accepted.
    pub const MAX_LAYERS: u32 = 1024;
    /// Most attention heads accepted.
    pub const MAX_HEADS: u32 = 1024;
    /// Largest vocabulary accepted.
    pub const MAX_VOCAB: u32 = 1 << 22;
    /// Longest context accepted.
    pub const MAX_CONTEXT: u32 = 1 << 22;
}

/// Model architecture.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Arch {
    /// Llama family: Llama 2/3.x, SmolLM2, MobileLLM, TinyLlama, Qwen2 (qkv bias).
    Llama = 1,
}

/// How rotary embeddings pair the dimensions of a head.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RopeStyle {
    /// Adjacent pairs `(2i, 2i+1)` (ggml "normal"; GGUF llama weights).
    Interleaved = 0,
    /// Halves `(i, i + head_dim/2)` (ggml "neox"; HF checkpoints, Qwen2).
    Neox = 1,
}

/// Llama-3-style frequency-dependent rope scaling.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RopeScaling {
    /// Overall factor.
    pub factor: f32,
    /// Wavelengths longer than `original_context / low_freq_factor` are scaled fully.
    pub low_freq_factor: f32,
    /// Wavelengths shorter than `original_context / high_freq_factor` are not scaled.
    pub high_freq_factor: f32,
    /// Context length of pre-training.
    pub original_context: u32,
}

impl RopeScaling {
    /// The scaled RoPE inverse frequency of the unscaled one `inv_freq` (Llama 3.1's
    /// rule): long wavelengths are slowed by `factor`, short ones kept, and the band
    /// between interpolated smoothly. GGUF files store `inv_freq / scale(inv_freq)` per
    /// pair of dimensions as `rope_freqs.weight`.
    pub fn scale(&self, inv_freq: f32) -> f32 {
        let f = inv_freq;
        let wavelen = 2.0 * core::f32::consts::PI / f;
        let old = self.original_context as f32;
        let (low, high) = (old / self.low_freq_factor, old / self.high_freq_factor);
        if wavelen < high {
            f
        } else if wavelen > low {
            f / self.factor
        } else {
            let smooth = (old / wavelen - self.low_freq_factor)
                / (self.high_freq_factor - self.low_freq_factor);
            (1.0 - smooth) * f / self.factor + smooth * f
        }
    }
}

/// Hyper-parameters of the model.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ModelConfig {
    /// Architecture.
    pub arch: Arch,
    /// Model width.
    pub dim: u32,
    /// Transformer blocks.
    pub n_layers: u32,
    /// Query heads.
    pub n_heads: u32,
    /// Key/value heads (grouped-query attention); divides `n_heads`.
    pub n_kv_heads: u32,
    /// Width of one head.
    pub head_dim: u32,
    /// Hidden width of the MLP.
    pub ffn_dim: u32,
    /// Rows of the embedding and output head.
    pub vocab_size: u32,
    /// Longest context the model was trained for.
    pub context_len: u32,
    /// RoPE base frequency.
    pub rope_theta: f32,
    /// RMSNorm epsilon.
    pub norm_eps: f32,
    /// RoPE pairing.
    pub rope_style: RopeStyle,
    /// Llama-3 rope scaling, if any.
    pub rope_scaling: Option<RopeScaling>,
    /// The output head reuses the token embedding.
    pub tied_embeddings: bool,
    /// Q, K and V projections carry a bias (Qwen2).
    pub qkv_bias: bool,
    /// Beginning-of-sequence token.
    pub bos: Option<u32>,
    /// End-of-sequence token.
    pub eos: Option<u32>,
    /// Padding token.
    pub pad: Option<u32>,
    /// End-of-turn token for chat (e.g. `<|im_end|>`, `<|eot_id|>`).
    pub eot: Option<u32>,
    /// Recommended sampling (format 1.1; `None` in 1.0 files and when unknown).
    pub sampling: Option<SamplingDefaults>,
}

const FLAG_TIED: u32 = 1;
const FLAG_QKV_BIAS: u32 = 2;

fn token(v: i32, vocab: u32, what: &'static str) -> Result<Option<u32>, FormatError> {
    match v {
        -1 => Ok(None),
        v if v >= 0 && (v as u32) < vocab => Ok(Some(v as u32)),
        _ => Err(FormatError::BadConfig(what)),
    }
}

#[cfg(feature = "std")]
fn opt_token(t: Option<u32>) -> i32 {
    t.map_or(-1, |t| t as i32)
}

impl ModelConfig {
    pub(crate) fn read(section: &[u8]) -> Result<Self, FormatError> {
        if section.len() < CONFIG_LEN {
            return Err(FormatError::SectionOverrun("config"));
        }
        let mut r = Reader::new(section, "config");
        let arch = match r.u32()? {
            1 => Arch::Llama,
            _ => return Err(FormatError::BadConfig("unknown architecture")),
        };
        let (dim, n_layers, n_heads, n_kv_heads) = (r.u32()?, r.u32()?, r.u32()?, r.u32()?);
        let (head_dim, ffn_dim, vocab_size, context_len) = (r.u32()?, r.u32()?, r.u32()?, r.u32()?);
        let (rope_theta, norm_eps) = (r.f32()?, r.f32()?);
        let rope_style = match r.u32()? {
            0 => RopeStyle::Interleaved,
            1 => RopeStyle::Neox,
            _ => return Err(FormatError::BadConfig("unknown rope style")),
        };
        let scaling_kind = r.u32()?;
        let scaling = RopeScaling {
            factor: r.f32()?,
            low_freq_factor: r.f32()?,
            high_freq_factor: r.f32()?,
            original_context: r.u32()?,
        };
        let rope_scaling = match scaling_kind {
            0 => None,
            1 => Some(scaling),
            _ => return Err(FormatError::BadConfig("unknown rope scaling")),
        };
        let flags = r.u32()?;
        if flags & !(FLAG_TIED | FLAG_QKV_BIAS) != 0 {
            return Err(FormatError::BadConfig("unknown config flags"));
        }
        let (bos, eos, pad, eot) = (r.i32()?, r.i32()?, r.i32()?, r.i32()?);
        let c = Self {
            arch,
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
            rope_style,
            rope_scaling,
            tied_embeddings: flags & FLAG_TIED != 0,
            qkv_bias: flags & FLAG_QKV_BIAS != 0,
            bos: token(bos, vocab_size, "bos token out of vocabulary")?,
            eos: token(eos, vocab_size, "eos token out of vocabulary")?,
            pad: token(pad, vocab_size, "pad token out of vocabulary")?,
            eot: token(eot, vocab_size, "eot token out of vocabulary")?,
            sampling: None,
        };
        let c = Self {
            sampling: Self::read_sampling(section)?,
            ..c
        };
        c.validate()?;
        Ok(c)
    }

    /// The sampling defaults of a 1.1 config section, if it has them.
    fn read_sampling(section: &[u8]) -> Result<Option<SamplingDefaults>, FormatError> {
        let Some(words) = section.get(CONFIG_LEN..CONFIG_LEN_1_1) else {
            return Ok(None);
        };
        let mut r = Reader::new(words, "config");
        let present = r.u32()?;
        let d = SamplingDefaults {
            temperature: r.f32()?,
            top_k: r.u32()?,
            top_p: r.f32()?,
            min_p: r.f32()?,
            repeat_penalty: r.f32()?,
        };
        match present {
            0 => Ok(None),
            1 => Ok(Some(d)),
            _ => Err(FormatError::BadConfig("unknown sampling flag")),
        }
    }

    /// Checks every value is in range and consistent, so later arithmetic cannot overflow.
    pub fn validate(&self) -> Result<(), FormatError> {
        use limits::*;
        let in_range = |v: u32, max: u32| v > 0 && v <= max;
        let checks: [(bool, &'static str); 12] = [
            (in_range(self.dim, MAX_DIM), "dim out of range"),
            (
                in_range(self.n_layers, MAX_LAYERS),
                "layer count out of range",
            ),
            (in_range(self.n_heads, MAX_HEADS), "head count out of range"),
            (
                in_range(self.n_kv_heads, self.n_heads),
                "kv head count out of range",
            ),
            (
                self.n_heads.is_multiple_of(self.n_kv_heads.max(1)),
                "heads not a multiple of kv heads",
            ),
            (
                in_range(self.head_dim, MAX_DIM) && self.head_dim.is_multiple_of(2),
                "head dim out of range or odd",
            ),
            (
                self.n_heads as u64 * self.head_dim as u64 <= MAX_DIM as u64,
                "heads x head dim too large",
            ),
            (in_range(self.ffn_dim, MAX_DIM), "ffn dim out of range"),
            (
                in_range(self.vocab_size, MAX_VOCAB),
                "vocab size out of range",
            ),
            (
                in_range(self.context_len, MAX_CONTEXT),
                "context length out of range",
            ),
            (
                self.rope_theta.is_finite() && self.rope_theta > 0.0,
                "rope theta not positive",
            ),
            (
                self.norm_eps.is_finite() && self.norm_eps > 0.0,
                "norm eps not positive",
            ),
        ];
        if let Some((_, why)) = checks.iter().find(|(ok, _)| !ok) {
            return Err(FormatError::BadConfig(why));
        }
        if let Some(s) = self.rope_scaling {
            let pos = |x: f32| x.is_finite() && x > 0.0;
            if !(pos(s.factor) && pos(s.low_freq_factor) && pos(s.high_freq_factor))
                || s.high_freq_factor <= s.low_freq_factor
                || s.original_context == 0
            {
                return Err(FormatError::BadConfig("bad rope scaling"));
            }
        }
        if self.sampling.is_some_and(|d| !d.is_valid()) {
            return Err(FormatError::BadConfig("sampling defaults out of range"));
        }
        Ok(())
    }

    #[cfg(feature = "std")]
    pub(crate) fn write(&self, out: &mut Vec<u8>) {
        let s = self.rope_scaling.unwrap_or(RopeScaling {
            factor: 0.0,
            low_freq_factor: 0.0,
            high_freq_factor: 0.0,
            original_context: 0,
        });
        let flags = if self.tied_embeddings { FLAG_TIED } else { 0 }
            | if self.qkv_bias { FLAG_QKV_BIAS } else { 0 };
        let d = self.sampling.unwrap_or(SamplingDefaults {
            temperature: 0.0,
            top_k: 0,
            top_p: 0.0,
            min_p: 0.0,
            repeat_penalty: 0.0,
        });
        let words: [u32; 30] = [
            self.arch as u32,
            self.dim,
            self.n_layers,
            self.n_heads,
            self.n_kv_heads,
            self.head_dim,
            self.ffn_dim,
            self.vocab_size,
            self.context_len,
            self.rope_theta.to_bits(),
            self.norm_eps.to_bits(),
            self.rope_style as u32,
            self.rope_scaling.is_some() as u32,
            s.factor.to_bits(),
            s.low_freq_factor.to_bits(),
            s.high_freq_factor.to_bits(),
            s.original_context,
            flags,
            opt_token(self.bos) as u32,
            opt_token(self.eos) as u32,
            opt_token(self.pad) as u32,
            opt_token(self.eot) as u32,
            0,
            0,
            self.sampling.is_some() as u32,
            d.temperature.to_bits(),
            d.top_k,
            d.top_p.to_bits(),
            d.min_p.to_bits(),
            d.repeat_penalty.to_bits(),
        ];
        words
            .iter()
            .for_each(|w| out.extend_from_slice(&w.to_le_bytes()));
    }
}
