//! OpenAI-compatible HTTP server (`flare serve`): routes, wire types, validation, SSE,
//! metrics, auth and the one error type, in front of an [`crate::engine::EngineHandle`].

mod auth;
pub mod conn;
mod convert;
pub mod dry_run;
mod error;
mod extract;
mod generate;
pub mod keys;
pub mod limits;
mod load;
mod logprobs;
mod metrics;
mod openapi;
mod openapi_apis;
mod openapi_constraints;
mod response_store;
mod routes;
mod segments;
mod serve;
mod sse;
mod state;
mod structured;
mod tools;
mod validate;
pub mod wire;
pub mod write_stall;

pub use error::ApiError;
// For the gRPC service (crate::grpc): the HTTP API's own path to the engine.
pub use load::{load_into, spawn_engine};
pub use openapi::ApiDoc;
pub(crate) use routes::completions::start as start_completion;
pub use routes::router;
pub use serve::{serve, shutdown_signal};
pub use state::{AppState, Loaded, ServerConfig};
pub use validate::Job;
