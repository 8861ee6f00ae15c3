//! Activations quantized to 8-bit blocks of 32, once per product: `a = d·qa` with
//! `d = amax / 127` and `qa = round_ties_even(a / d)` (`a · (1/d)`), in -127..=127.
//! Each block is quantized on its own, so neither the batch nor the thread split can change
//! a value.

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

impl QActs {
    pub fn quantize(x: &[f32], m: usize, k: usize) -> Self {
        let kb = k / BLOCK;
        let mut q = vec![0i8; m * k];
        let mut d = vec![0f32; m * kb];
        let mut sa = vec![0f32; m * kb];
        let mut sums = vec![[0i32; 2]; m * kb];
        type Item<'a> = (
            (((&'a [f32], &'a mut [i8]), &'a mut f32), &'a mut f32),
            &'a mut [i32; 2],
        );
        let work = |((((xb, qb), db), sb), hb): Item| {
            let (scale, s) = quantize_block(xb.try_into().unwrap(), qb.try_into().unwrap());
            *db = scale;
            *sb = scale * (s[0] + s[1]) as f32;
            *hb = s;
        };
        if m * k >= 1 << 16 {
            x.par_chunks_exact(BLOCK)
                .zip(q.par_chunks_exact_mut(BLOCK))
                .zip(d.par_iter_mut())
                .zip(sa.par_iter_mut())
                .zip(sums.par_iter_mut())
                .for_each(work);
        } else {
            x.chunks_exact(BLOCK)
                .zip(q.chunks_exact_mut(BLOCK))
                .zip(d.iter_mut())
                .zip(sa.iter_mut())
                .zip(sums.iter_mut())
                .for_each(work);
        }
        Self {
            m,
            kb,
            q,
            d,
            sa,
            sums,
        }
    }
}

/// One block: its scale and the code sums of its two halves.
fn quantize_block(x: &[f32; BLOCK], q: &mut [i8; BLOCK]) -> (f32, [i32; 2]) {
    let amax = x.iter().fold(0f32, |a, v| a.max(v.abs()));
    let scale = amax / 127.0;
    let inv = if scale > 0.0 { 1.0 / scale } else { 0.0 };
    let mut s = [0i32; 2];
    for (i, (o, v)) in q.iter_mut().zip(x).enumerate() {
        let r = (v * inv).round_ties_even() as i32;
        *o = r as i8;
        s[i / 16] += r;
    }
    (scale, s)
}
