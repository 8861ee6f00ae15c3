//! One generation as the scheduler sees it: its tokens, how many are computed, its state.
//!
//! The one counter that matters is `num_computed_tokens`: the scheduler's only job is to make it
//! catch up with `num_tokens()` (prompt plus outputs so far). Invariant:
//! `num_computed_tokens < num_tokens()` while the sequence waits for a step, because the last
//! token (the latest sampled one, or the prompt's last) is never computed before it is sampled
//! from.

use crate::kv::manager::SeqId;
use crate::request::{FinishReason, SamplingParams};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SeqStatus {
    /// Not yet admitted.
    Waiting,
    /// Holds KV blocks and is scheduled every step while budget lasts.
    Running,
    /// Was running, lost its KV to make room; waits to recompute prompt and outputs.
    Preempted,
    Finished(FinishReason),
}

#[derive(Debug, Clone)]
pub struct Sequence {
    pub(super) id: SeqId,
    /// Prompt followed by the generated tokens.
    pub(super) token_ids: Vec<u32>,
    pub(super) num_prompt_tokens: usize,
    pub(super) num_computed_tokens: usize,
    pub(super) status: SeqStatus,
    pub(super) priority: i32,
    /// Admission order, set by the scheduler on `add`.
    pub(super) arrival: u64,
    pub(super) params: SamplingParams,
    pub(super) cache_salt: u64,
    pub(super) num_cached_prompt_tokens: usize,
    pub(super) num_preemptions: u32,
    /// Draft tokens proposed for the next step (speculative decoding): scheduled after the
    /// sequence's last token and verified in the same forward; never part of `token_ids`.
    pub(super) spec_token_ids: Vec<u32>,
}

impl Sequence {
    pub fn new(id: SeqId, prompt_tokens: Vec<u32>, params: SamplingParams) -> Self {
        Self {
            id,
            num_prompt_tokens: prompt_tokens.len(),
            token_ids: prompt_tokens,
            num_computed_tokens: 0,
            status: SeqStatus::Waiting,
            priority: 0,
            arrival: 0,
            params,
            cache_salt: 0,
            num_cached_prompt_tokens: 0,
            num_preemptions: 0,
            spec_token_ids: Vec::new(),
        }
    }

    /// Lower values are served first under the priority policy.
    pub fn with_priority(mut self, priority: i32) -> Self {
        self.priority = priority;
        self
    }

    /// Prefix-cache namespace: only sequences with equal salts share cached blocks.
    pub fn with_cache_salt(mut self, salt: u64) -> Self {
        self.cache_salt = salt;
        self
    }

    pub fn id(&self) -> SeqId {
        self.id
    }

    pub fn prompt_tokens(&self) -> &[u32] {
        &self.token_ids[..self.num_prompt_tokens]
    }

    pub fn output_tokens(&self) -> &[u32] {
        &self.token_ids[self.num_prompt_tokens..]
    }

    /// Prompt then outputs.
    pub fn all_tokens(&self) -> &[u32] {
        &self.token_ids
    }

    pub fn num_tokens(&self) -> usize {
        self.token_ids.len()
    }

    pub fn num_prompt_tokens(&self) -> usize {
        self.num_prompt_tokens
    }

    pub fn num_output_tokens(&self) -> usize {
        self.token_ids.len() - self.num_prompt_tokens
    }

    pub fn num_computed_tokens(&self) -> usize {
        self.num_computed_tokens
    }

    pub fn status(&self) -> SeqStatus {
        self.status
    }

    pub fn priority(&self) -> i32 {
        self.priority
    }

    pub fn arrival(&self) -> u64 {
        self.arrival
    }

    pub fn params(&self) -> &SamplingParams {
        &self.params
    }

    pub fn cache_salt(&self) -> u64 {
        self.cache_salt
    }

    pub fn num_cached_prompt_tokens(&self) -> usize {
        self.num_cached_prompt_tokens
    }

    pub fn num_preemptions(&self) -> u32 {
        self.num_preemptions
    }

    /// Draft tokens waiting to be verified in the next step.
    pub fn spec_token_ids(&self) -> &[u32] {
        &self.spec_token_ids
    }

    /// Only its latest token is left to compute: the next step is a decode.
    pub fn is_decoding(&self) -> bool {
        self.num_output_tokens() > 0 && self.num_computed_tokens + 1 == self.num_tokens()
    }

    /// Whether the latest token ends the generation, and why.
    ///
    /// A stop token wins over the length limit when both hold: the model ended on its own.
    /// EOS and stop tokens count only once `min_tokens` outputs exist.
    pub fn check_stop(&self, eos_token_ids: &[u32], max_model_len: usize) -> Option<FinishReason> {
        let p = &self.params;
        let last = *self.output_tokens().last()?;
        let n = self.num_output_tokens();
        if n >= p.min_tokens
            && ((!p.ignore_eos && eos_token_ids.contains(&last))
                || p.stop_token_ids.contains(&last))
        {
            return Some(FinishReason::Stop);
        }
        (n >= p.max_tokens || self.num_tokens() >= max_model_len).then_some(FinishReason::Length)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seq_with_outputs(params: SamplingParams, outputs: &[u32]) -> Sequence {
        let mut s = Sequence::new(1, vec![5, 6], params);
        s.token_ids.extend_from_slice(outputs);
        s
    }

    #[test]
    fn stop_conditions() {
        let eos = [2];
        let p = SamplingParams::greedy(3);
        assert_eq!(seq_with_outputs(p.clone(), &[]).check_stop(&eos, 100), None);
        assert_eq!(
            seq_with_outputs(p.clone(), &[7]).check_stop(&eos, 100),
            None
        );
        assert_eq!(
            seq_with_outputs(p.clone(), &[2]).check_stop(&eos, 100),
            Some(FinishReason::Stop)
        );
        assert_eq!(
            seq_with_outputs(p.clone(), &[7, 7, 7]).check_stop(&eos, 100),
            Some(FinishReason::Length)
        );
        assert_eq!(
            seq_with_outputs(p.clone(), &[7, 7, 2]).check_stop(&eos, 100),
            Some(FinishReason::Stop),
            "eos as the last allowed token is still a stop"
        );
        assert_eq!(
            seq_with_outputs(p.clone(), &[7]).check_stop(&eos, 3),
            Some(FinishReason::Length)
        );

        let ignore = SamplingParams {
            ignore_eos: true,
            stop_token_ids: vec![9],
            ..p.clone()
        };
        assert_eq!(
            seq_with_outputs(ignore.clone(), &[2]).check_stop(&eos, 100),
            None
        );
        assert_eq!(
            seq_with_outputs(ignore, &[9]).check_stop(&eos, 100),
            Some(FinishReason::Stop)
        );

        let min = SamplingParams { min_tokens: 2, ..p };
        assert_eq!(
            seq_with_outputs(min.clone(), &[2]).check_stop(&eos, 100),
            None
        );
        assert_eq!(
            seq_with_outputs(min, &[2, 2]).check_stop(&eos, 100),
            Some(FinishReason::Stop)
        );
    }
}
