//! Board support for the glasses (`no_std`). For now: opening the model image that the
//! flash holds, with the same parser the runtime uses (`glint-format` without `std`).
//! Flash slots, the flashing protocol and the emulator come with the board issue.
#![no_std]

pub use glint_format::{FormatError, GlintFile};

/// Opens the `.glint` image stored in a memory-mapped flash region and, when `verify`
/// is set, checks its SHA-256 and per-tensor CRCs (after flashing, before first boot).
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
