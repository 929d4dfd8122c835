//! Header, section directory, tensor table and the validated view of a whole file.

use crate::bytes::Reader;
use crate::config::{Arch, ModelConfig};
use crate::strlist::StrList;
use crate::tokenizer::TokenizerData;
use crate::{DType, FormatError, Matrix, TENSOR_ALIGN};
use alloc::{format, vec};
use no_std_compat::string::String;
use no_std_compat::vec::Vec;
use sha2::{Digest, Sha256};

/// First 8 bytes of every `.glint` file.
pub const MAGIC: [u8; 8] = *b"GLINTMDL";
/// Major version: readers reject any other.
pub const VERSION_MAJOR: u16 = 1;
/// Minor version written; readers accept any minor of their major.
pub const VERSION_MINOR: u16 = 1;
/// Bytes of the fixed header.
pub const HEADER_LEN: u32 = 144;
/// The tensor data section starts on a page boundary so that the mapping of the
/// weights shares no page with the header.
pub const DATA_ALIGN: u64 = 4096;
/// Bytes of one tensor table entry.
pub const TENSOR_ENTRY_LEN: usize = 64;
/// Most dimensions a tensor may have.
pub const MAX_DIMS: usize = 4;
/// Most elements one tensor may have (2^36: a 64 GiB f32 tensor).
pub const MAX_ELEMENTS: u64 = 1 << 36;

/// The sections named by the header's directory, in directory order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Section {
    /// Model config.
    Config = 0,
    /// Tokenizer.
    Tokenizer = 1,
    /// Chat template (UTF-8 Jinja text).
    ChatTemplate = 2,
    /// Provenance key/value strings.
    Provenance = 3,
    /// Tensor table.
    Tensors = 4,
    /// Tensor data.
    Data = 5,
    /// SHA-256 of every byte before this section.
    Integrity = 6,
}

/// Number of sections in the header's directory.
pub const SECTIONS: usize = 7;
const SECTION_NAMES: [&str; SECTIONS] = [
    "config",
    "tokenizer",
    "chat template",
    "provenance",
    "tensors",
    "data",
    "integrity",
];

/// One tensor of the file: its table entry and its bytes.
#[derive(Clone, Copy, Debug)]
pub struct Tensor<'a> {
    /// Canonical name (docs/FORMAT.md, "Tensor names").
    pub name: &'a str,
    /// Element type.
    pub dtype: DType,
    /// Dimensions, outermost first; the last is contiguous.
    pub dims: [u64; MAX_DIMS],
    /// Number of dimensions used in `dims`.
    pub n_dims: usize,
    /// Absolute offset of the data in the file.
    pub offset: u64,
    /// The tensor's bytes (all planes).
    pub bytes: &'a [u8],
    /// CRC-32 (IEEE) of `bytes`.
    pub crc32: u32,
}

impl<'a> Tensor<'a> {
    /// The used dimensions.
    pub fn shape(&self) -> &[u64] {
        &self.dims[..self.n_dims]
    }

    /// Number of elements.
    pub fn elements(&self) -> u64 {
        self.shape().iter().product()
    }

    /// The tensor as a `[rows, cols]` matrix (1-D tensors are one row).
    pub fn matrix(&self) -> Result<Matrix<'a>, FormatError> {
        let (rows, cols) = match self.shape() {
            [c] => (1, *c),
            [r, c] => (*r, *c),
            _ => return Err(FormatError::BadShape("not a matrix")),
        };
        Matrix::from_bytes(self.dtype, rows as usize, cols as usize, self.bytes)
    }

    /// The values of an f32 tensor, decoded.
    pub fn to_f32_vec(&self) -> Result<Vec<f32>, FormatError> {
        if self.dtype != DType::F32 {
            return Err(FormatError::BadShape("expected an f32 tensor"));
        }
        Ok(self
            .bytes
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect())
    }
}

/// A validated `.glint` file borrowed from its bytes (usually a memory map).
///
/// [`GlintFile::parse`] checks every offset, length, shape, dtype and config value
/// against the file size before any tensor is touched; after it succeeds, every
/// accessor is infallible and in bounds. It reads only the header sections: cost is
/// O(header), independent of the size of the weights.
#[derive(Debug)]
pub struct GlintFile<'a> {
    bytes: &'a [u8],
    version: (u16, u16),
    sections: [(u64, u64); SECTIONS],
    config: ModelConfig,
    tokenizer: TokenizerData<'a>,
    chat_template: &'a str,
    provenance: StrList<'a>,
    tensors: Vec<Tensor<'a>>,
}

impl<'a> GlintFile<'a> {
    /// Parses and validates a whole file.
    pub fn parse(bytes: &'a [u8]) -> Result<Self, FormatError> {
        let mut h = Reader::new(bytes, "header");
        if bytes.len() < HEADER_LEN as usize {
            return Err(FormatError::Truncated {
                expected: HEADER_LEN as u64,
                actual: bytes.len() as u64,
            });
        }
        if h.array::<8>()? != MAGIC {
            return Err(FormatError::BadMagic);
        }
        let (major, minor) = (h.u16()?, h.u16()?);
        if major != VERSION_MAJOR {
            return Err(FormatError::UnsupportedVersion { major, minor });
        }
        let header_len = h.u32()?;
        let file_len = h.u64()?;
        if file_len != bytes.len() as u64 {
            return Err(FormatError::Truncated {
                expected: file_len,
                actual: bytes.len() as u64,
            });
        }
        if header_len < HEADER_LEN || header_len as u64 > file_len {
            return Err(FormatError::BadSection("header length"));
        }
        let mut sections = [(0u64, 0u64); SECTIONS];
        for s in sections.iter_mut() {
            *s = (h.u64()?, h.u64()?);
        }
        if h.u32()? != 0 {
            return Err(FormatError::BadSection("unknown header flags"));
        }
        Self::check_sections(&sections, header_len as u64, file_len)?;
        let section = |s: Section| {
            let (off, len) = sections[s as usize];
            &bytes[off as usize..(off + len) as usize]
        };
        let config = ModelConfig::read(section(Section::Config))?;
        let tokenizer = TokenizerData::read(section(Section::Tokenizer), config.vocab_size)?;
        let chat_template = core::str::from_utf8(section(Section::ChatTemplate))
            .map_err(|_| FormatError::BadUtf8("chat template"))?;
        let provenance = StrList::read(
            &mut Reader::new(section(Section::Provenance), "provenance"),
            "provenance",
        )?;
        if provenance.len() % 2 != 0 {
            return Err(FormatError::BadStringTable("provenance"));
        }
        let tensors = Self::read_tensors(
            bytes,
            section(Section::Tensors),
            sections[Section::Data as usize],
        )?;
        let file = Self {
            bytes,
            version: (major, minor),
            sections,
            config,
            tokenizer,
            chat_template,
            provenance,
            tensors,
        };
        file.check_architecture()?;
        Ok(file)
    }

    fn check_sections(
        sections: &[(u64, u64); SECTIONS],
        header_len: u64,
        file_len: u64,
    ) -> Result<(), FormatError> {
        for (i, &(off, len)) in sections.iter().enumerate() {
            let end = off
                .checked_add(len)
                .ok_or(FormatError::BadSection(SECTION_NAMES[i]))?;
            if off < header_len || end > file_len || off % 4 != 0 {
                return Err(FormatError::BadSection(SECTION_NAMES[i]));
            }
        }
        let (data_off, _) = sections[Section::Data as usize];
        if data_off % DATA_ALIGN != 0 {
            return Err(FormatError::BadSection("data section not page-aligned"));
        }
        let (integ_off, integ_len) = sections[Section::Integrity as usize];
        if integ_len != 32 || integ_off + 32 != file_len {
            return Err(FormatError::BadSection("integrity"));
        }
        // No two sections may share a byte.
        for i in 0..SECTIONS {
            for j in i + 1..SECTIONS {
                let (a, al) = sections[i];
                let (b, bl) = sections[j];
                if al > 0 && bl > 0 && a < b + bl && b < a + al {
                    return Err(FormatError::BadSection("sections overlap"));
                }
            }
        }
        Ok(())
    }

    fn read_tensors(
        bytes: &'a [u8],
        table: &'a [u8],
        data: (u64, u64),
    ) -> Result<Vec<Tensor<'a>>, FormatError> {
        let mut r = Reader::new(table, "tensors");
        let count = r.u32()?;
        r.u32()?;
        let entries = r.take_n(count, TENSOR_ENTRY_LEN)?;
        let names = StrList::read(&mut r, "tensor names")?;
        if names.len() != count as usize {
            return Err(FormatError::BadStringTable("tensor names"));
        }
        let (data_off, data_len) = data;
        let mut tensors = Vec::with_capacity(count as usize);
        for (i, e) in entries.chunks_exact(TENSOR_ENTRY_LEN).enumerate() {
            let name = names.get(i).unwrap_or_default();
            let bad = |why: &'static str| FormatError::BadTensor {
                name: String::from(name),
                why,
            };
            let mut e = Reader::new(e, "tensor entry");
            let dtype = DType::from_code(e.u32()?)?;
            let n_dims = e.u32()? as usize;
            let mut dims = [0u64; MAX_DIMS];
            for d in dims.iter_mut() {
                *d = e.u64()?;
            }
            let (offset, len, crc32) = (e.u64()?, e.u64()?, e.u32()?);
            if n_dims == 0 || n_dims > MAX_DIMS {
                return Err(bad("dimension count out of range"));
            }
            let mut elements: u64 = 1;
            for &d in &dims[..n_dims] {
                elements = elements
                    .checked_mul(d)
                    .filter(|&n| d > 0 && n <= MAX_ELEMENTS)
                    .ok_or_else(|| bad("dimensions zero or too large"))?;
            }
            if let Some(g) = dtype.group()
                && (n_dims != 2 || dims[1] % g as u64 != 0)
            {
                return Err(bad(
                    "quantized tensor is not a matrix with whole groups per row",
                ));
            }
            if dtype.plane_layout(elements).total != len {
                return Err(bad("length disagrees with dtype and shape"));
            }
            let end = offset
                .checked_add(len)
                .ok_or_else(|| bad("offset overflows"))?;
            if offset < data_off || end > data_off + data_len {
                return Err(bad("data outside the data section"));
            }
            if offset % TENSOR_ALIGN != 0 {
                return Err(bad("data not aligned"));
            }
            tensors.push(Tensor {
                name,
                dtype,
                dims,
                n_dims,
                offset,
                bytes: &bytes[offset as usize..end as usize],
                crc32,
            });
        }
        // Overlap and duplicate-name checks on sorted copies: O(n log n).
        let mut by_offset: Vec<&Tensor<'_>> = tensors.iter().collect();
        by_offset.sort_by_key(|t| t.offset);
        for w in by_offset.windows(2) {
            if w[0].offset + w[0].bytes.len() as u64 > w[1].offset {
                return Err(FormatError::BadTensor {
                    name: String::from(w[1].name),
                    why: "overlaps another tensor",
                });
            }
        }
        let mut by_name: Vec<&str> = tensors.iter().map(|t| t.name).collect();
        by_name.sort_unstable();
        if let Some(w) = by_name.windows(2).find(|w| w[0] == w[1]) {
            return Err(FormatError::BadTensor {
                name: String::from(w[0]),
                why: "duplicate name",
            });
        }
        Ok(tensors)
    }

    /// Checks the tensor set is exactly what the architecture needs, with the shapes the
    /// config implies.
    fn check_architecture(&self) -> Result<(), FormatError> {
        let c = &self.config;
        match c.arch {
            Arch::Llama => {}
        }
        let expected = expected_llama_tensors(c);
        for (name, shape) in &expected {
            let t = self
                .tensor(name)
                .ok_or_else(|| FormatError::MissingTensor(name.clone()))?;
            if t.shape() != shape.as_slice() {
                return Err(FormatError::BadTensor {
                    name: name.clone(),
                    why: "shape disagrees with the config",
                });
            }
            if t.n_dims == 1 && t.dtype != DType::F32 {
                return Err(FormatError::BadTensor {
                    name: name.clone(),
                    why: "vectors must be f32",
                });
            }
        }
        if self.tensors.len() != expected.len() {
            let extra = self
                .tensors
                .iter()
                .find(|t| !expected.iter().any(|(n, _)| n == t.name));
            let name = extra.map_or_else(String::new, |t| String::from(t.name));
            return Err(FormatError::BadTensor {
                name,
                why: "not part of the architecture",
            });
        }
        Ok(())
    }

    /// Format version `(major, minor)` of the file.
    pub fn version(&self) -> (u16, u16) {
        self.version
    }

    /// Model config.
    pub fn config(&self) -> &ModelConfig {
        &self.config
    }

    /// Tokenizer section.
    pub fn tokenizer(&self) -> &TokenizerData<'a> {
        &self.tokenizer
    }

    /// The model's own chat template (Jinja), empty if it has none.
    pub fn chat_template(&self) -> &'a str {
        self.chat_template
    }

    /// Provenance as `(key, value)` pairs: source file, its SHA-256, scheme, tool version.
    pub fn provenance(&self) -> impl Iterator<Item = (&'a str, &'a str)> + '_ {
        (0..self.provenance.len() / 2)
            .filter_map(|i| Some((self.provenance.get(2 * i)?, self.provenance.get(2 * i + 1)?)))
    }

    /// One provenance value.
    pub fn provenance_value(&self, key: &str) -> Option<&'a str> {
        self.provenance().find(|(k, _)| *k == key).map(|(_, v)| v)
    }

    /// All tensors in table order.
    pub fn tensors(&self) -> &[Tensor<'a>] {
        &self.tensors
    }

    /// The tensor called `name`.
    pub fn tensor(&self, name: &str) -> Option<&Tensor<'a>> {
        self.tensors.iter().find(|t| t.name == name)
    }

    /// `(offset, len)` of a section.
    pub fn section(&self, s: Section) -> (u64, u64) {
        self.sections[s as usize]
    }

    /// Length of the file in bytes.
    pub fn file_len(&self) -> u64 {
        self.bytes.len() as u64
    }
    /// The header in a few lines (format, architecture, tokens, tokenizer, template,
    /// provenance): the one header printer, shared by `glint info` and
    /// `glint-quantize inspect`.
    pub fn summary(&self) -> String {
        let c = self.config();
        let t = self.tokenizer();
        let (major, minor) = self.version();
        let mut s = format!(
            "file: {} bytes, format {major}.{minor}, scheme {}, from {}\n",
            self.file_len(),
            self.provenance_value("scheme").unwrap_or("?"),
            self.provenance_value("source").unwrap_or("?"),
        );
        s += &format!(
            "model: {:?}, dim {}, {} layers, {} heads ({} kv), head dim {}, ffn {}, vocab {}, context {}\n",
            c.arch,
            c.dim,
            c.n_layers,
            c.n_heads,
            c.n_kv_heads,
            c.head_dim,
            c.ffn_dim,
            c.vocab_size,
            c.context_len
        );
        s += &format!(
            "rope: theta {} {:?}, scaling {:?}; norm eps {}; tied embeddings {}; qkv bias {}\n",
            c.rope_theta, c.rope_style, c.rope_scaling, c.norm_eps, c.tied_embeddings, c.qkv_bias
        );
        s += &format!(
            "tokens: bos {:?} eos {:?} eot {:?} pad {:?}\n",
            c.bos, c.eos, c.eot, c.pad
        );
        s += &match c.sampling {
            Some(d) => format!(
                "recommended sampling: temp {}, top-k {}, top-p {}, min-p {}, repeat penalty {}\n",
                d.temperature, d.top_k, d.top_p, d.min_p, d.repeat_penalty
            ),
            None => "recommended sampling: none in the file\n".into(),
        };
        s += &format!(
            "tokenizer: {:?} pre {:?}, {} tokens, {} merges, add_bos {}\n",
            t.model,
            t.pre,
            t.tokens.len(),
            t.merges.len(),
            t.add_bos
        );
        s += &format!("chat template: {} bytes\n", self.chat_template().len());
        for (k, v) in self.provenance() {
            s += &format!("provenance: {k} = {v}\n");
        }
        s
    }

    /// Reads every byte: checks the SHA-256 of the file and the CRC-32 of every tensor.
    /// The normal load path does not call this.
    pub fn verify(&self) -> Result<(), FormatError> {
        let (integ_off, _) = self.section(Section::Integrity);
        let digest = Sha256::digest(&self.bytes[..integ_off as usize]);
        if digest.as_slice() != &self.bytes[integ_off as usize..] {
            return Err(FormatError::IntegrityMismatch(String::from("file SHA-256")));
        }
        for t in &self.tensors {
            if crc32fast::hash(t.bytes) != t.crc32 {
                return Err(FormatError::IntegrityMismatch(format!(
                    "CRC-32 of tensor {}",
                    t.name
                )));
            }
        }
        Ok(())
    }
}

/// A tensor of one transformer block, by role.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum BlockTensor {
    /// RMSNorm before attention.
    AttnNorm,
    /// Query projection.
    AttnQ,
    /// Key projection.
    AttnK,
    /// Value projection.
    AttnV,
    /// Query bias (Qwen2).
    AttnQBias,
    /// Key bias (Qwen2).
    AttnKBias,
    /// Value bias (Qwen2).
    AttnVBias,
    /// Attention output projection.
    AttnOutput,
    /// RMSNorm before the feed-forward.
    FfnNorm,
    /// Feed-forward gate projection.
    FfnGate,
    /// Feed-forward up projection.
    FfnUp,
    /// Feed-forward down projection.
    FfnDown,
}

impl BlockTensor {
    /// The part of the canonical name after `blk.N.` (GGUF's spelling).
    pub fn suffix(self) -> &'static str {
        match self {
            BlockTensor::AttnNorm => "attn_norm.weight",
            BlockTensor::AttnQ => "attn_q.weight",
            BlockTensor::AttnK => "attn_k.weight",
            BlockTensor::AttnV => "attn_v.weight",
            BlockTensor::AttnQBias => "attn_q.bias",
            BlockTensor::AttnKBias => "attn_k.bias",
            BlockTensor::AttnVBias => "attn_v.bias",
            BlockTensor::AttnOutput => "attn_output.weight",
            BlockTensor::FfnNorm => "ffn_norm.weight",
            BlockTensor::FfnGate => "ffn_gate.weight",
            BlockTensor::FfnUp => "ffn_up.weight",
            BlockTensor::FfnDown => "ffn_down.weight",
        }
    }
}

/// A tensor of a Llama model, by role: the one table of canonical tensor names
/// (GGUF's), used by the writer's checks, the importers and the runtime.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum LlamaTensor {
    /// Token embeddings, `[vocab][dim]`.
    TokenEmbd,
    /// A tensor of block `N`.
    Block(u32, BlockTensor),
    /// The final RMSNorm.
    OutputNorm,
    /// The output head, `[vocab][dim]` (absent with tied embeddings).
    Output,
}

impl LlamaTensor {
    /// The canonical name, e.g. `blk.3.attn_q.weight`.
    pub fn name(self) -> String {
        match self {
            LlamaTensor::TokenEmbd => "token_embd.weight".into(),
            LlamaTensor::Block(i, t) => format!("blk.{i}.{}", t.suffix()),
            LlamaTensor::OutputNorm => "output_norm.weight".into(),
            LlamaTensor::Output => "output.weight".into(),
        }
    }

    /// Its shape in a model of config `c`.
    pub fn shape(self, c: &ModelConfig) -> Vec<u64> {
        let (dim, vocab, ffn) = (c.dim as u64, c.vocab_size as u64, c.ffn_dim as u64);
        let (q, kv) = (
            (c.n_heads * c.head_dim) as u64,
            (c.n_kv_heads * c.head_dim) as u64,
        );
        match self {
            LlamaTensor::TokenEmbd | LlamaTensor::Output => vec![vocab, dim],
            LlamaTensor::OutputNorm => vec![dim],
            LlamaTensor::Block(_, t) => match t {
                BlockTensor::AttnNorm | BlockTensor::FfnNorm => vec![dim],
                BlockTensor::AttnQ => vec![q, dim],
                BlockTensor::AttnK | BlockTensor::AttnV => vec![kv, dim],
                BlockTensor::AttnQBias => vec![q],
                BlockTensor::AttnKBias | BlockTensor::AttnVBias => vec![kv],
                BlockTensor::AttnOutput => vec![dim, q],
                BlockTensor::FfnGate | BlockTensor::FfnUp => vec![ffn, dim],
                BlockTensor::FfnDown => vec![dim, ffn],
            },
        }
    }

    /// The tensors of a model of config `c`, in file order.
    pub fn all(c: &ModelConfig) -> Vec<LlamaTensor> {
        use BlockTensor::*;
        let mut v = vec![LlamaTensor::TokenEmbd];
        for i in 0..c.n_layers {
            let mut block = |t| v.push(LlamaTensor::Block(i, t));
            [AttnNorm, AttnQ, AttnK, AttnV]
                .into_iter()
                .for_each(&mut block);
            if c.qkv_bias {
                [AttnQBias, AttnKBias, AttnVBias]
                    .into_iter()
                    .for_each(&mut block);
            }
            [AttnOutput, FfnNorm, FfnGate, FfnUp, FfnDown]
                .into_iter()
                .for_each(&mut block);
        }
        v.push(LlamaTensor::OutputNorm);
        if !c.tied_embeddings {
            v.push(LlamaTensor::Output);
        }
        v
    }
}

/// The tensors a Llama model of config `c` consists of, with their shapes, in file order.
pub fn expected_llama_tensors(c: &ModelConfig) -> Vec<(String, Vec<u64>)> {
    LlamaTensor::all(c)
        .into_iter()
        .map(|t| (t.name(), t.shape(c)))
        .collect()
}
