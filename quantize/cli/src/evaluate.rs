//! Evaluation of a packed model against its float reference: the source's weights
//! decoded to f32 and packed in memory ([`glint_pack::Scheme::F32`]), both run by the
//! runtime's one forward and compared by [`glint_runtime::eval::compare`].

use glint_pack::plot::{LineChart, PALETTE, PlotError, Series, SeriesStyle};
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

/// File name of the per-layer error chart in a report's folder.
pub const LAYER_CHART: &str = "layer-error.png";

/// The per-layer error chart: relative L2 error of each block's output (log scale).
pub fn layer_chart(info: &ReportInfo, c: &Comparison) -> LineChart {
    let name = info.model.file_name().map_or_else(
        || info.model.display().to_string(),
        |n| n.to_string_lossy().into_owned(),
    );
    LineChart {
        // The scheme without its recipe, which would not fit a title.
        title: format!(
            "Per-block output error: {name} ({})",
            info.scheme.split(" (").next().unwrap_or_default()
        ),
        x_label: "block".into(),
        y_label: "relative L2 error on the reference's input".into(),
        log_x: false,
        log_y: true,
        series: vec![Series {
            label: format!("PPL {:.3}, KL {:.4}", c.ppl, c.kl),
            // A block with no error (bit-identical) cannot sit on a log axis.
            points: c
                .layer_error
                .iter()
                .enumerate()
                .map(|(i, &e)| (i as f64, e.max(1e-9)))
                .collect(),
            style: SeriesStyle::measured(PALETTE[0]),
        }],
        annotations: Vec::new(),
        size: (900, 520),
    }
}

/// Why a report could not be written.
#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    /// Writing the Markdown failed.
    #[error("cannot write {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// Drawing the chart failed.
    #[error(transparent)]
    Plot(#[from] PlotError),
}

/// Writes `report.md` and, with per-layer errors, [`LAYER_CHART`] (linked from it)
/// into `dir` (created if needed); returns the Markdown's path.
pub fn write_report(dir: &Path, info: &ReportInfo, c: &Comparison) -> Result<PathBuf, ReportError> {
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| ReportError::Io { path, source }
    };
    std::fs::create_dir_all(dir).map_err(io(dir))?;
    let mut md = report_markdown(info, c);
    if !c.layer_error.is_empty() {
        layer_chart(info, c).write_png(&dir.join(LAYER_CHART))?;
        md += &format!("\n![per-block output error]({LAYER_CHART})\n");
    }
    let path = dir.join("report.md");
    std::fs::write(&path, md).map_err(io(&path))?;
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_report_writes_its_markdown_and_chart() {
        let dir = tempfile::tempdir().unwrap();
        let info = ReportInfo {
            model: "m.glint".into(),
            reference: "m.gguf".into(),
            text: "t.txt".into(),
            window: 512,
            tokens: 1024,
            setting: "mixed activations, f16 KV cache".into(),
            scheme: "q4g128+gptq".into(),
            bits_per_weight: 5.1,
            streamed: Streamed {
                weights: 86_000_000,
                kv: 11_796_480,
            },
        };
        let c = Comparison {
            ppl: 20.0,
            reference_ppl: 18.0,
            kl: 0.1,
            top1: 0.8,
            scored: 510,
            layer_error: vec![0.08, 0.04, 0.0],
        };
        let md = write_report(dir.path(), &info, &c).unwrap();
        let text = std::fs::read_to_string(md).unwrap();
        assert!(text.contains("| PPL | 20.0000 |") && text.contains("| 2 | 0.00000 |"));
        assert!(text.contains(&format!("]({LAYER_CHART})")));
        let png = std::fs::read(dir.path().join(LAYER_CHART)).unwrap();
        assert_eq!(&png[1..4], b"PNG");
        // Without per-layer errors there is no chart.
        let other = tempfile::tempdir().unwrap();
        let none = Comparison {
            layer_error: Vec::new(),
            ..c
        };
        write_report(other.path(), &info, &none).unwrap();
        assert!(!other.path().join(LAYER_CHART).exists());
    }
}
