//! `glint-quantize distill`: flags, the training loop's progress bar, checkpoints and the
//! loss curve around `glint_pack::distill`.

use anyhow::{Context, Result, bail};
use burn::tensor::Device;
use clap::Args;
use glint_pack::distill::{
    DistillConfig, StepLog, Teacher, Trainer, read_json, write_json, write_loss_png, write_student,
};
use indicatif::{ProgressBar, ProgressStyle};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

/// Flags of `glint-quantize distill`; any recipe flag overrides `--config`'s value.
#[derive(Args)]
pub struct DistillArgs {
    /// The teacher: a GGUF file, an HF folder or a .glint file (decoded to f32).
    teacher: PathBuf,
    /// Training tokens: a JSON array of ids, as `glint tokenize --ids -f TEXT` prints it.
    #[arg(long)]
    tokens: PathBuf,
    /// Output folder: distill.json (the recipe), loss.csv, loss.png, checkpoint/,
    /// student.glint.
    #[arg(short, long)]
    output: PathBuf,
    /// A recipe (distill.json of an earlier run) to start from.
    #[arg(long, conflicts_with = "resume")]
    config: Option<PathBuf>,
    /// Continue the run in the output folder from its checkpoint (its distill.json).
    #[arg(long)]
    resume: bool,
    /// Blocks the student keeps, evenly spaced with the first and the last [default:
    /// half the teacher's].
    #[arg(long)]
    layers: Option<u32>,
    /// The student's feed-forward width [default: the teacher's].
    #[arg(long)]
    ffn_dim: Option<u32>,
    /// Optimizer steps [default: 30].
    #[arg(long)]
    steps: Option<usize>,
    /// Windows per step [default: 4].
    #[arg(long)]
    batch: Option<usize>,
    /// Tokens per window [default: 64].
    #[arg(long)]
    seq_len: Option<usize>,
    /// Peak learning rate [default: 2e-4].
    #[arg(long)]
    lr: Option<f64>,
    /// Teacher tokens per position in the loss [default: 64].
    #[arg(long)]
    top_k: Option<usize>,
    /// Softmax temperature of the loss [default: 1].
    #[arg(long)]
    temperature: Option<f32>,
    /// Seed of the window sampler [default: 0].
    #[arg(long)]
    seed: Option<u64>,
    /// Steps between checkpoints [default: 10; 0: only at the end].
    #[arg(long)]
    checkpoint_every: Option<usize>,
    /// Scheme of OUT/student.glint (f16 keeps it near the trained f32 weights).
    #[arg(short, long, default_value = "f16")]
    scheme: String,
}

impl DistillArgs {
    fn overrides_given(&self) -> bool {
        self.layers.is_some()
            || self.ffn_dim.is_some()
            || self.steps.is_some()
            || self.batch.is_some()
            || self.seq_len.is_some()
            || self.lr.is_some()
            || self.top_k.is_some()
            || self.temperature.is_some()
            || self.seed.is_some()
            || self.checkpoint_every.is_some()
    }

    /// The recipe: `--config` or the default, with the flags' overrides.
    fn recipe(&self, teacher_layers: u32) -> Result<DistillConfig> {
        let mut c = match &self.config {
            Some(path) => read_json(path)?,
            None => DistillConfig::default_for(teacher_layers, (teacher_layers / 2).max(1)),
        };
        if let Some(n) = self.layers {
            if n == 0 || n > teacher_layers {
                bail!("--layers {n}: the teacher has {teacher_layers} blocks");
            }
            c.keep = glint_pack::distill::even_layers(teacher_layers, n);
        }
        c.ffn_dim = self.ffn_dim.or(c.ffn_dim);
        c.steps = self.steps.unwrap_or(c.steps);
        c.batch = self.batch.unwrap_or(c.batch);
        c.seq_len = self.seq_len.unwrap_or(c.seq_len);
        c.lr = self.lr.unwrap_or(c.lr);
        c.top_k = self.top_k.unwrap_or(c.top_k);
        c.temperature = self.temperature.unwrap_or(c.temperature);
        c.seed = self.seed.unwrap_or(c.seed);
        c.checkpoint_every = self.checkpoint_every.unwrap_or(c.checkpoint_every);
        Ok(c)
    }
}

/// Reads the token file: a JSON array of ids.
fn read_tokens(path: &Path, vocab: u32) -> Result<Vec<u32>> {
    let tokens: Vec<u32> = read_json(path)?;
    if let Some(bad) = tokens.iter().find(|&&t| t >= vocab) {
        bail!(
            "{}: token {bad} is outside the teacher's vocabulary of {vocab}",
            path.display()
        );
    }
    Ok(tokens)
}

/// The loss curve as CSV: `step,loss,lr,tokens_per_s`.
fn write_csv(path: &Path, logs: &[StepLog]) -> Result<()> {
    let mut out = String::from("step,loss,lr,tokens_per_s\n");
    for l in logs {
        out += &format!("{},{},{},{:.1}\n", l.step, l.loss, l.lr, l.tokens_per_s);
    }
    std::fs::write(path, out).with_context(|| format!("writing {}", path.display()))
}

/// Runs `glint-quantize distill`.
pub fn run(args: DistillArgs) -> Result<()> {
    let start = Instant::now();
    let scheme = crate::scheme(&args.scheme)?;
    let teacher = Teacher::open(&args.teacher)
        .with_context(|| format!("reading the teacher {}", args.teacher.display()))?;
    let recipe_path = args.output.join("distill.json");
    let ck_dir = args.output.join("checkpoint");
    let log_path = args.output.join("loss.json");
    let config = if args.resume {
        if args.overrides_given() {
            bail!(
                "--resume continues the recipe in {}; it takes no recipe flags",
                recipe_path.display()
            );
        }
        read_json(&recipe_path)?
    } else {
        args.recipe(teacher.config.n_layers)?
    };
    std::fs::create_dir_all(&args.output)
        .with_context(|| format!("creating {}", args.output.display()))?;
    write_json(&recipe_path, &config)?;
    let tokens = read_tokens(&args.tokens, teacher.config.vocab_size)?;

    let teacher_model = teacher.model(&Device::flex())?;
    let train_device = Device::flex().autodiff();
    let student = teacher.student(&config, &train_device)?;
    let (mut trainer, mut logs): (Trainer, Vec<StepLog>) = if args.resume {
        let t = Trainer::resume(&ck_dir, student, config.clone())?;
        let mut logs: Vec<StepLog> = read_json(&log_path)?;
        logs.truncate(t.step);
        (t, logs)
    } else {
        (Trainer::new(student, config.clone()), Vec::new())
    };
    eprintln!(
        "student: blocks {:?} of the teacher's {}, ffn {}, {} tokens; from step {} of {}",
        config.keep,
        teacher.config.n_layers,
        config.ffn_dim.unwrap_or(teacher.config.ffn_dim),
        tokens.len(),
        trainer.step,
        config.steps
    );

    let bar = ProgressBar::new(config.steps as u64);
    bar.set_style(
        ProgressStyle::with_template(
            "{bar:30} {pos}/{len} [{elapsed_precise}<{eta_precise}] {msg}",
        )
        .expect("valid template"),
    );
    bar.set_position(trainer.step as u64);
    while trainer.step < config.steps {
        let log = trainer.train_step(&teacher_model, &tokens)?;
        bar.set_position(trainer.step as u64);
        bar.set_message(format!(
            "loss {:.4}  {:.0} tok/s",
            log.loss, log.tokens_per_s
        ));
        logs.push(log);
        let every = config.checkpoint_every;
        if trainer.step == config.steps || (every > 0 && trainer.step % every == 0) {
            trainer.save(&ck_dir)?;
            write_json(&log_path, &logs)?;
        }
    }
    bar.finish_and_clear();
    write_json(&log_path, &logs)?;
    let csv = args.output.join("loss.csv");
    write_csv(&csv, &logs)?;
    // The curve (loss.csv, and loss.png when a step ran: a chart needs a point).
    let mut curve = csv.display().to_string();
    if !logs.is_empty() {
        let png = args.output.join("loss.png");
        let title = format!(
            "Distillation: {} of {} blocks, {} steps of {}x{} tokens",
            config.keep.len(),
            teacher.config.n_layers,
            config.steps,
            config.batch,
            config.seq_len
        );
        write_loss_png(&logs, &title, &png)?;
        curve += &format!(" and {}", png.display());
    }

    // Before and after on one batch (step 0's): the first log's loss is the untrained
    // student's on it.
    if let Some(first) = logs.first().filter(|l| l.step == 0) {
        let after = trainer.loss(&teacher_model, &tokens, 0)?;
        eprintln!(
            "loss on step 0's batch: {:.4} before training, {after:.4} after",
            first.loss
        );
    }
    let out = args.output.join("student.glint");
    let len = write_student(&trainer.student, &teacher, &config.keep, scheme, &out)?;
    let mean_speed = if logs.is_empty() {
        0.0
    } else {
        logs.iter().map(|l| l.tokens_per_s).sum::<f64>() / logs.len() as f64
    };
    let mut err = std::io::stderr().lock();
    writeln!(
        err,
        "wrote {} ({:.1} MB, {}), {curve} (loss curve) in {:.1} s; {:.0} tokens/s mean",
        out.display(),
        len as f64 / 1e6,
        scheme.name(),
        start.elapsed().as_secs_f64(),
        mean_speed
    )?;
    Ok(())
}
