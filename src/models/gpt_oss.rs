//! gpt-oss: alternating sliding (128) and full attention layers with q/k/v/o biases and a
//! learned sink logit per head, YaRN rotary, and a top-k MoE whose router has a bias and whose
//! experts (stacked in four tensors) use a clamped SwiGLU with biases.
//! The released checkpoints keep their experts in MXFP4; until the quantization work lands
//! those load with an error naming it (bf16/f32 conversions load).

use anyhow::{bail, Context, Result};

use super::config::{
    raw_f64, raw_usize, windows_from_layer_types, Activation, ExpertNames, ModelConfig, MoeConfig,
};
use super::registry::Family;

pub static FAMILY: Family = Family {
    name: "gpt-oss",
    model_types: &["gpt_oss"],
    configure,
    gguf_architectures: &[],
    configure_gguf: super::registry::no_gguf_keys,
    build: super::decoder::build,
};

fn configure(raw: &serde_json::Value, cfg: &mut ModelConfig) -> Result<()> {
    if let Some(q) = raw.get("quantization_config").filter(|q| !q.is_null()) {
        let method = q
            .get("quant_method")
            .and_then(|m| m.as_str())
            .unwrap_or("?");
        // MXFP4 experts are read by `Weights` (crate::quant); other methods are not wired here.
        if method != "mxfp4" {
            bail!(
                "gpt_oss with quantization_config `{method}` is not supported (supported: mxfp4)"
            );
        }
    }
    if raw.get("attention_bias").and_then(|v| v.as_bool()) != Some(false) {
        cfg.qkv_bias = true;
        cfg.o_bias = true;
    }
    cfg.attention_sinks = true;
    cfg.activation = Activation::ClampedSwiglu {
        alpha: raw_f64(raw, "swiglu_alpha").unwrap_or(1.702) as f32,
        limit: raw_f64(raw, "swiglu_limit").unwrap_or(7.0) as f32,
    };
    let window = raw_usize(raw, "sliding_window");
    cfg.layer_windows = match windows_from_layer_types(raw, window)? {
        Some(w) => w,
        // transformers' default: even layers slide, odd ones are global.
        None => (0..cfg.num_hidden_layers)
            .map(|i| window.filter(|_| i % 2 == 0))
            .collect(),
    };
    cfg.moe = Some(MoeConfig {
        num_experts: raw_usize(raw, "num_local_experts")
            .context("gpt_oss without num_local_experts")?,
        top_k: raw_usize(raw, "num_experts_per_tok").unwrap_or(4),
        // Softmax over the chosen experts' logits = softmax over all, renormalised.
        norm_topk_prob: true,
        expert_intermediate_size: cfg.intermediate_size,
        sparse_layers: vec![true; cfg.num_hidden_layers],
        names: ExpertNames {
            router: "mlp.router",
            experts: "mlp.experts",
            gate: "",
            up: "",
            down: "",
        },
        router_bias: true,
        stacked_experts: true,
        ..MoeConfig::default()
    });
    Ok(())
}
