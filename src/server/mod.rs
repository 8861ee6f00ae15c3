//! OpenAI-compatible HTTP server (`flare serve`): routes, wire types, validation, SSE,
//! metrics, auth and the one error type, in front of an [`crate::engine::EngineHandle`].

mod auth;
mod conn;
mod error;
mod extract;
mod generate;
pub mod keys;
pub mod limits;
mod load;
mod logprobs;
mod metrics;
mod openapi;
mod openapi_constraints;
mod routes;
mod serve;
mod sse;
mod state;
mod structured;
mod tools;
mod validate;
pub mod wire;

pub use error::ApiError;
pub use load::{load_into, spawn_engine};
pub use openapi::ApiDoc;
pub use routes::router;
pub use serve::{serve, shutdown_signal};
pub use state::{AppState, Loaded, ServerConfig};
