//! reshape_and_cache: writes a step's new keys and values into the paged cache at the slots
//! the slot mapping names (`u32::MAX` marks a padding token that is not written). Into an FP8
//! cache (`U8` e4m3 bytes) each element is stored as `e4m3(x / scale)`, saturating at ±448.

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, InplaceOp2, Layout, Result, Tensor};

use crate::kv::{Fp8Scales, KvLayout};

/// Slot that marks a token whose K/V are not stored (padding in a captured batch).
pub const PAD_SLOT: u32 = u32::MAX;

/// `k`, `v`: `[tokens, kv_heads, head_dim]`; caches `[slots, kv_heads, head_dim]` (or, on the
/// CPU, head-major in groups of blocks, see `kv::KvLayout`);
/// `slot_mapping`: `[tokens]` u32 on the same device; `fp8`: the scales of an FP8 cache.
pub fn reshape_and_cache(
    k: &Tensor,
    v: &Tensor,
    k_cache: &Tensor,
    v_cache: &Tensor,
    slot_mapping: &Tensor,
    fp8: Option<Fp8Scales>,
) -> Result<()> {
    let op = |fp8_scale| ReshapeAndCache {
        slot_mapping: slot_mapping.clone(),
        fp8_scale,
    };
    k_cache.inplace_op2(&k.contiguous()?, &op(fp8.map(|s| s.k)))?;
    v_cache.inplace_op2(&v.contiguous()?, &op(fp8.map(|s| s.v)))
}

/// In place on the cache (first operand); the second is the new rows.
pub struct ReshapeAndCache {
    pub slot_mapping: Tensor,
    /// The per-tensor scale of an FP8 (`U8`) cache; None: the cache has the rows' dtype.
    pub fp8_scale: Option<f32>,
}

impl ReshapeAndCache {
    /// `(cache start, new start, tokens, elements per row, cache rows)`; a slot-major cache
    /// (`[slots, ..]` as the new rows); see [`ReshapeAndCache::head_major`] for the other.
    fn dims(&self, lc: &Layout, ln: &Layout) -> Result<(usize, usize, usize, usize, usize)> {
        let (Some((c0, c1)), Some((n0, n1))) = (lc.contiguous_offsets(), ln.contiguous_offsets())
        else {
            candle_core::bail!("reshape-and-cache: cache and new rows must be contiguous");
        };
        let cd = lc.dims();
        let nd = ln.dims();
        if cd.len() < 2 || (cd[1..] != nd[1..] && self.head_major(lc, ln).is_none()) {
            candle_core::bail!("reshape-and-cache: cache {cd:?} vs new rows {nd:?}");
        }
        let t = nd[0];
        if self.slot_mapping.elem_count() != t {
            candle_core::bail!(
                "reshape-and-cache: {} slots for {t} tokens",
                self.slot_mapping.elem_count()
            );
        }
        let row = (n1 - n0) / t.max(1);
        Ok((c0, n0, t, row, (c1 - c0) / row.max(1)))
    }

    /// The layout of a CPU cache (head-major, `kv::KvLayout`) for new rows
    /// `[tokens, kv_heads, head_dim]`; None for any other pair.
    fn head_major(&self, lc: &Layout, ln: &Layout) -> Option<KvLayout> {
        match (lc.dims(), ln.dims()) {
            (&[h, _, _, d] | &[_, h, _, _, d], &[_, nh, nd]) if (h, d) == (nh, nd) => {
                KvLayout::of(lc.dims()).ok()
            }
            _ => None,
        }
    }
}

/// [`reference`] into a head-major cache: each head's row of a slot to its own place.
fn reference_head_major<T: Copy>(
    cache: &mut [T],
    new: &[T],
    slots: &[u32],
    layout: KvLayout,
    d: usize,
) -> Result<()> {
    let heads = layout.kv_heads();
    let rows = cache.len() / d;
    for (t, &slot) in slots.iter().enumerate() {
        if slot == PAD_SLOT {
            continue;
        }
        for h in 0..heads {
            let r = layout.row(slot as usize, h);
            if r >= rows {
                candle_core::bail!("reshape-and-cache: slot {slot} outside a cache of {rows} rows");
            }
            let src = (t * heads + h) * d;
            cache[r * d..(r + 1) * d].copy_from_slice(&new[src..src + d]);
        }
    }
    Ok(())
}

fn reference<T: Copy>(cache: &mut [T], new: &[T], slots: &[u32], row: usize) -> Result<()> {
    let rows = cache.len() / row;
    for (t, &slot) in slots.iter().enumerate() {
        if slot == PAD_SLOT {
            continue;
        }
        let s = slot as usize;
        if s >= rows {
            candle_core::bail!("reshape-and-cache: slot {s} outside a cache of {rows}");
        }
        cache[s * row..(s + 1) * row].copy_from_slice(&new[t * row..(t + 1) * row]);
    }
    Ok(())
}

impl InplaceOp2 for ReshapeAndCache {
    fn name(&self) -> &'static str {
        "reshape-and-cache"
    }

    fn cpu_fwd(
        &self,
        cache: &mut CpuStorage,
        lc: &Layout,
        new: &CpuStorage,
        ln: &Layout,
    ) -> Result<()> {
        let (c0, n0, t, row, rows) = self.dims(lc, ln)?;
        let slots = self
            .slot_mapping
            .to_device(&candle_core::Device::Cpu)?
            .flatten_all()?
            .to_vec1::<u32>()?;
        let (cr, nr) = (c0..c0 + rows * row, n0..n0 + t * row);
        let layout = self.head_major(lc, ln);
        let d = ln.dims()[ln.dims().len() - 1];
        fn write<T: Copy>(
            c: &mut [T],
            n: &[T],
            s: &[u32],
            l: Option<KvLayout>,
            row: usize,
            d: usize,
        ) -> Result<()> {
            match l {
                Some(l) => reference_head_major(c, n, s, l, d),
                None => reference(c, n, s, row),
            }
        }
        if let (Some(scale), CpuStorage::U8(c)) = (self.fp8_scale, &mut *cache) {
            let rows_f32: Vec<f32> = match new {
                CpuStorage::F32(n) => n[nr].to_vec(),
                CpuStorage::BF16(n) => n[nr].iter().map(|x| x.to_f32()).collect(),
                CpuStorage::F16(n) => n[nr].iter().map(|x| x.to_f32()).collect(),
                n => candle_core::bail!("reshape-and-cache: fp8 from {:?}", n.dtype()),
            };
            let mut bytes = Vec::with_capacity(rows_f32.len());
            crate::quant::fp8::encode_e4m3_scaled(&rows_f32, scale, &mut bytes);
            return write(&mut c[cr], &bytes, &slots, layout, row, d);
        }
        match (cache, new) {
            (CpuStorage::F32(c), CpuStorage::F32(n)) => {
                write(&mut c[cr], &n[nr], &slots, layout, row, d)
            }
            (CpuStorage::BF16(c), CpuStorage::BF16(n)) => {
                write(&mut c[cr], &n[nr], &slots, layout, row, d)
            }
            (CpuStorage::F16(c), CpuStorage::F16(n)) => {
                write(&mut c[cr], &n[nr], &slots, layout, row, d)
            }
            (c, _) => candle_core::bail!("reshape-and-cache: unsupported dtype {:?}", c.dtype()),
        }
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        cache: &mut candle_core::CudaStorage,
        lc: &Layout,
        new: &candle_core::CudaStorage,
        ln: &Layout,
    ) -> Result<()> {
        use candle_core::cuda_backend::cudarc::driver::{CudaSlice, DeviceRepr, PushKernelArg};
        use candle_core::cuda_backend::{CudaDevice, CudaStorageSlice as S, WrapErr};
        use candle_core::WithDType;

        use super::cuda::{function, grid, ptx, unsupported, with_u32};

        let (c0, n0, t, row, rows) = self.dims(lc, ln)?;
        if self.head_major(lc, ln).is_some() {
            candle_core::bail!("reshape-and-cache: a head-major cache is the CPU's layout");
        }
        if t == 0 {
            return Ok(());
        }
        type Ranges = (std::ops::Range<usize>, std::ops::Range<usize>);
        fn go<T: DeviceRepr + WithDType>(
            op: &ReshapeAndCache,
            dev: &CudaDevice,
            cache: &mut CudaSlice<T>,
            new: &CudaSlice<T>,
            (cr, nr): Ranges,
            t: usize,
            row: usize,
        ) -> Result<()> {
            let f = function::<T>(
                dev,
                "flare_reshape_and_cache",
                ptx::RESHAPE_AND_CACHE,
                "reshape_and_cache",
            )?;
            let mut cache = cache.slice_mut(cr);
            let new = new.slice(nr);
            with_u32(&op.slot_mapping, "reshape-and-cache", |slots| {
                let stream = dev.cuda_stream();
                let mut b = stream.launch_builder(&f);
                let row32 = row as i32;
                b.arg(&new).arg(&mut cache).arg(&slots).arg(&row32);
                // SAFETY: argument types match kernels/reshape_and_cache.cu; slots are
                // checked against the cache size by the block manager that hands them out.
                unsafe { b.launch(grid(t, 128)) }.w()?;
                Ok(())
            })
        }
        /// New rows of `T` into an FP8 cache: `reshape_and_cache_fp8_{T}`.
        #[allow(clippy::too_many_arguments)]
        fn go_fp8<T: DeviceRepr + WithDType>(
            op: &ReshapeAndCache,
            dev: &CudaDevice,
            cache: &mut CudaSlice<u8>,
            new: &CudaSlice<T>,
            (cr, nr): Ranges,
            t: usize,
            row: usize,
            scale: f32,
        ) -> Result<()> {
            let f = function::<T>(
                dev,
                "flare_reshape_and_cache",
                ptx::RESHAPE_AND_CACHE,
                "reshape_and_cache_fp8",
            )?;
            let mut cache = cache.slice_mut(cr);
            let new = new.slice(nr);
            with_u32(&op.slot_mapping, "reshape-and-cache", |slots| {
                let stream = dev.cuda_stream();
                let mut b = stream.launch_builder(&f);
                let (row32, inv) = (row as i32, 1.0 / scale);
                b.arg(&new)
                    .arg(&mut cache)
                    .arg(&slots)
                    .arg(&row32)
                    .arg(&inv);
                // SAFETY: argument types match kernels/reshape_and_cache.cu (see `go`).
                unsafe { b.launch(grid(t, 128)) }.w()?;
                Ok(())
            })
        }
        let dtype = candle_core::backend::BackendStorage::dtype(&*cache);
        let dev = cache.device.clone();
        let ranges = (c0..c0 + rows * row, n0..n0 + t * row);
        if let (Some(scale), S::U8(c)) = (self.fp8_scale, &mut cache.slice) {
            return match &new.slice {
                S::BF16(n) => go_fp8(self, &dev, c, n, ranges, t, row, scale),
                S::F16(n) => go_fp8(self, &dev, c, n, ranges, t, row, scale),
                S::F32(n) => go_fp8(self, &dev, c, n, ranges, t, row, scale),
                _ => Err(unsupported("reshape-and-cache fp8", dtype)),
            };
        }
        match (&mut cache.slice, &new.slice) {
            (S::BF16(c), S::BF16(n)) => go(self, &dev, c, n, ranges, t, row),
            (S::F16(c), S::F16(n)) => go(self, &dev, c, n, ranges, t, row),
            (S::F32(c), S::F32(n)) => go(self, &dev, c, n, ranges, t, row),
            _ => Err(unsupported("reshape-and-cache", dtype)),
        }
    }
}
