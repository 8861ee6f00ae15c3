//! Operational endpoints: /health, /metrics, /openapi.json, and the 404 and 405 for the rest.

use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};

use crate::scheduler::SchedulingPolicy;
use crate::server::error::ApiError;
use crate::server::openapi::ApiDoc;
use crate::server::openapi_constraints::{self, ServedFacts};
use crate::server::state::AppState;

#[utoipa::path(
    get,
    path = "/health",
    responses(
        (status = 200, description = "Model loaded and engine loop alive"),
        (status = 503, description = "Loading, shutting down, or the engine stopped"),
    )
)]
pub async fn health(State(state): State<Arc<AppState>>) -> StatusCode {
    if state.is_healthy() {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    }
}

#[utoipa::path(
    get,
    path = "/metrics",
    responses((status = 200, description = "Prometheus text format, `flare:` metrics", content_type = "text/plain"))
)]
pub async fn metrics(State(state): State<Arc<AppState>>) -> Response {
    if let Some(engine) = state.engine() {
        state.metrics.refresh(&engine.stats());
    }
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        state.metrics.render(),
    )
        .into_response()
}

/// The document as this server behaves: built per request (it is small and rarely fetched),
/// since it depends on the keys, the loaded model and the configuration.
pub async fn openapi(State(state): State<Arc<AppState>>) -> Response {
    let keyed = !state.keys().is_empty();
    let doc = ApiDoc::for_server(keyed);
    let mut doc = serde_json::to_value(&doc).expect("OpenAPI serializes");
    if let Ok(loaded) = state.loaded() {
        let facts = ServedFacts {
            served_model_names: state.config.served_model_names.clone(),
            vocab_size: loaded.tokenizer.vocab_size(),
            has_chat_template: loaded.template.is_ok(),
            priority_policy: state.config.scheduling_policy == SchedulingPolicy::Priority,
            structured_outputs: loaded.guidance.is_ok(),
            tool_parser: loaded.tool_parser.is_some(),
            empty_text_is_empty: loaded
                .tokenizer
                .encode("", true)
                .is_ok_and(|ids| ids.is_empty()),
            reasoning_parser: loaded.reasoning_parser.is_some(),
        };
        if let Err(e) = openapi_constraints::apply(&mut doc, &facts) {
            return ApiError::Engine(format!("building the OpenAPI document: {e}")).into_response();
        }
    }
    (
        [(header::CONTENT_TYPE, "application/json")],
        doc.to_string(),
    )
        .into_response()
}

pub async fn not_found(uri: Uri) -> ApiError {
    ApiError::RouteNotFound(uri.path().to_string())
}

pub async fn method_not_allowed(method: Method) -> ApiError {
    ApiError::MethodNotAllowed(method.to_string())
}
