//! Loading a model for the server: the engine is built on its own thread (where it will run),
//! and the tokenizer and context length come back with its handle.

use std::sync::Arc;

use anyhow::{Context, Result};

use super::state::AppState;
use crate::engine::{build_engine, EngineArgs, EngineHandle};
use crate::tokenizer::Tokenizer;

/// A running engine for `args`, its tokenizer and its max_model_len.
pub fn spawn_engine(args: EngineArgs) -> Result<(EngineHandle, Arc<Tokenizer>, usize)> {
    let (tx, rx) = std::sync::mpsc::channel();
    let engine = EngineHandle::spawn(move || {
        let loaded = build_engine(&args)?;
        let _ = tx.send((loaded.tokenizer.clone(), loaded.max_model_len));
        Ok(loaded.engine)
    })?;
    let (tokenizer, max_model_len) = rx.recv().context("engine built without a tokenizer")?;
    Ok((engine, tokenizer, max_model_len))
}

/// Loads the model and makes it available to `state` (blocking; /health turns 200 after).
pub fn load_into(state: &AppState, args: EngineArgs) -> Result<()> {
    let (engine, tokenizer, max_model_len) = spawn_engine(args)?;
    state.set_loaded(engine, tokenizer, max_model_len);
    Ok(())
}
