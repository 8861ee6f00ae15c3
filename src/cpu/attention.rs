//! SIMD inner loops of CPU paged attention over an f32, f16, bf16 or FP8 e4m3 cache (AVX2,
//! FMA and F16C, chosen at run time;
//! larger register blocks where AVX-512VL is present): one context chunk of a tile of query
//! vectors (the heads of several query rows that share a KV head), giving each vector's chunk
//! max, softmax sum and weighted values, and the fold that merges chunks in order.
//!
//! **Fixed order.** Every value these produce depends only on the query, the positions it
//! attends to and their keys and values, never on the batch, the thread, the tile or the
//! register blocking: a score is one 8-lane fused multiply-add chain over the head dimension
//! then a fixed pairwise sum; the softmax sum runs over 8 lanes indexed by absolute position
//! (positions outside the range count as exact zeros) then a fixed pairwise sum; each output
//! element is one multiply-add chain in position order; chunks fold in chunk order.

/// Whether this machine runs the kernels (AVX2, FMA and F16C; checked once at run time).
pub fn available() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        use std::sync::OnceLock;
        static ON: OnceLock<bool> = OnceLock::new();
        *ON.get_or_init(|| {
            std::env::var("FLARE_CPU_ATTN_SIMD").map_or(true, |v| v != "off" && v != "0")
                && is_x86_feature_detected!("avx2")
                && is_x86_feature_detected!("fma")
                && is_x86_feature_detected!("f16c")
        })
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// Whether a head dimension fits the kernels (whole 8-lane vectors).
pub fn supports(head_dim: usize) -> bool {
    head_dim > 0 && head_dim.is_multiple_of(8)
}

/// What a cache element is: the kernels read f32, f16, bf16 and FP8 e4m3 caches, widening 8
/// elements at a time to f32 exactly (each is a subset of f32; e4m3 to its value / 2^120, the
/// power of two taken back in the arithmetic), so a narrow cache gives the same bits as an f32
/// cache holding the same values, at a half or a quarter of the bytes read.
pub trait CacheLane: Copy + Send + Sync + sealed::Sealed + 'static {
    #[doc(hidden)]
    const KIND: LaneKind;
}

#[doc(hidden)]
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum LaneKind {
    F32,
    F16,
    Bf16,
    E4m3,
}

/// An FP8 e4m3fn byte of the cache (the per-tensor scale is the caller's).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(transparent)]
pub struct E4m3(pub u8);

impl E4m3 {
    /// The bytes as e4m3 lanes (same memory).
    pub fn lanes(bytes: &[u8]) -> &[E4m3] {
        // SAFETY: `E4m3` is `repr(transparent)` over `u8`.
        unsafe { std::slice::from_raw_parts(bytes.as_ptr().cast(), bytes.len()) }
    }
}

mod sealed {
    pub trait Sealed {}
    impl Sealed for f32 {}
    impl Sealed for half::f16 {}
    impl Sealed for half::bf16 {}
    impl Sealed for super::E4m3 {}
}

impl CacheLane for f32 {
    const KIND: LaneKind = LaneKind::F32;
}
impl CacheLane for half::f16 {
    const KIND: LaneKind = LaneKind::F16;
}
impl CacheLane for half::bf16 {
    const KIND: LaneKind = LaneKind::Bf16;
}
impl CacheLane for E4m3 {
    const KIND: LaneKind = LaneKind::E4m3;
}

/// Positions per context chunk. A query row's attention is computed chunk by chunk over the
/// absolute positions `[c * CHUNK, (c + 1) * CHUNK)` and the chunk results folded in chunk
/// order; the chunking depends only on positions, never on the batch or the thread count, so
/// chunks may run on different threads (decode over a long context) and still give the same
/// bits as one pass.
pub const CHUNK: usize = 256;

/// One chunk's unnormalised softmax result per query vector: the largest score `m`, the sum
/// `l` of `exp(score - m)` (0 when the vector attends to nothing in this chunk) and
/// `o = Σ exp(score - m) · value` (`[nq, d]`).
pub struct Partials<'a> {
    pub m: &'a mut [f32],
    pub l: &'a mut [f32],
    pub o: &'a mut [f32],
}

/// The chunk partials of `nq = ranges.len()` query vectors (`q`: `[nq, d]`, already scaled)
/// against the K/V rows at element offsets `offs`, which hold absolute positions
/// `span0 .. span0 + offs.len()` (`span0` and the length multiples of 8; offsets outside the
/// attended positions must still be valid rows). Query vector `i` attends to the inclusive
/// range `ranges[i]` of absolute positions (empty when start > end).
///
/// **Fixed order, whatever the tile.** A score is one 8-lane fused multiply-add chain over the
/// head dimension then a fixed pairwise lane sum; the softmax sum runs over 8 lanes indexed by
/// absolute position modulo 8 (positions outside the range are exact zeros) then a fixed
/// pairwise sum; each output element is one multiply-add chain over the vector's own
/// positions in order. So a vector's partials are the same bits whichever other query vectors
/// (rows, heads) share its tile: tiling only changes how often K and V are read.
///
/// `scores` is scratch of `nq * offs.len()` elements.
#[allow(clippy::too_many_arguments)]
pub fn chunk_partials<C: CacheLane>(
    q: &[f32],
    k: &[C],
    v: &[C],
    offs: &[usize],
    span0: usize,
    ranges: &[(usize, usize)],
    d: usize,
    scores: &mut [f32],
    out: Partials,
) {
    chunk_partials_with(wide(), q, k, v, offs, span0, ranges, d, scores, out)
}

/// Whether the kernels may use AVX-512VL's 32 vector registers (same results, fewer loads).
pub fn wide() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        use std::sync::OnceLock;
        static ON: OnceLock<bool> = OnceLock::new();
        *ON.get_or_init(|| {
            is_x86_feature_detected!("avx512f") && is_x86_feature_detected!("avx512vl")
        })
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// [`chunk_partials`] with the register blocking chosen by the caller (`wide` needs
/// AVX-512VL; tests compare both).
#[allow(clippy::too_many_arguments)]
pub fn chunk_partials_with<C: CacheLane>(
    wide: bool,
    q: &[f32],
    k: &[C],
    v: &[C],
    offs: &[usize],
    span0: usize,
    ranges: &[(usize, usize)],
    d: usize,
    scores: &mut [f32],
    out: Partials,
) {
    let nq = ranges.len();
    let np = offs.len();
    assert!(supports(d) && available() && np.is_multiple_of(8) && span0.is_multiple_of(8));
    assert!(!wide || self::wide(), "AVX-512VL not available");
    assert!(q.len() == nq * d && scores.len() >= nq * np);
    assert!(out.m.len() == nq && out.l.len() == nq && out.o.len() == nq * d);
    for &(a, b) in ranges {
        assert!(
            a > b || (a >= span0 && b < span0 + np),
            "attention: range outside span"
        );
    }
    for &o in offs {
        assert!(
            o + d <= k.len() && o + d <= v.len(),
            "attention: offset out of range"
        );
    }
    #[cfg(target_arch = "x86_64")]
    // SAFETY: `available()` checked AVX2/FMA; offsets and ranges were checked above.
    unsafe {
        if wide {
            x86::chunk_partials_wide(q, k, v, offs, span0, ranges, d, scores, out)
        } else {
            x86::chunk_partials(q, k, v, offs, span0, ranges, d, scores, out)
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = (wide, k, v, scores, out);
        unreachable!()
    }
}

/// Folds one chunk's partials (`m`, `l`, `o`) into a running state (`sm`, `sl`, `acc`) that
/// holds the chunks before it: `acc = acc · exp(sm - m') + o · exp(m - m')` with
/// `m' = max(sm, m)`, and the same for `sl`. A state starts as a copy of the first chunk whose
/// `l` is not zero; the caller skips chunks with `l == 0`.
pub fn fold(sm: &mut f32, sl: &mut f32, acc: &mut [f32], m: f32, l: f32, o: &[f32]) {
    assert!(available() && acc.len() == o.len() && acc.len().is_multiple_of(8));
    #[cfg(target_arch = "x86_64")]
    // SAFETY: AVX2/FMA checked by `available()`; lengths checked above.
    unsafe {
        x86::fold(sm, sl, acc, m, l, o)
    }
    #[cfg(not(target_arch = "x86_64"))]
    unreachable!()
}

/// The attention output of a folded state: `acc / sl`, with an optional sink logit that
/// joins the softmax denominator without a value.
pub fn finish(sm: f32, sl: f32, acc: &[f32], sink: Option<f32>, out: &mut [f32]) {
    assert!(available() && acc.len() == out.len() && acc.len().is_multiple_of(8));
    #[cfg(target_arch = "x86_64")]
    // SAFETY: AVX2/FMA checked by `available()`; lengths checked above.
    unsafe {
        x86::finish(sm, sl, acc, sink, out)
    }
    #[cfg(not(target_arch = "x86_64"))]
    unreachable!()
}

/// `exp` of every element (tests; the kernel's own vector `exp`).
pub fn exp_in_place(x: &mut [f32]) {
    assert!(available());
    #[cfg(target_arch = "x86_64")]
    // SAFETY: AVX2/FMA checked by `available()`.
    unsafe {
        x86::exp_slice(x)
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::{CacheLane, LaneKind};
    use std::arch::x86_64::*;

    /// `exp(x)` on 8 lanes: `2^n · p(r)` with `x = n·ln2 + r`, |r| <= ln2/2, Cephes' degree-5
    /// polynomial (about 1 ulp); exactly 1 at 0 and exactly 0 below -87.3 (and at -inf).
    #[inline(always)]
    pub(super) unsafe fn exp8(x: __m256) -> __m256 {
        let tiny = _mm256_cmp_ps::<_CMP_LT_OQ>(x, _mm256_set1_ps(-87.33));
        let x = _mm256_min_ps(
            _mm256_max_ps(x, _mm256_set1_ps(-87.33)),
            _mm256_set1_ps(88.37),
        );
        let n = _mm256_round_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(
            _mm256_mul_ps(x, _mm256_set1_ps(std::f32::consts::LOG2_E)),
        );
        let r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693_359_4), x);
        let r = _mm256_fnmadd_ps(n, _mm256_set1_ps(-2.121_944_4e-4), r);
        let mut p = _mm256_set1_ps(1.987_569_1e-4);
        for c in [1.398_2e-3, 8.333_452e-3, 4.166_579_6e-2, 0.166_666_65, 0.5] {
            p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(c));
        }
        let r2 = _mm256_mul_ps(r, r);
        let y = _mm256_add_ps(_mm256_fmadd_ps(p, r2, r), _mm256_set1_ps(1.0));
        let pow2 = _mm256_castsi256_ps(_mm256_slli_epi32::<23>(_mm256_add_epi32(
            _mm256_cvtps_epi32(n),
            _mm256_set1_epi32(127),
        )));
        _mm256_andnot_ps(tiny, _mm256_mul_ps(y, pow2))
    }

    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn exp_slice(x: &mut [f32]) {
        let (chunks, tail) = x.as_chunks_mut::<8>();
        for c in chunks {
            _mm256_storeu_ps(c.as_mut_ptr(), exp8(_mm256_loadu_ps(c.as_ptr())));
        }
        if !tail.is_empty() {
            let mut t = [0f32; 8];
            t[..tail.len()].copy_from_slice(tail);
            _mm256_storeu_ps(t.as_mut_ptr(), exp8(_mm256_loadu_ps(t.as_ptr())));
            let len = tail.len();
            tail.copy_from_slice(&t[..len]);
        }
    }

    /// Eight cache elements from `p`, widened exactly to f32.
    #[inline(always)]
    unsafe fn load8<C: CacheLane>(p: *const C) -> __m256 {
        match C::KIND {
            LaneKind::F32 => _mm256_loadu_ps(p.cast()),
            LaneKind::F16 => _mm256_cvtph_ps(_mm_loadu_si128(p.cast())),
            LaneKind::Bf16 => _mm256_castsi256_ps(_mm256_slli_epi32::<16>(_mm256_cvtepu16_epi32(
                _mm_loadu_si128(p.cast()),
            ))),
            LaneKind::E4m3 => {
                // A sign-extended byte shifted left 20 puts e4m3's exponent and mantissa where
                // f32's are and copies its sign into bit 31; masked, that is exactly the value
                // / 2^120 (bias 7 against 127; e4m3's subnormals land on f32's). `body` takes
                // the 2^120 back where it costs least (`E4M3_Q`, `E4M3_P`). NaN bytes (0x7f,
                // 0xff) would read as +-480 / 2^120: `body` finds them in a pass of its own
                // (`any_nan_byte`), far cheaper than checking every load, and only once the
                // process has written one (`fp8::nan_bytes_written`).
                let b = _mm256_cvtepi8_epi32(_mm_loadl_epi64(p.cast()));
                _mm256_castsi256_ps(_mm256_and_si256(
                    _mm256_slli_epi32::<20>(b),
                    _mm256_set1_epi32(0x87f0_0000_u32 as i32),
                ))
            }
        }
    }

    /// What an e4m3 lane's 2^-120 is taken back with: q is scaled by `E4M3_Q` and each score
    /// by `E4M3_Q` again (so neither q nor a partial dot product leaves f32's normal range),
    /// each softmax weight by `E4M3_P` before it meets a value. Powers of two: the products
    /// are the unscaled ones exactly, so an FP8 cache gives the bits of an f32 cache holding
    /// the same values (unless a partial dot product is below 2^-66 in magnitude).
    const E4M3_Q: f32 = f32::from_bits((127 + 60) << 23);
    const E4M3_P: f32 = f32::from_bits((127 + 120) << 23);

    /// [`load8`] for tests.
    #[cfg(test)]
    #[target_feature(enable = "avx2,fma,f16c")]
    pub(super) unsafe fn widen8<C: CacheLane>(x: &[C; 8]) -> [f32; 8] {
        let mut out = [0f32; 8];
        let x = load8(x.as_ptr());
        let x = match C::KIND {
            LaneKind::E4m3 => _mm256_mul_ps(x, _mm256_set1_ps(E4M3_P)),
            _ => x,
        };
        _mm256_storeu_ps(out.as_mut_ptr(), x);
        out
    }

    /// Sum of the 8 lanes in a fixed pairwise order.
    #[inline(always)]
    unsafe fn hsum(v: __m256) -> f32 {
        let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps::<1>(v));
        let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
        let s = _mm_add_ss(s, _mm_movehdup_ps(s));
        _mm_cvtss_f32(s)
    }

    /// Lane `p` of the result is the fixed pairwise sum of the lanes of `a[p]` (the same
    /// additions, in the same order, for every `p`).
    #[inline(always)]
    unsafe fn transpose_sum(a: &[__m256; 8]) -> __m256 {
        // hadd pairs neighbours within each register: lane order stays per register.
        let s01 = _mm256_hadd_ps(a[0], a[1]);
        let s23 = _mm256_hadd_ps(a[2], a[3]);
        let s45 = _mm256_hadd_ps(a[4], a[5]);
        let s67 = _mm256_hadd_ps(a[6], a[7]);
        let s0123 = _mm256_hadd_ps(s01, s23);
        let s4567 = _mm256_hadd_ps(s45, s67);
        // Each 128-bit half now holds [p0, p1, p2, p3] partial sums over lanes 0..4 (low)
        // and 4..8 (high) of positions 0..4 (s0123) and 4..8 (s4567).
        let lo = _mm256_permute2f128_ps::<0x20>(s0123, s4567);
        let hi = _mm256_permute2f128_ps::<0x31>(s0123, s4567);
        _mm256_add_ps(lo, hi)
    }

    /// `exp(x)` of one value (lane 0 of [`exp8`], so the fold uses the kernel's own `exp`).
    #[inline(always)]
    unsafe fn exp1(x: f32) -> f32 {
        _mm256_cvtss_f32(exp8(_mm256_set1_ps(x)))
    }

    /// Scores of query vectors `qi..qi + QB` against positions `t..t + PB` of the span:
    /// `QB * PB` accumulators over the head dimension, each K row loaded once for all `QB`
    /// vectors, then summed 8 at a time by [`transpose_sum`] (the same lane order for every
    /// score, whatever the block shape).
    #[inline(always)]
    unsafe fn score_block<const QB: usize, const PB: usize, C: CacheLane>(
        qp: *const f32,
        kp: *const C,
        offs: &[usize],
        (qi, t, d, np): (usize, usize, usize, usize),
        scores: *mut f32,
    ) {
        let mut acc = [[_mm256_setzero_ps(); PB]; QB];
        let mut rows = [kp; PB];
        for (p, r) in rows.iter_mut().enumerate() {
            *r = kp.add(*offs.get_unchecked(t + p));
        }
        for c in (0..d).step_by(8) {
            let mut qv = [_mm256_setzero_ps(); QB];
            for (b, x) in qv.iter_mut().enumerate() {
                *x = _mm256_loadu_ps(qp.add((qi + b) * d + c));
            }
            for (p, row) in rows.iter().enumerate() {
                let kv = load8(row.add(c));
                for b in 0..QB {
                    acc[b][p] = _mm256_fmadd_ps(qv[b], kv, acc[b][p]);
                }
            }
        }
        let mut group = [_mm256_setzero_ps(); 8];
        let mut lanes = [0f32; 8];
        for i0 in (0..QB * PB).step_by(8) {
            for (i, g) in group.iter_mut().enumerate() {
                *g = acc[(i0 + i) / PB][(i0 + i) % PB];
            }
            let sums = transpose_sum(&group);
            let sums = match C::KIND {
                LaneKind::E4m3 => _mm256_mul_ps(sums, _mm256_set1_ps(E4M3_Q)),
                _ => sums,
            };
            _mm256_storeu_ps(lanes.as_mut_ptr(), sums);
            for (i, &x) in lanes.iter().enumerate() {
                let (b, p) = ((i0 + i) / PB, (i0 + i) % PB);
                *scores.add((qi + b) * np + t + p) = x;
            }
        }
    }

    /// [`body`] with 16 vector registers.
    #[target_feature(enable = "avx2,fma,f16c")]
    #[allow(clippy::too_many_arguments)]
    pub(super) unsafe fn chunk_partials<C: CacheLane>(
        q: &[f32],
        k: &[C],
        v: &[C],
        offs: &[usize],
        span0: usize,
        ranges: &[(usize, usize)],
        d: usize,
        scores: &mut [f32],
        out: super::Partials,
    ) {
        body::<false, C>(q, k, v, offs, span0, ranges, d, scores, out)
    }

    /// [`body`] with AVX-512VL's 32 vector registers: the same 256-bit operations in the same
    /// order (so the same bits), in larger register blocks that load each K and V row for
    /// more query vectors at once.
    #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512vl")]
    #[allow(clippy::too_many_arguments)]
    pub(super) unsafe fn chunk_partials_wide<C: CacheLane>(
        q: &[f32],
        k: &[C],
        v: &[C],
        offs: &[usize],
        span0: usize,
        ranges: &[(usize, usize)],
        d: usize,
        scores: &mut [f32],
        out: super::Partials,
    ) {
        body::<true, C>(q, k, v, offs, span0, ranges, d, scores, out)
    }

    #[inline(always)]
    #[allow(clippy::too_many_arguments)]
    unsafe fn body<const WIDE: bool, C: CacheLane>(
        q: &[f32],
        k: &[C],
        v: &[C],
        offs: &[usize],
        span0: usize,
        ranges: &[(usize, usize)],
        d: usize,
        scores: &mut [f32],
        out: super::Partials,
    ) {
        let nq = ranges.len();
        let np = offs.len();
        let q_e4m3: Vec<f32>;
        let q = match C::KIND {
            LaneKind::E4m3 => {
                q_e4m3 = q.iter().map(|x| x * E4M3_Q).collect();
                &q_e4m3[..]
            }
            _ => q,
        };
        let (qp, kp, sp) = (q.as_ptr(), k.as_ptr(), scores.as_mut_ptr());
        // Scores of the whole span: several query vectors share each K row load. The first
        // pass over the span also prefetches the K rows two blocks ahead into L1.
        let prefetch = |t: usize, n: usize| {
            prefetch_rows::<_MM_HINT_T0, C>(
                kp,
                &offs[(t + K_AHEAD).min(np)..(t + K_AHEAD + n).min(np)],
                d,
            );
        };
        // Every row this chunk reads, into L2 up front: a KV head's rows of a block are one
        // contiguous run in the CPU's head-major cache (`kv::KvLayout`), and asking for all of
        // them at once keeps the memory system busy where the hardware streams restart at each
        // block (`cargo bench --bench attention`, Zen 4: about a fifth less time per position).
        prefetch_rows::<_MM_HINT_T1, C>(kp, offs, d);
        prefetch_rows::<_MM_HINT_T1, C>(v.as_ptr(), offs, d);
        let has_nan = C::KIND == LaneKind::E4m3
            && crate::quant::fp8::nan_bytes_written()
            && (any_nan_byte(kp.cast(), offs, d) || any_nan_byte(v.as_ptr().cast(), offs, d));
        let mut qi = 0;
        while WIDE && qi + 3 <= nq {
            for t in (0..np).step_by(8) {
                if qi == 0 {
                    prefetch(t, 8);
                }
                score_block::<3, 8, C>(qp, kp, offs, (qi, t, d, np), sp);
            }
            qi += 3;
        }
        while qi + 2 <= nq {
            for t in (0..np).step_by(4) {
                if qi == 0 {
                    prefetch(t, 4);
                }
                score_block::<2, 4, C>(qp, kp, offs, (qi, t, d, np), sp);
            }
            qi += 2;
        }
        if qi < nq {
            for t in (0..np).step_by(8) {
                if qi == 0 {
                    prefetch(t, 8);
                }
                score_block::<1, 8, C>(qp, kp, offs, (qi, t, d, np), sp);
            }
        }
        // Softmax numerators in place over each vector's own 8-aligned tiles.
        for (i, &(a, b)) in ranges.iter().enumerate() {
            if a > b {
                out.m[i] = f32::NEG_INFINITY;
                out.l[i] = 0.0;
                continue;
            }
            let (ia, ib) = (a - span0, b - span0);
            let (t0, t1) = (ia & !7, (ib + 8) & !7);
            let sg = &mut scores[i * np + t0..i * np + t1];
            for x in &mut sg[..ia - t0] {
                *x = f32::NEG_INFINITY;
            }
            for x in &mut sg[ib + 1 - t0..] {
                *x = f32::NEG_INFINITY;
            }
            let mut mv = _mm256_set1_ps(f32::NEG_INFINITY);
            for c in sg.chunks_exact(8) {
                mv = _mm256_max_ps(mv, _mm256_loadu_ps(c.as_ptr()));
            }
            let mut lanes = [0f32; 8];
            _mm256_storeu_ps(lanes.as_mut_ptr(), mv);
            let max = lanes.iter().fold(f32::NEG_INFINITY, |x, &y| x.max(y));
            let mm = _mm256_set1_ps(max);
            let mut sum = _mm256_setzero_ps();
            for c in sg.chunks_exact_mut(8) {
                let e = exp8(_mm256_sub_ps(_mm256_loadu_ps(c.as_ptr()), mm));
                let w = match C::KIND {
                    LaneKind::E4m3 => _mm256_mul_ps(e, _mm256_set1_ps(E4M3_P)),
                    _ => e,
                };
                _mm256_storeu_ps(c.as_mut_ptr(), w);
                sum = _mm256_add_ps(sum, e);
            }
            out.m[i] = max;
            out.l[i] = hsum(sum);
        }
        // Weighted sum of values: strips of up to 64 elements for up to 6 vectors at once, as
        // wide as the registers allow (G·W accumulators, G weights and one value vector), so
        // each value row is read in as few passes as possible and the accumulators stay in
        // registers.
        let mut g0 = 0;
        while g0 < nq {
            let gs = (nq - g0).min(if WIDE { 6 } else { 4 });
            let most = match gs {
                1 => 8,
                2 | 3 if WIDE => 8,
                2 => 4,
                _ if WIDE => 4,
                _ => 2,
            };
            let mut c = 0;
            while c < d {
                let w = match ((d - c) / 8).min(most) {
                    8.. => 8,
                    4..=7 => 4,
                    2 | 3 => 2,
                    _ => 1,
                };
                let args = Strip {
                    scores: sp,
                    np,
                    vp: v.as_ptr(),
                    offs,
                    span0,
                    ranges,
                    out: out.o.as_mut_ptr(),
                    d,
                };
                match (gs, w) {
                    (1, 8) => pv_strip::<1, 8, C>(g0, c, &args),
                    (1, 4) => pv_strip::<1, 4, C>(g0, c, &args),
                    (1, 2) => pv_strip::<1, 2, C>(g0, c, &args),
                    (1, _) => pv_strip::<1, 1, C>(g0, c, &args),
                    (2, 8) => pv_strip::<2, 8, C>(g0, c, &args),
                    (2, 4) => pv_strip::<2, 4, C>(g0, c, &args),
                    (2, 2) => pv_strip::<2, 2, C>(g0, c, &args),
                    (2, _) => pv_strip::<2, 1, C>(g0, c, &args),
                    (3, 8) => pv_strip::<3, 8, C>(g0, c, &args),
                    (3, 4) => pv_strip::<3, 4, C>(g0, c, &args),
                    (3, 2) => pv_strip::<3, 2, C>(g0, c, &args),
                    (3, _) => pv_strip::<3, 1, C>(g0, c, &args),
                    (4, 4) => pv_strip::<4, 4, C>(g0, c, &args),
                    (4, 2) => pv_strip::<4, 2, C>(g0, c, &args),
                    (4, _) => pv_strip::<4, 1, C>(g0, c, &args),
                    (5, 4) => pv_strip::<5, 4, C>(g0, c, &args),
                    (5, 2) => pv_strip::<5, 2, C>(g0, c, &args),
                    (5, _) => pv_strip::<5, 1, C>(g0, c, &args),
                    (_, 4) => pv_strip::<6, 4, C>(g0, c, &args),
                    (_, 2) => pv_strip::<6, 2, C>(g0, c, &args),
                    (_, _) => pv_strip::<6, 1, C>(g0, c, &args),
                }
                c += 8 * w;
            }
            g0 += gs;
        }
        if has_nan {
            poison_nan_ranges(kp.cast(), v.as_ptr().cast(), offs, span0, ranges, d, out);
        }
    }

    /// Whether any of the e4m3 rows at `offs` (`d` bytes each, `d` a multiple of 8) holds a
    /// NaN byte (0x7f or 0xff).
    #[inline(always)]
    unsafe fn any_nan_byte(base: *const u8, offs: &[usize], d: usize) -> bool {
        let m7f = _mm256_set1_epi8(0x7f);
        let mut hit = _mm256_setzero_si256();
        for &o in offs {
            let row = base.add(o);
            let mut c = 0;
            while c + 32 <= d {
                let x = _mm256_loadu_si256(row.add(c).cast());
                hit = _mm256_or_si256(hit, _mm256_cmpeq_epi8(_mm256_and_si256(x, m7f), m7f));
                c += 32;
            }
            while c < d {
                let x = _mm256_castsi128_si256(_mm_loadl_epi64(row.add(c).cast()));
                let x = _mm256_and_si256(x, _mm256_set_epi64x(0, 0, 0, -1));
                hit = _mm256_or_si256(hit, _mm256_cmpeq_epi8(_mm256_and_si256(x, m7f), m7f));
                c += 8;
            }
        }
        _mm256_testz_si256(hit, hit) == 0
    }

    /// Reads an FP8 cache's NaN bytes as NaN after the fact, as the f32 cache would have: a
    /// vector whose range holds a position with a NaN in its K or V row gets NaN partials.
    #[cold]
    unsafe fn poison_nan_ranges(
        kp: *const u8,
        vp: *const u8,
        offs: &[usize],
        span0: usize,
        ranges: &[(usize, usize)],
        d: usize,
        out: super::Partials,
    ) {
        let nan_row = |base: *const u8, o: usize| {
            std::slice::from_raw_parts(base.add(o), d)
                .iter()
                .any(|&b| b & 0x7f == 0x7f)
        };
        let bad: Vec<bool> = offs
            .iter()
            .map(|&o| nan_row(kp, o) || nan_row(vp, o))
            .collect();
        for (i, &(a, b)) in ranges.iter().enumerate() {
            if a <= b && bad[a - span0..=b - span0].iter().any(|&x| x) {
                out.m[i] = f32::NAN;
                out.l[i] = f32::NAN;
                out.o[i * d..(i + 1) * d].fill(f32::NAN);
            }
        }
    }

    /// Positions ahead of the current score block whose K rows are prefetched.
    const K_AHEAD: usize = 16;

    /// Prefetches the cache rows at `offs` (`d` elements each) with hint `HINT` (`_MM_HINT_T0`:
    /// into L1, `_MM_HINT_T1`: into L2). Only memory traffic changes, never a value.
    #[inline(always)]
    unsafe fn prefetch_rows<const HINT: i32, C>(base: *const C, offs: &[usize], d: usize) {
        let bytes = d * std::mem::size_of::<C>();
        for &o in offs {
            let row = base.add(o).cast::<i8>();
            for b in (0..bytes).step_by(64) {
                _mm_prefetch::<HINT>(row.add(b));
            }
        }
    }

    /// Inputs of one value strip.
    struct Strip<'a, C> {
        scores: *const f32,
        np: usize,
        vp: *const C,
        offs: &'a [usize],
        span0: usize,
        ranges: &'a [(usize, usize)],
        out: *mut f32,
        d: usize,
    }

    /// Output elements `c..c + 8W` of vectors `g0..g0 + G`: one multiply-add chain per element
    /// over the vector's own positions in order (positions every vector attends to take the
    /// branch-free loop; at the edges of causal or windowed rows each vector checks its range).
    #[inline(always)]
    #[allow(clippy::needless_range_loop)] // `x` and `gi` index two register arrays at once
    unsafe fn pv_strip<const G: usize, const W: usize, C: CacheLane>(
        g0: usize,
        c: usize,
        a: &Strip<C>,
    ) {
        let rs = &a.ranges[g0..g0 + G];
        let (mut lo, mut hi, mut all_lo, mut all_hi) = (usize::MAX, 0, 0, usize::MAX);
        for &(x, y) in rs {
            if x > y {
                (all_lo, all_hi) = (1, 0);
                continue;
            }
            (lo, hi) = (lo.min(x), hi.max(y));
            (all_lo, all_hi) = (all_lo.max(x), all_hi.min(y));
        }
        let mut acc = [[_mm256_setzero_ps(); W]; G];
        if lo <= hi {
            for j in lo..=hi {
                let idx = j - a.span0;
                let row = a.vp.add(*a.offs.get_unchecked(idx) + c);
                let mut p = [_mm256_setzero_ps(); G];
                for (gi, p) in p.iter_mut().enumerate() {
                    *p = _mm256_broadcast_ss(&*a.scores.add((g0 + gi) * a.np + idx));
                }
                if j >= all_lo && j <= all_hi {
                    for x in 0..W {
                        let v = load8(row.add(8 * x));
                        for gi in 0..G {
                            acc[gi][x] = _mm256_fmadd_ps(p[gi], v, acc[gi][x]);
                        }
                    }
                } else {
                    for x in 0..W {
                        let v = load8(row.add(8 * x));
                        for gi in 0..G {
                            if j >= rs[gi].0 && j <= rs[gi].1 {
                                acc[gi][x] = _mm256_fmadd_ps(p[gi], v, acc[gi][x]);
                            }
                        }
                    }
                }
            }
        }
        for (gi, acc) in acc.iter().enumerate() {
            let o = a.out.add((g0 + gi) * a.d + c);
            for (x, ax) in acc.iter().enumerate() {
                _mm256_storeu_ps(o.add(8 * x), *ax);
            }
        }
    }

    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn fold(
        sm: &mut f32,
        sl: &mut f32,
        acc: &mut [f32],
        m: f32,
        l: f32,
        o: &[f32],
    ) {
        let mx = sm.max(m);
        let (a, b) = (exp1(*sm - mx), exp1(m - mx));
        *sl = *sl * a + l * b;
        *sm = mx;
        let (av, bv) = (_mm256_set1_ps(a), _mm256_set1_ps(b));
        for (x, y) in acc.chunks_exact_mut(8).zip(o.chunks_exact(8)) {
            let s = _mm256_mul_ps(_mm256_loadu_ps(x.as_ptr()), av);
            let r = _mm256_fmadd_ps(_mm256_loadu_ps(y.as_ptr()), bv, s);
            _mm256_storeu_ps(x.as_mut_ptr(), r);
        }
    }

    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn finish(sm: f32, sl: f32, acc: &[f32], sink: Option<f32>, out: &mut [f32]) {
        let (a, l) = match sink {
            Some(s) => {
                let mx = sm.max(s);
                let a = exp1(sm - mx);
                (a, sl * a + exp1(s - mx))
            }
            None => (1.0, sl),
        };
        let (av, inv) = (_mm256_set1_ps(a), _mm256_set1_ps(1.0 / l));
        for (x, y) in out.chunks_exact_mut(8).zip(acc.chunks_exact(8)) {
            let r = _mm256_mul_ps(_mm256_mul_ps(_mm256_loadu_ps(y.as_ptr()), av), inv);
            _mm256_storeu_ps(x.as_mut_ptr(), r);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The vector `exp` is within 2 ulp of libm's over the softmax range, exactly 1 at 0 and
    /// exactly 0 far below (padding positions carry no probability).
    #[test]
    fn vector_exp_matches_libm() {
        if !available() {
            return;
        }
        let mut xs: Vec<f32> = (0..20_000).map(|i| -87.0 + i as f32 * 0.0044).collect();
        xs.extend([0.0, -0.0, -1e-8, -100.0, -1e30, f32::NEG_INFINITY, 3.0]);
        let mut got = xs.clone();
        exp_in_place(&mut got);
        for (&x, &e) in xs.iter().zip(&got) {
            let want = x.exp();
            if x < -87.33 {
                assert_eq!(e, 0.0, "exp({x})");
            } else {
                let ulp = (want.to_bits() as i64 - e.to_bits() as i64).abs();
                assert!(ulp <= 2, "exp({x}) = {e}, libm {want} ({ulp} ulp)");
            }
        }
        assert_eq!(got[20_000], 1.0);
    }

    /// Deterministic pseudo-random values in [-1, 1).
    fn noise(n: usize, seed: u64) -> Vec<f32> {
        let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        (0..n)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                (x >> 40) as f32 / (1u64 << 23) as f32 - 1.0
            })
            .collect()
    }

    /// One chunk of query vectors with staggered causal ranges: the partials agree with a
    /// plain f64 computation (scores, max, sum, weighted values) to 1e-5 relative, and the
    /// AVX-512VL register blocking gives the same bits as the AVX2 one; each vector's partials
    /// are the same bits computed alone.
    #[test]
    fn chunk_partials_match_reference_and_are_tile_invariant() {
        if !available() {
            return;
        }
        let (d, rows_in_cache, nq) = (64, 300, 7);
        let k = noise(rows_in_cache * d, 1);
        let v = noise(rows_in_cache * d, 2);
        let q: Vec<f32> = noise(nq * d, 3).iter().map(|x| x * 0.5).collect();
        let span0 = 256;
        // Positions 256..300 of the chunk; row i of the cache holds position 256 + (i * 7) % 44.
        let offs: Vec<usize> = (0..48).map(|i| ((i * 7) % 44 + 256) * d).collect();
        let ranges: Vec<(usize, usize)> = (0..nq)
            .map(|i| match i {
                3 => (290, 280), // attends to nothing in this chunk
                _ => (256 + i, 285 + 2 * i),
            })
            .collect();
        let run = |wide: bool, qs: &[f32], rs: &[(usize, usize)]| {
            let n = rs.len();
            let (mut m, mut l, mut o) = (vec![0f32; n], vec![0f32; n], vec![0f32; n * d]);
            let mut scores = vec![0f32; n * offs.len()];
            let out = Partials {
                m: &mut m,
                l: &mut l,
                o: &mut o,
            };
            chunk_partials_with(wide, qs, &k, &v, &offs, span0, rs, d, &mut scores, out);
            (m, l, o)
        };
        let (m, l, o) = run(false, &q, &ranges);
        for (i, &(a, b)) in ranges.iter().enumerate() {
            if a > b {
                assert_eq!(l[i], 0.0);
                continue;
            }
            let qi = &q[i * d..(i + 1) * d];
            let s: Vec<f64> = (a..=b)
                .map(|p| {
                    let kr = &k[offs[p - span0]..offs[p - span0] + d];
                    qi.iter().zip(kr).map(|(x, y)| *x as f64 * *y as f64).sum()
                })
                .collect();
            let mx = s.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            let sum: f64 = s.iter().map(|x| (x - mx).exp()).sum();
            assert!(
                (m[i] as f64 - mx).abs() < 1e-5 * mx.abs().max(1.0),
                "max {i}"
            );
            assert!((l[i] as f64 - sum).abs() < 1e-5 * sum, "sum {i}");
            for c in 0..d {
                let want: f64 = (a..=b)
                    .map(|p| (s[p - a] - mx).exp() * v[offs[p - span0] + c] as f64)
                    .sum();
                let got = o[i * d + c] as f64;
                assert!(
                    (got - want).abs() < 1e-5 * sum,
                    "o {i} {c}: {got} vs {want}"
                );
            }
        }
        let bits = |x: &[f32]| x.iter().map(|y| y.to_bits()).collect::<Vec<_>>();
        if wide() {
            let (m2, l2, o2) = run(true, &q, &ranges);
            assert_eq!(
                (bits(&m), bits(&l), bits(&o)),
                (bits(&m2), bits(&l2), bits(&o2))
            );
        }
        for i in 0..nq {
            let (m1, l1, o1) = run(false, &q[i * d..(i + 1) * d], &ranges[i..i + 1]);
            assert_eq!(bits(&l1), bits(&l[i..i + 1]), "alone {i}");
            if l1[0] != 0.0 {
                assert_eq!(bits(&m1), bits(&m[i..i + 1]), "alone {i}");
                assert_eq!(bits(&o1), bits(&o[i * d..(i + 1) * d]), "alone {i}");
            }
        }
    }

    /// Every e4m3 byte but NaN widens to its value; the NaN bytes (0x7f/0xff) are the kernel's
    /// own pass to find (`e4m3_nan_bytes_give_nan_outputs`).
    #[test]
    fn e4m3_lanes_widen_to_their_values() {
        if !available() {
            return;
        }
        for b0 in (0..=255u8).step_by(8) {
            let bytes: [E4m3; 8] = std::array::from_fn(|i| E4m3(b0 + i as u8));
            // SAFETY: `available()` checked AVX2/FMA/F16C.
            let got = unsafe { x86::widen8(&bytes) };
            for (b, g) in bytes.iter().zip(got) {
                let want = crate::quant::fp8::e4m3_to_f32(b.0);
                if want.is_nan() {
                    continue;
                }
                assert_eq!(g.to_bits(), want.to_bits(), "{:#04x}: {g} vs {want}", b.0);
            }
        }
    }

    /// A NaN byte in an FP8 cache reads as NaN, as in an f32 cache: every vector whose range
    /// holds that position (in its K row or its V row) gets NaN partials, and the others the
    /// same bits as without it, with both register blockings and a head dimension that is
    /// not a multiple of 32.
    #[test]
    fn e4m3_nan_bytes_give_nan_outputs() {
        if !available() {
            return;
        }
        for d in [64, 40] {
            let rows = 64;
            let offs: Vec<usize> = (0..rows).map(|i| i * d).collect();
            // Vectors 0..3 attend to position 20, vectors 3..5 do not.
            let ranges = [(0, 30), (10, 20), (20, 63), (21, 63), (0, 19)];
            let nq = ranges.len();
            let q: Vec<f32> = noise(nq * d, 3).iter().map(|x| x * 0.5).collect();
            let enc = |x: &f32| E4m3(crate::quant::fp8::f32_to_e4m3(x * 8.0));
            // The NaN bytes below go in directly, not through the cache's encoder.
            crate::quant::fp8::note_nan_bytes_written();
            let k: Vec<E4m3> = noise(rows * d, 4).iter().map(enc).collect();
            let v: Vec<E4m3> = noise(rows * d, 5).iter().map(enc).collect();
            let run = |wide: bool, k: &[E4m3], v: &[E4m3]| {
                let (mut m, mut l, mut o) = (vec![0f32; nq], vec![0f32; nq], vec![0f32; nq * d]);
                let mut scores = vec![0f32; nq * rows];
                let out = Partials {
                    m: &mut m,
                    l: &mut l,
                    o: &mut o,
                };
                chunk_partials_with(wide, &q, k, v, &offs, 0, &ranges, d, &mut scores, out);
                (m, l, o)
            };
            for wide in [false, wide()] {
                let clean = run(wide, &k, &v);
                for (in_k, byte) in [(true, 0x7f), (false, 0xff), (true, 0xff)] {
                    let (mut k2, mut v2) = (k.clone(), v.clone());
                    let at = 20 * d + d - 3;
                    if in_k {
                        k2[at] = E4m3(byte);
                    } else {
                        v2[at] = E4m3(byte);
                    }
                    let (m, l, o) = run(wide, &k2, &v2);
                    for i in 0..nq {
                        let oi = &o[i * d..(i + 1) * d];
                        if i < 3 {
                            assert!(l[i].is_nan() && oi.iter().all(|x| x.is_nan()), "{d} {i}");
                        } else {
                            assert_eq!(m[i].to_bits(), clean.0[i].to_bits(), "{d} {i}");
                            assert_eq!(l[i].to_bits(), clean.1[i].to_bits(), "{d} {i}");
                            let want = &clean.2[i * d..(i + 1) * d];
                            assert!(oi.iter().zip(want).all(|(a, b)| a.to_bits() == b.to_bits()));
                        }
                    }
                }
            }
        }
    }

    /// f16, bf16 and e4m3 caches give the same bits as an f32 cache holding the same (rounded)
    /// values, with both register blockings: widening is exact, the arithmetic is shared.
    #[test]
    fn narrow_caches_match_f32_cache_of_the_same_values_bit_for_bit() {
        if !available() {
            return;
        }
        let (d, rows, nq) = (64, 80, 5);
        let offs: Vec<usize> = (0..64).map(|i| ((i * 5) % 80) * d).collect();
        let ranges: Vec<(usize, usize)> = (0..nq).map(|i| (3 * i, 40 + 4 * i)).collect();
        let q: Vec<f32> = noise(nq * d, 7).iter().map(|x| x * 0.5).collect();
        fn run<C: CacheLane>(
            wide: bool,
            q: &[f32],
            (k, v): (&[C], &[C]),
            offs: &[usize],
            ranges: &[(usize, usize)],
            d: usize,
        ) -> Vec<u32> {
            let n = ranges.len();
            let (mut m, mut l, mut o) = (vec![0f32; n], vec![0f32; n], vec![0f32; n * d]);
            let mut scores = vec![0f32; n * offs.len()];
            let out = Partials {
                m: &mut m,
                l: &mut l,
                o: &mut o,
            };
            chunk_partials_with(wide, q, k, v, offs, 0, ranges, d, &mut scores, out);
            m.iter().chain(&l).chain(&o).map(|x| x.to_bits()).collect()
        }
        /// `x` stored as `C`, and what that holds, widened.
        fn narrow<C: Copy>(
            x: &[f32],
            to: impl Fn(f32) -> C,
            back: impl Fn(C) -> f32,
        ) -> (Vec<C>, Vec<f32>) {
            let c: Vec<C> = x.iter().map(|&y| to(y)).collect();
            let w = c.iter().map(|&y| back(y)).collect();
            (c, w)
        }
        let (k, v) = (noise(rows * d, 8), noise(rows * d, 9));
        let (kh, kf) = narrow(&k, half::f16::from_f32, half::f16::to_f32);
        let (vh, vf) = narrow(&v, half::f16::from_f32, half::f16::to_f32);
        let (kb, kbf) = narrow(&k, half::bf16::from_f32, half::bf16::to_f32);
        let (vb, vbf) = narrow(&v, half::bf16::from_f32, half::bf16::to_f32);
        let e4m3 = |x: f32| E4m3(crate::quant::fp8::f32_to_e4m3(x * 8.0));
        let (k8, k8f) = narrow(&k, e4m3, |b| crate::quant::fp8::e4m3_to_f32(b.0));
        let (v8, v8f) = narrow(&v, e4m3, |b| crate::quant::fp8::e4m3_to_f32(b.0));
        for wide in [false, wide()] {
            let f16_bits = run(wide, &q, (&kh[..], &vh[..]), &offs, &ranges, d);
            assert_eq!(
                f16_bits,
                run(wide, &q, (&kf[..], &vf[..]), &offs, &ranges, d)
            );
            let bf16_bits = run(wide, &q, (&kb[..], &vb[..]), &offs, &ranges, d);
            assert_eq!(
                bf16_bits,
                run(wide, &q, (&kbf[..], &vbf[..]), &offs, &ranges, d)
            );
            let e4m3_bits = run(wide, &q, (&k8[..], &v8[..]), &offs, &ranges, d);
            assert_eq!(
                e4m3_bits,
                run(wide, &q, (&k8f[..], &v8f[..]), &offs, &ranges, d)
            );
            // The rounding is real: the f32 cache of the unrounded values differs.
            assert_ne!(f16_bits, run(wide, &q, (&k[..], &v[..]), &offs, &ranges, d));
        }
    }
}
