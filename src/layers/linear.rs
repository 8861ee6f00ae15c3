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

use crate::cpu::dense::DenseWeight;
use crate::cpu::qgemm::QWeight;
use crate::ops::qgemm::QuantWeight;
use crate::quant::ActQuant;

#[derive(Debug, Clone)]
enum Weight {
    Candle(QMatMul),
    Packed(Arc<QWeight>),
    /// Kept quantized on the GPU (`quant::device` layouts, `ops::qgemm` kernels); the op
    /// quantizes activations itself where the format says so.
    Device(Arc<QuantWeight>),
    /// A dense weight on the CPU, packed for `cpu::dense` (batch-invariant rows).
    Dense(Arc<PackedDense>),
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
            QMatMul::Tensor(w) if dense_on_cpu(w) => match PackedDense::pack(w) {
                Ok(p) => Weight::Dense(Arc::new(p)),
                Err(_) => Weight::Candle(weight),
            },
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

    /// A weight kept quantized on its device (FP8, int4/int8 with groups).
    pub fn device_quantized(weight: QuantWeight, bias: Option<Tensor>) -> Self {
        Self {
            weight: Weight::Device(Arc::new(weight)),
            bias,
            act: None,
        }
    }

    /// The activation quantization of this layer's format, if any.
    pub fn act_quant(&self) -> Option<ActQuant> {
        match &self.weight {
            Weight::Device(w) => w.act_quant(),
            _ => self.act,
        }
    }

    /// Dense weight of shape `[out, in]` (PyTorch layout).
    pub fn dense(weight: Tensor, bias: Option<Tensor>) -> Self {
        Self::new(QMatMul::Tensor(weight), bias)
    }

    /// The `[out, in]` weight when it is a plain dense tensor (not quantized, and no
    /// activation quantization a fused consumer would skip). A weight packed for the CPU
    /// kernel is unpacked into a new tensor.
    pub fn dense_weight(&self) -> Option<Tensor> {
        if self.act.is_some() {
            return None;
        }
        match &self.weight {
            Weight::Candle(QMatMul::Tensor(w)) => Some(w.clone()),
            Weight::Dense(w) => w.unpack().ok(),
            _ => None,
        }
    }

    /// Rows of the `[out, in]` weight.
    pub fn out_features(&self) -> usize {
        match &self.weight {
            Weight::Packed(w) => w.out_features(),
            Weight::Device(w) => w.out_features(),
            Weight::Dense(w) => w.out_features(),
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
            // No GPU kernel for the rounding alone (formats without a quantized GEMM of ours,
            // e.g. int8 W8A8): round on the CPU, exact and slow.
            Some(q) if !x.device().is_cpu() => {
                let cpu = x.to_device(&candle_core::Device::Cpu)?;
                quantized =
                    crate::quant::fp8::quantize_activations(&cpu, q)?.to_device(x.device())?;
                &quantized
            }
            Some(q) => {
                quantized = crate::quant::fp8::quantize_activations(x, q)?;
                &quantized
            }
            None => x,
        };
        let y = match &self.weight {
            Weight::Candle(w) => w.forward(x)?,
            Weight::Dense(w) => {
                let dtype = x.dtype();
                let y = x
                    .to_dtype(DType::F32)?
                    .contiguous()?
                    .apply_op1_no_bwd(&DenseMatmul(w.clone()))?;
                y.to_dtype(dtype)?
            }
            Weight::Packed(w) => {
                let dtype = x.dtype();
                let y = x
                    .to_dtype(DType::F32)?
                    .contiguous()?
                    .apply_op1_no_bwd(&PackedMatmul(w.clone()))?;
                y.to_dtype(dtype)?
            }
            Weight::Device(w) => w.forward(x)?,
        };
        match &self.bias {
            Some(b) => y.broadcast_add(b),
            None => Ok(y),
        }
    }
}

/// Whether dense f32/bf16/f16 weights on the CPU use `cpu::dense` (on unless
/// `FLARE_CPU_DENSE=off`): candle's gemm changes a row's arithmetic with the row count, ours
/// does not.
fn use_dense_kernel() -> bool {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ON.get_or_init(|| std::env::var("FLARE_CPU_DENSE").map_or(true, |v| v != "off" && v != "0"))
}

/// A dense f32/bf16/f16 weight on the CPU: packed for our batch-invariant kernel.
fn dense_on_cpu(w: &Tensor) -> bool {
    w.device().is_cpu()
        && matches!(w.dtype(), DType::F32 | DType::BF16 | DType::F16)
        && w.rank() == 2
        && use_dense_kernel()
}

/// A packed weight in its checkpoint's element type (halves are widened in registers).
#[derive(Debug)]
enum PackedDense {
    F32(DenseWeight<f32>),
    Bf16(DenseWeight<half::bf16>),
    F16(DenseWeight<half::f16>),
}

impl PackedDense {
    fn pack(w: &Tensor) -> Result<Self> {
        let (n, k) = w.dims2()?;
        let flat = w.flatten_all()?;
        Ok(match w.dtype() {
            DType::BF16 => Self::Bf16(DenseWeight::pack(&flat.to_vec1()?, n, k)),
            DType::F16 => Self::F16(DenseWeight::pack(&flat.to_vec1()?, n, k)),
            _ => Self::F32(DenseWeight::pack(&flat.to_vec1()?, n, k)),
        })
    }

    fn out_features(&self) -> usize {
        match self {
            Self::F32(w) => w.out_features(),
            Self::Bf16(w) => w.out_features(),
            Self::F16(w) => w.out_features(),
        }
    }

    fn in_features(&self) -> usize {
        match self {
            Self::F32(w) => w.in_features(),
            Self::Bf16(w) => w.in_features(),
            Self::F16(w) => w.in_features(),
        }
    }

    /// The `[out, in]` weight as a CPU tensor of its own dtype.
    fn unpack(&self) -> Result<Tensor> {
        let (n, k) = (self.out_features(), self.in_features());
        let cpu = &candle_core::Device::Cpu;
        match self {
            Self::F32(w) => Tensor::from_vec(w.unpack(), (n, k), cpu),
            Self::Bf16(w) => Tensor::from_vec(w.unpack(), (n, k), cpu),
            Self::F16(w) => Tensor::from_vec(w.unpack(), (n, k), cpu),
        }
    }

    fn matmul(&self, x: &[f32], m: usize, out: &mut [f32]) {
        match self {
            Self::F32(w) => w.matmul(x, m, out),
            Self::Bf16(w) => w.matmul(x, m, out),
            Self::F16(w) => w.matmul(x, m, out),
        }
    }
}

/// `x @ W^T` by [`DenseWeight::matmul`], in f32.
struct DenseMatmul(Arc<PackedDense>);

impl CustomOp1 for DenseMatmul {
    fn name(&self) -> &'static str {
        "flare-dense"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let w = &self.0;
        let dims = l.shape().dims();
        let k = *dims.last().unwrap_or(&0);
        if k != w.in_features() {
            candle_core::bail!("dense: input {dims:?} vs weight in {}", w.in_features());
        }
        let (CpuStorage::F32(x), Some((a, b))) = (s, l.contiguous_offsets()) else {
            candle_core::bail!("dense: needs contiguous f32 input");
        };
        let m = l.shape().elem_count() / k.max(1);
        let mut out = vec![0f32; m * w.out_features()];
        w.matmul(&x[a..b], m, &mut out);
        let mut od = dims.to_vec();
        *od.last_mut().expect("non-scalar") = w.out_features();
        Ok((CpuStorage::F32(out), Shape::from(od)))
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
