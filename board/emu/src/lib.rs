//! The glasses on the desktop: a virtual [`glint_board::Board`] whose flash is a file
//! (with the NOR rules and power cuts of [`glint_board::MemFlash`]), updated over
//! loopback by `glint-flash`, booting the model store and answering with the Glint
//! runtime inside the device's memory budget; a talk button, a status LED and a display
//! rendered to PNG and the terminal. The `glint-emu` binary drives it.
//!
//! ```no_run
//! use glint_emu::{Glasses, GlassesOptions, RuntimeOptions, FlashLayout, Event};
//! # fn demo(key: glint_board::ed25519_dalek::VerifyingKey) -> Result<(), glint_emu::EmuError> {
//! let mut glasses = Glasses::power_on(GlassesOptions {
//!     flash: "target/glint-emu/flash.bin".into(),
//!     layout: FlashLayout::with_slot_mib(128),
//!     key,
//!     memory_budget: 512 << 20,
//!     runtime: RuntimeOptions::default(),
//!     display: (240, 96),
//!     power_cut: None,
//! })?;
//! glasses.boot()?;
//! let turn = glasses.handle(&Event::Say("What is the capital of France?".into()))?;
//! # Ok(()) }
//! ```
#![warn(missing_docs)]

mod display;
mod flash;
mod glasses;
mod pins;
mod script;
mod server;

pub use display::{FrameBuffer, PngError};
pub use flash::{ERASE_SIZE, EmuFlash, FlashLayout, WRITE_SIZE, open_flash};
pub use glasses::{BootReport, Glasses, GlassesOptions, LinkOutcome, RuntimeOptions, Turn};
pub use pins::{StatusLed, TalkButton};
pub use script::{ButtonAction, Event, parse_script};
pub use server::{IDLE_LIMIT, LINK_BUFFER_LEN, serve};

use std::path::PathBuf;

/// What can go wrong on the virtual glasses.
#[derive(Debug, thiserror::Error)]
pub enum EmuError {
    /// A file or socket operation failed.
    #[error("{what} {}: {source}", path.display())]
    Io {
        /// What was being done.
        what: &'static str,
        /// On which file (empty for a socket).
        path: PathBuf,
        /// Why it failed.
        source: std::io::Error,
    },
    /// The flash file is not the size of the layout asked for.
    #[error("{}: a flash of {actual} bytes, the layout needs {expected} (another --slot-mib?)", path.display())]
    FlashSize {
        /// The file.
        path: PathBuf,
        /// Bytes the layout needs.
        expected: u64,
        /// Bytes it has.
        actual: u64,
    },
    /// The model store refused or failed.
    #[error("model store: {0}")]
    Update(#[from] glint_board::UpdateError),
    /// A peripheral failed.
    #[error("board: {0}")]
    Board(#[from] glint_board::BoardError),
    /// The model and its session do not fit the device's memory (the numbers are in
    /// the error), or the session could not be allocated.
    #[error(transparent)]
    Session(#[from] glint_runtime::engine::SessionError),
    /// The runtime could not load the model.
    #[error("loading the model: {0}")]
    Engine(#[from] glint_runtime::engine::EngineError),
    /// Generation failed.
    #[error("generation: {0}")]
    Generate(#[from] glint_runtime::engine::GenerateError),
    /// A question before a model booted.
    #[error("no model booted")]
    NotBooted,
    /// A script line is not an event.
    #[error("script line {line}: {message}")]
    Script {
        /// 1-based line number.
        line: usize,
        /// What is wrong.
        message: String,
    },
}
