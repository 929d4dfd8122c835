//! Helpers of the hosts' tests: the real model (the workspace's helper), the greedy
//! answer the bindings must stream, and where the built libraries are.
#![allow(dead_code)]

#[path = "../../../tests/tests/common/mod.rs"]
mod workspace;

use glint_runtime::engine::GenerateParams;
use glint_runtime::sampler::SamplerConfig;
use glint_runtime::{CpuOptions, Engine, SessionOptions};
use std::ops::ControlFlow;
use std::path::PathBuf;
use std::process::Command;

pub use workspace::model_path;

/// The text `glint run --temp 0 -n <tokens> -p <prompt>` prints (without its final
/// newline): the Rust API with the CLI's settings (the model's sampling, temperature 0).
pub fn greedy_answer(prompt: &str, tokens: usize) -> String {
    let engine = Engine::load(model_path(), CpuOptions::default()).expect("load the model");
    let mut session = engine.session(SessionOptions::default()).expect("session");
    let params = GenerateParams {
        max_tokens: tokens,
        sampler: SamplerConfig {
            temperature: 0.0,
            ..SamplerConfig::for_model(engine.model().config().sampling)
        },
        ..GenerateParams::default()
    };
    let mut text = String::new();
    session
        .generate(prompt, &params, |ev| {
            text.push_str(ev.text);
            ControlFlow::Continue(())
        })
        .expect("generate");
    text
}

/// The folder of `libglint.so` built for these tests (cargo builds the package's
/// cdylib next to the test executables).
pub fn native_lib_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("test executable");
    let deps = exe.parent().expect("deps folder").to_path_buf();
    assert!(
        deps.join("libglint.so").exists(),
        "libglint.so is not in {}",
        deps.display()
    );
    deps
}

/// Fails the test with a clear message when `tool` is not installed (CI installs it).
pub fn require_tool(tool: &str, package: &str) {
    let found = Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .output()
        .is_ok_and(|o| o.status.success());
    assert!(found, "`{tool}` is required: install {package}");
}
