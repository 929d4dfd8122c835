//! Model evaluation: perplexity the way llama.cpp's `llama-perplexity` computes it, so
//! figures compare with its.

use crate::backend::{Backend, KvStore, KvType};
use crate::engine::Engine;
use crate::model::ForwardError;
use std::ops::ControlFlow;

/// Why perplexity could not be computed.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum EvalError {
    /// The text is shorter than one window.
    #[error("the text has {tokens} tokens, fewer than one window of {window}")]
    TooShort {
        /// Tokens in the text.
        tokens: usize,
        /// Window size.
        window: usize,
    },
    /// The window is larger than the model's context or too small to score.
    #[error("window of {0} tokens is not between 4 and the model's context")]
    BadWindow(usize),
    /// The backend could not allocate the cache or activations.
    #[error(transparent)]
    Backend(#[from] crate::backend::BackendError),
    /// The model refused a batch.
    #[error(transparent)]
    Forward(#[from] ForwardError),
}

/// Perplexity of `text`: tokenized whole without BOS, split into `floor(n / window)`
/// non-overlapping windows, each run from an empty cache; the second half of each window
/// is scored (positions `window/2 .. window-2` predicting the next token).
/// `progress(chunk, running_ppl)` is called after each window. The KV cache holds `kv`
/// elements.
pub fn perplexity<B: Backend>(
    engine: &Engine<B>,
    text: &str,
    window: usize,
    kv: KvType,
    mut progress: impl FnMut(usize, f64),
) -> Result<f64, EvalError> {
    let model = engine.model();
    let c = model.config();
    if window < 4 || window > c.context_len as usize {
        return Err(EvalError::BadWindow(window));
    }
    let tokens = engine.tokenizer().encode(text, false);
    let n_chunks = tokens.len() / window;
    if n_chunks == 0 {
        return Err(EvalError::TooShort {
            tokens: tokens.len(),
            window,
        });
    }
    let vocab = c.vocab_size as usize;
    let mut cache = model.cache(window, kv)?;
    let mut scratch = model.scratch(crate::engine::PREFILL_BATCH, window, true)?;
    let (mut nll, mut count) = (0f64, 0usize);
    let first = window / 2;
    for (i, chunk) in tokens.chunks_exact(window).enumerate() {
        cache.truncate(0);
        // Never breaks: every window is scored whole.
        let _ = model.prefill(chunk, &mut cache, &mut scratch, |batch, logits| {
            for (pos, logits) in batch.zip(logits.chunks_exact(vocab)) {
                if pos >= first && pos + 1 < window {
                    nll += log_sum_exp(logits) - logits[chunk[pos + 1] as usize] as f64;
                    count += 1;
                }
            }
            ControlFlow::Continue(())
        })?;
        progress(i + 1, (nll / count as f64).exp());
    }
    Ok((nll / count as f64).exp())
}

/// `ln(sum(exp(l)))`, computed stably in f64.
pub fn log_sum_exp(logits: &[f32]) -> f64 {
    let max = logits.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b)) as f64;
    logits
        .iter()
        .map(|&l| (l as f64 - max).exp())
        .sum::<f64>()
        .ln()
        + max
}
