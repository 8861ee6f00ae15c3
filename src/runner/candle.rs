//! Runs one step of a ragged batch through a candle model over the paged KV cache, then samples.

use std::collections::{HashMap, HashSet};

use anyhow::{Context, Result};
use candle_core::{DType, Tensor};
use rayon::prelude::*;

use super::{ModelRunner, ModelRunnerOutput, SchedulerOutput};
use crate::guidance::GrammarMatcher;
use crate::kv::manager::SeqId;
use crate::request::{FinishReason, SamplingParams, TokenLogprobs};
use crate::sample::{SampleContext, SequenceSampler};

use crate::kv::KvCache;
use crate::layers::attention::{AttnMetadata, SeqAttn};
use crate::models::CausalLm;

/// One sequence's share of a step, as the scheduler hands it out.
#[derive(Debug, Clone, Copy)]
pub struct StepSeq<'a> {
    /// Tokens to compute now, at positions `num_computed ..`.
    pub new_tokens: &'a [u32],
    pub num_computed: usize,
    pub block_table: &'a [u32],
    /// Whether the step samples for this sequence (its last new token's logits are needed);
    /// false for a prompt chunk that is not the last one.
    pub wants_logits: bool,
    /// Tokens of the sequence's prompt (see `SeqAttn::prompt_len`).
    pub prompt_len: usize,
}

pub struct CandleForward {
    model: Box<dyn CausalLm>,
    kv: KvCache,
}

impl CandleForward {
    pub fn new(
        model: Box<dyn CausalLm>,
        num_blocks: usize,
        block_size: usize,
        kv_dtype: DType,
    ) -> Result<Self> {
        let kv = model.new_kv_cache(num_blocks, block_size, kv_dtype)?;
        Ok(Self { model, kv })
    }

    pub fn model(&self) -> &dyn CausalLm {
        self.model.as_ref()
    }

    pub fn kv_cache(&self) -> &KvCache {
        &self.kv
    }

    /// Computes one step; returns the logits of every sequence with `wants_logits`, in order.
    pub fn step(&self, seqs: &[StepSeq]) -> Result<Vec<Vec<f32>>> {
        match self.step_logits(seqs)? {
            Some(logits) => Ok(logits.to_vec2::<f32>()?),
            None => Ok(Vec::new()),
        }
    }

    /// As `step`, leaving the f32 logits `[rows, vocab]` on the model's device (None when no
    /// sequence wants logits), so that tokens can be chosen there.
    pub fn step_logits(&self, seqs: &[StepSeq]) -> Result<Option<Tensor>> {
        let device = self.model.device();
        let mut ids = Vec::new();
        let mut metas = Vec::with_capacity(seqs.len());
        let mut rows = Vec::new();
        for s in seqs {
            let n = s.new_tokens.len();
            metas.push(SeqAttn {
                query_start: ids.len(),
                query_len: n,
                context_len: s.num_computed + n,
                block_table: s.block_table.to_vec(),
                prompt_len: s.prompt_len,
            });
            ids.extend_from_slice(s.new_tokens);
            if s.wants_logits {
                rows.push((ids.len() - 1) as u32);
            }
        }
        if ids.is_empty() {
            return Ok(None);
        }
        let meta = AttnMetadata::new(metas, self.kv.block_size, device)?;
        let tokens = Tensor::new(ids, device)?;
        let n = rows.len();
        let rows = Tensor::from_vec(rows, n, device)?;
        let logits = self.model.forward(&tokens, &meta, &self.kv, &rows)?;
        Ok((n > 0).then_some(logits))
    }
}

/// Per-sequence sampling state: the request's RNG, the tokens penalties look at and, for
/// structured outputs, the grammar matcher (which outlives preemption with the rest).
struct SeqSampling {
    sampler: SequenceSampler,
    prompt: Vec<u32>,
    output: Vec<u32>,
    grammar: Option<GrammarMatcher>,
}

/// Grammar masks made so far, over every sequence that ended.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct MaskStats {
    pub masks: u64,
    pub seconds: f64,
}

/// The real runner: a candle model plus per-sequence samplers.
pub struct CandleRunner {
    forward: CandleForward,
    eos_token_ids: Vec<u32>,
    seqs: HashMap<SeqId, SeqSampling>,
    /// Sequences with a grammar; while 0 a step does no grammar work at all.
    num_constrained: usize,
    mask_stats: MaskStats,
    /// Greedy steps pick tokens on the logits' device even on the CPU (see
    /// [`CandleRunner::set_greedy_on_device`]); on a GPU they always do.
    greedy_on_device: bool,
}

impl CandleRunner {
    pub fn new(forward: CandleForward, eos_token_ids: Vec<u32>) -> Self {
        Self {
            forward,
            eos_token_ids,
            seqs: HashMap::new(),
            num_constrained: 0,
            mask_stats: MaskStats::default(),
            greedy_on_device: false,
        }
    }

    /// Masks computed for sequences that have ended, and the time they took.
    pub fn mask_stats(&self) -> MaskStats {
        self.mask_stats
    }

    /// The step's logits, with the grammar masks of its constrained sequences computed on
    /// worker threads while the forward runs.
    fn logits_and_masks(
        &mut self,
        out: &SchedulerOutput,
        steps: &[StepSeq],
    ) -> Result<Option<Tensor>> {
        if self.num_constrained == 0 {
            return self.forward.step_logits(steps);
        }
        let sampling: HashSet<SeqId> = out
            .seqs
            .iter()
            .filter(|s| s.samples_this_step)
            .map(|s| s.id)
            .collect();
        let mut matchers: Vec<&mut GrammarMatcher> = self
            .seqs
            .iter_mut()
            .filter(|(id, _)| sampling.contains(id))
            .filter_map(|(_, st)| st.grammar.as_mut())
            .collect();
        if matchers.is_empty() {
            return self.forward.step_logits(steps);
        }
        let forward = &self.forward;
        std::thread::scope(|scope| {
            let masks = scope.spawn(move || {
                matchers.par_iter_mut().for_each(|m| m.compute_mask());
            });
            let logits = forward.step_logits(steps);
            if let Err(panic) = masks.join() {
                std::panic::resume_unwind(panic);
            }
            logits
        })
    }

    pub fn forward(&self) -> &CandleForward {
        &self.forward
    }

    /// Takes the device path for all-greedy steps on the CPU too (tests compare the paths).
    pub fn set_greedy_on_device(&mut self, on: bool) {
        self.greedy_on_device = on;
    }

    /// A step whose every sequence is greedy (grammars allowed) picks its tokens where the
    /// logits are: grammar masks go up as one `rows x vocab` u8 tensor, only token ids come
    /// back, not `rows x vocab` f32 logits. None: some sequence needs the host sampler.
    fn sample_greedy_on_device(
        &mut self,
        out: &SchedulerOutput,
        logits: &Tensor,
    ) -> Result<Option<ModelRunnerOutput>> {
        let ids: Vec<SeqId> = out
            .seqs
            .iter()
            .filter(|s| s.samples_this_step)
            .map(|s| s.id)
            .collect();
        let all_greedy = ids.iter().all(|id| {
            self.seqs
                .get(id)
                .is_some_and(|st| plain_greedy(st.sampler.params(), st.output.len()))
        });
        if !all_greedy {
            return Ok(None);
        }
        let mut result = ModelRunnerOutput::default();
        let vocab = logits.dim(1)?;
        let mut failed: Vec<Option<String>> = vec![None; ids.len()];
        let mut logits = logits.clone();
        if ids.iter().any(|id| self.seqs[id].grammar.is_some()) {
            let mut allowed = vec![1u8; ids.len() * vocab];
            let mut row = vec![0f32; vocab];
            for (i, id) in ids.iter().enumerate() {
                let Some(grammar) = self.seqs.get_mut(id).and_then(|s| s.grammar.as_mut()) else {
                    continue;
                };
                row.fill(0.0);
                if let Err(e) = grammar.apply_mask(&mut row) {
                    failed[i] = Some(e);
                    continue;
                }
                for (a, l) in allowed[i * vocab..(i + 1) * vocab].iter_mut().zip(&row) {
                    *a = u8::from(l.is_finite());
                }
            }
            let shape = (ids.len(), vocab);
            let allowed = Tensor::from_vec(allowed, shape, logits.device())?;
            let banned = Tensor::full(f32::NEG_INFINITY, shape, logits.device())?
                .to_dtype(logits.dtype())?;
            logits = allowed.where_cond(&logits, &banned)?;
        }
        let tokens = crate::ops::sampling::argmax(&logits)?.to_vec1::<u32>()?;
        for ((id, token), failure) in ids.iter().zip(tokens).zip(failed) {
            let state = self.seqs.get_mut(id).expect("checked above");
            if let Some(e) = failure {
                end_ungrammatical(*id, state, &self.eos_token_ids, e, &mut result);
                continue;
            }
            state.output.push(token);
            commit_to_grammar(*id, state, token, &mut result);
            result.sampled.push((*id, vec![token]));
        }
        Ok(Some(result))
    }
}

impl ModelRunner for CandleRunner {
    fn add_sequence(&mut self, id: SeqId, params: &SamplingParams, prompt: &[u32]) {
        let state = SeqSampling {
            sampler: SequenceSampler::new(params),
            prompt: prompt.to_vec(),
            output: Vec::new(),
            grammar: None,
        };
        self.seqs.insert(id, state);
    }

    fn set_grammar(&mut self, id: SeqId, grammar: GrammarMatcher) -> Result<()> {
        let state = self
            .seqs
            .get_mut(&id)
            .with_context(|| format!("sequence {id} was never added"))?;
        anyhow::ensure!(
            state.output.is_empty(),
            "a grammar must be set before the first token"
        );
        if state.grammar.replace(grammar).is_none() {
            self.num_constrained += 1;
        }
        Ok(())
    }

    fn remove_sequence(&mut self, id: SeqId) {
        if let Some(grammar) = self.seqs.remove(&id).and_then(|s| s.grammar) {
            self.num_constrained -= 1;
            let (masks, seconds) = grammar.mask_stats();
            self.mask_stats.masks += masks;
            self.mask_stats.seconds += seconds;
        }
    }

    fn execute(&mut self, out: &SchedulerOutput) -> Result<ModelRunnerOutput> {
        let steps: Vec<StepSeq> = out
            .seqs
            .iter()
            .map(|s| StepSeq {
                new_tokens: &s.new_token_ids,
                num_computed: s.num_computed_tokens,
                block_table: &s.block_table,
                wants_logits: s.samples_this_step,
                prompt_len: self.seqs.get(&s.id).map_or(0, |st| st.prompt.len()),
            })
            .collect();
        let Some(logits) = self.logits_and_masks(out, &steps)? else {
            return Ok(ModelRunnerOutput::default());
        };
        if self.greedy_on_device || !logits.device().is_cpu() {
            if let Some(result) = self.sample_greedy_on_device(out, &logits)? {
                return Ok(result);
            }
        }
        let mut result = ModelRunnerOutput::default();
        let mut logits = logits.to_vec2::<f32>()?;
        for (s, row) in out
            .seqs
            .iter()
            .filter(|s| s.samples_this_step)
            .zip(&mut logits)
        {
            let state = self
                .seqs
                .get_mut(&s.id)
                .with_context(|| format!("sequence {} was never added", s.id))?;
            if let Some(fault) = logits_fault(row) {
                result.failed.push((s.id, fault));
                continue;
            }
            if let Some(grammar) = state.grammar.as_mut() {
                if let Err(e) = grammar.apply_mask(row) {
                    end_ungrammatical(s.id, state, &self.eos_token_ids, e, &mut result);
                    continue;
                }
            }
            let ctx = SampleContext {
                prompt_tokens: &state.prompt,
                output_tokens: &state.output,
                eos_token_ids: &self.eos_token_ids,
            };
            let sampled = state.sampler.sample(row, &ctx);
            state.output.push(sampled.token);
            commit_to_grammar(s.id, state, sampled.token, &mut result);
            if state.sampler.params().logprobs.is_some() {
                let lp = TokenLogprobs {
                    token: sampled.token,
                    logprob: sampled.logprob,
                    top: sampled.top_logprobs,
                };
                result.logprobs.push((s.id, vec![lp]));
            }
            result.sampled.push((s.id, vec![sampled.token]));
        }
        Ok(result)
    }
}

/// The grammar cannot go on (its matcher failed): the sequence ends with EOS rather than
/// free-running.
fn end_ungrammatical(
    id: SeqId,
    state: &mut SeqSampling,
    eos_token_ids: &[u32],
    error: String,
    result: &mut ModelRunnerOutput,
) {
    tracing::warn!(id, "structured output ended: {error}");
    let eos = eos_token_ids.first().copied().unwrap_or(0);
    state.output.push(eos);
    result.sampled.push((id, vec![eos]));
    result.grammar_finished.push((id, FinishReason::Abort));
}

/// Advances the sequence's grammar past its sampled token; a complete grammar ends it.
fn commit_to_grammar(
    id: SeqId,
    state: &mut SeqSampling,
    token: u32,
    result: &mut ModelRunnerOutput,
) {
    if let Some(grammar) = state.grammar.as_mut() {
        match grammar.commit(token) {
            Ok(false) => {}
            Ok(true) => result.grammar_finished.push((id, FinishReason::Stop)),
            Err(e) => {
                tracing::warn!(id, "structured output ended: {e}");
                result.grammar_finished.push((id, FinishReason::Abort));
            }
        }
    }
}

/// Why a logits row cannot be sampled from: NaN or +inf anywhere (a numerical fault in this
/// sequence's forward). -inf is a legitimate mask; a row of nothing but -inf is not.
pub fn logits_fault(row: &[f32]) -> Option<String> {
    if let Some(i) = row.iter().position(|x| x.is_nan() || *x == f32::INFINITY) {
        return Some(format!(
            "the model produced a non-finite logit ({}) for token {i}",
            row[i]
        ));
    }
    if row.iter().all(|x| *x == f32::NEG_INFINITY) {
        return Some("every logit is -inf".into());
    }
    None
}

/// Greedy with nothing but a grammar mask changing the logits first and no logprobs wanted: the
/// token is the argmax of the (masked) row.
fn plain_greedy(p: &SamplingParams, generated: usize) -> bool {
    p.is_greedy()
        && p.logprobs.is_none()
        && p.logit_bias.is_empty()
        && p.repetition_penalty == 1.0
        && p.frequency_penalty == 0.0
        && p.presence_penalty == 0.0
        && generated >= p.min_tokens
}

#[cfg(test)]
mod tests {
    #[test]
    fn non_finite_rows_are_faults_masks_are_not() {
        use super::logits_fault;
        assert!(logits_fault(&[0.0, 1.0, f32::NEG_INFINITY]).is_none());
        assert!(logits_fault(&[0.0, f32::NAN]).unwrap().contains("token 1"));
        assert!(logits_fault(&[f32::INFINITY, 0.0]).is_some());
        assert!(logits_fault(&[f32::NEG_INFINITY; 3]).is_some());
    }
}
