//! Model runners: turn a scheduled batch into sampled tokens.

pub mod candle;
