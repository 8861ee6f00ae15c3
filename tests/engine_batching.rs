//! Continuous batching on the real SmolLM2 (GGUF, CPU): many requests in one batch give the
//! same greedy tokens as each alone, also when a small KV cache forces preemption; a shared
//! prefix is served from the prefix cache. Needs `python3 models/fetch_smollm2.py`.

use flare::engine::{build_engine, EngineArgs, LoadedEngine};
use flare::models::source;
use flare::request::SamplingParams;
use flare::scheduler::config::SchedulerConfig;

const SYSTEM: &str = "You are a careful assistant for a small library in a mountain town. \
    The library opens at nine and closes at five, lends books for three weeks, charges no fees, \
    runs a reading club on Thursdays, keeps local newspapers since 1921, and has two computers \
    for visitors. Answer questions about the library briefly and politely, and say when you do \
    not know something.";

const QUESTIONS: [&str; 16] = [
    "When does the library open?",
    "Can I borrow a book for a month?",
    "Hi",
    "Is there a reading club?",
    "Write a short poem about snow.",
    "What is 2 + 2?",
    "How old are the newspapers?",
    "List three fruits.",
    "Do you charge fees?",
    "Translate 'good morning' to French.",
    "What can I do on Thursdays?",
    "Name a planet.",
    "How many computers are there?",
    "Tell me a fun fact about cats.",
    "Describe the town.",
    "What is the capital of Italy?",
];

fn engine(
    kv_cache_memory: Option<usize>,
    max_model_len: Option<usize>,
    max_num_seqs: usize,
) -> LoadedEngine {
    let gguf = source::default_gguf_path();
    assert!(
        gguf.exists(),
        "{} missing: run `python3 models/fetch_smollm2.py`",
        gguf.display()
    );
    build_engine(&EngineArgs {
        model: Some(gguf.to_string_lossy().into_owned()),
        kv_cache_memory,
        max_model_len,
        scheduler: SchedulerConfig {
            max_num_seqs,
            max_num_batched_tokens: 512,
            ..SchedulerConfig::default()
        },
        ..EngineArgs::default()
    })
    .unwrap()
}

/// Mixed lengths: even requests carry the long shared system prompt, odd ones are bare.
fn prompts(e: &LoadedEngine) -> Vec<Vec<u32>> {
    let tok = &e.tokenizer;
    QUESTIONS
        .iter()
        .enumerate()
        .map(|(i, q)| {
            let text = if i % 2 == 0 {
                format!("<|im_start|>system\n{SYSTEM}<|im_end|>\n<|im_start|>user\n{q}<|im_end|>\n<|im_start|>assistant\n")
            } else {
                format!("<|im_start|>user\n{q}<|im_end|>\n<|im_start|>assistant\n")
            };
            tok.encode(&text, false).unwrap()
        })
        .collect()
}

/// Runs `prompts` as one continuous batch; returns (output ids, cached prompt tokens) each.
fn run_batch(
    e: &mut LoadedEngine,
    prompts: &[Vec<u32>],
    max_tokens: usize,
) -> Vec<(Vec<u32>, usize)> {
    run_batch_with(e, prompts, &SamplingParams::greedy(max_tokens))
}

fn run_batch_with(
    e: &mut LoadedEngine,
    prompts: &[Vec<u32>],
    params: &SamplingParams,
) -> Vec<(Vec<u32>, usize)> {
    let ids: Vec<u64> = prompts
        .iter()
        .map(|p| e.engine.add_request(p.clone(), params.clone(), 0).unwrap())
        .collect();
    let mut outs = vec![(Vec::new(), 0); prompts.len()];
    while e.engine.has_unfinished() {
        for o in e.engine.step().unwrap() {
            let i = ids.iter().position(|&x| x == o.id).unwrap();
            outs[i].0.extend(o.token_ids);
            outs[i].1 = o.num_cached_tokens;
        }
    }
    outs
}

#[test]
fn batched_and_preempted_runs_match_each_request_alone() {
    const MAX_TOKENS: usize = 20;
    let mut alone_engine = engine(None, Some(512), 256);
    let prompts = prompts(&alone_engine);
    let alone: Vec<Vec<u32>> = prompts
        .iter()
        .map(|p| {
            run_batch(&mut alone_engine, std::slice::from_ref(p), MAX_TOKENS)
                .remove(0)
                .0
        })
        .collect();
    assert!(alone.iter().all(|o| !o.is_empty()));

    let together = run_batch(&mut alone_engine, &prompts, MAX_TOKENS);
    for (i, (a, t)) in alone.iter().zip(&together).enumerate() {
        assert_eq!(
            a, &t.0,
            "request {i} ({:?}) differs when batched",
            QUESTIONS[i]
        );
    }
    assert_eq!(alone_engine.engine.scheduler().stats().num_preemptions, 0);

    // 24 blocks of 16 tokens cannot hold 16 sequences of 40-130 tokens: preemption must happen.
    let bytes_per_block = alone_engine.config.kv_bytes_per_token(4) * 16;
    let mut small = engine(Some(24 * bytes_per_block), Some(256), 256);
    let squeezed = run_batch(&mut small, &prompts, MAX_TOKENS);
    let stats = small.engine.scheduler().stats();
    assert!(stats.num_preemptions > 0, "the small cache did not preempt");
    for (i, (a, t)) in alone.iter().zip(&squeezed).enumerate() {
        assert_eq!(
            a, &t.0,
            "request {i} ({:?}) differs after preemption",
            QUESTIONS[i]
        );
    }
    assert_eq!(
        small.engine.scheduler().kv().num_free_blocks(),
        24,
        "blocks leaked"
    );
}

/// Grammar-constrained greedy outputs: the same alone, batched and after preemption (the
/// matcher holds the output and is not re-fed on recompute), and every one valid JSON of the
/// schema once it stopped.
#[test]
fn grammar_constrained_runs_survive_batching_and_preemption() {
    let schema = serde_json::json!({"type": "object", "properties": {
        "answer": {"type": "string", "maxLength": 30},
        "confidence": {"type": "integer", "minimum": 0, "maximum": 10}},
        "required": ["answer", "confidence"], "additionalProperties": false});
    let params = SamplingParams {
        constraint: Some(flare::request::Constraint::JsonSchema(schema)),
        ..SamplingParams::greedy(40)
    };
    let mut e = engine(None, Some(512), 256);
    let prompts = prompts(&e);
    let alone: Vec<Vec<u32>> = prompts
        .iter()
        .map(|p| {
            run_batch_with(&mut e, std::slice::from_ref(p), &params)
                .remove(0)
                .0
        })
        .collect();
    let together = run_batch_with(&mut e, &prompts, &params);
    let bytes_per_block = e.config.kv_bytes_per_token(4) * 16;
    let mut small = engine(Some(24 * bytes_per_block), Some(256), 256);
    let squeezed = run_batch_with(&mut small, &prompts, &params);
    assert!(small.engine.scheduler().stats().num_preemptions > 0);
    assert_eq!(
        small.engine.scheduler().kv().num_free_blocks(),
        24,
        "blocks leaked"
    );
    let mut stopped = 0;
    for (i, a) in alone.iter().enumerate() {
        assert_eq!(a, &together[i].0, "request {i} differs when batched");
        assert_eq!(a, &squeezed[i].0, "request {i} differs after preemption");
        let text = e.tokenizer.decode(a, true).unwrap();
        assert!(text.starts_with("{\"answer\": \""), "{text}");
        if e.tokenizer.is_eos(*a.last().unwrap()) || a.len() < 40 {
            let v: serde_json::Value = serde_json::from_str(&text).expect(&text);
            assert!(
                v["confidence"]
                    .as_i64()
                    .is_some_and(|c| (0..=10).contains(&c)),
                "{text}"
            );
            stopped += 1;
        }
    }
    assert!(stopped > 0, "no output completed its grammar");
}

#[test]
fn second_request_with_shared_prefix_reports_cached_tokens() {
    let mut e = engine(None, Some(512), 8);
    let p = prompts(&e);
    // Requests 0 and 2 share the long system prompt (more than 5 full blocks).
    let first = run_batch(&mut e, &p[0..1], 4);
    assert_eq!(first[0].1, 0);
    let second = run_batch(&mut e, &p[2..3], 4);
    let shared = p[0].iter().zip(&p[2]).take_while(|(a, b)| a == b).count();
    assert!(shared >= 80, "prompts share only {shared} tokens");
    assert_eq!(
        second[0].1,
        shared / 16 * 16,
        "cached tokens should be the shared full blocks"
    );
    let free_after = e.engine.scheduler().kv().num_free_blocks();
    assert_eq!(free_after, e.num_blocks, "all blocks back in the pool");
}

#[test]
fn seeded_sampling_is_independent_of_the_batch() {
    let mut e = engine(None, Some(512), 64);
    let p = prompts(&e);
    let params = SamplingParams {
        temperature: 0.9,
        top_p: 0.95,
        seed: Some(7),
        max_tokens: 16,
        ..SamplingParams::default()
    };
    let run = |e: &mut LoadedEngine, others: &[Vec<u32>]| -> Vec<u32> {
        let id = e
            .engine
            .add_request(p[3].clone(), params.clone(), 0)
            .unwrap();
        for o in others {
            let noisy = SamplingParams {
                temperature: 1.0,
                max_tokens: 16,
                ..SamplingParams::default()
            };
            e.engine.add_request(o.clone(), noisy, 0).unwrap();
        }
        let mut out = Vec::new();
        while e.engine.has_unfinished() {
            for o in e.engine.step().unwrap() {
                if o.id == id {
                    out.extend(o.token_ids);
                }
            }
        }
        out
    };
    let alone = run(&mut e, &[]);
    let crowded = run(&mut e, &p[4..10]);
    assert_eq!(alone.len(), 16);
    assert_eq!(alone, crowded);
    let other_seed = {
        let id = e
            .engine
            .add_request(
                p[3].clone(),
                SamplingParams {
                    seed: Some(8),
                    ..params.clone()
                },
                0,
            )
            .unwrap();
        let mut out = Vec::new();
        while e.engine.has_unfinished() {
            for o in e.engine.step().unwrap() {
                assert_eq!(o.id, id);
                out.extend(o.token_ids);
            }
        }
        out
    };
    assert_ne!(
        alone, other_seed,
        "a different seed should change a 16-token sample"
    );
}
