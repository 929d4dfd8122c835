//! The state record: which slot is confirmed, which is on trial and how often it has
//! booted. Two copies, each with a sequence number and a CRC; a new record is written
//! over the older copy, so a write torn by a power cut leaves the newer one intact.

use crate::layout::{PartitionTable, SlotId};
use crate::{UpdateError, storage};
use embedded_storage::nor_flash::NorFlash;

/// How many times a trial slot boots without being confirmed before it is abandoned.
pub const MAX_TRIAL_BOOTS: u8 = 3;
/// Bytes of an encoded record.
pub const RECORD_LEN: usize = 16;
const RECORD_MAGIC: [u8; 4] = *b"GLST";
const RECORD_VERSION: u8 = 1;

/// What a slot holds, as the state record says. Only `Trial`, `Confirmed` and
/// `Fallback` slots ever boot.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum SlotState {
    /// Nothing bootable: erased, being written, abandoned, or never used.
    Invalid,
    /// A verified new image that has not yet answered; boots first, a few times.
    Trial,
    /// The image known to work.
    Confirmed,
    /// The image confirmed before the current one; boots if the confirmed one fails
    /// its checks. The next update overwrites it.
    Fallback,
}

impl SlotState {
    fn code(self) -> u8 {
        match self {
            SlotState::Invalid => 0,
            SlotState::Trial => 1,
            SlotState::Confirmed => 2,
            SlotState::Fallback => 3,
        }
    }

    fn from_code(code: u8) -> Option<Self> {
        Some(match code {
            0 => SlotState::Invalid,
            1 => SlotState::Trial,
            2 => SlotState::Confirmed,
            3 => SlotState::Fallback,
            _ => return None,
        })
    }
}

/// The record both copies hold (the one with the newer sequence number wins).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct StateRecord {
    /// Incremented by every write; the newer of the two copies is the state.
    pub seq: u32,
    /// The state of slots A and B.
    pub slots: [SlotState; 2],
    /// How many times the trial slot has started booting (0 when there is none).
    pub trial_boots: u8,
}

impl StateRecord {
    /// The state of a blank device: nothing bootable.
    pub const BLANK: StateRecord = StateRecord {
        seq: 0,
        slots: [SlotState::Invalid; 2],
        trial_boots: 0,
    };

    /// The state of one slot.
    pub const fn slot(&self, slot: SlotId) -> SlotState {
        let [a, b] = self.slots;
        match slot {
            SlotId::A => a,
            SlotId::B => b,
        }
    }

    /// The first slot in the given state.
    pub fn find(&self, state: SlotState) -> Option<SlotId> {
        SlotId::BOTH.into_iter().find(|&s| self.slot(s) == state)
    }

    /// This record with one slot's state changed.
    pub const fn with(mut self, slot: SlotId, state: SlotState) -> Self {
        let [a, b] = &mut self.slots;
        match slot {
            SlotId::A => *a = state,
            SlotId::B => *b = state,
        }
        self
    }

    /// This record with another trial boot count.
    pub const fn with_trial_boots(mut self, boots: u8) -> Self {
        self.trial_boots = boots;
        self
    }

    /// The bytes stored in flash: magic, version, slot states, trial boots, sequence
    /// number, and the CRC-32 of all that.
    pub fn encode(&self) -> [u8; RECORD_LEN] {
        let mut out = [0u8; RECORD_LEN];
        let [m0, m1, m2, m3] = RECORD_MAGIC;
        let [s0, s1, s2, s3] = self.seq.to_le_bytes();
        let [a, b] = self.slots.map(SlotState::code);
        let body = [
            m0,
            m1,
            m2,
            m3,
            RECORD_VERSION,
            a,
            b,
            self.trial_boots,
            s0,
            s1,
            s2,
            s3,
        ];
        let [c0, c1, c2, c3] = crc32fast::hash(&body).to_le_bytes();
        for (o, v) in out.iter_mut().zip(body.into_iter().chain([c0, c1, c2, c3])) {
            *o = v;
        }
        out
    }

    /// Decodes a copy; `None` for anything but an intact, consistent record.
    pub fn decode(bytes: &[u8]) -> Option<Self> {
        let body = bytes.get(..12)?;
        let crc = u32::from_le_bytes(bytes.get(12..16)?.try_into().ok()?);
        if crc32fast::hash(body) != crc || body.get(..4)? != RECORD_MAGIC {
            return None;
        }
        let &[_, _, _, _, version, a, b, trial_boots, s0, s1, s2, s3] = body else {
            return None;
        };
        let record = StateRecord {
            seq: u32::from_le_bytes([s0, s1, s2, s3]),
            slots: [SlotState::from_code(a)?, SlotState::from_code(b)?],
            trial_boots,
        };
        let count = |state| record.slots.iter().filter(|&&s| s == state).count();
        let consistent = version == RECORD_VERSION
            && count(SlotState::Trial) <= 1
            && count(SlotState::Confirmed) <= 1
            && trial_boots <= MAX_TRIAL_BOOTS
            && (trial_boots == 0 || count(SlotState::Trial) == 1);
        consistent.then_some(record)
    }

    /// Whether this record was written after `other` (sequence numbers wrap).
    pub fn is_newer_than(&self, other: &StateRecord) -> bool {
        (self.seq.wrapping_sub(other.seq) as i32) > 0
    }
}

/// The state as flash holds it, and which copy holds it (`None`: neither copy is
/// intact, as on a blank device).
pub(crate) fn load<F: NorFlash>(
    flash: &mut F,
    table: &PartitionTable,
) -> Result<(StateRecord, Option<usize>), UpdateError> {
    let mut copies = [None; 2];
    for (copy, region) in copies.iter_mut().zip(table.state_copies) {
        let mut bytes = [0u8; RECORD_LEN];
        storage::read(flash, region.offset, &mut bytes)?;
        *copy = StateRecord::decode(&bytes);
    }
    Ok(match copies {
        [Some(a), Some(b)] if b.is_newer_than(&a) => (b, Some(1)),
        [Some(a), _] => (a, Some(0)),
        [None, Some(b)] => (b, Some(1)),
        [None, None] => (StateRecord::BLANK, None),
    })
}

/// Writes `record` (with the next sequence number after `current`) over the copy that
/// does not hold `current`; returns the record as written and the copy now holding it.
pub(crate) fn store<F: NorFlash>(
    flash: &mut F,
    table: &PartitionTable,
    current: (&StateRecord, Option<usize>),
    mut record: StateRecord,
) -> Result<(StateRecord, usize), UpdateError> {
    record.seq = current.0.seq.wrapping_add(1);
    let [first, second] = table.state_copies;
    let (copy, region) = match current.1 {
        Some(0) => (1, second),
        _ => (0, first),
    };
    storage::replace(flash, region, &record.encode())?;
    Ok((record, copy))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip_and_reject_damage() {
        let r = StateRecord {
            seq: 7,
            slots: [SlotState::Confirmed, SlotState::Trial],
            trial_boots: 2,
        };
        let bytes = r.encode();
        assert_eq!(StateRecord::decode(&bytes), Some(r));
        for i in 0..RECORD_LEN {
            for bit in 0..8 {
                let mut b = bytes;
                b[i] ^= 1 << bit;
                assert_eq!(StateRecord::decode(&b), None, "byte {i} bit {bit}");
            }
        }
        assert_eq!(StateRecord::decode(&[0xff; RECORD_LEN]), None);
        assert_eq!(StateRecord::decode(&bytes[..RECORD_LEN - 1]), None);
    }

    #[test]
    fn inconsistent_records_are_rejected() {
        let two_trials = StateRecord {
            seq: 1,
            slots: [SlotState::Trial; 2],
            trial_boots: 0,
        };
        let boots_without_trial = StateRecord {
            seq: 1,
            slots: [SlotState::Confirmed, SlotState::Invalid],
            trial_boots: 1,
        };
        for r in [two_trials, boots_without_trial] {
            assert_eq!(StateRecord::decode(&r.encode()), None, "{r:?}");
        }
    }

    #[test]
    fn sequence_numbers_wrap() {
        let old = StateRecord {
            seq: u32::MAX,
            ..StateRecord::BLANK
        };
        let new = StateRecord {
            seq: 0,
            ..StateRecord::BLANK
        };
        assert!(new.is_newer_than(&old));
        assert!(!old.is_newer_than(&new));
    }
}
