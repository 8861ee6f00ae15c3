//! DeepSeek-V2/V2-Lite and V3/R1: multi-head latent attention (low-rank queries, a compressed
//! KV latent and a shared rotary key; the cache holds only those), YaRN with mscale, dense MLPs
//! for the first `first_k_dense_replace` layers, then a MoE with shared experts and
//! `routed_scaling_factor`. V3 scores experts by sigmoid with a correction bias and groups
//! scored by their two best; V2 by softmax, greedy or group-limited by each group's best.

use anyhow::{bail, Context, Result};

use super::config::{
    raw_bool, raw_f64, raw_usize, ExpertNames, MlaConfig, ModelConfig, MoeConfig, RopeScaling,
    Scoring,
};
use super::registry::Family;

pub static FAMILY_V3: Family = Family {
    name: "deepseek_v3",
    model_types: &["deepseek_v3"],
    configure: |raw, cfg| configure(raw, cfg, Version::V3),
    gguf_architectures: &[],
    configure_gguf: super::registry::no_gguf_keys,
    build: super::decoder::build,
};

pub static FAMILY_V2: Family = Family {
    name: "deepseek_v2",
    model_types: &["deepseek_v2"],
    configure: |raw, cfg| configure(raw, cfg, Version::V2),
    gguf_architectures: &[],
    configure_gguf: super::registry::no_gguf_keys,
    build: super::decoder::build,
};

#[derive(Clone, Copy, PartialEq)]
enum Version {
    V2,
    V3,
}

fn configure(raw: &serde_json::Value, cfg: &mut ModelConfig, version: Version) -> Result<()> {
    let name = cfg.model_type.clone();
    if let Some(q) = raw.get("quantization_config").filter(|q| !q.is_null()) {
        let method = q
            .get("quant_method")
            .and_then(|m| m.as_str())
            .unwrap_or("?");
        bail!("{name} with quantization_config `{method}` is not supported yet");
    }
    let need = |k: &str| raw_usize(raw, k).with_context(|| format!("{name} without {k}"));
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

    let experts = need("n_routed_experts").or_else(|_| need("num_experts"))?;
    let first_dense = raw_usize(raw, "first_k_dense_replace").unwrap_or(0);
    let freq = raw_usize(raw, "moe_layer_freq").unwrap_or(1);
    let expert_inter = need("moe_intermediate_size")?;
    // The reference code reads `scoring_func`; transformers hard-codes each version's.
    let scoring = match version {
        Version::V3 => "sigmoid",
        Version::V2 => "softmax",
    };
    if let Some(f) = raw.get("scoring_func").and_then(|v| v.as_str()) {
        if f != scoring {
            bail!("{name} with scoring_func `{f}` is not supported (only `{scoring}`)");
        }
    }
    // V3 always limits by group (`noaux_tc`); V2 when `topk_method` says so.
    let method = raw.get("topk_method").and_then(|v| v.as_str());
    let grouped = match (version, method) {
        (Version::V3, None | Some("noaux_tc")) => true,
        (Version::V2, None | Some("greedy")) => false,
        (Version::V2, Some("group_limited_greedy")) => true,
        (_, Some(other)) => bail!("{name} with topk_method `{other}` is not supported"),
    };
    let groups = match (raw_usize(raw, "n_group"), raw_usize(raw, "topk_group")) {
        (Some(n), Some(k)) if grouped && n > 1 => {
            anyhow::ensure!(experts % n == 0, "{experts} experts in {n} groups");
            Some((n, k))
        }
        _ => None,
    };
    cfg.moe = Some(MoeConfig {
        num_experts: experts,
        top_k: need("num_experts_per_tok")?,
        // V2's reference renormalises only with the flag (false in V2 and V2-Lite).
        norm_topk_prob: raw_bool(raw, "norm_topk_prob").unwrap_or(version == Version::V3),
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
        scoring: match version {
            Version::V3 => Scoring::Sigmoid,
            Version::V2 => Scoring::Softmax,
        },
        groups,
        group_by_best: version == Version::V2,
        correction_bias: version == Version::V3,
        routed_scaling_factor: raw_f64(raw, "routed_scaling_factor").unwrap_or(1.0),
        shared_intermediate_size: raw_usize(raw, "n_shared_experts")
            .filter(|&n| n > 0)
            .map(|n| n * expert_inter),
        ..MoeConfig::default()
    });
    Ok(())
}
