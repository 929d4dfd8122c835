//! The virtual glasses: a [`Board`] over the flash file, the emulator's pins and frame
//! buffer; it takes updates over a link, boots the model store, and answers with the
//! Glint runtime inside the device's memory budget.

use crate::EmuError;
use crate::display::FrameBuffer;
use crate::flash::{EmuFlash, FlashLayout, open_flash};
use crate::pins::{StatusLed, TalkButton};
use crate::script::{ButtonAction, Event};
use crate::server::{LINK_BUFFER_LEN, serve};
use glint_board::ed25519_dalek::VerifyingKey;
use glint_board::{Board, BootedSlot, PowerCut, SlotId, SlotState, Updater};
use glint_runtime::sampler::SamplerConfig;
use glint_runtime::{
    CpuOptions, Engine, GenerateParams, GenerateStats, KvType, MemoryPlan, ModelSource, Session,
    SessionOptions,
};
use memmap2::UncheckedAdvice;
use std::fs::File;
use std::net::TcpListener;
use std::ops::ControlFlow;
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// How the runtime runs on the glasses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RuntimeOptions {
    /// Context positions of the session (0: the runtime's default, shrunk to fit the
    /// memory budget).
    pub context: usize,
    /// KV cache element type.
    pub kv: KvType,
    /// CPU threads (0: one per core).
    pub threads: usize,
    /// Most tokens of an answer.
    pub max_tokens: usize,
}

impl Default for RuntimeOptions {
    fn default() -> Self {
        RuntimeOptions {
            context: 2048,
            kv: KvType::default(),
            threads: 0,
            max_tokens: 96,
        }
    }
}

/// What the virtual glasses are made of.
#[derive(Clone, Debug)]
pub struct GlassesOptions {
    /// The flash file (created erased if missing).
    pub flash: PathBuf,
    /// Its slots.
    pub layout: FlashLayout,
    /// The public key manifests must be signed with.
    pub key: VerifyingKey,
    /// Bytes the assistant may use: the model image (mapped), the KV cache, the
    /// activations and the runtime ([`MemoryPlan`]).
    pub memory_budget: u64,
    /// The runtime's settings.
    pub runtime: RuntimeOptions,
    /// Display width and height in pixels.
    pub display: (u32, u32),
    /// Cut power at this flash operation of this power-on (counted from 0).
    pub power_cut: Option<PowerCut>,
}

/// What [`Glasses::boot`] brought up.
#[derive(Clone, Debug, PartialEq)]
pub struct BootReport {
    /// The slot and its manifest.
    pub booted: BootedSlot,
    /// What the model needs, within the budget.
    pub need: MemoryPlan,
    /// From power-on of the model store to a session ready for the first question:
    /// state record, slot checks (a trial's whole image hashed), model mapped, cache
    /// and activations allocated.
    pub boot_to_ready: Duration,
}

/// One answered turn.
#[derive(Clone, Debug, PartialEq)]
pub struct Turn {
    /// What was said.
    pub utterance: String,
    /// The answer, as drawn on the display.
    pub answer: String,
    /// The runtime's figures (time to first token, tokens per second).
    pub stats: GenerateStats,
    /// Peak resident memory of the process after the turn, if the OS tells.
    pub peak_rss_bytes: Option<u64>,
    /// Whether this answer confirmed a trial slot.
    pub confirmed_slot: Option<SlotId>,
}

/// What happened on a link [`Glasses::listen`] served.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LinkOutcome {
    /// An update finished: the slot is on trial.
    Updated(SlotId),
    /// The host went away before finishing (it resumes on its next link).
    Closed,
    /// Power was cut mid-update; the glasses came back on, reading the flash anew.
    PowerCycled,
}

struct Running {
    booted: BootedSlot,
    session: Session,
    confirmed: bool,
}

/// The virtual glasses.
pub struct Glasses {
    board: Board<TalkButton, StatusLed, FrameBuffer, EmuFlash>,
    finger: TalkButton,
    opts: GlassesOptions,
    running: Option<Running>,
    /// Utterances heard while the talk button is held; `None` when it is not.
    heard: Option<Vec<String>>,
}

impl Glasses {
    /// Powers the glasses on: maps the flash file and reads the state record.
    pub fn power_on(opts: GlassesOptions) -> Result<Self, EmuError> {
        let updater = Self::open_store(&opts)?;
        let finger = TalkButton::default();
        let (w, h) = opts.display;
        let board = Board::new(
            finger.clone(),
            StatusLed::default(),
            FrameBuffer::new(w, h),
            updater,
        );
        Ok(Glasses {
            board,
            finger,
            opts,
            running: None,
            heard: None,
        })
    }

    fn open_store(opts: &GlassesOptions) -> Result<Updater<EmuFlash>, EmuError> {
        let mut flash = open_flash(&opts.flash, &opts.layout)?;
        if let Some(cut) = opts.power_cut {
            flash.cut_power(cut);
        }
        Ok(Updater::new(flash, opts.layout.table(), opts.key)?)
    }

    /// Power off and on: the flash is read anew from the file (what survived), the
    /// model is unloaded. A power cut armed in the options is not armed again.
    pub fn power_cycle(&mut self) -> Result<(), EmuError> {
        self.running = None;
        self.heard = None;
        let opts = GlassesOptions {
            power_cut: None,
            ..self.opts.clone()
        };
        *self.board.storage() = Self::open_store(&opts)?;
        Ok(())
    }

    /// Takes updates from `glint-flash` on `listener`, one link at a time. `on_link`
    /// hears how each link ended, and says whether to go on listening.
    pub fn listen(
        &mut self,
        listener: &TcpListener,
        mut on_link: impl FnMut(LinkOutcome) -> ControlFlow<()>,
    ) -> Result<(), EmuError> {
        let mut buf = vec![0u8; LINK_BUFFER_LEN];
        loop {
            let (mut stream, _) = listener.accept().map_err(|source| EmuError::Io {
                what: "accepting a link",
                path: PathBuf::new(),
                source,
            })?;
            let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
            let _ = stream.set_nodelay(true);
            self.running = None;
            let outcome = match serve(&mut stream, self.board.storage(), &mut buf) {
                Ok(Some(slot)) => LinkOutcome::Updated(slot),
                Ok(None) => LinkOutcome::Closed,
                Err(EmuError::Update(_)) if !self.board.storage().flash().is_powered() => {
                    drop(stream);
                    self.power_cycle()?;
                    LinkOutcome::PowerCycled
                }
                Err(e) => return Err(e),
            };
            if on_link(outcome).is_break() {
                return Ok(());
            }
        }
    }

    /// Boots: chooses and checks the slot (a trial's whole image is hashed), maps its
    /// image for the runtime (no copy: a range of the flash file), refuses a model that
    /// does not fit the memory budget, and opens a session. A trial model that fails to
    /// load or does not fit is rejected, so the previous one boots next time.
    pub fn boot(&mut self) -> Result<BootReport, EmuError> {
        let start = Instant::now();
        self.running = None;
        let booted = self.board.boot()?;
        // The checks read the image through the store's map; the runtime maps it again,
        // so hand these pages back rather than count them twice.
        let store = self.board.storage().flash().storage();
        // SAFETY: the map is of a file (MAP_SHARED): MADV_DONTNEED drops this process's
        // copies of the pages, and later reads fetch the file's bytes again; no reference
        // into the pages is held across it.
        let _ = unsafe { store.unchecked_advise(UncheckedAdvice::DontNeed) };
        match self.load(&booted) {
            Ok((session, need)) => {
                self.board.show_text(&format!(
                    "{} v{} ready",
                    booted.manifest.model_id(),
                    booted.manifest.model_version
                ))?;
                self.running = Some(Running {
                    booted,
                    session,
                    confirmed: false,
                });
                Ok(BootReport {
                    booted,
                    need,
                    boot_to_ready: start.elapsed(),
                })
            }
            Err(e) => {
                if booted.state == SlotState::Trial {
                    self.board.storage().reject()?;
                }
                Err(e)
            }
        }
    }

    fn load(&self, booted: &BootedSlot) -> Result<(Session, MemoryPlan), EmuError> {
        let file = File::open(&self.opts.flash).map_err(|source| EmuError::Io {
            what: "opening the flash file",
            path: self.opts.flash.clone(),
            source,
        })?;
        let runtime = &self.opts.runtime;
        let engine = Engine::load(
            ModelSource::FileRange {
                file,
                offset: booted.image.offset.into(),
                len: booted.image.len.into(),
            },
            CpuOptions {
                threads: runtime.threads,
                ..CpuOptions::default()
            },
        )?;
        let opts = SessionOptions {
            context: runtime.context,
            kv: runtime.kv,
            mem_budget: Some(self.opts.memory_budget),
        };
        let plan = engine.memory_plan(&opts)?;
        Ok((engine.session(opts)?, plan))
    }

    /// Plays one event: a button action or an utterance. Returns the turn it completed,
    /// if it did.
    pub fn handle(&mut self, event: &Event) -> Result<Option<Turn>, EmuError> {
        match event {
            Event::Say(text) => {
                if let Some(heard) = &mut self.heard {
                    heard.push(text.clone());
                    return Ok(None);
                }
                self.button(ButtonAction::Down)?;
                if let Some(heard) = &mut self.heard {
                    heard.push(text.clone());
                }
                self.button(ButtonAction::Up)
            }
            Event::Button(ButtonAction::Press) => {
                self.button(ButtonAction::Down)?;
                self.button(ButtonAction::Up)
            }
            Event::Button(action) => self.button(*action),
        }
    }

    /// Moves the talk button; the board reads the pin. Letting it go answers what was
    /// heard, or with nothing heard starts a new conversation.
    fn button(&mut self, action: ButtonAction) -> Result<Option<Turn>, EmuError> {
        match action {
            ButtonAction::Up => self.finger.release(),
            _ => self.finger.press(),
        }
        let held = self.board.talk_pressed()?;
        self.board.set_led(held)?;
        match (held, self.heard.take()) {
            (true, heard) => {
                self.heard = Some(heard.unwrap_or_default());
                Ok(None)
            }
            (false, None) => Ok(None),
            (false, Some(heard)) if heard.is_empty() => {
                let running = self.running.as_mut().ok_or(EmuError::NotBooted)?;
                running.session.reset();
                self.board.show_text("(new conversation)")?;
                Ok(None)
            }
            (false, Some(heard)) => self.answer(heard.join(" ")).map(Some),
        }
    }

    /// Answers `utterance` (greedy, so a script replays the same), draws the answer,
    /// and confirms a trial slot after its first answer.
    fn answer(&mut self, utterance: String) -> Result<Turn, EmuError> {
        let running = self.running.as_mut().ok_or(EmuError::NotBooted)?;
        let params = GenerateParams {
            max_tokens: self.opts.runtime.max_tokens,
            sampler: SamplerConfig::greedy(),
            ..GenerateParams::default()
        };
        self.board.set_led(true)?;
        let (reply, stats) = running
            .session
            .chat(&utterance, &params, |_| ControlFlow::Continue(()))?;
        self.board.set_led(false)?;
        let answer = reply.trim().to_string();
        self.board.show_text(&answer)?;
        let mut confirmed_slot = None;
        if running.booted.state == SlotState::Trial && !running.confirmed && !answer.is_empty() {
            self.board.storage().confirm()?;
            running.confirmed = true;
            confirmed_slot = Some(running.booted.slot);
        }
        Ok(Turn {
            utterance,
            answer,
            stats,
            peak_rss_bytes: glint_runtime::peak_rss_bytes(),
            confirmed_slot,
        })
    }

    /// The display.
    pub fn display(&self) -> &FrameBuffer {
        self.board.display()
    }

    /// The model store's state record.
    pub fn state(&mut self) -> glint_board::StateRecord {
        self.board.storage().state()
    }
}
