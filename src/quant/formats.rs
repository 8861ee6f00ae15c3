//! The packing of each quantized format, undone: every function returns the dense `[out, in]`
//! f32 weight (PyTorch layout) that the format's own dequantization would give.
//!
//! tests/fixtures/make_quant_fixtures.py writes the same math forwards (quantize and pack);
//! tests/quant_formats.rs checks that the two meet.

use anyhow::{ensure, Result};

use super::fp8::e4m3_to_f32;
use super::Strategy;

/// `n` unsigned values of `bits` each, densely packed from bit 0 of word 0 upward (value `i`
/// at bits `i*bits..`), as compressed-tensors' `pack_to_int32` and GPTQ/AWQ words hold them.
pub fn unpack_dense(words: &[u32], bits: u32, n: usize) -> Vec<u32> {
    let mask = (1u64 << bits) - 1;
    (0..n)
        .map(|i| {
            let bit = i * bits as usize;
            let (w, off) = (bit / 32, bit % 32);
            let lo = words.get(w).copied().unwrap_or(0) as u64;
            let hi = words.get(w + 1).copied().unwrap_or(0) as u64;
            (((hi << 32 | lo) >> off) & mask) as u32
        })
        .collect()
}

/// Unpacks each of `rows` rows of `words_per_row` words into `cols` values.
fn unpack_rows(words: &[u32], rows: usize, bits: u32, cols: usize) -> Result<Vec<u32>> {
    ensure!(
        rows > 0 && words.len().is_multiple_of(rows),
        "packed tensor of {} words for {rows} rows",
        words.len()
    );
    let per_row = words.len() / rows;
    ensure!(
        per_row * 32 >= cols * bits as usize,
        "packed rows of {per_row} words hold fewer than {cols} values"
    );
    Ok(words
        .chunks(per_row)
        .flat_map(|r| unpack_dense(r, bits, cols))
        .collect())
}

/// The index into a scale grid `[sr, sc]` of weight element `(o, i)`.
#[derive(Debug, Clone, Copy)]
pub struct ScaleGrid {
    pub strategy: Strategy,
    pub rows: usize,
    pub cols: usize,
}

impl ScaleGrid {
    /// Checks the grid's shape against the weight's for the strategy.
    pub fn new(strategy: Strategy, shape: (usize, usize), out: usize, inp: usize) -> Result<Self> {
        let (rows, cols) = shape;
        let want = match strategy {
            Strategy::Tensor => (1, 1),
            Strategy::Channel => (out, 1),
            Strategy::Group(g) => (out, inp.div_ceil(g)),
            Strategy::Block(b0, b1) => (out.div_ceil(b0), inp.div_ceil(b1)),
        };
        ensure!(
            (rows, cols) == want,
            "scale of shape [{rows}, {cols}] for a [{out}, {in_}] weight with {strategy:?} (expected {want:?})",
            in_ = inp
        );
        Ok(Self {
            strategy,
            rows,
            cols,
        })
    }

    /// `group` overrides the input's group (an activation-order `g_idx`).
    fn index(&self, o: usize, i: usize, group: Option<usize>) -> usize {
        match self.strategy {
            Strategy::Tensor => 0,
            Strategy::Channel => o,
            Strategy::Group(g) => o * self.cols + group.unwrap_or(i / g),
            Strategy::Block(b0, b1) => (o / b0) * self.cols + i / b1,
        }
    }
}

/// e4m3 bytes `[out, in]` times their scales (HF `weight_scale_inv`, compressed-tensors
/// `weight_scale`).
pub fn fp8(w: &[u8], out: usize, inp: usize, scale: &[f32], grid: ScaleGrid) -> Result<Vec<f32>> {
    ensure!(
        w.len() == out * inp,
        "fp8 weight of {} bytes for [{out}, {inp}]",
        w.len()
    );
    ensure!(
        scale.len() == grid.rows * grid.cols,
        "fp8 scale of {} values",
        scale.len()
    );
    let lut: Vec<f32> = (0..=255u8).map(e4m3_to_f32).collect();
    Ok((0..out * inp)
        .map(|k| {
            let (o, i) = (k / inp, k % inp);
            lut[w[k] as usize] * scale[grid.index(o, i, None)]
        })
        .collect())
}

/// Signed integers `[out, in]` (already unpacked) as `(q - zero) * scale`, with per-grid-cell
/// zero points for asymmetric schemes and an optional input-to-group map.
pub fn affine(
    q: &[i32],
    out: usize,
    inp: usize,
    scale: &[f32],
    zero: Option<&[i32]>,
    grid: ScaleGrid,
    g_idx: Option<&[i32]>,
) -> Result<Vec<f32>> {
    ensure!(
        q.len() == out * inp,
        "quantized weight of {} values for [{out}, {inp}]",
        q.len()
    );
    ensure!(
        scale.len() == grid.rows * grid.cols,
        "scale of {} values",
        scale.len()
    );
    if let Some(z) = zero {
        ensure!(
            z.len() == scale.len(),
            "zero points of {} values vs {} scales",
            z.len(),
            scale.len()
        );
    }
    if let Some(g) = g_idx {
        ensure!(
            g.len() == inp,
            "g_idx of {} entries for {inp} inputs",
            g.len()
        );
        ensure!(
            g.iter().all(|&x| x >= 0 && (x as usize) < grid.cols),
            "g_idx names a group outside 0..{}",
            grid.cols
        );
    }
    Ok((0..out * inp)
        .map(|k| {
            let (o, i) = (k / inp, k % inp);
            let s = grid.index(o, i, g_idx.map(|g| g[i] as usize));
            let z = zero.map_or(0, |z| z[s]);
            (q[k] - z) as f32 * scale[s]
        })
        .collect())
}

/// compressed-tensors `pack-quantized`: `weight_packed [out, ceil(in*bits/32)]` (values offset
/// by `2^(bits-1)`), zero points (asymmetric) packed the same way along the output dimension.
#[allow(clippy::too_many_arguments)]
pub fn ct_packed(
    packed: &[u32],
    out: usize,
    inp: usize,
    bits: u32,
    scale: &[f32],
    zero_packed: Option<&[u32]>,
    grid: ScaleGrid,
    g_idx: Option<&[i32]>,
) -> Result<Vec<f32>> {
    let offset = 1i32 << (bits - 1);
    let q: Vec<i32> = unpack_rows(packed, out, bits, inp)?
        .into_iter()
        .map(|v| v as i32 - offset)
        .collect();
    let zero = match zero_packed {
        Some(zp) => {
            // Packed along dim 0: [ceil(rows*bits/32), cols]; unpack each column.
            let (rows, cols) = (grid.rows, grid.cols);
            let words = rows.div_ceil(32 / bits as usize);
            ensure!(
                zp.len() == words * cols,
                "weight_zero_point of {} words for [{rows}, {cols}]",
                zp.len()
            );
            let mut z = vec![0i32; rows * cols];
            for c in 0..cols {
                let col: Vec<u32> = (0..words).map(|w| zp[w * cols + c]).collect();
                for (r, v) in unpack_dense(&col, bits, rows).into_iter().enumerate() {
                    z[r * cols + c] = v as i32 - offset;
                }
            }
            Some(z)
        }
        None => None,
    };
    affine(&q, out, inp, scale, zero.as_deref(), grid, g_idx)
}

/// AutoAWQ's nibble order: value for output column `8j + c` sits in nibble `AWQ_NIBBLE[c]`.
const AWQ_NIBBLE: [usize; 8] = [0, 4, 1, 5, 2, 6, 3, 7];

/// AutoAWQ GEMM: `qweight [in, out/8]`, `qzeros [in/group, out/8]` (both packed along the
/// output in AWQ's nibble order), `scales [in/group, out]`; `w = (q - z) * s`.
pub fn awq(
    qweight: &[u32],
    qzeros: &[u32],
    scales: &[f32],
    inp: usize,
    out: usize,
    group: usize,
) -> Result<Vec<f32>> {
    ensure!(
        out.is_multiple_of(8),
        "awq: out features {out} not a multiple of 8"
    );
    let groups = inp.div_ceil(group);
    ensure!(
        qweight.len() == inp * out / 8,
        "awq qweight of {} words for [{inp}, {out}]",
        qweight.len()
    );
    ensure!(
        qzeros.len() == groups * out / 8,
        "awq qzeros of {} words",
        qzeros.len()
    );
    ensure!(
        scales.len() == groups * out,
        "awq scales of {} values",
        scales.len()
    );
    let nib = |words: &[u32], row: usize, col: usize| -> i32 {
        let w = words[row * (out / 8) + col / 8];
        ((w >> (4 * AWQ_NIBBLE[col % 8])) & 0xf) as i32
    };
    let mut dense = vec![0f32; out * inp];
    for i in 0..inp {
        let g = i / group;
        for o in 0..out {
            let q = nib(qweight, i, o);
            let z = nib(qzeros, g, o);
            dense[o * inp + i] = (q - z) as f32 * scales[g * out + o];
        }
    }
    Ok(dense)
}

/// GPTQ: `qweight [in*bits/32, out]` packed along the input, `qzeros [groups, out*bits/32]`
/// packed along the output, `scales [groups, out]`, `g_idx [in]`; v1 checkpoints store each
/// zero minus one (wrapping in `bits`), `gptq_v2` stores it as is. `w = (q - z) * s`.
#[allow(clippy::too_many_arguments)]
pub fn gptq(
    qweight: &[u32],
    qzeros: &[u32],
    scales: &[f32],
    g_idx: &[i32],
    inp: usize,
    out: usize,
    bits: u32,
    v2: bool,
) -> Result<Vec<f32>> {
    let per = 32 / bits as usize;
    ensure!(
        inp.is_multiple_of(per) && out.is_multiple_of(per),
        "gptq: [{inp}, {out}] not multiples of {per}"
    );
    ensure!(
        qweight.len() == inp / per * out,
        "gptq qweight of {} words for [{inp}, {out}]",
        qweight.len()
    );
    ensure!(
        scales.len().is_multiple_of(out),
        "gptq scales of {} values",
        scales.len()
    );
    let groups = scales.len() / out;
    ensure!(
        qzeros.len() == groups * out / per,
        "gptq qzeros of {} words for {groups} groups",
        qzeros.len()
    );
    ensure!(
        g_idx.len() == inp,
        "gptq g_idx of {} entries for {inp} inputs",
        g_idx.len()
    );
    ensure!(
        g_idx.iter().all(|&g| g >= 0 && (g as usize) < groups),
        "gptq g_idx names a group outside 0..{groups}"
    );
    let mask = (1u32 << bits) - 1;
    let mut dense = vec![0f32; out * inp];
    for i in 0..inp {
        let g = g_idx[i] as usize;
        for o in 0..out {
            let q = (qweight[(i / per) * out + o] >> (bits as usize * (i % per))) & mask;
            let zs = (qzeros[g * (out / per) + o / per] >> (bits as usize * (o % per))) & mask;
            let z = if v2 { zs } else { (zs + 1) & mask };
            dense[o * inp + i] = (q as i32 - z as i32) as f32 * scales[g * out + o];
        }
    }
    Ok(dense)
}

/// The sixteen FP4 (e2m1) values of an MXFP4 nibble.
const FP4: [f32; 16] = [
    0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0, -0.0, -0.5, -1.0, -1.5, -2.0, -3.0, -4.0, -6.0,
];

/// gpt-oss MXFP4: `blocks [rows, cols/32, 16]` bytes (low nibble first), `scales
/// [rows, cols/32]` e8m0 exponents (biased by 127); returns `[rows, cols]`.
pub fn mxfp4(blocks: &[u8], scales: &[u8], rows: usize, cols: usize) -> Result<Vec<f32>> {
    ensure!(
        cols.is_multiple_of(32),
        "mxfp4: {cols} columns not a multiple of 32"
    );
    ensure!(
        blocks.len() == rows * cols / 2,
        "mxfp4 blocks of {} bytes for [{rows}, {cols}]",
        blocks.len()
    );
    ensure!(
        scales.len() == rows * cols / 32,
        "mxfp4 scales of {} bytes",
        scales.len()
    );
    let mut dense = vec![0f32; rows * cols];
    for (k, &b) in blocks.iter().enumerate() {
        let e = scales[k / 16] as i32 - 127;
        let s = (2f32).powi(e);
        dense[2 * k] = FP4[(b & 0xf) as usize] * s;
        dense[2 * k + 1] = FP4[(b >> 4) as usize] * s;
    }
    Ok(dense)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unpacks_dense_bits_across_words() {
        // 4-bit: value i at bits 4i.
        assert_eq!(
            unpack_dense(&[0x7654_3210], 4, 8),
            vec![0, 1, 2, 3, 4, 5, 6, 7]
        );
        // 8-bit: four per word.
        assert_eq!(unpack_dense(&[0x0403_0201], 8, 4), vec![1, 2, 3, 4]);
        // 3-bit values straddle word boundaries (value 10 spans bits 30..33).
        let vals: Vec<u32> = (0..32).map(|i| i % 8).collect();
        let mut words = [0u32; 3];
        for (i, v) in vals.iter().enumerate() {
            let bit = i * 3;
            let wide = (*v as u64) << (bit % 32);
            words[bit / 32] |= wide as u32;
            if bit % 32 + 3 > 32 {
                words[bit / 32 + 1] |= (wide >> 32) as u32;
            }
        }
        assert_eq!(unpack_dense(&words, 3, 32), vals);
    }

    #[test]
    fn awq_nibble_order() {
        // Column c of a group of 8 at nibble AWQ_NIBBLE[c]: packing columns 0..8 as values 0..8.
        let mut w = 0u32;
        for (c, nib) in AWQ_NIBBLE.iter().enumerate() {
            w |= (c as u32) << (4 * nib);
        }
        assert_eq!(w, 0x7531_6420);
        let dense = awq(&[w], &[0], &[1.0; 8], 1, 8, 1).unwrap();
        assert_eq!(dense, (0..8).map(|c| c as f32).collect::<Vec<_>>());
    }

    #[test]
    fn gptq_v1_zeros_are_stored_minus_one() {
        // One input row of 8 (4-bit: in must be a multiple of 8), one output column of 8.
        let q: u32 = 0x8888_8888; // every weight 8
        let dense_v1 = gptq(&[q; 8], &[0x7777_7777], &[0.5; 8], &[0; 8], 8, 8, 4, false).unwrap();
        assert!(dense_v1.iter().all(|&x| x == 0.0)); // zero stored 7 -> 8
        let dense_v2 = gptq(&[q; 8], &[0x7777_7777], &[0.5; 8], &[0; 8], 8, 8, 4, true).unwrap();
        assert!(dense_v2.iter().all(|&x| x == 0.5));
    }

    #[test]
    fn mxfp4_scales_by_powers_of_two() {
        let mut blocks = vec![0u8; 16];
        blocks[0] = 0x72; // low nibble 2 (1.0), high nibble 7 (6.0)
        let dense = mxfp4(&blocks, &[128], 1, 32).unwrap();
        assert_eq!(&dense[..2], &[2.0, 12.0]);
    }
}
