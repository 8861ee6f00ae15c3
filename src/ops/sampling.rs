//! Choosing tokens on the device, so that a step sends token ids, not logits, over PCIe.

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CustomOp1, Layout, Result, Shape, Tensor};

use super::{contiguous, Elem};

/// Index of the largest value of each row of `logits: [rows, vocab]`, as u32 `[rows]`: ties
/// go to the lowest id and NaN never wins (the CPU sampler's greedy rule).
pub fn argmax(logits: &Tensor) -> Result<Tensor> {
    logits.apply_op1_no_bwd(&Argmax)
}

pub struct Argmax;

fn reference<T: Elem>(x: &[T], vocab: usize) -> Vec<u32> {
    x.chunks(vocab)
        .map(|row| {
            let mut best = f32::NEG_INFINITY;
            let mut idx = 0u32;
            for (i, v) in row.iter().enumerate() {
                let v = v.to_f32();
                if v > best {
                    best = v;
                    idx = i as u32;
                }
            }
            idx
        })
        .collect()
}

impl CustomOp1 for Argmax {
    fn name(&self) -> &'static str {
        "argmax"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let (rows, vocab) = l.shape().dims2()?;
        let op = self.name();
        let out = match s {
            CpuStorage::F32(x) => reference(contiguous(x, l, op)?, vocab),
            CpuStorage::BF16(x) => reference(contiguous(x, l, op)?, vocab),
            CpuStorage::F16(x) => reference(contiguous(x, l, op)?, vocab),
            other => candle_core::bail!("argmax: unsupported dtype {:?}", other.dtype()),
        };
        Ok((CpuStorage::U32(out), Shape::from(rows)))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s: &candle_core::CudaStorage,
        l: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        use candle_core::cuda_backend::cudarc::driver::{CudaSlice, DeviceRepr, PushKernelArg};
        use candle_core::cuda_backend::{CudaDevice, CudaStorageSlice as S, WrapErr};
        use candle_core::WithDType;

        use super::cuda::{alloc_out, function, grid, ptx, unsupported, view};

        let (rows, vocab) = l.shape().dims2()?;
        fn go<T: DeviceRepr + WithDType>(
            dev: &CudaDevice,
            x: &CudaSlice<T>,
            l: &Layout,
            rows: usize,
            vocab: usize,
        ) -> Result<CudaSlice<u32>> {
            let f = function::<T>(dev, "flare_sampling", ptx::SAMPLING, "argmax")?;
            let x = view(x, l, "argmax")?;
            let out = alloc_out::<u32>(dev, rows.max(1))?;
            if rows > 0 {
                let stream = dev.cuda_stream();
                let mut b = stream.launch_builder(&f);
                let v32 = vocab as i32;
                b.arg(&x).arg(&out).arg(&v32);
                // SAFETY: argument types match kernels/sampling.cu.
                unsafe { b.launch(grid(rows, 1024)) }.w()?;
            }
            Ok(out)
        }
        let dev = &s.device;
        let out = match &s.slice {
            S::F32(x) => go(dev, x, l, rows, vocab)?,
            S::BF16(x) => go(dev, x, l, rows, vocab)?,
            S::F16(x) => go(dev, x, l, rows, vocab)?,
            _ => {
                return Err(unsupported(
                    "argmax",
                    candle_core::backend::BackendStorage::dtype(s),
                ))
            }
        };
        Ok((
            candle_core::CudaStorage::wrap_cuda_slice(out, dev.clone()),
            Shape::from(rows),
        ))
    }
}
