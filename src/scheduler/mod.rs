//! Continuous-batching scheduler: hands each step's token budget to running, then waiting
//! sequences, so every sequence's `num_computed_tokens` catches up with its `num_tokens`.
//!
//! There is no prefill phase and no decode phase (ARCHITECTURE.md, "The one scheduling rule").
//! A decode is a sequence one token behind, a prefill chunk one many tokens behind, a prefix-cache
//! hit starts a sequence with `num_computed_tokens > 0`, and preemption by recompute resets it to
//! zero. Ids and counts only: no tensors here.
//!
//! Step loop: `schedule()` -> runner -> `update_from_output()`, strictly alternating.

pub mod config;
pub mod error;
pub mod output;
pub mod sequence;
mod waiting;

use std::collections::HashMap;

pub use config::{SchedulerConfig, SchedulingPolicy};
pub use error::SchedulerError;
pub use output::{ModelRunnerOutput, ScheduledSeq, SchedulerOutput, SeqUpdate};
pub use sequence::{SeqStatus, Sequence};

use crate::kv::block_pool::PrefixCacheStats;
use crate::kv::manager::KvCacheManager;
pub use crate::kv::manager::SeqId;
use crate::request::FinishReason;
use waiting::WaitingQueue;

/// Numbers for metrics.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct SchedulerStats {
    pub num_running: usize,
    /// Including preempted sequences.
    pub num_waiting: usize,
    /// Fraction of KV blocks in use.
    pub kv_usage: f64,
    pub prefix_cache: PrefixCacheStats,
    /// Preemptions since start.
    pub num_preemptions: u64,
}

impl SchedulerStats {
    pub fn prefix_cache_hit_rate(&self) -> f64 {
        self.prefix_cache.hit_rate()
    }
}

/// Read access to live sequences: the scheduler owns every sequence's tokens, and runners
/// read a sequence's prompt and outputs (penalties, min_tokens, speculative verification)
/// through this view instead of keeping copies that would need their own rollback.
pub trait SeqTokens {
    fn sequence(&self, id: SeqId) -> Option<&Sequence>;
}

impl SeqTokens for Scheduler {
    fn sequence(&self, id: SeqId) -> Option<&Sequence> {
        self.seqs.get(&id)
    }
}

/// No sequences: for runners that need no tokens (tests).
impl SeqTokens for () {
    fn sequence(&self, _: SeqId) -> Option<&Sequence> {
        None
    }
}

#[derive(Debug)]
pub struct Scheduler {
    config: SchedulerConfig,
    kv: KvCacheManager,
    eos_token_ids: Vec<u32>,
    max_model_len: usize,
    /// Every live (not finished) sequence.
    seqs: HashMap<SeqId, Sequence>,
    waiting: WaitingQueue,
    /// In admission order; under FCFS the last one is preempted first.
    running: Vec<SeqId>,
    finished_since_last_step: Vec<SeqId>,
    next_arrival: u64,
    num_preemptions: u64,
}

impl Scheduler {
    /// `num_blocks` KV blocks of `config.block_size` tokens must hold at least one sequence of
    /// `max_model_len` tokens (plus lookahead): otherwise a lone sequence could never finish.
    pub fn new(
        config: SchedulerConfig,
        num_blocks: usize,
        max_model_len: usize,
        eos_token_ids: Vec<u32>,
    ) -> Result<Self, SchedulerError> {
        let bad = |m: &str| Err(SchedulerError::InvalidConfig(m.into()));
        if config.max_num_seqs == 0 || config.max_num_batched_tokens == 0 {
            return bad("max_num_seqs and max_num_batched_tokens must be positive");
        }
        if config.block_size == 0 || max_model_len == 0 {
            return bad("block_size and max_model_len must be positive");
        }
        if config.long_prefill_token_threshold == Some(0) {
            return bad("long_prefill_token_threshold must be positive when set");
        }
        if num_blocks * config.block_size < max_model_len + config.num_lookahead_tokens {
            return bad(&format!(
                "{num_blocks} blocks of {} tokens cannot hold one sequence of max_model_len {max_model_len}",
                config.block_size
            ));
        }
        Ok(Self {
            kv: KvCacheManager::new(num_blocks, config.block_size, config.enable_prefix_caching),
            waiting: WaitingQueue::new(config.policy),
            config,
            eos_token_ids,
            max_model_len,
            seqs: HashMap::new(),
            running: Vec::new(),
            finished_since_last_step: Vec::new(),
            next_arrival: 0,
            num_preemptions: 0,
        })
    }

    pub fn config(&self) -> &SchedulerConfig {
        &self.config
    }

    pub fn kv(&self) -> &KvCacheManager {
        &self.kv
    }

    pub fn max_model_len(&self) -> usize {
        self.max_model_len
    }

    /// A live sequence (finished ones are dropped).
    pub fn get(&self, id: SeqId) -> Option<&Sequence> {
        self.seqs.get(&id)
    }

    pub fn num_running(&self) -> usize {
        self.running.len()
    }

    /// Waiting for admission, preempted ones included.
    pub fn num_waiting(&self) -> usize {
        self.waiting.len()
    }

    /// Sequences not finished: waiting, preempted or running.
    pub fn num_live(&self) -> usize {
        self.seqs.len()
    }

    /// The block accounting, checked after every engine step in debug builds and tests:
    /// - the KV manager's own invariants (free queue = blocks with ref count 0; every block's
    ///   ref count = the number of block tables holding it);
    /// - the sequences holding block tables are exactly the running ones, each table covering
    ///   the sequence's computed tokens; waiting and preempted sequences hold none;
    /// - so used blocks (ref count > 0) = the distinct blocks of the running sequences' tables.
    ///   A block whose contents only the prefix cache remembers is free (ref count 0, in the
    ///   free queue, evictable) and is not used.
    pub fn check_invariants(&self) -> Result<(), String> {
        self.kv.check_invariants()?;
        if self.running.len() + self.waiting.len() != self.seqs.len() {
            return Err(format!(
                "{} running + {} waiting != {} live sequences",
                self.running.len(),
                self.waiting.len(),
                self.seqs.len()
            ));
        }
        let bs = self.kv.block_size();
        let mut held = std::collections::HashSet::new();
        for (id, seq) in &self.seqs {
            let table = self.kv.block_table(*id);
            match seq.status {
                SeqStatus::Running => {
                    if !self.running.contains(id) {
                        return Err(format!("seq {id} is running but not in the running list"));
                    }
                    if table.len() * bs < seq.num_computed_tokens {
                        return Err(format!(
                            "seq {id}: {} blocks cannot hold {} computed tokens",
                            table.len(),
                            seq.num_computed_tokens
                        ));
                    }
                    held.extend(table.iter().copied());
                }
                SeqStatus::Waiting | SeqStatus::Preempted => {
                    if !table.is_empty() {
                        return Err(format!("seq {id} waits but holds {} blocks", table.len()));
                    }
                }
                SeqStatus::Finished(_) => return Err(format!("finished seq {id} is kept")),
            }
        }
        if self.kv.num_seqs() != self.running.len() {
            return Err(format!(
                "{} block tables for {} running sequences",
                self.kv.num_seqs(),
                self.running.len()
            ));
        }
        let used = self.kv.pool().num_blocks() - self.kv.num_free_blocks();
        if used != held.len() {
            return Err(format!(
                "{used} blocks in use but running sequences hold {}",
                held.len()
            ));
        }
        Ok(())
    }

    pub fn has_unfinished(&self) -> bool {
        !self.seqs.is_empty()
    }

    /// Running sequences, in admission order.
    pub fn running_ids(&self) -> &[SeqId] {
        &self.running
    }

    /// Waiting sequences, in the order they would be admitted.
    pub fn waiting_ids(&self) -> Vec<SeqId> {
        self.waiting.iter().collect()
    }

    pub fn stats(&self) -> SchedulerStats {
        SchedulerStats {
            num_running: self.running.len(),
            num_waiting: self.waiting.len(),
            kv_usage: self.kv.usage(),
            prefix_cache: self.kv.prefix_cache_stats(),
            num_preemptions: self.num_preemptions,
        }
    }

    /// Draft tokens for a running sequence's next step (speculative decoding); ignored unless
    /// the sequence is running with only its latest token left to compute. They count against
    /// the step's token budget like any other scheduled token.
    pub fn set_spec_tokens(&mut self, id: SeqId, tokens: Vec<u32>) {
        if let Some(seq) = self.seqs.get_mut(&id) {
            if seq.status == SeqStatus::Running && seq.num_computed_tokens + 1 == seq.num_tokens() {
                seq.spec_token_ids = tokens;
            }
        }
    }

    /// Queues a new sequence.
    pub fn add(&mut self, mut seq: Sequence) -> Result<(), SchedulerError> {
        let id = seq.id;
        if self.seqs.contains_key(&id) {
            return Err(SchedulerError::DuplicateId(id));
        }
        if seq.num_prompt_tokens == 0 {
            return Err(SchedulerError::EmptyPrompt(id));
        }
        // A prompt of exactly max_model_len still yields one token: the sampled token needs no KV.
        if seq.num_tokens() > self.max_model_len {
            let (len, max_model_len) = (seq.num_tokens(), self.max_model_len);
            return Err(SchedulerError::PromptTooLong {
                id,
                len,
                max_model_len,
            });
        }
        if seq.params.max_tokens == 0 {
            return Err(SchedulerError::ZeroMaxTokens(id));
        }
        seq.status = SeqStatus::Waiting;
        seq.num_computed_tokens = 0;
        seq.arrival = self.next_arrival;
        self.next_arrival += 1;
        self.waiting.push(&seq);
        self.seqs.insert(id, seq);
        Ok(())
    }

    /// Ends a sequence in whatever state it is, freeing its blocks; `None` if no live sequence
    /// has this id (e.g. it already finished).
    pub fn abort(&mut self, id: SeqId) -> Option<Sequence> {
        self.finish(id, FinishReason::Abort)
    }

    /// Ends a sequence for a reason found outside the scheduler (a stop string, a client gone),
    /// freeing its blocks. Returns the finished sequence.
    pub fn finish(&mut self, id: SeqId, reason: FinishReason) -> Option<Sequence> {
        let mut seq = self.seqs.remove(&id)?;
        match seq.status {
            SeqStatus::Running => self.running.retain(|&r| r != id),
            SeqStatus::Waiting | SeqStatus::Preempted => {
                let removed = self.waiting.remove(&seq);
                debug_assert!(removed, "waiting seq {id} missing from the queue");
            }
            SeqStatus::Finished(_) => unreachable!("finished sequences are not kept"),
        }
        self.kv.free(id);
        seq.status = SeqStatus::Finished(reason);
        self.finished_since_last_step.push(id);
        Some(seq)
    }

    /// Plans one step: running sequences first, in admission order, so a decode is never starved
    /// by a prompt admitted after it (long prompts also yield to later decodes when
    /// `long_prefill_token_threshold` caps their chunks); preempts by recompute when blocks run
    /// out; then admits waiting sequences while budget, `max_num_seqs` and blocks allow.
    pub fn schedule(&mut self) -> SchedulerOutput {
        let mut budget = self.config.max_num_batched_tokens;
        let mut scheduled: Vec<ScheduledSeq> = Vec::new();
        let mut preempted_ids = Vec::new();

        // A snapshot: preemption below edits `running`.
        for id in self.running.clone() {
            if budget == 0 {
                break;
            }
            if self.seqs[&id].status != SeqStatus::Running {
                continue; // preempted earlier in this loop
            }
            let seq = &self.seqs[&id];
            let num_new = self.num_new_tokens(seq, seq.num_computed_tokens, budget);
            // Drafts ride along with the last token, as far as the budget lets them.
            let num_new = if seq.num_computed_tokens + num_new == seq.num_tokens() {
                num_new + seq.spec_token_ids.len().min(budget - num_new)
            } else {
                num_new
            };
            debug_assert!(num_new > 0, "running seq {id} has nothing left to compute");
            if num_new == 0 {
                continue;
            }
            loop {
                let seq = &self.seqs[&id];
                let lookahead = self.config.num_lookahead_tokens;
                if let Some(table) =
                    self.kv
                        .allocate_slots(id, seq.num_computed_tokens, num_new, lookahead, None)
                {
                    scheduled.push(scheduled_seq(seq, num_new, table.to_vec()));
                    budget -= num_new;
                    break;
                }
                let victim = self.pick_victim();
                if let Some(pos) = scheduled.iter().position(|s| s.id == victim) {
                    budget += scheduled.remove(pos).num_new_tokens();
                }
                self.preempt(victim);
                preempted_ids.push(victim);
                if victim == id {
                    break;
                }
            }
        }

        // A step that had to preempt has no room to admit anyone (vLLM does the same).
        if preempted_ids.is_empty() {
            self.admit_waiting(&mut budget, &mut scheduled);
        }

        // Drafts are used once: scheduled now (or dropped for lack of budget).
        for s in &scheduled {
            if let Some(seq) = self.seqs.get_mut(&s.id) {
                seq.spec_token_ids.clear();
            }
        }
        let total_tokens = scheduled.iter().map(ScheduledSeq::num_new_tokens).sum();
        debug_assert!(total_tokens <= self.config.max_num_batched_tokens);
        debug_assert!(scheduled.len() <= self.config.max_num_seqs);
        SchedulerOutput {
            seqs: scheduled,
            total_tokens,
            finished_ids: std::mem::take(&mut self.finished_since_last_step),
            preempted_ids,
        }
    }

    fn admit_waiting(&mut self, budget: &mut usize, scheduled: &mut Vec<ScheduledSeq>) {
        while *budget > 0 && self.running.len() < self.config.max_num_seqs {
            let Some(id) = self.waiting.front() else {
                break;
            };
            let seq = &self.seqs[&id];
            let hit = self.kv.get_computed_blocks(&seq.token_ids, seq.cache_salt);
            let num_new = self.num_new_tokens(seq, hit.num_tokens, *budget);
            let lookahead = self.config.num_lookahead_tokens;
            // Admission never skips ahead: if the front does not fit, nobody behind it jumps in.
            let Some(table) =
                self.kv
                    .allocate_slots(id, hit.num_tokens, num_new, lookahead, Some(&hit))
            else {
                break;
            };
            let table = table.to_vec();
            self.waiting.pop_front();
            let seq = self.seqs.get_mut(&id).expect("waiting ids are live");
            if seq.status == SeqStatus::Waiting {
                // First admission: this is the prompt's cache hit (a resumed sequence would hit its
                // own blocks, which says nothing about the cache).
                seq.num_cached_prompt_tokens = hit.num_tokens.min(seq.num_prompt_tokens);
                self.kv
                    .record_prefix_lookup(seq.num_prompt_tokens, seq.num_cached_prompt_tokens);
            }
            seq.status = SeqStatus::Running;
            seq.num_computed_tokens = hit.num_tokens;
            self.running.push(id);
            *budget -= num_new;
            scheduled.push(scheduled_seq(seq, num_new, table));
        }
    }

    /// Tokens to compute for `seq` this step, starting from `num_computed`.
    fn num_new_tokens(&self, seq: &Sequence, num_computed: usize, budget: usize) -> usize {
        let mut n = seq.num_tokens() - num_computed;
        if let Some(cap) = self.config.long_prefill_token_threshold {
            n = n.min(cap);
        }
        n.min(budget)
    }

    /// The running sequence to give up first: the newest under FCFS, the least important
    /// (highest `(priority, arrival)`) under the priority policy.
    fn pick_victim(&self) -> SeqId {
        match self.config.policy {
            SchedulingPolicy::Fcfs => self.running.last().copied(),
            SchedulingPolicy::Priority => self.running.iter().copied().max_by_key(|id| {
                let s = &self.seqs[id];
                (s.priority, s.arrival)
            }),
        }
        .expect("the sequence being scheduled is running")
    }

    /// Preemption by recompute: drop the KV, start over from the waiting queue.
    fn preempt(&mut self, id: SeqId) {
        self.running.retain(|&r| r != id);
        self.kv.free(id);
        let seq = self.seqs.get_mut(&id).expect("running ids are live");
        seq.status = SeqStatus::Preempted;
        seq.num_computed_tokens = 0;
        seq.spec_token_ids.clear();
        seq.num_preemptions += 1;
        self.num_preemptions += 1;
        self.waiting.push(seq);
        tracing::debug!(seq = id, "preempted");
    }

    /// Applies a step's results: advances `num_computed_tokens`, caches newly full blocks,
    /// appends sampled tokens, finishes sequences that hit a stop condition (freeing their blocks).
    ///
    /// Sequences aborted or finished between `schedule` and this call are skipped. On error
    /// nothing has changed.
    pub fn update_from_output(
        &mut self,
        out: &SchedulerOutput,
        result: &ModelRunnerOutput,
    ) -> Result<Vec<SeqUpdate>, SchedulerError> {
        let sampled: HashMap<SeqId, &[u32]> = result
            .sampled
            .iter()
            .map(|(id, t)| (*id, t.as_slice()))
            .collect();
        let live = |s: &ScheduledSeq| {
            self.seqs
                .get(&s.id)
                .filter(|q| q.status == SeqStatus::Running)
        };
        for s in &out.seqs {
            let Some(seq) = live(s) else { continue };
            if seq.num_computed_tokens != s.num_computed_tokens
                || s.context_len() - s.num_spec_tokens > seq.num_tokens()
            {
                return Err(SchedulerError::StaleOutput(s.id));
            }
            if s.samples_this_step && sampled.get(&s.id).is_none_or(|t| t.is_empty()) {
                return Err(SchedulerError::MissingSample(s.id));
            }
            // Verification yields the accepted drafts plus one token, never more.
            if sampled
                .get(&s.id)
                .is_some_and(|t| t.len() > s.num_spec_tokens + 1)
            {
                return Err(SchedulerError::StaleOutput(s.id));
            }
        }

        let mut updates = Vec::new();
        for s in &out.seqs {
            let Some(seq) = self
                .seqs
                .get_mut(&s.id)
                .filter(|q| q.status == SeqStatus::Running)
            else {
                continue;
            };
            if !s.samples_this_step {
                seq.num_computed_tokens += s.num_new_tokens();
                self.kv.cache_full_blocks(
                    s.id,
                    &seq.token_ids[..seq.num_computed_tokens],
                    seq.cache_salt,
                );
                continue;
            }
            let tokens = sampled[&s.id];
            // Rejected drafts roll back: only the accepted ones (all sampled tokens but the
            // last, which equal the drafts they replace) are computed; their slots past that
            // are overwritten later and never enter the prefix cache.
            let num_accepted = tokens.len() - 1;
            debug_assert!(tokens[..num_accepted] == s.spec_token_ids()[..num_accepted]);
            let num_computed = s.context_len() - s.num_spec_tokens + num_accepted;
            let mut new_token_ids = Vec::new();
            let mut finish_reason = None;
            for &t in tokens {
                seq.token_ids.push(t);
                new_token_ids.push(t);
                // Tokens past a stop (accepted drafts after an EOS) are dropped.
                finish_reason = seq.check_stop(&self.eos_token_ids, self.max_model_len);
                if finish_reason.is_some() {
                    break;
                }
            }
            seq.num_computed_tokens = num_computed.min(seq.token_ids.len());
            self.kv.cache_full_blocks(
                s.id,
                &seq.token_ids[..seq.num_computed_tokens],
                seq.cache_salt,
            );
            let num_cached_prompt_tokens = seq.num_cached_prompt_tokens;
            if let Some(reason) = finish_reason {
                self.finish(s.id, reason);
            }
            updates.push(SeqUpdate {
                id: s.id,
                new_token_ids,
                finish_reason,
                num_cached_prompt_tokens,
            });
        }
        Ok(updates)
    }
}

/// The step's share of `seq`: `num_new` tokens from its first uncomputed one, the tail of
/// which may be its draft tokens.
fn scheduled_seq(seq: &Sequence, num_new: usize, block_table: Vec<u32>) -> ScheduledSeq {
    let start = seq.num_computed_tokens;
    let end = (start + num_new).min(seq.num_tokens());
    let num_spec_tokens = start + num_new - end;
    let mut new_token_ids = seq.token_ids[start..end].to_vec();
    new_token_ids.extend_from_slice(&seq.spec_token_ids[..num_spec_tokens]);
    ScheduledSeq {
        id: seq.id,
        new_token_ids,
        num_computed_tokens: start,
        block_table,
        samples_this_step: end == seq.num_tokens(),
        num_spec_tokens,
    }
}
