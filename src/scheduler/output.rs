//! Plain data handed between scheduler and runner: what to compute, and what was sampled.

use crate::kv::block_pool::BlockId;
use crate::kv::manager::SeqId;
use crate::request::FinishReason;
use crate::request::TokenLogprobs;

/// One sequence's share of a step: compute `new_token_ids` at positions
/// `num_computed_tokens .. num_computed_tokens + new_token_ids.len()`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScheduledSeq {
    pub id: SeqId,
    pub new_token_ids: Vec<u32>,
    /// Tokens whose KV is already in the cache, before this step.
    pub num_computed_tokens: usize,
    /// Covers at least `context_len()` tokens (plus any lookahead).
    pub block_table: Vec<BlockId>,
    /// After this step the sequence has computed all its tokens, so the step yields logits and
    /// a sampled token for it; false for a prefill chunk that is not the last.
    pub samples_this_step: bool,
    /// The last `num_spec_tokens` of `new_token_ids` are draft tokens (speculative decoding):
    /// the step verifies them, yielding logits for `num_spec_tokens + 1` positions and between
    /// 1 and `num_spec_tokens + 1` sampled tokens. They are not tokens of the sequence yet.
    pub num_spec_tokens: usize,
}

impl ScheduledSeq {
    pub fn num_new_tokens(&self) -> usize {
        self.new_token_ids.len()
    }

    /// Tokens in context once this step is computed (the attention's `context_len`), drafts
    /// included.
    pub fn context_len(&self) -> usize {
        self.num_computed_tokens + self.new_token_ids.len()
    }

    /// The draft tokens being verified.
    pub fn spec_token_ids(&self) -> &[u32] {
        &self.new_token_ids[self.new_token_ids.len() - self.num_spec_tokens..]
    }

    /// Logits rows the step yields for this sequence: one per verified position.
    pub fn num_logit_rows(&self) -> usize {
        if self.samples_this_step {
            self.num_spec_tokens + 1
        } else {
            0
        }
    }
}

/// Everything the runner needs for one step.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SchedulerOutput {
    pub seqs: Vec<ScheduledSeq>,
    /// Sum of `new_token_ids` lengths; never above `max_num_batched_tokens`.
    pub total_tokens: usize,
    /// Sequences that ended (finished, stopped or aborted) since the previous step: the runner
    /// may drop any state it keeps for them.
    pub finished_ids: Vec<SeqId>,
    /// Sequences preempted in this step: their KV is gone and they will come back with
    /// `num_computed_tokens` 0 (or a prefix-cache hit).
    pub preempted_ids: Vec<SeqId>,
}

impl SchedulerOutput {
    /// Nothing to compute this step.
    pub fn is_empty(&self) -> bool {
        self.seqs.is_empty()
    }
}

/// What the runner produced for a step: sampled tokens of the sequences with
/// `samples_this_step` (several per sequence once speculative tokens are verified).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ModelRunnerOutput {
    pub sampled: Vec<(SeqId, Vec<u32>)>,
    /// Logprobs of the sampled tokens, for sequences that asked for them.
    pub logprobs: Vec<(SeqId, Vec<TokenLogprobs>)>,
    /// Sequences whose grammar ended them with their last sampled token: `Stop` when the
    /// grammar is complete, `Abort` when its matcher failed.
    pub grammar_finished: Vec<(SeqId, FinishReason)>,
    /// Sequences this step failed for on their own (a NaN or infinite logits row): they get no
    /// sample and end with this error, while the rest of the batch goes on.
    pub failed: Vec<(SeqId, String)>,
}

/// A sequence's news after a step, for the output processor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SeqUpdate {
    pub id: SeqId,
    /// Tokens appended to the output this step (including a final EOS / stop token).
    pub new_token_ids: Vec<u32>,
    /// Set when the sequence ended this step; its blocks are already freed.
    pub finish_reason: Option<FinishReason>,
    /// Prompt tokens served from the prefix cache at first admission (usage reporting).
    pub num_cached_prompt_tokens: usize,
}
