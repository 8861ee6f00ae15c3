//! Scheduler knobs: batch limits, chunking, prefix caching and the waiting-queue policy.

use crate::kv::manager::KvCacheManager;

/// Order in which waiting sequences are admitted (and running ones preempted, in reverse).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SchedulingPolicy {
    /// First come, first served.
    #[default]
    Fcfs,
    /// By `(priority, arrival)`: a lower priority value is served first, as in vLLM.
    Priority,
}

#[derive(Debug, Clone, PartialEq)]
pub struct SchedulerConfig {
    /// Most sequences running at once (each holds KV blocks).
    pub max_num_seqs: usize,
    /// Token budget of one step, shared by decodes and prefill chunks.
    pub max_num_batched_tokens: usize,
    pub block_size: usize,
    pub enable_prefix_caching: bool,
    /// Cap on the tokens one sequence computes in a step, so a long prompt is split into
    /// chunks that leave room for others; `None`: only the step budget limits it.
    pub long_prefill_token_threshold: Option<usize>,
    pub policy: SchedulingPolicy,
    /// Extra slots reserved past the scheduled tokens for speculative tokens (0 without a
    /// proposer).
    pub num_lookahead_tokens: usize,
}

impl Default for SchedulerConfig {
    fn default() -> Self {
        Self {
            max_num_seqs: 256,
            max_num_batched_tokens: 2048,
            block_size: KvCacheManager::DEFAULT_BLOCK_SIZE,
            enable_prefix_caching: true,
            long_prefill_token_threshold: None,
            policy: SchedulingPolicy::Fcfs,
            num_lookahead_tokens: 0,
        }
    }
}
