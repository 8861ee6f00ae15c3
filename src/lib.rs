//! flare: continuous-batching inference engine for Llama-family models on candle.

pub mod chat_template;
pub mod request;
pub mod tokenizer;
