//! Model definitions and loading: configs, weights, the Llama family.

pub mod config;
pub mod llama;
pub mod source;
pub mod weights;

use anyhow::{Context, Result};
use candle_core::{DType, Device};

use config::LlamaConfig;
use llama::LlamaModel;
use source::ModelFiles;
use weights::Weights;

/// Loads the model weights of `files`; `dtype` applies to safetensors (GGUF keeps its
/// quantized weights and computes in f32).
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
            let w = Weights::gguf(path, device)?;
            let cfg = LlamaConfig::from_gguf(w.gguf_content().expect("gguf"))?;
            LlamaModel::load(cfg, &w)
        }
    }
}
