//! Model quality checks that need no server: perplexity in the manner of llama.cpp's
//! `llama-perplexity`.

pub mod perplexity;
