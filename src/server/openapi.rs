//! The OpenAPI document served at /openapi.json, generated from the handlers and wire types.

use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

use super::routes::{chat, completions, models, ops, tokenize};

#[derive(OpenApi)]
#[openapi(
    info(
        title = "flare",
        description = "OpenAI-compatible inference server (chat and text completions, models, tokenizer, health, metrics)."
    ),
    paths(
        chat::chat_completions,
        completions::completions,
        models::list_models,
        models::retrieve_model,
        tokenize::tokenize,
        tokenize::detokenize,
        ops::health,
        ops::metrics,
    ),
    modifiers(&BearerAuth)
)]
pub struct ApiDoc;

/// Declares the `bearer` scheme the /v1 paths refer to.
struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, api: &mut utoipa::openapi::OpenApi) {
        let components = api.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
}
