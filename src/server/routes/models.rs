//! GET /v1/models and /v1/models/{model}: the served model under each of its names.

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::Json;

use super::unix_now;
use crate::server::error::ApiError;
use crate::server::state::AppState;
use crate::server::wire::{ErrorResponse, ModelCard, ModelList};

fn cards(state: &AppState) -> Result<Vec<ModelCard>, ApiError> {
    let loaded = state.loaded()?;
    Ok(state
        .config
        .served_model_names
        .iter()
        .map(|name| ModelCard {
            id: name.clone(),
            object: "model".into(),
            created: unix_now(),
            owned_by: "flare".into(),
            root: state.config.model_root.clone(),
            max_model_len: loaded.max_model_len,
            context_length: loaded.max_model_len,
            architecture: loaded.architecture.clone(),
            quantization: state.quantization(),
        })
        .collect())
}

#[utoipa::path(
    get,
    path = "/v1/models",
    responses(
        (status = 200, description = "The served model", body = ModelList),
        (status = 401, description = "Missing or wrong API key", body = ErrorResponse),
        (status = 503, description = "Model not loaded yet", body = ErrorResponse),
    ),
    security(("bearer" = []))
)]
pub async fn list_models(State(state): State<Arc<AppState>>) -> Result<Json<ModelList>, ApiError> {
    Ok(Json(ModelList {
        object: "list".into(),
        data: cards(&state)?,
    }))
}

#[utoipa::path(
    get,
    path = "/v1/models/{model}",
    params(("model" = String, Path, description = "A served model name")),
    responses(
        (status = 200, description = "The model", body = ModelCard),
        (status = 404, description = "Unknown model", body = ErrorResponse),
    ),
    security(("bearer" = []))
)]
pub async fn retrieve_model(
    State(state): State<Arc<AppState>>,
    Path(model): Path<String>,
) -> Result<Json<ModelCard>, ApiError> {
    cards(&state)?
        .into_iter()
        .find(|c| c.id == model)
        .map(Json)
        .ok_or(ApiError::ModelNotFound(model))
}
