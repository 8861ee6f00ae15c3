//! The pre-norm decoder every registered family builds, over a ragged batch and a paged cache:
//! GQA attention with optional q/k norms and per-layer sliding windows, a gated MLP or a sparse
//! mixture of experts, and the norm variants of Llama and Gemma. Families differ only in their
//! config (src/models/<family>.rs), which switches these options.

use anyhow::Result;
use candle_core::{DType, Device, Tensor};

use super::config::{ModelConfig, RopeScaling};
use super::weights::Weights;
use super::CausalLm;
use crate::kv::KvCache;
use crate::layers::attention::{paged_attention_with_sinks, AttnMetadata};
use crate::layers::linear::Linear;
use crate::layers::mlp::{GatedMlp, Mlp, SparseMoe};
use crate::layers::rope::Rotary;
use crate::ops;

struct RmsNorm {
    /// The scale actually applied: `w`, or `1 + w` for Gemma's offset norms.
    weight: Tensor,
    eps: f32,
}

impl RmsNorm {
    fn load(w: &Weights, name: &str, cfg: &ModelConfig) -> Result<Self> {
        let raw = w.tensor(name, "weight")?;
        let weight = match cfg.norm_unit_offset {
            true => (raw.to_dtype(DType::F32)? + 1.0)?,
            false => raw,
        }
        .to_dtype(w.activation_dtype())?;
        Ok(Self {
            weight,
            eps: cfg.rms_norm_eps as f32,
        })
    }

    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        candle_nn::ops::rms_norm(x, &self.weight, self.eps)
    }
}

/// `(x + delta, norm(x + delta))` (just `(x, norm(x))` without a delta); one fused kernel on
/// CUDA, the same arithmetic with stock ops on the CPU.
fn add_norm(
    x: &Tensor,
    delta: Option<&Tensor>,
    norm: &RmsNorm,
    cuda: bool,
) -> candle_core::Result<(Tensor, Tensor)> {
    match (delta, cuda) {
        (Some(d), true) => ops::norm::add_rms_norm(d, x, &norm.weight, norm.eps),
        (None, true) => Ok((x.clone(), ops::norm::rms_norm(x, &norm.weight, norm.eps)?)),
        (Some(d), false) => {
            let sum = (x + d)?;
            let normed = norm.forward(&sum)?;
            Ok((sum, normed))
        }
        (None, false) => Ok((x.clone(), norm.forward(x)?)),
    }
}

struct Layer {
    input_norm: RmsNorm,
    q: Linear,
    k: Linear,
    v: Linear,
    o: Linear,
    q_norm: Option<RmsNorm>,
    k_norm: Option<RmsNorm>,
    /// Gemma's norm of the attention output before it joins the residual.
    post_attn_norm: Option<RmsNorm>,
    /// The norm in front of the MLP (Llama's `post_attention_layernorm`).
    pre_mlp_norm: RmsNorm,
    post_mlp_norm: Option<RmsNorm>,
    mlp: Mlp,
    window: Option<usize>,
    /// gpt-oss's per-head sink logits (f32).
    sinks: Option<Vec<f32>>,
    /// Index into `Decoder::rotaries`.
    rotary: usize,
}

pub struct Decoder {
    cfg: ModelConfig,
    /// `[vocab, hidden]` in the activation dtype.
    embed: Tensor,
    layers: Vec<Layer>,
    norm: RmsNorm,
    lm_head: Linear,
    /// The global rotary, then (Gemma 3) the sliding layers' one.
    rotaries: Vec<Rotary>,
    dtype: DType,
    device: Device,
}

/// The registry's builder for every family of this decoder.
pub fn build(cfg: ModelConfig, w: &Weights) -> Result<Box<dyn CausalLm>> {
    Ok(Box::new(Decoder::load(cfg, w)?))
}

/// q, k, v of one attention block (`prefix` = `model.layers.N.self_attn`), from separate
/// projections or split from a fused `qkv_proj` (q rows, then k, then v).
fn load_qkv(w: &Weights, cfg: &ModelConfig, prefix: &str) -> Result<(Linear, Linear, Linear)> {
    let (heads, kv_heads, bias) = (
        cfg.num_attention_heads,
        cfg.num_key_value_heads,
        cfg.qkv_bias,
    );
    if cfg.fused_projections {
        let name = format!("{prefix}.qkv_proj");
        let (q_rows, kv_rows) = (heads * cfg.head_dim, kv_heads * cfg.head_dim);
        return Ok((
            w.linear_rows(&name, 0, q_rows, bias)?,
            w.linear_rows(&name, q_rows, kv_rows, bias)?,
            w.linear_rows(&name, q_rows + kv_rows, kv_rows, bias)?,
        ));
    }
    Ok((
        w.rotary_linear(&format!("{prefix}.q_proj"), heads, bias)?,
        w.rotary_linear(&format!("{prefix}.k_proj"), kv_heads, bias)?,
        w.linear(&format!("{prefix}.v_proj"), bias)?,
    ))
}

/// gpt-oss's experts, all in four tensors under `prefix` (see `MoeConfig::stacked_experts`),
/// as one `[out, in]` gated MLP each.
fn stacked_experts(
    w: &Weights,
    cfg: &ModelConfig,
    prefix: &str,
    n: usize,
) -> Result<Vec<GatedMlp>> {
    let gate_up = w.tensor(prefix, "gate_up_proj")?;
    let gate_up_bias = w.tensor(prefix, "gate_up_proj_bias")?;
    let down = w.tensor(prefix, "down_proj")?;
    let down_bias = w.tensor(prefix, "down_proj_bias")?;
    let (e, hidden, two_inter) = gate_up.dims3()?;
    anyhow::ensure!(
        e == n && two_inter % 2 == 0,
        "{prefix}.gate_up_proj has shape {:?}",
        gate_up.shape()
    );
    let inter = two_inter / 2;
    (0..n)
        .map(|j| {
            // Columns alternate gate, up: [hidden, inter, 2] -> the two [inter, hidden] halves.
            let gu = gate_up.get(j)?.reshape((hidden, inter, 2))?;
            let gub = gate_up_bias.get(j)?.reshape((inter, 2))?;
            let half = |k: usize| -> Result<Linear> {
                let weight = gu.narrow(2, k, 1)?.squeeze(2)?.t()?.contiguous()?;
                let bias = gub.narrow(1, k, 1)?.squeeze(1)?.contiguous()?;
                Ok(Linear::dense(weight, Some(bias)))
            };
            Ok(GatedMlp {
                gate: half(0)?,
                up: half(1)?,
                down: Linear::dense(down.get(j)?.t()?.contiguous()?, Some(down_bias.get(j)?)),
                activation: cfg.activation,
            })
        })
        .collect()
}

fn load_mlp(w: &Weights, cfg: &ModelConfig, layer: usize) -> Result<Mlp> {
    let p = format!("model.layers.{layer}");
    let dense = |prefix: &str, gate: &str, up: &str, down: &str| -> Result<GatedMlp> {
        Ok(GatedMlp {
            gate: w.linear(&format!("{prefix}.{gate}"), cfg.mlp_bias)?,
            up: w.linear(&format!("{prefix}.{up}"), cfg.mlp_bias)?,
            down: w.linear(&format!("{prefix}.{down}"), cfg.mlp_bias)?,
            activation: cfg.activation,
        })
    };
    match &cfg.moe {
        Some(m) if m.sparse_layers[layer] => {
            let n = &m.names;
            let experts_prefix = format!("{p}.{}", n.experts);
            let experts = match m.stacked_experts {
                true => stacked_experts(w, cfg, &experts_prefix, m.num_experts)?,
                false => (0..m.num_experts)
                    .map(|j| dense(&format!("{experts_prefix}.{j}"), n.gate, n.up, n.down))
                    .collect::<Result<Vec<_>>>()?,
            };
            let router = format!("{p}.{}", n.router);
            let correction = match m.correction_bias {
                true => Some(
                    w.tensor(&router, "e_score_correction_bias")?
                        .to_dtype(DType::F32)?
                        .to_vec1()?,
                ),
                false => None,
            };
            let shared = match m.shared_intermediate_size {
                Some(_) => Some(dense(
                    &format!("{p}.mlp.shared_experts"),
                    n.gate,
                    n.up,
                    n.down,
                )?),
                None => None,
            };
            Ok(Mlp::Sparse(SparseMoe {
                router: w.linear(&router, m.router_bias)?,
                experts,
                top_k: m.top_k,
                norm_topk_prob: m.norm_topk_prob,
                scoring: m.scoring,
                groups: m.groups,
                correction,
                routed_scaling_factor: m.routed_scaling_factor as f32,
                shared,
            }))
        }
        // Phi-3: gate rows, then up rows, in one `gate_up_proj`.
        _ if cfg.fused_projections => {
            let (name, n) = (format!("{p}.mlp.gate_up_proj"), cfg.intermediate_size);
            Ok(Mlp::Dense(GatedMlp {
                gate: w.linear_rows(&name, 0, n, cfg.mlp_bias)?,
                up: w.linear_rows(&name, n, n, cfg.mlp_bias)?,
                down: w.linear(&format!("{p}.mlp.down_proj"), cfg.mlp_bias)?,
                activation: cfg.activation,
            }))
        }
        _ => Ok(Mlp::Dense(dense(
            &format!("{p}.mlp"),
            "gate_proj",
            "up_proj",
            "down_proj",
        )?)),
    }
}

impl Decoder {
    pub fn load(cfg: ModelConfig, w: &Weights) -> Result<Self> {
        let dtype = w.activation_dtype();
        let device = w.device();
        let embed = w.tensor("model.embed_tokens", "weight")?.to_dtype(dtype)?;
        let mut rotaries = vec![Rotary::new(&cfg, &device)?];
        if let Some(theta) = cfg.sliding_rope_theta {
            rotaries.push(Rotary::with_base(
                cfg.head_dim,
                theta,
                &RopeScaling::None,
                &device,
            )?);
        }
        let norm_if = |on: bool, name: String| -> Result<Option<RmsNorm>> {
            on.then(|| RmsNorm::load(w, &name, &cfg)).transpose()
        };
        let layers = (0..cfg.num_hidden_layers)
            .map(|i| {
                let p = format!("model.layers.{i}");
                let a = format!("{p}.self_attn");
                let window = cfg.window(i);
                let sandwich = cfg.sandwich_norms;
                let (q, k, v) = load_qkv(w, &cfg, &a)?;
                Ok(Layer {
                    input_norm: RmsNorm::load(w, &format!("{p}.input_layernorm"), &cfg)?,
                    q,
                    k,
                    v,
                    o: w.linear(&format!("{a}.o_proj"), cfg.o_bias)?,
                    q_norm: norm_if(cfg.qk_norm, format!("{a}.q_norm"))?,
                    k_norm: norm_if(cfg.qk_norm, format!("{a}.k_norm"))?,
                    post_attn_norm: norm_if(sandwich, format!("{p}.post_attention_layernorm"))?,
                    pre_mlp_norm: RmsNorm::load(
                        w,
                        &match sandwich {
                            true => format!("{p}.pre_feedforward_layernorm"),
                            false => format!("{p}.post_attention_layernorm"),
                        },
                        &cfg,
                    )?,
                    post_mlp_norm: norm_if(sandwich, format!("{p}.post_feedforward_layernorm"))?,
                    mlp: load_mlp(w, &cfg, i)?,
                    window,
                    sinks: match cfg.attention_sinks {
                        true => Some(w.tensor(&a, "sinks")?.to_dtype(DType::F32)?.to_vec1()?),
                        false => None,
                    },
                    rotary: match window {
                        Some(_) if rotaries.len() > 1 => 1,
                        _ => 0,
                    },
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let norm = RmsNorm::load(w, "model.norm", &cfg)?;
        let lm_head = if cfg.tie_word_embeddings || !w.contains("lm_head") {
            w.linear("model.embed_tokens", false)?
        } else {
            w.linear("lm_head", false)?
        };
        Ok(Self {
            cfg,
            embed,
            layers,
            norm,
            lm_head,
            rotaries,
            dtype,
            device,
        })
    }
}

impl CausalLm for Decoder {
    fn config(&self) -> &ModelConfig {
        &self.cfg
    }

    fn dtype(&self) -> DType {
        self.dtype
    }

    fn device(&self) -> &Device {
        &self.device
    }

    fn forward(
        &self,
        tokens: &Tensor,
        meta: &AttnMetadata,
        kv: &KvCache,
        logit_rows: &Tensor,
    ) -> Result<Tensor> {
        let cfg = &self.cfg;
        let t = meta.num_tokens;
        let (h, kvh, d) = (
            cfg.num_attention_heads,
            cfg.num_key_value_heads,
            cfg.head_dim,
        );
        let scale = cfg.query_scale.unwrap_or(1.0 / (d as f64).sqrt()) as f32;
        // On CUDA: fused kernels (src/ops); on the CPU: candle's stock ops.
        let cuda = self.device.is_cuda();
        let cos_sin = match cuda {
            true => Vec::new(),
            false => self
                .rotaries
                .iter()
                .map(|r| r.cos_sin(&meta.positions, self.dtype))
                .collect::<candle_core::Result<Vec<_>>>()?,
        };
        let mut x = self.embed.index_select(tokens, 0)?;
        if let Some(s) = cfg.embed_scale {
            // Gemma rounds the scale to the activation dtype first.
            let s = Tensor::new(&[s as f32], &self.device)?.to_dtype(self.dtype)?;
            x = x.broadcast_mul(&s)?;
        }
        // The residual stream is `x + pending`: each sub-layer's output is added by the
        // norm that follows it (fused on CUDA).
        let mut pending: Option<Tensor> = None;
        for (i, layer) in self.layers.iter().enumerate() {
            let (residual, hs) = add_norm(&x, pending.as_ref(), &layer.input_norm, cuda)?;
            let mut q = layer.q.forward(&hs)?.reshape((t, h, d))?;
            let mut k = layer.k.forward(&hs)?.reshape((t, kvh, d))?;
            let v = layer.v.forward(&hs)?.reshape((t, kvh, d))?.contiguous()?;
            if let (Some(qn), Some(kn)) = (&layer.q_norm, &layer.k_norm) {
                q = qn.forward(&q.contiguous()?)?;
                k = kn.forward(&k.contiguous()?)?;
            }
            let (k_cache, v_cache) = kv.layer(i);
            let rotary = &self.rotaries[layer.rotary];
            let (q, k) = match cos_sin.get(layer.rotary) {
                Some((cos, sin)) => (rotary.apply(&q, cos, sin)?, rotary.apply(&k, cos, sin)?),
                None => {
                    let (q, k) = (q.contiguous()?, k.contiguous()?);
                    rotary.apply_inplace(&q, &meta.positions)?;
                    rotary.apply_inplace(&k, &meta.positions)?;
                    (q, k)
                }
            };
            match meta.slot_mapping() {
                Some(slots) if cuda => {
                    ops::kv_write::reshape_and_cache(&k, &v, k_cache, v_cache, slots)?
                }
                _ => meta.write_kv(&k, &v, k_cache, v_cache)?,
            }
            let scale = scale * (rotary.attention_factor * rotary.attention_factor) as f32;
            let attn = paged_attention_with_sinks(
                &q,
                k_cache,
                v_cache,
                meta,
                scale,
                layer.window,
                layer.sinks.as_deref(),
            )?;
            let mut attn = layer.o.forward(&attn.reshape((t, h * d))?)?;
            if let Some(n) = &layer.post_attn_norm {
                attn = n.forward(&attn)?;
            }
            let (residual, hs) = add_norm(&residual, Some(&attn), &layer.pre_mlp_norm, cuda)?;
            let mut mlp = layer.mlp.forward(&hs)?;
            if let Some(n) = &layer.post_mlp_norm {
                mlp = n.forward(&mlp)?;
            }
            x = residual;
            pending = Some(mlp);
        }
        if logit_rows.dim(0)? == 0 {
            // A prompt chunk that samples nothing: its K/V are in the cache, skip the head.
            return Ok(Tensor::zeros(
                (0, self.cfg.vocab_size),
                DType::F32,
                &self.device,
            )?);
        }
        let x = x.index_select(logit_rows, 0)?;
        let pending = pending.map(|p| p.index_select(logit_rows, 0)).transpose()?;
        let (_, x) = add_norm(&x, pending.as_ref(), &self.norm, cuda)?;
        let logits = self.lm_head.forward(&x)?.to_dtype(DType::F32)?;
        Ok(match cfg.final_logit_softcapping {
            Some(cap) => ((logits / cap)?.tanh()? * cap)?,
            None => logits,
        })
    }

    fn new_kv_cache(&self, num_blocks: usize, block_size: usize, dtype: DType) -> Result<KvCache> {
        let c = &self.cfg;
        Ok(KvCache::new(
            c.num_hidden_layers,
            num_blocks,
            block_size,
            c.num_key_value_heads,
            c.head_dim,
            dtype,
            &self.device,
        )?)
    }
}
