//! Phi-3 and Phi-4: the Llama layout with q/k/v fused into `qkv_proj` and gate/up into
//! `gate_up_proj` (split at load), and a sliding window on every layer when configured.
//! Longrope scaling (the 128k variants, Phi-4-mini) is parsed with the other rope scalings;
//! partial rotary (Phi-4-mini's `partial_rotary_factor` 0.75) turns the first dims of a head.

use anyhow::{bail, Result};
use candle_core::quantized::gguf_file;

use super::config::{raw_f64, raw_usize, ModelConfig};
use super::registry::Family;

pub static FAMILY: Family = Family {
    name: "phi3",
    model_types: &["phi3"],
    configure,
    gguf_architectures: &["phi3"],
    configure_gguf,
    build: super::decoder::build,
};

fn configure(raw: &serde_json::Value, cfg: &mut ModelConfig) -> Result<()> {
    cfg.fused_projections = true;
    let partial = raw_f64(raw, "partial_rotary_factor").or_else(|| {
        raw.get("rope_parameters")
            .and_then(|p| raw_f64(p, "partial_rotary_factor"))
    });
    if let Some(f) = partial.filter(|&f| f != 1.0) {
        if !(f > 0.0 && f < 1.0) {
            bail!("phi3 with partial_rotary_factor {f} is not supported");
        }
        // transformers: int(head_dim * factor).
        cfg.rotary_dim = Some((cfg.head_dim as f64 * f) as usize);
    }
    if let Some(act) = raw.get("hidden_act").and_then(|v| v.as_str()) {
        if act != "silu" {
            bail!("phi3 with hidden_act `{act}` is not supported");
        }
    }
    cfg.layer_windows = vec![raw_usize(raw, "sliding_window"); cfg.num_hidden_layers];
    Ok(())
}

/// llama.cpp's `phi3`: `attn_qkv` and `ffn_up` (gate rows, then up rows) are the fused
/// tensors; `sliding_window` 0 means none (Phi-4); longrope ships as `rope_factors_*` tensors.
fn configure_gguf(content: &gguf_file::Content, cfg: &mut ModelConfig) -> Result<()> {
    cfg.fused_projections = true;
    cfg.head_dim = cfg.hidden_size / cfg.num_attention_heads;
    let md = &content.metadata;
    let u = |k: &str| md.get(&format!("phi3.{k}")).and_then(|v| v.to_u32().ok());
    if let Some(rope) = u("rope.dimension_count") {
        if rope as usize != cfg.head_dim {
            bail!(
                "phi3 GGUF with partial rotary ({rope} of {} dims) is not supported",
                cfg.head_dim
            );
        }
    }
    if content
        .tensor_infos
        .contains_key("rope_factors_long.weight")
    {
        bail!("phi3 GGUF with longrope scaling (rope_factors_long) is not supported");
    }
    let window = u("attention.sliding_window")
        .filter(|&w| w > 0)
        .map(|w| w as usize);
    cfg.layer_windows = vec![window; cfg.num_hidden_layers];
    Ok(())
}
