//! Multi-head latent attention (DeepSeek-V2/V3) over the paged cache, in the absorbed form.
//!
//! Per token the cache holds only the normalised latent `c` (`kv_lora_rank`) and the shared
//! rotary key `k_r` (`qk_rope_head_dim`), never per-head keys and values: that is the memory
//! MLA saves. Head `h`'s key is `[W_UK[h] c ; k_r]` and its value `W_UV[h] c`, so
//! `q·k = (W_UK[h]ᵀ q_nope)·c + q_rope·k_r` and `Σ p v = W_UV[h] (Σ p c)`: queries are moved
//! into latent space once, attention runs against the latents themselves (one shared "head"
//! for all query heads), and the per-head value projection is applied to the result. Prefill
//! and decode take the same path.

use candle_core::{DType, Result, Tensor};

use super::attention::AttnMetadata;
use super::linear::Linear;
use super::rope::Rotary;

pub enum QueryProj {
    /// `q_proj` (V2-Lite).
    Direct(Linear),
    /// `q_b_proj(norm(q_a_proj(x)))`.
    LowRank { a: Linear, norm: Tensor, b: Linear },
}

pub struct Mla {
    pub q: QueryProj,
    /// `x -> [c (kv_lora_rank) ; k_r (qk_rope_head_dim)]`.
    pub kv_a: Linear,
    pub kv_a_norm: Tensor,
    pub eps: f32,
    /// `[heads, qk_nope_head_dim, kv_lora_rank]`, f32.
    pub w_uk: Tensor,
    /// `[heads, kv_lora_rank, v_head_dim]`, f32.
    pub w_uv: Tensor,
    pub o: Linear,
    pub heads: usize,
    pub nope: usize,
    pub rope: usize,
    pub lora: usize,
    pub v_dim: usize,
}

impl Mla {
    /// `x: [tokens, hidden]`; writes this step's latents into `c_cache` `[slots, 1, lora]` and
    /// `r_cache` `[slots, 1, rope]`. `scale` multiplies every logit; `rope_scale` the rotary
    /// part once more (YaRN's cos/sin factor, squared).
    #[allow(clippy::too_many_arguments)]
    pub fn forward(
        &self,
        x: &Tensor,
        meta: &AttnMetadata,
        c_cache: &Tensor,
        r_cache: &Tensor,
        rotary: &Rotary,
        scale: f32,
        rope_scale: f32,
    ) -> Result<Tensor> {
        let t = meta.num_tokens;
        let (h, nope, rope, lora) = (self.heads, self.nope, self.rope, self.lora);
        let dtype = x.dtype();
        let q = match &self.q {
            QueryProj::Direct(p) => p.forward(x)?,
            QueryProj::LowRank { a, norm, b } => {
                b.forward(&candle_nn::ops::rms_norm(&a.forward(x)?, norm, self.eps)?)?
            }
        }
        .reshape((t, h, nope + rope))?;
        let kv = self.kv_a.forward(x)?;
        let c = candle_nn::ops::rms_norm(
            &kv.narrow(1, 0, lora)?.contiguous()?,
            &self.kv_a_norm,
            self.eps,
        )?;
        let (cos, sin) = rotary.cos_sin(meta, dtype)?;
        let q_rope = rotary.apply(&q.narrow(2, nope, rope)?.contiguous()?, &cos, &sin)?;
        let k_rope = rotary.apply(
            &kv.narrow(1, lora, rope)?.reshape((t, 1, rope))?,
            &cos,
            &sin,
        )?;
        meta.write_kv(&c.reshape((t, 1, lora))?, &k_rope, c_cache, r_cache, None)?;

        // [h, t, lora]: queries in latent space; [h, t, rope] rotary parts.
        let q_nope = q
            .narrow(2, 0, nope)?
            .transpose(0, 1)?
            .to_dtype(DType::F32)?
            .contiguous()?;
        let q_lat = q_nope.matmul(&self.w_uk)?;
        let q_rope =
            (q_rope.transpose(0, 1)?.to_dtype(DType::F32)? * rope_scale as f64)?.contiguous()?;
        let bs = meta.block_size;
        let mut outs = Vec::with_capacity(meta.seqs.len());
        for s in meta.seqs.iter() {
            let (n, ctx) = (s.query_len, s.context_len);
            let slots: Vec<u32> = (0..ctx)
                .map(|p| s.block_table[p / bs] * bs as u32 + (p % bs) as u32)
                .collect();
            let idx = Tensor::from_vec(slots, ctx, x.device())?;
            let cs = c_cache
                .index_select(&idx, 0)?
                .reshape((ctx, lora))?
                .to_dtype(DType::F32)?;
            let rs = r_cache
                .index_select(&idx, 0)?
                .reshape((ctx, rope))?
                .to_dtype(DType::F32)?;
            let ql = q_lat.narrow(1, s.query_start, n)?.reshape((h * n, lora))?;
            let qr = q_rope.narrow(1, s.query_start, n)?.reshape((h * n, rope))?;
            let scores = ((ql.matmul(&cs.t()?)? + qr.matmul(&rs.t()?)?)? * scale as f64)?;
            let first = ctx - n;
            let mask: Vec<f32> = (0..h)
                .flat_map(|_| 0..n)
                .flat_map(|i| {
                    (0..ctx).map(move |j| {
                        if j > first + i {
                            f32::NEG_INFINITY
                        } else {
                            0.0
                        }
                    })
                })
                .collect();
            let mask = Tensor::from_vec(mask, (h * n, ctx), x.device())?;
            let probs = candle_nn::ops::softmax_last_dim(&(scores + mask)?)?;
            outs.push(probs.matmul(&cs)?.reshape((h, n, lora))?);
        }
        // [h, t, v] -> [t, h * v]
        let o_lat = Tensor::cat(&outs, 1)?;
        let o = o_lat
            .matmul(&self.w_uv)?
            .transpose(0, 1)?
            .reshape((t, h * self.v_dim))?;
        self.o.forward(&o.to_dtype(dtype)?)
    }
}
