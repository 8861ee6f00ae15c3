//! The gated MLP's activation on the CPU: `act(gate) · up` in one vectorized pass.
//!
//! candle's CPU `gelu` calls libm's `tanhf` per element and its `silu` calls `expf`, then a
//! separate multiply allocates again: on Gemma 3 270M (2,048-wide MLP) they took about a tenth
//! of a 32-prompt prefill. Both activations are `x · σ(t)` (`0.5·(1 + tanh u) = σ(2u)`),
//! computed here as `x / (1 + exp(-t))` with [`vmath::exp`]. The work is element-wise, so an
//! output never depends on the batch or the thread count.

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CustomOp2, DType, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use super::vmath;

/// The activation applied to the gate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Gate {
    /// `x · σ(x)`.
    Silu,
    /// GELU, tanh approximation (`gelu_pytorch_tanh`).
    GeluTanh,
}

/// Elements per parallel task: below this the fork costs more than it saves.
const MIN_TASK: usize = 1 << 14;

#[inline(always)]
fn silu(x: f32) -> f32 {
    x / (1.0 + vmath::exp(-x))
}

#[inline(always)]
fn gelu_tanh(x: f32) -> f32 {
    // 2·√(2/π): `0.5·x·(1 + tanh(√(2/π)·(x + 0.044715·x³)))` as `x·σ(2u)`.
    const TWO_SQRT_2_OVER_PI: f32 = 1.595_769;
    let t = TWO_SQRT_2_OVER_PI * (x + 0.044_715 * x * x * x);
    x / (1.0 + vmath::exp(-t))
}

/// `out[i] = act(g[i]) · u[i]`; separate loops per activation so each one vectorizes.
pub fn gated_row(gate: Gate, g: &[f32], u: &[f32], out: &mut [f32]) {
    let items = out.iter_mut().zip(g).zip(u);
    match gate {
        Gate::Silu => items.for_each(|((o, &g), &u)| *o = silu(g) * u),
        Gate::GeluTanh => items.for_each(|((o, &g), &u)| *o = gelu_tanh(g) * u),
    }
}

/// Whether [`gated_mul`] runs for these tensors (f32 on the CPU).
pub fn handles(t: &Tensor) -> bool {
    t.device().is_cpu() && t.dtype() == DType::F32
}

/// `act(gate) · up` for same-shape f32 CPU tensors whose rows (last dimension) are contiguous,
/// such as the two halves of a fused gate/up output.
pub fn gated_mul(gate: Gate, g: &Tensor, u: &Tensor) -> Result<Tensor> {
    g.apply_op2_no_bwd(u, &GatedMul(gate))
}

struct GatedMul(Gate);

/// Rows of a layout whose last dimension is contiguous and whose leading dimensions collapse
/// into one stride: (first element, row stride, rows, row length).
fn rows(l: &Layout) -> Option<(usize, usize, usize, usize)> {
    let (dims, strides) = (l.dims(), l.stride());
    let rank = dims.len();
    let n = *dims.last()?;
    if rank == 0 || (n > 1 && strides[rank - 1] != 1) {
        return None;
    }
    let row_stride = if rank >= 2 { strides[rank - 2] } else { n };
    for d in 0..rank.saturating_sub(2) {
        if dims[d + 1] > 1 && strides[d] != strides[d + 1] * dims[d + 1] {
            return None;
        }
    }
    let count = dims[..rank - 1].iter().product();
    Some((l.start_offset(), row_stride, count, n))
}

impl CustomOp2 for GatedMul {
    fn name(&self) -> &'static str {
        "cpu-gated-mul"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        if l1.shape() != l2.shape() {
            candle_core::bail!("gated-mul: {:?} vs {:?}", l1.shape(), l2.shape());
        }
        let (CpuStorage::F32(g), CpuStorage::F32(u)) = (s1, s2) else {
            candle_core::bail!("gated-mul: f32 only, got {:?}", s1.dtype());
        };
        let (Some((g0, gs, count, n)), Some((u0, us, _, _))) = (rows(l1), rows(l2)) else {
            candle_core::bail!("gated-mul: rows are not contiguous");
        };
        let mut out = vec![0f32; count * n];
        if n > 0 {
            let per_task = MIN_TASK.div_ceil(n).max(1);
            let run = |(t, chunk): (usize, &mut [f32])| {
                for (i, o) in chunk.chunks_exact_mut(n).enumerate() {
                    let r = t * per_task + i;
                    let (g, u) = (&g[g0 + r * gs..][..n], &u[u0 + r * us..][..n]);
                    gated_row(self.0, g, u, o);
                }
            };
            if count <= per_task {
                run((0, &mut out));
            } else {
                out.par_chunks_mut(per_task * n).enumerate().for_each(run);
            }
        }
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    /// `0.5·x·(1 + tanh u)` where that is well conditioned; far left, where `1 + tanh u`
    /// cancels even in f64, its equal `x·σ(2u)`.
    fn gelu_tanh_f64(x: f64) -> f64 {
        let u = (2.0 / std::f64::consts::PI).sqrt() * (x + 0.044715 * x * x * x);
        let sigmoid_form = x / (1.0 + (-2.0 * u).exp());
        if x > -3.0 {
            let tanh_form = 0.5 * x * (1.0 + u.tanh());
            assert!((tanh_form - sigmoid_form).abs() <= 1e-12 * tanh_form.abs() + 1e-300);
            tanh_form
        } else {
            sigmoid_form
        }
    }

    fn silu_f64(x: f64) -> f64 {
        x / (1.0 + (-x).exp())
    }

    #[test]
    fn activations_match_f64_within_a_few_ulps() {
        let mut x = -30.0f32;
        while x < 30.0 {
            for (fast, exact) in [
                (gelu_tanh(x), gelu_tanh_f64(x as f64)),
                (silu(x), silu_f64(x as f64)),
            ] {
                // Where the output is a tiny left tail (σ of a large negative t), the f32
                // rounding of t itself (relative 6e-8 of |t|) dominates, as in any f32 GELU.
                let tail = exact.abs() < 1e-3 * (x as f64).abs();
                let rel = if tail { 1e-4 } else { 2e-6 };
                let err = (fast as f64 - exact).abs();
                assert!(
                    err <= rel * exact.abs() + 1e-30,
                    "x = {x}: {fast} vs {exact}"
                );
            }
            x += 0.0173;
        }
        assert!(gelu_tanh(f32::NAN).is_nan() && silu(f32::NAN).is_nan());
        assert_eq!(gelu_tanh(1e30), 1e30);
        assert!(gelu_tanh(-1e30).abs() < 1e-6);
        assert_eq!(silu(200.0), 200.0);
    }

    #[test]
    fn fused_halves_and_separate_tensors_agree_with_the_row_function() -> Result<()> {
        let (t, inter) = (37, 700);
        let y: Vec<f32> = (0..t * 2 * inter)
            .map(|i| ((i * 7919) % 1013) as f32 * 0.013 - 6.5)
            .collect();
        let both = Tensor::from_vec(y.clone(), (t, 2 * inter), &Device::Cpu)?;
        let (g, u) = (both.narrow(1, 0, inter)?, both.narrow(1, inter, inter)?);
        for gate in [Gate::Silu, Gate::GeluTanh] {
            let mut want = vec![0f32; t * inter];
            for r in 0..t {
                let row = &y[r * 2 * inter..(r + 1) * 2 * inter];
                let (g, u) = row.split_at(inter);
                gated_row(gate, g, u, &mut want[r * inter..(r + 1) * inter]);
            }
            let fused = gated_mul(gate, &g, &u)?.flatten_all()?.to_vec1::<f32>()?;
            assert_eq!(fused, want);
            let separate = gated_mul(gate, &g.contiguous()?, &u.contiguous()?)?;
            assert_eq!(separate.flatten_all()?.to_vec1::<f32>()?, want);
            // One row alone gives the same bits as inside the batch.
            let alone = gated_mul(gate, &g.narrow(0, 5, 1)?, &u.narrow(0, 5, 1)?)?;
            assert_eq!(
                alone.flatten_all()?.to_vec1::<f32>()?,
                want[5 * inter..6 * inter]
            );
        }
        Ok(())
    }
}
