//! The HTTP surface: which path goes to which handler, and what they share.

pub(crate) mod chat;
pub(crate) mod completions;
pub(crate) mod messages;
pub(crate) mod models;
pub(crate) mod ops;
pub(crate) mod responses;
pub(crate) mod tokenize;

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use axum::extract::DefaultBodyLimit;
use axum::middleware;
use axum::routing::{get, post};
use axum::Router;
use rand::Rng;

use super::error::ApiError;
use super::limits;
use super::state::{AppState, Loaded};

/// The whole app: OpenAI routes under /v1 (behind the API keys and their limits when keys are
/// configured), and the
/// operational ones (health, metrics, tokenizer, OpenAPI) beside them, as `vllm serve`.
pub fn router(state: Arc<AppState>) -> Router {
    let v1 = Router::new()
        .route("/v1/chat/completions", post(chat::chat_completions))
        .route("/v1/completions", post(completions::completions))
        .route("/v1/models", get(models::list_models))
        .route("/v1/models/{*model}", get(models::retrieve_model))
        .route("/v1/responses", post(responses::create_response))
        .route(
            "/v1/responses/{response_id}",
            get(responses::get_response).delete(responses::delete_response),
        )
        .route_layer(middleware::from_fn_with_state(
            state.clone(),
            limits::authenticate_and_admit,
        ));
    // Anthropic's API: the same keys and limits, errors in Anthropic's shape.
    let anthropic = Router::new()
        .route("/v1/messages", post(messages::create_message))
        .route("/v1/messages/count_tokens", post(messages::count_tokens))
        .route_layer(middleware::from_fn_with_state(
            state.clone(),
            limits::authenticate_and_admit,
        ))
        .route_layer(middleware::from_fn(messages::anthropic_errors));
    Router::new()
        .merge(v1)
        .merge(anthropic)
        .route("/health", get(ops::health))
        .route("/metrics", get(ops::metrics))
        .route("/tokenize", post(tokenize::tokenize))
        .route("/detokenize", post(tokenize::detokenize))
        .route("/openapi.json", get(ops::openapi))
        .fallback(ops::not_found)
        .method_not_allowed_fallback(ops::method_not_allowed)
        .layer(DefaultBodyLimit::max(state.config.max_request_bytes))
        .with_state(state)
}

/// Runs CPU work (template rendering, tokenization) off the async workers; a panic in it
/// becomes a 500, not a dead connection.
async fn blocking<T, F>(state: &Arc<AppState>, f: F) -> Result<T, ApiError>
where
    T: Send + 'static,
    F: FnOnce(&Loaded) -> Result<T, ApiError> + Send + 'static,
{
    let state = state.clone();
    tokio::task::spawn_blocking(move || f(state.loaded()?))
        .await
        .map_err(|e| ApiError::Engine(format!("request preparation failed: {e}")))?
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// What every response of one request repeats: id, creation time, model name.
#[derive(Debug, Clone)]
struct ResponseMeta {
    id: String,
    created: u64,
    model: String,
}

impl ResponseMeta {
    fn new(prefix: &str, state: &AppState) -> Self {
        let n: u128 = rand::rng().random();
        Self {
            id: format!("{prefix}-{n:032x}"),
            created: unix_now(),
            model: state.model_name().to_string(),
        }
    }
}
