//! Runs a validated plan on the engine: admission against the queue limit, one engine request
//! per choice, per-request metrics, and either the merged event stream or collected results.

use std::sync::Arc;
use std::time::Instant;

use futures_util::stream::{self, Stream};

use super::error::ApiError;
use super::limits::{self, RequestGuard, TokenLease};
use super::state::{AppState, Slot};
use super::validate::Job;
use super::wire::Usage;
use crate::engine::{RequestEvent, RequestOutput, RequestStream};
use crate::request::{FinishReason, TokenLogprobs};

/// One choice's engine request. Dropping it before the end aborts the request (its KV blocks
/// are freed within one engine step) and gives back its admission slot.
pub struct Tracked {
    stream: RequestStream,
    slot: Slot,
    /// The choice's index in its request and the request's per-key token lease, if keyed.
    index: usize,
    lease: Option<Arc<TokenLease>>,
    arrival: Instant,
    first_token_at: Option<Instant>,
    ended: bool,
}

impl Tracked {
    pub async fn next(&mut self) -> Option<RequestEvent> {
        let ev = self.stream.next().await;
        let metrics = &self.slot.state().metrics;
        match &ev {
            Some(RequestEvent::Output(o)) => {
                if let Some(lease) = &self.lease {
                    lease.record(self.index, o.num_output_tokens, o.num_cached_tokens);
                }
                if self.first_token_at.is_none() && !o.token_ids.is_empty() {
                    self.first_token_at = Some(Instant::now());
                    metrics.on_first_token(o.num_prompt_tokens, self.arrival.elapsed());
                }
                metrics.on_tokens(o.token_ids.len());
                if let Some(reason) = o.finish_reason {
                    self.ended = true;
                    let first = self.first_token_at.unwrap_or_else(Instant::now);
                    tracing::debug!(
                        id = o.id,
                        prompt_tokens = o.num_prompt_tokens,
                        cached_tokens = o.num_cached_tokens,
                        output_tokens = o.num_output_tokens,
                        reason = reason.as_openai(),
                        e2e_ms = self.arrival.elapsed().as_millis() as u64,
                        "request finished"
                    );
                    metrics.on_finish(
                        reason,
                        o.num_output_tokens,
                        self.arrival.elapsed(),
                        first.elapsed(),
                    );
                    self.log_request(reason.as_openai(), o);
                }
            }
            Some(RequestEvent::Error(_)) | None => {
                self.ended = true;
                if self.slot.state().config.log_requests {
                    tracing::info!(
                        target: "flare::requests",
                        id = self.stream.id,
                        choice = self.index,
                        outcome = "error",
                        latency_ms = self.arrival.elapsed().as_millis() as u64,
                        "request"
                    );
                }
            }
        }
        ev
    }
}

impl Tracked {
    /// `--log-requests`: one line per finished choice, counts and timings only.
    fn log_request(&self, outcome: &str, o: &RequestOutput) {
        let state = self.slot.state();
        if !state.config.log_requests {
            return;
        }
        tracing::info!(
            target: "flare::requests",
            id = o.id,
            choice = self.index,
            key = self.lease.as_ref().map_or("-", |l| l.key_id()),
            model = state.model_name(),
            outcome,
            prompt_tokens = o.num_prompt_tokens,
            cached_tokens = o.num_cached_tokens,
            completion_tokens = o.num_output_tokens,
            latency_ms = self.arrival.elapsed().as_millis() as u64,
            ttft_ms = self
                .first_token_at
                .map(|t| (t - self.arrival).as_millis() as u64),
            "request"
        );
    }
}

impl Drop for Tracked {
    fn drop(&mut self) {
        let state = self.slot.state();
        if !self.ended && state.config.log_requests {
            tracing::info!(
                target: "flare::requests",
                id = self.stream.id,
                choice = self.index,
                key = self.lease.as_ref().map_or("-", |l| l.key_id()),
                model = state.model_name(),
                outcome = "client_gone",
                latency_ms = self.arrival.elapsed().as_millis() as u64,
                "request"
            );
        }
        if !self.ended {
            tracing::debug!(id = self.stream.id, "client gone: request aborted");
            self.slot.state().metrics.on_client_gone();
        }
    }
}

/// Admits and starts every job (`n` choices per prompt), or none: on an error the ones already
/// added are aborted. With an API key (`guard`), its `max_tokens` cap lowers defaults and its
/// token limits are applied; `priority` is the request's field.
pub async fn start(
    state: &Arc<AppState>,
    guard: Option<&Arc<RequestGuard>>,
    mut jobs: Vec<Job>,
    n: usize,
    priority: i32,
    arrival: Instant,
) -> Result<Vec<Tracked>, ApiError> {
    let caller = guard.map(|g| g.key());
    let priority = limits::effective_priority(state.config.scheduling_policy, caller, priority)?;
    if let Some(cap) = caller.and_then(|c| c.max_tokens_cap()) {
        for j in &mut jobs {
            j.params.max_tokens = j.params.max_tokens.min(cap);
        }
    }
    let slots = state.reserve(jobs.len())?;
    let lease = match guard {
        Some(g) => {
            let prompt_lens = jobs.iter().step_by(n.max(1)).map(|j| j.prompt.len());
            let max_tokens: Vec<usize> = jobs.iter().map(|j| j.params.max_tokens).collect();
            let lease = TokenLease::reserve(g.clone(), prompt_lens.collect(), n, &max_tokens)
                .map_err(ApiError::rate_limited)?;
            Some(Arc::new(lease))
        }
        None => None,
    };
    let engine = &state.loaded()?.engine;
    // All adds are sent before any reply is awaited, so the choices join the same step.
    let added = futures_util::future::join_all(
        jobs.into_iter()
            .map(|j| engine.add(j.prompt, j.params, priority)),
    )
    .await;
    let mut tracked = Vec::with_capacity(added.len());
    for (index, (res, slot)) in added.into_iter().zip(slots).enumerate() {
        let stream = res.map_err(ApiError::from_engine_add)?;
        tracked.push(Tracked {
            stream,
            slot,
            index,
            lease: lease.clone(),
            arrival,
            first_token_at: None,
            ended: false,
        });
    }
    if let Some(lease) = &lease {
        lease.mark_started();
    }
    Ok(tracked)
}

/// Every choice's events as they come, tagged with the choice index.
pub fn merge(tracked: Vec<Tracked>) -> impl Stream<Item = (usize, RequestEvent)> + Send {
    stream::select_all(tracked.into_iter().enumerate().map(|(i, t)| {
        Box::pin(stream::unfold(t, move |mut t| async move {
            t.next().await.map(|ev| ((i, ev), t))
        }))
    }))
}

/// A choice run to its end.
#[derive(Debug, Clone, Default)]
pub struct Finished {
    pub text: String,
    pub token_ids: Vec<u32>,
    pub logprobs: Vec<TokenLogprobs>,
    pub finish_reason: Option<FinishReason>,
    pub num_cached_tokens: usize,
    pub num_output_tokens: usize,
}

impl Finished {
    pub fn push(&mut self, o: &RequestOutput) {
        self.text.push_str(&o.text);
        self.token_ids.extend_from_slice(&o.token_ids);
        self.logprobs.extend(o.logprobs.iter().cloned());
        self.finish_reason = o.finish_reason.or(self.finish_reason);
        self.num_cached_tokens = o.num_cached_tokens;
        self.num_output_tokens = o.num_output_tokens;
    }
}

/// Runs every choice to its end (concurrently; they share engine steps).
pub async fn collect(tracked: Vec<Tracked>) -> Result<Vec<Finished>, ApiError> {
    let results = futures_util::future::join_all(tracked.into_iter().map(|mut t| async move {
        let mut f = Finished::default();
        loop {
            match t.next().await {
                Some(RequestEvent::Output(o)) => {
                    f.push(&o);
                    if o.finish_reason.is_some() {
                        return Ok(f);
                    }
                }
                Some(RequestEvent::Error(e)) => return Err(ApiError::Engine(e)),
                None => {
                    return Err(ApiError::Engine(
                        "the request ended without finishing".into(),
                    ))
                }
            }
        }
    }))
    .await;
    results.into_iter().collect()
}

/// Usage of a plan's choices: each prompt counts once however many choices it has (as OpenAI),
/// and so do its cached tokens (those of its first choice).
pub fn usage(prompt_lens: &[usize], n: usize, choices: &[(usize, usize)]) -> Usage {
    let prompt: usize = prompt_lens.iter().sum();
    let completion = choices.iter().map(|&(out, _)| out).sum();
    let cached = choices.iter().step_by(n.max(1)).map(|&(_, c)| c).sum();
    Usage::new(prompt, completion, cached)
}
