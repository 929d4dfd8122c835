//! Starting a GPU: the device and its compiled kernels, made once per process and
//! adapter and shared by every backend on that adapter, with wgpu's `PipelineCache`
//! read from and written back to a directory the caller names (Vulkan; wgpu 30 has no
//! pipeline cache on Metal).

use super::kernels::Kernels;
use super::select::AdapterReport;
use crate::backend::BackendError;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// What became of the pipeline cache when a device started.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PipelineCacheUse {
    /// No directory was given: the kernels were compiled from scratch.
    Off,
    /// The adapter's graphics API keeps no pipeline cache in wgpu 30 (only Vulkan does).
    Unsupported,
    /// The cache file of this adapter (`wgpu::util::pipeline_cache_key` names it).
    File {
        /// The file.
        path: PathBuf,
        /// Bytes read from it and handed to wgpu (0: no file). wgpu checks their header
        /// (format, wgpu's ABI, adapter, driver version) and drops data that fails.
        read: u64,
        /// Bytes written back after compiling (0: the cache did not change, or writing
        /// failed: see `write_error`).
        written: u64,
        /// Why the cache could not be written, if it could not (the next start compiles
        /// again; not an error).
        write_error: Option<String>,
    },
}

/// How a backend's start went.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StartReport {
    /// True when an earlier backend of this process had started this adapter: its
    /// device and kernels are shared and nothing was compiled.
    pub reused: bool,
    /// Creating the device (zero when reused).
    pub device: Duration,
    /// Creating the pipeline cache and compiling every kernel (zero when reused).
    pub pipelines: Duration,
    /// The pipeline cache at the start that compiled the kernels.
    pub cache: PipelineCacheUse,
}

/// A device with its compiled kernels: one per adapter per process.
pub(super) struct Started {
    pub device: wgpu::Device,
    pub queue: wgpu::Queue,
    pub info: wgpu::AdapterInfo,
    pub limits: wgpu::Limits,
    pub kernels: Arc<Kernels>,
    /// The first error the device reported outside an error scope.
    pub device_error: Arc<Mutex<Option<String>>>,
    /// How this device started.
    pub report: StartReport,
}

/// The devices this process started, by adapter and driver ([`AdapterReport::key`]).
static STARTED: Mutex<Vec<(String, Arc<Started>)>> = Mutex::new(Vec::new());

/// The device of `adapter`: the one this process started already (unless it reported
/// an error: a lost or broken device is replaced), else a new one. The lock is held
/// while a device starts, so two threads never compile the same kernels twice.
pub(super) fn shared(
    adapter: wgpu::Adapter,
    cache_dir: Option<&Path>,
) -> Result<(Arc<Started>, StartReport), BackendError> {
    let key = AdapterReport::new(&adapter).key();
    let mut all = STARTED.lock().unwrap_or_else(|p| p.into_inner());
    let healthy = |s: &Started| {
        s.device_error
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_none()
    };
    if let Some((_, s)) = all.iter().find(|(k, s)| *k == key && healthy(s)) {
        let report = StartReport {
            reused: true,
            device: Duration::ZERO,
            pipelines: Duration::ZERO,
            cache: s.report.cache.clone(),
        };
        return Ok((Arc::clone(s), report));
    }
    let s = Arc::new(start(adapter, cache_dir)?);
    all.retain(|(k, _)| *k != key);
    all.push((key, Arc::clone(&s)));
    let report = s.report.clone();
    Ok((s, report))
}

/// Largest cache file read: a bound, not a measured size (lavapipe's holds 96 bytes,
/// headers only; a real driver's holds the compiled code of the backend's few kernels),
/// so a stray huge file at the path is never read into memory.
const MAX_CACHE_FILE: u64 = 64 << 20;

/// Creates a device on `adapter` and compiles every kernel, through the pipeline cache
/// file in `cache_dir` when the adapter's API has one. Not shared: [`shared`] is.
pub(super) fn start(
    adapter: wgpu::Adapter,
    cache_dir: Option<&Path>,
) -> Result<Started, BackendError> {
    let t = Instant::now();
    let info = adapter.get_info();
    let limits = adapter.limits();
    let cacheable = adapter.features().contains(wgpu::Features::PIPELINE_CACHE);
    let (device, queue) = pollster::block_on(adapter.request_device(&wgpu::DeviceDescriptor {
        label: Some("glint"),
        required_features: match cacheable {
            true => wgpu::Features::PIPELINE_CACHE,
            false => wgpu::Features::empty(),
        },
        required_limits: limits.clone(),
        ..Default::default()
    }))
    .map_err(|e| BackendError::Unsupported(format!("{}: {e}", info.name)))?;
    let device_error = Arc::new(Mutex::new(None));
    let sink = Arc::clone(&device_error);
    device.on_uncaptured_error(Arc::new(move |e: wgpu::Error| {
        let mut slot = sink.lock().unwrap_or_else(|p| p.into_inner());
        slot.get_or_insert_with(|| e.to_string());
    }));
    let device_time = t.elapsed();

    let t = Instant::now();
    let file = match (cache_dir, wgpu::util::pipeline_cache_key(&info)) {
        (Some(dir), Some(name)) if cacheable => Some(dir.join(name)),
        _ => None,
    };
    let old = file.as_deref().map(read_cache).unwrap_or_default();
    let cache = file.as_ref().map(|_| pipeline_cache(&device, &old));
    let scope = device.push_error_scope(wgpu::ErrorFilter::Validation);
    let kernels = Kernels::new(&device, cache.as_ref());
    if let Some(e) = pollster::block_on(scope.pop()) {
        return Err(BackendError::Unsupported(format!(
            "{}: a kernel does not compile: {e}",
            info.name
        )));
    }
    let cache_use = match (&file, &cache) {
        (Some(path), Some(cache)) => {
            let new = cache.get_data().unwrap_or_default();
            let (written, write_error) = match new.is_empty() || new == old {
                true => (0, None),
                false => match write_atomically(path, &new) {
                    Ok(()) => (new.len() as u64, None),
                    Err(e) => (0, Some(e.to_string())),
                },
            };
            PipelineCacheUse::File {
                path: path.clone(),
                read: old.len() as u64,
                written,
                write_error,
            }
        }
        _ if cache_dir.is_none() => PipelineCacheUse::Off,
        _ => PipelineCacheUse::Unsupported,
    };
    let report = StartReport {
        reused: false,
        device: device_time,
        pipelines: t.elapsed(),
        cache: cache_use,
    };
    Ok(Started {
        device,
        queue,
        info,
        limits,
        kernels: Arc::new(kernels),
        device_error,
        report,
    })
}

/// The cache file's bytes; empty when there is none, it cannot be read, or it is too
/// large to be one.
fn read_cache(path: &Path) -> Vec<u8> {
    match std::fs::metadata(path) {
        Ok(m) if m.is_file() && m.len() <= MAX_CACHE_FILE => {
            std::fs::read(path).unwrap_or_default()
        }
        _ => Vec::new(),
    }
}

/// A pipeline cache holding `data` if wgpu accepts it, else an empty one.
fn pipeline_cache(device: &wgpu::Device, data: &[u8]) -> wgpu::PipelineCache {
    let create = |data: Option<&[u8]>| {
        // SAFETY: wgpu requires `data` to come from `PipelineCache::get_data`. It is the
        // file this module writes (only `get_data`'s bytes, renamed into place whole),
        // named after the adapter's vendor and device; wgpu checks its header (magic,
        // wgpu's ABI, backend, adapter, driver version, length) and the Vulkan driver
        // its own (vendor, device, pipelineCacheUUID) before using any of it, so a
        // truncated, foreign or garbage file is refused (tested). What neither can catch
        // is a file forged with valid headers: the directory must be private to the
        // application (`GpuOptions::pipeline_cache_dir` says so).
        unsafe {
            device.create_pipeline_cache(&wgpu::PipelineCacheDescriptor {
                label: Some("glint"),
                data,
                fallback: true,
            })
        }
    };
    if data.is_empty() {
        return create(None);
    }
    // With `fallback`, wgpu drops data that is corrupt, truncated or out of date, but
    // refuses with a validation error data made for another adapter: then start empty.
    let scope = device.push_error_scope(wgpu::ErrorFilter::Validation);
    let cache = create(Some(data));
    match pollster::block_on(scope.pop()) {
        None => cache,
        Some(_) => create(None),
    }
}

/// Writes `bytes` to `path` whole or not at all: into a temporary file beside it, then
/// renamed over it (a crash or a second process mid-write never leaves half a cache).
pub(super) fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(format!(".{}.tmp", std::process::id()));
    let tmp = PathBuf::from(tmp);
    let written = std::fs::write(&tmp, bytes).and_then(|()| std::fs::rename(&tmp, path));
    if written.is_err() {
        // Best effort: the write already failed, which is what is reported.
        let _ = std::fs::remove_file(&tmp);
    }
    written
}
