//! Every CUDA kernel against its CPU reference (the op's cpu_fwd) on fresh random inputs.
//! Op outputs are NaN-poisoned before each kernel runs (`ops::poison_outputs`), and in-place
//! destinations are NaN-filled by the test, so an element a kernel fails to write fails.
//! GPU only: `cargo test --release --features cuda --test cuda_kernels`.
#![cfg(feature = "cuda")]

use candle_core::{DType, Device, IndexOp, Tensor};
use flare::layers::attention::{
    paged_attention, paged_attention_with_sinks, AttnMetadata, SeqAttn,
};
use flare::ops;
use rand::seq::SliceRandom;
use rand::Rng;

fn gpu() -> Device {
    ops::poison_outputs(true);
    Device::new_cuda(0).expect("a CUDA device")
}

const DTYPES: [DType; 3] = [DType::BF16, DType::F16, DType::F32];

/// Relative tolerance: two roundings to the element type plus f32 accumulation.
fn rtol(dtype: DType) -> f32 {
    match dtype {
        DType::BF16 => 2.0 * 2f32.powi(-8) * 2.0,
        DType::F16 => 2.0 * 2f32.powi(-11) * 2.0,
        _ => 2e-5,
    }
}

fn randn(shape: &[usize], dtype: DType) -> Tensor {
    Tensor::randn(0f32, 1f32, shape, &Device::Cpu)
        .unwrap()
        .to_dtype(dtype)
        .unwrap()
}

fn to_f32(t: &Tensor) -> Vec<f32> {
    t.to_device(&Device::Cpu)
        .unwrap()
        .to_dtype(DType::F32)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap()
}

/// `|got - want| <= rtol * (|want| + scale)` elementwise, where `scale` is the RMS of `want`
/// (values near zero are judged against the tensor's magnitude). NaN only where expected.
fn assert_close(got: &Tensor, want: &Tensor, dtype: DType, what: &str) {
    assert_eq!(got.dims(), want.dims(), "{what}: shape");
    let (g, w) = (to_f32(got), to_f32(want));
    let finite: Vec<f32> = w.iter().copied().filter(|x| x.is_finite()).collect();
    let scale = (finite.iter().map(|x| x * x).sum::<f32>() / finite.len().max(1) as f32).sqrt();
    let tol = rtol(dtype);
    let mut worst = (0f32, 0usize);
    for (i, (&a, &b)) in g.iter().zip(&w).enumerate() {
        if b.is_nan() {
            assert!(a.is_nan(), "{what}: element {i} is {a}, reference NaN");
            continue;
        }
        assert!(
            a.is_finite(),
            "{what}: element {i} is {a} (unwritten?), reference {b}"
        );
        let err = (a - b).abs() / (b.abs() + scale);
        if err > worst.0 {
            worst = (err, i);
        }
    }
    assert!(
        worst.0 <= tol,
        "{what}: relative error {} > {tol} at {} (got {}, want {})",
        worst.0,
        worst.1,
        g[worst.1],
        w[worst.1]
    );
    eprintln!("{what}: max relative error {:.2e} (tol {tol:.1e})", worst.0);
}

#[test]
fn silu_mul_matches_reference() {
    let dev = gpu();
    for dtype in DTYPES {
        for shape in [[1usize, 14336], [37, 8192], [5, 333]] {
            let (g, u) = (randn(&shape, dtype), randn(&shape, dtype));
            let want = ops::activation::silu_mul(&g, &u).unwrap();
            let got =
                ops::activation::silu_mul(&g.to_device(&dev).unwrap(), &u.to_device(&dev).unwrap())
                    .unwrap();
            assert_close(&got, &want, dtype, &format!("silu_mul {dtype:?} {shape:?}"));
        }
    }
}

#[test]
fn rms_norms_match_reference() {
    let dev = gpu();
    for dtype in DTYPES {
        for (rows, n) in [(1usize, 4096usize), (33, 576), (7, 3584), (3, 100)] {
            let x = randn(&[rows, n], dtype);
            let r = randn(&[rows, n], dtype);
            let w = randn(&[n], dtype);
            let (xg, rg, wg) = (
                x.to_device(&dev).unwrap(),
                r.to_device(&dev).unwrap(),
                w.to_device(&dev).unwrap(),
            );
            let what = format!("{dtype:?} [{rows}, {n}]");
            let want = ops::norm::rms_norm(&x, &w, 1e-5).unwrap();
            let got = ops::norm::rms_norm(&xg, &wg, 1e-5).unwrap();
            assert_close(&got, &want, dtype, &format!("rms_norm {what}"));
            let (ws, wn) = ops::norm::add_rms_norm(&x, &r, &w, 1e-6).unwrap();
            let (gs, gn) = ops::norm::add_rms_norm(&xg, &rg, &wg, 1e-6).unwrap();
            assert_close(&gs, &ws, dtype, &format!("add_rms_norm sum {what}"));
            assert_close(&gn, &wn, dtype, &format!("add_rms_norm norm {what}"));
        }
    }
}

#[test]
fn rotary_matches_reference() {
    let dev = gpu();
    let mut rng = rand::rng();
    for dtype in DTYPES {
        for (heads, d) in [(32usize, 128usize), (9, 64), (8, 256), (4, 64)] {
            for interleaved in [false, true] {
                let t = 11;
                let x = randn(&[t, heads, d], dtype);
                let pos: Vec<u32> = (0..t).map(|_| rng.random_range(0..131_072)).collect();
                let inv: Vec<f32> = (0..d / 2)
                    .map(|i| 1.0 / 500_000f32.powf(2.0 * i as f32 / d as f32))
                    .collect();
                let pos_c = Tensor::new(pos.as_slice(), &Device::Cpu).unwrap();
                let inv_c = Tensor::new(inv.as_slice(), &Device::Cpu).unwrap();
                let want = x.copy().unwrap();
                ops::rotary::rotary_inplace(&want, &pos_c, &inv_c, 1.0, interleaved).unwrap();
                let got = x.to_device(&dev).unwrap();
                ops::rotary::rotary_inplace(
                    &got,
                    &pos_c.to_device(&dev).unwrap(),
                    &inv_c.to_device(&dev).unwrap(),
                    1.0,
                    interleaved,
                )
                .unwrap();
                let what = format!("rotary {dtype:?} h{heads} d{d} interleaved={interleaved}");
                assert_close(&got, &want, dtype, &what);
            }
        }
    }
}

#[test]
fn reshape_and_cache_writes_exactly_the_mapped_slots() {
    let dev = gpu();
    let mut rng = rand::rng();
    for dtype in DTYPES {
        for (kvh, d) in [(8usize, 128usize), (3, 64), (4, 256)] {
            let (slots_n, t) = (64 * 16, 77);
            let mut all: Vec<u32> = (0..slots_n as u32).collect();
            all.shuffle(&mut rng);
            let mut slots: Vec<u32> = all[..t].to_vec();
            slots[5] = ops::kv_write::PAD_SLOT;
            slots[40] = ops::kv_write::PAD_SLOT;
            let k = randn(&[t, kvh, d], dtype);
            let v = randn(&[t, kvh, d], dtype);
            // NaN-filled caches: every slot not written must stay NaN on both sides.
            let nan = Tensor::full(f32::NAN, (slots_n, kvh, d), &Device::Cpu)
                .unwrap()
                .to_dtype(dtype)
                .unwrap();
            let (kc, vc) = (nan.copy().unwrap(), nan.copy().unwrap());
            let slot_t = Tensor::new(slots.as_slice(), &Device::Cpu).unwrap();
            ops::kv_write::reshape_and_cache(&k, &v, &kc, &vc, &slot_t, None).unwrap();
            let (kg, vg) = (nan.to_device(&dev).unwrap(), nan.to_device(&dev).unwrap());
            ops::kv_write::reshape_and_cache(
                &k.to_device(&dev).unwrap(),
                &v.to_device(&dev).unwrap(),
                &kg,
                &vg,
                &slot_t.to_device(&dev).unwrap(),
                None,
            )
            .unwrap();
            let what = format!("reshape_and_cache {dtype:?} kvh{kvh} d{d}");
            // Exact copies: compare bits through f32.
            assert_eq!(
                to_f32(&kg).iter().map(|x| x.to_bits()).collect::<Vec<_>>(),
                to_f32(&kc).iter().map(|x| x.to_bits()).collect::<Vec<_>>(),
                "{what}: keys"
            );
            assert_eq!(
                to_f32(&vg).iter().map(|x| x.to_bits()).collect::<Vec<_>>(),
                to_f32(&vc).iter().map(|x| x.to_bits()).collect::<Vec<_>>(),
                "{what}: values"
            );
            // And the reference did write the mapped rows.
            let row = to_f32(&kc.i(slots[0] as usize).unwrap());
            assert!(row.iter().all(|x| x.is_finite()));
        }
    }
}

#[test]
fn argmax_matches_reference_with_ties() {
    let dev = gpu();
    let mut rng = rand::rng();
    for dtype in DTYPES {
        for vocab in [128_256usize, 49_152, 1000] {
            let rows = 9;
            let mut data: Vec<f32> = (0..rows * vocab).map(|_| rng.random::<f32>()).collect();
            // Row 1: a tie between two ids (lowest wins); row 2: NaNs never win.
            data[vocab + 17] = 5.0;
            data[vocab + 900] = 5.0;
            data[2 * vocab + 3] = f32::NAN;
            data[2 * vocab + 10] = 7.0;
            let x = Tensor::from_vec(data, (rows, vocab), &Device::Cpu)
                .unwrap()
                .to_dtype(dtype)
                .unwrap();
            let want = ops::sampling::argmax(&x).unwrap().to_vec1::<u32>().unwrap();
            let got = ops::sampling::argmax(&x.to_device(&dev).unwrap())
                .unwrap()
                .to_vec1::<u32>()
                .unwrap();
            assert_eq!(got, want, "argmax {dtype:?} vocab {vocab}");
            assert_eq!(want[1], 17);
            assert_eq!(want[2], 10);
        }
    }
}

/// Parameter rows of every kind: greedy, temperature, top-k, top-p, min-p, all three.
fn sampling_params(rows: usize, step: u64) -> Vec<u32> {
    use ops::sampling::RowParams;
    let kinds = [
        (0.0, 0, 1.0, 0.0),
        (1.0, 0, 1.0, 0.0),
        (0.7, 50, 1.0, 0.0),
        (1.2, 0, 0.9, 0.0),
        (1.0, 0, 1.0, 0.05),
        (0.8, 40, 0.95, 0.02),
    ];
    (0..rows)
        .flat_map(|r| {
            let (temperature, top_k, top_p, min_p) = kinds[r % kinds.len()];
            RowParams {
                temperature,
                top_k,
                top_p,
                min_p,
                seed: 1000 + r as u64,
                position: step * 7 + r as u64,
            }
            .to_words()
        })
        .collect()
}

#[test]
fn sample_rows_matches_reference_and_is_batch_invariant() {
    // The kernel bisects where the reference sorts, and its expf may differ from the host's
    // by an ulp: a token may differ only where the draw falls on a CDF boundary (rare).
    let dev = gpu();
    let (rows, mut differ, mut total) = (12usize, 0, 0);
    for vocab in [128_256usize, 49_152, 1000] {
        for step in 0..8u64 {
            let logits =
                (Tensor::randn(0f32, 1f32, (rows, vocab), &Device::Cpu).unwrap() * 3.0).unwrap();
            let words = sampling_params(rows, step);
            let params = Tensor::from_vec(words.clone(), (rows, 8), &Device::Cpu).unwrap();
            let want = ops::sampling::sample_rows(&logits, &params)
                .unwrap()
                .to_vec1::<u32>()
                .unwrap();
            let (gl, gp) = (
                logits.to_device(&dev).unwrap(),
                params.to_device(&dev).unwrap(),
            );
            let got = ops::sampling::sample_rows(&gl, &gp)
                .unwrap()
                .to_vec1::<u32>()
                .unwrap();
            differ += got.iter().zip(&want).filter(|(a, b)| a != b).count();
            total += rows;
            // Each row alone gives the token it got in the batch.
            for r in [0, 3, 5, 11] {
                let alone = ops::sampling::sample_rows(
                    &gl.narrow(0, r, 1).unwrap(),
                    &gp.narrow(0, r, 1).unwrap(),
                )
                .unwrap()
                .to_vec1::<u32>()
                .unwrap();
                assert_eq!(alone[0], got[r], "row {r} alone, vocab {vocab}");
            }
        }
    }
    assert!(
        differ * 100 <= total,
        "{differ} of {total} tokens differ from the reference"
    );
}

#[test]
fn adjust_logits_matches_reference_exactly() {
    use ops::sampling::{adjust_logits, ADJUST_ENTRY};
    let dev = gpu();
    let (rows, vocab) = (3usize, 5000usize);
    let logits = Tensor::randn(0f32, 2f32, (rows, vocab), &Device::Cpu).unwrap();
    let f = |x: f32| x.to_bits();
    let entries: Vec<u32> = vec![
        [0, 3, 0, f(1.5), f(1.0), f(0.0)],
        [0, 4, 1, f(0.0), f(1.0), f(0.0)],
        [1, 7, 0, f(0.0), f(1.3), f(0.0)],
        [2, 8, 0, f(-0.5), f(2.0), f(0.7)],
        [2, 99_999, 0, f(5.0), f(1.0), f(0.0)],
    ]
    .concat();
    let n = entries.len() / ADJUST_ENTRY;
    let e = Tensor::from_vec(entries, (n, ADJUST_ENTRY), &Device::Cpu).unwrap();
    let want = adjust_logits(&logits, &e)
        .unwrap()
        .to_vec2::<f32>()
        .unwrap();
    let got = adjust_logits(
        &logits.to_device(&dev).unwrap(),
        &e.to_device(&dev).unwrap(),
    )
    .unwrap()
    .to_vec2::<f32>()
    .unwrap();
    assert_eq!(got, want);
    assert_eq!(want[0][4], f32::NEG_INFINITY);
}

/// A ragged batch: `(cached, new)` tokens per sequence, blocks drawn from a shuffled pool.
fn batch(
    lens: &[(usize, usize)],
    block_size: usize,
    num_blocks: usize,
    rng: &mut impl Rng,
) -> Vec<SeqAttn> {
    let mut pool: Vec<u32> = (0..num_blocks as u32).collect();
    pool.shuffle(rng);
    let mut start = 0;
    lens.iter()
        .map(|&(cached, new)| {
            let ctx = cached + new;
            let n_blocks = ctx.div_ceil(block_size);
            let table: Vec<u32> = pool.drain(..n_blocks).collect();
            let s = SeqAttn {
                query_start: start,
                query_len: new,
                context_len: ctx,
                block_table: table,
                prompt_len: 0,
            };
            start += new;
            s
        })
        .collect()
}

/// gpt-oss's sinks through the kernel (split and direct paths) against the CPU kernel.
#[test]
fn paged_attention_with_sinks_matches_reference() {
    let dev = gpu();
    let mut rng = rand::rng();
    let (heads, kvh, d) = (64usize, 8usize, 64usize);
    let (block_size, num_blocks) = (16, 512);
    let sinks: Vec<f32> = (0..heads).map(|h| (h as f32 * 0.37).sin() * 3.0).collect();
    let batches: [&[(usize, usize)]; 2] = [&[(0, 1), (300, 1), (5000, 1)], &[(0, 37), (64, 13)]];
    for dtype in DTYPES {
        let kc = randn(&[num_blocks * block_size, kvh, d], dtype);
        let vc = randn(&[num_blocks * block_size, kvh, d], dtype);
        let (kg, vg) = (kc.to_device(&dev).unwrap(), vc.to_device(&dev).unwrap());
        for lens in batches {
            for window in [None, Some(128)] {
                let seqs = batch(lens, block_size, num_blocks, &mut rng);
                let t: usize = lens.iter().map(|l| l.1).sum();
                let q = randn(&[t, heads, d], dtype);
                let meta_c = AttnMetadata::new(seqs.clone(), block_size, &Device::Cpu).unwrap();
                let want =
                    paged_attention_with_sinks(&q, &kc, &vc, &meta_c, 0.125, window, Some(&sinks))
                        .unwrap();
                let meta_g = AttnMetadata::new(seqs, block_size, &dev).unwrap();
                let qg = q.to_device(&dev).unwrap();
                let got =
                    paged_attention_with_sinks(&qg, &kg, &vg, &meta_g, 0.125, window, Some(&sinks))
                        .unwrap();
                assert_close(
                    &got,
                    &want,
                    dtype,
                    &format!("sinks {dtype:?} {lens:?} {window:?}"),
                );
            }
        }
    }
}

#[test]
fn paged_attention_matches_reference() {
    let dev = gpu();
    let mut rng = rand::rng();
    // (heads, kv_heads, head_dim): Llama-3 8B, Qwen2.5-7B (G = 7), SmolLM2 (d 64),
    // Gemma-like d 256, plain MHA, G = 16.
    let shapes = [
        (32usize, 8usize, 128usize),
        (28, 4, 128),
        (9, 3, 64),
        (8, 4, 256),
        (4, 4, 64),
        (16, 1, 128),
    ];
    // (cached, new) per sequence: decode at many lengths (one long enough to split), a
    // ragged prefill/mixed batch, a chunk with context.
    let batches: [&[(usize, usize)]; 3] = [
        &[(0, 1), (15, 1), (16, 1), (100, 1), (1000, 1), (5000, 1)],
        &[(0, 37), (20, 1), (64, 13), (3, 1), (0, 1)],
        &[(700, 130)],
    ];
    let (block_size, num_blocks) = (16, 512);
    for dtype in DTYPES {
        for &(heads, kvh, d) in &shapes {
            if dtype == DType::F32 && d == 256 {
                continue; // not covered by the kernel (shared memory): tensor-op fallback
            }
            let kc = randn(&[num_blocks * block_size, kvh, d], dtype);
            let vc = randn(&[num_blocks * block_size, kvh, d], dtype);
            let (kg, vg) = (kc.to_device(&dev).unwrap(), vc.to_device(&dev).unwrap());
            let scale = 1.0 / (d as f32).sqrt();
            for (bi, lens) in batches.iter().enumerate() {
                for window in [None, Some(50)] {
                    let seqs = batch(lens, block_size, num_blocks, &mut rng);
                    let t: usize = lens.iter().map(|l| l.1).sum();
                    let q = randn(&[t, heads, d], dtype);
                    let meta_c = AttnMetadata::new(seqs.clone(), block_size, &Device::Cpu).unwrap();
                    let want = paged_attention(&q, &kc, &vc, &meta_c, scale, window).unwrap();
                    let meta_g = AttnMetadata::new(seqs, block_size, &dev).unwrap();
                    let qg = q.to_device(&dev).unwrap();
                    let got = paged_attention(&qg, &kg, &vg, &meta_g, scale, window).unwrap();
                    let what = format!(
                        "paged attention {dtype:?} h{heads}/{kvh} d{d} batch {bi} window {window:?}"
                    );
                    assert_close(&got, &want, dtype, &what);
                }
            }
        }
    }
}

/// The FP8 KV cache (`--kv-cache-dtype fp8`): `reshape_and_cache` into e4m3 bytes gives the
/// CPU reference's bytes exactly, and `paged_attention` over those bytes (per-tensor scales)
/// matches the CPU kernel, decode and ragged prefill, with and without a window.
#[test]
fn fp8_kv_cache_kernels_match_reference() {
    use flare::kv::Fp8Scales;
    use flare::layers::attention::paged_attention_kv;
    let dev = gpu();
    let mut rng = rand::rng();
    let scales = Fp8Scales { k: 0.02, v: 0.3 };
    let (block_size, num_blocks) = (16, 256);
    let slots_n = num_blocks * block_size;
    for dtype in DTYPES {
        for &(heads, kvh, d) in &[(9usize, 3usize, 64usize), (32, 8, 128), (8, 4, 256)] {
            if dtype == DType::F32 && d == 256 {
                continue;
            }
            // Every slot written through reshape_and_cache, on both sides.
            let k = randn(&[slots_n, kvh, d], dtype);
            let v = randn(&[slots_n, kvh, d], dtype);
            let all: Vec<u32> = (0..slots_n as u32).collect();
            let slot_c = Tensor::new(all.as_slice(), &Device::Cpu).unwrap();
            let zeros = Tensor::zeros((slots_n, kvh, d), DType::U8, &Device::Cpu).unwrap();
            let (kc, vc) = (zeros.copy().unwrap(), zeros.copy().unwrap());
            ops::kv_write::reshape_and_cache(&k, &v, &kc, &vc, &slot_c, Some(scales)).unwrap();
            let (kg, vg) = (
                zeros.to_device(&dev).unwrap(),
                zeros.to_device(&dev).unwrap(),
            );
            ops::kv_write::reshape_and_cache(
                &k.to_device(&dev).unwrap(),
                &v.to_device(&dev).unwrap(),
                &kg,
                &vg,
                &slot_c.to_device(&dev).unwrap(),
                Some(scales),
            )
            .unwrap();
            let bytes = |t: &Tensor| {
                t.to_device(&Device::Cpu)
                    .unwrap()
                    .flatten_all()
                    .unwrap()
                    .to_vec1::<u8>()
                    .unwrap()
            };
            assert_eq!(bytes(&kg), bytes(&kc), "fp8 K bytes {dtype:?} d{d}");
            assert_eq!(bytes(&vg), bytes(&vc), "fp8 V bytes {dtype:?} d{d}");
            let scale = 1.0 / (d as f32).sqrt();
            let batches: [&[(usize, usize)]; 2] = [
                &[(0, 1), (15, 1), (100, 1), (1000, 1)],
                &[(0, 37), (20, 1), (64, 13)],
            ];
            for lens in batches {
                for window in [None, Some(50)] {
                    let seqs = batch(lens, block_size, num_blocks, &mut rng);
                    let t: usize = lens.iter().map(|l| l.1).sum();
                    let q = randn(&[t, heads, d], dtype);
                    let meta_c = AttnMetadata::new(seqs.clone(), block_size, &Device::Cpu).unwrap();
                    let want = paged_attention_kv(
                        &q,
                        &kc,
                        &vc,
                        &meta_c,
                        scale,
                        window,
                        None,
                        Some(scales),
                    )
                    .unwrap();
                    let meta_g = AttnMetadata::new(seqs, block_size, &dev).unwrap();
                    let got = paged_attention_kv(
                        &q.to_device(&dev).unwrap(),
                        &kg,
                        &vg,
                        &meta_g,
                        scale,
                        window,
                        None,
                        Some(scales),
                    )
                    .unwrap();
                    let what = format!(
                        "fp8 KV attention {dtype:?} h{heads}/{kvh} d{d} {lens:?} {window:?}"
                    );
                    assert_close(&got, &want, dtype, &what);
                }
            }
        }
    }
}

/// The fused MoE kernels (routing, permutation, grouped GEMMs, weighted un-permute) against
/// the op's CPU reference, for each routing family; and a token alone equals the same token
/// inside a batch, bit for bit, on the GPU.
#[test]
fn fused_moe_matches_reference_and_is_batch_invariant() {
    use flare::models::config::{Activation, Scoring};
    use flare::ops::moe::{fused_moe, FusedExperts, Routing};
    let dev = gpu();
    let softmax = |top_k| Routing {
        top_k,
        norm_topk_prob: true,
        scoring: Scoring::Softmax,
        groups: None,
        group_by_best: false,
        correction: None,
        routed_scaling_factor: 1.0,
    };
    let v3 = Routing {
        scoring: Scoring::Sigmoid,
        groups: Some((8, 4)),
        correction: Some((0..64).map(|i| (i as f32 * 0.37).sin() * 0.3).collect()),
        routed_scaling_factor: 2.5,
        ..softmax(8)
    };
    let swiglu = Activation::ClampedSwiglu {
        alpha: 1.702,
        limit: 7.0,
    };
    // (experts, hidden, inter, routing, activation, biases)
    let cases = [
        (64, 1024, 384, softmax(8), Activation::Silu, false),
        (8, 512, 700, softmax(2), Activation::Silu, false),
        (64, 448, 160, v3, Activation::Silu, false),
        (16, 640, 320, softmax(4), swiglu, true),
        (6, 96, 40, softmax(3), Activation::GeluTanh, false),
    ];
    let scaled = |shape: &[usize], fan_in: usize, dtype: DType| {
        (randn(shape, DType::F32) / (fan_in as f64).sqrt())
            .unwrap()
            .to_dtype(dtype)
            .unwrap()
    };
    for (e, hidden, inter, routing, act, biases) in cases {
        for dtype in DTYPES {
            let gu = scaled(&[e, 2 * inter, hidden], hidden, dtype);
            let down = scaled(&[e, hidden, inter], inter, dtype);
            let gub = biases.then(|| randn(&[e, 2 * inter], DType::F32));
            let db = biases.then(|| randn(&[e, hidden], DType::F32));
            let on = |t: &Tensor| t.to_device(&dev).unwrap();
            let cpu = FusedExperts::new(
                gu.clone(),
                gub.clone(),
                down.clone(),
                db.clone(),
                act,
                &routing,
            )
            .unwrap();
            let gpu_experts = FusedExperts::new(
                on(&gu),
                gub.as_ref().map(on),
                on(&down),
                db.as_ref().map(on),
                act,
                &routing,
            )
            .unwrap();
            for tokens in [1usize, 5, 67] {
                let x = randn(&[tokens, hidden], dtype);
                let logits = (randn(&[tokens, e], DType::F32) * 2.0).unwrap();
                let want = fused_moe(&x, &logits, &cpu, &routing).unwrap();
                let got = fused_moe(&on(&x), &on(&logits), &gpu_experts, &routing).unwrap();
                let what = format!("fused moe {dtype:?} e{e} h{hidden} i{inter} t{tokens} {act:?}");
                assert_close(&got, &want, dtype, &what);
                if tokens > 1 {
                    let t = tokens / 2;
                    let alone = fused_moe(
                        &on(&x.narrow(0, t, 1).unwrap()),
                        &on(&logits.narrow(0, t, 1).unwrap()),
                        &gpu_experts,
                        &routing,
                    )
                    .unwrap();
                    assert_eq!(
                        to_f32(&got.i(t).unwrap()),
                        to_f32(&alone.i(0).unwrap()),
                        "{what}: token {t} alone vs batched"
                    );
                }
            }
        }
    }
}

// ---------------------------------------------------------------- quantized GEMMs
use flare::ops::qgemm::QuantWeight;
use flare::quant::device::{DevicePacked, Fp8Packed, IntPacked};

/// A quantized weight's output on the GPU and through its CPU reference, for `x` (CPU).
fn qgemm_both(p: &DevicePacked, x: &Tensor) -> (Tensor, Tensor) {
    let dev = gpu();
    let on_gpu = QuantWeight::upload(p, &dev).unwrap();
    let on_cpu = QuantWeight::upload(p, &Device::Cpu).unwrap();
    let got = on_gpu.forward(&x.to_device(&dev).unwrap()).unwrap();
    (got, on_cpu.forward(x).unwrap())
}

/// Rows `rows` of `x` through the GPU op one at a time are bit-identical to the batch's rows.
fn assert_rows_alone_equal_batch(p: &DevicePacked, x: &Tensor, rows: &[usize], what: &str) {
    let dev = gpu();
    let w = QuantWeight::upload(p, &dev).unwrap();
    let xg = x.to_device(&dev).unwrap();
    let batch = to_f32(&w.forward(&xg).unwrap());
    let n = w.out_features();
    for &r in rows {
        let alone = to_f32(&w.forward(&xg.narrow(0, r, 1).unwrap()).unwrap());
        let same = alone
            .iter()
            .zip(&batch[r * n..(r + 1) * n])
            .all(|(a, b)| a.to_bits() == b.to_bits());
        assert!(
            same,
            "{what}: row {r} alone differs from the batch of {}",
            x.dims()[0]
        );
    }
}

fn random_fp8(n: usize, k: usize, gw: usize, gx: usize, static_scale: Option<f32>) -> Fp8Packed {
    let mut rng = rand::rng();
    let w: Vec<f32> = (0..n * k).map(|_| rng.random_range(-1.0f32..1.0)).collect();
    let mut p = Fp8Packed::per_channel(&w, n, k).unwrap();
    p.gw = gw;
    p.gx = gx;
    p.static_scale = static_scale;
    p.scales = (0..n * (k / gw))
        .map(|_| rng.random_range(0.001f32..0.01))
        .collect();
    p
}

#[test]
fn fp8_gemm_matches_reference_and_is_batch_invariant() {
    // (M, N, K, gw, gx, static): per-channel x per-token, 128x128 blocks with 1x128 groups,
    // the fixtures' 32-wide blocks, a static activation scale; decode and prefill tiles.
    let cases = [
        (1, 96, 256, 256, 256, None),
        (5, 72, 576, 576, 576, None),
        (37, 136, 512, 128, 128, None),
        (100, 64, 128, 32, 32, None),
        (20, 40, 256, 256, 256, Some(0.02f32)),
    ];
    for (m, n, k, gw, gx, st) in cases {
        let p = DevicePacked::Fp8(random_fp8(n, k, gw, gx, st));
        for dtype in DTYPES {
            let x = randn(&[m, k], dtype);
            let (got, want) = qgemm_both(&p, &x);
            let what =
                format!("fp8 gemm {dtype:?} M={m} N={n} K={k} gw={gw} gx={gx} static={st:?}");
            // f32 sums of exact e4m3 products (the tensor cores' accumulation order differs).
            let tol = if dtype == DType::F32 {
                1e-4
            } else {
                rtol(dtype)
            };
            let (g, w) = (to_f32(&got), to_f32(&want));
            let scale = (w.iter().map(|v| v * v).sum::<f32>() / w.len() as f32).sqrt();
            let worst = g
                .iter()
                .zip(&w)
                .map(|(a, b)| (a - b).abs() / (b.abs() + scale))
                .fold(0f32, f32::max);
            assert!(g.iter().all(|v| v.is_finite()), "{what}: unwritten outputs");
            assert!(worst <= tol, "{what}: relative error {worst} > {tol}");
            eprintln!("{what}: max relative error {worst:.2e}");
            if m > 1 {
                assert_rows_alone_equal_batch(&p, &x, &[0, m / 2, m - 1], &what);
            }
        }
    }
}

fn random_int(n: usize, k: usize, bits: u32, g: usize, perm: bool) -> IntPacked {
    let mut rng = rand::rng();
    let words = (0..n * k * bits as usize / 32)
        .map(|_| rng.random())
        .collect();
    let scale_offset = (0..n * k / g)
        .flat_map(|_| {
            let s = rng.random_range(0.001f32..0.01);
            [
                s,
                -s * (1 << (bits - 1)) as f32 + rng.random_range(-0.01f32..0.01),
            ]
        })
        .collect();
    let perm = perm.then(|| {
        let mut p: Vec<u32> = (0..k as u32).collect();
        p.shuffle(&mut rng);
        p
    });
    IntPacked {
        out: n,
        inp: k,
        bits,
        words,
        scale_offset,
        g,
        perm,
    }
}

#[test]
fn int_gemm_matches_reference_and_is_batch_invariant() {
    // (bits, M, N, K, group, act-order permutation): GPTQ/AWQ groups of 128, GGUF's 32 and 16.
    let cases = [
        (4, 1, 96, 256, 128, false),
        (4, 7, 64, 576, 32, true),
        (4, 40, 136, 512, 128, false),
        (8, 1, 40, 256, 16, false),
        (8, 33, 72, 384, 32, true),
    ];
    for (bits, m, n, k, g, perm) in cases {
        let p = DevicePacked::Int(random_int(n, k, bits, g, perm));
        let x = randn(&[m, k], DType::BF16);
        let (got, want) = qgemm_both(&p, &x);
        let what = format!("int{bits} gemm M={m} N={n} K={k} g={g} perm={perm}");
        assert_close(&got, &want, DType::BF16, &what);
        if m > 1 {
            assert_rows_alone_equal_batch(&p, &x, &[0, m / 2, m - 1], &what);
        }
    }
}
