//! Token sampling: repetition penalty, then top-k, top-p, min-p and temperature, then a
//! seeded draw (llama.cpp's default order), or greedy when the temperature is 0.

use glint_format::SamplingDefaults;

/// Sampling settings. The defaults follow MediaPipe/llama.cpp: temperature 0.8,
/// top-k 40, top-p 0.95, min-p 0.05, no repetition penalty.
#[derive(Clone, Debug, PartialEq)]
pub struct SamplerConfig {
    /// Softmax temperature; `0` picks the most likely token (greedy).
    pub temperature: f32,
    /// Keep only the `k` most likely tokens (`0` = all).
    pub top_k: usize,
    /// Keep the smallest set of tokens whose probability reaches `p` (`1` = all).
    pub top_p: f32,
    /// Drop tokens less likely than `min_p` times the most likely one (`0` = none).
    pub min_p: f32,
    /// Divide positive (multiply negative) logits of recent tokens by this (`1` = off).
    pub repeat_penalty: f32,
    /// How many recent tokens the penalty looks at.
    pub repeat_last_n: usize,
    /// Seed of the draw; the same seed, prompt and settings give the same tokens.
    pub seed: u64,
}

impl Default for SamplerConfig {
    fn default() -> Self {
        Self {
            temperature: 0.8,
            top_k: 40,
            top_p: 0.95,
            min_p: 0.05,
            repeat_penalty: 1.0,
            repeat_last_n: 64,
            seed: 0,
        }
    }
}

impl SamplerConfig {
    /// Greedy decoding.
    pub fn greedy() -> Self {
        Self {
            temperature: 0.0,
            ..Self::default()
        }
    }

    /// True when sampling is the argmax of the logits as they are (no temperature, no
    /// repetition penalty), so a backend may compute it where the logits are.
    pub fn is_argmax(&self) -> bool {
        self.temperature <= 0.0 && self.repeat_penalty == 1.0
    }

    /// Checks every setting is in its range: a finite temperature of at least 0, top-p
    /// and min-p in `[0, 1]`, a finite repetition penalty above 0. Out-of-range values
    /// would not panic, but NaN picks arbitrary tokens and a penalty of 0 makes every
    /// recent token infinitely likely (one token repeated forever).
    pub fn check(&self) -> Result<(), SamplerError> {
        let bad = |name: &'static str, value: f32, range: &'static str| SamplerError {
            name,
            value,
            range,
        };
        if !(self.temperature.is_finite() && self.temperature >= 0.0) {
            return Err(bad("temperature", self.temperature, "a finite number >= 0"));
        }
        if !(0.0..=1.0).contains(&self.top_p) {
            return Err(bad("top-p", self.top_p, "between 0 and 1"));
        }
        if !(0.0..=1.0).contains(&self.min_p) {
            return Err(bad("min-p", self.min_p, "between 0 and 1"));
        }
        if !(self.repeat_penalty.is_finite() && self.repeat_penalty > 0.0) {
            return Err(bad(
                "repeat penalty",
                self.repeat_penalty,
                "a finite number > 0",
            ));
        }
        Ok(())
    }

    /// A model's recommended settings (`ModelConfig::sampling`), else the defaults
    /// (llama.cpp's).
    pub fn for_model(recommended: Option<SamplingDefaults>) -> Self {
        let base = Self::default();
        let Some(d) = recommended else { return base };
        Self {
            temperature: d.temperature,
            top_k: d.top_k as usize,
            top_p: d.top_p,
            min_p: d.min_p,
            repeat_penalty: d.repeat_penalty,
            ..base
        }
    }
}

/// A sampling setting outside its range ([`SamplerConfig::check`]).
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
#[error("{name} {value} is out of range: expected {range}")]
pub struct SamplerError {
    /// The setting.
    pub name: &'static str,
    /// The value given.
    pub value: f32,
    /// What is accepted.
    pub range: &'static str,
}

/// A sampler with its random state and a reused candidate buffer.
pub struct Sampler {
    config: SamplerConfig,
    rng: u64,
    candidates: Vec<(f32, u32)>,
    /// Probabilities, then draw weights, of the candidates (reused: no allocation per token).
    weights: Vec<f32>,
}

impl Sampler {
    /// A sampler seeded from `config.seed`.
    pub fn new(config: SamplerConfig) -> Self {
        let rng = config.seed ^ 0x9e37_79b9_7f4a_7c15;
        Self {
            config,
            rng,
            candidates: Vec::new(),
            weights: Vec::new(),
        }
    }

    /// The settings.
    pub fn config(&self) -> &SamplerConfig {
        &self.config
    }

    /// splitmix64: small, fast and reproducible across platforms.
    fn next_f32(&mut self) -> f32 {
        self.rng = self.rng.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.rng;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        ((z ^ (z >> 31)) >> 40) as f32 / (1u64 << 24) as f32
    }

    /// Picks the next token from `logits`, given the tokens so far (`history`).
    pub fn sample(&mut self, logits: &[f32], history: &[u32]) -> u32 {
        // Drawn up front so every call advances the generator once, whatever the filters keep.
        let draw = if self.config.temperature > 0.0 {
            self.next_f32()
        } else {
            0.0
        };
        let c = &self.config;
        if c.temperature <= 0.0 {
            return argmax(
                logits
                    .iter()
                    .enumerate()
                    .map(|(i, &l)| penalised(c, history, i as u32, l)),
            );
        }
        self.candidates.clear();
        self.candidates.extend(
            logits
                .iter()
                .enumerate()
                .map(|(i, &l)| (penalised(c, history, i as u32, l), i as u32)),
        );
        self.pick(draw)
    }

    /// How many of the largest logits [`Sampler::sample_among`] needs to pick as
    /// [`Sampler::sample`] would from all of them: the top-k plus one per distinct
    /// penalised recent token (a penalty only lowers a logit, so it can push a token out
    /// of the top k, never in). `None` when sampling needs every logit (greedy, or no
    /// top-k).
    pub fn candidates_needed(&self, history: &[u32]) -> Option<usize> {
        let c = &self.config;
        if c.temperature <= 0.0 || c.top_k == 0 {
            return None;
        }
        let penalised = match c.repeat_penalty == 1.0 {
            true => 0,
            false => {
                let mut recent = history[history.len().saturating_sub(c.repeat_last_n)..].to_vec();
                recent.sort_unstable();
                recent.dedup();
                recent.len()
            }
        };
        Some(c.top_k + penalised)
    }

    /// [`Sampler::sample`] from `top`, (logit, id) pairs in any order holding every logit
    /// at least the [`Sampler::candidates_needed`]-th largest (ties included): the same
    /// token as from all logits, for the same state. A GPU sends back only these.
    pub fn sample_among(&mut self, top: &[(f32, u32)], history: &[u32]) -> u32 {
        let draw = self.next_f32();
        let c = &self.config;
        self.candidates.clear();
        self.candidates.extend(
            top.iter()
                .map(|&(l, id)| (penalised(c, history, id, l), id)),
        );
        self.pick(draw)
    }

    /// Top-k, top-p, min-p and temperature over `self.candidates`, then the draw.
    fn pick(&mut self, draw: f32) -> u32 {
        let c = &self.config;
        let cands = &mut self.candidates;
        let k = if c.top_k == 0 {
            cands.len()
        } else {
            c.top_k.min(cands.len())
        };
        let by_logit = |a: &(f32, u32), b: &(f32, u32)| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1));
        if k < cands.len() {
            cands.select_nth_unstable_by(k - 1, by_logit);
            cands.truncate(k);
        }
        cands.sort_unstable_by(by_logit);
        // Softmax at temperature 1 for the p filters (as llama.cpp), then temperature.
        let max = cands[0].0;
        let probs = &mut self.weights;
        probs.clear();
        probs.extend(cands.iter().map(|(l, _)| (l - max).exp()));
        let total: f32 = probs.iter().sum();
        let mut keep = cands.len();
        let mut cum = 0.0;
        for (i, p) in probs.iter().enumerate() {
            cum += p / total;
            if cum >= c.top_p {
                keep = keep.min(i + 1);
                break;
            }
        }
        if c.min_p > 0.0 {
            let cutoff = c.min_p * probs[0];
            keep = keep.min(probs.iter().take_while(|&&p| p >= cutoff).count().max(1));
        }
        cands.truncate(keep);
        let weights = probs;
        weights.clear();
        weights.extend(cands.iter().map(|(l, _)| ((l - max) / c.temperature).exp()));
        let sum: f32 = weights.iter().sum();
        let mut r = draw * sum;
        for (w, &(_, id)) in weights.iter().zip(cands.iter()) {
            if r < *w {
                return id;
            }
            r -= w;
        }
        cands[cands.len() - 1].1
    }
}

/// `l`, the logit of `id`, after the repetition penalty over `history`'s recent tokens.
fn penalised(c: &SamplerConfig, history: &[u32], id: u32, l: f32) -> f32 {
    if c.repeat_penalty == 1.0 {
        return l;
    }
    let recent = &history[history.len().saturating_sub(c.repeat_last_n)..];
    match recent.contains(&id) {
        true if l > 0.0 => l / c.repeat_penalty,
        true => l * c.repeat_penalty,
        false => l,
    }
}

/// Index of the largest value (the first on ties).
pub fn argmax(values: impl Iterator<Item = f32>) -> u32 {
    let mut best = (f32::NEG_INFINITY, 0u32);
    for (i, v) in values.enumerate() {
        if v > best.0 {
            best = (v, i as u32);
        }
    }
    best.1
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn greedy_takes_the_argmax() {
        let mut s = Sampler::new(SamplerConfig::greedy());
        assert_eq!(s.sample(&[0.1, 3.0, 2.9], &[]), 1);
    }

    #[test]
    fn same_seed_same_tokens_and_filters_apply() {
        let logits: Vec<f32> = (0..100).map(|i| (i as f32 * 0.37).sin() * 3.0).collect();
        let cfg = SamplerConfig {
            seed: 42,
            ..SamplerConfig::default()
        };
        let draw = |cfg: &SamplerConfig| {
            let mut s = Sampler::new(cfg.clone());
            (0..50).map(|_| s.sample(&logits, &[])).collect::<Vec<_>>()
        };
        assert_eq!(draw(&cfg), draw(&cfg));
        assert_ne!(
            draw(&cfg),
            draw(&SamplerConfig {
                seed: 43,
                ..cfg.clone()
            })
        );
        let top1 = argmax(logits.iter().copied());
        let k1 = SamplerConfig {
            top_k: 1,
            ..cfg.clone()
        };
        assert!(draw(&k1).iter().all(|&t| t == top1));
        let strict = SamplerConfig {
            min_p: 0.999,
            ..cfg
        };
        assert!(draw(&strict).iter().all(|&t| t == top1));
    }

    /// Every (logit, id) at least the `k`-th largest logit, ties included, reversed.
    fn top_superset(logits: &[f32], k: usize) -> Vec<(f32, u32)> {
        let mut sorted = logits.to_vec();
        sorted.sort_unstable_by(|a, b| b.total_cmp(a));
        let t = sorted[k.min(logits.len()) - 1];
        let mut top: Vec<(f32, u32)> = (0..logits.len() as u32)
            .map(|i| (logits[i as usize], i))
            .filter(|&(l, _)| l >= t)
            .collect();
        top.reverse();
        top
    }

    #[test]
    fn sampling_among_the_needed_top_logits_picks_as_from_all() {
        // Logits with a few ties (rounded to 1/64); the recent tokens are the 30 largest, each
        // penalised out of the top k.
        let logits: Vec<f32> = (0..500)
            .map(|i| ((i as f32 * 0.731).sin() * 192.0).round() / 64.0)
            .collect();
        let mut by_logit: Vec<u32> = (0..500).collect();
        by_logit.sort_by(|&a, &b| logits[b as usize].total_cmp(&logits[a as usize]));
        let history: Vec<u32> = by_logit[..30].iter().rev().copied().collect();
        for (top_k, repeat_penalty, top_p) in [(40, 1.0, 0.95), (5, 4.0, 1.0), (1, 9.0, 0.5)] {
            let cfg = SamplerConfig {
                top_k,
                repeat_penalty,
                top_p,
                temperature: 1.5,
                min_p: 0.0,
                ..SamplerConfig::default()
            };
            let (mut all, mut among) = (Sampler::new(cfg.clone()), Sampler::new(cfg));
            let need = among.candidates_needed(&history).unwrap();
            let want = top_k + if repeat_penalty == 1.0 { 0 } else { 30 };
            assert_eq!(need, want);
            let top = top_superset(&logits, need);
            for _ in 0..200 {
                assert_eq!(
                    all.sample(&logits, &history),
                    among.sample_among(&top, &history)
                );
            }
        }
        let greedy = Sampler::new(SamplerConfig::greedy());
        assert_eq!(greedy.candidates_needed(&history), None);
    }

    #[test]
    fn out_of_range_settings_are_refused() {
        assert_eq!(SamplerConfig::default().check(), Ok(()));
        assert_eq!(SamplerConfig::greedy().check(), Ok(()));
        let with = |f: fn(&mut SamplerConfig)| {
            let mut c = SamplerConfig::default();
            f(&mut c);
            c.check().map_err(|e| e.name)
        };
        assert_eq!(with(|c| c.temperature = f32::NAN), Err("temperature"));
        assert_eq!(with(|c| c.temperature = -1.0), Err("temperature"));
        assert_eq!(with(|c| c.temperature = f32::INFINITY), Err("temperature"));
        assert_eq!(with(|c| c.top_p = 2.0), Err("top-p"));
        assert_eq!(with(|c| c.top_p = f32::NAN), Err("top-p"));
        assert_eq!(with(|c| c.min_p = -0.1), Err("min-p"));
        assert_eq!(with(|c| c.repeat_penalty = 0.0), Err("repeat penalty"));
        assert_eq!(with(|c| c.repeat_penalty = f32::NAN), Err("repeat penalty"));
        assert_eq!(with(|c| c.top_p = 1.0), Ok(()));
    }

    #[test]
    fn repetition_penalty_lowers_recent_tokens() {
        let cfg = SamplerConfig {
            repeat_penalty: 2.0,
            ..SamplerConfig::greedy()
        };
        let mut s = Sampler::new(cfg);
        assert_eq!(s.sample(&[1.0, 1.5], &[1]), 0);
    }
}
