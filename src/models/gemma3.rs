//! Gemma 3 (text): GELU-tanh MLP, `1 + w` RMSNorms around both sub-layers (sandwich), q/k
//! norms, embeddings scaled by sqrt(hidden), `query_pre_attn_scalar`, a sliding/global layer
//! pattern with its own local rotary base, and optional final-logit soft-capping.

use anyhow::{bail, Result};
use candle_core::quantized::gguf_file;

use super::config::{raw_f64, raw_usize, windows_from_layer_types, Activation, ModelConfig};
use super::registry::Family;

pub static FAMILY: Family = Family {
    name: "gemma3",
    model_types: &["gemma3_text", "gemma3"],
    configure,
    gguf_architectures: &["gemma3"],
    configure_gguf,
    build: super::decoder::build,
};

/// What every Gemma 3 checkpoint has, whatever its format.
fn gemma_basics(cfg: &mut ModelConfig) {
    cfg.qk_norm = true;
    cfg.sandwich_norms = true;
    cfg.activation = Activation::GeluTanh;
    cfg.embed_scale = Some((cfg.hidden_size as f64).sqrt());
}

fn configure(raw: &serde_json::Value, cfg: &mut ModelConfig) -> Result<()> {
    gemma_basics(cfg);
    cfg.norm_unit_offset = true;
    cfg.activation = match raw
        .get("hidden_activation")
        .or_else(|| raw.get("hidden_act"))
        .and_then(|v| v.as_str())
        .unwrap_or("gelu_pytorch_tanh")
    {
        "gelu_pytorch_tanh" => Activation::GeluTanh,
        other => bail!("gemma3 with unsupported hidden_activation `{other}`"),
    };
    if raw.get("tie_word_embeddings").is_none() {
        cfg.tie_word_embeddings = true;
    }
    let scalar = raw_f64(raw, "query_pre_attn_scalar").unwrap_or(cfg.head_dim as f64);
    cfg.query_scale = Some(scalar.powf(-0.5));
    if raw
        .get("attn_logit_softcapping")
        .is_some_and(|v| !v.is_null())
    {
        bail!("gemma3 with attn_logit_softcapping is not supported");
    }
    if raw
        .get("use_bidirectional_attention")
        .and_then(|v| v.as_bool())
        .unwrap_or(false)
    {
        bail!("gemma3 with use_bidirectional_attention (an encoder) is not supported");
    }
    cfg.final_logit_softcapping = raw_f64(raw, "final_logit_softcapping");
    let window = raw_usize(raw, "sliding_window");
    cfg.layer_windows = match windows_from_layer_types(raw, window)? {
        Some(w) => w,
        None => {
            // Older configs: every `sliding_window_pattern`-th layer is global.
            let pattern = raw_usize(raw, "sliding_window_pattern").unwrap_or(6);
            (0..cfg.num_hidden_layers)
                .map(|i| window.filter(|_| (i + 1) % pattern != 0))
                .collect()
        }
    };
    let local_theta = raw
        .get("rope_parameters")
        .and_then(|p| p.get("sliding_attention"))
        .and_then(|p| raw_f64(p, "rope_theta"))
        .or_else(|| raw_f64(raw, "rope_local_base_freq"))
        .unwrap_or(10_000.0);
    cfg.sliding_rope_theta = Some(local_theta);
    Ok(())
}

/// llama.cpp's `gemma3`: its convert script stores the norms as `1 + w` already, and its loader
/// fixes what the file does not say: every 6th layer global, local rope base 10000, and
/// `query_pre_attn_scalar` = head_dim, except hidden / heads for the 27B (62 layers), which is
/// how llama.cpp tells that model apart.
fn configure_gguf(content: &gguf_file::Content, cfg: &mut ModelConfig) -> Result<()> {
    gemma_basics(cfg);
    let md = &content.metadata;
    let f = |k: &str| {
        md.get(&format!("gemma3.{k}"))
            .and_then(|v| v.to_f32().ok())
            .map(f64::from)
    };
    if f("attn_logit_softcapping").is_some() {
        bail!("gemma3 with attn_logit_softcapping is not supported");
    }
    cfg.final_logit_softcapping = f("final_logit_softcapping");
    let scalar = match cfg.num_hidden_layers {
        62 => cfg.hidden_size / cfg.num_attention_heads,
        _ => cfg.head_dim,
    };
    cfg.query_scale = Some((scalar as f64).powf(-0.5));
    let window = md
        .get("gemma3.attention.sliding_window")
        .and_then(|v| v.to_u32().ok())
        .map(|w| w as usize);
    cfg.layer_windows = (0..cfg.num_hidden_layers)
        .map(|i| window.filter(|_| (i + 1) % 6 != 0))
        .collect();
    cfg.sliding_rope_theta = Some(10_000.0);
    Ok(())
}
