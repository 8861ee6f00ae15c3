//! The x86 panel kernels: AVX2 (8 columns per vector, each panel in two halves) and AVX-512
//! VNNI (a whole 16-column panel per vector). Per lane both do exactly what
//! `reference::tile` does (see the module docs of `qgemm`).

use std::arch::x86_64::*;

use super::acts::QActs;
use super::{
    Kernel, Layout, QWeight, BLOCK, PANEL, PANEL_SCALES, Q4_PANEL_BYTES, Q8_PANEL_BYTES, ROWS,
};

/// Rows `r..r + rows` (at most [`ROWS`]) against panel `p` into `tile`.
///
/// # Safety
/// The CPU has the features `kernel` needs (checked by `QWeight::matmul_with`).
pub(super) unsafe fn tile(
    kernel: Kernel,
    w: &QWeight,
    p: usize,
    a: &QActs,
    r: usize,
    rows: usize,
    tile: &mut [[f32; PANEL]; ROWS],
) {
    // Const generics per call: rows, f16 scales, and (the AVX2 Q8 kernel) `halves`, so that
    // one set of integer sums is live at a time (AVX2 has 16 registers; two sets spilled), and
    // the code bias.
    macro_rules! by_rows {
        ($f:ident $(, $c:literal)*) => {
            match (rows, w.scales16.is_empty()) {
                (4, true) => $f::<4, false $(, $c)*>(w, p, a, r, tile),
                (3, true) => $f::<3, false $(, $c)*>(w, p, a, r, tile),
                (2, true) => $f::<2, false $(, $c)*>(w, p, a, r, tile),
                (_, true) => $f::<1, false $(, $c)*>(w, p, a, r, tile),
                (4, false) => $f::<4, true $(, $c)*>(w, p, a, r, tile),
                (3, false) => $f::<3, true $(, $c)*>(w, p, a, r, tile),
                (2, false) => $f::<2, true $(, $c)*>(w, p, a, r, tile),
                (_, false) => $f::<1, true $(, $c)*>(w, p, a, r, tile),
            }
        };
    }
    match (kernel, w.layout) {
        (Kernel::Avx2, Layout::Q4) => by_rows!(avx2_q4),
        // A bias of 32 also covers codes in -16..16 (Q6_K with small codes).
        (Kernel::Avx2, Layout::Q8) => match (w.halves, w.bias) {
            (false, 16) => by_rows!(avx2_q8, false, 16),
            (false, 32) => by_rows!(avx2_q8, false, 32),
            (false, _) => by_rows!(avx2_q8, false, 0),
            (true, 16 | 32) => by_rows!(avx2_q8, true, 32),
            (true, _) => by_rows!(avx2_q8, true, 0),
        },
        (Kernel::Avx512Vnni, Layout::Q4) => by_rows!(vnni_q4),
        (Kernel::Avx512Vnni, Layout::Q8) => by_rows!(vnni_q8),
        (Kernel::Reference, _) => unreachable!("the reference kernel is not SIMD"),
    }
}

/// Per-row pointers into the activations: codes, scale `d`, `d·Σqa`, half sums.
struct Rows<const R: usize> {
    q: [*const i8; R],
    d: [*const f32; R],
    sa: [*const f32; R],
    sums: [*const [i32; 2]; R],
}

impl<const R: usize> Rows<R> {
    unsafe fn new(a: &QActs, r: usize) -> Self {
        let kb = a.kb;
        Self {
            q: std::array::from_fn(|i| a.q.as_ptr().add((r + i) * kb * BLOCK)),
            d: std::array::from_fn(|i| a.d.as_ptr().add((r + i) * kb)),
            sa: std::array::from_fn(|i| a.sa.as_ptr().add((r + i) * kb)),
            sums: std::array::from_fn(|i| a.sums.as_ptr().add((r + i) * kb)),
        }
    }
}

/// Eight scales from `at` (f16 converted exactly, or f32).
#[inline(always)]
unsafe fn scales8<const F16: bool>(w: &QWeight, at: usize) -> __m256 {
    if F16 {
        _mm256_cvtph_ps(_mm_loadu_si128(
            w.scales16.as_ptr().add(at) as *const __m128i
        ))
    } else {
        _mm256_loadu_ps(w.scales.as_ptr().add(at))
    }
}

/// Sixteen scales from `at`.
#[inline(always)]
unsafe fn scales16<const F16: bool>(w: &QWeight, at: usize) -> __m512 {
    if F16 {
        _mm512_cvtph_ps(_mm256_loadu_si256(
            w.scales16.as_ptr().add(at) as *const __m256i
        ))
    } else {
        _mm512_loadu_ps(w.scales.as_ptr().add(at))
    }
}

/// Four activation bytes, as one i32 to broadcast.
#[inline(always)]
unsafe fn four(q: *const i8) -> i32 {
    std::ptr::read_unaligned(q as *const i32)
}

#[target_feature(enable = "avx2,fma")]
#[allow(clippy::needless_range_loop)] // `i` indexes rows of several arrays
unsafe fn avx2_q4<const R: usize, const F16: bool>(
    w: &QWeight,
    p: usize,
    a: &QActs,
    r: usize,
    tile: &mut [[f32; PANEL]; ROWS],
) {
    let kb = a.kb;
    let rows = Rows::<R>::new(a, r);
    let low = _mm256_set1_epi8(0xF);
    let ones = _mm256_set1_epi16(1);
    for h in 0..2 {
        let mut acc = [_mm256_setzero_ps(); R];
        for b in 0..kb {
            let blk = p * kb + b;
            let wp = w.codes.as_ptr().add(blk * Q4_PANEL_BYTES + 32 * h);
            // i16 partial sums stay exact: 8 pairs of (0..16)·(-127..=127) reach 30480.
            let mut part = [_mm256_setzero_si256(); R];
            for j in 0..4 {
                let v = _mm256_loadu_si256(wp.add(j * 4 * PANEL) as *const __m256i);
                let lo = _mm256_and_si256(v, low);
                let hi = _mm256_and_si256(_mm256_srli_epi16::<4>(v), low);
                for i in 0..R {
                    let qa = rows.q[i].add(b * BLOCK);
                    let al = _mm256_set1_epi32(four(qa.add(4 * j)));
                    let ah = _mm256_set1_epi32(four(qa.add(16 + 4 * j)));
                    let s = _mm256_add_epi16(
                        _mm256_maddubs_epi16(lo, al),
                        _mm256_maddubs_epi16(hi, ah),
                    );
                    part[i] = _mm256_add_epi16(part[i], s);
                }
            }
            let sp = blk * PANEL_SCALES + 8 * h;
            let (dw, mw) = (scales8::<F16>(w, sp), scales8::<F16>(w, sp + PANEL));
            for i in 0..R {
                let isum = _mm256_madd_epi16(part[i], ones);
                let s = _mm256_mul_ps(dw, _mm256_set1_ps(*rows.d[i].add(b)));
                acc[i] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(isum), s, acc[i]);
                acc[i] = _mm256_fmadd_ps(mw, _mm256_set1_ps(*rows.sa[i].add(b)), acc[i]);
            }
        }
        for i in 0..R {
            _mm256_storeu_ps(tile[i].as_mut_ptr().add(8 * h), acc[i]);
        }
    }
}

#[target_feature(enable = "avx2,fma")]
#[allow(clippy::needless_range_loop)]
unsafe fn avx2_q8<const R: usize, const F16: bool, const HALVES: bool, const BIAS: u8>(
    w: &QWeight,
    p: usize,
    a: &QActs,
    r: usize,
    tile: &mut [[f32; PANEL]; ROWS],
) {
    debug_assert_eq!(HALVES, w.halves);
    debug_assert!(BIAS == 0 || BIAS >= w.bias && w.bias > 0);
    let kb = a.kb;
    let rows = Rows::<R>::new(a, r);
    let ones = _mm256_set1_epi16(1);
    let bias = _mm256_set1_epi8(BIAS as i8);
    // Groups summed in i16 with biased codes: a pair of (code + bias) in 0..2·bias times
    // |qa| <= 127 stays within 2·(2·bias - 1)·127, so 4 groups at bias 16 (31496) and 2 at
    // bias 32 (32004) cannot saturate.
    let span = match BIAS {
        0 => 1,
        16 => 4,
        _ => 2,
    };
    for h in 0..2 {
        let mut acc = [_mm256_setzero_ps(); R];
        for b in 0..kb {
            let blk = p * kb + b;
            let wp = w.codes.as_ptr().add(blk * Q8_PANEL_BYTES + 32 * h);
            // Elements 0..16 and 16..32 folded one after the other when they have their own
            // scales (Q6_K), else one integer sum for the block: either way one set of sums
            // is live at a time.
            let sp = blk * PANEL_SCALES + 8 * h;
            for part in 0..(if HALVES { 2 } else { 1 }) {
                // Biased codes: start from -bias·Σqa over this part's elements (exact).
                let mut isum: [__m256i; R] = std::array::from_fn(|i| {
                    if BIAS == 0 {
                        return _mm256_setzero_si256();
                    }
                    let s = *rows.sums[i].add(b);
                    let s = if HALVES { s[part] } else { s[0] + s[1] };
                    _mm256_set1_epi32(-(BIAS as i32) * s)
                });
                let js = if HALVES { 4 * part..4 * part + 4 } else { 0..8 };
                for g in js.step_by(span) {
                    if BIAS == 0 {
                        // Sign trick: |w| (u8, up to 128) · ±a, pairs up to 32512: no saturation.
                        let v = _mm256_loadu_si256(wp.add(g * 4 * PANEL) as *const __m256i);
                        let wabs = _mm256_abs_epi8(v);
                        for i in 0..R {
                            let qa = _mm256_set1_epi32(four(rows.q[i].add(b * BLOCK + 4 * g)));
                            let prod = _mm256_maddubs_epi16(wabs, _mm256_sign_epi8(qa, v));
                            isum[i] = _mm256_add_epi32(isum[i], _mm256_madd_epi16(prod, ones));
                        }
                    } else {
                        let mut part16 = [_mm256_setzero_si256(); R];
                        for j in g..g + span {
                            let v = _mm256_loadu_si256(wp.add(j * 4 * PANEL) as *const __m256i);
                            let u = _mm256_add_epi8(v, bias);
                            for i in 0..R {
                                let qa = _mm256_set1_epi32(four(rows.q[i].add(b * BLOCK + 4 * j)));
                                part16[i] =
                                    _mm256_add_epi16(part16[i], _mm256_maddubs_epi16(u, qa));
                            }
                        }
                        for i in 0..R {
                            isum[i] = _mm256_add_epi32(isum[i], _mm256_madd_epi16(part16[i], ones));
                        }
                    }
                }
                let dw = scales8::<F16>(w, sp + PANEL * part);
                for i in 0..R {
                    let da = _mm256_set1_ps(*rows.d[i].add(b));
                    let f = _mm256_cvtepi32_ps(isum[i]);
                    acc[i] = _mm256_fmadd_ps(f, _mm256_mul_ps(dw, da), acc[i]);
                }
            }
        }
        for i in 0..R {
            _mm256_storeu_ps(tile[i].as_mut_ptr().add(8 * h), acc[i]);
        }
    }
}

#[target_feature(enable = "avx2,fma,avx512f,avx512bw,avx512vnni")]
#[allow(clippy::needless_range_loop)]
unsafe fn vnni_q4<const R: usize, const F16: bool>(
    w: &QWeight,
    p: usize,
    a: &QActs,
    r: usize,
    tile: &mut [[f32; PANEL]; ROWS],
) {
    let kb = a.kb;
    let rows = Rows::<R>::new(a, r);
    let low = _mm512_set1_epi8(0xF);
    let mut acc = [_mm512_setzero_ps(); R];
    for b in 0..kb {
        let blk = p * kb + b;
        let wp = w.codes.as_ptr().add(blk * Q4_PANEL_BYTES);
        // Low and high nibbles in two dependency chains (integer sums: any order is exact).
        let mut isum = [[_mm512_setzero_si512(); R]; 2];
        for j in 0..4 {
            let v = _mm512_loadu_si512(wp.add(j * 4 * PANEL) as *const _);
            let lo = _mm512_and_si512(v, low);
            let hi = _mm512_and_si512(_mm512_srli_epi16::<4>(v), low);
            for i in 0..R {
                let qa = rows.q[i].add(b * BLOCK);
                let al = _mm512_set1_epi32(four(qa.add(4 * j)));
                let ah = _mm512_set1_epi32(four(qa.add(16 + 4 * j)));
                isum[0][i] = _mm512_dpbusd_epi32(isum[0][i], lo, al);
                isum[1][i] = _mm512_dpbusd_epi32(isum[1][i], hi, ah);
            }
        }
        let isum: [__m512i; R] = std::array::from_fn(|i| _mm512_add_epi32(isum[0][i], isum[1][i]));
        let sp = blk * PANEL_SCALES;
        let (dw, mw) = (scales16::<F16>(w, sp), scales16::<F16>(w, sp + PANEL));
        for i in 0..R {
            let s = _mm512_mul_ps(dw, _mm512_set1_ps(*rows.d[i].add(b)));
            acc[i] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(isum[i]), s, acc[i]);
            acc[i] = _mm512_fmadd_ps(mw, _mm512_set1_ps(*rows.sa[i].add(b)), acc[i]);
        }
    }
    for i in 0..R {
        _mm512_storeu_ps(tile[i].as_mut_ptr(), acc[i]);
    }
}

#[target_feature(enable = "avx2,fma,avx512f,avx512bw,avx512vnni")]
#[allow(clippy::needless_range_loop)]
unsafe fn vnni_q8<const R: usize, const F16: bool>(
    w: &QWeight,
    p: usize,
    a: &QActs,
    r: usize,
    tile: &mut [[f32; PANEL]; ROWS],
) {
    let kb = a.kb;
    let rows = Rows::<R>::new(a, r);
    // dpbusd wants u8 × i8: codes + 128 (= xor 0x80), and -128·Σqa added back exactly.
    let flip = _mm512_set1_epi8(-128);
    let mut acc = [_mm512_setzero_ps(); R];
    for b in 0..kb {
        let blk = p * kb + b;
        let wp = w.codes.as_ptr().add(blk * Q8_PANEL_BYTES);
        let mut isum: [[__m512i; R]; 2] = std::array::from_fn(|h| {
            std::array::from_fn(|i| _mm512_set1_epi32(-128 * (*rows.sums[i].add(b))[h]))
        });
        for j in 0..8 {
            let v = _mm512_xor_si512(_mm512_loadu_si512(wp.add(j * 4 * PANEL) as *const _), flip);
            for i in 0..R {
                let qa = _mm512_set1_epi32(four(rows.q[i].add(b * BLOCK + 4 * j)));
                let s = &mut isum[j / 4][i];
                *s = _mm512_dpbusd_epi32(*s, v, qa);
            }
        }
        let sp = blk * PANEL_SCALES;
        let d0 = scales16::<F16>(w, sp);
        for i in 0..R {
            let da = _mm512_set1_ps(*rows.d[i].add(b));
            if w.halves {
                let d1 = scales16::<F16>(w, sp + PANEL);
                let f0 = _mm512_cvtepi32_ps(isum[0][i]);
                acc[i] = _mm512_fmadd_ps(f0, _mm512_mul_ps(d0, da), acc[i]);
                let f1 = _mm512_cvtepi32_ps(isum[1][i]);
                acc[i] = _mm512_fmadd_ps(f1, _mm512_mul_ps(d1, da), acc[i]);
            } else {
                let f = _mm512_cvtepi32_ps(_mm512_add_epi32(isum[0][i], isum[1][i]));
                acc[i] = _mm512_fmadd_ps(f, _mm512_mul_ps(d0, da), acc[i]);
            }
        }
    }
    for i in 0..R {
        _mm512_storeu_ps(tile[i].as_mut_ptr(), acc[i]);
    }
}
