//! Builds a ready engine from command-line style arguments: model, tokenizer, KV cache size.

use std::sync::Arc;

use anyhow::{Context, Result};
use candle_core::{DType, Device};

use super::EngineCore;
use crate::guidance::Guidance;
use crate::kv::KvCacheDtype;
use crate::models::{config::ModelConfig, dummy, source};
use crate::runner::candle::{CandleForward, CandleRunner};
use crate::scheduler::{config::SchedulerConfig, Scheduler};
use crate::spec::{
    draft::DraftModelProposer, ngram::NgramProposer, SpecConfig, SpecDecoder, SpecMethod,
};
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
    /// On a GPU without `kv_cache_memory`: the fraction of device memory flare may use in all
    /// (weights, activations, KV); the KV cache gets what is left of it.
    pub gpu_memory_utilization: f64,
    /// Cap on prompt + output tokens; None: the model's context length (as far as the cache holds).
    pub max_model_len: Option<usize>,
    pub scheduler: SchedulerConfig,
    /// Dummy: random weights for the config `model` names (preset, config.json or HF dir).
    pub load_format: LoadFormat,
    /// Wall-clock limit on compiling one structured-output grammar (`--grammar-compile-timeout`).
    pub grammar_compile_timeout: std::time::Duration,
    /// Quantize a dense checkpoint at load (`fp8`); None: as the checkpoint is.
    pub quantization: Option<String>,
    /// Speculative decoding (`--speculative-config`); None: off.
    pub speculative: Option<SpecConfig>,
    /// What the KV cache stores (`--kv-cache-dtype`).
    pub kv_cache_dtype: KvCacheDtype,
}

/// How weights are obtained (vLLM's `--load-format`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum LoadFormat {
    /// From the model's files (safetensors or GGUF); `preset:NAME` implies dummy.
    #[default]
    Auto,
    /// Random weights of the model's config, made on the device (no weight files needed).
    Dummy,
}

impl Default for EngineArgs {
    fn default() -> Self {
        Self {
            model: None,
            revision: None,
            dtype: DType::F32,
            device: Device::Cpu,
            kv_cache_memory: None,
            gpu_memory_utilization: 0.9,
            max_model_len: None,
            scheduler: SchedulerConfig::default(),
            load_format: LoadFormat::Auto,
            grammar_compile_timeout: Guidance::DEFAULT_COMPILE_TIMEOUT,
            quantization: None,
            speculative: None,
            kv_cache_dtype: KvCacheDtype::Auto,
        }
    }
}

pub struct LoadedEngine {
    pub engine: EngineCore<CandleRunner>,
    pub tokenizer: Arc<Tokenizer>,
    pub config: ModelConfig,
    pub model_files: source::ModelFiles,
    pub num_blocks: usize,
    pub max_model_len: usize,
    /// The grammar compiler the engine uses, for callers that compile ahead (the server);
    /// Err: why structured outputs are unavailable for this model.
    pub guidance: Result<Arc<Guidance>, String>,
}

const DEFAULT_KV_CAP: usize = 2 << 30;

pub fn build_engine(args: &EngineArgs) -> Result<LoadedEngine> {
    let files = match (args.load_format, args.model.as_deref()) {
        (LoadFormat::Dummy, Some(spec)) => source::ModelFiles::Dummy(spec.to_string()),
        (LoadFormat::Dummy, None) => anyhow::bail!("--load-format dummy needs a model config"),
        (LoadFormat::Auto, spec) => source::resolve(spec, args.revision.as_deref())?,
    };
    tracing::info!("loading {}", files.path().display());
    let model = crate::models::load_model_quantized(
        &files,
        args.dtype,
        &args.device,
        args.quantization.as_deref(),
    )?;
    let tokenizer = load_tokenizer(&files)?;
    let cfg = model.config().clone();
    let model_dtype = model.dtype();
    let kv_dtype = args.kv_cache_dtype.cache_dtype(model_dtype);
    let bytes_per_token = cfg.kv_bytes_per_token(kv_dtype.size_in_bytes());
    let block_size = args.scheduler.block_size;
    let allow_long = std::env::var("FLARE_ALLOW_LONG_MAX_MODEL_LEN").is_ok_and(|v| v == "1");
    let wanted_len = context_len(args.max_model_len, &cfg, allow_long)?;
    // Slots a draft model writes past a sequence's tokens.
    let lookahead = args
        .speculative
        .as_ref()
        .map_or(0, SpecConfig::lookahead)
        .max(args.scheduler.num_lookahead_tokens);
    let sized_len = match lookahead {
        0 => wanted_len,
        n => (wanted_len + n).next_multiple_of(block_size),
    };
    let kv_bytes = match (args.kv_cache_memory, &args.device) {
        (Some(bytes), _) => bytes,
        (None, Device::Cpu) => {
            (sized_len * args.scheduler.max_num_seqs.min(16) * bytes_per_token).min(DEFAULT_KV_CAP)
        }
        (None, device) => gpu_kv_budget(
            model.as_ref(),
            &args.scheduler,
            args.gpu_memory_utilization,
            device,
        )?,
    };
    let num_blocks = kv_bytes / (bytes_per_token * block_size);
    anyhow::ensure!(
        num_blocks > 0,
        "KV cache memory of {kv_bytes} bytes holds no block of {block_size} tokens"
    );
    let max_model_len = match args.max_model_len {
        Some(n) => n,
        None => wanted_len.min((num_blocks * block_size).saturating_sub(lookahead)),
    };
    tracing::info!(
        "KV cache: {num_blocks} blocks of {block_size} tokens = {} tokens, {bytes_per_token} bytes per token ({} MiB); max_model_len {max_model_len}",
        num_blocks * block_size,
        (num_blocks * block_size * bytes_per_token) >> 20
    );
    if args.kv_cache_dtype != KvCacheDtype::Auto {
        let model_bytes = cfg.kv_bytes_per_token(model.dtype().size_in_bytes());
        tracing::info!(
            "KV cache dtype {}: {:.1}x the tokens of a {:?} cache in the same memory ({} tokens \
             instead of {})",
            args.kv_cache_dtype.name(),
            model_bytes as f64 / bytes_per_token as f64,
            model.dtype(),
            num_blocks * block_size,
            kv_bytes / (model_bytes * block_size) * block_size,
        );
    }
    let mut eos = tokenizer.eos_token_ids.clone();
    for id in &cfg.eos_token_ids {
        if !eos.contains(id) {
            eos.push(*id);
        }
    }
    let spec = match &args.speculative {
        None => None,
        Some(c) => Some(build_spec(
            c,
            args,
            &tokenizer,
            (cfg.vocab_size, max_model_len),
            num_blocks,
        )?),
    };
    let mut sched_config = args.scheduler.clone();
    if let Some(spec) = &spec {
        debug_assert!(spec.lookahead() <= lookahead);
    }
    sched_config.num_lookahead_tokens = lookahead;
    let scheduler = Scheduler::new(sched_config, num_blocks, max_model_len, eos.clone())?;
    let forward = CandleForward::new(model, num_blocks, block_size, kv_dtype)?;
    let tokenizer = Arc::new(tokenizer);
    let t = std::time::Instant::now();
    let guidance = Guidance::new(tokenizer.clone(), cfg.vocab_size, &eos)
        .map(|g| Arc::new(g.with_compile_timeout(args.grammar_compile_timeout)))
        .map_err(|e| e.to_string());
    match &guidance {
        Ok(_) => tracing::info!("grammar token table built in {:?}", t.elapsed()),
        Err(e) => tracing::warn!("structured outputs unavailable: {e}"),
    }
    let runner = CandleRunner::new(forward, eos);
    Ok(LoadedEngine {
        engine: EngineCore::new(scheduler, runner, tokenizer.clone())
            .with_guidance(guidance.clone())
            .with_spec(spec)
            .with_kv_info(crate::kv::KvCacheInfo {
                dtype: args.kv_cache_dtype,
                block_size,
                bytes_per_token,
                model_dtype_bytes_per_token: cfg.kv_bytes_per_token(model_dtype.size_in_bytes()),
            }),
        guidance,
        tokenizer,
        config: cfg,
        model_files: files,
        num_blocks,
        max_model_len,
    })
}

/// The tokenizer that comes with a model's files (tokenizer.json, GGUF metadata or a dummy's).
pub fn load_tokenizer(files: &source::ModelFiles) -> Result<Tokenizer> {
    Ok(match files {
        source::ModelFiles::HfDir(dir) => Tokenizer::from_hf_dir(dir)?,
        source::ModelFiles::Gguf(path) => {
            let mut f = std::fs::File::open(path)?;
            let content = candle_core::quantized::gguf_file::Content::read(&mut f)
                .with_context(|| format!("reading {}", path.display()))?;
            Tokenizer::from_gguf(&content)?
        }
        source::ModelFiles::Dummy(spec) => dummy::tokenizer(&dummy::resolve(spec)?)?,
    })
}

/// The proposer of `--speculative-config`. A draft model is loaded on the target's device
/// with its own KV tensors of the target's block count and size; its vocabulary (size and
/// every token's text) must be the target's.
fn build_spec(
    config: &SpecConfig,
    args: &EngineArgs,
    target_tok: &Tokenizer,
    (target_vocab, max_model_len): (usize, usize),
    num_blocks: usize,
) -> Result<SpecDecoder> {
    config.validate()?;
    let k = config.num_speculative_tokens;
    let proposer: Box<dyn crate::spec::Proposer> = match config.method {
        SpecMethod::Ngram => Box::new(NgramProposer::new(
            config.prompt_lookup_min,
            config.prompt_lookup_max,
        )),
        SpecMethod::Draft => {
            let spec = config.model.as_deref().context("a draft model is needed")?;
            let files = match args.load_format {
                LoadFormat::Dummy => source::ModelFiles::Dummy(spec.to_string()),
                LoadFormat::Auto => source::resolve(Some(spec), None)?,
            };
            tracing::info!("loading draft model {}", files.path().display());
            let model = crate::models::load_model(&files, args.dtype, &args.device)
                .with_context(|| format!("loading the draft model {spec}"))?;
            let draft_tok = load_tokenizer(&files)?;
            check_same_vocab(target_tok, &draft_tok)
                .with_context(|| format!("draft model {spec}"))?;
            let dtype = model.dtype();
            let forward = CandleForward::new(model, num_blocks, args.scheduler.block_size, dtype)?;
            let draft = DraftModelProposer::new(forward, target_vocab, k)?;
            if draft.max_len() < max_model_len {
                tracing::warn!(
                    "the draft model {spec} was made for {} positions, fewer than max_model_len \
                     {max_model_len}: sequences past them decode without speculation",
                    draft.max_len()
                );
            }
            Box::new(draft)
        }
    };
    Ok(SpecDecoder::new(
        config.clone(),
        proposer,
        args.device.is_cpu(),
    ))
}

/// What the set `--max-model-len` (or, unset, the checkpoint's derived length) leaves: a length
/// past the positions the checkpoint was made for is refused, as vLLM refuses it, because rotary
/// positions past them give unreliable outputs with no error; `FLARE_ALLOW_LONG_MAX_MODEL_LEN=1`
/// allows it anyway (vLLM's `VLLM_ALLOW_LONG_MAX_MODEL_LEN`).
fn context_len(requested: Option<usize>, cfg: &ModelConfig, allow_long: bool) -> Result<usize> {
    let derived = cfg.derived_max_len();
    match requested {
        None => Ok(derived),
        Some(n) if n <= derived => Ok(n),
        Some(n) => {
            anyhow::ensure!(
                allow_long,
                "--max-model-len {n} is greater than the {derived} positions the model was made for \
                 (max_position_embeddings {} and its rope scaling in the checkpoint's config); \
                 positions past them may give wrong outputs. To allow it anyway, set \
                 FLARE_ALLOW_LONG_MAX_MODEL_LEN=1",
                cfg.max_position_embeddings
            );
            tracing::warn!(
                "--max-model-len {n} is greater than the model's {derived} positions \
                 (FLARE_ALLOW_LONG_MAX_MODEL_LEN=1): outputs past them may be wrong"
            );
            Ok(n)
        }
    }
}

/// A draft proposes token ids, so they must mean the same text in both vocabularies.
fn check_same_vocab(target: &Tokenizer, draft: &Tokenizer) -> Result<()> {
    anyhow::ensure!(
        target.vocab_size() == draft.vocab_size(),
        "vocabulary of {} tokens, the target's has {}: a draft must share the target's vocabulary",
        draft.vocab_size(),
        target.vocab_size()
    );
    for id in 0..target.vocab_size() as u32 {
        let (a, b) = (target.id_to_token(id), draft.id_to_token(id));
        anyhow::ensure!(
            a == b,
            "token {id} is {b:?} in the draft's vocabulary but {a:?} in the target's: a draft must share the target's vocabulary"
        );
    }
    Ok(())
}

/// KV bytes on a GPU (vLLM's `--gpu-memory-utilization`): after the weights are loaded, one
/// profiling forward of the largest step (`max_num_batched_tokens` tokens) initialises kernels and
/// cuBLAS workspaces; then `utilization * total - used - activation reserve` is left for the cache.
/// candle frees activations as soon as they drop, so their peak is not observable afterwards:
/// the reserve is estimated from the step's widest intermediate tensors instead.
#[cfg(feature = "cuda")]
fn gpu_kv_budget(
    model: &dyn crate::models::CausalLm,
    sched: &SchedulerConfig,
    utilization: f64,
    device: &Device,
) -> Result<usize> {
    use crate::layers::attention::{AttnMetadata, SeqAttn};
    use candle_core::Tensor;
    let Device::Cuda(cuda) = device else {
        anyhow::bail!("gpu_kv_budget on {device:?}")
    };
    let context = cuda.cuda_stream().context().clone();
    let cfg = model.config();
    let tokens = sched
        .max_num_batched_tokens
        .min(cfg.max_position_embeddings)
        .max(1);
    {
        let blocks = tokens.div_ceil(sched.block_size);
        let kv = model.new_kv_cache(blocks, sched.block_size, model.dtype())?;
        let ids: Vec<u32> = (0..tokens as u32)
            .map(|i| i % cfg.vocab_size as u32)
            .collect();
        let seq = SeqAttn {
            query_start: 0,
            query_len: tokens,
            context_len: tokens,
            block_table: (0..blocks as u32).collect(),
            prompt_len: tokens,
        };
        let meta = AttnMetadata::new(vec![seq], sched.block_size, device)?;
        let rows = Tensor::new(&[tokens as u32 - 1], device)?;
        model.forward(&Tensor::new(ids, device)?, &meta, &kv, &rows)?;
        device.synchronize()?;
    }
    let (free, total) = context.mem_get_info()?;
    let used = total - free;
    let width = cfg.hidden_size * 4
        + cfg.intermediate_size * 3
        + (cfg.num_attention_heads + 2 * cfg.num_key_value_heads) * cfg.head_dim;
    let reserve = tokens * width * model.dtype().size_in_bytes()
        + sched.max_num_seqs * cfg.vocab_size * 4 * 2;
    let budget = (total as f64 * utilization) as usize;
    let kv = budget.checked_sub(used + reserve).with_context(|| {
        format!(
            "no room for a KV cache: {used} bytes in use and {reserve} reserved for activations exceed \
             {utilization} of {total} bytes; raise --gpu-memory-utilization or lower --max-num-batched-tokens"
        )
    })?;
    tracing::info!(
        "GPU memory: total {} MiB, in use after load and profiling {} MiB, activation reserve {} MiB, KV cache {} MiB",
        total >> 20, used >> 20, reserve >> 20, kv >> 20
    );
    Ok(kv)
}

#[cfg(not(feature = "cuda"))]
fn gpu_kv_budget(
    _: &dyn crate::models::CausalLm,
    _: &SchedulerConfig,
    _: f64,
    device: &Device,
) -> Result<usize> {
    anyhow::bail!("device {device:?} needs flare built with the cuda feature")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_context_past_the_models_positions_is_refused_unless_allowed() {
        let cfg = ModelConfig {
            max_position_embeddings: 512,
            ..ModelConfig::default()
        };
        assert_eq!(context_len(None, &cfg, false).unwrap(), 512);
        assert_eq!(context_len(Some(512), &cfg, false).unwrap(), 512);
        assert_eq!(context_len(Some(100), &cfg, false).unwrap(), 100);
        let e = context_len(Some(513), &cfg, false).unwrap_err().to_string();
        assert!(
            e.contains("--max-model-len 513") && e.contains("FLARE_ALLOW_LONG_MAX_MODEL_LEN=1"),
            "{e}"
        );
        assert_eq!(context_len(Some(513), &cfg, true).unwrap(), 513);
    }
}
