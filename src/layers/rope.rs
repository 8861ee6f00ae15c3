//! Rotary position embedding for arbitrary per-token positions (ragged batches).
//!
//! cos/sin are computed per step from the positions instead of a table over the whole
//! context: a 128k-position table costs seconds and gigabytes at load, a step costs
//! `tokens x head_dim/2` multiplications.

use candle_core::{DType, Device, Result, Tensor, D};

use crate::models::config::{ModelConfig, RopeScaling};

#[derive(Debug, Clone)]
pub struct Rotary {
    /// `[1, head_dim / 2]`, f32.
    inv_freq: Tensor,
    position_scale: f64,
    /// YaRN's scale of cos/sin; rotating both q and k by it scales the attention logits by
    /// its square, which the attention applies instead (same math, every kernel).
    pub attention_factor: f64,
}

/// Inverse frequencies with the config's scaling applied (HF `_compute_*_parameters`).
pub fn inv_freqs(cfg: &ModelConfig) -> Vec<f64> {
    inv_freqs_of(cfg.head_dim, cfg.rope_theta, &cfg.rope_scaling)
}

fn inv_freqs_of(d: usize, theta: f64, scaling: &RopeScaling) -> Vec<f64> {
    let base: Vec<f64> = (0..d / 2)
        .map(|i| 1.0 / theta.powf(2.0 * i as f64 / d as f64))
        .collect();
    match *scaling {
        RopeScaling::None | RopeScaling::Linear { .. } => base,
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
    /// The model's rotary (its `rope_theta` and scaling).
    pub fn new(cfg: &ModelConfig, device: &Device) -> Result<Self> {
        Self::with_base(cfg.head_dim, cfg.rope_theta, &cfg.rope_scaling, device)
    }

    pub fn with_base(
        head_dim: usize,
        theta: f64,
        scaling: &RopeScaling,
        device: &Device,
    ) -> Result<Self> {
        let inv: Vec<f32> = inv_freqs_of(head_dim, theta, scaling)
            .into_iter()
            .map(|f| f as f32)
            .collect();
        let n = inv.len();
        let position_scale = match *scaling {
            RopeScaling::Linear { factor } => 1.0 / factor,
            _ => 1.0,
        };
        let attention_factor = match *scaling {
            RopeScaling::Yarn {
                attention_factor, ..
            } => attention_factor,
            _ => 1.0,
        };
        Ok(Self {
            inv_freq: Tensor::from_vec(inv, (1, n), device)?,
            position_scale,
            attention_factor,
        })
    }

    /// `(cos, sin)`, each `[tokens, head_dim / 2]` in `dtype`.
    pub fn cos_sin(&self, positions: &Tensor, dtype: DType) -> Result<(Tensor, Tensor)> {
        let pos = (positions.to_dtype(DType::F32)? * self.position_scale)?.unsqueeze(1)?;
        let freqs = pos.broadcast_mul(&self.inv_freq)?;
        Ok((freqs.cos()?.to_dtype(dtype)?, freqs.sin()?.to_dtype(dtype)?))
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
    /// are reordered to it at load).
    pub fn apply(&self, x: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
        candle_nn::rotary_emb::rope_thd(&x.unsqueeze(0)?.contiguous()?, cos, sin)?.squeeze(0)
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
        let (c, s) = rot.cos_sin(&pos, DType::F32).unwrap();
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
