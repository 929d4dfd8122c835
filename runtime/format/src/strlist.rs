//! String lists: the one encoding of every list of names in the file (tokens, merges,
//! tensor names, provenance). Layout: `u32 count`, `u32 blob_len`, `u32 ends[count]`
//! (end offset of string `i` in the blob, non-decreasing), the UTF-8 blob, zero padding
//! to a multiple of 4.

use crate::FormatError;
use crate::bytes::{Reader, u32_at};
#[cfg(feature = "std")]
use no_std_compat::vec::Vec;

/// A validated list of strings borrowed from the file.
#[derive(Clone, Copy, Debug)]
pub struct StrList<'a> {
    ends: &'a [u8],
    blob: &'a str,
}

impl<'a> StrList<'a> {
    pub(crate) fn read(r: &mut Reader<'a>, what: &'static str) -> Result<Self, FormatError> {
        let count = r.u32()?;
        let blob_len = r.u32()?;
        let ends = r.take_n(count, 4)?;
        let blob = r.take(blob_len as usize)?;
        r.align4()?;
        let blob = core::str::from_utf8(blob).map_err(|_| FormatError::BadUtf8(what))?;
        let mut prev = 0usize;
        for i in 0..count as usize {
            let end = u32_at(ends, i) as usize;
            if end < prev || end > blob.len() || !blob.is_char_boundary(end) {
                return Err(FormatError::BadStringTable(what));
            }
            prev = end;
        }
        if prev != blob.len() {
            return Err(FormatError::BadStringTable(what));
        }
        Ok(Self { ends, blob })
    }

    /// Number of strings.
    pub fn len(&self) -> usize {
        self.ends.len() / 4
    }

    /// True when the list holds no strings.
    pub fn is_empty(&self) -> bool {
        self.ends.is_empty()
    }

    /// String `i`, or `None` past the end.
    pub fn get(&self, i: usize) -> Option<&'a str> {
        if i >= self.len() {
            return None;
        }
        let start = if i == 0 {
            0
        } else {
            u32_at(self.ends, i - 1) as usize
        };
        // Bounds and char boundaries were checked in `read`.
        self.blob.get(start..u32_at(self.ends, i) as usize)
    }

    /// All strings in order.
    pub fn iter(&self) -> impl Iterator<Item = &'a str> + '_ {
        (0..self.len()).filter_map(|i| self.get(i))
    }
}

#[cfg(feature = "std")]
/// Appends a string list in the file encoding.
pub(crate) fn write_strlist<S: AsRef<str>>(out: &mut Vec<u8>, items: &[S]) {
    let blob_len: usize = items.iter().map(|s| s.as_ref().len()).sum();
    out.extend_from_slice(&(items.len() as u32).to_le_bytes());
    out.extend_from_slice(&(blob_len as u32).to_le_bytes());
    let mut end = 0u32;
    for s in items {
        end += s.as_ref().len() as u32;
        out.extend_from_slice(&end.to_le_bytes());
    }
    for s in items {
        out.extend_from_slice(s.as_ref().as_bytes());
    }
    pad4(out);
}

#[cfg(feature = "std")]
pub(crate) fn pad4(out: &mut Vec<u8>) {
    out.resize(out.len().next_multiple_of(4), 0);
}
