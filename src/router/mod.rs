//! Several models in one server (`flare serve --config FILE`) and cascade routes over them.
//!
//! Each model keeps the single-model server whole (its own `AppState`, engine, scheduler, KV
//! budget and router); [`dispatch`] puts a thin front before them that reads a request's `model`
//! and forwards it, aggregates `/v1/models`, `/health` and `/metrics`, and checks API keys once
//! for all. A route ([`cascade`]) is a virtual model name that answers from the first of its
//! targets whose answer passes the configured confidence tests ([`confidence`]).

pub mod cascade;
pub mod confidence;
pub mod config;
pub mod dispatch;
pub mod eval;
pub mod metrics;
pub mod promtext;
pub mod serve;
pub mod target;
pub mod telemetry;

pub use config::MultiConfig;
pub use dispatch::{router, Front, LocalModel};
