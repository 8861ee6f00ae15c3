//! EngineCore: one step = schedule, run the model, update sequences, emit request outputs.

use std::collections::HashMap;
use std::sync::Arc;

use anyhow::Result;

use super::output::OutputProcessor;
use crate::guidance::Guidance;
use crate::kv::manager::SeqId;
use crate::request::{FinishReason, SamplingParams, TokenLogprobs};
use crate::runner::ModelRunner;
use crate::scheduler::{sequence::Sequence, Scheduler};
use crate::tokenizer::Tokenizer;

/// What a request produced in one step (deltas) and, on its last, why it ended.
#[derive(Debug, Clone, PartialEq)]
pub struct RequestOutput {
    pub id: SeqId,
    pub text: String,
    pub token_ids: Vec<u32>,
    pub logprobs: Vec<TokenLogprobs>,
    pub finish_reason: Option<FinishReason>,
    pub num_prompt_tokens: usize,
    /// Prompt tokens served from the prefix cache.
    pub num_cached_tokens: usize,
    pub num_output_tokens: usize,
}

struct RequestState {
    output: OutputProcessor,
    num_prompt_tokens: usize,
    num_output_tokens: usize,
}

pub struct EngineCore<R: ModelRunner> {
    scheduler: Scheduler,
    runner: R,
    tokenizer: Arc<Tokenizer>,
    requests: HashMap<SeqId, RequestState>,
    next_id: SeqId,
    /// Grammar compiler for structured outputs; Err: why this model has none.
    guidance: Result<Arc<Guidance>, String>,
}

impl<R: ModelRunner> EngineCore<R> {
    pub fn new(scheduler: Scheduler, runner: R, tokenizer: Arc<Tokenizer>) -> Self {
        Self {
            scheduler,
            runner,
            tokenizer,
            requests: HashMap::new(),
            next_id: 0,
            guidance: Err("the engine was built without a grammar compiler".into()),
        }
    }

    /// Enables structured outputs (or records why they are unavailable).
    pub fn with_guidance(mut self, guidance: Result<Arc<Guidance>, String>) -> Self {
        self.guidance = guidance;
        self
    }

    pub fn guidance(&self) -> Result<&Arc<Guidance>, &str> {
        self.guidance.as_ref().map_err(|e| e.as_str())
    }

    pub fn runner(&self) -> &R {
        &self.runner
    }

    pub fn scheduler(&self) -> &Scheduler {
        &self.scheduler
    }

    pub fn tokenizer(&self) -> &Arc<Tokenizer> {
        &self.tokenizer
    }

    pub fn add_request(
        &mut self,
        prompt: Vec<u32>,
        params: SamplingParams,
        priority: i32,
    ) -> Result<SeqId> {
        // The matcher comes from the grammar cache (the server compiled it off this thread);
        // a miss compiles here, which only offline callers reach.
        let grammar = match &params.constraint {
            None => None,
            Some(c) => {
                let guidance = self.guidance.as_ref().map_err(|e| anyhow::anyhow!("{e}"))?;
                Some(guidance.matcher(c)?)
            }
        };
        let id = self.next_id;
        self.next_id += 1;
        let state = RequestState {
            output: OutputProcessor::new(&prompt, &params),
            num_prompt_tokens: prompt.len(),
            num_output_tokens: 0,
        };
        self.runner.add_sequence(id, &params, &prompt);
        if let Some(g) = grammar {
            if let Err(e) = self.runner.set_grammar(id, g) {
                self.runner.remove_sequence(id);
                return Err(e);
            }
        }
        if let Err(e) = self
            .scheduler
            .add(Sequence::new(id, prompt, params).with_priority(priority))
        {
            self.runner.remove_sequence(id);
            return Err(e.into());
        }
        self.requests.insert(id, state);
        Ok(id)
    }

    /// Ends a request in whatever state it is; its blocks go back to the pool.
    pub fn abort(&mut self, id: SeqId) -> bool {
        self.runner.remove_sequence(id);
        let known = self.requests.remove(&id).is_some();
        self.scheduler.abort(id);
        known
    }

    pub fn has_unfinished(&self) -> bool {
        !self.requests.is_empty()
    }

    pub fn step(&mut self) -> Result<Vec<RequestOutput>> {
        let sched = self.scheduler.schedule();
        if sched.seqs.is_empty() {
            return Ok(Vec::new());
        }
        let result = self.runner.execute(&sched)?;
        let updates = self.scheduler.update_from_output(&sched, &result)?;
        let mut logprobs: HashMap<SeqId, Vec<TokenLogprobs>> =
            result.logprobs.into_iter().collect();
        let grammar_finished: HashMap<SeqId, FinishReason> =
            result.grammar_finished.into_iter().collect();
        let mut outputs = Vec::with_capacity(updates.len());
        for u in updates {
            let Some(state) = self.requests.get_mut(&u.id) else {
                continue;
            };
            state.num_output_tokens += u.new_token_ids.len();
            // A complete grammar ends the request now (Stop, even on the max_tokens-th token:
            // the output is whole); a failed matcher ends it as aborted.
            let mut finish_reason = u.finish_reason;
            if let Some(&reason) = grammar_finished.get(&u.id) {
                if finish_reason.is_none() {
                    self.scheduler.finish(u.id, reason);
                }
                finish_reason = Some(reason);
            }
            let (text, hit_stop) =
                state
                    .output
                    .process(&self.tokenizer, &u.new_token_ids, finish_reason.is_some())?;
            if hit_stop && finish_reason.is_none() {
                self.scheduler.finish(u.id, FinishReason::Stop);
                finish_reason = Some(FinishReason::Stop);
            }
            let out = RequestOutput {
                id: u.id,
                text,
                token_ids: u.new_token_ids,
                logprobs: logprobs.remove(&u.id).unwrap_or_default(),
                finish_reason,
                num_prompt_tokens: state.num_prompt_tokens,
                num_cached_tokens: u.num_cached_prompt_tokens,
                num_output_tokens: state.num_output_tokens,
            };
            if finish_reason.is_some() {
                self.requests.remove(&u.id);
                self.runner.remove_sequence(u.id);
            }
            outputs.push(out);
        }
        Ok(outputs)
    }
}
