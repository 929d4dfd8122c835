//! Board support for the glasses (`no_std`): the model store and its update, and the
//! peripherals an assistant touches.
//!
//! - [`Updater`]: the model flash as a [`PartitionTable`] of two slots (A/B) and a
//!   replicated [`StateRecord`]; signed [`Manifest`]s; chunked, resumable transfers;
//!   trial boots, confirmation and rollback. Every step survives a power cut at any
//!   flash operation.
//! - [`Board`]: a talk button, a status LED and a display over embedded-hal 1.0 and
//!   embedded-graphics, with the model store over embedded-storage.
//! - [`protocol`]: the flashing protocol's frames and messages, and its device side
//!   ([`protocol::FlashLink`]) that drives an [`Updater`] over any byte stream.
//! - With `std`: [`MemFlash`], an in-memory NOR flash that cuts power on demand (for
//!   tests and the desktop emulator), and [`host`], key generation and signing.
//!
//! The `.glint` parser is the runtime's own (`glint-format` without `std`).
#![no_std]
#![warn(missing_docs)]
#![cfg_attr(
    not(test),
    deny(
        clippy::indexing_slicing,
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::panic
    )
)]

#[cfg(feature = "std")]
extern crate std;

mod board;
mod error;
mod fmt;
mod layout;
mod manifest;
#[cfg(feature = "std")]
mod mem_flash;
pub mod protocol;
mod state;
mod storage;
mod update;

#[cfg(feature = "std")]
pub mod host;

pub use board::{Board, BoardError, FONT, WrapLines, wrap_lines};
pub use ed25519_dalek;
pub use error::UpdateError;
pub(crate) use fmt::{log_info, log_warn};
pub use glint_format::{FormatError, GlintFile};
pub use layout::{PartitionTable, Region, SlotId};
pub use manifest::{
    HASH_LEN, HEADER_LEN, MANIFEST_MAGIC, MANIFEST_VERSION, MODEL_ID_LEN, Manifest, ManifestError,
    ManifestHeader, SIGNATURE_LEN, SIGNED_LEN,
};
#[cfg(feature = "std")]
pub use mem_flash::{MemFlash, MemFlashError, PowerCut};
pub use state::{MAX_TRIAL_BOOTS, RECORD_LEN, SlotState, StateRecord};
pub use storage::MappedFlash;
pub use update::{BootedSlot, TransferProgress, Updater};

/// Opens the `.glint` image stored in a memory-mapped flash region and, when `verify`
/// is set, checks its SHA-256 and per-tensor CRCs.
pub fn open_model_image(flash: &[u8], verify: bool) -> Result<GlintFile<'_>, FormatError> {
    let file = GlintFile::parse(flash)?;
    if verify {
        file.verify()?;
    }
    Ok(file)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn garbage_flash_is_a_typed_error() {
        assert_eq!(
            open_model_image(&[0xff; 256], true).unwrap_err(),
            FormatError::BadMagic
        );
        assert!(matches!(
            open_model_image(&[], false),
            Err(FormatError::Truncated { .. })
        ));
    }
}
