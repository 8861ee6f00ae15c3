//! Qwen3 (dense): the Llama layout with an RMSNorm over each head of q and k.

use anyhow::Result;

use super::config::ModelConfig;
use super::registry::Family;

pub static FAMILY: Family = Family {
    name: "qwen3",
    model_types: &["qwen3"],
    configure,
    gguf_architectures: &[],
    configure_gguf: super::registry::no_gguf_keys,
    build: super::decoder::build,
};

fn configure(raw: &serde_json::Value, cfg: &mut ModelConfig) -> Result<()> {
    cfg.qk_norm = true;
    cfg.layer_windows = super::llama::qwen_windows(raw, cfg.num_hidden_layers)?;
    Ok(())
}
