//! Per-layer K/V tensors of the paged cache; which block belongs to whom is the block
//! manager's business, not this module's.

use anyhow::bail;
use candle_core::{DType, Device, Result, Tensor};

/// What the cache stores K and V as (`--kv-cache-dtype`, vLLM's names, plus the 16-bit types
/// llama.cpp's `-ctk`/`-ctv` offer).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum KvCacheDtype {
    /// The model's activation dtype.
    #[default]
    Auto,
    /// IEEE half: K and V rounded to nearest on the way in, widened exactly when read. For an
    /// f32 model on the CPU (GGUF) this halves the bytes a long-context decode step reads;
    /// llama.cpp's default cache type.
    Fp16,
    /// bfloat16, the same way (f32's range, 8 bits of precision).
    Bf16,
    /// FP8 e4m3 (OCP e4m3fn) bytes with one scale per tensor and layer for K and for V:
    /// `stored = e4m3(x / scale)`, read back as `stored * scale`.
    Fp8E4m3,
}

impl KvCacheDtype {
    pub fn parse(s: &str) -> anyhow::Result<Self> {
        Ok(match s {
            "auto" => Self::Auto,
            "fp16" | "f16" | "float16" | "half" => Self::Fp16,
            "bf16" | "bfloat16" => Self::Bf16,
            "fp8" | "fp8_e4m3" => Self::Fp8E4m3,
            other => {
                bail!(
                    "unsupported --kv-cache-dtype `{other}` (supported: auto, fp16, bf16, fp8, \
                     fp8_e4m3)"
                )
            }
        })
    }

    /// The dtype to ask a model's `new_kv_cache` for: `F8E4M3` names the fp8 cache (stored as
    /// raw bytes, see [`KvCache`]).
    pub fn cache_dtype(self, model_dtype: DType) -> DType {
        match self {
            Self::Auto => model_dtype,
            Self::Fp16 => DType::F16,
            Self::Bf16 => DType::BF16,
            Self::Fp8E4m3 => DType::F8E4M3,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::Auto => "auto",
            Self::Fp16 => "fp16",
            Self::Bf16 => "bf16",
            Self::Fp8E4m3 => "fp8_e4m3",
        }
    }
}

/// Where a slot's row for one KV head lives in a layer's K or V tensor, counted in rows of
/// `head_dim` elements; read off the tensor's shape.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KvLayout {
    /// `[slots, kv_heads, head_dim]`: the GPU kernels' layout (and any one-head cache).
    SlotMajor { kv_heads: usize },
    /// The CPU's, `[groups, kv_heads, group_blocks, block_size, head_dim]` (or
    /// `[kv_heads, blocks, block_size, head_dim]`: one group): within a group of blocks each KV
    /// head's rows form one array of slots, so a sequence's consecutive blocks are one
    /// contiguous run per head that a decode over a long context streams (a 4,000-token FP8
    /// context read back on two Zen 4 cores: 1.7-3.1 ms as one run against 4.7-6.3 ms in runs
    /// of a block, `READ_ONLY=1 cargo bench --bench attention`), where slot-major gathers a
    /// `1 / kv_heads` part of every slot. Groups of 1 MiB ([`group_blocks`]) keep the first
    /// blocks of every head within a huge page or two: one group for the whole cache put each
    /// head's first blocks in a huge page of its own, which a fresh engine zeroes on first
    /// touch (8 prompts of 128 tokens at once, SmolLM2 fp16: 1.5 s against 0.9 s).
    HeadMajor {
        kv_heads: usize,
        group_blocks: usize,
        block_size: usize,
    },
}

/// Blocks per group of a CPU cache (see [`KvLayout::HeadMajor`]): as many as make 1 MiB with
/// every head's rows (each head's run of a group is then 85-340 KiB for 64-wide heads, long
/// enough to stream), at least one, at most the cache's.
pub fn group_blocks(num_blocks: usize, kv_heads: usize, block_bytes_per_head: usize) -> usize {
    ((1 << 20) / (kv_heads * block_bytes_per_head).max(1)).clamp(1, num_blocks.max(1))
}

impl KvLayout {
    /// The layout of a cache tensor of these dims (3: slot-major, 4 and 5: head-major).
    pub fn of(dims: &[usize]) -> Result<Self> {
        match *dims {
            [_, kv_heads, _] => Ok(Self::SlotMajor { kv_heads }),
            [kv_heads, group_blocks, block_size, _]
            | [_, kv_heads, group_blocks, block_size, _] => Ok(Self::HeadMajor {
                kv_heads,
                group_blocks,
                block_size,
            }),
            _ => candle_core::bail!("KV cache of shape {dims:?}"),
        }
    }

    pub fn kv_heads(self) -> usize {
        match self {
            Self::SlotMajor { kv_heads } | Self::HeadMajor { kv_heads, .. } => kv_heads,
        }
    }

    /// Row of offset 0 of block `block` (of `block_size` slots), KV head `kvh`, and the step
    /// between the rows of consecutive offsets: a walk over a block without a division.
    #[inline(always)]
    pub fn block_rows(self, block: usize, block_size: usize, kvh: usize) -> (usize, usize) {
        match self {
            Self::SlotMajor { kv_heads } => ((block * block_size) * kv_heads + kvh, kv_heads),
            Self::HeadMajor { .. } => (self.row(block * block_size, kvh), 1),
        }
    }

    /// Row of slot `slot`, KV head `kvh`.
    #[inline(always)]
    pub fn row(self, slot: usize, kvh: usize) -> usize {
        match self {
            Self::SlotMajor { kv_heads } => slot * kv_heads + kvh,
            Self::HeadMajor {
                kv_heads,
                group_blocks,
                block_size,
            } => {
                let group = group_blocks * block_size;
                (slot / group * kv_heads + kvh) * group + slot % group
            }
        }
    }
}

/// How the engine's KV cache is sized, for the metrics: what it stores, and how many bytes a
/// token takes in it and would take in the model's own dtype.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct KvCacheInfo {
    pub dtype: KvCacheDtype,
    pub block_size: usize,
    pub bytes_per_token: usize,
    pub model_dtype_bytes_per_token: usize,
}

impl KvCacheInfo {
    /// Tokens this cache holds per token a cache of the model's dtype would hold (2 for FP8
    /// against bf16, 4 against f32).
    pub fn capacity_gain(&self) -> f64 {
        self.model_dtype_bytes_per_token as f64 / self.bytes_per_token.max(1) as f64
    }
}

/// One layer's per-tensor FP8 scales (1.0 unless the checkpoint has `k_scale`/`v_scale`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Fp8Scales {
    pub k: f32,
    pub v: f32,
}

impl Default for Fp8Scales {
    fn default() -> Self {
        Self { k: 1.0, v: 1.0 }
    }
}

/// Layout per layer: on the GPU `[num_blocks * block_size, num_kv_heads, head_dim]`, so a
/// token's slot index is its row and a block is `block_size` consecutive rows; on the CPU
/// `[groups, num_kv_heads, group_blocks, block_size, head_dim]` (see [`KvLayout`]).
///
/// An FP8 cache holds e4m3 bytes in `U8` tensors: candle's own F8 dtype has no CUDA casts or
/// copies (shared/docs/CANDLE_CUDA.md), and every reader and writer of the cache is ours.
#[derive(Debug)]
pub struct KvCache {
    layers: Vec<(Tensor, Tensor)>,
    /// One entry per layer when the cache is FP8.
    fp8: Option<Vec<Fp8Scales>>,
    pub num_blocks: usize,
    pub block_size: usize,
}

impl KvCache {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        num_layers: usize,
        num_blocks: usize,
        block_size: usize,
        num_kv_heads: usize,
        head_dim: usize,
        dtype: DType,
        device: &Device,
    ) -> Result<Self> {
        let row = (num_kv_heads, head_dim);
        Self::with_rows(num_layers, num_blocks, block_size, row, row, dtype, device)
    }

    /// K rows of `k_row = (heads, dim)` and V rows of `v_row` per slot; MLA keeps its latent
    /// as "K" and its rotary key as "V", `(1, kv_lora_rank)` and `(1, qk_rope_head_dim)`.
    /// `dtype` `F8E4M3`: an FP8 cache with scales 1.0 (see [`KvCache::with_fp8_scales`]).
    #[allow(clippy::too_many_arguments)]
    pub fn with_rows(
        num_layers: usize,
        num_blocks: usize,
        block_size: usize,
        k_row: (usize, usize),
        v_row: (usize, usize),
        dtype: DType,
        device: &Device,
    ) -> Result<Self> {
        let fp8 = dtype == DType::F8E4M3;
        let storage = if fp8 { DType::U8 } else { dtype };
        let shape = |(heads, dim): (usize, usize)| -> Vec<usize> {
            if !device.is_cpu() || heads == 1 {
                return vec![num_blocks * block_size, heads, dim];
            }
            // Whole groups: the last one's blocks past `num_blocks` are never handed out, so
            // never touched (the allocation is lazily zeroed).
            let per_head = block_size * dim * storage.size_in_bytes();
            let group = group_blocks(num_blocks, heads, per_head);
            vec![num_blocks.div_ceil(group), heads, group, block_size, dim]
        };
        let layers = (0..num_layers)
            .map(|_| {
                Ok((
                    zeros(&shape(k_row), storage, device)?,
                    zeros(&shape(v_row), storage, device)?,
                ))
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            layers,
            fp8: fp8.then(|| vec![Fp8Scales::default(); num_layers]),
            num_blocks,
            block_size,
        })
    }

    /// Sets an FP8 cache's per-layer scales (ignored by other caches).
    pub fn with_fp8_scales(mut self, scales: &[Fp8Scales]) -> Result<Self> {
        if let Some(s) = &mut self.fp8 {
            if scales.len() != s.len() {
                candle_core::bail!("{} KV scales for {} layers", scales.len(), s.len());
            }
            s.copy_from_slice(scales);
        }
        Ok(self)
    }

    pub fn layer(&self, i: usize) -> (&Tensor, &Tensor) {
        let (k, v) = &self.layers[i];
        (k, v)
    }

    /// Layer `i`'s scales when the cache is FP8.
    pub fn fp8_scales(&self, i: usize) -> Option<Fp8Scales> {
        self.fp8.as_ref().map(|s| s[i])
    }

    pub fn num_slots(&self) -> usize {
        self.num_blocks * self.block_size
    }
}

/// A zeroed cache tensor. On the CPU its buffer comes from a zeroed allocation (not yet
/// touched for a large one) that, for 16-bit and FP8 caches, asks for huge pages before
/// anything is written to it.
fn zeros(shape: &[usize], dtype: DType, device: &Device) -> Result<Tensor> {
    use half::vec::HalfBitsVecExt;
    if !device.is_cpu() {
        return Tensor::zeros(shape, dtype, device);
    }
    let n = shape.iter().product();
    // 16-bit zeros as `u16` bits: `vec![0; n]` of a primitive is a zeroed allocation, where
    // candle's `vec![f16::ZERO; n]` writes every element (and so every page) first.
    let bits16 = || {
        let v = vec![0u16; n];
        crate::cpu::pages::advise_huge(&v);
        v
    };
    match dtype {
        DType::U8 => {
            let v = vec![0u8; n];
            crate::cpu::pages::advise_huge(&v);
            Tensor::from_vec(v, shape, device)
        }
        DType::F16 => Tensor::from_vec(bits16().reinterpret_into::<half::f16>(), shape, device),
        DType::BF16 => Tensor::from_vec(bits16().reinterpret_into::<half::bf16>(), shape, device),
        // f32 (candle's zeros: a zeroed allocation too) stays on small pages: its 4k decode
        // gained nothing from huge ones, and a fresh engine's 128-token prefill lost 2-8% to
        // faulting them in
        // (`benches/results/ab-safetensors-rounds-s27-vs-s29-zen4-2026-12-04.txt`).
        _ => Tensor::zeros(shape, dtype, device),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A grouped head-major layout puts every (slot, head) on its own row inside the tensor,
    /// each head's slots of a group in one run, and `block_rows` walks a block as `row` does.
    #[test]
    fn head_major_groups_map_every_slot_and_head_to_its_own_row() {
        let (kv_heads, group_blocks, block_size, groups) = (3, 5, 4, 3);
        let layout = KvLayout::of(&[groups, kv_heads, group_blocks, block_size, 8]).unwrap();
        let slots = groups * group_blocks * block_size;
        let mut seen = vec![false; slots * kv_heads];
        for slot in 0..slots {
            for h in 0..kv_heads {
                let r = layout.row(slot, h);
                assert!(!std::mem::replace(&mut seen[r], true), "row {r} twice");
                let (g, i) = (slot / 20, slot % 20);
                assert_eq!(r, (g * kv_heads + h) * 20 + i, "slot {slot} head {h}");
            }
        }
        for block in 0..groups * group_blocks {
            for h in 0..kv_heads {
                let (first, step) = layout.block_rows(block, block_size, h);
                for o in 0..block_size {
                    assert_eq!(first + o * step, layout.row(block * block_size + o, h));
                }
            }
        }
        // One group: the 4-d shape, rows as before groups.
        let one = KvLayout::of(&[kv_heads, 7, block_size, 8]).unwrap();
        assert_eq!(one.row(9, 2), 2 * 28 + 9);
        assert_eq!(super::group_blocks(1000, 3, 2048), 170);
        assert_eq!(super::group_blocks(64, 3, 2048), 64);
        assert_eq!(super::group_blocks(10, 64, 1 << 20), 1);
    }

    /// The CPU cache of every storage type is zeros of its dtype and head-major shape, and
    /// where THP runs in `madvise` (or `always`) mode the 16-bit and FP8 buffers are eligible
    /// for huge pages (the mapping carries the advice, `/proc/self/smaps`).
    #[test]
    fn cpu_cache_is_zeroed_and_asks_for_huge_pages() {
        let thp = std::fs::read_to_string("/sys/kernel/mm/transparent_hugepage/enabled")
            .is_ok_and(|m| m.contains("[madvise]") || m.contains("[always]"));
        for dtype in [DType::F32, DType::F16, DType::BF16, DType::F8E4M3] {
            // 256 blocks of 16 slots, 4 heads of 128: 4 MiB a tensor even at one byte.
            let kv = KvCache::new(1, 256, 16, 4, 128, dtype, &Device::Cpu).unwrap();
            let (k, v) = kv.layer(0);
            // Groups of 1 MiB: a block of 4 heads' 16 rows of 128 is 8 KiB at one byte.
            let group = 128 / dtype.size_in_bytes();
            assert_eq!(k.dims(), [256 / group, 4, group, 16, 128], "{dtype:?}");
            let want = if dtype == DType::F8E4M3 {
                DType::U8
            } else {
                dtype
            };
            assert_eq!((k.dtype(), v.dtype()), (want, want));
            let sum = |t: &Tensor| -> f32 {
                let t = t.to_dtype(DType::F32).unwrap().abs().unwrap();
                t.sum_all().unwrap().to_scalar().unwrap()
            };
            assert_eq!((sum(k), sum(v)), (0.0, 0.0), "{dtype:?}");
            if !thp || dtype == DType::F32 {
                continue;
            }
            let (storage, _) = v.storage_and_layout();
            let addr = match &*storage {
                candle_core::Storage::Cpu(c) => match c {
                    candle_core::CpuStorage::U8(x) => x.as_ptr() as usize,
                    candle_core::CpuStorage::F16(x) => x.as_ptr() as usize,
                    candle_core::CpuStorage::BF16(x) => x.as_ptr() as usize,
                    candle_core::CpuStorage::F32(x) => x.as_ptr() as usize,
                    _ => unreachable!(),
                },
                _ => unreachable!(),
            };
            let smaps = std::fs::read_to_string("/proc/self/smaps").unwrap();
            let mut inside = false;
            let mut eligible = None;
            for line in smaps.lines() {
                if let Some((range, _)) = line.split_once(' ') {
                    if let Some((a, b)) = range.split_once('-') {
                        if let (Ok(a), Ok(b)) =
                            (usize::from_str_radix(a, 16), usize::from_str_radix(b, 16))
                        {
                            inside = a <= addr && addr < b;
                            continue;
                        }
                    }
                }
                if inside && line.starts_with("THPeligible:") {
                    eligible = Some(line.ends_with('1'));
                }
            }
            assert_eq!(
                eligible,
                Some(true),
                "{dtype:?}: the buffer's mapping is not THP-eligible"
            );
        }
    }
}
