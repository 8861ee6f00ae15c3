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
use crate::spec::{SpecDecoder, SpecStats};
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
    /// Set when the request failed on its own (a non-finite logits row, a detokenizer error);
    /// it has ended (`finish_reason` is `Abort`) and the rest of the batch went on.
    pub error: Option<String>,
}

struct RequestState {
    output: OutputProcessor,
    num_prompt_tokens: usize,
    num_output_tokens: usize,
}

impl RequestState {
    fn failed(&self, id: SeqId, message: String) -> RequestOutput {
        RequestOutput {
            id,
            text: String::new(),
            token_ids: Vec::new(),
            logprobs: Vec::new(),
            finish_reason: Some(FinishReason::Abort),
            num_prompt_tokens: self.num_prompt_tokens,
            num_cached_tokens: 0,
            num_output_tokens: self.num_output_tokens,
            error: Some(message),
        }
    }
}

pub struct EngineCore<R: ModelRunner> {
    scheduler: Scheduler,
    runner: R,
    tokenizer: Arc<Tokenizer>,
    requests: HashMap<SeqId, RequestState>,
    next_id: SeqId,
    /// Grammar compiler for structured outputs; Err: why this model has none.
    guidance: Result<Arc<Guidance>, String>,
    /// Check the scheduler's and block pool's accounting after every step (debug builds, or
    /// FLARE_CHECK_INVARIANTS=1); a broken invariant panics the engine thread.
    check_invariants: bool,
    /// Speculative decoding; None: off.
    spec: Option<SpecDecoder>,
    /// How the KV cache was sized (None: not told, e.g. a mock runner).
    kv_info: Option<crate::kv::KvCacheInfo>,
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
            check_invariants: cfg!(debug_assertions)
                || std::env::var("FLARE_CHECK_INVARIANTS").is_ok_and(|v| v == "1"),
            spec: None,
            kv_info: None,
        }
    }

    /// Records how the KV cache was sized, for the metrics.
    pub fn with_kv_info(mut self, info: crate::kv::KvCacheInfo) -> Self {
        self.kv_info = Some(info);
        self
    }

    pub fn kv_info(&self) -> Option<crate::kv::KvCacheInfo> {
        self.kv_info
    }

    /// Turns speculative decoding on (the scheduler must reserve the proposer's lookahead).
    pub fn with_spec(mut self, spec: Option<SpecDecoder>) -> Self {
        self.spec = spec;
        self
    }

    /// Speculation counters; None when speculative decoding is off.
    pub fn spec_stats(&self) -> Option<&SpecStats> {
        self.spec.as_ref().map(SpecDecoder::stats)
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

    pub fn runner_mut(&mut self) -> &mut R {
        &mut self.runner
    }

    /// Turns the after-every-step invariant check on or off (tests turn it on in release).
    pub fn set_check_invariants(&mut self, on: bool) {
        self.check_invariants = on;
    }

    /// Ends one request that failed on its own, freeing its blocks; its output carries the error.
    fn fail(&mut self, id: SeqId, message: String) -> Option<RequestOutput> {
        tracing::warn!(id, "request failed: {message}");
        self.scheduler.finish(id, FinishReason::Abort);
        self.runner.remove_sequence(id);
        let state = self.requests.remove(&id)?;
        Some(state.failed(id, message))
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
                Some(guidance.matcher_after(c, params.constraint_after.as_ref())?)
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
        if let Some(spec) = &mut self.spec {
            let gone = sched.preempted_ids.iter().chain(&sched.finished_ids);
            spec.forget(gone.copied());
        }
        if sched.seqs.is_empty() {
            return Ok(Vec::new());
        }
        let result = self.runner.execute(&sched, &self.scheduler)?;
        if let Some(spec) = &mut self.spec {
            spec.record_step(&sched, &result);
        }
        let mut outputs = Vec::with_capacity(sched.seqs.len());
        // Failed sequences end first; the scheduler then skips them as it would aborted ones.
        for (id, message) in &result.failed {
            outputs.extend(self.fail(*id, message.clone()));
        }
        let updates = self.scheduler.update_from_output(&sched, &result)?;
        let mut logprobs: HashMap<SeqId, Vec<TokenLogprobs>> =
            result.logprobs.into_iter().collect();
        let grammar_finished: HashMap<SeqId, FinishReason> =
            result.grammar_finished.into_iter().collect();
        for mut u in updates {
            let Some(state) = self.requests.get_mut(&u.id) else {
                continue;
            };
            // A complete grammar ends the request now (Stop, even on the max_tokens-th token:
            // the output is whole); a failed matcher ends it as aborted.
            let mut finish_reason = u.finish_reason;
            if let Some(&reason) = grammar_finished.get(&u.id) {
                if finish_reason.is_none() {
                    self.scheduler.finish(u.id, reason);
                }
                finish_reason = Some(reason);
            }
            let processed = state.output.process_counted(
                &self.tokenizer,
                &u.new_token_ids,
                finish_reason.is_some(),
            );
            let (text, hit_stop, consumed) = match processed {
                Ok(p) => p,
                Err(e) => {
                    outputs.extend(self.fail(u.id, format!("detokenizing the output: {e}")));
                    continue;
                }
            };
            // Tokens of the same step past a stop string (accepted drafts) are not output.
            u.new_token_ids.truncate(consumed);
            state.num_output_tokens += u.new_token_ids.len();
            if hit_stop && finish_reason.is_none() {
                self.scheduler.finish(u.id, FinishReason::Stop);
                finish_reason = Some(FinishReason::Stop);
            }
            let mut token_logprobs = logprobs.remove(&u.id).unwrap_or_default();
            token_logprobs.truncate(u.new_token_ids.len());
            let out = RequestOutput {
                id: u.id,
                text,
                token_ids: u.new_token_ids,
                logprobs: token_logprobs,
                finish_reason,
                num_prompt_tokens: state.num_prompt_tokens,
                num_cached_tokens: u.num_cached_prompt_tokens,
                num_output_tokens: state.num_output_tokens,
                error: None,
            };
            if finish_reason.is_some() {
                self.requests.remove(&u.id);
                self.runner.remove_sequence(u.id);
            }
            outputs.push(out);
        }
        if let Some(spec) = &mut self.spec {
            spec.propose(&mut self.scheduler)?;
        }
        if self.check_invariants {
            if let Err(e) = self.check_invariants() {
                panic!("engine invariant broken after step: {e}");
            }
        }
        Ok(outputs)
    }

    /// The engine's accounting: the scheduler's (see [`Scheduler::check_invariants`]), and
    /// every live scheduler sequence is a request here and the other way round.
    pub fn check_invariants(&self) -> Result<(), String> {
        self.scheduler.check_invariants()?;
        if self.scheduler.num_live() != self.requests.len() {
            return Err(format!(
                "{} live sequences but {} requests",
                self.scheduler.num_live(),
                self.requests.len()
            ));
        }
        if let Some(id) = self
            .requests
            .keys()
            .find(|&&id| self.scheduler.get(id).is_none())
        {
            return Err(format!("request {id} has no live sequence"));
        }
        Ok(())
    }
}
