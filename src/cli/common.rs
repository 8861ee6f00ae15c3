//! Model and engine flags shared by every subcommand that loads a model.

use anyhow::{bail, Result};
use candle_core::{DType, Device};
use clap::Args;
use flare::engine::{EngineArgs, LoadFormat};
use flare::scheduler::config::{SchedulerConfig, SchedulingPolicy};

#[derive(Args, Debug, Clone)]
pub struct ModelArgs {
    /// Local HF directory, .gguf file, hub repo id (org/name) or preset:NAME (random weights of
    /// a bundled config: llama-3.1-8b, llama-3.2-1b, qwen2.5-7b); default: SmolLM2-135M-Instruct.
    pub model: Option<String>,
    /// auto: the model's weight files; dummy: random weights of its config, made on the device.
    #[arg(long, default_value = "auto")]
    pub load_format: String,
    /// Hub revision (branch, tag or commit) for a repo id.
    #[arg(long)]
    pub revision: Option<String>,
    /// Weights and activations dtype: auto (f32 on CPU, bf16 on GPU), f32, bf16, f16; a GGUF
    /// model stays quantized in f32 and is dequantized to dense weights in bf16/f16.
    #[arg(long, default_value = "auto")]
    pub dtype: String,
    /// cpu or cuda[:N]; default cuda:0 when built with the cuda feature, else cpu.
    #[arg(long)]
    pub device: Option<String>,
    /// Bytes of memory for the KV cache.
    #[arg(long)]
    pub kv_cache_memory: Option<usize>,
    /// On a GPU without --kv-cache-memory: the fraction of device memory to use in all; the KV
    /// cache gets what the weights, a profiling forward and an activation reserve leave.
    #[arg(long, default_value_t = 0.9)]
    pub gpu_memory_utilization: f64,
    /// Prompt + output tokens per request; default: the model's context as far as the KV cache
    /// holds. Past the checkpoint's positions only with FLARE_ALLOW_LONG_MAX_MODEL_LEN=1.
    #[arg(long)]
    pub max_model_len: Option<usize>,
    #[arg(long, default_value_t = 256)]
    pub max_num_seqs: usize,
    #[arg(long, default_value_t = 2048)]
    pub max_num_batched_tokens: usize,
    /// Tokens per KV block.
    #[arg(long, default_value_t = 16)]
    pub block_size: usize,
    #[arg(long)]
    pub no_prefix_caching: bool,
    /// Waiting-queue order: fcfs, or priority (by the request's `priority` field and the API
    /// key's priority, lower first; preemption takes the least important first).
    #[arg(long, default_value = "fcfs")]
    pub scheduling_policy: String,
    /// Seconds a structured-output grammar (JSON schema, regex, Lark) may take to compile;
    /// a request whose grammar takes longer gets a 400.
    #[arg(long, default_value_t = 10.0)]
    pub grammar_compile_timeout: f64,
    /// Quantize a dense (f32/bf16/f16) checkpoint at load: fp8 (per-channel e4m3 weights,
    /// dynamic per-token FP8 activations). Quantized checkpoints are read as they are.
    #[arg(long)]
    pub quantization: Option<String>,
    /// KV cache element type: auto (the model's dtype); fp16 or bf16 (half an f32 cache: on
    /// the CPU, where GGUF models compute in f32, long-context decode reads half the bytes;
    /// llama.cpp's default is an f16 cache); or fp8 / fp8_e4m3 (e4m3 with per-tensor scales
    /// from the checkpoint's k_scale/v_scale, else 1.0): twice the tokens of bf16 in the same
    /// --kv-cache-memory.
    #[arg(long, default_value = "auto")]
    pub kv_cache_dtype: String,
    /// Speculative decoding, vLLM's JSON: {"method": "ngram" | "draft", "model": PATH (draft),
    /// "num_speculative_tokens": K, "prompt_lookup_min": 2, "prompt_lookup_max": 4,
    /// "disable_by_batch_size": N}. Without disable_by_batch_size speculation pauses at high
    /// load by a default per device and method (docs/SPECULATIVE.md).
    #[arg(long)]
    pub speculative_config: Option<String>,
}

impl ModelArgs {
    pub fn scheduling_policy(&self) -> Result<SchedulingPolicy> {
        Ok(match self.scheduling_policy.as_str() {
            "fcfs" => SchedulingPolicy::Fcfs,
            "priority" => SchedulingPolicy::Priority,
            other => bail!("unknown scheduling policy `{other}` (fcfs, priority)"),
        })
    }

    pub fn engine_args(&self) -> Result<EngineArgs> {
        let device = match self.device.as_deref() {
            None if cfg!(feature = "cuda") => Device::new_cuda(0)?,
            None | Some("cpu") => Device::Cpu,
            Some(d) if d.starts_with("cuda") => {
                let idx = d
                    .strip_prefix("cuda")
                    .and_then(|s| s.strip_prefix(':'))
                    .unwrap_or("0");
                Device::new_cuda(idx.parse()?)?
            }
            Some(other) => bail!("unknown device `{other}` (cpu, cuda, cuda:N)"),
        };
        let dtype = match self.dtype.as_str() {
            "auto" if device.is_cpu() => DType::F32,
            "auto" => DType::BF16,
            "f32" | "float32" => DType::F32,
            "bf16" | "bfloat16" => DType::BF16,
            "f16" | "float16" | "half" => DType::F16,
            other => bail!("unknown dtype `{other}` (auto, f32, bf16, f16)"),
        };
        let policy = self.scheduling_policy()?;
        let load_format = match self.load_format.as_str() {
            "auto" => LoadFormat::Auto,
            "dummy" => LoadFormat::Dummy,
            other => bail!("unknown load format `{other}` (auto, dummy)"),
        };
        if !(self.grammar_compile_timeout > 0.0 && self.grammar_compile_timeout.is_finite()) {
            bail!("--grammar-compile-timeout must be a positive number of seconds");
        }
        Ok(EngineArgs {
            load_format,
            grammar_compile_timeout: std::time::Duration::from_secs_f64(
                self.grammar_compile_timeout,
            ),
            model: self.model.clone(),
            revision: self.revision.clone(),
            dtype,
            device,
            kv_cache_memory: self.kv_cache_memory,
            gpu_memory_utilization: self.gpu_memory_utilization,
            max_model_len: self.max_model_len,
            quantization: self.quantization.clone(),
            kv_cache_dtype: flare::kv::KvCacheDtype::parse(&self.kv_cache_dtype)?,
            scheduler: SchedulerConfig {
                max_num_seqs: self.max_num_seqs,
                max_num_batched_tokens: self.max_num_batched_tokens,
                block_size: self.block_size,
                enable_prefix_caching: !self.no_prefix_caching,
                policy,
                ..SchedulerConfig::default()
            },
            speculative: self
                .speculative_config
                .as_deref()
                .map(flare::spec::SpecConfig::parse)
                .transpose()?,
        })
    }
}
