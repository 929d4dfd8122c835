//! The hosts' GPU choice (`BackendChoice::Gpu`, C `GLINT_BACKEND_GPU`, Java
//! `Backend.GPU`). With the `gpu` feature, on lavapipe in CI: the model runs on the GPU
//! and streams the CPU's greedy answer (same precision), the pipeline cache lands in
//! the cache folder given, and a process that finds no Vulkan adapter fails the load
//! with `GLINT_STATUS_NO_GPU` while `Auto` falls back to the CPU. Without the feature
//! the GPU choice is `NO_GPU` too.

mod common;

use common::model_path;
use glint::c_api::{GLINT_ERROR_MESSAGE_BYTES, glint_model_options_default};
use glint::c_api::{GlintBackend, GlintError, glint_model_free, glint_model_load};
use glint::host::Status;
use std::ffi::{CStr, CString};

/// Loads the real model through the C ABI with `backend`; the status and message.
fn c_load(backend: GlintBackend) -> (i32, String) {
    let path = CString::new(model_path().into_os_string().into_encoded_bytes()).unwrap();
    let mut opts = glint_model_options_default();
    opts.backend = backend as i32;
    let mut err = GlintError {
        code: -1,
        message: [0; GLINT_ERROR_MESSAGE_BYTES],
    };
    // SAFETY: a NUL-terminated path, options from glint_model_options_default, and a
    // writable error.
    let model = unsafe { glint_model_load(path.as_ptr(), &opts, &mut err) };
    glint_model_free(model);
    // SAFETY: Glint wrote a NUL-terminated message into the error.
    let message = unsafe { CStr::from_ptr(err.message.as_ptr()) };
    (err.code, message.to_string_lossy().into_owned())
}

#[cfg(not(feature = "gpu"))]
#[test]
fn without_the_gpu_feature_the_gpu_choice_is_no_gpu() {
    let (code, message) = c_load(GlintBackend::Gpu);
    assert_eq!(code, Status::NoGpu as i32, "{message}");
    assert!(message.contains("`gpu` feature"), "{message}");
    assert_eq!(c_load(GlintBackend::Auto).0, Status::Ok as i32);
}

#[cfg(feature = "gpu")]
mod with_gpu {
    use super::*;
    use glint::host::{self, BackendChoice, HostError, LoadOptions, PromptKind};
    use glint_runtime::engine::GenerateParams;
    use glint_runtime::sampler::SamplerConfig;
    use glint_runtime::{ModelSource, Precision};
    use std::ops::ControlFlow;

    /// Greedy text of `tokens` tokens after `prompt` on a model loaded with `opts`.
    fn answer(opts: &LoadOptions, prompt: &str, tokens: usize) -> Result<String, HostError> {
        let source = ModelSource::Path(model_path());
        let model = host::load(source, opts, &mut |_| ControlFlow::Continue(()))?;
        let session = host::session_new(model, 64)?;
        let params = GenerateParams {
            max_tokens: tokens,
            sampler: SamplerConfig::greedy(),
            ..GenerateParams::default()
        };
        let mut text = String::new();
        host::generate(session, PromptKind::Plain, prompt, Some(params), &mut |t| {
            text.push_str(t);
            ControlFlow::Continue(())
        })?;
        host::free_session(session)?;
        host::free_model(model)?;
        Ok(text)
    }

    #[test]
    fn the_gpu_choice_streams_the_cpus_greedy_answer() {
        let dir = tempfile::tempdir().unwrap();
        // Both at the same precision: exact (f32 activations).
        let opts = |backend| LoadOptions {
            backend,
            precision: Precision::Exact,
            gpu_cache_dir: Some(dir.path().to_path_buf()),
            ..LoadOptions::default()
        };
        let prompt = "The capital of France is";
        let gpu = answer(&opts(BackendChoice::Gpu), prompt, 8).expect("the GPU (lavapipe in CI)");
        let cpu = answer(&opts(BackendChoice::Cpu), prompt, 8).unwrap();
        assert_eq!(gpu, cpu);
        assert!(!gpu.is_empty());
        let cached: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
        assert_eq!(cached.len(), 1, "the pipeline cache file: {cached:?}");
    }

    /// Where the Vulkan loader finds no driver (run by the next test in a child process).
    #[test]
    #[ignore = "run by no_adapter_is_no_gpu_and_auto_falls_back_to_the_cpu"]
    fn no_adapter_child() {
        let (code, message) = c_load(GlintBackend::Gpu);
        assert_eq!(code, Status::NoGpu as i32, "{message}");
        let (code, message) = c_load(GlintBackend::Auto);
        assert_eq!(code, Status::Ok as i32, "{message}");
    }

    #[test]
    fn no_adapter_is_no_gpu_and_auto_falls_back_to_the_cpu() {
        let out = std::process::Command::new(std::env::current_exe().unwrap())
            .args(["--ignored", "--exact", "with_gpu::no_adapter_child"])
            // The Vulkan loader's driver list (old and new names): none.
            .env("VK_ICD_FILENAMES", "/nonexistent/icd.json")
            .env("VK_DRIVER_FILES", "/nonexistent/icd.json")
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success() && text.contains("1 passed"),
            "{text}{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}
