//! Byte-level BPE (GPT-2 style) and SentencePiece BPE tokenizers that
//! reproduce llama.cpp's `llama-tokenize` token for token.
//!
//! Encoding follows llama.cpp's `llama_vocab::tokenize`:
//!
//! 1. With `parse_special`, control/unknown tokens written in the text are cut
//!    out first (user-defined tokens always are), longest token text first,
//!    exactly as `tokenizer_st_partition` does.
//! 2. Each remaining fragment is encoded by the vocabulary's [`Segmenter`]:
//!    byte-level BPE (`gpt2` vocabs, the `bpe` module) splits it into words
//!    with the pre-tokenizer ([`PreTokenizer`]) and merges each word's bytes
//!    by merge rank; SentencePiece (`llama` vocabs, the `spm` module) merges
//!    its characters by score, with byte-token fallback.
//!
//! The token tables, special-token matching and decoding are shared; only
//! encoding a fragment and rendering a token's text differ between the two.
//!
//! Decoding is the concatenation of llama.cpp's `token_to_piece` outputs;
//! [`StreamDecoder`] turns a token stream into text without ever splitting a
//! UTF-8 character.

mod bpe;
mod pretokenize;
mod spm;
#[cfg(test)]
mod spm_tests;
#[cfg(test)]
mod tests;
mod unicode;
mod unicode_tables;

use std::cmp::Reverse;
use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::Arc;

pub use glint_format::TokenizerModel;
pub use pretokenize::PreTokenizer;

/// Everything needed to build a [`Tokenizer`], as stored in a GGUF file's
/// `tokenizer.ggml.*` keys.
#[derive(Clone, Debug)]
pub struct Vocabulary<'a> {
    /// The algorithm (`tokenizer.ggml.model`: `gpt2` is byte-level BPE,
    /// `llama` SentencePiece).
    pub model: TokenizerModel,
    /// Token strings, indexed by id: for byte-level BPE in GPT-2's
    /// byte-to-unicode alphabet (`Ġ` is a space), for SentencePiece with `▁`
    /// (U+2581) as a space and `<0xXX>` byte tokens; control and
    /// user-defined tokens are plain text.
    pub tokens: Vec<&'a str>,
    /// GGUF token type per token (see [`TokenType`]); empty means all normal.
    pub token_types: &'a [u8],
    /// Merges as `"left right"`; a merge's rank is its index. SentencePiece
    /// uses them only without `scores` (see there).
    pub merges: Vec<&'a str>,
    /// SentencePiece: one score per token; a pair of symbols merges into the
    /// token they spell, highest score first. When absent (a Hugging Face
    /// import), priorities come from the merges: a token formed by the merge
    /// of rank `r` first scores `-r`, and tokens no merge forms are never
    /// merged into; with no merges either, every token scores 0. Ignored for
    /// byte-level BPE.
    pub scores: Option<Vec<f32>>,
    /// SentencePiece: prepend `▁` to each text fragment that starts the
    /// input or follows a special token (llama.cpp's `add_space_prefix`).
    /// Ignored for byte-level BPE.
    pub add_space_prefix: bool,
    /// The `tokenizer.ggml.pre` name, see [`PreTokenizer::from_name`];
    /// SentencePiece has no pre-tokenizer and accepts any name.
    pub pre: &'a str,
    /// Beginning-of-sequence token id.
    pub bos: Option<u32>,
    /// End-of-sequence token id.
    pub eos: Option<u32>,
    /// Whether [`Tokenizer::encode`] starts its output with `bos`.
    pub add_bos: bool,
}

impl<'a> Vocabulary<'a> {
    /// The vocabulary a `.glint` file stores. `add_bos` is false: a new context's BOS
    /// is added by [`crate::Engine::prompt_tokens`], not by every `encode`.
    pub fn from_file(f: &glint_format::GlintFile<'a>) -> Self {
        let (t, c) = (f.tokenizer(), f.config());
        Self {
            model: t.model,
            tokens: t.tokens.iter().collect(),
            token_types: t.token_types,
            merges: t.merges.iter().collect(),
            scores: t
                .scores
                .map(|_| (0..t.tokens.len()).map(|i| t.score(i)).collect()),
            add_space_prefix: t.add_space_prefix,
            pre: t.pre,
            bos: c.bos,
            eos: c.eos,
            add_bos: false,
        }
    }
}

/// Why a [`Vocabulary`] was rejected.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum TokenizerError {
    /// The pre-tokenizer name is not one this tokenizer implements.
    #[error("unsupported pre-tokenizer {0:?} (supported: gpt2, default, llama3, smollm, qwen2)")]
    UnknownPreTokenizer(String),
    /// A merge has no space separating two non-empty halves.
    #[error("merge #{index} {merge:?} is not of the form \"left right\"")]
    MalformedMerge {
        /// Index (rank) of the merge.
        index: usize,
        /// The merge as given.
        merge: String,
    },
    /// `token_types` is neither empty nor one entry per token.
    #[error("{token_types} token types given for {tokens} tokens")]
    TokenTypeCount {
        /// Number of tokens.
        tokens: usize,
        /// Number of token types.
        token_types: usize,
    },
    /// A BOS/EOS id does not name a token.
    #[error("{role} token id {id} is outside the vocabulary of {vocab_size} tokens")]
    SpecialIdOutOfRange {
        /// `"bos"` or `"eos"`.
        role: &'static str,
        /// The id given.
        id: u32,
        /// Number of tokens.
        vocab_size: usize,
    },
    /// `add_bos` was requested without a BOS token.
    #[error("add_bos is set but no bos token id is given")]
    MissingBos,
    /// `scores` is given but not one entry per token.
    #[error("{scores} scores given for {tokens} tokens")]
    ScoreCount {
        /// Number of tokens.
        tokens: usize,
        /// Number of scores.
        scores: usize,
    },
    /// Token ids (plus internal ids for merge intermediates) must fit in `u32`.
    #[error("vocabulary of {0} tokens is too large")]
    TooLarge(usize),
}

/// GGUF token type (`tokenizer.ggml.token_type`), which decides how a token
/// is matched in text and rendered.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum TokenType {
    /// Code 0 or any code GGUF does not define; rendered as nothing.
    Undefined = 0,
    /// Ordinary BPE token, rendered as its decoded bytes.
    Normal = 1,
    /// Unknown-token marker; special.
    Unknown = 2,
    /// Control token such as `<|im_start|>`; special, rendered only on request.
    Control = 3,
    /// User-defined token: matched whole in text, rendered verbatim.
    UserDefined = 4,
    /// Unused slot; rendered as nothing.
    Unused = 5,
    /// SentencePiece byte token `<0xXX>`, rendered as that byte; it has no
    /// meaning in byte-level BPE, so llama.cpp renders it as nothing there.
    Byte = 6,
}

impl TokenType {
    /// The type of a GGUF token-type code (unknown codes are `Undefined`, as
    /// llama.cpp treats them).
    pub fn from_code(code: u8) -> Self {
        match code {
            1 => Self::Normal,
            2 => Self::Unknown,
            3 => Self::Control,
            4 => Self::UserDefined,
            5 => Self::Unused,
            6 => Self::Byte,
            _ => Self::Undefined,
        }
    }

    /// Control, unknown and user-defined tokens: the ones matched as whole
    /// tokens in text (llama.cpp's `cache_special_tokens`).
    pub fn is_special(self) -> bool {
        matches!(self, Self::Control | Self::Unknown | Self::UserDefined)
    }
}

/// Token texts that llama.cpp forces to `Control` whatever the file says,
/// because it treats them as end-of-generation markers; matching that keeps
/// special-token parsing identical for such (mis)typed vocabularies.
const EOG_TEXTS: &[&str] = &[
    "<|eot_id|>",
    "<|im_end|>",
    "<|end|>",
    "<|return|>",
    "<|call|>",
    "<end_of_turn>",
    "<|endoftext|>",
    "<|eom_id|>",
    "<EOT>",
    "_<EOT>",
    "<|end_of_text|>",
    "<end_of_utterance>",
];

/// A small, fast hasher (the rustc/Firefox "Fx" hash). Keys are the model's
/// own vocabulary and merge ids, not attacker-chosen insertions, so DoS
/// resistance buys nothing and SipHash would dominate build time.
#[derive(Default, Clone, Copy)]
struct FxHasher {
    hash: u64,
}

impl FxHasher {
    const SEED: u64 = 0x51_7c_c1_b7_27_22_0a_95;

    #[inline]
    fn add(&mut self, word: u64) {
        self.hash = (self.hash.rotate_left(5) ^ word).wrapping_mul(Self::SEED);
    }
}

impl Hasher for FxHasher {
    #[inline]
    fn write(&mut self, bytes: &[u8]) {
        let mut chunks = bytes.chunks_exact(8);
        for chunk in &mut chunks {
            let mut word = [0u8; 8];
            word.copy_from_slice(chunk);
            self.add(u64::from_le_bytes(word));
        }
        let rest = chunks.remainder();
        if !rest.is_empty() {
            let mut word = [0u8; 8];
            word[..rest.len()].copy_from_slice(rest);
            self.add(u64::from_le_bytes(word));
        }
    }

    #[inline]
    fn write_u8(&mut self, i: u8) {
        self.add(u64::from(i));
    }

    #[inline]
    fn write_u32(&mut self, i: u32) {
        self.add(u64::from(i));
    }

    #[inline]
    fn write_u64(&mut self, i: u64) {
        self.add(i);
    }

    #[inline]
    fn write_usize(&mut self, i: usize) {
        self.add(i as u64);
    }

    #[inline]
    fn finish(&self) -> u64 {
        // The multiply mixes only upwards: low bits of the state depend on
        // low bits of the input alone, and hashbrown picks buckets with the
        // low bits, so e.g. every pair with the same right id would collide.
        // Rotating the well-mixed high bits down fixes that.
        self.hash.rotate_left(26)
    }
}

type FxMap<K, V> = HashMap<K, V, BuildHasherDefault<FxHasher>>;

/// The model-specific half of a [`Tokenizer`] ([`bpe::Bpe`] or
/// [`spm::Spm`]): how a fragment of plain text becomes tokens and how a
/// token's text renders as bytes. Built once by [`Tokenizer::new`] from the
/// [`Vocabulary`] and the shared token tables; everything else (the tables,
/// special-token matching, decoding) is shared.
trait Segmenter: std::fmt::Debug + Send + Sync {
    /// The algorithm this is.
    fn model(&self) -> TokenizerModel;

    /// Whether fragments that start the text or follow a special token get a
    /// leading space (SentencePiece's `add_space_prefix`).
    fn add_space_prefix(&self) -> bool;

    /// Appends the tokens of `fragment`, a run of text between special tokens
    /// (`after_special`: it starts the text or follows a special token).
    fn encode_fragment(
        &self,
        token_to_id: &FxMap<Box<str>, u32>,
        fragment: &str,
        after_special: bool,
        scratch: &mut EncodeScratch,
        out: &mut Vec<u32>,
    );

    /// Appends the bytes of a token of type `ty` whose vocabulary string is
    /// `text`, as llama.cpp's `token_to_piece(special = true)` renders it.
    fn render_piece(&self, text: &str, ty: TokenType, out: &mut Vec<u8>);
}

/// A byte-level BPE or SentencePiece tokenizer matching llama.cpp's
/// `llama-tokenize`.
#[derive(Clone)]
pub struct Tokenizer {
    /// Token strings as given (empty ones replaced as llama.cpp does).
    texts: Vec<Box<str>>,
    types: Vec<TokenType>,
    /// Rendered bytes of every token, concatenated; see `piece_ranges`.
    piece_bytes: Vec<u8>,
    /// `piece_bytes[piece_ranges[id]..piece_ranges[id + 1]]` is token `id`.
    piece_ranges: Vec<u32>,
    token_to_id: FxMap<Box<str>, u32>,
    /// Special tokens by decreasing text length (llama.cpp's match order).
    specials: Vec<u32>,
    /// Reported by [`Tokenizer::pre_tokenizer`]; byte-level BPE keeps its own.
    pre: PreTokenizer,
    /// Encodes the text between special tokens; shared by clones.
    segmenter: Arc<dyn Segmenter>,
    bos: Option<u32>,
    eos: Option<u32>,
    add_bos: bool,
}

impl Tokenizer {
    /// Builds a tokenizer from a vocabulary, its merges and its settings.
    ///
    /// # Errors
    ///
    /// An unsupported pre-tokenizer name (byte-level BPE), a merge without a
    /// space between two halves, a token-type or score list of the wrong
    /// length, a BOS/EOS id outside the vocabulary, or `add_bos` without a
    /// BOS id.
    pub fn new(spec: Vocabulary<'_>) -> Result<Self, TokenizerError> {
        let n_tokens = spec.tokens.len();
        // Byte-level BPE also checks room for its merge intermediates.
        if u32::try_from(n_tokens).is_err() || n_tokens == u32::MAX as usize {
            return Err(TokenizerError::TooLarge(n_tokens));
        }
        if !spec.token_types.is_empty() && spec.token_types.len() != n_tokens {
            return Err(TokenizerError::TokenTypeCount {
                tokens: n_tokens,
                token_types: spec.token_types.len(),
            });
        }
        for (role, id) in [("bos", spec.bos), ("eos", spec.eos)] {
            if let Some(id) = id.filter(|&id| id as usize >= n_tokens) {
                return Err(TokenizerError::SpecialIdOutOfRange {
                    role,
                    id,
                    vocab_size: n_tokens,
                });
            }
        }
        if spec.add_bos && spec.bos.is_none() {
            return Err(TokenizerError::MissingBos);
        }

        let mut texts = Vec::with_capacity(n_tokens);
        let mut types = Vec::with_capacity(n_tokens);
        let mut token_to_id =
            FxMap::with_capacity_and_hasher(n_tokens, BuildHasherDefault::default());
        for (id, &text) in spec.tokens.iter().enumerate() {
            // llama.cpp renames empty tokens so that they cannot match.
            let text: Box<str> = if text.is_empty() {
                format!("[EMPTY_{id}]").into()
            } else {
                text.into()
            };
            let mut ty = TokenType::from_code(spec.token_types.get(id).copied().unwrap_or(1));
            if EOG_TEXTS.contains(&&*text) {
                ty = TokenType::Control;
            }
            // Later duplicates win, as with llama.cpp's `token_to_id[word] = i`.
            token_to_id.insert(text.clone(), id as u32);
            texts.push(text);
            types.push(ty);
        }

        let segmenter: Arc<dyn Segmenter> = match spec.model {
            TokenizerModel::ByteLevelBpe => Arc::new(bpe::Bpe::new(&spec, &token_to_id)?),
            TokenizerModel::SentencePiece => Arc::new(spm::Spm::new(&spec, &token_to_id, &types)?),
        };

        let mut piece_bytes = Vec::with_capacity(n_tokens * 6);
        let mut piece_ranges = Vec::with_capacity(n_tokens + 1);
        piece_ranges.push(0);
        for (text, &ty) in texts.iter().zip(&types) {
            segmenter.render_piece(text, ty, &mut piece_bytes);
            let end =
                u32::try_from(piece_bytes.len()).map_err(|_| TokenizerError::TooLarge(n_tokens))?;
            piece_ranges.push(end);
        }

        let mut specials: Vec<u32> = (0..n_tokens as u32)
            .filter(|&id| types[id as usize].is_special())
            .collect();
        // llama.cpp sorts by length only (unstable); ties cannot overlap at
        // one position, and ordering them by id keeps the result stable.
        specials.sort_by_key(|&id| Reverse(texts[id as usize].len()));

        Ok(Self {
            texts,
            types,
            piece_bytes,
            piece_ranges,
            token_to_id,
            specials,
            // SentencePiece has no pre-tokenizer and accepts any name.
            pre: PreTokenizer::from_name(spec.pre).unwrap_or(PreTokenizer::Default),
            segmenter,
            bos: spec.bos,
            eos: spec.eos,
            add_bos: spec.add_bos,
        })
    }

    /// Number of tokens in the vocabulary.
    pub fn vocab_size(&self) -> usize {
        self.texts.len()
    }

    /// Id of the token whose vocabulary string is exactly `text` (for normal
    /// tokens in the GPT-2 alphabet, e.g. `"Ġthe"`, or with SentencePiece's
    /// `▁`, e.g. `"▁the"`).
    pub fn id_of(&self, text: &str) -> Option<u32> {
        self.token_to_id.get(text).copied()
    }

    /// Vocabulary string of a token, as given to [`Tokenizer::new`].
    pub fn token_text(&self, id: u32) -> Option<&str> {
        self.texts.get(id as usize).map(|t| &**t)
    }

    /// Type of a token, `None` for an id outside the vocabulary.
    pub fn token_type(&self, id: u32) -> Option<TokenType> {
        self.types.get(id as usize).copied()
    }

    /// Whether `id` is a control, unknown or user-defined token (matched as a
    /// whole in text by [`Tokenizer::encode`]); `false` outside the vocabulary.
    pub fn is_special(&self, id: u32) -> bool {
        self.token_type(id).is_some_and(TokenType::is_special)
    }

    /// The pre-tokenizer in use (meaningless for SentencePiece).
    pub fn pre_tokenizer(&self) -> PreTokenizer {
        self.pre
    }

    /// The tokenizer algorithm.
    pub fn model(&self) -> TokenizerModel {
        self.segmenter.model()
    }

    /// Whether SentencePiece encoding prefixes text with a space (`▁`) at the
    /// start and after each special token. Decoding keeps that space, as
    /// llama.cpp's `token_to_piece` does; `false` for byte-level BPE.
    pub fn add_space_prefix(&self) -> bool {
        self.segmenter.add_space_prefix()
    }

    /// Beginning-of-sequence token id.
    pub fn bos(&self) -> Option<u32> {
        self.bos
    }

    /// End-of-sequence token id.
    pub fn eos(&self) -> Option<u32> {
        self.eos
    }

    /// Whether [`Tokenizer::encode`] prepends the BOS token.
    pub fn add_bos(&self) -> bool {
        self.add_bos
    }

    /// Encodes `text` into token ids, as `llama-tokenize` does (with BOS first
    /// when the vocabulary asks for it). With `parse_special`, control tokens
    /// written in the text (e.g. `<|im_start|>`) become those tokens;
    /// user-defined tokens are always matched.
    ///
    /// Byte-level BPE drops characters whose bytes have no token in the
    /// vocabulary, as llama.cpp does. SentencePiece encodes a character
    /// outside the vocabulary as its UTF-8 bytes' `<0xXX>` tokens; a byte
    /// without one becomes the unknown token, or is dropped if there is none
    /// (llama.cpp aborts there).
    pub fn encode(&self, text: &str, parse_special: bool) -> Vec<u32> {
        let mut out = Vec::with_capacity(text.len() / 3 + 2);
        self.encode_into(text, parse_special, &mut out);
        out
    }

    /// [`Tokenizer::encode`], appending to `out`.
    pub fn encode_into(&self, text: &str, parse_special: bool, out: &mut Vec<u32>) {
        if self.add_bos {
            out.extend(self.bos);
        }
        let mut scratch = EncodeScratch::default();
        // The start of the text counts as following a special token.
        let mut after_special = true;
        for fragment in self.partition(text, parse_special) {
            match fragment {
                Fragment::Text(start, end) => {
                    self.segmenter.encode_fragment(
                        &self.token_to_id,
                        &text[start..end],
                        after_special,
                        &mut scratch,
                        out,
                    );
                    after_special = false;
                }
                Fragment::Token(id) => {
                    out.push(id);
                    after_special = true;
                }
            }
        }
    }

    /// llama.cpp's `tokenizer_st_partition`: for each special token, longest
    /// first, cut every occurrence (left to right, non-overlapping) out of
    /// the text fragments that are left.
    fn partition(&self, text: &str, parse_special: bool) -> Vec<Fragment> {
        let mut fragments = Vec::new();
        if text.is_empty() {
            return fragments;
        }
        fragments.push(Fragment::Text(0, text.len()));
        let mut next = Vec::new();
        for &id in &self.specials {
            let ty = self.types[id as usize];
            if !parse_special && matches!(ty, TokenType::Control | TokenType::Unknown) {
                continue;
            }
            let needle = &*self.texts[id as usize];
            // Never true (empty texts were renamed), but an empty needle
            // would match forever.
            if needle.is_empty() {
                continue;
            }
            // Cheap pre-check: most specials do not occur at all.
            if !text.contains(needle) {
                continue;
            }
            next.clear();
            for &fragment in &fragments {
                let Fragment::Text(start, end) = fragment else {
                    next.push(fragment);
                    continue;
                };
                let mut at = start;
                // Matches are on char boundaries: both strings are valid
                // UTF-8, which is self-synchronizing.
                while let Some(found) = text[at..end].find(needle) {
                    let found = at + found;
                    if found > at {
                        next.push(Fragment::Text(at, found));
                    }
                    next.push(Fragment::Token(id));
                    at = found + needle.len();
                }
                if at < end {
                    next.push(Fragment::Text(at, end));
                }
            }
            std::mem::swap(&mut fragments, &mut next);
        }
        fragments
    }

    /// Rendered bytes of a token, control tokens included (llama.cpp's
    /// `token_to_piece` with `special = true`): normal tokens decode from the
    /// GPT-2 alphabet (byte-level BPE) or with `▁` as a space
    /// (SentencePiece), control/unknown/user-defined tokens are their text,
    /// byte tokens are their byte (SentencePiece; empty for byte-level BPE),
    /// and unused/undefined tokens are empty. Empty for unknown ids.
    pub fn token_bytes(&self, id: u32) -> &[u8] {
        let id = id as usize;
        match (self.piece_ranges.get(id), self.piece_ranges.get(id + 1)) {
            (Some(&start), Some(&end)) => &self.piece_bytes[start as usize..end as usize],
            _ => &[],
        }
    }

    /// Bytes of the longest token: the most input text one token can cover (its
    /// rendered bytes, or for special tokens the text that writes them).
    pub fn longest_token_bytes(&self) -> usize {
        let rendered = self.piece_ranges.windows(2).map(|w| (w[1] - w[0]) as usize);
        let written = self
            .specials
            .iter()
            .map(|&id| self.texts[id as usize].len());
        rendered.chain(written).max().unwrap_or(0)
    }

    /// Rendered bytes of a token for output: control and unknown tokens are
    /// empty unless `render_special` (llama.cpp's `token_to_piece`).
    pub fn piece(&self, id: u32, render_special: bool) -> &[u8] {
        let hidden = matches!(
            self.token_type(id),
            Some(TokenType::Control | TokenType::Unknown)
        );
        if hidden && !render_special {
            &[]
        } else {
            self.token_bytes(id)
        }
    }

    /// Concatenated bytes of [`Tokenizer::piece`] for each id.
    pub fn decode_bytes(&self, ids: &[u32], render_special: bool) -> Vec<u8> {
        let mut bytes = Vec::new();
        for &id in ids {
            bytes.extend_from_slice(self.piece(id, render_special));
        }
        bytes
    }

    /// Decodes ids to text; invalid UTF-8 (e.g. a sequence cut mid-character)
    /// becomes U+FFFD. No clean-up pass is applied, so
    /// `decode(encode(s)) == s` whenever every byte of `s` has a token, except
    /// that SentencePiece's space prefix (see [`Tokenizer::add_space_prefix`])
    /// stays in front.
    pub fn decode(&self, ids: &[u32], render_special: bool) -> String {
        match String::from_utf8(self.decode_bytes(ids, render_special)) {
            Ok(s) => s,
            Err(e) => String::from_utf8_lossy(e.as_bytes()).into_owned(),
        }
    }
}

impl std::fmt::Debug for Tokenizer {
    /// A summary: the full vocabulary would be tens of thousands of lines.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tokenizer")
            .field("model", &self.model())
            .field("vocab_size", &self.texts.len())
            .field("segmenter", &self.segmenter)
            .field("special_tokens", &self.specials.len())
            .field("pre", &self.pre)
            .field("bos", &self.bos)
            .field("eos", &self.eos)
            .field("add_bos", &self.add_bos)
            .finish_non_exhaustive()
    }
}

/// Splits a merge `"left right"` into its halves: like llama.cpp, at the first
/// space after the first byte; unlike it, a merge without one is rejected
/// instead of ranking `("", "")`.
fn split_merge(index: usize, merge: &str) -> Result<(&str, &str), TokenizerError> {
    // Searching bytes: a space byte is always a char boundary.
    let split = merge
        .bytes()
        .skip(1)
        .position(|b| b == b' ')
        .map(|at| at + 1)
        .filter(|&at| at + 1 < merge.len());
    match split {
        Some(at) => Ok((&merge[..at], &merge[at + 1..])),
        None => Err(TokenizerError::MalformedMerge {
            index,
            merge: merge.to_owned(),
        }),
    }
}

/// A piece of the input: raw text (byte range) or an already-matched token.
#[derive(Clone, Copy, Debug)]
enum Fragment {
    Text(usize, usize),
    Token(u32),
}

/// Buffers reused across the fragments of one `encode` call, one set per
/// segmenter: only the one in use ever fills (and allocates) its own.
#[derive(Default)]
struct EncodeScratch {
    bpe: bpe::Scratch,
    spm: spm::Scratch,
}

/// Incremental decoder for generated tokens: yields only complete UTF-8
/// text, holding back the start of a character whose remaining bytes are
/// still to come in later tokens.
///
/// The text it yields, followed by [`StreamDecoder::flush`], is exactly
/// `String::from_utf8_lossy` of all the tokens' bytes.
#[derive(Clone, Debug, Default)]
pub struct StreamDecoder {
    pending: Vec<u8>,
    ready: String,
    render_special: bool,
}

impl StreamDecoder {
    /// A decoder; `render_special` shows control tokens as their text.
    pub fn new(render_special: bool) -> Self {
        Self {
            render_special,
            ..Self::default()
        }
    }

    /// Adds one token and returns the text it completes (possibly empty).
    pub fn push(&mut self, tokenizer: &Tokenizer, id: u32) -> &str {
        self.push_bytes(tokenizer.piece(id, self.render_special))
    }

    /// Adds raw bytes and returns the text they complete (possibly empty).
    /// Bytes that can never become valid UTF-8 are replaced by U+FFFD at once.
    pub fn push_bytes(&mut self, bytes: &[u8]) -> &str {
        self.ready.clear();
        self.pending.extend_from_slice(bytes);
        let mut done = 0;
        loop {
            match std::str::from_utf8(&self.pending[done..]) {
                Ok(valid) => {
                    self.ready.push_str(valid);
                    done = self.pending.len();
                    break;
                }
                Err(e) => {
                    let valid_end = done + e.valid_up_to();
                    // The prefix up to `valid_up_to` was just validated.
                    if let Ok(valid) = std::str::from_utf8(&self.pending[done..valid_end]) {
                        self.ready.push_str(valid);
                    }
                    match e.error_len() {
                        Some(bad) => {
                            self.ready.push(char::REPLACEMENT_CHARACTER);
                            done = valid_end + bad;
                        }
                        // An incomplete character at the end: wait for more.
                        None => {
                            done = valid_end;
                            break;
                        }
                    }
                }
            }
        }
        self.pending.drain(..done);
        &self.ready
    }

    /// Ends the stream: a held-back incomplete character becomes U+FFFD.
    pub fn flush(&mut self) -> &str {
        self.ready.clear();
        if !self.pending.is_empty() {
            self.pending.clear();
            self.ready.push(char::REPLACEMENT_CHARACTER);
        }
        &self.ready
    }

    /// Whether bytes of an incomplete character are being held back.
    pub fn has_pending(&self) -> bool {
        !self.pending.is_empty()
    }

    /// Drops any held-back bytes, to start a new stream.
    pub fn reset(&mut self) {
        self.pending.clear();
        self.ready.clear();
    }
}
