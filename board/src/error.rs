//! The errors of the model store and update.

use crate::manifest::ManifestError;
use embedded_storage::nor_flash::NorFlashErrorKind;
use glint_format::FormatError;

/// Everything that can go wrong in the model store. No input makes it panic: every
/// defect maps to one of these.
#[derive(Debug, PartialEq, thiserror::Error)]
pub enum UpdateError {
    /// The flash driver failed (or power was cut, in the simulator).
    #[error("flash: {0}")]
    Flash(NorFlashErrorKind),
    /// The partition table does not fit the flash, or the flash's geometry is one this
    /// crate cannot drive.
    #[error("bad partition table: {0}")]
    Layout(&'static str),
    /// The manifest is malformed or its signature does not verify.
    #[error("manifest: {0}")]
    Manifest(#[from] ManifestError),
    /// The manifest does not fit the slot's manifest area.
    #[error("manifest of {len} bytes, the slot has room for {room}")]
    ManifestTooLarge {
        /// Manifest bytes.
        len: usize,
        /// Room in the slot.
        room: u32,
    },
    /// The image does not fit a slot.
    #[error("image of {len} bytes, a slot has room for {room}")]
    ImageTooLarge {
        /// Image bytes.
        len: u32,
        /// Room in the slot.
        room: u32,
    },
    /// Chunks must be whole erase sectors, so each can be erased and rewritten alone.
    #[error("chunk size {chunk_size} is not a multiple of the erase size {erase_size}")]
    ChunkSize {
        /// The manifest's chunk size.
        chunk_size: u32,
        /// The flash's erase size.
        erase_size: u32,
    },
    /// A trial slot awaits its verdict; no update of another image until it is
    /// confirmed or rejected (its own image is answered as complete).
    #[error("a trial slot is pending: confirm or reject it first")]
    TrialPending,
    /// Every slot is confirmed or booted.
    #[error("no slot is free for an update")]
    NoFreeSlot,
    /// A chunk or `finish` without a transfer begun.
    #[error("no transfer in progress")]
    NoTransfer,
    /// A chunk other than the next one (or an earlier one).
    #[error("chunk {got} out of order, expected {expected}")]
    UnexpectedChunk {
        /// The next chunk the device expects.
        expected: u32,
        /// The chunk sent.
        got: u32,
    },
    /// A chunk of the wrong length.
    #[error("chunk {index} is {got} bytes, expected {expected}")]
    ChunkLength {
        /// Chunk index.
        index: u32,
        /// Bytes the manifest implies.
        expected: u32,
        /// Bytes sent.
        got: usize,
    },
    /// A chunk does not hash to the manifest's SHA-256: corrupted in transit, resend it.
    #[error("chunk {index} does not match its hash")]
    ChunkHashMismatch {
        /// Chunk index.
        index: u32,
    },
    /// What the flash holds after a write is not what was written.
    #[error("flash read-back differs from what was written")]
    ReadBack,
    /// `finish` before every chunk is in.
    #[error("transfer incomplete: {next_chunk} of {chunk_count} chunks")]
    Incomplete {
        /// Chunks written.
        next_chunk: u32,
        /// Chunks in the image.
        chunk_count: u32,
    },
    /// The image in flash does not hash to the manifest's SHA-256.
    #[error("image does not match the manifest's SHA-256")]
    ImageHashMismatch,
    /// The image is not a valid `.glint` model.
    #[error("model image: {0}")]
    Model(#[from] FormatError),
    /// The image's `.glint` version is not the one the manifest names.
    #[error("manifest says .glint version {manifest}, the image is {image}")]
    FormatVersion {
        /// Major version in the manifest.
        manifest: u16,
        /// Major version in the image.
        image: u16,
    },
    /// `confirm` or `reject` without a trial slot.
    #[error("no trial slot")]
    NoTrial,
    /// `confirm` when this boot did not boot the trial slot.
    #[error("the trial slot was not booted")]
    TrialNotBooted,
    /// Neither slot holds a bootable model.
    #[error("no bootable model")]
    NoBootableSlot,
}
