//! Dense f32 `y = x @ Wᵀ` on the CPU, for any number of rows, with every output's arithmetic
//! independent of the row count, the tile it lands in and the thread count.
//!
//! candle's gemm picks its path by M (a dot-product loop for one row, packed panels for many),
//! so a row's result changed with the rows computed beside it, breaking "a sequence's logits
//! are bit-identical alone or in any batch" for f32 checkpoints. Here each output `y[r, c]` is
//! [`LANES`] fused multiply-add chains over `k` (lane `l` takes `k ≡ l mod LANES`, in order),
//! then the fixed pairwise sum of [`reduce`], then the `k mod LANES` tail in order. The AVX-512
//! path (one 16-wide register per output), the AVX2 path (two 8-wide halves) and the portable
//! one perform those same operations, so all three give the same bits.
//!
//! Speed comes from tiles of `R` rows × `C` weight rows: each loaded weight vector serves `R`
//! rows and each activation vector `C` weight rows, so the AVX-512 tile (4 × 4) issues one load
//! per two FMAs and runs at the FMA units' rate, without packing the weights.

use rayon::prelude::*;

/// Lanes of each output's FMA chains (one AVX-512 register).
pub const LANES: usize = 16;
/// Rows per task: a task's rows stay in cache while it walks its columns.
const ROW_BLOCK: usize = 64;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Isa {
    Avx512,
    Avx2,
    Portable,
}

/// The best path this CPU runs (checked once; `FLARE_CPU_NO_AVX512` forces AVX2 for tests).
pub fn isa() -> Isa {
    use std::sync::OnceLock;
    static ISA: OnceLock<Isa> = OnceLock::new();
    *ISA.get_or_init(|| {
        #[cfg(target_arch = "x86_64")]
        {
            if std::env::var("FLARE_CPU_NO_AVX512").is_err() && is_x86_feature_detected!("avx512f")
            {
                return Isa::Avx512;
            }
            if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
                return Isa::Avx2;
            }
        }
        Isa::Portable
    })
}

/// `x: [m, k]`, `w: [n, k]` (both row-major) -> `out: [m, n]`. Runs on the current rayon pool.
pub fn matmul(x: &[f32], m: usize, w: &[f32], n: usize, out: &mut [f32]) {
    matmul_with(isa(), x, m, w, n, out)
}

/// As [`matmul`] on a given path (tests compare the paths; `isa` must run on this CPU).
pub fn matmul_with(isa: Isa, x: &[f32], m: usize, w: &[f32], n: usize, out: &mut [f32]) {
    let k = w.len().checked_div(n).unwrap_or(0);
    assert_eq!(w.len(), n * k, "dense: w is not [n, k]");
    assert_eq!(x.len(), m * k, "dense: x is not [m, k]");
    assert_eq!(out.len(), m * n, "dense: out is not [m, n]");
    if m == 0 || n == 0 {
        return;
    }
    #[cfg(target_arch = "x86_64")]
    {
        let ok = match isa {
            Isa::Avx512 => is_x86_feature_detected!("avx512f"),
            Isa::Avx2 => is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma"),
            Isa::Portable => true,
        };
        assert!(ok, "dense: {isa:?} is not available on this CPU");
    }
    let threads = rayon::current_num_threads().max(1);
    let row_blocks = m.div_ceil(ROW_BLOCK);
    // Column chunks: enough tasks to balance the threads; only the split of the work depends on
    // the thread count, never an output's arithmetic.
    let per = n
        .div_ceil((threads * 8).div_ceil(row_blocks))
        .next_multiple_of(4)
        .max(4);
    let chunks = n.div_ceil(per);
    let ptr = SendPtr(out.as_mut_ptr());
    (0..row_blocks * chunks).into_par_iter().for_each(|task| {
        let ptr = &ptr;
        let (rb, chunk) = (task / chunks, task % chunks);
        let (r0, r1) = (rb * ROW_BLOCK, ((rb + 1) * ROW_BLOCK).min(m));
        let (c0, c1) = (chunk * per, ((chunk + 1) * per).min(n));
        let job = Job {
            x,
            w,
            k,
            n,
            out: ptr.0,
        };
        let mut r = r0;
        while r < r1 {
            let rows = (r1 - r).min(4);
            let mut c = c0;
            while c < c1 {
                let cols = (c1 - c).min(4);
                // SAFETY: rows r..r+rows and columns c..c+cols are inside [m, n], and this
                // task is the only writer of its (row block, column chunk).
                unsafe { job.tile(isa, r, rows, c, cols) };
                c += cols;
            }
            r += rows;
        }
    });
}

struct SendPtr(*mut f32);
// SAFETY: tasks write disjoint outputs (see `matmul_with`).
unsafe impl Sync for SendPtr {}
unsafe impl Send for SendPtr {}

struct Job<'a> {
    x: &'a [f32],
    w: &'a [f32],
    k: usize,
    n: usize,
    out: *mut f32,
}

impl Job<'_> {
    /// Outputs `[r, r + rows) × [c, c + cols)`, both counts in 1..=4.
    ///
    /// # Safety
    /// The block is inside `[m, n]` and no other thread writes it; `isa` runs on this CPU.
    unsafe fn tile(&self, isa: Isa, r: usize, rows: usize, c: usize, cols: usize) {
        macro_rules! dispatch {
            ($($f:ident)::+) => {
                match (rows, cols) {
                    (4, 4) => $($f)::+::<4, 4>(self, r, c),
                    (4, 3) => $($f)::+::<4, 3>(self, r, c),
                    (4, 2) => $($f)::+::<4, 2>(self, r, c),
                    (4, _) => $($f)::+::<4, 1>(self, r, c),
                    (3, 4) => $($f)::+::<3, 4>(self, r, c),
                    (3, 3) => $($f)::+::<3, 3>(self, r, c),
                    (3, 2) => $($f)::+::<3, 2>(self, r, c),
                    (3, _) => $($f)::+::<3, 1>(self, r, c),
                    (2, 4) => $($f)::+::<2, 4>(self, r, c),
                    (2, 3) => $($f)::+::<2, 3>(self, r, c),
                    (2, 2) => $($f)::+::<2, 2>(self, r, c),
                    (2, _) => $($f)::+::<2, 1>(self, r, c),
                    (_, 4) => $($f)::+::<1, 4>(self, r, c),
                    (_, 3) => $($f)::+::<1, 3>(self, r, c),
                    (_, 2) => $($f)::+::<1, 2>(self, r, c),
                    (_, _) => $($f)::+::<1, 1>(self, r, c),
                }
            };
        }
        match isa {
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512 => dispatch!(x86::tile_avx512),
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2 => dispatch!(x86::tile_avx2),
            _ => dispatch!(tile_portable),
        }
    }

    fn row(&self, r: usize) -> &[f32] {
        &self.x[r * self.k..(r + 1) * self.k]
    }

    fn weight(&self, c: usize) -> &[f32] {
        &self.w[c * self.k..(c + 1) * self.k]
    }

    /// Finishes output `(r, c)` from its lanes: the fixed pairwise sum, then the tail in order.
    ///
    /// # Safety
    /// As [`Job::tile`].
    #[inline(always)]
    unsafe fn finish(&self, r: usize, c: usize, lanes_sum: f32) {
        let full = self.k / LANES * LANES;
        let (xr, wc) = (self.row(r), self.weight(c));
        let mut tail = 0f32;
        for j in full..self.k {
            tail = xr[j].mul_add(wc[j], tail);
        }
        *self.out.add(r * self.n + c) = lanes_sum + tail;
    }
}

/// The pairwise sum every path uses: lanes `l` and `l + 8`, then `+ 4`, `+ 2`, `+ 1`.
#[inline(always)]
pub fn reduce(a: &[f32; LANES]) -> f32 {
    let mut h = *a;
    let mut width = LANES / 2;
    while width > 0 {
        for l in 0..width {
            h[l] += h[l + width];
        }
        width /= 2;
    }
    h[0]
}

unsafe fn tile_portable<const R: usize, const C: usize>(job: &Job, r: usize, c: usize) {
    let full = job.k / LANES * LANES;
    let mut acc = [[[0f32; LANES]; C]; R];
    for kk in (0..full).step_by(LANES) {
        for (i, acc_r) in acc.iter_mut().enumerate() {
            let xr = &job.row(r + i)[kk..kk + LANES];
            for (j, a) in acc_r.iter_mut().enumerate() {
                let wc = &job.weight(c + j)[kk..kk + LANES];
                for l in 0..LANES {
                    a[l] = xr[l].mul_add(wc[l], a[l]);
                }
            }
        }
    }
    for (i, acc_r) in acc.iter().enumerate() {
        for (j, a) in acc_r.iter().enumerate() {
            job.finish(r + i, c + j, reduce(a));
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::{Job, LANES};
    use std::arch::x86_64::*;

    /// `reduce` of the 16 lanes `lo ++ hi`: the same additions in the same pairs.
    #[inline(always)]
    unsafe fn reduce_halves(lo: __m256, hi: __m256) -> f32 {
        let s8 = _mm256_add_ps(lo, hi); // l + (l + 8)
        let s4 = _mm_add_ps(_mm256_castps256_ps128(s8), _mm256_extractf128_ps::<1>(s8));
        let s2 = _mm_add_ps(s4, _mm_movehl_ps(s4, s4));
        let s1 = _mm_add_ss(s2, _mm_movehdup_ps(s2));
        _mm_cvtss_f32(s1)
    }

    #[target_feature(enable = "avx512f,avx2,fma")]
    pub(super) unsafe fn tile_avx512<const R: usize, const C: usize>(
        job: &Job,
        r: usize,
        c: usize,
    ) {
        let full = job.k / LANES * LANES;
        let xs: [*const f32; R] = std::array::from_fn(|i| job.row(r + i).as_ptr());
        let ws: [*const f32; C] = std::array::from_fn(|j| job.weight(c + j).as_ptr());
        let mut acc = [[_mm512_setzero_ps(); C]; R];
        let mut kk = 0;
        while kk < full {
            let wv: [__m512; C] = std::array::from_fn(|j| _mm512_loadu_ps(ws[j].add(kk)));
            for i in 0..R {
                let xv = _mm512_loadu_ps(xs[i].add(kk));
                for j in 0..C {
                    acc[i][j] = _mm512_fmadd_ps(xv, wv[j], acc[i][j]);
                }
            }
            kk += LANES;
        }
        for i in 0..R {
            for j in 0..C {
                let v = acc[i][j];
                let lo = _mm512_castps512_ps256(v);
                let hi = _mm256_castpd_ps(_mm512_extractf64x4_pd::<1>(_mm512_castps_pd(v)));
                job.finish(r + i, c + j, reduce_halves(lo, hi));
            }
        }
    }

    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn tile_avx2<const R: usize, const C: usize>(job: &Job, r: usize, c: usize) {
        // Sixteen registers: wider tiles than 2 × 2 spill, so larger tiles go in 2 × 2 pieces.
        let mut i = 0;
        while i < R {
            let rows = (R - i).min(2);
            let mut j = 0;
            while j < C {
                let cols = (C - j).min(2);
                match (rows, cols) {
                    (2, 2) => tile_avx2_small::<2, 2>(job, r + i, c + j),
                    (2, _) => tile_avx2_small::<2, 1>(job, r + i, c + j),
                    (_, 2) => tile_avx2_small::<1, 2>(job, r + i, c + j),
                    _ => tile_avx2_small::<1, 1>(job, r + i, c + j),
                }
                j += cols;
            }
            i += rows;
        }
    }

    #[inline(always)]
    unsafe fn tile_avx2_small<const R: usize, const C: usize>(job: &Job, r: usize, c: usize) {
        let full = job.k / LANES * LANES;
        let xs: [*const f32; R] = std::array::from_fn(|i| job.row(r + i).as_ptr());
        let ws: [*const f32; C] = std::array::from_fn(|j| job.weight(c + j).as_ptr());
        let mut lo = [[_mm256_setzero_ps(); C]; R];
        let mut hi = [[_mm256_setzero_ps(); C]; R];
        let mut kk = 0;
        while kk < full {
            let w0: [__m256; C] = std::array::from_fn(|j| _mm256_loadu_ps(ws[j].add(kk)));
            let w1: [__m256; C] = std::array::from_fn(|j| _mm256_loadu_ps(ws[j].add(kk + 8)));
            for i in 0..R {
                let x0 = _mm256_loadu_ps(xs[i].add(kk));
                let x1 = _mm256_loadu_ps(xs[i].add(kk + 8));
                for j in 0..C {
                    lo[i][j] = _mm256_fmadd_ps(x0, w0[j], lo[i][j]);
                    hi[i][j] = _mm256_fmadd_ps(x1, w1[j], hi[i][j]);
                }
            }
            kk += LANES;
        }
        for i in 0..R {
            for j in 0..C {
                job.finish(r + i, c + j, reduce_halves(lo[i][j], hi[i][j]));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reference(x: &[f32], m: usize, w: &[f32], n: usize) -> Vec<f64> {
        let k = w.len() / n;
        let mut out = vec![0f64; m * n];
        for r in 0..m {
            for c in 0..n {
                out[r * n + c] = (0..k)
                    .map(|j| x[r * k + j] as f64 * w[c * k + j] as f64)
                    .sum();
            }
        }
        out
    }

    fn values(len: usize, seed: u32) -> Vec<f32> {
        (0..len as u32)
            .map(|i| {
                let h = (i.wrapping_mul(2654435761) ^ seed.wrapping_mul(40503)) % 2001;
                h as f32 / 1000.0 - 1.0
            })
            .collect()
    }

    fn paths() -> Vec<Isa> {
        let mut p = vec![Isa::Portable];
        #[cfg(target_arch = "x86_64")]
        {
            if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
                p.push(Isa::Avx2);
            }
            if is_x86_feature_detected!("avx512f") {
                p.push(Isa::Avx512);
            }
        }
        p
    }

    /// Close to an f64 reference; every row bit-identical alone and inside batches of 2..=70
    /// rows, at 1, 2 and 3 threads, on every path this CPU runs.
    #[test]
    fn matches_a_reference_and_rows_are_batch_thread_and_path_invariant() {
        const M: usize = 70;
        for (n, k) in [(37, 70), (576, 576), (19, 16), (5, 3)] {
            let w = values(n * k, 1);
            let x = values(M * k, 2);
            let mut alone = vec![vec![0f32; n]; M];
            for (r, a) in alone.iter_mut().enumerate() {
                matmul_with(Isa::Portable, &x[r * k..(r + 1) * k], 1, &w, n, a);
            }
            let want = reference(&x, M, &w, n);
            for r in 0..M {
                for c in 0..n {
                    let (g, e) = (alone[r][c] as f64, want[r * n + c]);
                    assert!((g - e).abs() <= 1e-4 * (1.0 + e.abs()), "{g} vs {e}");
                }
            }
            for isa in paths() {
                for threads in [1, 2, 3] {
                    let pool = rayon::ThreadPoolBuilder::new()
                        .num_threads(threads)
                        .build()
                        .unwrap();
                    for m in [1, 2, 3, 4, 5, 8, 9, 17, 64, 65, M] {
                        // Rows from an offset, so a row lands in different tiles.
                        let s = (M - m) / 2;
                        let mut out = vec![0f32; m * n];
                        pool.install(|| {
                            matmul_with(isa, &x[s * k..(s + m) * k], m, &w, n, &mut out)
                        });
                        for r in 0..m {
                            assert_eq!(
                                &out[r * n..(r + 1) * n],
                                &alone[s + r][..],
                                "{isa:?} threads {threads} m {m} row {r} (n {n}, k {k})"
                            );
                        }
                    }
                }
            }
        }
    }
}
