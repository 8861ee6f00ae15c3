//! EngineCore: one step = schedule, run the model, update sequences, emit request outputs.

use std::collections::HashMap;
use std::sync::Arc;

use anyhow::Result;

use super::output::OutputProcessor;
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
}

impl<R: ModelRunner> EngineCore<R> {
    pub fn new(scheduler: Scheduler, runner: R, tokenizer: Arc<Tokenizer>) -> Self {
        Self {
            scheduler,
            runner,
            tokenizer,
            requests: HashMap::new(),
            next_id: 0,
        }
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
        let id = self.next_id;
        self.next_id += 1;
        let state = RequestState {
            output: OutputProcessor::new(&prompt, &params),
            num_prompt_tokens: prompt.len(),
            num_output_tokens: 0,
        };
        self.runner.add_sequence(id, &params, &prompt);
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
        let mut outputs = Vec::with_capacity(updates.len());
        for u in updates {
            let Some(state) = self.requests.get_mut(&u.id) else {
                continue;
            };
            state.num_output_tokens += u.new_token_ids.len();
            let (text, hit_stop) = state.output.process(
                &self.tokenizer,
                &u.new_token_ids,
                u.finish_reason.is_some(),
            )?;
            let mut finish_reason = u.finish_reason;
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
