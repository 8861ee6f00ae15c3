//! Speculative decoding through the whole engine on the real SmolLM2-135M (f32 target):
//! greedy token ids are identical to no speculation with the n-gram proposer and with the
//! Q4_1 GGUF copy as a draft model, alone, in a mixed batch of 16 (half of them
//! grammar-constrained, whose drafts are checked against the grammar position by position),
//! and with a KV cache small enough that preemption happens.
//!
//! Needs `python3 models/fetch_smollm2.py --hf` (scripts/test.sh runs it).

use flare::engine::{build_engine, EngineArgs, LoadedEngine};
use flare::models::source;
use flare::request::{Constraint, SamplingParams};
use flare::scheduler::config::SchedulerConfig;
use flare::spec::SpecConfig;

/// Input-grounded prompts (the answer quotes or rewrites the prompt) and open ones.
const PROMPTS: &[&str] = &[
    "Repeat the following sentence exactly: The quick brown fox jumps over the lazy dog near the river bank.",
    "Copy this list: apples, oranges, bananas, grapes, pears, plums, cherries.",
    "Rewrite this code with the variable renamed to total:\nlet sum = 0;\nfor x in items { sum += x; }\nprintln!(\"{}\", sum);",
    "What is the capital of France? Answer in one sentence.",
    "Quote the first line of this poem: Roses are red, violets are blue, sugar is sweet.",
    "Tell me a fun fact about cats.",
    "Say the days of the week in order.",
    "Write the numbers from one to ten in words.",
];

fn engine(spec: Option<&str>, kv_cache_memory: Option<usize>) -> LoadedEngine {
    engine_with_len(spec, kv_cache_memory, 512)
}

fn engine_with_len(
    spec: Option<&str>,
    kv_cache_memory: Option<usize>,
    max_model_len: usize,
) -> LoadedEngine {
    let model = source::default_hf_dir();
    assert!(
        model.exists(),
        "{} missing: run `python3 models/fetch_smollm2.py --hf`",
        model.display()
    );
    build_engine(&EngineArgs {
        model: Some(model.to_string_lossy().into_owned()),
        kv_cache_memory,
        max_model_len: Some(max_model_len),
        scheduler: SchedulerConfig {
            max_num_batched_tokens: 512,
            ..SchedulerConfig::default()
        },
        speculative: spec.map(|s| SpecConfig::parse(s).unwrap()),
        ..EngineArgs::default()
    })
    .unwrap()
}

// Both speculate at any batch size (the default pauses above a few running sequences on the
// CPU), so that the batches of 16 verify drafts too.
fn ngram() -> String {
    r#"{"method": "ngram", "num_speculative_tokens": 4, "prompt_lookup_min": 2, "prompt_lookup_max": 4, "disable_by_batch_size": 64}"#.into()
}

fn draft() -> String {
    let gguf = source::default_gguf_path();
    assert!(gguf.exists(), "{} missing", gguf.display());
    format!(
        r#"{{"method": "draft", "model": "{}", "num_speculative_tokens": 3, "disable_by_batch_size": 64}}"#,
        gguf.display()
    )
}

fn chat(e: &LoadedEngine, user: &str) -> Vec<u32> {
    let text = format!("<|im_start|>user\n{user}<|im_end|>\n<|im_start|>assistant\n");
    e.tokenizer.encode(&text, false).unwrap()
}

/// Runs the requests in one continuous batch; returns each one's output ids.
fn run(e: &mut LoadedEngine, reqs: &[(Vec<u32>, SamplingParams)]) -> Vec<Vec<u32>> {
    run_full(e, reqs).into_iter().map(|o| o.ids).collect()
}

#[derive(Debug, Default, Clone)]
struct Out {
    ids: Vec<u32>,
    text: String,
    logprobs: Vec<flare::request::TokenLogprobs>,
    num_output_tokens: usize,
    finish_reason: Option<flare::request::FinishReason>,
}

fn run_full(e: &mut LoadedEngine, reqs: &[(Vec<u32>, SamplingParams)]) -> Vec<Out> {
    e.engine.set_check_invariants(true);
    let ids: Vec<u64> = reqs
        .iter()
        .map(|(p, params)| e.engine.add_request(p.clone(), params.clone(), 0).unwrap())
        .collect();
    let mut outs = vec![Out::default(); reqs.len()];
    while e.engine.has_unfinished() {
        for o in e.engine.step().unwrap() {
            assert!(o.error.is_none(), "{:?}", o.error);
            let i = ids.iter().position(|&x| x == o.id).unwrap();
            assert_eq!(
                o.logprobs.len(),
                o.token_ids.len() * reqs[i].1.logprobs.is_some() as usize
            );
            outs[i].ids.extend(o.token_ids);
            outs[i].text.push_str(&o.text);
            outs[i].logprobs.extend(o.logprobs);
            outs[i].num_output_tokens = o.num_output_tokens;
            outs[i].finish_reason = o.finish_reason;
        }
    }
    assert_eq!(e.engine.scheduler().kv().num_free_blocks(), e.num_blocks);
    outs
}

fn greedy(n: usize) -> SamplingParams {
    SamplingParams::greedy(n)
}

fn assert_accepted_some(e: &LoadedEngine) {
    let s = e.engine.spec_stats().expect("speculation on");
    assert!(s.num_drafts > 0, "nothing was proposed: {s:?}");
    assert!(s.num_accepted_tokens > 0, "nothing was accepted: {s:?}");
    eprintln!(
        "drafts {} draft tokens {} accepted {} (rate {:.2}, mean length {:.2}) per position {:?}",
        s.num_drafts,
        s.num_draft_tokens,
        s.num_accepted_tokens,
        s.acceptance_rate(),
        s.mean_accepted_length(),
        s.accepted_per_position
    );
}

/// Stop strings and logprobs behave as without speculation: the same text and token count
/// (tokens accepted past the stop in the same step are dropped), logprobs per token.
#[test]
fn stop_strings_and_logprobs_are_unchanged() {
    let mut base = engine(None, None);
    let params = SamplingParams {
        stop: vec!["lazy".into()],
        logprobs: Some(2),
        ..greedy(48)
    };
    let reqs = vec![(chat(&base, PROMPTS[0]), params)];
    let want = run_full(&mut base, &reqs).remove(0);
    assert!(
        !want.text.contains("lazy") && want.text.contains("quick brown"),
        "{want:?}"
    );
    drop(base);
    let mut e = engine(Some(&ngram()), None);
    let got = run_full(&mut e, &reqs).remove(0);
    assert_accepted_some(&e);
    assert_eq!(got.ids, want.ids);
    assert_eq!(got.text, want.text);
    assert_eq!(got.num_output_tokens, want.num_output_tokens);
    assert_eq!(got.logprobs.len(), want.logprobs.len());
    for (g, w) in got.logprobs.iter().zip(&want.logprobs) {
        assert_eq!(g.token, w.token);
        assert!((g.logprob - w.logprob).abs() < 1e-3, "{g:?} vs {w:?}");
        assert_eq!(g.top.len(), 2);
    }
}

#[test]
fn greedy_alone_is_identical_with_ngram_and_draft() {
    let mut base = engine(None, None);
    let reqs: Vec<_> = PROMPTS[..3]
        .iter()
        .map(|p| (chat(&base, p), greedy(48)))
        .collect();
    let want: Vec<Vec<u32>> = reqs
        .iter()
        .map(|r| run(&mut base, std::slice::from_ref(r)).remove(0))
        .collect();
    drop(base);
    for spec in [ngram(), draft()] {
        let mut e = engine(Some(&spec), None);
        for (r, w) in reqs.iter().zip(&want) {
            let got = run(&mut e, std::slice::from_ref(r)).remove(0);
            assert_eq!(&got, w, "{spec}");
        }
        assert_accepted_some(&e);
    }
}

/// 16 requests: 8 plain greedy ones, 8 with a regex grammar; both kinds speculate.
#[test]
fn greedy_mixed_batch_of_16_half_speculating_is_identical() {
    let mut base = engine(None, None);
    let regex = Constraint::Regex("[A-Za-z ,.]{1,80}".into());
    let reqs: Vec<_> = (0..16)
        .map(|i| {
            let prompt = chat(&base, PROMPTS[i % PROMPTS.len()]);
            let params = if i % 2 == 0 {
                greedy(32)
            } else {
                SamplingParams {
                    constraint: Some(regex.clone()),
                    ..greedy(32)
                }
            };
            (prompt, params)
        })
        .collect();
    let want = run(&mut base, &reqs);
    drop(base);
    for spec in [ngram(), draft()] {
        let mut e = engine(Some(&spec), None);
        let got = run(&mut e, &reqs);
        for (i, (g, w)) in got.iter().zip(&want).enumerate() {
            assert_eq!(g, w, "request {i} with {spec}");
        }
        assert_accepted_some(&e);
    }
}

/// A cache of 24 blocks (384 tokens) for 8 requests of about 100 tokens forces preemption.
#[test]
fn greedy_with_preemption_is_identical() {
    let bytes_per_token = 30 * 2 * 3 * 64 * 4; // layers * (K,V) * kv heads * head dim * f32
    let kv = Some(bytes_per_token * 16 * 24);
    let engine = |spec: Option<&str>| engine_with_len(spec, kv, 256);
    let mut base = engine(None);
    let params = SamplingParams {
        ignore_eos: true,
        ..greedy(64)
    };
    let reqs: Vec<_> = (0..8)
        .map(|i| (chat(&base, PROMPTS[i % PROMPTS.len()]), params.clone()))
        .collect();
    let want = run(&mut base, &reqs);
    assert!(base.engine.scheduler().stats().num_preemptions > 0);
    drop(base);
    for spec in [ngram(), draft()] {
        let mut e = engine(Some(&spec));
        let got = run(&mut e, &reqs);
        assert!(
            e.engine.scheduler().stats().num_preemptions > 0,
            "no preemption with {spec}"
        );
        for (i, (g, w)) in got.iter().zip(&want).enumerate() {
            assert_eq!(g, w, "request {i} with {spec}");
        }
        assert_accepted_some(&e);
    }
}

#[test]
fn a_draft_with_another_vocabulary_is_refused_at_load() {
    let gemma = dirs_model("gemma-3-270m-q4_k_m.gguf");
    let spec = format!(
        r#"{{"method": "draft", "model": "{}", "num_speculative_tokens": 3}}"#,
        gemma.display()
    );
    let err = build_engine(&EngineArgs {
        model: Some(source::default_hf_dir().to_string_lossy().into_owned()),
        max_model_len: Some(256),
        speculative: Some(SpecConfig::parse(&spec).unwrap()),
        ..EngineArgs::default()
    })
    .err()
    .expect("a draft with another vocabulary must be refused");
    let msg = format!("{err:#}");
    assert!(msg.contains("share the target's vocabulary"), "{msg}");
}

/// Grammar-constrained greedy requests speculate: each draft is verified under the grammar's
/// mask in the state after the drafts accepted before it, so the output is token for token
/// plain constrained decoding and valid under the grammar (regex and JSON schema).
#[test]
fn constrained_greedy_speculates_identically_and_validly() {
    let mut base = engine(None, None);
    let regex = "[A-Za-z ,.]{1,80}";
    let schema = serde_json::json!({
        "type": "object",
        "properties": {"sentence": {"type": "string", "maxLength": 90}},
        "required": ["sentence"],
        "additionalProperties": false
    });
    let reqs = vec![
        (
            chat(&base, PROMPTS[0]),
            SamplingParams {
                constraint: Some(Constraint::Regex(regex.into())),
                ..greedy(40)
            },
        ),
        (
            chat(
                &base,
                "Answer in JSON with the key sentence. Repeat this sentence exactly: The quick brown fox jumps over the lazy dog.",
            ),
            SamplingParams {
                constraint: Some(Constraint::JsonSchema(schema)),
                ..greedy(60)
            },
        ),
    ];
    let want = run_full(&mut base, &reqs);
    drop(base);
    let whole = regex::Regex::new(&format!("^(?:{regex})$")).unwrap();
    for spec in [ngram(), draft()] {
        let mut e = engine(Some(&spec), None);
        let got = run_full(&mut e, &reqs);
        for (g, w) in got.iter().zip(&want) {
            assert_eq!(g.ids, w.ids, "{spec}");
            assert_eq!(g.finish_reason, w.finish_reason, "{spec}");
        }
        assert!(whole.is_match(&got[0].text), "{:?}", got[0].text);
        let json: serde_json::Value =
            serde_json::from_str(&got[1].text).unwrap_or_else(|e| panic!("{e}: {:?}", got[1].text));
        assert!(json["sentence"].is_string(), "{json}");
        // Only constrained requests ran, so these drafts were theirs.
        assert_accepted_some(&e);
    }
}

fn dirs_model(name: &str) -> std::path::PathBuf {
    source::default_gguf_path().parent().unwrap().join(name)
}
