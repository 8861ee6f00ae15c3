//! Model-free runner for tests: a simulated paged KV cache that holds token ids, and scripted
//! sampling from what it reads back through the block tables.
//!
//! Each step writes every scheduled token into its slot (`block_table[p / bs] * bs + p % bs`),
//! as the real attention does, and a sampling sequence reads its whole context back from the
//! slots. The next token is a function of that context, so a wrong block table, a prefix hit on
//! the wrong block or a block reused while still needed changes the output, just as it would
//! corrupt a real model's. A read of a slot that holds another position fails the step.

use std::collections::HashMap;
use std::hash::{DefaultHasher, Hash, Hasher};

use anyhow::{bail, ensure};

use super::{ModelRunner, SeqTokens};
use crate::kv::manager::SeqId;
use crate::scheduler::output::{ModelRunnerOutput, SchedulerOutput};

/// Picks the next token from the sequence id and its context (all tokens so far).
pub type TokenFn = Box<dyn FnMut(SeqId, &[u32]) -> u32 + Send>;

pub struct MockRunner {
    block_size: usize,
    /// Simulated KV: per slot, the token written there and its position.
    slots: Vec<Option<(u32, usize)>>,
    next_token: TokenFn,
    num_steps: usize,
}

impl MockRunner {
    /// Samples [`MockRunner::context_token`] with a vocabulary of 32,000.
    pub fn new(num_blocks: usize, block_size: usize) -> Self {
        Self::with_token_fn(
            num_blocks,
            block_size,
            Box::new(|_, ctx| Self::context_token(ctx, 32_000)),
        )
    }

    pub fn with_token_fn(num_blocks: usize, block_size: usize, next_token: TokenFn) -> Self {
        Self {
            block_size,
            slots: vec![None; num_blocks * block_size],
            next_token,
            num_steps: 0,
        }
    }

    /// A deterministic "model": a hash of the whole context, below `vocab_size`.
    pub fn context_token(context: &[u32], vocab_size: u32) -> u32 {
        let mut h = DefaultHasher::new();
        context.hash(&mut h);
        (h.finish() % vocab_size as u64) as u32
    }

    /// Per-sequence scripts: sequence `id` with a prompt of `prompt_len` tokens emits
    /// `script[i]` as its i-th output, then `fallback`. Indexed by position, so a preempted
    /// sequence replays the same tokens when it recomputes.
    pub fn script_fn(scripts: HashMap<SeqId, (usize, Vec<u32>)>, fallback: u32) -> TokenFn {
        Box::new(move |id, ctx| {
            scripts
                .get(&id)
                .and_then(|(prompt_len, script)| script.get(ctx.len().checked_sub(*prompt_len)?))
                .copied()
                .unwrap_or(fallback)
        })
    }

    /// Steps executed so far.
    pub fn num_steps(&self) -> usize {
        self.num_steps
    }

    fn slot(&self, table: &[u32], pos: usize) -> anyhow::Result<usize> {
        let Some(&block) = table.get(pos / self.block_size) else {
            bail!(
                "position {pos} is past a block table of {} blocks",
                table.len()
            );
        };
        let slot = block as usize * self.block_size + pos % self.block_size;
        ensure!(
            slot < self.slots.len(),
            "block {block} is outside the cache"
        );
        Ok(slot)
    }
}

impl ModelRunner for MockRunner {
    fn execute(
        &mut self,
        out: &SchedulerOutput,
        _seqs: &dyn SeqTokens,
    ) -> anyhow::Result<ModelRunnerOutput> {
        MockRunner::execute(self, out)
    }
}

impl MockRunner {
    /// One step; the mock reads every token back from its simulated cache, so it needs no
    /// view of the sequences.
    pub fn execute(&mut self, out: &SchedulerOutput) -> anyhow::Result<ModelRunnerOutput> {
        ensure!(
            out.total_tokens == out.seqs.iter().map(|s| s.num_new_tokens()).sum::<usize>(),
            "total_tokens disagrees with the scheduled sequences"
        );
        // All writes before any read, as each layer of a real forward writes K/V first.
        for s in &out.seqs {
            for (i, &t) in s.new_token_ids.iter().enumerate() {
                let pos = s.num_computed_tokens + i;
                let slot = self.slot(&s.block_table, pos)?;
                self.slots[slot] = Some((t, pos));
            }
        }
        let mut sampled = Vec::new();
        for s in out.seqs.iter().filter(|s| s.samples_this_step) {
            let context = (0..s.context_len())
                .map(|pos| match self.slots[self.slot(&s.block_table, pos)?] {
                    Some((t, p)) if p == pos => Ok(t),
                    other => bail!("seq {}: slot of position {pos} holds {other:?}", s.id),
                })
                .collect::<anyhow::Result<Vec<u32>>>()?;
            // Greedy verification of draft tokens: the "model" at each position is the token
            // function of the context up to it; drafts are accepted while they agree.
            let verified = s.context_len() - s.num_spec_tokens;
            let mut tokens = Vec::new();
            for (j, &draft) in s.spec_token_ids().iter().enumerate() {
                let t = (self.next_token)(s.id, &context[..verified + j]);
                tokens.push(t);
                if t != draft {
                    break;
                }
            }
            if tokens.len() == s.num_spec_tokens && tokens == s.spec_token_ids() {
                tokens.push((self.next_token)(s.id, &context));
            }
            sampled.push((s.id, tokens));
        }
        self.num_steps += 1;
        Ok(ModelRunnerOutput {
            sampled,
            ..Default::default()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scheduler::output::ScheduledSeq;

    fn step(id: SeqId, tokens: Vec<u32>, computed: usize, table: Vec<u32>) -> SchedulerOutput {
        let total_tokens = tokens.len();
        SchedulerOutput {
            seqs: vec![ScheduledSeq {
                id,
                new_token_ids: tokens,
                num_computed_tokens: computed,
                block_table: table,
                samples_this_step: true,
                num_spec_tokens: 0,
            }],
            total_tokens,
            ..Default::default()
        }
    }

    #[test]
    fn samples_from_context_read_back_through_the_table() {
        let mut r = MockRunner::with_token_fn(4, 2, Box::new(|_, ctx| ctx.iter().sum()));
        let o = r.execute(&step(1, vec![1, 2, 3], 0, vec![3, 1])).unwrap();
        assert_eq!(o.sampled, vec![(1, vec![6])]);
        let o = r.execute(&step(1, vec![10], 3, vec![3, 1])).unwrap();
        assert_eq!(o.sampled, vec![(1, vec![16])]);
    }

    #[test]
    fn script_fn_indexes_outputs_by_position() {
        let mut f = MockRunner::script_fn(HashMap::from([(1, (2, vec![7, 8]))]), 0);
        assert_eq!(f(1, &[1, 1]), 7);
        assert_eq!(f(1, &[1, 1, 7]), 8);
        assert_eq!(f(1, &[1, 1, 7, 8]), 0);
        assert_eq!(f(2, &[1, 1]), 0);
    }

    #[test]
    fn reading_a_slot_of_another_position_fails() {
        let mut r = MockRunner::new(4, 2);
        r.execute(&step(1, vec![1, 2], 0, vec![0])).unwrap();
        // Claims two computed tokens in block 1, which holds nothing.
        assert!(r.execute(&step(2, vec![5], 2, vec![1, 2])).is_err());
    }
}
