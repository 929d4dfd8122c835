//! The JNI binding from a real JVM: `java/com/glint` and `java/test/GlintTest.java`
//! compiled with `javac`, run with `java -Xcheck:jni -Djava.library.path=...` on the
//! real model (greedy answer, cancel from a Java thread, GlintException for every
//! misuse, 4 threads on one model); and the host sample end to end.

mod common;

use common::{greedy_answer, model_path, native_lib_dir, require_tool};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const PROMPT: &str = "The capital of France is";
const TOKENS: usize = 12;

/// Compiles the package and `extra` into `dir/classes`.
fn javac(dir: &Path, extra: &str) -> PathBuf {
    require_tool("javac", "a JDK (default-jdk-headless)");
    let java = Path::new(env!("CARGO_MANIFEST_DIR")).join("java");
    let classes = dir.join("classes");
    let mut sources: Vec<PathBuf> = std::fs::read_dir(java.join("com/glint"))
        .expect("java/com/glint")
        .map(|e| e.expect("entry").path())
        .collect();
    sources.push(java.join(extra));
    let out = Command::new("javac")
        .args(["-Xlint:all", "-Werror", "-d"])
        .arg(&classes)
        .args(&sources)
        .output()
        .expect("run javac");
    assert!(
        out.status.success(),
        "javac failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    classes
}

/// Runs `main` from `classes` with the native library on the path.
fn java(classes: &Path, main: &str, args: &[&std::ffi::OsStr]) -> Output {
    Command::new("java")
        .arg("-Xcheck:jni")
        .arg(format!(
            "-Djava.library.path={}",
            native_lib_dir().display()
        ))
        // The library's GPU choice works only with the `gpu` feature.
        .arg(format!("-Dglint.gpu={}", cfg!(feature = "gpu")))
        .arg("-cp")
        .arg(classes)
        .arg(main)
        .args(args)
        .output()
        .expect("run java")
}

fn ok(o: &Output) -> String {
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{}\nstderr:\n{stderr}", o.status);
    String::from_utf8_lossy(&o.stdout).into_owned()
}

#[test]
fn jvm_streams_cancels_and_throws_glint_exceptions() {
    let dir = tempfile::tempdir().expect("temp dir");
    let classes = javac(dir.path(), "test/GlintTest.java");
    let bytes = std::fs::read(model_path()).expect("read the model");
    let truncated = dir.path().join("truncated.glint");
    std::fs::write(&truncated, &bytes[..bytes.len() / 3]).expect("write");
    let expected = dir.path().join("expected.txt");
    std::fs::write(&expected, greedy_answer(PROMPT, TOKENS)).expect("write");
    let tokens = TOKENS.to_string();
    let model = model_path();
    let out = java(
        &classes,
        "GlintTest",
        &[
            model.as_os_str(),
            truncated.as_os_str(),
            PROMPT.as_ref(),
            tokens.as_ref(),
            expected.as_os_str(),
        ],
    );
    assert!(ok(&out).contains("all checks passed"));
}

#[test]
fn java_sample_answers_and_cancels_the_second_request() {
    let dir = tempfile::tempdir().expect("temp dir");
    let classes = javac(dir.path(), "sample/GlintSample.java");
    let model = model_path();
    let out = java(&classes, "GlintSample", &[model.as_os_str()]);
    let text = ok(&out);
    assert!(text.contains("Paris"), "stdout:\n{text}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("loading: 100%"), "stderr:\n{stderr}");
    assert!(stderr.contains("stop: CANCELLED"), "stderr:\n{stderr}");
}
