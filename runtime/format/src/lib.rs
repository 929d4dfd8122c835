//! The `.glint` model file, specified in `docs/FORMAT.md`: a zero-copy, `no_std` +
//! `alloc` parser ([`GlintFile`]) that validates everything before any tensor is
//! touched, the block quantization of every dtype ([`quant`]), and on hosted targets
//! (feature `std`) the writer and memory-mapped loading.
#![no_std]

extern crate alloc;
extern crate no_std_compat as std;

mod bytes;
mod config;
mod dtype;
mod file;
#[cfg(feature = "std")]
mod mapped;
pub mod quant;
mod strlist;
mod tokenizer;
#[cfg(feature = "std")]
mod writer;

pub use config::{
    Arch, CONFIG_LEN, CONFIG_LEN_1_1, ModelConfig, RopeScaling, RopeStyle, SamplingDefaults, limits,
};
pub use dtype::{BLOCK, DType, Matrix, PlaneLayout, TENSOR_ALIGN};
pub use file::{
    BlockTensor, DATA_ALIGN, GlintFile, HEADER_LEN, LlamaTensor, MAGIC, MAX_DIMS, MAX_ELEMENTS,
    SECTIONS, Section, TENSOR_ENTRY_LEN, Tensor, VERSION_MAJOR, VERSION_MINOR,
    expected_llama_tensors,
};
#[cfg(feature = "std")]
pub use mapped::{LoadedGlint, OpenError};
pub use strlist::StrList;
pub use tokenizer::{TokenizerData, TokenizerModel, TokenizerSpec};
#[cfg(feature = "std")]
pub use writer::{FileMeta, TensorOut, write_glint};

use std::string::String;

/// Everything that can be wrong with a `.glint` file. Parsing never panics: every
/// defect maps to one of these.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum FormatError {
    /// The file is shorter than its header says (or than a header).
    #[error("file truncated: header says {expected} bytes, have {actual}")]
    Truncated {
        /// Bytes the header promises.
        expected: u64,
        /// Bytes present.
        actual: u64,
    },
    /// The first 8 bytes are not [`MAGIC`].
    #[error("not a .glint file (bad magic)")]
    BadMagic,
    /// A major version this reader does not know.
    #[error("unsupported format version {major}.{minor} (this reader knows {VERSION_MAJOR}.x)")]
    UnsupportedVersion {
        /// Major version in the file.
        major: u16,
        /// Minor version in the file.
        minor: u16,
    },
    /// A section's offset or length is out of bounds, misaligned or overlapping.
    #[error("bad section directory: {0}")]
    BadSection(&'static str),
    /// A read ran past the end of the named section.
    #[error("{0} section is too short for its contents")]
    SectionOverrun(&'static str),
    /// A config value is out of range or inconsistent.
    #[error("bad model config: {0}")]
    BadConfig(&'static str),
    /// The tokenizer section is malformed.
    #[error("bad tokenizer: {0}")]
    BadTokenizer(&'static str),
    /// A string is not valid UTF-8.
    #[error("invalid UTF-8 in {0}")]
    BadUtf8(&'static str),
    /// A string list's offsets are inconsistent.
    #[error("bad string table: {0}")]
    BadStringTable(&'static str),
    /// The element type code is not one this reader knows.
    #[error("unknown dtype code {0}")]
    UnknownDType(u32),
    /// A tensor's shape disagrees with its dtype, the config or its length.
    #[error("bad tensor shape: {0}")]
    BadShape(&'static str),
    /// A tensor table entry is invalid.
    #[error("bad tensor {name:?}: {why}")]
    BadTensor {
        /// Tensor name.
        name: String,
        /// What is wrong.
        why: &'static str,
    },
    /// A tensor the architecture needs is absent.
    #[error("missing tensor {0:?}")]
    MissingTensor(String),
    /// A checksum does not match: the file is corrupt.
    #[error("integrity check failed: {0}")]
    IntegrityMismatch(String),
}
