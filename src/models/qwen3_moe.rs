//! Qwen3-MoE: Qwen3 attention, sparse MLPs on every `decoder_sparse_step`-th layer except
//! `mlp_only_layers`, softmax top-k routing with optional renormalisation (`norm_topk_prob`).

use anyhow::{Context, Result};

use super::config::{raw_bool, raw_usize, ExpertNames, ModelConfig, MoeConfig};
use super::registry::Family;

pub static FAMILY: Family = Family {
    name: "qwen3_moe",
    model_types: &["qwen3_moe"],
    configure,
    gguf_architectures: &["qwen3moe"],
    configure_gguf,
    build: super::decoder::build,
};

fn configure(raw: &serde_json::Value, cfg: &mut ModelConfig) -> Result<()> {
    cfg.qk_norm = true;
    cfg.layer_windows = super::llama::qwen_windows(raw, cfg.num_hidden_layers)?;
    // Hub configs say `num_experts`; transformers 5 saves it as `num_local_experts`.
    let num_experts = raw_usize(raw, "num_experts")
        .or_else(|| raw_usize(raw, "num_local_experts"))
        .context("qwen3_moe without num_experts")?;
    let step = raw_usize(raw, "decoder_sparse_step").unwrap_or(1).max(1);
    let dense_only: Vec<usize> = raw
        .get("mlp_only_layers")
        .and_then(|v| v.as_array())
        .map(|a| {
            a.iter()
                .filter_map(|x| x.as_u64().map(|x| x as usize))
                .collect()
        })
        .unwrap_or_default();
    cfg.moe = Some(moe(
        num_experts,
        raw_usize(raw, "num_experts_per_tok").context("num_experts_per_tok")?,
        raw_bool(raw, "norm_topk_prob").unwrap_or(false),
        raw_usize(raw, "moe_intermediate_size")
            .context("qwen3_moe without moe_intermediate_size")?,
        (0..cfg.num_hidden_layers)
            .map(|i| !dense_only.contains(&i) && num_experts > 0 && (i + 1) % step == 0)
            .collect(),
    ));
    Ok(())
}

fn moe(
    num_experts: usize,
    top_k: usize,
    norm_topk_prob: bool,
    expert_intermediate_size: usize,
    sparse_layers: Vec<bool>,
) -> MoeConfig {
    MoeConfig {
        num_experts,
        top_k,
        norm_topk_prob,
        expert_intermediate_size,
        sparse_layers,
        names: ExpertNames {
            router: "mlp.gate",
            experts: "mlp.experts",
            gate: "gate_proj",
            up: "up_proj",
            down: "down_proj",
        },
        ..MoeConfig::default()
    }
}

/// llama.cpp's `qwen3moe`: q/k norms, experts stacked in `ffn_*_exps`, the chosen experts'
/// weights renormalised (llama.cpp always does; every released Qwen3-MoE sets the flag).
/// A layer is sparse when it has a router (`ffn_gate_inp`).
fn configure_gguf(
    content: &candle_core::quantized::gguf_file::Content,
    cfg: &mut ModelConfig,
) -> Result<()> {
    let u = |k: &str| {
        content
            .metadata
            .get(&format!("qwen3moe.{k}"))
            .and_then(|v| v.to_u32().ok())
            .map(|v| v as usize)
    };
    cfg.model_type = "qwen3_moe".into();
    cfg.qk_norm = true;
    let sparse = (0..cfg.num_hidden_layers)
        .map(|i| {
            content
                .tensor_infos
                .contains_key(&format!("blk.{i}.ffn_gate_inp.weight"))
        })
        .collect();
    cfg.moe = Some(moe(
        u("expert_count").context("qwen3moe GGUF without expert_count")?,
        u("expert_used_count").context("qwen3moe GGUF without expert_used_count")?,
        true,
        u("expert_feed_forward_length")
            .context("qwen3moe GGUF without expert_feed_forward_length")?,
        sparse,
    ));
    Ok(())
}
