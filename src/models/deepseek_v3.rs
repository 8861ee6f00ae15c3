//! DeepSeek-V3/R1: multi-head latent attention (low-rank queries, a compressed KV latent and a
//! shared rotary key; the cache holds only those), YaRN with mscale, dense MLPs for the first
//! `first_k_dense_replace` layers and then a MoE with sigmoid scoring, a correction bias,
//! group-limited choice, `routed_scaling_factor` and shared experts.

use anyhow::{bail, Context, Result};

use super::config::{
    raw_bool, raw_f64, raw_usize, ExpertNames, MlaConfig, ModelConfig, MoeConfig, RopeScaling,
    Scoring,
};
use super::registry::Family;

pub static FAMILY: Family = Family {
    name: "deepseek_v3",
    model_types: &["deepseek_v3"],
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
        bail!("deepseek_v3 with quantization_config `{method}` (FP8 blocks) is not supported yet");
    }
    let need = |k: &str| raw_usize(raw, k).with_context(|| format!("deepseek_v3 without {k}"));
    let mla = MlaConfig {
        q_lora_rank: raw_usize(raw, "q_lora_rank"),
        kv_lora_rank: need("kv_lora_rank")?,
        qk_nope_head_dim: need("qk_nope_head_dim")?,
        qk_rope_head_dim: need("qk_rope_head_dim")?,
        v_head_dim: need("v_head_dim")?,
        rope_interleave: raw_bool(raw, "rope_interleave").unwrap_or(true),
    };
    // The rotary acts on the rope part only; softmax scale from the full q/k head width,
    // times YaRN's mscale(factor, mscale_all_dim)^2 as DeepSeek's reference does.
    cfg.head_dim = mla.qk_rope_head_dim;
    let mut scale = ((mla.qk_nope_head_dim + mla.qk_rope_head_dim) as f64).powf(-0.5);
    if let RopeScaling::Yarn { factor, .. } = cfg.rope_scaling {
        let all_dim = raw
            .get("rope_parameters")
            .or_else(|| raw.get("rope_scaling"))
            .and_then(|p| raw_f64(p, "mscale_all_dim"))
            .unwrap_or(0.0);
        if all_dim != 0.0 && factor > 1.0 {
            let m = 0.1 * all_dim * factor.ln() + 1.0;
            scale *= m * m;
        }
    }
    cfg.query_scale = Some(scale);
    cfg.mla = Some(mla);
    // Heads do not share K/V here: the cache has one latent "head" (see MlaConfig).
    cfg.num_key_value_heads = cfg.num_attention_heads;

    let experts = need("n_routed_experts")?;
    let first_dense = raw_usize(raw, "first_k_dense_replace").unwrap_or(0);
    let freq = raw_usize(raw, "moe_layer_freq").unwrap_or(1);
    let expert_inter = need("moe_intermediate_size")?;
    let groups = match (raw_usize(raw, "n_group"), raw_usize(raw, "topk_group")) {
        (Some(n), Some(k)) if n > 1 => {
            anyhow::ensure!(experts % n == 0, "{experts} experts in {n} groups");
            Some((n, k))
        }
        _ => None,
    };
    if let Some(method) = raw.get("topk_method").and_then(|v| v.as_str()) {
        if method != "noaux_tc" {
            bail!("deepseek_v3 with topk_method `{method}` is not supported");
        }
    }
    cfg.moe = Some(MoeConfig {
        num_experts: experts,
        top_k: need("num_experts_per_tok")?,
        norm_topk_prob: raw_bool(raw, "norm_topk_prob").unwrap_or(true),
        expert_intermediate_size: expert_inter,
        sparse_layers: (0..cfg.num_hidden_layers)
            .map(|i| i >= first_dense && i % freq == 0)
            .collect(),
        names: ExpertNames {
            router: "mlp.gate",
            experts: "mlp.experts",
            gate: "gate_proj",
            up: "up_proj",
            down: "down_proj",
        },
        router_bias: false,
        scoring: Scoring::Sigmoid,
        groups,
        correction_bias: true,
        routed_scaling_factor: raw_f64(raw, "routed_scaling_factor").unwrap_or(1.0),
        shared_intermediate_size: raw_usize(raw, "n_shared_experts")
            .filter(|&n| n > 0)
            .map(|n| n * expert_inter),
        stacked_experts: false,
    });
    Ok(())
}
