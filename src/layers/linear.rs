//! A linear map whose weight is dense (f32/bf16/f16) or GGUF-quantized, with optional bias.
//! Safetensors-quantized formats (FP8, INT4/INT8, see `crate::quant`) arrive here dequantized,
//! with the activation quantization their format prescribes applied to the input.
//!
//! On the CPU, GGUF weights of the types `cpu::qgemm` covers are repacked at load and multiplied
//! by our batch-invariant kernel; everything else goes through candle's `QMatMul`.
//! `FLARE_CPU_QGEMM=off` keeps candle's path everywhere (for before/after measurements).

use std::sync::Arc;

use candle_core::quantized::QMatMul;
use candle_core::{CpuStorage, CustomOp1, DType, Layout, Module, Result, Shape, Tensor};

use crate::cpu::qgemm::QWeight;
use crate::quant::ActQuant;

#[derive(Debug, Clone)]
enum Weight {
    Candle(QMatMul),
    Packed(Arc<QWeight>),
}

#[derive(Debug, Clone)]
pub struct Linear {
    weight: Weight,
    bias: Option<Tensor>,
    /// Round the input to the format's activation grid first (FP8/int8 W8A8 formats).
    act: Option<ActQuant>,
}

/// Whether GGUF weights on the CPU use our kernels (on unless `FLARE_CPU_QGEMM=off`, and only
/// where the CPU has AVX2 and FMA).
fn use_qgemm() -> bool {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ON.get_or_init(|| {
        std::env::var("FLARE_CPU_QGEMM").map_or(true, |v| v != "off" && v != "0")
            && crate::cpu::qgemm::available()
    })
}

impl Linear {
    pub fn new(weight: QMatMul, bias: Option<Tensor>) -> Self {
        let weight = match &weight {
            QMatMul::QTensor(q) if q.device().is_cpu() && use_qgemm() => {
                match QWeight::from_qtensor(q) {
                    Some(p) => Weight::Packed(Arc::new(p)),
                    None => Weight::Candle(weight),
                }
            }
            _ => Weight::Candle(weight),
        };
        Self {
            weight,
            bias,
            act: None,
        }
    }

    /// A dequantized weight `[out, in]` whose format quantizes activations with `act`.
    pub fn quantized(weight: Tensor, act: Option<ActQuant>, bias: Option<Tensor>) -> Self {
        Self {
            act,
            ..Self::dense(weight, bias)
        }
    }

    /// The activation quantization of this layer's format, if any.
    pub fn act_quant(&self) -> Option<ActQuant> {
        self.act
    }

    /// Dense weight of shape `[out, in]` (PyTorch layout).
    pub fn dense(weight: Tensor, bias: Option<Tensor>) -> Self {
        Self::new(QMatMul::Tensor(weight), bias)
    }

    /// The `[out, in]` weight when it is a plain dense tensor (not quantized, and no
    /// activation quantization a fused consumer would skip).
    pub fn dense_weight(&self) -> Option<&Tensor> {
        match &self.weight {
            Weight::Candle(QMatMul::Tensor(w)) if self.act.is_none() => Some(w),
            _ => None,
        }
    }

    /// Rows of the `[out, in]` weight.
    pub fn out_features(&self) -> usize {
        match &self.weight {
            Weight::Packed(w) => w.out_features(),
            Weight::Candle(QMatMul::QTensor(q)) => q.shape().dims()[0],
            Weight::Candle(QMatMul::Tensor(w) | QMatMul::TensorF16(w)) => w.dims()[0],
        }
    }

    pub fn bias(&self) -> Option<&Tensor> {
        self.bias.as_ref()
    }

    /// Several maps of the same input fused into one whose output is their outputs side by
    /// side (q/k/v, gate/up), when all are repacked CPU weights without bias; `None` otherwise.
    pub fn fuse(parts: &[&Linear]) -> Option<Linear> {
        let packed: Vec<&QWeight> = parts
            .iter()
            .map(|l| match (&l.weight, &l.bias) {
                (Weight::Packed(p), None) => Some(p.as_ref()),
                _ => None,
            })
            .collect::<Option<_>>()?;
        Some(Linear {
            weight: Weight::Packed(Arc::new(QWeight::concat(&packed)?)),
            bias: None,
            act: None,
        })
    }

    /// `x: [tokens, in] -> [tokens, out]`.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let quantized;
        let x = match self.act {
            Some(q) => {
                quantized = crate::quant::fp8::quantize_activations(x, q)?;
                &quantized
            }
            None => x,
        };
        let y = match &self.weight {
            Weight::Candle(w) => w.forward(x)?,
            Weight::Packed(w) => {
                let dtype = x.dtype();
                let y = x
                    .to_dtype(DType::F32)?
                    .contiguous()?
                    .apply_op1_no_bwd(&PackedMatmul(w.clone()))?;
                y.to_dtype(dtype)?
            }
        };
        match &self.bias {
            Some(b) => y.broadcast_add(b),
            None => Ok(y),
        }
    }
}

struct PackedMatmul(Arc<QWeight>);

impl CustomOp1 for PackedMatmul {
    fn name(&self) -> &'static str {
        "flare-qgemm"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let w = &self.0;
        let dims = l.shape().dims();
        let k = *dims.last().unwrap_or(&0);
        if k != w.in_features() {
            candle_core::bail!("qgemm: input {:?} vs weight in {}", dims, w.in_features());
        }
        let (CpuStorage::F32(x), Some((a, b))) = (s, l.contiguous_offsets()) else {
            candle_core::bail!("qgemm: needs contiguous f32 input");
        };
        let m = l.shape().elem_count() / k.max(1);
        let mut out = vec![0f32; m * w.out_features()];
        w.matmul(&x[a..b], m, &mut out);
        let mut od = dims.to_vec();
        *od.last_mut().expect("non-scalar") = w.out_features();
        Ok((CpuStorage::F32(out), Shape::from(od)))
    }
}
