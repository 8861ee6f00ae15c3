//! Errors of the benchmark library (the CLI wraps them in anyhow at its edge).

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    #[error("reading {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("parsing {path}: {message}")]
    Dataset { path: PathBuf, message: String },
    #[error("invalid benchmark setting: {0}")]
    Config(String),
    #[error("tokenizer: {0}")]
    Tokenizer(#[from] crate::tokenizer::TokenizerError),
    // anyhow::Error is not a std Error, so it cannot be a #[source]; `{0:#}` keeps its chain.
    #[error("engine: {0:#}")]
    Engine(anyhow::Error),
    #[error("HTTP: {0}")]
    Http(#[from] reqwest::Error),
    #[error("server answered {status}: {body}")]
    Status { status: u16, body: String },
    #[error("stream: {0}")]
    Stream(String),
    #[error("JSON: {0}")]
    Json(#[from] serde_json::Error),
    #[error("plot: {0}")]
    Plot(String),
}

pub type Result<T, E = BenchError> = std::result::Result<T, E>;
