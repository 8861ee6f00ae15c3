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
    /// verification costs more than it saves).
    #[serde(default)]
    pub disable_by_batch_size: Option<usize>,
}

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
        let d = SpecConfig::parse(
            r#"{"method": "draft_model", "model": "m.gguf", "num_speculative_tokens": 3}"#,
        )
        .unwrap();
        assert_eq!(d.method, SpecMethod::Draft);
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
