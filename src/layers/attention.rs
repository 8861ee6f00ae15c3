//! Attention over a paged KV cache for a ragged batch (no padding between sequences).
//!
//! Each sequence contributes `query_len` new tokens at positions
//! `context_len - query_len .. context_len` and attends causally to all `context_len`
//! tokens, which live in the cache at the slots its block table names. The CPU kernel here
//! is the reference that CUDA kernels are checked against.

use std::sync::Arc;

use candle_core::{
    backend::BackendStorage, CpuStorage, CustomOp3, DType, Device, Layout, Result, Shape, Tensor,
};
use half::{bf16, f16};

use crate::cpu::attention as cpu_attn;
use crate::kv::{Fp8Scales, KvLayout};
use crate::ops::paged_attention::{cuda_supports, DeviceAttnMeta};

mod tiled;

/// One sequence's part of a step.
#[derive(Debug, Clone, PartialEq)]
pub struct SeqAttn {
    /// Row of this sequence's first new token in the flattened batch.
    pub query_start: usize,
    pub query_len: usize,
    /// Tokens in context after this step: cached ones plus the new ones.
    pub context_len: usize,
    pub block_table: Vec<u32>,
    /// Tokens of the sequence's prompt, whatever part of it is computed yet (longrope chooses
    /// its factors by it, see `layers::rope`).
    pub prompt_len: usize,
}

/// Per-step metadata shared by every layer.
#[derive(Debug, Clone)]
pub struct AttnMetadata {
    pub seqs: Arc<Vec<SeqAttn>>,
    pub block_size: usize,
    /// `(first token row, first slot, length)`: new tokens whose slots are consecutive.
    slot_runs: Vec<(usize, usize, usize)>,
    /// Position of every new token, `[num_tokens]` u32.
    pub positions: Tensor,
    pub num_tokens: usize,
    /// Slot mapping, block tables and work items on the GPU (None on the CPU).
    device_meta: Option<Arc<DeviceAttnMeta>>,
    /// `[num_tokens]` u32 slots of the new tokens on the CPU (None elsewhere): built once per
    /// step for every layer's write into a head-major cache.
    cpu_slots: Option<Tensor>,
}

impl AttnMetadata {
    pub fn new(seqs: Vec<SeqAttn>, block_size: usize, device: &Device) -> Result<Self> {
        let num_tokens: usize = seqs.iter().map(|s| s.query_len).sum();
        let mut positions = Vec::with_capacity(num_tokens);
        let mut slot_runs: Vec<(usize, usize, usize)> = Vec::new();
        let mut slots = Vec::with_capacity(num_tokens);
        let mut expected_row = 0;
        for s in &seqs {
            if s.query_start != expected_row || s.query_len > s.context_len {
                candle_core::bail!("inconsistent sequence layout in batch: {s:?}");
            }
            expected_row += s.query_len;
            if s.block_table.len() * block_size < s.context_len {
                candle_core::bail!(
                    "block table of {} blocks cannot hold {} tokens",
                    s.block_table.len(),
                    s.context_len
                );
            }
            let first_pos = s.context_len - s.query_len;
            for i in 0..s.query_len {
                let pos = first_pos + i;
                positions.push(pos as u32);
                let slot = s.block_table[pos / block_size] as usize * block_size + pos % block_size;
                let row = s.query_start + i;
                slots.push(slot as u32);
                match slot_runs.last_mut() {
                    Some((r0, s0, n)) if *r0 + *n == row && *s0 + *n == slot => *n += 1,
                    _ => slot_runs.push((row, slot, 1)),
                }
            }
        }
        let seqs = Arc::new(seqs);
        let (device_meta, cpu_slots) = match device {
            Device::Cpu => (None, Some(Tensor::from_vec(slots, num_tokens, device)?)),
            _ => (
                Some(Arc::new(DeviceAttnMeta::new(&seqs, slots, device)?)),
                None,
            ),
        };
        Ok(Self {
            positions: Tensor::from_vec(positions, num_tokens, device)?,
            seqs,
            block_size,
            slot_runs,
            num_tokens,
            device_meta,
            cpu_slots,
        })
    }

    /// `[num_tokens]` u32 cache rows of the new tokens, on the GPU (None on the CPU).
    pub fn slot_mapping(&self) -> Option<&Tensor> {
        self.device_meta.as_ref().map(|m| &m.slot_mapping)
    }

    /// Writes new keys and values (`[num_tokens, kv_heads, head_dim]`) into their slots;
    /// into an FP8 cache (`fp8` scales, `U8` tensors) as e4m3 bytes of `x / scale`.
    pub fn write_kv(
        &self,
        k: &Tensor,
        v: &Tensor,
        k_cache: &Tensor,
        v_cache: &Tensor,
        fp8: Option<Fp8Scales>,
    ) -> Result<()> {
        let head_major = matches!(KvLayout::of(k_cache.dims()), Ok(KvLayout::HeadMajor { .. }));
        if let (true, Some(slots)) = (head_major, &self.cpu_slots) {
            // The CPU's head-major cache (`kv::KvLayout`): each head's row of a slot goes to
            // its own place, which runs of whole slots (below) cannot express.
            let (k, v) = match fp8 {
                Some(_) => (k.clone(), v.clone()),
                None => (k.to_dtype(k_cache.dtype())?, v.to_dtype(v_cache.dtype())?),
            };
            return crate::ops::kv_write::reshape_and_cache(&k, &v, k_cache, v_cache, slots, fp8);
        }
        let (k, v) = match fp8 {
            Some(s) => (encode_fp8(k, s.k)?, encode_fp8(v, s.v)?),
            // A cache narrower than the model (`--kv-cache-dtype fp16`) rounds on the way in.
            None => (k.to_dtype(k_cache.dtype())?, v.to_dtype(v_cache.dtype())?),
        };
        for &(row, slot, n) in &self.slot_runs {
            k_cache.slice_set(&k.narrow(0, row, n)?.contiguous()?, 0, slot)?;
            v_cache.slice_set(&v.narrow(0, row, n)?.contiguous()?, 0, slot)?;
        }
        Ok(())
    }
}

/// `x` (any float dtype, on the CPU) as the e4m3 bytes of `x / scale`, same shape, `U8`.
fn encode_fp8(x: &Tensor, scale: f32) -> Result<Tensor> {
    let xs = x.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
    let mut bytes = Vec::with_capacity(xs.len());
    crate::quant::fp8::encode_e4m3_scaled(&xs, scale, &mut bytes);
    Tensor::from_vec(bytes, x.shape(), x.device())
}

/// `q: [num_tokens, heads, head_dim]` against the caches `[slots, kv_heads, head_dim]` (on the
/// CPU head-major in groups of blocks, see `kv::KvLayout`);
/// returns `[num_tokens, heads, head_dim]` in q's dtype.
pub fn paged_attention(
    q: &Tensor,
    k_cache: &Tensor,
    v_cache: &Tensor,
    meta: &AttnMetadata,
    scale: f32,
    sliding_window: Option<usize>,
) -> Result<Tensor> {
    paged_attention_with_sinks(q, k_cache, v_cache, meta, scale, sliding_window, None)
}

/// [`paged_attention`] where `sinks[h]`, when given, is one more logit in head `h`'s softmax
/// that has no value (gpt-oss): probability mass the head may spend on nothing.
pub fn paged_attention_with_sinks(
    q: &Tensor,
    k_cache: &Tensor,
    v_cache: &Tensor,
    meta: &AttnMetadata,
    scale: f32,
    sliding_window: Option<usize>,
    sinks: Option<&[f32]>,
) -> Result<Tensor> {
    paged_attention_kv(
        q,
        k_cache,
        v_cache,
        meta,
        scale,
        sliding_window,
        sinks,
        None,
    )
}

/// [`paged_attention_with_sinks`] over a cache that may be FP8: with `fp8` scales the caches
/// are `U8` e4m3 bytes, read back as `byte * scale` (the scales fold into q and the output).
#[allow(clippy::too_many_arguments)]
pub fn paged_attention_kv(
    q: &Tensor,
    k_cache: &Tensor,
    v_cache: &Tensor,
    meta: &AttnMetadata,
    scale: f32,
    sliding_window: Option<usize>,
    sinks: Option<&[f32]>,
    fp8: Option<Fp8Scales>,
) -> Result<Tensor> {
    if fp8.is_some() != (k_cache.dtype() == DType::U8) {
        candle_core::bail!(
            "paged attention: cache dtype {:?} with fp8 scales {fp8:?}",
            k_cache.dtype()
        );
    }
    let op = PagedAttention {
        meta: meta.clone(),
        scale,
        sliding_window,
        sinks: sinks.map(<[f32]>::to_vec),
        fp8,
    };
    let (_, heads, d) = q.dims3()?;
    let kv_heads = k_cache.dim(1)?;
    // The CUDA kernel has no sinks yet: those models take the tensor-op path there.
    let kernel = q.device().is_cpu()
        || (q.device().is_cuda()
            && sinks.is_none()
            && cuda_supports(q.dtype(), heads, kv_heads, d));
    if kernel {
        q.contiguous()?.apply_op3_no_bwd(k_cache, v_cache, &op)
    } else if fp8.is_some() {
        // Never a silent cast: the stock-op path would read the bytes as numbers.
        candle_core::bail!(
            "--kv-cache-dtype fp8 is not supported by the tensor-op attention path (CUDA with \
             attention sinks, or q {:?} heads {heads}/{kv_heads} head_dim {d})",
            q.dtype()
        )
    } else {
        paged_attention_tensor_ops(q, k_cache, v_cache, meta, scale, sliding_window, sinks)
    }
}

/// Per-thread buffers of the scalar CPU kernel: scaled queries, scores, output accumulators.
type Scratch = (Vec<f32>, Vec<f32>, Vec<f32>);

struct PagedAttention {
    meta: AttnMetadata,
    scale: f32,
    sliding_window: Option<usize>,
    sinks: Option<Vec<f32>>,
    /// Per-tensor scales of an FP8 (`U8` e4m3 bytes) cache.
    fp8: Option<Fp8Scales>,
}

trait Element: Copy + Send + Sync {
    /// What the SIMD kernels read this type as (u8: FP8 e4m3 bytes).
    type Lane: cpu_attn::CacheLane;
    fn to_f32(self) -> f32;
    fn from_f32(x: f32) -> Self;
    /// The slice as SIMD cache lanes, when the kernels read this type.
    fn as_lanes(s: &[Self]) -> Option<&[Self::Lane]>;
}
impl Element for f32 {
    type Lane = f32;
    fn to_f32(self) -> f32 {
        self
    }
    fn from_f32(x: f32) -> Self {
        x
    }
    fn as_lanes(s: &[Self]) -> Option<&[f32]> {
        Some(s)
    }
}
impl Element for bf16 {
    type Lane = bf16;
    fn to_f32(self) -> f32 {
        bf16::to_f32(self)
    }
    fn from_f32(x: f32) -> Self {
        bf16::from_f32(x)
    }
    fn as_lanes(s: &[Self]) -> Option<&[bf16]> {
        Some(s)
    }
}
impl Element for f16 {
    type Lane = f16;
    fn to_f32(self) -> f32 {
        f16::to_f32(self)
    }
    fn from_f32(x: f32) -> Self {
        f16::from_f32(x)
    }
    fn as_lanes(s: &[Self]) -> Option<&[f16]> {
        Some(s)
    }
}

/// An FP8 cache byte: its e4m3 value (the per-tensor scale is applied by the caller).
impl Element for u8 {
    type Lane = cpu_attn::E4m3;
    fn as_lanes(s: &[Self]) -> Option<&[cpu_attn::E4m3]> {
        Some(cpu_attn::E4m3::lanes(s))
    }
    #[inline(always)]
    fn to_f32(self) -> f32 {
        crate::quant::fp8::E4M3_TABLE[self as usize]
    }
    fn from_f32(x: f32) -> Self {
        crate::quant::fp8::f32_to_e4m3(x)
    }
}

/// `Σ a[i]·b[i]` over 32 lanes (four independent 8-wide fused multiply-add chains, so the
/// loop is not bound by add latency) summed in a fixed order at the end: the result depends
/// only on the two rows, never on the batch or the thread.
#[inline(always)]
fn dot<T: Element>(a: &[f32], b: &[T]) -> f32 {
    let mut lanes = [0f32; 32];
    let (ac, at) = a.as_chunks::<32>();
    let (bc, bt) = b.as_chunks::<32>();
    for (x, y) in ac.iter().zip(bc) {
        for l in 0..32 {
            lanes[l] = x[l].mul_add(y[l].to_f32(), lanes[l]);
        }
    }
    let mut tail = 0f32;
    for (x, y) in at.iter().zip(bt) {
        tail = x.mul_add(y.to_f32(), tail);
    }
    let mut w = [0f32; 8];
    for l in 0..8 {
        w[l] = (lanes[l] + lanes[l + 16]) + (lanes[l + 8] + lanes[l + 24]);
    }
    ((w[0] + w[4]) + (w[2] + w[6])) + ((w[1] + w[5]) + (w[3] + w[7])) + tail
}

/// Calls `f(j, row)` for positions `lo..=hi` in order (`j` counts from 0), `row` being the
/// cache row of KV head `kvh` at that position; walks the block table block by block instead
/// of dividing per position.
#[inline(always)]
fn for_rows(
    table: &[u32],
    layout: KvLayout,
    bs: usize,
    kvh: usize,
    (lo, hi): (usize, usize),
    mut f: impl FnMut(usize, usize),
) {
    let mut j = 0;
    let mut p = lo;
    while p <= hi {
        let (blk, off) = (p / bs, p % bs);
        let end = (hi - p).min(bs - 1 - off);
        let (first, step) = layout.block_rows(table[blk] as usize, bs, kvh);
        let base = first + off * step;
        for i in 0..=end {
            f(j + i, base + i * step);
        }
        j += end + 1;
        p += end + 1;
    }
}

impl PagedAttention {
    /// f32 caches on a machine with AVX2 take the tiled SIMD path (`tiled.rs`). Otherwise (the
    /// scalar reference, bf16/f16/FP8 caches): one work item per (query row, KV head), in
    /// parallel over the rayon pool: the item computes the outputs of the query heads sharing
    /// that KV head, reading each cached key and value row once for all of them. Every output
    /// comes from one item, whose arithmetic depends only on its own query and context, so
    /// results do not depend on the batch or the thread count.
    ///
    /// An FP8 cache's K scale multiplies q with the softmax scale and its V scale multiplies
    /// the output, so each cached element is decoded on its own (SIMD: bit moves into f16;
    /// here: one table lookup).
    fn run<T: Element, C: Element>(
        &self,
        q: &[T],
        qd: (usize, usize, usize),
        k: &[C],
        v: &[C],
        layout: KvLayout,
    ) -> Vec<T> {
        use rayon::prelude::*;
        let (num_tokens, heads, d) = qd;
        let kv_heads = layout.kv_heads();
        let group = heads / kv_heads;
        let bs = self.meta.block_size;
        let (q_scale, v_scale) = match self.fp8 {
            Some(s) => (self.scale * s.k, s.v),
            None => (self.scale, 1.0),
        };
        // Caches with a head dimension of whole vectors take the SIMD kernels.
        if let (Some(kf), Some(vf)) = (C::as_lanes(k), C::as_lanes(v)) {
            if cpu_attn::available() && cpu_attn::supports(d) {
                return self.run_tiled(q, qd, (kf, vf), layout, (q_scale, v_scale));
            }
        }
        let mut out = vec![T::from_f32(0.0); num_tokens * heads * d];
        // Sequence of every row.
        let mut seq_of = vec![0usize; num_tokens];
        for (i, s) in self.meta.seqs.iter().enumerate() {
            seq_of[s.query_start..s.query_start + s.query_len].fill(i);
        }
        let work = |scratch: &mut Scratch, (item, o): (usize, &mut [T])| {
            let (row, kvh) = (item / kv_heads, item % kv_heads);
            let s = &self.meta.seqs[seq_of[row]];
            let pos = s.context_len - s.query_len + (row - s.query_start);
            let lo = match self.sliding_window {
                Some(w) if pos + 1 > w => pos + 1 - w,
                _ => 0,
            };
            let n = pos + 1 - lo;
            let (qf, scores, acc) = scratch;
            qf.clear();
            for g in 0..group {
                let qo = (row * heads + kvh * group + g) * d;
                qf.extend(q[qo..qo + d].iter().map(|y| y.to_f32() * q_scale));
            }
            scores.clear();
            scores.resize(group * n, 0.0);
            for_rows(&s.block_table, layout, bs, kvh, (lo, pos), |j, row| {
                let ko = row * d;
                let kr = &k[ko..ko + d];
                for g in 0..group {
                    scores[g * n + j] = dot(&qf[g * d..(g + 1) * d], kr);
                }
            });
            acc.clear();
            acc.resize(group * d, 0.0);
            for g in 0..group {
                let h = kvh * group + g;
                let sc = &mut scores[g * n..(g + 1) * n];
                let sink = self.sinks.as_ref().map(|s| s[h]);
                let max = sc
                    .iter()
                    .fold(sink.unwrap_or(f32::NEG_INFINITY), |a, &b| a.max(b));
                let mut sum = sink.map_or(0.0, |s| (s - max).exp());
                for x in sc.iter_mut() {
                    *x = (*x - max).exp();
                    sum += *x;
                }
                let inv = 1.0 / sum;
                for x in sc.iter_mut() {
                    *x *= inv;
                }
            }
            for_rows(&s.block_table, layout, bs, kvh, (lo, pos), |j, row| {
                let vo = row * d;
                let vr = &v[vo..vo + d];
                for g in 0..group {
                    let w = scores[g * n + j];
                    for (a, b) in acc[g * d..(g + 1) * d].iter_mut().zip(vr) {
                        *a = w.mul_add(b.to_f32(), *a);
                    }
                }
            });
            for (o, a) in o.iter_mut().zip(acc.iter()) {
                *o = T::from_f32(*a * v_scale);
            }
        };
        let init = || (Vec::new(), Vec::new(), Vec::new());
        // Small steps on the calling thread (no fork/join cost); same arithmetic either way.
        if num_tokens
            * heads
            * self
                .meta
                .seqs
                .iter()
                .map(|s| s.context_len)
                .max()
                .unwrap_or(0)
            < 1 << 12
        {
            let mut scratch = init();
            out.chunks_mut(group * d)
                .enumerate()
                .for_each(|x| work(&mut scratch, x));
        } else {
            out.par_chunks_mut(group * d)
                .enumerate()
                .for_each_init(init, work);
        }
        out
    }
}

impl CustomOp3 for PagedAttention {
    fn name(&self) -> &'static str {
        "paged-attention"
    }

    fn cpu_fwd(
        &self,
        q: &CpuStorage,
        lq: &Layout,
        k: &CpuStorage,
        lk: &Layout,
        v: &CpuStorage,
        lv: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (t, h, d) = lq.shape().dims3()?;
        let layout = KvLayout::of(lk.dims())?;
        let (kvh, kd) = (layout.kv_heads(), lk.dims()[lk.dims().len() - 1]);
        let block_ok = match layout {
            KvLayout::HeadMajor { block_size, .. } => block_size == self.meta.block_size,
            KvLayout::SlotMajor { .. } => true,
        };
        if kd != d || h % kvh != 0 || lk.shape() != lv.shape() || !block_ok {
            candle_core::bail!(
                "paged attention: q {:?} vs cache {:?}",
                lq.shape(),
                lk.shape()
            );
        }
        let (Some((q0, q1)), Some((k0, k1)), Some((v0, v1))) = (
            lq.contiguous_offsets(),
            lk.contiguous_offsets(),
            lv.contiguous_offsets(),
        ) else {
            candle_core::bail!("paged attention needs contiguous inputs");
        };
        let dims = (t, h, d);
        // q's dtype is the model's; the cache may be narrower (`--kv-cache-dtype`).
        macro_rules! with_cache {
            ($q:expr, $wrap:path) => {
                match (k, v) {
                    (CpuStorage::F32(k), CpuStorage::F32(v)) => {
                        $wrap(self.run($q, dims, &k[k0..k1], &v[v0..v1], layout))
                    }
                    (CpuStorage::F16(k), CpuStorage::F16(v)) => {
                        $wrap(self.run($q, dims, &k[k0..k1], &v[v0..v1], layout))
                    }
                    (CpuStorage::BF16(k), CpuStorage::BF16(v)) => {
                        $wrap(self.run($q, dims, &k[k0..k1], &v[v0..v1], layout))
                    }
                    (CpuStorage::U8(k), CpuStorage::U8(v)) if self.fp8.is_some() => {
                        $wrap(self.run($q, dims, &k[k0..k1], &v[v0..v1], layout))
                    }
                    _ => candle_core::bail!(
                        "paged attention: unsupported cache dtype {:?}",
                        k.dtype()
                    ),
                }
            };
        }
        let out = match q {
            CpuStorage::F32(q) => with_cache!(&q[q0..q1], CpuStorage::F32),
            CpuStorage::BF16(q) => with_cache!(&q[q0..q1], CpuStorage::BF16),
            CpuStorage::F16(q) => with_cache!(&q[q0..q1], CpuStorage::F16),
            _ => candle_core::bail!("paged attention: unsupported dtype {:?}", q.dtype()),
        };
        Ok((out, Shape::from((t, h, d))))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        q: &candle_core::CudaStorage,
        lq: &Layout,
        k: &candle_core::CudaStorage,
        lk: &Layout,
        v: &candle_core::CudaStorage,
        lv: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        let Some(dm) = &self.meta.device_meta else {
            candle_core::bail!("paged attention: metadata was built for the CPU");
        };
        crate::ops::paged_attention::cuda_forward(
            dm,
            self.meta.block_size,
            self.scale,
            self.sliding_window,
            self.sinks.as_deref(),
            self.fp8,
            q,
            lq,
            k,
            lk,
            v,
            lv,
        )
    }
}

/// The same computation with stock tensor ops (gather + matmul + softmax): runs on every
/// device, and is a second, independent implementation for the tests.
pub fn paged_attention_tensor_ops(
    q: &Tensor,
    k_cache: &Tensor,
    v_cache: &Tensor,
    meta: &AttnMetadata,
    scale: f32,
    sliding_window: Option<usize>,
    sinks: Option<&[f32]>,
) -> Result<Tensor> {
    let (_, heads, d) = q.dims3()?;
    let layout = KvLayout::of(k_cache.dims())?;
    let kv_heads = layout.kv_heads();
    let group = heads / kv_heads;
    // `[kv_heads, group, 1, 1]`, head `kvh * group + g` at `[kvh, g]` as the query heads are.
    let sinks = sinks
        .map(|s| Tensor::from_slice(s, (kv_heads, group, 1, 1), q.device()))
        .transpose()?;
    let bs = meta.block_size;
    let mut outs = Vec::with_capacity(meta.seqs.len());
    for s in meta.seqs.iter() {
        let (n, ctx) = (s.query_len, s.context_len);
        // Cache rows of every (KV head, position), head-major.
        let rows: Vec<u32> = (0..kv_heads)
            .flat_map(|h| {
                (0..ctx).map(move |p| {
                    let slot = s.block_table[p / bs] as usize * bs + p % bs;
                    layout.row(slot, h) as u32
                })
            })
            .collect();
        let idx = Tensor::from_vec(rows, kv_heads * ctx, q.device())?;
        // [kv_heads, ctx, d]
        let gather = |cache: &Tensor| -> Result<Tensor> {
            cache
                .reshape((cache.elem_count() / d, d))?
                .index_select(&idx, 0)?
                .reshape((kv_heads, ctx, d))?
                .to_dtype(DType::F32)
        };
        let (k, v) = (gather(k_cache)?, gather(v_cache)?);
        // [kv_heads, group * n, d]: query heads of one kv head are adjacent.
        let qs = q
            .narrow(0, s.query_start, n)?
            .transpose(0, 1)?
            .to_dtype(DType::F32)?;
        let qs = (qs.contiguous()?.reshape((kv_heads, group * n, d))? * scale as f64)?;
        let scores = qs.matmul(&k.t()?)?.reshape((kv_heads, group, n, ctx))?;
        let first = ctx - n;
        let mask: Vec<f32> = (0..n)
            .flat_map(|i| {
                let pos = first + i;
                (0..ctx).map(move |j| {
                    let too_old = sliding_window.is_some_and(|w| j + w <= pos);
                    if j > pos || too_old {
                        f32::NEG_INFINITY
                    } else {
                        0.0
                    }
                })
            })
            .collect();
        let mask = Tensor::from_vec(mask, (n, ctx), q.device())?;
        let scores = scores.broadcast_add(&mask)?;
        let probs = match &sinks {
            Some(sk) => {
                let sk = sk.broadcast_as((kv_heads, group, n, 1))?.contiguous()?;
                let p = candle_nn::ops::softmax_last_dim(&Tensor::cat(&[&scores, &sk], 3)?)?;
                p.narrow(3, 0, ctx)?
            }
            None => candle_nn::ops::softmax_last_dim(&scores)?,
        };
        let o = probs.reshape((kv_heads, group * n, ctx))?.matmul(&v)?;
        let o = o
            .reshape((heads, n, d))?
            .transpose(0, 1)?
            .to_dtype(q.dtype())?;
        outs.push(o);
    }
    Tensor::cat(&outs, 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The CPU kernel and the tensor-op version agree on a ragged batch (a decode, a chunk
    /// after cached context, a fresh prompt) over scattered blocks, with and without a window.
    #[test]
    fn cpu_kernel_matches_tensor_ops_with_and_without_window() {
        let dev = Device::Cpu;
        let (bs, kvh, heads, d) = (4, 2, 6, 8);
        let k_cache = Tensor::randn(0f32, 1.0, (16 * bs, kvh, d), &dev).unwrap();
        let v_cache = Tensor::randn(0f32, 1.0, (16 * bs, kvh, d), &dev).unwrap();
        let seqs = vec![
            SeqAttn {
                query_start: 0,
                query_len: 1,
                context_len: 9,
                block_table: vec![7, 2, 11],
                prompt_len: 0,
            },
            SeqAttn {
                query_start: 1,
                query_len: 5,
                context_len: 11,
                block_table: vec![0, 15, 3],
                prompt_len: 0,
            },
            SeqAttn {
                query_start: 6,
                query_len: 7,
                context_len: 7,
                block_table: vec![9, 4],
                prompt_len: 0,
            },
        ];
        let meta = AttnMetadata::new(seqs, bs, &dev).unwrap();
        let q = Tensor::randn(0f32, 1.0, (13, heads, d), &dev).unwrap();
        for window in [None, Some(3)] {
            let a = paged_attention(&q, &k_cache, &v_cache, &meta, 0.35, window).unwrap();
            let b = paged_attention_tensor_ops(&q, &k_cache, &v_cache, &meta, 0.35, window, None)
                .unwrap();
            let diff = (a - b)
                .unwrap()
                .abs()
                .unwrap()
                .max_all()
                .unwrap()
                .to_scalar::<f32>()
                .unwrap();
            assert!(diff < 1e-5, "window {window:?}: {diff}");
        }
        // The window changes the result for queries with more than 3 earlier positions.
        let full = paged_attention(&q, &k_cache, &v_cache, &meta, 0.35, None).unwrap();
        let windowed = paged_attention(&q, &k_cache, &v_cache, &meta, 0.35, Some(3)).unwrap();
        let diff = (full - windowed)
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert!(diff > 1e-3);
    }

    /// The CPU's head-major cache (`kv::KvLayout`), as one group of blocks and in groups of
    /// 16 (a sequence's blocks in several), gives the same bits as a slot-major cache
    /// holding the same rows, on the SIMD path (f32 and f16, a context of several chunks) and
    /// the scalar one (a head dimension of 12), and `write_kv` puts every head's row of a
    /// slot where the kernels read it.
    #[test]
    fn head_major_cache_gives_the_bits_of_slot_major() {
        let dev = Device::Cpu;
        let cases = [
            (DType::F32, 64, 48),
            (DType::F16, 64, 48),
            (DType::F32, 12, 48),
        ];
        let grouped = [
            (DType::F32, 64, 16),
            (DType::F16, 64, 16),
            (DType::F32, 12, 16),
        ];
        for (dtype, d, group) in cases.into_iter().chain(grouped) {
            let (bs, kvh, heads, blocks) = (16, 3, 9, 48);
            let slot_major = || {
                Tensor::randn(0f32, 1.0, (blocks * bs, kvh, d), &dev)
                    .and_then(|t| t.to_dtype(dtype))
                    .unwrap()
            };
            // `[kv_heads, blocks, bs, d]` (one group) or `[groups, kv_heads, group, bs, d]`.
            let head_major = |c: &Tensor| {
                let groups = blocks / group;
                let t = c
                    .reshape((groups, group * bs, kvh, d))
                    .and_then(|t| t.transpose(1, 2))
                    .and_then(|t| t.contiguous())
                    .unwrap();
                match groups {
                    1 => t.reshape((kvh, blocks, bs, d)),
                    _ => t.reshape((groups, kvh, group, bs, d)),
                }
                .unwrap()
            };
            let (k3, v3) = (slot_major(), slot_major());
            let (k4, v4) = (head_major(&k3), head_major(&v3));
            // A decode over 600 positions (3 chunks) and a 5-row chunk after 20 cached.
            let table: Vec<u32> = (0..38).map(|b| (b * 7 % 38) as u32 + 2).collect();
            let seqs = vec![
                SeqAttn {
                    query_start: 0,
                    query_len: 1,
                    context_len: 600,
                    block_table: table,
                    prompt_len: 0,
                },
                SeqAttn {
                    query_start: 1,
                    query_len: 5,
                    context_len: 25,
                    block_table: vec![1, 45],
                    prompt_len: 0,
                },
            ];
            let meta = AttnMetadata::new(seqs, bs, &dev).unwrap();
            let q = Tensor::randn(0f32, 1.0, (6, heads, d), &dev).unwrap();
            let rows = |k: &Tensor, v: &Tensor| {
                paged_attention(&q, k, v, &meta, 0.2, None)
                    .and_then(|o| o.flatten_all())
                    .and_then(|o| o.to_vec1::<f32>())
                    .unwrap()
            };
            let (a, b) = (rows(&k3, &v3), rows(&k4, &v4));
            assert!(
                a.iter().zip(&b).all(|(x, y)| x.to_bits() == y.to_bits()),
                "{dtype:?} d {d} group {group}"
            );
            // A head-major cache whose blocks are not the metadata's is refused, not misread.
            let halves = |c: &Tensor| match c.rank() {
                4 => c.reshape((kvh, blocks * 2, bs / 2, d)).unwrap(),
                _ => c
                    .reshape((blocks / group, kvh, group * 2, bs / 2, d))
                    .unwrap(),
            };
            let err = paged_attention(&q, &halves(&k4), &halves(&v4), &meta, 0.2, None);
            assert!(
                err.is_err(),
                "{dtype:?} d {d}: a cache of 8-slot blocks was read"
            );
            let ops = paged_attention_tensor_ops(&q, &k4, &v4, &meta, 0.2, None, None)
                .and_then(|o| o.flatten_all())
                .and_then(|o| o.to_vec1::<f32>())
                .unwrap();
            let diff = ops
                .iter()
                .zip(&b)
                .map(|(x, y)| (x - y).abs())
                .fold(0f32, f32::max);
            assert!(diff < 1e-3, "{dtype:?} d {d}: tensor ops differ by {diff}");
            // Writing the new rows into both layouts keeps them the same cache.
            let (nk, nv) = (slot_major(), slot_major());
            let (nk, nv) = (nk.narrow(0, 0, 6).unwrap(), nv.narrow(0, 0, 6).unwrap());
            meta.write_kv(&nk, &nv, &k3, &v3, None).unwrap();
            meta.write_kv(&nk, &nv, &k4, &v4, None).unwrap();
            let same = |x: &Tensor, y: &Tensor| {
                let (x, y) = (head_major(x), y.clone());
                let diff = (x.to_dtype(DType::F32).unwrap() - y.to_dtype(DType::F32).unwrap())
                    .and_then(|t| t.abs())
                    .and_then(|t| t.max_all())
                    .and_then(|t| t.to_scalar::<f32>())
                    .unwrap();
                assert_eq!(diff, 0.0, "{dtype:?} d {d}: caches differ after write_kv");
            };
            same(&k3, &k4);
            same(&v3, &v4);
            assert_ne!(a, rows(&k4, &v4), "the new rows must change the result");
        }
    }

    /// The parallel CPU kernel: each sequence's rows are bit-identical alone and inside
    /// batches of 2..64 sequences (decodes and prompt chunks mixed), at 1 and 2 threads, and
    /// agree with the tensor-op version.
    /// The same for f16 and bf16 caches under f32 queries (`--kv-cache-dtype fp16|bf16`).
    #[test]
    fn cpu_kernel_rows_are_batch_and_thread_invariant() {
        for dtype in [DType::F32, DType::F16, DType::BF16] {
            rows_are_batch_and_thread_invariant(dtype, false);
        }
        // The CPU engine's own layout (`kv::KvLayout::HeadMajor`).
        for dtype in [DType::F32, DType::F16] {
            rows_are_batch_and_thread_invariant(dtype, true);
        }
    }

    fn rows_are_batch_and_thread_invariant(cache_dtype: DType, head_major: bool) {
        let dev = Device::Cpu;
        let (bs, kvh, heads, d) = (16, 3, 9, 64);
        let blocks = 64 * 4;
        // Head-major in the engine's groups (of 64 blocks here: sequences 16i..16i+15 share
        // one).
        let shape: &[usize] = match head_major {
            true => &[blocks / 64, kvh, 64, bs, d],
            false => &[blocks * bs, kvh, d],
        };
        let cache = || {
            Tensor::randn(0f32, 1.0, shape, &dev)
                .and_then(|t| t.to_dtype(cache_dtype))
                .unwrap()
        };
        let (k_cache, v_cache) = (cache(), cache());
        // Sequence i: context 9 + 5i (< 4 blocks), a decode for even i, a 7-token chunk else;
        // blocks 4i..4i+4 in a scattered order.
        let seq = |i: usize, start: usize| {
            let context_len = 9 + (5 * i) % 50;
            SeqAttn {
                query_start: start,
                query_len: if i.is_multiple_of(2) { 1 } else { 7 },
                context_len,
                prompt_len: 0,
                block_table: vec![
                    (4 * i + 2) as u32,
                    (4 * i) as u32,
                    (4 * i + 3) as u32,
                    (4 * i + 1) as u32,
                ],
            }
        };
        let total: usize = (0..64).map(|i| seq(i, 0).query_len).sum();
        let q_all = Tensor::randn(0f32, 1.0, (total, heads, d), &dev).unwrap();
        let mut first_row = vec![0usize; 65];
        for i in 0..64 {
            first_row[i + 1] = first_row[i] + seq(i, 0).query_len;
        }
        // Runs sequences `ids` as one batch; returns each one's output rows.
        let run = |ids: &[usize], window: Option<usize>| -> Vec<Vec<f32>> {
            let mut seqs = Vec::new();
            let mut qs = Vec::new();
            let mut start = 0;
            for &i in ids {
                let s = seq(i, start);
                start += s.query_len;
                qs.push(q_all.narrow(0, first_row[i], s.query_len).unwrap());
                seqs.push(s);
            }
            let meta = AttnMetadata::new(seqs.clone(), bs, &dev).unwrap();
            let q = Tensor::cat(&qs, 0).unwrap();
            let o = paged_attention(&q, &k_cache, &v_cache, &meta, 0.125, window).unwrap();
            let r = paged_attention_tensor_ops(&q, &k_cache, &v_cache, &meta, 0.125, window, None)
                .unwrap();
            let diff = (&o - r)
                .unwrap()
                .abs()
                .unwrap()
                .max_all()
                .unwrap()
                .to_scalar::<f32>()
                .unwrap();
            assert!(diff < 1e-5, "kernel vs tensor ops: {diff}");
            seqs.iter()
                .map(|s| {
                    o.narrow(0, s.query_start, s.query_len)
                        .unwrap()
                        .flatten_all()
                        .unwrap()
                        .to_vec1::<f32>()
                        .unwrap()
                })
                .collect()
        };
        for window in [None, Some(20)] {
            let alone: Vec<Vec<f32>> = (0..64).map(|i| run(&[i], window).remove(0)).collect();
            for threads in [1, 2] {
                let pool = rayon::ThreadPoolBuilder::new()
                    .num_threads(threads)
                    .build()
                    .unwrap();
                pool.install(|| {
                    for n in [2, 3, 8, 17, 32, 64] {
                        // Sequences in reverse order, so each sits at a new row offset.
                        let ids: Vec<usize> = (0..n).rev().collect();
                        for (got, &i) in run(&ids, window).iter().zip(&ids) {
                            let same = got
                                .iter()
                                .zip(&alone[i])
                                .all(|(a, b)| a.to_bits() == b.to_bits());
                            assert!(
                                same,
                                "{cache_dtype:?} window {window:?} threads {threads} batch {n} \
                                 seq {i}"
                            );
                        }
                    }
                });
            }
        }
    }

    /// Long contexts (several attention chunks) and prompt chunks longer than a row tile: each
    /// sequence's rows are bit-identical alone and in batches at 1 and 2 threads, with and
    /// without a window; a row computed inside a prompt chunk (tiled rows, chunks folded in one
    /// item) is bit-identical to the same row computed as a decode (one item per chunk, folded
    /// afterwards); and everything agrees with the tensor-op version.
    #[test]
    fn cpu_kernel_long_context_tiles_and_chunks_are_invariant() {
        let dev = Device::Cpu;
        let (bs, kvh, heads, d) = (16, 3, 9, 64);
        let n_seqs = 12;
        let ctx = |i: usize| 200 + 97 * i;
        let qlen = |i: usize| [1, 3, 8, 9, 21][i % 5];
        // Blocks of sequence i: a scattered permutation of its own range of block ids.
        let mut first_block = vec![0usize];
        for i in 0..n_seqs {
            first_block.push(first_block[i] + ctx(i).div_ceil(bs));
        }
        let blocks = first_block[n_seqs];
        let table = |i: usize| -> Vec<u32> {
            let n = first_block[i + 1] - first_block[i];
            (0..n)
                .map(|b| (first_block[i] + (b * 7 + 3) % n) as u32)
                .collect()
        };
        let k_cache = Tensor::randn(0f32, 1.0, (blocks * bs, kvh, d), &dev).unwrap();
        let v_cache = Tensor::randn(0f32, 1.0, (blocks * bs, kvh, d), &dev).unwrap();
        let q_all: Vec<Tensor> = (0..n_seqs)
            .map(|i| Tensor::randn(0f32, 1.0, (qlen(i), heads, d), &dev).unwrap())
            .collect();
        // Runs (sequence, query rows, context) triples as one batch; returns each one's rows.
        let run = |parts: &[(usize, Tensor, usize)], window: Option<usize>| -> Vec<Vec<f32>> {
            let mut seqs = Vec::new();
            let mut start = 0;
            for (i, q, c) in parts {
                let n = q.dim(0).unwrap();
                seqs.push(SeqAttn {
                    query_start: start,
                    query_len: n,
                    context_len: *c,
                    block_table: table(*i),
                    prompt_len: 0,
                });
                start += n;
            }
            let meta = AttnMetadata::new(seqs.clone(), bs, &dev).unwrap();
            let qs: Vec<&Tensor> = parts.iter().map(|p| &p.1).collect();
            let q = Tensor::cat(&qs, 0).unwrap();
            let o = paged_attention(&q, &k_cache, &v_cache, &meta, 0.125, window).unwrap();
            let r = paged_attention_tensor_ops(&q, &k_cache, &v_cache, &meta, 0.125, window, None)
                .unwrap();
            let diff = (&o - r)
                .unwrap()
                .abs()
                .unwrap()
                .max_all()
                .unwrap()
                .to_scalar::<f32>()
                .unwrap();
            assert!(diff < 2e-5, "kernel vs tensor ops: {diff}");
            seqs.iter()
                .map(|s| {
                    o.narrow(0, s.query_start, s.query_len)
                        .unwrap()
                        .flatten_all()
                        .unwrap()
                        .to_vec1::<f32>()
                        .unwrap()
                })
                .collect()
        };
        let part = |i: usize| (i, q_all[i].clone(), ctx(i));
        let same = |a: &[f32], b: &[f32]| {
            a.len() == b.len() && a.iter().zip(b).all(|(x, y)| x.to_bits() == y.to_bits())
        };
        for window in [None, Some(300)] {
            let alone: Vec<Vec<f32>> = (0..n_seqs)
                .map(|i| run(&[part(i)], window).remove(0))
                .collect();
            for threads in [1, 2] {
                let pool = rayon::ThreadPoolBuilder::new()
                    .num_threads(threads)
                    .build()
                    .unwrap();
                pool.install(|| {
                    for n in [2, 5, n_seqs] {
                        let ids: Vec<usize> = (0..n).rev().collect();
                        let parts: Vec<_> = ids.iter().map(|&i| part(i)).collect();
                        for (got, &i) in run(&parts, window).iter().zip(&ids) {
                            assert!(
                                same(got, &alone[i]),
                                "window {window:?} threads {threads} batch {n} seq {i}"
                            );
                        }
                    }
                });
            }
            // Rows of 21-token chunks (sequences 4 and 9) again as single-row decodes.
            for i in [4, 9] {
                for r in [0, 7, 8, 13, 20] {
                    let c = ctx(i) - (qlen(i) - 1 - r);
                    let q = q_all[i].narrow(0, r, 1).unwrap();
                    let got = run(&[(i, q, c)], window).remove(0);
                    let want = &alone[i][r * heads * d..(r + 1) * heads * d];
                    assert!(same(&got, want), "window {window:?} seq {i} row {r}");
                }
            }
        }
    }

    /// Sinks: the CPU kernel agrees with the tensor-op version, and a sink takes mass away
    /// (outputs shrink toward zero as the sink logit grows).
    #[test]
    fn sinks_agree_between_kernel_and_tensor_ops_and_matter() {
        let dev = Device::Cpu;
        let (bs, kvh, heads, d) = (4, 2, 4, 8);
        let k_cache = Tensor::randn(0f32, 1.0, (8 * bs, kvh, d), &dev).unwrap();
        let v_cache = Tensor::randn(0f32, 1.0, (8 * bs, kvh, d), &dev).unwrap();
        let seqs = vec![
            SeqAttn {
                query_start: 0,
                query_len: 2,
                context_len: 6,
                block_table: vec![3, 1],
                prompt_len: 0,
            },
            SeqAttn {
                query_start: 2,
                query_len: 5,
                context_len: 5,
                block_table: vec![6, 0],
                prompt_len: 0,
            },
        ];
        let meta = AttnMetadata::new(seqs, bs, &dev).unwrap();
        let q = Tensor::randn(0f32, 1.0, (7, heads, d), &dev).unwrap();
        let max_diff = |a: &Tensor, b: &Tensor| {
            (a - b)
                .unwrap()
                .abs()
                .unwrap()
                .max_all()
                .unwrap()
                .to_scalar::<f32>()
                .unwrap()
        };
        let sinks = [0.5f32, -1.0, 2.0, 0.0];
        for window in [None, Some(2)] {
            let a = paged_attention_with_sinks(
                &q,
                &k_cache,
                &v_cache,
                &meta,
                0.35,
                window,
                Some(&sinks),
            )
            .unwrap();
            let b = paged_attention_tensor_ops(
                &q,
                &k_cache,
                &v_cache,
                &meta,
                0.35,
                window,
                Some(&sinks),
            )
            .unwrap();
            assert!(max_diff(&a, &b) < 1e-5, "window {window:?}");
        }
        let plain = paged_attention(&q, &k_cache, &v_cache, &meta, 0.35, None).unwrap();
        let sunk =
            paged_attention_with_sinks(&q, &k_cache, &v_cache, &meta, 0.35, None, Some(&[30.0; 4]))
                .unwrap();
        assert!(max_diff(&plain, &sunk) > 1e-2);
        let abs = sunk
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert!(abs < 1e-6, "a huge sink leaves nothing: {abs}");
    }
}
