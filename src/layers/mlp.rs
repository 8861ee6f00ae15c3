//! Feed-forward blocks: the gated MLP `down(act(gate(x)) * up(x))` and a sparse mixture of them.

use candle_core::{DType, Result, Tensor};

use super::linear::Linear;
use crate::models::config::{Activation, Scoring};
use crate::ops;

pub struct GatedMlp {
    pub gate: Linear,
    pub up: Linear,
    pub down: Linear,
    pub activation: Activation,
}

impl GatedMlp {
    /// `x: [tokens, hidden] -> [tokens, hidden]`; SiLU-mul is one fused kernel on CUDA.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let (gate, up) = (self.gate.forward(x)?, self.up.forward(x)?);
        let h = match self.activation {
            Activation::Silu if x.device().is_cuda() => ops::activation::silu_mul(&gate, &up)?,
            Activation::Silu => (candle_nn::ops::silu(&gate)? * up)?,
            // candle's `gelu` is the tanh approximation.
            Activation::GeluTanh => (gate.gelu()? * up)?,
            Activation::ClampedSwiglu { alpha, limit } => {
                let (alpha, limit) = (alpha as f64, limit as f64);
                let g = gate.minimum(limit)?;
                let glu = (&g * candle_nn::ops::sigmoid(&(&g * alpha)?)?)?;
                ((up.clamp(-limit, limit)? + 1.0)? * glu)?
            }
        };
        self.down.forward(&h)
    }
}

/// Routing over experts, each token to its `top_k` best: softmax (Mixtral, Qwen3-MoE,
/// gpt-oss) or DeepSeek-V3's sigmoid scores with a correction bias and group limits. The
/// step's tokens are grouped by expert and each active expert runs once over its rows, never
/// once per token. A token's result depends only on its own row: routing is per row and the
/// contributions are summed in expert order, whatever else is in the batch.
pub struct SparseMoe {
    pub router: Linear,
    pub experts: Vec<GatedMlp>,
    pub top_k: usize,
    pub norm_topk_prob: bool,
    pub scoring: Scoring,
    /// `(n_group, topk_group)`, see `MoeConfig::groups`.
    pub groups: Option<(usize, usize)>,
    /// See `MoeConfig::group_by_best`.
    pub group_by_best: bool,
    /// Added to the scores for the choice only (DeepSeek-V3's `e_score_correction_bias`).
    pub correction: Option<Vec<f32>>,
    pub routed_scaling_factor: f32,
    /// Experts every token goes through, added unweighted.
    pub shared: Option<GatedMlp>,
}

/// Indices of the `k` largest of `v`, best first; ties to the lower index (torch.topk's
/// behaviour in practice).
fn top_indices(v: &[f32], k: usize, order: &mut Vec<usize>) {
    order.clear();
    order.extend(0..v.len());
    order.sort_by(|&a, &b| v[b].total_cmp(&v[a]).then(a.cmp(&b)));
    order.truncate(k);
}

impl SparseMoe {
    /// Per token: the chosen experts and their weights.
    fn route(&self, logits: &[f32], order: &mut Vec<usize>) -> Vec<(usize, f32)> {
        let n = logits.len();
        let scores: Vec<f32> = match self.scoring {
            Scoring::Softmax => {
                let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                let e: Vec<f32> = logits.iter().map(|x| (x - max).exp()).collect();
                let sum: f32 = e.iter().sum();
                e.into_iter().map(|x| x / sum).collect()
            }
            Scoring::Sigmoid => logits.iter().map(|x| 1.0 / (1.0 + (-x).exp())).collect(),
        };
        let mut choice: Vec<f32> = match &self.correction {
            Some(b) => scores.iter().zip(b).map(|(s, b)| s + b).collect(),
            None => scores.clone(),
        };
        if let Some((n_group, topk_group)) = self.groups {
            let per = n / n_group;
            let group_score: Vec<f32> = choice
                .chunks(per)
                .map(|g| {
                    let k = if self.group_by_best { 1 } else { 2.min(per) };
                    top_indices(g, k, order);
                    order.iter().map(|&i| g[i]).sum()
                })
                .collect();
            top_indices(&group_score, topk_group, order);
            let keep: Vec<bool> = (0..n_group).map(|g| order.contains(&g)).collect();
            for (i, c) in choice.iter_mut().enumerate() {
                if !keep[i / per] {
                    *c = f32::NEG_INFINITY;
                }
            }
        }
        top_indices(&choice, self.top_k, order);
        let sum: f32 = order.iter().map(|&e| scores[e]).sum();
        order
            .iter()
            .map(|&e| {
                let w = if self.norm_topk_prob {
                    scores[e] / (sum + 1e-20)
                } else {
                    scores[e]
                };
                (e, w * self.routed_scaling_factor)
            })
            .collect()
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let device = x.device();
        let num_experts = self.experts.len();
        let logits = self
            .router
            .forward(x)?
            .to_dtype(DType::F32)?
            .to_vec2::<f32>()?;
        let mut rows: Vec<Vec<u32>> = vec![Vec::new(); num_experts];
        let mut weights: Vec<Vec<f32>> = vec![Vec::new(); num_experts];
        let mut order: Vec<usize> = Vec::with_capacity(num_experts);
        for (t, l) in logits.iter().enumerate() {
            for (e, w) in self.route(l, &mut order) {
                rows[e].push(t as u32);
                weights[e].push(w);
            }
        }
        let mut out = match &self.shared {
            Some(s) => s.forward(x)?,
            None => x.zeros_like()?,
        };
        for (e, expert) in self.experts.iter().enumerate() {
            if rows[e].is_empty() {
                continue;
            }
            let n = rows[e].len();
            let idx = Tensor::new(rows[e].as_slice(), device)?;
            let y = expert.forward(&x.index_select(&idx, 0)?)?;
            let w = Tensor::from_vec(std::mem::take(&mut weights[e]), (n, 1), device)?
                .to_dtype(x.dtype())?;
            out = out.index_add(&idx, &y.broadcast_mul(&w)?, 0)?;
        }
        Ok(out)
    }
}

pub enum Mlp {
    Dense(GatedMlp),
    Sparse(SparseMoe),
}

impl Mlp {
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        match self {
            Mlp::Dense(m) => m.forward(x),
            Mlp::Sparse(m) => m.forward(x),
        }
    }
}
