//! The `.glint` model file, specified in `docs/FORMAT.md`.
#![no_std]

extern crate no_std_compat as std;

mod dtype;
pub mod quant;

pub use dtype::{BLOCK, DType, Matrix, PlaneLayout, TENSOR_ALIGN};

/// Everything that can be wrong with a `.glint` file.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum FormatError {
    /// The element type code is not one this reader knows.
    #[error("unknown dtype code {0}")]
    UnknownDType(u32),
    /// A tensor's shape disagrees with its dtype, the config or its length.
    #[error("bad tensor shape: {0}")]
    BadShape(&'static str),
}
