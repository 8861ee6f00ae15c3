//! Feed-forward blocks: the gated MLP `down(act(gate(x)) * up(x))` and a sparse mixture of them.

use candle_core::{Result, Tensor};

use super::linear::Linear;
use crate::cpu;
use crate::models::config::Activation;
use crate::ops;
use crate::ops::moe::{FusedExperts, Routing};

#[derive(Clone)]
pub struct GatedMlp {
    proj: GateUp,
    pub down: Linear,
    pub activation: Activation,
}

/// The gate and up projections: separate, or one map whose output is gate, then up, side by
/// side (our CPU kernel's repacked weights: the input is quantized once and read by one pass).
#[derive(Clone)]
enum GateUp {
    Separate { gate: Linear, up: Linear },
    Fused { both: Linear, inter: usize },
}

impl GatedMlp {
    pub fn new(gate: Linear, up: Linear, down: Linear, activation: Activation) -> Self {
        let proj = match Linear::fuse(&[&gate, &up]) {
            Some(both) => GateUp::Fused {
                both,
                inter: gate.out_features(),
            },
            None => GateUp::Separate { gate, up },
        };
        Self {
            proj,
            down,
            activation,
        }
    }

    /// The separate gate and up maps (`None` once fused: then they are repacked CPU weights).
    pub fn gate_up(&self) -> Option<(&Linear, &Linear)> {
        match &self.proj {
            GateUp::Separate { gate, up } => Some((gate, up)),
            GateUp::Fused { .. } => None,
        }
    }

    /// `x: [tokens, hidden] -> [tokens, hidden]`; the gated activation is one fused kernel on
    /// CUDA (SiLU) and on the CPU (SiLU, GELU-tanh; f32).
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let (gate, up) = match &self.proj {
            GateUp::Separate { gate, up } => (gate.forward(x)?, up.forward(x)?),
            GateUp::Fused { both, inter } => {
                let y = both.forward(x)?;
                let last = y.rank() - 1;
                (y.narrow(last, 0, *inter)?, y.narrow(last, *inter, *inter)?)
            }
        };
        let cpu_gate = match self.activation {
            Activation::Silu => Some(cpu::activation::Gate::Silu),
            Activation::GeluTanh => Some(cpu::activation::Gate::GeluTanh),
            _ => None,
        };
        let h = match (self.activation, cpu_gate) {
            (Activation::Silu, _) if x.device().is_cuda() => ops::activation::silu_mul(&gate, &up)?,
            (_, Some(kind)) if cpu::activation::handles(&gate) => {
                cpu::activation::gated_mul(kind, &gate, &up)?
            }
            (act, _) => match act {
                Activation::Silu => (candle_nn::ops::silu(&gate)? * up)?,
                // candle's `gelu` is the tanh approximation.
                Activation::GeluTanh => (gate.gelu()? * up)?,
                Activation::ClampedSwiglu { alpha, limit } => {
                    let (alpha, limit) = (alpha as f64, limit as f64);
                    let g = gate.minimum(limit)?;
                    let glu = (&g * candle_nn::ops::sigmoid(&(&g * alpha)?)?)?;
                    ((up.clamp(-limit, limit)? + 1.0)? * glu)?
                }
            },
        };
        self.down.forward(&h)
    }
}

/// A sparse mixture of gated MLPs: each token goes to its `routing.top_k` best experts.
///
/// Two executions of one layer. Per expert (the CPU path, and any device when experts are
/// quantized): the step's tokens are grouped by expert and each active expert runs once over
/// its rows, never once per token, with the router logits read on the host. Fused (CUDA with
/// dense experts, see `fuse`): `ops::moe::fused_moe`, routing included, all on the device.
/// Either way a token's result depends only on its own row: routing is per row and the
/// contributions are summed in a fixed order, whatever else is in the batch.
pub struct SparseMoe {
    pub router: Linear,
    /// Empty once fused (the stacked copy replaces them).
    pub experts: Vec<GatedMlp>,
    pub routing: Routing,
    /// Experts every token goes through, added unweighted.
    pub shared: Option<GatedMlp>,
    pub fused: Option<FusedExperts>,
}

impl SparseMoe {
    pub fn new(
        router: Linear,
        experts: Vec<GatedMlp>,
        routing: Routing,
        shared: Option<GatedMlp>,
    ) -> Self {
        Self {
            router,
            experts,
            routing,
            shared,
            fused: None,
        }
    }

    /// Stacks the experts for the fused op and drops the per-expert weights. False (and
    /// nothing changes) when an expert's weights are quantized or the experts differ in
    /// activation, bias or shape.
    pub fn fuse(&mut self) -> Result<bool> {
        let Some(first) = self.experts.first() else {
            return Ok(false);
        };
        let activation = first.activation;
        let with_bias = first.gate_up().and_then(|(g, _)| g.bias()).is_some();
        let mut gate_up = Vec::with_capacity(self.experts.len());
        let mut down = Vec::with_capacity(self.experts.len());
        let (mut gate_up_bias, mut down_bias) = (Vec::new(), Vec::new());
        for e in &self.experts {
            let Some((gate, up)) = e.gate_up() else {
                return Ok(false);
            };
            let (Some(g), Some(u), Some(d)) = (
                gate.dense_weight(),
                up.dense_weight(),
                e.down.dense_weight(),
            ) else {
                return Ok(false);
            };
            let biases = [gate.bias(), up.bias(), e.down.bias()];
            if e.activation != activation || biases.iter().any(|b| b.is_some() != with_bias) {
                return Ok(false);
            }
            gate_up.push(Tensor::cat(&[&g, &u], 0)?);
            down.push(d);
            if let [Some(bg), Some(bu), Some(bd)] = biases {
                gate_up_bias.push(Tensor::cat(&[bg, bu], 0)?);
                down_bias.push(bd.clone());
            }
        }
        let stack = |v: &[Tensor]| -> Result<Option<Tensor>> {
            match v.is_empty() {
                true => Ok(None),
                false => Tensor::stack(v, 0).map(Some),
            }
        };
        self.fused = Some(FusedExperts::new(
            Tensor::stack(&gate_up, 0)?,
            stack(&gate_up_bias)?,
            Tensor::stack(&down, 0)?,
            stack(&down_bias)?,
            activation,
            &self.routing,
        )?);
        self.experts.clear();
        Ok(true)
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let logits = self.router.forward(x)?;
        if let Some(fused) = &self.fused {
            let routed = ops::moe::fused_moe(x, &logits, fused, &self.routing)?;
            return match &self.shared {
                Some(s) => routed + s.forward(x)?,
                None => Ok(routed),
            };
        }
        let device = x.device();
        let num_experts = self.experts.len();
        let mut rows: Vec<Vec<u32>> = vec![Vec::new(); num_experts];
        let mut weights: Vec<Vec<f32>> = vec![Vec::new(); num_experts];
        for (t, choice) in self.routing.route_all(&logits)?.into_iter().enumerate() {
            for (e, w) in choice {
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
