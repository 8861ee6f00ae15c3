//! The Responses and Anthropic Messages APIs (issue 15) over the alphabet mock: shapes, event
//! order, streamed == whole, the response store, stop sequences, errors in each API's shape,
//! `x-api-key`, count_tokens, `/v1/models` `context_length`, and the `max_tokens: 1` probe.

mod common;

use std::time::Duration;

use common::*;
use flare::server::ServerConfig;
use serde_json::{json, Value};

/// (event name, data) of an SSE body.
fn sse_events(body: &str) -> Vec<(String, Value)> {
    body.split("\n\n")
        .filter(|e| !e.trim().is_empty())
        .map(|ev| {
            let name = ev
                .lines()
                .find_map(|l| l.strip_prefix("event:"))
                .unwrap_or("")
                .trim()
                .to_string();
            let data = ev
                .lines()
                .find_map(|l| l.strip_prefix("data:"))
                .unwrap_or("")
                .trim();
            (name, serde_json::from_str(data).unwrap())
        })
        .collect()
}

async fn post_sse(c: &reqwest::Client, url: &str, body: Value) -> Vec<(String, Value)> {
    let r = c.post(url).json(&body).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 200);
    sse_events(&r.text().await.unwrap())
}

fn output_text(resp: &Value) -> String {
    resp["output"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|i| i["type"] == "message")
        .flat_map(|i| i["content"].as_array().unwrap().iter())
        .map(|c| c["text"].as_str().unwrap().to_string())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn responses_create_stream_store_and_continue() {
    let server = mock_server(config(), MockOpts::default()).await;
    let c = client();
    let url = server.url("/v1/responses");
    let (s, r) = post(
        &c,
        &url,
        json!({"model": "mock", "input": "Say the alphabet."}),
    )
    .await;
    assert_eq!(s, 200, "{r}");
    assert_eq!(r["object"], "response");
    assert_eq!(r["status"], "completed");
    assert_eq!(output_text(&r), ALPHABET);
    let id = r["id"].as_str().unwrap().to_string();
    assert!(id.starts_with("resp_"));
    let u = &r["usage"];
    assert_eq!(u["output_tokens"], 27, "26 letters and EOS");
    assert_eq!(
        u["total_tokens"].as_u64().unwrap(),
        u["input_tokens"].as_u64().unwrap() + 27
    );
    assert!(u["input_tokens_details"]["cached_tokens"].is_u64());

    // Streamed: the typed events in order, deltas equal to the whole text, and the final
    // object equal to the non-streamed one but for ids and usage's cached tokens.
    let evs = post_sse(
        &c,
        &url,
        json!({"input": "Say the alphabet.", "stream": true, "store": false}),
    )
    .await;
    let names: Vec<&str> = evs.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(
        names[..4],
        [
            "response.created",
            "response.in_progress",
            "response.output_item.added",
            "response.content_part.added"
        ]
    );
    assert_eq!(
        names[names.len() - 4..],
        [
            "response.output_text.done",
            "response.content_part.done",
            "response.output_item.done",
            "response.completed"
        ]
    );
    for (i, (name, data)) in evs.iter().enumerate() {
        assert_eq!(data["type"], name.as_str());
        assert_eq!(data["sequence_number"], i);
    }
    let deltas: String = evs
        .iter()
        .filter(|(n, _)| n == "response.output_text.delta")
        .map(|(_, d)| d["delta"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(deltas, ALPHABET);
    let done = &evs.last().unwrap().1["response"];
    assert_eq!(output_text(done), ALPHABET);
    assert_eq!(done["status"], "completed");
    assert_eq!(done["usage"]["output_tokens"], 27);
    // Not stored.
    let (s, _) = get(
        &c,
        &server.url(&format!("/v1/responses/{}", done["id"].as_str().unwrap())),
    )
    .await;
    assert_eq!(s, 404);

    // Stored: GET returns it; a follow-up sees the earlier turn (a longer prompt).
    let (s, got) = get(&c, &server.url(&format!("/v1/responses/{id}"))).await;
    assert_eq!(s, 200);
    let got: Value = serde_json::from_str(&got).unwrap();
    assert_eq!(got, r);
    let (s, r2) = post(
        &c,
        &url,
        json!({"input": "Again.", "previous_response_id": id, "max_output_tokens": 3}),
    )
    .await;
    assert_eq!(s, 200, "{r2}");
    assert_eq!(r2["status"], "incomplete");
    assert_eq!(r2["incomplete_details"]["reason"], "max_output_tokens");
    assert_eq!(r2["previous_response_id"], id.as_str());
    let (_, alone) = post(&c, &url, json!({"input": "Again.", "store": false})).await;
    assert!(
        r2["usage"]["input_tokens"].as_u64().unwrap()
            > alone["usage"]["input_tokens"].as_u64().unwrap() + 26,
        "{r2} vs {alone}"
    );
    // DELETE, then it is gone for GET and for previous_response_id (404, OpenAI's shape).
    let d = c
        .delete(server.url(&format!("/v1/responses/{id}")))
        .send()
        .await
        .unwrap();
    assert_eq!(d.status().as_u16(), 200);
    let d: Value = d.json().await.unwrap();
    assert_eq!(d["deleted"], true);
    let (s, e) = post(&c, &url, json!({"input": "x", "previous_response_id": id})).await;
    assert_eq!(s, 404);
    assert_eq!(error_of(&e).2, "previous_response_id");

    // Errors name the Responses field.
    for (body, param) in [
        (json!({"input": "x", "background": true}), "background"),
        (
            json!({"input": "x", "max_output_tokens": 0}),
            "max_output_tokens",
        ),
        (json!({"input": "x", "temperature": -1}), "temperature"),
        (
            json!({"input": "x", "tools": [{"type": "function"}]}),
            "tools[0].name",
        ),
        (
            json!({"input": "x", "text": {"format": {"type": "json_schema", "name": "x", "schema": {"type": "nonsense"}}}}),
            "text.format",
        ),
    ] {
        let (s, e) = post(&c, &url, body.clone()).await;
        assert_eq!(s, 400, "{body}: {e}");
        assert_eq!(error_of(&e).2, param, "{body}: {e}");
    }
    wait_idle(&c, &server, Duration::from_secs(10)).await;
    assert!(server.stop().await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_create_stream_stop_sequence_and_count() {
    let server = mock_server(config(), MockOpts::default()).await;
    let c = client();
    let url = server.url("/v1/messages");
    let body = json!({
        "model": "mock", "max_tokens": 64,
        "system": "You recite.",
        "messages": [{"role": "user", "content": [{"type": "text", "text": "Say the alphabet."}]}],
    });
    let (s, m) = post(&c, &url, body.clone()).await;
    assert_eq!(s, 200, "{m}");
    assert_eq!(m["type"], "message");
    assert_eq!(m["role"], "assistant");
    assert_eq!(m["content"], json!([{"type": "text", "text": ALPHABET}]));
    assert_eq!(m["stop_reason"], "end_turn");
    assert_eq!(m["usage"]["output_tokens"], 27);
    let prompt = m["usage"]["input_tokens"].as_u64().unwrap()
        + m["usage"]["cache_read_input_tokens"].as_u64().unwrap();

    let (s, n) = post(&c, &server.url("/v1/messages/count_tokens"), body.clone()).await;
    assert_eq!(s, 200, "{n}");
    assert_eq!(n["input_tokens"].as_u64().unwrap(), prompt);

    // Anthropic's documented order.
    let mut sbody = body.clone();
    sbody["stream"] = json!(true);
    let evs = post_sse(&c, &url, sbody).await;
    let names: Vec<&str> = evs.iter().map(|(n, _)| n.as_str()).collect();
    let mut want = vec!["message_start", "content_block_start"];
    want.extend(std::iter::repeat_n("content_block_delta", names.len() - 5));
    want.extend(["content_block_stop", "message_delta", "message_stop"]);
    assert_eq!(names, want);
    for (name, data) in &evs {
        assert_eq!(data["type"], name.as_str());
    }
    let text: String = evs
        .iter()
        .filter(|(n, _)| n == "content_block_delta")
        .map(|(_, d)| {
            assert_eq!(d["delta"]["type"], "text_delta");
            d["delta"]["text"].as_str().unwrap().to_string()
        })
        .collect();
    assert_eq!(text, ALPHABET);
    let delta = &evs[evs.len() - 2].1;
    assert_eq!(delta["delta"]["stop_reason"], "end_turn");
    assert_eq!(delta["usage"]["output_tokens"], 27);

    // A stop sequence ends the text before it and is reported.
    let mut stop = body.clone();
    stop["stop_sequences"] = json!(["zz", "efg"]);
    let (_, m) = post(&c, &url, stop).await;
    assert_eq!(m["content"][0]["text"], "abcd");
    assert_eq!(m["stop_reason"], "stop_sequence");
    assert_eq!(m["stop_sequence"], "efg");
    // max_tokens.
    let mut short = body.clone();
    short["max_tokens"] = json!(3);
    let (_, m) = post(&c, &url, short).await;
    assert_eq!(
        (m["content"][0]["text"].as_str(), m["stop_reason"].as_str()),
        (Some("abc"), Some("max_tokens"))
    );

    // Errors in Anthropic's shape, naming what is wrong.
    for (body, status, kind) in [
        (
            json!({"messages": [{"role": "user", "content": "hi"}]}),
            400,
            "invalid_request_error",
        ),
        (
            json!({"max_tokens": 5, "messages": "nope"}),
            400,
            "invalid_request_error",
        ),
        (
            json!({"max_tokens": 5, "model": "other", "messages": [{"role": "user", "content": "hi"}]}),
            404,
            "not_found_error",
        ),
        (
            json!({"max_tokens": 0, "messages": [{"role": "user", "content": "hi"}]}),
            400,
            "invalid_request_error",
        ),
    ] {
        let (s, e) = post(&c, &url, body.clone()).await;
        assert_eq!(s, status, "{body}: {e}");
        assert_eq!(e["type"], "error", "{e}");
        assert_eq!(e["error"]["type"], kind, "{e}");
        assert!(e["error"]["message"].as_str().unwrap().len() > 5);
    }
    let (_, e) = post(
        &c,
        &url,
        json!({"messages": [{"role": "user", "content": "hi"}]}),
    )
    .await;
    assert!(
        e["error"]["message"]
            .as_str()
            .unwrap()
            .contains("max_tokens"),
        "{e}"
    );
    wait_idle(&c, &server, Duration::from_secs(10)).await;
    assert!(server.stop().await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn x_api_key_models_context_length_and_one_token_probe() {
    let server = mock_server(
        ServerConfig {
            api_key: Some("sk-test".into()),
            ..config()
        },
        MockOpts::default(),
    )
    .await;
    let c = client();
    let body = json!({"max_tokens": 5, "messages": [{"role": "user", "content": "hi"}]});
    let r = c
        .post(server.url("/v1/messages"))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 401);
    let e: Value = r.json().await.unwrap();
    assert_eq!(e["error"]["type"], "authentication_error");
    let r = c
        .post(server.url("/v1/messages"))
        .header("x-api-key", "sk-test")
        .header("anthropic-version", "2023-06-01")
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let r = c
        .post(server.url("/v1/messages"))
        .header("x-api-key", "sk-wrong")
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 401);

    let models: Value = c
        .get(server.url("/v1/models"))
        .bearer_auth("sk-test")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let card = &models["data"][0];
    assert_eq!(card["context_length"], 256);
    assert_eq!(card["context_length"], card["max_model_len"]);

    // LiteLLM's health probe: one token, 200, finish_reason length.
    let r = c
        .post(server.url("/v1/chat/completions"))
        .bearer_auth("sk-test")
        .json(&chat_body(json!({"max_tokens": 1})))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["choices"][0]["finish_reason"], "length");
    assert_eq!(v["usage"]["completion_tokens"], 1);
    assert!(server.stop().await);
}

/// A client that leaves mid-stream frees the request's KV blocks, on both new APIs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disconnect_mid_stream_frees_blocks() {
    let server = mock_server(
        config(),
        MockOpts {
            step_delay: Duration::from_millis(50),
            ..MockOpts::default()
        },
    )
    .await;
    let c = client();
    let msg = json!([{"role": "user", "content": "Say the alphabet."}]);
    for (path, body) in [
        (
            "/v1/responses",
            json!({"input": "Say the alphabet.", "stream": true}),
        ),
        (
            "/v1/messages",
            json!({"max_tokens": 64, "messages": msg, "stream": true}),
        ),
    ] {
        let mut r = c.post(server.url(path)).json(&body).send().await.unwrap();
        assert_eq!(r.status().as_u16(), 200);
        // Wait for generated text, so the request holds blocks, then hang up.
        let mut seen = String::new();
        while !seen.contains("delta") {
            seen.push_str(&String::from_utf8_lossy(&r.chunk().await.unwrap().unwrap()));
        }
        // The engine publishes its stats after the step whose tokens were just sent.
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while metric(&metrics(&c, &server).await, "flare:kv_cache_used_blocks").unwrap() == 0.0 {
            assert!(
                std::time::Instant::now() < deadline,
                "{path}: no blocks held"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        drop(r);
        wait_idle(&c, &server, Duration::from_secs(10)).await;
    }
    assert!(server.stop().await);
}

/// With a reasoning parser (DeepSeek-R1's: output starts inside the reasoning, so the mock's
/// whole alphabet is reasoning), Responses returns a `reasoning` item and Messages `thinking`
/// blocks, streamed as `response.reasoning_text.delta` and `thinking_delta`. Without one,
/// `thinking` is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reasoning_items_and_thinking_blocks() {
    let plain = mock_server(config(), MockOpts::default()).await;
    let c = client();
    let msg = json!([{"role": "user", "content": "Think."}]);
    let thinking = json!({"max_tokens": 64, "messages": msg, "thinking": {"type": "adaptive"}});
    let (s, e) = post(&c, &plain.url("/v1/messages"), thinking.clone()).await;
    assert_eq!(s, 400, "{e}");
    assert!(
        e["error"]["message"].as_str().unwrap().contains("thinking"),
        "{e}"
    );
    assert!(plain.stop().await);

    let server = mock_server(
        ServerConfig {
            reasoning_parser: Some(flare::tools::reasoning::ReasoningKind::DeepSeekR1),
            ..config()
        },
        MockOpts::default(),
    )
    .await;
    let (s, r) = post(&c, &server.url("/v1/responses"), json!({"input": "Think."})).await;
    assert_eq!(s, 200, "{r}");
    assert_eq!(r["output"][0]["type"], "reasoning");
    assert_eq!(r["output"][0]["content"][0]["text"], ALPHABET);
    assert_eq!(r["output"].as_array().unwrap().len(), 1);
    assert!(
        r["usage"]["output_tokens_details"]["reasoning_tokens"]
            .as_u64()
            .unwrap()
            > 0
    );
    let evs = post_sse(
        &c,
        &server.url("/v1/responses"),
        json!({"input": "Think.", "stream": true}),
    )
    .await;
    let reasoning: String = evs
        .iter()
        .filter(|(n, _)| n == "response.reasoning_text.delta")
        .map(|(_, d)| d["delta"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(reasoning, ALPHABET);

    // A thinking budget is not enforced, so it is refused by name rather than ignored.
    let budgeted = json!({"max_tokens": 64, "messages": msg, "thinking": {"type": "enabled", "budget_tokens": 32}});
    let (s, e) = post(&c, &server.url("/v1/messages"), budgeted).await;
    assert_eq!(s, 400, "{e}");
    assert!(
        e["error"]["message"]
            .as_str()
            .unwrap()
            .contains("thinking.budget_tokens"),
        "{e}"
    );
    let (s, m) = post(&c, &server.url("/v1/messages"), thinking.clone()).await;
    assert_eq!(s, 200, "{m}");
    assert_eq!(m["content"][0]["type"], "thinking");
    assert_eq!(m["content"][0]["thinking"], ALPHABET);
    let mut st = thinking;
    st["stream"] = json!(true);
    let evs = post_sse(&c, &server.url("/v1/messages"), st).await;
    assert_eq!(evs[1].1["content_block"]["type"], "thinking");
    let text: String = evs
        .iter()
        .filter(|(n, _)| n == "content_block_delta")
        .map(|(_, d)| {
            assert_eq!(d["delta"]["type"], "thinking_delta");
            d["delta"]["thinking"].as_str().unwrap().to_string()
        })
        .collect();
    assert_eq!(text, ALPHABET);
    assert!(server.stop().await);
}

/// The API key's limits apply through the new APIs as through chat: a `max_tokens` cap in
/// reject mode refuses `max_output_tokens` / `max_tokens` above it (each API's field name and
/// error shape), in clamp mode it shortens the output.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn key_limits_apply_to_the_new_apis() {
    use flare::server::keys::{ApiKey, KeyLimits, MaxTokensMode};
    let key = |id: &str, secret: &str, mode| ApiKey {
        id: id.into(),
        key: secret.into(),
        limits: KeyLimits {
            max_tokens: Some(3),
            max_tokens_mode: mode,
            ..KeyLimits::default()
        },
    };
    let server = mock_server(
        ServerConfig {
            api_keys: vec![
                key("clamp", "sk-clamp", MaxTokensMode::Clamp),
                key("reject", "sk-reject", MaxTokensMode::Reject),
            ],
            ..config()
        },
        MockOpts::default(),
    )
    .await;
    let c = client();
    let send = |path: &str, secret: &str, body: Value| {
        c.post(server.url(path))
            .header("x-api-key", secret)
            .json(&body)
            .send()
    };
    let resp = json!({"input": "Say the alphabet.", "max_output_tokens": 10});
    let msgs =
        json!({"max_tokens": 10, "messages": [{"role": "user", "content": "Say the alphabet."}]});
    let r: Value = send("/v1/responses", "sk-clamp", resp.clone())
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(output_text(&r), "abc", "{r}");
    let r: Value = send("/v1/messages", "sk-clamp", msgs.clone())
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(r["content"][0]["text"], "abc", "{r}");
    let r = send("/v1/responses", "sk-reject", resp).await.unwrap();
    assert_eq!(r.status().as_u16(), 400);
    let e: Value = r.json().await.unwrap();
    assert_eq!(error_of(&e).2, "max_output_tokens", "{e}");
    let r = send("/v1/messages", "sk-reject", msgs).await.unwrap();
    assert_eq!(r.status().as_u16(), 400);
    let e: Value = r.json().await.unwrap();
    assert_eq!(e["error"]["type"], "invalid_request_error", "{e}");
    assert!(server.stop().await);
}
