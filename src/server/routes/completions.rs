//! POST /v1/completions: text completions of one or more prompts (text or token ids), with
//! `echo`, as one JSON response or an SSE stream of text_completion chunks.

use std::sync::Arc;
use std::time::Instant;

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::Extension;
use axum::Json;
use futures_util::{Stream, StreamExt};

use super::{blocking, ResponseMeta};
use crate::engine::RequestEvent;
use crate::server::error::ApiError;
use crate::server::extract::OpenAiJson;
use crate::server::generate::{self, Tracked};
use crate::server::limits::RequestGuard;
use crate::server::logprobs::CompletionLogprobsBuilder;
use crate::server::sse;
use crate::server::state::AppState;
use crate::server::validate::{self, Plan};
use crate::server::wire::{
    CompletionChoice, CompletionRequest, CompletionResponse, ErrorResponse, Usage,
};
use crate::tokenizer::Tokenizer;

#[utoipa::path(
    post,
    path = "/v1/completions",
    request_body = CompletionRequest,
    responses(
        (status = 200, description = "A text completion; with `stream`, an SSE stream of `text_completion` chunks ending with `data: [DONE]`", body = CompletionResponse),
        (status = 400, description = "Bad parameters, malformed JSON or context length exceeded", body = ErrorResponse),
        (status = 401, description = "Missing or wrong API key", body = ErrorResponse),
        (status = 404, description = "Unknown model", body = ErrorResponse),
        (status = 413, description = "Body too large", body = ErrorResponse),
        (status = 429, description = "Queue full", body = ErrorResponse),
        (status = 503, description = "Model not loaded yet, or shutting down", body = ErrorResponse),
    ),
    security(("bearer" = []))
)]
pub async fn completions(
    State(state): State<Arc<AppState>>,
    key: Option<Extension<Arc<RequestGuard>>>,
    OpenAiJson(req): OpenAiJson<CompletionRequest>,
) -> Result<Response, ApiError> {
    let guard = key.map(|Extension(g)| g);
    let started = start(&state, guard.as_ref(), req, Instant::now()).await?;
    let (plan, tracked, tokenizer) = (started.plan, started.tracked, started.tokenizer);
    let prompts = Prompts {
        ids: started.prompt_ids,
        texts: plan.prompt_texts.clone(),
    };
    let meta = ResponseMeta::new("cmpl", &state);
    if plan.stream {
        return Ok(sse::response(stream(
            tokenizer, tracked, meta, prompts, plan,
        )));
    }
    let finished = generate::collect(tracked).await?;
    let counts: Vec<_> = finished
        .iter()
        .map(|f| (f.num_output_tokens, f.num_cached_tokens))
        .collect();
    let choices = finished
        .into_iter()
        .enumerate()
        .map(|(index, f)| {
            let p = index / plan.n;
            let mut text = f.text;
            let mut lp = CompletionLogprobsBuilder::default();
            if plan.echo {
                text.insert_str(0, &prompts.texts[p]);
                lp.push_prompt(&tokenizer, &prompts.ids[p]);
            }
            lp.push_generated(&tokenizer, &f.logprobs);
            CompletionChoice {
                index,
                text,
                logprobs: plan.logprobs.is_some().then(|| lp.take()),
                finish_reason: f.finish_reason.map(|r| r.as_openai().to_string()),
            }
        })
        .collect();
    Ok(Json(CompletionResponse {
        id: meta.id,
        object: "text_completion".into(),
        created: meta.created,
        model: meta.model,
        choices,
        usage: Some(Some(generate::usage(&prompts.lens(), plan.n, &counts))),
    })
    .into_response())
}

/// A completion request validated and running on the engine.
pub(crate) struct Started {
    /// The plan, its jobs moved to the engine.
    pub plan: Plan,
    pub tracked: Vec<Tracked>,
    /// Each prompt once.
    pub prompt_ids: Vec<Vec<u32>>,
    pub tokenizer: Arc<Tokenizer>,
}

/// The one way a completion request (HTTP, or gRPC's `Generate`) reaches the engine: model
/// check, the key's `max_tokens` cap, validation, admission and start.
pub(crate) async fn start(
    state: &Arc<AppState>,
    guard: Option<&Arc<RequestGuard>>,
    mut req: CompletionRequest,
    arrival: Instant,
) -> Result<Started, ApiError> {
    state.check_model(req.sampling.model.as_deref())?;
    if let Some(g) = guard {
        g.key()
            .cap_requested(&mut req.sampling.max_tokens, "max_tokens")?;
    }
    let mut plan = blocking(state, move |loaded| validate::completion(loaded, req)).await?;
    let tokenizer = state.loaded()?.tokenizer.clone();
    let prompt_ids = Prompts::of(&plan).ids;
    let jobs = std::mem::take(&mut plan.jobs);
    let tracked = generate::start(state, guard, jobs, plan.n, plan.priority, arrival).await?;
    Ok(Started {
        plan,
        tracked,
        prompt_ids,
        tokenizer,
    })
}

/// Each prompt once (a plan holds it n times, once per choice).
struct Prompts {
    ids: Vec<Vec<u32>>,
    texts: Vec<String>,
}

impl Prompts {
    fn of(plan: &Plan) -> Self {
        Self {
            ids: plan
                .jobs
                .iter()
                .step_by(plan.n)
                .map(|j| j.prompt.clone())
                .collect(),
            texts: plan.prompt_texts.clone(),
        }
    }

    fn lens(&self) -> Vec<usize> {
        self.ids.iter().map(Vec::len).collect()
    }
}

fn chunk(
    meta: &ResponseMeta,
    choices: Vec<CompletionChoice>,
    usage: Option<Option<Usage>>,
) -> CompletionResponse {
    CompletionResponse {
        id: meta.id.clone(),
        object: "text_completion".into(),
        created: meta.created,
        model: meta.model.clone(),
        choices,
        usage,
    }
}

/// The echoed prompt first (when asked), then text deltas, the finish reason with the last, a
/// usage chunk with no choices when asked, and `[DONE]`.
fn stream(
    tokenizer: Arc<Tokenizer>,
    tracked: Vec<Tracked>,
    meta: ResponseMeta,
    prompts: Prompts,
    plan: Plan,
) -> impl Stream<Item = sse::SseItem> + Send {
    let n = tracked.len();
    let include_usage = plan.include_usage;
    let usage_field = move |u: Option<Usage>| include_usage.then_some(u);
    async_stream::stream! {
        let mut logprobs: Vec<CompletionLogprobsBuilder> =
            (0..n).map(|_| CompletionLogprobsBuilder::default()).collect();
        if plan.echo {
            for (index, lp) in logprobs.iter_mut().enumerate() {
                let p = index / plan.n;
                lp.push_prompt(&tokenizer, &prompts.ids[p]);
                let choice = CompletionChoice {
                    index,
                    text: prompts.texts[p].clone(),
                    logprobs: plan.logprobs.is_some().then(|| lp.take()),
                    finish_reason: None,
                };
                yield sse::json(&chunk(&meta, vec![choice], usage_field(None)));
            }
        }
        let mut counts = vec![(0, 0); n];
        let mut events = generate::merge(tracked);
        while let Some((index, ev)) = events.next().await {
            let o = match ev {
                RequestEvent::Output(o) => o,
                RequestEvent::Error(e) => {
                    yield sse::error(&ApiError::Engine(e));
                    break;
                }
            };
            counts[index] = (o.num_output_tokens, o.num_cached_tokens);
            logprobs[index].push_generated(&tokenizer, &o.logprobs);
            if o.text.is_empty() && o.finish_reason.is_none() && o.logprobs.is_empty() {
                continue;
            }
            let choice = CompletionChoice {
                index,
                text: o.text,
                logprobs: plan.logprobs.is_some().then(|| logprobs[index].take()),
                finish_reason: o.finish_reason.map(|r| r.as_openai().to_string()),
            };
            yield sse::json(&chunk(&meta, vec![choice], usage_field(None)));
        }
        if plan.include_usage {
            let usage = generate::usage(&prompts.lens(), plan.n, &counts);
            yield sse::json(&chunk(&meta, Vec::new(), Some(Some(usage))));
        }
        yield sse::done();
    }
}
