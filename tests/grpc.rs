//! The gRPC API (issue 15, acceptance 3) over the alphabet mock, with a tonic client generated
//! from the committed proto: `Generate` streams the same greedy text and token ids as HTTP
//! /v1/completions, with usage and finish reason; cancelling mid-stream frees the KV blocks
//! (checked on /metrics); errors are gRPC codes naming the proto field; `Tokenize` equals
//! /tokenize; `Health`.

mod common;

use std::time::Duration;

use common::*;
use flare::grpc::pb::{self, flare_client::FlareClient, generate_request::Prompt};
use serde_json::json;
use tonic::Code;

async fn grpc_client(server: &TestServer) -> FlareClient<tonic::transport::Channel> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(flare::grpc::serve(
        listener,
        server.state.clone(),
        std::future::pending(),
    ));
    FlareClient::connect(format!("http://{addr}"))
        .await
        .unwrap()
}

fn generate(prompt: &str, sampling: pb::SamplingParams) -> pb::GenerateRequest {
    pb::GenerateRequest {
        model: "mock".into(),
        prompt: Some(Prompt::Text(prompt.into())),
        sampling: Some(sampling),
        structured: None,
        top_logprobs: None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn generate_matches_http_and_cancel_frees_blocks() {
    let server = mock_server(
        config(),
        MockOpts {
            step_delay: Duration::from_millis(10),
            ..MockOpts::default()
        },
    )
    .await;
    let c = client();
    let mut g = grpc_client(&server).await;

    let greedy = pb::SamplingParams {
        temperature: Some(0.0),
        max_tokens: Some(40),
        ..Default::default()
    };
    let mut stream = g
        .generate(generate("Count: m", greedy.clone()))
        .await
        .unwrap()
        .into_inner();
    let (mut text, mut ids, mut last) = (String::new(), Vec::new(), None);
    let mut messages = 0;
    while let Some(m) = stream.message().await.unwrap() {
        text.push_str(&m.text);
        ids.extend(m.token_ids.iter().copied());
        messages += 1;
        last = Some(m);
    }
    let last = last.unwrap();
    assert!(messages > 3, "streamed, not one message: {messages}");
    let (s, http) = post(
        &c,
        &server.url("/v1/completions"),
        json!({"model": "mock", "prompt": "Count: m", "max_tokens": 40, "temperature": 0}),
    )
    .await;
    assert_eq!(s, 200);
    assert_eq!(text, http["choices"][0]["text"].as_str().unwrap());
    assert_eq!(text, "nopqrstuvwxyz");
    assert_eq!(last.finish_reason, "stop");
    let usage = last.usage.unwrap();
    assert_eq!(
        usage.prompt_tokens as u64,
        http["usage"]["prompt_tokens"].as_u64().unwrap()
    );
    assert_eq!(usage.completion_tokens as usize, ids.len());

    // Logprobs per token, and token-id prompts.
    let mut req = generate("", greedy.clone());
    req.prompt = Some(Prompt::TokenIds(pb::TokenIds {
        ids: vec![byte_id(b'w')],
    }));
    req.top_logprobs = Some(2);
    let mut stream = g.generate(req).await.unwrap().into_inner();
    let mut lps = 0;
    let mut text = String::new();
    while let Some(m) = stream.message().await.unwrap() {
        // The token that ends the generation (EOS) may come without one.
        assert!(m.logprobs.len() <= m.token_ids.len());
        lps += m.logprobs.iter().filter(|l| l.top.len() == 2).count();
        text.push_str(&m.text);
    }
    assert_eq!(text, "xyz");
    // The mock computes no logprobs (the SmolLM2 test, tests/python_apis.rs, checks them).
    let _ = lps;

    // Cancel mid-stream: the engine request is aborted and its blocks come back.
    let long = pb::SamplingParams {
        max_tokens: Some(200),
        ignore_eos: Some(true),
        temperature: Some(0.0),
        ..Default::default()
    };
    let mut stream = g
        .generate(generate("Say the alphabet.", long))
        .await
        .unwrap()
        .into_inner();
    for _ in 0..3 {
        stream.message().await.unwrap().unwrap();
    }
    let m = metrics(&c, &server).await;
    assert!(
        metric(&m, "flare:kv_cache_used_blocks").unwrap() > 0.0,
        "{m}"
    );
    drop(stream);
    wait_idle(&c, &server, Duration::from_secs(10)).await;

    // Errors: gRPC codes, the proto's field names.
    let bad = pb::SamplingParams {
        temperature: Some(-1.0),
        ..Default::default()
    };
    let e = g.generate(generate("x", bad)).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(
        e.message().contains("sampling.temperature"),
        "{}",
        e.message()
    );
    let mut other = generate("x", greedy.clone());
    other.model = "nope".into();
    assert_eq!(g.generate(other).await.unwrap_err().code(), Code::NotFound);
    let mut none = generate("x", greedy);
    none.prompt = None;
    assert_eq!(
        g.generate(none).await.unwrap_err().code(),
        Code::InvalidArgument
    );

    // Tokenize as /tokenize; Health.
    let t = g
        .tokenize(pb::TokenizeRequest {
            model: String::new(),
            text: "hello".into(),
            add_special_tokens: false,
        })
        .await
        .unwrap()
        .into_inner();
    let (s, http) = post(
        &c,
        &server.url("/tokenize"),
        json!({"prompt": "hello", "add_special_tokens": false}),
    )
    .await;
    assert_eq!(s, 200);
    let want: Vec<u32> = serde_json::from_value(http["tokens"].clone()).unwrap();
    assert_eq!(t.token_ids, want);
    assert_eq!(t.max_model_len, 256);
    let h = g.health(pb::HealthRequest {}).await.unwrap().into_inner();
    assert!(h.serving);
    assert_eq!(h.model, "mock");
    assert!(server.stop().await);
}
