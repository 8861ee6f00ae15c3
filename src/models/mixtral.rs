//! Mixtral: Mistral attention with a sparse MLP in every layer (softmax top-2, renormalised).

use anyhow::{Context, Result};

use super::config::{raw_usize, ExpertNames, ModelConfig, MoeConfig};
use super::registry::Family;

pub static FAMILY: Family = Family {
    name: "mixtral",
    model_types: &["mixtral"],
    configure,
    gguf_architectures: &[],
    configure_gguf: super::registry::no_gguf_keys,
    build: super::decoder::build,
};

fn configure(raw: &serde_json::Value, cfg: &mut ModelConfig) -> Result<()> {
    cfg.layer_windows = vec![raw_usize(raw, "sliding_window"); cfg.num_hidden_layers];
    let experts =
        raw_usize(raw, "num_local_experts").context("mixtral without num_local_experts")?;
    cfg.moe = Some(moe(
        cfg,
        experts,
        raw_usize(raw, "num_experts_per_tok").unwrap_or(2),
    ));
    Ok(())
}

/// Mixtral's sparse MLP in every layer; also what llama.cpp's `llama` GGUF with
/// `llama.expert_count` is.
pub(crate) fn moe(cfg: &ModelConfig, num_experts: usize, top_k: usize) -> MoeConfig {
    MoeConfig {
        num_experts,
        top_k,
        norm_topk_prob: true,
        expert_intermediate_size: cfg.intermediate_size,
        sparse_layers: vec![true; cfg.num_hidden_layers],
        names: ExpertNames {
            router: "block_sparse_moe.gate",
            experts: "block_sparse_moe.experts",
            gate: "w1",
            up: "w3",
            down: "w2",
        },
        ..MoeConfig::default()
    }
}
