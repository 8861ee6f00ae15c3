//! Quantized checkpoints (tests/fixtures/make_quant_fixtures.py makes them) against the same
//! models with the weights dequantized by that script: within 1e-4 relative for weight-only
//! formats in f32, within the format's tolerance where activations are quantized; every
//! sequence's logits the same alone and in a batch; unknown formats refused by name.

use std::path::PathBuf;

use candle_core::{DType, Device, Tensor};
use flare::layers::attention::{AttnMetadata, SeqAttn};
use flare::models::{load_model, load_model_quantized, source::ModelFiles, CausalLm};

const BLOCK: usize = 4;
const PROMPTS: [&[u32]; 3] = [
    &[231],
    &[156, 209, 4, 130, 48, 196, 219],
    &[
        46, 19, 112, 51, 123, 161, 24, 25, 173, 38, 26, 46, 243, 33, 208, 251, 115, 195, 101, 64,
        27, 125, 250,
    ],
];

fn dir(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/quant")
        .join(name)
}

fn load(path: PathBuf) -> Box<dyn CausalLm> {
    load_model(&ModelFiles::HfDir(path.clone()), DType::F32, &Device::Cpu)
        .unwrap_or_else(|e| panic!("loading {}: {e:#}", path.display()))
}

/// Logits of every token of every prompt, all prompts in one ragged batch.
fn logits(model: &dyn CausalLm, prompts: &[&[u32]]) -> Vec<Vec<Vec<f32>>> {
    let kv = model.new_kv_cache(32, BLOCK, DType::F32).unwrap();
    let (mut ids, mut metas, mut next) = (Vec::new(), Vec::new(), 0u32);
    for p in prompts {
        let blocks = p.len().div_ceil(BLOCK) as u32;
        metas.push(SeqAttn {
            query_start: ids.len(),
            query_len: p.len(),
            context_len: p.len(),
            block_table: (next..next + blocks).collect(),
            prompt_len: p.len(),
        });
        next += blocks;
        ids.extend_from_slice(p);
    }
    let n = ids.len();
    let meta = AttnMetadata::new(metas.clone(), BLOCK, &Device::Cpu).unwrap();
    let rows = Tensor::arange(0u32, n as u32, &Device::Cpu).unwrap();
    let out = model
        .forward(&Tensor::new(ids, &Device::Cpu).unwrap(), &meta, &kv, &rows)
        .unwrap()
        .to_vec2::<f32>()
        .unwrap();
    metas
        .iter()
        .map(|m| out[m.query_start..m.query_start + m.query_len].to_vec())
        .collect()
}

/// The largest per-row `max|a - b| / max|b|`.
fn rel_err(a: &[Vec<Vec<f32>>], b: &[Vec<Vec<f32>>]) -> f32 {
    let mut worst = 0f32;
    for (sa, sb) in a.iter().zip(b) {
        for (ra, rb) in sa.iter().zip(sb) {
            let scale = rb.iter().fold(0f32, |m, x| m.max(x.abs())).max(1e-6);
            let d = ra
                .iter()
                .zip(rb)
                .fold(0f32, |m, (x, y)| m.max((x - y).abs()));
            worst = worst.max(d / scale);
        }
    }
    worst
}

/// Loads `<name>` and `<name>-deq` and compares them (all prompts batched) within `tol`;
/// checks that each prompt alone gives the batched logits (dense f32 GEMMs of different
/// widths round differently, so within 1e-5, not bit for bit). Returns the error.
fn check(name: &str, tol: f32) -> f32 {
    let q = load(dir(name));
    let d = load(dir(&format!("{name}-deq")));
    let got = logits(q.as_ref(), &PROMPTS);
    let want = logits(d.as_ref(), &PROMPTS);
    let err = rel_err(&got, &want);
    eprintln!("{name}: max relative error vs dequantized {err:.3e}");
    assert!(err <= tol, "{name}: relative error {err} > {tol}");
    for (i, p) in PROMPTS.iter().enumerate() {
        let alone = logits(q.as_ref(), &[p]);
        let e = rel_err(&alone, &got[i..i + 1]);
        assert!(
            e <= 1e-5,
            "{name}: prompt {i} alone differs from batched by {e}"
        );
    }
    err
}

/// transformers' logits for the dequantized model with activations rounded as the format
/// says (the fixture script's `act_reference`), each prompt alone.
fn act_reference(name: &str) -> Vec<Vec<Vec<f32>>> {
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir(name).join("act_logits.json")).unwrap())
            .unwrap();
    serde_json::from_value(v["logits"].clone()).unwrap()
}

const WEIGHT_ONLY: f32 = 1e-4;

#[test]
fn compressed_tensors_w4a16_and_w8a16() {
    for name in [
        "ct-w4a16-group-sym",
        "ct-w4a16-group-asym",
        "ct-w4a16-channel-sym",
        "ct-w8a16-channel-asym",
    ] {
        check(name, WEIGHT_ONLY);
    }
}

#[test]
fn autoawq_gemm() {
    check("awq", WEIGHT_ONLY);
}

#[test]
fn gptq_bits_sym_actorder_and_v2() {
    for name in [
        "gptq-4bit-sym",
        "gptq-4bit-asym-actorder",
        "gptq-8bit-asym-actorder-v2",
        "gptq-8bit-sym",
    ] {
        check(name, WEIGHT_ONLY);
    }
}

#[test]
fn gpt_oss_mxfp4_experts() {
    check("mxfp4", WEIGHT_ONLY);
}

/// FP8 and int8 activations are rounded per token (per 1x32 group for block FP8): flare
/// matches transformers running the dequantized model with the same rounding hooked in, and
/// differs from the unrounded model (the rounding is not skipped).
#[test]
fn activation_quantized_formats_match_the_rounded_reference() {
    // A value within float noise of a rounding boundary may round either way in the two
    // implementations: one step of the int8 grid is 1/127 of the token's largest input.
    // The SIMD attention's vector exp (within 2 ulp of libm) moves the block-FP8 fixture's
    // logits by ~1e-4 through one such boundary activation; the batch-invariant f32 matmul
    // (`cpu::dense`, a different summation order than torch's) moves ct-fp8-dynamic's by 3.9e-4
    // the same way (6e-7 with candle's gemm, `FLARE_CPU_DENSE=off`).
    for (name, tol) in [
        ("hf-fp8-block", 3e-4),
        ("hf-fp8-tensor", 1e-4),
        ("ct-fp8-dynamic", 5e-4),
        ("ct-w8a8-int8", 2e-2),
    ] {
        let q = load(dir(name));
        let want = act_reference(name);
        let got: Vec<_> = PROMPTS
            .iter()
            .map(|p| logits(q.as_ref(), &[p]).remove(0))
            .collect();
        let err = rel_err(&got, &want);
        eprintln!("{name}: max relative error vs rounded reference {err:.3e}");
        assert!(
            err <= tol,
            "{name}: relative error {err} vs the rounded reference"
        );
        let vs_dense = check(name, 1.0);
        assert!(vs_dense > err, "{name}: activation rounding had no effect");
    }
}

/// `--quantization fp8` on a dense checkpoint: per-channel e4m3 weights and per-token
/// activations, i.e. what the script's `ct-fp8-dynamic` checkpoint holds (made with torch's
/// e4m3 cast from the same tiny-llama): the two give the same logits.
#[test]
fn online_fp8_equals_the_fp8_dynamic_checkpoint() {
    let base = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tiny-llama");
    let files = ModelFiles::HfDir(base);
    let q = load_model_quantized(&files, DType::F32, &Device::Cpu, Some("fp8")).unwrap();
    let ct = load(dir("ct-fp8-dynamic"));
    let err = rel_err(
        &logits(q.as_ref(), &PROMPTS),
        &logits(ct.as_ref(), &PROMPTS),
    );
    eprintln!("online fp8 vs ct-fp8-dynamic: max relative error {err:.3e}");
    assert!(err < 1e-5, "online fp8 error {err}");
    let e = load_model_quantized(&files, DType::F32, &Device::Cpu, Some("int3"))
        .err()
        .unwrap();
    assert!(format!("{e:#}").contains("`int3`"), "{e:#}");
    // A checkpoint that is already quantized is not quantized again.
    let e = load_model_quantized(
        &ModelFiles::HfDir(dir("awq")),
        DType::F32,
        &Device::Cpu,
        Some("fp8"),
    )
    .err()
    .unwrap();
    assert!(format!("{e:#}").contains("already quantized"), "{e:#}");
}

/// A copy of a fixture with its config edited, in a temp dir.
fn with_config(name: &str, edit: impl Fn(&mut serde_json::Value)) -> PathBuf {
    let src = dir(name);
    let dst = std::env::temp_dir().join(format!("flare-quant-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dst).unwrap();
    std::fs::copy(src.join("model.safetensors"), dst.join("model.safetensors")).unwrap();
    let mut cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(src.join("config.json")).unwrap()).unwrap();
    edit(&mut cfg);
    std::fs::write(dst.join("config.json"), cfg.to_string()).unwrap();
    dst
}

fn load_err(path: PathBuf) -> String {
    let e = load_model(&ModelFiles::HfDir(path.clone()), DType::F32, &Device::Cpu)
        .err()
        .expect("load must fail");
    let _ = std::fs::remove_dir_all(path);
    format!("{e:#}")
}

/// Never a cast: an FP8 checkpoint without (or with a dropped) quantization_config, and
/// unknown methods or variants, are load errors naming what is wrong.
#[test]
fn refuses_unknown_or_missing_quantization() {
    let e = load_err(with_config("hf-fp8-block", |c| {
        c.as_object_mut().unwrap().remove("quantization_config");
    }));
    assert!(
        e.contains("F8_E4M3") && e.contains("no quantization_config"),
        "{e}"
    );
    let e = load_err(with_config("hf-fp8-block", |c| {
        c["quantization_config"]["quant_method"] = "quanto".into();
    }));
    assert!(e.contains("`quanto`"), "{e}");
    let e = load_err(with_config("awq", |c| {
        c["quantization_config"]["version"] = "exllama".into();
    }));
    assert!(e.contains("`exllama`"), "{e}");
    let e = load_err(with_config("gptq-4bit-sym", |c| {
        c["quantization_config"]["bits"] = 2.into();
    }));
    assert!(e.contains("bits 2"), "{e}");
    let e = load_err(with_config("ct-w4a16-group-sym", |c| {
        c["quantization_config"]["format"] = "marlin-24".into();
    }));
    assert!(e.contains("`marlin-24`"), "{e}");
}

/// `ignore`: a module listed there is read dense even where the format would quantize it
/// (here the fixture's dense lm_head, which the config names), and a quantized module named
/// in `ignore` is not silently read as a dense one.
#[test]
fn honours_ignore_lists() {
    // The fixtures' lm_head is dense and listed; loading works (checked above). Listing a
    // quantized projection makes its dense `weight` missing: a clear error, not garbage.
    let e = load_err(with_config("ct-w4a16-group-sym", |c| {
        c["quantization_config"]["ignore"] = serde_json::json!(["lm_head", "re:.*mlp.down_proj$"]);
    }));
    assert!(e.contains("mlp.down_proj.weight"), "{e}");
}

mod common;

/// `/v1/models` says which format the served weights are in; dense models have no field.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn models_endpoint_reports_the_quantization() {
    use flare::engine::EngineArgs;
    use flare::server::{AppState, ServerConfig};
    let dense = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tiny-llama");
    for (path, want) in [
        (dir("awq"), Some("awq int4 (group 32)")),
        (
            dir("ct-fp8-dynamic"),
            Some("compressed-tensors fp8 fp8 activations"),
        ),
        (dense, None),
    ] {
        let state = AppState::new(ServerConfig {
            served_model_names: vec!["m".into()],
            ..ServerConfig::default()
        });
        let args = EngineArgs {
            model: Some(path.to_string_lossy().into_owned()),
            kv_cache_memory: Some(4 << 20),
            ..EngineArgs::default()
        };
        flare::server::load_into(&state, args).expect("model loads");
        let name = path.display();
        let server = common::serve(state).await;
        let (s, body) = common::get(&common::client(), &server.url("/v1/models")).await;
        assert_eq!(s, 200);
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(
            v["data"][0]["quantization"].as_str(),
            want,
            "{name}: {body}"
        );
        assert!(server.stop().await);
    }
}
