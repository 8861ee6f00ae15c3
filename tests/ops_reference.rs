//! The CPU forwards of the custom ops in `flare::ops` are the references the CUDA kernels are
//! tested against (tests/cuda_kernels.rs): here they are checked against candle's stock ops
//! and flare's existing CPU code, on the CPU.

use candle_core::{DType, Device, IndexOp, Tensor, D};
use flare::layers::attention::{AttnMetadata, SeqAttn};
use flare::layers::rope::{rope_reference, Rotary};
use flare::models::config::ModelConfig;
use flare::ops;

fn randn(shape: &[usize], dtype: DType) -> Tensor {
    Tensor::randn(0f32, 1f32, shape, &Device::Cpu)
        .unwrap()
        .to_dtype(dtype)
        .unwrap()
}

fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
    (a.to_dtype(DType::F32).unwrap() - b.to_dtype(DType::F32).unwrap())
        .unwrap()
        .abs()
        .unwrap()
        .flatten_all()
        .unwrap()
        .max(0)
        .unwrap()
        .to_scalar::<f32>()
        .unwrap()
}

#[test]
fn silu_mul_is_silu_times_up() {
    let (g, u) = (randn(&[7, 300], DType::F32), randn(&[7, 300], DType::F32));
    let want = (candle_nn::ops::silu(&g).unwrap() * &u).unwrap();
    let got = ops::activation::silu_mul(&g, &u).unwrap();
    assert!(max_diff(&got, &want) < 1e-5);
    // bf16: one rounding of the f32 result.
    let gb = ops::activation::silu_mul(
        &g.to_dtype(DType::BF16).unwrap(),
        &u.to_dtype(DType::BF16).unwrap(),
    )
    .unwrap();
    assert_eq!(gb.dtype(), DType::BF16);
    assert!(max_diff(&gb, &want) < 0.05);
}

#[test]
fn add_rms_norm_is_add_then_candle_rms_norm() {
    let x = randn(&[5, 64], DType::F32);
    let r = randn(&[5, 64], DType::F32);
    let w = randn(&[64], DType::F32);
    let (sum, norm) = ops::norm::add_rms_norm(&x, &r, &w, 1e-5).unwrap();
    let want_sum = (&x + &r).unwrap();
    assert!(max_diff(&sum, &want_sum) == 0.0);
    let want = candle_nn::ops::rms_norm(&want_sum, &w, 1e-5).unwrap();
    assert!(max_diff(&norm, &want) < 1e-5);
    let plain = ops::norm::rms_norm(&x, &w, 1e-5).unwrap();
    let want = candle_nn::ops::rms_norm(&x, &w, 1e-5).unwrap();
    assert!(max_diff(&plain, &want) < 1e-5);
    // The output halves are views of one [2, ..] tensor; rows stay independent.
    let row = ops::norm::rms_norm(&x.i(3..4).unwrap(), &w, 1e-5).unwrap();
    assert!(max_diff(&row, &plain.i(3..4).unwrap()) < 1e-6);
    assert!(ops::norm::rms_norm(&x, &randn(&[63], DType::F32), 1e-5).is_err());
}

#[test]
fn rotary_inplace_matches_rotary_apply_in_both_conventions() {
    let cfg = ModelConfig::from_hf_json(
        r#"{"vocab_size":10,"hidden_size":64,"intermediate_size":16,"num_hidden_layers":1,
        "num_attention_heads":2,"rope_theta":10000.0}"#,
    )
    .unwrap();
    let pos = Tensor::new(&[7u32, 0, 3, 100, 3, 4095], &Device::Cpu).unwrap();
    let rot = Rotary::new(&cfg, &Device::Cpu).unwrap();
    let x = randn(&[6, 2, 32], DType::F32);
    let (c, s) = rot.cos_sin_at(&pos, DType::F32).unwrap();
    let want = rot.apply(&x, &c, &s).unwrap();
    let got = x.copy().unwrap();
    rot.apply_inplace(&got, &pos).unwrap();
    assert!(max_diff(&got, &want) < 1e-4, "{}", max_diff(&got, &want));
    assert!(max_diff(&got, &rope_reference(&x, &c, &s).unwrap()) < 1e-4);
}

#[test]
fn reshape_and_cache_matches_write_kv() {
    let (bs, kvh, d) = (4, 2, 8);
    let seqs = vec![
        SeqAttn {
            query_start: 0,
            query_len: 6,
            context_len: 9,
            block_table: vec![5, 1, 7],
            prompt_len: 0,
        },
        SeqAttn {
            query_start: 6,
            query_len: 1,
            context_len: 2,
            block_table: vec![2],
            prompt_len: 0,
        },
    ];
    let meta = AttnMetadata::new(seqs.clone(), bs, &Device::Cpu).unwrap();
    let k = randn(&[7, kvh, d], DType::F32);
    let v = randn(&[7, kvh, d], DType::F32);
    let (kc, vc) = (
        Tensor::zeros((8 * bs, kvh, d), DType::F32, &Device::Cpu).unwrap(),
        Tensor::zeros((8 * bs, kvh, d), DType::F32, &Device::Cpu).unwrap(),
    );
    meta.write_kv(&k, &v, &kc, &vc, None).unwrap();
    // Slots by hand: sequence 0 positions 3..9, sequence 1 position 1.
    let slot = |t: &[u32], p: usize| t[p / bs] * bs as u32 + (p % bs) as u32;
    let mut slots: Vec<u32> = (3..9).map(|p| slot(&seqs[0].block_table, p)).collect();
    slots.push(slot(&seqs[1].block_table, 1));
    let slots = Tensor::new(slots.as_slice(), &Device::Cpu).unwrap();
    let (k2, v2) = (kc.zeros_like().unwrap(), vc.zeros_like().unwrap());
    ops::kv_write::reshape_and_cache(&k, &v, &k2, &v2, &slots, None).unwrap();
    assert_eq!(max_diff(&k2, &kc), 0.0);
    assert_eq!(max_diff(&v2, &vc), 0.0);
    // A padding slot writes nothing.
    let pad = Tensor::new(&[ops::kv_write::PAD_SLOT], &Device::Cpu).unwrap();
    let k3 = kc.zeros_like().unwrap();
    ops::kv_write::reshape_and_cache(
        &k.i(0..1).unwrap(),
        &v.i(0..1).unwrap(),
        &k3,
        &k3.zeros_like().unwrap(),
        &pad,
        None,
    )
    .unwrap();
    assert_eq!(
        k3.abs()
            .unwrap()
            .sum_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap(),
        0.0
    );
}

#[test]
fn argmax_takes_the_lowest_id_on_ties_and_skips_nan() {
    let x = Tensor::new(
        &[
            [0.0f32, 3.0, 1.0, 3.0],
            [f32::NAN, -1.0, -2.0, f32::NAN],
            [5.0, 5.0, 5.0, 5.0],
        ],
        &Device::Cpu,
    )
    .unwrap();
    let got = ops::sampling::argmax(&x).unwrap().to_vec1::<u32>().unwrap();
    assert_eq!(got, vec![1, 1, 0]);
    let y = randn(&[3, 1000], DType::F32);
    let want = y.argmax(D::Minus1).unwrap().to_vec1::<u32>().unwrap();
    assert_eq!(
        ops::sampling::argmax(&y).unwrap().to_vec1::<u32>().unwrap(),
        want
    );
}

// ---------------------------------------------------------------- fused mixture of experts
mod moe {
    use super::*;
    use flare::layers::linear::Linear;
    use flare::layers::mlp::{GatedMlp, SparseMoe};
    use flare::models::config::{Activation, Scoring};
    use flare::ops::moe::{fused_moe, Routing};

    fn weight(out: usize, inp: usize, dtype: DType) -> Tensor {
        (Tensor::randn(0f32, 1f32, (out, inp), &Device::Cpu).unwrap() / (inp as f64).sqrt())
            .unwrap()
            .to_dtype(dtype)
            .unwrap()
    }

    fn linear(out: usize, inp: usize, bias: bool, dtype: DType) -> Linear {
        let b = bias.then(|| {
            (randn(&[out], DType::F32) * 0.5)
                .unwrap()
                .to_dtype(dtype)
                .unwrap()
        });
        Linear::dense(weight(out, inp, dtype), b)
    }

    fn mlp(hidden: usize, inter: usize, bias: bool, act: Activation, dtype: DType) -> GatedMlp {
        GatedMlp::new(
            linear(inter, hidden, bias, dtype),
            linear(inter, hidden, bias, dtype),
            linear(hidden, inter, bias, dtype),
            act,
        )
    }

    struct Case {
        name: &'static str,
        experts: usize,
        routing: Routing,
        activation: Activation,
        bias: bool,
        shared: bool,
    }

    fn routing(top_k: usize) -> Routing {
        Routing {
            top_k,
            norm_topk_prob: true,
            scoring: Scoring::Softmax,
            groups: None,
            group_by_best: false,
            correction: None,
            routed_scaling_factor: 1.0,
        }
    }

    fn cases() -> Vec<Case> {
        let swiglu = Activation::ClampedSwiglu {
            alpha: 1.702,
            limit: 7.0,
        };
        vec![
            Case {
                name: "mixtral/qwen3 softmax top-2",
                experts: 8,
                routing: routing(2),
                activation: Activation::Silu,
                bias: false,
                shared: false,
            },
            Case {
                name: "deepseek-v3 sigmoid groups, correction, scaling, shared",
                experts: 16,
                routing: Routing {
                    scoring: Scoring::Sigmoid,
                    groups: Some((4, 2)),
                    correction: Some((0..16).map(|i| (i as f32 * 0.37).sin() * 0.3).collect()),
                    routed_scaling_factor: 2.5,
                    ..routing(4)
                },
                activation: Activation::Silu,
                bias: false,
                shared: true,
            },
            Case {
                name: "deepseek-v2 softmax groups by best, no renorm",
                experts: 16,
                routing: Routing {
                    norm_topk_prob: false,
                    groups: Some((4, 2)),
                    group_by_best: true,
                    ..routing(3)
                },
                activation: Activation::Silu,
                bias: false,
                shared: false,
            },
            Case {
                name: "gelu-tanh top-3",
                experts: 6,
                routing: routing(3),
                activation: Activation::GeluTanh,
                bias: false,
                shared: false,
            },
            Case {
                name: "gpt-oss clamped swiglu with biases",
                experts: 4,
                routing: routing(2),
                activation: swiglu,
                bias: true,
                shared: false,
            },
        ]
    }

    fn build(c: &Case, hidden: usize, inter: usize, dtype: DType) -> SparseMoe {
        let experts = (0..c.experts)
            .map(|_| mlp(hidden, inter, c.bias, c.activation, dtype))
            .collect();
        let shared = c
            .shared
            .then(|| mlp(hidden, inter, false, c.activation, dtype));
        let router = Linear::dense((weight(c.experts, hidden, dtype) * 4.0).unwrap(), None);
        SparseMoe::new(router, experts, c.routing.clone(), shared)
    }

    fn copy(m: &SparseMoe) -> SparseMoe {
        let e = |g: &GatedMlp| g.clone();
        SparseMoe::new(
            m.router.clone(),
            m.experts.iter().map(e).collect(),
            m.routing.clone(),
            m.shared.as_ref().map(e),
        )
    }

    /// The fused op (its CPU reference, which the CUDA kernels are tested against) gives the
    /// per-expert layer's output: same routing, same stacking of gate/up/down and biases.
    #[test]
    fn fused_moe_matches_the_per_expert_layer() {
        let (hidden, inter, tokens) = (48, 40, 23);
        for c in cases() {
            for dtype in [DType::F32, DType::BF16] {
                let grouped = build(&c, hidden, inter, dtype);
                let mut fused = copy(&grouped);
                assert!(fused.fuse().unwrap(), "{}: dense experts fuse", c.name);
                assert!(fused.experts.is_empty() && fused.fused.is_some());
                let x = randn(&[tokens, hidden], dtype);
                let want = grouped.forward(&x).unwrap();
                let got = fused.forward(&x).unwrap();
                assert_eq!(got.dims(), want.dims());
                let scale = max_diff(&want, &want.zeros_like().unwrap());
                let diff = max_diff(&got, &want);
                let tol = if dtype == DType::F32 { 1e-5 } else { 2e-2 };
                assert!(
                    diff <= tol * scale,
                    "{} {dtype:?}: max diff {diff} (scale {scale})",
                    c.name
                );
            }
        }
    }

    /// A token's output is bit-identical alone and inside a batch (fixed reduction order).
    #[test]
    fn fused_moe_reference_is_batch_invariant() {
        let (hidden, inter, tokens) = (40, 24, 9);
        for c in cases() {
            for dtype in [DType::F32, DType::BF16] {
                let mut layer = build(&c, hidden, inter, dtype);
                assert!(layer.fuse().unwrap());
                let f = layer.fused.as_ref().unwrap();
                let x = randn(&[tokens, hidden], dtype);
                let logits = (randn(&[tokens, c.experts], DType::F32) * 2.0).unwrap();
                let all = fused_moe(&x, &logits, f, &layer.routing).unwrap();
                for t in [0, 4, 8] {
                    let alone = fused_moe(
                        &x.narrow(0, t, 1).unwrap(),
                        &logits.narrow(0, t, 1).unwrap(),
                        f,
                        &layer.routing,
                    )
                    .unwrap();
                    let a = all
                        .i(t)
                        .unwrap()
                        .to_dtype(DType::F32)
                        .unwrap()
                        .to_vec1::<f32>();
                    let b = alone
                        .i(0)
                        .unwrap()
                        .to_dtype(DType::F32)
                        .unwrap()
                        .to_vec1::<f32>();
                    assert_eq!(a.unwrap(), b.unwrap(), "{} {dtype:?} token {t}", c.name);
                }
            }
        }
    }

    /// Quantized experts are not fused: the layer keeps its per-expert path.
    #[test]
    fn quantized_experts_stay_per_expert() {
        use candle_core::quantized::{GgmlDType, QMatMul, QTensor};
        let c = &cases()[0];
        let mut layer = build(c, 64, 32, DType::F32);
        let w = weight(32, 64, DType::F32);
        let q = QTensor::quantize(&w, GgmlDType::Q8_0).unwrap();
        let e = layer.experts[0].clone();
        let (_, up) = e.gate_up().unwrap();
        let gate = Linear::new(QMatMul::from_qtensor(q).unwrap(), None);
        layer.experts[0] = GatedMlp::new(gate, up.clone(), e.down.clone(), e.activation);
        assert!(!layer.fuse().unwrap());
        assert_eq!(layer.experts.len(), c.experts);
        assert!(layer.fused.is_none());
    }

    /// GGUF gate and up on the CPU become one map (one pass over the input), and the block
    /// gives bit-identical results to the two maps run apart, for every activation.
    #[test]
    fn fused_gate_up_matches_separate_maps_bit_for_bit() {
        use candle_core::quantized::{GgmlDType, QMatMul, QTensor};
        let (hidden, inter, tokens) = (64, 96, 7);
        let q = |out: usize, inp: usize, t: GgmlDType| {
            let w = weight(out, inp, DType::F32);
            Linear::new(
                QMatMul::from_qtensor(QTensor::quantize(&w, t).unwrap()).unwrap(),
                None,
            )
        };
        let x = randn(&[tokens, hidden], DType::F32);
        for t in [GgmlDType::Q4_0, GgmlDType::Q8_0] {
            for act in [Activation::Silu, Activation::GeluTanh] {
                let (gate, up, down) = (
                    q(inter, hidden, t),
                    q(inter, hidden, t),
                    q(hidden, inter, t),
                );
                let fused = GatedMlp::new(gate.clone(), up.clone(), down.clone(), act);
                if fused.gate_up().is_some() {
                    // This machine has no AVX2 kernel: nothing is fused, nothing to compare.
                    return;
                }
                let g = gate.forward(&x).unwrap();
                let u = up.forward(&x).unwrap();
                // The same activation kernel as the MLP's, on the separate maps' outputs.
                let kind = match act {
                    Activation::Silu => flare::cpu::activation::Gate::Silu,
                    _ => flare::cpu::activation::Gate::GeluTanh,
                };
                let h = flare::cpu::activation::gated_mul(kind, &g, &u).unwrap();
                let want = down
                    .forward(&h)
                    .unwrap()
                    .flatten_all()
                    .unwrap()
                    .to_vec1::<f32>();
                let got = fused
                    .forward(&x)
                    .unwrap()
                    .flatten_all()
                    .unwrap()
                    .to_vec1::<f32>();
                let (want, got) = (want.unwrap(), got.unwrap());
                assert!(want.iter().any(|v| *v != 0.0));
                let same = want
                    .iter()
                    .zip(&got)
                    .all(|(a, b)| a.to_bits() == b.to_bits());
                assert!(same, "{t:?} {act:?}");
            }
        }
    }
}
