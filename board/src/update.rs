//! The A/B model update, driven by whoever talks to the host (the flashing protocol):
//!
//! 1. [`Updater::begin`] checks the signed manifest, marks the inactive slot invalid
//!    in the state record (before its first write) and stores the manifest there, or,
//!    when the slot already holds the same manifest, finds how many chunks already
//!    verify: a transfer cut by a power loss resumes from the last verified chunk.
//! 2. [`Updater::write_chunk`] takes chunks in order, each checked against its SHA-256
//!    before it is written and after.
//! 3. [`Updater::finish`] hashes the whole image in flash, parses it as a `.glint`
//!    model, and only then makes the slot the *trial* slot. Finishing again, or
//!    beginning again with the trial's own manifest and then finishing, answers the
//!    trial slot again: a host that lost the answer still learns it succeeded.
//! 4. [`Updater::boot`] boots the trial slot (at most [`MAX_TRIAL_BOOTS`] times), else
//!    the confirmed one, else the fallback.
//! 5. [`Updater::confirm`], once the trial model has loaded and answered, makes it the
//!    confirmed slot; [`Updater::reject`] abandons it at once.
//!
//! Every change of state is one write of the replicated state record, so a power cut
//! at any flash operation leaves either the state before or the state after it.

use crate::layout::{PartitionTable, Region, SlotId};
use crate::manifest::{HASH_LEN, HEADER_LEN, Manifest, ManifestHeader, SIGNED_LEN};
use crate::state::{self, MAX_TRIAL_BOOTS, SlotState, StateRecord};
use crate::storage::{self, MappedFlash};
use crate::{UpdateError, log_info, log_warn};
use ed25519_dalek::VerifyingKey;
use embedded_storage::nor_flash::NorFlash;
use glint_format::{FormatError, GlintFile};
use sha2::{Digest, Sha256};

/// Where a transfer stands: what [`Updater::begin`] and [`Updater::write_chunk`] report,
/// and what the host needs to go on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct TransferProgress {
    /// The slot being written.
    pub slot: SlotId,
    /// The next chunk the device expects: every chunk before it is in flash, verified.
    pub next_chunk: u32,
    /// Chunks in the image.
    pub chunk_count: u32,
    /// Image offset of `next_chunk`: where the host resumes sending.
    pub resume_offset: u32,
}

/// The slot [`Updater::boot`] chose, checked and ready to be loaded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct BootedSlot {
    /// Which slot.
    pub slot: SlotId,
    /// Its state when it was chosen (`Trial`, `Confirmed` or `Fallback`).
    pub state: SlotState,
    /// Its signed manifest header: model id and version.
    pub manifest: ManifestHeader,
    /// Where its image lies in flash.
    pub image: Region,
}

#[derive(Clone, Copy, Debug)]
struct Transfer {
    slot: SlotId,
    header: ManifestHeader,
    next_chunk: u32,
}

impl Transfer {
    fn progress(&self) -> TransferProgress {
        TransferProgress {
            slot: self.slot,
            next_chunk: self.next_chunk,
            chunk_count: self.header.chunk_count,
            resume_offset: self
                .header
                .chunk(self.next_chunk)
                .map_or(self.header.image_len, |(start, _)| start),
        }
    }
}

/// How much of a slot [`Updater`] checks before it boots it.
#[derive(Clone, Copy, PartialEq, Eq)]
enum SlotCheck {
    /// Signature and `.glint` header: O(header), for slots already fully verified.
    Header,
    /// Also the SHA-256 of the whole image.
    Full,
}

/// The model store of the device: the partition table over a flash, the state record,
/// the update in progress and the slot booted.
pub struct Updater<F> {
    flash: F,
    table: PartitionTable,
    key: VerifyingKey,
    state: StateRecord,
    state_copy: Option<usize>,
    booted: Option<SlotId>,
    transfer: Option<Transfer>,
}

impl<F: NorFlash + MappedFlash> Updater<F> {
    /// Opens the model store: checks `table` against the flash and reads the state
    /// record. `key` is the public key that manifests must be signed with.
    pub fn new(
        mut flash: F,
        table: PartitionTable,
        key: VerifyingKey,
    ) -> Result<Self, UpdateError> {
        table.check(flash.capacity(), F::ERASE_SIZE, F::WRITE_SIZE, F::READ_SIZE)?;
        let (state, state_copy) = state::load(&mut flash, &table)?;
        Ok(Updater {
            flash,
            table,
            key,
            state,
            state_copy,
            booted: None,
            transfer: None,
        })
    }

    /// Gives the flash back.
    pub fn release(self) -> F {
        self.flash
    }

    /// The flash, to read (the emulator hands a mapped flash's pages back to the OS).
    pub fn flash(&self) -> &F {
        &self.flash
    }

    /// The current state record.
    pub fn state(&self) -> StateRecord {
        self.state
    }

    /// The partition table.
    pub fn table(&self) -> &PartitionTable {
        &self.table
    }

    /// The transfer in progress (or finished, its slot on trial), if any.
    pub fn progress(&self) -> Option<TransferProgress> {
        self.transfer.map(|t| t.progress())
    }

    /// Starts (or resumes) writing the image that `manifest` describes into the slot
    /// that is neither confirmed nor booted. While a trial is pending, the same signed
    /// manifest is answered as a transfer already complete (a host that lost the
    /// device's answer to `finish` and begins again, then finishes again), and any other
    /// is refused: boot, then [`confirm`](Self::confirm) or [`reject`](Self::reject) the
    /// trial first.
    pub fn begin(&mut self, manifest: &[u8]) -> Result<TransferProgress, UpdateError> {
        let manifest = Manifest::parse(manifest, &self.key)?;
        let header = *manifest.header();
        if let Some(trial) = self.state.find(SlotState::Trial) {
            let area = self.table.manifest_area(trial);
            if !storage::holds(&mut self.flash, area.offset, manifest.bytes())? {
                return Err(UpdateError::TrialPending);
            }
            let transfer = Transfer {
                slot: trial,
                header,
                next_chunk: header.chunk_count,
            };
            self.transfer = Some(transfer);
            return Ok(transfer.progress());
        }
        let slot = self.target_slot().ok_or(UpdateError::NoFreeSlot)?;
        let (area, image) = (self.table.manifest_area(slot), self.table.image_area(slot));
        if manifest.bytes().len() > area.len as usize {
            return Err(UpdateError::ManifestTooLarge {
                len: manifest.bytes().len(),
                room: area.len,
            });
        }
        if header.image_len > image.len {
            return Err(UpdateError::ImageTooLarge {
                len: header.image_len,
                room: image.len,
            });
        }
        if !(header.chunk_size as usize).is_multiple_of(F::ERASE_SIZE.max(1)) {
            return Err(UpdateError::ChunkSize {
                chunk_size: header.chunk_size,
                erase_size: F::ERASE_SIZE as u32,
            });
        }
        self.transfer = None;
        if self.state.slot(slot) != SlotState::Invalid {
            self.store(self.state.with(slot, SlotState::Invalid))?;
        }
        let next_chunk = if storage::holds(&mut self.flash, area.offset, manifest.bytes())? {
            self.verified_prefix(image, &manifest)?
        } else {
            storage::replace(&mut self.flash, area, manifest.bytes())?;
            0
        };
        log_info!("update: slot {} from chunk {}", slot, next_chunk);
        let transfer = Transfer {
            slot,
            header,
            next_chunk,
        };
        self.transfer = Some(transfer);
        Ok(transfer.progress())
    }

    /// Writes chunk `index`: it must be the next one (an earlier one is accepted again
    /// and ignored, for a host that missed an acknowledgement), the right length, and
    /// hash to the manifest's SHA-256. It is read back after the write.
    pub fn write_chunk(
        &mut self,
        index: u32,
        bytes: &[u8],
    ) -> Result<TransferProgress, UpdateError> {
        let mut transfer = self.transfer.ok_or(UpdateError::NoTransfer)?;
        let expected = transfer.next_chunk;
        let (start, len) = transfer
            .header
            .chunk(index)
            .filter(|_| index <= expected)
            .ok_or(UpdateError::UnexpectedChunk {
                expected,
                got: index,
            })?;
        if bytes.len() != len as usize {
            return Err(UpdateError::ChunkLength {
                index,
                expected: len,
                got: bytes.len(),
            });
        }
        let mut sha256 = [0u8; HASH_LEN];
        let table_at = (index as usize)
            .checked_mul(HASH_LEN)
            .and_then(|at| at.checked_add(SIGNED_LEN))
            .and_then(|at| u32::try_from(at).ok())
            .and_then(|at| at.checked_add(self.table.manifest_area(transfer.slot).offset))
            .ok_or(UpdateError::Layout("chunk table past 4 GiB"))?;
        storage::read(&mut self.flash, table_at, &mut sha256)?;
        if <[u8; HASH_LEN]>::from(Sha256::digest(bytes)) != sha256 {
            return Err(UpdateError::ChunkHashMismatch { index });
        }
        if index < expected {
            return Ok(transfer.progress());
        }
        let image = self.table.image_area(transfer.slot);
        let at = image
            .offset
            .checked_add(start)
            .ok_or(UpdateError::Layout("chunk past 4 GiB"))?;
        storage::erase(&mut self.flash, Region { offset: at, len })?;
        storage::write_padded(&mut self.flash, at, bytes)?;
        if storage::sha256(&mut self.flash, at, bytes.len())? != sha256 {
            return Err(UpdateError::ReadBack);
        }
        transfer.next_chunk = expected.saturating_add(1);
        self.transfer = Some(transfer);
        Ok(transfer.progress())
    }

    /// Ends the transfer: the whole image in flash must hash to the manifest's SHA-256
    /// and parse as a `.glint` model of the manifest's format version; then the slot
    /// becomes the trial slot, booted next. Finishing again a transfer whose slot is
    /// already the trial (a host that lost the answer) answers that slot again.
    pub fn finish(&mut self) -> Result<SlotId, UpdateError> {
        let transfer = self.transfer.ok_or(UpdateError::NoTransfer)?;
        // Only `finish`, or `begin` with the trial's own manifest, leave a transfer on
        // the trial slot: a transfer in progress is on an invalid slot.
        if self.state.slot(transfer.slot) == SlotState::Trial {
            return Ok(transfer.slot);
        }
        if transfer.next_chunk != transfer.header.chunk_count {
            return Err(UpdateError::Incomplete {
                next_chunk: transfer.next_chunk,
                chunk_count: transfer.header.chunk_count,
            });
        }
        self.check_image(transfer.slot, &transfer.header, SlotCheck::Full)?;
        self.store(
            self.state
                .with(transfer.slot, SlotState::Trial)
                .with_trial_boots(0),
        )?;
        log_info!("update: slot {} verified, on trial", transfer.slot);
        Ok(transfer.slot)
    }

    /// Chooses the slot to boot, as at power-on: the trial slot while it has boots left
    /// (each boot is counted before it happens; when they are used up, or its image fails
    /// its checks, it is abandoned), else the confirmed slot, else the fallback. The
    /// chosen slot's manifest signature and `.glint` header are checked (the trial's
    /// whole image too).
    pub fn boot(&mut self) -> Result<BootedSlot, UpdateError> {
        self.booted = None;
        self.transfer = None;
        if let Some(trial) = self.state.find(SlotState::Trial) {
            if self.state.trial_boots >= MAX_TRIAL_BOOTS {
                log_warn!(
                    "boot: slot {} not confirmed after {} boots, abandoned",
                    trial,
                    MAX_TRIAL_BOOTS
                );
                self.abandon(trial)?;
            } else {
                self.store(
                    self.state
                        .with_trial_boots(self.state.trial_boots.saturating_add(1)),
                )?;
                match self.check_slot(trial, SlotCheck::Full) {
                    Ok(booted) => return Ok(self.booted(booted)),
                    Err(UpdateError::Flash(e)) => return Err(UpdateError::Flash(e)),
                    Err(_) => {
                        log_warn!("boot: trial slot {} fails its checks, abandoned", trial);
                        self.abandon(trial)?;
                    }
                }
            }
        }
        for state in [SlotState::Confirmed, SlotState::Fallback] {
            let Some(slot) = self.state.find(state) else {
                continue;
            };
            match self.check_slot(slot, SlotCheck::Header) {
                Ok(booted) => return Ok(self.booted(booted)),
                Err(UpdateError::Flash(e)) => return Err(UpdateError::Flash(e)),
                Err(_) => log_warn!("boot: slot {} fails its checks", slot),
            }
        }
        Err(UpdateError::NoBootableSlot)
    }

    /// The booted trial slot loaded its model and answered: it becomes the confirmed
    /// slot, and the previously confirmed one the fallback.
    pub fn confirm(&mut self) -> Result<(), UpdateError> {
        let trial = self
            .state
            .find(SlotState::Trial)
            .ok_or(UpdateError::NoTrial)?;
        if self.booted != Some(trial) {
            return Err(UpdateError::TrialNotBooted);
        }
        let mut record = self.state.with_trial_boots(0);
        if let Some(old) = record.find(SlotState::Confirmed) {
            record = record.with(old, SlotState::Fallback);
        }
        self.transfer = None;
        self.store(record.with(trial, SlotState::Confirmed))?;
        log_info!("update: slot {} confirmed", trial);
        Ok(())
    }

    /// The trial model failed to load or answer: abandon it now rather than after
    /// [`MAX_TRIAL_BOOTS`] boots. The caller reboots.
    pub fn reject(&mut self) -> Result<(), UpdateError> {
        let trial = self
            .state
            .find(SlotState::Trial)
            .ok_or(UpdateError::NoTrial)?;
        self.abandon(trial)
    }

    /// Checks a slot as fully as the first boot of a trial does: manifest signature,
    /// SHA-256 of the whole image, `.glint` header. Does not boot it.
    pub fn verify_slot(&mut self, slot: SlotId) -> Result<BootedSlot, UpdateError> {
        self.check_slot(slot, SlotCheck::Full)
    }

    /// The booted slot's image bytes, in place in the mapped flash: what the runtime
    /// loads.
    pub fn image(&self, booted: &BootedSlot) -> &[u8] {
        self.image_bytes(booted.image)
    }

    /// The booted slot's model, parsed in place from the mapped flash.
    pub fn model(&self, booted: &BootedSlot) -> Result<GlintFile<'_>, FormatError> {
        GlintFile::parse(self.image_bytes(booted.image))
    }

    fn booted(&mut self, booted: BootedSlot) -> BootedSlot {
        log_info!(
            "boot: slot {}, model version {}",
            booted.slot,
            booted.manifest.model_version
        );
        self.booted = Some(booted.slot);
        booted
    }

    fn abandon(&mut self, trial: SlotId) -> Result<(), UpdateError> {
        // A finished transfer must not put the abandoned image on trial again.
        self.transfer = None;
        self.store(
            self.state
                .with(trial, SlotState::Invalid)
                .with_trial_boots(0),
        )
    }

    fn store(&mut self, record: StateRecord) -> Result<(), UpdateError> {
        let (record, copy) = state::store(
            &mut self.flash,
            &self.table,
            (&self.state, self.state_copy),
            record,
        )?;
        self.state = record;
        self.state_copy = Some(copy);
        Ok(())
    }

    /// The slot an update writes: never the confirmed, trial or booted one; an invalid
    /// slot before a fallback.
    fn target_slot(&self) -> Option<SlotId> {
        [SlotState::Invalid, SlotState::Fallback]
            .into_iter()
            .flat_map(|state| {
                SlotId::BOTH
                    .into_iter()
                    .filter(move |&s| self.state.slot(s) == state)
            })
            .find(|&s| self.booted != Some(s))
    }

    /// How many leading chunks of `image` already hold what `manifest` says.
    fn verified_prefix(
        &mut self,
        image: Region,
        manifest: &Manifest<'_>,
    ) -> Result<u32, UpdateError> {
        let header = manifest.header();
        for index in 0..header.chunk_count {
            let (Some((start, len)), Some(sha256)) =
                (header.chunk(index), manifest.chunk_sha256(index))
            else {
                return Ok(index);
            };
            let at = image
                .offset
                .checked_add(start)
                .ok_or(UpdateError::Layout("chunk past 4 GiB"))?;
            if storage::sha256(&mut self.flash, at, len as usize)? != sha256 {
                return Ok(index);
            }
        }
        Ok(header.chunk_count)
    }

    /// Reads and checks a slot's manifest header and signature, then its image.
    fn check_slot(&mut self, slot: SlotId, check: SlotCheck) -> Result<BootedSlot, UpdateError> {
        let mut signed = [0u8; SIGNED_LEN];
        storage::read(
            &mut self.flash,
            self.table.manifest_area(slot).offset,
            &mut signed,
        )?;
        let (head, signature) = signed.split_at(HEADER_LEN);
        let mut header_bytes = [0u8; HEADER_LEN];
        header_bytes.copy_from_slice(head);
        let mut signature_bytes = [0u8; SIGNED_LEN - HEADER_LEN];
        signature_bytes.copy_from_slice(signature);
        let header = ManifestHeader::parse(&header_bytes)?;
        header.verify_signature(&signature_bytes, &self.key)?;
        let image = self.check_image(slot, &header, check)?;
        Ok(BootedSlot {
            slot,
            state: self.state.slot(slot),
            manifest: header,
            image,
        })
    }

    /// Checks a slot's image against its manifest header; returns where it lies.
    fn check_image(
        &mut self,
        slot: SlotId,
        header: &ManifestHeader,
        check: SlotCheck,
    ) -> Result<Region, UpdateError> {
        let area = self.table.image_area(slot);
        if header.image_len > area.len {
            return Err(UpdateError::ImageTooLarge {
                len: header.image_len,
                room: area.len,
            });
        }
        let image = Region {
            offset: area.offset,
            len: header.image_len,
        };
        if check == SlotCheck::Full
            && storage::sha256(&mut self.flash, image.offset, image.len as usize)?
                != header.image_sha256
        {
            return Err(UpdateError::ImageHashMismatch);
        }
        let file = GlintFile::parse(self.image_bytes(image))?;
        if file.version().0 != header.format_version {
            return Err(UpdateError::FormatVersion {
                manifest: header.format_version,
                image: file.version().0,
            });
        }
        Ok(image)
    }

    fn image_bytes(&self, image: Region) -> &[u8] {
        let start = image.offset as usize;
        self.flash
            .mapped()
            .get(start..start.saturating_add(image.len as usize))
            .unwrap_or_default()
    }
}
