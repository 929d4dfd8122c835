//! SentencePiece BPE (Llama 2, TinyLlama: GGUF `tokenizer.ggml.model =
//! "llama"`), as llama.cpp's `llm_tokenizer_spm` does it.
//!
//! Each text fragment (what is left between special tokens) has its spaces
//! escaped as `▁` (U+2581), gets a leading `▁` when the vocabulary asks for a
//! space prefix and the fragment starts the text or follows a special token,
//! and is split into characters. The adjacent pair whose concatenation is a
//! token with the highest score is merged (leftmost among equal scores) until
//! no pair forms a token. Each final symbol is its token; a symbol that is
//! not a token (a character outside the vocabulary) becomes one `<0xXX>` byte
//! token per UTF-8 byte.
//!
//! Known differences from the `sentencepiece` library itself (llama.cpp has
//! the same ones): no normalization is applied (sentencepiece applies its
//! model's normalizer, e.g. NFKC and whitespace collapsing; Llama 2's model
//! uses `identity` without `remove_extra_whitespaces`, so it agrees), and
//! pairs may merge into any token whose text matches, where sentencepiece only
//! merges into normal, user-defined and unused pieces (a control or byte token
//! such as `<0x41>` could only be reached through merges of pieces like `<0x4`
//! that real vocabularies lack).

use std::cmp::Ordering;
use std::collections::BinaryHeap;

use super::{
    EncodeScratch, FxMap, Segmenter, TokenType, TokenizerError, TokenizerModel, Vocabulary,
    split_merge,
};

/// The escaped space, `▁`.
const SPACE: char = '\u{2581}';

/// SentencePiece state of a [`super::Tokenizer`].
pub(super) struct Spm {
    /// Priority of forming each token by a merge; NaN: never formed.
    merge_score: Vec<f32>,
    /// Token of each byte for the byte fallback.
    byte_token: [Option<u32>; 256],
    /// Token for a byte without one (llama.cpp aborts there instead).
    unk: Option<u32>,
    /// Prefix each fragment after a special token (or at the start) with `▁`.
    add_space_prefix: bool,
}

impl Spm {
    /// Builds the merge priorities and the byte-fallback table.
    ///
    /// With `scores`, a token's score is its priority (llama.cpp). Without,
    /// as in a Hugging Face `tokenizer.json` import, the priority of a token
    /// is minus the rank of the first merge that forms it, and tokens no
    /// merge forms are never merged into: the merges of a converted
    /// SentencePiece model are ordered by the score of what they form, so
    /// this reproduces the original order. Without scores or merges every
    /// token scores 0 (llama.cpp's default): leftmost pairs merge first.
    ///
    /// `types` are the token types after llama.cpp's corrections (the
    /// unknown token is the first of type [`TokenType::Unknown`]).
    pub(super) fn new(
        spec: &Vocabulary<'_>,
        token_to_id: &FxMap<Box<str>, u32>,
        types: &[TokenType],
    ) -> Result<Self, TokenizerError> {
        let n_tokens = types.len();
        let merge_score = match &spec.scores {
            Some(scores) if scores.len() != n_tokens => {
                return Err(TokenizerError::ScoreCount {
                    tokens: n_tokens,
                    scores: scores.len(),
                });
            }
            Some(scores) => scores.clone(),
            None if spec.merges.is_empty() => vec![0.0; n_tokens],
            None => {
                let mut derived = vec![f32::NAN; n_tokens];
                let mut joined = String::new();
                for (rank, &merge) in spec.merges.iter().enumerate() {
                    let (left, right) = split_merge(rank, merge)?;
                    joined.clear();
                    joined.push_str(left);
                    joined.push_str(right);
                    if let Some(&id) = token_to_id.get(joined.as_str()) {
                        let slot = &mut derived[id as usize];
                        if slot.is_nan() {
                            *slot = -(rank as f32);
                        }
                    }
                }
                derived
            }
        };

        let mut byte_token = [None; 256];
        for (b, slot) in byte_token.iter_mut().enumerate() {
            // llama.cpp's `byte_to_token`: `<0xXX>` (upper-case hex), else
            // the one-byte string itself.
            *slot = token_to_id
                .get(format!("<0x{b:02X}>").as_str())
                .or_else(|| {
                    let one = [b as u8];
                    std::str::from_utf8(&one)
                        .ok()
                        .and_then(|s| token_to_id.get(s))
                })
                .copied();
        }
        let unk = types
            .iter()
            .position(|&t| t == TokenType::Unknown)
            .map(|id| id as u32);
        Ok(Self {
            merge_score,
            byte_token,
            unk,
            add_space_prefix: spec.add_space_prefix,
        })
    }

    /// Queues the adjacent symbols `left`, `right` if together they are a
    /// token that merges can form (llama.cpp's `try_add_bigram`).
    fn push_bigram(
        &self,
        token_to_id: &FxMap<Box<str>, u32>,
        escaped: &str,
        symbols: &[Symbol],
        queue: &mut BinaryHeap<Bigram>,
        left: usize,
        right: usize,
    ) {
        let start = symbols[left].start;
        let len = symbols[left].len + symbols[right].len;
        let Some(&id) = token_to_id.get(&escaped[start..start + len]) else {
            return;
        };
        let score = self.merge_score[id as usize];
        if score.is_nan() {
            return;
        }
        queue.push(Bigram {
            score,
            left,
            right,
            len,
        });
    }
}

impl Segmenter for Spm {
    fn model(&self) -> TokenizerModel {
        TokenizerModel::SentencePiece
    }

    fn add_space_prefix(&self) -> bool {
        self.add_space_prefix
    }

    /// Escapes the fragment's spaces, prefixes `▁` when the vocabulary asks
    /// for it and the fragment starts the text or follows a special token,
    /// and merges by score.
    fn encode_fragment(
        &self,
        token_to_id: &FxMap<Box<str>, u32>,
        fragment: &str,
        after_special: bool,
        scratch: &mut EncodeScratch,
        out: &mut Vec<u32>,
    ) {
        let Scratch {
            escaped,
            symbols,
            queue,
        } = &mut scratch.spm;
        escaped.clear();
        if self.add_space_prefix && after_special {
            escaped.push(SPACE);
        }
        for (i, part) in fragment.split(' ').enumerate() {
            if i > 0 {
                escaped.push(SPACE);
            }
            escaped.push_str(part);
        }
        let escaped = escaped.as_str();

        symbols.clear();
        queue.clear();
        for (start, c) in escaped.char_indices() {
            let i = symbols.len();
            symbols.push(Symbol {
                start,
                len: c.len_utf8(),
                prev: i.checked_sub(1),
                next: None,
            });
            if let Some(prev) = i.checked_sub(1) {
                symbols[prev].next = Some(i);
            }
        }
        for right in 1..symbols.len() {
            self.push_bigram(token_to_id, escaped, symbols, queue, right - 1, right);
        }
        while let Some(bigram) = queue.pop() {
            let (l, r) = (bigram.left, bigram.right);
            // Stale once either side changed: symbols only grow or empty.
            let (ll, rl) = (symbols[l].len, symbols[r].len);
            if ll == 0 || rl == 0 || ll + rl != bigram.len {
                continue;
            }
            symbols[l].len += rl;
            symbols[r].len = 0;
            let after = symbols[r].next;
            symbols[l].next = after;
            if let Some(after) = after {
                symbols[after].prev = Some(l);
            }
            if let Some(before) = symbols[l].prev {
                self.push_bigram(token_to_id, escaped, symbols, queue, before, l);
            }
            if let Some(after) = after {
                self.push_bigram(token_to_id, escaped, symbols, queue, l, after);
            }
        }

        // Every merge formed a token, so only unmerged characters can miss:
        // llama.cpp's `resegment` never needs its reverse-merge table here.
        let mut at = (!symbols.is_empty()).then_some(0);
        while let Some(i) = at {
            let sym = symbols[i];
            let piece = &escaped[sym.start..sym.start + sym.len];
            match token_to_id.get(piece) {
                Some(&id) => out.push(id),
                None => out.extend(
                    piece
                        .bytes()
                        .filter_map(|b| self.byte_token[b as usize].or(self.unk)),
                ),
            }
            at = sym.next;
        }
    }

    /// llama.cpp's `token_to_piece(special = true)`: normal tokens with `▁` as
    /// a space, byte tokens as their byte, control/unknown/user-defined
    /// tokens as their text, and anything else (or a malformed byte token) as
    /// nothing.
    fn render_piece(&self, text: &str, ty: TokenType, out: &mut Vec<u8>) {
        match ty {
            TokenType::Normal => {
                for (i, part) in text.split(SPACE).enumerate() {
                    if i > 0 {
                        out.push(b' ');
                    }
                    out.extend_from_slice(part.as_bytes());
                }
            }
            TokenType::Byte => out.extend(byte_of(text)),
            TokenType::Control | TokenType::Unknown | TokenType::UserDefined => {
                out.extend_from_slice(text.as_bytes());
            }
            TokenType::Undefined | TokenType::Unused => {}
        }
    }
}

impl std::fmt::Debug for Spm {
    /// A summary: the scores have one entry per token.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Spm")
            .field("add_space_prefix", &self.add_space_prefix)
            .field("unk", &self.unk)
            .finish_non_exhaustive()
    }
}

/// Buffers reused across the fragments of one `encode` call.
#[derive(Default)]
pub(super) struct Scratch {
    escaped: String,
    symbols: Vec<Symbol>,
    queue: BinaryHeap<Bigram>,
}

/// A run of the escaped fragment's bytes, linked to its neighbours;
/// `len == 0` once merged into the symbol on its left.
#[derive(Clone, Copy, Debug)]
struct Symbol {
    start: usize,
    len: usize,
    prev: Option<usize>,
    next: Option<usize>,
}

/// A pair that forms a token (llama.cpp's `llm_bigram_spm`). The max-heap
/// pops the highest score and, among equal scores, the leftmost pair.
#[derive(Clone, Copy, Debug)]
struct Bigram {
    /// Never NaN.
    score: f32,
    left: usize,
    right: usize,
    /// Byte length of the merged symbol when queued.
    len: usize,
}

impl Ord for Bigram {
    fn cmp(&self, other: &Self) -> Ordering {
        // `<`/`==` as in C++, so that -0.0 and 0.0 tie (NaN never enters).
        if self.score < other.score {
            Ordering::Less
        } else if self.score > other.score {
            Ordering::Greater
        } else {
            other.left.cmp(&self.left)
        }
    }
}

impl PartialOrd for Bigram {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl PartialEq for Bigram {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}

impl Eq for Bigram {}

/// The byte of a `<0xXX>` token.
fn byte_of(text: &str) -> Option<u8> {
    let hex = text.strip_prefix("<0x")?.strip_suffix('>')?;
    if hex.len() != 2 {
        return None;
    }
    u8::from_str_radix(hex, 16).ok()
}
