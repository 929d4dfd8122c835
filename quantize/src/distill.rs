//! Distillation (feature `distill`, `glint-quantize distill`): a student made from the
//! teacher by dropping blocks (and optionally narrowing the feed-forward), initialised
//! from the teacher's weights and trained on the teacher's next-token distributions with
//! burn's autodiff on its Flex CPU backend.
//!
//! Both models are the float reference Llama of `glint_models::burn_llama` (the teacher's
//! weights decoded to f32). The loss is [`topk_kl`]: the KL divergence from the teacher to
//! the student over the teacher's top-k tokens plus one bucket for the rest of the
//! vocabulary, both softened by a temperature. Training is a pure function of the
//! [`DistillConfig`] and the token stream: the windows of step `s` come from a generator
//! seeded by `(seed, s)`, so a run resumed from a checkpoint continues exactly as the
//! uninterrupted run would.

use crate::pack::decode_f32;
use crate::plot::{LineChart, PALETTE, PlotError, Series, SeriesStyle};
use crate::source::{Encoding, Imported, SourceTensor};
use crate::{QuantizeError, Scheme, write_packed};
use burn::module::{Module, ModuleVisitor, Param};
use burn::optim::{AdamWConfig, GradientsParams, ModuleOptimizer};
use burn::store::{BurnpackStore, ModuleSnapshot};
use burn::tensor::activation::log_softmax;
use burn::tensor::{Device, Int, Tensor, TensorData};
use glint_format::{BlockTensor, LlamaTensor, ModelConfig};
use glint_models::burn_llama::{Llama, LlamaInitError};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// Why distillation failed.
#[derive(Debug, thiserror::Error)]
pub enum DistillError {
    /// Importing the teacher or packing the student failed.
    #[error(transparent)]
    Quantize(#[from] Box<QuantizeError>),
    /// A model could not be built from its weights.
    #[error(transparent)]
    Init(#[from] LlamaInitError),
    /// The config asks for something the teacher cannot give.
    #[error("bad distillation config: {0}")]
    Config(String),
    /// The token stream is too short for one window.
    #[error("{tokens} tokens cannot fill a window of {needed}")]
    TooFewTokens {
        /// Tokens in the stream.
        tokens: usize,
        /// Tokens a window needs (sequence length + 1).
        needed: usize,
    },
    /// A file could not be read or written.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// A JSON file (config, tokens, checkpoint state) does not parse.
    #[error("{}: {source}", path.display())]
    Json {
        /// The file.
        path: PathBuf,
        /// The parse error.
        source: serde_json::Error,
    },
    /// burn could not save or load a checkpoint.
    #[error("checkpoint {}: {why}", path.display())]
    Checkpoint {
        /// The checkpoint file.
        path: PathBuf,
        /// burn's message.
        why: String,
    },
    /// The loss curve could not be drawn.
    #[error("loss curve: {0}")]
    Plot(#[from] PlotError),
    /// The checkpoint was written under another config.
    #[error("the checkpoint in {} was written with another config; resume with that one", .0.display())]
    ConfigChanged(PathBuf),
}

/// Everything that decides a distillation run (written next to its outputs as
/// `distill.json`; `--config` reads it back).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DistillConfig {
    /// The teacher's blocks the student keeps, in order (block `i` of the student is
    /// initialised from block `keep[i]` of the teacher).
    pub keep: Vec<u32>,
    /// The student's feed-forward width (`None`: the teacher's); narrowing keeps the
    /// channels with the largest `|gate row| |up row| |down column|`.
    pub ffn_dim: Option<u32>,
    /// Optimizer steps.
    pub steps: usize,
    /// Windows per step.
    pub batch: usize,
    /// Tokens per window.
    pub seq_len: usize,
    /// Peak learning rate (AdamW), decayed by a cosine to a tenth over the run.
    pub lr: f64,
    /// Teacher tokens kept per position in the loss.
    pub top_k: usize,
    /// Softmax temperature of both distributions in the loss.
    pub temperature: f32,
    /// Seed of the window sampler.
    pub seed: u64,
    /// Steps between checkpoints (0: only at the end).
    pub checkpoint_every: usize,
}

impl DistillConfig {
    /// The default recipe for a teacher of `teacher_layers` blocks: keep `layers` of them,
    /// evenly spaced with the first and the last ([`even_layers`]); 30 steps of 4 windows
    /// of 64 tokens (minutes on two cores for SmolLM2-135M).
    pub fn default_for(teacher_layers: u32, layers: u32) -> Self {
        Self {
            keep: even_layers(teacher_layers, layers),
            ffn_dim: None,
            steps: 30,
            batch: 4,
            seq_len: 64,
            lr: 2e-4,
            top_k: 64,
            temperature: 1.0,
            seed: 0,
            checkpoint_every: 10,
        }
    }

    /// The learning rate at `step`: cosine from [`lr`](Self::lr) to a tenth of it.
    pub fn lr_at(&self, step: usize) -> f64 {
        let t = step as f64 / self.steps.max(1) as f64;
        self.lr * (0.1 + 0.9 * 0.5 * (1.0 + (std::f64::consts::PI * t).cos()))
    }
}

/// `n` of `total` block indices, evenly spaced, the first and the last included
/// (`round(i (total - 1) / (n - 1))`).
pub fn even_layers(total: u32, n: u32) -> Vec<u32> {
    match n {
        0 => Vec::new(),
        1 => vec![0],
        _ => (0..n)
            .map(|i| {
                ((i as f64 * (total - 1) as f64 / (n - 1) as f64).round() as u32).min(total - 1)
            })
            .collect(),
    }
}

/// The teacher's targets for a batch of positions: per position its `k` most likely
/// tokens, their probabilities, and the probability of every other token together.
pub struct TopkTargets {
    /// Token ids `[positions, k]`.
    pub ids: Vec<i64>,
    /// Probabilities `[positions, k]` (at the temperature).
    pub probs: Vec<f32>,
    /// Probability of the rest of the vocabulary `[positions]`.
    pub rest: Vec<f32>,
    /// Tokens kept per position.
    pub k: usize,
}

impl TopkTargets {
    /// The targets of teacher logits `[positions, vocab]` (row-major) at `temperature`.
    pub fn from_logits(logits: &[f32], vocab: usize, k: usize, temperature: f32) -> Self {
        let k = k.min(vocab);
        let rows = logits.len() / vocab;
        let (mut ids, mut probs, mut rest) = (
            Vec::with_capacity(rows * k),
            Vec::with_capacity(rows * k),
            Vec::with_capacity(rows),
        );
        let mut order: Vec<usize> = Vec::with_capacity(vocab);
        for row in logits.chunks_exact(vocab) {
            let scaled = |i: usize| (row[i] / temperature) as f64;
            let max = (0..vocab).map(scaled).fold(f64::NEG_INFINITY, f64::max);
            let lse = max
                + (0..vocab)
                    .map(|i| (scaled(i) - max).exp())
                    .sum::<f64>()
                    .ln();
            order.clear();
            order.extend(0..vocab);
            if k < vocab {
                order.select_nth_unstable_by(k - 1, |&a, &b| row[b].total_cmp(&row[a]));
            }
            let mut kept = 0.0;
            for &i in &order[..k] {
                let p = (scaled(i) - lse).exp();
                kept += p;
                ids.push(i as i64);
                probs.push(p as f32);
            }
            rest.push((1.0 - kept).max(0.0) as f32);
        }
        Self {
            ids,
            probs,
            rest,
            k,
        }
    }
}

/// Smallest probability the loss takes a logarithm of (the rest bucket of a confident
/// position rounds to 0 in f32).
const MIN_PROB: f32 = 1e-12;

/// The distillation loss: the mean over positions of KL(teacher ‖ student) between the
/// two distributions coarsened to the teacher's top-k tokens plus one bucket for all
/// others, at `temperature`. `student_logits` is `[positions, vocab]`. Zero when the
/// student's logits are the teacher's; unlike a top-k softmax renormalised on both sides,
/// mass the student puts outside the teacher's top-k is penalised (through the bucket).
pub fn topk_kl(student_logits: Tensor<2>, targets: &TopkTargets, temperature: f32) -> Tensor<1> {
    let device = student_logits.device();
    let [rows, _] = student_logits.dims();
    let k = targets.k;
    let log_q_all = log_softmax(student_logits.div_scalar(temperature), 1);
    let ids = Tensor::<2, Int>::from_data(TensorData::new(targets.ids.clone(), [rows, k]), &device);
    let log_q = log_q_all.gather(1, ids);
    let q_rest = Tensor::<2>::ones([rows, 1], &device) - log_q.clone().exp().sum_dim(1);
    let log_q_rest = q_rest.clamp_min(MIN_PROB).log();
    let log_p_of = |v: &[f32]| -> Vec<f32> { v.iter().map(|&p| p.max(MIN_PROB).ln()).collect() };
    let p = Tensor::<2>::from_data(TensorData::new(targets.probs.clone(), [rows, k]), &device);
    let log_p = Tensor::<2>::from_data(
        TensorData::new(log_p_of(&targets.probs), [rows, k]),
        &device,
    );
    let p_rest = Tensor::<2>::from_data(TensorData::new(targets.rest.clone(), [rows, 1]), &device);
    let log_p_rest =
        Tensor::<2>::from_data(TensorData::new(log_p_of(&targets.rest), [rows, 1]), &device);
    let kl = (p * (log_p - log_q)).sum_dim(1) + p_rest * (log_p_rest - log_q_rest);
    kl.mean()
}

/// The teacher: its config, and its weights decoded to f32 under their canonical names.
pub struct Teacher {
    /// The source as imported (tokenizer, template and provenance go to the student).
    pub source: Imported,
    /// The teacher's config.
    pub config: ModelConfig,
}

impl Teacher {
    /// Imports the teacher checkpoint at `path` (anything `import` reads).
    pub fn open(path: &Path) -> Result<Self, DistillError> {
        let source = crate::import(path).map_err(Box::new)?;
        let config = source.config;
        Ok(Self { source, config })
    }

    /// The f32 values of the teacher tensor `name`.
    fn values(&self, name: &str) -> Option<Vec<f32>> {
        let t = self.source.tensors.iter().find(|t| t.name == name)?;
        decode_f32(&self.source, t).ok()
    }

    /// The teacher as a burn model on `device`.
    pub fn model(&self, device: &Device) -> Result<Llama, DistillError> {
        Ok(Llama::from_weights(
            &self.config,
            |name, _| self.values(name),
            device,
        )?)
    }

    /// The student `config` describes, initialised from the teacher's weights, on
    /// `device` (autodiff for training).
    pub fn student(&self, config: &DistillConfig, device: &Device) -> Result<Llama, DistillError> {
        let sc = student_config(&self.config, config)?;
        // For each kept block, the FFN channels it keeps (all of them when not narrowed).
        let mut channels = Vec::new();
        for &l in &config.keep {
            channels.push(match config.ffn_dim {
                Some(width) if width < self.config.ffn_dim => {
                    let get = |t| {
                        self.values(&LlamaTensor::Block(l, t).name())
                            .ok_or_else(|| DistillError::Config(format!("teacher lacks {t:?}")))
                    };
                    let (gate, up, down) = (
                        get(BlockTensor::FfnGate)?,
                        get(BlockTensor::FfnUp)?,
                        get(BlockTensor::FfnDown)?,
                    );
                    ffn_channels(
                        &gate,
                        &up,
                        &down,
                        self.config.ffn_dim as usize,
                        width as usize,
                    )
                }
                _ => (0..self.config.ffn_dim as usize).collect(),
            });
        }
        let ffn = self.config.ffn_dim as usize;
        let roles: std::collections::HashMap<String, LlamaTensor> = LlamaTensor::all(&sc)
            .into_iter()
            .map(|t| (t.name(), t))
            .collect();
        Ok(Llama::from_weights(
            &sc,
            |name, _| {
                let (teacher_name, narrow) = match *roles.get(name)? {
                    LlamaTensor::Block(i, t) => {
                        let l = *config.keep.get(i as usize)?;
                        (LlamaTensor::Block(l, t).name(), Some((i as usize, t)))
                    }
                    other => (other.name(), None),
                };
                let v = self.values(&teacher_name)?;
                Some(match narrow {
                    Some((i, BlockTensor::FfnGate | BlockTensor::FfnUp)) => {
                        let cols = v.len() / ffn;
                        channels[i]
                            .iter()
                            .flat_map(|&c| v[c * cols..(c + 1) * cols].iter().copied())
                            .collect()
                    }
                    Some((i, BlockTensor::FfnDown)) => v
                        .chunks_exact(ffn)
                        .flat_map(|row| channels[i].iter().map(|&c| row[c]))
                        .collect(),
                    _ => v,
                })
            },
            device,
        )?)
    }
}

/// The `width` feed-forward channels (of `ffn`) with the largest product of their gate
/// row, up row and down column norms, in their original order.
fn ffn_channels(gate: &[f32], up: &[f32], down: &[f32], ffn: usize, width: usize) -> Vec<usize> {
    let dim = gate.len() / ffn;
    let norm = |v: &mut dyn Iterator<Item = f32>| v.map(|x| x * x).sum::<f32>().sqrt();
    let score: Vec<f32> = (0..ffn)
        .map(|c| {
            norm(&mut gate[c * dim..(c + 1) * dim].iter().copied())
                * norm(&mut up[c * dim..(c + 1) * dim].iter().copied())
                * norm(&mut (0..dim).map(|r| down[r * ffn + c]))
        })
        .collect();
    let mut order: Vec<usize> = (0..ffn).collect();
    order.sort_by(|&a, &b| score[b].total_cmp(&score[a]));
    let mut kept = order[..width].to_vec();
    kept.sort_unstable();
    kept
}

/// The student's model config: the teacher's with fewer blocks and maybe a narrower FFN.
pub fn student_config(
    teacher: &ModelConfig,
    config: &DistillConfig,
) -> Result<ModelConfig, DistillError> {
    if config.keep.is_empty() {
        return Err(DistillError::Config("the student keeps no block".into()));
    }
    if let Some(&l) = config.keep.iter().find(|&&l| l >= teacher.n_layers) {
        return Err(DistillError::Config(format!(
            "block {l} is not one of the teacher's {}",
            teacher.n_layers
        )));
    }
    let ffn_dim = config.ffn_dim.unwrap_or(teacher.ffn_dim);
    if ffn_dim == 0 || ffn_dim > teacher.ffn_dim {
        return Err(DistillError::Config(format!(
            "ffn_dim {ffn_dim} must be in 1..={}",
            teacher.ffn_dim
        )));
    }
    if config.batch == 0 || config.seq_len == 0 || config.top_k == 0 {
        return Err(DistillError::Config(
            "batch, seq_len and top_k must be positive".into(),
        ));
    }
    if !(config.temperature > 0.0 && config.lr > 0.0) {
        return Err(DistillError::Config(
            "temperature and lr must be positive".into(),
        ));
    }
    Ok(ModelConfig {
        n_layers: config.keep.len() as u32,
        ffn_dim,
        ..*teacher
    })
}

/// The windows of step `step`: `batch` windows of `seq_len + 1` tokens at offsets drawn
/// from a generator seeded by `(seed, step)` (inputs are a window's first `seq_len`
/// tokens).
pub fn windows(config: &DistillConfig, tokens: &[u32], step: usize) -> Vec<u32> {
    let span = config.seq_len + 1;
    let mut rng =
        fastrand::Rng::with_seed(config.seed ^ (step as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15));
    (0..config.batch)
        .flat_map(|_| {
            let start = rng.usize(0..=tokens.len() - span);
            tokens[start..start + config.seq_len].iter().copied()
        })
        .collect()
}

/// One training step's outcome.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct StepLog {
    /// The step (0-based).
    pub step: usize,
    /// The loss before the update.
    pub loss: f32,
    /// The learning rate of the update.
    pub lr: f64,
    /// Tokens per second of the whole step (teacher, student, backward, update).
    pub tokens_per_s: f64,
}

/// A training run in progress: the student, its optimizer and the step it is at.
pub struct Trainer {
    /// The student (on an autodiff device).
    pub student: Llama,
    optim: ModuleOptimizer,
    /// The next step to run.
    pub step: usize,
    /// The run's config.
    pub config: DistillConfig,
}

impl Trainer {
    /// A fresh run of `student` under `config`.
    pub fn new(student: Llama, config: DistillConfig) -> Self {
        Self {
            student,
            optim: AdamWConfig::new().with_weight_decay(0.0).init(),
            step: 0,
            config,
        }
    }

    /// The batch of `step` as an int tensor `[batch, seq_len]` on `device`.
    fn inputs(&self, tokens: &[u32], step: usize, device: &Device) -> Tensor<2, Int> {
        let w = windows(&self.config, tokens, step);
        let data = TensorData::new(
            w.into_iter().map(i64::from).collect::<Vec<_>>(),
            [self.config.batch, self.config.seq_len],
        );
        Tensor::from_data(data, device)
    }

    /// The loss of the current student on the batch of `step` (no update).
    pub fn loss(&self, teacher: &Llama, tokens: &[u32], step: usize) -> Result<f32, DistillError> {
        let (loss, _) = self.forward(teacher, tokens, step)?;
        Ok(loss.into_scalar::<f32>())
    }

    fn forward(
        &self,
        teacher: &Llama,
        tokens: &[u32],
        step: usize,
    ) -> Result<(Tensor<1>, usize), DistillError> {
        let c = &self.config;
        if tokens.len() < c.seq_len + 1 {
            return Err(DistillError::TooFewTokens {
                tokens: tokens.len(),
                needed: c.seq_len + 1,
            });
        }
        let vocab = teacher.config.vocab_size as usize;
        let t_logits = teacher.forward(self.inputs(tokens, step, &teacher_device(teacher)));
        let t_values = t_logits
            .into_data()
            .try_into_vec_as::<f32>()
            .expect("f32 logits");
        let targets = TopkTargets::from_logits(&t_values, vocab, c.top_k, c.temperature);
        let device = self.student.embed.weight.val().device();
        let s_logits = self.student.forward(self.inputs(tokens, step, &device));
        let rows = c.batch * c.seq_len;
        Ok((
            topk_kl(s_logits.reshape([rows, vocab]), &targets, c.temperature),
            rows,
        ))
    }

    /// Runs the next step: loss, backward, AdamW update.
    pub fn train_step(&mut self, teacher: &Llama, tokens: &[u32]) -> Result<StepLog, DistillError> {
        let start = std::time::Instant::now();
        let step = self.step;
        let (loss, rows) = self.forward(teacher, tokens, step)?;
        let grads = GradientsParams::from_grads(loss.backward(), &self.student);
        let lr = self.config.lr_at(step);
        // The optimizer takes the module by value; the clone shares the tensors.
        self.student = self.optim.step(lr, self.student.clone(), grads);
        self.step += 1;
        Ok(StepLog {
            step,
            loss: loss.into_scalar::<f32>(),
            lr,
            tokens_per_s: rows as f64 / start.elapsed().as_secs_f64(),
        })
    }

    /// Writes the student, the optimizer state and the step into `dir` (created if needed).
    pub fn save(&self, dir: &Path) -> Result<(), DistillError> {
        std::fs::create_dir_all(dir).map_err(|source| DistillError::Io {
            path: dir.to_path_buf(),
            source,
        })?;
        let model = dir.join("student.bpk");
        let ck = |path: &Path, why: String| DistillError::Checkpoint {
            path: path.to_path_buf(),
            why,
        };
        self.student
            .save_into(&mut BurnpackStore::from_file(&model).overwrite(true))
            .map_err(|e| ck(&model, e.to_string()))?;
        let optim = dir.join("optim.bpk");
        let _ = std::fs::remove_file(&optim);
        self.optim
            .save(&optim)
            .map_err(|e| ck(&optim, e.to_string()))?;
        write_json(
            &dir.join("state.json"),
            &CheckpointState {
                step: self.step,
                config: self.config.clone(),
            },
        )
    }

    /// Continues the run saved in `dir`: `student` is the freshly built student of
    /// `config` (its weights are replaced by the checkpoint's).
    pub fn resume(
        dir: &Path,
        mut student: Llama,
        config: DistillConfig,
    ) -> Result<Self, DistillError> {
        let state: CheckpointState = read_json(&dir.join("state.json"))?;
        if state.config != config {
            return Err(DistillError::ConfigChanged(dir.to_path_buf()));
        }
        let model = dir.join("student.bpk");
        let ck = |path: &Path, why: String| DistillError::Checkpoint {
            path: path.to_path_buf(),
            why,
        };
        let applied = student
            .load_from(&mut BurnpackStore::from_file(&model))
            .map_err(|e| ck(&model, e.to_string()))?;
        if !applied.missing.is_empty() || !applied.errors.is_empty() {
            return Err(ck(&model, format!("{applied:?}")));
        }
        let optim_path = dir.join("optim.bpk");
        let optim = AdamWConfig::new()
            .with_weight_decay(0.0)
            .init()
            .load(&optim_path)
            .map_err(|e| ck(&optim_path, e.to_string()))?;
        Ok(Self {
            student,
            optim,
            step: state.step,
            config,
        })
    }
}

/// The device a (non-trained) model's weights are on.
fn teacher_device(m: &Llama) -> Device {
    m.embed.weight.val().device()
}

/// What a checkpoint records besides the tensors.
#[derive(Serialize, Deserialize)]
struct CheckpointState {
    step: usize,
    config: DistillConfig,
}

/// Reads a JSON file.
pub fn read_json<T: for<'de> Deserialize<'de>>(path: &Path) -> Result<T, DistillError> {
    let text = std::fs::read(path).map_err(|source| DistillError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    serde_json::from_slice(&text).map_err(|source| DistillError::Json {
        path: path.to_path_buf(),
        source,
    })
}

/// Writes a JSON file (pretty).
pub fn write_json<T: Serialize>(path: &Path, value: &T) -> Result<(), DistillError> {
    let text = serde_json::to_string_pretty(value).expect("serializable");
    std::fs::write(path, text + "\n").map_err(|source| DistillError::Io {
        path: path.to_path_buf(),
        source,
    })
}

/// Writes `student` as a `.glint` file packed with `scheme`, with the teacher's
/// tokenizer, chat template and provenance (plus `distilled_from` = the teacher's
/// source and `distilled_blocks`). Returns the file length.
pub fn write_student(
    student: &Llama,
    teacher: &Teacher,
    keep: &[u32],
    scheme: Scheme,
    out: &Path,
) -> Result<u64, DistillError> {
    let weights = student.weights();
    let len: usize = weights.iter().map(|t| t.values.len() * 4).sum();
    let io = |source| DistillError::Io {
        path: out.to_path_buf(),
        source,
    };
    let mut map = memmap2::MmapMut::map_anon(len.max(1)).map_err(io)?;
    let mut tensors = Vec::with_capacity(weights.len());
    let mut at = 0;
    for t in &weights {
        let n = t.values.len() * 4;
        for (dst, v) in map[at..at + n].chunks_exact_mut(4).zip(&t.values) {
            dst.copy_from_slice(&v.to_le_bytes());
        }
        tensors.push(SourceTensor {
            name: t.name.clone(),
            shape: t.shape.clone(),
            encoding: Encoding::F32,
            file: 0,
            range: at..at + n,
        });
        at += n;
    }
    let src = &teacher.source;
    let mut provenance = src.provenance.clone();
    let from = provenance
        .iter()
        .find(|(k, _)| k == "source")
        .map(|(_, v)| v.clone())
        .unwrap_or_default();
    provenance.push(("distilled_from".into(), from));
    provenance.push((
        "distilled_blocks".into(),
        keep.iter()
            .map(u32::to_string)
            .collect::<Vec<_>>()
            .join(","),
    ));
    let imported = Imported {
        config: student.config,
        tokenizer: src.tokenizer.clone(),
        chat_template: src.chat_template.clone(),
        provenance,
        tensors,
        files: vec![map.make_read_only().map_err(io)?],
    };
    write_packed(&imported, scheme, out, |_, _| {}).map_err(|e| DistillError::Quantize(Box::new(e)))
}

/// The loss curve of a run: each step's loss (on that step's windows, before its update)
/// against the step, on a log axis (it falls by orders of magnitude at first).
pub fn loss_chart(logs: &[StepLog], title: &str) -> LineChart {
    LineChart {
        title: title.into(),
        x_label: "step".into(),
        y_label: "top-k KL to the teacher (loss)".into(),
        log_x: false,
        log_y: true,
        series: vec![Series {
            label: "loss on the step's windows".into(),
            points: logs
                .iter()
                .map(|l| (l.step as f64, f64::from(l.loss).max(1e-9)))
                .collect(),
            style: SeriesStyle::measured(PALETTE[0]),
        }],
        annotations: Vec::new(),
        size: (800, 480),
    }
}

/// Writes [`loss_chart`] of `logs` as a PNG at `path`.
pub fn write_loss_png(logs: &[StepLog], title: &str, path: &Path) -> Result<(), DistillError> {
    Ok(loss_chart(logs, title).write_png(path)?)
}

/// Visits every float parameter of a module and notes those without a usable gradient.
struct GradientCheck<'a> {
    grads: &'a GradientsParams,
    missing: Vec<String>,
}

impl ModuleVisitor for GradientCheck<'_> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        let ok = self.grads.get::<D>(param.id).is_some_and(|g| {
            let v = g.into_data().try_into_vec_as::<f32>().expect("f32");
            v.iter().all(|x| x.is_finite()) && v.iter().any(|&x| x != 0.0)
        });
        if !ok {
            self.missing.push(param.id.to_string());
        }
    }
}

/// Checks that every parameter of `module` has a finite, non-zero gradient in `grads`;
/// returns the ids of those that do not.
pub fn params_without_gradient(module: &impl Module, grads: &GradientsParams) -> Vec<String> {
    let mut check = GradientCheck {
        grads,
        missing: Vec::new(),
    };
    module.visit(&mut check);
    check.missing
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// A tiny tied Llama config: 4 blocks, width 32, GQA 4/2 heads, vocabulary 50.
    fn tiny_config() -> ModelConfig {
        glint_models::config_from_hf(&json!({
            "model_type": "llama",
            "hidden_size": 32,
            "num_hidden_layers": 4,
            "num_attention_heads": 4,
            "num_key_value_heads": 2,
            "intermediate_size": 48,
            "vocab_size": 50,
            "max_position_embeddings": 128,
            "rope_theta": 10000.0,
            "rms_norm_eps": 1e-5,
            "tie_word_embeddings": true
        }))
        .unwrap()
    }

    /// A model of `config` with random weights (matrices N(0, 0.3²)-ish, norms near 1).
    fn random_llama(config: &ModelConfig, seed: u64, device: &Device) -> Llama {
        let mut rng = fastrand::Rng::with_seed(seed);
        Llama::from_weights(
            config,
            |_, shape| {
                let n = shape.iter().product::<u64>() as usize;
                let base = if shape.len() == 1 { 1.0 } else { 0.0 };
                Some((0..n).map(|_| base + (rng.f32() - 0.5)).collect())
            },
            device,
        )
        .unwrap()
    }

    fn recipe() -> DistillConfig {
        DistillConfig {
            keep: vec![0, 3],
            steps: 6,
            batch: 2,
            seq_len: 8,
            lr: 1e-2,
            top_k: 5,
            ..DistillConfig::default_for(4, 2)
        }
    }

    fn tokens() -> Vec<u32> {
        (0..200u32).map(|i| (i * 7 + i / 3) % 50).collect()
    }

    /// The student of [`recipe`]: the teacher's blocks 0 and 3, on `device`.
    fn student_of(teacher_seed: u64, device: &Device) -> Llama {
        let teacher = random_llama(&tiny_config(), teacher_seed, &Device::flex());
        let weights: std::collections::HashMap<String, Vec<f32>> = teacher
            .weights()
            .into_iter()
            .map(|t| (t.name, t.values))
            .collect();
        let sc = student_config(&tiny_config(), &recipe()).unwrap();
        Llama::from_weights(
            &sc,
            |name, _| {
                // Student block 1 is the teacher's block 3 (block 0 stays 0).
                weights.get(&name.replace("blk.1.", "blk.3.")).cloned()
            },
            device,
        )
        .unwrap()
    }

    #[test]
    fn even_layers_keep_the_ends() {
        assert_eq!(
            even_layers(30, 15),
            [0, 2, 4, 6, 8, 10, 12, 15, 17, 19, 21, 23, 25, 27, 29]
        );
        assert_eq!(even_layers(4, 2), [0, 3]);
        assert_eq!(even_layers(5, 1), [0]);
    }

    #[test]
    fn topk_kl_of_identical_logits_is_zero_and_of_different_positive() {
        let device = Device::flex();
        let mut rng = fastrand::Rng::with_seed(1);
        let (rows, vocab) = (6, 40);
        let logits: Vec<f32> = (0..rows * vocab).map(|_| rng.f32() * 8.0 - 4.0).collect();
        for (k, t) in [(5, 1.0), (40, 2.0), (1, 0.5)] {
            let targets = TopkTargets::from_logits(&logits, vocab, k, t);
            let same =
                Tensor::<2>::from_data(TensorData::new(logits.clone(), [rows, vocab]), &device);
            let kl = topk_kl(same, &targets, t).into_scalar::<f32>();
            assert!(kl.abs() < 1e-5, "k {k}, T {t}: KL {kl}");
            let other: Vec<f32> = logits.iter().map(|x| x * 0.5 + rng.f32()).collect();
            let other = Tensor::<2>::from_data(TensorData::new(other, [rows, vocab]), &device);
            let kl = topk_kl(other, &targets, t).into_scalar::<f32>();
            assert!(kl > 1e-3, "k {k}, T {t}: KL {kl}");
        }
    }

    #[test]
    fn topk_kl_penalises_mass_outside_the_teachers_topk() {
        let device = Device::flex();
        let teacher = [4.0f32, 3.0, 0.0, 0.0, 0.0, 0.0];
        let targets = TopkTargets::from_logits(&teacher, 6, 2, 1.0);
        // The student matches the top-2 ratio but puts most mass on the other tokens.
        let student = [4.0f32, 3.0, 6.0, 6.0, 6.0, 6.0];
        let s = Tensor::<2>::from_data(TensorData::new(student.to_vec(), [1, 6]), &device);
        assert!(topk_kl(s, &targets, 1.0).into_scalar::<f32>() > 1.0);
    }

    #[test]
    fn gradients_reach_every_student_parameter() {
        let device = Device::flex().autodiff();
        let teacher = random_llama(&tiny_config(), 7, &Device::flex());
        let trainer = Trainer::new(student_of(7, &device), recipe());
        let (loss, _) = trainer.forward(&teacher, &tokens(), 0).unwrap();
        assert!(loss.clone().into_scalar::<f32>() > 0.0);
        let grads = GradientsParams::from_grads(loss.backward(), &trainer.student);
        // embedding, 2 x (2 norms + 7 matrices), final norm
        assert_eq!(grads.len(), 1 + 2 * 9 + 1);
        assert_eq!(
            params_without_gradient(&trainer.student, &grads),
            Vec::<String>::new()
        );
    }

    #[test]
    fn training_lowers_the_loss() {
        let device = Device::flex().autodiff();
        let teacher = random_llama(&tiny_config(), 3, &Device::flex());
        let mut trainer = Trainer::new(
            student_of(3, &device),
            DistillConfig {
                steps: 20,
                ..recipe()
            },
        );
        let before = trainer.loss(&teacher, &tokens(), 0).unwrap();
        for _ in 0..20 {
            trainer.train_step(&teacher, &tokens()).unwrap();
        }
        let after = trainer.loss(&teacher, &tokens(), 0).unwrap();
        eprintln!("loss {before} -> {after}");
        assert!(after < before * 0.8, "loss {before} -> {after}");
    }

    #[test]
    fn a_checkpoint_resumes_to_the_same_loss() {
        let device = Device::flex().autodiff();
        let teacher = random_llama(&tiny_config(), 5, &Device::flex());
        let tokens = tokens();
        let mut straight = Trainer::new(student_of(5, &device), recipe());
        let mut interrupted = Trainer::new(student_of(5, &device), recipe());
        let dir = tempfile::tempdir().unwrap();
        for _ in 0..3 {
            straight.train_step(&teacher, &tokens).unwrap();
            interrupted.train_step(&teacher, &tokens).unwrap();
        }
        interrupted.save(dir.path()).unwrap();
        drop(interrupted);
        let mut resumed = Trainer::resume(dir.path(), student_of(5, &device), recipe()).unwrap();
        assert_eq!(resumed.step, 3);
        for _ in 3..6 {
            let a = straight.train_step(&teacher, &tokens).unwrap();
            let b = resumed.train_step(&teacher, &tokens).unwrap();
            assert_eq!((a.step, a.lr), (b.step, b.lr));
            assert!(
                (a.loss - b.loss).abs() <= 1e-6 * a.loss.abs().max(1.0),
                "step {}: {} vs {}",
                a.step,
                a.loss,
                b.loss
            );
        }
        // The check depends on the saved optimizer state: the checkpoint's weights with
        // fresh moments give another loss after one update.
        let mut fresh = Trainer::resume(dir.path(), student_of(5, &device), recipe()).unwrap();
        fresh.optim = AdamWConfig::new().with_weight_decay(0.0).init();
        let mut again = Trainer::resume(dir.path(), student_of(5, &device), recipe()).unwrap();
        fresh.train_step(&teacher, &tokens).unwrap();
        again.train_step(&teacher, &tokens).unwrap();
        let (a, b) = (
            fresh.train_step(&teacher, &tokens).unwrap().loss,
            again.train_step(&teacher, &tokens).unwrap().loss,
        );
        assert!((a - b).abs() > 1e-4 * b.abs(), "{a} vs {b}");
        let mut other = recipe();
        other.seed = 9;
        assert!(matches!(
            Trainer::resume(dir.path(), student_of(5, &device), other),
            Err(DistillError::ConfigChanged(_))
        ));
    }

    #[test]
    fn the_loss_curve_is_a_png_with_its_line() {
        let logs: Vec<StepLog> = (0..30)
            .map(|step| StepLog {
                step,
                loss: 9.0 / (1.0 + step as f32),
                lr: 2e-4,
                tokens_per_s: 40.0,
            })
            .collect();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("loss.png");
        write_loss_png(&logs, "distillation loss", &path).unwrap();
        let (w, h, px) = crate::plot::tests::decode(&path);
        assert_eq!((w, h), loss_chart(&logs, "").size);
        let (r, g, b) = PALETTE[0];
        let line = px.chunks_exact(3).filter(|p| *p == [r, g, b]).count();
        assert!(line > 200, "{line} pixels of the loss line's colour");
        // No steps: a typed error, no file.
        let empty = dir.path().join("empty.png");
        assert!(matches!(
            write_loss_png(&[], "x", &empty),
            Err(DistillError::Plot(PlotError::NoPoints))
        ));
        assert!(!empty.exists());
    }
}
