//! Model definitions and loading: configs, weights, the Llama family.

pub mod config;
pub mod dummy;
pub mod llama;
pub mod source;
pub mod weights;

use anyhow::{Context, Result};
use candle_core::{DType, Device};

use config::LlamaConfig;
use llama::LlamaModel;
use source::ModelFiles;
use weights::Weights;

/// Loads the model weights of `files` in `dtype`. GGUF in f32 keeps its quantized weights
/// (candle's quantized matmuls, f32 activations); in bf16/f16 it is dequantized to dense.
pub fn load_model(files: &ModelFiles, dtype: DType, device: &Device) -> Result<LlamaModel> {
    match files {
        ModelFiles::HfDir(dir) => {
            let cfg_path = dir.join("config.json");
            let text = std::fs::read_to_string(&cfg_path)
                .with_context(|| format!("reading {}", cfg_path.display()))?;
            let cfg = LlamaConfig::from_hf_json(&text)?;
            let w = Weights::safetensors(&weights::safetensors_files(dir)?, dtype, device)?;
            LlamaModel::load(cfg, &w)
        }
        ModelFiles::Gguf(path) => {
            // f32: candle's quantized matmuls; bf16/f16: weights dequantized to dense.
            let dense = (dtype != DType::F32).then_some(dtype);
            let w = Weights::gguf(path, device, dense)?;
            let cfg = LlamaConfig::from_gguf(w.gguf_content().expect("gguf"))?;
            LlamaModel::load(cfg, &w)
        }
        ModelFiles::Dummy(spec) => dummy::load(&dummy::resolve(spec)?.config, dtype, device, 0),
    }
}
