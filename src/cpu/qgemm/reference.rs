//! Scalar model of one SIMD lane of the panel kernels: the same exact integer block sums and
//! the same f32 `mul`/`fma` sequence per block, so its outputs equal the SIMD kernels' bit for
//! bit (the tests assert it). Slow; for tests only.

use super::acts::QActs;
use super::{Layout, QWeight, BLOCK, PANEL, ROWS};

/// Rows `r..r + rows` against panel `p`: `tile[i][c]` gets row `r + i`, column `16p + c`.
pub(super) fn tile(
    w: &QWeight,
    p: usize,
    a: &QActs,
    r: usize,
    rows: usize,
    tile: &mut [[f32; PANEL]; ROWS],
) {
    let kb = a.kb;
    for (i, out) in tile[..rows].iter_mut().enumerate() {
        let row = r + i;
        for (c, y) in out.iter_mut().enumerate() {
            let mut acc = 0f32;
            for b in 0..kb {
                let (q, [s0, s1]) = w.get(p * PANEL + c, b);
                let at = row * kb + b;
                let qa = &a.q[at * BLOCK..(at + 1) * BLOCK];
                let da = a.d[at];
                let dot = |range: std::ops::Range<usize>| -> i32 {
                    range
                        .map(|e| match w.layout {
                            Layout::Q4 => q[e] as i32 * qa[e] as i32,
                            Layout::Q8 => (q[e] as i8) as i32 * qa[e] as i32,
                        })
                        .sum()
                };
                match w.layout {
                    Layout::Q4 => {
                        acc = (dot(0..32) as f32).mul_add(s0 * da, acc);
                        acc = s1.mul_add(a.sa[at], acc);
                    }
                    Layout::Q8 if w.halves => {
                        acc = (dot(0..16) as f32).mul_add(s0 * da, acc);
                        acc = (dot(16..32) as f32).mul_add(s1 * da, acc);
                    }
                    Layout::Q8 => acc = (dot(0..32) as f32).mul_add(s0 * da, acc),
                }
            }
            *y = acc;
        }
    }
}
