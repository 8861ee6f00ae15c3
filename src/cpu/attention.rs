//! SIMD inner loops of CPU paged attention over an f32 cache (AVX2 + FMA, chosen at run time):
//! the scores of a group of query heads against the keys of one KV head, the softmax with a
//! vectorized `exp`, and the probability-weighted sum of the values.
//!
//! **Fixed order.** Every value these produce depends only on the query, the positions it
//! attends to and their keys and values, never on the batch, the thread or where a position
//! falls in an 8-wide tile: a score is one 8-lane fused multiply-add chain over the head
//! dimension then a fixed pairwise sum; the softmax sum runs over 8 lanes in position order
//! (positions past the end count as exact zeros) then a fixed pairwise sum; each output element
//! is one multiply-add chain in position order.

/// Whether this machine runs the kernels (AVX2 and FMA; checked once at run time).
pub fn available() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        use std::sync::OnceLock;
        static ON: OnceLock<bool> = OnceLock::new();
        *ON.get_or_init(|| {
            std::env::var("FLARE_CPU_ATTN_SIMD").map_or(true, |v| v != "off" && v != "0")
                && is_x86_feature_detected!("avx2")
                && is_x86_feature_detected!("fma")
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

/// One work item's attention: the `group` query heads in `q` (`[group, d]`, already scaled)
/// against the rows of `k` and `v` at element offsets `offs` (in position order), with an
/// optional per-head sink logit. Writes `[group, d]` to `out`. `offs` must have a length that
/// is a multiple of 8 (`padded(n)`); entries past `n` may repeat any valid offset.
///
/// `scores` is scratch of `group * offs.len()` elements.
#[allow(clippy::too_many_arguments)]
pub fn attend(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    offs: &[usize],
    n: usize,
    d: usize,
    sinks: Option<&[f32]>,
    scores: &mut [f32],
    out: &mut [f32],
) {
    let group = q.len() / d;
    let np = offs.len();
    assert!(supports(d) && available() && np.is_multiple_of(8) && n <= np && n > 0);
    assert!(scores.len() >= group * np && out.len() == group * d);
    for &o in offs {
        assert!(
            o + d <= k.len() && o + d <= v.len(),
            "attention: offset out of range"
        );
    }
    #[cfg(target_arch = "x86_64")]
    // SAFETY: `available()` checked AVX2/FMA; offsets were bounds-checked above.
    unsafe {
        x86::attend(q, k, v, offs, n, d, sinks, scores, out)
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = (k, v, sinks, scores, out);
        unreachable!()
    }
}

/// `n` rounded up to whole 8-position tiles.
pub fn padded(n: usize) -> usize {
    n.next_multiple_of(8)
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

    #[target_feature(enable = "avx2,fma")]
    #[allow(clippy::too_many_arguments)]
    pub(super) unsafe fn attend(
        q: &[f32],
        k: &[f32],
        v: &[f32],
        offs: &[usize],
        n: usize,
        d: usize,
        sinks: Option<&[f32]>,
        scores: &mut [f32],
        out: &mut [f32],
    ) {
        let group = q.len() / d;
        let np = offs.len();
        let (kp, vp) = (k.as_ptr(), v.as_ptr());
        // Scores, 8 positions at a time.
        for g in 0..group {
            let qg = q.as_ptr().add(g * d);
            let sg = scores.as_mut_ptr().add(g * np);
            for t in (0..np).step_by(8) {
                let mut acc = [_mm256_setzero_ps(); 8];
                for c in (0..d).step_by(8) {
                    let qv = _mm256_loadu_ps(qg.add(c));
                    for (p, a) in acc.iter_mut().enumerate() {
                        let kv = _mm256_loadu_ps(kp.add(*offs.get_unchecked(t + p) + c));
                        *a = _mm256_fmadd_ps(qv, kv, *a);
                    }
                }
                _mm256_storeu_ps(sg.add(t), transpose_sum(&acc));
            }
            // Padding positions get no probability.
            for s in &mut scores[g * np + n..(g + 1) * np] {
                *s = f32::NEG_INFINITY;
            }
        }
        // Softmax numerators in place; `inv[g]` the reciprocal of each head's denominator.
        let mut inv = [0f32; 64];
        let mut inv_heap = Vec::new();
        let inv: &mut [f32] = if group <= 64 {
            &mut inv[..group]
        } else {
            inv_heap.resize(group, 0.0);
            &mut inv_heap
        };
        for g in 0..group {
            let sg = &mut scores[g * np..(g + 1) * np];
            let sink = sinks.map(|s| s[g]);
            let mut mv = _mm256_set1_ps(f32::NEG_INFINITY);
            for c in sg.chunks_exact(8) {
                mv = _mm256_max_ps(mv, _mm256_loadu_ps(c.as_ptr()));
            }
            let mut lanes = [0f32; 8];
            _mm256_storeu_ps(lanes.as_mut_ptr(), mv);
            let max = lanes
                .iter()
                .fold(sink.unwrap_or(f32::NEG_INFINITY), |a, &b| a.max(b));
            let m = _mm256_set1_ps(max);
            let mut sum = _mm256_setzero_ps();
            for c in sg.chunks_exact_mut(8) {
                let e = exp8(_mm256_sub_ps(_mm256_loadu_ps(c.as_ptr()), m));
                _mm256_storeu_ps(c.as_mut_ptr(), e);
                sum = _mm256_add_ps(sum, e);
            }
            let sink_term = match sink {
                Some(s) => {
                    let mut t = [0f32; 8];
                    t[0] = s - max;
                    let e = exp8(_mm256_loadu_ps(t.as_ptr()));
                    _mm256_cvtss_f32(e)
                }
                None => 0.0,
            };
            inv[g] = 1.0 / (hsum(sum) + sink_term);
        }
        // Weighted sum of values: strips of up to 32 elements for up to 4 heads at once, so
        // each value row is read once per strip and the accumulators stay in registers.
        let mut g0 = 0;
        while g0 < group {
            let gs = (group - g0).min(4);
            let mut c = 0;
            while c < d {
                let left = (d - c) / 8;
                let w = match gs {
                    1 | 2 => left.min(4),
                    _ => left.min(2),
                };
                let args = (scores.as_ptr(), np, vp, offs, n, &*inv, out.as_mut_ptr(), d);
                match (gs, w) {
                    (1, 4) => pv_strip::<1, 4>(g0, c, args),
                    (1, 2) | (1, 3) => pv_strip::<1, 2>(g0, c, args),
                    (1, _) => pv_strip::<1, 1>(g0, c, args),
                    (2, 4) => pv_strip::<2, 4>(g0, c, args),
                    (2, 2) | (2, 3) => pv_strip::<2, 2>(g0, c, args),
                    (2, _) => pv_strip::<2, 1>(g0, c, args),
                    (3, 2) => pv_strip::<3, 2>(g0, c, args),
                    (3, _) => pv_strip::<3, 1>(g0, c, args),
                    (_, 2) => pv_strip::<4, 2>(g0, c, args),
                    (_, _) => pv_strip::<4, 1>(g0, c, args),
                }
                c += 8 * if w == 3 { 2 } else { w };
            }
            g0 += gs;
        }
    }

    /// Inputs of one strip: scores, their row stride, values, offsets, positions, the
    /// reciprocal denominators, the output and the head dimension.
    type StripArgs<'a> = (
        *const f32,
        usize,
        *const f32,
        &'a [usize],
        usize,
        &'a [f32],
        *mut f32,
        usize,
    );

    /// Output elements `c..c + 8W` of heads `g0..g0 + G`: one multiply-add chain per element
    /// over the positions in order, then the softmax denominator.
    #[inline(always)]
    unsafe fn pv_strip<const G: usize, const W: usize>(g0: usize, c: usize, a: StripArgs) {
        let (scores, np, vp, offs, n, inv, out, d) = a;
        let mut acc = [[_mm256_setzero_ps(); W]; G];
        for j in 0..n {
            let row = vp.add(*offs.get_unchecked(j) + c);
            let mut v = [_mm256_setzero_ps(); W];
            for (x, vx) in v.iter_mut().enumerate() {
                *vx = _mm256_loadu_ps(row.add(8 * x));
            }
            for (gi, a) in acc.iter_mut().enumerate() {
                let p = _mm256_broadcast_ss(&*scores.add((g0 + gi) * np + j));
                for x in 0..W {
                    a[x] = _mm256_fmadd_ps(p, v[x], a[x]);
                }
            }
        }
        for (gi, a) in acc.iter().enumerate() {
            let g = g0 + gi;
            let s = _mm256_set1_ps(inv[g]);
            let o = out.add(g * d + c);
            for (x, ax) in a.iter().enumerate() {
                _mm256_storeu_ps(o.add(8 * x), _mm256_mul_ps(*ax, s));
            }
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
}
