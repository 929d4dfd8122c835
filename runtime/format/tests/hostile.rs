//! Valid tiny files round-trip; hostile files each yield their typed error, never a panic.

use glint_format::quant::quantize;
use glint_format::*;

fn tiny_config() -> ModelConfig {
    ModelConfig {
        arch: Arch::Llama,
        dim: 64,
        n_layers: 2,
        n_heads: 4,
        n_kv_heads: 2,
        head_dim: 16,
        ffn_dim: 128,
        vocab_size: 260,
        context_len: 128,
        rope_theta: 10000.0,
        norm_eps: 1e-5,
        rope_style: RopeStyle::Interleaved,
        rope_scaling: Some(RopeScaling {
            factor: 8.0,
            low_freq_factor: 1.0,
            high_freq_factor: 4.0,
            original_context: 64,
        }),
        tied_embeddings: true,
        qkv_bias: false,
        bos: Some(256),
        eos: Some(257),
        pad: None,
        eot: Some(257),
        sampling: None,
    }
}

fn tiny_meta(config: ModelConfig) -> FileMeta {
    let mut tokens: Vec<String> = (0..256).map(|b| format!("<0x{b:02X}>")).collect();
    tokens.extend(["<s>", "</s>", "zzqq", "ab"].map(String::from));
    FileMeta {
        config,
        tokenizer: TokenizerSpec {
            model: TokenizerModel::ByteLevelBpe,
            add_bos: false,
            add_eos: false,
            add_space_prefix: false,
            pre: "smollm".into(),
            token_types: tokens
                .iter()
                .enumerate()
                .map(|(i, _)| if i == 256 || i == 257 { 3 } else { 1 })
                .collect(),
            tokens,
            scores: None,
            merges: vec!["a b".into()],
        },
        chat_template: "{{ messages }}".into(),
        provenance: vec![
            ("source".into(), "test".into()),
            ("scheme".into(), "q4g32a".into()),
        ],
    }
}

fn tiny_tensors(c: &ModelConfig) -> Vec<TensorOut> {
    expected_llama_tensors(c)
        .into_iter()
        .enumerate()
        .map(|(i, (name, shape))| {
            let n: u64 = shape.iter().product();
            let data: Vec<f32> = (0..n)
                .map(|j| ((j as f32 + i as f32) * 0.37).sin())
                .collect();
            let dtype = if shape.len() == 1 {
                DType::F32
            } else {
                DType::Q4G32A
            };
            TensorOut {
                name,
                dtype,
                shape,
                bytes: quantize(dtype, &data),
            }
        })
        .collect()
}

fn tiny_file() -> Vec<u8> {
    let c = tiny_config();
    let mut out = Vec::new();
    write_glint(&mut out, &tiny_meta(c), &tiny_tensors(&c)).unwrap();
    out
}

fn table_entry(bytes: &[u8], i: usize) -> usize {
    let f = GlintFile::parse(bytes).unwrap();
    f.section(Section::Tensors).0 as usize + 8 + i * TENSOR_ENTRY_LEN
}

#[test]
fn tiny_file_round_trips_and_verifies() {
    let bytes = tiny_file();
    let f = GlintFile::parse(&bytes).unwrap();
    assert_eq!(*f.config(), tiny_config());
    assert_eq!(f.tokenizer().tokens.len(), 260);
    assert_eq!(f.tokenizer().tokens.get(258), Some("zzqq"));
    assert_eq!(f.tokenizer().merges.get(0), Some("a b"));
    assert_eq!(f.tokenizer().pre, "smollm");
    assert_eq!(f.chat_template(), "{{ messages }}");
    assert_eq!(f.provenance_value("scheme"), Some("q4g32a"));
    assert_eq!(f.section(Section::Data).0 % DATA_ALIGN, 0);
    for t in f.tensors() {
        assert_eq!(t.offset % TENSOR_ALIGN, 0, "{}", t.name);
        if t.dtype.is_quantized() {
            let m = t.matrix().unwrap();
            for plane in [m.values, m.scales, m.mins] {
                let at = plane.as_ptr() as usize - bytes.as_ptr() as usize;
                assert_eq!(at as u64 % TENSOR_ALIGN, 0, "plane of {}", t.name);
            }
        }
    }
    f.verify().unwrap();
}

#[test]
fn truncation_anywhere_is_a_typed_error() {
    let bytes = tiny_file();
    let f = GlintFile::parse(&bytes).unwrap();
    let mut cuts: Vec<usize> = (0..SECTIONS)
        .flat_map(|s| {
            let (off, len) = f.section(
                [
                    Section::Config,
                    Section::Tokenizer,
                    Section::ChatTemplate,
                    Section::Provenance,
                    Section::Tensors,
                    Section::Data,
                    Section::Integrity,
                ][s],
            );
            [
                off as usize,
                (off + len / 2) as usize,
                (off + len) as usize - 1,
            ]
        })
        .collect();
    cuts.extend([
        0,
        1,
        7,
        8,
        100,
        HEADER_LEN as usize - 1,
        HEADER_LEN as usize,
        bytes.len() - 1,
    ]);
    for cut in cuts {
        let err = GlintFile::parse(&bytes[..cut]).unwrap_err();
        assert!(
            matches!(err, FormatError::Truncated { .. }),
            "cut at {cut}: {err:?}"
        );
    }
}

#[test]
fn wrong_magic_and_version() {
    let mut bytes = tiny_file();
    bytes[0] = b'X';
    assert_eq!(GlintFile::parse(&bytes).unwrap_err(), FormatError::BadMagic);
    let mut bytes = tiny_file();
    bytes[8..10].copy_from_slice(&2u16.to_le_bytes());
    assert_eq!(
        GlintFile::parse(&bytes).unwrap_err(),
        FormatError::UnsupportedVersion {
            major: 2,
            minor: VERSION_MINOR
        }
    );
    // A newer minor version of the same major is readable.
    let mut bytes = tiny_file();
    bytes[10..12].copy_from_slice(&7u16.to_le_bytes());
    assert_eq!(GlintFile::parse(&bytes).unwrap().version(), (1, 7));
}

#[test]
fn tensor_offset_past_the_end() {
    let mut bytes = tiny_file();
    let e = table_entry(&bytes, 3);
    bytes[e + 40..e + 48].copy_from_slice(&(u64::MAX - 8).to_le_bytes());
    let err = GlintFile::parse(&bytes).unwrap_err();
    assert!(
        matches!(
            err,
            FormatError::BadTensor {
                why: "offset overflows",
                ..
            }
        ),
        "{err:?}"
    );
    let mut bytes = tiny_file();
    let len = bytes.len() as u64;
    bytes[e + 40..e + 48].copy_from_slice(&(len.next_multiple_of(256)).to_le_bytes());
    let err = GlintFile::parse(&bytes).unwrap_err();
    assert!(
        matches!(
            err,
            FormatError::BadTensor {
                why: "data outside the data section",
                ..
            }
        ),
        "{err:?}"
    );
}

#[test]
fn overlapping_tensors() {
    let mut bytes = tiny_file();
    let (a, b) = (table_entry(&bytes, 2), table_entry(&bytes, 3));
    // attn_q and attn_k of block 0 are 64x64 and 32x64: point k into q's bytes.
    let q_off = u64::from_le_bytes(bytes[a + 40..a + 48].try_into().unwrap());
    bytes[b + 40..b + 48].copy_from_slice(&q_off.to_le_bytes());
    let err = GlintFile::parse(&bytes).unwrap_err();
    assert!(
        matches!(
            err,
            FormatError::BadTensor {
                why: "overlaps another tensor",
                ..
            }
        ),
        "{err:?}"
    );
}

#[test]
fn absurd_dims_and_unknown_dtype() {
    let mut bytes = tiny_file();
    let e = table_entry(&bytes, 2);
    bytes[e + 8..e + 16].copy_from_slice(&(1u64 << 40).to_le_bytes());
    let err = GlintFile::parse(&bytes).unwrap_err();
    assert!(
        matches!(
            err,
            FormatError::BadTensor {
                why: "dimensions zero or too large",
                ..
            }
        ),
        "{err:?}"
    );
    let mut bytes = tiny_file();
    bytes[e..e + 4].copy_from_slice(&99u32.to_le_bytes());
    assert_eq!(
        GlintFile::parse(&bytes).unwrap_err(),
        FormatError::UnknownDType(99)
    );
    let mut bytes = tiny_file();
    let c = GlintFile::parse(&bytes).unwrap().section(Section::Config).0 as usize;
    bytes[c + 4..c + 8].copy_from_slice(&(1u32 << 31).to_le_bytes());
    assert_eq!(
        GlintFile::parse(&bytes).unwrap_err(),
        FormatError::BadConfig("dim out of range")
    );
}

#[test]
fn shapes_that_disagree_with_the_config() {
    let c = tiny_config();
    let mut tensors = tiny_tensors(&c);
    let q = tensors
        .iter_mut()
        .find(|t| t.name == "blk.1.attn_q.weight")
        .unwrap();
    q.shape = vec![32, 64];
    q.bytes = quantize(DType::Q4G32A, &[0.5; 32 * 64]);
    let mut bytes = Vec::new();
    write_glint(&mut bytes, &tiny_meta(c), &tensors).unwrap();
    let err = GlintFile::parse(&bytes).unwrap_err();
    assert_eq!(
        err,
        FormatError::BadTensor {
            name: "blk.1.attn_q.weight".into(),
            why: "shape disagrees with the config"
        }
    );
    let mut tensors = tiny_tensors(&c);
    tensors.retain(|t| t.name != "blk.1.ffn_up.weight");
    let mut bytes = Vec::new();
    write_glint(&mut bytes, &tiny_meta(c), &tensors).unwrap();
    assert!(matches!(
        GlintFile::parse(&bytes).unwrap_err(),
        FormatError::MissingTensor(_)
    ));
}

#[test]
fn bad_utf8_in_the_vocab() {
    let mut bytes = tiny_file();
    let at = bytes.windows(4).position(|w| w == b"zzqq").unwrap();
    bytes[at + 1] = 0xff;
    assert_eq!(
        GlintFile::parse(&bytes).unwrap_err(),
        FormatError::BadUtf8("tokens")
    );
}

#[test]
fn corrupt_weights_fail_verify_but_not_parse() {
    let mut bytes = tiny_file();
    let f = GlintFile::parse(&bytes).unwrap();
    let at = f.tensor("blk.1.ffn_down.weight").unwrap().offset as usize + 5;
    drop(f);
    bytes[at] ^= 0x10;
    let f = GlintFile::parse(&bytes).unwrap();
    assert!(matches!(
        f.verify().unwrap_err(),
        FormatError::IntegrityMismatch(_)
    ));
}

#[test]
fn every_single_byte_flip_in_the_header_sections_is_an_error_or_valid() {
    // No panic for any corruption of the metadata: each flip parses or fails cleanly.
    let bytes = tiny_file();
    let data_off = GlintFile::parse(&bytes).unwrap().section(Section::Data).0 as usize;
    for at in 0..data_off {
        for bit in [0x01u8, 0x80] {
            let mut b = bytes.clone();
            b[at] ^= bit;
            let _ = GlintFile::parse(&b);
        }
    }
}

#[test]
fn mapped_open_reports_io_and_format_errors() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tiny.glint");
    std::fs::write(&path, tiny_file()).unwrap();
    let m = LoadedGlint::open(&path).unwrap();
    assert_eq!(m.file().config().dim, 64);
    assert!(matches!(
        LoadedGlint::open(dir.path().join("absent.glint")),
        Err(OpenError::Io { .. })
    ));
    std::fs::write(&path, b"GLINTMDL").unwrap();
    assert!(matches!(
        LoadedGlint::open(&path),
        Err(OpenError::Format { .. })
    ));
}

/// xorshift64: a tiny deterministic generator for the fuzz smoke test.
struct XorShift(u64);

impl XorShift {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    /// Uniform-ish in `0..n` (`n > 0`).
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

/// What a consumer of a parsed file touches: every accessor, every tensor's matrix
/// and every row of it decoded, and the integrity check. None of it may panic.
fn use_parsed_file(f: &GlintFile<'_>) {
    let _ = (f.config(), f.version(), f.chat_template().len());
    let tok = f.tokenizer();
    let _ = tok.tokens.iter().map(str::len).sum::<usize>();
    let _ = tok.merges.iter().map(str::len).sum::<usize>();
    let _ = (0..tok.tokens.len()).map(|i| tok.score(i)).sum::<f32>();
    let _ = f.provenance().count();
    for t in f.tensors() {
        let m = t.matrix().expect("a parsed tensor is a matrix");
        let mut row = vec![0f32; m.cols];
        for r in 0..m.rows {
            quant::dequantize_row(&m, r, &mut row);
        }
        if t.dtype == DType::F32 {
            assert_eq!(t.to_f32_vec().unwrap().len() as u64, t.elements());
        }
    }
    let _ = f.verify();
}

/// A deterministic, stable-Rust stand-in for the cargo-fuzz target in `fuzz/`: 20,000
/// mutants of a valid file (random byte writes anywhere and in the header sections,
/// bit flips, truncations, and u32/u64 overwrites of header, section and tensor-table
/// fields with boundary values), each parsed and, when accepted, used in full. Any
/// panic fails with the iteration and its mutations, so it can be replayed.
#[test]
fn fuzz_smoke_mutants_never_panic() {
    let base = tiny_file();
    let f = GlintFile::parse(&base).unwrap();
    let data_off = f.section(Section::Data).0 as usize;
    let n_tensors = f.tensors().len();
    // Field offsets worth overwriting: every 4 bytes of the header (magic, version,
    // lengths, the section directory, flags), the start of every section, and every
    // field of every tensor-table entry.
    let mut fields: Vec<usize> = (0..HEADER_LEN as usize).step_by(4).collect();
    fields.extend(ALL_SECTIONS.iter().map(|&s| f.section(s).0 as usize));
    let table = f.section(Section::Tensors).0 as usize;
    fields.extend([table, table + 4]);
    drop(f);
    for i in 0..n_tensors {
        let e = table_entry(&base, i);
        fields.extend([0, 4, 8, 16, 24, 32, 40, 48, 56].map(|at| e + at));
    }
    let len = base.len() as u64;
    let interesting = [
        0,
        1,
        2,
        3,
        4,
        8,
        31,
        32,
        255,
        256,
        4095,
        4096,
        u64::from(u16::MAX),
        u64::from(u32::MAX),
        u64::from(u32::MAX) + 1,
        i64::MAX as u64,
        1 << 63,
        u64::MAX,
        u64::MAX - 7,
        len - 32,
        len - 1,
        len,
        len + 1,
        data_off as u64,
    ];

    let mut rng = XorShift(0x5EED_0F61_1A7F_u64);
    let mut accepted = 0;
    for iteration in 0..20_000 {
        let mut bytes = base.clone();
        let mut log = Vec::new();
        for _ in 0..1 + rng.below(4) {
            let field = fields[rng.below(fields.len())];
            let value = match rng.below(3) {
                0 => interesting[rng.below(interesting.len())],
                1 => rng.next(),
                // Near the current value: off-by-a-few lengths and offsets.
                _ => bytes
                    .get(field..field + 8)
                    .map(|b| u64::from_le_bytes(b.try_into().unwrap()))
                    .unwrap_or(0)
                    .wrapping_add(rng.below(17) as u64)
                    .wrapping_sub(8),
            };
            let op = rng.below(7);
            match op {
                0 => {
                    let at = rng.below(bytes.len().max(1));
                    if let Some(b) = bytes.get_mut(at) {
                        *b = rng.next() as u8;
                    }
                    log.push(format!("byte {at}"));
                }
                1 => {
                    let at = rng.below(data_off);
                    if let Some(b) = bytes.get_mut(at) {
                        *b = rng.next() as u8;
                    }
                    log.push(format!("header byte {at}"));
                }
                2 => {
                    let at = rng.below(data_off);
                    if let Some(b) = bytes.get_mut(at) {
                        *b ^= 1 << rng.below(8);
                    }
                    log.push(format!("bit flip at {at}"));
                }
                3 => {
                    let keep = rng.below(bytes.len() + 1);
                    bytes.truncate(keep);
                    log.push(format!("truncate to {keep}"));
                }
                4 | 5 => {
                    if let Some(b) = bytes.get_mut(field..field + 8) {
                        b.copy_from_slice(&value.to_le_bytes());
                    }
                    log.push(format!("u64 {value:#x} at {field}"));
                }
                _ => {
                    if let Some(b) = bytes.get_mut(field..field + 4) {
                        b.copy_from_slice(&(value as u32).to_le_bytes());
                    }
                    log.push(format!("u32 {:#x} at {field}", value as u32));
                }
            }
        }
        let outcome = std::panic::catch_unwind(|| match GlintFile::parse(&bytes) {
            Ok(f) => {
                use_parsed_file(&f);
                true
            }
            Err(_) => false,
        });
        match outcome {
            Ok(ok) => accepted += usize::from(ok),
            Err(_) => panic!("iteration {iteration}: mutations {log:?} panicked"),
        }
    }
    // Both outcomes were exercised: the mutants are neither all fatal nor all benign.
    assert!(
        accepted > 100 && accepted < 19_900,
        "{accepted} of 20000 accepted"
    );
}

/// Every section, in directory order.
const ALL_SECTIONS: [Section; SECTIONS] = [
    Section::Config,
    Section::Tokenizer,
    Section::ChatTemplate,
    Section::Provenance,
    Section::Tensors,
    Section::Data,
    Section::Integrity,
];

/// Writes the valid tiny file as a seed for `cargo fuzz run parse` when
/// `GLINT_FUZZ_SEED_DIR` names a folder (see `fuzz/README.md`); otherwise does nothing.
#[test]
fn write_fuzz_seed_when_asked() {
    if let Some(dir) = std::env::var_os("GLINT_FUZZ_SEED_DIR") {
        let dir = std::path::PathBuf::from(dir);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("tiny.glint"), tiny_file()).unwrap();
    }
}

/// Format 1.1's recommended sampling: written and read back; a 1.0 file (a config
/// section of 96 bytes) reads as none; out-of-range values and an unknown presence flag
/// are `BadConfig`, never ignored.
#[test]
fn sampling_defaults_round_trip_and_1_0_files_have_none() {
    let sampling = SamplingDefaults {
        temperature: 0.2,
        top_k: 0,
        top_p: 0.9,
        min_p: 0.0,
        repeat_penalty: 1.0,
    };
    let c = ModelConfig {
        sampling: Some(sampling),
        ..tiny_config()
    };
    let mut bytes = Vec::new();
    write_glint(&mut bytes, &tiny_meta(c), &tiny_tensors(&c)).unwrap();
    let f = GlintFile::parse(&bytes).unwrap();
    assert_eq!(f.version(), (VERSION_MAJOR, 1));
    assert_eq!(f.config().sampling, Some(sampling));
    assert!(
        f.summary()
            .contains("recommended sampling: temp 0.2, top-k 0, top-p 0.9")
    );
    let (config_at, config_len) = f.section(Section::Config);
    assert_eq!(config_len, CONFIG_LEN_1_1 as u64);

    // The same file with a 1.0-sized config section: the sampling words are past the
    // section's end, so they are not read.
    // The config is directory entry 0: its length is the u64 at byte 32.
    let mut old = bytes.clone();
    old[32..40].copy_from_slice(&(CONFIG_LEN as u64).to_le_bytes());
    assert_eq!(GlintFile::parse(&old).unwrap().config().sampling, None);

    // An unknown presence flag and a negative temperature are refused.
    let word = |b: &mut Vec<u8>, index: usize, v: u32| {
        let at = config_at as usize + CONFIG_LEN + 4 * index;
        b[at..at + 4].copy_from_slice(&v.to_le_bytes());
    };
    let mut bad = bytes.clone();
    word(&mut bad, 0, 2);
    assert_eq!(
        GlintFile::parse(&bad).err(),
        Some(FormatError::BadConfig("unknown sampling flag"))
    );
    let mut bad = bytes;
    word(&mut bad, 1, (-1.0f32).to_bits());
    assert_eq!(
        GlintFile::parse(&bad).err(),
        Some(FormatError::BadConfig("sampling defaults out of range"))
    );
}
