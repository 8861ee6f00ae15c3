//! The `flare.v1.Flare` service: requests converted to the HTTP API's completion request and run
//! on its path; `ApiError`s mapped to gRPC status codes here.

use std::pin::Pin;
use std::sync::Arc;
use std::time::Instant;

use futures_util::Stream;
use serde_json::{json, Value};
use tonic::metadata::MetadataMap;
use tonic::{Code, Request, Response, Status};

use super::pb::{self, flare_server::Flare, generate_request, structured_output};
use crate::engine::RequestEvent;
use crate::server::limits::RequestGuard;
use crate::server::wire::{CompletionRequest, PromptInput, SamplingFields, StopField};
use crate::server::{start_completion, ApiError, AppState};

pub struct FlareService {
    state: Arc<AppState>,
}

impl FlareService {
    pub fn new(state: Arc<AppState>) -> Self {
        Self { state }
    }

    /// With API keys configured, `authorization: Bearer <key>` (or `x-api-key`) metadata must
    /// name one; its limits apply as on HTTP.
    fn authenticate(&self, md: &MetadataMap) -> Result<Option<Arc<RequestGuard>>, Status> {
        let keys = self.state.keys();
        if keys.is_empty() {
            return Ok(None);
        }
        let token = md
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split_once(' '))
            .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
            .map(|(_, t)| t.trim())
            .or_else(|| md.get("x-api-key").and_then(|v| v.to_str().ok()));
        let caller = token
            .and_then(|t| keys.authenticate(t))
            .ok_or_else(|| status(ApiError::Unauthorized))?;
        let guard = caller
            .admit()
            .map_err(|l| status(ApiError::rate_limited(l)))?;
        Ok(Some(Arc::new(guard)))
    }
}

/// The HTTP status's gRPC counterpart; the message names the field.
pub fn status(e: ApiError) -> Status {
    let code = match e.status().as_u16() {
        400 => Code::InvalidArgument,
        401 => Code::Unauthenticated,
        404 => Code::NotFound,
        413 | 429 => Code::ResourceExhausted,
        503 => Code::Unavailable,
        _ => Code::Internal,
    };
    let body = e.body().error;
    let message = match body.param {
        Some(p) => format!("{} (field `{}`)", body.message, grpc_param(&p)),
        None => body.message,
    };
    Status::new(code, message)
}

/// The proto's name of a completion request field.
fn grpc_param(p: &str) -> String {
    match p {
        "guided_json" | "response_format" => "structured.json_schema".into(),
        "guided_regex" => "structured.regex".into(),
        "guided_choice" => "structured.choice".into(),
        "guided_grammar" => "structured.grammar".into(),
        "logprobs" => "top_logprobs".into(),
        "prompt" => "prompt".into(),
        other => format!("sampling.{other}"),
    }
}

fn invalid(param: &str, message: impl Into<String>) -> ApiError {
    ApiError::invalid(param, message)
}

/// The completion request a `GenerateRequest` means.
pub fn to_completion(req: pb::GenerateRequest) -> Result<CompletionRequest, ApiError> {
    let prompt = match req.prompt {
        Some(generate_request::Prompt::Text(s)) => PromptInput::Text(s),
        Some(generate_request::Prompt::TokenIds(t)) => PromptInput::Tokens(t.ids),
        None => return Err(invalid("prompt", "`text` or `token_ids` is required.")),
    };
    let s = req.sampling.unwrap_or_default();
    let mut sampling = SamplingFields {
        model: Some(req.model).filter(|m| !m.is_empty()),
        max_tokens: s.max_tokens.map(i64::from),
        temperature: s.temperature.map(f64::from),
        top_p: s.top_p.map(f64::from),
        top_k: s.top_k.map(i64::from),
        min_p: s.min_p.map(f64::from),
        presence_penalty: s.presence_penalty.map(f64::from),
        frequency_penalty: s.frequency_penalty.map(f64::from),
        repetition_penalty: s.repetition_penalty.map(f64::from),
        seed: s.seed,
        stop: (!s.stop.is_empty()).then_some(StopField::Many(s.stop)),
        stop_token_ids: (!s.stop_token_ids.is_empty()).then_some(s.stop_token_ids),
        min_tokens: s.min_tokens.map(i64::from),
        ignore_eos: s.ignore_eos,
        ..Default::default()
    };
    match req.structured.and_then(|s| s.kind) {
        None => {}
        Some(structured_output::Kind::JsonSchema(text)) => {
            let schema: Value = serde_json::from_str(&text).map_err(|e| {
                invalid("guided_json", format!("The JSON schema is not JSON: {e}."))
            })?;
            sampling.guided_json = Some(schema);
        }
        Some(structured_output::Kind::JsonObject(true)) => {
            sampling.response_format = Some(json!({"type": "json_object"}));
        }
        Some(structured_output::Kind::JsonObject(false)) => {}
        Some(structured_output::Kind::Regex(r)) => sampling.guided_regex = Some(r),
        Some(structured_output::Kind::Choice(c)) => sampling.guided_choice = Some(c.choices),
        Some(structured_output::Kind::Grammar(g)) => sampling.guided_grammar = Some(g),
    }
    Ok(CompletionRequest {
        prompt,
        sampling,
        echo: None,
        logprobs: req.top_logprobs.map(i64::from),
    })
}

type GenerateStream = Pin<Box<dyn Stream<Item = Result<pb::GenerateResponse, Status>> + Send>>;

#[tonic::async_trait]
impl Flare for FlareService {
    type GenerateStream = GenerateStream;

    async fn generate(
        &self,
        request: Request<pb::GenerateRequest>,
    ) -> Result<Response<GenerateStream>, Status> {
        let arrival = Instant::now();
        let guard = self.authenticate(request.metadata())?;
        let req = to_completion(request.into_inner()).map_err(status)?;
        let started = start_completion(&self.state, guard.as_ref(), req, arrival)
            .await
            .map_err(status)?;
        let prompt_len = started.prompt_ids[0].len() as u32;
        let Some(mut tracked) = started.tracked.into_iter().next() else {
            return Err(Status::internal("no engine request was started"));
        };
        let stream = async_stream::stream! {
            // The key's concurrency slot is held while the stream lives.
            let _guard = guard;
            loop {
                let o = match tracked.next().await {
                    Some(RequestEvent::Output(o)) => o,
                    Some(RequestEvent::Error(e)) => {
                        yield Err(status(ApiError::Engine(e)));
                        return;
                    }
                    None => {
                        yield Err(Status::internal("the request ended without finishing"));
                        return;
                    }
                };
                let finished = o.finish_reason.is_some();
                yield Ok(pb::GenerateResponse {
                    text: o.text,
                    token_ids: o.token_ids,
                    logprobs: o
                        .logprobs
                        .into_iter()
                        .map(|l| pb::TokenLogprob {
                            token_id: l.token,
                            logprob: l.logprob,
                            top: l
                                .top
                                .into_iter()
                                .map(|(token_id, logprob)| pb::TopLogprob { token_id, logprob })
                                .collect(),
                        })
                        .collect(),
                    finish_reason: o
                        .finish_reason
                        .map(|r| r.as_openai().to_string())
                        .unwrap_or_default(),
                    usage: finished.then_some(pb::Usage {
                        prompt_tokens: prompt_len,
                        completion_tokens: o.num_output_tokens as u32,
                        cached_tokens: o.num_cached_tokens as u32,
                    }),
                });
                if finished {
                    return;
                }
            }
        };
        Ok(Response::new(Box::pin(stream)))
    }

    async fn tokenize(
        &self,
        request: Request<pb::TokenizeRequest>,
    ) -> Result<Response<pb::TokenizeResponse>, Status> {
        let _guard = self.authenticate(request.metadata())?;
        let req = request.into_inner();
        let state = self.state.clone();
        state
            .check_model(Some(req.model.as_str()))
            .map_err(status)?;
        let loaded = state.loaded().map_err(status)?;
        let ids = loaded
            .tokenizer
            .encode(&req.text, req.add_special_tokens)
            .map_err(|e| status(invalid("text", format!("Could not tokenize: {e}"))))?;
        Ok(Response::new(pb::TokenizeResponse {
            token_ids: ids,
            max_model_len: loaded.max_model_len as u32,
        }))
    }

    async fn health(
        &self,
        _request: Request<pb::HealthRequest>,
    ) -> Result<Response<pb::HealthResponse>, Status> {
        Ok(Response::new(pb::HealthResponse {
            serving: self.state.is_healthy(),
            model: self.state.model_name().to_string(),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_convert_and_errors_name_proto_fields() {
        let req = pb::GenerateRequest {
            model: String::new(),
            prompt: Some(generate_request::Prompt::TokenIds(pb::TokenIds {
                ids: vec![1, 2],
            })),
            sampling: Some(pb::SamplingParams {
                max_tokens: Some(4),
                temperature: Some(0.0),
                stop: vec!["x".into()],
                ..Default::default()
            }),
            structured: Some(pb::StructuredOutput {
                kind: Some(structured_output::Kind::JsonSchema(
                    "{\"type\":\"object\"}".into(),
                )),
            }),
            top_logprobs: Some(2),
        };
        let c = to_completion(req).unwrap();
        assert!(matches!(c.prompt, PromptInput::Tokens(ref t) if t == &[1, 2]));
        assert_eq!(c.sampling.max_tokens, Some(4));
        assert_eq!(c.sampling.guided_json, Some(json!({"type": "object"})));
        assert_eq!(c.logprobs, Some(2));
        assert!(c.sampling.model.is_none());

        let e = status(invalid("temperature", "bad"));
        assert_eq!(e.code(), Code::InvalidArgument);
        assert!(
            e.message().contains("sampling.temperature"),
            "{}",
            e.message()
        );
        assert_eq!(
            status(ApiError::QueueFull(3)).code(),
            Code::ResourceExhausted
        );
        let none = pb::GenerateRequest::default();
        assert!(to_completion(none).is_err());
    }
}
