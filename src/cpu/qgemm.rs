//! Batched quantized GEMM on the CPU: `y[m, n] = x[m, k] · W[n, k]ᵀ` for GGUF weights.
//!
//! Weights are repacked at load into one of two layouts made of 32-element blocks (the
//! activation block size):
//! - [`Layout::Q4`] (Q4_0, Q4_1, Q4_K): 4-bit codes `q` in 0..16 with an f32 scale `d` and
//!   offset `m` per block, `w = d·q + m` (Q4_0: `m = -8d`; Q4_K: `d·sc`, `-dmin·mn`);
//! - [`Layout::Q8`] (Q8_0, Q5_0, Q6_K): signed 8-bit codes with one f32 scale per block, or
//!   (Q6_K) one per 16 elements (Q5_0's codes are `q - 16`, Q6_K's `q - 32` under `d·sc`).
//!
//! **Panels: SIMD lanes are output columns.** Columns are grouped in panels of [`PANEL`] = 16,
//! and inside a panel each block is stored as groups of 4 consecutive k-elements of every
//! column (group `j` = 64 bytes, column `c` at bytes `4c..4c+4`). One `dpbusd` of a group with
//! 4 broadcast activation bytes adds to each column's lane its own 4-element dot product, so
//! after a block's groups every i32 lane holds the exact integer block dot of its column; one
//! convert and one fused multiply-add by `d_w·d_a` (plus one for the Q4 offset `m_w·d_a·Σqa`)
//! fold it into the column's f32 accumulator. No horizontal sums; a weight group loaded and
//! unpacked once serves [`ROWS`] activation rows. AVX-512 VNNI handles a whole panel per
//! vector, AVX2 each half of 8 columns.
//!
//! Activations are quantized once per call to 8-bit blocks of 32 (`a = d_a·qa`, round to
//! nearest even) by [`acts`].
//!
//! **Batch invariance by construction.** Each output `y[r, c]` is computed from row `r`'s own
//! quantized blocks only, in one f32 lane that sees the same sequence of operations whatever
//! the number of rows, the row tile it lands in, the thread count, and the kernel: integer
//! block sums are exact (no i16 saturation is reachable: Q8 codes go through the sign trick on
//! AVX2 and a +128 bias with exact integer correction on VNNI), and the float steps per block
//! are the same `mul`, `cvt` and `fma` in every kernel, including [`Kernel::Reference`], a
//! scalar model of one lane that the tests compare bit for bit.

use candle_core::quantized::{GgmlDType, QTensor};
use half::f16;
use rayon::prelude::*;

mod acts;
mod reference;
#[cfg(target_arch = "x86_64")]
mod x86;

use acts::QActs;

/// Elements per block (weights and activations).
pub const BLOCK: usize = 32;
/// Output columns per repacked panel.
pub const PANEL: usize = 16;
/// Activation rows that share one load of a weight group.
const ROWS: usize = 4;
/// Least work per parallel task, in panel blocks × rows (about 80 KB of Q4 weights at one
/// row): a decode step's small products split into fewer tasks than rayon would spend on
/// scheduling them.
const MIN_TASK_WORK: usize = 256;
/// Activation rows per pass over a task's panels (a multiple of [`ROWS`]).
const ROW_CHUNK: usize = 128;
/// Bytes of one repacked block of a panel, and f32 scales per block of a panel.
const Q4_PANEL_BYTES: usize = PANEL * BLOCK / 2;
const Q8_PANEL_BYTES: usize = PANEL * BLOCK;
const PANEL_SCALES: usize = 2 * PANEL;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    Q4,
    Q8,
}

/// Which implementation computes a product. All give identical bits; the choice only
/// changes speed (tests compare them).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kernel {
    /// Scalar model of one SIMD lane (tests).
    Reference,
    /// AVX2 + FMA, 8 columns per vector.
    Avx2,
    /// AVX-512 (F, BW) with VNNI, 16 columns per vector.
    Avx512Vnni,
}

/// A repacked weight `[n, k]` (`k` a multiple of 32).
#[derive(Debug)]
pub struct QWeight {
    layout: Layout,
    /// Q8 with one scale per 16 elements (Q6_K); otherwise one per block.
    halves: bool,
    /// Q8 whose codes all lie in `-bias..bias` (16: Q5_0, 32: Q6_K), else 0. The AVX2 kernel
    /// then multiplies the unsigned `code + bias` directly, several groups summed in i16 before
    /// widening, and subtracts `bias·Σqa` exactly: fewer operations than the sign trick.
    bias: u8,
    n: usize,
    k: usize,
    /// Panel `p`, block `b` at `(p * kb + b)` × the layout's panel bytes; columns past `n`
    /// (last panel) are zero codes with zero scales.
    codes: Vec<u8>,
    /// Per panel block: Q4 `[d; 16], [m; 16]`; Q8 `[d0; 16], [d1; 16]` (elements 0..16 and
    /// 16..32; `d1 = d0` unless `halves`). Empty when `scales16` holds them.
    scales: Vec<f32>,
    /// The same scales as f16 when every one of them is exactly an f16 (Q4_0, Q4_1, Q8_0 and
    /// Q5_0 store f16 scales): a third less memory traffic per Q4 block, same values.
    scales16: Vec<f16>,
    source: GgmlDType,
}

/// Whether this machine runs the kernels (AVX2 and FMA; checked once at run time).
pub fn available() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// Whether the AVX-512 VNNI kernel can run here (regardless of `FLARE_CPU_NO_VNNI`).
pub fn avx512_vnni_available() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        available()
            && is_x86_feature_detected!("avx512f")
            && is_x86_feature_detected!("avx512bw")
            && is_x86_feature_detected!("avx512vnni")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// The kernel [`QWeight::matmul`] uses: AVX-512 VNNI where the CPU has it and
/// `FLARE_CPU_NO_VNNI` is unset, else AVX2.
pub fn best_kernel() -> Kernel {
    use std::sync::OnceLock;
    static K: OnceLock<Kernel> = OnceLock::new();
    *K.get_or_init(|| {
        if std::env::var("FLARE_CPU_NO_VNNI").is_err() && avx512_vnni_available() {
            Kernel::Avx512Vnni
        } else {
            Kernel::Avx2
        }
    })
}

fn f16_at(b: &[u8], at: usize) -> f32 {
    f16::from_le_bytes([b[at], b[at + 1]]).to_f32()
}

/// Q4_K's 6-bit scale and min of sub-block `j` (0..8), as ggml packs them in 12 bytes.
fn scale_min_k4(j: usize, q: &[u8]) -> (u8, u8) {
    if j < 4 {
        (q[j] & 63, q[j + 4] & 63)
    } else {
        (
            (q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4),
            (q[j + 4] >> 4) | ((q[j] >> 6) << 4),
        )
    }
}

/// Where element `e` (0..32) of panel column `c` lives inside a panel block: byte index, and
/// for Q4 whether it is the high nibble.
fn code_at(layout: Layout, c: usize, e: usize) -> (usize, bool) {
    match layout {
        // Group j holds elements 4j..4j+4 (low nibbles) and 16+4j..16+4j+4 (high).
        Layout::Q4 => {
            let (hi, e) = (e >= 16, e % 16);
            ((e / 4) * 4 * PANEL + 4 * c + e % 4, hi)
        }
        Layout::Q8 => ((e / 4) * 4 * PANEL + 4 * c + e % 4, false),
    }
}

impl QWeight {
    fn empty(layout: Layout, halves: bool, n: usize, k: usize, source: GgmlDType) -> Self {
        let blocks = n.div_ceil(PANEL) * (k / BLOCK);
        let bytes = match layout {
            Layout::Q4 => Q4_PANEL_BYTES,
            Layout::Q8 => Q8_PANEL_BYTES,
        };
        let codes = vec![0; blocks * bytes];
        super::pages::advise_huge(&codes);
        Self {
            layout,
            halves,
            bias: 0,
            n,
            k,
            codes,
            scales: vec![0.0; blocks * PANEL_SCALES],
            scales16: Vec::new(),
            source,
        }
    }

    /// Switches to f16 scales if that loses nothing (after the last `put`).
    fn compact_scales(mut self) -> Self {
        let exact = |v: &f32| f16::from_f32(*v).to_f32().to_bits() == v.to_bits();
        if self.scales.iter().all(exact) {
            self.scales16 = self.scales.iter().map(|v| f16::from_f32(*v)).collect();
            self.scales = Vec::new();
        }
        self
    }

    /// Sets [`Self::bias`] from the codes themselves (after the last `put`), so a fused
    /// weight whose parts differ gets the bias that all of them allow.
    fn with_bias(mut self) -> Self {
        if self.layout == Layout::Q8 {
            let (lo, hi) = self.codes.iter().fold((0i8, 0i8), |(lo, hi), &c| {
                (lo.min(c as i8), hi.max(c as i8))
            });
            self.bias = [16, 32]
                .into_iter()
                .find(|&b| lo >= -b && hi < b)
                .map_or(0, |b| b as u8);
        }
        self
    }

    fn scale(&self, at: usize) -> f32 {
        if self.scales16.is_empty() {
            self.scales[at]
        } else {
            self.scales16[at].to_f32()
        }
    }

    fn panel_bytes(&self) -> usize {
        match self.layout {
            Layout::Q4 => Q4_PANEL_BYTES,
            Layout::Q8 => Q8_PANEL_BYTES,
        }
    }

    /// Stores column `col`'s block `b`: codes (Q4: 0..16; Q8: i8 as u8) and its two scales.
    fn put(&mut self, col: usize, b: usize, q: &[u8; 32], s: [f32; 2]) {
        let kb = self.k / BLOCK;
        let (p, c) = (col / PANEL, col % PANEL);
        let blk = p * kb + b;
        let bytes = self.panel_bytes();
        let dst = &mut self.codes[blk * bytes..(blk + 1) * bytes];
        for (e, &v) in q.iter().enumerate() {
            let (at, hi) = code_at(self.layout, c, e);
            dst[at] |= if hi { v << 4 } else { v };
        }
        let sc = &mut self.scales[blk * PANEL_SCALES..(blk + 1) * PANEL_SCALES];
        sc[c] = s[0];
        sc[PANEL + c] = s[1];
    }

    /// Column `col`'s block `b` as [`Self::put`] took it.
    fn get(&self, col: usize, b: usize) -> ([u8; 32], [f32; 2]) {
        let kb = self.k / BLOCK;
        let (p, c) = (col / PANEL, col % PANEL);
        let blk = p * kb + b;
        let bytes = self.panel_bytes();
        let src = &self.codes[blk * bytes..(blk + 1) * bytes];
        let mut q = [0u8; 32];
        for (e, v) in q.iter_mut().enumerate() {
            let (at, hi) = code_at(self.layout, c, e);
            *v = match (self.layout, hi) {
                (Layout::Q4, true) => src[at] >> 4,
                (Layout::Q4, false) => src[at] & 0xF,
                _ => src[at],
            };
        }
        let at = blk * PANEL_SCALES + c;
        (q, [self.scale(at), self.scale(at + PANEL)])
    }

    /// Repacks a GGUF weight `[n, k]`; `None` for a type or shape the kernels do not cover
    /// (the caller keeps candle's matmul for those).
    pub fn from_qtensor(t: &QTensor) -> Option<Self> {
        let (n, k) = t.shape().dims2().ok()?;
        let dtype = t.dtype();
        let data = t.data().ok()?;
        Self::from_raw(dtype, &data, n, k)
    }

    /// Repacks ggml-format bytes of `n` rows of `k` elements.
    pub fn from_raw(dtype: GgmlDType, data: &[u8], n: usize, k: usize) -> Option<Self> {
        use GgmlDType::*;
        let (layout, per_block, span) = match dtype {
            Q4_0 => (Layout::Q4, 18, 32),
            Q4_1 => (Layout::Q4, 20, 32),
            Q4K => (Layout::Q4, 144, 256),
            Q8_0 => (Layout::Q8, 34, 32),
            Q5_0 => (Layout::Q8, 22, 32),
            Q6K => (Layout::Q8, 210, 256),
            _ => return None,
        };
        if k == 0 || !k.is_multiple_of(span) || data.len() != n * k / span * per_block {
            return None;
        }
        let kb = k / BLOCK;
        let mut w = Self::empty(layout, dtype == Q6K, n, k, dtype);
        // One 32-element block at a time: (codes as 0..16 or i8, two scales).
        let mut q = [0u8; 32];
        for (i, src) in data.chunks_exact(per_block).enumerate() {
            let first = i * span / BLOCK; // index of the first 32-block this source block covers
            let (col, b0) = (first / kb, first % kb);
            let mut emit = |b: usize, q: &[u8; 32], s: [f32; 2]| w.put(col, b0 + b, q, s);
            match dtype {
                Q4_0 | Q4_1 => {
                    let d = f16_at(src, 0);
                    let (m, qs) = match dtype {
                        Q4_0 => (-8.0 * d, &src[2..18]),
                        _ => (f16_at(src, 2), &src[4..20]),
                    };
                    for j in 0..16 {
                        q[j] = qs[j] & 0xF;
                        q[j + 16] = qs[j] >> 4;
                    }
                    emit(0, &q, [d, m]);
                }
                Q8_0 => {
                    let d = f16_at(src, 0);
                    q.copy_from_slice(&src[2..34]);
                    emit(0, &q, [d, d]);
                }
                Q5_0 => {
                    // d, 32 fifth bits, then nibbles as Q4_0; codes q - 16 in -16..16.
                    let d = f16_at(src, 0);
                    let qh = u32::from_le_bytes([src[2], src[3], src[4], src[5]]);
                    let qs = &src[6..22];
                    for j in 0..16 {
                        let h0 = ((qh >> j) & 1) as u8;
                        let h1 = ((qh >> (j + 16)) & 1) as u8;
                        q[j] = (((qs[j] & 0xF) | (h0 << 4)) as i8 - 16) as u8;
                        q[j + 16] = (((qs[j] >> 4) | (h1 << 4)) as i8 - 16) as u8;
                    }
                    emit(0, &q, [d, d]);
                }
                Q4K => {
                    let (d, dmin) = (f16_at(src, 0), f16_at(src, 2));
                    let sc = &src[4..16];
                    let qs = &src[16..144];
                    for j in 0..4 {
                        let g = &qs[32 * j..32 * j + 32];
                        for half in 0..2 {
                            let (s, mn) = scale_min_k4(2 * j + half, sc);
                            for (l, x) in q.iter_mut().enumerate() {
                                *x = if half == 0 { g[l] & 0xF } else { g[l] >> 4 };
                            }
                            emit(2 * j + half, &q, [d * s as f32, -(dmin * mn as f32)]);
                        }
                    }
                }
                Q6K => {
                    let (ql, qh) = (&src[0..128], &src[128..192]);
                    let sc = &src[192..208];
                    let d = f16_at(src, 208);
                    for h in 0..2 {
                        let (ql, qh, sc) = (&ql[64 * h..], &qh[32 * h..], &sc[8 * h..]);
                        // Four 32-blocks per 128: codes at l, l+32, l+64, l+96.
                        for part in 0..4 {
                            for l in 0..32 {
                                let lo = match part {
                                    0 => ql[l] & 0xF,
                                    1 => ql[l + 32] & 0xF,
                                    2 => ql[l] >> 4,
                                    _ => ql[l + 32] >> 4,
                                };
                                let hi = (qh[l] >> (2 * part)) & 3;
                                q[l] = ((lo | (hi << 4)) as i8 - 32) as u8;
                            }
                            let s0 = d * (sc[2 * part] as i8) as f32;
                            let s1 = d * (sc[2 * part + 1] as i8) as f32;
                            emit(4 * h + part, &q, [s0, s1]);
                        }
                    }
                }
                _ => unreachable!(),
            }
        }
        Some(w.compact_scales().with_bias())
    }

    pub fn out_features(&self) -> usize {
        self.n
    }
    pub fn in_features(&self) -> usize {
        self.k
    }
    pub fn source_dtype(&self) -> GgmlDType {
        self.source
    }

    /// Stacks weights with the same `k` and layout along the output dimension (fused q/k/v or
    /// gate/up): the result's columns are `self`'s, then `other`'s, each unchanged.
    pub fn concat(parts: &[&QWeight]) -> Option<QWeight> {
        let first = parts.first()?;
        if parts
            .iter()
            .any(|p| p.k != first.k || p.layout != first.layout || p.halves != first.halves)
        {
            return None;
        }
        let n = parts.iter().map(|p| p.n).sum();
        let kb = first.k / BLOCK;
        let mut out = Self::empty(first.layout, first.halves, n, first.k, first.source);
        let mut col = 0;
        for p in parts {
            for c in 0..p.n {
                for b in 0..kb {
                    let (q, s) = p.get(c, b);
                    out.put(col, b, &q, s);
                }
                col += 1;
            }
        }
        Some(out.compact_scales().with_bias())
    }

    /// `x: [m, k]` row-major f32 -> `out: [m, n]`. Runs on the current rayon pool.
    pub fn matmul(&self, x: &[f32], m: usize, out: &mut [f32]) {
        self.matmul_with(best_kernel(), x, m, out)
    }

    /// [`Self::matmul`] with a chosen kernel (panics if this CPU cannot run it).
    pub fn matmul_with(&self, kernel: Kernel, x: &[f32], m: usize, out: &mut [f32]) {
        assert_eq!(x.len(), m * self.k, "qgemm: x is not [m, k]");
        assert_eq!(out.len(), m * self.n, "qgemm: out is not [m, n]");
        match kernel {
            Kernel::Reference => {}
            Kernel::Avx2 => assert!(available(), "qgemm: AVX2 kernel on a CPU without it"),
            Kernel::Avx512Vnni => assert!(avx512_vnni_available(), "qgemm: no AVX-512 VNNI"),
        }
        if m == 0 || self.n == 0 {
            return;
        }
        let acts = QActs::quantize(x, m, self.k, kernel != Kernel::Reference);
        let panels = self.n.div_ceil(PANEL);
        let threads = rayon::current_num_threads().max(1);
        // Panel chunks: a few per thread to balance, fewer when there is little work (a
        // decode step's small matrices). Only the split of work changes with the thread
        // count, never an output's arithmetic.
        let work = panels * (self.k / BLOCK) * m;
        let tasks = (work / MIN_TASK_WORK).clamp(1, threads * 4);
        let per = panels.div_ceil(tasks).max(1);
        let ptr = SendPtr(out.as_mut_ptr());
        let run = |chunk: usize| {
            let ptr = &ptr;
            let (p0, p1) = (chunk * per, ((chunk + 1) * per).min(panels));
            // SAFETY: each task writes the columns of its own panels only, inside [m, n].
            unsafe { self.panels(kernel, &acts, p0..p1, ptr.0) };
        };
        let chunks = panels.div_ceil(per);
        if chunks == 1 {
            run(0);
        } else {
            (0..chunks).into_par_iter().for_each(run);
        }
        acts.recycle();
    }

    /// Computes every row for the columns of `panels`, writing into `out` (`[m, n]`).
    ///
    /// # Safety
    /// `out` points to `m × n` writable floats that no one else touches in these columns.
    unsafe fn panels(
        &self,
        kernel: Kernel,
        a: &QActs,
        panels: std::ops::Range<usize>,
        out: *mut f32,
    ) {
        let mut tile = [[0f32; PANEL]; ROWS];
        // Rows in chunks whose quantized activations stay in L2 while every panel of this
        // task passes over them (a long prompt's rows do not fit).
        for r0 in (0..a.m).step_by(ROW_CHUNK) {
            let r1 = (r0 + ROW_CHUNK).min(a.m);
            for p in panels.clone() {
                let c0 = p * PANEL;
                let cols = (self.n - c0).min(PANEL);
                let mut r = r0;
                while r < r1 {
                    let rows = (r1 - r).min(ROWS);
                    match kernel {
                        Kernel::Reference => reference::tile(self, p, a, r, rows, &mut tile),
                        #[cfg(target_arch = "x86_64")]
                        _ => x86::tile(kernel, self, p, a, r, rows, &mut tile),
                        #[cfg(not(target_arch = "x86_64"))]
                        _ => unreachable!("qgemm SIMD kernels need x86-64"),
                    }
                    for (i, vals) in tile[..rows].iter().enumerate() {
                        let dst = out.add((r + i) * self.n + c0);
                        std::ptr::copy_nonoverlapping(vals.as_ptr(), dst, cols);
                    }
                    r += rows;
                }
            }
        }
    }

    /// Dequantized `[n, k]` row-major weights (tests and references).
    pub fn dequantize(&self) -> Vec<f32> {
        let kb = self.k / BLOCK;
        let mut out = vec![0f32; self.n * self.k];
        for (blk, o) in out.chunks_exact_mut(BLOCK).enumerate() {
            let (q, [s0, s1]) = self.get(blk / kb, blk % kb);
            for (j, (o, &q)) in o.iter_mut().zip(&q).enumerate() {
                *o = match self.layout {
                    Layout::Q4 => s0 * q as f32 + s1,
                    Layout::Q8 => (if j < 16 { s0 } else { s1 }) * (q as i8) as f32,
                };
            }
        }
        out
    }
}

struct SendPtr(*mut f32);
// SAFETY: tasks write disjoint elements (see `matmul_with`).
unsafe impl Sync for SendPtr {}
unsafe impl Send for SendPtr {}
