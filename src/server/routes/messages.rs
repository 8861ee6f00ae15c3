//! POST /v1/messages (Anthropic's Messages API) on the chat path, as one message or
//! Anthropic's SSE event sequence; POST /v1/messages/count_tokens; and the layer that gives
//! every error on these routes (auth, limits, bad JSON, validation) Anthropic's error shape.

use std::sync::Arc;
use std::time::Instant;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::header::CONTENT_TYPE;
use axum::middleware::Next;
use axum::response::sse::Event;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use serde_json::{json, Value};

use super::chat::{self, Started};
use super::{blocking, ResponseMeta};
use crate::engine::RequestEvent;
use crate::request::FinishReason;
use crate::server::convert::messages as convert_messages;
use crate::server::error::ApiError;
use crate::server::extract::OpenAiJson;
use crate::server::generate;
use crate::server::limits::RequestGuard;
use crate::server::segments::{self, Segment, SegmentEvent, SegmentKind, Segmenter};
use crate::server::sse::{self, SseItem};
use crate::server::state::AppState;
use crate::server::tools::ChoiceParser;
use crate::server::validate;
use crate::server::wire::{
    AnthropicErrorBody, AnthropicErrorResponse, AnthropicUsage, ContentBlock, CountTokensResponse,
    MessagesRequest, MessagesResponse,
};
use crate::tokenizer::Tokenizer;

#[utoipa::path(
    post,
    path = "/v1/messages",
    request_body = MessagesRequest,
    responses(
        (status = 200, description = "A message; with `stream`, Anthropic's SSE events (`message_start`, `content_block_start`, `content_block_delta`, `content_block_stop`, `message_delta`, `message_stop`)", body = MessagesResponse),
        (status = 400, description = "Bad parameters, malformed JSON or context length exceeded", body = AnthropicErrorResponse),
        (status = 401, description = "Missing or wrong API key (`x-api-key` or `Authorization: Bearer`)", body = AnthropicErrorResponse),
        (status = 404, description = "Unknown model", body = AnthropicErrorResponse),
        (status = 413, description = "Body too large", body = AnthropicErrorResponse),
        (status = 429, description = "Queue full or over a key's limits", body = AnthropicErrorResponse),
        (status = 503, description = "Model not loaded yet, or shutting down", body = AnthropicErrorResponse),
    ),
    security(("bearer" = []))
)]
pub async fn create_message(
    State(state): State<Arc<AppState>>,
    key: Option<Extension<Arc<RequestGuard>>>,
    OpenAiJson(req): OpenAiJson<MessagesRequest>,
) -> Result<Response, ApiError> {
    let arrival = Instant::now();
    let guard = key.map(|Extension(g)| g);
    let chat_req = convert_messages::to_chat(&req, false)?;
    convert_messages::check_thinking_served(&req, state.loaded()?.reasoning_parser.is_some())?;
    let started = chat::start(&state, guard.as_ref(), chat_req, arrival)
        .await
        .map_err(convert_messages::rename)?;
    let meta = ResponseMeta::new("msg", &state);
    let reply = Reply {
        id: format!("msg_{}", meta.id.trim_start_matches("msg-")),
        model: meta.model,
        prompt_len: started.prompt_len,
        stops: req.stop_sequences.clone().unwrap_or_default(),
        tokenizer: started.tokenizer.clone(),
    };
    if started.plan.stream {
        return Ok(sse::response(stream(reply, started)));
    }
    let Started { plan, tracked, .. } = started;
    let f = generate::collect(tracked).await?.pop().expect("one choice");
    let segments = segments::whole(&plan.output, &f.text);
    let (stop_reason, stop_sequence) = reply.stop(f.finish_reason, &segments, &f.token_ids);
    Ok(Json(MessagesResponse {
        id: reply.id.clone(),
        kind: "message".into(),
        role: "assistant".into(),
        model: reply.model.clone(),
        content: segments.iter().map(block).collect(),
        stop_reason: Some(stop_reason),
        stop_sequence,
        usage: reply.usage(f.num_output_tokens, f.num_cached_tokens),
    })
    .into_response())
}

#[utoipa::path(
    post,
    path = "/v1/messages/count_tokens",
    request_body = MessagesRequest,
    responses(
        (status = 200, description = "The prompt's token count (the `usage.input_tokens` plus `cache_read_input_tokens` of the same request)", body = CountTokensResponse),
        (status = 400, description = "Bad parameters or malformed JSON", body = AnthropicErrorResponse),
        (status = 401, description = "Missing or wrong API key", body = AnthropicErrorResponse),
        (status = 404, description = "Unknown model", body = AnthropicErrorResponse),
        (status = 413, description = "Body too large", body = AnthropicErrorResponse),
        (status = 503, description = "Model not loaded yet, or shutting down", body = AnthropicErrorResponse),
    ),
    security(("bearer" = []))
)]
pub async fn count_tokens(
    State(state): State<Arc<AppState>>,
    OpenAiJson(req): OpenAiJson<MessagesRequest>,
) -> Result<Json<CountTokensResponse>, ApiError> {
    let chat_req = convert_messages::to_chat(&req, true)?;
    state.check_model(chat_req.sampling.model.as_deref())?;
    let plan = blocking(&state, move |loaded| validate::chat(loaded, chat_req))
        .await
        .map_err(convert_messages::rename)?;
    Ok(Json(CountTokensResponse {
        input_tokens: plan.jobs[0].prompt.len(),
    }))
}

/// Gives the OpenAI-shaped JSON errors of the routes it wraps Anthropic's shape and error
/// types (same status).
pub async fn anthropic_errors(req: Request, next: Next) -> Response {
    let resp = next.run(req).await;
    let status = resp.status();
    let is_json = resp
        .headers()
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    if !(status.is_client_error() || status.is_server_error()) || !is_json {
        return resp;
    }
    let (mut parts, body) = resp.into_parts();
    let Ok(bytes) = axum::body::to_bytes(body, 1 << 20).await else {
        return Response::from_parts(parts, Body::empty());
    };
    let message = serde_json::from_slice::<Value>(&bytes)
        .ok()
        .and_then(|v| {
            v.pointer("/error/message")
                .and_then(Value::as_str)
                .map(String::from)
        })
        .unwrap_or_else(|| String::from_utf8_lossy(&bytes).into_owned());
    let body = AnthropicErrorResponse {
        kind: "error".into(),
        error: AnthropicErrorBody {
            kind: error_type(status.as_u16()).into(),
            message,
        },
    };
    let bytes = serde_json::to_vec(&body).expect("error serializes");
    parts.headers.remove(axum::http::header::CONTENT_LENGTH);
    Response::from_parts(parts, Body::from(bytes))
}

/// Anthropic's error type for a status.
fn error_type(status: u16) -> &'static str {
    match status {
        401 => "authentication_error",
        403 => "permission_error",
        404 => "not_found_error",
        413 => "request_too_large",
        429 => "rate_limit_error",
        503 | 529 => "overloaded_error",
        400..=499 => "invalid_request_error",
        _ => "api_error",
    }
}

/// A segment as a content block; a call's arguments parsed into `input`.
fn block(s: &Segment) -> ContentBlock {
    match &s.kind {
        SegmentKind::Reasoning => ContentBlock::Thinking {
            thinking: s.text.clone(),
            signature: String::new(),
        },
        SegmentKind::Text => ContentBlock::Text {
            text: s.text.clone(),
        },
        SegmentKind::Call { id, name } => ContentBlock::ToolUse {
            id: id.clone(),
            name: name.clone(),
            input: serde_json::from_str::<Value>(&s.text)
                .ok()
                .filter(Value::is_object)
                .unwrap_or_else(|| json!({})),
        },
    }
}

/// A block as first announced in a stream (empty).
fn empty_block(kind: &SegmentKind) -> Value {
    match kind {
        SegmentKind::Reasoning => json!({"type": "thinking", "thinking": "", "signature": ""}),
        SegmentKind::Text => json!({"type": "text", "text": ""}),
        SegmentKind::Call { id, name } => {
            json!({"type": "tool_use", "id": id, "name": name, "input": {}})
        }
    }
}

/// What a reply repeats and how it ends.
struct Reply {
    id: String,
    model: String,
    prompt_len: usize,
    stops: Vec<String>,
    tokenizer: Arc<Tokenizer>,
}

impl Reply {
    fn usage(&self, output_tokens: usize, cached: usize) -> AnthropicUsage {
        AnthropicUsage {
            input_tokens: self.prompt_len.saturating_sub(cached),
            output_tokens,
            cache_creation_input_tokens: 0,
            cache_read_input_tokens: cached,
        }
    }

    /// `stop_reason` and `stop_sequence`: a finished generation that called tools is
    /// `tool_use`; one that ended on a stop string (its last token is neither EOS nor a stop
    /// token, and a stop sequence shows in the decoded tokens) is `stop_sequence`.
    fn stop(
        &self,
        reason: Option<FinishReason>,
        segments: &[Segment],
        token_ids: &[u32],
    ) -> (String, Option<String>) {
        match reason {
            Some(FinishReason::Length) => ("max_tokens".into(), None),
            _ if segments
                .iter()
                .any(|s| matches!(s.kind, SegmentKind::Call { .. })) =>
            {
                ("tool_use".into(), None)
            }
            _ => match self.stop_sequence(token_ids) {
                Some(s) => ("stop_sequence".into(), Some(s)),
                None => ("end_turn".into(), None),
            },
        }
    }

    fn stop_sequence(&self, token_ids: &[u32]) -> Option<String> {
        let &last = token_ids.last()?;
        if self.stops.is_empty() || self.tokenizer.is_eos(last) {
            return None;
        }
        let text = self.tokenizer.decode(token_ids, false).ok()?;
        self.stops
            .iter()
            .filter_map(|s| text.find(s.as_str()).map(|at| (at, s)))
            .min()
            .map(|(_, s)| s.clone())
    }
}

fn event(kind: &str, body: Value) -> SseItem {
    let data = serde_json::to_string(&body).expect("events serialize");
    Ok(Event::default().event(kind).data(data))
}

/// Anthropic's order: `message_start`; per block `content_block_start`, its
/// `content_block_delta`s, `content_block_stop`; `message_delta` (stop reason, usage);
/// `message_stop`. Dropping the stream (client gone) aborts the engine request.
fn stream(reply: Reply, started: Started) -> impl futures_util::Stream<Item = SseItem> + Send {
    let Started { plan, tracked, .. } = started;
    async_stream::stream! {
        let start = MessagesResponse {
            id: reply.id.clone(),
            kind: "message".into(),
            role: "assistant".into(),
            model: reply.model.clone(),
            content: Vec::new(),
            stop_reason: None,
            stop_sequence: None,
            usage: reply.usage(0, 0),
        };
        yield event("message_start", json!({"type": "message_start", "message": start}));
        let mut parser = ChoiceParser::new(&plan.output);
        let mut seg = Segmenter::new();
        let mut token_ids = Vec::new();
        let Some(mut t) = tracked.into_iter().next() else { return };
        loop {
            let o = match t.next().await {
                Some(RequestEvent::Output(o)) => o,
                other => {
                    let msg = match other {
                        Some(RequestEvent::Error(e)) => ApiError::Engine(e).to_string(),
                        _ => "the request ended without finishing".to_string(),
                    };
                    tracing::warn!("message stream ended by an error: {msg}");
                    yield event("error", json!({"type": "error", "error": {"type": "api_error", "message": msg}}));
                    return;
                }
            };
            token_ids.extend_from_slice(&o.token_ids);
            let mut d = parser.push(&o.text);
            if o.finish_reason.is_some() {
                d.append(parser.finish());
            }
            let mut evs = seg.push(d);
            if o.finish_reason.is_some() {
                evs.extend(seg.finish());
            }
            for e in evs {
                yield match e {
                    SegmentEvent::Open { index, kind } => event(
                        "content_block_start",
                        json!({"type": "content_block_start", "index": index, "content_block": empty_block(&kind)}),
                    ),
                    SegmentEvent::Delta { index, text } => {
                        let delta = match seg.segments()[index].kind {
                            SegmentKind::Reasoning => json!({"type": "thinking_delta", "thinking": text}),
                            SegmentKind::Text => json!({"type": "text_delta", "text": text}),
                            SegmentKind::Call { .. } => json!({"type": "input_json_delta", "partial_json": text}),
                        };
                        event("content_block_delta", json!({"type": "content_block_delta", "index": index, "delta": delta}))
                    }
                    SegmentEvent::Close { index } => event(
                        "content_block_stop",
                        json!({"type": "content_block_stop", "index": index}),
                    ),
                };
            }
            if o.finish_reason.is_some() {
                let (stop_reason, stop_sequence) = reply.stop(o.finish_reason, seg.segments(), &token_ids);
                let usage = reply.usage(o.num_output_tokens, o.num_cached_tokens);
                yield event("message_delta", json!({
                    "type": "message_delta",
                    "delta": {"stop_reason": stop_reason, "stop_sequence": stop_sequence},
                    "usage": usage,
                }));
                yield event("message_stop", json!({"type": "message_stop"}));
                return;
            }
        }
    }
}
