//! End-to-end tests of the `glint` command line on the real model: `$GLINT_MODEL` when
//! set, else no `-m` so the default model is used (CI fetches it into the cache first).
//! Outputs are checked against llama.cpp's fixture (`tests/fixtures/`), and every
//! failure must be a non-zero exit with a clear message, never a panic.

#[path = "../../tests/tests/common/mod.rs"]
mod common;

use common::{ids, model_path};
use std::ffi::{OsStr, OsString};
use std::os::unix::ffi::OsStringExt;
use std::path::Path;
use std::process::{Command, Output};
use std::sync::OnceLock;

/// Runs `glint` with `args`.
fn glint<S: AsRef<OsStr>>(args: &[S]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_glint"))
        .args(args)
        .output()
        .expect("start glint")
}

/// `-m $GLINT_MODEL` when set (else the default model), on one thread: tests run in
/// parallel on small machines, and one thread keeps each `glint` fast and deterministic.
fn model_args() -> Vec<OsString> {
    let mut v: Vec<OsString> = vec!["-t".into(), "1".into()];
    if let Some(m) = std::env::var_os("GLINT_MODEL") {
        v.extend(["-m".into(), m]);
    }
    v
}

/// `args` then the model arguments.
fn with_model(args: &[&str]) -> Vec<OsString> {
    let mut v: Vec<OsString> = args.iter().map(OsString::from).collect();
    v.extend(model_args());
    v
}

fn stdout(o: &Output) -> String {
    String::from_utf8(o.stdout.clone()).expect("stdout is UTF-8")
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// The command succeeded without panicking; returns its stdout.
fn ok(o: &Output) -> String {
    let err = stderr(o);
    assert!(o.status.success(), "{}\nstderr:\n{err}", o.status);
    assert!(!err.contains("panicked"), "stderr:\n{err}");
    stdout(o)
}

/// The command failed with an exit status (not a signal), without a panic, and its
/// stderr contains each of `needles`.
fn fails(o: &Output, needles: &[&str]) {
    let err = stderr(o);
    assert!(
        o.status.code().is_some_and(|c| c != 0),
        "{}\nstderr:\n{err}",
        o.status
    );
    assert!(!err.contains("panicked"), "stderr:\n{err}");
    for n in needles {
        assert!(err.contains(n), "stderr lacks {n:?}:\n{err}");
    }
}

fn fixture() -> &'static serde_json::Value {
    static F: OnceLock<serde_json::Value> = OnceLock::new();
    F.get_or_init(|| common::fixture("llamacpp-smollm2.json"))
}

fn last_line(s: &str) -> &str {
    s.lines().last().unwrap_or_default()
}

#[test]
fn tokenize_ids_match_llamacpp() {
    for case in fixture()["tokenize"]["cases"].as_array().unwrap() {
        let text = case["text"].as_str().unwrap();
        let mut args = with_model(&["tokenize", "--ids"]);
        args.extend(["--".into(), text.into()]);
        let out = ok(&glint(&args));
        assert_eq!(out.lines().count(), 1, "{text:?}: {out:?}");
        let got: serde_json::Value = serde_json::from_str(last_line(&out)).expect("a JSON array");
        assert_eq!(ids(&got), ids(&case["ids"]), "{text:?}");
        // The same text from a file (`-f`, as distillation's training text is tokenized).
        let file = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(file.path(), text).unwrap();
        let mut args = with_model(&["tokenize", "--ids"]);
        args.extend(["-f".into(), file.path().into()]);
        let from_file: serde_json::Value =
            serde_json::from_str(last_line(&ok(&glint(&args)))).expect("a JSON array");
        assert_eq!(ids(&from_file), ids(&case["ids"]), "{text:?} from a file");
    }
}

#[test]
fn tokenize_without_ids_lists_each_token_then_the_array() {
    let out = ok(&glint(
        &[with_model(&["tokenize"]), vec!["Hello, world!".into()]].concat(),
    ));
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 5, "{out}");
    assert!(
        lines[0].contains("19556") && lines[0].contains("'Hello'"),
        "{out}"
    );
    assert_eq!(lines[4], "[19556,28,905,17]");
}

#[test]
fn chat_run_greedy_prints_text_then_generated_ids() {
    // llama.cpp's exact-f32 greedy continuation, up to and including <|im_end|>.
    let g = &fixture()["greedy"]["exact_f32"];
    let all = ids(&g["greedy_token_ids_32"]);
    let end = all
        .iter()
        .position(|&id| id == 2)
        .expect("<|im_end|> in the fixture");
    let want = &all[..=end];
    assert_eq!(want, [504, 3575, 282, 4649, 314, 7042, 30, 2]);
    let want_text = g["greedy_text_32"]
        .as_str()
        .unwrap()
        .split("<|im_end|>")
        .next()
        .unwrap();

    let args = with_model(&[
        "run",
        "--chat",
        "-p",
        "What is the capital of France?",
        "--temp",
        "0",
        "-n",
        "32",
        "--ids",
    ]);
    let o = glint(&args);
    let out = ok(&o);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 2, "{out:?}");
    assert_eq!(lines[0], want_text);
    let got: serde_json::Value = serde_json::from_str(lines[1]).expect("a JSON array");
    assert_eq!(ids(&got), want);
    assert!(stderr(&o).contains("stop: EndOfText"), "{}", stderr(&o));
}

/// `glint run ... --ids`: the text and the generated ids.
fn run_with_ids(extra: &[&str]) -> (String, Vec<u32>) {
    let mut args = with_model(&["run", "-p", "Hello", "--temp", "0", "-n", "3", "--ids"]);
    args.extend(extra.iter().map(OsString::from));
    let out = ok(&glint(&args));
    let (text, json) = out
        .trim_end_matches('\n')
        .rsplit_once('\n')
        .expect("two lines");
    let got: serde_json::Value = serde_json::from_str(json).expect("a JSON array");
    (text.to_owned(), ids(&got))
}

#[test]
fn ids_are_the_generated_tokens_even_when_text_is_held_back() {
    let (text, want) = run_with_ids(&[]);
    assert_eq!(want.len(), 3, "{text:?}");
    // A stop string that the whole output starts: every piece is held back until the
    // end, then released at once; the ids must not change.
    let stop = format!("--stop={text}\u{2603}never");
    assert_eq!(run_with_ids(&[&stop]), (text, want));
}

/// The int8 KV cache (`--kv int8`) gives the same greedy start as the default f16 one on
/// a short prompt, and `bench` reports which cache it measured.
#[test]
fn int8_kv_cache_runs_and_is_reported() {
    let (text, ids_f16) = run_with_ids(&[]);
    let (_, ids_int8) = run_with_ids(&["--kv", "int8"]);
    assert_eq!(ids_int8, ids_f16, "{text:?}");
    let out = ok(&glint(&with_model(&[
        "bench", "-p", "16", "-n", "4", "-r", "1", "--json", "--kv", "int8",
    ])));
    let j: serde_json::Value = serde_json::from_str(out.trim()).expect("a JSON object");
    assert_eq!(j["kv"], "int8", "{j}");
    fails(
        &glint(&with_model(&["run", "-p", "Hi", "--kv", "int4"])),
        &["int4"],
    );
}

#[test]
fn bench_json_is_one_object_with_the_figures() {
    let out = ok(&glint(&with_model(&[
        "bench", "-p", "16", "-n", "8", "-r", "1", "--json",
    ])));
    assert_eq!(out.lines().count(), 1, "{out}");
    let j: serde_json::Value = serde_json::from_str(out.trim()).expect("a JSON object");
    assert!(j.is_object(), "{j}");
    for key in ["prefill_tok_s", "decode_tok_s"] {
        let v = j[key].as_f64().unwrap_or_else(|| panic!("{key} in {j}"));
        assert!(v.is_finite() && v > 0.0, "{key} = {v}");
    }
    assert_eq!(j["threads"], 1);
    assert_eq!(j["n_prompt"], 16);
    assert_eq!(j["n_gen"], 8);
    assert!(j["peak_rss_bytes"].as_u64().is_some_and(|b| b > 0), "{j}");
    assert_time_to_first_token(&j);
}

/// `time_to_first_token_ms` is the backend's start, the load and the first call.
fn assert_time_to_first_token(j: &serde_json::Value) {
    let part = |k: &str| j[k].as_f64().unwrap_or_else(|| panic!("{k} in {j}"));
    let parts = ["backend_start_ms", "load_ms", "first_call_ms"].map(part);
    assert!(parts.iter().all(|p| *p >= 0.0) && parts[2] > 0.0, "{j}");
    let sum: f64 = parts.iter().sum();
    assert!(
        (part("time_to_first_token_ms") - sum).abs() < 1e-6 * sum,
        "{j}"
    );
}

/// `glint bench --backend gpu --json` (lavapipe in CI) reports its start, and keeps the
/// pipeline cache in the cache folder: written at the first run, read at the next.
#[cfg(feature = "gpu")]
#[test]
fn gpu_bench_reports_its_start_and_keeps_the_pipeline_cache() {
    let cache = tempfile::tempdir().unwrap();
    let bench = || {
        let o = Command::new(env!("CARGO_BIN_EXE_glint"))
            .env("GLINT_CACHE", cache.path())
            .args([
                "bench",
                "--backend",
                "gpu",
                "-p",
                "2",
                "-n",
                "1",
                "-r",
                "1",
                "--json",
            ])
            .arg("-m")
            .arg(model_path())
            .output()
            .expect("start glint");
        let j: serde_json::Value = serde_json::from_str(ok(&o).trim()).expect("a JSON object");
        assert_eq!(j["backend"], "gpu", "{j}");
        assert_time_to_first_token(&j);
        for k in ["device_ms", "pipelines_ms"] {
            assert!(j[k].as_f64().is_some_and(|v| v > 0.0), "{k} in {j}");
        }
        j
    };
    let cold = bench();
    assert_eq!(cold["pipeline_cache"], "cold", "{cold}");
    let written = cold["pipeline_cache_written_bytes"].as_u64().unwrap();
    let files: Vec<_> = std::fs::read_dir(cache.path().join("gpu-pipelines"))
        .unwrap()
        .map(|e| e.unwrap().metadata().unwrap().len())
        .collect();
    assert_eq!(files, [written]);
    let warm = bench();
    assert_eq!(warm["pipeline_cache"], "warm", "{warm}");
    assert_eq!(warm["pipeline_cache_read_bytes"], written, "{warm}");
}

/// `-t` beyond the cores this process may run on (any value a `usize` holds) is capped
/// there with a note, and the run goes on; a value no `usize` holds is clap's error.
#[test]
fn huge_thread_counts_are_capped_to_the_cores_with_a_note() {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    for t in ["1000", "100000", "18446744073709551615"] {
        let mut args: Vec<OsString> = ["bench", "-p", "1", "-n", "1", "-r", "1", "--json", "-t", t]
            .iter()
            .map(OsString::from)
            .collect();
        if let Some(m) = std::env::var_os("GLINT_MODEL") {
            args.extend(["-m".into(), m]);
        }
        let o = glint(&args);
        let j: serde_json::Value = serde_json::from_str(ok(&o).trim()).expect("a JSON object");
        assert_eq!(j["threads"], cores, "-t {t}");
        let err = stderr(&o);
        assert!(
            err.contains(&format!("-t {t}: this process may run on {cores} core")),
            "{err}"
        );
    }
    let o = glint(&["bench", "-t", "18446744073709551616"]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(!stderr(&o).contains("panicked"));
}

#[test]
fn info_describes_the_model() {
    let out = ok(&glint(&with_model(&["info"])));
    for needle in [
        "format 1.",
        "scheme ",
        "dim 576, 30 layers, 9 heads (3 kv)",
        "vocab 49152",
        "backend: cpu ",
        "1 threads",
    ] {
        assert!(out.contains(needle), "{needle:?} not in:\n{out}");
    }
    if std::env::var_os("GLINT_MODEL").is_none() {
        assert!(out.contains("scheme q4g32a"), "{out}");
    }
}

#[test]
fn perplexity_prints_ppl_last() {
    // The first ~1500 characters of the evaluation text: a few hundred tokens, so four
    // or five windows of 64.
    let full = std::fs::read_to_string(Path::new(common::FIXTURES).join("eval-gpl3.txt"))
        .expect("read eval-gpl3.txt");
    let mut cut = 1500.min(full.len());
    while !full.is_char_boundary(cut) {
        cut -= 1;
    }
    let text = &full[..cut];
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("text.txt");
    std::fs::write(&file, text).unwrap();

    let mut args = with_model(&["perplexity", "-c", "64"]);
    args.extend(["-f".into(), file.into()]);
    let out = ok(&glint(&args));
    let line = last_line(&out);
    let ppl: f64 = line
        .strip_prefix("PPL = ")
        .unwrap_or_else(|| panic!("last line {line:?}"))
        .parse()
        .expect("a number");
    assert!(ppl.is_finite() && ppl > 1.0, "PPL {ppl}");

    // The same figure as the library computes.
    let opts = glint_runtime::CpuOptions {
        threads: 1,
        ..Default::default()
    };
    let engine = glint_runtime::Engine::load(model_path(), opts).expect("load the model");
    let kv = glint_runtime::KvType::F16;
    let want =
        glint_runtime::eval::perplexity(&engine, text, 64, kv, |_, _| {}).expect("perplexity");
    assert!(
        (ppl - want).abs() <= 1e-3 * want,
        "CLI {ppl} vs library {want}"
    );
}

#[test]
fn invalid_utf8_arguments_are_rejected_cleanly() {
    let bad = OsString::from_vec(b"caf\xe9 \xff\xfe".to_vec());
    let mut args = with_model(&["run", "-n", "4"]);
    args.extend(["-p".into(), bad.clone()]);
    fails(&glint(&args), &["invalid UTF-8"]);
    let mut args = with_model(&["tokenize", "--ids"]);
    args.push(bad);
    fails(&glint(&args), &["invalid UTF-8"]);
}

/// Each model-loading subcommand on `model`, expecting a clean failure whose message
/// contains `needles`.
fn every_subcommand_fails_on(model: &Path, needles: &[&str]) {
    let dir = tempfile::tempdir().unwrap();
    let text = dir.path().join("text.txt");
    std::fs::write(&text, "Some text to score.").unwrap();
    let m = || vec![OsString::from("-m"), model.into(), "-t".into(), "1".into()];
    let runs: Vec<Vec<OsString>> = vec![
        [vec!["run".into(), "-p".into(), "hi".into()], m()].concat(),
        [vec!["tokenize".into(), "hi".into()], m()].concat(),
        [vec!["perplexity".into(), "-f".into(), text.into()], m()].concat(),
        [
            vec![
                "bench".into(),
                "-p".into(),
                "4".into(),
                "-n".into(),
                "2".into(),
            ],
            m(),
        ]
        .concat(),
        [vec!["info".into()], m()].concat(),
    ];
    for args in runs {
        let o = glint(&args);
        fails(&o, needles);
        assert!(
            stderr(&o).starts_with("error: "),
            "{args:?}: stderr:\n{}",
            stderr(&o)
        );
    }
}

#[test]
fn missing_model_file_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let absent = dir.path().join("absent.glint");
    every_subcommand_fails_on(&absent, &["absent.glint", "No such file"]);
}

#[test]
fn corrupt_model_files_are_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    // Pseudo-random garbage, bare and behind a valid magic.
    let mut seed = 0x2545_f491_4f6c_dd1du64;
    let garbage: Vec<u8> = (0..8192)
        .map(|_| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed as u8
        })
        .collect();
    let path = dir.path().join("garbage.glint");
    std::fs::write(&path, &garbage).unwrap();
    every_subcommand_fails_on(
        &path,
        &["garbage.glint", "not a valid .glint file", "bad magic"],
    );

    let mut with_magic = b"GLINTMDL".to_vec();
    with_magic.extend_from_slice(&garbage);
    std::fs::write(&path, &with_magic).unwrap();
    every_subcommand_fails_on(&path, &["not a valid .glint file"]);

    std::fs::write(&path, b"").unwrap();
    every_subcommand_fails_on(&path, &["not a valid .glint file", "truncated"]);

    // The real model cut short.
    let mut head = vec![0u8; 1 << 16];
    let mut f = std::fs::File::open(model_path()).expect("open the model");
    std::io::Read::read_exact(&mut f, &mut head).expect("read the model's start");
    std::fs::write(&path, &head).unwrap();
    every_subcommand_fails_on(&path, &["not a valid .glint file", "truncated"]);
}

#[test]
fn prompt_longer_than_the_context_is_refused() {
    let prompt = "The quick brown fox jumps over the lazy dog. ".repeat(4);
    let o = glint(&with_model(&["run", "-c", "8", "-n", "4", "-p", &prompt]));
    fails(&o, &["does not fit", "of 8 context positions"]);
    assert!(o.stdout.is_empty(), "{}", stdout(&o));
}

/// The shipped QA set through the chat template, exact greedy: answer quality is a
/// measured property, pinned here (20 of 35 right when it was written; every reply and
/// verdict is printed with `-v`).
#[test]
fn eval_qa_answers_the_shipped_set() {
    let set = Path::new(common::FIXTURES).join("qa-basic.tsv");
    let mut args = with_model(&["eval-qa", "--precision", "exact", "--temp", "0", "-n", "40"]);
    args.push(set.into());
    let out = ok(&glint(&args));
    let line = last_line(&out);
    let right: usize = line
        .strip_prefix("accuracy = ")
        .and_then(|rest| rest.split_once('(').map(|(_, r)| r))
        .and_then(|r| r.split_once('/').map(|(k, _)| k))
        .unwrap_or_else(|| panic!("last line {line:?}"))
        .parse()
        .expect("a count");
    assert!(right >= 20, "{right} of 35 right:\n{out}");
}

/// The README's demo, as written there (`run --chat -p "What is the capital of France?"`,
/// every other setting the default: the model's recommended sampling, seed 0), answers
/// right.
#[test]
fn the_readme_demo_answers_paris() {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md"))
        .expect("read the README");
    let demo =
        r#"cargo run --release -p glint-runtime -- run --chat -p "What is the capital of France?""#;
    assert!(
        readme.contains(demo),
        "the README's demo changed: update this test"
    );
    let out = ok(&glint(&with_model(&[
        "run",
        "--chat",
        "-p",
        "What is the capital of France?",
    ])));
    assert!(out.contains("Paris"), "{out}");
}

/// The `[session memory: ... (N positions of f16) ... = T MiB]` line of `glint run`:
/// the context and the planned total in MiB.
fn planned(err: &str) -> (usize, f64) {
    let line = err
        .lines()
        .find_map(|l| l.strip_prefix("[session memory: "))
        .unwrap_or_else(|| panic!("no plan in:\n{err}"));
    let context = line
        .split_once(" MiB (")
        .and_then(|(_, r)| r.split_once(' '))
        .and_then(|(n, _)| n.parse().ok())
        .unwrap_or_else(|| panic!("no context in {line:?}"));
    let total = line
        .rsplit_once("= ")
        .and_then(|(_, r)| r.strip_suffix(" MiB]"))
        .and_then(|t| t.parse().ok())
        .unwrap_or_else(|| panic!("no total in {line:?}"));
    (context, total)
}

/// The peak RSS in MiB from the stats line.
fn peak_rss_mib(err: &str) -> f64 {
    err.split_once("peak RSS ")
        .and_then(|(_, r)| r.split_once(" MiB"))
        .and_then(|(x, _)| x.parse().ok())
        .unwrap_or_else(|| panic!("no peak RSS in:\n{err}"))
}

/// A memory budget is checked before anything is allocated: too small is refused with
/// every part named; without `-c` the default context (2048) is used when it fits and
/// shrunk when it does not; the run's peak RSS stays within the planned total (the plan
/// is an upper bound: only the KV positions used become resident).
#[test]
fn the_memory_budget_refuses_or_sizes_the_context() {
    let prompt = ["run", "--chat", "-p", "Name a colour.", "-n", "8"];
    let refused = glint(&with_model(
        &[&prompt[..], &["--mem-budget", "64MiB"]].concat(),
    ));
    fails(
        &refused,
        &[
            "memory budget of 64.0 MiB",
            "weights",
            "KV cache",
            "activations",
            "runtime",
        ],
    );

    let roomy = glint(&with_model(
        &[&prompt[..], &["--mem-budget", "512MiB"]].concat(),
    ));
    ok(&roomy);
    let err = stderr(&roomy);
    let (context, total) = planned(&err);
    assert_eq!(context, 2048, "{err}");
    assert!(peak_rss_mib(&err) <= total, "{err}");

    let tight = glint(&with_model(
        &[&prompt[..], &["--mem-budget", "150MiB"]].concat(),
    ));
    ok(&tight);
    let err = stderr(&tight);
    let (context, total) = planned(&err);
    assert!((256..2048).contains(&context), "{err}");
    assert!(total <= 150.0, "{err}");
    assert!(peak_rss_mib(&err) <= total, "{err}");

    let out = ok(&glint(&with_model(&["info", "--mem", "-c", "512"])));
    assert!(out.contains("session memory: weights"), "{out}");
    assert!(out.contains("(512 positions of f16)"), "{out}");
    fails(
        &glint(&with_model(&["run", "--mem-budget", "lots", "-p", "x"])),
        &["512MiB"],
    );
}

/// A context beyond the model's is an error everywhere, not a silent clamp, and a
/// benchmark too long for any context is refused before allocating.
#[test]
fn contexts_beyond_the_model_are_refused() {
    let too_long = "more than the model's trained context of 8192";
    fails(
        &glint(&with_model(&["run", "-c", "100000", "-p", "x"])),
        &[too_long],
    );
    fails(
        &glint(&with_model(&["info", "--mem", "-c", "8193"])),
        &[too_long],
    );
    fails(
        &glint(&with_model(&[
            "bench",
            "-p",
            "18446744073709551615",
            "-n",
            "1",
        ])),
        &[too_long],
    );
}

// ---- Hostile files, arguments and streams (issue 10): every one ends with a message
// and a non-zero status (or, in a chat, a session that goes on), never a panic, an
// abort, a hang or a silent death.

/// How long a command may take before the test calls it a hang: generous, as the
/// machine may be shared (and its runs frozen for minutes); these commands take seconds
/// when nothing hangs.
const HANG: std::time::Duration = std::time::Duration::from_secs(600);

/// Waits for `child`, killing it and failing the test after [`HANG`].
fn wait_or_hang(child: &mut std::process::Child, what: &str) -> std::process::ExitStatus {
    let start = std::time::Instant::now();
    loop {
        if let Some(status) = child.try_wait().expect("wait") {
            return status;
        }
        if start.elapsed() > HANG {
            let _ = child.kill();
            panic!("{what}: hangs");
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

/// `args` run with stdin, stdout and stderr as given, ended within [`HANG`]; returns
/// the status and stderr.
fn run_bounded(
    args: &[OsString],
    stdout: std::process::Stdio,
) -> (std::process::ExitStatus, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_glint"))
        .args(args)
        .stdin(std::process::Stdio::null())
        .stdout(stdout)
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("start glint");
    let mut err = child.stderr.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = std::io::Read::read_to_string(&mut err, &mut s);
        s
    });
    let status = wait_or_hang(&mut child, &format!("{args:?}"));
    (status, reader.join().unwrap())
}

/// A clean failure: a status (not a signal) other than 0 and 101 (a panic), no panic
/// message, and each of `needles` in stderr.
fn fails_cleanly(status: std::process::ExitStatus, err: &str, needles: &[&str], what: &str) {
    assert!(
        status.code().is_some_and(|c| c != 0 && c != 101),
        "{what}: {status}\nstderr:\n{err}"
    );
    assert!(!err.contains("panicked"), "{what}: stderr:\n{err}");
    for n in needles {
        assert!(err.contains(n), "{what}: stderr lacks {n:?}:\n{err}");
    }
}

/// A copy of the model in `dir`, which tests may break.
fn model_copy(dir: &Path) -> std::path::PathBuf {
    let copy = dir.join("model.glint");
    std::fs::copy(model_path(), &copy).expect("copy the model");
    copy
}

/// Cuts `model` to 64 KiB in place (no rename: what a careless update does to a file
/// that is in use).
fn truncate_in_place(model: &Path) {
    std::fs::OpenOptions::new()
        .write(true)
        .open(model)
        .and_then(|f| f.set_len(1 << 16))
        .expect("truncate the model in place");
}

/// A child's stdout and stderr, read as they come (a thread per stream).
struct Streams {
    out: std::sync::Arc<std::sync::Mutex<String>>,
    err: std::sync::Arc<std::sync::Mutex<String>>,
}

/// Collects what `r` yields, as it comes, on a thread.
fn pump(mut r: impl std::io::Read + Send + 'static) -> std::sync::Arc<std::sync::Mutex<String>> {
    let buf = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
    let b = buf.clone();
    std::thread::spawn(move || {
        let mut chunk = [0u8; 4096];
        while let Ok(n) = r.read(&mut chunk) {
            if n == 0 {
                break;
            }
            b.lock()
                .unwrap()
                .push_str(&String::from_utf8_lossy(&chunk[..n]));
        }
    });
    buf
}

impl Streams {
    fn of(child: &mut std::process::Child) -> Self {
        Self {
            out: pump(child.stdout.take().unwrap()),
            err: pump(child.stderr.take().unwrap()),
        }
    }

    /// Waits until `cond(stdout, stderr)` holds; fails after [`HANG`].
    fn until(&self, what: &str, cond: impl Fn(&str, &str) -> bool) {
        let start = std::time::Instant::now();
        loop {
            if cond(&self.out.lock().unwrap(), &self.err.lock().unwrap()) {
                return;
            }
            assert!(
                start.elapsed() < HANG,
                "waiting for {what}:\nstdout:\n{}\nstderr:\n{}",
                self.out.lock().unwrap(),
                self.err.lock().unwrap()
            );
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }
}

/// Sends `signal` (a `kill` name: INT) to `child`.
fn signal(child: &std::process::Child, signal: &str) {
    let ok = Command::new("kill")
        .args([format!("-{signal}"), child.id().to_string()])
        .status()
        .expect("run kill");
    assert!(ok.success());
}

/// A long generation on `model` (greedy, past end-of-text), streaming to a pipe.
fn long_run(model: &Path, extra: &[&str]) -> std::process::Child {
    let mut args: Vec<OsString> = vec![
        "run".into(),
        "-m".into(),
        model.into(),
        "-t".into(),
        "1".into(),
        "-p".into(),
        "Once upon a time".into(),
        "--temp".into(),
        "0".into(),
        "--ignore-eos".into(),
    ];
    args.extend(extra.iter().map(OsString::from));
    Command::new(env!("CARGO_BIN_EXE_glint"))
        .args(&args)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("start glint")
}

#[test]
fn model_file_truncated_during_a_run_is_reported_with_its_own_status() {
    let dir = tempfile::tempdir().unwrap();
    let model = model_copy(dir.path());
    // Mapped: the next token touches pages past the new end.
    let mut child = long_run(&model, &["-n", "100000"]);
    let streams = Streams::of(&mut child);
    streams.until("the first token", |out, _| !out.is_empty());
    truncate_in_place(&model);
    let status = wait_or_hang(&mut child, "run on a truncated model");
    streams.until("the message", |_, err| err.contains('\n'));
    let err = streams.err.lock().unwrap().clone();
    assert_eq!(status.code(), Some(3), "{status}\nstderr:\n{err}");
    assert!(err.contains("model file changed while in use"), "{err}");
    assert!(err.contains("--no-mmap"), "{err}");

    // Read into memory: the run does not depend on the file.
    let model = model_copy(dir.path());
    let mut child = long_run(&model, &["-n", "200", "--no-mmap"]);
    let streams = Streams::of(&mut child);
    streams.until("the first token", |out, _| !out.is_empty());
    truncate_in_place(&model);
    let status = wait_or_hang(&mut child, "run --no-mmap on a truncated model");
    streams.until("the statistics", |_, err| err.contains("stop:"));
    let err = streams.err.lock().unwrap().clone();
    assert!(status.success(), "{status}\nstderr:\n{err}");
    assert!(err.contains("generated 200 tok"), "{err}");
}

#[test]
fn no_mmap_gives_the_same_tokens() {
    let (text, want) = run_with_ids(&[]);
    assert_eq!(run_with_ids(&["--no-mmap"]), (text, want));
}

#[test]
fn non_regular_model_files_are_refused_without_blocking() {
    let dir = tempfile::tempdir().unwrap();
    let fifo = dir.path().join("model.fifo");
    let made = Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .expect("run mkfifo");
    assert!(made.success());
    for path in [fifo.as_path(), Path::new("/dev/zero"), dir.path()] {
        for cmd in [
            &["info"][..],
            &["run", "-p", "hi"],
            &["chat"],
            &["run", "--no-mmap", "-p", "hi"],
        ] {
            let mut args: Vec<OsString> = cmd.iter().map(OsString::from).collect();
            args.extend(["-m".into(), path.into()]);
            let (status, err) = run_bounded(&args, std::process::Stdio::null());
            fails_cleanly(
                status,
                &err,
                &["is not a regular file"],
                &format!("{args:?}"),
            );
        }
    }
}

#[test]
fn nan_weights_stop_generation_with_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let model = model_copy(dir.path());
    // All-ones bits are NaN in f32 and f16 alike: the final norm becomes NaN.
    let (offset, len) = {
        let bytes = std::fs::read(&model).unwrap();
        let f = glint_format::GlintFile::parse(&bytes).expect("a valid model");
        let t = f.tensor("output_norm.weight").expect("the final norm");
        (t.offset, t.bytes.len())
    };
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .open(&model)
        .unwrap();
    std::io::Seek::seek(&mut f, std::io::SeekFrom::Start(offset)).unwrap();
    std::io::Write::write_all(&mut f, &vec![0xff; len]).unwrap();
    drop(f);
    let args: Vec<OsString> = vec![
        "run".into(),
        "-m".into(),
        model.clone().into(),
        "-t".into(),
        "1".into(),
        "-p".into(),
        "Hello".into(),
        "-n".into(),
        "4".into(),
    ];
    let (status, err) = run_bounded(&args, std::process::Stdio::piped());
    fails_cleanly(status, &err, &["non-finite logit"], "run on NaN weights");
    let text = Path::new(common::FIXTURES).join("eval-gpl3.txt");
    let args: Vec<OsString> = vec![
        "perplexity".into(),
        "-m".into(),
        model.into(),
        "-t".into(),
        "1".into(),
        "-c".into(),
        "64".into(),
        "-f".into(),
        text.into(),
    ];
    let (status, err) = run_bounded(&args, std::process::Stdio::piped());
    fails_cleanly(
        status,
        &err,
        &["non-finite logit"],
        "perplexity on NaN weights",
    );
}

#[test]
fn out_of_range_numbers_are_refused_with_a_message() {
    let huge = "18446744073709551615";
    let too_big = "18446744073709551616";
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (vec!["bench", "-p", huge, "-n", "1"], "trained context"),
        (vec!["bench", "-p", "1", "-n", huge], "trained context"),
        (vec!["bench", "-p", "100000000"], "trained context"),
        (vec!["bench", "-r", "0"], "expected 1 to 1000"),
        (vec!["bench", "-r", huge], "expected 1 to 1000"),
        (vec!["bench", "-p", too_big], "too large"),
        (vec!["run", "-p", "hi", "--temp", "NaN"], "temperature NaN"),
        (vec!["run", "-p", "hi", "--temp=-1"], "temperature -1"),
        (vec!["run", "-p", "hi", "--temp", "inf"], "temperature inf"),
        (vec!["run", "-p", "hi", "--top-p", "2"], "top-p 2"),
        (vec!["run", "-p", "hi", "--top-p", "NaN"], "top-p NaN"),
        (vec!["run", "-p", "hi", "--min-p=-0.5"], "min-p -0.5"),
        (
            vec!["run", "-p", "hi", "--repeat-penalty", "0"],
            "repeat penalty 0",
        ),
        (
            vec!["run", "-p", "hi", "--repeat-penalty", "NaN"],
            "repeat penalty NaN",
        ),
        (vec!["run", "-p", "hi", "--temp", "warm"], "invalid float"),
        (vec!["run", "-p", "hi", "--top-k", too_big], "too large"),
        (vec!["run", "-p", "hi", "-n", too_big], "too large"),
        (vec!["run", "-p", "hi", "-s", "-1"], "unexpected argument"),
        (
            vec!["eval-qa", "--seeds", "0", "x.tsv"],
            "expected 1 to 1000",
        ),
        (
            vec!["perplexity", "-f", "/etc/hostname", "-c", "0"],
            "window of 0",
        ),
        (
            vec!["perplexity", "-f", "/etc/hostname", "-c", huge],
            "window of",
        ),
        (vec!["chat", "--temp", "NaN"], "temperature NaN"),
    ];
    for (args, needle) in cases {
        let (status, err) = run_bounded(&with_model(&args), std::process::Stdio::null());
        fails_cleanly(status, &err, &[needle], &format!("{args:?}"));
    }
}

#[test]
fn unwritable_output_ends_quietly_with_a_failure() {
    let full = || std::process::Stdio::from(std::fs::File::create("/dev/full").unwrap());
    // stdout on a full disk.
    let (status, err) = run_bounded(&with_model(&["tokenize", "hi"]), full());
    fails_cleanly(status, &err, &[], "tokenize >/dev/full");
    assert!(err.is_empty(), "{err}");
    let (status, err) = run_bounded(&with_model(&["run", "-p", "Hello", "-n", "2"]), full());
    fails_cleanly(status, &err, &[], "run >/dev/full");
    // stderr on a full disk (the statistics go there).
    let o = Command::new(env!("CARGO_BIN_EXE_glint"))
        .args(with_model(&["run", "-p", "Hello", "-n", "2"]))
        .stderr(full())
        .output()
        .expect("start glint");
    assert!(
        o.status.code().is_some_and(|c| c != 0 && c != 101),
        "run 2>/dev/full: {}",
        o.status
    );
    // A closed pipe.
    let mut child = Command::new(env!("CARGO_BIN_EXE_glint"))
        .args(with_model(&["run", "-p", "Hello", "-n", "16"]))
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("start glint");
    drop(child.stdout.take());
    let err = pump(child.stderr.take().unwrap());
    let status = wait_or_hang(&mut child, "run | (closed)");
    let err = err.lock().unwrap().clone();
    fails_cleanly(status, &err, &[], "run | (closed)");
    assert!(!err.contains("error"), "{err}");
}

#[test]
fn text_inputs_are_bounded_and_prompts_come_from_files() {
    let (status, err) = run_bounded(
        &with_model(&["perplexity", "-f", "/dev/zero"]),
        std::process::Stdio::null(),
    );
    fails_cleanly(
        status,
        &err,
        &["/dev/zero is larger than"],
        "perplexity -f /dev/zero",
    );
    let (status, err) = run_bounded(
        &with_model(&["run", "-f", "/dev/zero"]),
        std::process::Stdio::null(),
    );
    fails_cleanly(
        status,
        &err,
        &["/dev/zero is larger than"],
        "run -f /dev/zero",
    );

    let dir = tempfile::tempdir().unwrap();
    let prompt = dir.path().join("prompt.txt");
    std::fs::write(&prompt, "Hello").unwrap();
    let mut args: Vec<OsString> = vec!["run".into(), "-f".into(), prompt.into()];
    args.extend(with_model(&["--temp", "0", "-n", "3", "--ids"]));
    let out = ok(&glint(&args));
    let (text, ids) = run_with_ids(&[]);
    assert_eq!(
        out,
        format!("{text}\n{}\n", serde_json::to_string(&ids).unwrap())
    );
}

/// `glint chat` with `args`, stdin piped.
fn chat(args: &[&str]) -> (std::process::Child, Streams) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_glint"))
        .args(with_model(&[&["chat"], args].concat()))
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("start glint");
    let streams = Streams::of(&mut child);
    (child, streams)
}

fn say(child: &mut std::process::Child, line: &[u8]) {
    let stdin = child.stdin.as_mut().unwrap();
    std::io::Write::write_all(stdin, line).unwrap();
    std::io::Write::flush(stdin).unwrap();
}

#[test]
fn chat_reports_a_bad_line_and_goes_on() {
    let (mut child, streams) = chat(&["--temp", "0", "-n", "4"]);
    say(&mut child, b"caf\xe9 \xff\n");
    // 8 MiB in one line: over the line limit, dropped without being tokenized.
    say(
        &mut child,
        &[b"word ".repeat(8 << 18), b"\n".to_vec()].concat(),
    );
    // 1 MB: within the line limit but more than the context can hold however it
    // tokenizes: refused before tokenizing.
    say(
        &mut child,
        &[b"word ".repeat(200_000), b"\n".to_vec()].concat(),
    );
    say(&mut child, b"What is the capital of France?\n");
    drop(child.stdin.take());
    let status = wait_or_hang(&mut child, "chat");
    let err = streams.err.lock().unwrap().clone();
    assert!(status.success(), "{status}\nstderr:\n{err}");
    assert!(
        err.contains("the line is not valid UTF-8; ignored"),
        "{err}"
    );
    assert!(err.contains("is longer than the"), "{err}");
    assert!(err.contains("text of 1000000 bytes cannot fit"), "{err}");
    assert_eq!(err.matches("stop: ").count(), 1, "{err}");
}

#[test]
fn chat_forgets_the_oldest_exchange_when_the_context_is_full() {
    let (mut child, streams) = chat(&["--temp", "0", "-n", "1000", "--ignore-eos", "-c", "96"]);
    say(&mut child, b"Tell me a story.\n");
    say(&mut child, b"And another one.\n");
    say(&mut child, &[b"word ".repeat(200), b"\n".to_vec()].concat());
    drop(child.stdin.take());
    let status = wait_or_hang(&mut child, "chat");
    let err = streams.err.lock().unwrap().clone();
    assert!(status.success(), "{status}\nstderr:\n{err}");
    assert_eq!(err.matches("stop: ContextFull").count(), 2, "{err}");
    assert!(err.contains("the oldest exchange is forgotten"), "{err}");
    assert!(err.contains("the message alone does not fit"), "{err}");
}

#[test]
fn ctrl_c_stops_the_reply_and_keeps_the_chat() {
    let (mut child, streams) = chat(&["--temp", "0", "-n", "100000", "--ignore-eos", "-c", "2048"]);
    for turn in 1..=2 {
        say(&mut child, b"Tell me a long story.\n");
        let replies = |out: &str| out.matches("> ").count();
        // The reply has started: something after the prompt of this turn.
        streams.until("a reply", |out, _| {
            replies(out) == turn && !out.ends_with("> ")
        });
        signal(&child, "INT");
        streams.until("the reply to stop", |_, err| {
            err.matches("stop: Cancelled").count() == turn
        });
    }
    drop(child.stdin.take());
    let status = wait_or_hang(&mut child, "chat");
    let err = streams.err.lock().unwrap().clone();
    assert!(status.success(), "{status}\nstderr:\n{err}");

    // Ctrl-C at the prompt ends the session (sent until it does: the first may come
    // before the prompt's read begins).
    let (mut child, streams) = chat(&[]);
    streams.until("the prompt", |out, _| out.ends_with("> "));
    let start = std::time::Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(start.elapsed() < HANG, "Ctrl-C at the prompt: hangs");
        signal(&child, "INT");
        std::thread::sleep(std::time::Duration::from_millis(100));
    };
    assert_eq!(status.code(), Some(130), "{status}");
}
