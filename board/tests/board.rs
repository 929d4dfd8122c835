//! The peripherals: talk button, status LED, display text.

mod common;

use common::*;
use embedded_graphics::mock_display::MockDisplay;
use embedded_graphics::mono_font::MonoTextStyle;
use embedded_graphics::pixelcolor::BinaryColor;
use embedded_graphics::prelude::*;
use embedded_graphics::text::{Baseline, Text};
use embedded_hal::digital::{self, ErrorKind, ErrorType, InputPin, OutputPin};
use glint_board::*;

/// A pin whose level the test sets and reads, and that can be made to fail.
#[derive(Default)]
struct FakePin {
    high: bool,
    broken: bool,
}

#[derive(Debug)]
struct PinFault;

impl digital::Error for PinFault {
    fn kind(&self) -> ErrorKind {
        ErrorKind::Other
    }
}

impl ErrorType for FakePin {
    type Error = PinFault;
}

impl InputPin for FakePin {
    fn is_high(&mut self) -> Result<bool, PinFault> {
        if self.broken {
            Err(PinFault)
        } else {
            Ok(self.high)
        }
    }

    fn is_low(&mut self) -> Result<bool, PinFault> {
        self.is_high().map(|high| !high)
    }
}

impl OutputPin for FakePin {
    fn set_high(&mut self) -> Result<(), PinFault> {
        self.set_state((!self.broken).into())
    }

    fn set_low(&mut self) -> Result<(), PinFault> {
        if self.broken {
            return Err(PinFault);
        }
        self.high = false;
        Ok(())
    }

    fn set_state(&mut self, state: digital::PinState) -> Result<(), PinFault> {
        if self.broken {
            return Err(PinFault);
        }
        self.high = state == digital::PinState::High;
        Ok(())
    }
}

type TestBoard = Board<FakePin, FakePin, MockDisplay<BinaryColor>, Flash>;

fn board() -> TestBoard {
    let mut display = MockDisplay::new();
    display.set_allow_overdraw(true);
    let button = FakePin {
        high: true, // pulled up: not pressed
        broken: false,
    };
    Board::new(
        button,
        FakePin::default(),
        display,
        updater(provisioned()).unwrap(),
    )
}

/// What `lines` look like drawn from the top-left corner, a line every 10 pixels.
fn expected(lines: &[&str]) -> MockDisplay<BinaryColor> {
    let mut display = MockDisplay::new();
    display.set_allow_overdraw(true);
    display.clear(BinaryColor::Off).unwrap();
    let style = MonoTextStyle::new(&FONT, BinaryColor::On);
    for (row, line) in lines.iter().enumerate() {
        Text::with_baseline(line, Point::new(0, 10 * row as i32), style, Baseline::Top)
            .draw(&mut display)
            .unwrap();
    }
    display
}

#[test]
fn text_wraps_at_words_and_long_words_break() {
    let lines = |text, columns| wrap_lines(text, columns).collect::<Vec<_>>();
    assert_eq!(
        lines("Paris is the capital of France.", 10),
        ["Paris is", "the", "capital of", "France."]
    );
    assert_eq!(lines("abcdefghijklmnop", 10), ["abcdefghij", "klmnop"]);
    assert_eq!(lines("a\n\nb", 10), ["a", "", "b"]);
    assert_eq!(lines("héllo wörld", 5), ["héllo", "wörld"]);
    assert_eq!(lines("xyz", 0), ["x", "y", "z"]);
}

#[test]
fn the_display_shows_the_text_and_scrolls_to_its_end() {
    let mut b = board();
    b.show_text("Paris is the capital of France.").unwrap();
    b.display()
        .assert_eq(&expected(&["Paris is", "the", "capital of", "France."]));
    // A 64x64 display holds 6 lines of 10 characters: the last 6 are shown.
    let text = "one two three four five six seven eight nine ten eleven twelve";
    let lines: Vec<&str> = wrap_lines(text, 10).collect();
    assert_eq!(lines.len(), 7);
    b.show_text(text).unwrap();
    b.display().assert_eq(&expected(&lines[1..]));
}

#[test]
fn button_led_and_boot() {
    let mut b = board();
    assert_eq!(b.talk_pressed(), Ok(false));
    let booted = b.boot().unwrap();
    assert_eq!((booted.slot, booted.manifest.model_version), (SlotId::A, 1));
    assert_eq!(booted.manifest.model_id(), "tiny-llama");
    b.set_led(true).unwrap();
    let (mut button, mut led, _, _) = b.release();
    assert!(led.high);
    button.high = false;
    led.broken = true;
    let mut b = Board::new(
        button,
        led,
        MockDisplay::new(),
        updater(provisioned()).unwrap(),
    );
    assert_eq!(b.talk_pressed(), Ok(true));
    assert_eq!(b.set_led(false), Err(BoardError::Led(ErrorKind::Other)));
    assert_eq!(b.boot(), Err(BoardError::Led(ErrorKind::Other)));
}
