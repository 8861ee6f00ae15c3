//! `flare eval perplexity`'s scoring against transformers' logits: tiny-llama's 23-token prompt
//! as one chunk (ctx 23: positions 11..21 scored, predicting tokens 12..22), the NLLs
//! recomputed from tests/fixtures/tiny-llama/logits.json.

use std::path::PathBuf;

use candle_core::{DType, Device};
use flare::eval::perplexity::{nll, perplexity, NllStats, PerplexityArgs};
use flare::models::{load_model, source::ModelFiles};

#[test]
fn perplexity_matches_transformers_logits() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tiny-llama");
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("logits.json")).unwrap()).unwrap();
    let prompt: Vec<u32> = serde_json::from_value(v["prompts"][2].clone()).unwrap();
    let logits: Vec<Vec<f32>> = serde_json::from_value(v["logits"][2].clone()).unwrap();
    let n = prompt.len();
    let mut want = NllStats::default();
    for j in n / 2..n - 1 {
        want.push(nll(&logits[j], prompt[j + 1]));
    }
    let model = load_model(&ModelFiles::HfDir(dir), DType::F32, &Device::Cpu).unwrap();
    let args = PerplexityArgs {
        ctx: n,
        max_chunks: None,
        bos: None,
        block_size: 4,
        kv_cache_dtype: Default::default(),
    };
    // Two copies of the prompt: two chunks, the same score each.
    let tokens: Vec<u32> = prompt.iter().chain(&prompt).copied().collect();
    let mut seen = 0;
    let got = perplexity(model.as_ref(), &tokens, &args, |_, _| seen += 1).unwrap();
    assert_eq!(seen, 2);
    assert_eq!(got.count, 2 * want.count);
    let rel = (got.ppl() - want.ppl()).abs() / want.ppl();
    assert!(
        rel < 1e-5,
        "ppl {} vs transformers {}",
        got.ppl(),
        want.ppl()
    );
    assert!(got.ppl_stderr().is_finite() && got.ppl_stderr() > 0.0);
}
