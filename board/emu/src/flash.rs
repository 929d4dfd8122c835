//! The emulator's flash: a file, memory-mapped and driven through [`MemFlash`]'s NOR
//! rules (erase before write, whole write units, bits only cleared by writes, power
//! cuts on demand), so every write lands in the file as it happens.

use crate::EmuError;
use glint_board::{MemFlash, PartitionTable};
use memmap2::MmapMut;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::Path;

/// Bytes of a write unit (a NOR page program).
pub const WRITE_SIZE: usize = 256;
/// Bytes of an erase sector.
pub const ERASE_SIZE: usize = 4096;
/// The emulator's flash.
pub type EmuFlash = MemFlash<WRITE_SIZE, ERASE_SIZE, MmapMut>;

/// The size of the two model slots (each a manifest area and an image area).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FlashLayout {
    /// Bytes of each slot, manifest area included: a multiple of [`ERASE_SIZE`].
    pub slot_len: u32,
    /// Bytes at the start of each slot kept for the manifest: a multiple of
    /// [`ERASE_SIZE`], room for 192 bytes and 32 per chunk.
    pub manifest_len: u32,
}

impl FlashLayout {
    /// Slots of `slot_mib` MiB with a 128 KiB manifest area (4000 chunks: 250 MiB in
    /// 64 KiB chunks).
    pub const fn with_slot_mib(slot_mib: u32) -> Self {
        FlashLayout {
            slot_len: slot_mib.saturating_mul(1 << 20),
            manifest_len: 128 << 10,
        }
    }

    /// The partition table: state copies in sectors 0 and 1, then slots A and B.
    pub const fn table(&self) -> PartitionTable {
        PartitionTable::sequential(ERASE_SIZE as u32, self.manifest_len, self.slot_len)
    }

    /// Bytes of the whole flash.
    pub fn capacity(&self) -> u64 {
        2 * ERASE_SIZE as u64 + 2 * u64::from(self.slot_len)
    }
}

/// Opens the flash file at `path`, creating it erased (all 0xFF) if it is not there;
/// an existing file must be the layout's size.
pub fn open_flash(path: &Path, layout: &FlashLayout) -> Result<EmuFlash, EmuError> {
    let io = |what: &'static str| {
        let path = path.to_path_buf();
        move |source| EmuError::Io { what, path, source }
    };
    let capacity = layout.capacity();
    let file = if path.exists() {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
            .map_err(io("opening the flash file"))?;
        let len = file.metadata().map_err(io("reading the flash file"))?.len();
        if len != capacity {
            return Err(EmuError::FlashSize {
                path: path.to_path_buf(),
                expected: capacity,
                actual: len,
            });
        }
        file
    } else {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(io("creating the flash's folder"))?;
        }
        erased_file(path, capacity).map_err(io("creating the flash file"))?
    };
    // SAFETY: the map is of this emulator's flash file, which only this process writes
    // while it runs (as one flash chip belongs to one board); its bytes are plain data,
    // valid whatever they hold.
    let map = unsafe { MmapMut::map_mut(&file) }.map_err(io("mapping the flash file"))?;
    Ok(MemFlash::from_storage(map))
}

/// Creates the erased flash file through a temporary file renamed into place (as every
/// Glint tool writes a file another may read), so a crash never leaves a short one.
fn erased_file(path: &Path, capacity: u64) -> std::io::Result<File> {
    let tmp = path.with_extension(format!("tmp-{}", std::process::id()));
    let made = fill_erased(&tmp, capacity).and_then(|file| {
        std::fs::rename(&tmp, path)?;
        Ok(file)
    });
    if made.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    made
}

fn fill_erased(tmp: &Path, capacity: u64) -> std::io::Result<File> {
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .open(tmp)?;
    let block = vec![0xffu8; 1 << 20];
    let mut left = capacity;
    while left > 0 {
        let n = left.min(block.len() as u64) as usize;
        file.write_all(&block[..n])?;
        left -= n as u64;
    }
    file.sync_all()?;
    Ok(file)
}
