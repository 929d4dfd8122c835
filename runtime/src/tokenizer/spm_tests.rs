//! SentencePiece tests: exact ids against the `sentencepiece` library on a
//! tiny byte-fallback BPE model (`testdata/spm-tiny.json`), decode round
//! trips, special-token splitting and hand-made edge cases.
//!
//! The fixture's model uses Llama 2's settings: `identity` normalization
//! without `remove_extra_whitespaces`, so sentencepiece applies no NFKC or
//! whitespace collapsing, which llama.cpp (and this tokenizer) never do; a
//! model trained with the default `nmt_nfkc` rule would disagree on e.g.
//! U+00A0, full-width forms, ligatures and runs of spaces. The fixture's
//! strings are encoded without special-token parsing, as `sp.encode` does.
//!
//! Regenerate the fixture from the repository root with `pip install
//! sentencepiece` (0.2.x) and this script:
//!
//! ```python
//! # Regenerates runtime/src/tokenizer/testdata/spm-tiny.json (sentencepiece 0.2.x).
//! import io, json, sentencepiece as spm
//!
//! TRAIN = """The quick brown fox jumps over the lazy dog.
//! Smart glasses show the time, the weather and a short answer.
//! She said: "Hello, world!" and then asked, 'Is it 10:45 or 11:30?'
//! Prices rose 3.5% in 2023; the index closed at 4,127.89 points.
//! Caf\u00e9 owners in S\u00e3o Paulo serve cr\u00e8me br\u00fbl\u00e9e and pi\u00f1a coladas.
//! The na\u00efve r\u00e9sum\u00e9 listed a d\u00e9j\u00e0 vu experience at the \u00fcber startup.
//! Z\u00fcrich, K\u00f8benhavn and Malm\u00f6 are cities in Europe.
//! Emoji are fun \U0001F600 and so are hearts \u2764 and stars \u2b50.
//! Read the manual (pages 12-19) before you start the engine.
//! Tokenizers split text into pieces: words, sub-words and bytes.
//! In the beginning there was nothing, then there was light.
//! Remember: never share your password with anyone, ever.
//! A tab\tseparated\tline and some    extra   spaces here.
//! The runtime streams tokens to the display as they are generated.
//! What time is it? It is twenty past nine in the morning.
//! Numbers like 0, 1, 2, 3, 4, 5, 6, 7, 8 and 9 appear often.
//! The weather today is sunny with a high of 24 degrees.
//! He walked into the room, looked around and sat down quietly.
//! They were talking about the new model and its small memory use.
//! Good morning! How are you doing today? I am doing well, thanks.
//! """
//!
//! CASES = [
//!     "Hello world",
//!     " leading space",
//!     "trailing space ",
//!     "multiple   spaces  inside",
//!     "   ",
//!     " ",
//!     "line one\nline two\n",
//!     "\n\nstarts with newlines",
//!     "tabs\tand\ttabs",
//!     "Digits 12345 and 3.14159",
//!     "Caf\u00e9 d\u00e9j\u00e0 vu, na\u00efve fa\u00e7ade",
//!     "emoji \U0001F980 and \U0001F389 are not in the vocabulary",
//!     "known emoji \U0001F600 here",
//!     "\u65e5\u672c\u8a9e\u306e\u30c6\u30ad\u30b9\u30c8",
//!     "Punctuation!? (yes): \"quoted\" 'single' \u2014 dash",
//!     "MiXeD CaSe: ThE QuIcK bRoWn FoX",
//!     "a <s> b </s> <unk> c",
//!     "already\u2581escaped\u2581spaces",
//!     "x",
//!     "the the the the",
//! ]
//!
//! model = io.BytesIO()
//! spm.SentencePieceTrainer.train(
//!     sentence_iterator=iter(TRAIN.splitlines()), model_writer=model,
//!     model_type="bpe", vocab_size=500, byte_fallback=True, split_digits=True,
//!     add_dummy_prefix=True, remove_extra_whitespaces=False,
//!     normalization_rule_name="identity", allow_whitespace_only_pieces=True,
//!     character_coverage=1.0, hard_vocab_limit=False, num_threads=1,
//!     unk_id=0, bos_id=1, eos_id=2, pad_id=-1, minloglevel=2)
//! sp = spm.SentencePieceProcessor(model_proto=model.getvalue())
//! n = sp.get_piece_size()
//! pieces = [sp.id_to_piece(i) for i in range(n)]
//!
//! def ty(i):  # llama.cpp / GGUF token types
//!     if sp.is_unknown(i): return 2
//!     if sp.is_control(i): return 3
//!     if sp.is_unused(i): return 5
//!     if sp.is_byte(i): return 6
//!     return 1
//!
//! # The merges a Hugging Face tokenizer.json would carry (transformers'
//! # SentencePieceExtractor with vocab scores), for the score-less import path.
//! vocab = {p: i for i, p in enumerate(pieces)}
//! merges = []
//! for i, p in enumerate(pieces):
//!     local = [(p[:k], p[k:]) for k in range(1, len(p)) if p[:k] in vocab and p[k:] in vocab]
//!     local.sort(key=lambda m: (vocab[m[0]], vocab[m[1]]))
//!     merges += [(sp.get_score(i), l, r) for l, r in local]
//! merges.sort(key=lambda m: m[0], reverse=True)
//!
//! fixture = {
//!     "pieces": pieces,
//!     "scores": [sp.get_score(i) for i in range(n)],
//!     "types": [ty(i) for i in range(n)],
//!     "merges": [f"{l} {r}" for _, l, r in merges],
//!     "add_space_prefix": True,
//!     "cases": [{"text": t, "ids": sp.encode(t)} for t in CASES],
//! }
//! with open("runtime/src/tokenizer/testdata/spm-tiny.json", "w", encoding="utf-8") as f:
//!     json.dump(fixture, f, ensure_ascii=False, separators=(",", ":"))
//!     f.write("\n")
//! ```

use super::*;

const FIXTURE: &str = include_str!("testdata/spm-tiny.json");

/// GGUF type codes used by the hand-made vocabularies.
const NORMAL: u8 = 1;
const UNKNOWN: u8 = 2;
const CONTROL: u8 = 3;
const BYTE: u8 = 6;
/// Ids of the fixture's control tokens.
const BOS: u32 = 1;
const EOS: u32 = 2;

struct Fixture {
    pieces: Vec<String>,
    scores: Vec<f32>,
    types: Vec<u8>,
    merges: Vec<String>,
    cases: Vec<(String, Vec<u32>)>,
}

fn fixture() -> Fixture {
    let v: serde_json::Value = serde_json::from_str(FIXTURE).expect("valid fixture JSON");
    let list = |key: &str| v[key].as_array().expect("array").clone();
    let strings = |key: &str| -> Vec<String> {
        list(key)
            .iter()
            .map(|s| s.as_str().expect("string").to_owned())
            .collect()
    };
    let ids = |v: &serde_json::Value| -> Vec<u32> {
        v.as_array()
            .expect("array")
            .iter()
            .map(|n| u32::try_from(n.as_u64().expect("id")).expect("u32"))
            .collect()
    };
    Fixture {
        pieces: strings("pieces"),
        scores: list("scores")
            .iter()
            .map(|s| s.as_f64().expect("score") as f32)
            .collect(),
        types: ids(&v["types"]).into_iter().map(|t| t as u8).collect(),
        merges: strings("merges"),
        cases: list("cases")
            .iter()
            .map(|c| (c["text"].as_str().expect("text").to_owned(), ids(&c["ids"])))
            .collect(),
    }
}

impl Fixture {
    /// The tokenizer with the file's scores, or (`with_scores == false`)
    /// with priorities derived from the merges, as a Hugging Face import.
    fn build(&self, with_scores: bool, add_space_prefix: bool) -> Tokenizer {
        Tokenizer::new(Vocabulary {
            model: TokenizerModel::SentencePiece,
            tokens: self.pieces.iter().map(String::as_str).collect(),
            token_types: &self.types,
            merges: self.merges.iter().map(String::as_str).collect(),
            scores: with_scores.then(|| self.scores.clone()),
            add_space_prefix,
            pre: "default",
            bos: Some(BOS),
            eos: Some(EOS),
            add_bos: false,
        })
        .expect("fixture vocabulary builds")
    }
}

/// The vocabulary strings of an encoding, for readable assertions.
fn texts(tok: &Tokenizer, ids: &[u32]) -> Vec<String> {
    ids.iter()
        .map(|&id| tok.token_text(id).unwrap_or("<?>").to_owned())
        .collect()
}

#[test]
fn fixture_is_what_the_tests_assume() {
    let fx = fixture();
    assert_eq!(fx.pieces.len(), fx.scores.len());
    assert_eq!(fx.pieces.len(), fx.types.len());
    assert_eq!(fx.pieces[..3], ["<unk>", "<s>", "</s>"]);
    assert_eq!(fx.types[..3], [UNKNOWN, CONTROL, CONTROL]);
    assert_eq!(fx.pieces[3 + 0x41], "<0x41>");
    assert!(fx.types[3..259].iter().all(|&t| t == BYTE));
    assert!(fx.cases.len() >= 15);
}

#[test]
fn encodes_like_sentencepiece() {
    let fx = fixture();
    let tok = fx.build(true, true);
    assert_eq!(tok.model(), TokenizerModel::SentencePiece);
    assert!(tok.add_space_prefix());
    for (text, want) in &fx.cases {
        let got = tok.encode(text, false);
        assert_eq!(
            got,
            *want,
            "{text:?}: got {:?}, want {:?}",
            texts(&tok, &got),
            texts(&tok, want)
        );
        // Without special-token text in it, parsing specials changes nothing.
        if !text.contains('<') {
            assert_eq!(tok.encode(text, true), *want, "{text:?} (parse_special)");
        }
    }
    assert_eq!(tok.encode("", true), Vec::<u32>::new());
}

#[test]
fn merge_derived_priorities_encode_the_same() {
    // A Hugging Face `tokenizer.json` import has merges but no scores.
    let fx = fixture();
    let tok = fx.build(false, true);
    for (text, want) in &fx.cases {
        let got = tok.encode(text, false);
        assert_eq!(
            got,
            *want,
            "{text:?}: got {:?}, want {:?}",
            texts(&tok, &got),
            texts(&tok, want)
        );
    }
}

#[test]
fn decoding_round_trips_with_the_space_prefix() {
    let fx = fixture();
    let tok = fx.build(true, true);
    for (text, ids) in &fx.cases {
        let want = format!(" {text}").replace('\u{2581}', " ");
        assert_eq!(tok.decode(ids, false), want, "{text:?}");
        // Byte tokens reassemble multi-byte characters in the stream.
        let mut stream = StreamDecoder::new(false);
        let mut streamed = String::new();
        for &id in ids {
            streamed.push_str(stream.push(&tok, id));
        }
        streamed.push_str(stream.flush());
        assert_eq!(streamed, want, "{text:?} (streamed)");
    }
}

#[test]
fn pieces_render_spaces_bytes_and_controls() {
    let tok = fixture().build(true, true);
    let id = |t: &str| tok.id_of(t).unwrap_or_else(|| panic!("{t:?} is a token"));
    assert_eq!(tok.piece(id("\u{2581}the"), false), b" the");
    assert_eq!(tok.piece(id("<0x0A>"), false), b"\n");
    assert_eq!(tok.piece(id("<0xF0>"), false), [0xF0]);
    assert_eq!(tok.piece(BOS, false), b"");
    assert_eq!(tok.piece(BOS, true), b"<s>");
    assert_eq!(tok.piece(EOS, true), b"</s>");
    assert_eq!(tok.piece(0, false), b"");
    assert_eq!(tok.piece(0, true), b"<unk>");
    assert_eq!(
        tok.decode(&[BOS, id("\u{2581}the"), EOS], true),
        "<s> the</s>"
    );
}

#[test]
fn special_tokens_split_and_restart_the_space_prefix() {
    let tok = fixture().build(true, true);
    let enc = |s: &str| tok.encode(s, true);
    let cat = |parts: &[&[u32]]| parts.concat();
    // After a special token the next fragment is prefixed again, as at the
    // start of the text.
    assert_eq!(enc("<s>Hello world"), cat(&[&[BOS], &enc("Hello world")]));
    assert_eq!(
        enc("Hello</s> the world"),
        cat(&[&enc("Hello"), &[EOS], &enc(" the world")])
    );
    assert_eq!(enc("<s></s>"), [BOS, EOS]);
    assert_eq!(enc("x<unk>"), cat(&[&enc("x"), &[0]]));
    // Without parse_special they are plain text.
    assert!(!tok.encode("<s>x", false).contains(&BOS));
}

#[test]
fn no_space_prefix_when_the_vocabulary_says_so() {
    let tok = fixture().build(true, false);
    assert!(!tok.add_space_prefix());
    let ids = tok.encode("Hello world", false);
    assert_eq!(
        texts(&tok, &ids),
        ["H", "el", "lo", "\u{2581}w", "or", "ld"]
    );
    assert_eq!(tok.decode(&ids, false), "Hello world");
    assert_eq!(
        tok.encode("<s>the", true),
        [BOS, tok.id_of("t").unwrap(), tok.id_of("he").unwrap()]
    );
}

/// A hand-made SentencePiece vocabulary with the given scores; no byte tokens.
fn hand_made(pieces: &[(&str, f32, u8)]) -> Tokenizer {
    let tokens: Vec<&str> = pieces.iter().map(|p| p.0).collect();
    let types: Vec<u8> = pieces.iter().map(|p| p.2).collect();
    Tokenizer::new(Vocabulary {
        model: TokenizerModel::SentencePiece,
        tokens,
        token_types: &types,
        merges: Vec::new(),
        scores: Some(pieces.iter().map(|p| p.1).collect()),
        add_space_prefix: false,
        pre: "llama",
        bos: None,
        eos: None,
        add_bos: false,
    })
    .expect("valid vocabulary")
}

#[test]
fn highest_score_merges_first_and_ties_go_leftmost() {
    let abc = |ab: f32, bc: f32| {
        hand_made(&[
            ("a", 0.0, NORMAL),
            ("b", 0.0, NORMAL),
            ("c", 0.0, NORMAL),
            ("ab", ab, NORMAL),
            ("bc", bc, NORMAL),
        ])
    };
    let tok = abc(-2.0, -1.0);
    assert_eq!(texts(&tok, &tok.encode("abc", false)), ["a", "bc"]);
    let tok = abc(-1.0, -2.0);
    assert_eq!(texts(&tok, &tok.encode("abc", false)), ["ab", "c"]);
    // Equal scores, including -0.0 against 0.0: leftmost first.
    let tok = abc(0.0, -0.0);
    assert_eq!(texts(&tok, &tok.encode("abc", false)), ["ab", "c"]);
    let tok = abc(-0.0, 0.0);
    assert_eq!(texts(&tok, &tok.encode("abc", false)), ["ab", "c"]);
    let tok = hand_made(&[("a", 0.0, NORMAL), ("aa", -1.0, NORMAL)]);
    assert_eq!(texts(&tok, &tok.encode("aaaaa", false)), ["aa", "aa", "a"]);
}

#[test]
fn bytes_without_a_token_become_unknown_or_vanish() {
    let with_unk = hand_made(&[("<unk>", 0.0, UNKNOWN), ("a", 0.0, NORMAL)]);
    assert_eq!(with_unk.encode("aé", false), [1, 0, 0]);
    let without = hand_made(&[("a", 0.0, NORMAL), ("b", 0.0, NORMAL)]);
    assert_eq!(without.encode("aéb", false), [0, 1]);
}

#[test]
fn invalid_sentencepiece_specs_are_rejected() {
    let spec = |scores: Option<Vec<f32>>, merges: Vec<&'static str>| Vocabulary {
        model: TokenizerModel::SentencePiece,
        tokens: vec!["a", "b", "ab"],
        token_types: &[],
        merges,
        scores,
        add_space_prefix: true,
        pre: "",
        bos: None,
        eos: None,
        add_bos: false,
    };
    assert_eq!(
        Tokenizer::new(spec(Some(vec![0.0; 2]), vec![])).unwrap_err(),
        TokenizerError::ScoreCount {
            tokens: 3,
            scores: 2
        }
    );
    assert!(matches!(
        Tokenizer::new(spec(None, vec!["ab"])).unwrap_err(),
        TokenizerError::MalformedMerge { index: 0, .. }
    ));
    // Merges are not parsed when scores are given.
    assert!(Tokenizer::new(spec(Some(vec![0.0; 3]), vec!["ab"])).is_ok());
    // No scores and no merges: every token scores 0.
    let tok = Tokenizer::new(spec(None, vec![])).unwrap();
    // "▁" has no token and no byte tokens exist: dropped.
    assert_eq!(tok.encode("ab", false), [2]);
}
