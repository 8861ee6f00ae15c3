//! The server over the real SmolLM2-135M-Instruct (the default GGUF) on the CPU, through HTTP:
//! greedy answers, stream/non-stream agreement, usage, logprobs, seeds, n, token-id prompts with
//! echo, context length, a disconnect freeing KV blocks, and a 16-bit KV cache. Small max_tokens throughout (the
//! model decodes some tens of tokens per second here).
//!
//! Needs `python3 models/fetch_smollm2.py` (scripts/test.sh runs it).

mod common;

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use common::*;
use flare::engine::EngineArgs;
use flare::models::source;
use flare::server::{AppState, ServerConfig};
use serde_json::{json, Value};

const MODEL: &str = "smollm2";
const MAX_MODEL_LEN: usize = 2048;
const QUESTION: &str = "What is the capital of France? Answer in one sentence.";

fn engine_args() -> EngineArgs {
    let gguf = source::default_gguf_path();
    assert!(
        gguf.exists(),
        "{} missing: run `python3 models/fetch_smollm2.py`",
        gguf.display()
    );
    EngineArgs {
        model: Some(gguf.to_string_lossy().into_owned()),
        kv_cache_memory: Some(256 << 20),
        max_model_len: Some(MAX_MODEL_LEN),
        ..EngineArgs::default()
    }
}

fn loaded_state() -> Arc<AppState> {
    let state = AppState::new(ServerConfig {
        served_model_names: vec![MODEL.into()],
        ..ServerConfig::default()
    });
    flare::server::load_into(&state, engine_args()).expect("model loads");
    state
}

/// One server for the tests below, on a runtime of its own that outlives each test's.
fn shared_base() -> &'static str {
    static BASE: OnceLock<String> = OnceLock::new();
    BASE.get_or_init(|| {
        let state = loaded_state();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let rt = tokio::runtime::Runtime::new().unwrap();
            rt.block_on(async move {
                let server = serve(state).await;
                tx.send(server.base.clone()).unwrap();
                std::future::pending::<()>().await;
            });
        });
        rx.recv().unwrap()
    })
}

async fn call(path: &str, body: Value) -> Value {
    let (s, v) = post(&client(), &format!("{}{path}", shared_base()), body).await;
    assert_eq!(s, 200, "{v}");
    v
}

async fn stream(path: &str, body: Value) -> Vec<Value> {
    post_stream(&client(), &format!("{}{path}", shared_base()), body).await
}

fn question(extra: Value) -> Value {
    let mut body = json!({"model": MODEL, "messages": [{"role": "user", "content": QUESTION}]});
    body.as_object_mut()
        .unwrap()
        .extend(extra.as_object().unwrap().clone());
    body
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chat_answers_greedily_with_exact_usage() {
    let v = call(
        "/v1/chat/completions",
        question(json!({"max_tokens": 30, "temperature": 0})),
    )
    .await;
    let text = v["choices"][0]["message"]["content"].as_str().unwrap();
    assert!(text.contains("Paris"), "{text:?}");
    assert_eq!(v["choices"][0]["finish_reason"], "stop");
    let t = call(
        "/tokenize",
        json!({"messages": [{"role": "user", "content": QUESTION}]}),
    )
    .await;
    assert_eq!(v["usage"]["prompt_tokens"], t["count"]);
    let completion = v["usage"]["completion_tokens"].as_u64().unwrap();
    assert!((2..=30).contains(&completion), "{v}");
    // The text plus the EOS token that ended it.
    let out = call(
        "/tokenize",
        json!({"prompt": text, "add_special_tokens": false}),
    )
    .await;
    assert_eq!(out["count"].as_u64().unwrap() + 1, completion, "{v}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stream_and_whole_agree_at_temperature_zero() {
    let body = json!({"max_tokens": 12, "temperature": 0});
    let whole = call("/v1/chat/completions", question(body.clone())).await;
    let mut sbody = question(body);
    sbody["stream"] = json!(true);
    sbody["stream_options"] = json!({"include_usage": true});
    let events = stream("/v1/chat/completions", sbody).await;
    let text: String = events
        .iter()
        .filter_map(|e| e["choices"][0]["delta"]["content"].as_str())
        .collect();
    assert_eq!(
        text,
        whole["choices"][0]["message"]["content"].as_str().unwrap()
    );
    let usage = &events[events.len() - 2]["usage"];
    assert_eq!(
        usage["completion_tokens"],
        whole["usage"]["completion_tokens"]
    );
    assert_eq!(usage["prompt_tokens"], whole["usage"]["prompt_tokens"]);

    let cbody = json!({"model": MODEL, "prompt": "The three primary colors are", "max_tokens": 10, "temperature": 0});
    let whole = call("/v1/completions", cbody.clone()).await;
    let mut sbody = cbody;
    sbody["stream"] = json!(true);
    let events = stream("/v1/completions", sbody).await;
    let text: String = events
        .iter()
        .filter_map(|e| e["choices"][0]["text"].as_str())
        .collect();
    assert_eq!(text, whole["choices"][0]["text"].as_str().unwrap());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logprobs_in_both_shapes() {
    let v = call(
        "/v1/chat/completions",
        question(json!({"max_tokens": 6, "temperature": 0, "logprobs": true, "top_logprobs": 3})),
    )
    .await;
    let content = v["choices"][0]["logprobs"]["content"].as_array().unwrap();
    assert_eq!(
        content.len() as u64,
        v["usage"]["completion_tokens"].as_u64().unwrap()
    );
    let mut text = String::new();
    for lp in content {
        let top = lp["top_logprobs"].as_array().unwrap();
        assert_eq!(top.len(), 3);
        let l: Vec<f64> = top.iter().map(|t| t["logprob"].as_f64().unwrap()).collect();
        assert!(l.windows(2).all(|w| w[0] >= w[1]) && l[0] <= 0.0, "{l:?}");
        // Greedy: the chosen token is the most likely one.
        assert_eq!(lp["token"], top[0]["token"]);
        assert_eq!(lp["logprob"], top[0]["logprob"]);
        assert_eq!(
            lp["bytes"].as_array().unwrap().len(),
            lp["token"].as_str().unwrap().len()
        );
        text += lp["token"].as_str().unwrap();
    }
    assert_eq!(
        text,
        v["choices"][0]["message"]["content"].as_str().unwrap()
    );

    let v = call(
        "/v1/completions",
        json!({"prompt": "One, two, three,", "max_tokens": 4, "temperature": 0, "logprobs": 2}),
    )
    .await;
    let lp = &v["choices"][0]["logprobs"];
    assert_eq!(lp["tokens"].as_array().unwrap().len(), 4);
    assert_eq!(lp["token_logprobs"].as_array().unwrap().len(), 4);
    assert!(lp["top_logprobs"][0].as_object().unwrap().len() <= 2);
    assert_eq!(lp["text_offset"][0], 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seeds_repeat_and_n_gives_choices() {
    let body = question(json!({"max_tokens": 10, "temperature": 1.0, "seed": 42}));
    let a = call("/v1/chat/completions", body.clone()).await;
    let b = call("/v1/chat/completions", body).await;
    let text = |v: &Value, i: usize| {
        v["choices"][i]["message"]["content"]
            .as_str()
            .unwrap()
            .to_string()
    };
    assert_eq!(text(&a, 0), text(&b, 0));
    // n = 2 with a seed: choice i uses seed + i, so choice 0 repeats the single request.
    let two = call(
        "/v1/chat/completions",
        question(json!({"max_tokens": 10, "temperature": 1.0, "seed": 42, "n": 2})),
    )
    .await;
    assert_eq!(two["choices"].as_array().unwrap().len(), 2);
    assert_eq!(text(&two, 0), text(&a, 0));
    assert_eq!(two["choices"][1]["index"], 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_id_prompts_echo_and_context_length() {
    let t = call("/tokenize", json!({"prompt": "The capital of France is"})).await;
    let v = call(
        "/v1/completions",
        json!({"prompt": t["tokens"], "max_tokens": 3, "temperature": 0, "echo": true}),
    )
    .await;
    let text = v["choices"][0]["text"].as_str().unwrap();
    assert!(text.starts_with("The capital of France is"), "{text:?}");
    assert!(text.len() > "The capital of France is".len());
    assert_eq!(v["usage"]["prompt_tokens"], t["count"]);
    let (s, v) = post(
        &client(),
        &format!("{}/v1/completions", shared_base()),
        json!({"prompt": "Hello", "max_tokens": 5000}),
    )
    .await;
    assert_eq!(s, 400);
    let msg = v["error"]["message"].as_str().unwrap();
    assert!(msg.contains("2048") && msg.contains("5000"), "{msg}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disconnect_frees_blocks_on_the_real_model() {
    // A server of its own, so other tests' requests do not show in its metrics.
    let server = serve(loaded_state()).await;
    let c = client();
    let mut r = c
        .post(server.url("/v1/chat/completions"))
        .json(&question(
            json!({"max_tokens": 500, "ignore_eos": true, "stream": true}),
        ))
        .send()
        .await
        .unwrap();
    let mut events = 0;
    while events < 4 {
        let chunk = r.chunk().await.unwrap().expect("stream open");
        events += String::from_utf8_lossy(&chunk).matches("data: ").count();
    }
    let m = metrics(&c, &server).await;
    assert_eq!(metric(&m, "flare:num_requests_running"), Some(1.0));
    assert!(metric(&m, "flare:kv_cache_used_blocks").unwrap() > 0.0);
    drop(r);
    wait_idle(&c, &server, Duration::from_secs(10)).await;
    let m = metrics(&c, &server).await;
    assert_eq!(metric(&m, "flare:request_aborted_total"), Some(1.0));
    assert!(
        metric(&m, "flare:generation_tokens_total").unwrap() < 100.0,
        "{m}"
    );
    assert!(server.stop().await);
}

/// A grammar that takes longer than `--grammar-compile-timeout` to compile is a 400 in the OpenAI
/// error shape, while a request already streaming goes on to its end undisturbed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_grammar_is_refused_while_others_stream() {
    let state = AppState::new(ServerConfig {
        served_model_names: vec![MODEL.into()],
        ..ServerConfig::default()
    });
    let args = EngineArgs {
        // No grammar compiles this fast: every uncached one times out.
        grammar_compile_timeout: Duration::from_micros(1),
        ..engine_args()
    };
    flare::server::load_into(&state, args).expect("model loads");
    let server = serve(state).await;
    let c = client();
    let mut streaming = c
        .post(server.url("/v1/chat/completions"))
        .json(&question(
            json!({"stream": true, "max_tokens": 64, "temperature": 0}),
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(streaming.status().as_u16(), 200);
    let mut before = String::from_utf8(streaming.chunk().await.unwrap().unwrap().to_vec()).unwrap();

    let properties: serde_json::Map<String, Value> = (0..200)
        .map(|i| {
            (
                format!("field_{i}"),
                json!({"type": "string", "pattern": "^[a-z]{3,9}$"}),
            )
        })
        .collect();
    let schema = json!({"type": "object", "properties": properties, "required": ["field_0"]});
    let (status, v) = post(
        &c,
        &server.url("/v1/chat/completions"),
        question(json!({
            "max_tokens": 8,
            "response_format": {"type": "json_schema", "json_schema": {"name": "wide", "schema": schema}},
        })),
    )
    .await;
    assert_eq!(status, 400, "{v}");
    let (message, kind, param) = error_of(&v);
    assert_eq!(kind, "invalid_request_error");
    assert_eq!(param, json!("response_format"));
    assert!(message.contains("took longer than"), "{message}");

    // The stream started before the refusal finishes normally after it.
    let mut after = String::new();
    while let Some(chunk) = streaming.chunk().await.unwrap() {
        after.push_str(std::str::from_utf8(&chunk).unwrap());
    }
    before.push_str(&after);
    let events = sse_data(&before);
    assert_eq!(events.last(), Some(&Value::String("[DONE]".into())));
    let finish = events
        .iter()
        .find_map(|e| e["choices"][0]["finish_reason"].as_str())
        .expect("a finish reason");
    assert!(finish == "length" || finish == "stop", "{finish}");
    assert!(
        after.contains("\"content\""),
        "tokens kept streaming after the 400: {after}"
    );
    wait_idle(&c, &server, Duration::from_secs(30)).await;
    server.stop().await;
}

/// A constraint holds for every one of `n` seeded choices, and logprobs come with the
/// constrained tokens (taken over the masked distribution, so each is a real probability).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn constraints_hold_for_every_choice_with_logprobs() {
    let schema = json!({
        "type": "object",
        "properties": {"city": {"type": "string", "maxLength": 16}, "rank": {"type": "integer", "minimum": 1, "maximum": 9}},
        "required": ["city", "rank"],
        "additionalProperties": false,
    });
    let v = call(
        "/v1/chat/completions",
        question(json!({
            "n": 3, "seed": 11, "temperature": 0.8, "max_tokens": 40,
            "logprobs": true, "top_logprobs": 2,
            "response_format": {"type": "json_schema", "json_schema": {"name": "c", "schema": schema}},
        })),
    )
    .await;
    let choices = v["choices"].as_array().unwrap();
    assert_eq!(choices.len(), 3);
    for c in choices {
        let text = c["message"]["content"].as_str().unwrap();
        let obj: Value = serde_json::from_str(text).unwrap_or_else(|e| panic!("{e}: {text}"));
        assert!(obj["city"].is_string() && obj["rank"].is_i64(), "{text}");
        assert_eq!(c["finish_reason"], "stop", "{text}");
        let lps = c["logprobs"]["content"].as_array().unwrap();
        assert!(!lps.is_empty());
        for lp in lps {
            let p = lp["logprob"].as_f64().unwrap();
            assert!(p <= 0.0 && p.is_finite(), "{lp}");
        }
    }
}

/// `--kv-cache-dtype fp16` through the real server: the greedy answer is still right, the
/// metrics report the 16-bit cache (half the bytes per token, twice the tokens), and the
/// request's blocks are free afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fp16_kv_cache_serves_and_reports_itself() {
    let state = AppState::new(ServerConfig {
        served_model_names: vec![MODEL.into()],
        ..ServerConfig::default()
    });
    let args = EngineArgs {
        kv_cache_dtype: flare::kv::KvCacheDtype::Fp16,
        ..engine_args()
    };
    flare::server::load_into(&state, args).expect("model loads");
    let engine = state.engine().unwrap().clone();
    let server = serve(state).await;
    let (s, v) = post(
        &client(),
        &server.url("/v1/chat/completions"),
        question(json!({"max_tokens": 30, "temperature": 0})),
    )
    .await;
    assert_eq!(s, 200, "{v}");
    let text = v["choices"][0]["message"]["content"].as_str().unwrap();
    assert!(text.contains("Paris"), "{text:?}");
    let m = metrics(&client(), &server).await;
    // SmolLM2: 30 layers, K and V, 3 KV heads of 64, 2 bytes each.
    assert_eq!(
        metric(&m, "flare:kv_cache_bytes_per_token"),
        Some(30.0 * 2.0 * 3.0 * 64.0 * 2.0),
        "{m}"
    );
    assert_eq!(metric(&m, "flare:kv_cache_capacity_gain"), Some(2.0), "{m}");
    assert!(server.stop().await);
    // Stats are published after a step: read them once the engine has stopped.
    let stats = tokio::task::spawn_blocking(move || {
        engine.shutdown();
        engine.stats()
    })
    .await
    .unwrap();
    assert_eq!(
        stats.num_blocks, stats.num_free_blocks,
        "blocks left in use"
    );
}
