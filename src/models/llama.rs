//! The Llama family: Llama 2/3, Mistral (sliding window), Qwen2 (qkv bias), SmolLM2.

use anyhow::Result;

use super::config::{raw_bool, raw_usize, windows_from_layer_types, ModelConfig};
use super::registry::Family;

pub static FAMILY: Family = Family {
    name: "llama",
    model_types: &["llama", "mistral", "qwen2"],
    configure,
    gguf_architectures: &["llama", "qwen2"],
    configure_gguf,
    build: super::decoder::build,
};

fn configure(raw: &serde_json::Value, cfg: &mut ModelConfig) -> Result<()> {
    let window = raw_usize(raw, "sliding_window");
    match cfg.model_type.as_str() {
        "mistral" => cfg.layer_windows = vec![window; cfg.num_hidden_layers],
        "qwen2" => {
            cfg.qkv_bias = true;
            cfg.layer_windows = qwen_windows(raw, cfg.num_hidden_layers)?;
        }
        _ => {}
    }
    Ok(())
}

/// Qwen2/3: with `use_sliding_window`, layers from `max_window_layers` on slide (transformers'
/// rule when `layer_types` is absent).
pub(crate) fn qwen_windows(raw: &serde_json::Value, layers: usize) -> Result<Vec<Option<usize>>> {
    let window = match raw_bool(raw, "use_sliding_window") {
        Some(true) => raw_usize(raw, "sliding_window"),
        _ => None,
    };
    if let Some(w) = windows_from_layer_types(raw, window)? {
        return Ok(w);
    }
    let first = raw_usize(raw, "max_window_layers").unwrap_or(layers);
    Ok((0..layers).map(|i| window.filter(|_| i >= first)).collect())
}

/// A `llama` GGUF with `llama.expert_count` is Mixtral (experts stacked in `ffn_*_exps`).
fn configure_gguf(
    content: &candle_core::quantized::gguf_file::Content,
    cfg: &mut ModelConfig,
) -> Result<()> {
    let u = |k: &str| {
        content
            .metadata
            .get(k)
            .and_then(|v| v.to_u32().ok())
            .map(|v| v as usize)
    };
    if let Some(experts) = u("llama.expert_count").filter(|&n| n > 0) {
        let top_k = u("llama.expert_used_count").unwrap_or(2);
        cfg.model_type = "mixtral".into();
        cfg.moe = Some(super::mixtral::moe(cfg, experts, top_k));
    }
    Ok(())
}
