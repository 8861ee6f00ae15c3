//! The pre-norm decoder every registered family builds, over a ragged batch and a paged cache:
//! GQA attention with optional q/k norms and per-layer sliding windows, a gated MLP or a sparse
//! mixture of experts, and the norm variants of Llama and Gemma. Families differ only in their
//! config (src/models/<family>.rs), which switches these options.

use anyhow::Result;
use candle_core::{DType, Device, Tensor};

use super::config::{MlaConfig, ModelConfig, RopeScaling};
use super::weights::Weights;
use super::CausalLm;
use crate::kv::{Fp8Scales, KvCache};
use crate::layers::attention::{paged_attention_kv, AttnMetadata};
use crate::layers::linear::Linear;
use crate::layers::mla::{Mla, QueryProj};
use crate::layers::mlp::{GatedMlp, Mlp, SparseMoe};
use crate::layers::rope::Rotary;
use crate::ops;
use crate::ops::moe::Routing;

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

/// Attention with per-head keys and values in the cache (every family but DeepSeek).
struct StandardAttn {
    qkv: QkvProj,
    o: Linear,
    q_norm: Option<RmsNorm>,
    k_norm: Option<RmsNorm>,
    /// gpt-oss's per-head sink logits (f32).
    sinks: Option<Vec<f32>>,
}

/// q, k and v projections: separate, or one map whose output is q, k, v side by side (our CPU
/// kernel's repacked weights: the input is quantized once and read by one pass).
enum QkvProj {
    Separate { q: Linear, k: Linear, v: Linear },
    Fused(Linear),
}

impl QkvProj {
    fn new(q: Linear, k: Linear, v: Linear) -> Self {
        match Linear::fuse(&[&q, &k, &v]) {
            Some(f) => Self::Fused(f),
            None => Self::Separate { q, k, v },
        }
    }

    /// `hs: [t, hidden]` -> q `[t, q_dim]`, k and v `[t, kv_dim]`.
    fn forward(
        &self,
        hs: &Tensor,
        q_dim: usize,
        kv_dim: usize,
    ) -> Result<(Tensor, Tensor, Tensor)> {
        Ok(match self {
            Self::Separate { q, k, v } => (q.forward(hs)?, k.forward(hs)?, v.forward(hs)?),
            Self::Fused(f) => {
                let y = f.forward(hs)?;
                (
                    y.narrow(1, 0, q_dim)?,
                    y.narrow(1, q_dim, kv_dim)?,
                    y.narrow(1, q_dim + kv_dim, kv_dim)?,
                )
            }
        })
    }
}

enum Attention {
    Standard(StandardAttn),
    /// DeepSeek's MLA: the cache holds a latent and a rotary key per token.
    Latent(Mla),
}

struct Layer {
    input_norm: RmsNorm,
    attn: Attention,
    /// Gemma's norm of the attention output before it joins the residual.
    post_attn_norm: Option<RmsNorm>,
    /// The norm in front of the MLP (Llama's `post_attention_layernorm`).
    pre_mlp_norm: RmsNorm,
    post_mlp_norm: Option<RmsNorm>,
    mlp: Mlp,
    window: Option<usize>,
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
    /// Per-layer scales for an FP8 KV cache (the checkpoint's `k_scale`/`v_scale`, else 1.0).
    kv_scales: Vec<Fp8Scales>,
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
            Ok(GatedMlp::new(
                half(0)?,
                half(1)?,
                Linear::dense(down.get(j)?.t()?.contiguous()?, Some(down_bias.get(j)?)),
                cfg.activation,
            ))
        })
        .collect()
}

/// DeepSeek's attention block under `prefix`, with the rotary rows of interleaved checkpoints
/// put in half-split order and `kv_b_proj` split into the per-head absorbed matrices.
fn load_mla(w: &Weights, cfg: &ModelConfig, m: &MlaConfig, prefix: &str) -> Result<Mla> {
    let (h, nope, rope, lora, v_dim) = (
        cfg.num_attention_heads,
        m.qk_nope_head_dim,
        m.qk_rope_head_dim,
        m.kv_lora_rank,
        m.v_head_dim,
    );
    let device = w.device();
    // Row order taking a block whose last `rope` rows are interleaved pairs to half-split.
    let rope_order = |start: usize, rows: usize| -> Vec<u32> {
        let mut order: Vec<u32> = (0..rows as u32).collect();
        if m.rope_interleave {
            for i in 0..rope / 2 {
                order[start + i] = (start + 2 * i) as u32;
                order[start + rope / 2 + i] = (start + 2 * i + 1) as u32;
            }
        }
        order
    };
    let rows_of = |name: &str, order: &[u32], bias: bool| -> Result<Linear> {
        let idx = Tensor::from_slice(order, order.len(), &device)?;
        let weight = w.tensor(name, "weight")?.index_select(&idx, 0)?;
        let bias = match bias {
            true => Some(w.tensor(name, "bias")?.index_select(&idx, 0)?),
            false => None,
        };
        Ok(Linear::dense(weight, bias))
    };
    let qk = nope + rope;
    let q_order: Vec<u32> = (0..h)
        .flat_map(|hh| {
            rope_order(nope, qk)
                .into_iter()
                .map(move |r| (hh * qk) as u32 + r)
        })
        .collect();
    let q = match m.q_lora_rank {
        Some(_) => QueryProj::LowRank {
            a: w.linear(&format!("{prefix}.q_a_proj"), cfg.qkv_bias)?,
            norm: w.tensor(&format!("{prefix}.q_a_layernorm"), "weight")?,
            b: rows_of(&format!("{prefix}.q_b_proj"), &q_order, false)?,
        },
        None => QueryProj::Direct(rows_of(&format!("{prefix}.q_proj"), &q_order, false)?),
    };
    let kv_a = rows_of(
        &format!("{prefix}.kv_a_proj_with_mqa"),
        &rope_order(lora, lora + rope),
        cfg.qkv_bias,
    )?;
    let kv_b = w
        .tensor(&format!("{prefix}.kv_b_proj"), "weight")?
        .to_dtype(DType::F32)?
        .reshape((h, nope + v_dim, lora))?;
    Ok(Mla {
        q,
        kv_a,
        kv_a_norm: w.tensor(&format!("{prefix}.kv_a_layernorm"), "weight")?,
        eps: cfg.rms_norm_eps as f32,
        w_uk: kv_b.narrow(1, 0, nope)?.contiguous()?,
        w_uv: kv_b.narrow(1, nope, v_dim)?.transpose(1, 2)?.contiguous()?,
        o: w.linear(&format!("{prefix}.o_proj"), cfg.o_bias)?,
        heads: h,
        nope,
        rope,
        lora,
        v_dim,
    })
}

fn load_mlp(w: &Weights, cfg: &ModelConfig, layer: usize) -> Result<Mlp> {
    let p = format!("model.layers.{layer}");
    let dense = |prefix: &str, gate: &str, up: &str, down: &str| -> Result<GatedMlp> {
        Ok(GatedMlp::new(
            w.linear(&format!("{prefix}.{gate}"), cfg.mlp_bias)?,
            w.linear(&format!("{prefix}.{up}"), cfg.mlp_bias)?,
            w.linear(&format!("{prefix}.{down}"), cfg.mlp_bias)?,
            cfg.activation,
        ))
    };
    match &cfg.moe {
        Some(m) if m.sparse_layers[layer] => {
            let n = &m.names;
            let experts_prefix = format!("{p}.{}", n.experts);
            let experts = match (m.stacked_experts, w.gguf_experts(layer, "gate")?) {
                (true, _) => stacked_experts(w, cfg, &experts_prefix, m.num_experts)?,
                // GGUF: llama.cpp's stacked `ffn_*_exps`.
                (false, Some(gates)) => {
                    let ups = w.gguf_experts(layer, "up")?.unwrap_or_default();
                    let downs = w.gguf_experts(layer, "down")?.unwrap_or_default();
                    anyhow::ensure!(
                        gates.len() == m.num_experts
                            && ups.len() == m.num_experts
                            && downs.len() == m.num_experts,
                        "layer {layer}: {} GGUF experts, config says {}",
                        gates.len(),
                        m.num_experts
                    );
                    gates
                        .into_iter()
                        .zip(ups)
                        .zip(downs)
                        .map(|((gate, up), down)| GatedMlp::new(gate, up, down, cfg.activation))
                        .collect()
                }
                (false, None) => (0..m.num_experts)
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
            let routing = Routing {
                top_k: m.top_k,
                norm_topk_prob: m.norm_topk_prob,
                scoring: m.scoring,
                groups: m.groups,
                group_by_best: m.group_by_best,
                correction,
                routed_scaling_factor: m.routed_scaling_factor as f32,
            };
            let mut moe =
                SparseMoe::new(w.linear(&router, m.router_bias)?, experts, routing, shared);
            // On CUDA the fused kernel runs the layer (routing included) when the experts are
            // dense; quantized experts keep the per-expert path.
            if w.device().is_cuda() {
                moe.fuse()?;
            }
            Ok(Mlp::Sparse(moe))
        }
        // Phi-3: gate rows, then up rows, in one `gate_up_proj`.
        _ if cfg.fused_projections => {
            let (name, n) = (format!("{p}.mlp.gate_up_proj"), cfg.intermediate_size);
            Ok(Mlp::Dense(GatedMlp::new(
                w.linear_rows(&name, 0, n, cfg.mlp_bias)?,
                w.linear_rows(&name, n, n, cfg.mlp_bias)?,
                w.linear(&format!("{p}.mlp.down_proj"), cfg.mlp_bias)?,
                cfg.activation,
            )))
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
                let attn = match &cfg.mla {
                    Some(m) => Attention::Latent(load_mla(w, &cfg, m, &a)?),
                    None => {
                        let (q, k, v) = load_qkv(w, &cfg, &a)?;
                        Attention::Standard(StandardAttn {
                            qkv: QkvProj::new(q, k, v),
                            o: w.linear(&format!("{a}.o_proj"), cfg.o_bias)?,
                            q_norm: norm_if(cfg.qk_norm, format!("{a}.q_norm"))?,
                            k_norm: norm_if(cfg.qk_norm, format!("{a}.k_norm"))?,
                            sinks: match cfg.attention_sinks {
                                true => {
                                    Some(w.tensor(&a, "sinks")?.to_dtype(DType::F32)?.to_vec1()?)
                                }
                                false => None,
                            },
                        })
                    }
                };
                Ok(Layer {
                    input_norm: RmsNorm::load(w, &format!("{p}.input_layernorm"), &cfg)?,
                    attn,
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
                    rotary: match window {
                        Some(_) if rotaries.len() > 1 => 1,
                        _ => 0,
                    },
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let norm = RmsNorm::load(w, "model.norm", &cfg)?;
        let kv_scales = (0..cfg.num_hidden_layers)
            .map(|i| w.kv_cache_scales(&format!("model.layers.{i}.self_attn")))
            .collect::<Result<Vec<_>>>()?;
        let lm_head = match (cfg.tie_word_embeddings, w.contains("lm_head")) {
            (true, _) => w.linear("model.embed_tokens", false)?,
            (false, true) => w.linear("lm_head", false)?,
            (false, false) => anyhow::bail!(
                "the config says tie_word_embeddings: false but the checkpoint has no \
                 lm_head.weight"
            ),
        };
        Ok(Self {
            cfg,
            embed,
            layers,
            norm,
            lm_head,
            rotaries,
            kv_scales,
            dtype,
            device,
        })
    }
}

impl Decoder {
    /// One layer's attention with per-head K/V: projections, q/k norms, rotary, cache write,
    /// paged attention (with sinks where the model has them), output projection.
    #[allow(clippy::too_many_arguments)]
    fn standard_attention(
        &self,
        sa: &StandardAttn,
        hs: &Tensor,
        meta: &AttnMetadata,
        (k_cache, v_cache): (&Tensor, &Tensor),
        fp8: Option<Fp8Scales>,
        layer: &Layer,
        cos_sin: Option<&(Tensor, Tensor)>,
        scale: f32,
    ) -> Result<Tensor> {
        let cfg = &self.cfg;
        let t = meta.num_tokens;
        let (h, kvh, d) = (
            cfg.num_attention_heads,
            cfg.num_key_value_heads,
            cfg.head_dim,
        );
        let cuda = self.device.is_cuda();
        let rotary = &self.rotaries[layer.rotary];
        let (q, k, v) = sa.qkv.forward(hs, h * d, kvh * d)?;
        let mut q = q.reshape((t, h, d))?;
        let mut k = k.reshape((t, kvh, d))?;
        let v = v.reshape((t, kvh, d))?.contiguous()?;
        if let (Some(qn), Some(kn)) = (&sa.q_norm, &sa.k_norm) {
            q = qn.forward(&q.contiguous()?)?;
            k = kn.forward(&k.contiguous()?)?;
        }
        let (q, k) = match cos_sin {
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
                ops::kv_write::reshape_and_cache(&k, &v, k_cache, v_cache, slots, fp8)?
            }
            _ => meta.write_kv(&k, &v, k_cache, v_cache, fp8)?,
        }
        let attn = paged_attention_kv(
            &q,
            k_cache,
            v_cache,
            meta,
            scale,
            layer.window,
            sa.sinks.as_deref(),
            fp8,
        )?;
        Ok(sa.o.forward(&attn.reshape((t, h * d))?)?)
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
        let scale = cfg
            .query_scale
            .unwrap_or(1.0 / (cfg.head_dim as f64).sqrt()) as f32;
        // On CUDA: fused kernels (src/ops); on the CPU: candle's stock ops.
        let cuda = self.device.is_cuda();
        // Longrope and partial rotary take the cos/sin path on CUDA too.
        let fused_rotary = cuda && self.rotaries.iter().all(|r| r.fused_kernel_ok());
        let cos_sin = match fused_rotary {
            true => Vec::new(),
            false => self
                .rotaries
                .iter()
                .map(|r| r.cos_sin(meta, self.dtype))
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
            let (k_cache, v_cache) = kv.layer(i);
            let rotary = &self.rotaries[layer.rotary];
            // YaRN and longrope scale cos/sin by an attention factor, i.e. the logits by its
            // square (partial rotary: in cos/sin instead, see `Rotary::logit_scale`).
            let rope_scale = rotary.logit_scale() as f32;
            let mut attn = match &layer.attn {
                Attention::Latent(m) => {
                    m.forward(&hs, meta, k_cache, v_cache, rotary, scale, rope_scale)?
                }
                Attention::Standard(sa) => self.standard_attention(
                    sa,
                    &hs,
                    meta,
                    (k_cache, v_cache),
                    kv.fp8_scales(i),
                    layer,
                    cos_sin.get(layer.rotary),
                    scale * rope_scale,
                )?,
            };
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
        let narrower = dtype != self.dtype && dtype != DType::F8E4M3;
        let flag = match dtype {
            DType::F16 => "fp16",
            DType::BF16 => "bf16",
            other => other.as_str(),
        };
        if narrower && !self.device.is_cpu() {
            // The CUDA kernels read a cache of the model's own dtype (or FP8 bytes).
            anyhow::bail!(
                "--kv-cache-dtype {flag} with {:?} activations is supported on the CPU only; \
                 use auto or fp8 on the GPU",
                self.dtype
            );
        }
        if let Some(m) = &c.mla {
            if narrower {
                anyhow::bail!(
                    "--kv-cache-dtype {flag} is not supported for MLA models (the latent cache \
                     is read in the model's dtype); use auto"
                );
            }
            if dtype == DType::F8E4M3 {
                // The latent cache is read by tensor ops (layers::mla) that know no FP8 bytes.
                anyhow::bail!(
                    "--kv-cache-dtype fp8 is not supported for MLA models (the latent cache); \
                     use auto"
                );
            }
            return Ok(KvCache::with_rows(
                c.num_hidden_layers,
                num_blocks,
                block_size,
                (1, m.kv_lora_rank),
                (1, m.qk_rope_head_dim),
                dtype,
                &self.device,
            )?);
        }
        Ok(KvCache::new(
            c.num_hidden_layers,
            num_blocks,
            block_size,
            c.num_key_value_heads,
            c.head_dim,
            dtype,
            &self.device,
        )?
        .with_fp8_scales(&self.kv_scales)?)
    }
}
