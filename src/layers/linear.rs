//! A linear map whose weight is dense (f32/bf16/f16) or GGUF-quantized, with optional bias.

use candle_core::quantized::QMatMul;
use candle_core::{Module, Result, Tensor};

#[derive(Debug, Clone)]
pub struct Linear {
    weight: QMatMul,
    bias: Option<Tensor>,
}

impl Linear {
    pub fn new(weight: QMatMul, bias: Option<Tensor>) -> Self {
        Self { weight, bias }
    }

    /// Dense weight of shape `[out, in]` (PyTorch layout).
    pub fn dense(weight: Tensor, bias: Option<Tensor>) -> Self {
        Self::new(QMatMul::Tensor(weight), bias)
    }

    /// The `[out, in]` weight when it is a plain dense tensor (not quantized).
    pub fn dense_weight(&self) -> Option<&Tensor> {
        match &self.weight {
            QMatMul::Tensor(w) => Some(w),
            _ => None,
        }
    }

    pub fn bias(&self) -> Option<&Tensor> {
        self.bias.as_ref()
    }

    /// `x: [tokens, in] -> [tokens, out]`.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let y = self.weight.forward(x)?;
        match &self.bias {
            Some(b) => y.broadcast_add(b),
            None => Ok(y),
        }
    }
}
