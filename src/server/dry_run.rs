//! A request body through everything its route decides before admission: the JSON parsing
//! (`extract::parse`), the Responses and Messages conversions, the model check and validation
//! (template rendering, tokenization, sampling parameters, structured-output compilation). The
//! same functions the handlers call, in their order, without the engine: what the fuzz
//! targets (`crate::fuzzing`) and their corpus replay exercise.

use super::convert::{messages as convert_messages, responses as convert_responses};
use super::error::ApiError;
use super::extract::parse;
use super::routes::responses::not_found;
use super::state::AppState;
use super::validate::{self, Job};
use super::wire::{ChatCompletionRequest, CompletionRequest, MessagesRequest, ResponsesRequest};

/// The POST routes whose bodies are validated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    ChatCompletions,
    Completions,
    Responses,
    Messages,
    CountTokens,
}

impl Endpoint {
    pub const ALL: [Endpoint; 5] = [
        Endpoint::ChatCompletions,
        Endpoint::Completions,
        Endpoint::Responses,
        Endpoint::Messages,
        Endpoint::CountTokens,
    ];
}

/// The engine requests `body` would start on `endpoint` (one per choice), or the error the
/// route answers with.
pub fn dry_run(state: &AppState, endpoint: Endpoint, body: &[u8]) -> Result<Vec<Job>, ApiError> {
    let loaded = state.loaded()?;
    let chat = |req: ChatCompletionRequest| {
        state.check_model(req.sampling.model.as_deref())?;
        validate::chat(loaded, req).map(|plan| plan.jobs)
    };
    match endpoint {
        Endpoint::ChatCompletions => chat(parse::<ChatCompletionRequest>(body)?),
        Endpoint::Completions => {
            let req = parse::<CompletionRequest>(body)?;
            state.check_model(req.sampling.model.as_deref())?;
            validate::completion(loaded, req).map(|plan| plan.jobs)
        }
        Endpoint::Responses => {
            let req = parse::<ResponsesRequest>(body)?;
            let history = match req.previous_response_id.as_deref() {
                Some(id) => state
                    .responses
                    .conversation(id)
                    .ok_or_else(|| not_found(id, "previous_response_id"))?,
                None => Vec::new(),
            };
            let converted = convert_responses::to_chat(&req, history)?;
            chat(converted.chat).map_err(convert_responses::rename)
        }
        Endpoint::Messages | Endpoint::CountTokens => {
            let req = parse::<MessagesRequest>(body)?;
            let count_only = endpoint == Endpoint::CountTokens;
            let chat_req = convert_messages::to_chat(&req, count_only)?;
            if !count_only {
                convert_messages::check_thinking_served(&req, loaded.reasoning_parser.is_some())?;
            }
            chat(chat_req).map_err(convert_messages::rename)
        }
    }
}
