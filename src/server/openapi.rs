//! The OpenAPI document served at /openapi.json, generated from the handlers and wire types.

use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

use super::routes::{chat, completions, messages, models, ops, responses, tokenize};

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
        responses::create_response,
        responses::get_response,
        responses::delete_response,
        messages::create_message,
        messages::count_tokens,
        tokenize::tokenize,
        tokenize::detokenize,
        ops::health,
        ops::metrics,
    ),
    // Streamed chat chunks (described per SSE event by `openapi_constraints`).
    components(schemas(crate::server::wire::ChatCompletionChunk)),
    modifiers(&BearerAuth)
)]
pub struct ApiDoc;

impl ApiDoc {
    /// The document as this server behaves: the /v1 paths declare the bearer scheme only when
    /// API keys are configured (otherwise no `Authorization` is needed, and saying so would
    /// be false).
    pub fn for_server(keys_configured: bool) -> utoipa::openapi::OpenApi {
        let mut doc = Self::openapi();
        if !keys_configured {
            for item in doc.paths.paths.values_mut() {
                for op in [
                    &mut item.get,
                    &mut item.post,
                    &mut item.put,
                    &mut item.delete,
                    &mut item.patch,
                ]
                .into_iter()
                .flatten()
                {
                    op.security = None;
                    // No 401 either.
                    op.responses.responses.remove("401");
                }
            }
            if let Some(c) = doc.components.as_mut() {
                c.security_schemes.remove("bearer");
            }
        }
        doc
    }
}

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
