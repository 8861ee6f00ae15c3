//! Custom candle ops for the GPU path: each CPU forward is the reference that the CUDA forward
//! (kernels/*.cu) is tested against (tests/cuda_kernels.rs). The model uses them on CUDA
//! only; on the CPU it keeps candle's stock ops.

pub mod activation;
pub mod kv_write;
pub mod moe;
pub mod norm;
pub mod paged_attention;
pub mod qgemm;
pub mod rotary;
pub mod sampling;

#[cfg(feature = "cuda")]
pub(crate) mod cuda;

use std::sync::atomic::{AtomicBool, Ordering};

use candle_core::{Layout, Result};
use half::{bf16, f16};

static POISON_OUTPUTS: AtomicBool = AtomicBool::new(false);

/// Tests: fill every CUDA op output with NaN bytes (0xFF) before its kernel runs, so an
/// element the kernel fails to write cannot pass for a right one.
pub fn poison_outputs(on: bool) {
    POISON_OUTPUTS.store(on, Ordering::Relaxed);
}

#[cfg_attr(not(feature = "cuda"), allow(dead_code))]
pub(crate) fn poisoning() -> bool {
    POISON_OUTPUTS.load(Ordering::Relaxed)
}

/// Element types the kernels take; math is in f32, rounded once per output.
pub(crate) trait Elem: Copy + Send + Sync + 'static {
    fn to_f32(self) -> f32;
    fn from_f32(x: f32) -> Self;
    /// What storing `x` in this type and reading it back gives.
    fn round(x: f32) -> f32 {
        Self::from_f32(x).to_f32()
    }
}

impl Elem for f32 {
    fn to_f32(self) -> f32 {
        self
    }
    fn from_f32(x: f32) -> Self {
        x
    }
}

impl Elem for bf16 {
    fn to_f32(self) -> f32 {
        bf16::to_f32(self)
    }
    fn from_f32(x: f32) -> Self {
        bf16::from_f32(x)
    }
}

impl Elem for f16 {
    fn to_f32(self) -> f32 {
        f16::to_f32(self)
    }
    fn from_f32(x: f32) -> Self {
        f16::from_f32(x)
    }
}

/// The contiguous part of `data` a layout names, or an error naming the op.
pub(crate) fn contiguous<'a, T>(data: &'a [T], l: &Layout, op: &str) -> Result<&'a [T]> {
    match l.contiguous_offsets() {
        Some((a, b)) => Ok(&data[a..b]),
        None => candle_core::bail!("{op}: input must be contiguous"),
    }
}
