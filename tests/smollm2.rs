//! The real SmolLM2-135M-Instruct through the whole engine (chat template, tokenizer,
//! scheduler, paged cache, sampler, detokenizer) against transformers' greedy outputs
//! (tests/fixtures/smollm2_greedy.json), and the GGUF path on a question with a clear answer.
//!
//! Needs `python3 models/fetch_smollm2.py --hf` (scripts/test.sh runs it).

use flare::chat_template::{ChatMessage, ChatTemplate};
use flare::engine::{build_engine, EngineArgs, LoadedEngine};
use flare::models::source;
use flare::request::SamplingParams;

const NEAR_TIE: f32 = 0.1;

fn engine(model: &std::path::Path) -> LoadedEngine {
    assert!(
        model.exists(),
        "{} missing: run `python3 models/fetch_smollm2.py --hf`",
        model.display()
    );
    let args = EngineArgs {
        model: Some(model.to_string_lossy().into_owned()),
        ..EngineArgs::default()
    };
    build_engine(&args).expect("engine")
}

struct Case {
    user: String,
    prompt_text: String,
    prompt_ids: Vec<u32>,
    output_ids: Vec<u32>,
    margins: Vec<f32>,
}

fn cases() -> Vec<Case> {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/smollm2_greedy.json"
    );
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    v["cases"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| Case {
            user: c["messages"][0]["content"].as_str().unwrap().to_string(),
            prompt_text: c["prompt_text"].as_str().unwrap().to_string(),
            prompt_ids: serde_json::from_value(c["prompt_ids"].clone()).unwrap(),
            output_ids: serde_json::from_value(c["output_ids"].clone()).unwrap(),
            margins: serde_json::from_value(c["margins"].clone()).unwrap(),
        })
        .collect()
}

/// Runs every case's prompt, all in one continuous batch, greedy; returns output ids.
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

#[test]
fn f32_safetensors_greedy_matches_transformers_up_to_near_ties() {
    let mut e = engine(&source::default_hf_dir());
    let tok = e.tokenizer.clone();
    let cases = cases();
    assert!(cases.len() >= 10);
    let template = ChatTemplate::from_tokenizer(&tok)
        .unwrap()
        .expect("chat template");
    // Our chat template and tokenizer produce exactly the reference prompt.
    for c in &cases {
        let text = template
            .render(&[ChatMessage::new("user", &c.user)], true)
            .unwrap();
        assert_eq!(text, c.prompt_text);
        assert_eq!(
            tok.encode(&text, false).unwrap(),
            c.prompt_ids,
            "prompt ids for {:?}",
            c.user
        );
    }
    let prompts: Vec<Vec<u32>> = cases.iter().map(|c| c.prompt_ids.clone()).collect();
    let outs = generate_all(&mut e, &prompts, 40);
    let mut compared = 0;
    for (c, got) in cases.iter().zip(&outs) {
        // Tokens are comparable up to (not including) the first step where the reference's
        // top-2 margin is a near-tie.
        let n = c
            .margins
            .iter()
            .position(|&m| m < NEAR_TIE)
            .unwrap_or(c.output_ids.len());
        assert!(got.len() >= n, "{:?}: only {} tokens", c.user, got.len());
        assert_eq!(&got[..n], &c.output_ids[..n], "{:?}", c.user);
        compared += n;
        if n == c.output_ids.len() {
            assert_eq!(
                got, &c.output_ids,
                "{:?}: no near-tie, whole output must match",
                c.user
            );
        }
    }
    assert!(compared >= 150, "only {compared} tokens compared");
}

#[test]
fn gguf_answers_a_question_with_a_clear_answer() {
    let mut e = engine(&source::default_gguf_path());
    let tok = e.tokenizer.clone();
    let template = ChatTemplate::from_tokenizer(&tok)
        .unwrap()
        .expect("chat template");
    // The bare question is a near-tie at its first token ("The" vs "L'", margin 0.08 in f32),
    // which Q4_1 flips; asking for one sentence is a clear case.
    let question = "What is the capital of France? Answer in one sentence.";
    let text = template
        .render(&[ChatMessage::new("user", question)], true)
        .unwrap();
    let prompt = tok.encode(&text, false).unwrap();
    let id = e
        .engine
        .add_request(prompt, SamplingParams::greedy(30), 0)
        .unwrap();
    let mut answer = String::new();
    let mut finish = None;
    while e.engine.has_unfinished() {
        for o in e.engine.step().unwrap() {
            assert_eq!(o.id, id);
            answer.push_str(&o.text);
            finish = o.finish_reason.or(finish);
        }
    }
    assert!(answer.contains("Paris"), "{answer:?}");
    assert_eq!(
        finish,
        Some(flare::request::FinishReason::Stop),
        "{answer:?}"
    );
}

/// A structured-output grammar behind a reasoning gate on the real model: the text up to the
/// reasoning's closer is the model's own greedy text, and the answer after it follows the grammar.
/// (Markers chosen so that SmolLM2, which does not think, closes its "reasoning" by itself.)
#[test]
fn grammar_binds_only_the_answer_after_the_reasoning() {
    use flare::request::{Constraint, ReasoningMarkers};
    let mut e = engine(&source::default_gguf_path());
    let tok = e.tokenizer.clone();
    let template = ChatTemplate::from_tokenizer(&tok).unwrap().unwrap();
    let question = "What is the capital of France? Answer in one sentence.";
    let text = template
        .render(&[ChatMessage::new("user", question)], true)
        .unwrap();
    let prompt = tok.encode(&text, false).unwrap();
    let run = |e: &mut LoadedEngine, params: SamplingParams| {
        e.engine.add_request(prompt.clone(), params, 0).unwrap();
        let (mut text, mut finish) = (String::new(), None);
        while e.engine.has_unfinished() {
            for o in e.engine.step().unwrap() {
                text.push_str(&o.text);
                finish = o.finish_reason.or(finish);
            }
        }
        (text, finish)
    };
    let (free, _) = run(&mut e, SamplingParams::greedy(30));
    let cut = free.find("Paris").expect("the model names Paris") + "Paris".len();

    let gated = SamplingParams {
        constraint: Some(Constraint::Regex("[0-9]{4}".into())),
        constraint_after: Some(ReasoningMarkers {
            opener: None,
            closer: "Paris".into(),
        }),
        ..SamplingParams::greedy(30)
    };
    let (text, finish) = run(&mut e, gated);
    assert_eq!(
        &text[..cut],
        &free[..cut],
        "the reasoning is the model's own text"
    );
    let answer = &text[cut..];
    assert!(
        answer.len() == 4 && answer.bytes().all(|b| b.is_ascii_digit()),
        "{text:?}"
    );
    assert_eq!(finish, Some(flare::request::FinishReason::Stop), "{text:?}");
}

/// The device-side greedy path (taken on GPUs: grammar masks uploaded, argmax where the logits
/// are) picks exactly the tokens of the host sampler, constrained rows and free rows alike.
#[test]
fn greedy_on_device_with_grammar_masks_matches_the_host_sampler() {
    use flare::request::Constraint;
    let mut e = engine(&source::default_gguf_path());
    let tok = e.tokenizer.clone();
    let template = ChatTemplate::from_tokenizer(&tok).unwrap().unwrap();
    let prompt = |q: &str| {
        let text = template
            .render(&[ChatMessage::new("user", q)], true)
            .unwrap();
        tok.encode(&text, false).unwrap()
    };
    let requests = [
        (
            prompt("Give a person as JSON."),
            Some(Constraint::JsonSchema(serde_json::json!({
            "type": "object",
            "properties": {"name": {"type": "string", "maxLength": 12}, "age": {"type": "integer"}},
            "required": ["name", "age"], "additionalProperties": false}))),
        ),
        (prompt("What is the capital of France?"), None),
        (
            prompt("Pick a colour."),
            Some(Constraint::Choice(vec!["red".into(), "green".into()])),
        ),
    ];
    let run = |e: &mut LoadedEngine, on_device: bool| {
        e.engine.runner_mut().set_sample_on_device(on_device);
        let ids: Vec<u64> = requests
            .iter()
            .map(|(p, c)| {
                let params = SamplingParams {
                    constraint: c.clone(),
                    ..SamplingParams::greedy(24)
                };
                e.engine.add_request(p.clone(), params, 0).unwrap()
            })
            .collect();
        let mut outs = vec![(Vec::new(), None); ids.len()];
        while e.engine.has_unfinished() {
            for o in e.engine.step().unwrap() {
                let i = ids.iter().position(|&x| x == o.id).unwrap();
                outs[i].0.extend(o.token_ids);
                outs[i].1 = o.finish_reason.or(outs[i].1);
            }
        }
        outs
    };
    let host = run(&mut e, false);
    let device = run(&mut e, true);
    assert_eq!(host, device);
    let person = tok.decode(&device[0].0, true).unwrap();
    let v: serde_json::Value = serde_json::from_str(&person).expect(&person);
    assert!(v["age"].is_i64(), "{person}");
    let colour = tok.decode(&device[2].0, true).unwrap();
    assert!(colour == "red" || colour == "green", "{colour}");
}

/// Runs the requests as one continuous batch, sampling on the host or with the batched
/// (device) sampler; returns each request's tokens and finish reason.
fn run_sampling_path(
    e: &mut LoadedEngine,
    requests: &[(Vec<u32>, SamplingParams)],
    on_device: bool,
) -> Vec<(Vec<u32>, Option<flare::request::FinishReason>)> {
    e.engine.runner_mut().set_sample_on_device(on_device);
    let ids: Vec<u64> = requests
        .iter()
        .map(|(p, params)| e.engine.add_request(p.clone(), params.clone(), 0).unwrap())
        .collect();
    let mut outs = vec![(Vec::new(), None); ids.len()];
    while e.engine.has_unfinished() {
        for o in e.engine.step().unwrap() {
            let i = ids.iter().position(|&x| x == o.id).unwrap();
            outs[i].0.extend(o.token_ids);
            outs[i].1 = o.finish_reason.or(outs[i].1);
        }
    }
    outs
}

/// Seeded random sampling with every processor (temperature, top-k/p, min-p, penalties,
/// logit bias, min_tokens, a grammar) gives the same tokens from the batched sampler as from
/// the host sampler: both draw Philox's number for (seed, position) in id order.
#[test]
fn seeded_sampling_on_device_matches_the_host_sampler() {
    use flare::request::Constraint;
    let mut e = engine(&source::default_gguf_path());
    let tok = e.tokenizer.clone();
    let template = ChatTemplate::from_tokenizer(&tok).unwrap().unwrap();
    let prompt = |q: &str| {
        let text = template
            .render(&[ChatMessage::new("user", q)], true)
            .unwrap();
        tok.encode(&text, false).unwrap()
    };
    let base = |seed: u64| SamplingParams {
        temperature: 0.9,
        seed: Some(seed),
        ..SamplingParams::greedy(20)
    };
    let requests = [
        (prompt("Write a short poem about rain."), base(1)),
        (
            prompt("Name three animals."),
            SamplingParams {
                top_k: 20,
                top_p: 0.9,
                min_p: 0.02,
                ..base(2)
            },
        ),
        (
            prompt("Tell me about Paris."),
            SamplingParams {
                repetition_penalty: 1.2,
                frequency_penalty: 0.5,
                presence_penalty: 0.3,
                logit_bias: [(28, 2.0), (30, -100.0)].into_iter().collect(),
                min_tokens: 8,
                ..base(3)
            },
        ),
        (
            prompt("Pick a colour."),
            SamplingParams {
                constraint: Some(Constraint::Choice(vec!["red".into(), "green".into()])),
                ..base(4)
            },
        ),
        (prompt("What is 2 + 2?"), SamplingParams::greedy(12)),
    ];
    let host = run_sampling_path(&mut e, &requests, false);
    let copied = e.engine.runner().forward().blocks_copied();
    let device = run_sampling_path(&mut e, &requests, true);
    assert_eq!(host, device);
    // The persistent batch copied each block table once, then appended blocks only: five
    // sequences of < 64 tokens hold a few blocks each, where rebuilding every table at each
    // of the 20 steps would copy hundreds.
    let copied = e.engine.runner().forward().blocks_copied() - copied;
    assert!(copied <= 5 * 6, "{copied} block ids copied");
    // Seeded: the same again, and the batch does not matter (request 1 alone).
    assert_eq!(device, run_sampling_path(&mut e, &requests, true));
    let alone = run_sampling_path(&mut e, &requests[1..2], true);
    assert_eq!(alone[0], device[1]);
}
