//! Builds a ready engine from command-line style arguments: model, tokenizer, KV cache size.

use std::sync::Arc;

use anyhow::{Context, Result};
use candle_core::{DType, Device};

use super::EngineCore;
use crate::models::{config::LlamaConfig, load_model, source};
use crate::runner::candle::{CandleForward, CandleRunner};
use crate::scheduler::{config::SchedulerConfig, Scheduler};
use crate::tokenizer::Tokenizer;

/// Everything needed to load a model and size the engine around it (vLLM's names).
#[derive(Debug, Clone)]
pub struct EngineArgs {
    /// Local HF dir, .gguf file, hub repo id; None: the default model.
    pub model: Option<String>,
    pub revision: Option<String>,
    /// Weights/activations dtype for safetensors models (GGUF computes in f32).
    pub dtype: DType,
    pub device: Device,
    /// Bytes for K/V; None: enough for `max_num_seqs` full-length sequences, at most 2 GiB.
    pub kv_cache_memory: Option<usize>,
    /// Cap on prompt + output tokens; None: the model's context length (as far as the cache holds).
    pub max_model_len: Option<usize>,
    pub scheduler: SchedulerConfig,
}

impl Default for EngineArgs {
    fn default() -> Self {
        Self {
            model: None,
            revision: None,
            dtype: DType::F32,
            device: Device::Cpu,
            kv_cache_memory: None,
            max_model_len: None,
            scheduler: SchedulerConfig::default(),
        }
    }
}

pub struct LoadedEngine {
    pub engine: EngineCore<CandleRunner>,
    pub tokenizer: Arc<Tokenizer>,
    pub config: LlamaConfig,
    pub model_files: source::ModelFiles,
    pub num_blocks: usize,
    pub max_model_len: usize,
}

const DEFAULT_KV_CAP: usize = 2 << 30;

pub fn build_engine(args: &EngineArgs) -> Result<LoadedEngine> {
    let files = source::resolve(args.model.as_deref(), args.revision.as_deref())?;
    tracing::info!("loading {}", files.path().display());
    let model = load_model(&files, args.dtype, &args.device)?;
    let tokenizer = match &files {
        source::ModelFiles::HfDir(dir) => Tokenizer::from_hf_dir(dir)?,
        source::ModelFiles::Gguf(path) => {
            let mut f = std::fs::File::open(path)?;
            let content = candle_core::quantized::gguf_file::Content::read(&mut f)
                .with_context(|| format!("reading {}", path.display()))?;
            Tokenizer::from_gguf(&content)?
        }
    };
    let cfg = model.config().clone();
    let kv_dtype = model.dtype();
    let bytes_per_token = cfg.kv_bytes_per_token(kv_dtype.size_in_bytes());
    let block_size = args.scheduler.block_size;
    let wanted_len = args.max_model_len.unwrap_or(cfg.max_position_embeddings);
    let kv_bytes = args.kv_cache_memory.unwrap_or_else(|| {
        (wanted_len * args.scheduler.max_num_seqs.min(16) * bytes_per_token).min(DEFAULT_KV_CAP)
    });
    let num_blocks = kv_bytes / (bytes_per_token * block_size);
    anyhow::ensure!(
        num_blocks > 0,
        "KV cache memory of {kv_bytes} bytes holds no block of {block_size} tokens"
    );
    let max_model_len = match args.max_model_len {
        Some(n) => n,
        None => wanted_len.min(num_blocks * block_size),
    };
    tracing::info!(
        "KV cache: {num_blocks} blocks of {block_size} tokens = {} tokens, {bytes_per_token} bytes per token ({} MiB); max_model_len {max_model_len}",
        num_blocks * block_size,
        (num_blocks * block_size * bytes_per_token) >> 20
    );
    let mut eos = tokenizer.eos_token_ids.clone();
    for id in &cfg.eos_token_ids {
        if !eos.contains(id) {
            eos.push(*id);
        }
    }
    let scheduler = Scheduler::new(
        args.scheduler.clone(),
        num_blocks,
        max_model_len,
        eos.clone(),
    )?;
    let forward = CandleForward::new(model, num_blocks, block_size, kv_dtype)?;
    let runner = CandleRunner::new(forward, eos);
    let tokenizer = Arc::new(tokenizer);
    Ok(LoadedEngine {
        engine: EngineCore::new(scheduler, runner, tokenizer.clone()),
        tokenizer,
        config: cfg,
        model_files: files,
        num_blocks,
        max_model_len,
    })
}
