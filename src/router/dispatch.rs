//! The front of a multi-model server: one router per model (every route of a single-model
//! server works per model unchanged), and a dispatcher that reads a request's `model` and hands
//! it to that model's router, or to a cascade route. `/v1/models`, `/health` and `/metrics`
//! aggregate over the models; API keys and their limits are checked once, here, so a key's
//! budget is global.

use std::sync::{Arc, OnceLock};

use axum::body::Body;
use axum::extract::{Path, Request, State};
use axum::http::{header, HeaderValue, Method, StatusCode};
use axum::middleware;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{json, Value};
use tower::ServiceExt;

use super::cascade::Route;
use super::confidence::Api;
use super::metrics::RouteMetrics;
use super::promtext;
use crate::server::limits::{self, RequestGuard};
use crate::server::wire::{ErrorBody, ErrorResponse};
use crate::server::{ApiError, AppState};

/// Response header naming the model that answered.
pub const MODEL_HEADER: &str = "x-flare-model";

/// One served model: its names, its state and its own router.
pub struct LocalModel {
    pub names: Vec<String>,
    pub state: Arc<AppState>,
    pub app: Router,
    failed: OnceLock<String>,
}

impl LocalModel {
    pub fn new(state: Arc<AppState>) -> Arc<Self> {
        Arc::new(Self {
            names: state.config.served_model_names.clone(),
            app: crate::server::router(state.clone()),
            state,
            failed: OnceLock::new(),
        })
    }

    /// Marks the model as failed (it failed to load, or its engine died); it stays so.
    pub fn set_failed(&self, why: String) {
        tracing::error!("model `{}` failed: {why}", self.names[0]);
        let _ = self.failed.set(why);
    }

    pub fn failure(&self) -> Option<String> {
        self.failed.get().cloned()
    }

    /// `ready`, `loading`, `failed` or `unavailable` (loaded, but stopping or stopped).
    pub fn status(&self) -> &'static str {
        if self.failed.get().is_some() {
            "failed"
        } else if self.state.is_healthy() {
            "ready"
        } else if self.state.engine().is_some() {
            "unavailable"
        } else {
            "loading"
        }
    }
}

/// Everything the front shares.
pub struct Front {
    pub models: Vec<Arc<LocalModel>>,
    pub routes: Vec<Arc<Route>>,
    /// Holds the API keys and their limits for every model (never loads a model).
    pub gate: Arc<AppState>,
    pub route_metrics: Arc<RouteMetrics>,
}

impl Front {
    pub fn model(&self, name: &str) -> Option<&Arc<LocalModel>> {
        self.models
            .iter()
            .find(|m| m.names.iter().any(|n| n == name))
    }

    fn route(&self, name: &str) -> Option<&Arc<Route>> {
        self.routes.iter().find(|r| r.name() == name)
    }

    /// Begins shutdown on every model: new requests get 503, running ones go on.
    pub fn begin_shutdown(&self) {
        self.gate.begin_shutdown();
        for m in &self.models {
            m.state.begin_shutdown();
        }
    }
}

/// The app: auth and key limits on /v1/*, then dispatch by `model`.
pub fn router(front: Arc<Front>) -> Router {
    let max = front.gate.config.max_request_bytes;
    let v1 = Router::new()
        .route("/v1/models", get(list_models))
        .route("/v1/models/{*model}", get(retrieve_model))
        .route("/v1/{*rest}", post(dispatch))
        .route_layer(middleware::from_fn_with_state(
            front.gate.clone(),
            limits::authenticate_and_admit,
        ));
    Router::new()
        .merge(v1)
        .route("/health", get(health))
        .route("/metrics", get(metrics))
        .fallback(dispatch)
        .layer(axum::extract::DefaultBodyLimit::max(max))
        .with_state(front)
}

fn error(status: StatusCode, kind: &str, code: &str, param: Option<&str>, msg: String) -> Response {
    let body = ErrorResponse {
        error: ErrorBody {
            message: msg,
            kind: kind.into(),
            param: param.map(str::to_string),
            code: Some(code.into()),
        },
    };
    (status, Json(body)).into_response()
}

/// 503 for a model that failed to load (or whose engine died).
pub fn failed_model(name: &str, why: &str) -> Response {
    error(
        StatusCode::SERVICE_UNAVAILABLE,
        "server_error",
        "model_unavailable",
        Some("model"),
        format!("The model `{name}` is not available: {why}"),
    )
}

/// Any request by its body's `model`: a cascade route, a model, or (absent) the first model.
async fn dispatch(State(front): State<Arc<Front>>, req: Request) -> Response {
    let (parts, body) = req.into_parts();
    let max = front.gate.config.max_request_bytes;
    let bytes = if parts.method == Method::POST {
        match axum::body::to_bytes(body, max).await {
            Ok(b) => b,
            Err(_) => return ApiError::PayloadTooLarge(max).into_response(),
        }
    } else {
        Default::default()
    };
    let parsed: Option<Value> = serde_json::from_slice(&bytes).ok();
    let requested = parsed
        .as_ref()
        .and_then(|v| v.get("model"))
        .and_then(Value::as_str)
        .filter(|m| !m.is_empty())
        .map(str::to_string);
    if let Some(name) = &requested {
        if let Some(route) = front.route(name) {
            let Some(api) = Api::from_path(parts.uri.path()) else {
                return ApiError::invalid(
                    "model",
                    format!(
                        "`{name}` is a cascade route, served on /v1/chat/completions and \
                         /v1/completions only."
                    ),
                )
                .into_response();
            };
            let guard = parts.extensions.get::<Arc<RequestGuard>>().cloned();
            return route.clone().run(api, parsed.expect("parsed"), guard).await;
        }
    }
    let model = match &requested {
        Some(name) => match front.model(name) {
            Some(m) => m,
            None => return ApiError::ModelNotFound(name.clone()).into_response(),
        },
        None => match front.models.first() {
            Some(m) => m,
            None => return ApiError::RouteNotFound(parts.uri.path().to_string()).into_response(),
        },
    };
    if let Some(why) = model.failure() {
        return failed_model(&model.names[0], &why);
    }
    let req = Request::from_parts(parts, Body::from(bytes));
    let Ok(mut resp) = model.app.clone().oneshot(req).await;
    if let Ok(v) = HeaderValue::from_str(&model.names[0]) {
        resp.headers_mut().insert(MODEL_HEADER, v);
    }
    resp
}

/// Every ready model's cards (asked of its own router) and one card per route.
async fn cards(front: &Front) -> Vec<Value> {
    let mut out = Vec::new();
    for m in &front.models {
        if m.status() != "ready" {
            continue;
        }
        let req = Request::get("/v1/models")
            .body(Body::empty())
            .expect("request");
        let Ok(resp) = m.app.clone().oneshot(req).await;
        if !resp.status().is_success() {
            continue;
        }
        if let Ok(b) = axum::body::to_bytes(resp.into_body(), 1 << 20).await {
            if let Ok(v) = serde_json::from_slice::<Value>(&b) {
                out.extend(v["data"].as_array().cloned().unwrap_or_default());
            }
        }
    }
    for r in &front.routes {
        out.push(json!({
            "id": r.name(),
            "object": "model",
            "created": chrono::Utc::now().timestamp(),
            "owned_by": "flare",
            "root": format!("route:{}", r.target_names().join(",")),
        }));
    }
    out
}

async fn list_models(State(front): State<Arc<Front>>) -> Response {
    Json(json!({"object": "list", "data": cards(&front).await})).into_response()
}

async fn retrieve_model(State(front): State<Arc<Front>>, Path(model): Path<String>) -> Response {
    match cards(&front).await.into_iter().find(|c| c["id"] == model) {
        Some(c) => Json(c).into_response(),
        None => ApiError::ModelNotFound(model).into_response(),
    }
}

/// 200 when at least one model is ready and none is still loading; the body says each model's
/// state (a failed one with its reason).
async fn health(State(front): State<Arc<Front>>) -> Response {
    let mut models = serde_json::Map::new();
    let (mut ready, mut loading) = (0, 0);
    for m in &front.models {
        let status = m.status();
        ready += usize::from(status == "ready");
        loading += usize::from(status == "loading");
        let mut entry = json!({"status": status});
        if let Some(why) = m.failure() {
            entry["error"] = Value::from(why);
        }
        models.insert(m.names[0].clone(), entry);
    }
    let ok = loading == 0 && (ready > 0 || front.models.is_empty());
    let status = if !ok {
        "unavailable"
    } else if ready == front.models.len() {
        "ok"
    } else {
        "degraded"
    };
    let code = if ok {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let routes: Vec<&str> = front.routes.iter().map(|r| r.name()).collect();
    (
        code,
        Json(json!({"status": status, "models": models, "routes": routes})),
    )
        .into_response()
}

/// Every model's metrics (each series labelled `model_name`), the keys' counters and the
/// routes' counters, merged into one exposition.
async fn metrics(State(front): State<Arc<Front>>) -> Response {
    let mut texts = Vec::new();
    for m in &front.models {
        if let Some(engine) = m.state.engine() {
            m.state.metrics.refresh(&engine.stats());
        }
        texts.push(m.state.metrics.render());
    }
    // The gate only ever counts per-key tokens; its other series would be empty.
    let keys = promtext::merge([front.gate.metrics.render().as_str()]);
    let keys: String = keys
        .split("\n\n")
        .filter(|block| block.contains("flare:key_"))
        .map(|b| format!("{b}\n\n"))
        .collect();
    texts.push(keys);
    texts.push(front.route_metrics.render());
    let body = promtext::merge(texts.iter().map(String::as_str));
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        body,
    )
        .into_response()
}
