//! The C ABI from a real C program (`tests/c/glint_test.c`): built with `cc` against
//! `include/glint.h` and the cdylib, run on the real model natively and under
//! `valgrind --error-exitcode=1 --leak-check=full`. Its streamed greedy answer must be
//! what the Rust API gives with `glint run --temp 0`'s settings (CI also compares it
//! with `glint run` itself).

mod common;

use common::{greedy_answer, model_path, native_lib_dir, require_tool};
use std::path::{Path, PathBuf};
use std::process::Command;

const PROMPT: &str = "The capital of France is";
const TOKENS: usize = 12;

/// Builds the C test program into `dir`.
fn build(dir: &Path) -> PathBuf {
    require_tool("cc", "a C compiler (build-essential)");
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    let lib = native_lib_dir();
    let exe = dir.join("glint_test");
    let out = Command::new("cc")
        .args([
            "-std=c11",
            "-Wall",
            "-Wextra",
            "-Werror",
            "-O1",
            "-g",
            "-D_GNU_SOURCE",
        ])
        .arg("-I")
        .arg(manifest.join("include"))
        .arg(manifest.join("tests/c/glint_test.c"))
        .arg("-o")
        .arg(&exe)
        .arg(format!("-L{}", lib.display()))
        .arg(format!("-Wl,-rpath,{}", lib.display()))
        .args(["-lglint", "-lpthread"])
        .output()
        .expect("run cc");
    assert!(
        out.status.success(),
        "cc failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    exe
}

/// The model's first `keep` bytes, in `dir`.
fn truncated_model(dir: &Path, keep: usize) -> PathBuf {
    let bytes = std::fs::read(model_path()).expect("read the model");
    let path = dir.join("truncated.glint");
    std::fs::write(&path, &bytes[..keep.min(bytes.len() / 2)]).expect("write");
    path
}

/// Runs the program (under `wrapper`, if any); returns its stdout, failing on a
/// non-zero exit.
fn run(exe: &Path, dir: &Path, wrapper: &[&str], threads: usize) -> String {
    let mut cmd = match wrapper.split_first() {
        Some((w, args)) => {
            let mut c = Command::new(w);
            c.args(args).arg(exe);
            c
        }
        None => Command::new(exe),
    };
    // Cargo's LD_LIBRARY_PATH for tests also names target/release, whose libglint.so
    // may be another build's: this test's library first.
    let out = cmd
        .env("LD_LIBRARY_PATH", native_lib_dir())
        .arg(model_path())
        .arg(truncated_model(dir, 1 << 20))
        .arg(PROMPT)
        .arg(TOKENS.to_string())
        .arg(threads.to_string())
        .output()
        .expect("run the C test program");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{}\nstderr:\n{stderr}", out.status);
    String::from_utf8(out.stdout).expect("UTF-8 output")
}

#[test]
fn c_program_streams_the_greedy_answer_and_gets_error_codes() {
    let dir = tempfile::tempdir().expect("temp dir");
    let exe = build(dir.path());
    let out = run(&exe, dir.path(), &[], 2);
    assert_eq!(out, format!("{}\n", greedy_answer(PROMPT, TOKENS)));
}

#[test]
fn c_program_is_clean_under_valgrind() {
    require_tool("valgrind", "valgrind");
    let dir = tempfile::tempdir().expect("temp dir");
    let exe = build(dir.path());
    // minijinja's default globals live in a process-wide OnceLock, initialised once
    // and never freed: memcheck calls them "possibly lost" (the one suppression).
    let supp = format!(
        "--suppressions={}/tests/c/valgrind.supp",
        env!("CARGO_MANIFEST_DIR")
    );
    let valgrind = [
        "valgrind",
        "--error-exitcode=1",
        "--leak-check=full",
        "--errors-for-leak-kinds=definite,indirect,possible",
        &supp,
        "--quiet",
    ];
    let out = run(&exe, dir.path(), &valgrind, 1);
    assert_eq!(out, format!("{}\n", greedy_answer(PROMPT, TOKENS)));
}
