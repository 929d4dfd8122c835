//! The memory a session needs, computed before anything is allocated, so a memory
//! budget (the glasses share 1–2 GB with the camera and the display) is checked up
//! front and a model that does not fit is refused with the numbers instead of being
//! killed by the OS half-way through an answer.

use crate::backend::KvType;
use std::fmt;

/// Context positions a session gets when none is asked for. An assistant turn on the
/// glasses is a question of tens of tokens and an answer of at most a few hundred;
/// 2,048 positions hold a system prompt and several such turns, and cost 45 MiB of f16
/// KV cache on SmolLM2-135M (22.5 KiB a position) where its trained 8,192 would cost
/// 180 MiB — more than the weights. Longer contexts are asked for explicitly.
pub const DEFAULT_CONTEXT: usize = 2048;

/// The smallest context a memory budget may shrink a session to: below it a prompt
/// and a short answer no longer fit, and refusing says more than a session that
/// fails on its first turn.
pub const MIN_FITTED_CONTEXT: usize = 256;

/// Resident memory besides the weights, the KV cache and the activations: the binary's
/// code, the tokenizer's tables, the thread stacks touched and the allocator's
/// overhead. Measured with `glint run` on SmolLM2-135M (49,152-token vocabulary): peak
/// RSS minus the file, the KV positions used and the activations is 12.4–13 MiB (4 and
/// 438 positions); 16 MiB leaves room for larger vocabularies.
pub const RUNTIME_BYTES: u64 = 16 << 20;

/// What a session on a loaded model will hold resident, by part.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MemoryPlan {
    /// The model's bytes (mapped or in memory): every matrix is read per token, so all
    /// of it becomes resident.
    pub weights: u64,
    /// The KV cache for [`MemoryPlan::context`] positions.
    pub kv: u64,
    /// Activation buffers.
    pub scratch: u64,
    /// Everything else ([`RUNTIME_BYTES`]).
    pub runtime: u64,
    /// Context positions the cache is sized for.
    pub context: usize,
    /// The cache's element type.
    pub kv_type: KvType,
}

impl MemoryPlan {
    /// All of it (saturating: a plan for an absurd context is simply too large).
    pub fn total(&self) -> u64 {
        self.weights
            .saturating_add(self.kv)
            .saturating_add(self.scratch)
            .saturating_add(self.runtime)
    }
}

impl fmt::Display for MemoryPlan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "weights {} + KV cache {} ({} positions of {}) + activations {} + runtime {} = {}",
            Mib(self.weights),
            Mib(self.kv),
            self.context,
            self.kv_type.name(),
            Mib(self.scratch),
            Mib(self.runtime),
            Mib(self.total())
        )
    }
}

/// Bytes shown in MiB with one decimal (`103.4 MiB`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Mib(pub u64);

impl fmt::Display for Mib {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:.1} MiB", self.0 as f64 / (1u64 << 20) as f64)
    }
}

/// Why a size like `512MiB` could not be read.
#[derive(Clone, Debug, thiserror::Error, PartialEq, Eq)]
#[error("{0:?}: expected a size such as 512MiB, 1.5GiB, 300MB or 1048576 (bytes)")]
pub struct SizeError(String);

/// Parses a byte size: a number with an optional unit, `B`, `K`/`KiB`, `M`/`MiB`,
/// `G`/`GiB` (powers of 1024) or `KB`/`MB`/`GB` (powers of 1000); case-insensitive.
pub fn parse_size(s: &str) -> Result<u64, SizeError> {
    let err = || SizeError(s.to_string());
    let t = s.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let unit: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kib" => 1 << 10,
        "m" | "mib" => 1 << 20,
        "g" | "gib" => 1 << 30,
        "kb" => 1_000,
        "mb" => 1_000_000,
        "gb" => 1_000_000_000,
        _ => return Err(err()),
    };
    let value: f64 = num.parse().map_err(|_| err())?;
    let bytes = value * unit as f64;
    // Below 2^63 bytes: far beyond any memory, and exactly representable.
    if !(1.0..(1u64 << 63) as f64).contains(&bytes) {
        return Err(err());
    }
    Ok(bytes as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_with_binary_and_decimal_units() {
        assert_eq!(parse_size("64MiB"), Ok(64 << 20));
        assert_eq!(parse_size("64m"), Ok(64 << 20));
        assert_eq!(parse_size("1.5GiB"), Ok(3 << 29));
        assert_eq!(parse_size("300MB"), Ok(300_000_000));
        assert_eq!(parse_size(" 4096 "), Ok(4096));
        assert_eq!(parse_size("2 KiB"), Ok(2048));
        for bad in [
            "",
            "MiB",
            "-1MiB",
            "0",
            "1.2.3M",
            "12 parsecs",
            "nan",
            "1e400",
            "99999999999GiB",
        ] {
            assert!(parse_size(bad).is_err(), "{bad:?} parsed");
        }
    }

    #[test]
    fn a_plan_names_every_part_and_saturates() {
        let plan = MemoryPlan {
            weights: 100 << 20,
            kv: 45 << 20,
            scratch: 3 << 20,
            runtime: RUNTIME_BYTES,
            context: 2048,
            kv_type: KvType::F16,
        };
        assert_eq!(plan.total(), 164 << 20);
        assert_eq!(
            plan.to_string(),
            "weights 100.0 MiB + KV cache 45.0 MiB (2048 positions of f16) + activations 3.0 MiB + runtime 16.0 MiB = 164.0 MiB"
        );
        let huge = MemoryPlan {
            kv: u64::MAX,
            ..plan
        };
        assert_eq!(huge.total(), u64::MAX);
    }
}
