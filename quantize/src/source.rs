//! A checkpoint as an importer reads it: config, tokenizer and template already in
//! Glint's terms, tensors still in the source's encoding and borrowed from its
//! memory-mapped files until packing converts them one at a time.

use glint_format::{ModelConfig, TokenizerSpec};
use memmap2::Mmap;
use std::ops::Range;

/// How a source tensor's bytes encode its values.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Encoding {
    /// Little-endian f32.
    F32,
    /// Little-endian f16.
    F16,
    /// Little-endian bfloat16.
    Bf16,
    /// A GGUF tensor type (blocks along the contiguous dimension).
    Gguf(crate::gguf::GgmlType),
    /// A `.glint` dtype (when re-packing a `.glint` file).
    Glint(glint_format::DType),
}

/// One tensor of the source, under its canonical Glint name.
#[derive(Clone, Debug)]
pub struct SourceTensor {
    /// Canonical name (docs/FORMAT.md, "Tensor names").
    pub name: String,
    /// Dimensions, outermost first (`[rows, cols]` for matrices; cols contiguous).
    pub shape: Vec<u64>,
    /// Encoding of the bytes.
    pub encoding: Encoding,
    /// Index of the mapped file holding the bytes.
    pub file: usize,
    /// Byte range in that file.
    pub range: Range<usize>,
}

/// An imported checkpoint: everything needed to pack it into a `.glint` file.
pub struct Imported {
    /// Model config.
    pub config: ModelConfig,
    /// Tokenizer.
    pub tokenizer: TokenizerSpec,
    /// The model's chat template (Jinja), empty if none.
    pub chat_template: String,
    /// Provenance pairs recorded from the source (e.g. `source`, `source_sha256`).
    pub provenance: Vec<(String, String)>,
    /// Tensors, in the order they will be written.
    pub tensors: Vec<SourceTensor>,
    /// The mapped source files the tensors point into.
    pub files: Vec<Mmap>,
}

impl Imported {
    /// The raw bytes of `t`.
    pub fn bytes(&self, t: &SourceTensor) -> &[u8] {
        &self.files[t.file][t.range.clone()]
    }
}
