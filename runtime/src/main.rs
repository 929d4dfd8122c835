//! `glint`: run, chat, tokenize, perplexity, bench and info, modelled on llama.cpp's
//! tools so figures compare. With no `-m`, the default model is fetched and packed.

use anyhow::{Context, Result};
use clap::{Args, Parser, Subcommand};
use glint_format::SamplingDefaults;
use glint_runtime::backend::cpu::available_cores;
use glint_runtime::backend::cpu::kernels::Kernel;
use glint_runtime::backend::{CpuOptions, KvType, Precision};
use glint_runtime::engine::{Engine, GenerateParams, GenerateStats, SessionOptions, rate};
use glint_runtime::sampler::SamplerConfig;
use glint_runtime::{Message, Role, peak_rss_bytes};
use std::io::{BufRead, Write};
use std::ops::ControlFlow;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

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

fn parse_kernel(s: &str) -> Result<Kernel, String> {
    let names: Vec<_> = Kernel::ALL.iter().map(|k| k.name()).collect();
    Kernel::from_name(s).ok_or_else(|| format!("{s:?}: expected one of {}", names.join(", ")))
}

impl ModelArgs {
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
}

impl SampleArgs {
    /// The flags over the model's recommended sampling (`model`), over llama.cpp's
    /// defaults for what neither sets.
    fn params(&self, model: Option<SamplingDefaults>) -> GenerateParams {
        let d = SamplerConfig::for_model(model);
        GenerateParams {
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
            ..GenerateParams::default()
        }
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
        #[arg(short = 'p', long = "prompt")]
        prompt: String,
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
        text: String,
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
        /// Seeds to run (0, 1, ...): sampling with temperature varies by seed.
        #[arg(long, default_value_t = 1)]
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
        /// Repetitions; the median is reported.
        #[arg(short = 'r', long = "repetitions", default_value_t = 3)]
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
    },
}

fn model_path(m: &Option<PathBuf>) -> Result<PathBuf> {
    match m {
        Some(p) => Ok(p.clone()),
        None => glint_quantize::default_model(|msg| eprintln!("{msg}"))
            .context("preparing the default model"),
    }
}

fn engine(m: &ModelArgs) -> Result<Engine> {
    let path = model_path(&m.model)?;
    Engine::load(&path, m.cpu_options()).with_context(|| format!("loading {}", path.display()))
}

fn print_stats(s: &GenerateStats) {
    eprintln!(
        "\n[prompt {} tok, {:.1} tok/s | generated {} tok, {:.1} tok/s | time to first token {:.0} ms | KV {:.1} MiB | peak RSS {:.1} MiB | stop: {:?}]",
        s.prompt_tokens,
        s.prefill_tok_s,
        s.generated_tokens,
        s.decode_tok_s,
        s.time_to_first_token.as_secs_f64() * 1e3,
        s.kv_bytes as f64 / (1 << 20) as f64,
        peak_rss_bytes().unwrap_or(0) as f64 / (1 << 20) as f64,
        s.stop
    );
}

fn main() -> ExitCode {
    let process_start = Instant::now();
    // Bad arguments (including ones that are not valid UTF-8) exit with clap's message
    // and status 2.
    let cli = Cli::parse();
    match run(cli, process_start) {
        Ok(()) => ExitCode::SUCCESS,
        // A closed stdout (`glint tokenize ... | head -1`) is not worth a message.
        Err(e) if is_broken_pipe(&e) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("error: {}", error_chain(&e));
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

fn is_broken_pipe(e: &anyhow::Error) -> bool {
    e.chain()
        .filter_map(|c| c.downcast_ref::<std::io::Error>())
        .any(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
}

fn run(cli: Cli, process_start: Instant) -> Result<()> {
    let mut stdout = std::io::stdout().lock();
    match cli.command {
        Command::Run {
            model,
            sample,
            prompt,
            chat,
            ids,
        } => {
            let engine = engine(&model)?;
            let opts = model.session_options(sample.ctx);
            let plan = engine.memory_plan(&opts)?;
            let mut session = engine.session(opts)?;
            let text = if chat {
                engine.render_chat(&[Message::new(Role::User, prompt)], true)?
            } else {
                prompt
            };
            let out = &mut stdout;
            let mut first_token_since_start = None;
            let mut write_error = None;
            let stats = session.generate(
                &text,
                &sample.params(engine.model().config().sampling),
                |ev| {
                    first_token_since_start.get_or_insert_with(|| process_start.elapsed());
                    match out.write_all(ev.text.as_bytes()).and_then(|()| out.flush()) {
                        Ok(()) => ControlFlow::Continue(()),
                        Err(e) => {
                            write_error = Some(e);
                            ControlFlow::Break(())
                        }
                    }
                },
            )?;
            if let Some(e) = write_error {
                return Err(e.into());
            }
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
            print_stats(&stats);
            eprintln!(
                "[time from process start to first token: {:.0} ms]",
                ttft.as_secs_f64() * 1e3
            );
            eprintln!("[session memory: {plan}]");
        }
        Command::Chat {
            model,
            sample,
            system,
        } => {
            let engine = engine(&model)?;
            let mut session = engine.session(model.session_options(sample.ctx))?;
            if let Some(sys) = system {
                session.set_system(&sys);
            }
            let stdin = std::io::stdin();
            let out = &mut stdout;
            loop {
                write!(out, "> ")?;
                out.flush()?;
                let mut line = String::new();
                if stdin.lock().read_line(&mut line)? == 0 {
                    break;
                }
                match line.trim() {
                    "/quit" | "/exit" => break,
                    "/reset" => {
                        session.reset();
                        continue;
                    }
                    "" => continue,
                    _ => {}
                }
                let mut write_error = None;
                let r = session.chat(
                    line.trim_end_matches(['\n', '\r']),
                    &sample.params(engine.model().config().sampling),
                    |ev| match out.write_all(ev.text.as_bytes()).and_then(|()| out.flush()) {
                        Ok(()) => ControlFlow::Continue(()),
                        Err(e) => {
                            write_error = Some(e);
                            ControlFlow::Break(())
                        }
                    },
                );
                if let Some(e) = write_error {
                    return Err(e.into());
                }
                match r {
                    Ok((_, stats)) => print_stats(&stats),
                    Err(e) => eprintln!("error: {e}"),
                }
                writeln!(out)?;
            }
        }
        Command::Tokenize { model, ids, text } => {
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
            let text = std::fs::read_to_string(&file)
                .with_context(|| format!("reading {}", file.display()))?;
            let items = glint_runtime::eval::parse_qa(&text)
                .with_context(|| format!("reading {}", file.display()))?;
            let engine = engine(&model)?;
            let mut speeds = Vec::new();
            let mut correct = 0;
            for seed in 0..seeds.max(1) {
                let mut params = sample.params(engine.model().config().sampling);
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
            let asked = items.len() * seeds.max(1) as usize;
            writeln!(
                stdout,
                "accuracy = {:.3} ({correct}/{asked}); decode {:.1} tok/s (median)",
                correct as f64 / asked as f64,
                median(speeds)
            )?;
        }
        Command::Perplexity { model, file, ctx } => {
            let text = std::fs::read_to_string(&file)
                .with_context(|| format!("reading {}", file.display()))?;
            let engine = engine(&model)?;
            let ppl =
                glint_runtime::eval::perplexity(&engine, &text, ctx, model.kv, |chunk, ppl| {
                    eprint!("[{chunk}] {ppl:.4} ")
                })?;
            eprintln!();
            writeln!(stdout, "PPL = {ppl:.4}")?;
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
            bench(&mut stdout, &model, test, json)?
        }
        Command::Info { model, mem, ctx } => {
            let engine = engine(&model)?;
            write!(
                stdout,
                "{}",
                glint_runtime::describe(engine.model(), model.kv)
            )?;
            if mem {
                let plan = engine.memory_plan(&model.session_options(ctx))?;
                writeln!(stdout, "session memory: {plan}")?;
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

fn bench(out: &mut impl Write, m: &ModelArgs, test: BenchTest, json: bool) -> Result<()> {
    let BenchTest {
        n_prompt,
        n_gen,
        reps,
    } = test;
    let path = model_path(&m.model)?;
    let engine = engine(m)?;
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
    for _ in 0..reps.max(1) + 1 {
        if n_prompt > 0 {
            session.reset();
            let t = Instant::now();
            session.generate_tokens(&prompt, &params(0), |_| ControlFlow::Continue(()))?;
            pp.push(rate(n_prompt, t.elapsed()));
        }
        session.reset();
        let start = [c.bos.unwrap_or(0)];
        let s =
            session.generate_tokens(&start, &params(n_gen + 1), |_| ControlFlow::Continue(()))?;
        tg.push(s.decode_tok_s);
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
    if json {
        let j = serde_json::json!({
            "model": path.display().to_string(),
            "file_bytes": model.file().file_len(),
            "kernel": backend.kernel().name(),
            "precision": backend.precision().name(),
            "kv": m.kv.name(),
            "threads": backend.threads(),
            "n_prompt": n_prompt,
            "n_gen": n_gen,
            "repetitions": reps,
            "prefill_tok_s": pp,
            "decode_tok_s": tg,
            "weight_bytes_per_token": bytes,
            "decode_weight_gb_s": tg * bytes as f64 / 1e9,
            "peak_rss_bytes": rss,
        });
        writeln!(out, "{j}")?;
    } else {
        writeln!(out, "| model | threads | kernel | test | t/s |")?;
        writeln!(out, "| --- | --- | --- | --- | --- |")?;
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().to_string())
            .unwrap_or_default();
        let (threads, kernel) = (backend.threads(), backend.kernel().name());
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
    }
    Ok(())
}
