//! `--speculative-config`: vLLM's JSON, parsed and checked once.

use serde::Deserialize;

/// Where draft tokens come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SpecMethod {
    /// Prompt lookup: the tokens that followed the latest earlier occurrence of the
    /// sequence's last n-gram.
    Ngram,
    /// A smaller model with the target's vocabulary (vLLM also calls it `draft_model`).
    #[serde(alias = "draft_model")]
    Draft,
}

/// The speculative-decoding configuration (vLLM's field names). Unknown fields are refused:
/// an option we do not implement must not be silently ignored.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SpecConfig {
    pub method: SpecMethod,
    /// The draft model (local HF dir, .gguf file, repo id); `draft` only.
    #[serde(default)]
    pub model: Option<String>,
    /// Draft tokens proposed per step (K); verification computes K + 1 positions.
    pub num_speculative_tokens: usize,
    #[serde(default = "default_lookup_min")]
    pub prompt_lookup_min: usize,
    #[serde(default = "default_lookup_max")]
    pub prompt_lookup_max: usize,
    /// With more running sequences than this, no drafts are proposed (at high load
    /// verification costs more than it saves). Unset: [`SpecConfig::pause_above`]'s default.
    #[serde(default)]
    pub disable_by_batch_size: Option<usize>,
}

/// Verify rows per step (running sequences x (K + 1)) up to which speculation still pays on
/// the CPU, the default pause threshold when `disable_by_batch_size` is unset. The f32 target's
/// forward costs about one row's time up to a few rows per sequence at batch 1, but at batch
/// 16 it is compute-bound (3 rows per sequence cost 1.5x one), and a Q4_1 draft's forward at
/// batch 16 costs 0.8x the f32 target's, so a draft step there is slower per token than plain
/// decoding (benches/results/spec-cpu-*/ and docs/SPECULATIVE.md, "Where the time goes").
pub const CPU_VERIFY_ROW_BUDGET_NGRAM: usize = 32;
/// As [`CPU_VERIFY_ROW_BUDGET_NGRAM`] for a draft model, whose own forwards grow with the batch.
pub const CPU_VERIFY_ROW_BUDGET_DRAFT: usize = 16;

/// The same on a GPU, where a forward's cost is flat over far more rows (not measured yet:
/// benches/spec_gpu.sh prints the verify-cost curve).
pub const GPU_VERIFY_ROW_BUDGET: usize = 512;

fn default_lookup_min() -> usize {
    2
}

fn default_lookup_max() -> usize {
    4
}

#[derive(Debug, thiserror::Error)]
pub enum SpecConfigError {
    #[error("--speculative-config: {0}")]
    Json(#[from] serde_json::Error),
    #[error("--speculative-config: {0}")]
    Invalid(String),
}

impl SpecConfig {
    pub fn parse(json: &str) -> Result<Self, SpecConfigError> {
        let c: SpecConfig = serde_json::from_str(json)?;
        c.validate()?;
        Ok(c)
    }

    /// KV slots past a sequence's tokens the proposer writes into (a draft model's draft
    /// positions); the scheduler reserves them and the cache must be sized for them.
    pub fn lookahead(&self) -> usize {
        match self.method {
            SpecMethod::Ngram => 0,
            SpecMethod::Draft => self.num_speculative_tokens,
        }
    }

    /// Speculation pauses while more sequences than this run: `disable_by_batch_size`, or by
    /// default as many as fit the device's verify-row budget with K + 1 rows each (at least 1).
    pub fn pause_above(&self, on_cpu: bool) -> usize {
        self.disable_by_batch_size.unwrap_or_else(|| {
            let budget = match (on_cpu, self.method) {
                (true, SpecMethod::Ngram) => CPU_VERIFY_ROW_BUDGET_NGRAM,
                (true, SpecMethod::Draft) => CPU_VERIFY_ROW_BUDGET_DRAFT,
                (false, _) => GPU_VERIFY_ROW_BUDGET,
            };
            (budget / (self.num_speculative_tokens + 1)).max(1)
        })
    }

    pub fn validate(&self) -> Result<(), SpecConfigError> {
        let bad = |m: &str| Err(SpecConfigError::Invalid(m.to_string()));
        if self.num_speculative_tokens == 0 {
            return bad("num_speculative_tokens must be positive");
        }
        if self.num_speculative_tokens > 32 {
            return bad("num_speculative_tokens above 32 is not supported");
        }
        match self.method {
            SpecMethod::Ngram => {
                if self.model.is_some() {
                    return bad("`model` is for method \"draft\"; \"ngram\" needs none");
                }
                if self.prompt_lookup_min == 0 || self.prompt_lookup_min > self.prompt_lookup_max {
                    return bad("need 1 <= prompt_lookup_min <= prompt_lookup_max");
                }
            }
            SpecMethod::Draft => {
                if self.model.is_none() {
                    return bad("method \"draft\" needs `model`");
                }
            }
        }
        if self.disable_by_batch_size == Some(0) {
            return bad("disable_by_batch_size must be positive when set");
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_vllm_style_and_refuses_the_rest() {
        let c = SpecConfig::parse(
            r#"{"method": "ngram", "num_speculative_tokens": 4, "prompt_lookup_max": 3, "disable_by_batch_size": 8}"#,
        )
        .unwrap();
        assert_eq!(c.method, SpecMethod::Ngram);
        assert_eq!((c.prompt_lookup_min, c.prompt_lookup_max), (2, 3));
        assert_eq!(c.disable_by_batch_size, Some(8));
        assert_eq!((c.pause_above(true), c.pause_above(false)), (8, 8));
        let d = SpecConfig::parse(
            r#"{"method": "draft_model", "model": "m.gguf", "num_speculative_tokens": 3}"#,
        )
        .unwrap();
        assert_eq!(d.method, SpecMethod::Draft);
        // Unset: the verify-row budget over K + 1 rows per sequence.
        assert_eq!(d.pause_above(true), CPU_VERIFY_ROW_BUDGET_DRAFT / 4);
        assert_eq!(d.pause_above(false), GPU_VERIFY_ROW_BUDGET / 4);
        for bad in [
            r#"{"method": "eagle", "num_speculative_tokens": 3}"#,
            r#"{"method": "ngram", "num_speculative_tokens": 0}"#,
            r#"{"method": "draft", "num_speculative_tokens": 3}"#,
            r#"{"method": "ngram", "num_speculative_tokens": 3, "draft_tensor_parallel_size": 1}"#,
            r#"{"method": "ngram", "num_speculative_tokens": 3, "prompt_lookup_min": 5}"#,
        ] {
            let e = SpecConfig::parse(bad).unwrap_err().to_string();
            assert!(e.starts_with("--speculative-config"), "{bad}: {e}");
        }
    }
}
