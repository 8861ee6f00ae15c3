//! Rotary position embedding for arbitrary per-token positions (ragged batches).
//!
//! cos/sin are computed per step from the positions instead of a table over the whole
//! context: a 128k-position table costs seconds and gigabytes at load, a step costs
//! `tokens x head_dim/2` multiplications.
//!
//! LongRoPE's short/long choice is made per token: a token at position `p` of a sequence with
//! a prompt of `n` tokens uses the long factors iff `max(n, p + 1) > original_max_position_
//! embeddings`. transformers picks long when the forward's largest position + 1 exceeds it,
//! so this is its rule for one whole-prompt forward (every prompt token long iff the prompt is
//! long) followed by one-token decode steps (long from the first position past the original
//! context); unlike a rule on the step's own length, it gives the same factors however the
//! prompt is chunked, whatever shares the batch, and when a preempted sequence is recomputed.

use candle_core::{DType, Device, Result, Tensor, D};

use crate::layers::attention::AttnMetadata;
use crate::models::config::{ModelConfig, RopeScaling};

#[derive(Debug, Clone)]
pub struct Rotary {
    /// `[1, rotary_dim / 2]`, f32 (longrope: with the short factors).
    inv_freq: Tensor,
    /// Longrope: the frequencies with the long factors, and the original context length.
    long: Option<(Tensor, usize)>,
    position_scale: f64,
    /// YaRN's and longrope's scale of cos/sin. With whole-head rotary, rotating both q and k
    /// by it scales the attention logits by its square, which the attention applies instead
    /// (`logit_scale`: same math, every kernel); with partial rotary only the turned dims are
    /// scaled, so cos/sin carry it.
    attention_factor: f64,
    /// The first `rotary_dim` dims of a head turn, the rest pass (partial rotary).
    rotary_dim: usize,
    head_dim: usize,
}

/// Inverse frequencies with the config's scaling applied (HF `_compute_*_parameters`).
pub fn inv_freqs(cfg: &ModelConfig) -> Vec<f64> {
    inv_freqs_of(cfg.rotary_dim(), cfg.rope_theta, &cfg.rope_scaling)
}

fn inv_freqs_of(d: usize, theta: f64, scaling: &RopeScaling) -> Vec<f64> {
    let base: Vec<f64> = (0..d / 2)
        .map(|i| 1.0 / theta.powf(2.0 * i as f64 / d as f64))
        .collect();
    match *scaling {
        RopeScaling::None | RopeScaling::Linear { .. } => base,
        // HF: 1 / (factor * theta^(2i/d)); the long set is `long_inv_freqs`.
        RopeScaling::LongRope {
            ref short_factor, ..
        } => base.iter().zip(short_factor).map(|(f, s)| f / s).collect(),
        RopeScaling::Yarn {
            factor,
            original_max_position_embeddings,
            beta_fast,
            beta_slow,
            truncate,
            ..
        } => {
            // The dimension whose wavelength turns `rotations` times over the original context.
            let correction_dim = |rotations: f64| {
                let ctx = original_max_position_embeddings as f64;
                d as f64 * (ctx / (rotations * 2.0 * std::f64::consts::PI)).ln()
                    / (2.0 * theta.ln())
            };
            let (mut low, mut high) = (correction_dim(beta_fast), correction_dim(beta_slow));
            if truncate {
                (low, high) = (low.floor(), high.ceil());
            }
            let (low, mut high) = (low.max(0.0), high.min(d as f64 - 1.0));
            if low == high {
                high += 0.001;
            }
            base.into_iter()
                .enumerate()
                .map(|(i, f)| {
                    // 0 keeps the original frequency (fast dims), 1 interpolates it by factor.
                    let ramp = ((i as f64 - low) / (high - low)).clamp(0.0, 1.0);
                    let extrapolation = 1.0 - ramp;
                    (f / factor) * (1.0 - extrapolation) + f * extrapolation
                })
                .collect()
        }
        RopeScaling::Llama3 {
            factor,
            low_freq_factor,
            high_freq_factor,
            original_max_position_embeddings,
        } => {
            let old_ctx = original_max_position_embeddings as f64;
            let low_wavelen = old_ctx / low_freq_factor;
            let high_wavelen = old_ctx / high_freq_factor;
            base.into_iter()
                .map(|f| {
                    let wavelen = 2.0 * std::f64::consts::PI / f;
                    if wavelen < high_wavelen {
                        f
                    } else if wavelen > low_wavelen {
                        f / factor
                    } else {
                        let smooth = (old_ctx / wavelen - low_freq_factor)
                            / (high_freq_factor - low_freq_factor);
                        (1.0 - smooth) * f / factor + smooth * f
                    }
                })
                .collect()
        }
    }
}

impl Rotary {
    /// The model's rotary (its `rope_theta`, scaling and rotary dims).
    pub fn new(cfg: &ModelConfig, device: &Device) -> Result<Self> {
        Self::build(
            cfg.head_dim,
            cfg.rotary_dim(),
            cfg.rope_theta,
            &cfg.rope_scaling,
            device,
        )
    }

    /// A rotary over whole heads of `head_dim` with another base (Gemma 3's local layers).
    pub fn with_base(
        head_dim: usize,
        theta: f64,
        scaling: &RopeScaling,
        device: &Device,
    ) -> Result<Self> {
        Self::build(head_dim, head_dim, theta, scaling, device)
    }

    fn build(
        head_dim: usize,
        rotary_dim: usize,
        theta: f64,
        scaling: &RopeScaling,
        device: &Device,
    ) -> Result<Self> {
        let table = |inv: Vec<f64>| -> Result<Tensor> {
            let n = inv.len();
            if n != rotary_dim / 2 {
                candle_core::bail!("rotary: {n} frequencies for {rotary_dim} dims");
            }
            Tensor::from_vec(inv.into_iter().map(|f| f as f32).collect(), (1, n), device)
        };
        let inv_freq = table(inv_freqs_of(rotary_dim, theta, scaling))?;
        let position_scale = match *scaling {
            RopeScaling::Linear { factor } => 1.0 / factor,
            _ => 1.0,
        };
        let (attention_factor, long) = match scaling {
            RopeScaling::Yarn {
                attention_factor, ..
            } => (*attention_factor, None),
            RopeScaling::LongRope {
                long_factor,
                original_max_position_embeddings,
                attention_factor,
                ..
            } => {
                let base = inv_freqs_of(rotary_dim, theta, &RopeScaling::None);
                let long = base.iter().zip(long_factor).map(|(f, l)| f / l).collect();
                (
                    *attention_factor,
                    Some((table(long)?, *original_max_position_embeddings)),
                )
            }
            _ => (1.0, None),
        };
        Ok(Self {
            inv_freq,
            long,
            position_scale,
            attention_factor,
            rotary_dim,
            head_dim,
        })
    }

    /// What the attention multiplies its logits by for this rotary's attention factor.
    pub fn logit_scale(&self) -> f64 {
        match self.rotary_dim == self.head_dim {
            true => self.attention_factor * self.attention_factor,
            false => 1.0,
        }
    }

    /// Whether the fused in-place kernel (`apply_inplace`) computes this rotary: not for
    /// longrope's per-token factors nor partial rotary, which take `cos_sin` + `apply`.
    pub fn fused_kernel_ok(&self) -> bool {
        self.long.is_none() && self.rotary_dim == self.head_dim
    }

    /// `(cos, sin)` of every new token of the step, each `[tokens, rotary_dim / 2]` in
    /// `dtype`; longrope's factors chosen per token (see the module doc).
    pub fn cos_sin(&self, meta: &AttnMetadata, dtype: DType) -> Result<(Tensor, Tensor)> {
        let Some((long_inv, original)) = &self.long else {
            return self.cos_sin_at(&meta.positions, dtype);
        };
        let long: Vec<u32> = meta
            .seqs
            .iter()
            .flat_map(|s| {
                let first = s.context_len - s.query_len;
                (first..s.context_len).map(move |p| (s.prompt_len.max(p + 1) > *original) as u32)
            })
            .collect();
        let inv = if long.iter().all(|&l| l == 0) {
            self.inv_freq.clone()
        } else if long.iter().all(|&l| l == 1) {
            long_inv.clone()
        } else {
            let table = Tensor::cat(&[&self.inv_freq, long_inv], 0)?;
            let n = long.len();
            table.index_select(&Tensor::from_vec(long, n, table.device())?, 0)?
        };
        self.angles(&meta.positions, &inv, dtype)
    }

    /// `(cos, sin)` at `positions` with the base frequencies (longrope: the short factors).
    pub fn cos_sin_at(&self, positions: &Tensor, dtype: DType) -> Result<(Tensor, Tensor)> {
        self.angles(positions, &self.inv_freq, dtype)
    }

    /// `inv`: `[1 or tokens, rotary_dim / 2]`.
    fn angles(&self, positions: &Tensor, inv: &Tensor, dtype: DType) -> Result<(Tensor, Tensor)> {
        let pos = (positions.to_dtype(DType::F32)? * self.position_scale)?.unsqueeze(1)?;
        let freqs = pos.broadcast_mul(inv)?;
        let (mut cos, mut sin) = (freqs.cos()?, freqs.sin()?);
        if self.rotary_dim < self.head_dim && self.attention_factor != 1.0 {
            (cos, sin) = (
                (cos * self.attention_factor)?,
                (sin * self.attention_factor)?,
            );
        }
        Ok((cos.to_dtype(dtype)?, sin.to_dtype(dtype)?))
    }

    /// Rotates `x: [tokens, heads, head_dim]` (contiguous, not shared) in place with the fused
    /// kernel of `ops::rotary` (f32 angles and sin/cos, no tables); for the GPU path.
    pub fn apply_inplace(&self, x: &Tensor, positions: &Tensor) -> Result<()> {
        crate::ops::rotary::rotary_inplace(
            x,
            positions,
            &self.inv_freq,
            self.position_scale as f32,
            false,
        )
    }

    /// Rotates `x: [tokens, heads, head_dim]` with HF's half-split pairing (GGUF q/k rows
    /// are reordered to it at load); with partial rotary, the first `rotary_dim` dims only.
    pub fn apply(&self, x: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
        let d = x.dim(D::Minus1)?;
        let turn = |x: &Tensor| -> Result<Tensor> {
            candle_nn::rotary_emb::rope_thd(&x.unsqueeze(0)?.contiguous()?, cos, sin)?.squeeze(0)
        };
        if self.rotary_dim >= d {
            return turn(x);
        }
        let rotated = turn(&x.narrow(D::Minus1, 0, self.rotary_dim)?)?;
        let pass = x.narrow(D::Minus1, self.rotary_dim, d - self.rotary_dim)?;
        Tensor::cat(&[&rotated, &pass], D::Minus1)
    }
}

/// HF's `rotate_half` rotary on `[tokens, heads, d]`, used by tests as an independent check.
pub fn rope_reference(x: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
    let d = x.dim(D::Minus1)?;
    let cos = Tensor::cat(&[cos, cos], D::Minus1)?.unsqueeze(1)?;
    let sin = Tensor::cat(&[sin, sin], D::Minus1)?.unsqueeze(1)?;
    let x1 = x.narrow(D::Minus1, 0, d / 2)?;
    let x2 = x.narrow(D::Minus1, d / 2, d / 2)?;
    let rotated = Tensor::cat(&[&x2.neg()?, &x1], D::Minus1)?;
    x.broadcast_mul(&cos)? + rotated.broadcast_mul(&sin)?
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::models::config::ModelConfig;

    fn cfg() -> ModelConfig {
        ModelConfig::from_hf_json(
            r#"{"vocab_size":10,"hidden_size":32,"intermediate_size":16,"num_hidden_layers":1,
            "num_attention_heads":2,"rope_theta":10000.0}"#,
        )
        .unwrap()
    }

    #[test]
    fn rotary_matches_rotate_half_for_arbitrary_positions() {
        let dev = Device::Cpu;
        let rot = Rotary::new(&cfg(), &dev).unwrap();
        let x = Tensor::randn(0f32, 1.0, (5, 2, 16), &dev).unwrap();
        let pos = Tensor::new(&[7u32, 0, 3, 100, 3], &dev).unwrap();
        let (c, s) = rot.cos_sin_at(&pos, DType::F32).unwrap();
        let got = rot.apply(&x, &c, &s).unwrap();
        let want = rope_reference(&x, &c, &s).unwrap();
        let diff = (got - want)
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert!(diff < 1e-5, "{diff}");
    }

    /// Longrope's factors follow each token's own sequence: a short sequence's rows are the
    /// same alone and next to a long one, and a long prompt's first chunk is long already.
    #[test]
    fn longrope_factors_are_chosen_per_sequence_and_position() {
        use crate::layers::attention::{AttnMetadata, SeqAttn};
        let dev = Device::Cpu;
        let mut c = cfg();
        c.rope_scaling = RopeScaling::LongRope {
            short_factor: vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0],
            long_factor: vec![3.0, 5.0, 7.0, 9.0, 11.0, 13.0, 15.0, 17.0],
            original_max_position_embeddings: 16,
            attention_factor: 1.2,
        };
        let rot = Rotary::new(&c, &dev).unwrap();
        let seq = |start, n, ctx, prompt| SeqAttn {
            query_start: start,
            query_len: n,
            context_len: ctx,
            block_table: vec![0, 1, 2, 3, 4, 5, 6, 7],
            prompt_len: prompt,
        };
        let cos = |seqs: Vec<SeqAttn>| {
            let meta = AttnMetadata::new(seqs, 4, &dev).unwrap();
            rot.cos_sin(&meta, DType::F32)
                .unwrap()
                .0
                .to_vec2::<f32>()
                .unwrap()
        };
        // Decode at position 9 of a 5-token prompt (short), then a 4-token first chunk of a
        // 30-token prompt (long), then decode at position 16 (long: past the original 16).
        let batch = cos(vec![seq(0, 1, 10, 5), seq(1, 4, 4, 30), seq(5, 1, 17, 5)]);
        assert_eq!(batch[0], cos(vec![seq(0, 1, 10, 5)])[0]);
        let short = rot.cos_sin_at(&Tensor::new(&[9u32, 1, 16], &dev).unwrap(), DType::F32);
        let short = short.unwrap().0.to_vec2::<f32>().unwrap();
        assert_eq!(batch[0], short[0]);
        assert_ne!(
            batch[2], short[1],
            "a long prompt's first chunk takes the long factors"
        );
        assert_ne!(batch[5], short[2], "position 16 takes the long factors");
        let long_16 = cos(vec![seq(0, 1, 17, 40)]);
        assert_eq!(batch[5], long_16[0]);
    }

    #[test]
    fn llama3_scaling_keeps_high_and_divides_low_frequencies() {
        let mut c = cfg();
        c.head_dim = 64;
        c.rope_theta = 500000.0;
        c.rope_scaling = RopeScaling::Llama3 {
            factor: 8.0,
            low_freq_factor: 1.0,
            high_freq_factor: 4.0,
            original_max_position_embeddings: 8192,
        };
        let scaled = inv_freqs(&c);
        c.rope_scaling = RopeScaling::None;
        let plain = inv_freqs(&c);
        assert_eq!(scaled[0], plain[0]);
        assert!((scaled[31] - plain[31] / 8.0).abs() < 1e-15);
    }
}
