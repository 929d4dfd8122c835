//! The emulator end to end with the packed SmolLM2-135M (fetched and packed into the
//! cache first, as for every real-model test): flashed over loopback TCP by
//! `glint-flash`, through cut links, damaged frames and a power cut; booted within the
//! memory budget or refused; answering a scripted question and drawing the answer.

use embedded_graphics::mono_font::MonoTextStyle;
use embedded_graphics::pixelcolor::BinaryColor;
use embedded_graphics::prelude::*;
use embedded_graphics::text::{Baseline, Text};
use glint_board::ed25519_dalek::SigningKey;
use glint_board::host::ManifestSpec;
use glint_board::{FONT, PowerCut, SlotState, wrap_lines};
use glint_emu::{
    EmuError, FlashLayout, FrameBuffer, Glasses, GlassesOptions, LinkOutcome, RuntimeOptions,
    parse_script,
};
use glint_flash::{FlashError, FlashOptions, FlashReport, TcpTransport, Transport, flash};
use glint_runtime::engine::SessionError;
use std::io::{self, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::ops::ControlFlow;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

const CHUNK: u32 = 64 << 10;
const DISPLAY: (u32, u32) = (240, 96);

/// The real model, its manifest and the key that signed it.
struct Signed {
    image: Arc<Vec<u8>>,
    manifest: Arc<Vec<u8>>,
    key: SigningKey,
}

fn signed() -> &'static Signed {
    static SIGNED: OnceLock<Signed> = OnceLock::new();
    SIGNED.get_or_init(|| {
        let path = glint_quantize::default_model(|m| eprintln!("{m}"))
            .expect("the packed SmolLM2-135M (fetched on first use)");
        let image = std::fs::read(path).unwrap();
        let key = SigningKey::from_bytes(&[42; 32]);
        let spec = ManifestSpec {
            model_id: "SmolLM2-135M-Instruct",
            model_version: 1,
            chunk_size: CHUNK,
        };
        let manifest = spec.sign(&image, &key).unwrap();
        Signed {
            image: Arc::new(image),
            manifest: Arc::new(manifest),
            key,
        }
    })
}

fn glasses(dir: &Path, memory_budget: u64, power_cut: Option<PowerCut>) -> Glasses {
    Glasses::power_on(GlassesOptions {
        flash: dir.join("flash.bin"),
        layout: FlashLayout::with_slot_mib(128),
        key: signed().key.verifying_key(),
        memory_budget,
        runtime: RuntimeOptions {
            threads: 2,
            max_tokens: 48,
            ..RuntimeOptions::default()
        },
        display: DISPLAY,
        power_cut,
    })
    .unwrap()
}

/// Runs `glint-flash` on a thread against `glasses` listening on loopback, until the
/// host is done. Returns the host's result and how each link ended on the device.
fn flash_over_loopback<T: Transport + Send + 'static>(
    glasses: &mut Glasses,
    transport: impl FnOnce(String) -> T + Send + 'static,
) -> (Result<FlashReport, FlashError>, Vec<LinkOutcome>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let host_done = Arc::new(AtomicBool::new(false));
    let host = {
        let host_done = Arc::clone(&host_done);
        std::thread::spawn(move || {
            let s = signed();
            let opts = FlashOptions {
                reconnect_delay: Duration::from_millis(10),
                ..FlashOptions::default()
            };
            let result = flash(
                &mut transport(addr.clone()),
                &s.manifest,
                &s.image,
                &opts,
                |_| {},
            );
            host_done.store(true, Ordering::SeqCst);
            // Wake the device's accept, so it sees the host is done.
            let _ = TcpStream::connect(&addr);
            result
        })
    };
    let mut outcomes = Vec::new();
    glasses
        .listen(&listener, |outcome| {
            outcomes.push(outcome);
            if host_done.load(Ordering::SeqCst) {
                ControlFlow::Break(())
            } else {
                ControlFlow::Continue(())
            }
        })
        .unwrap();
    (host.join().unwrap(), outcomes)
}

/// The text on a display drawn by `Board::show_text`, read back cell by cell against
/// the font's glyphs (printable ASCII; anything else reads as `?`, as the font draws it).
fn read_text(frame: &FrameBuffer) -> Vec<String> {
    let cell = FONT.character_size;
    let style = MonoTextStyle::new(&FONT, BinaryColor::On);
    let glyph_at = |f: &FrameBuffer, x0: u32, y0: u32| -> Vec<bool> {
        (0..cell.height)
            .flat_map(|y| (0..cell.width).map(move |x| (x, y)))
            .map(|(x, y)| f.is_lit(x0 + x, y0 + y))
            .collect()
    };
    let glyphs: Vec<(Vec<bool>, char)> = (32u8..127)
        .map(|b| {
            let mut f = FrameBuffer::new(cell.width, cell.height);
            let s = (b as char).to_string();
            Text::with_baseline(&s, Point::zero(), style, Baseline::Top)
                .draw(&mut f)
                .unwrap();
            (glyph_at(&f, 0, 0), b as char)
        })
        .collect();
    let size = frame.size();
    let mut lines: Vec<String> = (0..size.height / cell.height)
        .map(|row| {
            (0..size.width / cell.width)
                .map(|col| {
                    let g = glyph_at(frame, col * cell.width, row * cell.height);
                    glyphs
                        .iter()
                        .find(|(bits, _)| *bits == g)
                        .map_or('\u{fffd}', |(_, c)| *c)
                })
                .collect::<String>()
                .trim_end()
                .to_string()
        })
        .collect();
    while lines.last().is_some_and(|l| l.is_empty()) {
        lines.pop();
    }
    lines
}

/// What the display should show for `text`: its wrapped lines, the last that fit.
fn expected_lines(text: &str) -> Vec<String> {
    let cell = FONT.character_size;
    let (columns, rows) = (
        (DISPLAY.0 / cell.width) as usize,
        (DISPLAY.1 / cell.height) as usize,
    );
    let lines: Vec<String> = wrap_lines(text, columns)
        .map(|l| {
            l.chars()
                .map(|c| if (' '..='~').contains(&c) { c } else { '?' })
                .collect::<String>()
                .trim_end()
                .to_string()
        })
        .collect();
    lines[lines.len().saturating_sub(rows)..].to_vec()
}

#[test]
fn flashed_over_loopback_it_answers_a_scripted_question_and_draws_the_answer() {
    let dir = tempfile::tempdir().unwrap();
    let mut g = glasses(dir.path(), 512 << 20, None);
    let (report, outcomes) = flash_over_loopback(&mut g, TcpTransport::new);
    let report = report.unwrap();
    assert_eq!(report.resumed_at, [0]);
    assert_eq!(outcomes[0], LinkOutcome::Updated(report.slot));
    assert_eq!(g.state().slot(report.slot), SlotState::Trial);

    // Reboot into the trial slot and ask.
    g.power_cycle().unwrap();
    let boot = g.boot().unwrap();
    assert_eq!(boot.booted.slot, report.slot);
    assert!(boot.need.weights >= signed().image.len() as u64);
    let script = parse_script("{\"say\": \"What is the capital of France?\"}\n").unwrap();
    let turn = g
        .handle(&script[0])
        .unwrap()
        .expect("a say is a whole turn");
    eprintln!("answer: {:?}", turn.answer);
    assert!(turn.answer.contains("Paris"), "{:?}", turn.answer);
    assert!(turn.stats.generated_tokens > 0);
    assert_eq!(turn.confirmed_slot, Some(report.slot));
    assert_eq!(g.state().slot(report.slot), SlotState::Confirmed);

    // The frame, through a PNG file: lit, and its text is the answer.
    let png = dir.path().join("turn-01.png");
    std::fs::write(&png, g.display().to_png().unwrap()).unwrap();
    let frame = FrameBuffer::from_png(&std::fs::read(&png).unwrap()).unwrap();
    assert!(frame.lit_count() > 0, "blank frame");
    assert_eq!(read_text(&frame), expected_lines(&turn.answer));

    // The same flash on a device with less memory: refused with the numbers, and the
    // confirmed slot stays confirmed.
    drop(g);
    let mut small = glasses(dir.path(), 100 << 20, None);
    match small.boot() {
        Err(EmuError::Session(SessionError::OverBudget { plan, budget })) => {
            assert_eq!(budget, 100 << 20);
            assert!(plan.weights >= signed().image.len() as u64);
            assert!(plan.kv > 0 && plan.scratch > 0);
            assert!(plan.total() > budget);
        }
        other => panic!("expected a refusal for memory, got {other:?}"),
    }
    assert_eq!(small.state().slot(report.slot), SlotState::Confirmed);
}

/// A TCP link that dies after a number of bytes written (one budget per link).
struct CutLinks {
    tcp: TcpTransport,
    budgets: Vec<usize>,
}

struct CutLink {
    stream: TcpStream,
    left: Option<usize>,
}

impl Transport for CutLinks {
    type Link = CutLink;

    fn connect(&mut self) -> io::Result<CutLink> {
        Ok(CutLink {
            stream: self.tcp.connect()?,
            left: self.budgets.pop(),
        })
    }
}

impl Read for CutLink {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.stream.read(buf)
    }
}

impl Write for CutLink {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match &mut self.left {
            None => self.stream.write(buf),
            Some(0) => {
                let _ = self.stream.shutdown(Shutdown::Both);
                Err(io::ErrorKind::BrokenPipe.into())
            }
            Some(left) => {
                let n = self.stream.write(&buf[..buf.len().min(*left)])?;
                *left -= n;
                Ok(n)
            }
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        self.stream.flush()
    }
}

#[test]
fn a_transfer_killed_at_random_offsets_resumes_from_the_last_verified_chunk() {
    let seed = fastrand::u64(..);
    eprintln!("seed {seed}");
    let mut rng = fastrand::Rng::with_seed(seed);
    let s = signed();
    // Each link carries the manifest, at least one chunk, and then dies mid-frame
    // somewhere in the next third of the image.
    let budgets: Vec<usize> = (0..3)
        .map(|_| s.manifest.len() + 2 * CHUNK as usize + rng.usize(..s.image.len() / 3))
        .collect();
    let dir = tempfile::tempdir().unwrap();
    let mut g = glasses(dir.path(), 512 << 20, None);
    let (report, outcomes) = flash_over_loopback(&mut g, move |addr| CutLinks {
        tcp: TcpTransport::new(addr),
        budgets,
    });
    let report = report.unwrap();
    assert_eq!(report.reconnects, 3);
    assert_eq!(&outcomes[..3], [LinkOutcome::Closed; 3]);
    assert_eq!(outcomes[3], LinkOutcome::Updated(report.slot));
    // Every link after a cut started past the previous start, on a chunk boundary:
    // the device's last verified chunk, not byte 0.
    assert_eq!(report.resumed_at.len(), 4);
    for pair in report.resumed_at.windows(2) {
        assert!(pair[1] > pair[0], "{:?}", report.resumed_at);
        assert_eq!(pair[1] % CHUNK, 0);
    }
    assert!(
        report.image_bytes_sent < 2 * report.image_len,
        "resumed, not restarted: {report:?}"
    );
    assert_eq!(g.state().slot(report.slot), SlotState::Trial);
}

/// A TCP link that flips one bit of the `damage_at`-th frame it writes.
struct DamagingLinks {
    tcp: TcpTransport,
    damage_at: usize,
}

struct DamagingLink {
    stream: TcpStream,
    frames: usize,
    damage_at: usize,
}

impl Transport for DamagingLinks {
    type Link = DamagingLink;

    fn connect(&mut self) -> io::Result<DamagingLink> {
        Ok(DamagingLink {
            stream: self.tcp.connect()?,
            frames: 0,
            damage_at: self.damage_at,
        })
    }
}

impl Read for DamagingLink {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.stream.read(buf)
    }
}

impl Write for DamagingLink {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.frames += 1;
        if self.frames == self.damage_at {
            let mut damaged = buf.to_vec();
            damaged[buf.len() / 2] ^= 0x08;
            self.stream.write_all(&damaged)?;
            return Ok(buf.len());
        }
        self.stream.write(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.stream.flush()
    }
}

#[test]
fn a_damaged_frame_is_rejected_and_sent_again() {
    let dir = tempfile::tempdir().unwrap();
    let mut g = glasses(dir.path(), 512 << 20, None);
    // Frames: Hello, Begin, then chunks; damage a chunk in the middle of the payload.
    let (report, outcomes) = flash_over_loopback(&mut g, |addr| DamagingLinks {
        tcp: TcpTransport::new(addr),
        damage_at: 10,
    });
    let report = report.unwrap();
    assert_eq!(report.resends, 1);
    assert_eq!(report.reconnects, 0);
    assert_eq!(outcomes[0], LinkOutcome::Updated(report.slot));
    assert_eq!(g.state().slot(report.slot), SlotState::Trial);
}

#[test]
fn a_power_cut_during_the_update_resumes_after_the_reboot() {
    let seed = fastrand::u64(..);
    eprintln!("seed {seed}");
    // An update of 1493 chunks is some 25,000 erases and writes; cut in the first half,
    // after the manifest is in (it takes under 100).
    let at_op = fastrand::Rng::with_seed(seed).u64(200..12_000);
    let dir = tempfile::tempdir().unwrap();
    let mut g = glasses(dir.path(), 512 << 20, Some(PowerCut { at_op, torn: true }));
    let (report, outcomes) = flash_over_loopback(&mut g, TcpTransport::new);
    let report = report.unwrap();
    assert_eq!(outcomes[0], LinkOutcome::PowerCycled, "cut at op {at_op}");
    assert_eq!(outcomes[1], LinkOutcome::Updated(report.slot));
    assert_eq!(report.resumed_at.len(), 2);
    assert!(report.resumed_at[1] > 0, "{:?}", report.resumed_at);
    g.power_cycle().unwrap();
    let boot = g.boot().unwrap();
    assert_eq!(
        (boot.booted.slot, boot.booted.state),
        (report.slot, SlotState::Trial)
    );
}
