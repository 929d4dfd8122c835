//! `glint-emu`: the glasses on the desktop.

use anyhow::{Context, Result};
use clap::{Args, Parser, Subcommand};
use glint_board::PowerCut;
use glint_emu::{
    BootReport, Event, FlashLayout, Glasses, GlassesOptions, LinkOutcome, RuntimeOptions, Turn,
    parse_script,
};
use glint_flash::keys;
use std::io::BufRead;
use std::net::TcpListener;
use std::ops::ControlFlow;
use std::path::PathBuf;

#[derive(Parser)]
#[command(name = "glint-emu", about = "The glasses on the desktop")]
struct Cli {
    #[command(subcommand)]
    command: Command,
    #[command(flatten)]
    device: DeviceArgs,
}

#[derive(Subcommand)]
enum Command {
    /// Wait for `glint-flash` on a loopback port; each finished update goes on trial.
    Listen {
        /// Address to listen on.
        #[arg(long, default_value = "127.0.0.1:7878")]
        addr: String,
        /// Stop after one finished update.
        #[arg(long)]
        once: bool,
    },
    /// Boot, then answer: a script's events (JSON lines), else one utterance per line
    /// of stdin (an empty line is a press without speaking: a new conversation).
    Run {
        /// JSON lines: {"say": "..."} or {"button": "down" | "up" | "press"}.
        #[arg(long)]
        script: Option<PathBuf>,
        #[command(flatten)]
        out: OutputArgs,
    },
    /// Boot and answer one question.
    Ask {
        /// What the wearer says.
        question: String,
        #[command(flatten)]
        out: OutputArgs,
    },
}

#[derive(Args)]
struct DeviceArgs {
    /// Folder of the flash file (`flash.bin`) and the device's key (`device.pub`; a key
    /// pair is made on first use, its `signing.key` for glint-flash).
    #[arg(long, global = true, default_value = "target/glint-emu")]
    dir: PathBuf,
    /// MiB of each of the two model slots.
    #[arg(long, global = true, default_value_t = 128)]
    slot_mib: u32,
    /// MiB the assistant may use: model image + KV cache + activations.
    #[arg(long, global = true, default_value_t = 512)]
    memory_mib: u64,
    /// Context positions of the session.
    #[arg(long, global = true, default_value_t = 2048)]
    context: usize,
    /// CPU threads (0: one per core).
    #[arg(long, global = true, default_value_t = 0)]
    threads: usize,
    /// Most tokens per answer.
    #[arg(long, global = true, default_value_t = 96)]
    max_tokens: usize,
    /// Cut power at this flash write or erase (counted from 0 at power-on).
    #[arg(long, global = true)]
    power_cut_at: Option<u64>,
}

#[derive(Args)]
struct OutputArgs {
    /// Write each turn's display frame as PNG here (default: DIR/frames).
    #[arg(long)]
    frames: Option<PathBuf>,
    /// Show each frame in the terminal.
    #[arg(long)]
    view: bool,
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    let d = &cli.device;
    let key = keys::provision(&d.dir)?;
    let mut glasses = Glasses::power_on(GlassesOptions {
        flash: d.dir.join("flash.bin"),
        layout: FlashLayout::with_slot_mib(d.slot_mib),
        key,
        memory_budget: d.memory_mib << 20,
        runtime: RuntimeOptions {
            context: d.context,
            threads: d.threads,
            max_tokens: d.max_tokens,
            ..RuntimeOptions::default()
        },
        display: (240, 96),
        power_cut: d.power_cut_at.map(|at_op| PowerCut { at_op, torn: true }),
    })?;
    match cli.command {
        Command::Listen { addr, once } => {
            let listener =
                TcpListener::bind(&addr).with_context(|| format!("listening on {addr}"))?;
            eprintln!("glasses: waiting for glint-flash on {addr}");
            glasses.listen(&listener, |outcome| {
                match outcome {
                    LinkOutcome::Updated(slot) => {
                        eprintln!("glasses: update verified, slot {slot:?} on trial (boots next)")
                    }
                    LinkOutcome::Closed => {
                        eprintln!("glasses: link closed before the update finished")
                    }
                    LinkOutcome::PowerCycled => {
                        eprintln!("glasses: power cut during the update; back on, waiting")
                    }
                }
                if once && matches!(outcome, LinkOutcome::Updated(_)) {
                    ControlFlow::Break(())
                } else {
                    ControlFlow::Continue(())
                }
            })?;
            Ok(())
        }
        Command::Run { script, out } => {
            let events = match script {
                Some(path) => parse_script(
                    &std::fs::read_to_string(&path)
                        .with_context(|| format!("reading {}", path.display()))?,
                )?,
                None => Vec::new(),
            };
            let mut session = Console::boot(&mut glasses, &d.dir, out)?;
            if events.is_empty() {
                eprintln!("say something (one line a turn; an empty line: new conversation)");
                for line in std::io::stdin().lock().lines() {
                    let line = line?;
                    let event = if line.trim().is_empty() {
                        Event::Button(glint_emu::ButtonAction::Press)
                    } else {
                        Event::Say(line)
                    };
                    session.play(&mut glasses, &event)?;
                }
            } else {
                for event in &events {
                    session.play(&mut glasses, event)?;
                }
            }
            Ok(())
        }
        Command::Ask { question, out } => {
            let mut session = Console::boot(&mut glasses, &d.dir, out)?;
            session.play(&mut glasses, &Event::Say(question))
        }
    }
}

/// Prints what the glasses do.
struct Console {
    frames: PathBuf,
    view: bool,
    turns: usize,
}

impl Console {
    fn boot(glasses: &mut Glasses, dir: &std::path::Path, out: OutputArgs) -> Result<Console> {
        let BootReport {
            booted,
            need,
            boot_to_ready,
        } = glasses.boot()?;
        eprintln!(
            "boot: slot {:?} ({:?}), {} v{}; {need}; ready in {} ms",
            booted.slot,
            booted.state,
            booted.manifest.model_id(),
            booted.manifest.model_version,
            boot_to_ready.as_millis()
        );
        let frames = out.frames.unwrap_or_else(|| dir.join("frames"));
        std::fs::create_dir_all(&frames)?;
        Ok(Console {
            frames,
            view: out.view,
            turns: 0,
        })
    }

    fn play(&mut self, glasses: &mut Glasses, event: &Event) -> Result<()> {
        let Some(turn) = glasses.handle(event)? else {
            return Ok(());
        };
        self.turns += 1;
        let Turn {
            utterance,
            answer,
            stats,
            peak_rss_bytes,
            confirmed_slot,
        } = turn;
        println!("> {utterance}\n{answer}");
        eprintln!(
            "turn {}: {} prompt tokens, {} tokens; time to first token {:.0} ms, {:.1} tokens/s, peak memory {}{}",
            self.turns,
            stats.prompt_tokens,
            stats.generated_tokens,
            stats.time_to_first_token.as_secs_f64() * 1e3,
            stats.decode_tok_s,
            peak_rss_bytes.map_or("unknown".into(), |b| format!(
                "{:.1} MiB",
                b as f64 / (1 << 20) as f64
            )),
            confirmed_slot.map_or(String::new(), |s| format!(" (slot {s:?} confirmed)"))
        );
        let path = self.frames.join(format!("turn-{:02}.png", self.turns));
        std::fs::write(&path, glasses.display().to_png()?)
            .with_context(|| format!("writing {}", path.display()))?;
        if self.view {
            eprint!("{}", glasses.display().to_terminal());
        }
        Ok(())
    }
}
