//! Issue 15 end to end on SmolLM2 (the tool fixture: SmolLM2-135M-Instruct with a Hermes-style
//! template, tests/fixtures/make_tool_model.py), on the CPU, through `flare serve --grpc-port`:
//! - acceptance 1: tests/python_apis/test_responses.py, the official `openai` SDK's
//!   `responses.create` (plain, json_schema, function tool) and `responses.stream`;
//! - acceptance 2: tests/python_apis/test_messages.py, the official `anthropic` SDK's
//!   `messages.create`, `messages.stream` (event order), tool_use round trip, count_tokens;
//! - acceptance 3: a tonic client from proto/flare/v1/flare.proto streams the same greedy text
//!   and token ids as HTTP /v1/completions, with logprobs; cancelling frees the KV blocks.
//!
//! Needs models/requirements.txt and SmolLM2's HF conversion (models/fetch_smollm2.py --hf).

mod common;

use std::time::Duration;

use common::metric;
use common::process::{build_tool_model, free_port, pytest, sdk_serve_args, FlareProcess};
use flare::grpc::pb::{self, flare_client::FlareClient, generate_request::Prompt};
use serde_json::json;

const MODEL: &str = "flare-apis";
const KEY: &str = "sk-flare-apis";

async fn metrics(c: &reqwest::Client, base: &str) -> String {
    c.get(format!("{base}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sdks_and_grpc_on_smollm2() {
    let dir = build_tool_model("apis-model");
    let grpc_port = free_port();
    let grpc_port = grpc_port.to_string();
    let mut args = sdk_serve_args(MODEL);
    args.extend(["--grpc-port", &grpc_port]);
    let server = FlareProcess::start(&dir, &args, &[("FLARE_API_KEY", KEY)]).await;
    let env = [
        ("FLARE_BASE", server.base.clone()),
        ("FLARE_MODEL", MODEL.to_string()),
        ("FLARE_API_KEY", KEY.to_string()),
    ];
    // The server is another process: blocking this worker while pytest runs is fine.
    eprintln!("{}", pytest("tests/python_apis", &env));

    // gRPC: the same greedy text and ids as HTTP.
    let c = common::client();
    let prompt = "The three primary colors are";
    let r = c
        .post(format!("{}/v1/completions", server.base))
        .bearer_auth(KEY)
        .json(&json!({"model": MODEL, "prompt": prompt, "max_tokens": 24, "temperature": 0, "logprobs": 1}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let http: serde_json::Value = r.json().await.unwrap();
    let channel = tonic::transport::Channel::from_shared(format!("http://127.0.0.1:{grpc_port}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let key: tonic::metadata::MetadataValue<_> = format!("Bearer {KEY}").parse().unwrap();
    let mut g = FlareClient::with_interceptor(channel, move |mut req: tonic::Request<()>| {
        req.metadata_mut().insert("authorization", key.clone());
        Ok(req)
    });
    let req = |max_tokens: u32, ignore_eos: bool| pb::GenerateRequest {
        model: MODEL.into(),
        prompt: Some(Prompt::Text(prompt.into())),
        sampling: Some(pb::SamplingParams {
            max_tokens: Some(max_tokens),
            temperature: Some(0.0),
            ignore_eos: Some(ignore_eos),
            ..Default::default()
        }),
        structured: None,
        top_logprobs: Some(1),
    };
    let mut stream = g.generate(req(24, false)).await.unwrap().into_inner();
    let (mut text, mut lps, mut last) = (String::new(), Vec::new(), None);
    while let Some(m) = stream.message().await.unwrap() {
        text.push_str(&m.text);
        lps.extend(m.logprobs.iter().map(|l| l.logprob));
        last = Some(m);
    }
    assert_eq!(text, http["choices"][0]["text"].as_str().unwrap());
    let last = last.unwrap();
    assert_eq!(
        last.finish_reason,
        http["choices"][0]["finish_reason"].as_str().unwrap()
    );
    let http_lps: Vec<f64> =
        serde_json::from_value(http["choices"][0]["logprobs"]["token_logprobs"].clone()).unwrap();
    assert_eq!(lps.len(), http_lps.len());
    for (a, b) in lps.iter().zip(&http_lps) {
        assert!((*a as f64 - b).abs() < 1e-3, "{a} vs {b}");
    }
    let usage = last.usage.unwrap();
    assert_eq!(
        usage.completion_tokens as u64,
        http["usage"]["completion_tokens"].as_u64().unwrap()
    );

    // Cancel mid-stream: the blocks come back (/metrics).
    let mut stream = g.generate(req(1500, true)).await.unwrap().into_inner();
    for _ in 0..4 {
        stream.message().await.unwrap().unwrap();
    }
    let m = metrics(&c, &server.base).await;
    assert!(metric(&m, "flare:kv_cache_used_blocks").unwrap() > 0.0);
    drop(stream);
    let start = std::time::Instant::now();
    loop {
        let m = metrics(&c, &server.base).await;
        let busy = metric(&m, "flare:num_requests_running").unwrap()
            + metric(&m, "flare:kv_cache_used_blocks").unwrap();
        if busy == 0.0 {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "blocks not freed:\n{m}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    drop(server);
    let _ = std::fs::remove_dir_all(&dir);
}
