//! Evaluation of a packed model against its float reference: the source's weights
//! decoded to f32 and packed in memory ([`glint_pack::Scheme::F32`]), both run by the
//! runtime's one forward and compared by [`glint_runtime::eval::compare`].

use glint_pack::source::Imported;
use glint_pack::{PackPlan, QuantizeError, Scheme, pack_to_bytes};
use glint_runtime::backend::{CpuOptions, KvType, Precision};
use glint_runtime::engine::EngineError;
use glint_runtime::eval::Comparison;
use glint_runtime::model::ModelSource;
use glint_runtime::{Engine, Model};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

/// Context length at which [`streamed_per_token`] counts the KV cache.
pub const STREAM_CONTEXT: usize = 512;

/// Why the reference could not be built.
#[derive(Debug, thiserror::Error)]
pub enum ReferenceError {
    /// Packing the f32 reference failed.
    #[error(transparent)]
    Pack(#[from] QuantizeError),
    /// The runtime could not load it.
    #[error(transparent)]
    Load(#[from] EngineError),
}

/// The float reference of `src`: every tensor decoded to f32, run with exact (f32)
/// activations on `threads` threads.
pub fn reference_engine(src: &Imported, threads: usize) -> Result<Engine, ReferenceError> {
    let bytes = pack_to_bytes(src, &PackPlan::rtn(Scheme::F32))?;
    let opts = CpuOptions {
        threads,
        precision: Precision::Exact,
        kernel: None,
    };
    Ok(Engine::load(ModelSource::Bytes(bytes.into()), opts)?)
}

/// What a decode step reads: every weight once (one embedding row), and the KV cache
/// of `kv` elements at [`STREAM_CONTEXT`] positions.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Streamed {
    /// Weight bytes per token.
    pub weights: u64,
    /// KV cache bytes per token at [`STREAM_CONTEXT`].
    pub kv: u64,
}

impl Streamed {
    /// Both.
    pub fn total(&self) -> u64 {
        self.weights + self.kv
    }
}

/// The bytes a decode step of `model` streams (see [`Streamed`]).
pub fn streamed_per_token<B: glint_runtime::Backend>(model: &Model<B>, kv: KvType) -> Streamed {
    Streamed {
        weights: model.weight_bytes_per_token(),
        kv: kv.cache_bytes(model.shape(), STREAM_CONTEXT),
    }
}

/// What a report says besides the comparison.
#[derive(Clone, Debug)]
pub struct ReportInfo {
    /// The evaluated file.
    pub model: PathBuf,
    /// The reference's source.
    pub reference: PathBuf,
    /// The text.
    pub text: PathBuf,
    /// Window.
    pub window: usize,
    /// Tokens of the text used (a prefix when limited).
    pub tokens: usize,
    /// The packed model's activations and KV cache, as run.
    pub setting: String,
    /// The file's scheme and recipe.
    pub scheme: String,
    /// Bits per weight of the file's tensors.
    pub bits_per_weight: f64,
    /// Bytes per decoded token.
    pub streamed: Streamed,
}

/// The report's Markdown.
pub fn report_markdown(info: &ReportInfo, c: &Comparison) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "# Evaluation of `{}`\n", info.model.display());
    let _ = writeln!(
        s,
        "Reference: `{}` decoded to f32 (exact activations, f32 KV cache). Text: `{}`, \
         {} tokens, windows of {}, {} positions scored. Packed model run with {}.\n",
        info.reference.display(),
        info.text.display(),
        info.tokens,
        info.window,
        c.scored,
        info.setting
    );
    let _ = writeln!(s, "| measure | value |\n| --- | --- |");
    let _ = writeln!(s, "| scheme | {} |", info.scheme);
    let _ = writeln!(
        s,
        "| bits per weight (all tensors) | {:.3} |",
        info.bits_per_weight
    );
    let _ = writeln!(
        s,
        "| streamed per token | {} bytes (weights {}, KV at context {} {}) |",
        info.streamed.total(),
        info.streamed.weights,
        STREAM_CONTEXT,
        info.streamed.kv
    );
    let _ = writeln!(s, "| PPL | {:.4} |", c.ppl);
    let _ = writeln!(s, "| reference PPL | {:.4} |", c.reference_ppl);
    let _ = writeln!(s, "| KL(reference ‖ packed), nats | {:.5} |", c.kl);
    let _ = writeln!(s, "| top-1 agreement | {:.4} |\n", c.top1);
    if !c.layer_error.is_empty() {
        let _ = writeln!(
            s,
            "## Per-layer output error\n\n‖block(x) − block_ref(x)‖ / ‖block_ref(x)‖ with `x` \
             the reference's input of the block.\n\n| block | relative L2 error |\n| --- | --- |"
        );
        for (i, e) in c.layer_error.iter().enumerate() {
            let _ = writeln!(s, "| {i} | {e:.5} |");
        }
    }
    s
}

/// Writes `report.md` into `dir` (created if needed); returns its path.
pub fn write_report(dir: &Path, info: &ReportInfo, c: &Comparison) -> std::io::Result<PathBuf> {
    std::fs::create_dir_all(dir)?;
    let path = dir.join("report.md");
    std::fs::write(&path, report_markdown(info, c))?;
    Ok(path)
}
