//! Load and fault runs over loopback against the MockRunner "alphabet" engine (a 2 ms step
//! stands in for the forward pass), each with well-behaved clients running beside the fault:
//! - `streams`: many concurrent streams, 30% of them cut off mid-stream by their client;
//! - `slow_readers`: clients that read their stream a little at a time, slower than it is made;
//! - `queue_burst`: a burst past `--max-queue-len` (429 with Retry-After, never a time-out);
//! - `kv_exhaustion`: long prompts over a small KV pool (preemption; greedy output unchanged);
//! - `sigterm`: shutdown with streams in flight (every admitted stream completes, untruncated).
//!
//! Each run asserts its counts: no 5xx, no panic (the engine alive and /health 200), and
//! afterwards nothing running and no KV block held (/metrics and the invariant checker, which
//! runs after every step). It prints one report line: requests sent, bad (faulty) clients,
//! 5xx seen, panics, leaked blocks, and the p50/p99 latency of the well-behaved clients (printed,
//! never asserted). `FLARE_FAULT_SCALE=heavy` runs the large version (1,000 streams, more slow
//! readers and a larger burst): benches/faults.sh, raw output in benches/results/.

mod common;

use std::time::{Duration, Instant};

use common::*;
use serde_json::{json, Value};

fn heavy() -> bool {
    std::env::var("FLARE_FAULT_SCALE").is_ok_and(|s| s == "heavy")
}

fn scale(light: usize, heavy_n: usize) -> usize {
    if heavy() {
        heavy_n
    } else {
        light
    }
}

#[derive(Default)]
struct Run {
    name: &'static str,
    requests: usize,
    faulty: usize,
    server_errors: usize,
    panics: usize,
    leaked_blocks: f64,
    running_after: f64,
    /// Well-behaved clients' request latencies (whole response).
    latencies: Vec<Duration>,
    extra: String,
}

impl Run {
    fn new(name: &'static str) -> Self {
        Self {
            name,
            ..Self::default()
        }
    }

    fn percentile(&self, p: f64) -> Duration {
        let mut l = self.latencies.clone();
        l.sort();
        if l.is_empty() {
            return Duration::ZERO;
        }
        l[((l.len() - 1) as f64 * p).round() as usize]
    }

    /// Checks that nothing is left and the engine is alive, prints the report and asserts.
    async fn finish(mut self, c: &reqwest::Client, server: &TestServer) {
        wait_idle(c, server, Duration::from_secs(60)).await;
        let m = metrics(c, server).await;
        self.leaked_blocks = metric(&m, "flare:kv_cache_used_blocks").unwrap();
        self.running_after = metric(&m, "flare:num_requests_running").unwrap();
        if get(c, &server.url("/health")).await.0 != 200
            || !server.state.engine().unwrap().is_alive()
        {
            self.panics += 1;
        }
        println!(
            "fault run {}: requests sent {}, faulty clients {}, 5xx seen {}, panics {}, \
             leaked blocks {}, running after {}, well-behaved {} p50 {:.1} ms p99 {:.1} ms{}",
            self.name,
            self.requests,
            self.faulty,
            self.server_errors,
            self.panics,
            self.leaked_blocks,
            self.running_after,
            self.latencies.len(),
            self.percentile(0.5).as_secs_f64() * 1e3,
            self.percentile(0.99).as_secs_f64() * 1e3,
            self.extra,
        );
        assert_eq!(self.server_errors, 0, "{}", self.name);
        assert_eq!(self.panics, 0, "{}", self.name);
        assert_eq!(self.leaked_blocks, 0.0, "{}", self.name);
        assert_eq!(self.running_after, 0.0, "{}", self.name);
        assert_eq!(server.state.num_inflight(), 0, "{}", self.name);
    }
}

fn opts() -> MockOpts {
    MockOpts {
        step_delay: Duration::from_millis(2),
        ..MockOpts::default()
    }
}

fn stream_body(i: usize, max_tokens: usize) -> Value {
    json!({
        "model": "mock",
        "messages": [{"role": "user", "content": format!("request {i}")}],
        "max_tokens": max_tokens, "ignore_eos": true, "stream": true,
    })
}

/// A whole stream read normally: its `data:` payloads, checked complete (`length`, `[DONE]`).
async fn full_stream(c: &reqwest::Client, url: &str, body: Value) -> (u16, Vec<Value>) {
    let r = c.post(url).json(&body).send().await.unwrap();
    let status = r.status().as_u16();
    let events = sse_data(&r.text().await.unwrap());
    (status, events)
}

/// Ended normally: a `length` finish (every request asks for `ignore_eos`) and `[DONE]`.
fn complete(events: &[Value]) -> bool {
    events.last() == Some(&json!("[DONE]"))
        && events
            .iter()
            .any(|e| e["choices"][0]["finish_reason"] == "length")
}

/// The end of a stream, for failure messages.
fn tail(events: &[Value]) -> &[Value] {
    &events[events.len().saturating_sub(2)..]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_with_thirty_percent_cut() {
    let n = scale(200, 1000);
    let max_tokens = 48;
    let server = mock_server(
        config(),
        MockOpts {
            num_blocks: 4 * n,
            max_num_seqs: 256,
            ..opts()
        },
    )
    .await;
    let c = client();
    let url = server.url("/v1/chat/completions");
    let tasks: Vec<_> = (0..n)
        .map(|i| {
            let (c, url) = (c.clone(), url.clone());
            tokio::spawn(async move {
                let start = Instant::now();
                let mut r = c
                    .post(&url)
                    .json(&stream_body(i, max_tokens))
                    .send()
                    .await
                    .unwrap();
                let status = r.status().as_u16();
                // 3 in 10 hang up after a few events.
                let cut_after = (i % 10 < 3).then_some(2 + i % 17);
                let mut text = String::new();
                while let Some(chunk) = r.chunk().await.unwrap() {
                    text.push_str(&String::from_utf8_lossy(&chunk));
                    if cut_after.is_some_and(|k| text.matches("data: ").count() >= k) {
                        return (status, None, start.elapsed());
                    }
                }
                (status, Some(sse_data(&text)), start.elapsed())
            })
        })
        .collect();
    let mut run = Run::new("streams");
    for (i, t) in tasks.into_iter().enumerate() {
        let (status, events, took) = t.await.unwrap();
        run.requests += 1;
        run.server_errors += usize::from(status >= 500);
        assert_eq!(status, 200, "request {i}");
        match events {
            None => run.faulty += 1,
            Some(events) => {
                assert!(complete(&events), "request {i}: {:?}", tail(&events));
                run.latencies.push(took);
            }
        }
    }
    assert_eq!(run.faulty, (0..n).filter(|i| i % 10 < 3).count());
    let m = metrics(&c, &server).await;
    run.extra = format!(
        "; aborted {}",
        metric(&m, "flare:request_aborted_total").unwrap_or(0.0)
    );
    run.finish(&c, &server).await;
    assert!(server.stop().await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_readers_do_not_stall_others() {
    let (slow, good) = (scale(16, 64), scale(32, 128));
    let max_tokens = 64;
    let server = mock_server(config(), opts()).await;
    let c = client();
    let url = server.url("/v1/chat/completions");
    // Slow readers: one chunk every 50 ms, while tokens come every 2 ms. They read to the end.
    let slow_tasks: Vec<_> = (0..slow)
        .map(|i| {
            let (c, url) = (c.clone(), url.clone());
            tokio::spawn(async move {
                let mut r = c
                    .post(&url)
                    .json(&stream_body(i, max_tokens))
                    .send()
                    .await
                    .unwrap();
                let status = r.status().as_u16();
                let mut text = String::new();
                while let Some(chunk) = r.chunk().await.unwrap() {
                    text.push_str(&String::from_utf8_lossy(&chunk));
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                (status, sse_data(&text))
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(50)).await;
    let good_tasks: Vec<_> = (0..good)
        .map(|i| {
            let (c, url) = (c.clone(), url.clone());
            tokio::spawn(async move {
                let start = Instant::now();
                let (status, events) =
                    full_stream(&c, &url, stream_body(1000 + i, max_tokens)).await;
                (status, events, start.elapsed())
            })
        })
        .collect();
    let mut run = Run::new("slow_readers");
    for t in good_tasks {
        let (status, events, took) = t.await.unwrap();
        run.requests += 1;
        run.server_errors += usize::from(status >= 500);
        assert_eq!(status, 200);
        assert!(complete(&events), "{:?}", tail(&events));
        run.latencies.push(took);
    }
    for t in slow_tasks {
        let (status, events) = t.await.unwrap();
        run.requests += 1;
        run.faulty += 1;
        run.server_errors += usize::from(status >= 500);
        assert!(
            complete(&events),
            "a slow reader's stream: {:?}",
            tail(&events)
        );
    }
    run.finish(&c, &server).await;
    assert!(server.stop().await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_past_the_queue_gets_429s_with_retry_after() {
    let burst = scale(120, 600);
    let cfg = flare::server::ServerConfig {
        max_queue_len: 16,
        ..config()
    };
    let server = mock_server(
        cfg,
        MockOpts {
            max_num_seqs: 8,
            ..opts()
        },
    )
    .await;
    let c = client();
    let url = server.url("/v1/chat/completions");
    let tasks: Vec<_> = (0..burst)
        .map(|i| {
            let (c, url) = (c.clone(), url.clone());
            tokio::spawn(async move {
                let start = Instant::now();
                let r = c
                    .post(&url)
                    .json(
                        &json!({"model": "mock", "max_tokens": 16, "ignore_eos": true,
                        "messages": [{"role": "user", "content": format!("burst {i}")}]}),
                    )
                    .send()
                    .await
                    .expect("no time-out");
                let status = r.status().as_u16();
                let retry_after = r.headers().get("retry-after").is_some();
                let v: Value = r.json().await.unwrap();
                (status, retry_after, v, start.elapsed())
            })
        })
        .collect();
    let mut run = Run::new("queue_burst");
    let mut refused = 0;
    for t in tasks {
        let (status, retry_after, v, took) = t.await.unwrap();
        run.requests += 1;
        run.server_errors += usize::from(status >= 500);
        match status {
            200 => {
                assert_eq!(v["usage"]["completion_tokens"], 16, "{v}");
                run.latencies.push(took);
            }
            429 => {
                assert!(retry_after, "a 429 without Retry-After: {v}");
                assert_eq!(v["error"]["code"], "rate_limit_exceeded", "{v}");
                refused += 1;
            }
            other => panic!("status {other}: {v}"),
        }
    }
    run.faulty = burst;
    assert!(refused > 0, "the burst never filled the queue");
    assert!(refused < burst, "nothing was admitted");
    run.extra = format!("; 429s {refused}, admitted {}", burst - refused);
    run.finish(&c, &server).await;
    assert!(server.stop().await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kv_exhaustion_preempts_without_changing_greedy_output() {
    let n = scale(16, 48);
    // Each request: a ~150-token prompt plus 80 tokens = ~15 blocks of 16; 48 blocks hold three.
    let server = mock_server(
        config(),
        MockOpts {
            num_blocks: 48,
            max_model_len: 256,
            ..opts()
        },
    )
    .await;
    let c = client();
    let url = server.url("/v1/completions");
    let prompt = |i: usize| format!("{}{i} x", "long prompt ".repeat(12));
    let body = |i: usize| {
        json!({"model": "mock", "prompt": prompt(i), "max_tokens": 80,
        "ignore_eos": true, "temperature": 0})
    };
    // Alone first: the reference output.
    let (s, alone) = post(&c, &url, body(0)).await;
    assert_eq!(s, 200, "{alone}");
    let want = alone["choices"][0]["text"].clone();
    let tasks: Vec<_> = (0..n)
        .map(|i| {
            let (c, url, body) = (c.clone(), url.clone(), body(0));
            tokio::spawn(async move {
                let start = Instant::now();
                let (s, v) = post(&c, &url, body).await;
                (i, s, v, start.elapsed())
            })
        })
        .collect();
    let mut run = Run::new("kv_exhaustion");
    run.requests = 1;
    for t in tasks {
        let (i, s, v, took) = t.await.unwrap();
        run.requests += 1;
        run.server_errors += usize::from(s >= 500);
        assert_eq!(s, 200, "request {i}: {v}");
        assert_eq!(
            v["choices"][0]["text"], want,
            "request {i}: greedy output changed"
        );
        run.latencies.push(took);
    }
    let m = metrics(&c, &server).await;
    let preemptions = metric(&m, "flare:num_preemptions_total").unwrap();
    assert!(preemptions > 0.0, "the pool was never exhausted");
    run.faulty = n;
    run.extra = format!("; preemptions {preemptions}");
    run.finish(&c, &server).await;
    assert!(server.stop().await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_under_load_completes_every_admitted_stream() {
    let n = scale(64, 256);
    let max_tokens = 128;
    let server = mock_server(config(), opts()).await;
    let c = client();
    let url = server.url("/v1/chat/completions");
    let admitted = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let tasks: Vec<_> = (0..n)
        .map(|i| {
            let (c, url, admitted) = (c.clone(), url.clone(), admitted.clone());
            tokio::spawn(async move {
                let start = Instant::now();
                let r = c
                    .post(&url)
                    .json(&stream_body(i, max_tokens))
                    .send()
                    .await
                    .unwrap();
                let status = r.status().as_u16();
                admitted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                let events = sse_data(&r.text().await.unwrap());
                (status, events, start.elapsed())
            })
        })
        .collect();
    // Shut down once every stream has its response headers (admitted), most still running.
    let start = Instant::now();
    while admitted.load(std::sync::atomic::Ordering::SeqCst) < n {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "streams not admitted"
        );
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let in_flight = server.state.num_inflight();
    assert!(in_flight > 0, "every stream finished before the shutdown");
    let state = server.state.clone();
    let drained = server.stop();
    let mut run = Run::new("sigterm");
    let drained = drained.await;
    for t in tasks {
        let (status, events, took) = t.await.unwrap();
        run.requests += 1;
        run.server_errors += usize::from(status >= 500);
        assert_eq!(status, 200);
        assert!(
            complete(&events),
            "a stream cut by the shutdown: {:?}",
            tail(&events)
        );
        run.latencies.push(took);
    }
    assert!(drained, "in-flight requests did not drain");
    assert_eq!(state.num_inflight(), 0);
    let engine = state.engine().unwrap();
    let stats = engine.stats();
    println!(
        "fault run sigterm: requests sent {}, faulty clients 0, 5xx seen {}, panics {}, \
         leaked blocks {}, running after {}, well-behaved {} p50 {:.1} ms p99 {:.1} ms; in flight at \
         shutdown {in_flight}, drained {drained}",
        run.requests,
        run.server_errors,
        usize::from(!engine.is_alive()),
        stats.num_blocks - stats.num_free_blocks,
        stats.scheduler.num_running,
        run.latencies.len(),
        run.percentile(0.5).as_secs_f64() * 1e3,
        run.percentile(0.99).as_secs_f64() * 1e3,
    );
    assert_eq!(run.server_errors, 0);
    assert!(engine.is_alive());
    assert_eq!(
        (
            stats.num_blocks - stats.num_free_blocks,
            stats.scheduler.num_running
        ),
        (0, 0)
    );
}
