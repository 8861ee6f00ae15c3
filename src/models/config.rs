//! The decoder configuration every family fills in, read from an HF `config.json` (common keys
//! here, family-specific ones in the family's file through the registry) or from GGUF metadata.

use std::collections::HashMap;

use anyhow::{bail, Context, Result};
use candle_core::quantized::gguf_file;
use serde::Deserialize;

/// How rotary frequencies are scaled for long contexts.
#[derive(Debug, Clone, PartialEq, Default)]
pub enum RopeScaling {
    #[default]
    None,
    /// Positions divided by `factor`.
    Linear { factor: f64 },
    /// Llama 3.1: low frequencies divided by `factor`, high ones kept, smooth in between.
    Llama3 {
        factor: f64,
        low_freq_factor: f64,
        high_freq_factor: f64,
        original_max_position_embeddings: usize,
    },
    /// YaRN (gpt-oss, DeepSeek): frequencies blended between interpolated and original over a
    /// ramp of dimensions; attention logits scaled by `attention_factor²` (HF scales cos/sin).
    Yarn {
        factor: f64,
        original_max_position_embeddings: usize,
        beta_fast: f64,
        beta_slow: f64,
        attention_factor: f64,
        truncate: bool,
    },
    /// LongRoPE (Phi-3 128k, Phi-4-mini): frequencies divided per dimension by `short_factor`,
    /// or by `long_factor` for tokens of a sequence past `original_max_position_embeddings`
    /// (see `layers::rope` for the rule); cos/sin scaled by `attention_factor` on both.
    LongRope {
        short_factor: Vec<f64>,
        long_factor: Vec<f64>,
        original_max_position_embeddings: usize,
        attention_factor: f64,
    },
}

/// The MLP's activation: `act(gate) * up`.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub enum Activation {
    #[default]
    Silu,
    /// GELU with the tanh approximation (Gemma's `gelu_pytorch_tanh`).
    GeluTanh,
    /// gpt-oss: `(clamp(up, ±limit) + 1) * g * sigmoid(alpha * g)` with `g = min(gate, limit)`.
    ClampedSwiglu { alpha: f32, limit: f32 },
}

/// Checkpoint tensor names of one MoE family, below `model.layers.N.`.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ExpertNames {
    /// The router linear (`[num_experts, hidden]`).
    pub router: &'static str,
    /// Expert `j` lives at `{experts}.{j}.{gate|up|down}`.
    pub experts: &'static str,
    pub gate: &'static str,
    pub up: &'static str,
    pub down: &'static str,
}

/// How a router turns its logits into expert scores.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub enum Scoring {
    #[default]
    Softmax,
    /// DeepSeek-V3: independent sigmoids; the choice adds a per-expert correction bias but the
    /// weights are the plain sigmoids.
    Sigmoid,
}

/// A sparse MLP: the router scores experts, each token goes to its `top_k` best. `Default` is
/// a base for struct updates (softmax routing, no groups, bias or shared experts, scale 1).
#[derive(Debug, Clone, PartialEq)]
pub struct MoeConfig {
    pub num_experts: usize,
    pub top_k: usize,
    /// Renormalise the chosen experts' weights to sum to one (Mixtral always, Qwen3-MoE by flag).
    pub norm_topk_prob: bool,
    pub expert_intermediate_size: usize,
    /// Per layer: whether its MLP is the sparse one (else dense with `intermediate_size`).
    pub sparse_layers: Vec<bool>,
    pub names: ExpertNames,
    /// The router linear has a bias (gpt-oss).
    pub router_bias: bool,
    pub scoring: Scoring,
    /// DeepSeek's group-limited choice `(n_group, topk_group)`: experts come in `n_group`
    /// equal groups, a group scores the sum of its two best, and only the best `topk_group`
    /// groups are eligible.
    pub groups: Option<(usize, usize)>,
    /// A group scores its single best expert instead (DeepSeek-V2's `group_limited_greedy`).
    pub group_by_best: bool,
    /// `mlp.gate.e_score_correction_bias` joins the choice (DeepSeek-V3).
    pub correction_bias: bool,
    /// The chosen experts' weights are multiplied by this (DeepSeek's `routed_scaling_factor`).
    pub routed_scaling_factor: f64,
    /// Always-on experts' total FFN size (`{experts}` sibling `mlp.shared_experts`).
    pub shared_intermediate_size: Option<usize>,
    /// gpt-oss layout: all experts in `{experts}.gate_up_proj` `[E, hidden, 2 * inter]` (gate
    /// and up interleaved by column), `{experts}.down_proj` `[E, inter, hidden]` and their
    /// `_bias` tensors, instead of one `[out, in]` linear per expert.
    pub stacked_experts: bool,
}

impl Default for MoeConfig {
    fn default() -> Self {
        Self {
            num_experts: 0,
            top_k: 0,
            norm_topk_prob: false,
            expert_intermediate_size: 0,
            sparse_layers: Vec::new(),
            names: ExpertNames::default(),
            router_bias: false,
            scoring: Scoring::Softmax,
            groups: None,
            group_by_best: false,
            correction_bias: false,
            routed_scaling_factor: 1.0,
            shared_intermediate_size: None,
            stacked_experts: false,
        }
    }
}

/// Multi-head latent attention (DeepSeek-V2/V3): keys and values are expanded per head from
/// one `kv_lora_rank` latent per token, and a `qk_rope_head_dim` rotary key is shared by all
/// heads. The cache holds just those two (`head_dim` is the rope part, for the rotary).
#[derive(Debug, Clone, PartialEq)]
pub struct MlaConfig {
    /// None: queries come straight from `q_proj` (V2-Lite).
    pub q_lora_rank: Option<usize>,
    pub kv_lora_rank: usize,
    pub qk_nope_head_dim: usize,
    pub qk_rope_head_dim: usize,
    pub v_head_dim: usize,
    /// The checkpoint lays rope dims out in adjacent pairs; rows are put in half-split order
    /// at load (q·k is unchanged by permuting both alike).
    pub rope_interleave: bool,
}

/// Everything the decoder forward needs, for every family in the registry. `Default` is only
/// a base for struct updates: the family options off (plain Llama), every size zero.
#[derive(Debug, Clone, Default)]
pub struct ModelConfig {
    pub model_type: String,
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub num_key_value_heads: usize,
    pub head_dim: usize,
    pub rms_norm_eps: f64,
    pub rope_theta: f64,
    pub rope_scaling: RopeScaling,
    pub max_position_embeddings: usize,
    pub tie_word_embeddings: bool,
    /// q/k/v projections carry a bias (Qwen2, Llama with `attention_bias`).
    pub qkv_bias: bool,
    /// o_proj carries a bias (Llama `attention_bias`).
    pub o_bias: bool,
    pub mlp_bias: bool,
    /// Per layer: attend only to the last `w` positions (Mistral v0.1, Gemma 3's local layers).
    pub layer_windows: Vec<Option<usize>>,
    pub bos_token_id: Option<u32>,
    pub eos_token_ids: Vec<u32>,
    /// RMSNorm over each head of q and k before rotary (Qwen3, Gemma 3).
    pub qk_norm: bool,
    /// Norms scale by `1 + w` instead of `w` (Gemma's checkpoints store `w - 1`).
    pub norm_unit_offset: bool,
    /// Gemma 3's extra norms on the attention and MLP outputs before they join the residual.
    pub sandwich_norms: bool,
    pub activation: Activation,
    /// Embeddings are multiplied by this (Gemma: sqrt(hidden), rounded to the activation dtype).
    pub embed_scale: Option<f64>,
    /// Attention score scale; `head_dim^-0.5` when None (Gemma: `query_pre_attn_scalar^-0.5`).
    pub query_scale: Option<f64>,
    /// Rotary base of the sliding-window layers when it differs from `rope_theta` (Gemma 3's
    /// `rope_local_base_freq`); those layers use no scaling.
    pub sliding_rope_theta: Option<f64>,
    /// `cap * tanh(logits / cap)` on the final logits (Gemma).
    pub final_logit_softcapping: Option<f64>,
    pub moe: Option<MoeConfig>,
    /// Phi-3's checkpoints hold q/k/v as one `qkv_proj` and gate/up as one `gate_up_proj`.
    pub fused_projections: bool,
    /// gpt-oss: a learned logit per head (`self_attn.sinks`) joins every softmax's
    /// denominator, letting a head attend to nothing.
    pub attention_sinks: bool,
    pub mla: Option<MlaConfig>,
    /// Rotary on the first `rotary_dim` dims of each head only (Phi-4-mini's
    /// `partial_rotary_factor`); None: all `head_dim`.
    pub rotary_dim: Option<usize>,
    /// The checkpoint's `quantization_config` (None: dense or GGUF), or `--quantization`.
    pub quantization: Option<crate::quant::QuantConfig>,
}

#[derive(Deserialize)]
struct HfConfig {
    vocab_size: usize,
    hidden_size: usize,
    intermediate_size: usize,
    num_hidden_layers: usize,
    num_attention_heads: usize,
    #[serde(default)]
    num_key_value_heads: Option<usize>,
    #[serde(default)]
    head_dim: Option<usize>,
    #[serde(default = "default_eps")]
    rms_norm_eps: f64,
    #[serde(default)]
    rope_theta: Option<f64>,
    #[serde(default)]
    rope_scaling: Option<HashMap<String, serde_json::Value>>,
    /// transformers >= 5 folds rope_theta and rope_scaling into this.
    #[serde(default)]
    rope_parameters: Option<HashMap<String, serde_json::Value>>,
    #[serde(default = "default_max_pos")]
    max_position_embeddings: usize,
    /// Phi-3 keeps longrope's pretraining length here, outside the rope dict, and it wins.
    #[serde(default)]
    original_max_position_embeddings: Option<usize>,
    #[serde(default)]
    tie_word_embeddings: Option<bool>,
    #[serde(default)]
    attention_bias: Option<bool>,
    #[serde(default)]
    mlp_bias: Option<bool>,
    #[serde(default)]
    bos_token_id: Option<serde_json::Value>,
    #[serde(default)]
    eos_token_id: Option<serde_json::Value>,
}

fn default_eps() -> f64 {
    1e-6
}
fn default_max_pos() -> usize {
    4096
}

/// `eos_token_id` is an int or a list of ints in HF configs.
pub(crate) fn token_ids(v: &Option<serde_json::Value>) -> Vec<u32> {
    match v {
        Some(serde_json::Value::Number(n)) => {
            n.as_u64().map(|x| vec![x as u32]).unwrap_or_default()
        }
        Some(serde_json::Value::Array(a)) => a
            .iter()
            .filter_map(|x| x.as_u64().map(|x| x as u32))
            .collect(),
        _ => Vec::new(),
    }
}

/// A key of a raw `config.json`, for the keys only some families have.
pub(crate) fn raw_usize(raw: &serde_json::Value, key: &str) -> Option<usize> {
    raw.get(key).and_then(|v| v.as_u64()).map(|v| v as usize)
}
pub(crate) fn raw_f64(raw: &serde_json::Value, key: &str) -> Option<f64> {
    raw.get(key).and_then(|v| v.as_f64())
}
pub(crate) fn raw_bool(raw: &serde_json::Value, key: &str) -> Option<bool> {
    raw.get(key).and_then(|v| v.as_bool())
}

/// Per-layer windows from transformers' `layer_types` (`"sliding_attention"` layers get
/// `window`); None when the config has no `layer_types`.
pub(crate) fn windows_from_layer_types(
    raw: &serde_json::Value,
    window: Option<usize>,
) -> Result<Option<Vec<Option<usize>>>> {
    let Some(types) = raw.get("layer_types").and_then(|v| v.as_array()) else {
        return Ok(None);
    };
    types
        .iter()
        .map(|t| match t.as_str() {
            Some("full_attention") => Ok(None),
            Some("sliding_attention") => window
                .map(Some)
                .context("`sliding_attention` layers without `sliding_window`"),
            other => bail!("unsupported layer type {other:?}"),
        })
        .collect::<Result<Vec<_>>>()
        .map(Some)
}

fn get_f64(m: &HashMap<String, serde_json::Value>, key: &str) -> Option<f64> {
    m.get(key).and_then(|v| v.as_f64())
}

/// The config's keys outside the rope dict that some scalings read.
struct RopeContext {
    max_position_embeddings: usize,
    original_max_position_embeddings: Option<usize>,
}

fn parse_rope_scaling(
    m: &HashMap<String, serde_json::Value>,
    ctx: &RopeContext,
) -> Result<RopeScaling> {
    let kind = m
        .get("rope_type")
        .or_else(|| m.get("type"))
        .and_then(|v| v.as_str())
        .unwrap_or("default");
    let factor = || get_f64(m, "factor").context("rope scaling without `factor`");
    Ok(match kind {
        "default" => RopeScaling::None,
        "linear" => RopeScaling::Linear { factor: factor()? },
        "llama3" => RopeScaling::Llama3 {
            factor: factor()?,
            low_freq_factor: get_f64(m, "low_freq_factor").unwrap_or(1.0),
            high_freq_factor: get_f64(m, "high_freq_factor").unwrap_or(4.0),
            original_max_position_embeddings: get_f64(m, "original_max_position_embeddings")
                .unwrap_or(8192.0) as usize,
        },
        "yarn" => {
            let factor = factor()?;
            let mscale = |scale: f64, m: f64| {
                if scale <= 1.0 {
                    1.0
                } else {
                    0.1 * m * scale.ln() + 1.0
                }
            };
            let attention_factor = match (
                get_f64(m, "attention_factor"),
                get_f64(m, "mscale"),
                get_f64(m, "mscale_all_dim"),
            ) {
                (Some(a), _, _) => a,
                (None, Some(a), Some(b)) if a != 0.0 && b != 0.0 => {
                    mscale(factor, a) / mscale(factor, b)
                }
                _ => mscale(factor, 1.0),
            };
            RopeScaling::Yarn {
                factor,
                original_max_position_embeddings: get_f64(m, "original_max_position_embeddings")
                    .context("yarn rope scaling without `original_max_position_embeddings`")?
                    as usize,
                beta_fast: get_f64(m, "beta_fast").unwrap_or(32.0),
                beta_slow: get_f64(m, "beta_slow").unwrap_or(1.0),
                attention_factor,
                truncate: m.get("truncate").and_then(|v| v.as_bool()).unwrap_or(true),
            }
        }
        "longrope" => {
            let factors = |key: &str| -> Result<Vec<f64>> {
                m.get(key)
                    .and_then(|v| v.as_array())
                    .and_then(|a| a.iter().map(|x| x.as_f64()).collect::<Option<Vec<_>>>())
                    .with_context(|| format!("longrope rope scaling without a numeric `{key}`"))
            };
            // transformers: the top-level key wins (Phi-3), then the dict's.
            let original = ctx
                .original_max_position_embeddings
                .or_else(|| get_f64(m, "original_max_position_embeddings").map(|v| v as usize))
                .context("longrope rope scaling without `original_max_position_embeddings`")?;
            let factor = get_f64(m, "factor")
                .unwrap_or(ctx.max_position_embeddings as f64 / original as f64);
            let attention_factor = match get_f64(m, "attention_factor") {
                Some(a) => a,
                None if factor <= 1.0 => 1.0,
                None => (1.0 + factor.ln() / (original as f64).ln()).sqrt(),
            };
            RopeScaling::LongRope {
                short_factor: factors("short_factor")?,
                long_factor: factors("long_factor")?,
                original_max_position_embeddings: original,
                attention_factor,
            }
        }
        other => bail!(
            "unsupported rope scaling type `{other}` (supported: default, linear, llama3, yarn, \
             longrope)"
        ),
    })
}

impl ModelConfig {
    /// Parses `config.json`: the common keys here, then the family's own through the registry.
    pub fn from_hf_json(text: &str) -> Result<Self> {
        let raw: serde_json::Value = serde_json::from_str(text).context("parsing config.json")?;
        let quantization = match raw.get("quantization_config") {
            None | Some(serde_json::Value::Null) => None,
            Some(q) => Some(crate::quant::QuantConfig::from_hf(q)?),
        };
        // Multimodal wrappers (Gemma 3 4B+) nest the language model's keys.
        let raw = match raw.get("text_config") {
            Some(t) if raw.get("vocab_size").is_none() => t.clone(),
            _ => raw,
        };
        let model_type = raw
            .get("model_type")
            .and_then(|v| v.as_str())
            .unwrap_or("llama")
            .to_string();
        // A classifier or encoder head on a known body is not a language model: refuse it
        // rather than invent an output head.
        if let Some(archs) = raw.get("architectures").and_then(|a| a.as_array()) {
            let names: Vec<&str> = archs.iter().filter_map(|a| a.as_str()).collect();
            let generative =
                |a: &&str| a.ends_with("ForCausalLM") || a.ends_with("ForConditionalGeneration");
            if !names.is_empty() && !names.iter().any(generative) {
                bail!(
                    "architectures {names:?} has no causal-LM head (expected *ForCausalLM or \
                     *ForConditionalGeneration)"
                );
            }
        }
        let family = super::registry::family_for_model_type(&model_type)?;
        let mut cfg = Self::common_from_hf(&raw, model_type)?;
        (family.configure)(&raw, &mut cfg)?;
        cfg.validate()?;
        cfg.quantization = quantization;
        Ok(cfg)
    }

    /// The keys every family shares, with Llama's meaning.
    fn common_from_hf(raw: &serde_json::Value, model_type: String) -> Result<Self> {
        let c = HfConfig::deserialize(raw).context("parsing config.json")?;
        // transformers 5 keys rope settings by layer type when they differ (Gemma 3): the
        // global layers' set is the model's; a family reads the others itself.
        let full_attention: Option<HashMap<String, serde_json::Value>> = c
            .rope_parameters
            .as_ref()
            .and_then(|m| m.get("full_attention"))
            .map(|v| serde_json::from_value(v.clone()))
            .transpose()
            .context("rope_parameters.full_attention")?;
        let rope_params = full_attention.as_ref().or(c.rope_parameters.as_ref());
        let rope_theta = c
            .rope_theta
            .or_else(|| rope_params.and_then(|m| get_f64(m, "rope_theta")))
            .unwrap_or(10_000.0);
        let ctx = RopeContext {
            max_position_embeddings: c.max_position_embeddings,
            original_max_position_embeddings: c.original_max_position_embeddings,
        };
        let rope_scaling = match (&c.rope_scaling, rope_params) {
            (Some(m), _) | (None, Some(m)) => parse_rope_scaling(m, &ctx)?,
            (None, None) => RopeScaling::None,
        };
        let attention_bias = c.attention_bias.unwrap_or(false);
        let head_dim = c.head_dim.unwrap_or(c.hidden_size / c.num_attention_heads);
        Ok(Self {
            vocab_size: c.vocab_size,
            hidden_size: c.hidden_size,
            intermediate_size: c.intermediate_size,
            num_hidden_layers: c.num_hidden_layers,
            num_attention_heads: c.num_attention_heads,
            num_key_value_heads: c.num_key_value_heads.unwrap_or(c.num_attention_heads),
            head_dim,
            rms_norm_eps: c.rms_norm_eps,
            rope_theta,
            rope_scaling,
            max_position_embeddings: c.max_position_embeddings,
            tie_word_embeddings: c.tie_word_embeddings.unwrap_or(false),
            qkv_bias: attention_bias,
            o_bias: attention_bias,
            mlp_bias: c.mlp_bias.unwrap_or(false),
            layer_windows: vec![None; c.num_hidden_layers],
            bos_token_id: token_ids(&c.bos_token_id).first().copied(),
            eos_token_ids: token_ids(&c.eos_token_id),
            model_type,
            ..Self::default()
        })
    }

    /// Refuses what the decoder cannot honour rather than running a different model.
    fn validate(&self) -> Result<()> {
        anyhow::ensure!(
            self.layer_windows.len() == self.num_hidden_layers,
            "{} layer types for {} layers",
            self.layer_windows.len(),
            self.num_hidden_layers
        );
        anyhow::ensure!(
            self.num_attention_heads
                .is_multiple_of(self.num_key_value_heads),
            "{} attention heads are not a multiple of {} KV heads",
            self.num_attention_heads,
            self.num_key_value_heads
        );
        let rotary_dim = self.rotary_dim();
        anyhow::ensure!(
            rotary_dim.is_multiple_of(2) && rotary_dim <= self.head_dim,
            "rotary on {rotary_dim} of {} head dims",
            self.head_dim
        );
        if let RopeScaling::LongRope {
            short_factor,
            long_factor,
            ..
        } = &self.rope_scaling
        {
            anyhow::ensure!(
                short_factor.len() == rotary_dim / 2 && long_factor.len() == rotary_dim / 2,
                "longrope with {} short and {} long factors for {rotary_dim} rotary dims (want {})",
                short_factor.len(),
                long_factor.len(),
                rotary_dim / 2
            );
        }
        if let Some(m) = &self.moe {
            anyhow::ensure!(
                m.top_k >= 1 && m.top_k <= m.num_experts,
                "MoE top_k {} with {} experts",
                m.top_k,
                m.num_experts
            );
        }
        Ok(())
    }

    /// The sliding window of layer `i`, if it has one.
    pub fn window(&self, layer: usize) -> Option<usize> {
        self.layer_windows[layer]
    }

    /// Reads `<arch>.*` keys of a GGUF file (llama.cpp's names).
    pub fn from_gguf(content: &gguf_file::Content) -> Result<Self> {
        let md = &content.metadata;
        let arch = md
            .get("general.architecture")
            .context("GGUF without general.architecture")?
            .to_string()?
            .clone();
        let family = super::registry::family_for_gguf_architecture(&arch)?;
        let get = |k: &str| {
            md.get(&format!("{arch}.{k}"))
                .with_context(|| format!("GGUF misses {arch}.{k}"))
        };
        let u = |k: &str| -> Result<usize> { Ok(get(k)?.to_u32()? as usize) };
        let heads = u("attention.head_count")?;
        let hidden = u("embedding_length")?;
        let kv_heads = u("attention.head_count_kv").unwrap_or(heads);
        let head_dim = u("attention.key_length")
            .or_else(|_| u("rope.dimension_count"))
            .unwrap_or(hidden / heads);
        let vocab_size = match md.get(&format!("{arch}.vocab_size")) {
            Some(v) => v.to_u32()? as usize,
            None => md
                .get("tokenizer.ggml.tokens")
                .context("GGUF without vocabulary")?
                .to_vec()?
                .len(),
        };
        let rope_scaling = match md
            .get(&format!("{arch}.rope.scaling.type"))
            .map(|v| v.to_string())
        {
            Some(Ok(t)) if t == "linear" => RopeScaling::Linear {
                factor: get("rope.scaling.factor")?.to_f32()? as f64,
            },
            _ => RopeScaling::None,
        };
        let has_output = content.tensor_infos.contains_key("output.weight");
        let tok = |k: &str| md.get(k).and_then(|v| v.to_u32().ok());
        let mut cfg = Self {
            model_type: arch.clone(),
            vocab_size,
            hidden_size: hidden,
            intermediate_size: u("feed_forward_length")?,
            num_hidden_layers: u("block_count")?,
            num_attention_heads: heads,
            num_key_value_heads: kv_heads,
            head_dim,
            rms_norm_eps: get("attention.layer_norm_rms_epsilon")?.to_f32()? as f64,
            rope_theta: get("rope.freq_base")
                .and_then(|v| Ok(v.to_f32()? as f64))
                .unwrap_or(10_000.0),
            rope_scaling,
            max_position_embeddings: u("context_length").unwrap_or(4096),
            tie_word_embeddings: !has_output,
            qkv_bias: content.tensor_infos.contains_key("blk.0.attn_q.bias"),
            o_bias: content.tensor_infos.contains_key("blk.0.attn_output.bias"),
            mlp_bias: false,
            layer_windows: vec![None; u("block_count")?],
            bos_token_id: tok("tokenizer.ggml.bos_token_id"),
            eos_token_ids: tok("tokenizer.ggml.eos_token_id").into_iter().collect(),
            ..Self::default()
        };
        (family.configure_gguf)(content, &mut cfg)?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// The longest context the checkpoint is made for, derived as vLLM derives it:
    /// `max_position_embeddings`, times the factor of a linear rope scaling, or YaRN's
    /// `original_max_position_embeddings` times its factor (Llama 3 and LongRoPE configs already
    /// give the extended length; Gemma 3's is already scaled).
    pub fn derived_max_len(&self) -> usize {
        if self.model_type.starts_with("gemma3") {
            return self.max_position_embeddings;
        }
        match self.rope_scaling {
            RopeScaling::Linear { factor } => {
                (self.max_position_embeddings as f64 * factor) as usize
            }
            RopeScaling::Yarn {
                factor,
                original_max_position_embeddings,
                ..
            } => (original_max_position_embeddings as f64 * factor) as usize,
            _ => self.max_position_embeddings,
        }
    }

    /// Dims of each head the rotary turns (the first ones).
    pub fn rotary_dim(&self) -> usize {
        self.rotary_dim.unwrap_or(self.head_dim)
    }

    pub fn num_queries_per_kv(&self) -> usize {
        self.num_attention_heads / self.num_key_value_heads
    }

    /// Bytes of K and V one token takes across all layers, for a cache dtype size.
    pub fn kv_bytes_per_token(&self, dtype_size: usize) -> usize {
        if let Some(m) = &self.mla {
            return (m.kv_lora_rank + m.qk_rope_head_dim) * self.num_hidden_layers * dtype_size;
        }
        2 * self.num_hidden_layers * self.num_key_value_heads * self.head_dim * dtype_size
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_llama3_rope_from_transformers5_rope_parameters() {
        let json = r#"{"model_type":"llama","vocab_size":10,"hidden_size":8,"intermediate_size":16,
            "num_hidden_layers":1,"num_attention_heads":2,"num_key_value_heads":1,
            "rope_parameters":{"rope_type":"llama3","rope_theta":500000.0,"factor":8.0,
            "low_freq_factor":1.0,"high_freq_factor":4.0,"original_max_position_embeddings":64},
            "eos_token_id":[1,2]}"#;
        let c = ModelConfig::from_hf_json(json).unwrap();
        assert_eq!(c.rope_theta, 500000.0);
        assert_eq!(c.eos_token_ids, vec![1, 2]);
        assert_eq!(c.head_dim, 4);
        assert!(matches!(
            c.rope_scaling,
            RopeScaling::Llama3 {
                original_max_position_embeddings: 64,
                ..
            }
        ));
    }

    #[test]
    fn derived_max_len_follows_vllm() {
        let base = ModelConfig {
            model_type: "llama".into(),
            max_position_embeddings: 512,
            ..ModelConfig::default()
        };
        assert_eq!(base.derived_max_len(), 512);
        let yarn = |model_type: &str| ModelConfig {
            model_type: model_type.into(),
            rope_scaling: RopeScaling::Yarn {
                factor: 4.0,
                original_max_position_embeddings: 64,
                beta_fast: 32.0,
                beta_slow: 1.0,
                attention_factor: 1.0,
                truncate: true,
            },
            ..base.clone()
        };
        assert_eq!(yarn("gpt_oss").derived_max_len(), 256);
        let linear = |model_type: &str| ModelConfig {
            model_type: model_type.into(),
            rope_scaling: RopeScaling::Linear { factor: 8.0 },
            ..base.clone()
        };
        assert_eq!(linear("llama").derived_max_len(), 4096);
        assert_eq!(linear("gemma3_text").derived_max_len(), 512);
        let llama3 = ModelConfig {
            rope_scaling: RopeScaling::Llama3 {
                factor: 8.0,
                low_freq_factor: 1.0,
                high_freq_factor: 4.0,
                original_max_position_embeddings: 64,
            },
            ..base.clone()
        };
        assert_eq!(llama3.derived_max_len(), 512);
    }

    #[test]
    fn qwen2_has_qkv_bias_and_rejects_unknown_types() {
        let base = r#"{"vocab_size":10,"hidden_size":8,"intermediate_size":16,
            "num_hidden_layers":1,"num_attention_heads":2,"model_type":"#;
        let c = ModelConfig::from_hf_json(&format!("{base}\"qwen2\"}}")).unwrap();
        assert!(c.qkv_bias && !c.o_bias);
        assert!(ModelConfig::from_hf_json(&format!("{base}\"gpt2\"}}")).is_err());
    }
}
