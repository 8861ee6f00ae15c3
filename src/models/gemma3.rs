//! Gemma 3 (text): GELU-tanh MLP, `1 + w` RMSNorms around both sub-layers (sandwich), q/k
//! norms, embeddings scaled by sqrt(hidden), `query_pre_attn_scalar`, a sliding/global layer
//! pattern with its own local rotary base, and optional final-logit soft-capping.

use anyhow::{bail, Result};

use super::config::{raw_f64, raw_usize, windows_from_layer_types, Activation, ModelConfig};
use super::registry::Family;

pub static FAMILY: Family = Family {
    name: "gemma3",
    model_types: &["gemma3_text", "gemma3"],
    configure,
    build: super::decoder::build,
};

fn configure(raw: &serde_json::Value, cfg: &mut ModelConfig) -> Result<()> {
    cfg.qk_norm = true;
    cfg.norm_unit_offset = true;
    cfg.sandwich_norms = true;
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
    cfg.embed_scale = Some((cfg.hidden_size as f64).sqrt());
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
