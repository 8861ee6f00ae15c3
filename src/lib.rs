//! flare: continuous-batching inference engine for Llama-family models on candle.

pub mod bench;
pub mod chat_template;
pub mod cpu;
pub mod engine;
pub mod eval;
pub mod fuzzing;
pub mod grpc;
pub mod guidance;
pub mod kv;
pub mod layers;
pub mod models;
pub mod ops;
pub mod quant;
pub mod request;
pub mod router;
pub mod runner;
pub mod sample;
pub mod scheduler;
pub mod server;
pub mod spec;
pub mod tokenizer;
pub mod tools;
