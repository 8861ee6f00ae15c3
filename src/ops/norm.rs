//! RMSNorm over the last dimension, optionally fused with the residual add before it (vLLM's
//! `fused_add_rms_norm`): one read of x and the residual, one write of each output.
//!
//! `sum = round(x + residual)`, `norm = round(sum / sqrt(mean(sum^2) + eps) * weight)`, in f32.

use candle_core::{CpuStorage, CustomOp2, CustomOp3, Layout, Result, Shape, Tensor, D};

use super::{contiguous, Elem};

/// `(x + residual, rms_norm(x + residual) * weight)`; the sum is the next residual stream.
pub fn add_rms_norm(
    x: &Tensor,
    residual: &Tensor,
    weight: &Tensor,
    eps: f32,
) -> Result<(Tensor, Tensor)> {
    let both = x.apply_op3_no_bwd(residual, weight, &AddRmsNorm { eps })?;
    Ok((both.get(0)?, both.get(1)?))
}

/// `rms_norm(x) * weight` over the last dimension.
pub fn rms_norm(x: &Tensor, weight: &Tensor, eps: f32) -> Result<Tensor> {
    x.apply_op2_no_bwd(weight, &RmsNorm { eps })
}

/// Output `[2, ..x.shape]`: the sum, then the normalized sum.
pub struct AddRmsNorm {
    pub eps: f32,
}

pub struct RmsNorm {
    pub eps: f32,
}

fn row_norm<T: Elem>(sum: &[f32], w: &[T], eps: f32, out: &mut Vec<T>) {
    let n = sum.len();
    let sq: f32 = sum.iter().map(|s| s * s).sum();
    let inv = 1.0 / (sq / n as f32 + eps).sqrt();
    out.extend(
        sum.iter()
            .zip(w)
            .map(|(&s, &w)| T::from_f32(s * inv * w.to_f32())),
    );
}

fn add_reference<T: Elem>(x: &[T], r: Option<&[T]>, w: &[T], eps: f32) -> Vec<T> {
    let n = w.len();
    let rows = x.len() / n;
    let mut sums: Vec<T> = Vec::with_capacity(if r.is_some() { x.len() } else { 0 });
    let mut norms = Vec::with_capacity(x.len());
    let mut row = vec![0f32; n];
    for i in 0..rows {
        let xs = &x[i * n..(i + 1) * n];
        match r {
            Some(r) => {
                for ((s, &a), &b) in row.iter_mut().zip(xs).zip(&r[i * n..(i + 1) * n]) {
                    *s = T::round(a.to_f32() + b.to_f32());
                }
                sums.extend(row.iter().map(|&s| T::from_f32(s)));
            }
            None => row.iter_mut().zip(xs).for_each(|(s, a)| *s = a.to_f32()),
        }
        row_norm(&row, w, eps, &mut norms);
    }
    sums.extend(norms);
    sums
}

fn check(x: &Layout, w: &Layout, op: &str) -> Result<()> {
    let n = x.shape().dim(D::Minus1)?;
    if w.shape().dims() != [n] {
        candle_core::bail!("{op}: weight {:?} for rows of {n}", w.shape());
    }
    Ok(())
}

impl CustomOp3 for AddRmsNorm {
    fn name(&self) -> &'static str {
        "add-rms-norm"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let op = self.name();
        check(l1, l3, op)?;
        if l1.shape() != l2.shape() {
            candle_core::bail!("{op}: x {:?} vs residual {:?}", l1.shape(), l2.shape());
        }
        macro_rules! run {
            ($v:ident, $x:expr, $r:expr, $w:expr) => {
                CpuStorage::$v(add_reference(
                    contiguous($x, l1, op)?,
                    Some(contiguous($r, l2, op)?),
                    contiguous($w, l3, op)?,
                    self.eps,
                ))
            };
        }
        let out = match (s1, s2, s3) {
            (CpuStorage::F32(x), CpuStorage::F32(r), CpuStorage::F32(w)) => run!(F32, x, r, w),
            (CpuStorage::BF16(x), CpuStorage::BF16(r), CpuStorage::BF16(w)) => {
                run!(BF16, x, r, w)
            }
            (CpuStorage::F16(x), CpuStorage::F16(r), CpuStorage::F16(w)) => run!(F16, x, r, w),
            _ => candle_core::bail!("{op}: unsupported dtypes"),
        };
        let mut dims = vec![2];
        dims.extend_from_slice(l1.dims());
        Ok((out, Shape::from(dims)))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s1: &candle_core::CudaStorage,
        l1: &Layout,
        s2: &candle_core::CudaStorage,
        l2: &Layout,
        s3: &candle_core::CudaStorage,
        l3: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        use candle_core::cuda_backend::cudarc::driver::{CudaSlice, DeviceRepr};
        use candle_core::cuda_backend::{CudaDevice, Map3};
        use candle_core::WithDType;

        let op = self.name();
        check(l1, l3, op)?;
        if l1.shape() != l2.shape() {
            candle_core::bail!("{op}: x {:?} vs residual {:?}", l1.shape(), l2.shape());
        }
        struct Launch(f32);
        impl Map3 for Launch {
            fn f<T: DeviceRepr + WithDType>(
                &self,
                x: &CudaSlice<T>,
                lx: &Layout,
                r: &CudaSlice<T>,
                lr: &Layout,
                w: &CudaSlice<T>,
                lw: &Layout,
                dev: &CudaDevice,
            ) -> Result<CudaSlice<T>> {
                cuda::launch(dev, x, lx, Some((r, lr)), w, lw, self.0)
            }
        }
        let dev = &s1.device;
        let slice = Launch(self.eps).map(&s1.slice, l1, &s2.slice, l2, &s3.slice, l3, dev)?;
        let mut dims = vec![2];
        dims.extend_from_slice(l1.dims());
        Ok((
            candle_core::CudaStorage {
                slice,
                device: dev.clone(),
            },
            Shape::from(dims),
        ))
    }
}

impl CustomOp2 for RmsNorm {
    fn name(&self) -> &'static str {
        "rms-norm"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let op = self.name();
        check(l1, l2, op)?;
        let out = match (s1, s2) {
            (CpuStorage::F32(x), CpuStorage::F32(w)) => CpuStorage::F32(add_reference(
                contiguous(x, l1, op)?,
                None,
                contiguous(w, l2, op)?,
                self.eps,
            )),
            (CpuStorage::BF16(x), CpuStorage::BF16(w)) => CpuStorage::BF16(add_reference(
                contiguous(x, l1, op)?,
                None,
                contiguous(w, l2, op)?,
                self.eps,
            )),
            (CpuStorage::F16(x), CpuStorage::F16(w)) => CpuStorage::F16(add_reference(
                contiguous(x, l1, op)?,
                None,
                contiguous(w, l2, op)?,
                self.eps,
            )),
            _ => candle_core::bail!("{op}: unsupported dtypes"),
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
        use candle_core::cuda_backend::cudarc::driver::{CudaSlice, DeviceRepr};
        use candle_core::cuda_backend::{CudaDevice, Map2};
        use candle_core::WithDType;

        check(l1, l2, self.name())?;
        struct Launch(f32);
        impl Map2 for Launch {
            fn f<T: DeviceRepr + WithDType>(
                &self,
                x: &CudaSlice<T>,
                lx: &Layout,
                w: &CudaSlice<T>,
                lw: &Layout,
                dev: &CudaDevice,
            ) -> Result<CudaSlice<T>> {
                cuda::launch(dev, x, lx, None, w, lw, self.0)
            }
        }
        let dev = &s1.device;
        let slice = Launch(self.eps).map(&s1.slice, l1, &s2.slice, l2, dev)?;
        Ok((
            candle_core::CudaStorage {
                slice,
                device: dev.clone(),
            },
            l1.shape().clone(),
        ))
    }
}

#[cfg(feature = "cuda")]
mod cuda {
    use candle_core::cuda_backend::cudarc::driver::{CudaSlice, DeviceRepr, PushKernelArg};
    use candle_core::cuda_backend::{CudaDevice, WrapErr};
    use candle_core::{Layout, Result, WithDType, D};

    use crate::ops::cuda::{alloc_out, function, grid, ptx, view};

    /// With a residual: output `[sum; norm]` (2 x elements), else just the norm.
    pub fn launch<T: DeviceRepr + WithDType>(
        dev: &CudaDevice,
        x: &CudaSlice<T>,
        lx: &Layout,
        residual: Option<(&CudaSlice<T>, &Layout)>,
        w: &CudaSlice<T>,
        lw: &Layout,
        eps: f32,
    ) -> Result<CudaSlice<T>> {
        let op = "rms-norm";
        let n = lx.shape().dim(D::Minus1)?;
        let el = lx.shape().elem_count();
        let rows = el / n.max(1);
        if rows == 0 {
            return alloc_out::<T>(dev, el * if residual.is_some() { 2 } else { 1 });
        }
        let x = view(x, lx, op)?;
        let w = view(w, lw, op)?;
        let threads = if n >= 4096 {
            1024
        } else {
            (n.div_ceil(32) * 32).clamp(32, 1024)
        };
        let stream = dev.cuda_stream();
        let (n32, eps) = (n as i32, eps);
        match residual {
            Some((r, lr)) => {
                let r = view(r, lr, op)?;
                let mut out = alloc_out::<T>(dev, 2 * el)?;
                let f = function::<T>(dev, "flare_rms_norm", ptx::RMS_NORM, "add_rms_norm")?;
                {
                    let (mut sum, mut norm) = out.split_at_mut(el);
                    let mut b = stream.launch_builder(&f);
                    b.arg(&x).arg(&r).arg(&w).arg(&mut sum).arg(&mut norm);
                    b.arg(&n32).arg(&eps);
                    // SAFETY: argument types match kernels/rms_norm.cu.
                    unsafe { b.launch(grid(rows, threads as u32)) }.w()?;
                }
                Ok(out)
            }
            None => {
                let out = alloc_out::<T>(dev, el)?;
                let f = function::<T>(dev, "flare_rms_norm", ptx::RMS_NORM, "rms_norm")?;
                let mut b = stream.launch_builder(&f);
                b.arg(&x).arg(&w).arg(&out).arg(&n32).arg(&eps);
                // SAFETY: argument types match kernels/rms_norm.cu.
                unsafe { b.launch(grid(rows, threads as u32)) }.w()?;
                Ok(out)
            }
        }
    }
}
