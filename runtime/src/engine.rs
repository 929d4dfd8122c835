//! The generation API: an [`Engine`] loads a model once; any number of [`Session`]s
//! (each with its own KV cache and history) generate from it, on any threads, with a
//! per-token streaming callback, cancellation from another thread, a token budget, stop
//! strings and per-call statistics.
//!
//! Context policy: a prompt that does not fit in the session's remaining context is
//! refused with [`GenerateError::PromptTooLong`] before anything runs; when generation
//! fills the context it stops with [`StopReason::ContextFull`]. Nothing is silently
//! dropped (no sliding window): the caller decides what to forget ([`Session::reset`]).

use crate::backend::{Backend, BackendError, CpuBackend, CpuOptions, KvStore, KvType};
use crate::chat::{ChatTemplate, Message, Role, TemplateError};
use crate::memory::{DEFAULT_CONTEXT, MIN_FITTED_CONTEXT, MemoryPlan, Mib, RUNTIME_BYTES};
use crate::model::{ForwardError, LoadError, Model, ModelSource};
use crate::sampler::{Sampler, SamplerConfig, SamplerError};
use crate::tokenizer::{StreamDecoder, Tokenizer, TokenizerError, Vocabulary};
use std::ops::ControlFlow;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// Tokens per prefill batch: large enough for matrix-matrix kernels to reuse each
/// dequantized weight block many times, small enough to keep scratch buffers small.
pub const PREFILL_BATCH: usize = 64;

/// Why an engine could not be created.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// The model file could not be loaded.
    #[error(transparent)]
    Load(#[from] LoadError),
    /// The file's tokenizer is not usable.
    #[error(transparent)]
    Tokenizer(#[from] TokenizerError),
    /// The backend could not be started.
    #[error(transparent)]
    Backend(#[from] BackendError),
}

/// How a [`Session`] is set up.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SessionOptions {
    /// Context positions, at most the model's trained context. 0: [`DEFAULT_CONTEXT`]
    /// (or the trained context if smaller), shrunk to fit `mem_budget` when one is set.
    pub context: usize,
    /// Element type of the KV cache.
    pub kv: KvType,
    /// Bytes the model and this session may hold resident ([`MemoryPlan::total`]);
    /// `None`: no limit.
    pub mem_budget: Option<u64>,
}

/// Why a session could not be made. Nothing is allocated before the plan is checked.
#[derive(Clone, Debug, thiserror::Error, PartialEq)]
pub enum SessionError {
    /// More context than the model was trained for.
    #[error(
        "a context of {requested} positions is more than the model's trained context of {trained}"
    )]
    ContextTooLong {
        /// Positions asked for.
        requested: usize,
        /// The model's trained context.
        trained: usize,
    },
    /// The session does not fit in the memory budget.
    #[error("the session does not fit in the memory budget of {}: {plan}", Mib(*budget))]
    OverBudget {
        /// What it would need (for a shrinkable context: at the smallest one tried).
        plan: MemoryPlan,
        /// The budget.
        budget: u64,
    },
    /// The backend could not allocate the cache or the activations.
    #[error(transparent)]
    Backend(#[from] BackendError),
}

/// Why a generation call failed. Every error but [`GenerateError::NonFiniteLogits`] is
/// found before anything runs, so the session is unchanged by a failed call.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum GenerateError {
    /// The prompt encodes to no tokens and the session is empty: nothing to continue.
    #[error("empty prompt")]
    EmptyPrompt,
    /// The prompt does not fit in the context left.
    #[error(
        "prompt of {prompt} tokens does not fit: {used} of {capacity} context positions are used"
    )]
    PromptTooLong {
        /// Prompt tokens.
        prompt: usize,
        /// Positions already used by the session.
        used: usize,
        /// Context capacity of the session.
        capacity: usize,
    },
    /// The text is so long that it cannot fit in the context however it tokenizes (it
    /// is refused before it is tokenized: a pasted megabyte costs nothing).
    #[error(
        "text of {bytes} bytes cannot fit in {capacity} context positions (tokens are at most {longest_token} bytes)"
    )]
    TextTooLong {
        /// Bytes of the text.
        bytes: usize,
        /// Context capacity of the session.
        capacity: usize,
        /// Bytes of the longest token.
        longest_token: usize,
    },
    /// A token id is not in the vocabulary.
    #[error("token id {0} is outside the vocabulary")]
    BadToken(u32),
    /// A sampling setting is out of range.
    #[error(transparent)]
    Sampler(#[from] SamplerError),
    /// The model produced a NaN or infinite logit (broken weights): generation stops
    /// rather than pick tokens from garbage. The prompt has run: the session holds it.
    #[error(
        "the model produced a non-finite logit after {position} tokens (its weights are broken: `glint-quantize verify` checks them)"
    )]
    NonFiniteLogits {
        /// Positions in the context when it happened.
        position: usize,
    },
    /// The chat template failed.
    #[error("{0}")]
    Template(String),
    /// The model refused a forward pass.
    #[error(transparent)]
    Forward(#[from] ForwardError),
}

impl From<TemplateError> for GenerateError {
    fn from(e: TemplateError) -> Self {
        GenerateError::Template(e.to_string())
    }
}

/// Why generation ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StopReason {
    /// The model produced an end-of-sequence or end-of-turn token.
    EndOfText,
    /// A stop string appeared.
    StopString,
    /// `max_tokens` were generated.
    MaxTokens,
    /// The context is full.
    ContextFull,
    /// [`CancelToken::cancel`] was called, or the callback returned `Break`.
    Cancelled,
}

/// Cancels generation from any thread; cheap to clone.
#[derive(Clone, Debug, Default)]
pub struct CancelToken(Arc<AtomicBool>);

impl CancelToken {
    /// A fresh token.
    pub fn new() -> Self {
        Self::default()
    }

    /// Asks the generation using this token to stop at the next token boundary.
    pub fn cancel(&self) {
        self.0.store(true, Ordering::Relaxed);
    }

    /// True once cancelled.
    pub fn is_cancelled(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }

    /// Clears the request, so the token can be reused.
    pub fn reset(&self) {
        self.0.store(false, Ordering::Relaxed);
    }
}

/// Settings of one generation call.
#[derive(Clone, Debug)]
pub struct GenerateParams {
    /// Most tokens to generate.
    pub max_tokens: usize,
    /// Sampling.
    pub sampler: SamplerConfig,
    /// Generation stops when the text contains one of these (not included in the output).
    pub stop: Vec<String>,
    /// Checked before every token.
    pub cancel: CancelToken,
    /// Keep generating past end-of-text tokens (benchmarks, like llama.cpp's
    /// `--ignore-eos`).
    pub ignore_eos: bool,
}

impl Default for GenerateParams {
    fn default() -> Self {
        Self {
            max_tokens: 512,
            sampler: SamplerConfig::default(),
            stop: Vec::new(),
            cancel: CancelToken::new(),
            ignore_eos: false,
        }
    }
}

/// Statistics of one generation call.
#[derive(Clone, Debug, PartialEq)]
pub struct GenerateStats {
    /// Tokens run through the model as prompt.
    pub prompt_tokens: usize,
    /// Tokens generated.
    pub generated_tokens: usize,
    /// From the call to the first generated token.
    pub time_to_first_token: Duration,
    /// Prompt tokens per second.
    pub prefill_tok_s: f64,
    /// Generated tokens per second after the first.
    pub decode_tok_s: f64,
    /// Bytes of KV cache in use at the end (positions filled x bytes per position).
    pub kv_bytes: u64,
    /// Why generation ended.
    pub stop: StopReason,
}

/// One streaming event: a generated token and the text it completes.
#[derive(Clone, Copy, Debug)]
pub struct TokenEvent<'a> {
    /// The generated token, or `None` for the last event of a call, which only
    /// releases text held back (for a possible stop string or an unfinished UTF-8
    /// sequence) when generation ends.
    pub id: Option<u32>,
    /// New complete UTF-8 text this token adds (may be empty while a multi-byte
    /// character or a possible stop string is pending).
    pub text: &'a str,
}

/// What the clones of an [`Engine`] share.
struct EngineParts<B: Backend> {
    model: Model<B>,
    tokenizer: Tokenizer,
    /// Start a new context with BOS (the tokenizer's `add_bos` flag).
    add_bos: bool,
    /// The compiled chat template, or why the file's template is unusable (reported
    /// when a chat is rendered, so models without one still load for plain prompts).
    template: Result<ChatTemplate, String>,
    stop_ids: Vec<u32>,
}

/// A loaded model with its tokenizer and chat template. Cheap to clone; shareable
/// across threads. Sessions share the engine's backend (on the CPU: its worker threads).
pub struct Engine<B: Backend = CpuBackend>(Arc<EngineParts<B>>);

impl<B: Backend> Clone for Engine<B> {
    fn clone(&self) -> Self {
        Self(Arc::clone(&self.0))
    }
}

impl Engine {
    /// Loads a `.glint` model (a path, bytes, or a range of an open file) on the CPU.
    pub fn load(source: impl Into<ModelSource>, opts: CpuOptions) -> Result<Self, EngineError> {
        Self::with_backend(source, CpuBackend::new(opts)?)
    }
}

impl<B: Backend> Engine<B> {
    /// Loads a `.glint` model onto `backend`.
    pub fn with_backend(source: impl Into<ModelSource>, backend: B) -> Result<Self, EngineError> {
        let model = Model::load(source, backend)?;
        let f = model.file();
        let c = *f.config();
        let tokenizer = Tokenizer::new(Vocabulary::from_file(f))?;
        let add_bos = f.tokenizer().add_bos;
        let text = |id: Option<u32>| id.map(|i| tokenizer.decode(&[i], true)).unwrap_or_default();
        let template = ChatTemplate::new(f.chat_template(), &text(c.bos), &text(c.eos))
            .map_err(|e| e.to_string());
        let mut stop_ids: Vec<u32> = [c.eos, c.eot].into_iter().flatten().collect();
        stop_ids.dedup();
        Ok(Self(Arc::new(EngineParts {
            model,
            tokenizer,
            add_bos,
            template,
            stop_ids,
        })))
    }

    /// The model.
    pub fn model(&self) -> &Model<B> {
        &self.0.model
    }

    /// The tokenizer.
    pub fn tokenizer(&self) -> &Tokenizer {
        &self.0.tokenizer
    }

    /// The tokens of `text` as a prompt: the one place that decides BOS, which starts a
    /// new context (`at_start`) when the model asks for it. Special tokens written in
    /// the text (such as `<|im_start|>`) are parsed as special tokens.
    pub fn prompt_tokens(&self, text: &str, at_start: bool) -> Vec<u32> {
        let mut v = Vec::new();
        if at_start && self.0.add_bos {
            v.extend(self.0.model.config().bos);
        }
        v.extend(self.0.tokenizer.encode(text, true));
        v
    }

    /// Refuses `text` when it cannot fit in `capacity` positions whatever it encodes
    /// to: every token covers at most the bytes of the longest one, so a text longer than
    /// `capacity + 1` such tokens (one for a space prefix) needs more positions. Costs a
    /// pass over the vocabulary, not a tokenization.
    fn check_text_fits(&self, text: &str, capacity: usize) -> Result<(), GenerateError> {
        let longest_token = self.0.tokenizer.longest_token_bytes().max(1);
        if text.len() > capacity.saturating_add(1).saturating_mul(longest_token) {
            return Err(GenerateError::TextTooLong {
                bytes: text.len(),
                capacity,
                longest_token,
            });
        }
        Ok(())
    }

    /// What a session with `opts` would hold resident, and the context it gets
    /// ([`SessionOptions::context`]), computed without allocating. `Err` when the
    /// context is longer than the model's or the plan exceeds the memory budget.
    pub fn memory_plan(&self, opts: &SessionOptions) -> Result<MemoryPlan, SessionError> {
        let model = &self.0.model;
        let trained = model.config().context_len as usize;
        if opts.context > trained {
            return Err(SessionError::ContextTooLong {
                requested: opts.context,
                trained,
            });
        }
        let plan = |context: usize| MemoryPlan {
            weights: model.resident_bytes(),
            kv: opts.kv.cache_bytes(model.shape(), context),
            scratch: model.scratch_bytes(PREFILL_BATCH, context, false),
            runtime: RUNTIME_BYTES,
            context,
            kv_type: opts.kv,
        };
        let fits = |p: &MemoryPlan| opts.mem_budget.is_none_or(|b| p.total() <= b);
        let over = |plan: MemoryPlan| SessionError::OverBudget {
            plan,
            budget: opts.mem_budget.unwrap_or(u64::MAX),
        };
        if opts.context > 0 {
            let p = plan(opts.context);
            return if fits(&p) { Ok(p) } else { Err(over(p)) };
        }
        // No context asked for: the default, or the largest that fits the budget
        // (the plan grows with the context; binary search down to the minimum).
        let (mut lo, mut hi) = (
            MIN_FITTED_CONTEXT.min(trained),
            DEFAULT_CONTEXT.min(trained),
        );
        if fits(&plan(hi)) {
            return Ok(plan(hi));
        }
        if !fits(&plan(lo)) {
            return Err(over(plan(lo)));
        }
        while hi - lo > 1 {
            let mid = lo + (hi - lo) / 2;
            if fits(&plan(mid)) {
                lo = mid;
            } else {
                hi = mid;
            }
        }
        Ok(plan(lo))
    }

    /// A new session, after checking its [`Engine::memory_plan`]. Its cache is
    /// allocated up front (`Err` if the memory is not there); only the positions used
    /// become resident.
    pub fn session(&self, opts: SessionOptions) -> Result<Session<B>, SessionError> {
        let cap = self.memory_plan(&opts)?.context;
        Ok(Session {
            engine: self.clone(),
            cache: self.0.model.cache(cap, opts.kv)?,
            scratch: self.0.model.scratch(PREFILL_BATCH, cap, false)?,
            tokens: Vec::new(),
            pending: None,
            history: Vec::new(),
        })
    }

    /// Renders `messages` with the model's chat template.
    pub fn render_chat(
        &self,
        messages: &[Message],
        add_generation_prompt: bool,
    ) -> Result<String, GenerateError> {
        let t = self
            .0
            .template
            .as_ref()
            .map_err(|e| GenerateError::Template(e.clone()))?;
        Ok(t.render(messages, add_generation_prompt)?)
    }
}

/// One conversation: a KV cache, the tokens in it and the chat history.
pub struct Session<B: Backend = CpuBackend> {
    engine: Engine<B>,
    cache: B::Cache,
    scratch: B::Scratch,
    /// Tokens whose keys and values are in `cache`.
    tokens: Vec<u32>,
    /// The last sampled token, not yet run through the model (it is when the context
    /// continues).
    pending: Option<u32>,
    history: Vec<Message>,
}

impl<B: Backend> Session<B> {
    /// Context positions in use.
    pub fn len(&self) -> usize {
        self.tokens.len()
    }

    /// True when nothing is in the context.
    pub fn is_empty(&self) -> bool {
        self.tokens.is_empty()
    }

    /// Context positions available in all.
    pub fn capacity(&self) -> usize {
        self.cache.capacity()
    }

    /// The tokens in the context.
    pub fn tokens(&self) -> &[u32] {
        &self.tokens
    }

    /// The last generated token when it has not been run through the model yet (the
    /// end-of-text token, or the token that hit a stop string or the budget).
    pub fn pending(&self) -> Option<u32> {
        self.pending
    }

    /// Starts the chat history with a system message (forgetting the context).
    pub fn set_system(&mut self, system: &str) {
        self.reset();
        self.history.push(Message::new(Role::System, system));
    }

    /// The chat history kept by [`Session::chat`].
    pub fn history(&self) -> &[Message] {
        &self.history
    }

    /// Forgets the oldest exchange of the chat history (its first user turn and the
    /// replies up to the next user turn; a system message is kept), so a conversation
    /// that has filled the context can go on: the next [`Session::chat`] re-runs what
    /// follows the system message. False when there is no user turn to forget.
    pub fn forget_oldest_turn(&mut self) -> bool {
        let Some(first) = self.history.iter().position(|m| m.role == Role::User) else {
            return false;
        };
        let end = self.history[first + 1..]
            .iter()
            .position(|m| m.role == Role::User)
            .map_or(self.history.len(), |i| first + 1 + i);
        self.history.drain(first..end);
        true
    }

    /// Forgets the context and the chat history.
    pub fn reset(&mut self) {
        self.cache.truncate(0);
        self.tokens.clear();
        self.pending = None;
        self.history.clear();
    }

    /// Encodes `text` (special tokens written in it, such as `<|im_start|>`, are parsed
    /// as special tokens) and continues the context with it; see [`Session::generate_tokens`].
    pub fn generate(
        &mut self,
        text: &str,
        params: &GenerateParams,
        on_token: impl FnMut(TokenEvent<'_>) -> ControlFlow<()>,
    ) -> Result<GenerateStats, GenerateError> {
        self.engine
            .check_text_fits(text, self.capacity() - self.len())?;
        let at_start = self.tokens.is_empty() && self.pending.is_none();
        let prompt = self.engine.prompt_tokens(text, at_start);
        self.generate_tokens(&prompt, params, on_token)
    }

    /// Appends a user turn to the history, renders the whole conversation with the chat
    /// template, runs what the context does not hold yet, and generates the assistant's
    /// reply (which is appended to the history). Returns the reply and the statistics.
    pub fn chat(
        &mut self,
        user: &str,
        params: &GenerateParams,
        on_token: impl FnMut(TokenEvent<'_>) -> ControlFlow<()>,
    ) -> Result<(String, GenerateStats), GenerateError> {
        self.engine.check_text_fits(user, self.capacity())?;
        let mut messages = self.history.clone();
        messages.push(Message::new(Role::User, user));
        let rendered = self.engine.render_chat(&messages, true)?;
        let tokens = self.engine.0.tokenizer.encode(&rendered, true);
        // Reuse the cached prefix the new rendering shares with the context.
        let common = self
            .tokens
            .iter()
            .zip(&tokens)
            .take_while(|(a, b)| a == b)
            .count();
        // Refuse before touching the session, so a failed turn leaves it as it was.
        if tokens.len() > self.cache.capacity() {
            return Err(GenerateError::PromptTooLong {
                prompt: tokens.len() - common,
                used: common,
                capacity: self.cache.capacity(),
            });
        }
        self.pending = None;
        self.cache.truncate(common);
        self.tokens.truncate(common);
        let mut reply = String::new();
        let mut on_token = on_token;
        // Cannot fail now: the rendering fits, and the tokenizer only yields vocabulary ids.
        let stats = self.generate_tokens(&tokens[common..], params, |ev| {
            reply.push_str(ev.text);
            on_token(ev)
        })?;
        messages.push(Message::new(Role::Assistant, reply.clone()));
        self.history = messages;
        Ok((reply, stats))
    }

    /// Runs `prompt` after the current context, then samples up to `max_tokens` tokens,
    /// calling `on_token` for each (return `ControlFlow::Break(())` to stop).
    pub fn generate_tokens(
        &mut self,
        prompt: &[u32],
        params: &GenerateParams,
        mut on_token: impl FnMut(TokenEvent<'_>) -> ControlFlow<()>,
    ) -> Result<GenerateStats, GenerateError> {
        let shared = Arc::clone(&self.engine.0);
        let (model, tok) = (&shared.model, &shared.tokenizer);
        let vocab = model.config().vocab_size;
        if let Some(&bad) = prompt.iter().find(|&&t| t >= vocab) {
            return Err(GenerateError::BadToken(bad));
        }
        params.sampler.check()?;
        let prompt: Vec<u32> = self.pending.iter().chain(prompt).copied().collect();
        if prompt.is_empty() && self.tokens.is_empty() {
            return Err(GenerateError::EmptyPrompt);
        }
        let (used, capacity) = (self.tokens.len(), self.cache.capacity());
        if used + prompt.len() > capacity {
            return Err(GenerateError::PromptTooLong {
                prompt: prompt.len(),
                used,
                capacity,
            });
        }
        self.pending = None;
        let start = Instant::now();
        let cancel = &params.cancel;
        let mut stop = StopReason::MaxTokens;
        let run: Vec<u32> = match self.tokens.pop() {
            // Continuing with no new tokens: re-run the last position for its logits.
            Some(last) if prompt.is_empty() => {
                self.cache.truncate(self.tokens.len());
                vec![last]
            }
            Some(last) => {
                self.tokens.push(last);
                prompt.clone()
            }
            None => prompt.clone(),
        };
        if cancel.is_cancelled() {
            stop = StopReason::Cancelled;
        } else {
            let tokens = &mut self.tokens;
            let done = model.prefill(&run, &mut self.cache, &mut self.scratch, |r, _| {
                tokens.extend_from_slice(&run[r]);
                match cancel.is_cancelled() {
                    true => ControlFlow::Break(()),
                    false => ControlFlow::Continue(()),
                }
            })?;
            if done.is_break() {
                stop = StopReason::Cancelled;
            }
        }
        let prefill = start.elapsed();
        let mut sampler = Sampler::new(params.sampler.clone());
        let mut top = Vec::new();
        let mut decoder = StreamDecoder::new(false);
        let mut held = StopHold::new(&params.stop);
        let mut generated = 0usize;
        let mut first_token_at = None;
        if stop != StopReason::Cancelled {
            stop = loop {
                if generated >= params.max_tokens {
                    break StopReason::MaxTokens;
                }
                if cancel.is_cancelled() {
                    break StopReason::Cancelled;
                }
                // Greedy: the backend's argmax (on a GPU only 4 bytes come back). Sampling
                // with a top-k: the logits that can be picked, where the backend narrows
                // them (a GPU). Either way one pass over the vocabulary's logits checks
                // they are finite.
                let narrowed = match params.sampler.is_argmax() {
                    true => false,
                    false => sampler
                        .candidates_needed(&self.tokens)
                        .is_some_and(|k| model.top_logits(&mut self.scratch, k, &mut top)),
                };
                let id = match params.sampler.is_argmax() {
                    true => model.argmax(&mut self.scratch),
                    false if narrowed => Some(sampler.sample_among(&top, &self.tokens)),
                    false => {
                        let logits = model.logits(&mut self.scratch);
                        logits
                            .iter()
                            .all(|l| l.is_finite())
                            .then(|| sampler.sample(logits, &self.tokens))
                    }
                };
                let Some(id) = id else {
                    return Err(GenerateError::NonFiniteLogits {
                        position: self.tokens.len(),
                    });
                };
                first_token_at.get_or_insert_with(|| start.elapsed());
                generated += 1;
                self.pending = Some(id);
                if !params.ignore_eos && shared.stop_ids.contains(&id) {
                    break StopReason::EndOfText;
                }
                let piece = decoder.push(tok, id).to_string();
                let (text, hit) = held.push(&piece);
                if on_token(TokenEvent {
                    id: Some(id),
                    text: &text,
                })
                .is_break()
                {
                    break StopReason::Cancelled;
                }
                if hit {
                    break StopReason::StopString;
                }
                if self.cache.len() >= self.cache.capacity() {
                    break StopReason::ContextFull;
                }
                model.forward(&[id], &mut self.cache, &mut self.scratch)?;
                self.tokens.push(id);
                self.pending = None;
            };
        }
        // Text held back for a stop string that never completed is still output.
        if stop != StopReason::StopString {
            let tail = decoder.flush().to_string();
            let rest = held.finish(&tail);
            if !rest.is_empty() {
                let _ = on_token(TokenEvent {
                    id: None,
                    text: &rest,
                });
            }
        }
        let total = start.elapsed();
        let ttft = first_token_at.unwrap_or(total);
        Ok(GenerateStats {
            prompt_tokens: prompt.len(),
            generated_tokens: generated,
            time_to_first_token: ttft,
            prefill_tok_s: rate(prompt.len(), prefill),
            decode_tok_s: rate(generated.saturating_sub(1), total.saturating_sub(ttft)),
            kv_bytes: self.cache.bytes() / self.cache.capacity().max(1) as u64
                * self.cache.len() as u64,
            stop,
        })
    }
}

/// `n` per second of `t` (0 for no time).
pub fn rate(n: usize, t: Duration) -> f64 {
    if t.is_zero() {
        0.0
    } else {
        n as f64 / t.as_secs_f64()
    }
}

/// Holds back generated text that could be the start of a stop string, so a stop
/// string is never streamed out.
struct StopHold<'a> {
    stops: &'a [String],
    text: String,
    /// Bytes of `text` already released.
    released: usize,
}

impl<'a> StopHold<'a> {
    fn new(stops: &'a [String]) -> Self {
        Self {
            stops,
            text: String::new(),
            released: 0,
        }
    }

    /// Adds `piece`; returns the text that is now safe to release and whether a stop
    /// string has appeared (the released text then ends right before it).
    fn push(&mut self, piece: &str) -> (String, bool) {
        self.text.push_str(piece);
        let pending = &self.text[self.released..];
        if let Some(at) = self
            .stops
            .iter()
            .filter(|s| !s.is_empty())
            .filter_map(|s| pending.find(s.as_str()))
            .min()
        {
            let out = pending[..at].to_string();
            self.released = self.text.len();
            return (out, true);
        }
        // Keep the longest suffix that is a proper prefix of some stop string.
        let keep = self
            .stops
            .iter()
            .flat_map(|s| {
                (1..s.len())
                    .rev()
                    .filter(move |&k| s.is_char_boundary(k))
                    .map(move |k| &s[..k])
            })
            .filter(|p| pending.ends_with(p))
            .map(str::len)
            .max()
            .unwrap_or(0);
        let cut = pending.len() - keep;
        let out = pending[..cut].to_string();
        self.released += cut;
        (out, false)
    }

    /// Releases whatever is still held, plus `tail`.
    fn finish(&mut self, tail: &str) -> String {
        self.text.push_str(tail);
        let out = self.text[self.released..].to_string();
        self.released = self.text.len();
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stop_strings_are_held_back_and_cut() {
        let stops = vec!["\nUser:".to_string()];
        let mut h = StopHold::new(&stops);
        assert_eq!(h.push("Hello"), ("Hello".into(), false));
        assert_eq!(h.push(" world\nUs"), (" world".into(), false));
        assert_eq!(h.push("er: more"), ("".into(), true));
        let mut h = StopHold::new(&stops);
        assert_eq!(h.push("a\nU"), ("a".into(), false));
        assert_eq!(h.push("nrelated"), ("\nUnrelated".into(), false));
        assert_eq!(h.finish(""), "");
    }
}
