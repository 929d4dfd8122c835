//! Pre-tokenization: splitting raw text into the words that BPE merges within.
//!
//! Each supported kind reproduces llama.cpp's `unicode_regex_split` for the
//! same `tokenizer.ggml.pre` value, including its quirks, because token ids
//! must match `llama-tokenize` exactly:
//!
//! * llama.cpp applies a *list* of regexes, each one splitting the pieces the
//!   previous one produced (matches and the gaps between them both become
//!   pieces). A later regex therefore never sees across an earlier boundary,
//!   which matters for look-ahead: in SmolLM's `\s+(?!\S)` a space right
//!   before a digit sits at the end of a piece, so it becomes a lone `" "`.
//! * The GPT-2 and LLAMA3 regexes are hand-written state machines in
//!   llama.cpp (`unicode_regex_split_custom_*`); they are ported step by step
//!   here, and `(?!\S)` is resolved the same way: a run of n > 1 white-space
//!   characters followed by something gives up its last character to the next
//!   word, and a run reaching the end of the piece is kept whole.
//! * The simple class regexes (`\p{N}`, `\p{N}+`, `[0-9][0-9][0-9]`, the
//!   punctuation run of the "default" kind) run through `std::regex` in
//!   llama.cpp; their behaviour is small enough to write out directly.
//! * The QWEN2 regex has no hand-written splitter in llama.cpp: it runs
//!   through `std::regex` on the "collapsed" text (every non-ASCII code
//!   point replaced by one byte standing for its category), so it follows
//!   the regex's own semantics. It differs from LLAMA3's only in `\p{N}`
//!   instead of `\p{N}{1,3}`, and the LLAMA3 state machine matches what the
//!   regex matches on every input (its one quirk, a lone space at the end of
//!   a piece taken by the punctuation branch, yields the same lone-space word
//!   that `\s+(?!\S)` gives), so QWEN2 is that machine with one-digit
//!   numbers.

use super::unicode::{self, LETTER, NUMBER, PUNCT, WHITESPACE};

/// Which of llama.cpp's pre-tokenizer regex lists to apply.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum PreTokenizer {
    /// `LLAMA_VOCAB_PRE_TYPE_GPT2`: the GPT-2 regex
    /// `'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+`.
    Gpt2,
    /// `LLAMA_VOCAB_PRE_TYPE_DEFAULT`: `[\p{P}\$\+<=>\^~\|]+`, then the GPT-2
    /// regex, then `\p{N}+`, then `[0-9][0-9][0-9]`.
    Default,
    /// `LLAMA_VOCAB_PRE_TYPE_LLAMA3`: `(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+`,
    /// with whole-word vocabulary hits bypassing the merges (`ignore_merges`).
    Llama3,
    /// `LLAMA_VOCAB_PRE_TYPE_SMOLLM`: `\p{N}` (every digit its own piece),
    /// then the GPT-2 regex.
    SmolLm,
    /// `LLAMA_VOCAB_PRE_TYPE_QWEN2`: `(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+`:
    /// LLAMA3's regex with every digit its own piece, and merges always
    /// applied (no `ignore_merges`).
    Qwen2,
}

impl PreTokenizer {
    /// Maps a GGUF `tokenizer.ggml.pre` name to a kind, accepting the
    /// spellings llama.cpp accepts for these kinds (plus `gpt2`).
    pub fn from_name(name: &str) -> Option<Self> {
        Some(match name {
            "gpt2" | "gpt-2" => Self::Gpt2,
            "default" => Self::Default,
            "llama3" | "llama-v3" | "llama-bpe" => Self::Llama3,
            "smollm" => Self::SmolLm,
            "qwen2" | "deepseek-r1-qwen" => Self::Qwen2,
            _ => return None,
        })
    }
}

/// A piece of the text as code-point indices `[start, end)`.
type Span = (usize, usize);

/// Reusable buffers for [`split`], so encoding many fragments does not
/// allocate per call.
#[derive(Default)]
pub(crate) struct Scratch {
    /// Byte offset of every code point, plus the text length at the end.
    offsets: Vec<usize>,
    chars: Vec<char>,
    flags: Vec<u8>,
    spans: Vec<Span>,
    next: Vec<Span>,
}

/// The decoded text a split stage reads.
struct Text<'a> {
    chars: &'a [char],
    flags: &'a [u8],
}

/// Splits `text` into words, appending their byte ranges to `words`.
pub(crate) fn split(
    kind: PreTokenizer,
    text: &str,
    scratch: &mut Scratch,
    words: &mut Vec<(usize, usize)>,
) {
    if text.is_empty() {
        return;
    }
    let Scratch {
        offsets,
        chars,
        flags,
        spans,
        next,
    } = scratch;
    offsets.clear();
    chars.clear();
    flags.clear();
    for (at, c) in text.char_indices() {
        offsets.push(at);
        chars.push(c);
        flags.push(unicode::flags(c));
    }
    offsets.push(text.len());
    let t = Text { chars, flags };

    spans.clear();
    spans.push((0, chars.len()));
    // Each stage maps the current pieces to finer ones, as llama.cpp's
    // regex list does.
    let mut stage = |f: &dyn Fn(&Text<'_>, Span, &mut Vec<Span>)| {
        next.clear();
        for &span in spans.iter() {
            f(&t, span, next);
        }
        std::mem::swap(spans, next);
    };
    match kind {
        PreTokenizer::Gpt2 => stage(&gpt2),
        PreTokenizer::SmolLm => {
            stage(&|t, s, out| each_single(t, s, out, is_number));
            stage(&gpt2);
        }
        PreTokenizer::Llama3 => stage(&|t, s, out| llama3(t, s, out, 3)),
        PreTokenizer::Qwen2 => stage(&|t, s, out| llama3(t, s, out, 1)),
        PreTokenizer::Default => {
            stage(&|t, s, out| runs(t, s, out, default_punct_class));
            stage(&gpt2);
            stage(&|t, s, out| runs(t, s, out, is_number));
            stage(&ascii_digit_triples);
        }
    }
    words.extend(spans.iter().map(|&(s, e)| (offsets[s], offsets[e])));
}

/// Flags of position `pos` inside the span ending at `end`; `None` outside,
/// like llama.cpp's out-of-range `unicode_cpt_flags{}` (all bits clear).
#[inline]
fn flags_at(t: &Text<'_>, pos: usize, end: usize) -> Option<u8> {
    (pos < end).then(|| t.flags[pos])
}

#[inline]
fn has(f: Option<u8>, bit: u8) -> bool {
    f.is_some_and(|f| f & bit != 0)
}

/// `[^\s\p{L}\p{N}]` for a code point inside the span.
#[inline]
fn is_other(f: Option<u8>) -> bool {
    f.is_some_and(|f| f & (WHITESPACE | LETTER | NUMBER) == 0)
}

/// Emits pieces while tracking where the previous one ended, like
/// llama.cpp's `_add_token` (empty pieces are dropped).
struct Emitter<'o> {
    out: &'o mut Vec<Span>,
    prev_end: usize,
}

impl Emitter<'_> {
    #[inline]
    fn add(&mut self, end: usize) {
        if end > self.prev_end {
            self.out.push((self.prev_end, end));
        }
        self.prev_end = end;
    }
}

/// llama.cpp's `unicode_regex_split_custom_gpt2`.
fn gpt2(t: &Text<'_>, (start, end): Span, out: &mut Vec<Span>) {
    let mut em = Emitter {
        out,
        prev_end: start,
    };
    let mut pos = start;
    while pos < end {
        let c = t.chars[pos];
        let f = t.flags[pos];

        // 's|'t|'re|'ve|'m|'ll|'d
        if c == '\'' && pos + 1 < end {
            let n = t.chars[pos + 1];
            if matches!(n, 's' | 't' | 'm' | 'd') {
                pos += 2;
                em.add(pos);
                continue;
            }
            if pos + 2 < end {
                let nn = t.chars[pos + 2];
                if matches!((n, nn), ('r', 'e') | ('v', 'e') | ('l', 'l')) {
                    pos += 3;
                    em.add(pos);
                    continue;
                }
            }
        }

        // The optional leading space of the next three alternatives.
        let space = usize::from(c == ' ');
        let f2 = if c == ' ' {
            flags_at(t, pos + 1, end)
        } else {
            Some(f)
        };
        // <space>?\p{L}+
        if has(f2, LETTER) {
            pos += space;
            while has(flags_at(t, pos, end), LETTER) {
                pos += 1;
            }
            em.add(pos);
            continue;
        }
        // <space>?\p{N}+
        if has(f2, NUMBER) {
            pos += space;
            while has(flags_at(t, pos, end), NUMBER) {
                pos += 1;
            }
            em.add(pos);
            continue;
        }
        // <space>?[^\s\p{L}\p{N}]+
        if is_other(f2) {
            pos += space;
            while is_other(flags_at(t, pos, end)) {
                pos += 1;
            }
            em.add(pos);
            continue;
        }

        let mut n_ws = 0;
        while has(flags_at(t, pos + n_ws, end), WHITESPACE) {
            n_ws += 1;
        }
        // \s+(?!\S): leave the last white space to prefix the next word.
        if n_ws > 1 && pos + n_ws < end {
            pos += n_ws - 1;
            em.add(pos);
            continue;
        }
        // \s+
        if n_ws > 0 {
            pos += n_ws;
            em.add(pos);
            continue;
        }
        // No alternative matched (unreachable for valid text, kept as the
        // same safety net llama.cpp has): emit the character alone.
        pos += 1;
        em.add(pos);
    }
}

/// llama.cpp's `unicode_regex_split_custom_llama3`, with numbers split into
/// runs of at most `max_digits` (3 for LLAMA3's `\p{N}{1,3}`, 1 for QWEN2's
/// `\p{N}`).
fn llama3(t: &Text<'_>, (start, end): Span, out: &mut Vec<Span>, max_digits: usize) {
    let mut em = Emitter {
        out,
        prev_end: start,
    };
    let chr = |pos: usize| (pos < end).then(|| t.chars[pos]);
    let mut pos = start;
    while pos < end {
        let c = t.chars[pos];
        let f = t.flags[pos];

        // (?i:'s|'t|'re|'ve|'m|'ll|'d); only ASCII letters lowercase to
        // these, so ASCII case folding equals llama.cpp's unicode_tolower.
        if c == '\'' && pos + 1 < end {
            let n = t.chars[pos + 1].to_ascii_lowercase();
            if matches!(n, 's' | 't' | 'm' | 'd') {
                pos += 2;
                em.add(pos);
                continue;
            }
            if pos + 2 < end {
                let nn = t.chars[pos + 2].to_ascii_lowercase();
                if matches!((n, nn), ('r', 'e') | ('v', 'e') | ('l', 'l')) {
                    pos += 3;
                    em.add(pos);
                    continue;
                }
            }
        }

        // [^\r\n\p{L}\p{N}]?\p{L}+
        if !(c == '\r' || c == '\n' || f & NUMBER != 0)
            && (f & LETTER != 0 || has(flags_at(t, pos + 1, end), LETTER))
        {
            pos += 1;
            while has(flags_at(t, pos, end), LETTER) {
                pos += 1;
            }
            em.add(pos);
            continue;
        }

        // \p{N}{1,max_digits}
        if f & NUMBER != 0 {
            let mut group_start = pos;
            while has(flags_at(t, pos, end), NUMBER) {
                pos += 1;
                if pos - group_start >= max_digits {
                    em.add(pos);
                    group_start = pos;
                }
            }
            em.add(pos);
            continue;
        }

        // <space>?[^\s\p{L}\p{N}]+[\r\n]*
        // llama.cpp tests "not white space/letter/number" on the flags after
        // the optional space, where past-the-end counts as such.
        let f2 = if c == ' ' {
            flags_at(t, pos + 1, end)
        } else {
            Some(f)
        };
        if f2.is_none_or(|f2| f2 & (WHITESPACE | LETTER | NUMBER) == 0) {
            pos += usize::from(c == ' ');
            while is_other(flags_at(t, pos, end)) {
                pos += 1;
            }
            while matches!(chr(pos), Some('\r' | '\n')) {
                pos += 1;
            }
            em.add(pos);
            continue;
        }

        let mut n_ws = 0;
        let mut last_newline_end = None;
        while has(flags_at(t, pos + n_ws, end), WHITESPACE) {
            if matches!(t.chars[pos + n_ws], '\r' | '\n') {
                last_newline_end = Some(pos + n_ws + 1);
            }
            n_ws += 1;
        }
        // \s*[\r\n]+
        if let Some(nl_end) = last_newline_end {
            pos = nl_end;
            em.add(pos);
            continue;
        }
        // \s+(?!\S)
        if n_ws > 1 && pos + n_ws < end {
            pos += n_ws - 1;
            em.add(pos);
            continue;
        }
        // \s+
        if n_ws > 0 {
            pos += n_ws;
            em.add(pos);
            continue;
        }
        pos += 1;
        em.add(pos);
    }
}

/// A regex that is a single character class matching one character
/// (`\p{N}`): every matching character is its own piece, and each run of
/// non-matching characters between them is one piece.
fn each_single(t: &Text<'_>, (start, end): Span, out: &mut Vec<Span>, class: fn(char, u8) -> bool) {
    let mut gap_start = start;
    for pos in start..end {
        if class(t.chars[pos], t.flags[pos]) {
            if gap_start < pos {
                out.push((gap_start, pos));
            }
            out.push((pos, pos + 1));
            gap_start = pos + 1;
        }
    }
    if gap_start < end {
        out.push((gap_start, end));
    }
}

/// A regex `[class]+`: maximal runs of matching characters and the runs of
/// non-matching characters between them.
fn runs(t: &Text<'_>, (start, end): Span, out: &mut Vec<Span>, class: fn(char, u8) -> bool) {
    let mut run_start = start;
    for pos in start + 1..end {
        if class(t.chars[pos], t.flags[pos]) != class(t.chars[pos - 1], t.flags[pos - 1]) {
            out.push((run_start, pos));
            run_start = pos;
        }
    }
    if run_start < end {
        out.push((run_start, end));
    }
}

/// The "default" kind's first regex, `[\p{P}\$\+<=>\^~\|]+`. llama.cpp runs
/// it on a collapsed text where every non-ASCII punctuation code point stands
/// for `\p{P}`, and ASCII `\p{P}` is spelled out, so this is `\p{P}` plus the
/// eight listed ASCII symbols (all ASCII punctuation and symbols but `` ` ``).
fn default_punct_class(c: char, f: u8) -> bool {
    f & PUNCT != 0 || matches!(c, '$' | '+' | '<' | '=' | '>' | '^' | '~' | '|')
}

/// `\p{N}`. (llama.cpp's collapsed text keeps ASCII as is, where only `0-9`
/// are numbers, and maps other numbers to one stand-in byte: the same set.)
fn is_number(_: char, f: u8) -> bool {
    f & NUMBER != 0
}

/// `[0-9][0-9][0-9]`: leftmost non-overlapping triples of ASCII digits.
fn ascii_digit_triples(t: &Text<'_>, (start, end): Span, out: &mut Vec<Span>) {
    let digit = |pos: usize| t.chars[pos].is_ascii_digit();
    let mut gap_start = start;
    let mut pos = start;
    while pos + 3 <= end {
        if digit(pos) && digit(pos + 1) && digit(pos + 2) {
            if gap_start < pos {
                out.push((gap_start, pos));
            }
            out.push((pos, pos + 3));
            pos += 3;
            gap_start = pos;
        } else {
            pos += 1;
        }
    }
    if gap_start < end {
        out.push((gap_start, end));
    }
}
