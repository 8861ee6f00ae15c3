//! SiLU-and-multiply of the gated MLP: `silu(gate) * up`, computed in f32 and rounded once.

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CustomOp2, Layout, Result, Shape, Tensor};

use super::{contiguous, Elem};

/// `silu(gate) * up` for two tensors of one shape and dtype (bf16, f16, f32).
pub fn silu_mul(gate: &Tensor, up: &Tensor) -> Result<Tensor> {
    gate.apply_op2_no_bwd(up, &SiluMul)
}

pub struct SiluMul;

fn reference<T: Elem>(g: &[T], u: &[T]) -> Vec<T> {
    g.iter()
        .zip(u)
        .map(|(&g, &u)| {
            let g = g.to_f32();
            T::from_f32(g / (1.0 + (-g).exp()) * u.to_f32())
        })
        .collect()
}

impl CustomOp2 for SiluMul {
    fn name(&self) -> &'static str {
        "silu-mul"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        if l1.shape() != l2.shape() {
            candle_core::bail!("silu-mul: {:?} vs {:?}", l1.shape(), l2.shape());
        }
        let n = self.name();
        let out = match (s1, s2) {
            (CpuStorage::F32(g), CpuStorage::F32(u)) => {
                CpuStorage::F32(reference(contiguous(g, l1, n)?, contiguous(u, l2, n)?))
            }
            (CpuStorage::BF16(g), CpuStorage::BF16(u)) => {
                CpuStorage::BF16(reference(contiguous(g, l1, n)?, contiguous(u, l2, n)?))
            }
            (CpuStorage::F16(g), CpuStorage::F16(u)) => {
                CpuStorage::F16(reference(contiguous(g, l1, n)?, contiguous(u, l2, n)?))
            }
            _ => candle_core::bail!("silu-mul: unsupported dtype {:?}", s1.dtype()),
        };
        Ok((out, l1.shape().clone()))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s1: &candle_core::CudaStorage,
        l1: &Layout,
        s2: &candle_core::CudaStorage,
        l2: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        use candle_core::cuda_backend::cudarc::driver::{CudaSlice, DeviceRepr, PushKernelArg};
        use candle_core::cuda_backend::{CudaDevice, Map2, WrapErr};
        use candle_core::WithDType;

        use super::cuda::{alloc_out, function, grid, ptx, view};

        struct Launch;
        impl Map2 for Launch {
            fn f<T: DeviceRepr + WithDType>(
                &self,
                g: &CudaSlice<T>,
                lg: &Layout,
                u: &CudaSlice<T>,
                lu: &Layout,
                dev: &CudaDevice,
            ) -> Result<CudaSlice<T>> {
                if lg.shape() != lu.shape() {
                    candle_core::bail!("silu-mul: {:?} vs {:?}", lg.shape(), lu.shape());
                }
                let (g, u) = (view(g, lg, "silu-mul")?, view(u, lu, "silu-mul")?);
                let n = lg.shape().elem_count();
                let f = function::<T>(dev, "flare_silu_mul", ptx::SILU_MUL, "silu_mul")?;
                let out = alloc_out::<T>(dev, n)?;
                if n == 0 {
                    return Ok(out);
                }
                let stream = dev.cuda_stream();
                let mut b = stream.launch_builder(&f);
                let n64 = n as i64;
                b.arg(&g).arg(&u).arg(&out).arg(&n64);
                let blocks = n.div_ceil(256).clamp(1, 65_536);
                // SAFETY: argument types match kernels/silu_mul.cu.
                unsafe { b.launch(grid(blocks, 256)) }.w()?;
                Ok(out)
            }
        }
        let dev = &s1.device;
        let slice = Launch.map(&s1.slice, l1, &s2.slice, l2, dev)?;
        Ok((
            candle_core::CudaStorage {
                slice,
                device: dev.clone(),
            },
            l1.shape().clone(),
        ))
    }
}
