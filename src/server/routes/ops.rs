//! Operational endpoints: /health, /metrics, /openapi.json, and the 404 and 405 for the rest.

use std::sync::{Arc, OnceLock};

use axum::extract::State;
use axum::http::{header, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};

use crate::server::error::ApiError;
use crate::server::openapi::ApiDoc;
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

pub async fn openapi(State(state): State<Arc<AppState>>) -> Response {
    static OPEN: OnceLock<String> = OnceLock::new();
    static KEYED: OnceLock<String> = OnceLock::new();
    let keyed = !state.keys().is_empty();
    let doc = if keyed { &KEYED } else { &OPEN }.get_or_init(|| {
        ApiDoc::for_server(keyed)
            .to_json()
            .expect("OpenAPI serializes")
    });
    ([(header::CONTENT_TYPE, "application/json")], doc.as_str()).into_response()
}

pub async fn not_found(uri: Uri) -> ApiError {
    ApiError::RouteNotFound(uri.path().to_string())
}

pub async fn method_not_allowed(method: Method) -> ApiError {
    ApiError::MethodNotAllowed(method.to_string())
}
