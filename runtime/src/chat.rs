//! Chat prompts rendered from the model's own Jinja template (minijinja), as
//! `apply_chat_template` in HF transformers and llama.cpp's `--jinja` do.

use minijinja::{Environment, ErrorKind, context};
use std::cell::Cell;
use std::io::Write;

/// Template instructions a rendering may run before it is stopped, on top of
/// [`FUEL_PER_MESSAGE`] per message: a conversation of 2000 turns renders with
/// SmolLM2's template well within it (a test), while a hostile template (three nested
/// `range(1000)` loops: 10^9 steps) is stopped in milliseconds.
pub const FUEL_BASE: u64 = 100_000;
/// Template instructions allowed per message, on top of [`FUEL_BASE`].
pub const FUEL_PER_MESSAGE: u64 = 1_000;
/// Bytes a rendering may write beyond the messages' text (the turn markers and a
/// system prompt); more is refused as the template's fault.
pub const OUTPUT_SLACK: usize = 1 << 20;

/// Who said a message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// Instructions for the assistant.
    System,
    /// The person.
    User,
    /// The model.
    Assistant,
}

impl Role {
    /// The role's name in templates.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::System => "system",
            Role::User => "user",
            Role::Assistant => "assistant",
        }
    }
}

/// One turn of a conversation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Message {
    /// Speaker.
    pub role: Role,
    /// Text.
    pub content: String,
}

impl Message {
    /// A message.
    pub fn new(role: Role, content: impl Into<String>) -> Self {
        Self {
            role,
            content: content.into(),
        }
    }
}

/// Why a template could not be rendered.
#[derive(Debug, thiserror::Error)]
pub enum TemplateError {
    /// The model file carries no chat template.
    #[error("the model has no chat template")]
    Missing,
    /// The template failed to compile or render.
    #[error("chat template: {0}")]
    Render(#[from] minijinja::Error),
    /// The template ran more steps than a chat template needs (a loop that does not end
    /// in reasonable time).
    #[error("chat template: stopped after {0} steps (a runaway loop?)")]
    OutOfFuel(u64),
    /// The template wrote far more than the messages hold.
    #[error("chat template: output exceeds {0} bytes")]
    OutputTooLarge(usize),
}

/// Collects a rendering, refusing to grow past a limit.
struct LimitedOutput<'a> {
    bytes: Vec<u8>,
    limit: usize,
    exceeded: &'a Cell<bool>,
}

impl Write for LimitedOutput<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if self.bytes.len() + buf.len() > self.limit {
            self.exceeded.set(true);
            return Err(std::io::Error::other("template output limit"));
        }
        self.bytes.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// A compiled chat template.
pub struct ChatTemplate {
    env: Environment<'static>,
    bos: String,
    eos: String,
}

impl ChatTemplate {
    /// Compiles `source`; `bos`/`eos` are the token texts templates may refer to.
    pub fn new(source: &str, bos: &str, eos: &str) -> Result<Self, TemplateError> {
        if source.trim().is_empty() {
            return Err(TemplateError::Missing);
        }
        let mut env = Environment::new();
        // HF templates call Python string methods (`.strip()`, `.startswith()`).
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function(
            "raise_exception",
            |msg: String| -> Result<String, minijinja::Error> {
                Err(minijinja::Error::new(
                    minijinja::ErrorKind::InvalidOperation,
                    msg,
                ))
            },
        );
        env.add_template_owned("chat", source.to_owned())?;
        Ok(Self {
            env,
            bos: bos.into(),
            eos: eos.into(),
        })
    }

    /// Renders `messages`, ending with the assistant's opening when `add_generation_prompt`.
    /// A rendering is bounded: at most [`FUEL_BASE`] + [`FUEL_PER_MESSAGE`] per message
    /// template steps, and [`OUTPUT_SLACK`] bytes beyond the messages' text.
    pub fn render(
        &self,
        messages: &[Message],
        add_generation_prompt: bool,
    ) -> Result<String, TemplateError> {
        let msgs: Vec<_> = messages
            .iter()
            .map(|m| context! { role => m.role.as_str(), content => m.content })
            .collect();
        let text: usize = messages.iter().map(|m| m.content.len()).sum();
        let fuel = FUEL_BASE.saturating_add(FUEL_PER_MESSAGE.saturating_mul(messages.len() as u64));
        let exceeded = Cell::new(false);
        let mut out = LimitedOutput {
            bytes: Vec::new(),
            limit: text.saturating_add(OUTPUT_SLACK),
            exceeded: &exceeded,
        };
        let ctx = context! {
            messages => msgs,
            add_generation_prompt => add_generation_prompt,
            bos_token => self.bos,
            eos_token => self.eos,
        };
        // The fuel is per environment: a copy per rendering keeps `render` `&self`
        // (the compiled template is shared, not recompiled).
        let mut env = self.env.clone();
        env.set_fuel(Some(fuel));
        let rendered = env
            .get_template("chat")
            .and_then(|t| t.render_captured_to(ctx, &mut out));
        match rendered {
            Ok(_) => {}
            Err(_) if exceeded.get() => return Err(TemplateError::OutputTooLarge(out.limit)),
            Err(e) if e.kind() == ErrorKind::OutOfFuel => {
                return Err(TemplateError::OutOfFuel(fuel));
            }
            Err(e) => return Err(e.into()),
        }
        // Valid UTF-8: the template writes `str`s whole.
        String::from_utf8(out.bytes).map_err(|_| {
            TemplateError::Render(minijinja::Error::new(ErrorKind::WriteFailure, "not UTF-8"))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SMOLLM2: &str = "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n' }}{% endif %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}";

    #[test]
    fn smollm2_template_renders_the_fixture_prompt() {
        let t = ChatTemplate::new(SMOLLM2, "<|im_start|>", "<|im_end|>").unwrap();
        let p = t
            .render(
                &[Message::new(Role::User, "What is the capital of France?")],
                true,
            )
            .unwrap();
        assert_eq!(
            p,
            "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n"
        );
    }

    #[test]
    fn runaway_templates_are_stopped() {
        let loops = "{% for a in range(1000) %}{% for b in range(1000) %}{% for c in range(1000) %}{% endfor %}{% endfor %}{% endfor %}";
        let t = ChatTemplate::new(loops, "", "").unwrap();
        assert!(matches!(
            t.render(&[Message::new(Role::User, "hi")], true),
            Err(TemplateError::OutOfFuel(_))
        ));
        let big = "{% for a in range(100) %}{{ 'x' * 100000 }}{% endfor %}";
        let t = ChatTemplate::new(big, "", "").unwrap();
        assert!(matches!(
            t.render(&[Message::new(Role::User, "hi")], true),
            Err(TemplateError::OutputTooLarge(_))
        ));
    }

    #[test]
    fn long_conversations_render_within_the_fuel() {
        let t = ChatTemplate::new(SMOLLM2, "<|im_start|>", "<|im_end|>").unwrap();
        let turns: Vec<Message> = (0..2000)
            .map(|i| Message::new([Role::User, Role::Assistant][i % 2], "x".repeat(100)))
            .collect();
        let p = t.render(&turns, true).unwrap();
        assert!(p.len() > 2000 * 100, "{}", p.len());
    }

    #[test]
    fn python_methods_and_errors() {
        let t = ChatTemplate::new("{{ messages[0].content.strip() }}", "", "").unwrap();
        assert_eq!(
            t.render(&[Message::new(Role::User, "  hi ")], false)
                .unwrap(),
            "hi"
        );
        let t = ChatTemplate::new("{{ raise_exception('no') }}", "", "").unwrap();
        assert!(matches!(
            t.render(&[], false),
            Err(TemplateError::Render(_))
        ));
        assert!(matches!(
            ChatTemplate::new("", "", ""),
            Err(TemplateError::Missing)
        ));
    }
}
