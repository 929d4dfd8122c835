//! A NOR flash in memory with the real rules, and power cuts on demand: the flash of the
//! host tests and of the desktop emulator.
//!
//! Rules: writes start on a multiple of `WRITE` bytes and are whole multiples of it;
//! erases cover whole `ERASE`-byte sectors and set every bit; a write only clears bits
//! (writing a 1 over a 0 is an error: the sector must be erased first).
//!
//! Every sector erased and every `write` call is one *operation*, counted from 0. A
//! [`PowerCut`] at operation N stops the flash there: that operation is applied not at
//! all or, if torn, in part (the first half of the bytes), and every call after it
//! fails with [`MemFlashError::PowerOff`] until [`MemFlash::power_on`].
//!
//! The bytes live in any `S: AsRef<[u8]> + AsMut<[u8]>`: a `Vec` (the default, tests) or
//! a writable memory map of a file (the desktop emulator's flash, persisted as it is
//! written).

use crate::storage::MappedFlash;
use embedded_storage::nor_flash::{
    ErrorType, NorFlash, NorFlashError, NorFlashErrorKind, ReadNorFlash,
};
use std::vec;
use std::vec::Vec;

/// Where power is cut.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PowerCut {
    /// The operation (write call or sector erase, counted from 0 since the flash was
    /// made) during which power goes.
    pub at_op: u64,
    /// Whether that operation is half done (torn) rather than not done at all.
    pub torn: bool,
}

/// What [`MemFlash`] refuses.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum MemFlashError {
    /// Offset or length not a multiple of the write or erase size.
    #[error("not aligned")]
    NotAligned,
    /// Past the end of the flash.
    #[error("out of bounds")]
    OutOfBounds,
    /// A write would set a bit that is 0: the sector was not erased.
    #[error("write of a 1 over a 0 at {0:#x}: erase first")]
    NotErased(u32),
    /// Power is off (cut by a [`PowerCut`]).
    #[error("power is off")]
    PowerOff,
}

impl NorFlashError for MemFlashError {
    fn kind(&self) -> NorFlashErrorKind {
        match self {
            MemFlashError::NotAligned => NorFlashErrorKind::NotAligned,
            MemFlashError::OutOfBounds => NorFlashErrorKind::OutOfBounds,
            MemFlashError::NotErased(_) | MemFlashError::PowerOff => NorFlashErrorKind::Other,
        }
    }
}

/// An in-memory NOR flash of `WRITE`-byte write units and `ERASE`-byte sectors, its
/// bytes held in `S`.
#[derive(Clone, Debug)]
pub struct MemFlash<const WRITE: usize, const ERASE: usize, S = Vec<u8>> {
    bytes: S,
    ops: u64,
    cut: Option<PowerCut>,
    powered: bool,
}

impl<const WRITE: usize, const ERASE: usize> MemFlash<WRITE, ERASE> {
    /// An erased flash of `sectors` sectors.
    pub fn new(sectors: usize) -> Self {
        Self::from_storage(vec![0xff; sectors.saturating_mul(ERASE)])
    }
}

impl<const WRITE: usize, const ERASE: usize, S: AsRef<[u8]> + AsMut<[u8]>>
    MemFlash<WRITE, ERASE, S>
{
    /// A flash over `bytes` as they are (what a flash file holds; all 0xFF when erased).
    /// Its capacity is their length.
    pub fn from_storage(bytes: S) -> Self {
        MemFlash {
            bytes,
            ops: 0,
            cut: None,
            powered: true,
        }
    }

    /// The storage, as given to [`from_storage`](Self::from_storage).
    pub fn storage(&self) -> &S {
        &self.bytes
    }

    /// Write and erase operations so far.
    pub fn ops(&self) -> u64 {
        self.ops
    }

    /// Arms a power cut (replacing any armed one).
    pub fn cut_power(&mut self, cut: PowerCut) {
        self.cut = Some(cut);
    }

    /// Powers the flash back on after a cut, and disarms any cut not yet reached.
    pub fn power_on(&mut self) {
        self.powered = true;
        self.cut = None;
    }

    /// Whether power is on.
    pub fn is_powered(&self) -> bool {
        self.powered
    }

    /// The whole contents.
    pub fn bytes(&self) -> &[u8] {
        self.bytes.as_ref()
    }

    /// The whole contents, to change by hand (to corrupt a test's flash).
    pub fn bytes_mut(&mut self) -> &mut [u8] {
        self.bytes.as_mut()
    }

    fn range(&self, offset: u32, len: usize) -> Result<core::ops::Range<usize>, MemFlashError> {
        let start = offset as usize;
        let end = start.checked_add(len).ok_or(MemFlashError::OutOfBounds)?;
        if !self.powered {
            return Err(MemFlashError::PowerOff);
        }
        if end > self.bytes.as_ref().len() {
            return Err(MemFlashError::OutOfBounds);
        }
        Ok(start..end)
    }

    /// Counts an operation; `Some(torn)` if power goes during it.
    fn next_op(&mut self) -> Option<bool> {
        let op = self.ops;
        self.ops += 1;
        let cut = self.cut.filter(|c| c.at_op == op)?;
        self.powered = false;
        Some(cut.torn)
    }
}

impl<const WRITE: usize, const ERASE: usize, S: AsRef<[u8]> + AsMut<[u8]>> ErrorType
    for MemFlash<WRITE, ERASE, S>
{
    type Error = MemFlashError;
}

impl<const WRITE: usize, const ERASE: usize, S: AsRef<[u8]> + AsMut<[u8]>> ReadNorFlash
    for MemFlash<WRITE, ERASE, S>
{
    const READ_SIZE: usize = 1;

    fn read(&mut self, offset: u32, out: &mut [u8]) -> Result<(), MemFlashError> {
        let range = self.range(offset, out.len())?;
        out.copy_from_slice(self.bytes.as_ref().get(range).unwrap_or_default());
        Ok(())
    }

    fn capacity(&self) -> usize {
        self.bytes.as_ref().len()
    }
}

impl<const WRITE: usize, const ERASE: usize, S: AsRef<[u8]> + AsMut<[u8]>> NorFlash
    for MemFlash<WRITE, ERASE, S>
{
    const WRITE_SIZE: usize = WRITE;
    const ERASE_SIZE: usize = ERASE;

    fn erase(&mut self, from: u32, to: u32) -> Result<(), MemFlashError> {
        let len = (to as usize)
            .checked_sub(from as usize)
            .ok_or(MemFlashError::OutOfBounds)?;
        let range = self.range(from, len)?;
        if !(from as usize).is_multiple_of(ERASE) || len % ERASE != 0 {
            return Err(MemFlashError::NotAligned);
        }
        for start in range.step_by(ERASE) {
            let torn = self.next_op();
            let sector = self
                .bytes
                .as_mut()
                .get_mut(start..start + ERASE)
                .unwrap_or_default();
            match torn {
                None => sector.fill(0xff),
                Some(torn) => {
                    if torn {
                        sector.get_mut(..ERASE / 2).unwrap_or_default().fill(0xff);
                    }
                    return Err(MemFlashError::PowerOff);
                }
            }
        }
        Ok(())
    }

    fn write(&mut self, offset: u32, bytes: &[u8]) -> Result<(), MemFlashError> {
        let range = self.range(offset, bytes.len())?;
        if !(offset as usize).is_multiple_of(WRITE) || !bytes.len().is_multiple_of(WRITE) {
            return Err(MemFlashError::NotAligned);
        }
        let old = self.bytes.as_ref().get(range.clone()).unwrap_or_default();
        if let Some(at) = old.iter().zip(bytes).position(|(&o, &n)| n & !o != 0) {
            return Err(MemFlashError::NotErased(offset.saturating_add(at as u32)));
        }
        let applied = match self.next_op() {
            None => bytes.len(),
            Some(true) => bytes.len() / 2,
            Some(false) => 0,
        };
        let dst = self.bytes.as_mut().get_mut(range).unwrap_or_default();
        for (d, &b) in dst.iter_mut().zip(bytes).take(applied) {
            *d &= b;
        }
        if self.powered {
            Ok(())
        } else {
            Err(MemFlashError::PowerOff)
        }
    }
}

impl<const WRITE: usize, const ERASE: usize, S: AsRef<[u8]> + AsMut<[u8]>> MappedFlash
    for MemFlash<WRITE, ERASE, S>
{
    fn mapped(&self) -> &[u8] {
        self.bytes.as_ref()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    type Flash = MemFlash<4, 256>;

    #[test]
    fn the_nor_rules_hold() {
        let mut f = Flash::new(4);
        assert_eq!(f.capacity(), 1024);
        f.write(0, &[0x0f, 0xff, 0xff, 0xff]).unwrap();
        // Clearing more bits is allowed; setting one is not.
        f.write(0, &[0x0e, 0xff, 0xff, 0xff]).unwrap();
        assert_eq!(
            f.write(0, &[0x1e, 0xff, 0xff, 0xff]),
            Err(MemFlashError::NotErased(0))
        );
        assert_eq!(f.write(2, &[0; 4]), Err(MemFlashError::NotAligned));
        assert_eq!(f.write(0, &[0; 3]), Err(MemFlashError::NotAligned));
        assert_eq!(f.write(1024, &[0; 4]), Err(MemFlashError::OutOfBounds));
        assert_eq!(f.erase(0, 100), Err(MemFlashError::NotAligned));
        assert_eq!(f.erase(256, 0), Err(MemFlashError::OutOfBounds));
        assert_eq!(f.erase(0, 2048), Err(MemFlashError::OutOfBounds));
        f.erase(0, 256).unwrap();
        let mut b = [0; 4];
        f.read(0, &mut b).unwrap();
        assert_eq!(b, [0xff; 4]);
        assert_eq!(f.ops(), 3, "two writes and one sector erase succeeded");
    }

    #[test]
    fn a_power_cut_stops_the_flash_and_may_tear_the_operation() {
        for torn in [false, true] {
            let mut f = Flash::new(4);
            f.cut_power(PowerCut { at_op: 1, torn });
            f.write(0, &[0; 8]).unwrap();
            assert_eq!(f.write(8, &[0; 8]), Err(MemFlashError::PowerOff));
            assert_eq!(
                f.bytes()[8..16],
                if torn {
                    [0, 0, 0, 0, 0xff, 0xff, 0xff, 0xff]
                } else {
                    [0xff; 8]
                }
            );
            assert_eq!(f.read(0, &mut [0; 4]), Err(MemFlashError::PowerOff));
            f.power_on();
            // The erase of sector 1 of 0..2 is cut: sector 0 erased, sector 1 half or not.
            f.cut_power(PowerCut { at_op: 4, torn });
            f.write(256, &[0; 256]).unwrap();
            assert_eq!(f.erase(0, 512), Err(MemFlashError::PowerOff));
            assert!(f.bytes()[..256].iter().all(|&b| b == 0xff));
            assert_eq!(f.bytes()[256] == 0xff, torn);
            assert_eq!(f.bytes()[511], 0);
        }
    }
}
