//! `glint-quantize`: imports a Llama-family checkpoint (GGUF file or HF safetensors
//! folder, or an existing `.glint` file), packs it with a [`Scheme`] and writes one
//! `.glint` file (docs/FORMAT.md).

#[cfg(feature = "distill")]
pub mod distill;
pub mod fetch;
pub mod gguf;
pub mod gguf_import;
pub mod gptq;
pub mod hf;
pub mod pack;
pub mod plot;
pub mod source;
pub mod synth;

pub use pack::{Hessians, PackPlan, Scheme};

use glint_format::{LoadedGlint, write_glint};
use source::{Encoding, Imported, SourceTensor};
use std::io::Write;
use std::path::{Path, PathBuf};

/// Anything that can go wrong between a source checkpoint and a written `.glint` file.
#[derive(Debug, thiserror::Error)]
pub enum QuantizeError {
    /// GGUF import failed.
    #[error(transparent)]
    Gguf(#[from] gguf_import::GgufImportError),
    /// HF checkpoint import failed.
    #[error(transparent)]
    Hf(#[from] hf::ImportError),
    /// A source `.glint` file could not be opened.
    #[error(transparent)]
    Glint(#[from] glint_format::OpenError),
    /// Packing failed.
    #[error(transparent)]
    Pack(#[from] pack::PackError),
    /// Fetching the default model failed.
    #[error(transparent)]
    Fetch(#[from] fetch::FetchError),
    /// Writing a synthetic model failed.
    #[error(transparent)]
    Synth(#[from] synth::SynthError),
    /// Writing the output failed.
    #[error("cannot write {path}: {source}")]
    Write {
        /// Output path.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The source is neither a GGUF file, a `.glint` file nor an HF folder.
    #[error("{0}: not a GGUF file, a .glint file or a folder with config.json")]
    UnknownSource(PathBuf),
}

/// Reads a checkpoint: an HF folder (config.json + safetensors), a GGUF file or a
/// `.glint` file (to re-pack it), told apart by their first bytes.
pub fn import(src: &Path) -> Result<Imported, QuantizeError> {
    if src.is_dir() {
        return Ok(hf::import_hf(src)?);
    }
    let mut magic = [0u8; 8];
    let read =
        std::fs::File::open(src).and_then(|mut f| std::io::Read::read_exact(&mut f, &mut magic));
    match read {
        Ok(()) if &magic[..4] == b"GGUF" => Ok(gguf_import::import_gguf(src)?),
        Ok(()) if magic == glint_format::MAGIC => import_glint(src),
        _ => Err(QuantizeError::UnknownSource(src.to_path_buf())),
    }
}

fn import_glint(src: &Path) -> Result<Imported, QuantizeError> {
    let mapped = LoadedGlint::open(src)?;
    let f = mapped.file();
    let base = mapped.bytes().as_ptr() as usize;
    let tensors = f
        .tensors()
        .iter()
        .map(|t| {
            let start = t.bytes.as_ptr() as usize - base;
            SourceTensor {
                name: t.name.to_string(),
                shape: t.shape().to_vec(),
                encoding: Encoding::Glint(t.dtype),
                file: 0,
                range: start..start + t.bytes.len(),
            }
        })
        .collect();
    let tok = f.tokenizer();
    let tokenizer = glint_format::TokenizerSpec {
        model: tok.model,
        add_bos: tok.add_bos,
        add_eos: tok.add_eos,
        add_space_prefix: tok.add_space_prefix,
        pre: tok.pre.to_string(),
        tokens: tok.tokens.iter().map(String::from).collect(),
        token_types: tok.token_types.to_vec(),
        scores: tok
            .scores
            .map(|_| (0..tok.tokens.len()).map(|i| tok.score(i)).collect()),
        merges: tok.merges.iter().map(String::from).collect(),
    };
    // Keep the original source's provenance; the new scheme and tool are added on pack.
    let provenance = f
        .provenance()
        .filter(|(k, _)| !matches!(*k, "scheme" | "tool" | "tool_version"))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let (config, chat_template) = (*f.config(), f.chat_template().to_string());
    // Re-map the file as a plain map so `Imported` owns it.
    let file = std::fs::File::open(src).map_err(|source| QuantizeError::Write {
        path: src.to_path_buf(),
        source,
    })?;
    // SAFETY: read-only map of a file this tool does not modify while it runs.
    let map = unsafe { memmap2::Mmap::map(&file) }.map_err(|source| QuantizeError::Write {
        path: src.to_path_buf(),
        source,
    })?;
    drop(mapped);
    Ok(Imported {
        config,
        tokenizer,
        chat_template,
        provenance,
        tensors,
        files: vec![map],
    })
}

/// Packs `src` with `scheme` by round-to-nearest and writes it to `out` (see
/// [`write_planned`]). Returns the file length.
pub fn write_packed(
    src: &Imported,
    scheme: Scheme,
    out: &Path,
    progress: impl FnMut(usize, &str),
) -> Result<u64, QuantizeError> {
    write_planned(src, &PackPlan::rtn(scheme), out, progress)
}

/// Packs `src` in memory as `plan` says: the bytes of a `.glint` file (the float
/// reference of evaluation, tests).
pub fn pack_to_bytes(src: &Imported, plan: &PackPlan) -> Result<Vec<u8>, QuantizeError> {
    let (meta, tensors) = pack::pack(src, plan, |_, _| {})?;
    let mut out = Vec::new();
    write_glint(&mut out, &meta, &tensors).map_err(|source| QuantizeError::Write {
        path: "<memory>".into(),
        source,
    })?;
    Ok(out)
}

/// Packs `src` as `plan` says and writes it to `out` (through a temporary file, synced
/// and renamed into place, so `out` is never left half-written, even by a crash).
/// Returns the file length.
pub fn write_planned(
    src: &Imported,
    plan: &PackPlan,
    out: &Path,
    progress: impl FnMut(usize, &str),
) -> Result<u64, QuantizeError> {
    let (meta, tensors) = pack::pack(src, plan, progress)?;
    let werr = |source| QuantizeError::Write {
        path: out.to_path_buf(),
        source,
    };
    let tmp = out.with_extension(format!("tmp-{}", std::process::id()));
    let file = std::fs::File::create(&tmp).map_err(werr)?;
    let mut w = ChunkWriter::new(file);
    let len = write_glint(&mut w, &meta, &tensors).map_err(werr)?;
    w.file.sync_all().map_err(werr)?;
    std::fs::rename(&tmp, out).map_err(werr)?;
    Ok(len)
}

/// Writes a file in whole 2 MiB chunks at 2 MiB-aligned offsets (the last one shorter).
/// The page cache then holds the new file in 2 MiB folios, which the runtime's mapping
/// (it asks for huge pages) maps with one page-table entry each: measured, decode of
/// SmolLM2 at 1 thread is ~10% faster than over the 4 KiB pages that small writes leave
/// (a `BufWriter` writes large tensors through at unaligned offsets).
struct ChunkWriter {
    file: std::fs::File,
    buf: Vec<u8>,
}

impl ChunkWriter {
    const CHUNK: usize = 2 << 20;

    fn new(file: std::fs::File) -> Self {
        Self {
            file,
            buf: Vec::with_capacity(Self::CHUNK),
        }
    }
}

impl Write for ChunkWriter {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        let n = data.len().min(Self::CHUNK - self.buf.len());
        self.buf.extend_from_slice(&data[..n]);
        if self.buf.len() == Self::CHUNK {
            self.file.write_all(&self.buf)?;
            self.buf.clear();
        }
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.file.write_all(&self.buf)?;
        self.buf.clear();
        self.file.flush()
    }
}

/// Whether `path` holds a valid `.glint` file of this format version: one packed by an
/// older minor version lacks what newer ones carry (1.1: the recommended sampling), so
/// a cache packs it again.
pub fn packed_is_current(path: &Path) -> bool {
    LoadedGlint::open(path).is_ok_and(|f| f.file().version().1 >= glint_format::VERSION_MINOR)
}

/// Makes sure the default model (SmolLM2-135M-Instruct, [`Scheme::Q4g32a`]) is in the
/// cache, fetching and packing it if needed, and returns its path. A no-op when cached
/// (by this format version).
pub fn default_model(mut log: impl FnMut(&str)) -> Result<PathBuf, QuantizeError> {
    let cache = fetch::cache_dir();
    let packed = fetch::packed_path(&cache, Scheme::Q4g32a);
    // A file packed by an older minor version lacks what newer ones carry (1.1: the
    // recommended sampling): packed again.
    if LoadedGlint::open(&packed).is_ok_and(|f| f.file().version().1 >= glint_format::VERSION_MINOR)
    {
        return Ok(packed);
    }
    log(&format!(
        "fetching {} into {}",
        fetch::PYPI_REQUIREMENT,
        cache.display()
    ));
    let gguf = fetch::fetch_gguf(&cache)?;
    log(&format!(
        "packing {} as {}",
        gguf.display(),
        Scheme::Q4g32a.name()
    ));
    write_packed(&import(&gguf)?, Scheme::Q4g32a, &packed, |_, _| {})?;
    Ok(packed)
}
