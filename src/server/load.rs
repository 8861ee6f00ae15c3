//! Loading a model for the server: the engine is built on its own thread (where it will run),
//! and the tokenizer and context length come back with its handle.

use std::sync::Arc;

use anyhow::{Context, Result};

use super::state::AppState;
use crate::engine::{build_engine, EngineArgs, EngineHandle};
use crate::guidance::Guidance;
use crate::tokenizer::Tokenizer;

/// What the server reports about a loaded model besides its engine and tokenizer.
pub struct LoadedInfo {
    pub max_model_len: usize,
    pub architecture: String,
    /// The weights' quantization format, for /v1/models (None: dense).
    pub quantization: Option<String>,
    /// The engine's grammar compiler (Err: why structured outputs are unavailable).
    pub guidance: Result<Arc<Guidance>, String>,
}

/// A running engine for `args`, its tokenizer and what /v1/models reports about it.
pub fn spawn_engine(args: EngineArgs) -> Result<(EngineHandle, Arc<Tokenizer>, LoadedInfo)> {
    let (tx, rx) = std::sync::mpsc::channel();
    let engine = EngineHandle::spawn(move || {
        let loaded = build_engine(&args)?;
        let info = LoadedInfo {
            max_model_len: loaded.max_model_len,
            architecture: loaded.config.model_type.clone(),
            quantization: loaded.config.quantization.as_ref().map(|q| q.name()),
            guidance: loaded.guidance.clone(),
        };
        let _ = tx.send((loaded.tokenizer.clone(), info));
        Ok(loaded.engine)
    })?;
    let (tokenizer, info) = rx.recv().context("engine built without a tokenizer")?;
    Ok((engine, tokenizer, info))
}

/// Loads the model and makes it available to `state` (blocking; /health turns 200 after).
pub fn load_into(state: &AppState, args: EngineArgs) -> Result<()> {
    let (engine, tokenizer, info) = spawn_engine(args)?;
    state.set_quantization(info.quantization.clone());
    state.set_loaded_with_guidance(
        engine,
        tokenizer,
        info.max_model_len,
        info.architecture,
        info.guidance,
    );
    Ok(())
}
