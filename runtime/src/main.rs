//! `glint`: run, chat, tokenize, perplexity, bench and info, modelled on llama.cpp's
//! tools so figures compare. With no `-m`, the default model is fetched and packed.
//!
//! Exit status: 0 success; 1 an error (one `error: ...` line on stderr), or stdout or
//! stderr could not be written (closed pipe, full disk: no message); 2 bad arguments;
//! [`EXIT_MODEL_CHANGED`] the model file changed while mapped; 130 Ctrl-C at the chat
//! prompt.

use anyhow::{Context, Result, bail};
use clap::{Args, Parser, Subcommand};
use glint_format::SamplingDefaults;
use glint_runtime::backend::cpu::available_cores;
use glint_runtime::backend::cpu::kernels::Kernel;
use glint_runtime::backend::{Backend, CpuBackend, CpuOptions, KvType, Precision};
use glint_runtime::engine::{
    CancelToken, Engine, GenerateError, GenerateParams, GenerateStats, SessionOptions, rate,
};
use glint_runtime::sampler::SamplerConfig;
use glint_runtime::{Message, ModelSource, Role, peak_rss_bytes};
use std::io::{BufRead, Read, Write};
use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

#[cfg(feature = "gpu")]
use glint_runtime::backend::gpu::{
    AutoChoice, AutoOptions, GpuBackend, GpuOptions, PipelineCacheUse,
};

/// Exit status when the model file changed while mapped (a `SIGBUS` on its pages).
const EXIT_MODEL_CHANGED: i32 = 3;
/// Exit status of Ctrl-C at the chat prompt (the shell's 128 + SIGINT).
const EXIT_INTERRUPTED: u8 = 130;
/// Largest text input (`-f` files, QA sets, a chat line): more than any context holds
/// (the default model's 8192 positions are about 40 KB of English); tokenizing costs
/// about 100 bytes of memory per byte of text, so this bounds a tokenization near 400 MB.
const MAX_TEXT_BYTES: u64 = 4 << 20;

#[derive(Parser)]
#[command(name = "glint", version, about = "Run a .glint model on the CPU")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Args, Clone)]
struct ModelArgs {
    /// Model file; default: SmolLM2-135M-Instruct, fetched and packed on first use.
    #[arg(short = 'm', long = "model")]
    model: Option<PathBuf>,
    /// Threads in all (default, and at most: the cores this process may run on).
    #[arg(short = 't', long = "threads")]
    threads: Option<usize>,
    /// Matrix products: `exact` (f32 activations), `int8` (int8 activations, like
    /// llama.cpp's default; faster) or `mixed` (int8 but the first two blocks: int8's
    /// speed, closer to exact's answers).
    #[arg(long = "precision", default_value = "mixed", value_parser = parse_precision)]
    precision: Precision,
    /// KV cache elements: `f16`, `int8` (per-32 block scales, like llama.cpp's
    /// `-ctk q8_0 -ctv q8_0`: 56% of the memory) or `f32`.
    #[arg(long = "kv", default_value = "f16", value_parser = parse_kv)]
    kv: KvType,
    /// CPU kernel family (`scalar`, `avx2`, `avx512`, `neon`, `neon+dotprod`); default: the
    /// fastest this CPU runs.
    #[arg(long = "kernel", value_parser = parse_kernel)]
    kernel: Option<Kernel>,
    /// Memory the model and its session may hold (e.g. `512MiB`, `1GiB`): checked
    /// before anything is allocated; without `-c` the context shrinks to fit.
    #[arg(long = "mem-budget", value_parser = parse_mem_budget)]
    mem_budget: Option<u64>,
    /// Read the weights into memory instead of mapping the file (as llama.cpp's
    /// `--no-mmap`): the run no longer depends on the file staying unchanged, for the
    /// weights' size in resident memory.
    #[arg(long = "no-mmap")]
    no_mmap: bool,
    /// Where the model runs: `cpu`; `gpu` (the GPU adapter `--gpu-adapter` names, else the
    /// first hardware one, else a software one such as lavapipe); `auto` (a hardware GPU
    /// that passed its self-test, else the CPU). Needs a build with the `gpu` feature.
    #[arg(long = "backend", default_value = "cpu", value_parser = parse_backend)]
    backend: BackendKind,
    /// The GPU adapter: the first whose name contains this (see `glint info --gpu`).
    #[arg(long = "gpu-adapter")]
    gpu_adapter: Option<String>,
}

/// `--backend`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum BackendKind {
    Cpu,
    Gpu,
    Auto,
}

fn parse_backend(s: &str) -> Result<BackendKind, String> {
    match s {
        "cpu" => Ok(BackendKind::Cpu),
        "gpu" => Ok(BackendKind::Gpu),
        "auto" => Ok(BackendKind::Auto),
        _ => Err(format!("{s:?}: expected cpu, gpu or auto")),
    }
}

/// The backend `--backend` resolved to.
enum Chosen {
    Cpu(CpuOptions),
    /// The backend, and how long choosing and starting it took (the self-test of
    /// `auto` included).
    #[cfg(feature = "gpu")]
    Gpu(Box<GpuBackend>, std::time::Duration),
}

/// The file where GPU self-test verdicts are kept, next to the model cache.
#[cfg(feature = "gpu")]
fn verdicts_path() -> PathBuf {
    glint_pack::fetch::cache_dir().join("gpu-selftest.json")
}

/// The GPU pipeline cache's folder, next to the model cache.
#[cfg(feature = "gpu")]
fn pipeline_cache_dir() -> PathBuf {
    glint_pack::fetch::cache_dir().join("gpu-pipelines")
}

#[cfg(feature = "gpu")]
fn gpu_options(m: &ModelArgs) -> GpuOptions {
    GpuOptions {
        adapter: m.gpu_adapter.clone(),
        pipeline_cache_dir: Some(pipeline_cache_dir()),
        precision: m.precision,
        ..GpuOptions::default()
    }
}

/// How long the model took to start: the backend (a GPU's device and kernels), then
/// the model's load (on a GPU: the weights' upload).
#[derive(Clone, Copy)]
struct Startup {
    backend: std::time::Duration,
    load: std::time::Duration,
}

/// Runs `$body` with `$e` bound to the engine of `$m`'s model on the backend `$m` asks
/// for, `$p` to the model's path and `$s` to its [`Startup`] (the body is compiled once
/// per backend type).
macro_rules! with_engine {
    ($m:expr, |$e:ident, $p:ident, $s:ident| $body:expr) => {{
        let m: &ModelArgs = $m;
        let $p = model_path(&m.model)?;
        let source = m.source(&$p);
        let loading = || format!("loading {}", $p.display());
        let t = Instant::now();
        match m.chosen()? {
            Chosen::Cpu(opts) => {
                let backend = CpuBackend::new(opts).with_context(loading)?;
                let started = t.elapsed();
                let $e = Engine::with_backend(source, backend).with_context(loading)?;
                let $s = Startup {
                    backend: started,
                    load: t.elapsed() - started,
                };
                $body
            }
            #[cfg(feature = "gpu")]
            Chosen::Gpu(b, started) => {
                let t = Instant::now();
                let $e = Engine::with_backend(source, *b).with_context(loading)?;
                let $s = Startup {
                    backend: started,
                    load: t.elapsed(),
                };
                $body
            }
        }
    }};
}

fn parse_mem_budget(s: &str) -> Result<u64, String> {
    glint_runtime::memory::parse_size(s).map_err(|e| e.to_string())
}

/// `-t`: more threads than the cores this process may run on would only take turns on
/// them, so the count is capped there, with a note (`-t 0` or none: all of them).
fn threads(asked: Option<usize>) -> usize {
    let cores = available_cores();
    match asked {
        Some(t) if t > cores => {
            // A failed note is not worth failing the run for.
            let _ = writeln!(
                std::io::stderr(),
                "note: -t {t}: this process may run on {cores} core{}; using {cores} thread{}",
                if cores == 1 { "" } else { "s" },
                if cores == 1 { "" } else { "s" },
            );
            cores
        }
        t => t.unwrap_or(0),
    }
}

fn parse_precision(s: &str) -> Result<Precision, String> {
    Precision::from_name(s).ok_or_else(|| format!("{s:?}: expected exact, int8 or mixed"))
}

fn parse_kv(s: &str) -> Result<KvType, String> {
    KvType::from_name(s).ok_or_else(|| format!("{s:?}: expected f16, int8 or f32"))
}

/// A count from 1 to `max`.
fn parse_count(s: &str, max: u64) -> Result<u64, String> {
    let v: u64 = s.parse().map_err(|e| format!("{s:?}: {e}"))?;
    if (1..=max).contains(&v) {
        Ok(v)
    } else {
        Err(format!("{s}: expected 1 to {max}"))
    }
}

fn parse_reps(s: &str) -> Result<usize, String> {
    parse_count(s, 1000).map(|v| v as usize)
}

fn parse_seeds(s: &str) -> Result<u64, String> {
    parse_count(s, 1000)
}

fn parse_kernel(s: &str) -> Result<Kernel, String> {
    let names: Vec<_> = Kernel::ALL.iter().map(|k| k.name()).collect();
    Kernel::from_name(s).ok_or_else(|| format!("{s:?}: expected one of {}", names.join(", ")))
}

impl ModelArgs {
    /// The model file, mapped or (`--no-mmap`) read into memory.
    fn source(&self, path: &Path) -> ModelSource {
        match self.no_mmap {
            true => ModelSource::ReadIntoMemory(path.to_path_buf()),
            false => ModelSource::Path(path.to_path_buf()),
        }
    }

    fn chosen(&self) -> Result<Chosen> {
        #[cfg(feature = "gpu")]
        let t = Instant::now();
        #[cfg(not(feature = "gpu"))]
        if self.gpu_adapter.is_some() {
            anyhow::bail!("--gpu-adapter: this glint was built without the `gpu` feature");
        }
        match self.backend {
            BackendKind::Cpu => Ok(Chosen::Cpu(self.cpu_options())),
            #[cfg(feature = "gpu")]
            BackendKind::Gpu => {
                let backend = GpuBackend::new(&gpu_options(self))?;
                Ok(Chosen::Gpu(Box::new(backend), t.elapsed()))
            }
            #[cfg(feature = "gpu")]
            BackendKind::Auto => {
                let opts = AutoOptions {
                    gpu: gpu_options(self),
                    verdicts: Some(verdicts_path()),
                    allow_software: false,
                };
                match glint_runtime::backend::gpu::auto(&opts) {
                    AutoChoice::Gpu(b, _) => Ok(Chosen::Gpu(b, t.elapsed())),
                    AutoChoice::Cpu(reason) => {
                        eprintln!("[backend auto: cpu, because {reason}]");
                        Ok(Chosen::Cpu(self.cpu_options()))
                    }
                }
            }
            #[cfg(not(feature = "gpu"))]
            BackendKind::Gpu => anyhow::bail!("this glint was built without the `gpu` feature"),
            #[cfg(not(feature = "gpu"))]
            BackendKind::Auto => {
                eprintln!(
                    "[backend auto: cpu, because this glint was built without the `gpu` feature]"
                );
                Ok(Chosen::Cpu(self.cpu_options()))
            }
        }
    }

    fn cpu_options(&self) -> CpuOptions {
        CpuOptions {
            threads: threads(self.threads),
            precision: self.precision,
            kernel: self.kernel,
        }
    }

    fn session_options(&self, context: usize) -> SessionOptions {
        SessionOptions {
            context,
            kv: self.kv,
            mem_budget: self.mem_budget,
        }
    }
}

#[derive(Args, Clone)]
struct SampleArgs {
    /// Tokens to generate at most.
    #[arg(short = 'n', long = "n-predict", default_value_t = 128)]
    n_predict: usize,
    /// Temperature (0 = greedy). Default: the model's recommendation, else 0.8.
    #[arg(long = "temp")]
    temp: Option<f32>,
    /// Top-k (0 = off). Default: the model's recommendation, else 40.
    #[arg(long = "top-k")]
    top_k: Option<usize>,
    /// Top-p (1 = off). Default: the model's recommendation, else 0.95.
    #[arg(long = "top-p")]
    top_p: Option<f32>,
    /// Min-p (0 = off). Default: the model's recommendation, else 0.05.
    #[arg(long = "min-p")]
    min_p: Option<f32>,
    /// Repetition penalty (1 = off). Default: the model's recommendation, else 1.
    #[arg(long = "repeat-penalty")]
    repeat_penalty: Option<f32>,
    /// Seed.
    #[arg(short = 's', long = "seed", default_value_t = 0)]
    seed: u64,
    /// Context size, at most the model's (0 = 2048, or less to fit --mem-budget).
    #[arg(short = 'c', long = "ctx-size", default_value_t = 0)]
    ctx: usize,
    /// Stop when this text appears (repeatable).
    #[arg(long = "stop")]
    stop: Vec<String>,
    /// Keep generating past end-of-text tokens (llama.cpp's `--ignore-eos`).
    #[arg(long = "ignore-eos")]
    ignore_eos: bool,
}

impl SampleArgs {
    /// The flags over the model's recommended sampling (`model`), over llama.cpp's
    /// defaults for what neither sets; a setting out of its range is an error.
    fn params(&self, model: Option<SamplingDefaults>) -> Result<GenerateParams> {
        let d = SamplerConfig::for_model(model);
        let params = GenerateParams {
            max_tokens: self.n_predict,
            sampler: SamplerConfig {
                temperature: self.temp.unwrap_or(d.temperature),
                top_k: self.top_k.unwrap_or(d.top_k),
                top_p: self.top_p.unwrap_or(d.top_p),
                min_p: self.min_p.unwrap_or(d.min_p),
                repeat_penalty: self.repeat_penalty.unwrap_or(d.repeat_penalty),
                seed: self.seed,
                ..d
            },
            stop: self.stop.clone(),
            ignore_eos: self.ignore_eos,
            ..GenerateParams::default()
        };
        params.sampler.check()?;
        Ok(params)
    }
}

#[derive(Subcommand)]
enum Command {
    /// Generate a continuation of a prompt.
    Run {
        #[command(flatten)]
        model: ModelArgs,
        #[command(flatten)]
        sample: SampleArgs,
        /// Prompt text; special tokens written in it (`<|im_start|>`) are parsed.
        #[arg(short = 'p', long = "prompt", required_unless_present = "file")]
        prompt: Option<String>,
        /// Read the prompt from a file (for prompts too long for a command line).
        #[arg(short = 'f', long = "file", conflicts_with = "prompt")]
        file: Option<PathBuf>,
        /// Wrap the prompt as a user turn with the model's chat template.
        #[arg(long)]
        chat: bool,
        /// Print the generated token ids as a JSON array on the last line of stdout.
        #[arg(long)]
        ids: bool,
    },
    /// Talk with the model; `/reset` forgets the conversation, `/quit` or EOF ends.
    Chat {
        #[command(flatten)]
        model: ModelArgs,
        #[command(flatten)]
        sample: SampleArgs,
        /// System prompt.
        #[arg(long)]
        system: Option<String>,
    },
    /// Print the token ids of a text (special tokens parsed, no BOS unless the model adds one).
    Tokenize {
        #[command(flatten)]
        model: ModelArgs,
        /// Print only the JSON array of ids.
        #[arg(long)]
        ids: bool,
        /// Text to tokenize.
        #[arg(required_unless_present = "file")]
        text: Option<String>,
        /// Tokenize this file instead (e.g. a training text for `glint-quantize distill`).
        #[arg(short = 'f', long = "file", conflicts_with = "text")]
        file: Option<PathBuf>,
    },
    /// Perplexity of a text, as llama-perplexity computes it.
    Perplexity {
        #[command(flatten)]
        model: ModelArgs,
        /// Text file.
        #[arg(short = 'f', long = "file")]
        file: PathBuf,
        /// Window size.
        #[arg(short = 'c', long = "ctx-size", default_value_t = 512)]
        ctx: usize,
    },
    /// Answer a QA set (`question<TAB>answer|answer` per line) through the chat
    /// template; prints each reply (with -v), then `correct = k/n` per seed and the
    /// median decode speed.
    EvalQa {
        #[command(flatten)]
        model: ModelArgs,
        #[command(flatten)]
        sample: SampleArgs,
        /// The QA set.
        file: PathBuf,
        /// Seeds to run (0, 1, ...; 1 to 1000): sampling with temperature varies by seed.
        #[arg(long, default_value_t = 1, value_parser = parse_seeds)]
        seeds: u64,
        /// Print every question, reply and verdict.
        #[arg(short, long)]
        verbose: bool,
    },
    /// Prefill and decode speed, as llama-bench measures it.
    Bench {
        #[command(flatten)]
        model: ModelArgs,
        /// Prompt tokens (pp test).
        #[arg(short = 'p', long = "n-prompt", default_value_t = 512)]
        n_prompt: usize,
        /// Generated tokens (tg test).
        #[arg(short = 'n', long = "n-gen", default_value_t = 128)]
        n_gen: usize,
        /// Repetitions (1 to 1000); the median is reported.
        #[arg(short = 'r', long = "repetitions", default_value_t = 3, value_parser = parse_reps)]
        reps: usize,
        /// Print one JSON object.
        #[arg(long)]
        json: bool,
    },
    /// Print the header of a model file and what would run it.
    Info {
        #[command(flatten)]
        model: ModelArgs,
        /// Print the memory a session would hold, by part (with -c and --mem-budget).
        #[arg(long)]
        mem: bool,
        /// Context for --mem (0 = 2048, or less to fit --mem-budget).
        #[arg(short = 'c', long = "ctx-size", default_value_t = 0)]
        ctx: usize,
        /// Also list the GPU adapters, their limits and features and their self-test
        /// verdicts (run at first use of an adapter and driver, then cached).
        #[arg(long)]
        gpu: bool,
    },
}

fn model_path(m: &Option<PathBuf>) -> Result<PathBuf> {
    match m {
        Some(p) => Ok(p.clone()),
        None => glint_pack::default_model(|msg| {
            // Progress only: a closed stderr shows up at the next note.
            let _ = writeln!(std::io::stderr(), "{msg}");
        })
        .context("preparing the default model"),
    }
}

fn engine(m: &ModelArgs) -> Result<Engine> {
    let path = model_path(&m.model)?;
    Engine::load(m.source(&path), m.cpu_options())
        .with_context(|| format!("loading {}", path.display()))
}

/// `glint info --gpu`: every adapter with its limits, features and self-test verdict.
#[cfg(feature = "gpu")]
fn gpu_report(out: &mut impl Write) -> Result<()> {
    let found = glint_runtime::backend::gpu::adapters();
    if found.is_empty() {
        writeln!(out, "gpu: no Vulkan or Metal adapter")?;
    }
    for a in found {
        writeln!(
            out,
            "gpu: {} ({}, {}{}), driver {} {}",
            a.name,
            a.backend,
            a.device_type,
            if a.software {
                ", software: used only with --backend gpu"
            } else {
                ""
            },
            a.driver,
            a.driver_info
        )?;
        writeln!(
            out,
            "  limits: storage binding {} MiB, buffer {} MiB, workgroup memory {} KiB, {} invocations",
            a.max_storage_buffer_binding_size >> 20,
            a.max_buffer_size >> 20,
            a.max_compute_workgroup_storage_size >> 10,
            a.max_compute_invocations_per_workgroup
        )?;
        writeln!(out, "  features: {}", a.features)?;
        let opts = GpuOptions {
            adapter: Some(a.name.clone()),
            pipeline_cache_dir: Some(pipeline_cache_dir()),
            ..GpuOptions::default()
        };
        let verdict =
            match glint_runtime::backend::gpu::cached_self_test(&opts, Some(&verdicts_path())) {
                Ok(t) => t.verdict(),
                Err(e) => format!("FAILED: {e}"),
            };
        writeln!(out, "  self-test: {verdict}")?;
    }
    Ok(())
}

#[cfg(not(feature = "gpu"))]
fn gpu_report(out: &mut impl Write) -> Result<()> {
    writeln!(out, "gpu: this glint was built without the `gpu` feature")?;
    Ok(())
}

/// stdout or stderr could not be written (a closed pipe, a full disk): the run ends
/// quietly (there may be nowhere to say so) with status 1.
#[derive(Debug, thiserror::Error)]
#[error("writing the output: {0}")]
struct OutputFailed(std::io::Error);

/// stdout or stderr, whose write errors are [`OutputFailed`] (inside the `io::Error`,
/// so `?` and `writeln!` work as usual).
struct Stream<W>(W);

impl<W: Write> Write for Stream<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.write(buf).map_err(output_failed)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.0.flush().map_err(output_failed)
    }
}

fn output_failed(e: std::io::Error) -> std::io::Error {
    std::io::Error::new(e.kind(), OutputFailed(e))
}

/// Messages and statistics go to stderr through this (never `eprintln!`, which panics
/// when stderr cannot be written).
fn stderr() -> Stream<std::io::Stderr> {
    Stream(std::io::stderr())
}

fn print_stats(s: &GenerateStats) -> std::io::Result<()> {
    writeln!(
        stderr(),
        "\n[prompt {} tok, {:.1} tok/s | generated {} tok, {:.1} tok/s | time to first token {:.0} ms | KV {:.1} MiB | peak RSS {:.1} MiB | stop: {:?}]",
        s.prompt_tokens,
        s.prefill_tok_s,
        s.generated_tokens,
        s.decode_tok_s,
        s.time_to_first_token.as_secs_f64() * 1e3,
        s.kv_bytes as f64 / (1 << 20) as f64,
        peak_rss_bytes().unwrap_or(0) as f64 / (1 << 20) as f64,
        s.stop
    )
}

/// Reads a text input (`-f`, a QA set) of at most [`MAX_TEXT_BYTES`]: a device or an
/// endless pipe (`/dev/zero`) ends with a message, not with the memory.
fn read_text(path: &Path) -> Result<String> {
    let what = || format!("reading {}", path.display());
    let file = std::fs::File::open(path).with_context(what)?;
    let mut bytes = Vec::new();
    file.take(MAX_TEXT_BYTES + 1)
        .read_to_end(&mut bytes)
        .with_context(what)?;
    if bytes.len() as u64 > MAX_TEXT_BYTES {
        bail!(
            "{} is larger than {} MiB, the limit for a text input",
            path.display(),
            MAX_TEXT_BYTES >> 20
        );
    }
    String::from_utf8(bytes).map_err(|_| anyhow::anyhow!("{} is not UTF-8 text", path.display()))
}

fn main() -> ExitCode {
    let process_start = Instant::now();
    // Bad arguments (including ones that are not valid UTF-8) exit with clap's message
    // and status 2.
    let cli = Cli::parse();
    signals::report_sigbus();
    match run(cli, process_start) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) if e.downcast_ref::<Interrupted>().is_some() => ExitCode::from(EXIT_INTERRUPTED),
        // A closed stdout (`glint tokenize ... | head -1`) or a full disk is not worth a
        // message, and there may be nowhere to write one.
        Err(e) if is_output_failure(&e) => ExitCode::FAILURE,
        Err(e) => {
            let _ = writeln!(std::io::stderr(), "error: {}", error_chain(&e));
            ExitCode::FAILURE
        }
    }
}

/// The error and its causes on one line. A cause whose text is already part of the
/// message (these error types often print their source) is not repeated.
fn error_chain(e: &anyhow::Error) -> String {
    let mut out = String::new();
    for cause in e.chain() {
        let text = cause.to_string();
        if !out.contains(&text) {
            if !out.is_empty() {
                out.push_str(": ");
            }
            out.push_str(&text);
        }
    }
    out
}

fn is_output_failure(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
            .is_some_and(|inner| inner.is::<OutputFailed>())
    })
}

/// Ctrl-C at the chat prompt: the session ends with [`EXIT_INTERRUPTED`].
#[derive(Debug, thiserror::Error)]
#[error("interrupted")]
struct Interrupted;

/// The process's signal handlers (installed by the binary; the library installs none).
#[cfg(unix)]
mod signals {
    use super::EXIT_MODEL_CHANGED;
    use glint_runtime::CancelToken;
    use std::sync::OnceLock;

    /// Reports a `SIGBUS` — the model file truncated or rewritten in place while
    /// mapped: its pages can no longer be read — and exits with [`EXIT_MODEL_CHANGED`],
    /// instead of dying silently mid-answer.
    pub fn report_sigbus() {
        extern "C" fn on_sigbus(_: libc::c_int) {
            const MSG: &[u8] = b"\nerror: the model file changed while in use (truncated or rewritten in place while mapped); replace model files with a new file and a rename, or run with --no-mmap\n";
            // SAFETY: write(2) and _exit(2) are async-signal-safe; MSG is static.
            unsafe {
                libc::write(2, MSG.as_ptr().cast(), MSG.len());
                libc::_exit(EXIT_MODEL_CHANGED);
            }
        }
        install(libc::SIGBUS, on_sigbus);
    }

    /// What Ctrl-C cancels: set once, before the handler is installed.
    static INTERRUPT: OnceLock<CancelToken> = OnceLock::new();

    /// Makes SIGINT cancel `token` instead of ending the process. Blocking reads are
    /// interrupted (no `SA_RESTART`), so a read at a prompt returns `Interrupted` and
    /// the caller sees the token cancelled.
    pub fn cancel_on_interrupt(token: &CancelToken) {
        extern "C" fn on_sigint(_: libc::c_int) {
            // An atomic load and an atomic store: async-signal-safe.
            if let Some(t) = INTERRUPT.get() {
                t.cancel();
            }
        }
        if INTERRUPT.set(token.clone()).is_ok() {
            install(libc::SIGINT, on_sigint);
        }
    }

    fn install(signal: libc::c_int, handler: extern "C" fn(libc::c_int)) {
        // SAFETY: a zeroed `sigaction` is valid (no flags, empty mask once cleared);
        // the handler only calls async-signal-safe functions.
        unsafe {
            let mut sa: libc::sigaction = std::mem::zeroed();
            sa.sa_sigaction = handler as libc::sighandler_t;
            libc::sigemptyset(&mut sa.sa_mask);
            libc::sigaction(signal, &sa, std::ptr::null_mut());
        }
    }
}

/// Elsewhere the defaults stay: a `SIGBUS` ends the process, Ctrl-C too.
#[cfg(not(unix))]
mod signals {
    pub fn report_sigbus() {}
    pub fn cancel_on_interrupt(_: &glint_runtime::CancelToken) {}
}

/// One line typed at the chat prompt.
enum ChatLine {
    Text(String),
    NotUtf8,
    TooLong(u64),
    End,
    Interrupted,
}

/// Reads one line of at most [`MAX_TEXT_BYTES`] (a longer one is read to its end and
/// dropped). A read interrupted by Ctrl-C (`cancel` set) ends with `Interrupted`.
fn read_chat_line(input: &mut impl BufRead, cancel: &CancelToken) -> std::io::Result<ChatLine> {
    let (mut bytes, mut total) = (Vec::new(), 0u64);
    loop {
        let buf = match input.fill_buf() {
            Ok(buf) => buf,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {
                if cancel.is_cancelled() {
                    return Ok(ChatLine::Interrupted);
                }
                continue;
            }
            Err(e) => return Err(e),
        };
        if buf.is_empty() {
            if total == 0 {
                return Ok(ChatLine::End);
            }
            break;
        }
        let (take, done) = match buf.iter().position(|&b| b == b'\n') {
            Some(i) => (i + 1, true),
            None => (buf.len(), false),
        };
        if total + (take as u64) <= MAX_TEXT_BYTES {
            bytes.extend_from_slice(&buf[..take]);
        }
        total += take as u64;
        input.consume(take);
        if done {
            break;
        }
    }
    if cancel.is_cancelled() {
        return Ok(ChatLine::Interrupted);
    }
    if total > MAX_TEXT_BYTES {
        return Ok(ChatLine::TooLong(total));
    }
    Ok(match String::from_utf8(bytes) {
        Ok(s) => ChatLine::Text(s),
        Err(_) => ChatLine::NotUtf8,
    })
}

/// `glint chat`: a line is a user turn; Ctrl-C stops a reply (at the prompt it ends
/// the session); a turn that does not fit forgets the oldest exchanges first.
fn chat<B: Backend>(
    out: &mut impl Write,
    engine: &Engine<B>,
    model: &ModelArgs,
    sample: &SampleArgs,
    system: Option<String>,
) -> Result<()> {
    let mut session = engine.session(model.session_options(sample.ctx))?;
    if let Some(sys) = system {
        session.set_system(&sys);
    }
    let params = sample.params(engine.model().config().sampling)?;
    signals::cancel_on_interrupt(&params.cancel);
    let cancel = params.cancel.clone();
    let mut input = std::io::stdin().lock();
    loop {
        write!(out, "> ")?;
        out.flush()?;
        cancel.reset();
        let line = match read_chat_line(&mut input, &cancel)? {
            ChatLine::Text(line) => line,
            ChatLine::End => break,
            ChatLine::Interrupted => {
                writeln!(out)?;
                return Err(Interrupted.into());
            }
            ChatLine::NotUtf8 => {
                writeln!(stderr(), "error: the line is not valid UTF-8; ignored")?;
                continue;
            }
            ChatLine::TooLong(n) => {
                writeln!(
                    stderr(),
                    "error: a line of {n} bytes is longer than the {} MiB a line may have; ignored",
                    MAX_TEXT_BYTES >> 20
                )?;
                continue;
            }
        };
        match line.trim() {
            "/quit" | "/exit" => break,
            "/reset" => {
                session.reset();
                continue;
            }
            "" => continue,
            _ => {}
        }
        let user = line.trim_end_matches(['\n', '\r']);
        let mut write_error = None;
        let mut on_token = |ev: glint_runtime::engine::TokenEvent<'_>| match out
            .write_all(ev.text.as_bytes())
            .and_then(|()| out.flush())
        {
            Ok(()) => ControlFlow::Continue(()),
            Err(e) => {
                write_error = Some(e);
                ControlFlow::Break(())
            }
        };
        let r = loop {
            match session.chat(user, &params, &mut on_token) {
                Err(GenerateError::PromptTooLong { .. }) if session.forget_oldest_turn() => {
                    writeln!(
                        stderr(),
                        "[the conversation fills the context: the oldest exchange is forgotten]"
                    )?;
                }
                r => break r,
            }
        };
        if let Some(e) = write_error {
            return Err(e.into());
        }
        match r {
            Ok((_, stats)) => print_stats(&stats)?,
            Err(e @ GenerateError::PromptTooLong { .. }) => writeln!(
                stderr(),
                "error: {e}; the message alone does not fit: shorten it, or start with a larger -c"
            )?,
            Err(e) => writeln!(stderr(), "error: {e}")?,
        }
        params.cancel.reset();
        writeln!(out)?;
    }
    Ok(())
}

fn run(cli: Cli, process_start: Instant) -> Result<()> {
    let mut stdout = Stream(std::io::stdout().lock());
    match cli.command {
        Command::Run {
            model,
            sample,
            prompt,
            file,
            chat,
            ids,
        } => {
            let prompt = match (prompt, file) {
                (Some(p), _) => p,
                (None, Some(f)) => read_text(&f)?,
                (None, None) => bail!("a prompt is needed: -p TEXT or -f FILE"),
            };
            with_engine!(&model, |engine, _path, _start| {
                let opts = model.session_options(sample.ctx);
                let plan = engine.memory_plan(&opts)?;
                let mut session = engine.session(opts)?;
                let params = sample.params(engine.model().config().sampling)?;
                let text = if chat {
                    engine.render_chat(&[Message::new(Role::User, prompt)], true)?
                } else {
                    prompt
                };
                let out = &mut stdout;
                let mut first_token_since_start = None;
                let mut write_error = None;
                let stats = session.generate(&text, &params, |ev| {
                    first_token_since_start.get_or_insert_with(|| process_start.elapsed());
                    match out.write_all(ev.text.as_bytes()).and_then(|()| out.flush()) {
                        Ok(()) => ControlFlow::Continue(()),
                        Err(e) => {
                            write_error = Some(e);
                            ControlFlow::Break(())
                        }
                    }
                });
                if let Some(e) = write_error {
                    return Err(e.into());
                }
                let stats = stats?;
                // The generated ids are what the context holds after the prompt, plus the
                // last token when it was not run (end of text, stop string). Not the ids
                // of the streamed events: the end-of-text token is not streamed, and text
                // held back for a stop string or a split character comes in one more event
                // that repeats the last id.
                let mut generated = session
                    .tokens()
                    .get(stats.prompt_tokens..)
                    .unwrap_or_default()
                    .to_vec();
                generated.extend(session.pending());
                debug_assert_eq!(generated.len(), stats.generated_tokens);
                writeln!(out)?;
                if ids {
                    writeln!(out, "{}", serde_json::to_string(&generated)?)?;
                }
                let ttft = first_token_since_start.unwrap_or_default();
                print_stats(&stats)?;
                writeln!(
                    stderr(),
                    "[time from process start to first token: {:.0} ms]",
                    ttft.as_secs_f64() * 1e3
                )?;
                writeln!(stderr(), "[session memory: {plan}]")?;
            })
        }
        Command::Chat {
            model,
            sample,
            system,
        } => with_engine!(&model, |engine, _path, _start| chat(
            &mut stdout,
            &engine,
            &model,
            &sample,
            system
        )?),
        Command::Tokenize {
            model,
            ids,
            text,
            file,
        } => {
            // clap requires one of the two.
            let text = match file {
                Some(file) => read_text(&file)?,
                None => text.unwrap_or_default(),
            };
            let engine = engine(&model)?;
            let tok = engine.tokenizer();
            let v = engine.prompt_tokens(&text, true);
            if !ids {
                for &id in &v {
                    writeln!(stdout, "{id:6} -> '{}'", tok.decode(&[id], true))?;
                }
            }
            writeln!(stdout, "{}", serde_json::to_string(&v)?)?;
        }
        Command::EvalQa {
            model,
            sample,
            file,
            seeds,
            verbose,
        } => {
            let text = read_text(&file)?;
            let items = glint_runtime::eval::parse_qa(&text)
                .with_context(|| format!("reading {}", file.display()))?;
            with_engine!(&model, |engine, _path, _start| {
                let mut speeds = Vec::new();
                let mut correct = 0;
                for seed in 0..seeds {
                    let mut params = sample.params(engine.model().config().sampling)?;
                    params.sampler.seed = seed;
                    let outcomes = glint_runtime::eval::answer_qa(
                        &engine,
                        &items,
                        model.session_options(sample.ctx),
                        &params,
                    )?;
                    let right = outcomes.iter().filter(|o| o.correct).count();
                    for (item, o) in items.iter().zip(&outcomes) {
                        speeds.push(o.decode_tok_s);
                        if verbose {
                            let mark = if o.correct { "ok  " } else { "MISS" };
                            let reply = o.reply.replace('\n', " ");
                            writeln!(stdout, "{mark} {} -> {}", item.question, reply.trim())?;
                        }
                    }
                    writeln!(stdout, "seed {seed}: correct = {right}/{}", items.len())?;
                    correct += right;
                }
                let asked = items.len() * seeds as usize;
                writeln!(
                    stdout,
                    "accuracy = {:.3} ({correct}/{asked}); decode {:.1} tok/s (median)",
                    correct as f64 / asked as f64,
                    median(speeds)
                )?;
            })
        }
        Command::Perplexity { model, file, ctx } => {
            let text = read_text(&file)?;
            with_engine!(&model, |engine, _path, _start| {
                let mut err = stderr();
                let mut progress = Ok(());
                let ppl = glint_runtime::eval::perplexity(
                    &engine,
                    &text,
                    ctx,
                    model.kv,
                    |chunk, ppl| {
                        if progress.is_ok() {
                            progress = write!(err, "[{chunk}] {ppl:.4} ");
                        }
                    },
                )?;
                progress?;
                writeln!(err)?;
                writeln!(stdout, "PPL = {ppl:.4}")?;
            })
        }
        Command::Bench {
            model,
            n_prompt,
            n_gen,
            reps,
            json,
        } => {
            let test = BenchTest {
                n_prompt,
                n_gen,
                reps,
            };
            with_engine!(&model, |engine, path, start| bench(
                &mut stdout,
                &engine,
                &path,
                &model,
                test,
                start,
                json
            )?)
        }
        Command::Info {
            model,
            mem,
            ctx,
            gpu,
        } => {
            with_engine!(&model, |engine, _path, _start| {
                write!(
                    stdout,
                    "{}",
                    glint_runtime::describe(engine.model(), model.kv)
                )?;
                if mem {
                    let plan = engine.memory_plan(&model.session_options(ctx))?;
                    writeln!(stdout, "session memory: {plan}")?;
                }
            });
            if gpu {
                gpu_report(&mut stdout)?;
            }
        }
    }
    Ok(())
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// What `glint bench` measures, as llama-bench: a pp test of `n_prompt` tokens and a
/// tg test of `n_gen`, each `reps` times after one warm-up.
#[derive(Clone, Copy)]
struct BenchTest {
    n_prompt: usize,
    n_gen: usize,
    reps: usize,
}

/// What `glint bench` reports of a backend.
trait BenchBackend: Backend {
    /// `cpu` or `gpu`.
    fn kind(&self) -> &'static str;
    /// The table's threads and kernel columns.
    fn columns(&self) -> (String, String);
    /// Backend-specific JSON fields.
    fn fields(&self) -> serde_json::Value;
    /// Dispatches and submits so far, where counted.
    fn work(&self) -> Option<(u64, u64)>;
    /// How the backend started, for the table: `None` for the CPU (a thread pool).
    fn start_line(&self) -> Option<String>;
}

impl BenchBackend for CpuBackend {
    fn kind(&self) -> &'static str {
        "cpu"
    }
    fn columns(&self) -> (String, String) {
        (self.threads().to_string(), self.kernel().name().to_string())
    }
    fn fields(&self) -> serde_json::Value {
        serde_json::json!({
            "kernel": self.kernel().name(),
            "precision": self.precision().name(),
            "threads": self.threads(),
        })
    }
    fn work(&self) -> Option<(u64, u64)> {
        None
    }
    fn start_line(&self) -> Option<String> {
        None
    }
}

#[cfg(feature = "gpu")]
impl BenchBackend for GpuBackend {
    fn kind(&self) -> &'static str {
        "gpu"
    }
    fn columns(&self) -> (String, String) {
        ("-".to_string(), format!("gpu {}", self.adapter_info().name))
    }
    fn fields(&self) -> serde_json::Value {
        let i = self.adapter_info();
        let s = self.start_report();
        let (read, written) = match &s.cache {
            PipelineCacheUse::File { read, written, .. } => (*read, *written),
            _ => (0, 0),
        };
        serde_json::json!({
            "adapter": i.name,
            "driver": format!("{} {}", i.driver, i.driver_info),
            "precision": self.precision().name(),
            "device_ms": ms(s.device),
            "pipelines_ms": ms(s.pipelines),
            "pipeline_cache": cache_state(&s.cache),
            "pipeline_cache_read_bytes": read,
            "pipeline_cache_written_bytes": written,
        })
    }
    fn work(&self) -> Option<(u64, u64)> {
        let w = self.work_counts();
        Some((w.dispatches, w.submits))
    }
    fn start_line(&self) -> Option<String> {
        let s = self.start_report();
        let cache = match &s.cache {
            PipelineCacheUse::File {
                path,
                read,
                written,
                write_error,
            } => format!(
                "{} ({read} bytes read, {written} written{})",
                path.display(),
                write_error
                    .as_ref()
                    .map(|e| format!("; not written: {e}"))
                    .unwrap_or_default()
            ),
            c => cache_state(c).to_string(),
        };
        Some(format!(
            "gpu start: device {:.1} ms, pipelines {:.1} ms; pipeline cache: {cache}",
            ms(s.device),
            ms(s.pipelines)
        ))
    }
}

/// The pipeline cache's state in one word: `off`, `unsupported`, `cold` (no usable
/// file was there) or `warm` (a file was read).
#[cfg(feature = "gpu")]
fn cache_state(c: &PipelineCacheUse) -> &'static str {
    match c {
        PipelineCacheUse::Off => "off",
        PipelineCacheUse::Unsupported => "unsupported",
        PipelineCacheUse::File { read: 0, .. } => "cold",
        PipelineCacheUse::File { .. } => "warm",
    }
}

fn ms(d: std::time::Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn bench<B: BenchBackend>(
    out: &mut impl Write,
    engine: &Engine<B>,
    path: &std::path::Path,
    m: &ModelArgs,
    test: BenchTest,
    start: Startup,
    json: bool,
) -> Result<()> {
    let BenchTest {
        n_prompt,
        n_gen,
        reps,
    } = test;
    let model = engine.model();
    let c = *model.config();
    // One position more than the tokens run: the last generated token's.
    let context = n_prompt.max(1).saturating_add(n_gen).saturating_add(1);
    let mut session = engine.session(m.session_options(context))?;
    // Pseudo-random prompt tokens, as llama-bench uses.
    let prompt: Vec<u32> = (0..n_prompt as u64)
        .map(|i| ((i * 2_654_435_761) % c.vocab_size as u64) as u32)
        .collect();
    // The pp test only prefills; the tg test decodes `n_gen` tokens from one start
    // token, greedy, past end-of-text (the first token comes from the start token's
    // prefill, so `max_tokens` is one more and the decode rate covers `n_gen` steps).
    let params = |max_tokens| GenerateParams {
        max_tokens,
        sampler: SamplerConfig::greedy(),
        ignore_eos: true,
        ..GenerateParams::default()
    };
    let mut pp = Vec::new();
    let mut tg = Vec::new();
    let mut work_per_token = None;
    // The process's first token: the warm-up's prompt (the pp test's, else the start
    // token) and one generated token, in a session never run before.
    let mut first_call = None;
    for _ in 0..reps + 1 {
        if n_prompt > 0 {
            session.reset();
            let t = Instant::now();
            let max = usize::from(first_call.is_none());
            let s =
                session.generate_tokens(&prompt, &params(max), |_| ControlFlow::Continue(()))?;
            pp.push(rate(n_prompt, t.elapsed()));
            first_call.get_or_insert(s.time_to_first_token);
        }
        session.reset();
        let start = [c.bos.unwrap_or(0)];
        let before = model.backend().work();
        let s =
            session.generate_tokens(&start, &params(n_gen + 1), |_| ControlFlow::Continue(()))?;
        tg.push(s.decode_tok_s);
        first_call.get_or_insert(s.time_to_first_token);
        // Dispatches and submits per generated token (the start token's prefill included).
        if let (Some(a), Some(b)) = (before, model.backend().work()) {
            let tokens = s.generated_tokens.max(1) as f64;
            work_per_token = Some(((b.0 - a.0) as f64 / tokens, (b.1 - a.1) as f64 / tokens));
        }
    }
    // The first repetition warms the page cache and the CPU: dropped, as llama-bench's warm-up.
    let pp = if pp.is_empty() {
        0.0
    } else {
        median(pp[1..].to_vec())
    };
    let tg = median(tg[1..].to_vec());
    let rss = peak_rss_bytes().unwrap_or(0);
    let bytes = model.weight_bytes_per_token();
    let backend = model.backend();
    let first_call = first_call.unwrap_or_default();
    let ttft = start.backend + start.load + first_call;
    if json {
        let mut j = serde_json::json!({
            "model": path.display().to_string(),
            "file_bytes": model.file().file_len(),
            "backend": backend.kind(),
            "kv": m.kv.name(),
            "n_prompt": n_prompt,
            "n_gen": n_gen,
            "repetitions": reps,
            "prefill_tok_s": pp,
            "decode_tok_s": tg,
            "weight_bytes_per_token": bytes,
            "decode_weight_gb_s": tg * bytes as f64 / 1e9,
            "peak_rss_bytes": rss,
            "backend_start_ms": ms(start.backend),
            "load_ms": ms(start.load),
            "first_call_ms": ms(first_call),
            "time_to_first_token_ms": ms(ttft),
        });
        if let (Some(o), serde_json::Value::Object(f)) = (j.as_object_mut(), backend.fields()) {
            o.extend(f);
            if let Some((d, s)) = work_per_token {
                o.insert("dispatches_per_token".into(), d.into());
                o.insert("submits_per_token".into(), s.into());
            }
        }
        writeln!(out, "{j}")?;
    } else {
        writeln!(out, "| model | threads | kernel | test | t/s |")?;
        writeln!(out, "| --- | --- | --- | --- | --- |")?;
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().to_string())
            .unwrap_or_default();
        let (threads, kernel) = backend.columns();
        writeln!(
            out,
            "| {name} | {threads} | {kernel} | pp{n_prompt} | {pp:.1} |"
        )?;
        writeln!(
            out,
            "| {name} | {threads} | {kernel} | tg{n_gen} | {tg:.1} |"
        )?;
        writeln!(
            out,
            "peak RSS {:.1} MiB; weights read per token {:.1} MB",
            rss as f64 / (1 << 20) as f64,
            bytes as f64 / 1e6
        )?;
        if let Some((d, s)) = work_per_token {
            writeln!(
                out,
                "per generated token: {d:.1} dispatches, {s:.2} submits"
            )?;
        }
        writeln!(
            out,
            "time to first token {:.1} ms: backend start {:.1} ms, load {:.1} ms, first call {:.1} ms (the first prompt and one token)",
            ms(ttft),
            ms(start.backend),
            ms(start.load),
            ms(first_call)
        )?;
        if let Some(line) = backend.start_line() {
            writeln!(out, "{line}")?;
        }
    }
    Ok(())
}
