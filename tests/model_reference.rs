//! flare's Llama-family forward against transformers' logits on tiny random checkpoints
//! (tests/fixtures/make_fixtures.py makes them), through the paged cache in every way the
//! scheduler will drive it: whole prompts, chunked prefill, decode, and ragged batches.

use std::path::PathBuf;

use candle_core::{DType, Device, Tensor};
use flare::layers::attention::{AttnMetadata, SeqAttn};
use flare::models::{load_model, source::ModelFiles, CausalLm};

const BLOCK: usize = 4;

struct Fixture {
    prompts: Vec<Vec<u32>>,
    logits: Vec<Vec<Vec<f32>>>,
}

fn fixture_dir(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

fn load(name: &str) -> (Box<dyn CausalLm>, Fixture) {
    let dir = fixture_dir(name);
    let model = load_model(&ModelFiles::HfDir(dir.clone()), DType::F32, &Device::Cpu).unwrap();
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("logits.json")).unwrap()).unwrap();
    let fx = Fixture {
        prompts: serde_json::from_value(v["prompts"].clone()).unwrap(),
        logits: serde_json::from_value(v["logits"].clone()).unwrap(),
    };
    (model, fx)
}

/// A sequence being computed in pieces, with blocks taken from a shuffled pool.
struct Seq {
    tokens: Vec<u32>,
    computed: usize,
    blocks: Vec<u32>,
}

/// Runs one step: `take[i]` new tokens of `seqs[i]`; returns logits of every new token.
fn step(
    model: &dyn CausalLm,
    kv: &flare::kv::KvCache,
    seqs: &mut [&mut Seq],
    take: &[usize],
    free: &mut Vec<u32>,
) -> Vec<Vec<Vec<f32>>> {
    let mut ids = Vec::new();
    let mut metas = Vec::new();
    for (s, &n) in seqs.iter_mut().zip(take) {
        let ctx = s.computed + n;
        while s.blocks.len() * BLOCK < ctx {
            s.blocks.push(free.pop().expect("enough blocks"));
        }
        metas.push(SeqAttn {
            query_start: ids.len(),
            query_len: n,
            context_len: ctx,
            block_table: s.blocks.clone(),
            prompt_len: s.tokens.len(),
        });
        ids.extend_from_slice(&s.tokens[s.computed..ctx]);
        s.computed = ctx;
    }
    let n_tok = ids.len();
    let meta = AttnMetadata::new(metas.clone(), BLOCK, &Device::Cpu).unwrap();
    let tokens = Tensor::new(ids, &Device::Cpu).unwrap();
    let rows = Tensor::arange(0u32, n_tok as u32, &Device::Cpu).unwrap();
    let logits = model
        .forward(&tokens, &meta, kv, &rows)
        .unwrap()
        .to_vec2::<f32>()
        .unwrap();
    metas
        .iter()
        .map(|m| logits[m.query_start..m.query_start + m.query_len].to_vec())
        .collect()
}

fn max_abs(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

fn shuffled_pool(n: u32) -> Vec<u32> {
    // A fixed permutation so consecutive positions land in non-adjacent blocks.
    let mut v: Vec<u32> = (0..n).collect();
    let mut x = 12345u64;
    for i in (1..v.len()).rev() {
        x = x
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        v.swap(i, (x >> 33) as usize % (i + 1));
    }
    v
}

/// Runs `prompts` as one ragged batch through a fresh block pool, each step taking up to
/// `chunk(round)` new tokens of every unfinished prompt; logits of every position per prompt.
fn run_chunked(
    model: &dyn CausalLm,
    kv: &flare::kv::KvCache,
    prompts: &[&[u32]],
    chunk: impl Fn(usize) -> usize,
) -> Vec<Vec<Vec<f32>>> {
    let mut free = shuffled_pool(kv.num_blocks as u32);
    let mut seqs: Vec<Seq> = prompts
        .iter()
        .map(|p| Seq {
            tokens: p.to_vec(),
            computed: 0,
            blocks: vec![],
        })
        .collect();
    let mut got: Vec<Vec<Vec<f32>>> = vec![Vec::new(); seqs.len()];
    let mut round = 0;
    while seqs.iter().any(|s| s.computed < s.tokens.len()) {
        let active: Vec<usize> = (0..seqs.len())
            .filter(|&i| seqs[i].computed < seqs[i].tokens.len())
            .collect();
        let take: Vec<usize> = active
            .iter()
            .map(|&i| chunk(round).min(seqs[i].tokens.len() - seqs[i].computed))
            .collect();
        round += 1;
        let mut refs: Vec<&mut Seq> = seqs
            .iter_mut()
            .enumerate()
            .filter(|(i, _)| active.contains(i))
            .map(|(_, s)| s)
            .collect();
        let out = step(model, kv, &mut refs, &take, &mut free);
        for (k, &i) in active.iter().enumerate() {
            got[i].extend(out[k].clone());
        }
    }
    got
}

fn check_model(name: &str) {
    check_loaded(name, load(name));
}

fn check_loaded(name: &str, (model, fx): (Box<dyn CausalLm>, Fixture)) {
    let kv = model.new_kv_cache(64, BLOCK, DType::F32).unwrap();
    let tol = 1e-4;

    // 1. Each prompt alone, in one step.
    let mut free = shuffled_pool(64);
    for (p, want) in fx.prompts.iter().zip(&fx.logits) {
        let mut s = Seq {
            tokens: p.clone(),
            computed: 0,
            blocks: vec![],
        };
        let got = step(model.as_ref(), &kv, &mut [&mut s], &[p.len()], &mut free);
        for (pos, (g, w)) in got[0].iter().zip(want).enumerate() {
            let d = max_abs(g, w);
            assert!(d < tol, "{name}: whole prompt, pos {pos}: max abs diff {d}");
        }
        free.extend(s.blocks);
    }

    // 2. All prompts in one ragged batch, in chunks of 5 then 3 then one token a step
    //    (chunked prefill mixed with decode).
    let prompts: Vec<&[u32]> = fx.prompts.iter().map(Vec::as_slice).collect();
    let got = run_chunked(model.as_ref(), &kv, &prompts, |round| match round {
        0 => 5,
        1 => 3,
        _ => 1,
    });
    for (i, want) in fx.logits.iter().enumerate() {
        for (pos, (g, w)) in got[i].iter().zip(want).enumerate() {
            let d = max_abs(g, w);
            assert!(
                d < tol,
                "{name}: batched/chunked, prompt {i}, pos {pos}: max abs diff {d}"
            );
        }
    }
}

/// Phi-4-mini style longrope (original context 16, so the 23-token prompt takes the long
/// factors and the others the short ones, in whole, chunked and ragged-batched steps) with
/// partial rotary (12 of 16 dims).
#[test]
fn tiny_phi3_longrope_matches_transformers() {
    let (model, _) = load("tiny-phi3-longrope");
    let c = model.config();
    assert_eq!(c.rotary_dim(), 12);
    match &c.rope_scaling {
        flare::models::config::RopeScaling::LongRope {
            original_max_position_embeddings,
            attention_factor,
            ..
        } => {
            assert_eq!(*original_max_position_embeddings, 16);
            assert!((attention_factor - 1.5f64.sqrt()).abs() < 1e-12);
        }
        other => panic!("rope scaling {other:?}"),
    }
    check_model("tiny-phi3-longrope");
}

/// A 12-token prompt decoded token by token past the 16-token original context: each step's
/// logits equal transformers' cached decode (positions past 16 take the long factors, the
/// cached keys keep the short ones), whether the prompt went in whole or in chunks of 5.
#[test]
fn longrope_switches_factors_per_position_like_a_cached_decode() {
    let (model, _) = load("tiny-phi3-longrope");
    let dir = fixture_dir("tiny-phi3-longrope");
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("decode.json")).unwrap()).unwrap();
    let prompt: Vec<u32> = serde_json::from_value(v["prompt"].clone()).unwrap();
    let tokens: Vec<u32> = serde_json::from_value(v["tokens"].clone()).unwrap();
    let logits: Vec<Vec<f32>> = serde_json::from_value(v["logits"].clone()).unwrap();
    assert!(prompt.len() < 16 && prompt.len() + tokens.len() > 17);
    for chunk in [prompt.len(), 5] {
        let kv = model.new_kv_cache(16, BLOCK, DType::F32).unwrap();
        let mut free = shuffled_pool(16);
        let mut all = prompt.clone();
        all.extend(&tokens);
        let mut s = Seq {
            tokens: all,
            computed: 0,
            blocks: vec![],
        };
        // `prompt_len` is the Seq's whole token list in `step`: give it the prompt only.
        let mut got = Vec::new();
        while s.computed < prompt.len() {
            let n = chunk.min(prompt.len() - s.computed);
            let out = step_with_prompt(model.as_ref(), &kv, &mut s, n, prompt.len(), &mut free);
            got = out;
        }
        let mut step_logits = vec![got.last().unwrap().clone()];
        for _ in 1..tokens.len() {
            let out = step_with_prompt(model.as_ref(), &kv, &mut s, 1, prompt.len(), &mut free);
            step_logits.push(out[0].clone());
        }
        for (i, (g, w)) in step_logits.iter().zip(&logits).enumerate() {
            let d = max_abs(g, w);
            assert!(d < 1e-4, "chunk {chunk}, decode step {i}: max abs diff {d}");
        }
    }
}

/// One sequence's step of `n` new tokens with an explicit prompt length.
fn step_with_prompt(
    model: &dyn CausalLm,
    kv: &flare::kv::KvCache,
    s: &mut Seq,
    n: usize,
    prompt_len: usize,
    free: &mut Vec<u32>,
) -> Vec<Vec<f32>> {
    let ctx = s.computed + n;
    while s.blocks.len() * BLOCK < ctx {
        s.blocks.push(free.pop().expect("enough blocks"));
    }
    let meta = AttnMetadata::new(
        vec![SeqAttn {
            query_start: 0,
            query_len: n,
            context_len: ctx,
            block_table: s.blocks.clone(),
            prompt_len,
        }],
        BLOCK,
        &Device::Cpu,
    )
    .unwrap();
    let tokens = Tensor::new(&s.tokens[s.computed..ctx], &Device::Cpu).unwrap();
    s.computed = ctx;
    let rows = Tensor::arange(0u32, n as u32, &Device::Cpu).unwrap();
    model
        .forward(&tokens, &meta, kv, &rows)
        .unwrap()
        .to_vec2::<f32>()
        .unwrap()
}

#[test]
fn tiny_llama_matches_transformers() {
    check_model("tiny-llama");
}

#[test]
fn tiny_qwen2_matches_transformers() {
    check_model("tiny-qwen2");
}

#[test]
fn tiny_mistral_matches_transformers() {
    check_model("tiny-mistral");
}

#[test]
fn tiny_qwen3_matches_transformers() {
    check_model("tiny-qwen3");
}

/// Sliding and global layers with their own rotary bases, sandwich norms, soft-capping.
#[test]
fn tiny_gemma3_matches_transformers() {
    let (model, _) = load("tiny-gemma3");
    let c = model.config();
    assert_eq!(
        (c.window(0), c.window(1), c.window(2)),
        (Some(4), None, Some(4))
    );
    check_model("tiny-gemma3");
}

#[test]
fn tiny_mixtral_matches_transformers() {
    check_model("tiny-mixtral");
}

#[test]
fn tiny_qwen3_moe_matches_transformers() {
    let (model, _) = load("tiny-qwen3-moe");
    let moe = model.config().moe.clone().expect("moe config");
    assert_eq!(moe.sparse_layers, vec![true, false]);
    check_model("tiny-qwen3-moe");
}

/// Fused qkv_proj and gate_up_proj split at load; a 5-token window on both layers.
#[test]
fn tiny_phi3_matches_transformers() {
    let (model, _) = load("tiny-phi3");
    assert_eq!(
        (model.config().window(0), model.config().window(1)),
        (Some(5), Some(5))
    );
    check_model("tiny-phi3");
}

/// Sinks, yarn, biased router and clamped-SwiGLU experts stacked in four tensors.
#[test]
fn tiny_gpt_oss_matches_transformers() {
    let (model, _) = load("tiny-gpt-oss");
    let c = model.config();
    assert!(c.attention_sinks);
    assert_eq!((c.window(0), c.window(1)), (Some(4), None));
    check_model("tiny-gpt-oss");
}

/// MLA with a latent cache, interleaved yarn rope, grouped sigmoid routing, shared experts.
#[test]
fn tiny_deepseek_v3_matches_transformers() {
    let (model, _) = load("tiny-deepseek-v3");
    let c = model.config();
    let mla = c.mla.clone().expect("mla");
    // The cache holds the latent and the rotary key per token, nothing per head.
    assert_eq!(
        c.kv_bytes_per_token(4),
        (mla.kv_lora_rank + mla.qk_rope_head_dim) * 3 * 4
    );
    assert_eq!(
        c.moe.as_ref().unwrap().sparse_layers,
        vec![false, true, true]
    );
    check_model("tiny-deepseek-v3");
}

/// V2-Lite-style MLA (plain q_proj), complex rope, softmax routing limited by groups' best.
#[test]
fn tiny_deepseek_v2_matches_transformers() {
    let (model, _) = load("tiny-deepseek-v2");
    let moe = model.config().moe.clone().expect("moe");
    assert_eq!(moe.groups, Some((4, 2)));
    assert!(moe.group_by_best && !moe.norm_topk_prob);
    check_model("tiny-deepseek-v2");
}

/// Qwen3 from a GGUF that llama.cpp's own converter wrote (f32, from tiny-qwen3; see
/// make_gguf.py): its tensor names and layout give transformers' logits.
#[test]
fn tiny_qwen3_gguf_from_llama_cpp_matches_transformers() {
    let gguf = fixture_dir("tiny-qwen3").join("model-f32.gguf");
    let model = load_model(&ModelFiles::Gguf(gguf), DType::F32, &Device::Cpu).unwrap();
    assert_eq!(model.config().model_type, "qwen3");
    assert!(model.config().qk_norm);
    let (_, fx) = load("tiny-qwen3");
    check_loaded("tiny-qwen3 (GGUF)", (model, fx));
}

/// Phi-3 from llama.cpp's converter: fused `attn_qkv` and `ffn_up` split by rows at load,
/// the window from `phi3.attention.sliding_window`.
#[test]
fn tiny_phi3_gguf_from_llama_cpp_matches_transformers() {
    let gguf = fixture_dir("tiny-phi3").join("model-f32.gguf");
    let model = load_model(&ModelFiles::Gguf(gguf), DType::F32, &Device::Cpu).unwrap();
    assert_eq!(model.config().window(1), Some(5));
    let (_, fx) = load("tiny-phi3");
    check_loaded("tiny-phi3 (GGUF)", (model, fx));
}

/// The same from llama.cpp's Q8_0 file: the fused tensors are split by rows inside quantized
/// blocks. Quantized weights and activations are not the f32 reference, so the bound is loose:
/// measured 0.42 max abs over all positions, against 7.2 with gate and up swapped.
#[test]
fn tiny_phi3_q8_0_gguf_splits_fused_rows_inside_blocks() {
    let gguf = fixture_dir("tiny-phi3").join("model-q80.gguf");
    let model = load_model(&ModelFiles::Gguf(gguf), DType::F32, &Device::Cpu).unwrap();
    let (_, fx) = load("tiny-phi3");
    let kv = model.new_kv_cache(16, BLOCK, DType::F32).unwrap();
    let mut free = shuffled_pool(16);
    let p = &fx.prompts[2];
    let mut s = Seq {
        tokens: p.clone(),
        computed: 0,
        blocks: vec![],
    };
    let got = step(model.as_ref(), &kv, &mut [&mut s], &[p.len()], &mut free);
    let worst = got[0]
        .iter()
        .zip(&fx.logits[2])
        .map(|(g, w)| max_abs(g, w))
        .fold(0.0, f32::max);
    assert!(worst > 0.0 && worst < 1.0, "max abs diff {worst}");
}

/// Mixtral from llama.cpp's converter: a `llama` GGUF with `expert_count`, experts stacked in
/// `ffn_{gate,up,down}_exps` and the router in `ffn_gate_inp`, q/k rows permuted.
#[test]
fn tiny_mixtral_gguf_from_llama_cpp_matches_transformers() {
    let gguf = fixture_dir("tiny-mixtral").join("model-f32.gguf");
    let model = load_model(&ModelFiles::Gguf(gguf), DType::F32, &Device::Cpu).unwrap();
    assert_eq!(model.config().model_type, "mixtral");
    assert_eq!(model.config().moe.as_ref().map(|m| m.num_experts), Some(4));
    let (_, fx) = load("tiny-mixtral");
    check_loaded("tiny-mixtral (GGUF)", (model, fx));
}

/// Qwen3-MoE from llama.cpp's converter (every layer sparse: the qwen3moe GGUF has no dense
/// layers), against the same weights' transformers logits.
#[test]
fn tiny_qwen3_moe_gguf_from_llama_cpp_matches_transformers() {
    check_model("tiny-qwen3-moe-all");
    let gguf = fixture_dir("tiny-qwen3-moe-all").join("model-f32.gguf");
    let model = load_model(&ModelFiles::Gguf(gguf), DType::F32, &Device::Cpu).unwrap();
    assert_eq!(model.config().moe.as_ref().map(|m| m.top_k), Some(3));
    let (_, fx) = load("tiny-qwen3-moe-all");
    check_loaded("tiny-qwen3-moe-all (GGUF)", (model, fx));
}

/// A sequence's logits alone and in a ragged batch with others, under the same chunk schedule,
/// are bit-identical (MoE routing groups tokens by expert across the batch, so a routing bug
/// would show up too). This rests on `cpu::dense` for the f32 matmuls, whose row results do not
/// depend on the row count, as candle's gemm's did.
#[test]
fn batched_logits_match_alone() {
    for name in [
        "tiny-gemma3",
        "tiny-qwen3",
        "tiny-mixtral",
        "tiny-qwen3-moe",
    ] {
        let (model, fx) = load(name);
        let kv = model.new_kv_cache(64, BLOCK, DType::F32).unwrap();
        let prompts: Vec<&[u32]> = fx.prompts.iter().map(Vec::as_slice).collect();
        let run = |idx: &[usize]| {
            let chosen: Vec<&[u32]> = idx.iter().map(|&i| prompts[i]).collect();
            run_chunked(model.as_ref(), &kv, &chosen, |_| 3)
        };
        let together = run(&[0, 1, 2]);
        for (i, batched) in together.iter().enumerate() {
            let alone = &run(&[i])[0];
            assert_eq!(alone.len(), batched.len());
            for (pos, (a, b)) in alone.iter().zip(batched).enumerate() {
                let d = max_abs(a, b);
                assert!(
                    a == b,
                    "{name}: prompt {i}, pos {pos}: alone vs batched differ by up to {d}"
                );
            }
        }
    }
}

/// Mistral with a 4-token sliding window, shorter than two of the prompts.
#[test]
fn tiny_mistral_sliding_window_matches_transformers() {
    let (model, _) = load("tiny-mistral-swa");
    assert_eq!(model.config().window(0), Some(4));
    check_model("tiny-mistral-swa");
}

/// bf16 and f16 weights and activations stay close to the f32 reference (half precision
/// rounds every matmul input, so the bound is loose but still catches dtype bugs).
#[test]
fn half_precision_dtypes_track_the_reference() {
    for (dtype, tol) in [(DType::BF16, 0.3f32), (DType::F16, 0.05)] {
        let dir = fixture_dir("tiny-llama");
        let model = load_model(&ModelFiles::HfDir(dir), dtype, &Device::Cpu).unwrap();
        let (_, fx) = load("tiny-llama");
        let kv = model.new_kv_cache(16, BLOCK, dtype).unwrap();
        let mut free = shuffled_pool(16);
        let p = &fx.prompts[2];
        let mut s = Seq {
            tokens: p.clone(),
            computed: 0,
            blocks: vec![],
        };
        let got = step(model.as_ref(), &kv, &mut [&mut s], &[p.len()], &mut free);
        let worst = got[0]
            .iter()
            .zip(&fx.logits[2])
            .map(|(g, w)| max_abs(g, w))
            .fold(0.0, f32::max);
        assert!(worst < tol, "{dtype:?}: max abs diff {worst}");
        assert!(worst > 0.0, "{dtype:?} computed in f32?");
        // Batch invariance holds in half precision too (`cpu::dense` widens the weights).
        let kv = model.new_kv_cache(64, BLOCK, dtype).unwrap();
        let prompts: Vec<&[u32]> = fx.prompts.iter().map(Vec::as_slice).collect();
        let together = run_chunked(model.as_ref(), &kv, &prompts, |_| 3);
        for (i, batched) in together.iter().enumerate() {
            let alone = &run_chunked(model.as_ref(), &kv, &prompts[i..i + 1], |_| 3)[0];
            assert!(alone == batched, "{dtype:?}: prompt {i} alone vs batched");
        }
    }
}

/// A prompt chunk that samples nothing still fills the cache: the next chunk's logits match.
#[test]
fn chunk_without_logits_still_writes_the_cache() {
    use flare::runner::candle::{CandleForward, StepSeq};
    let (model, fx) = load("tiny-llama");
    let fwd = CandleForward::new(model, 16, BLOCK, DType::F32).unwrap();
    let p = &fx.prompts[2];
    let table: Vec<u32> = shuffled_pool(16);
    let first = StepSeq {
        new_tokens: &p[..10],
        num_computed: 0,
        block_table: &table,
        logit_rows: 0,
        prompt_len: p.len(),
        seq_id: None,
    };
    assert!(fwd.step(&[first]).unwrap().is_empty());
    let rest = StepSeq {
        new_tokens: &p[10..],
        num_computed: 10,
        block_table: &table,
        logit_rows: 1,
        prompt_len: p.len(),
        seq_id: None,
    };
    let got = fwd.step(&[rest]).unwrap();
    let d = max_abs(&got[0], fx.logits[2].last().unwrap());
    assert!(d < 1e-4, "max abs diff {d}");
}
