//! Benchmark building blocks behind `flare bench`: datasets, arrivals, the OpenAI streaming
//! client, metrics as `vllm bench` defines them, in-process runs, result JSON and SVG plots.

pub mod arrivals;
pub mod client;
pub mod dataset;
pub mod env;
pub mod error;
pub mod figures;
pub mod grounded;
pub mod metrics;
pub mod offline;
pub mod plot;
pub mod result;
pub mod sse;
pub mod stats;

pub use error::BenchError;
