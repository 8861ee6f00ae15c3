//! Device-side attention metadata and the launch of kernels/paged_attention.cu. The op itself
//! is `layers::attention::PagedAttention`, whose CPU forward is the reference.
//!
//! Work items (see the kernel's header): up to `QT` consecutive query tokens of one sequence,
//! `QT = rows per block / query heads per KV head`. Splits over KV positions are chosen so the
//! grid covers the GPU about twice when there are few items (decode at small batch), with at
//! least `MIN_PART` positions per split.

use std::sync::{Arc, Mutex};

use candle_core::{Device, Result, Tensor};

use crate::layers::attention::SeqAttn;

/// Query rows one block of the kernel holds (4 warps x rows per warp).
pub fn rows_per_block(head_dim: usize) -> usize {
    if head_dim == 256 {
        8
    } else {
        16
    }
}

/// Whether the CUDA kernel covers this shape (else the caller falls back to tensor ops).
pub fn cuda_supports(dtype: candle_core::DType, heads: usize, kv_heads: usize, d: usize) -> bool {
    use candle_core::DType::*;
    let dims = match dtype {
        BF16 | F16 => matches!(d, 64 | 128 | 256),
        F32 => matches!(d, 64 | 128),
        _ => false,
    };
    dims && kv_heads > 0 && heads.is_multiple_of(kv_heads) && heads / kv_heads <= rows_per_block(d)
}

/// Per-step tensors the CUDA kernels read, uploaded once per step and shared by every layer.
#[derive(Debug)]
pub struct DeviceAttnMeta {
    /// `[tokens]` u32: cache row of each new token.
    pub slot_mapping: Tensor,
    /// `[seqs, max_blocks]` u32, zero-padded.
    pub block_tables: Tensor,
    pub max_blocks: usize,
    pub max_context: usize,
    seqs: Arc<Vec<SeqAttn>>,
    /// Work items per tokens-per-item (one entry in practice): `[items, 4]` u32.
    items: Mutex<Vec<(usize, Tensor, usize)>>,
}

impl DeviceAttnMeta {
    pub fn new(seqs: &Arc<Vec<SeqAttn>>, slots: Vec<u32>, device: &Device) -> Result<Self> {
        let max_blocks = seqs
            .iter()
            .map(|s| s.block_table.len())
            .max()
            .unwrap_or(0)
            .max(1);
        let mut tables = vec![0u32; seqs.len().max(1) * max_blocks];
        for (i, s) in seqs.iter().enumerate() {
            tables[i * max_blocks..i * max_blocks + s.block_table.len()]
                .copy_from_slice(&s.block_table);
        }
        let n = slots.len();
        Ok(Self {
            slot_mapping: Tensor::from_vec(slots, n, device)?,
            block_tables: Tensor::from_vec(tables, (seqs.len().max(1), max_blocks), device)?,
            max_blocks,
            max_context: seqs.iter().map(|s| s.context_len).max().unwrap_or(0),
            seqs: seqs.clone(),
            items: Mutex::new(Vec::new()),
        })
    }

    /// `[items, 4]` u32 `{first row, tokens, first position, sequence}` and the item count.
    pub fn items(&self, per_item: usize) -> Result<(Tensor, usize)> {
        let mut cache = self.items.lock().expect("items lock");
        if let Some((_, t, n)) = cache.iter().find(|(q, _, _)| *q == per_item) {
            return Ok((t.clone(), *n));
        }
        let mut data = Vec::new();
        for (i, s) in self.seqs.iter().enumerate() {
            let first = s.context_len - s.query_len;
            for off in (0..s.query_len).step_by(per_item) {
                let nq = per_item.min(s.query_len - off);
                data.extend([
                    (s.query_start + off) as u32,
                    nq as u32,
                    (first + off) as u32,
                    i as u32,
                ]);
            }
        }
        let n = data.len() / 4;
        let t = Tensor::from_vec(data, (n, 4), self.slot_mapping.device())?;
        cache.push((per_item, t.clone(), n));
        Ok((t, n))
    }
}

#[cfg(feature = "cuda")]
pub(crate) use cuda::forward as cuda_forward;

#[cfg(feature = "cuda")]
mod cuda {
    use candle_core::cuda_backend::cudarc::driver::{
        sys, CudaSlice, DeviceRepr, LaunchConfig, PushKernelArg,
    };
    use candle_core::cuda_backend::{CudaDevice, CudaStorageSlice as S, WrapErr};
    use candle_core::{CudaStorage, Layout, Result, Shape, WithDType};

    use super::{rows_per_block, DeviceAttnMeta};
    use crate::ops::cuda::{alloc_out, ptx, unsupported, view, with_u32};

    /// KV positions per split at least (two 32-key tiles).
    const MIN_PART: usize = 64;
    const TK: usize = 32;

    /// Launch parameters that do not depend on the element type.
    struct Plan<'a> {
        meta: &'a DeviceAttnMeta,
        tokens: usize,
        heads: usize,
        kv_heads: usize,
        d: usize,
        block_size: usize,
        window: i32,
        /// Softmax scale (times an FP8 cache's K scale) in log2 units.
        scale_log2: f32,
        /// An FP8 cache's V scale (1 otherwise).
        v_scale: f32,
        /// `_fp8` kernels: the cache is e4m3 bytes.
        fp8: bool,
        /// Per-head sink logits (gpt-oss), already on the device.
        sinks: Option<CudaSlice<f32>>,
    }

    fn num_sms(dev: &CudaDevice) -> usize {
        dev.cuda_stream()
            .context()
            .attribute(sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT)
            .map(|n| n as usize)
            .unwrap_or(132)
    }

    #[allow(clippy::too_many_arguments)]
    pub fn forward(
        meta: &DeviceAttnMeta,
        block_size: usize,
        scale: f32,
        sliding_window: Option<usize>,
        sinks: Option<&[f32]>,
        fp8: Option<crate::kv::Fp8Scales>,
        q: &CudaStorage,
        lq: &Layout,
        k: &CudaStorage,
        lk: &Layout,
        v: &CudaStorage,
        lv: &Layout,
    ) -> Result<(CudaStorage, Shape)> {
        let (tokens, heads, d) = lq.shape().dims3()?;
        let (_, kv_heads, kd) = lk.shape().dims3()?;
        if kd != d || lk.shape() != lv.shape() || !heads.is_multiple_of(kv_heads) {
            candle_core::bail!(
                "paged attention: q {:?} vs cache {:?}",
                lq.shape(),
                lk.shape()
            );
        }
        let dev = &q.device;
        let sinks = match sinks {
            Some(s) if s.len() == heads => Some(dev.clone_htod(s)?),
            Some(s) => candle_core::bail!("paged attention: {} sinks for {heads} heads", s.len()),
            None => None,
        };
        let plan = Plan {
            meta,
            tokens,
            heads,
            kv_heads,
            d,
            block_size,
            window: sliding_window.map(|w| w as i32).unwrap_or(0),
            scale_log2: scale * fp8.map_or(1.0, |s| s.k) * std::f32::consts::LOG2_E,
            v_scale: fp8.map_or(1.0, |s| s.v),
            fp8: fp8.is_some(),
            sinks,
        };
        let dtype = candle_core::backend::BackendStorage::dtype(q);
        let out = match (&q.slice, &k.slice, &v.slice) {
            (S::BF16(q), S::U8(k), S::U8(v)) if plan.fp8 => {
                S::BF16(launch(&plan, dev, q, lq, k, lk, v, lv)?)
            }
            (S::F16(q), S::U8(k), S::U8(v)) if plan.fp8 => {
                S::F16(launch(&plan, dev, q, lq, k, lk, v, lv)?)
            }
            (S::F32(q), S::U8(k), S::U8(v)) if plan.fp8 => {
                S::F32(launch(&plan, dev, q, lq, k, lk, v, lv)?)
            }
            (S::BF16(q), S::BF16(k), S::BF16(v)) => {
                S::BF16(launch(&plan, dev, q, lq, k, lk, v, lv)?)
            }
            (S::F16(q), S::F16(k), S::F16(v)) => S::F16(launch(&plan, dev, q, lq, k, lk, v, lv)?),
            (S::F32(q), S::F32(k), S::F32(v)) => S::F32(launch(&plan, dev, q, lq, k, lk, v, lv)?),
            _ => return Err(unsupported("paged attention", dtype)),
        };
        Ok((
            CudaStorage {
                slice: out,
                device: dev.clone(),
            },
            Shape::from((tokens, heads, d)),
        ))
    }

    /// `T`: q and output; `C`: cache elements (`T`, or `u8` e4m3 bytes when `p.fp8`).
    #[allow(clippy::too_many_arguments)]
    fn launch<T: DeviceRepr + WithDType, C: DeviceRepr>(
        p: &Plan,
        dev: &CudaDevice,
        q: &CudaSlice<T>,
        lq: &Layout,
        k: &CudaSlice<C>,
        lk: &Layout,
        v: &CudaSlice<C>,
        lv: &Layout,
    ) -> Result<CudaSlice<T>> {
        let op = "paged attention";
        let elem = std::mem::size_of::<C>();
        for l in [lk, lv] {
            if !(l.start_offset() * elem).is_multiple_of(16) {
                candle_core::bail!("{op}: cache not 16-byte aligned");
            }
        }
        let (q, k, v) = (view(q, lq, op)?, view(k, lk, op)?, view(v, lv, op)?);
        let n_out = p.tokens * p.heads * p.d;
        let mut out = alloc_out::<T>(dev, n_out.max(1))?;
        if p.tokens == 0 {
            return Ok(out);
        }
        let group = p.heads / p.kv_heads;
        let per_item = (rows_per_block(p.d) / group).max(1);
        let (items, n_items) = p.meta.items(per_item)?;

        let base = n_items * p.kv_heads;
        let target = 2 * num_sms(dev);
        let max_ctx = p.meta.max_context.max(1);
        let mut splits = if base >= target {
            1
        } else {
            target.div_ceil(base).min(max_ctx.div_ceil(MIN_PART)).max(1)
        };
        let part_len = max_ctx.div_ceil(splits).div_ceil(TK) * TK;
        splits = max_ctx.div_ceil(part_len);

        let fp8 = if p.fp8 { "_fp8" } else { "" };
        let name = format!("paged_attention_{}{fp8}_d{}", T::DTYPE.as_str(), p.d);
        let f = dev
            .get_or_load_custom_func(&name, "flare_paged_attention", ptx::PAGED_ATTENTION)?
            .into_cuda_function();
        let stream = dev.cuda_stream();
        // Partials only with more than one split; the kernel ignores the pointers otherwise.
        let parts: Option<(CudaSlice<f32>, CudaSlice<f32>)> = if splits > 1 {
            // SAFETY: every split writes every row of its items (m = -inf when empty).
            unsafe {
                Some((
                    dev.alloc::<f32>(splits * n_out)?,
                    dev.alloc::<f32>(splits * p.tokens * p.heads * 2)?,
                ))
            }
        } else {
            None
        };
        let null: u64 = 0;
        let ints = [
            p.tokens as i32,
            p.heads as i32,
            p.kv_heads as i32,
            p.meta.max_blocks as i32,
            p.block_size as i32,
            p.window,
            part_len as i32,
        ];
        with_u32(&p.meta.block_tables, op, |tables| {
            with_u32(&items, op, |items| {
                let mut b = stream.launch_builder(&f);
                b.arg(&q)
                    .arg(&k)
                    .arg(&v)
                    .arg(&tables)
                    .arg(&items)
                    .arg(&mut out);
                match &parts {
                    Some((po, pml)) => b.arg(po).arg(pml),
                    None => b.arg(&null).arg(&null),
                };
                match &p.sinks {
                    Some(s) => b.arg(s),
                    None => b.arg(&null),
                };
                for x in &ints {
                    b.arg(x);
                }
                b.arg(&p.scale_log2).arg(&p.v_scale);
                let cfg = LaunchConfig {
                    grid_dim: (n_items as u32, p.kv_heads as u32, splits as u32),
                    block_dim: (128, 1, 1),
                    shared_mem_bytes: 0,
                };
                // SAFETY: argument types match kernels/paged_attention.cu; block tables and
                // positions come from the block manager and stay inside the cache.
                unsafe { b.launch(cfg) }.w()?;
                Ok(())
            })
        })?;
        if let Some((po, pml)) = &parts {
            let name = format!("attn_reduce_{}_d{}", T::DTYPE.as_str(), p.d);
            let f = dev
                .get_or_load_custom_func(&name, "flare_paged_attention", ptx::PAGED_ATTENTION)?
                .into_cuda_function();
            let mut b = stream.launch_builder(&f);
            let rows = (p.tokens * p.heads) as i32;
            let (heads32, splits32) = (p.heads as i32, splits as i32);
            b.arg(po).arg(pml);
            match &p.sinks {
                Some(s) => b.arg(s),
                None => b.arg(&null),
            };
            b.arg(&mut out).arg(&rows).arg(&heads32).arg(&splits32);
            let cfg = LaunchConfig {
                grid_dim: (rows as u32, 1, 1),
                block_dim: (p.d as u32, 1, 1),
                shared_mem_bytes: 0,
            };
            // SAFETY: argument types match kernels/paged_attention.cu.
            unsafe { b.launch(cfg) }.w()?;
        }
        Ok(out)
    }
}
