//! Dense `y = x @ Wᵀ` on the CPU (f32, bf16 or f16 weights, f32 arithmetic), for any number of rows, with every output's arithmetic
//! independent of the row count, the tile it lands in and the thread count.
//!
//! candle's gemm picks its path by M (a dot-product loop for one row, packed panels for many),
//! so a row's result changed with the rows computed beside it, breaking "a sequence's logits
//! are bit-identical alone or in any batch" for f32 checkpoints. Here every output `y[r, c]` is
//! one fused multiply-add chain over `k` in order, `acc = fma(x[r, j], w[c, j], acc)`, starting
//! from zero. The AVX-512 path, the AVX2 path and the portable one perform that same chain, so
//! all three give the same bits.
//!
//! Half-precision weights are widened to f32 in registers (exactly), so they cost no more
//! memory than candle's own storage and compute what candle's f32 path would on the widened
//! values.
//!
//! The weight is packed once at load into panels of [`LANES`] output columns, `k`-major
//! (`panel[j][lane]`), so that one vector load gives `w[c..c + 16, j]`: a tile of `R` rows by
//! `P` panels broadcasts each `x[r, j]` once for `P` FMAs and loads each weight vector once
//! for `R` of them (the outer-product scheme of BLAS micro-kernels).

use rayon::prelude::*;

/// Output columns per panel (one AVX-512 register of f32).
pub const LANES: usize = 16;
/// Rows per task: a task's rows stay in cache while it walks its panels.
const ROW_BLOCK: usize = 48;

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

fn runs_here(isa: Isa) -> bool {
    match isa {
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512 => is_x86_feature_detected!("avx512f"),
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 => is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma"),
        Isa::Portable => true,
        #[allow(unreachable_patterns)]
        _ => false,
    }
}

/// A weight element: f32, or a half type widened exactly to f32 on load.
pub trait Elem: Copy + Default + Send + Sync + std::fmt::Debug + 'static {
    fn to_f32(self) -> f32;
    /// 16 elements at `p` as f32.
    ///
    /// # Safety
    /// `p` points to 16 readable elements; the caller runs with AVX-512F enabled.
    #[cfg(target_arch = "x86_64")]
    unsafe fn load16(p: *const Self) -> std::arch::x86_64::__m512;
    /// 8 elements at `p` as f32.
    ///
    /// # Safety
    /// `p` points to 8 readable elements; the caller runs with AVX2 and F16C enabled.
    #[cfg(target_arch = "x86_64")]
    unsafe fn load8(p: *const Self) -> std::arch::x86_64::__m256;
}

impl Elem for f32 {
    fn to_f32(self) -> f32 {
        self
    }
    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    unsafe fn load16(p: *const Self) -> std::arch::x86_64::__m512 {
        std::arch::x86_64::_mm512_loadu_ps(p)
    }
    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    unsafe fn load8(p: *const Self) -> std::arch::x86_64::__m256 {
        std::arch::x86_64::_mm256_loadu_ps(p)
    }
}

impl Elem for half::bf16 {
    fn to_f32(self) -> f32 {
        half::bf16::to_f32(self)
    }
    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    unsafe fn load16(p: *const Self) -> std::arch::x86_64::__m512 {
        use std::arch::x86_64::*;
        let h = _mm256_loadu_si256(p as *const __m256i);
        _mm512_castsi512_ps(_mm512_slli_epi32::<16>(_mm512_cvtepu16_epi32(h)))
    }
    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    unsafe fn load8(p: *const Self) -> std::arch::x86_64::__m256 {
        use std::arch::x86_64::*;
        let h = _mm_loadu_si128(p as *const __m128i);
        _mm256_castsi256_ps(_mm256_slli_epi32::<16>(_mm256_cvtepu16_epi32(h)))
    }
}

impl Elem for half::f16 {
    fn to_f32(self) -> f32 {
        half::f16::to_f32(self)
    }
    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    unsafe fn load16(p: *const Self) -> std::arch::x86_64::__m512 {
        use std::arch::x86_64::*;
        _mm512_cvtph_ps(_mm256_loadu_si256(p as *const __m256i))
    }
    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    unsafe fn load8(p: *const Self) -> std::arch::x86_64::__m256 {
        use std::arch::x86_64::*;
        _mm256_cvtph_ps(_mm_loadu_si128(p as *const __m128i))
    }
}

/// A `[n, k]` weight packed into `ceil(n / 16)` panels of `[k][16]` (missing columns of
/// the last panel are zeros and never written out).
#[derive(Debug)]
pub struct DenseWeight<T: Elem = f32> {
    n: usize,
    k: usize,
    panels: Vec<T>,
}

impl<T: Elem> DenseWeight<T> {
    /// Packs a row-major `[n, k]` weight.
    pub fn pack(w: &[T], n: usize, k: usize) -> Self {
        assert_eq!(w.len(), n * k, "dense: w is not [n, k]");
        let np = n.div_ceil(LANES);
        let mut panels = vec![T::default(); np * k * LANES];
        panels
            .par_chunks_mut(k * LANES)
            .enumerate()
            .for_each(|(p, panel)| {
                for lane in 0..LANES.min(n - p * LANES) {
                    let row = &w[(p * LANES + lane) * k..(p * LANES + lane + 1) * k];
                    for (j, v) in row.iter().enumerate() {
                        panel[j * LANES + lane] = *v;
                    }
                }
            });
        Self { n, k, panels }
    }

    pub fn out_features(&self) -> usize {
        self.n
    }

    pub fn in_features(&self) -> usize {
        self.k
    }

    /// The unpacked `[n, k]` weight.
    pub fn unpack(&self) -> Vec<T> {
        let mut w = vec![T::default(); self.n * self.k];
        for (c, row) in w.chunks_exact_mut(self.k).enumerate() {
            let panel = self.panel(c / LANES);
            for (j, v) in row.iter_mut().enumerate() {
                *v = panel[j * LANES + c % LANES];
            }
        }
        w
    }

    fn panel(&self, p: usize) -> &[T] {
        &self.panels[p * self.k * LANES..(p + 1) * self.k * LANES]
    }

    /// `x: [m, k]` row-major -> `out: [m, n]`. Runs on the current rayon pool.
    pub fn matmul(&self, x: &[f32], m: usize, out: &mut [f32]) {
        self.matmul_with(isa(), x, m, out)
    }

    /// As [`DenseWeight::matmul`] on a given path (tests compare the paths).
    pub fn matmul_with(&self, isa: Isa, x: &[f32], m: usize, out: &mut [f32]) {
        assert_eq!(x.len(), m * self.k, "dense: x is not [m, k]");
        assert_eq!(out.len(), m * self.n, "dense: out is not [m, n]");
        assert!(runs_here(isa), "dense: {isa:?} does not run on this CPU");
        if m == 0 || self.n == 0 {
            return;
        }
        let np = self.n.div_ceil(LANES);
        let threads = rayon::current_num_threads().max(1);
        let row_blocks = m.div_ceil(ROW_BLOCK);
        // Panel chunks: enough tasks to balance the threads. Only the split of the work depends
        // on the thread count, never an output's arithmetic.
        let per = np.div_ceil((threads * 4).div_ceil(row_blocks)).max(1);
        let chunks = np.div_ceil(per);
        let ptr = SendPtr(out.as_mut_ptr());
        let (rt, pt) = tile_shape(isa);
        (0..row_blocks * chunks).into_par_iter().for_each(|task| {
            let ptr = &ptr;
            let (rb, chunk) = (task / chunks, task % chunks);
            let (r0, r1) = (rb * ROW_BLOCK, ((rb + 1) * ROW_BLOCK).min(m));
            let (p0, p1) = (chunk * per, ((chunk + 1) * per).min(np));
            let job = Job {
                w: self,
                x,
                out: ptr.0,
            };
            let mut p = p0;
            while p < p1 {
                let panels = (p1 - p).min(pt);
                let mut r = r0;
                while r < r1 {
                    let rows = (r1 - r).min(rt);
                    // SAFETY: rows r..r+rows and panels p..p+panels are inside the problem,
                    // this task is the only writer of them, and `isa` runs here (checked).
                    unsafe { job.tile(isa, r, rows, p, panels) };
                    r += rows;
                }
                p += panels;
            }
        });
    }
}

/// Rows and panels per register tile: 6 x 4 accumulators of 16 lanes on AVX-512 (of 32
/// registers), 2 x 2 (as 8-lane halves, of 16) on AVX2.
fn tile_shape(isa: Isa) -> (usize, usize) {
    match isa {
        Isa::Avx512 => (6, 4),
        Isa::Avx2 => (2, 2),
        Isa::Portable => (4, 2),
    }
}

struct SendPtr(*mut f32);
// SAFETY: tasks write disjoint outputs (see `matmul_with`).
unsafe impl Sync for SendPtr {}
unsafe impl Send for SendPtr {}

struct Job<'a, T: Elem> {
    w: &'a DenseWeight<T>,
    x: &'a [f32],
    out: *mut f32,
}

impl<T: Elem> Job<'_, T> {
    /// Outputs of rows `[r, r + rows)` and panels `[p, p + panels)`.
    ///
    /// # Safety
    /// The block is inside the problem, no other thread writes it, and `isa` runs here.
    unsafe fn tile(&self, isa: Isa, r: usize, rows: usize, p: usize, panels: usize) {
        macro_rules! rows_panels {
            ($($f:ident)::+, $rows:expr, $panels:expr) => {
                match ($rows, $panels) {
                    (6, 4) => $($f)::+::<T, 6, 4>(self, r, p),
                    (5, 4) => $($f)::+::<T, 5, 4>(self, r, p),
                    (4, 4) => $($f)::+::<T, 4, 4>(self, r, p),
                    (3, 4) => $($f)::+::<T, 3, 4>(self, r, p),
                    (2, 4) => $($f)::+::<T, 2, 4>(self, r, p),
                    (1, 4) => $($f)::+::<T, 1, 4>(self, r, p),
                    (6, 3) => $($f)::+::<T, 6, 3>(self, r, p),
                    (5, 3) => $($f)::+::<T, 5, 3>(self, r, p),
                    (4, 3) => $($f)::+::<T, 4, 3>(self, r, p),
                    (3, 3) => $($f)::+::<T, 3, 3>(self, r, p),
                    (2, 3) => $($f)::+::<T, 2, 3>(self, r, p),
                    (1, 3) => $($f)::+::<T, 1, 3>(self, r, p),
                    (6, 2) => $($f)::+::<T, 6, 2>(self, r, p),
                    (5, 2) => $($f)::+::<T, 5, 2>(self, r, p),
                    (4, 2) => $($f)::+::<T, 4, 2>(self, r, p),
                    (3, 2) => $($f)::+::<T, 3, 2>(self, r, p),
                    (2, 2) => $($f)::+::<T, 2, 2>(self, r, p),
                    (1, 2) => $($f)::+::<T, 1, 2>(self, r, p),
                    (6, _) => $($f)::+::<T, 6, 1>(self, r, p),
                    (5, _) => $($f)::+::<T, 5, 1>(self, r, p),
                    (4, _) => $($f)::+::<T, 4, 1>(self, r, p),
                    (3, _) => $($f)::+::<T, 3, 1>(self, r, p),
                    (2, _) => $($f)::+::<T, 2, 1>(self, r, p),
                    (_, _) => $($f)::+::<T, 1, 1>(self, r, p),
                }
            };
        }
        match isa {
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512 => rows_panels!(x86::tile_avx512, rows, panels),
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2 => rows_panels!(x86::tile_avx2, rows, panels),
            _ => tile_portable(self, r, rows, p, panels),
        }
    }

    fn row(&self, r: usize) -> *const f32 {
        self.x[r * self.w.k..].as_ptr()
    }

    fn panel(&self, p: usize) -> *const T {
        self.w.panel(p).as_ptr()
    }

    /// Writes the 16 lanes of rows `r`, panel `p` (only the columns that exist).
    ///
    /// # Safety
    /// As [`Job::tile`].
    #[inline(always)]
    unsafe fn store(&self, r: usize, p: usize, lanes: &[f32; LANES]) {
        let c0 = p * LANES;
        let cols = LANES.min(self.w.n - c0);
        let dst = self.out.add(r * self.w.n + c0);
        std::ptr::copy_nonoverlapping(lanes.as_ptr(), dst, cols);
    }
}

/// The reference chain, also the path for CPUs without AVX2.
unsafe fn tile_portable<T: Elem>(job: &Job<T>, r: usize, rows: usize, p: usize, panels: usize) {
    let k = job.w.k;
    let mut acc = vec![[0f32; LANES]; rows * panels];
    for j in 0..k {
        for i in 0..rows {
            let xv = *job.row(r + i).add(j);
            for q in 0..panels {
                let w = std::slice::from_raw_parts(job.panel(p + q).add(j * LANES), LANES);
                let a = &mut acc[i * panels + q];
                for l in 0..LANES {
                    a[l] = xv.mul_add(w[l].to_f32(), a[l]);
                }
            }
        }
    }
    for i in 0..rows {
        for q in 0..panels {
            job.store(r + i, p + q, &acc[i * panels + q]);
        }
    }
}

#[cfg(target_arch = "x86_64")]
#[allow(clippy::needless_range_loop)] // `i`/`q` index the register tile and the pointer arrays
mod x86 {
    use super::{Elem, Job, LANES};
    use std::arch::x86_64::*;

    #[target_feature(enable = "avx512f,avx2,fma")]
    pub(super) unsafe fn tile_avx512<T: Elem, const R: usize, const P: usize>(
        job: &Job<T>,
        r: usize,
        p: usize,
    ) {
        let k = job.w.k;
        let xs: [*const f32; R] = std::array::from_fn(|i| job.row(r + i));
        let ws: [*const T; P] = std::array::from_fn(|q| job.panel(p + q));
        let mut acc = [[_mm512_setzero_ps(); P]; R];
        for j in 0..k {
            let wv: [__m512; P] = std::array::from_fn(|q| T::load16(ws[q].add(j * LANES)));
            for i in 0..R {
                let xv = _mm512_set1_ps(*xs[i].add(j));
                for q in 0..P {
                    acc[i][q] = _mm512_fmadd_ps(xv, wv[q], acc[i][q]);
                }
            }
        }
        for i in 0..R {
            for q in 0..P {
                let mut lanes = [0f32; LANES];
                _mm512_storeu_ps(lanes.as_mut_ptr(), acc[i][q]);
                job.store(r + i, p + q, &lanes);
            }
        }
    }

    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn tile_avx2<T: Elem, const R: usize, const P: usize>(
        job: &Job<T>,
        r: usize,
        p: usize,
    ) {
        // Sixteen registers: tiles wider than 2 rows x 2 panels spill, so they go in pieces.
        let mut i = 0;
        while i < R {
            let rows = (R - i).min(2);
            let mut q = 0;
            while q < P {
                let panels = (P - q).min(2);
                match (rows, panels) {
                    (2, 2) => tile_avx2_small::<T, 2, 2>(job, r + i, p + q),
                    (2, _) => tile_avx2_small::<T, 2, 1>(job, r + i, p + q),
                    (_, 2) => tile_avx2_small::<T, 1, 2>(job, r + i, p + q),
                    _ => tile_avx2_small::<T, 1, 1>(job, r + i, p + q),
                }
                q += panels;
            }
            i += rows;
        }
    }

    #[inline(always)]
    unsafe fn tile_avx2_small<T: Elem, const R: usize, const P: usize>(
        job: &Job<T>,
        r: usize,
        p: usize,
    ) {
        let k = job.w.k;
        let xs: [*const f32; R] = std::array::from_fn(|i| job.row(r + i));
        let ws: [*const T; P] = std::array::from_fn(|q| job.panel(p + q));
        let mut lo = [[_mm256_setzero_ps(); P]; R];
        let mut hi = [[_mm256_setzero_ps(); P]; R];
        for j in 0..k {
            let w0: [__m256; P] = std::array::from_fn(|q| T::load8(ws[q].add(j * LANES)));
            let w1: [__m256; P] = std::array::from_fn(|q| T::load8(ws[q].add(j * LANES + 8)));
            for i in 0..R {
                let xv = _mm256_set1_ps(*xs[i].add(j));
                for q in 0..P {
                    lo[i][q] = _mm256_fmadd_ps(xv, w0[q], lo[i][q]);
                    hi[i][q] = _mm256_fmadd_ps(xv, w1[q], hi[i][q]);
                }
            }
        }
        for i in 0..R {
            for q in 0..P {
                let mut lanes = [0f32; LANES];
                _mm256_storeu_ps(lanes.as_mut_ptr(), lo[i][q]);
                _mm256_storeu_ps(lanes.as_mut_ptr().add(8), hi[i][q]);
                job.store(r + i, p + q, &lanes);
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
        [Isa::Portable, Isa::Avx2, Isa::Avx512]
            .into_iter()
            .filter(|&i| runs_here(i))
            .collect()
    }

    /// Close to an f64 reference and equal to the plain in-order FMA chain; every row
    /// bit-identical alone and inside batches of 2..=70 rows, at 1, 2 and 3 threads, on every
    /// path this CPU runs.
    #[test]
    fn matches_a_reference_and_rows_are_batch_thread_and_path_invariant() {
        const M: usize = 70;
        for (n, k) in [(37, 70), (576, 576), (19, 16), (5, 3), (130, 1)] {
            let w = values(n * k, 1);
            let packed = DenseWeight::pack(&w, n, k);
            assert_eq!(packed.unpack(), w);
            let x = values(M * k, 2);
            let want = reference(&x, M, &w, n);
            let alone: Vec<Vec<f32>> = (0..M)
                .map(|r| {
                    let mut a = vec![0f32; n];
                    packed.matmul_with(Isa::Portable, &x[r * k..(r + 1) * k], 1, &mut a);
                    a
                })
                .collect();
            for r in 0..M {
                for c in 0..n {
                    let chain = (0..k).fold(0f32, |acc, j| x[r * k + j].mul_add(w[c * k + j], acc));
                    assert_eq!(alone[r][c], chain, "row {r} col {c}");
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
                    for m in [1, 2, 3, 5, 6, 7, 13, 47, 48, 49, M] {
                        // Rows from an offset, so a row lands in different tiles and blocks.
                        let s = (M - m) / 2;
                        let mut out = vec![0f32; m * n];
                        let xs = &x[s * k..(s + m) * k];
                        pool.install(|| packed.matmul_with(isa, xs, m, &mut out));
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

    /// Half-precision weights: the same in-order chain over the exactly widened values, on
    /// every path, alone or batched.
    #[test]
    fn half_weights_are_widened_exactly_on_every_path() {
        let (n, k, m) = (40, 48, 9);
        let w32 = values(n * k, 3);
        let x = values(m * k, 4);
        let bf: Vec<half::bf16> = w32.iter().map(|&v| half::bf16::from_f32(v)).collect();
        let hf: Vec<half::f16> = w32.iter().map(|&v| half::f16::from_f32(v)).collect();
        let widened = [
            bf.iter().map(|v| v.to_f32()).collect::<Vec<_>>(),
            hf.iter().map(|v| v.to_f32()).collect::<Vec<_>>(),
        ];
        for (half, wide) in widened.iter().enumerate() {
            let want = DenseWeight::pack(wide, n, k);
            let mut expect = vec![0f32; m * n];
            want.matmul_with(Isa::Portable, &x, m, &mut expect);
            for isa in paths() {
                let mut got = vec![0f32; m * n];
                match half {
                    0 => DenseWeight::pack(&bf, n, k).matmul_with(isa, &x, m, &mut got),
                    _ => DenseWeight::pack(&hf, n, k).matmul_with(isa, &x, m, &mut got),
                }
                assert_eq!(got, expect, "{isa:?} half type {half}");
                let mut row = vec![0f32; n];
                match half {
                    0 => DenseWeight::pack(&bf, n, k).matmul_with(isa, &x[k..2 * k], 1, &mut row),
                    _ => DenseWeight::pack(&hf, n, k).matmul_with(isa, &x[k..2 * k], 1, &mut row),
                }
                assert_eq!(
                    row[..],
                    expect[n..2 * n],
                    "{isa:?} half type {half}, row alone"
                );
            }
        }
    }
}
