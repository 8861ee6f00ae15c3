//! The Llama family (Llama 2/3, Mistral, Qwen2, SmolLM2) over a ragged batch and a paged cache.

use anyhow::Result;
use candle_core::{DType, Device, Tensor};

use super::config::LlamaConfig;
use super::weights::Weights;
use crate::kv::KvCache;
use crate::layers::attention::{paged_attention, AttnMetadata};
use crate::layers::linear::Linear;
use crate::layers::rope::Rotary;
use crate::ops;

struct RmsNorm {
    weight: Tensor,
    eps: f32,
}

impl RmsNorm {
    fn load(w: &Weights, name: &str, eps: f64) -> Result<Self> {
        let weight = w.tensor(name, "weight")?.to_dtype(w.activation_dtype())?;
        Ok(Self {
            weight,
            eps: eps as f32,
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
    post_norm: RmsNorm,
    gate: Linear,
    up: Linear,
    down: Linear,
}

pub struct LlamaModel {
    cfg: LlamaConfig,
    /// `[vocab, hidden]` in the activation dtype.
    embed: Tensor,
    layers: Vec<Layer>,
    norm: RmsNorm,
    lm_head: Linear,
    rotary: Rotary,
    dtype: DType,
    device: Device,
}

impl LlamaModel {
    pub fn load(cfg: LlamaConfig, w: &Weights) -> Result<Self> {
        let dtype = w.activation_dtype();
        let device = w.device();
        let embed = w.tensor("model.embed_tokens", "weight")?.to_dtype(dtype)?;
        let layers = (0..cfg.num_hidden_layers)
            .map(|i| {
                let p = format!("model.layers.{i}");
                Ok(Layer {
                    input_norm: RmsNorm::load(
                        w,
                        &format!("{p}.input_layernorm"),
                        cfg.rms_norm_eps,
                    )?,
                    q: w.rotary_linear(
                        &format!("{p}.self_attn.q_proj"),
                        cfg.num_attention_heads,
                        cfg.qkv_bias,
                    )?,
                    k: w.rotary_linear(
                        &format!("{p}.self_attn.k_proj"),
                        cfg.num_key_value_heads,
                        cfg.qkv_bias,
                    )?,
                    v: w.linear(&format!("{p}.self_attn.v_proj"), cfg.qkv_bias)?,
                    o: w.linear(&format!("{p}.self_attn.o_proj"), cfg.o_bias)?,
                    post_norm: RmsNorm::load(
                        w,
                        &format!("{p}.post_attention_layernorm"),
                        cfg.rms_norm_eps,
                    )?,
                    gate: w.linear(&format!("{p}.mlp.gate_proj"), cfg.mlp_bias)?,
                    up: w.linear(&format!("{p}.mlp.up_proj"), cfg.mlp_bias)?,
                    down: w.linear(&format!("{p}.mlp.down_proj"), cfg.mlp_bias)?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let norm = RmsNorm::load(w, "model.norm", cfg.rms_norm_eps)?;
        let lm_head = if cfg.tie_word_embeddings || !w.contains("lm_head") {
            w.linear("model.embed_tokens", false)?
        } else {
            w.linear("lm_head", false)?
        };
        let rotary = Rotary::new(&cfg, &device)?;
        Ok(Self {
            cfg,
            embed,
            layers,
            norm,
            lm_head,
            rotary,
            dtype,
            device,
        })
    }

    pub fn config(&self) -> &LlamaConfig {
        &self.cfg
    }

    pub fn dtype(&self) -> DType {
        self.dtype
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    /// One step over a ragged batch.
    ///
    /// `tokens: [num_tokens]` u32, the new tokens of every sequence back to back as `meta`
    /// lays them out; their K/V are written into `kv` before attention reads it.
    /// `logit_rows: [n]` u32 picks the token rows to compute logits for (usually the last
    /// new token of each sequence). Returns f32 logits `[n, vocab]`. May be empty.
    pub fn forward(
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
        let scale = 1.0 / (d as f32).sqrt();
        // On CUDA: fused kernels (src/ops); on the CPU: candle's stock ops.
        let cuda = self.device.is_cuda();
        let cos_sin = match cuda {
            true => None,
            false => Some(self.rotary.cos_sin(&meta.positions, self.dtype)?),
        };
        // The residual stream is `x + pending`: each sub-layer's output is added by the
        // norm that follows it (fused on CUDA).
        let mut x = self.embed.index_select(tokens, 0)?;
        let mut pending: Option<Tensor> = None;
        for (i, layer) in self.layers.iter().enumerate() {
            let (residual, hs) = add_norm(&x, pending.as_ref(), &layer.input_norm, cuda)?;
            let q = layer.q.forward(&hs)?.reshape((t, h, d))?;
            let k = layer.k.forward(&hs)?.reshape((t, kvh, d))?;
            let v = layer.v.forward(&hs)?.reshape((t, kvh, d))?.contiguous()?;
            let (k_cache, v_cache) = kv.layer(i);
            let (q, k) = match &cos_sin {
                Some((cos, sin)) => (
                    self.rotary.apply(&q, cos, sin)?,
                    self.rotary.apply(&k, cos, sin)?,
                ),
                None => {
                    let (q, k) = (q.contiguous()?, k.contiguous()?);
                    self.rotary.apply_inplace(&q, &meta.positions)?;
                    self.rotary.apply_inplace(&k, &meta.positions)?;
                    (q, k)
                }
            };
            match meta.slot_mapping() {
                Some(slots) if cuda => {
                    ops::kv_write::reshape_and_cache(&k, &v, k_cache, v_cache, slots)?
                }
                _ => meta.write_kv(&k, &v, k_cache, v_cache)?,
            }
            let attn = paged_attention(&q, k_cache, v_cache, meta, scale, cfg.sliding_window)?;
            let attn = layer.o.forward(&attn.reshape((t, h * d))?)?;
            let (residual, hs) = add_norm(&residual, Some(&attn), &layer.post_norm, cuda)?;
            let (gate, up) = (layer.gate.forward(&hs)?, layer.up.forward(&hs)?);
            let mlp = match cuda {
                true => ops::activation::silu_mul(&gate, &up)?,
                false => (candle_nn::ops::silu(&gate)? * up)?,
            };
            x = residual;
            pending = Some(layer.down.forward(&mlp)?);
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
        Ok(self.lm_head.forward(&x)?.to_dtype(DType::F32)?)
    }

    /// A KV cache shaped for this model.
    pub fn new_kv_cache(
        &self,
        num_blocks: usize,
        block_size: usize,
        dtype: DType,
    ) -> Result<KvCache> {
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
