//! Tokenizer tests: a hand-made vocabulary for merges, pre-tokenization,
//! special tokens and decoding (always run), and llama.cpp reference
//! encodings with the real SmolLM2 vocabulary when its dump is present.

use super::pretokenize::{self, PreTokenizer};
use super::unicode::BYTE_TO_CHAR;
use super::*;

/// GGUF token-type codes used below.
const NORMAL: u8 = 1;
const CONTROL: u8 = 3;
const USER_DEFINED: u8 = 4;

/// A hand-made vocabulary: the 256 byte characters (id = byte value), then
/// `extra` normal tokens, then `specials` with their types.
struct Vocab {
    tokens: Vec<String>,
    types: Vec<u8>,
    merges: Vec<String>,
}

impl Vocab {
    fn new(extra: &[&str], merges: &[&str], specials: &[(&str, u8)]) -> Self {
        let mut tokens: Vec<String> = BYTE_TO_CHAR.iter().map(|c| c.to_string()).collect();
        let mut types = vec![NORMAL; 256];
        for t in extra {
            tokens.push((*t).to_owned());
            types.push(NORMAL);
        }
        for (t, ty) in specials {
            tokens.push((*t).to_owned());
            types.push(*ty);
        }
        Self {
            tokens,
            types,
            merges: merges.iter().map(|m| (*m).to_owned()).collect(),
        }
    }

    fn spec<'a>(&'a self, pre: &'a str) -> Vocabulary<'a> {
        Vocabulary {
            model: TokenizerModel::ByteLevelBpe,
            tokens: self.tokens.iter().map(String::as_str).collect(),
            token_types: &self.types,
            merges: self.merges.iter().map(String::as_str).collect(),
            scores: None,
            add_space_prefix: false,
            pre,
            bos: None,
            eos: None,
            add_bos: false,
        }
    }

    fn build(&self, pre: &str) -> Tokenizer {
        Tokenizer::new(self.spec(pre)).expect("valid test vocabulary")
    }
}

/// The vocabulary strings of an encoding, for readable assertions.
fn texts(tok: &Tokenizer, ids: &[u32]) -> Vec<String> {
    ids.iter()
        .map(|&id| tok.token_text(id).unwrap_or("<?>").to_owned())
        .collect()
}

/// The words a pre-tokenizer splits `text` into.
fn words(kind: PreTokenizer, text: &str) -> Vec<&str> {
    let mut spans = Vec::new();
    pretokenize::split(kind, text, &mut Default::default(), &mut spans);
    spans.iter().map(|&(s, e)| &text[s..e]).collect()
}

fn hello_vocab() -> Vocab {
    Vocab::new(
        &[
            "he", "ll", "hell", "hello", "Ġw", "or", "Ġwor", "ld", "Ġworld",
        ],
        &[
            "h e", "l l", "he ll", "hell o", "Ġ w", "o r", "Ġw or", "l d", "Ġwor ld",
        ],
        &[("<|im_start|>", CONTROL), ("<|im_end|>", CONTROL)],
    )
}

#[test]
fn merges_build_words() {
    let tok = hello_vocab().build("gpt2");
    let ids = tok.encode("hello world", false);
    assert_eq!(texts(&tok, &ids), ["hello", "Ġworld"]);
    assert_eq!(tok.decode(&ids, false), "hello world");
    assert_eq!(tok.encode("", false), Vec::<u32>::new());
}

#[test]
fn lower_rank_merges_first() {
    let bc_first = Vocab::new(&["bc", "ab"], &["b c", "a b"], &[]).build("gpt2");
    assert_eq!(
        texts(&bc_first, &bc_first.encode("abc", false)),
        ["a", "bc"]
    );
    let ab_first = Vocab::new(&["bc", "ab"], &["a b", "b c"], &[]).build("gpt2");
    assert_eq!(
        texts(&ab_first, &ab_first.encode("abc", false)),
        ["ab", "c"]
    );
}

#[test]
fn equal_ranks_merge_leftmost_first() {
    let tok = Vocab::new(&["aa"], &["a a"], &[]).build("gpt2");
    assert_eq!(texts(&tok, &tok.encode("aaa", false)), ["aa", "a"]);
    assert_eq!(texts(&tok, &tok.encode("aaaa", false)), ["aa", "aa"]);
}

#[test]
fn merges_through_strings_that_are_not_tokens() {
    // "ab" is only an intermediate: llama.cpp merges by string, so "abc"
    // is still reached; a lone "ab" falls back to one-byte tokens.
    let tok = Vocab::new(&["abc"], &["a b", "ab c"], &[]).build("gpt2");
    assert_eq!(texts(&tok, &tok.encode("abc", false)), ["abc"]);
    assert_eq!(texts(&tok, &tok.encode("ab", false)), ["a", "b"]);
}

#[test]
fn llama3_uses_whole_word_tokens_before_merging() {
    let vocab = Vocab::new(&["bc", "abc"], &["b c"], &[]);
    let gpt2 = vocab.build("gpt2");
    assert_eq!(texts(&gpt2, &gpt2.encode("abc", false)), ["a", "bc"]);
    let llama3 = vocab.build("llama3");
    assert_eq!(texts(&llama3, &llama3.encode("abc", false)), ["abc"]);
}

#[test]
fn bytes_without_tokens_are_dropped_like_llama_cpp() {
    // Drop the token for byte 0x04, as SmolLM2's vocabulary lacks it.
    let mut vocab = Vocab::new(&[], &[], &[]);
    vocab.tokens[4] = "<unused-slot>".to_owned();
    let tok = vocab.build("smollm");
    assert_eq!(texts(&tok, &tok.encode("a\u{4}b", false)), ["a", "b"]);
}

#[test]
fn special_tokens_need_parse_special() {
    let tok = hello_vocab().build("gpt2");
    let start = tok.id_of("<|im_start|>").unwrap();
    let end = tok.id_of("<|im_end|>").unwrap();
    let hello = tok.id_of("hello").unwrap();
    let text = "<|im_start|>hello<|im_end|>";
    assert_eq!(tok.encode(text, true), [start, hello, end]);

    let plain = tok.encode(text, false);
    assert!(!plain.contains(&start) && !plain.contains(&end));
    assert_eq!(tok.decode(&plain, false), text);

    assert!(tok.is_special(start));
    assert!(!tok.is_special(hello));
    assert!(!tok.is_special(u32::MAX));
    assert_eq!(tok.token_type(start), Some(TokenType::Control));
    // Control tokens render only when asked to.
    assert_eq!(tok.decode(&[start, hello, end], false), "hello");
    assert_eq!(tok.decode(&[start, hello, end], true), text);
    assert_eq!(tok.token_bytes(start), b"<|im_start|>");
}

#[test]
fn user_defined_tokens_always_match_and_render() {
    let tok = Vocab::new(&[], &[], &[("<tool>", USER_DEFINED)]).build("gpt2");
    let id = tok.id_of("<tool>").unwrap();
    assert_eq!(
        tok.encode("a<tool>b", false),
        [u32::from(b'a'), id, u32::from(b'b')]
    );
    assert_eq!(tok.decode(&[id], false), "<tool>");
}

#[test]
fn longer_special_tokens_claim_text_first() {
    // llama.cpp cuts "BCD" out before looking for the shorter "AB", even
    // though "AB" starts earlier.
    let tok = Vocab::new(&[], &[], &[("AB", USER_DEFINED), ("BCD", USER_DEFINED)]).build("gpt2");
    let bcd = tok.id_of("BCD").unwrap();
    assert_eq!(tok.encode("ABCD", true), [u32::from(b'A'), bcd]);
}

#[test]
fn eog_texts_are_control_tokens() {
    let tok = Vocab::new(&[], &[], &[("<|endoftext|>", NORMAL)]).build("gpt2");
    let id = tok.id_of("<|endoftext|>").unwrap();
    assert_eq!(tok.token_type(id), Some(TokenType::Control));
    assert_eq!(tok.encode("x<|endoftext|>", true), [u32::from(b'x'), id]);
}

#[test]
fn bos_is_prepended_when_asked() {
    let vocab = hello_vocab();
    let bos = vocab
        .tokens
        .iter()
        .position(|t| t == "<|im_start|>")
        .unwrap() as u32;
    let tok = Tokenizer::new(Vocabulary {
        bos: Some(bos),
        add_bos: true,
        ..vocab.spec("gpt2")
    })
    .unwrap();
    assert_eq!(tok.encode("", false), [bos]);
    assert_eq!(tok.encode("hello", false).first(), Some(&bos));
    assert_eq!(tok.bos(), Some(bos));
    assert!(tok.add_bos());
}

#[test]
fn invalid_specs_are_rejected() {
    let vocab = hello_vocab();
    let err = |spec| Tokenizer::new(spec).unwrap_err();
    assert_eq!(
        err(vocab.spec("qwen35")),
        TokenizerError::UnknownPreTokenizer("qwen35".into())
    );
    for bad in ["ab", "a ", " ", ""] {
        let merges = vec!["h e", bad];
        assert_eq!(
            err(Vocabulary {
                merges,
                ..vocab.spec("gpt2")
            }),
            TokenizerError::MalformedMerge {
                index: 1,
                merge: bad.into()
            }
        );
    }
    assert!(matches!(
        err(Vocabulary {
            token_types: &[1, 1],
            ..vocab.spec("gpt2")
        }),
        TokenizerError::TokenTypeCount { .. }
    ));
    assert!(matches!(
        err(Vocabulary {
            eos: Some(1_000_000),
            ..vocab.spec("gpt2")
        }),
        TokenizerError::SpecialIdOutOfRange { role: "eos", .. }
    ));
    assert_eq!(
        err(Vocabulary {
            add_bos: true,
            ..vocab.spec("gpt2")
        }),
        TokenizerError::MissingBos
    );
    // A merge whose left half starts with a space is still split after it.
    let tok = Tokenizer::new(Vocabulary {
        merges: vec!["  x"],
        ..vocab.spec("gpt2")
    });
    assert!(tok.is_ok());
}

#[test]
fn pre_tokenizer_names() {
    assert_eq!(
        PreTokenizer::from_name("smollm"),
        Some(PreTokenizer::SmolLm)
    );
    assert_eq!(PreTokenizer::from_name("gpt-2"), Some(PreTokenizer::Gpt2));
    assert_eq!(
        PreTokenizer::from_name("llama-bpe"),
        Some(PreTokenizer::Llama3)
    );
    assert_eq!(
        PreTokenizer::from_name("default"),
        Some(PreTokenizer::Default)
    );
    assert_eq!(PreTokenizer::from_name("qwen2"), Some(PreTokenizer::Qwen2));
    assert_eq!(
        PreTokenizer::from_name("deepseek-r1-qwen"),
        Some(PreTokenizer::Qwen2)
    );
    assert_eq!(PreTokenizer::from_name(""), None);
}

#[test]
fn gpt2_split() {
    assert_eq!(
        words(PreTokenizer::Gpt2, "Hello world's  test   "),
        ["Hello", " world", "'s", " ", " test", "   "]
    );
    assert_eq!(
        words(PreTokenizer::Gpt2, "a 12 3.5 (x) 'x 'LL"),
        [
            "a", " 12", " 3", ".", "5", " (", "x", ")", " '", "x", " '", "LL"
        ]
    );
    assert_eq!(
        words(PreTokenizer::Gpt2, "\n\n  x\t"),
        ["\n\n ", " x", "\t"]
    );
    assert_eq!(words(PreTokenizer::Gpt2, "café naïve"), ["café", " naïve"]);
}

#[test]
fn smollm_split_digits_then_gpt2() {
    // The digit split comes first, so the space before "1" ends its piece
    // and becomes a word of its own.
    assert_eq!(
        words(PreTokenizer::SmolLm, "abc 123 x"),
        ["abc", " ", "1", "2", "3", " x"]
    );
    assert_eq!(words(PreTokenizer::SmolLm, "3.14"), ["3", ".", "1", "4"]);
    assert_eq!(words(PreTokenizer::SmolLm, "x²"), ["x", "²"]);
}

#[test]
fn llama3_split() {
    assert_eq!(
        words(PreTokenizer::Llama3, "Hello  world\n\n  x 12345 don'T"),
        [
            "Hello", " ", " world", "\n\n", " ", " x", " ", "123", "45", " don", "'T"
        ]
    );
    assert_eq!(
        words(PreTokenizer::Llama3, "a+b;\n\nc  "),
        ["a", "+b", ";\n\n", "c", "  "]
    );
}

#[test]
fn qwen2_split_is_llama3_with_single_digits() {
    assert_eq!(
        words(PreTokenizer::Qwen2, "Hello  world\n\n  x 12345 don'T"),
        [
            "Hello", " ", " world", "\n\n", " ", " x", " ", "1", "2", "3", "4", "5", " don", "'T"
        ]
    );
    assert_eq!(
        words(PreTokenizer::Qwen2, "a+b;\n\nc  "),
        ["a", "+b", ";\n\n", "c", "  "]
    );
    // Every number code point is its own word, ASCII or not; a space before
    // a number stays a word of its own.
    assert_eq!(
        words(PreTokenizer::Qwen2, "x²3 ½ v1.25"),
        ["x", "²", "3", " ", "½", " v", "1", ".", "2", "5"]
    );
    // Contractions match in either case; `\s*[\r\n]+` ends at the last
    // line break of a white-space run; a lone trailing space is its own word.
    assert_eq!(
        words(PreTokenizer::Qwen2, "I'M HE'LL it's  \r\n \n\tz !\n\n "),
        [
            "I",
            "'M",
            " HE",
            "'LL",
            " it",
            "'s",
            "  \r\n \n",
            "\tz",
            " !\n\n",
            " "
        ]
    );
    assert_eq!(words(PreTokenizer::Qwen2, "中文 café"), ["中文", " café"]);
}

#[test]
fn qwen2_applies_merges_to_whole_word_tokens() {
    // Unlike llama3 (`ignore_merges`), a word that is itself a token is
    // still built by the merges.
    let vocab = Vocab::new(&["bc", "abc"], &["b c"], &[]);
    let qwen2 = vocab.build("qwen2");
    assert_eq!(qwen2.pre_tokenizer(), PreTokenizer::Qwen2);
    assert_eq!(texts(&qwen2, &qwen2.encode("abc", false)), ["a", "bc"]);
    // Digits never merge across the split.
    let digits = Vocab::new(&["12"], &["1 2"], &[]);
    let qwen2 = digits.build("qwen2");
    assert_eq!(texts(&qwen2, &qwen2.encode("12", false)), ["1", "2"]);
    let llama3 = digits.build("llama3");
    assert_eq!(texts(&llama3, &llama3.encode("12", false)), ["12"]);
}

#[test]
fn default_split() {
    assert_eq!(
        words(PreTokenizer::Default, "a+b=12345!! `x`"),
        ["a", "+", "b", "=", "123", "45", "!!", " `", "x", "`"]
    );
}

/// A deterministic pseudo-random text built from awkward pieces.
fn awkward_text(seed: &mut u64) -> String {
    const PIECES: &[&str] = &[
        "a",
        "Z",
        "é",
        "中",
        "😀",
        " ",
        "  ",
        "\n",
        "\r\n",
        "\t",
        "'s",
        "'LL",
        "'",
        "1",
        "234",
        "²",
        "!",
        "...",
        "$",
        "`",
        "\u{a0}",
        "\u{3000}",
        "\u{301}",
        "<|im_start|>",
        "<|im",
        "\u{0}",
        "\u{7f}",
        "\u{10ffff}",
        "hello",
        " world",
        "Ġ",
    ];
    let mut s = String::new();
    let len = (*seed % 24) as usize;
    for _ in 0..len {
        // xorshift64
        *seed ^= *seed << 13;
        *seed ^= *seed >> 7;
        *seed ^= *seed << 17;
        s.push_str(PIECES[(*seed % PIECES.len() as u64) as usize]);
    }
    s
}

#[test]
fn round_trips_awkward_text_with_every_pre_tokenizer() {
    let vocab = hello_vocab();
    for pre in ["gpt2", "default", "llama3", "smollm", "qwen2"] {
        let tok = vocab.build(pre);
        let mut seed = 0x9E37_79B9_7F4A_7C15;
        for _ in 0..2000 {
            let text = awkward_text(&mut seed);
            let ids = tok.encode(&text, true);
            assert_eq!(tok.decode(&ids, true), text, "{pre}: {text:?} -> {ids:?}");
            let plain = tok.encode(&text, false);
            assert_eq!(tok.decode(&plain, true), text, "{pre}: {text:?}");
            // Words partition the text exactly.
            let kind = PreTokenizer::from_name(pre).unwrap();
            assert_eq!(words(kind, &text).concat(), text);
        }
    }
}

#[test]
fn stream_decoder_holds_back_split_characters() {
    let tok = hello_vocab().build("gpt2");
    let mut dec = StreamDecoder::new(false);
    let emoji = "😀".as_bytes();
    let mut got = Vec::new();
    for &b in emoji {
        got.push(dec.push(&tok, u32::from(b)).to_owned());
    }
    assert_eq!(got, ["", "", "", "😀"]);
    assert!(!dec.has_pending());
    let hello = tok.id_of("hello").unwrap();
    assert_eq!(dec.push(&tok, hello), "hello");
    assert_eq!(dec.flush(), "");

    // A dangling start of a character becomes U+FFFD at the end.
    assert_eq!(dec.push(&tok, u32::from(emoji[0])), "");
    assert!(dec.has_pending());
    assert_eq!(dec.flush(), "\u{FFFD}");

    // Bytes that can never be valid are replaced at once, and the stream
    // equals the lossy decoding of all bytes.
    let bytes = b"a\xff\xe2\x82b\xf0\x9f";
    let mut streamed = String::new();
    for &b in bytes {
        streamed.push_str(dec.push_bytes(&[b]));
    }
    streamed.push_str(dec.flush());
    assert_eq!(streamed, String::from_utf8_lossy(bytes));

    // Control tokens are skipped unless rendering is asked for.
    let start = tok.id_of("<|im_start|>").unwrap();
    assert_eq!(dec.push(&tok, start), "");
    assert_eq!(StreamDecoder::new(true).push(&tok, start), "<|im_start|>");
    assert_eq!(dec.push(&tok, u32::MAX), "");
}

// ---------------------------------------------------------------------------
// The real SmolLM2 vocabulary, from the packed default model (fetched if missing, as
// CI does before the tests; no network and no cache is a failure, not a skip).

/// The tokenizer of the packed default model.
fn smollm2() -> Tokenizer {
    let path = glint_quantize::default_model(|m| eprintln!("{m}"))
        .expect("the default model (run `cargo run --release -p glint-quantize -- fetch`)");
    let file = glint_format::LoadedGlint::open(&path).expect("open the default model");
    Tokenizer::new(Vocabulary::from_file(file.file())).expect("SmolLM2 vocabulary builds")
}

/// `llama-tokenize` output for SmolLM2 (parse_special = true, no BOS).
const SMOLLM2_REFERENCE: &[(&str, &[u32])] = &[
    ("Hello, world!", &[19556, 28, 905, 17]),
    (
        "What's the weather like in Menlo Park today?",
        &[1780, 506, 260, 3947, 702, 281, 8386, 5365, 4173, 1834, 47],
    ),
    (
        "   leading spaces and trailing   ",
        &[256, 2899, 5600, 284, 35079, 333],
    ),
    (
        "numbers 1234567 and 3.14159",
        &[
            28707, 216, 33, 34, 35, 36, 37, 38, 39, 284, 216, 35, 30, 33, 36, 33, 37, 41,
        ],
    ),
    (
        "emoji 😀 and accents café naïve",
        &[391, 33777, 40303, 218, 284, 31620, 37366, 15486, 46494],
    ),
    ("<|im_start|>user\nHi<|im_end|>", &[1, 4093, 198, 26843, 2]),
    (
        "Code: fn main() { println!(\"hi\"); }",
        &[
            15832, 42, 24526, 1085, 1000, 1662, 1628, 34115, 17, 1470, 6004, 21646, 4029,
        ],
    ),
    (
        "line1\nline2\r\nline3",
        &[1311, 33, 198, 1311, 34, 201, 198, 1311, 35],
    ),
    ("", &[]),
    (
        "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n",
        &[
            1, 9690, 198, 2683, 359, 253, 5356, 5646, 11173, 3365, 3511, 308, 34519, 28, 7018, 411,
            407, 19712, 8182, 2, 198, 1, 4093, 198, 1780, 314, 260, 3575, 282, 4649, 47, 2, 198, 1,
            520, 9531, 198,
        ],
    ),
];

#[test]
fn smollm2_matches_llama_cpp() {
    let tok = smollm2();
    assert!(format!("{tok:?}").len() < 200);
    assert_eq!(tok.vocab_size(), 49152);
    assert_eq!(tok.pre_tokenizer(), PreTokenizer::SmolLm);
    assert_eq!(tok.eos(), Some(2));
    for &(text, expected) in SMOLLM2_REFERENCE {
        let ids = tok.encode(text, true);
        assert_eq!(ids, expected, "encoding {text:?}");
        assert_eq!(tok.decode(&ids, true), text, "round trip of {text:?}");
    }
    assert_eq!(tok.id_of("<|im_start|>"), Some(1));
    assert!(tok.is_special(1) && !tok.is_special(19556));
    assert_eq!(tok.token_bytes(19556), b"Hello");
}

#[test]
fn smollm2_stream_decodes_emoji_byte_tokens() {
    let tok = smollm2();
    // "😀" as its four byte tokens.
    let ids: Vec<u32> = "😀"
        .bytes()
        .map(|b| {
            tok.id_of(&BYTE_TO_CHAR[b as usize].to_string())
                .expect("byte token")
        })
        .collect();
    let mut dec = StreamDecoder::new(false);
    let out: Vec<String> = ids
        .iter()
        .map(|&id| dec.push(&tok, id).to_owned())
        .collect();
    assert_eq!(out, ["", "", "", "😀"]);

    // And as the model's own tokens, interleaved with text.
    let text = "emoji 😀 and accents café naïve";
    let mut streamed = String::new();
    for id in tok.encode(text, false) {
        let piece = dec.push(&tok, id);
        assert!(!piece.contains('\u{FFFD}'));
        streamed.push_str(piece);
    }
    streamed.push_str(dec.flush());
    assert_eq!(streamed, text);
}

#[test]
fn smollm2_never_panics_on_awkward_text() {
    let tok = smollm2();
    let mut seed = 0x2545_F491_4F6C_DD1D;
    for _ in 0..500 {
        let text = awkward_text(&mut seed);
        let ids = tok.encode(&text, true);
        assert!(ids.iter().all(|&id| (id as usize) < tok.vocab_size()));
        // SmolLM2 lacks tokens only for bytes 0x04, 0x06, 0x13, 0x14, 0x16,
        // 0x1D (and bytes UTF-8 never uses), none of which occur here.
        assert_eq!(tok.decode(&ids, true), text);
    }
}
