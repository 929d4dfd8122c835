//! Flash access through the `embedded-storage` traits: reads and writes of any length
//! through a small stack buffer, erases of whole regions, hashing and comparing in place.

use crate::UpdateError;
use crate::layout::{BLOCK, Region};
use embedded_storage::nor_flash::{NorFlash, NorFlashError, ReadNorFlash};
use sha2::{Digest, Sha256};

/// Flash that the CPU can also read in place (memory-mapped or execute-in-place flash,
/// or the emulator's memory), so that a model slot can be handed over as a byte slice.
pub trait MappedFlash {
    /// The whole flash, as the CPU sees it.
    fn mapped(&self) -> &[u8];
}

pub(crate) fn flash_error<E: NorFlashError>(e: E) -> UpdateError {
    UpdateError::Flash(e.kind())
}

fn advance(at: u32, by: usize) -> Result<u32, UpdateError> {
    u32::try_from(by)
        .ok()
        .and_then(|by| at.checked_add(by))
        .ok_or(UpdateError::Layout("offset past 4 GiB"))
}

/// Calls `visit` on the bytes of `[offset, offset + len)` in order, a block at a time.
/// The read size must divide 32 and `offset` be a multiple of 32 (the table checks).
pub(crate) fn visit<F: ReadNorFlash>(
    flash: &mut F,
    offset: u32,
    len: usize,
    mut visit: impl FnMut(&[u8]),
) -> Result<(), UpdateError> {
    let mut block = [0u8; BLOCK];
    let (mut at, mut left) = (offset, len);
    while left > 0 {
        let n = left.min(BLOCK);
        let padded = n.next_multiple_of(F::READ_SIZE.max(1));
        let buf = block
            .get_mut(..padded)
            .ok_or(UpdateError::Layout("read size"))?;
        flash.read(at, buf).map_err(flash_error)?;
        visit(buf.get(..n).unwrap_or_default());
        at = advance(at, n)?;
        left -= n;
    }
    Ok(())
}

/// Reads `out.len()` bytes at `offset`.
pub(crate) fn read<F: ReadNorFlash>(
    flash: &mut F,
    offset: u32,
    out: &mut [u8],
) -> Result<(), UpdateError> {
    let mut pos = 0;
    visit(flash, offset, out.len(), |bytes| {
        if let Some(dst) = out.get_mut(pos..pos + bytes.len()) {
            dst.copy_from_slice(bytes);
        }
        pos += bytes.len();
    })
}

/// SHA-256 of `len` bytes at `offset`.
pub(crate) fn sha256<F: ReadNorFlash>(
    flash: &mut F,
    offset: u32,
    len: usize,
) -> Result<[u8; 32], UpdateError> {
    let mut hash = Sha256::new();
    visit(flash, offset, len, |bytes| hash.update(bytes))?;
    Ok(hash.finalize().into())
}

/// Whether the flash at `offset` holds exactly `expected`.
pub(crate) fn holds<F: ReadNorFlash>(
    flash: &mut F,
    offset: u32,
    expected: &[u8],
) -> Result<bool, UpdateError> {
    let (mut pos, mut same) = (0, true);
    visit(flash, offset, expected.len(), |bytes| {
        same &= expected.get(pos..pos + bytes.len()) == Some(bytes);
        pos += bytes.len();
    })?;
    Ok(same)
}

/// Erases the erase sectors that `region` covers (`region` starts on a sector).
pub(crate) fn erase<F: NorFlash>(flash: &mut F, region: Region) -> Result<(), UpdateError> {
    let len = (region.len as usize).next_multiple_of(F::ERASE_SIZE.max(1));
    let end = advance(region.offset, len)?;
    flash.erase(region.offset, end).map_err(flash_error)
}

/// Writes `bytes` at `offset` (a multiple of the write size), the last partial write
/// unit padded with 0xFF (the erased value, so the padding changes nothing).
pub(crate) fn write_padded<F: NorFlash>(
    flash: &mut F,
    offset: u32,
    bytes: &[u8],
) -> Result<(), UpdateError> {
    let unit = F::WRITE_SIZE.max(1);
    let (whole, tail) = bytes.split_at(bytes.len() - bytes.len() % unit);
    if !whole.is_empty() {
        flash.write(offset, whole).map_err(flash_error)?;
    }
    if !tail.is_empty() {
        let mut pad = [0xffu8; BLOCK];
        let pad = pad
            .get_mut(..unit)
            .ok_or(UpdateError::Layout("write size"))?;
        if let Some(dst) = pad.get_mut(..tail.len()) {
            dst.copy_from_slice(tail);
        }
        flash
            .write(advance(offset, whole.len())?, pad)
            .map_err(flash_error)?;
    }
    Ok(())
}

/// Erases `region`, writes `bytes` at its start and reads them back.
pub(crate) fn replace<F: NorFlash>(
    flash: &mut F,
    region: Region,
    bytes: &[u8],
) -> Result<(), UpdateError> {
    erase(flash, region)?;
    write_padded(flash, region.offset, bytes)?;
    if holds(flash, region.offset, bytes)? {
        Ok(())
    } else {
        Err(UpdateError::ReadBack)
    }
}
