//! Memory-mapped loading (hosted only).

use crate::{FormatError, GlintFile};
use memmap2::Mmap;
use std::fs::File;
use std::path::Path;
use std::prelude::v1::*;

/// Why a file could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    /// The OS refused to open or map the file.
    #[error("cannot map {path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The OS error.
        source: std::io::Error,
    },
    /// The file is not a valid `.glint` file.
    #[error("{path} is not a valid .glint file: {source}")]
    Format {
        /// The file.
        path: String,
        /// What is wrong.
        source: FormatError,
    },
}

/// A `.glint` file mapped into memory and validated. Weights are used in place from
/// the mapping (no copy); opening costs O(header).
pub struct MappedGlint {
    // Field order matters: `file` borrows from `map` and is dropped first.
    file: GlintFile<'static>,
    map: Mmap,
}

impl MappedGlint {
    /// Maps and validates the file at `path`.
    ///
    /// Like every memory-mapped reader, this assumes no other process truncates or
    /// rewrites the file while it is mapped.
    pub fn open(path: impl AsRef<Path>) -> Result<Self, OpenError> {
        let path = path.as_ref();
        let io = |source| OpenError::Io {
            path: path.display().to_string(),
            source,
        };
        let f = File::open(path).map_err(io)?;
        // SAFETY: the mapping is read-only; see the note above on concurrent writers.
        let map = unsafe { Mmap::map(&f) }.map_err(io)?;
        // Ask for 2 MiB pages before anything is touched: pages read in through this
        // mapping then come as 2 MiB page-cache folios mapped by one page-table entry
        // each, which saves the TLB misses of streaming the weights 4 KiB at a time. A
        // hint: ignored where unsupported (and by pages already cached).
        #[cfg(target_os = "linux")]
        let _ = map.advise(memmap2::Advice::HugePage);
        // SAFETY: the bytes live as long as `map`, which lives as long as `self` and is
        // never moved out or remapped; `file` is dropped before `map` (field order), and
        // `file()` hands out borrows no longer than `&self`.
        let bytes: &'static [u8] = unsafe { std::slice::from_raw_parts(map.as_ptr(), map.len()) };
        let file = GlintFile::parse(bytes).map_err(|source| OpenError::Format {
            path: path.display().to_string(),
            source,
        })?;
        Ok(Self { file, map })
    }

    /// The validated file.
    pub fn file(&self) -> &GlintFile<'_> {
        &self.file
    }

    /// The mapped bytes.
    pub fn bytes(&self) -> &[u8] {
        &self.map
    }
}
