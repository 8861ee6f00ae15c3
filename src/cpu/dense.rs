//! Dense f32 `x @ W^T` for a few rows (decode, speculative verification) on the CPU; opt-in
//! (`FLARE_CPU_DENSE=on`, see `layers::linear`).
//!
//! candle's gemm takes an M-dependent path (for M > 1 it packs the weight). Here each weight
//! row is read once for all M input rows (tiles of `TILE` rows reuse it from L1), so a few rows
//! cost little more than one row's memory traffic: on a 1536x576 weight, 5 rows take 0.19 ms
//! against candle's 0.35 ms (docs/SPECULATIVE.md). Every output is the same sequence of
//! operations whatever M, the tile it falls in or the thread count (16 FMA lane sums in column
//! order, then a fixed pairwise reduction), so a row's result does not depend on the rows
//! computed with it.

use rayon::prelude::*;

/// Most input rows this path takes; more go to candle's gemm (compute-bound there anyway).
pub const MAX_ROWS: usize = 8;

const LANES: usize = 16;
/// Input rows sharing one pass over a weight row (accumulators stay in registers).
const TILE: usize = 4;

/// `x: [m, k]`, `w: [n, k]` (both row-major) -> `out: [m, n]`, `m <= MAX_ROWS`. Runs on the
/// current rayon pool.
pub fn matmul_few_rows(x: &[f32], m: usize, w: &[f32], n: usize, out: &mut [f32]) {
    assert!(m <= MAX_ROWS, "dense: {m} rows");
    let k = w.len().checked_div(n).unwrap_or(0);
    assert_eq!(w.len(), n * k, "dense: w is not [n, k]");
    assert_eq!(x.len(), m * k, "dense: x is not [m, k]");
    assert_eq!(out.len(), m * n, "dense: out is not [m, n]");
    if m == 0 || n == 0 {
        return;
    }
    let threads = rayon::current_num_threads().max(1);
    // Column chunks: enough tasks to balance; only the split of work depends on the threads.
    let per = n.div_ceil(threads * 8).max(16);
    // Each task fills its columns of a transposed `[n, m]` buffer, a contiguous slice.
    let mut out_t = vec![0f32; n * m];
    out_t
        .par_chunks_mut(per * m)
        .enumerate()
        .for_each(|(chunk, dst)| {
            let c0 = chunk * per;
            for (i, col) in dst.chunks_exact_mut(m).enumerate() {
                let wr = &w[(c0 + i) * k..(c0 + i + 1) * k];
                let mut r = 0;
                while r < m {
                    let rows = (m - r).min(TILE);
                    match rows {
                        4 => tile::<4>(x, k, r, wr, &mut col[r..r + 4]),
                        3 => tile::<3>(x, k, r, wr, &mut col[r..r + 3]),
                        2 => tile::<2>(x, k, r, wr, &mut col[r..r + 2]),
                        _ => tile::<1>(x, k, r, wr, &mut col[r..r + 1]),
                    }
                    r += rows;
                }
            }
        });
    for (c, col) in out_t.chunks_exact(m).enumerate() {
        for (r, v) in col.iter().enumerate() {
            out[r * n + c] = *v;
        }
    }
}

/// Rows `r0..r0 + R` of `x` dotted with one weight row.
#[inline(always)]
fn tile<const R: usize>(x: &[f32], k: usize, r0: usize, wr: &[f32], dst: &mut [f32]) {
    let xs: [&[f32]; R] = std::array::from_fn(|i| &x[(r0 + i) * k..(r0 + i + 1) * k]);
    let full = k / LANES * LANES;
    #[cfg(all(
        target_arch = "x86_64",
        target_feature = "avx2",
        target_feature = "fma"
    ))]
    // SAFETY: the build enables AVX2 and FMA (see cfg); every load is inside `..full` of
    // slices of length >= full.
    let acc: [[f32; LANES]; R] = unsafe { x86::lanes::<R>(&xs, wr, full) };
    #[cfg(not(all(
        target_arch = "x86_64",
        target_feature = "avx2",
        target_feature = "fma"
    )))]
    let acc: [[f32; LANES]; R] = lanes_portable::<R>(&xs, wr, full);
    for ((d, a), xr) in dst.iter_mut().zip(&acc).zip(&xs) {
        let mut tail = 0f32;
        for j in full..k {
            tail = xr[j].mul_add(wr[j], tail);
        }
        *d = reduce(a) + tail;
    }
}

/// Lane sums `acc[r][l] = sum over c = l mod LANES of fma(x[r][c], w[c])`, in `c` order.
#[cfg(not(all(
    target_arch = "x86_64",
    target_feature = "avx2",
    target_feature = "fma"
)))]
fn lanes_portable<const R: usize>(xs: &[&[f32]; R], wr: &[f32], full: usize) -> [[f32; LANES]; R] {
    let mut acc = [[0f32; LANES]; R];
    for c in (0..full).step_by(LANES) {
        for (a, xr) in acc.iter_mut().zip(xs) {
            for l in 0..LANES {
                a[l] = xr[c + l].mul_add(wr[c + l], a[l]);
            }
        }
    }
    acc
}

#[cfg(all(
    target_arch = "x86_64",
    target_feature = "avx2",
    target_feature = "fma"
))]
mod x86 {
    use super::LANES;
    use std::arch::x86_64::*;

    /// As `lanes_portable`: two 8-wide FMA accumulators per row, the weight loaded once per
    /// 16 columns for all R rows.
    #[inline(always)]
    pub unsafe fn lanes<const R: usize>(
        xs: &[&[f32]; R],
        wr: &[f32],
        full: usize,
    ) -> [[f32; LANES]; R] {
        let mut lo = [_mm256_setzero_ps(); R];
        let mut hi = [_mm256_setzero_ps(); R];
        let w = wr.as_ptr();
        let mut c = 0;
        while c < full {
            let w0 = _mm256_loadu_ps(w.add(c));
            let w1 = _mm256_loadu_ps(w.add(c + 8));
            for r in 0..R {
                let x = xs[r].as_ptr();
                lo[r] = _mm256_fmadd_ps(_mm256_loadu_ps(x.add(c)), w0, lo[r]);
                hi[r] = _mm256_fmadd_ps(_mm256_loadu_ps(x.add(c + 8)), w1, hi[r]);
            }
            c += LANES;
        }
        let mut acc = [[0f32; LANES]; R];
        for r in 0..R {
            _mm256_storeu_ps(acc[r].as_mut_ptr(), lo[r]);
            _mm256_storeu_ps(acc[r].as_mut_ptr().add(8), hi[r]);
        }
        acc
    }
}

/// Fixed pairwise sum of the lane accumulators.
#[inline(always)]
fn reduce(a: &[f32; LANES]) -> f32 {
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

    /// Close to an f64 reference, and each row bit-identical whatever M and thread count.
    #[test]
    fn matches_a_reference_and_is_row_invariant() {
        for (n, k) in [(37, 70), (576, 576), (19, 16)] {
            let w = values(n * k, 1);
            let x = values(MAX_ROWS * k, 2);
            let mut alone = vec![vec![0f32; n]; MAX_ROWS];
            for (r, a) in alone.iter_mut().enumerate() {
                matmul_few_rows(&x[r * k..(r + 1) * k], 1, &w, n, a);
            }
            let want = reference(&x, MAX_ROWS, &w, n);
            for r in 0..MAX_ROWS {
                for c in 0..n {
                    let (g, e) = (alone[r][c] as f64, want[r * n + c]);
                    assert!((g - e).abs() <= 1e-4 * (1.0 + e.abs()), "{g} vs {e}");
                }
            }
            for threads in [1, 3] {
                let pool = rayon::ThreadPoolBuilder::new()
                    .num_threads(threads)
                    .build()
                    .unwrap();
                for m in 1..=MAX_ROWS {
                    let mut out = vec![0f32; m * n];
                    pool.install(|| matmul_few_rows(&x[..m * k], m, &w, n, &mut out));
                    for r in 0..m {
                        assert_eq!(&out[r * n..(r + 1) * n], &alone[r][..], "m {m} row {r}");
                    }
                }
            }
        }
    }
}
