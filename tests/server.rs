//! The OpenAI-compatible server through real HTTP on loopback, over the MockRunner "alphabet"
//! model (see tests/common): every endpoint, request field and response shape (limits and
//! failures: tests/server_limits.rs).

mod common;

use std::time::Duration;

use common::*;
use flare::server::{AppState, ServerConfig};
use serde_json::{json, Value};

fn content(v: &Value, i: usize) -> &str {
    v["choices"][i]["message"]["content"].as_str().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_is_503_until_the_model_is_loaded() {
    let state = AppState::new(config());
    let server = serve(state.clone()).await;
    let c = client();
    assert_eq!(get(&c, &server.url("/health")).await.0, 503);
    let (s, v) = post(
        &c,
        &server.url("/v1/chat/completions"),
        chat_body(json!({})),
    )
    .await;
    assert_eq!(s, 503);
    assert_eq!(v["error"]["code"], "model_not_ready");
    let (engine, tok) = mock_engine(&MockOpts::default());
    state.set_loaded(engine, tok, 256, "mock".into());
    // The engine thread marks itself alive when its loop starts, just after the handle returns.
    let start = std::time::Instant::now();
    while get(&c, &server.url("/health")).await.0 != 200 {
        assert!(start.elapsed() < Duration::from_secs(5), "never healthy");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let (s, _) = post(
        &c,
        &server.url("/v1/chat/completions"),
        chat_body(json!({})),
    )
    .await;
    assert_eq!(s, 200);
    assert!(server.stop().await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn models_lists_the_served_names() {
    let server = mock_server(config(), MockOpts::default()).await;
    let c = client();
    let (s, body) = get(&c, &server.url("/v1/models")).await;
    assert_eq!(s, 200);
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["object"], "list");
    let ids: Vec<&str> = v["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["mock", "mock-alias"]);
    assert_eq!(v["data"][0]["object"], "model");
    assert_eq!(v["data"][0]["owned_by"], "flare");
    assert_eq!(v["data"][0]["max_model_len"], 256);
    assert_eq!(v["data"][0]["architecture"], "mock");
    let (s, body) = get(&c, &server.url("/v1/models/mock-alias")).await;
    assert_eq!(s, 200, "{body}");
    let (s, body) = get(&c, &server.url("/v1/models/nope")).await;
    assert_eq!(s, 404, "{body}");
    // The alias works as `model`; an unknown name is a 404 with OpenAI's code.
    let (s, v) = post(
        &c,
        &server.url("/v1/chat/completions"),
        chat_body(json!({"model": "mock-alias"})),
    )
    .await;
    assert_eq!(s, 200);
    assert_eq!(v["model"], "mock", "responses carry the first served name");
    let (s, v) = post(
        &c,
        &server.url("/v1/chat/completions"),
        chat_body(json!({"model": "gpt-4"})),
    )
    .await;
    assert_eq!(s, 404);
    assert_eq!(v["error"]["code"], "model_not_found");
    assert!(error_of(&v).0.contains("gpt-4"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chat_completion_has_openai_shape_and_usage() {
    let server = mock_server(config(), MockOpts::default()).await;
    let c = client();
    let (s, v) = post(
        &c,
        &server.url("/v1/chat/completions"),
        chat_body(json!({})),
    )
    .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["object"], "chat.completion");
    assert!(v["id"].as_str().unwrap().starts_with("chatcmpl-"));
    assert!(v["created"].as_u64().unwrap() > 1_600_000_000);
    assert_eq!(v["choices"][0]["index"], 0);
    assert_eq!(v["choices"][0]["message"]["role"], "assistant");
    assert_eq!(content(&v, 0), ALPHABET);
    assert_eq!(v["choices"][0]["finish_reason"], "stop");
    assert!(v["choices"][0]["logprobs"].is_null());
    // The prompt as /tokenize counts it; 26 letters and the EOS.
    let (_, t) = post(
        &c,
        &server.url("/tokenize"),
        json!({"messages": [{"role": "user", "content": "Say the alphabet."}]}),
    )
    .await;
    let u = &v["usage"];
    assert_eq!(u["prompt_tokens"], t["count"]);
    assert_eq!(u["completion_tokens"], 27);
    assert_eq!(
        u["total_tokens"].as_u64().unwrap(),
        t["count"].as_u64().unwrap() + 27
    );
    assert_eq!(u["prompt_tokens_details"]["cached_tokens"], 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repeated_prompt_reports_cached_tokens() {
    let server = mock_server(config(), MockOpts::default()).await;
    let c = client();
    let long = "a fairly long system prompt that spans more than one KV block of sixteen tokens";
    let body = json!({"messages": [{"role": "system", "content": long}, {"role": "user", "content": "go"}], "max_tokens": 3});
    let (_, first) = post(&c, &server.url("/v1/chat/completions"), body.clone()).await;
    let (_, second) = post(&c, &server.url("/v1/chat/completions"), body).await;
    assert_eq!(first["usage"]["prompt_tokens_details"]["cached_tokens"], 0);
    let cached = second["usage"]["prompt_tokens_details"]["cached_tokens"]
        .as_u64()
        .unwrap();
    assert!(cached >= BLOCK_SIZE as u64, "{second}");
    assert_eq!(cached % BLOCK_SIZE as u64, 0);
    let m = metrics(&c, &server).await;
    assert!(metric(&m, "flare:prefix_cache_hits_total").unwrap() >= cached as f64);
    assert!(metric(&m, "flare:prefix_cache_hit_rate").unwrap() > 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_roles_and_content_parts() {
    let server = mock_server(config(), MockOpts::default()).await;
    let c = client();
    let url = server.url("/v1/chat/completions");
    let parts = json!({"messages": [
        {"role": "system", "content": "Be brief."},
        {"role": "developer", "content": [{"type": "text", "text": "Really brief."}]},
        {"role": "user", "content": [{"type": "text", "text": "Hi"}, {"type": "text", "text": "there"}], "name": "bob"},
        {"role": "assistant", "content": null},
        {"role": "user", "content": "Now the alphabet"}
    ], "max_tokens": 2});
    let (s, v) = post(&c, &url, parts.clone()).await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(content(&v, 0), "ab");
    // Parts are joined by newlines, developer is system: same prompt as the rendered text.
    let (_, t) = post(&c, &server.url("/tokenize"), parts).await;
    assert_eq!(v["usage"]["prompt_tokens"], t["count"]);
    let (_, d) = post(
        &c,
        &server.url("/detokenize"),
        json!({"tokens": t["tokens"]}),
    )
    .await;
    let text = d["prompt"].as_str().unwrap();
    assert!(
        text.contains("<|im_start|>system\nReally brief.<|im_end|>"),
        "{text}"
    );
    assert!(text.contains("Hi\nthere"), "{text}");
    let (s, v) = post(
        &c,
        &url,
        json!({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]}),
    )
    .await;
    assert_eq!(s, 400);
    assert!(error_of(&v).0.contains("image_url"), "{v}");
    assert_eq!(error_of(&v).2, "messages[0].content");
    let (s, v) = post(&c, &url, json!({"messages": []})).await;
    assert_eq!(s, 400, "{v}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chat_stream_chunks_match_the_whole_response() {
    let server = mock_server(config(), MockOpts::default()).await;
    let c = client();
    let url = server.url("/v1/chat/completions");
    let (_, whole) = post(&c, &url, chat_body(json!({"max_tokens": 10}))).await;
    let events = post_stream(
        &c,
        &url,
        chat_body(
            json!({"max_tokens": 10, "stream": true, "stream_options": {"include_usage": true}}),
        ),
    )
    .await;
    assert_eq!(events.last().unwrap(), "[DONE]");
    let chunks = &events[..events.len() - 1];
    let id = chunks[0]["id"].as_str().unwrap();
    for ch in chunks {
        assert_eq!(ch["object"], "chat.completion.chunk");
        assert_eq!(ch["id"], id);
        assert_eq!(ch["model"], "mock");
        assert!(
            ch.get("usage").is_some(),
            "usage key present (null) with include_usage"
        );
    }
    assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
    let (usage_chunk, deltas) = chunks.split_last().unwrap();
    assert_eq!(usage_chunk["choices"].as_array().unwrap().len(), 0);
    for k in ["prompt_tokens", "completion_tokens", "total_tokens"] {
        assert_eq!(usage_chunk["usage"][k], whole["usage"][k], "{k}");
    }
    // The same prompt again: its full blocks come from the prefix cache.
    assert_eq!(
        usage_chunk["usage"]["prompt_tokens_details"]["cached_tokens"],
        32
    );
    let text: String = deltas
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
        .collect();
    assert_eq!(text, content(&whole, 0));
    let last = deltas.last().unwrap();
    assert_eq!(last["choices"][0]["finish_reason"], "length");
    assert!(deltas[..deltas.len() - 1]
        .iter()
        .all(|c| c["choices"][0]["finish_reason"].is_null()));
    assert!(deltas.iter().all(|c| c["usage"].is_null()));

    // Without include_usage: no usage key at all and no usage chunk.
    let events = post_stream(
        &c,
        &url,
        chat_body(json!({"max_tokens": 3, "stream": true})),
    )
    .await;
    assert!(events[..events.len() - 1]
        .iter()
        .all(|c| c.get("usage").is_none() && !c["choices"].as_array().unwrap().is_empty()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn length_limits_stop_strings_and_eos_controls() {
    let server = mock_server(config(), MockOpts::default()).await;
    let c = client();
    let url = server.url("/v1/chat/completions");
    let cases = [
        (json!({"max_tokens": 5}), "abcde", "length"),
        (
            json!({"max_completion_tokens": 4, "max_tokens": 9}),
            "abcd",
            "length",
        ),
        (json!({"stop": "e"}), "abcd", "stop"),
        (json!({"stop": ["xyz", "gh", "q"]}), "abcdef", "stop"),
        (json!({"stop": []}), ALPHABET, "stop"),
        // Past the EOS the toy model starts over at `a`.
        (
            json!({"ignore_eos": true, "max_tokens": 29}),
            "abcdefghijklmnopqrstuvwxyz<|im_end|>ab",
            "length",
        ),
        (
            json!({"min_tokens": 28, "max_tokens": 28}),
            "abcdefghijklmnopqrstuvwxyz<|im_end|>a",
            "length",
        ),
    ];
    for (extra, want, reason) in cases {
        let (s, v) = post(&c, &url, chat_body(extra.clone())).await;
        assert_eq!(s, 200, "{extra}: {v}");
        assert_eq!(content(&v, 0), want.replace("<|im_end|>", ""), "{extra}");
        assert_eq!(v["choices"][0]["finish_reason"], reason, "{extra}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_openai_and_vllm_sampling_field_is_accepted() {
    let server = mock_server(config(), MockOpts::default()).await;
    let c = client();
    let body = chat_body(json!({
        "max_tokens": 3, "temperature": 0.7, "top_p": 0.9, "top_k": 40, "min_p": 0.05, "n": 1,
        "seed": 1234, "presence_penalty": 0.5, "frequency_penalty": 0.5, "repetition_penalty": 1.1,
        "logit_bias": {"100": 5, "101": -100}, "logprobs": true, "top_logprobs": 2,
        "stream": false, "stream_options": {"include_usage": true}, "ignore_eos": false,
        "min_tokens": 1, "priority": 0, "user": "u-1", "stop_token_ids": [7],
        // What clients send that flare does not act on: ignored, never a 422.
        "response_format": {"type": "text"},
        "metadata": {"a": "b"}, "store": false, "service_tier": "auto", "best_of": 1,
        "some_future_field": {"x": [1, 2]}, "temperature_": null
    }));
    let (s, v) = post(&c, &server.url("/v1/chat/completions"), body).await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(content(&v, 0), "abc");
    // The mock computes no logprobs; the field still has chat's shape.
    assert!(v["choices"][0]["logprobs"]["content"].is_array(), "{v}");
    // Nulls are the same as absent.
    let body = chat_body(
        json!({"max_tokens": null, "temperature": null, "stop": null, "n": null,
        "seed": null, "logit_bias": null, "stream": null, "stream_options": null}),
    );
    let (s, v) = post(&c, &server.url("/v1/chat/completions"), body).await;
    assert_eq!(s, 200, "{v}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn n_choices_non_stream_and_stream() {
    let server = mock_server(config(), MockOpts::default()).await;
    let c = client();
    let url = server.url("/v1/chat/completions");
    let (s, v) = post(
        &c,
        &url,
        chat_body(json!({"n": 3, "max_tokens": 4, "seed": 5})),
    )
    .await;
    assert_eq!(s, 200, "{v}");
    let choices = v["choices"].as_array().unwrap();
    assert_eq!(choices.len(), 3);
    for (i, ch) in choices.iter().enumerate() {
        assert_eq!(ch["index"], i);
        assert_eq!(ch["message"]["content"], "abcd");
    }
    assert_eq!(v["usage"]["completion_tokens"], 12);
    let (_, one) = post(&c, &url, chat_body(json!({"max_tokens": 4}))).await;
    assert_eq!(v["usage"]["prompt_tokens"], one["usage"]["prompt_tokens"]);

    let events = post_stream(
        &c,
        &url,
        chat_body(json!({"n": 2, "max_tokens": 4, "stream": true, "stream_options": {"include_usage": true}})),
    )
    .await;
    let mut texts = [String::new(), String::new()];
    let mut finished = [0, 0];
    let mut roles = [0, 0];
    for ch in &events[..events.len() - 2] {
        let c0 = &ch["choices"][0];
        let i = c0["index"].as_u64().unwrap() as usize;
        texts[i] += c0["delta"]["content"].as_str().unwrap_or("");
        roles[i] += c0["delta"]["role"].is_string() as usize;
        finished[i] += c0["finish_reason"].is_string() as usize;
    }
    assert_eq!(texts, ["abcd", "abcd"]);
    assert_eq!(roles, [1, 1]);
    assert_eq!(finished, [1, 1]);
    assert_eq!(events[events.len() - 2]["usage"]["completion_tokens"], 8);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn completions_accept_every_prompt_form_and_echo() {
    let server = mock_server(config(), MockOpts::default()).await;
    let c = client();
    let url = server.url("/v1/completions");
    let (s, v) = post(&c, &url, json!({"model": "mock", "prompt": "count: x"})).await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["object"], "text_completion");
    assert!(v["id"].as_str().unwrap().starts_with("cmpl-"));
    assert_eq!(v["choices"][0]["text"], "yz");
    assert_eq!(v["choices"][0]["finish_reason"], "stop");
    assert_eq!(v["usage"]["prompt_tokens"], 8);
    assert_eq!(v["usage"]["completion_tokens"], 3);

    // Two prompts, n = 2: choice i is prompt i / n.
    let (s, v) = post(
        &c,
        &url,
        json!({"prompt": ["x", "v"], "n": 2, "max_tokens": 2}),
    )
    .await;
    assert_eq!(s, 200, "{v}");
    let texts: Vec<&str> = v["choices"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["text"].as_str().unwrap())
        .collect();
    assert_eq!(texts, ["yz", "yz", "wx", "wx"]);
    assert_eq!(v["usage"]["prompt_tokens"], 2);
    assert_eq!(v["usage"]["completion_tokens"], 8);

    // Token ids, and lists of them.
    let (s, v) = post(
        &c,
        &url,
        json!({"prompt": [byte_id(b'm')], "max_tokens": 3}),
    )
    .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["choices"][0]["text"], "nop");
    let (s, v) = post(
        &c,
        &url,
        json!({"prompt": [[byte_id(b'a')], [byte_id(b'q'), byte_id(b'r')]], "max_tokens": 2}),
    )
    .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["choices"][0]["text"], "bc");
    assert_eq!(v["choices"][1]["text"], "st");
    assert_eq!(v["usage"]["prompt_tokens"], 3);

    // echo puts the prompt in front, in whole responses and streams.
    let (_, v) = post(&c, &url, json!({"prompt": "go: x", "echo": true})).await;
    assert_eq!(v["choices"][0]["text"], "go: xyz");
    let events = post_stream(
        &c,
        &url,
        json!({"prompt": "go: x", "echo": true, "stream": true, "logprobs": 0}),
    )
    .await;
    let text: String = events[..events.len() - 1]
        .iter()
        .map(|e| e["choices"][0]["text"].as_str().unwrap())
        .collect();
    assert_eq!(text, "go: xyz");
    // Echoed prompt tokens come with null logprobs and offsets into the text.
    let lp = &events[0]["choices"][0]["logprobs"];
    assert_eq!(lp["tokens"].as_array().unwrap().len(), 5, "{lp}");
    assert!(lp["token_logprobs"][0].is_null());
    assert_eq!(lp["text_offset"], json!([0, 1, 2, 3, 4]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn completion_stream_with_usage() {
    let server = mock_server(config(), MockOpts::default()).await;
    let c = client();
    let events = post_stream(
        &c,
        &server.url("/v1/completions"),
        json!({"prompt": "t", "stream": true, "stream_options": {"include_usage": true}}),
    )
    .await;
    assert_eq!(events.last().unwrap(), "[DONE]");
    let usage = &events[events.len() - 2];
    assert_eq!(usage["choices"], json!([]));
    assert_eq!(usage["usage"]["completion_tokens"], 7);
    let chunks = &events[..events.len() - 2];
    let text: String = chunks
        .iter()
        .map(|e| e["choices"][0]["text"].as_str().unwrap())
        .collect();
    assert_eq!(text, "uvwxyz");
    assert!(chunks.iter().all(|e| e["object"] == "text_completion"));
    assert_eq!(
        chunks.last().unwrap()["choices"][0]["finish_reason"],
        "stop"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokenize_and_detokenize_round_trip() {
    let server = mock_server(config(), MockOpts::default()).await;
    let c = client();
    let (s, v) = post(
        &c,
        &server.url("/tokenize"),
        json!({"prompt": "hello world"}),
    )
    .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["max_model_len"], 256);
    let n = v["count"].as_u64().unwrap();
    assert_eq!(v["tokens"].as_array().unwrap().len() as u64, n);
    let (s, d) = post(
        &c,
        &server.url("/detokenize"),
        json!({"tokens": v["tokens"]}),
    )
    .await;
    assert_eq!(s, 200);
    assert_eq!(d["prompt"], "hello world");
    let (s, _) = post(&c, &server.url("/tokenize"), json!({})).await;
    assert_eq!(s, 400);
    let (s, _) = post(
        &c,
        &server.url("/detokenize"),
        json!({"tokens": [1_000_000]}),
    )
    .await;
    assert_eq!(s, 400);
    let (s, _) = post(
        &c,
        &server.url("/tokenize"),
        json!({"model": "other", "prompt": "x"}),
    )
    .await;
    assert_eq!(s, 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openapi_document_describes_the_endpoints() {
    let server = mock_server(config(), MockOpts::default()).await;
    let c = client();
    let (s, body) = get(&c, &server.url("/openapi.json")).await;
    assert_eq!(s, 200);
    let v: Value = serde_json::from_str(&body).unwrap();
    assert!(v["openapi"].as_str().unwrap().starts_with("3."));
    for p in [
        "/v1/chat/completions",
        "/v1/completions",
        "/v1/models",
        "/tokenize",
        "/detokenize",
        "/health",
        "/metrics",
    ] {
        assert!(v["paths"].get(p).is_some(), "{p} missing");
    }
    let schemas = &v["components"]["schemas"];
    for s in [
        "ChatCompletionRequest",
        "ChatCompletionResponse",
        "CompletionRequest",
        "ErrorResponse",
        "Usage",
    ] {
        assert!(schemas.get(s).is_some(), "schema {s} missing");
    }
    // No keys configured: no security declared (tests/server_keys.rs checks the keyed case).
    assert!(v["components"]["securitySchemes"].get("bearer").is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_tokens_and_latencies() {
    let server = mock_server(config(), MockOpts::default()).await;
    let c = client();
    let (_, a) = post(&c, &server.url("/v1/completions"), json!({"prompt": "x"})).await;
    let (_, b) = post(
        &c,
        &server.url("/v1/chat/completions"),
        chat_body(json!({"max_tokens": 5})),
    )
    .await;
    let m = metrics(&c, &server).await;
    let prompt = a["usage"]["prompt_tokens"].as_f64().unwrap()
        + b["usage"]["prompt_tokens"].as_f64().unwrap();
    assert_eq!(metric(&m, "flare:prompt_tokens_total"), Some(prompt));
    assert_eq!(metric(&m, "flare:generation_tokens_total"), Some(3.0 + 5.0));
    assert_eq!(
        metric(&m, "flare:time_to_first_token_seconds_count"),
        Some(2.0)
    );
    assert_eq!(
        metric(&m, "flare:e2e_request_latency_seconds_count"),
        Some(2.0)
    );
    assert_eq!(
        metric(&m, "flare:time_per_output_token_seconds_count"),
        Some(2.0)
    );
    assert!(
        m.contains("flare:time_to_first_token_seconds_bucket{model_name=\"mock\",le=\"0.001\"}")
    );
    assert!(
        m.contains("flare:request_success_total{model_name=\"mock\",finished_reason=\"stop\"} 1"),
        "{m}"
    );
    assert!(
        m.contains("flare:request_success_total{model_name=\"mock\",finished_reason=\"length\"} 1"),
        "{m}"
    );
    for name in [
        "flare:num_requests_running",
        "flare:num_requests_waiting",
        "flare:kv_cache_usage_perc",
        "flare:kv_cache_used_blocks",
        "flare:prefix_cache_queries_total",
        "flare:prefix_cache_hits_total",
        "flare:prefix_cache_hit_rate",
        "flare:num_preemptions_total",
    ] {
        assert!(metric(&m, name).is_some(), "{name} missing");
    }
    assert_eq!(metric(&m, "flare:kv_cache_total_blocks"), Some(512.0));
    assert!(m.contains("# HELP flare:num_requests_running"));
    assert!(m.contains("# TYPE flare:e2e_request_latency_seconds histogram"));
}

/// `tools` and `tool_choice` are checked against each other and the model: each mistake is a
/// 400 in OpenAI's format naming the field; `auto` needs a parser (flag or template).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tool_choice_is_checked() {
    let tools =
        json!([{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}]);
    let server = mock_server(config(), MockOpts::default()).await;
    let c = client();
    let url = server.url("/v1/chat/completions");
    let cases = [
        (
            json!({"tool_choice": "required"}),
            "tool_choice",
            "needs `tools`",
        ),
        (
            json!({"tools": tools, "tool_choice": {"type": "function", "function": {"name": "g"}}}),
            "tool_choice",
            "`g`",
        ),
        (
            json!({"tools": tools, "tool_choice": "sometimes"}),
            "tool_choice",
            "sometimes",
        ),
        (json!({"tools": tools}), "tool_choice", "--tool-call-parser"),
        (
            json!({"tools": [{"type": "retrieval"}]}),
            "tools[0].type",
            "function",
        ),
        (
            json!({"tools": [{"type": "function", "function": {"name": "f", "parameters": 3}}]}),
            "tools[0].function.parameters",
            "schema",
        ),
        (
            json!({"tools": [tools[0], tools[0]], "tool_choice": "required"}),
            "tools[1].function.name",
            "Two tools",
        ),
    ];
    for (extra, param, says) in cases {
        let (s, v) = post(&c, &url, chat_body(extra.clone())).await;
        assert_eq!(s, 400, "{extra}: {v}");
        let (message, kind, p) = error_of(&v);
        assert_eq!(
            (kind, p.as_str().unwrap()),
            ("invalid_request_error", param),
            "{extra}"
        );
        assert!(message.contains(says), "{extra}: {message}");
    }
    // `none` renders no tools and parses nothing.
    let (s, v) = post(
        &c,
        &url,
        chat_body(json!({"tools": tools, "tool_choice": "none", "max_tokens": 3})),
    )
    .await;
    assert_eq!((s, content(&v, 0)), (200, "abc"), "{v}");

    // With a parser, `auto` is served: plain text stays content, no calls, finish `stop`.
    let server = mock_server(
        ServerConfig {
            tool_call_parser: Some(flare::tools::ParserKind::Hermes),
            ..config()
        },
        MockOpts::default(),
    )
    .await;
    let url = server.url("/v1/chat/completions");
    let (s, v) = post(
        &c,
        &url,
        chat_body(json!({"tools": tools, "max_tokens": 3})),
    )
    .await;
    assert_eq!((s, content(&v, 0)), (200, "abc"), "{v}");
    assert!(
        v["choices"][0]["message"].get("tool_calls").is_none(),
        "{v}"
    );
    let events = post_stream(
        &c,
        &url,
        chat_body(json!({"tools": tools, "max_tokens": 3, "stream": true})),
    )
    .await;
    let text: String = events
        .iter()
        .filter_map(|e| e["choices"][0]["delta"]["content"].as_str())
        .collect();
    assert_eq!(text, "abc");
}
