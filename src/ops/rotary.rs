//! Rotary position embedding in place on `[tokens, heads, head_dim]` for per-token positions:
//! the angle `(f32(pos) * position_scale) * inv_freq[i]` is formed in f32 as HF does, sin/cos
//! at full precision, each output rounded once (no bf16 cos/sin tables).

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, InplaceOp1, Layout, Result, Tensor};

use super::Elem;

/// Rotates `x` in place. `positions: [tokens]` u32 and `inv_freq: [head_dim / 2]` f32 on x's
/// device; `interleaved` pairs (2i, 2i+1) (GGUF llama) instead of (i, i + d/2) (NeoX/HF).
pub fn rotary_inplace(
    x: &Tensor,
    positions: &Tensor,
    inv_freq: &Tensor,
    position_scale: f32,
    interleaved: bool,
) -> Result<()> {
    x.inplace_op1(&RotaryInplace {
        positions: positions.clone(),
        inv_freq: inv_freq.clone(),
        position_scale,
        interleaved,
    })
}

pub struct RotaryInplace {
    pub positions: Tensor,
    pub inv_freq: Tensor,
    pub position_scale: f32,
    pub interleaved: bool,
}

impl RotaryInplace {
    fn dims(&self, l: &Layout) -> Result<(usize, usize, usize, usize)> {
        let (t, h, d) = l.shape().dims3()?;
        let Some((start, _)) = l.contiguous_offsets() else {
            candle_core::bail!("rotary: x must be contiguous");
        };
        if d % 2 != 0 || self.inv_freq.elem_count() != d / 2 || self.positions.elem_count() != t {
            candle_core::bail!(
                "rotary: x {:?} with {} positions and {} frequencies",
                l.shape(),
                self.positions.elem_count(),
                self.inv_freq.elem_count()
            );
        }
        Ok((start, t, h, d))
    }

    fn reference<T: Elem>(&self, x: &mut [T], pos: &[u32], inv: &[f32], h: usize, d: usize) {
        let half = d / 2;
        for (t, &p) in pos.iter().enumerate() {
            let p = p as f32 * self.position_scale;
            for head in 0..h {
                let base = &mut x[(t * h + head) * d..(t * h + head + 1) * d];
                for (i, &f) in inv.iter().enumerate() {
                    let (s, c) = (p * f).sin_cos();
                    let (i1, i2) = if self.interleaved {
                        (2 * i, 2 * i + 1)
                    } else {
                        (i, i + half)
                    };
                    let (a, b) = (base[i1].to_f32(), base[i2].to_f32());
                    base[i1] = T::from_f32(a * c - b * s);
                    base[i2] = T::from_f32(b * c + a * s);
                }
            }
        }
    }
}

impl InplaceOp1 for RotaryInplace {
    fn name(&self) -> &'static str {
        "rotary"
    }

    fn cpu_fwd(&self, s: &mut CpuStorage, l: &Layout) -> Result<()> {
        let (start, t, h, d) = self.dims(l)?;
        let pos_t = self.positions.to_device(&candle_core::Device::Cpu)?;
        let inv_t = self.inv_freq.to_device(&candle_core::Device::Cpu)?;
        let pos = pos_t.flatten_all()?.to_vec1::<u32>()?;
        let inv = inv_t.flatten_all()?.to_vec1::<f32>()?;
        let n = t * h * d;
        match s {
            CpuStorage::F32(x) => self.reference(&mut x[start..start + n], &pos, &inv, h, d),
            CpuStorage::BF16(x) => self.reference(&mut x[start..start + n], &pos, &inv, h, d),
            CpuStorage::F16(x) => self.reference(&mut x[start..start + n], &pos, &inv, h, d),
            other => candle_core::bail!("rotary: unsupported dtype {:?}", other.dtype()),
        }
        Ok(())
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(&self, s: &mut candle_core::CudaStorage, l: &Layout) -> Result<()> {
        use candle_core::cuda_backend::cudarc::driver::{CudaSlice, DeviceRepr, PushKernelArg};
        use candle_core::cuda_backend::{CudaDevice, CudaStorageSlice, WrapErr};
        use candle_core::WithDType;

        use super::cuda::{function, grid, ptx, unsupported, with_f32, with_u32};

        let (start, t, h, d) = self.dims(l)?;
        if t == 0 {
            return Ok(());
        }
        fn go<T: DeviceRepr + WithDType>(
            op: &RotaryInplace,
            dev: &CudaDevice,
            x: &mut CudaSlice<T>,
            range: std::ops::Range<usize>,
            (t, h, d): (usize, usize, usize),
        ) -> Result<()> {
            let f = function::<T>(dev, "flare_rotary", ptx::ROTARY, "rotary")?;
            let mut x = x.slice_mut(range);
            with_u32(&op.positions, "rotary", |pos| {
                with_f32(&op.inv_freq, "rotary", |inv| {
                    let stream = dev.cuda_stream();
                    let mut b = stream.launch_builder(&f);
                    let (h32, d32) = (h as i32, d as i32);
                    let inter = op.interleaved as i32;
                    b.arg(&mut x).arg(&pos).arg(&inv).arg(&h32).arg(&d32);
                    b.arg(&op.position_scale).arg(&inter);
                    let threads = (h * d / 2).clamp(32, 256) as u32;
                    // SAFETY: argument types match kernels/rotary.cu.
                    unsafe { b.launch(grid(t, threads)) }.w()?;
                    Ok(())
                })
            })
        }
        let dtype = candle_core::backend::BackendStorage::dtype(&*s);
        let dev = s.device.clone();
        let range = start..start + t * h * d;
        match &mut s.slice {
            CudaStorageSlice::BF16(x) => go(self, &dev, x, range, (t, h, d)),
            CudaStorageSlice::F16(x) => go(self, &dev, x, range, (t, h, d)),
            CudaStorageSlice::F32(x) => go(self, &dev, x, range, (t, h, d)),
            _ => Err(unsupported("rotary", dtype)),
        }
    }
}
