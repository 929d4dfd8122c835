//! Byte-level BPE (GPT-2 style: SmolLM2, Llama 3, Qwen2; GGUF
//! `tokenizer.ggml.model = "gpt2"`), as llama.cpp's `llm_tokenizer_bpe` does it.
//!
//! Each text fragment (what is left between special tokens) is split into
//! words by the pre-tokenizer ([`PreTokenizer`]). Each word's bytes are mapped
//! to GPT-2's printable alphabet and merged pairwise, lowest merge rank first
//! (leftmost on ties), as `llm_tokenizer_bpe_session` does.
//!
//! Symbols during merging are ids: real token ids below the vocabulary size,
//! and ids above it for strings that merges produce or consume but that are
//! not tokens themselves (absent in well-formed vocabularies, but llama.cpp
//! merges by string, so they must still take part).

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::hash::BuildHasherDefault;

use super::pretokenize::{self, PreTokenizer};
use super::unicode::{BYTE_TO_CHAR, char_to_byte};
use super::{
    EncodeScratch, FxMap, Segmenter, TokenType, TokenizerError, TokenizerModel, Vocabulary,
    split_merge,
};

/// Marks a byte whose GPT-2 character is neither a token nor part of any
/// merge: it can never merge and is emitted through the byte fallback.
const NO_SYMBOL: u32 = u32::MAX;

/// Key of the merge table: the two symbol ids of a pair.
#[inline]
fn pair_key(left: u32, right: u32) -> u64 {
    (u64::from(left) << 32) | u64::from(right)
}

/// The merge table: `(left, right)` symbol ids (see [`pair_key`]) →
/// `(rank, merged symbol id)`.
type PairMerges = FxMap<u64, (u32, u32)>;

/// Byte-level BPE state of a [`super::Tokenizer`].
pub(super) struct Bpe {
    merges: PairMerges,
    /// Initial symbol of each byte (`NO_SYMBOL` if it has none).
    byte_symbol: [u32; 256],
    /// Token of the one-byte string of each ASCII byte, for the fallback.
    ascii_token: [Option<u32>; 128],
    /// Number of tokens: symbol ids from here up are merge intermediates.
    vocab_size: u32,
    pre: PreTokenizer,
    /// llama.cpp's `ignore_merges`: a word that is a token is used as is.
    ignore_merges: bool,
}

impl Bpe {
    /// Resolves the pre-tokenizer, parses the merges into the id-pair table
    /// and finds each byte's initial symbol and each ASCII byte's token.
    pub(super) fn new(
        spec: &Vocabulary<'_>,
        token_to_id: &FxMap<Box<str>, u32>,
    ) -> Result<Self, TokenizerError> {
        let pre = PreTokenizer::from_name(spec.pre)
            .ok_or_else(|| TokenizerError::UnknownPreTokenizer(spec.pre.to_owned()))?;
        let n_tokens = spec.tokens.len();
        // Every merge may add up to three intermediate ids on top of tokens.
        let id_space = n_tokens.saturating_add(spec.merges.len().saturating_mul(3));
        if u32::try_from(id_space).is_err() || id_space == u32::MAX as usize {
            return Err(TokenizerError::TooLarge(n_tokens));
        }
        let vocab_size = n_tokens as u32;
        let (merges, byte_symbol) = build_merges(&spec.merges, token_to_id, vocab_size)?;

        let mut ascii_token = [None; 128];
        for (b, slot) in ascii_token.iter_mut().enumerate() {
            let s = [b as u8];
            if let Ok(s) = std::str::from_utf8(&s) {
                *slot = token_to_id.get(s).copied();
            }
        }

        Ok(Self {
            merges,
            byte_symbol,
            ascii_token,
            vocab_size,
            pre,
            ignore_merges: pre == PreTokenizer::Llama3,
        })
    }

    /// BPE over one word: start from one symbol per byte and repeatedly merge
    /// the adjacent pair with the lowest rank (leftmost among equals).
    fn encode_word(
        &self,
        token_to_id: &FxMap<Box<str>, u32>,
        word: &[u8],
        scratch: &mut WordScratch,
        out: &mut Vec<u32>,
    ) {
        if self.ignore_merges {
            let encoded = &mut scratch.encoded;
            encoded.clear();
            encoded.extend(word.iter().map(|&b| BYTE_TO_CHAR[b as usize]));
            if let Some(&id) = token_to_id.get(encoded.as_str()) {
                out.push(id);
                return;
            }
        }
        if let [b] = word
            && let Some(id) = self.symbol_token(self.byte_symbol[*b as usize])
        {
            out.push(id);
            return;
        }

        let symbols = &mut scratch.symbols;
        let queue = &mut scratch.queue;
        symbols.clear();
        queue.clear();
        for (i, &b) in word.iter().enumerate() {
            symbols.push(Symbol {
                id: self.byte_symbol[b as usize],
                start: i,
                len: 1,
                prev: i.checked_sub(1),
                next: (i + 1 < word.len()).then_some(i + 1),
            });
        }
        for right in 1..symbols.len() {
            self.push_pair(symbols, queue, right - 1, right);
        }
        while let Some(Reverse(pair)) = queue.pop() {
            let (l, r) = (pair.left, pair.right);
            // A queued pair is stale once either side changed: symbols only
            // grow or empty, so unchanged lengths mean unchanged symbols
            // (llama.cpp compares the texts, which is equivalent).
            let (ll, rl) = (symbols[l].len, symbols[r].len);
            if ll == 0 || rl == 0 || ll + rl != pair.len {
                continue;
            }
            symbols[l].id = pair.merged;
            symbols[l].len += rl;
            symbols[r].len = 0;
            let after = symbols[r].next;
            symbols[l].next = after;
            if let Some(after) = after {
                symbols[after].prev = Some(l);
            }
            if let Some(before) = symbols[l].prev {
                self.push_pair(symbols, queue, before, l);
            }
            if let Some(after) = after {
                self.push_pair(symbols, queue, l, after);
            }
        }

        for sym in symbols.iter().filter(|s| s.len > 0) {
            if let Some(id) = self.symbol_token(sym.id) {
                out.push(id);
            } else {
                // llama.cpp's fallback: look up each byte of the symbol's
                // GPT-2 text as a one-byte token. Only ASCII characters can
                // be one-byte tokens; anything else is dropped.
                for &b in &word[sym.start..sym.start + sym.len] {
                    let c = BYTE_TO_CHAR[b as usize];
                    if let Some(&Some(id)) = self.ascii_token.get(c as usize) {
                        out.push(id);
                    }
                }
            }
        }
    }

    /// The token a symbol id stands for, if it is a real token.
    #[inline]
    fn symbol_token(&self, symbol: u32) -> Option<u32> {
        (symbol < self.vocab_size).then_some(symbol)
    }

    /// Queues the pair `(left, right)` if the vocabulary has a merge for it.
    fn push_pair(
        &self,
        symbols: &[Symbol],
        queue: &mut BinaryHeap<Reverse<Pair>>,
        left: usize,
        right: usize,
    ) {
        let (l, r) = (&symbols[left], &symbols[right]);
        if l.id == NO_SYMBOL || r.id == NO_SYMBOL {
            return;
        }
        if let Some(&(rank, merged)) = self.merges.get(&pair_key(l.id, r.id)) {
            queue.push(Reverse(Pair {
                rank,
                left,
                right,
                len: l.len + r.len,
                merged,
            }));
        }
    }
}

impl Segmenter for Bpe {
    fn model(&self) -> TokenizerModel {
        TokenizerModel::ByteLevelBpe
    }

    fn add_space_prefix(&self) -> bool {
        false
    }

    /// Pre-tokenizes the fragment and BPE-encodes each word; what precedes
    /// the fragment does not matter.
    fn encode_fragment(
        &self,
        token_to_id: &FxMap<Box<str>, u32>,
        fragment: &str,
        _after_special: bool,
        scratch: &mut EncodeScratch,
        out: &mut Vec<u32>,
    ) {
        let Scratch {
            pre_tokenizer,
            words,
            word,
        } = &mut scratch.bpe;
        words.clear();
        pretokenize::split(self.pre, fragment, pre_tokenizer, words);
        for &(start, end) in words.iter() {
            self.encode_word(token_to_id, &fragment.as_bytes()[start..end], word, out);
        }
    }

    /// llama.cpp's `token_to_piece(special = true)` for BPE vocabularies:
    /// normal tokens decode from the GPT-2 alphabet, byte tokens (which have
    /// no meaning here) are empty.
    fn render_piece(&self, text: &str, ty: TokenType, out: &mut Vec<u8>) {
        match ty {
            TokenType::Normal => {
                for c in text.chars() {
                    match char_to_byte(c) {
                        Some(b) => out.push(b),
                        None => {
                            // llama.cpp's `llama_decode_text` marker for a
                            // character outside the GPT-2 alphabet.
                            let mut buf = [0u8; 4];
                            out.extend_from_slice(b"[UNK_BYTE_0x");
                            for b in c.encode_utf8(&mut buf).bytes() {
                                out.extend_from_slice(format!("{b:02x}").as_bytes());
                            }
                            out.extend_from_slice(text.as_bytes());
                            out.push(b']');
                        }
                    }
                }
            }
            TokenType::Control | TokenType::Unknown | TokenType::UserDefined => {
                out.extend_from_slice(text.as_bytes());
            }
            TokenType::Undefined | TokenType::Unused | TokenType::Byte => {}
        }
    }
}

impl std::fmt::Debug for Bpe {
    /// A summary: the merge table has tens of thousands of entries.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Bpe")
            .field("merges", &self.merges.len())
            .finish_non_exhaustive()
    }
}

/// Parses the merges into the pair table and finds each byte's initial
/// symbol. Strings that are not
/// tokens get ids from `vocab_size` upwards.
fn build_merges(
    merges: &[&str],
    token_to_id: &FxMap<Box<str>, u32>,
    vocab_size: u32,
) -> Result<(PairMerges, [u32; 256]), TokenizerError> {
    let mut table =
        PairMerges::with_capacity_and_hasher(merges.len(), BuildHasherDefault::default());
    let mut extra: FxMap<String, u32> = FxMap::default();
    let mut next_extra = vocab_size;
    let mut joined = String::new();
    let mut intern = |s: &str, extra: &mut FxMap<String, u32>| -> u32 {
        if let Some(&id) = token_to_id.get(s) {
            return id;
        }
        if let Some(&id) = extra.get(s) {
            return id;
        }
        let id = next_extra;
        next_extra += 1;
        extra.insert(s.to_owned(), id);
        id
    };
    for (rank, &merge) in merges.iter().enumerate() {
        let (left, right) = split_merge(rank, merge)?;
        joined.clear();
        joined.push_str(left);
        joined.push_str(right);
        let left = intern(left, &mut extra);
        let right = intern(right, &mut extra);
        let merged = intern(&joined, &mut extra);
        // The first occurrence of a pair keeps its rank (`emplace`).
        table
            .entry(pair_key(left, right))
            .or_insert((rank as u32, merged));
    }
    let mut byte_symbol = [NO_SYMBOL; 256];
    let mut buf = [0u8; 4];
    for (b, slot) in byte_symbol.iter_mut().enumerate() {
        let s: &str = BYTE_TO_CHAR[b].encode_utf8(&mut buf);
        *slot = token_to_id
            .get(s)
            .or_else(|| extra.get(s))
            .copied()
            .unwrap_or(NO_SYMBOL);
    }
    Ok((table, byte_symbol))
}

/// Buffers reused across the fragments of one `encode` call.
#[derive(Default)]
pub(super) struct Scratch {
    pre_tokenizer: pretokenize::Scratch,
    /// Byte ranges of the fragment's words.
    words: Vec<(usize, usize)>,
    word: WordScratch,
}

/// Buffers reused across the words of one `encode` call.
#[derive(Default)]
struct WordScratch {
    symbols: Vec<Symbol>,
    queue: BinaryHeap<Reverse<Pair>>,
    /// The word in the GPT-2 alphabet (for `ignore_merges`).
    encoded: String,
}

/// A symbol of the word being merged: a run of its bytes, linked to its
/// neighbours; `len == 0` once merged into the symbol on its left.
#[derive(Clone, Copy, Debug)]
struct Symbol {
    id: u32,
    start: usize,
    len: usize,
    prev: Option<usize>,
    next: Option<usize>,
}

/// A mergeable adjacent pair. Ordered by rank, then by left position, so the
/// min-heap pops the lowest rank and, among equals, the leftmost (llama.cpp's
/// `llm_bigram_bpe::comparator`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Pair {
    rank: u32,
    left: usize,
    right: usize,
    len: usize,
    merged: u32,
}
