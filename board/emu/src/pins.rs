//! The talk button and the status LED, as embedded-hal pins the emulator drives.

use embedded_hal::digital::{ErrorType, InputPin, OutputPin};
use std::cell::Cell;
use std::convert::Infallible;
use std::rc::Rc;

/// The talk button's pin: low while held (as [`glint_board::Board`] reads it). A clone
/// is the finger: [`press`](Self::press) and [`release`](Self::release) move the pin
/// the board reads.
#[derive(Clone, Debug, Default)]
pub struct TalkButton {
    held: Rc<Cell<bool>>,
}

impl TalkButton {
    /// Holds the button down.
    pub fn press(&self) {
        self.held.set(true);
    }

    /// Lets it go.
    pub fn release(&self) {
        self.held.set(false);
    }
}

impl ErrorType for TalkButton {
    type Error = Infallible;
}

impl InputPin for TalkButton {
    fn is_high(&mut self) -> Result<bool, Infallible> {
        Ok(!self.held.get())
    }

    fn is_low(&mut self) -> Result<bool, Infallible> {
        Ok(self.held.get())
    }
}

/// The status LED: remembers whether it is lit.
#[derive(Clone, Debug, Default)]
pub struct StatusLed {
    lit: bool,
}

impl StatusLed {
    /// Whether it is lit.
    pub fn is_lit(&self) -> bool {
        self.lit
    }
}

impl ErrorType for StatusLed {
    type Error = Infallible;
}

impl OutputPin for StatusLed {
    fn set_low(&mut self) -> Result<(), Infallible> {
        self.lit = false;
        Ok(())
    }

    fn set_high(&mut self) -> Result<(), Infallible> {
        self.lit = true;
        Ok(())
    }
}
