//! Per-request overhead of the wire formats (issue 15, acceptance 4): closed-loop clients send
//! one-token requests (`max_tokens: 1`, greedy) to a running `flare serve --grpc-port` and
//! report requests/s and latency percentiles for HTTP chat completions, HTTP completions (the
//! same engine work as gRPC's `Generate`: no chat template) and gRPC `Generate`.
//!
//!     cargo run --release --example api_overhead -- HTTP_BASE GRPC_URL MODEL [REQUESTS] [CONCURRENCY]
//!
//! e.g. `... -- http://127.0.0.1:8000 http://127.0.0.1:50051 smollm2 400 4`. Loopback only.

use std::time::{Duration, Instant};

use flare::grpc::pb::{self, flare_client::FlareClient, generate_request::Prompt};
use serde_json::json;

const PROMPT: &str = "Hi";

#[derive(Clone, Copy, Debug)]
enum Api {
    HttpChat,
    HttpCompletions,
    Grpc,
}

async fn one(
    api: Api,
    http: &reqwest::Client,
    grpc: &mut FlareClient<tonic::transport::Channel>,
    base: &str,
    model: &str,
) -> Duration {
    let t = Instant::now();
    match api {
        Api::HttpChat => {
            let r = http
                .post(format!("{base}/v1/chat/completions"))
                .json(&json!({"model": model, "max_tokens": 1, "temperature": 0,
                              "messages": [{"role": "user", "content": PROMPT}]}))
                .send()
                .await
                .unwrap();
            assert!(r.status().is_success());
            r.bytes().await.unwrap();
        }
        Api::HttpCompletions => {
            let r = http
                .post(format!("{base}/v1/completions"))
                .json(&json!({"model": model, "max_tokens": 1, "temperature": 0, "prompt": PROMPT}))
                .send()
                .await
                .unwrap();
            assert!(r.status().is_success());
            r.bytes().await.unwrap();
        }
        Api::Grpc => {
            let req = pb::GenerateRequest {
                model: model.into(),
                prompt: Some(Prompt::Text(PROMPT.into())),
                sampling: Some(pb::SamplingParams {
                    max_tokens: Some(1),
                    temperature: Some(0.0),
                    ..Default::default()
                }),
                structured: None,
                top_logprobs: None,
            };
            let mut s = grpc.generate(req).await.unwrap().into_inner();
            while s.message().await.unwrap().is_some() {}
        }
    }
    t.elapsed()
}

fn pct(sorted: &[Duration], p: f64) -> f64 {
    let i = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[i].as_secs_f64() * 1e3
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    assert!(
        args.len() >= 3,
        "usage: HTTP_BASE GRPC_URL MODEL [REQUESTS] [CONCURRENCY]"
    );
    let (base, grpc_url, model) = (args[0].clone(), args[1].clone(), args[2].clone());
    let requests: usize = args.get(3).map_or(400, |s| s.parse().unwrap());
    let concurrency: usize = args.get(4).map_or(4, |s| s.parse().unwrap());
    let http = reqwest::Client::builder().no_proxy().build().unwrap();
    let channel = tonic::transport::Channel::from_shared(grpc_url)
        .unwrap()
        .connect()
        .await
        .unwrap();
    // One connection per client, as reqwest's pool gives the HTTP clients.
    let mut channels = Vec::with_capacity(concurrency);
    for _ in 0..concurrency {
        channels.push(
            tonic::transport::Channel::from_shared(args[1].clone())
                .unwrap()
                .connect()
                .await
                .unwrap(),
        );
    }
    println!("requests={requests} concurrency={concurrency} prompt={PROMPT:?} max_tokens=1");
    println!("api               req/s    p50_ms   p90_ms   p99_ms");
    for api in [Api::HttpChat, Api::HttpCompletions, Api::Grpc] {
        let mut g = FlareClient::new(channel.clone());
        for _ in 0..10 {
            one(api, &http, &mut g, &base, &model).await;
        }
        let start = Instant::now();
        let tasks: Vec<_> = (0..concurrency)
            .map(|w| {
                let (http, base, model) = (http.clone(), base.clone(), model.clone());
                let channel = channels[w].clone();
                let mut g = FlareClient::new(channel);
                let n = requests / concurrency + usize::from(w < requests % concurrency);
                tokio::spawn(async move {
                    let mut lat = Vec::with_capacity(n);
                    for _ in 0..n {
                        lat.push(one(api, &http, &mut g, &base, &model).await);
                    }
                    lat
                })
            })
            .collect();
        let mut lat = Vec::with_capacity(requests);
        for t in tasks {
            lat.extend(t.await.unwrap());
        }
        let wall = start.elapsed().as_secs_f64();
        lat.sort();
        println!(
            "{:<16} {:>7.1} {:>8.2} {:>8.2} {:>8.2}",
            format!("{api:?}"),
            lat.len() as f64 / wall,
            pct(&lat, 0.5),
            pct(&lat, 0.9),
            pct(&lat, 0.99)
        );
    }
}
