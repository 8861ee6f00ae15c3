//! The CPU quantized GEMM (`flare::cpu::qgemm`): repacking keeps candle's dequantized values,
//! products agree with an f32 reference within the activation quantization's error bound,
//! every row is bit-identical alone or inside batches of 2..64 at 1 and 2 threads, and the
//! AVX2 and AVX-512 VNNI kernels equal the scalar reference bit for bit.

use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{Device, Tensor};
use flare::cpu::qgemm::{available, avx512_vnni_available, Kernel, QWeight};

const TYPES: [GgmlDType; 6] = [
    GgmlDType::Q4_0,
    GgmlDType::Q5_0,
    GgmlDType::Q4_1,
    GgmlDType::Q8_0,
    GgmlDType::Q4K,
    GgmlDType::Q6K,
];

/// The SIMD kernels this CPU runs.
fn simd_kernels() -> Vec<Kernel> {
    let mut k = vec![Kernel::Avx2];
    if avx512_vnni_available() {
        k.push(Kernel::Avx512Vnni);
    }
    k
}

fn same_bits(a: &[f32], b: &[f32]) -> bool {
    a.len() == b.len() && a.iter().zip(b).all(|(x, y)| x.to_bits() == y.to_bits())
}

fn pool(threads: usize) -> rayon::ThreadPool {
    rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .unwrap()
}

/// Random weights `[n, k]` quantized by candle, and our repack of them.
fn weight(dtype: GgmlDType, n: usize, k: usize, seed: u64) -> (QTensor, QWeight) {
    let w = Tensor::randn(0f32, 1.0, (n, k), &Device::Cpu).unwrap();
    let _ = seed;
    let q = QTensor::quantize(&w, dtype).unwrap();
    let p = QWeight::from_qtensor(&q).expect("repackable");
    (q, p)
}

fn acts(m: usize, k: usize) -> Vec<f32> {
    // Mixed magnitudes per block, some all-zero blocks, a few outliers.
    let t = Tensor::randn(0f32, 1.0, (m, k), &Device::Cpu).unwrap();
    let mut v = t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    for (i, x) in v.iter_mut().enumerate() {
        if (i / 32) % 7 == 3 {
            *x = 0.0;
        }
        if i % 101 == 0 {
            *x *= 20.0;
        }
    }
    v
}

#[test]
fn repack_keeps_candles_dequantized_values() {
    if !available() {
        return;
    }
    for dtype in TYPES {
        let (q, p) = weight(dtype, 8, 512, 1);
        let want = q
            .dequantize(&Device::Cpu)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        let got = p.dequantize();
        for (i, (a, b)) in got.iter().zip(&want).enumerate() {
            assert!(
                (a - b).abs() <= 1e-6 * b.abs().max(1.0),
                "{dtype:?} element {i}: {a} vs {b}"
            );
        }
    }
}

#[test]
fn products_agree_with_f32_reference_within_the_quantization_bound() {
    if !available() {
        return;
    }
    let (m, n, k) = (9, 70, 512);
    let x = acts(m, k);
    for dtype in TYPES {
        let (_, p) = weight(dtype, n, k, 2);
        let w = p.dequantize();
        let mut y = vec![0f32; m * n];
        p.matmul(&x, m, &mut y);
        for r in 0..m {
            for c in 0..n {
                let (xr, wc) = (&x[r * k..(r + 1) * k], &w[c * k..(c + 1) * k]);
                let exact: f64 = xr.iter().zip(wc).map(|(a, b)| *a as f64 * *b as f64).sum();
                // Each activation moves by at most half a step (amax/127/2) of its block.
                let bound: f64 = xr
                    .chunks(32)
                    .zip(wc.chunks(32))
                    .map(|(xb, wb)| {
                        let amax = xb.iter().fold(0f32, |a, v| a.max(v.abs())) as f64;
                        amax / 254.0 * wb.iter().map(|v| v.abs() as f64).sum::<f64>()
                    })
                    .sum();
                let err = (y[r * n + c] as f64 - exact).abs();
                assert!(
                    err <= bound * 1.01 + 1e-3,
                    "{dtype:?} ({r},{c}): {} vs {exact}, bound {bound}",
                    y[r * n + c]
                );
            }
        }
        // And the bound is not vacuous: the product is far from zero on average.
        let mean: f32 = y.iter().map(|v| v.abs()).sum::<f32>() / y.len() as f32;
        assert!(mean > 1.0, "{dtype:?}: mean |y| {mean}");
    }
}

#[test]
fn rows_are_bit_identical_alone_and_in_batches_of_2_to_64_at_1_and_2_threads() {
    if !available() {
        return;
    }
    let (n, k) = (37, 512);
    let m = 64;
    let x = acts(m, k);
    for (dtype, kernel) in TYPES
        .iter()
        .flat_map(|&t| simd_kernels().into_iter().map(move |k| (t, k)))
    {
        let (_, p) = weight(dtype, n, k, 3);
        // Each row alone, one thread.
        let alone: Vec<Vec<f32>> = pool(1).install(|| {
            (0..m)
                .map(|r| {
                    let mut y = vec![0f32; n];
                    p.matmul_with(kernel, &x[r * k..(r + 1) * k], 1, &mut y);
                    y
                })
                .collect()
        });
        for threads in [1, 2] {
            pool(threads).install(|| {
                for batch in [2, 3, 4, 5, 7, 8, 13, 16, 31, 32, 33, 64] {
                    // Rows [start, start + batch) so a row lands at different tile offsets.
                    for start in [0, 1, m - batch] {
                        if start + batch > m {
                            continue;
                        }
                        let mut y = vec![0f32; batch * n];
                        p.matmul_with(kernel, &x[start * k..(start + batch) * k], batch, &mut y);
                        for i in 0..batch {
                            let got = &y[i * n..(i + 1) * n];
                            let want = &alone[start + i];
                            assert!(
                                got.iter()
                                    .zip(want)
                                    .all(|(a, b)| a.to_bits() == b.to_bits()),
                                "{dtype:?} {kernel:?} threads {threads} batch {batch} start {start} row {i}"
                            );
                        }
                    }
                }
            });
        }
    }
}

#[test]
fn fused_weights_give_each_parts_columns_unchanged() {
    if !available() {
        return;
    }
    let k = 256;
    let (_, a) = weight(GgmlDType::Q4_1, 12, k, 4);
    let (_, b) = weight(GgmlDType::Q4_1, 4, k, 5);
    fused_columns_are_the_parts(&[&a, &b]);
    // Different layouts do not fuse.
    let (_, c) = weight(GgmlDType::Q8_0, 4, k, 6);
    assert!(QWeight::concat(&[&a, &c]).is_none());
    // Q5_0 beside Q8_0 (one layout, different code ranges).
    let (_, d) = weight(GgmlDType::Q5_0, 12, k, 7);
    fused_columns_are_the_parts(&[&d, &c]);
}

/// The fused weight's columns are each part's own outputs, bit for bit.
fn fused_columns_are_the_parts(parts: &[&QWeight]) {
    let m = 5;
    let x = acts(m, parts[0].in_features());
    let fused = QWeight::concat(parts).unwrap();
    let n = fused.out_features();
    let mut yf = vec![0f32; m * n];
    fused.matmul(&x, m, &mut yf);
    let mut c0 = 0;
    for p in parts {
        let pn = p.out_features();
        let mut y = vec![0f32; m * pn];
        p.matmul(&x, m, &mut y);
        for r in 0..m {
            assert!(same_bits(
                &yf[r * n + c0..r * n + c0 + pn],
                &y[r * pn..(r + 1) * pn]
            ));
        }
        c0 += pn;
    }
}

#[test]
fn simd_kernels_equal_the_scalar_reference_bit_for_bit() {
    if !available() {
        return;
    }
    // n not a multiple of the 16-column panel; m not a multiple of the 4-row tile.
    let (m, n, k) = (7, 37, 512);
    let x = acts(m, k);
    for dtype in TYPES {
        let (_, p) = weight(dtype, n, k, 7);
        let mut want = vec![0f32; m * n];
        p.matmul_with(Kernel::Reference, &x, m, &mut want);
        for kernel in simd_kernels() {
            let mut got = vec![0f32; m * n];
            p.matmul_with(kernel, &x, m, &mut got);
            assert!(same_bits(&got, &want), "{dtype:?} {kernel:?}");
        }
        let mut default = vec![0f32; m * n];
        p.matmul(&x, m, &mut default);
        assert!(same_bits(&default, &want), "{dtype:?} default kernel");
    }
}

#[test]
fn full_range_q8_codes_do_not_saturate() {
    if !available() {
        return;
    }
    // Q8_0 blocks with every code value, -128 and 127 included (ggml's quantizer never writes
    // -128, other writers may), against activations at both ends of their range.
    let (n, k) = (20, 256);
    let mut raw = Vec::new();
    for c in 0..n {
        for b in 0..k / 32 {
            raw.extend_from_slice(&half::f16::from_f32(0.01 * (1 + c % 3) as f32).to_le_bytes());
            for e in 0..32 {
                let code = if (c + b) % 2 == 0 {
                    -128i8
                } else {
                    ((c * 31 + b * 7 + e * 13) % 256) as u8 as i8
                };
                raw.push(code as u8);
            }
        }
    }
    extremes_are_exact(GgmlDType::Q8_0, &raw, n, k);
}

#[test]
fn extreme_q5_0_and_q6_k_codes_do_not_saturate() {
    if !available() {
        return;
    }
    // Codes only at the ends of their ranges (-16/15, -32/31: every code byte and high bit
    // all zeros or all ones), the worst case for the AVX2 kernel's biased i16 sums.
    let (n, k) = (20, 256);
    let ends = |i: usize| {
        if (i * 7 + i / 5).is_multiple_of(3) {
            0x00
        } else {
            0xFF
        }
    };
    let mut q5 = Vec::new();
    for blk in 0..n * k / 32 {
        q5.extend_from_slice(&half::f16::from_f32(0.01 * (1 + blk % 3) as f32).to_le_bytes());
        q5.extend((0..20).map(|i| ends(blk * 20 + i)));
    }
    extremes_are_exact(GgmlDType::Q5_0, &q5, n, k);
    let mut q6 = Vec::new();
    for blk in 0..n * k / 256 {
        q6.extend((0..192).map(|i| ends(blk * 192 + i)));
        q6.extend((0..16).map(|i| (i as i8 - 8 + blk as i8 % 3) as u8));
        q6.extend_from_slice(&half::f16::from_f32(0.001).to_le_bytes());
    }
    extremes_are_exact(GgmlDType::Q6K, &q6, n, k);
}

/// Rows of all +1, all -1 and alternating ±1 (they quantize exactly, to ±127) against raw
/// ggml blocks: the reference equals the exact product up to f32 rounding, and every SIMD
/// kernel equals the reference bit for bit.
fn extremes_are_exact(dtype: GgmlDType, raw: &[u8], n: usize, k: usize) {
    let m = 3;
    let p = QWeight::from_raw(dtype, raw, n, k).unwrap();
    let mut x = vec![0f32; m * k];
    for (i, v) in x.iter_mut().enumerate() {
        *v = match i / k {
            0 => 1.0,
            1 => -1.0,
            _ => {
                if i % 2 == 0 {
                    1.0
                } else {
                    -1.0
                }
            }
        };
    }
    let w = p.dequantize();
    let mut want = vec![0f32; m * n];
    p.matmul_with(Kernel::Reference, &x, m, &mut want);
    for r in 0..m {
        for c in 0..n {
            let exact: f64 = (0..k)
                .map(|e| x[r * k + e] as f64 * w[c * k + e] as f64)
                .sum();
            let got = want[r * n + c] as f64;
            assert!(
                (got - exact).abs() <= 1e-4 * exact.abs().max(1.0),
                "{dtype:?} ({r},{c}) {got} vs {exact}"
            );
        }
    }
    for kernel in simd_kernels() {
        let mut got = vec![0f32; m * n];
        p.matmul_with(kernel, &x, m, &mut got);
        assert!(same_bits(&got, &want), "{dtype:?} {kernel:?}");
    }
}
