//! The partition table: two copies of the state record and two model slots (A/B), each
//! slot a signed manifest followed by the model image.

use crate::UpdateError;

/// A byte range of the model flash.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct Region {
    /// First byte.
    pub offset: u32,
    /// Length in bytes.
    pub len: u32,
}

impl Region {
    /// One past the last byte, `None` if that overflows.
    pub const fn end(&self) -> Option<u32> {
        self.offset.checked_add(self.len)
    }

    fn overlaps(&self, other: &Region) -> bool {
        let (a, b) = (self.offset as u64, other.offset as u64);
        a < b + other.len as u64 && b < a + self.len as u64
    }
}

/// One of the two model slots.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum SlotId {
    /// The first slot.
    A,
    /// The second slot.
    B,
}

impl SlotId {
    /// Both slots, A first.
    pub const BOTH: [SlotId; 2] = [SlotId::A, SlotId::B];
}

/// Where everything lives in the model flash. Every region is whole erase sectors.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct PartitionTable {
    /// The two copies of the state record, each in sectors of its own.
    pub state_copies: [Region; 2],
    /// Slots A and B.
    pub slots: [Region; 2],
    /// Bytes at the start of each slot kept for its manifest (header, signature and
    /// chunk table); the image follows. A multiple of the erase size.
    pub manifest_len: u32,
}

/// Reads and writes go through a buffer of this many bytes; the flash's write size
/// must divide it.
pub(crate) const BLOCK: usize = 256;

impl PartitionTable {
    /// The usual table: the two state copies in sectors 0 and 1, then slot A, then slot
    /// B, each `slot_len` bytes whose first `manifest_len` hold the manifest.
    /// [`check`](Self::check) tells whether it fits a flash.
    pub const fn sequential(erase_size: u32, manifest_len: u32, slot_len: u32) -> Self {
        let slot_a = erase_size.saturating_mul(2);
        PartitionTable {
            state_copies: [
                Region {
                    offset: 0,
                    len: erase_size,
                },
                Region {
                    offset: erase_size,
                    len: erase_size,
                },
            ],
            slots: [
                Region {
                    offset: slot_a,
                    len: slot_len,
                },
                Region {
                    offset: slot_a.saturating_add(slot_len),
                    len: slot_len,
                },
            ],
            manifest_len,
        }
    }

    /// The whole of a slot.
    pub const fn slot(&self, slot: SlotId) -> Region {
        let [a, b] = self.slots;
        match slot {
            SlotId::A => a,
            SlotId::B => b,
        }
    }

    /// The part of a slot that holds its manifest.
    pub const fn manifest_area(&self, slot: SlotId) -> Region {
        Region {
            offset: self.slot(slot).offset,
            len: self.manifest_len,
        }
    }

    /// The part of a slot that holds its image.
    pub const fn image_area(&self, slot: SlotId) -> Region {
        let s = self.slot(slot);
        Region {
            offset: s.offset.saturating_add(self.manifest_len),
            len: s.len.saturating_sub(self.manifest_len),
        }
    }

    /// Checks the table against a flash of `capacity` bytes with the given erase, write
    /// and read sizes: regions sector-aligned, inside the flash and disjoint, and sizes
    /// this crate can drive.
    pub fn check(
        &self,
        capacity: usize,
        erase_size: usize,
        write_size: usize,
        read_size: usize,
    ) -> Result<(), UpdateError> {
        let bad = |why| Err(UpdateError::Layout(why));
        if write_size == 0 || !BLOCK.is_multiple_of(write_size) {
            return bad("write size must divide 256");
        }
        if read_size == 0 || 32 % read_size != 0 {
            return bad("read size must divide 32");
        }
        if erase_size == 0 || !erase_size.is_multiple_of(BLOCK) {
            return bad("erase size must be a multiple of 256");
        }
        let regions = [
            self.state_copies[0],
            self.state_copies[1],
            self.slots[0],
            self.slots[1],
        ];
        for (i, r) in regions.iter().enumerate() {
            let Some(end) = r.end() else {
                return bad("region past 4 GiB");
            };
            if r.len == 0
                || !(r.offset as usize).is_multiple_of(erase_size)
                || !(r.len as usize).is_multiple_of(erase_size)
            {
                return bad("region not whole erase sectors");
            }
            if end as usize > capacity {
                return bad("region past the end of the flash");
            }
            if regions.iter().skip(i + 1).any(|o| o.overlaps(r)) {
                return bad("regions overlap");
            }
        }
        if !(self.manifest_len as usize).is_multiple_of(erase_size) {
            return bad("manifest area not whole erase sectors");
        }
        if (self.manifest_len as usize) < crate::manifest::SIGNED_LEN + crate::manifest::HASH_LEN {
            return bad("manifest area too small");
        }
        if self.slots.iter().any(|s| s.len <= self.manifest_len) {
            return bad("slot has no room for an image");
        }
        Ok(())
    }
}
