//! Quantized GEMMs for the GPU: FP8 W8A8 (kernels/fp8_gemm.cu) and integer weight-only W4A16 /
//! W8A16 (kernels/w4a16_gemm.cu) over the layouts of `quant::device`. Each op's CPU forward is
//! the reference its CUDA forward is tested against (tests/cuda_kernels.rs); the model's CPU
//! path keeps the dense dequantized weights (`quant::load`) and never runs these.
//!
//! Batch invariance: one kernel per op whatever M is (the decode and prefill tile sizes compute
//! every output the same way), activation scales are per token: a row's output depends on
//! that row only.

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CustomOp3, DType, Device, Layout, Result, Shape, Tensor};
use half::{bf16, f16};

use super::{contiguous, Elem};
use crate::quant::device::{encode_e4m3, DevicePacked, Fp8Packed, IntPacked};
use crate::quant::fp8::{e4m3_to_f32, E4M3_MAX};

/// A layer's quantized weight on its device.
#[derive(Debug, Clone)]
pub enum QuantWeight {
    Fp8 {
        /// e4m3 bytes `[out, in]` (U8).
        bytes: Tensor,
        /// `[out, in / gw]` (F32).
        scales: Tensor,
        op: Fp8Matmul,
    },
    Int {
        /// `[out, in * bits / 32]` (U32).
        words: Tensor,
        /// `[out, in / g * 2]` (F32): (scale, offset) pairs.
        scale_offset: Tensor,
        /// The activations' input order (U32 `[in]`), for GPTQ's act order.
        perm: Option<Tensor>,
        op: IntMatmul,
    },
}

impl QuantWeight {
    pub fn upload(p: &DevicePacked, dev: &Device) -> Result<Self> {
        Ok(match p {
            DevicePacked::Fp8(f) => Self::upload_fp8(f, dev)?,
            DevicePacked::Int(w) => Self::upload_int(w, dev)?,
        })
    }

    fn upload_fp8(f: &Fp8Packed, dev: &Device) -> Result<Self> {
        Ok(Self::Fp8 {
            bytes: Tensor::from_slice(&f.bytes, (f.out, f.inp), dev)?,
            scales: Tensor::from_slice(&f.scales, (f.out, f.inp / f.gw), dev)?,
            op: Fp8Matmul {
                gx: f.gx,
                gw: f.gw,
                static_scale: f.static_scale,
            },
        })
    }

    fn upload_int(w: &IntPacked, dev: &Device) -> Result<Self> {
        let per = 32 / w.bits as usize;
        Ok(Self::Int {
            words: Tensor::from_slice(&w.words, (w.out, w.inp / per), dev)?,
            scale_offset: Tensor::from_slice(&w.scale_offset, (w.out, w.inp / w.g * 2), dev)?,
            perm: w
                .perm
                .as_ref()
                .map(|p| Tensor::from_slice(p, p.len(), dev))
                .transpose()?,
            op: IntMatmul {
                bits: w.bits,
                g: w.g,
            },
        })
    }

    /// The activation quantization the op applies (as the CPU path names it).
    pub fn act_quant(&self) -> Option<crate::quant::ActQuant> {
        use crate::quant::ActQuant;
        match self {
            Self::Fp8 { bytes, op, .. } => Some(match op.static_scale {
                Some(s) => ActQuant::Fp8Static(s),
                None if op.gx == bytes.dims()[1] => ActQuant::Fp8PerToken,
                None => ActQuant::Fp8PerTokenGroup(op.gx),
            }),
            Self::Int { .. } => None,
        }
    }

    pub fn out_features(&self) -> usize {
        match self {
            Self::Fp8 { bytes: w, .. } | Self::Int { words: w, .. } => w.dims()[0],
        }
    }

    /// `x: [.., in] -> [.., out]` in x's dtype.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let dims = x.dims().to_vec();
        let k = *dims.last().unwrap_or(&0);
        let x2 = x.reshape(((), k))?;
        let y = match self {
            Self::Fp8 { bytes, scales, op } => {
                x2.contiguous()?.apply_op3_no_bwd(bytes, scales, op)?
            }
            Self::Int {
                words,
                scale_offset,
                perm,
                op,
            } => {
                // The kernel takes bf16 activations (the GPU's model dtype).
                let mut xb = x2.to_dtype(DType::BF16)?;
                if let Some(p) = perm {
                    xb = xb.index_select(p, 1)?;
                }
                xb.contiguous()?
                    .apply_op3_no_bwd(words, scale_offset, op)?
                    .to_dtype(x.dtype())?
            }
        };
        let mut od = dims;
        *od.last_mut().expect("non-scalar input") = self.out_features();
        y.reshape(od)
    }
}

/// `x [M, K]` (bf16/f16/f32) times e4m3 weights, activations quantized per token (and group).
#[derive(Debug, Clone)]
pub struct Fp8Matmul {
    pub gx: usize,
    pub gw: usize,
    pub static_scale: Option<f32>,
}

/// Dimensions of `x [M, K]` against a `[N, K*]` weight.
fn dims(lx: &Layout, lw: &Layout, op: &str) -> Result<(usize, usize, usize)> {
    let (m, k) = lx.shape().dims2()?;
    let (n, _) = lw.shape().dims2()?;
    if !k.is_multiple_of(64) {
        candle_core::bail!("{op}: input width {k} is not a multiple of 64");
    }
    Ok((m, n, k))
}

impl Fp8Matmul {
    /// Row `x`'s e4m3 bytes and scales (one per `gx` inputs), as fp8_quant_act computes them.
    fn quantize_row(&self, x: &[f32]) -> (Vec<u8>, Vec<f32>) {
        let mut q = Vec::with_capacity(x.len());
        let mut s = Vec::with_capacity(x.len() / self.gx);
        for g in x.chunks(self.gx) {
            let scale = self
                .static_scale
                .unwrap_or_else(|| g.iter().fold(0f32, |m, v| m.max(v.abs())) / E4M3_MAX);
            q.extend(
                g.iter()
                    .map(|&v| encode_e4m3(if scale > 0.0 { v / scale } else { 0.0 })),
            );
            s.push(scale);
        }
        (q, s)
    }

    fn reference<T: Elem>(
        &self,
        x: &[T],
        w: &[u8],
        ws: &[f32],
        m: usize,
        n: usize,
        k: usize,
    ) -> Vec<T> {
        let lut: Vec<f32> = (0..=255u8).map(e4m3_to_f32).collect();
        let wg = k / self.gw;
        let mut out = Vec::with_capacity(m * n);
        for row in x.chunks(k).take(m) {
            let xf: Vec<f32> = row.iter().map(|v| v.to_f32()).collect();
            let (q, xs) = self.quantize_row(&xf);
            for j in 0..n {
                let wr = &w[j * k..(j + 1) * k];
                let mut acc = 0f32;
                for c in 0..k / 32 {
                    let p: f32 = (c * 32..c * 32 + 32)
                        .map(|i| lut[q[i] as usize] * lut[wr[i] as usize])
                        .sum();
                    let scale = xs[c * 32 / self.gx] * ws[j * wg + c * 32 / self.gw];
                    acc = p.mul_add(scale, acc);
                }
                out.push(T::from_f32(acc));
            }
        }
        out
    }
}

impl CustomOp3 for Fp8Matmul {
    fn name(&self) -> &'static str {
        "fp8-matmul"
    }

    fn cpu_fwd(
        &self,
        sx: &CpuStorage,
        lx: &Layout,
        sw: &CpuStorage,
        lw: &Layout,
        ss: &CpuStorage,
        ls: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let name = self.name();
        let (m, n, k) = dims(lx, lw, name)?;
        let (CpuStorage::U8(w), CpuStorage::F32(ws)) = (sw, ss) else {
            candle_core::bail!("{name}: weights must be U8 bytes and F32 scales");
        };
        let (w, ws) = (contiguous(w, lw, name)?, contiguous(ws, ls, name)?);
        let out = match sx {
            CpuStorage::F32(x) => {
                CpuStorage::F32(self.reference(contiguous(x, lx, name)?, w, ws, m, n, k))
            }
            CpuStorage::BF16(x) => {
                CpuStorage::BF16(self.reference::<bf16>(contiguous(x, lx, name)?, w, ws, m, n, k))
            }
            CpuStorage::F16(x) => {
                CpuStorage::F16(self.reference::<f16>(contiguous(x, lx, name)?, w, ws, m, n, k))
            }
            _ => candle_core::bail!("{name}: unsupported activation dtype {:?}", sx.dtype()),
        };
        Ok((out, Shape::from((m, n))))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        sx: &candle_core::CudaStorage,
        lx: &Layout,
        sw: &candle_core::CudaStorage,
        lw: &Layout,
        ss: &candle_core::CudaStorage,
        ls: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        use candle_core::cuda_backend::cudarc::driver::{
            CudaSlice, DeviceRepr, LaunchConfig, PushKernelArg,
        };
        use candle_core::cuda_backend::{CudaDevice, CudaStorageSlice as S, WrapErr};
        use candle_core::WithDType;

        use super::cuda::{alloc_out, function, ptx, unsupported, view};

        let name = self.name();
        let (m, n, k) = dims(lx, lw, name)?;
        let dev = &sx.device;
        let w = view(sw.as_cuda_slice::<u8>()?, lw, name)?;
        let ws = view(ss.as_cuda_slice::<f32>()?, ls, name)?;
        fn go<T: DeviceRepr + WithDType>(
            op: &Fp8Matmul,
            dev: &CudaDevice,
            x: &CudaSlice<T>,
            lx: &Layout,
            w: &candle_core::cuda_backend::cudarc::driver::CudaView<'_, u8>,
            ws: &candle_core::cuda_backend::cudarc::driver::CudaView<'_, f32>,
            (m, n, k): (usize, usize, usize),
        ) -> Result<CudaSlice<T>> {
            let x = view(x, lx, "fp8-matmul")?;
            let out = alloc_out::<T>(dev, m * n)?;
            if m == 0 || n == 0 {
                return Ok(out);
            }
            // SAFETY: fp8_quant_act writes every byte and scale before the GEMM reads them.
            let xq = unsafe { dev.alloc::<u8>(m * k)? };
            let xs = unsafe { dev.alloc::<f32>(m * (k / op.gx))? };
            let stream = dev.cuda_stream();
            let (k32, gx32, gw32) = (k as i32, op.gx as i32, op.gw as i32);
            let (m32, n32) = (m as i32, n as i32);
            let static_scale = op.static_scale.unwrap_or(0.0);
            let quant = function::<T>(dev, "flare_fp8_gemm", ptx::FP8_GEMM, "fp8_quant_act")?;
            let mut b = stream.launch_builder(&quant);
            b.arg(&x)
                .arg(&xq)
                .arg(&xs)
                .arg(&k32)
                .arg(&gx32)
                .arg(&static_scale);
            let cfg = LaunchConfig {
                grid_dim: (m as u32, 1, 1),
                block_dim: (256, 1, 1),
                shared_mem_bytes: 0,
            };
            // SAFETY: argument types match kernels/fp8_gemm.cu; buffers hold m*k bytes and
            // m*k/gx scales.
            unsafe { b.launch(cfg) }.w()?;
            // Decode batches share a 16-row tile, larger ones 64-row tiles: same arithmetic.
            let (root, bm) = if m <= 16 {
                ("fp8_gemm_m16", 16)
            } else {
                ("fp8_gemm_m64", 64)
            };
            let gemm = function::<T>(dev, "flare_fp8_gemm", ptx::FP8_GEMM, root)?;
            let mut b = stream.launch_builder(&gemm);
            b.arg(&xq).arg(&xs).arg(w).arg(ws).arg(&out);
            b.arg(&m32).arg(&n32).arg(&k32).arg(&gx32).arg(&gw32);
            let cfg = LaunchConfig {
                grid_dim: (n.div_ceil(32) as u32, m.div_ceil(bm) as u32, 1),
                block_dim: (256, 1, 1),
                shared_mem_bytes: 0,
            };
            // SAFETY: as above; weights are [n, k] bytes and [n, k/gw] scales (checked at load).
            unsafe { b.launch(cfg) }.w()?;
            Ok(out)
        }
        let slice = match &sx.slice {
            S::BF16(x) => S::BF16(go(self, dev, x, lx, &w, &ws, (m, n, k))?),
            S::F16(x) => S::F16(go(self, dev, x, lx, &w, &ws, (m, n, k))?),
            S::F32(x) => S::F32(go(self, dev, x, lx, &w, &ws, (m, n, k))?),
            _ => return Err(unsupported(name, sx.dtype())),
        };
        Ok((
            candle_core::CudaStorage {
                slice,
                device: dev.clone(),
            },
            Shape::from((m, n)),
        ))
    }
}

/// `x [M, K]` (bf16) times packed integer weights, dequantized in the kernel.
#[derive(Debug, Clone)]
pub struct IntMatmul {
    pub bits: u32,
    pub g: usize,
}

impl IntMatmul {
    fn reference(
        &self,
        x: &[bf16],
        words: &[u32],
        so: &[f32],
        m: usize,
        n: usize,
        k: usize,
    ) -> Vec<bf16> {
        let per = 32 / self.bits as usize;
        let mask = (1u32 << self.bits) - 1;
        let groups = k / self.g;
        let w: Vec<f32> = (0..n * k)
            .map(|e| {
                let (j, i) = (e / k, e % k);
                let q = (words[j * (k / per) + i / per] >> ((i % per) as u32 * self.bits)) & mask;
                let p = 2 * (j * groups + i / self.g);
                bf16::round((q as f32).mul_add(so[p], so[p + 1]))
            })
            .collect();
        let mut out = Vec::with_capacity(m * n);
        for row in x.chunks(k).take(m) {
            for wr in w.chunks(k) {
                let acc: f32 = row.iter().zip(wr).map(|(a, b)| a.to_f32() * b).sum();
                out.push(bf16::from_f32(acc));
            }
        }
        out
    }
}

impl CustomOp3 for IntMatmul {
    fn name(&self) -> &'static str {
        "int-matmul"
    }

    fn cpu_fwd(
        &self,
        sx: &CpuStorage,
        lx: &Layout,
        sw: &CpuStorage,
        lw: &Layout,
        ss: &CpuStorage,
        ls: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let name = self.name();
        let (m, n, k) = dims(lx, lw, name)?;
        let (CpuStorage::BF16(x), CpuStorage::U32(w), CpuStorage::F32(so)) = (sx, sw, ss) else {
            candle_core::bail!("{name}: needs bf16 activations, U32 words, F32 scales");
        };
        let out = self.reference(
            contiguous(x, lx, name)?,
            contiguous(w, lw, name)?,
            contiguous(so, ls, name)?,
            m,
            n,
            k,
        );
        Ok((CpuStorage::BF16(out), Shape::from((m, n))))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        sx: &candle_core::CudaStorage,
        lx: &Layout,
        sw: &candle_core::CudaStorage,
        lw: &Layout,
        ss: &candle_core::CudaStorage,
        ls: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        use candle_core::cuda_backend::cudarc::driver::{LaunchConfig, PushKernelArg};
        use candle_core::cuda_backend::{CudaStorageSlice as S, WrapErr};

        use super::cuda::{alloc_out, function, ptx, view};

        let name = self.name();
        let (m, n, k) = dims(lx, lw, name)?;
        let dev = &sx.device;
        // The kernel reads 16-byte vectors of each row: rows start at multiples of 64
        // elements (K % 64 == 0), so only the view's start must be aligned.
        if !lx.start_offset().is_multiple_of(8) {
            candle_core::bail!(
                "{name}: input view starts at element {}, not a multiple of 8",
                lx.start_offset()
            );
        }
        let x = view(sx.as_cuda_slice::<bf16>()?, lx, name)?;
        let w = view(sw.as_cuda_slice::<u32>()?, lw, name)?;
        let so = view(ss.as_cuda_slice::<f32>()?, ls, name)?;
        let out = alloc_out::<bf16>(dev, m * n)?;
        if m > 0 && n > 0 {
            let (root, bm) = match (self.bits, m <= 16) {
                (4, true) => ("wint_gemm_w4_m16", 16),
                (4, false) => ("wint_gemm_w4_m64", 64),
                (8, true) => ("wint_gemm_w8_m16", 16),
                (8, false) => ("wint_gemm_w8_m64", 64),
                (b, _) => candle_core::bail!("{name}: no kernel for {b}-bit weights"),
            };
            let f = function::<bf16>(dev, "flare_w4a16_gemm", ptx::W4A16_GEMM, root)?;
            let stream = dev.cuda_stream();
            let mut b = stream.launch_builder(&f);
            let (m32, n32, k32, g32) = (m as i32, n as i32, k as i32, self.g as i32);
            b.arg(&x).arg(&w).arg(&so).arg(&out);
            b.arg(&m32).arg(&n32).arg(&k32).arg(&g32);
            let cfg = LaunchConfig {
                grid_dim: (n.div_ceil(32) as u32, m.div_ceil(bm) as u32, 1),
                block_dim: (256, 1, 1),
                shared_mem_bytes: 0,
            };
            // SAFETY: argument types match kernels/w4a16_gemm.cu (float2 = two f32); shapes
            // were checked when the weights were packed (quant::device).
            unsafe { b.launch(cfg) }.w()?;
        }
        Ok((
            candle_core::CudaStorage {
                slice: S::BF16(out),
                device: dev.clone(),
            },
            Shape::from((m, n)),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::quant::fp8::round_e4m3;

    /// The FP8 op's reference agrees with the CPU model path: fake-quantized activations times
    /// the dequantized weight (the two differ only in where the scales are multiplied).
    #[test]
    fn fp8_reference_matches_the_dequantizing_path() -> Result<()> {
        let (m, n, k) = (3, 8, 128);
        let w: Vec<f32> = (0..n * k)
            .map(|i| ((i * 37 % 101) as f32 - 50.0) * 0.01)
            .collect();
        let packed = Fp8Packed::per_channel(&w, n, k).unwrap();
        let x: Vec<f32> = (0..m * k)
            .map(|i| ((i * 53 % 97) as f32 - 48.0) * 0.1)
            .collect();
        let qw = QuantWeight::upload(&DevicePacked::Fp8(packed.clone()), &Device::Cpu)?;
        let xt = Tensor::from_slice(&x, (m, k), &Device::Cpu)?;
        let got: Vec<f32> = qw.forward(&xt)?.flatten_all()?.to_vec1()?;
        let deq = packed.dequantize();
        for r in 0..m {
            let row = &x[r * k..(r + 1) * k];
            let s = row.iter().fold(0f32, |a, v| a.max(v.abs())) / E4M3_MAX;
            let xq: Vec<f32> = row.iter().map(|v| round_e4m3(v / s) * s).collect();
            for j in 0..n {
                let want: f32 = xq
                    .iter()
                    .zip(&deq[j * k..(j + 1) * k])
                    .map(|(a, b)| a * b)
                    .sum();
                let g = got[r * n + j];
                assert!(
                    (g - want).abs() <= 1e-4 * (1.0 + want.abs()),
                    "{r},{j}: {g} vs {want}"
                );
            }
        }
        Ok(())
    }

    #[test]
    fn e4m3_encoder_matches_the_reference_rounding() {
        let mut v = -500f32;
        while v < 500.0 {
            for x in [v, v * 1e-3, v * 1e-5] {
                let b = encode_e4m3(x);
                assert_eq!(e4m3_to_f32(b), round_e4m3(x), "{x}");
            }
            v += 0.0137;
        }
        for b in 0..=255u8 {
            let x = e4m3_to_f32(b);
            if !x.is_nan() {
                assert_eq!(e4m3_to_f32(encode_e4m3(x)), x);
            }
        }
    }
}
