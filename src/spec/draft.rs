//! Draft-model proposer: a smaller model with the target's vocabulary, its own KV tensors
//! over the target's block ids, proposing greedily for every speculating sequence of a step
//! in one batched forward per draft position.
//!
//! The draft KV of a sequence is valid for a prefix of its tokens plus the drafts it wrote
//! last time; the accepted drafts stay valid, so each proposal first catches up on the few
//! tokens it has not seen (the whole prompt the first time) in the same ragged forward that
//! yields the first draft. Draft positions past the sequence's tokens lie in the lookahead
//! slots the scheduler reserves (`lookahead()`); rejected ones are overwritten later.

use std::collections::HashMap;

use anyhow::{ensure, Result};

use super::{ProposeInput, Proposer};
use crate::kv::manager::SeqId;
use crate::runner::candle::{CandleForward, StepSeq};

/// What the draft KV of one sequence holds.
#[derive(Debug, Default, Clone)]
struct DraftKv {
    /// Positions `0..valid` hold the sequence's tokens.
    valid: usize,
    /// Drafts whose KV was written at positions `valid..`, valid as far as they were accepted.
    written: Vec<u32>,
}

pub struct DraftModelProposer {
    forward: CandleForward,
    seqs: HashMap<SeqId, DraftKv>,
    num_spec_tokens: usize,
    /// Positions the draft was made for (its checkpoint's derived length): it proposes
    /// nothing that would need a position past them, as vLLM caps speculation at the draft's
    /// length; the target then decodes on alone, exactly as without a draft.
    max_len: usize,
}

impl DraftModelProposer {
    /// `forward` holds the draft model and a KV cache with the target's number of blocks and
    /// block size. Fails unless the draft's vocabulary is the target's.
    pub fn new(
        forward: CandleForward,
        target_vocab_size: usize,
        num_spec_tokens: usize,
    ) -> Result<Self> {
        let draft_vocab = forward.model().config().vocab_size;
        ensure!(
            draft_vocab == target_vocab_size,
            "the draft model's vocabulary has {draft_vocab} tokens, the target's {target_vocab_size}: \
             a draft must share the target's vocabulary"
        );
        let max_len = forward.model().config().derived_max_len();
        Ok(Self {
            forward,
            seqs: HashMap::new(),
            num_spec_tokens,
            max_len,
        })
    }

    /// Positions the draft proposes within (see the field).
    pub fn max_len(&self) -> usize {
        self.max_len
    }

    /// Drafts worth proposing for `s`: its `max_drafts`, and none whose input position would
    /// pass the draft's length (draft `j` is read at position `tokens.len() - 1 + j`).
    fn drafts_for(&self, s: &ProposeInput) -> usize {
        s.max_drafts
            .min((self.max_len + 1).saturating_sub(s.tokens.len()))
    }
}

impl Proposer for DraftModelProposer {
    fn propose(&mut self, seqs: &[ProposeInput]) -> Result<Vec<Vec<u32>>> {
        let mut drafts: Vec<Vec<u32>> = vec![Vec::new(); seqs.len()];
        let wanted: Vec<usize> = seqs.iter().map(|s| self.drafts_for(s)).collect();
        let active: Vec<usize> = (0..seqs.len()).filter(|&i| wanted[i] > 0).collect();
        if active.is_empty() {
            return Ok(drafts);
        }
        // First position: catch up on the tokens whose draft KV is missing.
        let starts: Vec<usize> = active
            .iter()
            .map(|&i| {
                let s = &seqs[i];
                let kv = self.seqs.get(&s.id).cloned().unwrap_or_default();
                let accepted = kv
                    .written
                    .iter()
                    .zip(s.tokens.get(kv.valid..).unwrap_or(&[]))
                    .take_while(|(d, t)| d == t)
                    .count();
                (kv.valid + accepted).min(s.tokens.len() - 1)
            })
            .collect();
        let steps: Vec<StepSeq> = active
            .iter()
            .zip(&starts)
            .map(|(&i, &start)| StepSeq {
                new_tokens: &seqs[i].tokens[start..],
                num_computed: start,
                block_table: seqs[i].block_table,
                logit_rows: 1,
                prompt_len: seqs[i].num_prompt_tokens,
                seq_id: None,
            })
            .collect();
        let mut next = self.argmax(&steps)?;
        for (&i, t) in active.iter().zip(&next) {
            drafts[i].push(*t);
        }
        // Then one batched forward per further position, over the sequences still drafting.
        for j in 1..self.num_spec_tokens {
            let going: Vec<usize> = (0..active.len())
                .filter(|&a| wanted[active[a]] > j)
                .collect();
            if going.is_empty() {
                break;
            }
            let inputs: Vec<[u32; 1]> = going.iter().map(|&a| [next[a]]).collect();
            let steps: Vec<StepSeq> = going
                .iter()
                .zip(&inputs)
                .map(|(&a, input)| {
                    let s = &seqs[active[a]];
                    StepSeq {
                        new_tokens: input,
                        num_computed: s.tokens.len() + j - 1,
                        block_table: s.block_table,
                        logit_rows: 1,
                        prompt_len: s.num_prompt_tokens,
                        seq_id: None,
                    }
                })
                .collect();
            let tokens = self.argmax(&steps)?;
            for (&a, t) in going.iter().zip(tokens) {
                next[a] = t;
                drafts[active[a]].push(t);
            }
        }
        for &i in &active {
            let s = &seqs[i];
            let d = &drafts[i];
            self.seqs.insert(
                s.id,
                DraftKv {
                    valid: s.tokens.len(),
                    // The last draft was only read out, never fed back.
                    written: d[..d.len() - 1].to_vec(),
                },
            );
        }
        Ok(drafts)
    }

    fn reset(&mut self, id: SeqId) {
        self.seqs.remove(&id);
    }

    fn lookahead(&self) -> usize {
        self.num_spec_tokens
    }
}

impl DraftModelProposer {
    fn argmax(&self, steps: &[StepSeq]) -> Result<Vec<u32>> {
        let logits = self
            .forward
            .step_logits(steps)?
            .expect("every step wants a row");
        Ok(crate::ops::sampling::argmax(&logits)?.to_vec1::<u32>()?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::models::{load_model, source::ModelFiles};
    use candle_core::{DType, Device};

    /// A draft proposes only within its positions: tiny-llama has 512, so a sequence of 100
    /// tokens gets its 3 drafts, one of 511 gets 2 (read at positions 510 and 511), and one of
    /// 513 none.
    #[test]
    fn a_draft_proposes_only_within_its_positions() {
        let dir =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tiny-llama");
        let model = load_model(&ModelFiles::HfDir(dir), DType::F32, &Device::Cpu).unwrap();
        let (bs, blocks) = (16, 3 * 34);
        let forward = CandleForward::new(model, blocks, bs, DType::F32).unwrap();
        let mut p = DraftModelProposer::new(forward, 256, 3).unwrap();
        assert_eq!(p.max_len(), 512);
        let tokens: Vec<u32> = (0..513u32).map(|i| (i * 37 + 11) % 256).collect();
        let tables: Vec<Vec<u32>> = (0..3u32).map(|s| (s * 34..s * 34 + 34).collect()).collect();
        let input = |i: usize, n: usize| ProposeInput {
            id: i as SeqId,
            tokens: &tokens[..n],
            num_prompt_tokens: n,
            block_table: &tables[i],
            max_drafts: 3,
        };
        let got = p
            .propose(&[input(0, 100), input(1, 511), input(2, 513)])
            .unwrap();
        assert_eq!(got.iter().map(Vec::len).collect::<Vec<_>>(), [3, 2, 0]);
    }
}
