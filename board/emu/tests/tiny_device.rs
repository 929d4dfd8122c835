//! The update path end to end with a tiny model (a few KB), in memory and without
//! timing: `glint-flash`'s host side talks to the device's [`FlashLink`] over a wire
//! that can lose a reply, and the device's flash (the emulator's NOR rules) can lose
//! power at any write or erase. At every power-on the device boots the old or the new
//! model, loads it with the Glint runtime and generates a few greedy tokens; a trial
//! model that answered is confirmed.

// The board's tiny `.glint` images, manifests and small-flash devices.
#[path = "../../tests/common/mod.rs"]
mod common;

use common::*;
use glint_board::protocol::{FlashLink, Kind, LinkError};
use glint_board::{PowerCut, SlotState, UpdateError, Updater};
use glint_flash::{FlashOptions, FlashReport, Transport, flash};
use glint_runtime::sampler::SamplerConfig;
use glint_runtime::{CpuOptions, Engine, GenerateParams, ModelSource, SessionOptions};
use std::cell::RefCell;
use std::convert::Infallible;
use std::io::{self, Read, Write};
use std::ops::ControlFlow;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

/// Greedy tokens generated after this prompt (`<s>` and "abc" as bytes).
const PROMPT: [u32; 4] = [256, 0x61, 0x62, 0x63];
const TOKENS: usize = 4;

/// Loads `image` with the runtime, as the device does after a boot, and generates
/// [`TOKENS`] greedy tokens after [`PROMPT`].
fn answer(image: &[u8]) -> Vec<u32> {
    let engine = Engine::load(
        ModelSource::Bytes(Arc::from(image)),
        CpuOptions {
            threads: 1,
            ..CpuOptions::default()
        },
    )
    .expect("the booted model loads");
    let mut session = engine
        .session(SessionOptions {
            context: 16,
            ..SessionOptions::default()
        })
        .unwrap();
    let params = GenerateParams {
        max_tokens: TOKENS,
        sampler: SamplerConfig::greedy(),
        ignore_eos: true,
        ..GenerateParams::default()
    };
    let mut tokens = Vec::new();
    let stats = session
        .generate_tokens(&PROMPT, &params, |ev| {
            tokens.extend(ev.id);
            ControlFlow::Continue(())
        })
        .expect("the booted model generates");
    assert_eq!(stats.generated_tokens, TOKENS);
    tokens
}

/// The device: its model store on the small test flash, and what it has been through.
struct Device {
    updater: Updater<Flash>,
    buf: Vec<u8>,
    /// The reply to the first request of this kind is lost on the wire.
    lose_reply_to: Option<Kind>,
    replies_lost: u32,
    /// Power cuts the flash went through.
    cuts: u32,
    /// Models booted, loaded and run: (version, its greedy tokens).
    answered: Vec<(u32, Vec<u32>)>,
}

impl Device {
    fn new(flash: Flash) -> Self {
        Device {
            updater: updater(flash).unwrap(),
            buf: vec![0; 4 * CHUNK as usize],
            lose_reply_to: None,
            replies_lost: 0,
            cuts: 0,
            answered: Vec::new(),
        }
    }

    /// Power on after a cut: read the state record anew, boot, load and run the
    /// model, confirm a trial that answered; again while the power fails.
    fn power_on(&mut self) {
        for _ in 0..8 {
            let mut flash = self.updater.flash().clone();
            if !flash.is_powered() {
                self.cuts += 1;
                flash.power_on();
            }
            self.updater = updater(flash).unwrap();
            match self.boot_and_answer() {
                Ok(()) => return,
                Err(e) => assert!(!self.updater.flash().is_powered(), "with power on: {e}"),
            }
        }
        panic!("no boot in 8 power-ons");
    }

    fn boot_and_answer(&mut self) -> Result<(), UpdateError> {
        let booted = self.updater.boot()?;
        let version = booted.manifest.model_version;
        let tokens = answer(self.updater.image(&booted));
        self.answered.push((version, tokens));
        if booted.state == SlotState::Trial {
            self.updater.confirm()?;
        }
        Ok(())
    }

    /// Handles one flushed batch of whole frames; returns the replies that reach the
    /// host, or `None` when power was cut (the device powers on again).
    fn receive(&mut self, frames: &[u8]) -> Option<Vec<u8>> {
        let Device { updater, buf, .. } = self;
        let mut replies = Vec::new();
        let received = FlashLink::new(buf).receive(frames, updater, |reply| {
            replies.extend_from_slice(reply);
            Ok::<_, Infallible>(())
        });
        match received {
            Ok(_) => {}
            Err(LinkError::Flash(_)) => {
                self.power_on();
                return None;
            }
            Err(LinkError::Send(never)) => match never {},
        }
        let kind = frames.get(2).copied().and_then(Kind::from_byte);
        if kind.is_some() && kind == self.lose_reply_to && self.replies_lost == 0 {
            self.replies_lost += 1;
            replies.clear();
        }
        Some(replies)
    }
}

/// The host's way to the device: every link is a fresh wire to the same device.
struct Wire(Rc<RefCell<Device>>);

struct WireLink {
    device: Rc<RefCell<Device>>,
    sent: Vec<u8>,
    replies: Vec<u8>,
    down: bool,
}

impl Transport for Wire {
    type Link = WireLink;

    fn connect(&mut self) -> io::Result<WireLink> {
        Ok(WireLink {
            device: Rc::clone(&self.0),
            sent: Vec::new(),
            replies: Vec::new(),
            down: false,
        })
    }
}

impl Write for WireLink {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if self.down {
            return Err(io::ErrorKind::ConnectionReset.into());
        }
        self.sent.extend_from_slice(buf);
        Ok(buf.len())
    }

    /// The host flushes after each frame: the device takes it whole.
    fn flush(&mut self) -> io::Result<()> {
        let frames = std::mem::take(&mut self.sent);
        match self.device.borrow_mut().receive(&frames) {
            Some(replies) => {
                self.replies.extend(replies);
                Ok(())
            }
            None => {
                self.down = true;
                Err(io::ErrorKind::ConnectionReset.into())
            }
        }
    }
}

impl Read for WireLink {
    /// A reply that did not come times out at once: the host resends.
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.down {
            return Err(io::ErrorKind::ConnectionReset.into());
        }
        if self.replies.is_empty() {
            return Err(io::ErrorKind::TimedOut.into());
        }
        let n = buf.len().min(self.replies.len());
        buf[..n].copy_from_slice(&self.replies[..n]);
        self.replies.drain(..n);
        Ok(n)
    }
}

fn send_update(device: &Rc<RefCell<Device>>, resends: u32) -> FlashReport {
    let opts = FlashOptions {
        resends,
        reconnects: 4,
        reconnect_delay: Duration::ZERO,
    };
    flash(
        &mut Wire(Rc::clone(device)),
        &manifest(2),
        &tiny_image(2),
        &opts,
        |_| {},
    )
    .expect("the update succeeds")
}

#[test]
fn a_lost_reply_to_begin_a_chunk_or_finish_still_ends_in_success() {
    for (lost, resends) in [
        (Kind::Begin, 5),
        (Kind::Chunk, 5),
        (Kind::Finish, 5),
        // No resends: the host reconnects and begins again with the same manifest.
        (Kind::Finish, 0),
    ] {
        let device = Rc::new(RefCell::new(Device::new(provisioned())));
        device.borrow_mut().lose_reply_to = Some(lost);
        let report = send_update(&device, resends);
        let mut d = device.borrow_mut();
        assert_eq!(d.replies_lost, 1, "{lost:?}");
        assert_eq!(
            (report.resends, report.reconnects),
            (resends.min(1), 1 - resends.min(1)),
            "{lost:?}, {resends} resends: {report:?}"
        );
        assert_eq!(d.updater.state().slot(report.slot), SlotState::Trial);
        // The image is on trial, whole: the next boot runs it.
        d.power_on();
        assert_eq!(d.answered.len(), 1);
        assert_eq!(d.answered[0].0, 2);
        assert_eq!(d.updater.state().slot(report.slot), SlotState::Confirmed);
    }
}

/// One whole update from `start`: the transfer (with the device powering on again
/// after a cut, and the host resuming), then the power-on that boots the trial,
/// runs it and confirms it.
fn update(start: Flash) -> Device {
    let device = Rc::new(RefCell::new(Device::new(start)));
    send_update(&device, 5);
    let mut d = Rc::into_inner(device).unwrap().into_inner();
    d.power_on();
    d
}

#[test]
fn after_a_power_cut_at_every_operation_the_device_boots_and_runs_a_model() {
    let expected = [1, 2].map(|v| answer(&tiny_image(v)));
    let mut points = 0;
    let (mut runs, mut old_runs) = (0, 0);
    for (start, end) in [
        (provisioned(), [SlotState::Fallback, SlotState::Confirmed]),
        // Slot A holds version 3 as the fallback: the update overwrites it.
        (with_fallback(), [SlotState::Confirmed, SlotState::Fallback]),
    ] {
        let clean = update(start.clone());
        assert_eq!(clean.answered, [(2, expected[1].clone())]);
        assert_eq!(clean.updater.state().slots, end);
        let ops = clean.updater.flash().ops() - start.ops();
        assert!(ops > 20, "{ops} operations, expected a whole update");
        for at in 0..ops {
            for torn in [false, true] {
                let mut flash = start.clone();
                flash.cut_power(PowerCut {
                    at_op: start.ops() + at,
                    torn,
                });
                let d = update(flash);
                assert_eq!(d.cuts, 1, "cut at operation {at} (torn: {torn})");
                // Every power-on ran the old model or the new one, whole, and the
                // update completed.
                for (version, tokens) in &d.answered {
                    assert!(*version == 1 || *version == 2, "version {version}");
                    assert_eq!(
                        tokens,
                        &expected[*version as usize - 1],
                        "version {version}"
                    );
                }
                assert_eq!(d.answered.last().map(|a| a.0), Some(2));
                assert_eq!(d.updater.state().slots, end, "cut at operation {at}");
                points += 1;
                runs += d.answered.len();
                old_runs += d.answered.iter().filter(|a| a.0 == 1).count();
            }
        }
    }
    println!("power-cut points: {points} (every write and erase of two updates, clean and torn)");
    println!("power-ons that booted, loaded and ran a model: {runs} ({old_runs} the old one)");
    assert!(
        old_runs > 0,
        "no cut came before the new model was on trial"
    );
}
