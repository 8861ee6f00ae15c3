//! Runs one step of a ragged batch through a candle model over the paged KV cache, then samples.

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;

use anyhow::{Context, Result};
use candle_core::{DType, Tensor};
use rayon::prelude::*;

use super::input_batch::InputBatch;
use super::{ModelRunner, ModelRunnerOutput, SchedulerOutput, SeqTokens};
use crate::guidance::GrammarMatcher;
use crate::kv::manager::SeqId;
use crate::request::{FinishReason, SamplingParams, TokenLogprobs};
use crate::sample::batched::BatchedSampler;
use crate::sample::{AcceptRule, SampleContext, SampledToken, SequenceSampler};

use crate::kv::KvCache;
use crate::layers::attention::{AttnMetadata, SeqAttn};
use crate::models::CausalLm;

/// Steps of at most this many tokens (decode, short chunks) keep the pool's workers awake
/// between ops (`cpu::pool::run`); longer ones have ops long enough to amortize a wake-up.
const HOT_POOL_MAX_TOKENS: usize = 64;

/// One sequence's share of a step, as the scheduler hands it out.
#[derive(Debug, Clone, Copy)]
pub struct StepSeq<'a> {
    /// Tokens to compute now, at positions `num_computed ..`.
    pub new_tokens: &'a [u32],
    pub num_computed: usize,
    pub block_table: &'a [u32],
    /// Logits rows wanted for this sequence: those of its last `logit_rows` new tokens (1 to
    /// sample, 1 + drafts to verify drafts, 0 for a prompt chunk that is not the last one).
    pub logit_rows: usize,
    /// Tokens of the sequence's prompt (see `SeqAttn::prompt_len`).
    pub prompt_len: usize,
    /// The sequence, when its block table should persist between steps (see
    /// [`InputBatch`]); None: copied for this step only.
    pub seq_id: Option<SeqId>,
}

pub struct CandleForward {
    model: Box<dyn CausalLm>,
    kv: KvCache,
    /// Block tables kept between steps (a lock only because `step` takes `&self`).
    inputs: Mutex<InputBatch>,
}

impl CandleForward {
    pub fn new(
        model: Box<dyn CausalLm>,
        num_blocks: usize,
        block_size: usize,
        kv_dtype: DType,
    ) -> Result<Self> {
        let kv = model.new_kv_cache(num_blocks, block_size, kv_dtype)?;
        Ok(Self {
            model,
            kv,
            inputs: Mutex::new(InputBatch::default()),
        })
    }

    pub fn model(&self) -> &dyn CausalLm {
        self.model.as_ref()
    }

    pub fn kv_cache(&self) -> &KvCache {
        &self.kv
    }

    /// Block-table entries copied into the persistent batch so far (appended blocks only,
    /// unless a step's metadata was kept past the forward).
    pub fn blocks_copied(&self) -> u64 {
        self.inputs
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .blocks_copied()
    }

    /// Computes one step; returns the wanted logits rows of every sequence, in order.
    pub fn step(&self, seqs: &[StepSeq]) -> Result<Vec<Vec<f32>>> {
        match self.step_logits(seqs)? {
            Some(logits) => Ok(logits.to_vec2::<f32>()?),
            None => Ok(Vec::new()),
        }
    }

    /// As `step`, leaving the f32 logits `[rows, vocab]` on the model's device (None when no
    /// sequence wants logits), so that tokens can be chosen there.
    ///
    /// The step may leave KV written past a sequence's computed tokens (rejected drafts):
    /// those slots are overwritten by a later step before anything reads them.
    pub fn step_logits(&self, seqs: &[StepSeq]) -> Result<Option<Tensor>> {
        let device = self.model.device();
        let mut inputs = self.inputs.lock().unwrap_or_else(|e| e.into_inner());
        let mut ids = Vec::new();
        let mut metas = Vec::with_capacity(seqs.len());
        let mut rows = Vec::new();
        for s in seqs {
            let n = s.new_tokens.len();
            let block_table = match s.seq_id {
                Some(id) => inputs.lend(id, s.block_table),
                None => s.block_table.to_vec(),
            };
            metas.push(SeqAttn {
                query_start: ids.len(),
                query_len: n,
                context_len: s.num_computed + n,
                block_table,
                prompt_len: s.prompt_len,
            });
            ids.extend_from_slice(s.new_tokens);
            debug_assert!(s.logit_rows <= n);
            rows.extend((ids.len() - s.logit_rows.min(n)..ids.len()).map(|r| r as u32));
        }
        if ids.is_empty() {
            return Ok(None);
        }
        let meta = AttnMetadata::new(metas, self.kv.block_size, device)?;
        let n_tokens = ids.len();
        let tokens = Tensor::new(ids, device)?;
        let n = rows.len();
        let rows = Tensor::from_vec(rows, n, device)?;
        let forward = || self.model.forward(&tokens, &meta, &self.kv, &rows);
        // On the CPU the forward runs inside rayon's pool: its many parallel ops then share out
        // work among the pool's threads, instead of each op handing a job from this (non-pool)
        // thread to the pool and sleeping until it ends (two context switches per op, a third
        // of a SmolLM2 decode step at 1 thread), and the other workers stay awake between ops
        // (`cpu::pool`). Only where work runs changes, never its order.
        let logits = if device.is_cpu() {
            crate::cpu::pool::run(forward, n_tokens <= HOT_POOL_MAX_TOKENS)?
        } else {
            forward()?
        };
        // The tables go back to the persistent batch for the next step.
        if let Some(tables) = InputBatch::recover(meta.seqs) {
            let lent = seqs
                .iter()
                .zip(tables)
                .filter_map(|(s, t)| s.seq_id.map(|id| (id, t)));
            inputs.take_back(lent);
        }
        Ok((n > 0).then_some(logits))
    }
}

/// Per-sequence sampling state: the request's RNG and, for structured outputs, the grammar
/// matcher (which outlives preemption with the rest). The tokens themselves are the
/// scheduler's (read through [`SeqTokens`] each step).
struct SeqSampling {
    sampler: SequenceSampler,
    /// A token was sampled: too late to set a grammar.
    started: bool,
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
    /// How drafts are verified: `Exact` except in tests that show their power.
    accept_rule: AcceptRule,
    /// Steps pick tokens with the batched sampler even on the CPU (see
    /// [`CandleRunner::set_sample_on_device`]); on a GPU they always do.
    sample_on_device: bool,
    /// The batched sampler's tables, reused from step to step.
    batched: BatchedSampler,
}

impl CandleRunner {
    pub fn new(forward: CandleForward, eos_token_ids: Vec<u32>) -> Self {
        Self {
            forward,
            eos_token_ids,
            seqs: HashMap::new(),
            num_constrained: 0,
            mask_stats: MaskStats::default(),
            accept_rule: AcceptRule::Exact,
            sample_on_device: false,
            batched: BatchedSampler::new(),
        }
    }

    /// Takes the batched (device) sampling path on the CPU too (tests compare the paths).
    pub fn set_sample_on_device(&mut self, on: bool) {
        self.sample_on_device = on;
    }

    /// Replaces the lossless verification rule (tests showing that a wrong rule is caught).
    pub fn set_accept_rule(&mut self, rule: AcceptRule) {
        self.accept_rule = rule;
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

    /// A step whose every sampling sequence the batched sampler handles (any sampling
    /// settings and grammars; drafts for plain greedy sequences; no logprobs) picks its tokens
    /// where the logits are: grammar masks go up as one u8 tensor, penalties and biases as a
    /// sparse table, and only token ids come back, not `rows x vocab` f32 logits. None: some
    /// sequence needs the host sampler.
    fn sample_on_device(
        &mut self,
        out: &SchedulerOutput,
        seqs: &dyn SeqTokens,
        logits: &Tensor,
    ) -> Result<Option<ModelRunnerOutput>> {
        let sampling: Vec<_> = out.seqs.iter().filter(|s| s.samples_this_step).collect();
        let all_handled = sampling.iter().all(|s| {
            let generated = seqs.sequence(s.id).map_or(0, |q| q.num_output_tokens());
            self.seqs.get(&s.id).is_some_and(|st| {
                BatchedSampler::handles(st.sampler.params(), s.num_spec_tokens, generated)
            })
        });
        // Drafts of a constrained sequence are checked against the grammar one position at a
        // time (`verify_under_grammar`), on the host.
        let constrained_drafts = sampling
            .iter()
            .any(|s| s.num_spec_tokens > 0 && self.seqs[&s.id].grammar.is_some());
        if !all_handled || constrained_drafts {
            return Ok(None);
        }
        let (num_rows, vocab) = logits.dims2()?;
        let mut failed: HashMap<SeqId, String> = HashMap::new();
        let mut logits = logits.clone();
        if sampling.iter().any(|s| self.seqs[&s.id].grammar.is_some()) {
            let mut allowed = vec![1u8; num_rows * vocab];
            let mut row = vec![0f32; vocab];
            let mut first_row = 0;
            for s in &sampling {
                let at = first_row;
                first_row += s.num_logit_rows();
                let Some(grammar) = self.seqs.get_mut(&s.id).and_then(|st| st.grammar.as_mut())
                else {
                    continue;
                };
                row.fill(0.0);
                if let Err(e) = grammar.apply_mask(&mut row) {
                    failed.insert(s.id, e);
                    continue;
                }
                for (a, l) in allowed[at * vocab..(at + 1) * vocab].iter_mut().zip(&row) {
                    *a = u8::from(l.is_finite());
                }
            }
            let shape = (num_rows, vocab);
            let allowed = Tensor::from_vec(allowed, shape, logits.device())?;
            let banned = Tensor::full(f32::NEG_INFINITY, shape, logits.device())?
                .to_dtype(logits.dtype())?;
            logits = allowed.where_cond(&logits, &banned)?;
        }
        let batch = &mut self.batched;
        for s in &sampling {
            let seq = seqs
                .sequence(s.id)
                .with_context(|| format!("sequence {} is not live", s.id))?;
            let sampler = &self.seqs[&s.id].sampler;
            let ctx = SampleContext {
                prompt_tokens: seq.prompt_tokens(),
                output_tokens: seq.output_tokens(),
                eos_token_ids: &self.eos_token_ids,
            };
            // Draft rows are plain greedy (see `BatchedSampler::handles`): their context
            // changes nothing but the position, which greedy rows do not use.
            for _ in 0..s.num_logit_rows() {
                batch.push_row(sampler.params(), sampler.seed(), &ctx);
            }
        }
        let ids = batch.sample(&logits.to_dtype(DType::F32)?)?;
        let mut ids = ids.as_slice();
        let mut result = ModelRunnerOutput::default();
        for s in sampling {
            let state = self.seqs.get_mut(&s.id).expect("checked above");
            state.started = true;
            let (rows, rest) = ids.split_at(s.num_logit_rows());
            ids = rest;
            if let Some(e) = failed.remove(&s.id) {
                end_ungrammatical(s.id, &self.eos_token_ids, e, &mut result);
                continue;
            }
            let tokens = greedy_accept(rows, s.spec_token_ids());
            if let Some(grammar) = state.grammar.as_mut() {
                commit_to_grammar(s.id, grammar, tokens[0], &mut result);
            }
            result.sampled.push((s.id, tokens));
        }
        Ok(Some(result))
    }
}

impl ModelRunner for CandleRunner {
    fn add_sequence(&mut self, id: SeqId, params: &SamplingParams, _prompt: &[u32]) {
        let state = SeqSampling {
            sampler: SequenceSampler::new(params),
            started: false,
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
            !state.started,
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

    fn execute(
        &mut self,
        out: &SchedulerOutput,
        seqs: &dyn SeqTokens,
    ) -> Result<ModelRunnerOutput> {
        let steps: Vec<StepSeq> = out
            .seqs
            .iter()
            .map(|s| StepSeq {
                new_tokens: &s.new_token_ids,
                num_computed: s.num_computed_tokens,
                block_table: &s.block_table,
                logit_rows: s.num_logit_rows(),
                prompt_len: seqs.sequence(s.id).map_or(0, |q| q.num_prompt_tokens()),
                seq_id: Some(s.id),
            })
            .collect();
        let Some(logits) = self.logits_and_masks(out, &steps)? else {
            return Ok(ModelRunnerOutput::default());
        };
        if self.sample_on_device || !logits.device().is_cpu() {
            if let Some(result) = self.sample_on_device(out, seqs, &logits)? {
                return Ok(result);
            }
        }
        // Sequences sample independently (each from its own rows with its own RNG and grammar),
        // so they run in parallel on the pool and their results are gathered in batch order:
        // the same tokens as one after another, without leaving the pool idle behind the
        // engine thread while a large vocabulary is scanned row by row.
        let vocab = logits.dim(1)?;
        // The rows are read in place where the logits are one contiguous f32 CPU buffer (a
        // copy of them was a visible share of a large-vocabulary step).
        let (storage, layout) = logits.storage_and_layout();
        let copied;
        let flat: &[f32] = match (&*storage, layout.contiguous_offsets()) {
            (candle_core::Storage::Cpu(cpu), Some((start, end)))
                if logits.dtype() == DType::F32 =>
            {
                &cpu.as_slice::<f32>()?[start..end]
            }
            _ => {
                copied = logits.flatten_all()?.to_vec1::<f32>()?;
                &copied
            }
        };
        let mut states: HashMap<SeqId, &mut SeqSampling> =
            self.seqs.iter_mut().map(|(id, s)| (*id, s)).collect();
        let mut jobs = Vec::new();
        let mut next_row = 0;
        for s in out.seqs.iter().filter(|s| s.samples_this_step) {
            let rows: Vec<&[f32]> = (next_row..next_row + s.num_logit_rows())
                .map(|r| &flat[r * vocab..(r + 1) * vocab])
                .collect();
            next_row += s.num_logit_rows();
            let state = states
                .remove(&s.id)
                .with_context(|| format!("sequence {} was never added", s.id))?;
            let seq = seqs
                .sequence(s.id)
                .with_context(|| format!("sequence {} is not live", s.id))?;
            jobs.push(SampleJob {
                id: s.id,
                drafts: s.spec_token_ids(),
                rows,
                state,
                prompt_tokens: seq.prompt_tokens(),
                output_tokens: seq.output_tokens(),
            });
        }
        let (eos, rule) = (self.eos_token_ids.as_slice(), self.accept_rule);
        let outcomes: Vec<SampleOutcome> = if jobs.len() > 1 {
            rayon::scope(|_| jobs.par_iter_mut().map(|j| j.run(eos, rule)).collect())
        } else {
            jobs.iter_mut().map(|j| j.run(eos, rule)).collect()
        };
        let mut result = ModelRunnerOutput::default();
        for (job, outcome) in jobs.iter().zip(outcomes) {
            let id = job.id;
            let sampled = match outcome {
                SampleOutcome::Fault(fault) => {
                    result.failed.push((id, fault));
                    continue;
                }
                SampleOutcome::Ungrammatical(e) => {
                    end_ungrammatical(id, eos, e, &mut result);
                    continue;
                }
                SampleOutcome::Sampled(sampled, finished) => {
                    if let Some(reason) = finished {
                        result.grammar_finished.push((id, reason));
                    }
                    sampled
                }
            };
            if job.state.sampler.params().logprobs.is_some() {
                let lp = sampled
                    .iter()
                    .map(|t| TokenLogprobs {
                        token: t.token,
                        logprob: t.logprob,
                        top: t.top_logprobs.clone(),
                    })
                    .collect();
                result.logprobs.push((id, lp));
            }
            result
                .sampled
                .push((id, sampled.iter().map(|t| t.token).collect()));
        }
        Ok(result)
    }
}

/// One sequence's sampling in a step: its logits rows, state and tokens so far.
struct SampleJob<'a> {
    id: SeqId,
    drafts: &'a [u32],
    rows: Vec<&'a [f32]>,
    state: &'a mut SeqSampling,
    prompt_tokens: &'a [u32],
    output_tokens: &'a [u32],
}

/// What [`SampleJob::run`] gives: tokens (and whether the grammar ended the sequence), a
/// numerical fault in the rows, or a grammar that could not go on.
enum SampleOutcome {
    Sampled(Vec<SampledToken>, Option<FinishReason>),
    Fault(String),
    Ungrammatical(String),
}

impl SampleJob<'_> {
    fn run(&mut self, eos_token_ids: &[u32], rule: AcceptRule) -> SampleOutcome {
        let state = &mut *self.state;
        state.started = true;
        if let Some(fault) = self.rows.iter().find_map(|r| logits_fault(r)) {
            return SampleOutcome::Fault(fault);
        }
        let ctx = SampleContext {
            prompt_tokens: self.prompt_tokens,
            output_tokens: self.output_tokens,
            eos_token_ids,
        };
        if let Some(grammar) = state.grammar.as_mut() {
            let verified = verify_under_grammar(
                &mut state.sampler,
                grammar,
                &self.rows,
                self.drafts,
                &ctx,
                rule,
            );
            match verified {
                Ok((sampled, finished)) => SampleOutcome::Sampled(sampled, finished),
                Err(e) => SampleOutcome::Ungrammatical(e),
            }
        } else if self.drafts.is_empty() {
            SampleOutcome::Sampled(vec![state.sampler.sample(self.rows[0], &ctx)], None)
        } else {
            let sampled = state
                .sampler
                .verify_with(&self.rows, self.drafts, &ctx, rule);
            SampleOutcome::Sampled(sampled, None)
        }
    }
}

/// The grammar cannot go on (its matcher failed): the sequence ends with EOS rather than
/// free-running.
fn end_ungrammatical(
    id: SeqId,
    eos_token_ids: &[u32],
    error: String,
    result: &mut ModelRunnerOutput,
) {
    tracing::warn!(id, "structured output ended: {error}");
    let eos = eos_token_ids.first().copied().unwrap_or(0);
    result.sampled.push((id, vec![eos]));
    result.grammar_finished.push((id, FinishReason::Abort));
}

/// Verifies a constrained sequence's drafts one position at a time: each row is masked by the
/// grammar in the state after the tokens accepted before it, verified, and the emitted token
/// committed, so the matcher only ever sees tokens that are output (nothing to roll back). A
/// draft the grammar forbids has probability 0 under the masked row and is rejected; the
/// tokens are those plain constrained sampling would give (greedy: identical). Returns the
/// emitted tokens and, when the grammar ended on one of them, how the sequence finishes; an
/// error when the mask fails before any token was emitted.
fn verify_under_grammar(
    sampler: &mut SequenceSampler,
    grammar: &mut GrammarMatcher,
    rows: &[&[f32]],
    drafts: &[u32],
    ctx: &SampleContext,
    rule: AcceptRule,
) -> Result<(Vec<SampledToken>, Option<FinishReason>), String> {
    let mut outputs = ctx.output_tokens.to_vec();
    let mut out = Vec::with_capacity(rows.len());
    for (j, &raw) in rows.iter().enumerate() {
        let mut row = raw.to_vec();
        if let Err(e) = grammar.apply_mask(&mut row) {
            if out.is_empty() {
                return Err(e);
            }
            // The tokens so far stand; the next step fails on the same mask and ends it.
            break;
        }
        let c = SampleContext {
            output_tokens: &outputs,
            ..*ctx
        };
        let (sampled, accepted) = sampler.verify_one(&row, drafts.get(j).copied(), &c, rule);
        let token = sampled.token;
        out.push(sampled);
        match grammar.commit(token) {
            Ok(false) => {}
            Ok(true) => return Ok((out, Some(FinishReason::Stop))),
            Err(e) => {
                tracing::warn!("structured output ended: {e}");
                return Ok((out, Some(FinishReason::Abort)));
            }
        }
        if !accepted {
            break;
        }
        outputs.push(token);
    }
    Ok((out, None))
}

/// Advances the grammar past the sampled token; a complete grammar ends the sequence.
fn commit_to_grammar(
    id: SeqId,
    grammar: &mut GrammarMatcher,
    token: u32,
    result: &mut ModelRunnerOutput,
) {
    match grammar.commit(token) {
        Ok(false) => {}
        Ok(true) => result.grammar_finished.push((id, FinishReason::Stop)),
        Err(e) => {
            tracing::warn!(id, "structured output ended: {e}");
            result.grammar_finished.push((id, FinishReason::Abort));
        }
    }
}

/// Greedy verification from the rows' argmax ids: the drafts that match, then the target's
/// token at the first mismatch (or the bonus token after the last draft).
fn greedy_accept(argmax: &[u32], drafts: &[u32]) -> Vec<u32> {
    let num_accepted = drafts
        .iter()
        .zip(argmax)
        .take_while(|(d, t)| d == t)
        .count();
    argmax[..=num_accepted].to_vec()
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
