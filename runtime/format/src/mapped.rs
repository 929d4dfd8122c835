//! Loading from a hosted OS: a file mapped into memory (whole, or a range of it, as
//! Android hands out a model stored inside an APK), a file read into memory, or bytes
//! already in memory.
//!
//! A mapping reads the file as it is *now*: if another process truncates or rewrites it
//! in place while it is mapped, touching a page past the new end raises `SIGBUS` and
//! rewritten pages change the weights underneath. Tools that write models write a
//! temporary file and rename it over the old one (the mapping keeps the old file's
//! bytes); a host that cannot guarantee that reads the model into memory instead
//! ([`LoadedGlint::read`]), and the `glint` binary reports a `SIGBUS` as the model file
//! having changed.

use crate::{FormatError, GlintFile};
use memmap2::{Mmap, MmapOptions};
use std::fs::File;
use std::io::Read;
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
    /// The file could not be read into memory (or the memory was not there).
    #[error("cannot read {path} into memory: {source}")]
    Read {
        /// The file.
        path: String,
        /// The OS error.
        source: std::io::Error,
    },
    /// The path is a FIFO, a device, a socket or a folder: only a regular file has a
    /// length to check and bytes that stay put (and opening a FIFO with no writer
    /// would block forever).
    #[error("{path} is not a regular file")]
    NotAFile {
        /// The path.
        path: String,
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

/// Opens `path` for reading if it is a regular file: its type is checked before it is
/// opened (opening a FIFO with no writer blocks) and again on the open file (the path
/// may have changed in between). Returns the file, its length and its name for errors.
fn open_regular(path: &Path) -> Result<(File, u64, String), OpenError> {
    let name = path.display().to_string();
    let io = |source| OpenError::Io {
        path: name.clone(),
        source,
    };
    if !std::fs::metadata(path).map_err(io)?.is_file() {
        return Err(OpenError::NotAFile { path: name });
    }
    let f = File::open(path).map_err(io)?;
    let meta = f.metadata().map_err(io)?;
    if !meta.is_file() {
        return Err(OpenError::NotAFile { path: name });
    }
    Ok((f, meta.len(), name))
}

/// Checks that `len` bytes from `offset` lie inside `file` (a mapping past its end would
/// fault on first touch) and fit the address space; returns the range.
fn check_range(file: &File, offset: u64, len: u64, name: &str) -> Result<(u64, usize), OpenError> {
    let file_len = file
        .metadata()
        .map_err(|source| OpenError::Io {
            path: name.to_owned(),
            source,
        })?
        .len();
    let outside = || OpenError::Range {
        path: name.to_owned(),
        offset,
        len,
        file_len,
    };
    if offset.checked_add(len).is_none_or(|end| end > file_len) {
        return Err(outside());
    }
    let len = usize::try_from(len).map_err(|_| outside())?;
    Ok((offset, len))
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
    /// rewrites the file in place while it is mapped: touching a page past a new end
    /// raises `SIGBUS`, and rewritten pages change the weights underneath. Replace a
    /// model with a new file and a rename (the mapping keeps the old bytes), or read it
    /// into memory ([`LoadedGlint::read`]).
    /// Anything but a regular file is refused ([`OpenError::NotAFile`]) without blocking.
    pub fn open(path: impl AsRef<Path>) -> Result<Self, OpenError> {
        let (f, len, name) = open_regular(path.as_ref())?;
        Self::open_range(&f, 0, len, &name)
    }

    /// Reads the whole file at `path` into anonymous memory and validates it: the
    /// model then no longer depends on the file (it may be rewritten, truncated or
    /// deleted), at the cost of the weights' size in resident memory and a read of the
    /// file up front. The memory is page-aligned, as a mapping's; a failed allocation
    /// or read is an error, not an abort. Anything but a regular file is refused.
    pub fn read(path: impl AsRef<Path>) -> Result<Self, OpenError> {
        let (f, len, name) = open_regular(path.as_ref())?;
        let (_, len) = check_range(&f, 0, len, &name)?;
        let read = |source| OpenError::Read {
            path: name.clone(),
            source,
        };
        if len == 0 {
            return Self::from_shared(Arc::from(&[][..]), &name);
        }
        let mut mem = MmapOptions::new().len(len).map_anon().map_err(read)?;
        // As for a mapping of the file (`open_range`): fewer TLB misses.
        #[cfg(target_os = "linux")]
        let _ = mem.advise(memmap2::Advice::HugePage);
        (&f).read_exact(&mut mem).map_err(read)?;
        let mem = mem.make_read_only().map_err(read)?;
        Self::new(Owner::Map(mem), &name)
    }

    /// Maps and validates `len` bytes of `file` from `offset` (any offset: the map
    /// starts at the page below it). `name` names the file in errors. The range must lie
    /// inside the file: a mapping past its end would fault on first touch.
    pub fn open_range(file: &File, offset: u64, len: u64, name: &str) -> Result<Self, OpenError> {
        let io = |source| OpenError::Io {
            path: name.to_owned(),
            source,
        };
        let (offset, len) = check_range(file, offset, len, name)?;
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
