//! `--load-format dummy`: random weights of a real config run through the model and the engine
//! on the CPU (on the GPU the same code builds 8B-scale models for speed measurements).

use std::path::PathBuf;

use candle_core::{DType, Device, Tensor};
use flare::engine::{build_engine, EngineArgs, LoadFormat};
use flare::layers::attention::{AttnMetadata, SeqAttn};
use flare::models::{dummy, CausalLm};
use flare::request::SamplingParams;

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

/// Logits of every token of one prompt, computed in one step through a fresh cache.
fn prompt_logits(model: &dyn CausalLm, prompt: &[u32]) -> Vec<Vec<f32>> {
    let block = 16;
    let blocks = prompt.len().div_ceil(block);
    let kv = model.new_kv_cache(blocks, block, model.dtype()).unwrap();
    let meta = AttnMetadata::new(
        vec![SeqAttn {
            query_start: 0,
            query_len: prompt.len(),
            context_len: prompt.len(),
            block_table: (0..blocks as u32).collect(),
            prompt_len: prompt.len(),
        }],
        block,
        &Device::Cpu,
    )
    .unwrap();
    let ids = Tensor::new(prompt, &Device::Cpu).unwrap();
    let rows = Tensor::arange(0u32, prompt.len() as u32, &Device::Cpu).unwrap();
    model
        .forward(&ids, &meta, &kv, &rows)
        .unwrap()
        .to_vec2()
        .unwrap()
}

fn assert_sane(logits: &[Vec<f32>]) {
    for row in logits {
        assert!(row.iter().all(|x| x.is_finite()), "non-finite logits");
        let mean = row.iter().sum::<f32>() / row.len() as f32;
        let var = row.iter().map(|x| (x - mean).powi(2)).sum::<f32>() / row.len() as f32;
        // Random weights of std 0.02 after a unit-RMS norm: logits of std ~0.02 * sqrt(hidden).
        assert!(var > 1e-6 && var < 1e4, "logit variance {var}");
    }
}

#[test]
fn dummy_tiny_configs_run_reproducibly_in_f32_and_bf16() {
    for name in ["tiny-llama", "tiny-qwen2", "tiny-mistral"] {
        let src = dummy::resolve(fixture(name).to_str().unwrap()).unwrap();
        let prompt: Vec<u32> = (0..21).map(|i| (i * 7 % 200) as u32).collect();
        let a = dummy::load(&src.config, DType::F32, &Device::Cpu, 7).unwrap();
        let la = prompt_logits(&*a, &prompt);
        assert_sane(&la);
        let b = dummy::load(&src.config, DType::F32, &Device::Cpu, 7).unwrap();
        assert_eq!(
            la,
            prompt_logits(&*b, &prompt),
            "{name}: same seed, same weights"
        );
        let c = dummy::load(&src.config, DType::F32, &Device::Cpu, 8).unwrap();
        assert_ne!(la, prompt_logits(&*c, &prompt), "{name}: another seed");
        let h = dummy::load(&src.config, DType::BF16, &Device::Cpu, 7).unwrap();
        assert_eq!(h.dtype(), DType::BF16);
        assert_sane(&prompt_logits(&*h, &prompt));
    }
}

#[test]
fn dummy_preset_widths_run_in_bf16() {
    // Llama-3.2-1B's real widths (hidden 2048, 32/8 heads of 64, FFN 8192, llama3 rope),
    // cut to 2 layers and a small vocabulary so it runs in CI.
    let mut cfg = dummy::resolve("preset:llama-3.2-1b").unwrap().config;
    cfg.num_hidden_layers = 2;
    cfg.vocab_size = 2048;
    let model = dummy::load(&cfg, DType::BF16, &Device::Cpu, 0).unwrap();
    let prompt: Vec<u32> = (0..40).map(|i| i * 37 % 2048).collect();
    assert_sane(&prompt_logits(&*model, &prompt));
}

#[test]
fn engine_generates_from_a_dummy_model() {
    // tiny-llama's config alone, without its tokenizer.json: the byte tokenizer stands in.
    let dir = std::env::temp_dir().join(format!("flare-dummy-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::copy(
        fixture("tiny-llama").join("config.json"),
        dir.join("config.json"),
    )
    .unwrap();
    let args = EngineArgs {
        model: Some(dir.to_string_lossy().into_owned()),
        load_format: LoadFormat::Dummy,
        ..EngineArgs::default()
    };
    let mut e = build_engine(&args).unwrap();
    std::fs::remove_dir_all(&dir).ok();
    let prompt = e.tokenizer.encode("Hello, dummy weights!", false).unwrap();
    assert_eq!(prompt.len(), 21);
    let params = SamplingParams {
        ignore_eos: true,
        ..SamplingParams::greedy(12)
    };
    let id = e.engine.add_request(prompt, params, 0).unwrap();
    let mut out = Vec::new();
    while e.engine.has_unfinished() {
        for o in e.engine.step().unwrap() {
            assert_eq!(o.id, id);
            out.extend(o.token_ids);
        }
    }
    assert_eq!(out.len(), 12);
    assert!(out.iter().all(|&t| (t as usize) < e.config.vocab_size));

    // preset:NAME implies dummy weights; an unknown preset fails clearly.
    let err = build_engine(&EngineArgs {
        model: Some("preset:no-such-model".into()),
        ..EngineArgs::default()
    })
    .err()
    .unwrap()
    .to_string();
    assert!(err.contains("unknown preset"), "{err}");
}

/// Every family's tiny config loads with random weights of the right shapes (fused, sandwich,
/// sinks, stacked and per-expert MoE, MLA) and gives finite logits.
#[test]
fn dummy_weights_cover_every_family() {
    for name in [
        "tiny-qwen3",
        "tiny-gemma3",
        "tiny-mixtral",
        "tiny-qwen3-moe",
        "tiny-phi3",
        "tiny-phi3-longrope",
        "tiny-gpt-oss",
        "tiny-deepseek-v3",
        "tiny-deepseek-v2",
    ] {
        let cfg = dummy::resolve(fixture(name).to_str().unwrap())
            .unwrap()
            .config;
        let model = dummy::load(&cfg, DType::F32, &Device::Cpu, 0)
            .unwrap_or_else(|e| panic!("{name}: {e:#}"));
        let prompt: Vec<u32> = (0..20).map(|i| i * 13 % 256).collect();
        assert_sane(&prompt_logits(&*model, &prompt));
    }
}
