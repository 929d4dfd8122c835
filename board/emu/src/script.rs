//! Scripts: JSON lines of utterances and button presses, replayed in order.
//!
//! ```text
//! {"say": "What is the capital of France?"}
//! {"button": "down"}
//! {"say": "And of Italy?"}
//! {"button": "up"}
//! {"button": "press"}
//! ```
//!
//! A `say` outside a press is a whole turn (the button held while saying it); between
//! `down` and `up` the utterances are one turn, answered when the button is let go; a
//! press with nothing said starts a new conversation.

use crate::EmuError;
use serde::Deserialize;

/// One line of a script.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase", deny_unknown_fields)]
pub enum Event {
    /// The wearer says this.
    Say(String),
    /// The talk button.
    Button(ButtonAction),
}

/// What happens to the talk button.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ButtonAction {
    /// Held down.
    Down,
    /// Let go.
    Up,
    /// Down and up.
    Press,
}

/// The events of a script (blank lines skipped).
pub fn parse_script(text: &str) -> Result<Vec<Event>, EmuError> {
    text.lines()
        .enumerate()
        .filter(|(_, line)| !line.trim().is_empty())
        .map(|(i, line)| {
            serde_json::from_str(line).map_err(|e| EmuError::Script {
                line: i + 1,
                message: e.to_string(),
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scripts_parse_and_bad_lines_say_where() {
        let events =
            parse_script("{\"say\": \"hi\"}\n\n{\"button\": \"down\"}\n{\"button\": \"press\"}\n")
                .unwrap();
        assert_eq!(
            events,
            [
                Event::Say("hi".into()),
                Event::Button(ButtonAction::Down),
                Event::Button(ButtonAction::Press)
            ]
        );
        let err = parse_script("{\"say\": \"hi\"}\n{\"shout\": 1}\n").unwrap_err();
        assert!(matches!(err, EmuError::Script { line: 2, .. }), "{err}");
    }
}
