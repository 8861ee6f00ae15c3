//! POST /v1/responses (OpenAI's Responses API) on the chat path, as one response object or a
//! typed SSE event stream; GET and DELETE /v1/responses/{id} over the response store.

use std::sync::Arc;
use std::time::Instant;

use axum::extract::{Path, State};
use axum::response::sse::Event;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use serde_json::{json, Value};

use super::chat::{self, Started};
use super::ResponseMeta;
use crate::engine::RequestEvent;
use crate::request::FinishReason;
use crate::server::convert::{self, responses as convert_responses};
use crate::server::error::ApiError;
use crate::server::extract::OpenAiJson;
use crate::server::generate;
use crate::server::limits::RequestGuard;
use crate::server::segments::{self, Segment, SegmentEvent, SegmentKind, Segmenter};
use crate::server::sse::{self, SseItem};
use crate::server::state::AppState;
use crate::server::tools::ChoiceParser;
use crate::server::wire::{
    ChatMessageIn, ErrorResponse, IncompleteDetails, InputTokensDetails, OutputItem, OutputText,
    OutputTokensDetails, ReasoningText, ResponseDeleted, ResponseObject, ResponseUsage,
    ResponsesRequest,
};
use crate::tokenizer::Tokenizer;

#[utoipa::path(
    post,
    path = "/v1/responses",
    request_body = ResponsesRequest,
    responses(
        (status = 200, description = "A response object; with `stream`, an SSE stream of typed events (`response.created`, `response.output_item.added`, `response.output_text.delta`, `response.function_call_arguments.delta`, ..., `response.completed`)", body = ResponseObject),
        (status = 400, description = "Bad parameters, malformed JSON or context length exceeded", body = ErrorResponse),
        (status = 401, description = "Missing or wrong API key", body = ErrorResponse),
        (status = 404, description = "Unknown model or `previous_response_id`", body = ErrorResponse),
        (status = 413, description = "Body too large", body = ErrorResponse),
        (status = 429, description = "Queue full", body = ErrorResponse),
        (status = 503, description = "Model not loaded yet, or shutting down", body = ErrorResponse),
    ),
    security(("bearer" = []))
)]
pub async fn create_response(
    State(state): State<Arc<AppState>>,
    key: Option<Extension<Arc<RequestGuard>>>,
    OpenAiJson(req): OpenAiJson<ResponsesRequest>,
) -> Result<Response, ApiError> {
    let arrival = Instant::now();
    let guard = key.map(|Extension(g)| g);
    let history = match req.previous_response_id.as_deref() {
        Some(id) => state
            .responses
            .conversation(id)
            .ok_or_else(|| not_found(id, "previous_response_id"))?,
        None => Vec::new(),
    };
    let converted = convert_responses::to_chat(&req, history)?;
    let started = chat::start(&state, guard.as_ref(), converted.chat, arrival)
        .await
        .map_err(convert_responses::rename)?;
    let meta = ResponseMeta::new("resp", &state);
    let run = Run {
        state: state.clone(),
        echo: Echo::of(&req, &meta),
        conversation: converted.conversation,
        prompt_len: started.prompt_len,
        tokenizer: started.tokenizer.clone(),
    };
    if started.plan.stream {
        return Ok(sse::response(stream(run, started)));
    }
    let Started { plan, tracked, .. } = started;
    let f = generate::collect(tracked).await?.pop().expect("one choice");
    let segments = segments::whole(&plan.output, &f.text);
    let obj = run.finish(
        &segments,
        f.finish_reason,
        f.num_output_tokens,
        f.num_cached_tokens,
    );
    Ok(Json(obj).into_response())
}

#[utoipa::path(
    get,
    path = "/v1/responses/{response_id}",
    params(("response_id" = String, Path, description = "A stored response's id")),
    responses(
        (status = 200, description = "The stored response", body = ResponseObject),
        (status = 404, description = "Unknown or expired response", body = ErrorResponse),
    ),
    security(("bearer" = []))
)]
pub async fn get_response(
    State(state): State<Arc<AppState>>,
    Path(id): Path<String>,
) -> Result<Json<ResponseObject>, ApiError> {
    state
        .responses
        .response(&id)
        .map(Json)
        .ok_or_else(|| not_found(&id, "response_id"))
}

#[utoipa::path(
    delete,
    path = "/v1/responses/{response_id}",
    params(("response_id" = String, Path, description = "A stored response's id")),
    responses(
        (status = 200, description = "Deleted", body = ResponseDeleted),
        (status = 404, description = "Unknown or expired response", body = ErrorResponse),
    ),
    security(("bearer" = []))
)]
pub async fn delete_response(
    State(state): State<Arc<AppState>>,
    Path(id): Path<String>,
) -> Result<Json<ResponseDeleted>, ApiError> {
    if !state.responses.delete(&id) {
        return Err(not_found(&id, "response_id"));
    }
    Ok(Json(ResponseDeleted {
        id,
        object: "response".into(),
        deleted: true,
    }))
}

pub(crate) fn not_found(id: &str, param: &str) -> ApiError {
    ApiError::NotFound {
        message: format!("No response with id `{id}` is stored (unknown, deleted or expired)."),
        param: Some(param.into()),
    }
}

/// The request fields a response object repeats.
struct Echo {
    id: String,
    hex: String,
    created_at: u64,
    model: String,
    instructions: Option<String>,
    max_output_tokens: Option<i64>,
    parallel_tool_calls: bool,
    previous_response_id: Option<String>,
    reasoning: Value,
    store: bool,
    temperature: Option<f64>,
    top_p: Option<f64>,
    text: Value,
    tool_choice: Value,
    tools: Vec<Value>,
    metadata: Value,
    user: Option<String>,
}

impl Echo {
    fn of(req: &ResponsesRequest, meta: &ResponseMeta) -> Self {
        let hex = meta.id.trim_start_matches("resp-").to_string();
        Self {
            id: format!("resp_{hex}"),
            hex,
            created_at: meta.created,
            model: meta.model.clone(),
            instructions: req.instructions.clone(),
            max_output_tokens: req.max_output_tokens,
            parallel_tool_calls: req.parallel_tool_calls.unwrap_or(true),
            previous_response_id: req.previous_response_id.clone(),
            reasoning: req
                .reasoning
                .clone()
                .unwrap_or(json!({"effort": null, "summary": null})),
            store: req.store.unwrap_or(true),
            temperature: req.temperature,
            top_p: req.top_p,
            text: req
                .text
                .clone()
                .filter(|t| t.get("format").is_some())
                .unwrap_or(json!({"format": {"type": "text"}})),
            tool_choice: req.tool_choice.clone().unwrap_or(json!("auto")),
            tools: req.tools.clone().unwrap_or_default(),
            metadata: req.metadata.clone().unwrap_or(json!({})),
            user: req.user.clone(),
        }
    }

    fn object(
        &self,
        status: &str,
        output: Vec<OutputItem>,
        usage: Option<ResponseUsage>,
    ) -> ResponseObject {
        ResponseObject {
            id: self.id.clone(),
            object: "response".into(),
            created_at: self.created_at,
            status: status.into(),
            error: None,
            incomplete_details: (status == "incomplete").then(|| IncompleteDetails {
                reason: "max_output_tokens".into(),
            }),
            instructions: self.instructions.clone(),
            max_output_tokens: self.max_output_tokens,
            model: self.model.clone(),
            output,
            parallel_tool_calls: self.parallel_tool_calls,
            previous_response_id: self.previous_response_id.clone(),
            reasoning: self.reasoning.clone(),
            store: self.store,
            temperature: self.temperature,
            top_p: self.top_p,
            text: self.text.clone(),
            tool_choice: self.tool_choice.clone(),
            tools: self.tools.clone(),
            truncation: "disabled".into(),
            usage,
            metadata: self.metadata.clone(),
            user: self.user.clone(),
        }
    }

    /// An item's id: its kind, the response's id, its place in the output (the same whether
    /// streamed or not).
    fn item_id(&self, kind: &SegmentKind, index: usize) -> String {
        let prefix = match kind {
            SegmentKind::Reasoning => "rs",
            SegmentKind::Text => "msg",
            SegmentKind::Call { .. } => "fc",
        };
        format!("{prefix}_{}{index:02}", self.hex)
    }

    /// Segment `index` as an output item (empty: as first announced in a stream).
    fn item(&self, index: usize, seg: &Segment, done: bool) -> OutputItem {
        let id = self.item_id(&seg.kind, index);
        let status = if done { "completed" } else { "in_progress" }.to_string();
        match &seg.kind {
            SegmentKind::Reasoning => OutputItem::Reasoning {
                id,
                summary: Vec::new(),
                content: if done {
                    vec![ReasoningText {
                        kind: "reasoning_text".into(),
                        text: seg.text.clone(),
                    }]
                } else {
                    Vec::new()
                },
            },
            SegmentKind::Text => OutputItem::Message {
                id,
                status,
                role: "assistant".into(),
                content: if done {
                    vec![OutputText::new(seg.text.clone())]
                } else {
                    Vec::new()
                },
            },
            SegmentKind::Call { id: call_id, name } => OutputItem::FunctionCall {
                id,
                call_id: call_id.clone(),
                name: name.clone(),
                arguments: if done {
                    seg.text.clone()
                } else {
                    String::new()
                },
                status,
            },
        }
    }
}

/// What finishing a response needs besides its output.
struct Run {
    state: Arc<AppState>,
    echo: Echo,
    conversation: Vec<ChatMessageIn>,
    prompt_len: usize,
    tokenizer: Arc<Tokenizer>,
}

impl Run {
    /// The final response object (stored when asked).
    fn finish(
        self,
        segments: &[Segment],
        reason: Option<FinishReason>,
        output_tokens: usize,
        cached_tokens: usize,
    ) -> ResponseObject {
        let output = segments
            .iter()
            .enumerate()
            .map(|(i, s)| self.echo.item(i, s, true))
            .collect();
        let reasoning_tokens = segments
            .iter()
            .filter(|s| s.kind == SegmentKind::Reasoning)
            .map(|s| self.tokenizer.encode(&s.text, false).map_or(0, |t| t.len()))
            .sum::<usize>()
            .min(output_tokens);
        let usage = ResponseUsage {
            input_tokens: self.prompt_len,
            input_tokens_details: InputTokensDetails { cached_tokens },
            output_tokens,
            output_tokens_details: OutputTokensDetails { reasoning_tokens },
            total_tokens: self.prompt_len + output_tokens,
        };
        let status = match reason {
            Some(FinishReason::Length) => "incomplete",
            _ => "completed",
        };
        let obj = self.echo.object(status, output, Some(usage));
        if self.echo.store {
            let mut conversation = self.conversation;
            conversation.extend(convert::assistant_turn(segments));
            self.state.responses.put(obj.clone(), conversation);
        }
        obj
    }
}

/// Numbers the events of one stream.
struct Events {
    seq: u64,
}

impl Events {
    fn event(&mut self, kind: &str, mut body: Value) -> SseItem {
        body["type"] = json!(kind);
        body["sequence_number"] = json!(self.seq);
        self.seq += 1;
        let data = serde_json::to_string(&body).expect("events serialize");
        Ok(Event::default().event(kind).data(data))
    }
}

/// The events of one segment event. `segs` holds the segments so far (the closed one complete).
fn segment_events(
    out: &mut Events,
    echo: &Echo,
    segs: &[Segment],
    e: SegmentEvent,
) -> Vec<SseItem> {
    let mut v = Vec::new();
    match e {
        SegmentEvent::Open { index, kind } => {
            let seg = Segment {
                kind: kind.clone(),
                text: String::new(),
            };
            let item = echo.item(index, &seg, false);
            v.push(out.event(
                "response.output_item.added",
                json!({"output_index": index, "item": item}),
            ));
            if kind == SegmentKind::Text {
                v.push(out.event(
                    "response.content_part.added",
                    json!({"item_id": echo.item_id(&kind, index), "output_index": index,
                           "content_index": 0, "part": OutputText::new(String::new())}),
                ));
            }
        }
        SegmentEvent::Delta { index, text } => {
            let kind = &segs[index].kind;
            let item_id = echo.item_id(kind, index);
            let (name, extra) = match kind {
                SegmentKind::Text => (
                    "response.output_text.delta",
                    json!({"content_index": 0, "logprobs": []}),
                ),
                SegmentKind::Reasoning => {
                    ("response.reasoning_text.delta", json!({"content_index": 0}))
                }
                SegmentKind::Call { .. } => ("response.function_call_arguments.delta", json!({})),
            };
            let mut body = json!({"item_id": item_id, "output_index": index, "delta": text});
            merge(&mut body, extra);
            v.push(out.event(name, body));
        }
        SegmentEvent::Close { index } => {
            let seg = &segs[index];
            let item_id = echo.item_id(&seg.kind, index);
            let base = json!({"item_id": item_id, "output_index": index});
            match &seg.kind {
                SegmentKind::Text => {
                    let mut b = base.clone();
                    merge(
                        &mut b,
                        json!({"content_index": 0, "text": seg.text, "logprobs": []}),
                    );
                    v.push(out.event("response.output_text.done", b));
                    let mut b = base;
                    merge(
                        &mut b,
                        json!({"content_index": 0, "part": OutputText::new(seg.text.clone())}),
                    );
                    v.push(out.event("response.content_part.done", b));
                }
                SegmentKind::Reasoning => {
                    let mut b = base;
                    merge(&mut b, json!({"content_index": 0, "text": seg.text}));
                    v.push(out.event("response.reasoning_text.done", b));
                }
                SegmentKind::Call { name, .. } => {
                    let mut b = base;
                    merge(&mut b, json!({"name": name, "arguments": seg.text}));
                    v.push(out.event("response.function_call_arguments.done", b));
                }
            }
            v.push(out.event(
                "response.output_item.done",
                json!({"output_index": index, "item": echo.item(index, seg, true)}),
            ));
        }
    }
    v
}

fn merge(into: &mut Value, extra: Value) {
    if let (Some(a), Value::Object(b)) = (into.as_object_mut(), extra) {
        a.extend(b);
    }
}

/// `response.created`, `response.in_progress`, the items' events, then `response.completed`
/// (or `response.incomplete` at `max_output_tokens`, or `error` and `response.failed`).
/// Dropping the stream (client gone) drops the engine request, which aborts it.
fn stream(run: Run, started: Started) -> impl futures_util::Stream<Item = SseItem> + Send {
    let Started { plan, tracked, .. } = started;
    async_stream::stream! {
        let mut out = Events { seq: 0 };
        let created = run.echo.object("in_progress", Vec::new(), None);
        yield out.event("response.created", json!({"response": created}));
        yield out.event("response.in_progress", json!({"response": created}));
        let mut parser = ChoiceParser::new(&plan.output);
        let mut seg = Segmenter::new();
        let Some(mut t) = tracked.into_iter().next() else { return };
        loop {
            let o = match t.next().await {
                Some(RequestEvent::Output(o)) => o,
                other => {
                    let err = match other {
                        Some(RequestEvent::Error(e)) => ApiError::Engine(e),
                        _ => ApiError::Engine("the request ended without finishing".into()),
                    };
                    tracing::warn!("response stream ended by an error: {err}");
                    let body = err.body().error;
                    yield out.event("error", json!({"code": body.code, "message": body.message, "param": body.param}));
                    let mut failed = run.echo.object("failed", seg.segments().iter().enumerate().map(|(i, s)| run.echo.item(i, s, true)).collect(), None);
                    failed.error = Some(json!({"code": "server_error", "message": body.message}));
                    yield out.event("response.failed", json!({"response": failed}));
                    return;
                }
            };
            let mut d = parser.push(&o.text);
            if o.finish_reason.is_some() {
                d.append(parser.finish());
            }
            let mut evs = seg.push(d);
            if o.finish_reason.is_some() {
                evs.extend(seg.finish());
            }
            for e in evs {
                for item in segment_events(&mut out, &run.echo, seg.segments(), e) {
                    yield item;
                }
            }
            if let Some(reason) = o.finish_reason {
                let segments = seg.into_segments();
                let obj = run.finish(&segments, Some(reason), o.num_output_tokens, o.num_cached_tokens);
                let name = if obj.status == "incomplete" { "response.incomplete" } else { "response.completed" };
                yield out.event(name, json!({"response": obj}));
                return;
            }
        }
    }
}
