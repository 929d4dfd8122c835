//! Bounds-checked little-endian reads over the file bytes. Every read returns
//! [`FormatError::SectionOverrun`] instead of panicking when it would run past the end.

use crate::FormatError;

/// A read cursor over one section of the file.
#[derive(Clone, Copy)]
pub(crate) struct Reader<'a> {
    bytes: &'a [u8],
    pos: usize,
    /// Name of the section, for error messages.
    section: &'static str,
}

impl<'a> Reader<'a> {
    pub(crate) fn new(bytes: &'a [u8], section: &'static str) -> Self {
        Self {
            bytes,
            pos: 0,
            section,
        }
    }

    pub(crate) fn take(&mut self, n: usize) -> Result<&'a [u8], FormatError> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|&e| e <= self.bytes.len())
            .ok_or(FormatError::SectionOverrun(self.section))?;
        let s = &self.bytes[self.pos..end];
        self.pos = end;
        Ok(s)
    }

    pub(crate) fn array<const N: usize>(&mut self) -> Result<[u8; N], FormatError> {
        let mut a = [0u8; N];
        a.copy_from_slice(self.take(N)?);
        Ok(a)
    }

    pub(crate) fn u16(&mut self) -> Result<u16, FormatError> {
        self.array().map(u16::from_le_bytes)
    }

    pub(crate) fn u32(&mut self) -> Result<u32, FormatError> {
        self.array().map(u32::from_le_bytes)
    }

    pub(crate) fn i32(&mut self) -> Result<i32, FormatError> {
        self.array().map(i32::from_le_bytes)
    }

    pub(crate) fn u64(&mut self) -> Result<u64, FormatError> {
        self.array().map(u64::from_le_bytes)
    }

    pub(crate) fn f32(&mut self) -> Result<f32, FormatError> {
        self.array().map(f32::from_le_bytes)
    }

    /// Skips to the next multiple of 4 from the section start.
    pub(crate) fn align4(&mut self) -> Result<(), FormatError> {
        let pad = self.pos.next_multiple_of(4) - self.pos;
        self.take(pad).map(|_| ())
    }

    /// `count` elements of `size` bytes, with the multiplication checked.
    pub(crate) fn take_n(&mut self, count: u32, size: usize) -> Result<&'a [u8], FormatError> {
        let n = (count as usize)
            .checked_mul(size)
            .ok_or(FormatError::SectionOverrun(self.section))?;
        self.take(n)
    }
}

/// The `i`-th little-endian u32 of `b` (callers guarantee the bound).
pub(crate) fn u32_at(b: &[u8], i: usize) -> u32 {
    u32::from_le_bytes([b[4 * i], b[4 * i + 1], b[4 * i + 2], b[4 * i + 3]])
}
