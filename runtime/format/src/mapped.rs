//! Loading from a hosted OS: a file mapped into memory (whole, or a range of it, as
//! Android hands out a model stored inside an APK), or bytes already in memory.

use crate::{FormatError, GlintFile};
use memmap2::{Mmap, MmapOptions};
use std::fs::File;
use std::path::Path;
use std::prelude::v1::*;
use std::sync::Arc;

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
    /// The range to map does not lie inside the file.
    #[error("{path}: range {offset}+{len} is outside the file's {file_len} bytes")]
    Range {
        /// The file.
        path: String,
        /// First byte of the range.
        offset: u64,
        /// Bytes in the range.
        len: u64,
        /// Bytes in the file.
        file_len: u64,
    },
    /// The bytes are not a valid `.glint` file.
    #[error("{path} is not a valid .glint file: {source}")]
    Format {
        /// The file (or `<memory>`).
        path: String,
        /// What is wrong.
        source: FormatError,
    },
}

/// What keeps the bytes of a [`LoadedGlint`] alive.
enum Owner {
    Map(Mmap),
    Shared(Arc<[u8]>),
}

impl Owner {
    fn bytes(&self) -> &[u8] {
        match self {
            Owner::Map(m) => m,
            Owner::Shared(b) => b,
        }
    }
}

/// A validated `.glint` file together with the bytes it borrows from: a read-only
/// memory map or shared bytes. Weights are used in place (no copy); opening costs
/// O(header). The bytes never move while it lives, so views of them stay valid for as
/// long as the `LoadedGlint` does.
pub struct LoadedGlint {
    // Field order matters: `file` borrows from `owner` and is dropped first.
    file: GlintFile<'static>,
    owner: Owner,
}

impl LoadedGlint {
    /// Maps and validates the whole file at `path`.
    ///
    /// Like every memory-mapped reader, this assumes no other process truncates or
    /// rewrites the file while it is mapped.
    pub fn open(path: impl AsRef<Path>) -> Result<Self, OpenError> {
        let path = path.as_ref();
        let name = path.display().to_string();
        let f = File::open(path).map_err(|source| OpenError::Io {
            path: name.clone(),
            source,
        })?;
        let len = f
            .metadata()
            .map_err(|source| OpenError::Io {
                path: name.clone(),
                source,
            })?
            .len();
        Self::open_range(&f, 0, len, &name)
    }

    /// Maps and validates `len` bytes of `file` from `offset` (any offset: the map
    /// starts at the page below it). `name` names the file in errors. The range must lie
    /// inside the file: a mapping past its end would fault on first touch.
    pub fn open_range(file: &File, offset: u64, len: u64, name: &str) -> Result<Self, OpenError> {
        let io = |source| OpenError::Io {
            path: name.to_owned(),
            source,
        };
        let file_len = file.metadata().map_err(io)?.len();
        if offset.checked_add(len).is_none_or(|end| end > file_len) {
            return Err(OpenError::Range {
                path: name.to_owned(),
                offset,
                len,
                file_len,
            });
        }
        let len = usize::try_from(len).map_err(|_| OpenError::Range {
            path: name.to_owned(),
            offset,
            len,
            file_len,
        })?;
        let map = if len == 0 {
            // A zero-length map is an OS error; an empty file is a format error.
            None
        } else {
            // SAFETY: the mapping is read-only and inside the file (checked above); see
            // `open` on concurrent writers.
            Some(unsafe { MmapOptions::new().offset(offset).len(len).map(file) }.map_err(io)?)
        };
        let Some(map) = map else {
            return Self::from_shared(Arc::from(&[][..]), name);
        };
        // Ask for 2 MiB pages before anything is touched: pages read in through this
        // mapping then come as 2 MiB page-cache folios mapped by one page-table entry
        // each, which saves the TLB misses of streaming the weights 4 KiB at a time. A
        // hint: ignored where unsupported (and by pages already cached).
        #[cfg(target_os = "linux")]
        let _ = map.advise(memmap2::Advice::HugePage);
        Self::new(Owner::Map(map), name)
    }

    /// Validates a `.glint` file held in memory (tests, flash images, the emulator).
    /// `name` names it in errors.
    pub fn from_shared(bytes: Arc<[u8]>, name: &str) -> Result<Self, OpenError> {
        Self::new(Owner::Shared(bytes), name)
    }

    fn new(owner: Owner, name: &str) -> Result<Self, OpenError> {
        let bytes = owner.bytes();
        // SAFETY: the bytes live as long as `owner` (a map or a reference count), which
        // lives as long as `self` and never moves the bytes; `file` is dropped before
        // `owner` (field order), and `file()` hands out borrows no longer than `&self`.
        let bytes: &'static [u8] =
            unsafe { std::slice::from_raw_parts(bytes.as_ptr(), bytes.len()) };
        let file = GlintFile::parse(bytes).map_err(|source| OpenError::Format {
            path: name.to_owned(),
            source,
        })?;
        Ok(Self { file, owner })
    }

    /// The validated file.
    pub fn file(&self) -> &GlintFile<'_> {
        &self.file
    }

    /// The file's bytes.
    pub fn bytes(&self) -> &[u8] {
        self.owner.bytes()
    }
}
