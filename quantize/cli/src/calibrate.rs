//! Calibration: the Hessian `XᵀX` of every matrix's inputs over a text, collected from
//! the runtime's one forward pass ([`glint_runtime::model::Model::prefill_probed`]) of
//! the float reference, for [`glint_pack::gptq`].

use glint_format::{BlockTensor, LlamaTensor};
use glint_pack::Hessians;
use glint_runtime::Engine;
use glint_runtime::backend::{Backend, KvType};
use glint_runtime::engine::{
    GenerateError, GenerateParams, PREFILL_BATCH, SessionError, SessionOptions,
};
use glint_runtime::model::{ForwardError, Probe, Tap};
use glint_runtime::sampler::SamplerConfig;
use std::collections::HashMap;
use std::ops::ControlFlow;
use std::sync::Arc;

/// How much text calibration reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CalibrationOptions {
    /// Tokens per window, each run from an empty cache.
    pub window: usize,
    /// At most this many tokens (whole windows) of the text.
    pub max_tokens: usize,
}

impl Default for CalibrationOptions {
    fn default() -> Self {
        Self {
            window: 512,
            max_tokens: 8192,
        }
    }
}

/// Why calibration failed.
#[derive(Debug, thiserror::Error)]
pub enum CalibrationError {
    /// The text is shorter than one window.
    #[error("the calibration text has {tokens} tokens, fewer than one window of {window}")]
    TooShort {
        /// Tokens in the text.
        tokens: usize,
        /// Window size.
        window: usize,
    },
    /// The model could not allocate its cache or activations.
    #[error(transparent)]
    Backend(#[from] glint_runtime::backend::BackendError),
    /// A forward pass failed.
    #[error(transparent)]
    Forward(#[from] ForwardError),
    /// The session that writes the self-generated text could not be made.
    #[error(transparent)]
    Session(#[from] SessionError),
    /// Writing the self-generated text failed.
    #[error(transparent)]
    Generate(#[from] GenerateError),
}

/// The tensors that read the input seen at `tap` (they share its Hessian).
fn readers(tap: Tap, tied: bool) -> Vec<String> {
    use BlockTensor::*;
    let block = |i, ts: &[BlockTensor]| {
        ts.iter()
            .map(|&t| LlamaTensor::Block(i, t).name())
            .collect()
    };
    match tap {
        Tap::AttnInput(i) => block(i as u32, &[AttnQ, AttnK, AttnV]),
        Tap::AttnOutput(i) => block(i as u32, &[AttnOutput]),
        Tap::FfnInput(i) => block(i as u32, &[FfnGate, FfnUp]),
        Tap::DownInput(i) => block(i as u32, &[FfnDown]),
        Tap::HeadInput if tied => vec![LlamaTensor::TokenEmbd.name()],
        Tap::HeadInput => vec![LlamaTensor::Output.name()],
        Tap::Residual(_) => Vec::new(),
    }
}

/// Sums `XᵀX` (upper triangle) of the rows seen at every matrix input.
struct HessianProbe {
    sums: HashMap<Tap, (usize, Vec<f32>)>,
}

impl Probe for HessianProbe {
    fn wants(&self, tap: Tap) -> bool {
        !matches!(tap, Tap::Residual(_))
    }

    fn visit(&mut self, tap: Tap, rows: &mut [f32], width: usize) -> bool {
        let (_, h) = self
            .sums
            .entry(tap)
            .or_insert_with(|| (width, vec![0f32; width * width]));
        add_gram(h, rows, width);
        false
    }
}

/// `h += XᵀX` on and above the diagonal, `X` = `x`'s rows of `d`; rows of `h` split
/// among the available cores, in blocks of 16 that stay in cache while every row of
/// `X` passes.
fn add_gram(h: &mut [f32], x: &[f32], d: usize) {
    const ROWS: usize = 16;
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let mut blocks: Vec<(usize, &mut [f32])> = h.chunks_mut(ROWS * d).enumerate().collect();
    let per = blocks.len().div_ceil(threads);
    std::thread::scope(|s| {
        // Interleaved, so each thread gets long and short (triangular) rows alike.
        let mut shares: Vec<Vec<(usize, &mut [f32])>> =
            (0..threads).map(|_| Vec::with_capacity(per)).collect();
        for (k, b) in blocks.drain(..).enumerate() {
            shares[k % threads].push(b);
        }
        for share in shares {
            s.spawn(move || {
                for (b, block) in share {
                    for row in x.chunks_exact(d) {
                        for (k, hrow) in block.chunks_exact_mut(d).enumerate() {
                            let i = b * ROWS + k;
                            let xi = row[i];
                            if xi != 0.0 {
                                for (hv, &xv) in hrow[i..].iter_mut().zip(&row[i..]) {
                                    *hv += xi * xv;
                                }
                            }
                        }
                    }
                }
            });
        }
    });
}

/// Calibration text the model writes itself, for when no text is given (data-free
/// calibration, as LLM-QAT's): sequences of at most one window, each started from the
/// beginning-of-text token and sampled with llama.cpp's default settings
/// ([`SamplerConfig::default`]: temperature 0.8, top-k 40, top-p 0.95, min-p 0.05, not
/// the model's recommended ones, which may be near-greedy, as SmolLM2's temperature 0.2:
/// calibration wants the spread of the model's distribution, not its likeliest path) under seed `seed + i`, run together until `opts.max_tokens` tokens are written (the
/// sequences that end early are followed by the next, as documents in a text are).
/// `progress(tokens, max_tokens)` after each sequence.
pub fn self_generated<B: Backend>(
    engine: &Engine<B>,
    opts: CalibrationOptions,
    seed: u64,
    mut progress: impl FnMut(usize, usize),
) -> Result<Vec<u32>, CalibrationError> {
    let tok = engine.tokenizer();
    let start = tok.bos().or(tok.eos()).unwrap_or(0);
    let window = opts
        .window
        .min(engine.model().config().context_len as usize);
    let mut session = engine.session(SessionOptions {
        context: window.max(2),
        kv: KvType::F32,
        mem_budget: None,
    })?;
    let mut tokens = Vec::with_capacity(opts.max_tokens);
    for i in 0u64.. {
        if tokens.len() >= opts.max_tokens {
            break;
        }
        session.reset();
        let params = GenerateParams {
            max_tokens: window.max(2) - 1,
            sampler: SamplerConfig {
                seed: seed.wrapping_add(i),
                ..SamplerConfig::default()
            },
            ..GenerateParams::default()
        };
        tokens.push(start);
        session.generate_tokens(&[start], &params, |ev| {
            tokens.extend(ev.id);
            ControlFlow::Continue(())
        })?;
        progress(tokens.len().min(opts.max_tokens), opts.max_tokens);
    }
    tokens.truncate(opts.max_tokens);
    Ok(tokens)
}

/// The Hessians of every matrix of `engine`'s model (meant to be the float reference)
/// over the first whole windows of `tokens`, at most `opts.max_tokens` tokens;
/// `progress(window, windows)` after each. Returns them with the tokens read.
pub fn collect_hessians<B: Backend>(
    engine: &Engine<B>,
    tokens: &[u32],
    opts: CalibrationOptions,
    mut progress: impl FnMut(usize, usize),
) -> Result<(Hessians, usize), CalibrationError> {
    let model = engine.model();
    let window = opts.window.min(model.config().context_len as usize).max(1);
    let windows = (tokens.len() / window).min(opts.max_tokens / window);
    if windows == 0 {
        return Err(CalibrationError::TooShort {
            tokens: tokens.len(),
            window,
        });
    }
    let mut cache = model.cache(window, KvType::F32)?;
    // Every token's head input is seen: all logits kept.
    let mut scratch = model.scratch(PREFILL_BATCH, window, true)?;
    let mut probe = HessianProbe {
        sums: HashMap::new(),
    };
    for (i, chunk) in tokens.chunks_exact(window).take(windows).enumerate() {
        glint_runtime::backend::KvStore::truncate(&mut cache, 0);
        let _ = model.prefill_probed(chunk, &mut cache, &mut scratch, &mut probe, |_, _| {
            ControlFlow::Continue(())
        })?;
        progress(i + 1, windows);
    }
    let tied = model.config().tied_embeddings;
    let mut out = Hessians::default();
    for (tap, (d, mut h)) in probe.sums {
        // Mirror the upper triangle.
        for i in 0..d {
            for j in 0..i {
                h[i * d + j] = h[j * d + i];
            }
        }
        out.insert(&readers(tap, tied), Arc::new(h));
    }
    Ok((out, windows * window))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_gram_sum_is_xt_x() {
        let (n, d) = (5, 37);
        let x = glint_format::quant::test_values(n * d, 9);
        let mut h = vec![0f32; d * d];
        add_gram(&mut h, &x, d);
        for i in 0..d {
            for j in i..d {
                let want: f32 = (0..n).map(|t| x[t * d + i] * x[t * d + j]).sum();
                assert!((h[i * d + j] - want).abs() < 1e-5, "({i},{j})");
            }
        }
    }
}
