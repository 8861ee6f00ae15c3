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

/// Words per row of [`sample_rows`]' parameters.
pub const ROW_PARAMS: usize = 8;
/// Words per entry of [`adjust_logits`].
pub const ADJUST_ENTRY: usize = 6;

/// One token per row of `logits: [rows, vocab]` f32 under the row's sampling parameters
/// `params: [rows, ROW_PARAMS]` u32 (see kernels/sampling.cu `sample_rows_f32` for the
/// layout; `crate::sample::batched` builds it). u32 `[rows]`.
///
/// Greedy rows (temperature 0) take the argmax. Other rows keep the tokens that survive
/// top-k (ties with the k-th logit kept), top-p (the most likely tokens whose mass reaches
/// top_p, ties at the edge kept) and min-p, weighted by softmax at the temperature, and
/// draw one in id order at the row's Philox uniform number for (seed, position). Each row
/// depends on nothing but itself, so a row's token is the same in any batch.
pub fn sample_rows(logits: &Tensor, params: &Tensor) -> Result<Tensor> {
    logits.apply_op2_no_bwd(params, &SampleRows)
}

/// Applies sparse `(row, token)` adjustments (`entries: [n, ADJUST_ENTRY]` u32: row, token,
/// masked, bias, repetition penalty, frequency/presence subtrahend) to a copy of `logits`.
pub fn adjust_logits(logits: &Tensor, entries: &Tensor) -> Result<Tensor> {
    let out = logits.contiguous()?.copy()?;
    out.inplace_op2(entries, &AdjustLogits)?;
    Ok(out)
}

pub struct SampleRows;
pub struct AdjustLogits;

/// The parameters of one row, decoded from its words.
#[derive(Debug, Clone, Copy)]
pub struct RowParams {
    pub temperature: f32,
    pub top_k: u32,
    pub top_p: f32,
    pub min_p: f32,
    pub seed: u64,
    pub position: u64,
}

impl RowParams {
    pub fn to_words(self) -> [u32; ROW_PARAMS] {
        [
            self.temperature.to_bits(),
            self.top_k,
            self.top_p.to_bits(),
            self.min_p.to_bits(),
            self.seed as u32,
            (self.seed >> 32) as u32,
            self.position as u32,
            (self.position >> 32) as u32,
        ]
    }

    fn from_words(w: &[u32]) -> Self {
        Self {
            temperature: f32::from_bits(w[0]),
            top_k: w[1],
            top_p: f32::from_bits(w[2]),
            min_p: f32::from_bits(w[3]),
            seed: u64::from(w[4]) | (u64::from(w[5]) << 32),
            position: u64::from(w[6]) | (u64::from(w[7]) << 32),
        }
    }
}

/// The CPU reference of one row of `sample_rows`: sorts where the kernel bisects.
pub fn sample_row_reference(x: &[f32], p: &RowParams) -> u32 {
    let max = x.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    // NaN temperature counts as greedy, as in the kernel.
    if p.temperature.is_nan() || p.temperature <= 0.0 || !max.is_finite() {
        return reference(x, x.len())[0];
    }
    let scale = (1.0 / p.temperature).min(f32::MAX);
    let mut min_logit = f32::NEG_INFINITY;
    let mut live: Vec<f32> = x
        .iter()
        .copied()
        .filter(|&v| v > f32::NEG_INFINITY)
        .collect();
    if p.top_k > 0 && (p.top_k as usize) < live.len() {
        live.sort_unstable_by(|a, b| b.total_cmp(a));
        min_logit = live[p.top_k as usize - 1];
    }
    let w: Vec<f32> = x
        .iter()
        .map(|&v| {
            if v >= min_logit {
                ((v - max) * scale).exp()
            } else {
                0.0
            }
        })
        .collect();
    let mut min_w = 0.0f32;
    if p.top_p < 1.0 {
        let total: f64 = w.iter().map(|&v| v as f64).sum();
        let target = (p.top_p as f64 - 1e-6) * total;
        let mut sorted = w.clone();
        sorted.sort_unstable_by(|a, b| b.total_cmp(a));
        let mut cum = 0.0f64;
        for v in sorted {
            cum += v as f64;
            min_w = v;
            if cum >= target {
                break;
            }
        }
    }
    if p.min_p > 0.0 {
        min_w = min_w.max(p.min_p.min(1.0));
    }
    let kept = |v: f32| v > 0.0 && v >= min_w;
    let total: f64 = w.iter().filter(|&&v| kept(v)).map(|&v| v as f64).sum();
    let target = crate::sample::philox::uniforms(p.seed, p.position)[0] * total;
    let mut cum = 0.0f64;
    let mut last = 0;
    for (i, &v) in w.iter().enumerate().filter(|(_, &v)| kept(v)) {
        last = i as u32;
        cum += v as f64;
        if cum > target {
            return i as u32;
        }
    }
    last
}

/// The CPU reference of `adjust_logits` for one entry.
fn adjust_one(logits: &mut [f32], vocab: usize, e: &[u32]) {
    let (row, token) = (e[0] as usize, e[1] as usize);
    if token >= vocab {
        return;
    }
    let l = &mut logits[row * vocab + token];
    let mut x = *l + f32::from_bits(e[3]);
    if e[2] != 0 {
        x = f32::NEG_INFINITY;
    }
    let rep = f32::from_bits(e[4]);
    if rep != 1.0 {
        x = if x > 0.0 { x / rep } else { x * rep };
    }
    *l = x - f32::from_bits(e[5]);
}

impl candle_core::CustomOp2 for SampleRows {
    fn name(&self) -> &'static str {
        "sample_rows"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (rows, vocab) = l1.shape().dims2()?;
        let (CpuStorage::F32(x), CpuStorage::U32(p)) = (s1, s2) else {
            candle_core::bail!("sample_rows: logits must be f32 and params u32");
        };
        let x = contiguous(x, l1, self.name())?;
        let p = contiguous(p, l2, self.name())?;
        if p.len() != rows * ROW_PARAMS {
            candle_core::bail!("sample_rows: {} param words for {rows} rows", p.len());
        }
        let out = x
            .chunks(vocab.max(1))
            .zip(p.chunks(ROW_PARAMS))
            .map(|(row, w)| sample_row_reference(row, &RowParams::from_words(w)))
            .collect();
        Ok((CpuStorage::U32(out), Shape::from(rows)))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s1: &candle_core::CudaStorage,
        l1: &Layout,
        s2: &candle_core::CudaStorage,
        l2: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        use candle_core::cuda_backend::cudarc::driver::PushKernelArg;
        use candle_core::cuda_backend::{CudaStorageSlice as S, WrapErr};

        use super::cuda::{alloc_out, function, grid, ptx, view};

        let (rows, vocab) = l1.shape().dims2()?;
        let (S::F32(x), S::U32(p)) = (&s1.slice, &s2.slice) else {
            candle_core::bail!("sample_rows: logits must be f32 and params u32");
        };
        let dev = &s1.device;
        let f = function::<f32>(dev, "flare_sampling", ptx::SAMPLING, "sample_rows")?;
        let x = view(x, l1, "sample_rows")?;
        let p = view(p, l2, "sample_rows")?;
        let out = alloc_out::<u32>(dev, rows.max(1))?;
        if rows > 0 {
            let stream = dev.cuda_stream();
            let mut b = stream.launch_builder(&f);
            let v32 = vocab as i32;
            b.arg(&x).arg(&p).arg(&v32).arg(&out);
            // SAFETY: argument types match kernels/sampling.cu; SAMPLE_THREADS = 256.
            unsafe { b.launch(grid(rows, 256)) }.w()?;
        }
        Ok((
            candle_core::CudaStorage::wrap_cuda_slice(out, dev.clone()),
            Shape::from(rows),
        ))
    }
}

impl candle_core::InplaceOp2 for AdjustLogits {
    fn name(&self) -> &'static str {
        "adjust_logits"
    }

    fn cpu_fwd(
        &self,
        s1: &mut CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<()> {
        let (_, vocab) = l1.shape().dims2()?;
        let (CpuStorage::F32(x), CpuStorage::U32(e)) = (s1, s2) else {
            candle_core::bail!("adjust_logits: logits must be f32 and entries u32");
        };
        let Some((a, b)) = l1.contiguous_offsets() else {
            candle_core::bail!("adjust_logits: logits must be contiguous");
        };
        let e = contiguous(e, l2, self.name())?;
        for entry in e.chunks(ADJUST_ENTRY) {
            adjust_one(&mut x[a..b], vocab, entry);
        }
        Ok(())
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s1: &mut candle_core::CudaStorage,
        l1: &Layout,
        s2: &candle_core::CudaStorage,
        l2: &Layout,
    ) -> Result<()> {
        use candle_core::cuda_backend::cudarc::driver::PushKernelArg;
        use candle_core::cuda_backend::{CudaStorageSlice as S, WrapErr};

        use super::cuda::{function, grid, ptx, view};

        let (_, vocab) = l1.shape().dims2()?;
        let dev = s1.device.clone();
        let S::U32(e) = &s2.slice else {
            candle_core::bail!("adjust_logits: entries must be u32");
        };
        let e = view(e, l2, "adjust_logits")?;
        let n = e.len() / ADJUST_ENTRY;
        let Some((a, b)) = l1.contiguous_offsets() else {
            candle_core::bail!("adjust_logits: logits must be contiguous");
        };
        let S::F32(x) = &mut s1.slice else {
            candle_core::bail!("adjust_logits: logits must be f32");
        };
        let mut x = x.slice_mut(a..b);
        if n > 0 {
            let f = function::<f32>(&dev, "flare_sampling", ptx::SAMPLING, "adjust_logits")?;
            let stream = dev.cuda_stream();
            let mut builder = stream.launch_builder(&f);
            let (n32, v32) = (n as i32, vocab as i32);
            builder.arg(&mut x).arg(&e).arg(&n32).arg(&v32);
            // SAFETY: argument types match kernels/sampling.cu.
            unsafe { builder.launch(grid(n.div_ceil(128), 128)) }.w()?;
        }
        Ok(())
    }
}
