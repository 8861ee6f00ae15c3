//! Errors of the scheduler boundary: bad requests at admission, inconsistent runner output.

use crate::kv::manager::SeqId;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SchedulerError {
    #[error("invalid scheduler config: {0}")]
    InvalidConfig(String),
    #[error("sequence {0} already exists")]
    DuplicateId(SeqId),
    #[error("sequence {0} has an empty prompt")]
    EmptyPrompt(SeqId),
    #[error("sequence {id}: prompt of {len} tokens exceeds the model's {max_model_len}")]
    PromptTooLong {
        id: SeqId,
        len: usize,
        max_model_len: usize,
    },
    #[error("sequence {0}: max_tokens must be at least 1")]
    ZeroMaxTokens(SeqId),
    #[error("runner returned no sampled token for sequence {0}, which samples this step")]
    MissingSample(SeqId),
    #[error("output for sequence {0} does not match its state (applied twice?)")]
    StaleOutput(SeqId),
}
