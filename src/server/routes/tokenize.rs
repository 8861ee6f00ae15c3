//! POST /tokenize and /detokenize (vLLM's): the model's tokenizer and chat template over HTTP.

use std::sync::Arc;

use axum::extract::State;
use axum::Json;

use super::blocking;
use crate::server::error::ApiError;
use crate::server::extract::OpenAiJson;
use crate::server::state::AppState;
use crate::server::validate;
use crate::server::wire::{
    DetokenizeRequest, DetokenizeResponse, ErrorResponse, TokenizeRequest, TokenizeResponse,
};

#[utoipa::path(
    post,
    path = "/tokenize",
    request_body = TokenizeRequest,
    responses(
        (status = 200, description = "Token ids", body = TokenizeResponse),
        (status = 400, description = "Neither prompt nor messages, or bad messages", body = ErrorResponse),
        (status = 404, description = "Unknown model", body = ErrorResponse),
        (status = 413, description = "Body too large", body = ErrorResponse),
        (status = 503, description = "Model not loaded yet", body = ErrorResponse),
    )
)]
pub async fn tokenize(
    State(state): State<Arc<AppState>>,
    OpenAiJson(req): OpenAiJson<TokenizeRequest>,
) -> Result<Json<TokenizeResponse>, ApiError> {
    state.check_model(req.model.as_deref())?;
    let resp = blocking(&state, move |loaded| {
        let tokens = match (&req.messages, &req.prompt) {
            (Some(messages), _) => validate::chat_prompt_ids(
                loaded,
                messages,
                None,
                req.add_generation_prompt.unwrap_or(true),
            )?,
            (None, Some(prompt)) => {
                validate::encode(loaded, prompt, req.add_special_tokens.unwrap_or(true))?
            }
            (None, None) => {
                return Err(ApiError::invalid(
                    "prompt",
                    "Give `prompt` (text) or `messages` (chat).",
                ))
            }
        };
        Ok(TokenizeResponse {
            count: tokens.len(),
            max_model_len: loaded.max_model_len,
            tokens,
        })
    })
    .await?;
    Ok(Json(resp))
}

#[utoipa::path(
    post,
    path = "/detokenize",
    request_body = DetokenizeRequest,
    responses(
        (status = 200, description = "The text of the tokens", body = DetokenizeResponse),
        (status = 400, description = "A token id outside the vocabulary", body = ErrorResponse),
        (status = 404, description = "Unknown model", body = ErrorResponse),
        (status = 413, description = "Body too large", body = ErrorResponse),
        (status = 503, description = "Model not loaded yet", body = ErrorResponse),
    )
)]
pub async fn detokenize(
    State(state): State<Arc<AppState>>,
    OpenAiJson(req): OpenAiJson<DetokenizeRequest>,
) -> Result<Json<DetokenizeResponse>, ApiError> {
    state.check_model(req.model.as_deref())?;
    let resp = blocking(&state, move |loaded| {
        validate::check_ids(&req.tokens, loaded.tokenizer.vocab_size(), "tokens")?;
        let prompt = loaded
            .tokenizer
            .decode(&req.tokens, false)
            .map_err(|e| ApiError::invalid("tokens", format!("Could not decode: {e}")))?;
        Ok(DetokenizeResponse { prompt })
    })
    .await?;
    Ok(Json(resp))
}
