//! POST /v1/chat/completions: one JSON response, or an SSE stream of chat.completion.chunk.

use std::sync::Arc;
use std::time::Instant;

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::Extension;
use axum::Json;
use futures_util::{Stream, StreamExt};

use super::{blocking, ResponseMeta};
use crate::engine::RequestEvent;
use crate::request::FinishReason;
use crate::server::error::ApiError;
use crate::server::extract::OpenAiJson;
use crate::server::generate::{self, Tracked};
use crate::server::limits::RequestGuard;
use crate::server::state::AppState;
use crate::server::tools::{self, ChoiceParser, OutputPlan};
use crate::server::validate::Plan;
use crate::server::wire::{
    ChatChoice, ChatChunkChoice, ChatCompletionChunk, ChatCompletionRequest,
    ChatCompletionResponse, ChatDelta, ChatMessageOut, ErrorResponse, Usage,
};
use crate::server::{logprobs, sse, validate};
use crate::tokenizer::Tokenizer;

#[utoipa::path(
    post,
    path = "/v1/chat/completions",
    request_body = ChatCompletionRequest,
    responses(
        (status = 200, description = "A chat completion; with `stream`, an SSE stream of `chat.completion.chunk` objects ending with `data: [DONE]`", body = ChatCompletionResponse),
        (status = 400, description = "Bad parameters, malformed JSON or context length exceeded", body = ErrorResponse),
        (status = 401, description = "Missing or wrong API key", body = ErrorResponse),
        (status = 404, description = "Unknown model", body = ErrorResponse),
        (status = 413, description = "Body too large", body = ErrorResponse),
        (status = 429, description = "Queue full", body = ErrorResponse),
        (status = 503, description = "Model not loaded yet, or shutting down", body = ErrorResponse),
    ),
    security(("bearer" = []))
)]
pub async fn chat_completions(
    State(state): State<Arc<AppState>>,
    key: Option<Extension<Arc<RequestGuard>>>,
    OpenAiJson(req): OpenAiJson<ChatCompletionRequest>,
) -> Result<Response, ApiError> {
    let guard = key.map(|Extension(g)| g);
    let Started {
        plan,
        tracked,
        prompt_len,
        tokenizer,
    } = start(&state, guard.as_ref(), req, Instant::now()).await?;
    let meta = ResponseMeta::new("chatcmpl", &state);
    let want_logprobs = plan.logprobs.is_some();
    if plan.stream {
        let events = stream(
            tokenizer,
            tracked,
            meta,
            prompt_len,
            want_logprobs,
            plan.include_usage,
            plan.output,
        );
        return Ok(sse::response(events));
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
            let m = tools::whole(&plan.output, &f.text);
            ChatChoice {
                index,
                logprobs: want_logprobs.then(|| logprobs::chat(&tokenizer, &f.logprobs)),
                finish_reason: f
                    .finish_reason
                    .map(|r| finish_reason(r, m.tool_calls.is_some())),
                message: ChatMessageOut {
                    role: "assistant".into(),
                    content: m.content,
                    reasoning_content: m.reasoning.clone(),
                    reasoning: m.reasoning,
                    tool_calls: m.tool_calls,
                },
            }
        })
        .collect();
    Ok(Json(ChatCompletionResponse {
        id: meta.id,
        object: "chat.completion".into(),
        created: meta.created,
        model: meta.model,
        choices,
        usage: generate::usage(&[prompt_len], plan.n, &counts),
    })
    .into_response())
}

/// A chat-shaped request validated and running on the engine.
pub(crate) struct Started {
    /// The plan, its jobs moved to the engine.
    pub plan: Plan,
    pub tracked: Vec<Tracked>,
    pub prompt_len: usize,
    pub tokenizer: Arc<Tokenizer>,
}

/// The one way a chat-shaped request (chat completions, and the Responses and Messages APIs
/// converted to it) reaches the engine: model check, the key's `max_tokens` cap, validation,
/// admission and start.
pub(crate) async fn start(
    state: &Arc<AppState>,
    guard: Option<&Arc<RequestGuard>>,
    mut req: ChatCompletionRequest,
    arrival: Instant,
) -> Result<Started, ApiError> {
    state.check_model(req.sampling.model.as_deref())?;
    if let Some(g) = guard {
        g.key()
            .cap_requested(&mut req.max_completion_tokens, "max_completion_tokens")?;
        g.key()
            .cap_requested(&mut req.sampling.max_tokens, "max_tokens")?;
    }
    let mut plan = blocking(state, move |loaded| validate::chat(loaded, req)).await?;
    let tokenizer = state.loaded()?.tokenizer.clone();
    let prompt_len = plan.jobs[0].prompt.len();
    let jobs = std::mem::take(&mut plan.jobs);
    let tracked = generate::start(state, guard, jobs, plan.n, plan.priority, arrival).await?;
    Ok(Started {
        plan,
        tracked,
        prompt_len,
        tokenizer,
    })
}

/// OpenAI's reason: a generation that ended on its own after calling tools ends in
/// `tool_calls`.
fn finish_reason(r: FinishReason, made_calls: bool) -> String {
    match r {
        FinishReason::Stop if made_calls => "tool_calls".into(),
        r => r.as_openai().to_string(),
    }
}

fn chunk(
    meta: &ResponseMeta,
    choices: Vec<ChatChunkChoice>,
    include_usage: bool,
    usage: Option<Usage>,
) -> ChatCompletionChunk {
    ChatCompletionChunk {
        id: meta.id.clone(),
        object: "chat.completion.chunk".into(),
        created: meta.created,
        model: meta.model.clone(),
        choices,
        usage: include_usage.then_some(usage),
    }
}

/// The role first (one chunk per choice), then content deltas, the finish reason with the last
/// delta, a usage chunk with no choices when asked, and `[DONE]`. Dropping the stream (client
/// gone) drops every choice's engine request, which aborts it.
fn stream(
    tokenizer: Arc<Tokenizer>,
    tracked: Vec<Tracked>,
    meta: ResponseMeta,
    prompt_len: usize,
    want_logprobs: bool,
    include_usage: bool,
    output: OutputPlan,
) -> impl Stream<Item = sse::SseItem> + Send {
    let n = tracked.len();
    let mut parsers: Vec<ChoiceParser> = (0..n).map(|_| ChoiceParser::new(&output)).collect();
    async_stream::stream! {
        for index in 0..n {
            let delta = ChatDelta {
                role: Some("assistant".into()),
                content: Some(String::new()),
                ..Default::default()
            };
            let choice = ChatChunkChoice { index, delta, logprobs: None, finish_reason: None };
            yield sse::json(&chunk(&meta, vec![choice], include_usage, None));
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
            let logprobs = (want_logprobs && !o.logprobs.is_empty())
                .then(|| logprobs::chat(&tokenizer, &o.logprobs));
            let parser = &mut parsers[index];
            let mut d = parser.push(&o.text);
            if o.finish_reason.is_some() {
                d.append(parser.finish());
            }
            // A step can produce no visible text (held back for a stop string, a parser's
            // marker or an incomplete character); nothing to send then.
            if d.is_empty() && o.finish_reason.is_none() && logprobs.is_none() {
                continue;
            }
            let delta = ChatDelta {
                role: None,
                content: (!d.content.is_empty()).then_some(d.content),
                reasoning_content: (!d.reasoning.is_empty()).then_some(d.reasoning),
                tool_calls: (!d.tool_calls.is_empty()).then_some(d.tool_calls),
            };
            let choice = ChatChunkChoice {
                index,
                delta,
                logprobs,
                finish_reason: o.finish_reason.map(|r| finish_reason(r, parser.made_calls())),
            };
            yield sse::json(&chunk(&meta, vec![choice], include_usage, None));
        }
        if include_usage {
            let usage = generate::usage(&[prompt_len], n, &counts);
            yield sse::json(&chunk(&meta, Vec::new(), true, Some(usage)));
        }
        yield sse::done();
    }
}
