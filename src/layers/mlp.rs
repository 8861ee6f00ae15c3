//! Feed-forward blocks: the gated MLP `down(act(gate(x)) * up(x))` and a sparse mixture of them.

use candle_core::{DType, Result, Tensor};

use super::linear::Linear;
use crate::models::config::Activation;
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
        };
        self.down.forward(&h)
    }
}

/// Softmax routing over experts, each token to its `top_k` best. The step's tokens are grouped
/// by expert and each active expert runs once over its rows, never once per token. A token's
/// result depends only on its own row: the per-expert matmul is row-independent and the
/// contributions are summed in expert order, so batching does not change it.
pub struct SparseMoe {
    pub router: Linear,
    pub experts: Vec<GatedMlp>,
    pub top_k: usize,
    pub norm_topk_prob: bool,
}

impl SparseMoe {
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let device = x.device();
        let num_experts = self.experts.len();
        let probs =
            candle_nn::ops::softmax_last_dim(&self.router.forward(x)?.to_dtype(DType::F32)?)?
                .to_vec2::<f32>()?;
        let mut rows: Vec<Vec<u32>> = vec![Vec::new(); num_experts];
        let mut weights: Vec<Vec<f32>> = vec![Vec::new(); num_experts];
        let mut order: Vec<usize> = Vec::with_capacity(num_experts);
        for (t, p) in probs.iter().enumerate() {
            order.clear();
            order.extend(0..num_experts);
            // Best first; ties to the lower expert id, as torch.topk does in practice.
            order.sort_by(|&a, &b| p[b].total_cmp(&p[a]).then(a.cmp(&b)));
            let top = &order[..self.top_k];
            let sum: f32 = top.iter().map(|&e| p[e]).sum();
            for &e in top {
                rows[e].push(t as u32);
                weights[e].push(if self.norm_topk_prob {
                    p[e] / sum
                } else {
                    p[e]
                });
            }
        }
        let mut out = x.zeros_like()?;
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
