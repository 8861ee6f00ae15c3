//! Qwen3 (dense): the Llama layout with an RMSNorm over each head of q and k.

use anyhow::Result;

use super::config::ModelConfig;
use super::registry::Family;

pub static FAMILY: Family = Family {
    name: "qwen3",
    model_types: &["qwen3"],
    configure,
    gguf_architectures: &["qwen3"],
    configure_gguf,
    build: super::decoder::build,
};

fn configure(raw: &serde_json::Value, cfg: &mut ModelConfig) -> Result<()> {
    cfg.qk_norm = true;
    cfg.layer_windows = super::llama::qwen_windows(raw, cfg.num_hidden_layers)?;
    Ok(())
}

/// llama.cpp's `qwen3`: the q/k norms are `attn_q_norm` / `attn_k_norm`, rotary rows are not
/// permuted (NEOX-style, as HF), no sliding window.
fn configure_gguf(
    _: &candle_core::quantized::gguf_file::Content,
    cfg: &mut ModelConfig,
) -> Result<()> {
    cfg.qk_norm = true;
    Ok(())
}
