//! Batched quantized GEMM on the CPU: `y[m, n] = x[m, k] · W[n, k]ᵀ` for GGUF weights.
//!
//! Weights are repacked at load into one of two layouts made of 32-element blocks (the
//! activation block size), column by column:
//! - [`Layout::Q4`] (Q4_0, Q4_1, Q4_K): 4-bit codes `q` in 0..16 with an f32 scale `d` and
//!   offset `m` per block, `w = d·q + m` (Q4_0: `m = -8d`; Q4_K: `d·sc`, `-dmin·mn`);
//! - [`Layout::Q8`] (Q8_0, Q5_0, Q6_K): signed 8-bit codes with one f32 scale per 16 elements
//!   (Q8_0 and Q5_0 repeat their block scale, Q5_0's codes are `q - 16`; Q6_K's codes are `q - 32` under `d·sc`).
//!
//! Activations are quantized once per call to 8-bit blocks of 32 (`a = d_a·qa`, round to
//! nearest) and every weight block read is used for up to [`ROWS`] activation rows.
//!
//! **Batch invariance by construction.** Each output `y[r, c]` is computed by one thread, from
//! row `r`'s own quantized blocks only, with the same instruction sequence whatever the number
//! of rows, the row tile it lands in and the thread count: an 8-lane f32 accumulator takes one
//! fused multiply-add per block in block order, then a fixed horizontal sum. The AVX-512 VNNI
//! path (chosen at run time) computes the same exact integer block sums as the AVX2 path (no
//! i16 saturation is reachable with these code ranges), so both give identical bits.

use candle_core::quantized::{GgmlDType, QTensor};
use half::f16;
use rayon::prelude::*;

/// Elements per block (weights and activations).
pub const BLOCK: usize = 32;
/// Activation rows that share one read of a weight block.
const ROWS: usize = 4;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    Q4,
    Q8,
}

/// A repacked weight `[n, k]` (`k` a multiple of 32).
#[derive(Debug)]
pub struct QWeight {
    layout: Layout,
    n: usize,
    k: usize,
    /// Q4: 16 bytes per block (byte `i`: element `i` low nibble, element `i + 16` high);
    /// Q8: 32 bytes per block. Column `c`, block `b` at `(c * kb + b)`.
    codes: Vec<u8>,
    /// Q4: `[d, m]` per block; Q8: `[d0, d1]` (elements 0..16 and 16..32) per block.
    scales: Vec<[f32; 2]>,
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

#[cfg(target_arch = "x86_64")]
fn has_vnni() -> bool {
    use std::sync::OnceLock;
    static V: OnceLock<bool> = OnceLock::new();
    *V.get_or_init(|| {
        std::env::var("FLARE_CPU_NO_VNNI").is_err()
            && is_x86_feature_detected!("avx512vnni")
            && is_x86_feature_detected!("avx512vl")
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

impl QWeight {
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
        let code_bytes = if layout == Layout::Q4 { 16 } else { 32 };
        let mut codes = vec![0u8; n * kb * code_bytes];
        let mut scales = vec![[0f32; 2]; n * kb];
        // One 32-element block at a time: (codes as 0..16 or i8, two scales).
        let mut q = [0u8; 32];
        for (i, src) in data.chunks_exact(per_block).enumerate() {
            let first = i * span / BLOCK; // index of the first 32-block this source block covers
            let mut emit = |b: usize, q: &[u8; 32], s: [f32; 2]| {
                let at = first + b;
                scales[at] = s;
                let dst = &mut codes[at * code_bytes..(at + 1) * code_bytes];
                if layout == Layout::Q4 {
                    for j in 0..16 {
                        dst[j] = q[j] | (q[j + 16] << 4);
                    }
                } else {
                    dst.copy_from_slice(q);
                }
            };
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
        Some(Self {
            layout,
            n,
            k,
            codes,
            scales,
            source: dtype,
        })
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
            .any(|p| p.k != first.k || p.layout != first.layout)
        {
            return None;
        }
        Some(QWeight {
            layout: first.layout,
            n: parts.iter().map(|p| p.n).sum(),
            k: first.k,
            codes: parts.iter().flat_map(|p| p.codes.iter().copied()).collect(),
            scales: parts
                .iter()
                .flat_map(|p| p.scales.iter().copied())
                .collect(),
            source: first.source,
        })
    }

    /// `x: [m, k]` row-major f32 -> `out: [m, n]`. Runs on the current rayon pool.
    pub fn matmul(&self, x: &[f32], m: usize, out: &mut [f32]) {
        assert_eq!(x.len(), m * self.k, "qgemm: x is not [m, k]");
        assert_eq!(out.len(), m * self.n, "qgemm: out is not [m, n]");
        if m == 0 || self.n == 0 {
            return;
        }
        let acts = QActs::quantize(x, m, self.k);
        let threads = rayon::current_num_threads().max(1);
        // Column chunks: enough tasks to balance, each a multiple of 4 columns. Only the split
        // of work changes with the thread count, never an output's arithmetic.
        let per = (self.n.div_ceil(threads * 8)).next_multiple_of(4).max(4);
        let ptr = SendPtr(out.as_mut_ptr());
        let n = self.n;
        (0..n.div_ceil(per)).into_par_iter().for_each(|chunk| {
            let ptr = &ptr;
            let (c0, c1) = (chunk * per, ((chunk + 1) * per).min(n));
            let mut r = 0;
            while r < m {
                let rows = (m - r).min(ROWS);
                for c in c0..c1 {
                    let mut vals = [0f32; ROWS];
                    self.column(c, &acts, r, rows, &mut vals);
                    for (i, v) in vals[..rows].iter().enumerate() {
                        // SAFETY: (r + i, c) is inside [m, n] and written by this task only.
                        unsafe { *ptr.0.add((r + i) * n + c) = *v };
                    }
                }
                r += rows;
            }
        });
    }

    fn column(&self, c: usize, a: &QActs, r: usize, rows: usize, vals: &mut [f32; ROWS]) {
        #[cfg(target_arch = "x86_64")]
        {
            let vnni = has_vnni();
            // SAFETY: `available()` gated the construction of every QWeight that reaches here
            // (Linear only repacks when it holds); the VNNI path only when the CPU has it.
            unsafe {
                match (rows, vnni) {
                    (4, false) => x86::column::<4, false>(self, c, a, r, vals),
                    (4, true) => x86::column::<4, true>(self, c, a, r, vals),
                    (3, false) => x86::column::<3, false>(self, c, a, r, vals),
                    (3, true) => x86::column::<3, true>(self, c, a, r, vals),
                    (2, false) => x86::column::<2, false>(self, c, a, r, vals),
                    (2, true) => x86::column::<2, true>(self, c, a, r, vals),
                    (_, false) => x86::column::<1, false>(self, c, a, r, vals),
                    (_, true) => x86::column::<1, true>(self, c, a, r, vals),
                }
            }
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            let _ = (c, a, r, rows, vals);
            unreachable!("qgemm needs x86-64 (available() is false elsewhere)")
        }
    }

    /// Dequantized `[n, k]` row-major weights (tests and references).
    pub fn dequantize(&self) -> Vec<f32> {
        let kb = self.k / BLOCK;
        let mut out = vec![0f32; self.n * self.k];
        for (blk, o) in out.chunks_exact_mut(BLOCK).enumerate() {
            let [s0, s1] = self.scales[blk];
            match self.layout {
                Layout::Q4 => {
                    let q = &self.codes[blk * 16..blk * 16 + 16];
                    for j in 0..16 {
                        o[j] = s0 * (q[j] & 0xF) as f32 + s1;
                        o[j + 16] = s0 * (q[j] >> 4) as f32 + s1;
                    }
                }
                Layout::Q8 => {
                    let q = &self.codes[blk * 32..blk * 32 + 32];
                    for j in 0..32 {
                        o[j] = if j < 16 { s0 } else { s1 } * (q[j] as i8) as f32;
                    }
                }
            }
        }
        debug_assert_eq!(out.len(), self.n * kb * BLOCK);
        out
    }
}

struct SendPtr(*mut f32);
// SAFETY: tasks write disjoint elements (see `matmul`).
unsafe impl Sync for SendPtr {}
unsafe impl Send for SendPtr {}

/// Activations quantized to 8-bit blocks of 32: per block `d` and `d · Σqa`.
struct QActs {
    kb: usize,
    q: Vec<i8>,
    d: Vec<f32>,
    sum: Vec<f32>,
}

impl QActs {
    fn quantize(x: &[f32], m: usize, k: usize) -> Self {
        let kb = k / BLOCK;
        let mut q = vec![0i8; m * k];
        let mut d = vec![0f32; m * kb];
        let mut sum = vec![0f32; m * kb];
        type Item<'a> = (((&'a [f32], &'a mut [i8]), &'a mut f32), &'a mut f32);
        let work = |(((xb, qb), db), sb): Item| {
            let amax = xb.iter().fold(0f32, |a, v| a.max(v.abs()));
            let scale = amax / 127.0;
            let inv = if scale > 0.0 { 1.0 / scale } else { 0.0 };
            let mut s = 0i32;
            for (o, v) in qb.iter_mut().zip(xb) {
                let r = (v * inv).round() as i32;
                *o = r as i8;
                s += r;
            }
            *db = scale;
            *sb = scale * s as f32;
        };
        // Each block on its own: the split over threads cannot change a value.
        if m * k >= 1 << 16 {
            x.par_chunks_exact(BLOCK)
                .zip(q.par_chunks_exact_mut(BLOCK))
                .zip(d.par_iter_mut())
                .zip(sum.par_iter_mut())
                .for_each(work);
        } else {
            x.chunks_exact(BLOCK)
                .zip(q.chunks_exact_mut(BLOCK))
                .zip(d.iter_mut())
                .zip(sum.iter_mut())
                .for_each(work);
        }
        Self { kb, q, d, sum }
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    use super::{Layout, QActs, QWeight, BLOCK, ROWS};

    #[inline(always)]
    unsafe fn hsum(v: __m256) -> f32 {
        let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps::<1>(v));
        let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
        let s = _mm_add_ss(s, _mm_movehdup_ps(s));
        _mm_cvtss_f32(s)
    }

    /// Σ over pairs of u8·i8 into 8 i32 lanes (lane `j` covers elements `4j..4j+4`).
    #[inline(always)]
    unsafe fn dot_u8i8<const VNNI: bool>(u: __m256i, s: __m256i) -> __m256i {
        if VNNI {
            _mm256_dpbusd_epi32(_mm256_setzero_si256(), u, s)
        } else {
            let p = _mm256_maddubs_epi16(u, s);
            _mm256_madd_epi16(p, _mm256_set1_epi16(1))
        }
    }

    /// Rows `r..r+R` against column `c`; `vals[i]` gets row `r + i`.
    pub(super) unsafe fn column<const R: usize, const VNNI: bool>(
        w: &QWeight,
        c: usize,
        a: &QActs,
        r: usize,
        vals: &mut [f32; ROWS],
    ) {
        if VNNI {
            column_vnni::<R>(w, c, a, r, vals)
        } else {
            column_avx2::<R>(w, c, a, r, vals)
        }
    }

    #[target_feature(enable = "avx2,fma")]
    unsafe fn column_avx2<const R: usize>(
        w: &QWeight,
        c: usize,
        a: &QActs,
        r: usize,
        vals: &mut [f32; ROWS],
    ) {
        column_body::<R, false>(w, c, a, r, vals)
    }

    #[target_feature(enable = "avx2,fma,avx512vnni,avx512vl")]
    unsafe fn column_vnni<const R: usize>(
        w: &QWeight,
        c: usize,
        a: &QActs,
        r: usize,
        vals: &mut [f32; ROWS],
    ) {
        column_body::<R, true>(w, c, a, r, vals)
    }

    #[inline(always)]
    #[allow(clippy::needless_range_loop)] // `i` indexes rows of several arrays
    unsafe fn column_body<const R: usize, const VNNI: bool>(
        w: &QWeight,
        c: usize,
        a: &QActs,
        r: usize,
        vals: &mut [f32; ROWS],
    ) {
        let kb = a.kb;
        let mut acc = [_mm256_setzero_ps(); R];
        let mut off = [0f32; R];
        let scales = &w.scales[c * kb..(c + 1) * kb];
        // Each row's own quantized blocks, scales and sums (pointers, so the per-block address
        // arithmetic is one add per row).
        let (mut qp, mut dp, mut sp) = ([a.q.as_ptr(); R], [a.d.as_ptr(); R], [a.sum.as_ptr(); R]);
        for i in 0..R {
            let base = (r + i) * kb;
            qp[i] = qp[i].add(base * BLOCK);
            dp[i] = dp[i].add(base);
            sp[i] = sp[i].add(base);
        }
        match w.layout {
            Layout::Q4 => {
                let codes = w.codes.as_ptr().add(c * kb * 16);
                let low = _mm_set1_epi8(0xF);
                for (b, &[d, m]) in scales.iter().enumerate() {
                    let v = _mm_loadu_si128(codes.add(b * 16) as *const __m128i);
                    let lo = _mm_and_si128(v, low);
                    let hi = _mm_and_si128(_mm_srli_epi16::<4>(v), low);
                    let wq = _mm256_set_m128i(hi, lo);
                    let dv = _mm256_set1_ps(d);
                    for i in 0..R {
                        let x = _mm256_loadu_si256(qp[i].add(b * BLOCK) as *const __m256i);
                        let p = _mm256_cvtepi32_ps(dot_u8i8::<VNNI>(wq, x));
                        // d·d_a in every lane: the same product as the scalar one.
                        let s = _mm256_mul_ps(dv, _mm256_broadcast_ss(&*dp[i].add(b)));
                        acc[i] = _mm256_fmadd_ps(p, s, acc[i]);
                        off[i] += m * *sp[i].add(b);
                    }
                }
            }
            Layout::Q8 => {
                let codes = w.codes.as_ptr().add(c * kb * 32);
                for (b, &[d0, d1]) in scales.iter().enumerate() {
                    let wq = _mm256_loadu_si256(codes.add(b * 32) as *const __m256i);
                    let wabs = _mm256_sign_epi8(wq, wq);
                    let dv = _mm256_set_m128(_mm_set1_ps(d1), _mm_set1_ps(d0));
                    for i in 0..R {
                        let x = _mm256_loadu_si256(qp[i].add(b * BLOCK) as *const __m256i);
                        let xs = _mm256_sign_epi8(x, wq);
                        let p = _mm256_cvtepi32_ps(dot_u8i8::<VNNI>(wabs, xs));
                        let s = _mm256_mul_ps(dv, _mm256_broadcast_ss(&*dp[i].add(b)));
                        acc[i] = _mm256_fmadd_ps(p, s, acc[i]);
                    }
                }
            }
        }
        for i in 0..R {
            vals[i] = hsum(acc[i]) + off[i];
        }
    }
}
