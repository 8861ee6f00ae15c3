//! Model definitions and loading: the `CausalLm` trait, the family registry, configs, weights.

pub mod config;
pub mod decoder;
pub mod deepseek;
pub mod dummy;
pub mod gemma3;
pub mod gpt_oss;
pub mod llama;
pub mod mixtral;
pub mod phi3;
pub mod qwen3;
pub mod qwen3_moe;
pub mod registry;
pub mod source;
pub mod weights;

use anyhow::{Context, Result};
use candle_core::{DType, Device, Tensor};

use crate::kv::KvCache;
use crate::layers::attention::AttnMetadata;
use config::ModelConfig;
use source::ModelFiles;
use weights::Weights;

/// A causal language model over a ragged batch and a paged KV cache: all the runner and the
/// engine know of a model.
pub trait CausalLm: Send + Sync {
    /// One step over a ragged batch.
    ///
    /// `tokens: [num_tokens]` u32, the new tokens of every sequence back to back as `meta`
    /// lays them out; their K/V are written into `kv` before attention reads it.
    /// `logit_rows: [n]` u32 picks the token rows to compute logits for (usually the last
    /// new token of each sequence). Returns f32 logits `[n, vocab]`. May be empty.
    fn forward(
        &self,
        tokens: &Tensor,
        meta: &AttnMetadata,
        kv: &KvCache,
        logit_rows: &Tensor,
    ) -> Result<Tensor>;

    /// Vocabulary, layer and KV shapes, EOS ids, context length, architecture.
    fn config(&self) -> &ModelConfig;

    fn dtype(&self) -> DType;

    fn device(&self) -> &Device;

    /// A KV cache shaped for this model.
    fn new_kv_cache(&self, num_blocks: usize, block_size: usize, dtype: DType) -> Result<KvCache>;
}

/// Loads the model of `files` in `dtype`, through the family registry. GGUF in f32 keeps its
/// quantized weights (candle's quantized matmuls, f32 activations); in bf16/f16 it is
/// dequantized to dense.
pub fn load_model(files: &ModelFiles, dtype: DType, device: &Device) -> Result<Box<dyn CausalLm>> {
    load_model_quantized(files, dtype, device, None)
}

/// [`load_model`], quantizing a dense checkpoint at load as `quantization` names (`fp8`).
pub fn load_model_quantized(
    files: &ModelFiles,
    dtype: DType,
    device: &Device,
    quantization: Option<&str>,
) -> Result<Box<dyn CausalLm>> {
    if let (Some(q), ModelFiles::Gguf(_)) = (quantization, files) {
        anyhow::bail!(
            "--quantization {q} applies to safetensors checkpoints (and dummy weights) only"
        );
    }
    match files {
        ModelFiles::HfDir(dir) => {
            let cfg_path = dir.join("config.json");
            let text = std::fs::read_to_string(&cfg_path)
                .with_context(|| format!("reading {}", cfg_path.display()))?;
            let mut cfg = ModelConfig::from_hf_json(&text)?;
            if let Some(q) = quantization {
                if let Some(have) = &cfg.quantization {
                    anyhow::bail!(
                        "--quantization {q} on a checkpoint already quantized ({})",
                        have.name()
                    );
                }
                cfg.quantization = Some(crate::quant::QuantConfig::online(q)?);
            }
            if let Some(q) = &cfg.quantization {
                tracing::info!("weights quantized: {}", q.name());
            }
            let w = Weights::safetensors_quantized(
                &weights::safetensors_files(dir)?,
                dtype,
                device,
                cfg.quantization.clone(),
            )?;
            registry::build(cfg, &w)
        }
        ModelFiles::Gguf(path) => {
            // f32: candle's quantized matmuls; bf16/f16: weights dequantized to dense.
            let dense = (dtype != DType::F32).then_some(dtype);
            let w = Weights::gguf(path, device, dense)?;
            let mut cfg = ModelConfig::from_gguf(w.gguf_content().expect("gguf"))?;
            cfg.quantization = gguf_main_type(w.gguf_content().expect("gguf")).map(|t| {
                crate::quant::QuantConfig {
                    method: crate::quant::Method::Gguf(t),
                    ignore: Vec::new(),
                }
            });
            match (&cfg.quantization, dense) {
                (Some(q), None) => tracing::info!("weights quantized: {}", q.name()),
                (Some(q), Some(dt)) => {
                    tracing::info!("weights: {} dequantized to {dt:?}", q.name())
                }
                _ => {}
            }
            registry::build(cfg, &w)
        }
        ModelFiles::Dummy(spec) => dummy::load_quantized(
            &dummy::resolve(spec)?.config,
            dtype,
            device,
            0,
            quantization,
        ),
    }
}

/// The GGUF tensor type holding most of a file's weights (`Q4_1`, `Q4_K`, ...), for reports.
fn gguf_main_type(c: &candle_core::quantized::gguf_file::Content) -> Option<String> {
    let mut by_type: std::collections::HashMap<String, usize> = std::collections::HashMap::new();
    for t in c.tensor_infos.values() {
        *by_type.entry(format!("{:?}", t.ggml_dtype)).or_default() += t.shape.elem_count();
    }
    by_type
        .into_iter()
        .max_by_key(|(_, n)| *n)
        .map(|(t, _)| t)
        .filter(|t| t != "F32" && t != "F16" && t != "BF16")
}
