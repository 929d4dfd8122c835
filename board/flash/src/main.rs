//! `glint-flash`: signs a `.glint` model and flashes it to the glasses (or the emulator).

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};
use glint_board::host::ManifestSpec;
use glint_flash::keys::{self, SIGNING_KEY_FILE};
use glint_flash::{FlashOptions, FlashReport, PortTransport, TcpTransport, Transport, flash};
use std::path::PathBuf;
use std::time::Duration;

#[derive(Parser)]
#[command(
    name = "glint-flash",
    about = "Sign a .glint model and flash it to the glasses"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Sign a model and send it; resumes after a cut, from the device's last verified chunk.
    Send(SendArgs),
    /// Generate a key pair: `signing.key` (keep it) and `device.pub` (the device's).
    Keygen {
        /// Directory to write them to.
        #[arg(long, default_value = "target/glint-emu")]
        dir: PathBuf,
    },
}

#[derive(clap::Args)]
struct SendArgs {
    /// The `.glint` model; default: the packed SmolLM2-135M (fetched on first use).
    model: Option<PathBuf>,
    /// The device's TCP address (the emulator's `listen`).
    #[arg(long, conflicts_with = "port")]
    tcp: Option<String>,
    /// A serial port or device node to talk through (opened read-write).
    #[arg(long)]
    port: Option<PathBuf>,
    /// The signing key.
    #[arg(long, default_value = concat!("target/glint-emu/", "signing.key"))]
    key: PathBuf,
    /// Model id in the manifest; default: the file's name.
    #[arg(long)]
    model_id: Option<String>,
    /// Model version in the manifest.
    #[arg(long, default_value_t = 1)]
    model_version: u32,
    /// Chunk size in KiB (a multiple of the device's erase sector).
    #[arg(long, default_value_t = 64)]
    chunk_kib: u32,
    /// Seconds to wait for a reply before resending.
    #[arg(long, default_value_t = 10)]
    timeout: u64,
}

fn main() -> Result<()> {
    match Cli::parse().command {
        Command::Keygen { dir } => {
            keys::generate_key_pair(&dir)?;
            eprintln!("wrote {}/{{{SIGNING_KEY_FILE},device.pub}}", dir.display());
            Ok(())
        }
        Command::Send(args) => send(args),
    }
}

fn send(args: SendArgs) -> Result<()> {
    let model = match args.model {
        Some(path) => path,
        None => glint_pack::default_model(|m| eprintln!("{m}"))?,
    };
    let image = std::fs::read(&model).with_context(|| format!("reading {}", model.display()))?;
    let key = keys::read_signing_key(&args.key).context(
        "no signing key: start the emulator once (it provisions one) or run `glint-flash keygen`",
    )?;
    let file_name = model
        .file_stem()
        .and_then(|s| s.to_str())
        .unwrap_or("model");
    let model_id: String = args
        .model_id
        .unwrap_or_else(|| file_name.chars().take(32).collect());
    let spec = ManifestSpec {
        model_id: &model_id,
        model_version: args.model_version,
        chunk_size: args.chunk_kib.saturating_mul(1024),
    };
    let manifest = spec.sign(&image, &key)?;
    eprintln!(
        "{}: {:.1} MB, {} chunks of {} KiB, signed",
        model.display(),
        image.len() as f64 / 1e6,
        image.len().div_ceil(spec.chunk_size.max(1) as usize),
        args.chunk_kib
    );
    let opts = FlashOptions::default();
    let report = match (args.tcp, args.port) {
        (Some(addr), None) => {
            let mut tcp = TcpTransport::new(addr);
            tcp.reply_timeout = Duration::from_secs(args.timeout);
            run(&mut tcp, &manifest, &image, &opts)?
        }
        (None, Some(path)) => run(&mut PortTransport { path }, &manifest, &image, &opts)?,
        _ => bail!("say where the device is: --tcp HOST:PORT or --port PATH"),
    };
    eprintln!(
        "flashed {:.1} MB to slot {:?} in {:.2} s ({:.1} MB/s); started at byte {:?}; {} resends, {} reconnects",
        report.image_len as f64 / 1e6,
        report.slot,
        report.elapsed.as_secs_f64(),
        report.megabytes_per_second(),
        report.resumed_at,
        report.resends,
        report.reconnects
    );
    eprintln!("the device boots it on trial next, and confirms it once it answers");
    Ok(())
}

fn run<T: Transport>(
    transport: &mut T,
    manifest: &[u8],
    image: &[u8],
    opts: &FlashOptions,
) -> Result<FlashReport> {
    let mut last_percent = None;
    let report = flash(transport, manifest, image, opts, |p| {
        let percent = u64::from(p.next_chunk) * 100 / u64::from(p.chunk_count.max(1));
        if last_percent != Some(percent / 10) {
            last_percent = Some(percent / 10);
            eprintln!(
                "  {percent:3}% ({} of {} chunks)",
                p.next_chunk, p.chunk_count
            );
        }
    })?;
    Ok(report)
}
