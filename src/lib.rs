//! flare: continuous-batching inference engine for Llama-family models on candle.

pub mod request;
pub mod sample;
