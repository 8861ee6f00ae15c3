//! The GPU's quantized weight layouts (`quant::device`) against the CPU's dequantization: for
//! every quantized linear of every format fixture (tests/fixtures/quant, made by
//! make_quant_fixtures.py), the repacked form dequantizes to `quant::load`'s dense weight; GGUF
//! types repack to what candle's own dequantization gives. CPU only: what the GPU kernels then
//! compute from these layouts is checked in kernels/emu and tests/cuda_kernels.rs.

use std::path::PathBuf;

use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::safetensors::MmapedSafetensors;
use candle_core::{Device, Tensor};
use flare::quant::device::{self, DevicePacked};
use flare::quant::{load, QuantConfig};

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/quant")
        .join(name)
}

/// Worst |a - b| / max|b| over the weight.
fn rel(a: &[f32], b: &[f32]) -> f32 {
    let scale = b.iter().fold(0f32, |m, x| m.max(x.abs())).max(1e-30);
    a.iter()
        .zip(b)
        .fold(0f32, |m, (x, y)| m.max((x - y).abs() / scale))
}

/// Every quantized module of the fixture: (packed kinds seen, modules checked).
fn check_fixture(name: &str) -> (Vec<&'static str>, usize) {
    let dir = fixture(name);
    let cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("config.json")).unwrap()).unwrap();
    let q = QuantConfig::from_hf(&cfg["quantization_config"]).unwrap();
    let st = unsafe { MmapedSafetensors::new(dir.join("model.safetensors")).unwrap() };
    let mut modules: Vec<String> = st
        .tensors()
        .into_iter()
        .filter_map(|(n, _)| {
            ["qweight", "weight_packed", "weight"]
                .iter()
                .find_map(|s| n.strip_suffix(&format!(".{s}")).map(str::to_string))
        })
        .collect();
    modules.sort();
    modules.dedup();
    let (mut kinds, mut checked) = (Vec::new(), 0);
    for m in modules {
        let Some(want) = load::linear(&st, &q, &m).unwrap() else {
            continue;
        };
        let packed = device::linear(&st, &q, &m).unwrap();
        let packed = packed.unwrap_or_else(|| {
            panic!(
                "{name}: {m} has no GPU layout (shape {}x{})",
                want.out, want.inp
            )
        });
        let (got, kind) = match &packed {
            DevicePacked::Fp8(f) => {
                assert_eq!(
                    Some(f.act_quant()),
                    want.act,
                    "{name} {m}: activation scheme"
                );
                (f.dequantize(), "fp8")
            }
            DevicePacked::Int(w) => {
                assert_eq!(want.act, None, "{name} {m}");
                (w.dequantize(), if w.bits == 4 { "int4" } else { "int8" })
            }
        };
        let e = rel(&got, &want.dense);
        // Exact for FP8 (same products); int offsets are one rounding of -zero * scale.
        assert!(e <= 1e-6, "{name} {m}: relative error {e}");
        kinds.push(kind);
        checked += 1;
    }
    (kinds, checked)
}

#[test]
fn every_format_fixture_repacks_to_the_cpu_weights() {
    let cases = [
        ("awq", "int4"),
        ("gptq-4bit-sym", "int4"),
        ("gptq-4bit-asym-actorder", "int4"),
        ("gptq-8bit-sym", "int8"),
        ("gptq-8bit-asym-actorder-v2", "int8"),
        ("ct-w4a16-group-sym", "int4"),
        ("ct-w4a16-group-asym", "int4"),
        ("ct-w4a16-channel-sym", "int4"),
        ("ct-w8a16-channel-asym", "int8"),
        ("hf-fp8-block", "fp8"),
        ("hf-fp8-tensor", "fp8"),
        ("ct-fp8-dynamic", "fp8"),
    ];
    for (name, kind) in cases {
        let (kinds, n) = check_fixture(name);
        assert!(n >= 7, "{name}: only {n} modules checked");
        assert!(kinds.iter().all(|k| *k == kind), "{name}: {kinds:?}");
    }
}

#[test]
fn act_order_becomes_an_input_permutation() {
    let dir = fixture("gptq-4bit-asym-actorder");
    let cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("config.json")).unwrap()).unwrap();
    let q = QuantConfig::from_hf(&cfg["quantization_config"]).unwrap();
    let st = unsafe { MmapedSafetensors::new(dir.join("model.safetensors")).unwrap() };
    let Some(DevicePacked::Int(w)) =
        device::linear(&st, &q, "model.layers.0.mlp.down_proj").unwrap()
    else {
        panic!("no int layout")
    };
    let perm = w.perm.as_ref().expect("the fixture's g_idx is permuted");
    let mut sorted = perm.clone();
    sorted.sort();
    assert_eq!(sorted, (0..w.inp as u32).collect::<Vec<_>>());
}

/// The int8 W8A8 format has no GPU kernel of ours: it keeps the dense path.
#[test]
fn int8_activations_stay_dense() {
    let dir = fixture("ct-w8a8-int8");
    let cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("config.json")).unwrap()).unwrap();
    let q = QuantConfig::from_hf(&cfg["quantization_config"]).unwrap();
    let st = unsafe { MmapedSafetensors::new(dir.join("model.safetensors")).unwrap() };
    assert!(device::linear(&st, &q, "model.layers.0.mlp.down_proj")
        .unwrap()
        .is_none());
}

#[test]
fn gguf_types_repack_to_candles_dequantization() {
    let (n, k) = (6, 512);
    let vals: Vec<f32> = (0..n * k)
        .map(|i| ((i * 7919 % 1000) as f32 / 500.0 - 1.0) * (1.0 + (i / k) as f32))
        .collect();
    let dense = Tensor::from_vec(vals, (n, k), &Device::Cpu).unwrap();
    for dt in [
        GgmlDType::Q4_0,
        GgmlDType::Q4_1,
        GgmlDType::Q8_0,
        GgmlDType::Q4K,
        GgmlDType::Q6K,
    ] {
        let qt = QTensor::quantize(&dense, dt).unwrap();
        let want: Vec<f32> = qt
            .dequantize(&Device::Cpu)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        let packed = device::gguf(&qt).unwrap().expect("a supported type");
        let e = rel(&packed.dequantize(), &want);
        assert!(e <= 1e-6, "{dt:?}: relative error {e}");
    }
    let qt = QTensor::quantize(&dense, GgmlDType::Q5_0).unwrap();
    assert!(device::gguf(&qt).unwrap().is_none(), "Q5_0 is not taken");
}
