//! The server's limits and failure paths through real HTTP on loopback, over the MockRunner
//! "alphabet" model: bad input (400s, never a 500), context length, API key, body size, queue
//! size, clients that go away, and graceful shutdown.

mod common;

use std::time::Duration;

use common::*;
use flare::server::ServerConfig;
use serde_json::{json, Value};

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
