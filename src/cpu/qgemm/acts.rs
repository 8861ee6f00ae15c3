//! Activations quantized to 8-bit blocks of 32, once per product: `a = d·qa` with
//! `d = amax / 127` and `qa = round_ties_even(a · (1/d))`, in -127..=127.
//! Each block is quantized on its own, so neither the batch nor the thread split can change
//! a value; the AVX2 path does the same f32 operations as the scalar one (the kernel tests
//! compare products that quantize one way against the reference quantizing the other).

use std::cell::RefCell;

use rayon::prelude::*;

use super::BLOCK;

pub(super) struct QActs {
    pub m: usize,
    pub kb: usize,
    /// `[m, k]` codes.
    pub q: Vec<i8>,
    /// Per block: the scale `d`.
    pub d: Vec<f32>,
    /// Per block: `d · Σqa` (the Q4 offsets' factor).
    pub sa: Vec<f32>,
    /// Per block: `Σqa` over elements 0..16 and 16..32 (exact corrections of biased codes).
    pub sums: Vec<[i32; 2]>,
}

thread_local! {
    /// The last product's buffers, reused by the next one on this thread (a decode step runs
    /// hundreds of products; allocating and zeroing each showed in profiles).
    static SPARE: RefCell<Option<QActs>> = const { RefCell::new(None) };
}

/// Blocks per parallel task (small tasks cost more in scheduling than they save).
const TASK_BLOCKS: usize = 256;

impl QActs {
    /// Quantizes `x: [m, k]`; `simd` picks the AVX2 path (identical values).
    pub fn quantize(x: &[f32], m: usize, k: usize, simd: bool) -> Self {
        let kb = k / BLOCK;
        let mut a = SPARE.with(|s| s.borrow_mut().take()).unwrap_or(QActs {
            m: 0,
            kb: 0,
            q: Vec::new(),
            d: Vec::new(),
            sa: Vec::new(),
            sums: Vec::new(),
        });
        a.m = m;
        a.kb = kb;
        // Every element is overwritten below; resize only pays for growth.
        a.q.resize(m * k, 0);
        a.d.resize(m * kb, 0.0);
        a.sa.resize(m * kb, 0.0);
        a.sums.resize(m * kb, [0; 2]);
        let run =
            |xc: &[f32], qc: &mut [i8], dc: &mut [f32], sc: &mut [f32], hc: &mut [[i32; 2]]| {
                let blocks = xc.chunks_exact(BLOCK).zip(qc.chunks_exact_mut(BLOCK));
                for (((xb, qb), db), (sb, hb)) in blocks.zip(dc).zip(sc.iter_mut().zip(hc)) {
                    let (xb, qb) = (xb.try_into().unwrap(), qb.try_into().unwrap());
                    let (scale, s) = quantize_block(xb, qb, simd);
                    *db = scale;
                    *sb = scale * (s[0] + s[1]) as f32;
                    *hb = s;
                }
            };
        let x = &x[..m * k];
        if m * kb > TASK_BLOCKS {
            x.par_chunks(TASK_BLOCKS * BLOCK)
                .zip(a.q.par_chunks_mut(TASK_BLOCKS * BLOCK))
                .zip(a.d.par_chunks_mut(TASK_BLOCKS))
                .zip(a.sa.par_chunks_mut(TASK_BLOCKS))
                .zip(a.sums.par_chunks_mut(TASK_BLOCKS))
                .for_each(|((((xc, qc), dc), sc), hc)| run(xc, qc, dc, sc, hc));
        } else {
            run(x, &mut a.q, &mut a.d, &mut a.sa, &mut a.sums);
        }
        a
    }

    /// Hands the buffers back for the next product on this thread.
    pub fn recycle(self) {
        SPARE.with(|s| *s.borrow_mut() = Some(self));
    }
}

/// One block: its scale and the code sums of its two halves.
fn quantize_block(x: &[f32; BLOCK], q: &mut [i8; BLOCK], simd: bool) -> (f32, [i32; 2]) {
    #[cfg(target_arch = "x86_64")]
    if simd {
        // SAFETY: `simd` is only set for the AVX2 kernels, which checked the CPU.
        return unsafe { x86::quantize_block(x, q) };
    }
    let _ = simd;
    let amax = x.iter().fold(0f32, |a, v| a.max(v.abs()));
    let (scale, inv) = scale_of(amax);
    let mut s = [0i32; 2];
    for (i, (o, v)) in q.iter_mut().zip(x).enumerate() {
        let r = (v * inv).round_ties_even() as i32;
        *o = r as i8;
        s[i / 16] += r;
    }
    (scale, s)
}

/// The block scale `amax / 127` and the factor that maps values to codes.
#[inline(always)]
fn scale_of(amax: f32) -> (f32, f32) {
    let scale = amax / 127.0;
    (scale, if scale > 0.0 { 1.0 / scale } else { 0.0 })
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    use super::{scale_of, BLOCK};

    #[inline(always)]
    unsafe fn hsum_i32(v: __m256i) -> i32 {
        let s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256::<1>(v));
        let s = _mm_add_epi32(s, _mm_shuffle_epi32::<0b01_00_11_10>(s));
        let s = _mm_add_epi32(s, _mm_shuffle_epi32::<0b10_11_00_01>(s));
        _mm_cvtsi128_si32(s)
    }

    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn quantize_block(x: &[f32; BLOCK], q: &mut [i8; BLOCK]) -> (f32, [i32; 2]) {
        let p = x.as_ptr();
        let v = [
            _mm256_loadu_ps(p),
            _mm256_loadu_ps(p.add(8)),
            _mm256_loadu_ps(p.add(16)),
            _mm256_loadu_ps(p.add(24)),
        ];
        let sign = _mm256_set1_ps(-0.0);
        let abs = |v| _mm256_andnot_ps(sign, v);
        let m = _mm256_max_ps(
            _mm256_max_ps(abs(v[0]), abs(v[1])),
            _mm256_max_ps(abs(v[2]), abs(v[3])),
        );
        // max is exact whatever the order.
        let m = _mm_max_ps(_mm256_castps256_ps128(m), _mm256_extractf128_ps::<1>(m));
        let m = _mm_max_ps(m, _mm_movehl_ps(m, m));
        let m = _mm_max_ss(m, _mm_movehdup_ps(m));
        let (scale, inv) = scale_of(_mm_cvtss_f32(m));
        let inv = _mm256_set1_ps(inv);
        const NEAREST: i32 = _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC;
        let r = v.map(|v| _mm256_cvtps_epi32(_mm256_round_ps::<NEAREST>(_mm256_mul_ps(v, inv))));
        let s0 = hsum_i32(_mm256_add_epi32(r[0], r[1]));
        let s1 = hsum_i32(_mm256_add_epi32(r[2], r[3]));
        // Packing interleaves 128-bit lanes; the permute restores element order.
        let p01 = _mm256_packs_epi32(r[0], r[1]);
        let p23 = _mm256_packs_epi32(r[2], r[3]);
        let b = _mm256_packs_epi16(p01, p23);
        let b = _mm256_permutevar8x32_epi32(b, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
        _mm256_storeu_si256(q.as_mut_ptr() as *mut __m256i, b);
        (scale, [s0, s1])
    }
}
