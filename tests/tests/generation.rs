//! The generation API's documented behaviours on the real model: context overflow,
//! empty prompts, bad token ids, cancellation mid-stream, concurrent sessions, chat
//! history and stop strings.

mod common;

use common::model_path;
use glint_runtime::engine::GenerateError;
use glint_runtime::sampler::SamplerConfig;
use glint_runtime::{CancelToken, CpuOptions, Engine, GenerateParams, SessionOptions, StopReason};
use std::ops::ControlFlow;
use std::sync::OnceLock;

fn engine() -> &'static Engine {
    static E: OnceLock<Engine> = OnceLock::new();
    let opts = CpuOptions {
        threads: 2,
        ..CpuOptions::default()
    };
    E.get_or_init(|| Engine::load(model_path(), opts).expect("load the model"))
}

/// Sessions of `context` positions, f16 KV.
fn ctx(context: usize) -> SessionOptions {
    SessionOptions {
        context,
        ..SessionOptions::default()
    }
}

fn greedy(n: usize) -> GenerateParams {
    GenerateParams {
        max_tokens: n,
        sampler: SamplerConfig::greedy(),
        ..GenerateParams::default()
    }
}

#[test]
fn a_prompt_longer_than_the_context_is_refused_and_the_session_stays_usable() {
    let mut s = engine().session(ctx(16)).unwrap();
    let long = "word ".repeat(40);
    let err = s
        .generate(&long, &greedy(4), |_| ControlFlow::Continue(()))
        .unwrap_err();
    assert!(
        matches!(
            err,
            GenerateError::PromptTooLong {
                capacity: 16,
                used: 0,
                ..
            }
        ),
        "{err:?}"
    );
    assert!(s.is_empty());
    let stats = s
        .generate("Hello", &greedy(4), |_| ControlFlow::Continue(()))
        .unwrap();
    assert_eq!(stats.generated_tokens, 4);
}

#[test]
fn generation_stops_when_the_context_is_full() {
    let mut s = engine().session(ctx(12)).unwrap();
    let stats = s
        .generate("Once upon a time", &greedy(100), |_| {
            ControlFlow::Continue(())
        })
        .unwrap();
    assert_eq!(stats.stop, StopReason::ContextFull);
    assert_eq!(s.len(), 12);
}

#[test]
fn empty_prompt_and_bad_token_ids_are_errors() {
    let mut s = engine().session(ctx(32)).unwrap();
    assert_eq!(
        s.generate("", &greedy(4), |_| ControlFlow::Continue(()))
            .unwrap_err(),
        GenerateError::EmptyPrompt
    );
    let err = s
        .generate_tokens(&[1, 1 << 30], &greedy(4), |_| ControlFlow::Continue(()))
        .unwrap_err();
    assert_eq!(err, GenerateError::BadToken(1 << 30));
    assert!(s.is_empty());
}

#[test]
fn cancel_from_another_thread_stops_mid_stream() {
    let mut s = engine().session(ctx(256)).unwrap();
    let cancel = CancelToken::new();
    let params = GenerateParams {
        cancel: cancel.clone(),
        ..greedy(200)
    };
    let (tx, rx) = std::sync::mpsc::channel::<()>();
    let canceller = std::thread::spawn(move || {
        if rx.recv().is_ok() {
            cancel.cancel();
        }
    });
    let mut seen = 0;
    let stats = s
        .generate("Once upon a time, in a land far away,", &params, |_| {
            seen += 1;
            if seen == 5 {
                tx.send(()).unwrap();
            }
            ControlFlow::Continue(())
        })
        .unwrap();
    drop(tx);
    canceller.join().unwrap();
    assert_eq!(stats.stop, StopReason::Cancelled);
    assert!(
        stats.generated_tokens < 200 && stats.generated_tokens >= 5,
        "{}",
        stats.generated_tokens
    );
    // The callback can stop generation too.
    let stats = s
        .generate(" More.", &greedy(50), |_| ControlFlow::Break(()))
        .unwrap();
    assert_eq!(
        (stats.stop, stats.generated_tokens),
        (StopReason::Cancelled, 1)
    );
}

#[test]
fn two_sessions_generate_at_once_on_one_model() {
    let prompts = ["The capital of France is", "def fibonacci(n):"];
    let alone: Vec<String> = prompts
        .iter()
        .map(|p| {
            let mut out = String::new();
            engine()
                .session(ctx(128))
                .unwrap()
                .generate(p, &greedy(24), |ev| {
                    out.push_str(ev.text);
                    ControlFlow::Continue(())
                })
                .unwrap();
            out
        })
        .collect();
    let together: Vec<String> = std::thread::scope(|scope| {
        let handles: Vec<_> = prompts
            .iter()
            .map(|p| {
                scope.spawn(move || {
                    let mut out = String::new();
                    engine()
                        .session(ctx(128))
                        .unwrap()
                        .generate(p, &greedy(24), |ev| {
                            out.push_str(ev.text);
                            ControlFlow::Continue(())
                        })
                        .unwrap();
                    out
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert_eq!(alone, together);
}

#[test]
fn chat_keeps_history_and_ends_the_turn_on_end_of_text() {
    let mut s = engine().session(ctx(512)).unwrap();
    let (reply, stats) = s
        .chat("What is the capital of France?", &greedy(64), |_| {
            ControlFlow::Continue(())
        })
        .unwrap();
    assert_eq!(reply, "The capital of France is Paris.");
    assert_eq!(stats.stop, StopReason::EndOfText);
    let used = s.len();
    let (_, stats) = s
        .chat("And of Italy?", &greedy(32), |_| ControlFlow::Continue(()))
        .unwrap();
    assert_eq!(s.history().len(), 4);
    // The second turn reuses the cached first turn: only the new tokens are run.
    assert!(
        stats.prompt_tokens < used,
        "{} prompt tokens re-run",
        stats.prompt_tokens
    );
}

#[test]
fn stop_strings_end_generation_and_are_not_streamed() {
    let mut s = engine().session(ctx(256)).unwrap();
    let params = GenerateParams {
        stop: vec!["Paris".into()],
        ..greedy(64)
    };
    let prompt = engine()
        .render_chat(
            &[glint_runtime::Message::new(
                glint_runtime::Role::User,
                "What is the capital of France?",
            )],
            true,
        )
        .unwrap();
    let mut out = String::new();
    let stats = s
        .generate(&prompt, &params, |ev| {
            out.push_str(ev.text);
            ControlFlow::Continue(())
        })
        .unwrap();
    assert_eq!(stats.stop, StopReason::StopString);
    assert_eq!(out, "The capital of France is ");
}

#[test]
fn same_seed_same_text() {
    let params = GenerateParams {
        max_tokens: 24,
        sampler: SamplerConfig {
            seed: 7,
            ..SamplerConfig::default()
        },
        ..GenerateParams::default()
    };
    let run = || {
        let mut out = String::new();
        engine()
            .session(ctx(128))
            .unwrap()
            .generate("Tell me a joke.", &params, |ev| {
                out.push_str(ev.text);
                ControlFlow::Continue(())
            })
            .unwrap();
        out
    };
    assert_eq!(run(), run());
}

#[test]
fn a_chat_turn_that_does_not_fit_leaves_the_session_as_it_was() {
    let mut s = engine().session(ctx(64)).unwrap();
    s.chat("Hi", &greedy(4), |_| ControlFlow::Continue(()))
        .unwrap();
    let (tokens, history) = (s.tokens().to_vec(), s.history().to_vec());
    let err = s
        .chat(&"word ".repeat(80), &greedy(4), |_| {
            ControlFlow::Continue(())
        })
        .unwrap_err();
    assert!(
        matches!(err, GenerateError::PromptTooLong { capacity: 64, .. }),
        "{err:?}"
    );
    assert_eq!((s.tokens(), s.history()), (&tokens[..], &history[..]));
    s.chat("Bye", &greedy(4), |_| ControlFlow::Continue(()))
        .unwrap();
}

/// The memory plan: the default context without a budget; with one and no context, the
/// largest context that fits (one more position would not); a context or budget that
/// cannot be met is a typed error, found before anything is allocated.
#[test]
fn the_memory_plan_sizes_the_context_to_the_budget() {
    use glint_runtime::SessionError;
    use glint_runtime::backend::ScratchInfo;
    use glint_runtime::memory::{DEFAULT_CONTEXT, MIN_FITTED_CONTEXT};
    let e = engine();
    for (batch, capacity, all_logits) in [(64, 2048, false), (1, 1, false), (7, 300, true)] {
        let m = e.model();
        let planned = m.scratch_bytes(batch, capacity, all_logits);
        let made = m.scratch(batch, capacity, all_logits).unwrap();
        assert_eq!(planned, made.bytes(), "batch {batch}, capacity {capacity}");
    }
    let plan = e.memory_plan(&ctx(0)).unwrap();
    assert_eq!(plan.context, DEFAULT_CONTEXT);
    assert!(plan.weights >= e.model().file().file_len());
    let budget = plan.total() - 1_000_000;
    let with = |context| SessionOptions {
        context,
        mem_budget: Some(budget),
        ..SessionOptions::default()
    };
    let fitted = e.memory_plan(&with(0)).unwrap();
    assert!(fitted.total() <= budget);
    assert!((MIN_FITTED_CONTEXT..DEFAULT_CONTEXT).contains(&fitted.context));
    let one_more = e.memory_plan(&with(fitted.context + 1));
    assert!(
        matches!(one_more, Err(SessionError::OverBudget { .. })),
        "{one_more:?}"
    );
    let s = e.session(with(0)).unwrap();
    assert_eq!(s.capacity(), fitted.context);

    let tiny = SessionOptions {
        mem_budget: Some(plan.weights),
        ..SessionOptions::default()
    };
    match e.session(tiny) {
        Err(SessionError::OverBudget { plan, budget }) => {
            assert_eq!(plan.context, MIN_FITTED_CONTEXT);
            assert!(plan.total() > budget);
        }
        Err(other) => panic!("expected over budget, got {other:?}"),
        Ok(_) => panic!("expected over budget, got a session"),
    }
    let trained = e.model().config().context_len as usize;
    assert!(matches!(
        e.session(ctx(trained + 1)),
        Err(SessionError::ContextTooLong { .. })
    ));
    assert_eq!(e.session(ctx(trained)).unwrap().capacity(), trained);
}
