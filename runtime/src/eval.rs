//! Model evaluation: a QA set answered through the chat template ([`answer_qa`]), and
//! perplexity the way llama.cpp's `llama-perplexity` computes it, so
//! figures compare with its.

use crate::backend::{Backend, KvStore, KvType};
use crate::engine::Engine;
use crate::model::{ForwardError, Probe, Tap};
use std::ops::{ControlFlow, Range};

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
    /// The model produced a NaN or infinite logit (broken weights).
    #[error("the model produced a non-finite logit in window {0} (its weights are broken)")]
    NonFiniteLogits(usize),
    /// The compared models differ in vocabulary: their next-token distributions cannot
    /// be compared.
    #[error("the models' vocabularies differ: {reference} and {model} tokens")]
    VocabMismatch {
        /// The reference's vocabulary size.
        reference: u32,
        /// The compared model's.
        model: u32,
    },
    /// Per-layer errors were asked of models whose blocks differ in number or width (a
    /// distilled student): only the logits (PPL, KL, top1) compare.
    #[error(
        "per-layer errors need the same blocks: the reference has {reference_layers} of \
         width {reference_dim}, the model {layers} of width {dim} (measure 0 layer windows)"
    )]
    LayerMismatch {
        /// The reference's blocks.
        reference_layers: u32,
        /// The reference's width.
        reference_dim: u32,
        /// The compared model's blocks.
        layers: u32,
        /// The compared model's width.
        dim: u32,
    },
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
    let tokens = windowed_tokens(engine, text, window)?;
    let mut run = WindowRun::new(engine, window, kv)?;
    let (mut nll, mut count) = (0f64, 0usize);
    for (i, chunk) in tokens.chunks_exact(window).enumerate() {
        run.score(chunk, None, |pos, logits| {
            nll += log_sum_exp(logits) - logits[chunk[pos + 1] as usize] as f64;
            count += 1;
        })?;
        if !nll.is_finite() {
            return Err(EvalError::NonFiniteLogits(i + 1));
        }
        progress(i + 1, (nll / count as f64).exp());
    }
    Ok((nll / count as f64).exp())
}

/// `text` tokenized whole without BOS, checked to hold at least one `window` that the
/// model's context takes.
fn windowed_tokens<B: Backend>(
    engine: &Engine<B>,
    text: &str,
    window: usize,
) -> Result<Vec<u32>, EvalError> {
    let c = engine.model().config();
    if window < 4 || window > c.context_len as usize {
        return Err(EvalError::BadWindow(window));
    }
    let tokens = engine.tokenizer().encode(text, false);
    if tokens.len() < window {
        return Err(EvalError::TooShort {
            tokens: tokens.len(),
            window,
        });
    }
    Ok(tokens)
}

/// One model's cache and activations for scoring windows of one size.
struct WindowRun<'e, B: Backend> {
    model: &'e crate::model::Model<B>,
    cache: B::Cache,
    scratch: B::Scratch,
    window: usize,
}

impl<'e, B: Backend> WindowRun<'e, B> {
    fn new(engine: &'e Engine<B>, window: usize, kv: KvType) -> Result<Self, EvalError> {
        let model = engine.model();
        Ok(Self {
            model,
            cache: model.cache(window, kv)?,
            scratch: model.scratch(crate::engine::PREFILL_BATCH, window, true)?,
            window,
        })
    }

    /// Runs `chunk` (one window) from an empty cache through the one prefill loop
    /// (probed by `probe`, if any) and calls `scored(pos, logits)` for each scored
    /// position: `window/2 .. window-2`, whose logits predict `chunk[pos + 1]`.
    fn score(
        &mut self,
        chunk: &[u32],
        probe: Option<&mut dyn Probe>,
        mut scored: impl FnMut(usize, &[f32]),
    ) -> Result<(), EvalError> {
        let (first, window) = (self.window / 2, self.window);
        let vocab = self.model.config().vocab_size as usize;
        self.cache.truncate(0);
        let after = |batch: Range<usize>, logits: &[f32]| {
            for (pos, logits) in batch.zip(logits.chunks_exact(vocab)) {
                if pos >= first && pos + 1 < window {
                    scored(pos, logits);
                }
            }
            // Never breaks: every window is scored whole.
            ControlFlow::Continue(())
        };
        let _ = match probe {
            None => self
                .model
                .prefill(chunk, &mut self.cache, &mut self.scratch, after)?,
            Some(p) => {
                self.model
                    .prefill_probed(chunk, &mut self.cache, &mut self.scratch, p, after)?
            }
        };
        Ok(())
    }
}

/// How [`compare`] runs the two models.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CompareOptions {
    /// Tokens per window (llama-perplexity's `-c`).
    pub window: usize,
    /// The compared model's KV cache.
    pub kv: KvType,
    /// The reference's KV cache.
    pub reference_kv: KvType,
    /// Windows, from the first, over which the per-layer error is measured (each
    /// costs one more forward of the compared model).
    pub layer_windows: usize,
}

/// A model measured against a reference over the same text and windows.
#[derive(Clone, Debug, PartialEq)]
pub struct Comparison {
    /// The compared model's perplexity (as [`perplexity`] computes it).
    pub ppl: f64,
    /// The reference's perplexity.
    pub reference_ppl: f64,
    /// Mean KL divergence KL(reference ‖ model) of the next-token distributions over
    /// the scored positions, in nats.
    pub kl: f64,
    /// Share of scored positions where both models' most likely next token agree.
    pub top1: f64,
    /// Positions scored.
    pub scored: usize,
    /// Per block: ‖block(x) − block_ref(x)‖ / ‖block_ref(x)‖ over every position of the
    /// first [`CompareOptions::layer_windows`] windows, where `x` is the reference's
    /// input of that block (the compared block runs on the reference's input).
    pub layer_error: Vec<f64>,
}

/// Measures `model` against `reference` (the same tokenizer; for per-layer errors also
/// the same blocks and width) on `text`: both score the windows [`perplexity`] scores;
/// `progress(window, windows)` after each.
pub fn compare<R: Backend, M: Backend>(
    reference: &Engine<R>,
    model: &Engine<M>,
    text: &str,
    opts: CompareOptions,
    mut progress: impl FnMut(usize, usize),
) -> Result<Comparison, EvalError> {
    let (rc, mc) = (reference.model().config(), model.model().config());
    if rc.vocab_size != mc.vocab_size {
        return Err(EvalError::VocabMismatch {
            reference: rc.vocab_size,
            model: mc.vocab_size,
        });
    }
    if opts.layer_windows > 0 && (rc.n_layers, rc.dim) != (mc.n_layers, mc.dim) {
        return Err(EvalError::LayerMismatch {
            reference_layers: rc.n_layers,
            reference_dim: rc.dim,
            layers: mc.n_layers,
            dim: mc.dim,
        });
    }
    let window = opts.window;
    let tokens = windowed_tokens(reference, text, window)?;
    let (vocab, layers) = (rc.vocab_size as usize, rc.n_layers as usize);
    let mut ref_run = WindowRun::new(reference, window, opts.reference_kv)?;
    let mut run = WindowRun::new(model, window, opts.kv)?;
    let (mut nll, mut ref_nll, mut kl, mut agree, mut count) = (0f64, 0f64, 0f64, 0usize, 0usize);
    let mut ref_logits: Vec<f32> = Vec::new();
    // Per block: sum of squared differences and of squared reference outputs.
    let mut layer_sums = vec![(0f64, 0f64); layers];
    let n_windows = tokens.len() / window;
    for (i, chunk) in tokens.chunks_exact(window).enumerate() {
        let per_layer = i < opts.layer_windows;
        let mut residuals = Residuals::record(layers);
        ref_logits.clear();
        let probe = per_layer.then_some(&mut residuals as &mut dyn Probe);
        ref_run.score(chunk, probe, |pos, logits| {
            ref_nll += log_sum_exp(logits) - logits[chunk[pos + 1] as usize] as f64;
            ref_logits.extend_from_slice(logits);
        })?;
        let mut reference_rows = ref_logits.chunks_exact(vocab);
        run.score(chunk, None, |pos, logits| {
            let r = reference_rows
                .next()
                .expect("both score the same positions");
            nll += log_sum_exp(logits) - logits[chunk[pos + 1] as usize] as f64;
            kl += kl_divergence(r, logits);
            let top = |l: &[f32]| crate::sampler::argmax(l.iter().copied());
            agree += usize::from(top(r) == top(logits));
            count += 1;
        })?;
        if !(nll.is_finite() && ref_nll.is_finite() && kl.is_finite()) {
            return Err(EvalError::NonFiniteLogits(i + 1));
        }
        if per_layer {
            let mut replay = residuals.into_replay();
            run.score(chunk, Some(&mut replay), |_, _| {})?;
            for (sum, (d, r)) in layer_sums.iter_mut().zip(replay.errors()) {
                sum.0 += d;
                sum.1 += r;
            }
        }
        progress(i + 1, n_windows);
    }
    Ok(Comparison {
        ppl: (nll / count as f64).exp(),
        reference_ppl: (ref_nll / count as f64).exp(),
        kl: kl / count as f64,
        top1: agree as f64 / count as f64,
        scored: count,
        layer_error: match opts.layer_windows {
            0 => Vec::new(),
            _ => layer_sums
                .iter()
                .map(|(d, r)| (d / r.max(f64::MIN_POSITIVE)).sqrt())
                .collect(),
        },
    })
}

/// The reference's residual stream entering every block and leaving the last
/// ([`Tap::Residual`]), recorded over one window, then replayed into the compared model.
struct Residuals {
    /// Per [`Tap::Residual`] index, every position's row, in order.
    rows: Vec<Vec<f32>>,
    /// Replaying: rows of each index already fed in (batches come in order).
    cursor: Vec<usize>,
    /// Replaying: per block, the sums of squared differences and squared references.
    sums: Vec<(f64, f64)>,
    replaying: bool,
}

impl Residuals {
    fn record(layers: usize) -> Self {
        Self {
            rows: vec![Vec::new(); layers + 1],
            cursor: vec![0; layers + 1],
            sums: vec![(0.0, 0.0); layers],
            replaying: false,
        }
    }

    fn into_replay(self) -> Self {
        Self {
            replaying: true,
            ..self
        }
    }

    /// Per block: (Σ (out − ref)², Σ ref²).
    fn errors(&self) -> impl Iterator<Item = (f64, f64)> + '_ {
        self.sums.iter().copied()
    }
}

impl Probe for Residuals {
    fn wants(&self, tap: Tap) -> bool {
        matches!(tap, Tap::Residual(_))
    }

    fn visit(&mut self, tap: Tap, rows: &mut [f32], _width: usize) -> bool {
        let Tap::Residual(i) = tap else { return false };
        if !self.replaying {
            self.rows[i].extend_from_slice(rows);
            return false;
        }
        let at = self.cursor[i];
        self.cursor[i] += rows.len();
        let reference = &self.rows[i][at..at + rows.len()];
        if i > 0 {
            // `rows` is block i-1's output on the reference's input of block i-1.
            let sum = &mut self.sums[i - 1];
            for (&x, &r) in rows.iter().zip(reference) {
                sum.0 += ((x - r) as f64).powi(2);
                sum.1 += (r as f64).powi(2);
            }
        }
        if i < self.sums.len() {
            rows.copy_from_slice(reference);
            true
        } else {
            false
        }
    }
}

/// KL(p ‖ q) in nats of the distributions `softmax(p_logits)` and `softmax(q_logits)`.
pub fn kl_divergence(p_logits: &[f32], q_logits: &[f32]) -> f64 {
    let (lp, lq) = (log_sum_exp(p_logits), log_sum_exp(q_logits));
    p_logits
        .iter()
        .zip(q_logits)
        .map(|(&p, &q)| {
            let log_p = p as f64 - lp;
            log_p.exp() * (log_p - (q as f64 - lq))
        })
        .sum::<f64>()
        .max(0.0)
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

/// One question of a QA set with the answers that count as right.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct QaItem {
    /// The question, asked as a user turn of the chat template.
    pub question: String,
    /// Accepted answers; a reply is right when it contains one as a word.
    pub answers: Vec<String>,
}

/// Why a QA set could not be read.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum QaParseError {
    /// A line lacks the tab between question and answers, or an answer.
    #[error("line {0}: expected `question<TAB>answer|answer...`")]
    BadLine(usize),
    /// No question at all.
    #[error("no questions")]
    Empty,
}

/// Parses a QA set: one `question<TAB>answer|answer...` per line; blank lines and lines
/// starting with `#` are skipped.
pub fn parse_qa(text: &str) -> Result<Vec<QaItem>, QaParseError> {
    let mut items = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim_end_matches('\r');
        if line.trim().is_empty() || line.starts_with('#') {
            continue;
        }
        let (q, a) = line.split_once('\t').ok_or(QaParseError::BadLine(i + 1))?;
        let answers: Vec<String> = a
            .split('|')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
            .collect();
        if q.trim().is_empty() || answers.is_empty() {
            return Err(QaParseError::BadLine(i + 1));
        }
        items.push(QaItem {
            question: q.trim().to_owned(),
            answers,
        });
    }
    if items.is_empty() {
        return Err(QaParseError::Empty);
    }
    Ok(items)
}

/// Whether `reply` contains `answer` as a word (case-insensitive; the characters
/// around it are not letters or digits), so "Paris" counts in "Paris." but "4" does
/// not in "42".
pub fn contains_word(reply: &str, answer: &str) -> bool {
    let (hay, needle) = (reply.to_lowercase(), answer.to_lowercase());
    if needle.is_empty() {
        return false;
    }
    let is_word = |c: Option<char>| c.is_some_and(char::is_alphanumeric);
    hay.match_indices(&needle).any(|(at, m)| {
        !is_word(hay[..at].chars().next_back()) && !is_word(hay[at + m.len()..].chars().next())
    })
}

/// The outcome of one question.
#[derive(Clone, Debug, PartialEq)]
pub struct QaOutcome {
    /// The reply.
    pub reply: String,
    /// Whether it contains an accepted answer.
    pub correct: bool,
    /// Decode speed of the reply (tokens/s after the first).
    pub decode_tok_s: f64,
}

/// Asks every question of `items` in a fresh chat session of `session` options with
/// `params` (generation stops at `params.max_tokens`), and says which replies are right.
pub fn answer_qa<B: Backend>(
    engine: &Engine<B>,
    items: &[QaItem],
    session: crate::engine::SessionOptions,
    params: &crate::engine::GenerateParams,
) -> Result<Vec<QaOutcome>, QaError> {
    let mut s = engine.session(session)?;
    items
        .iter()
        .map(|item| {
            s.reset();
            let (reply, stats) = s.chat(&item.question, params, |_| ControlFlow::Continue(()))?;
            let correct = item.answers.iter().any(|a| contains_word(&reply, a));
            Ok(QaOutcome {
                reply,
                correct,
                decode_tok_s: stats.decode_tok_s,
            })
        })
        .collect()
}

/// Why a QA run failed.
#[derive(Debug, thiserror::Error)]
pub enum QaError {
    /// The session could not be made.
    #[error(transparent)]
    Session(#[from] crate::engine::SessionError),
    /// A question could not be asked.
    #[error(transparent)]
    Generate(#[from] crate::engine::GenerateError),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kl_of_identical_distributions_is_zero() {
        let p = [1.5f32, -2.0, 0.25, 3.0];
        assert_eq!(kl_divergence(&p, &p), 0.0);
        // A shift of every logit is the same distribution.
        let shifted = p.map(|x| x + 7.0);
        assert!(kl_divergence(&p, &shifted) < 1e-12);
        // KL([0.5, 0.5] ‖ [0.8, 0.2]) = 0.5 ln(0.5/0.8) + 0.5 ln(0.5/0.2).
        let q = [0.8f32.ln(), 0.2f32.ln()];
        let expected = 0.5 * (0.5f64 / 0.8).ln() + 0.5 * (0.5f64 / 0.2).ln();
        assert!((kl_divergence(&[0.0, 0.0], &q) - expected).abs() < 1e-6);
    }

    #[test]
    fn answers_count_as_whole_words_only() {
        assert!(contains_word("The capital of France is Paris.", "paris"));
        assert!(contains_word("2 + 2 = 4", "4"));
        assert!(!contains_word("42", "4"));
        assert!(!contains_word("Parisian", "Paris"));
        assert!(contains_word(
            "It is carbon dioxide (CO2).",
            "carbon dioxide"
        ));
        assert!(contains_word("Ça fait 4.", "4"));
        assert!(!contains_word("anything", ""));
    }

    #[test]
    fn qa_sets_parse_and_bad_lines_are_located() {
        let items = parse_qa("# comment\n\nWhat is 2 + 2?\t4|four\r\n").unwrap();
        assert_eq!(items.len(), 1);
        assert_eq!(items[0].answers, ["4", "four"]);
        assert_eq!(parse_qa("q\na\tb"), Err(QaParseError::BadLine(1)));
        assert_eq!(parse_qa("q\t | "), Err(QaParseError::BadLine(1)));
        assert_eq!(parse_qa("# only\n"), Err(QaParseError::Empty));
    }
}
