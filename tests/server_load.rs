//! Load over loopback: 200 concurrent streaming requests against the MockRunner engine (a 2 ms
//! step stands in for the forward pass), a third of them cut off mid-stream. Every other stream
//! must complete, and afterwards /metrics must show no running request and no held KV block.
//! Bounded: 64 tokens per request, one minute at most.

mod common;

use std::time::{Duration, Instant};

use common::*;
use serde_json::json;

const REQUESTS: usize = 200;
const MAX_TOKENS: usize = 64;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_streams_a_third_cut_off() {
    let server = mock_server(
        config(),
        MockOpts {
            // Fewer blocks than 200 full sequences need (200 x 5): preemption is exercised too.
            num_blocks: 600,
            step_delay: Duration::from_millis(2),
            ..MockOpts::default()
        },
    )
    .await;
    let c = client();
    let url = server.url("/v1/chat/completions");
    let start = Instant::now();
    let tasks: Vec<_> = (0..REQUESTS)
        .map(|i| {
            let (c, url) = (c.clone(), url.clone());
            tokio::spawn(async move {
                let body = json!({
                    "model": "mock",
                    "messages": [{"role": "user", "content": format!("request {i}")}],
                    "max_tokens": MAX_TOKENS, "ignore_eos": true, "stream": true,
                    "stream_options": {"include_usage": true},
                });
                let mut r = c.post(&url).json(&body).send().await.unwrap();
                assert_eq!(r.status().as_u16(), 200);
                let cut_after = (i % 3 == 0).then_some(2 + i % 20);
                let mut body = String::new();
                let mut events = 0;
                while let Some(chunk) = r.chunk().await.unwrap() {
                    let s = String::from_utf8_lossy(&chunk);
                    events += s.matches("data: ").count();
                    body.push_str(&s);
                    if cut_after.is_some_and(|n| events >= n) {
                        return None;
                    }
                }
                Some(sse_data(&body))
            })
        })
        .collect();
    let results = tokio::time::timeout(
        Duration::from_secs(60),
        futures_util::future::join_all(tasks),
    )
    .await
    .expect("load test finished within a minute");
    let elapsed = start.elapsed();
    let mut completed = 0;
    for (i, r) in results.into_iter().enumerate() {
        let Some(events) = r.unwrap() else {
            assert_eq!(i % 3, 0, "request {i} was not meant to be cut");
            continue;
        };
        completed += 1;
        assert_eq!(events.last().unwrap(), "[DONE]", "request {i}");
        let usage = &events[events.len() - 2]["usage"];
        assert_eq!(usage["completion_tokens"], MAX_TOKENS, "request {i}");
        let finish: Vec<_> = events
            .iter()
            .filter_map(|e| e["choices"][0]["finish_reason"].as_str())
            .collect();
        assert_eq!(finish, ["length"], "request {i}");
    }
    assert_eq!(completed, REQUESTS - REQUESTS.div_ceil(3));
    let idle_after = wait_idle(&c, &server, Duration::from_secs(10)).await;
    let m = metrics(&c, &server).await;
    assert_eq!(metric(&m, "flare:num_requests_running"), Some(0.0));
    assert_eq!(metric(&m, "flare:kv_cache_used_blocks"), Some(0.0));
    assert_eq!(
        metric(&m, "flare:request_aborted_total"),
        Some(REQUESTS.div_ceil(3) as f64)
    );
    assert_eq!(server.state.num_inflight(), 0);
    eprintln!(
        "{REQUESTS} streams ({} cut) in {elapsed:?}; idle {idle_after:?} later; {} preemptions; \
         {} tokens generated",
        REQUESTS.div_ceil(3),
        metric(&m, "flare:num_preemptions_total").unwrap(),
        metric(&m, "flare:generation_tokens_total").unwrap(),
    );
    assert!(server.stop().await);
}
