//! The OpenAI-compatible server through real HTTP on loopback, over the MockRunner "alphabet"
//! model (see tests/common): every endpoint, request field, response shape and error status.

mod common;

use std::time::Duration;

use common::*;
use flare::server::{AppState, ServerConfig};
use serde_json::{json, Value};

fn chat_body(extra: Value) -> Value {
    let mut body = json!({
        "model": "mock",
        "messages": [{"role": "user", "content": "Say the alphabet."}],
    });
    body.as_object_mut()
        .unwrap()
        .extend(extra.as_object().unwrap().clone());
    body
}

fn error_of(v: &Value) -> (&str, &str, Value) {
    let e = &v["error"];
    (
        e["message"].as_str().expect("error.message"),
        e["type"].as_str().expect("error.type"),
        e["param"].clone(),
    )
}

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
    state.set_loaded(engine, tok, 256);
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
        "min_tokens": 1, "priority": 3, "user": "u-1", "stop_token_ids": [7],
        // What clients send that flare does not act on: ignored, never a 422.
        "tools": [{"type": "function", "function": {"name": "f", "parameters": {}}}],
        "tool_choice": "auto", "response_format": {"type": "text"}, "parallel_tool_calls": false,
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
async fn bad_input_gets_openai_errors_never_a_500() {
    let server = mock_server(config(), MockOpts::default()).await;
    let c = client();
    let chat = server.url("/v1/chat/completions");
    let cmpl = server.url("/v1/completions");
    let cases: Vec<(&str, Value, &str)> = vec![
        (&chat, json!({"messages": "hi"}), "messages"),
        (&chat, json!({}), "messages"),
        (
            &chat,
            chat_body(json!({"temperature": "hot"})),
            "temperature",
        ),
        (&chat, chat_body(json!({"temperature": -1})), "temperature"),
        (&chat, chat_body(json!({"top_p": 1.5})), "top_p"),
        (&chat, chat_body(json!({"top_k": -2})), "top_k"),
        (&chat, chat_body(json!({"min_p": 2})), "min_p"),
        (&chat, chat_body(json!({"n": 0})), "n"),
        (&chat, chat_body(json!({"max_tokens": 0})), "max_tokens"),
        (&chat, chat_body(json!({"max_tokens": -5})), "max_tokens"),
        (
            &chat,
            chat_body(json!({"presence_penalty": 9})),
            "presence_penalty",
        ),
        (
            &chat,
            chat_body(json!({"frequency_penalty": -9})),
            "frequency_penalty",
        ),
        (
            &chat,
            chat_body(json!({"repetition_penalty": 0})),
            "repetition_penalty",
        ),
        (
            &chat,
            chat_body(json!({"logit_bias": {"x": 1}})),
            "logit_bias",
        ),
        (
            &chat,
            chat_body(json!({"logit_bias": {"999999": 1}})),
            "logit_bias",
        ),
        (
            &chat,
            chat_body(json!({"logprobs": true, "top_logprobs": 21})),
            "top_logprobs",
        ),
        (&chat, chat_body(json!({"stop": 5})), "stop"),
        (
            &chat,
            chat_body(json!({"min_tokens": 9, "max_tokens": 3})),
            "min_tokens",
        ),
        (&cmpl, json!({"prompt": [999999]}), "prompt"),
        (&cmpl, json!({"prompt": []}), "prompt"),
        (&cmpl, json!({"prompt": ""}), "prompt"),
        (&cmpl, json!({"prompt": [-1]}), "prompt"),
        (&cmpl, json!({"prompt": "x", "logprobs": 50}), "logprobs"),
        (&cmpl, json!({"prompt": {"a": 1}}), "prompt"),
    ];
    for (url, body, param) in cases {
        let (s, v) = post(&c, url, body.clone()).await;
        assert_eq!(s, 400, "{body}: {v}");
        let (msg, kind, p) = error_of(&v);
        assert_eq!(kind, "invalid_request_error", "{body}: {v}");
        assert!(!msg.is_empty());
        assert_eq!(p, param, "{body}: {v}");
    }
    // Malformed JSON: 400, not axum's 422 or a plain-text body.
    for raw in ["{not json", "", "[1, 2]", "null"] {
        let r = c.post(&chat).body(raw).send().await.unwrap();
        assert_eq!(r.status().as_u16(), 400, "{raw:?}");
        let v: Value = r.json().await.unwrap();
        assert_eq!(v["error"]["type"], "invalid_request_error", "{raw:?}");
    }
    // Unknown route: a JSON 404.
    let (s, v) = post(&c, &server.url("/v1/embeddings"), json!({})).await;
    assert_eq!(s, 404);
    assert!(v["error"]["message"]
        .as_str()
        .unwrap()
        .contains("/v1/embeddings"));
    // The engine is unharmed.
    let (s, _) = post(&c, &chat, chat_body(json!({"max_tokens": 1}))).await;
    assert_eq!(s, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn context_length_exceeded_names_both_numbers() {
    let server = mock_server(config(), MockOpts::default()).await;
    let c = client();
    let long = "z".repeat(250);
    let (s, v) = post(
        &c,
        &server.url("/v1/completions"),
        json!({"prompt": long, "max_tokens": 10}),
    )
    .await;
    assert_eq!(s, 400);
    let msg = error_of(&v).0;
    assert!(
        msg.contains("256") && msg.contains("260") && msg.contains("250"),
        "{msg}"
    );
    assert_eq!(v["error"]["code"], "context_length_exceeded");
    // Without max_tokens the rest of the context is the budget; a prompt filling it is refused.
    let (s, v) = post(
        &c,
        &server.url("/v1/completions"),
        json!({"prompt": "z".repeat(256)}),
    )
    .await;
    assert_eq!(s, 400);
    assert!(error_of(&v).0.contains("256"), "{v}");
    let (s, v) = post(
        &c,
        &server.url("/v1/completions"),
        json!({"prompt": "z".repeat(250), "ignore_eos": true}),
    )
    .await;
    assert_eq!(s, 200);
    assert_eq!(v["usage"]["completion_tokens"], 6);
    assert_eq!(v["choices"][0]["finish_reason"], "length");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_key_guards_v1_only() {
    let server = mock_server(
        ServerConfig {
            api_key: Some("sk-test".into()),
            ..config()
        },
        MockOpts::default(),
    )
    .await;
    let c = client();
    let url = server.url("/v1/chat/completions");
    for auth in [
        None,
        Some("Bearer wrong"),
        Some("sk-test"),
        Some("Basic sk-test"),
    ] {
        let mut r = c.post(&url).json(&chat_body(json!({})));
        if let Some(a) = auth {
            r = r.header("authorization", a);
        }
        let r = r.send().await.unwrap();
        assert_eq!(r.status().as_u16(), 401, "{auth:?}");
        let v: Value = r.json().await.unwrap();
        assert_eq!(v["error"]["code"], "invalid_api_key");
    }
    let r = c
        .post(&url)
        .bearer_auth("sk-test")
        .json(&chat_body(json!({"max_tokens": 1})))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let r = c.get(server.url("/v1/models")).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 401);
    // Operational endpoints stay open, as in vLLM.
    assert_eq!(get(&c, &server.url("/health")).await.0, 200);
    assert_eq!(get(&c, &server.url("/metrics")).await.0, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn body_over_the_limit_is_413() {
    let server = mock_server(
        ServerConfig {
            max_request_bytes: 1024,
            ..config()
        },
        MockOpts::default(),
    )
    .await;
    let c = client();
    let (s, v) = post(
        &c,
        &server.url("/v1/completions"),
        json!({"prompt": "x".repeat(2000)}),
    )
    .await;
    assert_eq!(s, 413, "{v}");
    assert_eq!(v["error"]["code"], "request_too_large");
    let (s, _) = post(&c, &server.url("/v1/completions"), json!({"prompt": "x"})).await;
    assert_eq!(s, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_queue_is_429() {
    let server = mock_server(
        ServerConfig {
            max_queue_len: 1,
            ..config()
        },
        MockOpts {
            max_num_seqs: 1,
            step_delay: Duration::from_millis(5),
            ..MockOpts::default()
        },
    )
    .await;
    let c = client();
    let url = server.url("/v1/completions");
    let long = json!({"prompt": "x", "max_tokens": 200, "ignore_eos": true, "stream": true});
    // Two in flight (one running, one queued) fill max_num_seqs + max_queue_len.
    let a = c.post(&url).json(&long).send().await.unwrap();
    let b = c.post(&url).json(&long).send().await.unwrap();
    assert_eq!((a.status().as_u16(), b.status().as_u16()), (200, 200));
    let (s, v) = post(&c, &url, json!({"prompt": "x", "max_tokens": 1})).await;
    assert_eq!(s, 429, "{v}");
    assert_eq!(v["error"]["code"], "rate_limit_exceeded");
    // n counts every choice.
    drop(b);
    tokio::time::sleep(Duration::from_millis(100)).await;
    let (s, _) = post(&c, &url, json!({"prompt": "x", "max_tokens": 1, "n": 2})).await;
    assert_eq!(s, 429);
    let (s, _) = post(&c, &url, json!({"prompt": "x", "max_tokens": 1})).await;
    assert_eq!(s, 200);
    drop(a);
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
    assert!(v["components"]["securitySchemes"].get("bearer").is_some());
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_disconnect_mid_stream_frees_blocks() {
    let step = Duration::from_millis(10);
    let server = mock_server(
        config(),
        MockOpts {
            step_delay: step,
            ..MockOpts::default()
        },
    )
    .await;
    let c = client();
    let body = chat_body(json!({"max_tokens": 200, "ignore_eos": true, "stream": true, "n": 2}));
    let mut r = c
        .post(server.url("/v1/chat/completions"))
        .json(&body)
        .send()
        .await
        .unwrap();
    let mut seen = 0;
    while seen < 6 {
        let chunk = r.chunk().await.unwrap().expect("stream still open");
        seen += String::from_utf8_lossy(&chunk).matches("data: ").count();
    }
    let m = metrics(&c, &server).await;
    assert_eq!(metric(&m, "flare:num_requests_running"), Some(2.0), "{m}");
    assert!(metric(&m, "flare:kv_cache_used_blocks").unwrap() > 0.0);
    drop(r);
    // The server notices at its next write (one step) and aborts at the engine's next step.
    let freed_in = wait_idle(&c, &server, Duration::from_secs(5)).await;
    eprintln!("blocks freed {freed_in:?} after the disconnect ({step:?} steps)");
    assert!(freed_in < step * 50, "took {freed_in:?}");
    let m = metrics(&c, &server).await;
    assert_eq!(metric(&m, "flare:request_aborted_total"), Some(2.0), "{m}");
    assert!(metric(&m, "flare:generation_tokens_total").unwrap() < 100.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_finishes_in_flight_streams_and_refuses_new_work() {
    let server = mock_server(
        config(),
        MockOpts {
            step_delay: Duration::from_millis(5),
            ..MockOpts::default()
        },
    )
    .await;
    let c = client();
    let body = json!({"prompt": "x", "max_tokens": 40, "ignore_eos": true, "stream": true});
    let mut r = c
        .post(server.url("/v1/completions"))
        .json(&body)
        .send()
        .await
        .unwrap();
    let first = r.chunk().await.unwrap().unwrap();
    assert!(String::from_utf8_lossy(&first).starts_with("data: "));
    let state = server.state.clone();
    let base = server.base.clone();
    let stopping = tokio::spawn(server.stop());
    tokio::time::sleep(Duration::from_millis(20)).await;
    assert!(!state.is_healthy());
    // The in-flight stream runs to its end.
    let mut rest = String::new();
    while let Some(chunk) = r.chunk().await.unwrap() {
        rest.push_str(&String::from_utf8_lossy(&chunk));
    }
    let events = sse_data(&rest);
    assert_eq!(events.last().unwrap(), "[DONE]");
    assert_eq!(
        events[events.len() - 2]["choices"][0]["finish_reason"],
        "length"
    );
    assert!(stopping.await.unwrap(), "drained in time");
    // Nothing listens any more.
    assert!(client().get(format!("{base}/health")).send().await.is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_gone_before_a_whole_response_aborts_too() {
    let server = mock_server(
        config(),
        MockOpts {
            step_delay: Duration::from_millis(10),
            ..MockOpts::default()
        },
    )
    .await;
    let c = client();
    let impatient = reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_millis(300))
        .build()
        .unwrap();
    let body = json!({"prompt": "x", "max_tokens": 200, "ignore_eos": true});
    let r = impatient
        .post(server.url("/v1/completions"))
        .json(&body)
        .send()
        .await;
    assert!(r.is_err(), "200 steps of 10 ms cannot finish in 300 ms");
    let freed_in = wait_idle(&c, &server, Duration::from_secs(5)).await;
    eprintln!("non-stream: blocks freed {freed_in:?} after the client timed out");
    let m = metrics(&c, &server).await;
    assert_eq!(metric(&m, "flare:request_aborted_total"), Some(1.0), "{m}");
}
