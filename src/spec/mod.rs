//! Speculative decoding inside continuous batching: configuration, proposers (n-gram prompt
//! lookup, draft model) and the engine-side driver that asks for drafts after each step.
//!
//! The flow of one sequence (ARCHITECTURE.md, "The one scheduling rule"): after a step
//! samples its token, [`SpecDecoder::propose`] stores up to K drafts on the scheduler's
//! `Sequence`; the next `schedule()` hands them out as extra scheduled tokens (they count
//! against the token budget); the runner computes K + 1 positions in the same forward as
//! everyone else and verifies them ([`crate::sample::SequenceSampler::verify`]); the
//! scheduler appends the accepted tokens and rolls `num_computed_tokens` back past the
//! rejected ones. Verification is lossless, so anything that cannot speculate (a grammar)
//! simply gets no drafts.
//!
//! The seam for proposers that read the target's hidden states (EAGLE-3, MTP heads) is
//! [`Proposer`]: see docs/SPECULATIVE.md.

pub mod config;
pub mod draft;
pub mod ngram;

use crate::kv::manager::SeqId;
use crate::scheduler::output::{ModelRunnerOutput, SchedulerOutput};
use crate::scheduler::Scheduler;
pub use config::{SpecConfig, SpecMethod};

/// One sequence that may speculate this step.
#[derive(Debug, Clone, Copy)]
pub struct ProposeInput<'a> {
    pub id: SeqId,
    /// Prompt and outputs; every token but the last is computed in the target's KV.
    pub tokens: &'a [u32],
    pub num_prompt_tokens: usize,
    /// The target's block table, which also addresses a draft model's own KV tensors; it
    /// covers `tokens.len() - 1 + Proposer::lookahead()` positions at least.
    pub block_table: &'a [u32],
    /// Most drafts worth proposing (K, less near max_tokens or max_model_len); may be 0.
    pub max_drafts: usize,
}

/// Proposes draft tokens for a step's speculating sequences, all at once.
pub trait Proposer: Send {
    /// Up to `max_drafts` tokens per input, in order; fewer (or none) when it has no guess.
    fn propose(&mut self, seqs: &[ProposeInput]) -> anyhow::Result<Vec<Vec<u32>>>;

    /// The sequence's KV is gone (preempted) or it ended: forget what was kept for it.
    fn reset(&mut self, _id: SeqId) {}

    /// KV slots past the sequence's tokens the proposer writes into; the scheduler reserves
    /// them with every allocation.
    fn lookahead(&self) -> usize {
        0
    }
}

/// Speculation counters (vLLM's `spec_decode_*` metrics).
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct SpecStats {
    /// Verifications of at least one draft token.
    pub num_drafts: u64,
    pub num_draft_tokens: u64,
    pub num_accepted_tokens: u64,
    /// `[i]`: drafts accepted at position i (0-based) of a proposal.
    pub accepted_per_position: Vec<u64>,
}

impl SpecStats {
    /// Records one verification of `num_draft` tokens, `num_accepted` of them accepted.
    pub fn record(&mut self, num_draft: usize, num_accepted: usize) {
        if num_draft == 0 {
            return;
        }
        self.num_drafts += 1;
        self.num_draft_tokens += num_draft as u64;
        self.num_accepted_tokens += num_accepted as u64;
        if self.accepted_per_position.len() < num_draft {
            self.accepted_per_position.resize(num_draft, 0);
        }
        for p in &mut self.accepted_per_position[..num_accepted] {
            *p += 1;
        }
    }

    /// Accepted draft tokens over proposed ones.
    pub fn acceptance_rate(&self) -> f64 {
        self.num_accepted_tokens as f64 / (self.num_draft_tokens as f64).max(1.0)
    }

    /// Tokens a verification yields on average: the accepted drafts plus the target's own.
    pub fn mean_accepted_length(&self) -> f64 {
        1.0 + self.num_accepted_tokens as f64 / (self.num_drafts as f64).max(1.0)
    }

    /// The counts added since `earlier`.
    pub fn since(&self, earlier: &SpecStats) -> SpecStats {
        let mut per = self.accepted_per_position.clone();
        for (p, e) in per.iter_mut().zip(&earlier.accepted_per_position) {
            *p -= e;
        }
        SpecStats {
            num_drafts: self.num_drafts - earlier.num_drafts,
            num_draft_tokens: self.num_draft_tokens - earlier.num_draft_tokens,
            num_accepted_tokens: self.num_accepted_tokens - earlier.num_accepted_tokens,
            accepted_per_position: per,
        }
    }
}

/// The engine's speculation: a proposer, when to use it, and the counters.
pub struct SpecDecoder {
    config: SpecConfig,
    /// The target runs on the CPU (where the default pause threshold is measured).
    on_cpu: bool,
    proposer: Box<dyn Proposer>,
    stats: SpecStats,
}

impl SpecDecoder {
    pub fn new(config: SpecConfig, proposer: Box<dyn Proposer>, on_cpu: bool) -> Self {
        Self {
            config,
            on_cpu,
            proposer,
            stats: SpecStats::default(),
        }
    }

    pub fn config(&self) -> &SpecConfig {
        &self.config
    }

    pub fn stats(&self) -> &SpecStats {
        &self.stats
    }

    /// Slots the scheduler must reserve past each sequence's tokens.
    pub fn lookahead(&self) -> usize {
        self.proposer.lookahead()
    }

    /// Counts a step's verifications: a sequence that verified k drafts and got n tokens
    /// accepted n - 1 of them.
    pub fn record_step(&mut self, sched: &SchedulerOutput, result: &ModelRunnerOutput) {
        for s in sched.seqs.iter().filter(|s| s.num_spec_tokens > 0) {
            if let Some((_, tokens)) = result.sampled.iter().find(|(id, _)| *id == s.id) {
                let accepted = tokens.len().saturating_sub(1).min(s.num_spec_tokens);
                self.stats.record(s.num_spec_tokens, accepted);
            }
        }
    }

    /// Forgets the proposer's state of sequences that lost their KV or ended.
    pub fn forget(&mut self, ids: impl IntoIterator<Item = SeqId>) {
        for id in ids {
            self.proposer.reset(id);
        }
    }

    /// Proposes drafts for the running sequences that are decoding, unless more than
    /// [`SpecConfig::pause_above`] run.
    pub fn propose(&mut self, sched: &mut Scheduler) -> anyhow::Result<()> {
        let running = sched.running_ids();
        if running.len() > self.config.pause_above(self.on_cpu) {
            return Ok(());
        }
        let k = self.config.num_speculative_tokens;
        let max_model_len = sched.max_model_len();
        let inputs: Vec<ProposeInput> = running
            .iter()
            .filter_map(|&id| sched.get(id))
            .filter(|s| s.num_output_tokens() > 0 && s.num_computed_tokens() + 1 == s.num_tokens())
            .map(|s| {
                let left = s
                    .params()
                    .max_tokens
                    .saturating_sub(s.num_output_tokens() + 1);
                let room = max_model_len.saturating_sub(s.num_tokens());
                ProposeInput {
                    id: s.id(),
                    tokens: s.all_tokens(),
                    num_prompt_tokens: s.num_prompt_tokens(),
                    block_table: sched.kv().block_table(s.id()),
                    max_drafts: k.min(left).min(room),
                }
            })
            .collect();
        if inputs.is_empty() {
            return Ok(());
        }
        let drafts = self.proposer.propose(&inputs)?;
        let limits: Vec<(SeqId, usize)> = inputs.iter().map(|i| (i.id, i.max_drafts)).collect();
        for ((id, max), mut d) in limits.into_iter().zip(drafts) {
            d.truncate(max);
            if !d.is_empty() {
                sched.set_spec_tokens(id, d);
            }
        }
        Ok(())
    }
}
