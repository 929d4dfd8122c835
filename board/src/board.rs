//! The glasses as the assistant sees them: a talk button, a status LED, a small
//! monochrome display, and the model store.

use crate::storage::MappedFlash;
use crate::{BootedSlot, UpdateError, Updater};
use embedded_graphics::mono_font::{MonoFont, MonoTextStyle, ascii::FONT_6X10};
use embedded_graphics::pixelcolor::BinaryColor;
use embedded_graphics::prelude::*;
use embedded_graphics::text::{Baseline, Text};
use embedded_hal::digital::{Error as _, ErrorKind, InputPin, OutputPin};
use embedded_storage::nor_flash::NorFlash;

/// The font text is drawn in.
pub const FONT: MonoFont<'static> = FONT_6X10;

/// What can go wrong with a peripheral.
#[derive(Debug, PartialEq, thiserror::Error)]
pub enum BoardError {
    /// The talk button's pin could not be read.
    #[error("talk button: {0}")]
    Button(ErrorKind),
    /// The status LED's pin could not be set.
    #[error("status LED: {0}")]
    Led(ErrorKind),
    /// The display refused to draw.
    #[error("display")]
    Display,
    /// The model store failed.
    #[error("model store: {0}")]
    Storage(#[from] UpdateError),
}

/// The board: peripherals over embedded-hal 1.0 and embedded-graphics, the model store
/// over embedded-storage.
pub struct Board<Button, Led, Display, Flash> {
    button: Button,
    led: Led,
    display: Display,
    storage: Updater<Flash>,
}

impl<Button, Led, Display, Flash> Board<Button, Led, Display, Flash>
where
    Button: InputPin,
    Led: OutputPin,
    Display: DrawTarget<Color = BinaryColor>,
    Flash: NorFlash + MappedFlash,
{
    /// A board from its parts. The talk button pulls its pin low when pressed.
    pub fn new(button: Button, led: Led, display: Display, storage: Updater<Flash>) -> Self {
        Board {
            button,
            led,
            display,
            storage,
        }
    }

    /// Whether the talk button is held.
    pub fn talk_pressed(&mut self) -> Result<bool, BoardError> {
        self.button
            .is_low()
            .map_err(|e| BoardError::Button(e.kind()))
    }

    /// Lights the status LED or puts it out.
    pub fn set_led(&mut self, on: bool) -> Result<(), BoardError> {
        if on {
            self.led.set_high()
        } else {
            self.led.set_low()
        }
        .map_err(|e| BoardError::Led(e.kind()))
    }

    /// Clears the display and draws `text` wrapped at word boundaries; when it does
    /// not all fit, the last lines (the newest words of an answer) are shown.
    pub fn show_text(&mut self, text: &str) -> Result<(), BoardError> {
        let area = self.display.bounding_box();
        let cell = FONT.character_size;
        let columns = (area.size.width / cell.width.max(1)) as usize;
        let rows = (area.size.height / cell.height.max(1)) as usize;
        let style = MonoTextStyle::new(&FONT, BinaryColor::On);
        self.display
            .clear(BinaryColor::Off)
            .map_err(|_| BoardError::Display)?;
        let total = wrap_lines(text, columns).count();
        let mut at = area.top_left;
        for line in wrap_lines(text, columns).skip(total.saturating_sub(rows)) {
            Text::with_baseline(line, at, style, Baseline::Top)
                .draw(&mut self.display)
                .map_err(|_| BoardError::Display)?;
            at.y = at.y.saturating_add(cell.height as i32);
        }
        Ok(())
    }

    /// Boots the model store (see [`Updater::boot`]), the LED lit meanwhile.
    pub fn boot(&mut self) -> Result<BootedSlot, BoardError> {
        self.set_led(true)?;
        let booted = self.storage.boot()?;
        self.set_led(false)?;
        Ok(booted)
    }

    /// The model store, for updates and for loading the booted model.
    pub fn storage(&mut self) -> &mut Updater<Flash> {
        &mut self.storage
    }

    /// The display, to read back what was drawn.
    pub fn display(&self) -> &Display {
        &self.display
    }

    /// The parts back.
    pub fn release(self) -> (Button, Led, Display, Updater<Flash>) {
        (self.button, self.led, self.display, self.storage)
    }
}

/// The lines `text` wraps to at `columns` characters: broken at newlines, then at the
/// last space that fits, else mid-word.
pub fn wrap_lines(text: &str, columns: usize) -> WrapLines<'_> {
    WrapLines {
        rest: Some(text),
        columns: columns.max(1),
    }
}

/// The iterator of [`wrap_lines`].
#[derive(Clone, Debug)]
pub struct WrapLines<'a> {
    rest: Option<&'a str>,
    columns: usize,
}

impl<'a> Iterator for WrapLines<'a> {
    type Item = &'a str;

    fn next(&mut self) -> Option<&'a str> {
        let rest = self.rest?;
        let (paragraph, after) = match rest.split_once('\n') {
            Some((p, after)) => (p, Some(after)),
            None => (rest, None),
        };
        let Some((limit, _)) = paragraph.char_indices().nth(self.columns) else {
            self.rest = after;
            return Some(paragraph);
        };
        let (head, tail) = paragraph.split_at(limit);
        let (line, skip) = match head.rfind(' ') {
            _ if tail.starts_with(' ') => (head, limit + 1),
            Some(space) if space > 0 => (head.split_at(space).0, space + 1),
            _ => (head, limit),
        };
        self.rest = rest.get(skip..);
        Some(line)
    }
}
