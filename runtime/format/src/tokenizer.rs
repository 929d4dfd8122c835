//! The tokenizer section (docs/FORMAT.md, "Tokenizer"): the vocabulary as the model
//! ships it, borrowed from the file.

use crate::FormatError;
use crate::bytes::Reader;
use crate::strlist::StrList;
#[cfg(feature = "std")]
use crate::strlist::{pad4, write_strlist};
use no_std_compat::string::String;
use no_std_compat::vec::Vec;

/// Tokenizer algorithm.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TokenizerModel {
    /// GPT-2 byte-level BPE (SmolLM2, Llama 3, Qwen2); tokens in GPT-2's byte-to-unicode alphabet.
    ByteLevelBpe = 1,
    /// SentencePiece BPE (Llama 2, TinyLlama); scores rank the merges.
    SentencePiece = 2,
}

const FLAG_ADD_BOS: u32 = 1;
const FLAG_ADD_EOS: u32 = 2;
const FLAG_SPACE_PREFIX: u32 = 4;
const FLAG_SCORES: u32 = 8;

/// The tokenizer section, borrowed from the file.
#[derive(Clone, Copy, Debug)]
pub struct TokenizerData<'a> {
    /// Algorithm.
    pub model: TokenizerModel,
    /// Prepend the BOS token when encoding a prompt.
    pub add_bos: bool,
    /// Append the EOS token when encoding a prompt.
    pub add_eos: bool,
    /// Prepend a space before encoding (SentencePiece).
    pub add_space_prefix: bool,
    /// Pre-tokenizer name (llama.cpp's `tokenizer.ggml.pre`: "smollm", "llama3", "gpt2", ...).
    pub pre: &'a str,
    /// Token strings, indexed by id.
    pub tokens: StrList<'a>,
    /// Token types, one byte per token (GGUF codes: 1 normal, 2 unknown, 3 control,
    /// 4 user-defined, 5 unused, 6 byte).
    pub token_types: &'a [u8],
    /// Per-token f32 scores (little-endian), present for SentencePiece.
    pub scores: Option<&'a [u8]>,
    /// BPE merges "left right", rank = index.
    pub merges: StrList<'a>,
}

impl<'a> TokenizerData<'a> {
    pub(crate) fn read(section: &'a [u8], vocab_size: u32) -> Result<Self, FormatError> {
        let mut r = Reader::new(section, "tokenizer");
        let model = match r.u32()? {
            1 => TokenizerModel::ByteLevelBpe,
            2 => TokenizerModel::SentencePiece,
            _ => return Err(FormatError::BadTokenizer("unknown tokenizer model")),
        };
        let flags = r.u32()?;
        if flags & !(FLAG_ADD_BOS | FLAG_ADD_EOS | FLAG_SPACE_PREFIX | FLAG_SCORES) != 0 {
            return Err(FormatError::BadTokenizer("unknown tokenizer flags"));
        }
        let pre = StrList::read(&mut r, "pre-tokenizer")?;
        let pre = match (pre.len(), pre.get(0)) {
            (1, Some(p)) => p,
            _ => return Err(FormatError::BadTokenizer("expected one pre-tokenizer name")),
        };
        let tokens = StrList::read(&mut r, "tokens")?;
        let n = tokens.len();
        if n == 0 || n > vocab_size as usize {
            return Err(FormatError::BadTokenizer(
                "token count disagrees with the vocab size",
            ));
        }
        let token_types = r.take(n)?;
        r.align4()?;
        let scores = if flags & FLAG_SCORES != 0 {
            Some(r.take(n * 4)?)
        } else {
            None
        };
        let merges = StrList::read(&mut r, "merges")?;
        Ok(Self {
            model,
            add_bos: flags & FLAG_ADD_BOS != 0,
            add_eos: flags & FLAG_ADD_EOS != 0,
            add_space_prefix: flags & FLAG_SPACE_PREFIX != 0,
            pre,
            tokens,
            token_types,
            scores,
            merges,
        })
    }

    /// Score of token `id` (SentencePiece), 0 where the file has none.
    pub fn score(&self, id: usize) -> f32 {
        self.scores
            .and_then(|s| s.get(4 * id..4 * id + 4))
            .map_or(0.0, |b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }
}

/// An owned tokenizer, as the quantizer imports it, for writing.
#[derive(Clone, Debug, PartialEq)]
pub struct TokenizerSpec {
    /// Algorithm.
    pub model: TokenizerModel,
    /// See [`TokenizerData::add_bos`].
    pub add_bos: bool,
    /// See [`TokenizerData::add_eos`].
    pub add_eos: bool,
    /// See [`TokenizerData::add_space_prefix`].
    pub add_space_prefix: bool,
    /// See [`TokenizerData::pre`].
    pub pre: String,
    /// See [`TokenizerData::tokens`].
    pub tokens: Vec<String>,
    /// See [`TokenizerData::token_types`].
    pub token_types: Vec<u8>,
    /// See [`TokenizerData::scores`].
    pub scores: Option<Vec<f32>>,
    /// See [`TokenizerData::merges`].
    pub merges: Vec<String>,
}

impl TokenizerSpec {
    #[cfg(feature = "std")]
    pub(crate) fn write(&self, out: &mut Vec<u8>) {
        let flags = [
            (self.add_bos, FLAG_ADD_BOS),
            (self.add_eos, FLAG_ADD_EOS),
            (self.add_space_prefix, FLAG_SPACE_PREFIX),
            (self.scores.is_some(), FLAG_SCORES),
        ]
        .iter()
        .filter(|(on, _)| *on)
        .fold(0, |f, (_, bit)| f | bit);
        out.extend_from_slice(&(self.model as u32).to_le_bytes());
        out.extend_from_slice(&flags.to_le_bytes());
        write_strlist(out, &[self.pre.as_str()]);
        write_strlist(out, &self.tokens);
        out.extend_from_slice(&self.token_types);
        pad4(out);
        if let Some(scores) = &self.scores {
            scores
                .iter()
                .for_each(|s| out.extend_from_slice(&s.to_le_bytes()));
        }
        write_strlist(out, &self.merges);
    }
}
