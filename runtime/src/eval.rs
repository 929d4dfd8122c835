//! Model evaluation: a QA set answered through the chat template ([`answer_qa`]), and
//! perplexity the way llama.cpp's `llama-perplexity` computes it, so
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
    /// The model produced a NaN or infinite logit (broken weights).
    #[error("the model produced a non-finite logit in window {0} (its weights are broken)")]
    NonFiniteLogits(usize),
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
        if !nll.is_finite() {
            return Err(EvalError::NonFiniteLogits(i + 1));
        }
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
