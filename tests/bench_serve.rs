//! `flare bench serve`'s metric math on hand-made timings (exact expected values), and the
//! client end to end against a scripted mock OpenAI server on loopback whose chunk delays are
//! known.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::{Body, Bytes};
use axum::extract::{Json, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use flare::bench::arrivals::arrival_offsets;
use flare::bench::client::{first_model, Client, ClientConfig, Endpoint, LoadConfig};
use flare::bench::dataset::{SampleRequest, TextTokenizer};
use flare::bench::error::Result as BenchResult;
use flare::bench::metrics::{compute, tpot_s, RequestRecord};
use indicatif::ProgressBar;
use serde_json::{json, Map, Value};

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() < 1e-9
}

fn record(start: f64, ttft: f64, itl: &[f64], out: usize, prompt: usize) -> RequestRecord {
    RequestRecord {
        prompt_len: prompt,
        expected_output_len: out,
        output_tokens: out,
        output_tokens_from_usage: true,
        success: true,
        start_s: start,
        ttft_s: ttft,
        itl_s: itl.to_vec(),
        latency_s: ttft + itl.iter().sum::<f64>(),
        ..RequestRecord::default()
    }
}

#[test]
fn metrics_match_vllm_definitions_exactly() {
    let records = vec![
        record(0.0, 0.1, &[0.02, 0.03, 0.05], 4, 10),
        record(0.05, 0.2, &[0.04], 2, 20),
        record(0.1, 0.3, &[], 1, 30),
        RequestRecord {
            prompt_len: 99,
            error: Some("boom".into()),
            ..RequestRecord::default()
        },
    ];
    let m = compute(&records, 2.0);
    assert_eq!((m.completed, m.failed), (3, 1));
    assert_eq!((m.total_input_tokens, m.total_output_tokens), (60, 7));
    assert!(close(m.request_throughput, 1.5));
    assert!(close(m.output_throughput, 3.5));
    assert!(close(m.total_token_throughput, 33.5));
    // TTFT [100, 200, 300] ms.
    assert!(close(m.ttft_ms.mean, 200.0) && close(m.ttft_ms.median, 200.0));
    assert!(close(m.ttft_ms.p90, 280.0) && close(m.ttft_ms.p99, 298.0));
    // TPOT = (E2EL - TTFT) / (tokens - 1): 100/3 and 40 ms; the 1-token request has none.
    assert_eq!(m.tpot_ms.count, 2);
    assert!(close(m.tpot_ms.mean, (100.0 / 3.0 + 40.0) / 2.0));
    assert!(close(
        m.tpot_ms.p99,
        100.0 / 3.0 + 0.99 * (40.0 - 100.0 / 3.0)
    ));
    // ITL pools every gap of every request: [20, 30, 40, 50] ms.
    assert_eq!(m.itl_ms.count, 4);
    assert!(close(m.itl_ms.mean, 35.0) && close(m.itl_ms.median, 35.0));
    assert!(close(m.itl_ms.p90, 47.0) && close(m.itl_ms.p99, 49.7));
    // E2EL [200, 240, 300] ms.
    assert!(close(m.e2el_ms.mean, 740.0 / 3.0) && close(m.e2el_ms.median, 240.0));
    assert!(close(m.e2el_ms.p99, 240.0 + 0.98 * 60.0));
    // [0, .2), [.05, .29), [.1, .4) overlap at .1; all 7 tokens fall in the first second.
    assert_eq!(m.max_concurrent_requests, 3);
    assert!(close(m.max_output_tokens_per_s, 7.0));
    assert_eq!(tpot_s(&records[2]), None);
}

#[test]
fn back_to_back_requests_do_not_overlap_and_empty_runs_are_zero() {
    let a = record(0.0, 0.5, &[0.5], 2, 1);
    let b = record(1.0, 0.5, &[0.5], 2, 1);
    assert_eq!(compute(&[a, b], 2.0).max_concurrent_requests, 1);
    let m = compute(&[], 1.0);
    assert_eq!(
        (m.completed, m.ttft_ms.mean, m.max_output_tokens_per_s),
        (0, 0.0, 0.0)
    );
}

/// "w12 w5" <-> [12, 5]; any other word maps to id 0. Round trips exactly.
struct WordTokenizer;

impl TextTokenizer for WordTokenizer {
    fn encode(&self, text: &str) -> BenchResult<Vec<u32>> {
        Ok(text
            .split_whitespace()
            .map(|w| {
                w.strip_prefix('w')
                    .and_then(|n| n.parse().ok())
                    .unwrap_or(0)
            })
            .collect())
    }
    fn decode(&self, ids: &[u32]) -> BenchResult<String> {
        Ok(ids
            .iter()
            .map(|i| format!("w{i}"))
            .collect::<Vec<_>>()
            .join(" "))
    }
    fn plain_token_ids(&self) -> Vec<u32> {
        (0..1000).collect()
    }
}

/// How the mock streams: a pause before the first chunk, then one chunk per token.
#[derive(Clone, Copy)]
struct Script {
    first_delay: Duration,
    gap: Duration,
    send_usage: bool,
    /// Chat: a role-only chunk first, as vLLM's server sends.
    role_chunk: bool,
}

#[derive(Default)]
struct Served {
    body: Value,
    /// When each chunk carrying a choice was handed to the connection.
    sent: Vec<Instant>,
}

struct Mock {
    script: Script,
    served: Mutex<Vec<Arc<Mutex<Served>>>>,
    in_flight: AtomicUsize,
    peak: AtomicUsize,
}

/// Decrements in-flight when the response stream is dropped (finished or cancelled).
struct InFlight(Arc<Mock>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

const PROMPT_TOKENS: u64 = 7;

fn chunk(v: Value) -> Bytes {
    Bytes::from(format!("data: {v}\n\n"))
}

async fn completions(State(mock): State<Arc<Mock>>, Json(body): Json<Value>) -> Response {
    let chat = body.get("messages").is_some();
    let prompt = if chat {
        body["messages"][0]["content"]
            .as_str()
            .unwrap_or("")
            .to_string()
    } else {
        body["prompt"].as_str().unwrap_or("").to_string()
    };
    if prompt.contains("w999") {
        return (StatusCode::INTERNAL_SERVER_ERROR, "scripted failure").into_response();
    }
    let n = body
        .get("max_tokens")
        .or_else(|| body.get("max_completion_tokens"))
        .and_then(Value::as_u64)
        .unwrap_or(1) as usize;
    let now = mock.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
    mock.peak.fetch_max(now, Ordering::SeqCst);
    let served = Arc::new(Mutex::new(Served {
        body,
        sent: Vec::new(),
    }));
    mock.served.lock().unwrap().push(served.clone());
    let script = mock.script;
    let guard = InFlight(mock.clone());
    let total = n + usize::from(chat && script.role_chunk);
    let stream = futures_util::stream::unfold(0usize, move |i| {
        let served = served.clone();
        let _keep = &guard;
        async move {
            if i < total {
                let pause = if i == 0 {
                    script.first_delay
                } else {
                    script.gap
                };
                tokio::time::sleep(pause).await;
                let role = chat && script.role_chunk;
                let choice = match (chat, role && i == 0) {
                    (true, true) => {
                        json!({"index": 0, "delta": {"role": "assistant", "content": ""}})
                    }
                    (true, false) => {
                        let k = i - usize::from(role);
                        json!({"index": 0, "delta": {"content": format!("w{k} ")}})
                    }
                    (false, _) => json!({"index": 0, "text": format!("w{i} ")}),
                };
                served.lock().unwrap().sent.push(Instant::now());
                Some((
                    Ok::<_, std::io::Error>(chunk(json!({"choices": [choice]}))),
                    i + 1,
                ))
            } else if i == total {
                let usage = json!({"prompt_tokens": PROMPT_TOKENS, "completion_tokens": n});
                let last = if script.send_usage {
                    format!(
                        "data: {}\n\ndata: [DONE]\n\n",
                        json!({"choices": [], "usage": usage})
                    )
                } else {
                    "data: [DONE]\n\n".to_string()
                };
                Some((Ok(Bytes::from(last)), i + 1))
            } else {
                None
            }
        }
    });
    let mut resp = Body::from_stream(stream).into_response();
    resp.headers_mut()
        .insert("content-type", "text/event-stream".parse().unwrap());
    resp
}

async fn models() -> Json<Value> {
    Json(json!({"object": "list", "data": [{"id": "mock-model", "object": "model"}]}))
}

async fn start_mock(script: Script) -> (String, Arc<Mock>) {
    use axum::serve::{Listener, ListenerExt};
    let mock = Arc::new(Mock {
        script,
        served: Mutex::new(Vec::new()),
        in_flight: AtomicUsize::new(0),
        peak: AtomicUsize::new(0),
    });
    let app = Router::new()
        .route("/v1/completions", post(completions))
        .route("/v1/chat/completions", post(completions))
        .route("/v1/models", get(models))
        .with_state(mock.clone());
    // Nagle's algorithm would hold small chunks back and blur the timings under test.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap()
        .tap_io(|s| {
            let _ = s.set_nodelay(true);
        });
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (format!("http://{addr}"), mock)
}

fn client(base_url: &str, endpoint: Endpoint, ignore_eos: bool) -> Arc<Client> {
    Arc::new(
        Client::new(
            ClientConfig {
                base_url: base_url.to_string(),
                endpoint,
                model: "mock-model".into(),
                ignore_eos,
                temperature: None,
                api_key: None,
                extra_body: Map::new(),
            },
            Some(Arc::new(WordTokenizer)),
        )
        .unwrap(),
    )
}

fn requests(n: usize, prompt_len: usize, output_len: usize) -> Vec<SampleRequest> {
    (0..n)
        .map(|i| {
            let ids: Vec<u32> = (0..prompt_len as u32).map(|k| 100 * i as u32 + k).collect();
            SampleRequest {
                prompt: WordTokenizer.decode(&ids).unwrap(),
                prompt_ids: ids,
                expected_output_len: output_len,
            }
        })
        .collect()
}

/// Scheduling noise allowed between the mock's send and the client's receive (loaded CI).
const JITTER: f64 = 0.03;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_from_mock_server_with_known_timings() {
    let script = Script {
        first_delay: Duration::from_millis(120),
        gap: Duration::from_millis(40),
        send_usage: true,
        role_chunk: false,
    };
    let (url, mock) = start_mock(script).await;
    assert_eq!(first_model(&url, None).await.unwrap(), "mock-model");
    let c = client(&url, Endpoint::Completions, true);
    let reqs = requests(4, 3, 5);
    let load = LoadConfig {
        request_rate: f64::INFINITY,
        burstiness: 1.0,
        max_concurrency: Some(2),
        seed: 0,
    };
    let out = c.run(&reqs, &load, &ProgressBar::hidden()).await.unwrap();

    // The concurrency cap held, and the cap was used.
    assert_eq!(mock.peak.load(Ordering::SeqCst), 2);
    let served = mock.served.lock().unwrap();
    let by_prompt: HashMap<String, Arc<Mutex<Served>>> = served
        .iter()
        .map(|s| {
            (
                s.lock().unwrap().body["prompt"]
                    .as_str()
                    .unwrap()
                    .to_string(),
                s.clone(),
            )
        })
        .collect();
    for (req, rec) in reqs.iter().zip(&out.records) {
        assert!(rec.success, "{:?}", rec.error);
        let s = by_prompt[&req.prompt].lock().unwrap();
        // The request body is what vLLM's client sends.
        assert_eq!(s.body["model"], "mock-model");
        assert_eq!(s.body["stream"], true);
        assert_eq!(s.body["stream_options"]["include_usage"], true);
        assert_eq!(s.body["ignore_eos"], true);
        assert_eq!(s.body["max_tokens"], 5);
        // Usage wins over the client's own counts.
        assert_eq!(rec.output_tokens, 5);
        assert!(rec.output_tokens_from_usage);
        assert_eq!(rec.prompt_len, PROMPT_TOKENS as usize);
        assert_eq!(rec.generated_text, "w0 w1 w2 w3 w4 ");
        // One gap per chunk after the first; E2EL ends at the last token chunk.
        assert_eq!(rec.itl_s.len(), 4);
        assert!((rec.latency_s - rec.ttft_s - rec.itl_s.iter().sum::<f64>()).abs() < 1e-9);
        // Client-side gaps are the server's gaps, up to scheduling noise.
        for (k, itl) in rec.itl_s.iter().enumerate() {
            let server_gap = (s.sent[k + 1] - s.sent[k]).as_secs_f64();
            assert!(server_gap >= 0.040);
            assert!(
                (itl - server_gap).abs() < JITTER,
                "itl {itl} vs sent gap {server_gap}"
            );
        }
        assert!(
            rec.ttft_s >= 0.120 && rec.ttft_s < 0.120 + JITTER * 2.0,
            "ttft {}",
            rec.ttft_s
        );
    }
    // The last two waited for a slot: about one request's duration (120 + 4 * 40 ms).
    // Which two get the slots first is up to the scheduler, not the record order.
    let mut queued: Vec<f64> = out.records.iter().map(|r| r.queue_s).collect();
    queued.sort_by(f64::total_cmp);
    assert!(queued[..2].iter().all(|&q| q < JITTER), "{queued:?}");
    assert!(queued[2..].iter().all(|&q| q >= 0.28), "{queued:?}");

    let m = compute(&out.records, out.duration_s);
    assert_eq!((m.completed, m.failed, m.total_output_tokens), (4, 0, 20));
    assert_eq!(m.total_input_tokens, 4 * PROMPT_TOKENS as usize);
    assert_eq!(m.max_concurrent_requests, 2);
    let tpot = |r: &RequestRecord| (r.latency_s - r.ttft_s) / 4.0;
    let mean_tpot = out.records.iter().map(tpot).sum::<f64>() / 4.0;
    assert!((m.tpot_ms.mean - mean_tpot * 1e3).abs() < 1e-6);
    assert!((m.tpot_ms.median - 40.0).abs() < JITTER * 1e3);
    assert!((m.itl_ms.median - 40.0).abs() < JITTER * 1e3);
    assert!((m.ttft_ms.median - 120.0).abs() < 2.0 * JITTER * 1e3);
    assert!(out.duration_s >= 0.56, "two waves of 280 ms");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chat_without_usage_counts_tokens_itself_and_failures_are_recorded() {
    let script = Script {
        first_delay: Duration::from_millis(30),
        gap: Duration::from_millis(10),
        send_usage: false,
        role_chunk: true,
    };
    let (url, mock) = start_mock(script).await;
    let c = client(&url, Endpoint::ChatCompletions, false);
    let mut reqs = requests(3, 4, 6);
    reqs[1].prompt.push_str(" w999"); // the mock answers 500
    let load = LoadConfig {
        request_rate: f64::INFINITY,
        burstiness: 1.0,
        max_concurrency: None,
        seed: 0,
    };
    let out = c.run(&reqs, &load, &ProgressBar::hidden()).await.unwrap();
    assert_eq!(mock.peak.load(Ordering::SeqCst), 2);
    let (ok, bad) = (&out.records[0], &out.records[1]);
    assert!(!bad.success);
    assert!(
        bad.error.as_deref().unwrap().contains("500"),
        "{:?}",
        bad.error
    );
    assert!(ok.success);
    let body = &mock.served.lock().unwrap()[0].lock().unwrap().body.clone();
    assert_eq!(body["max_completion_tokens"], 6);
    assert!(body.get("ignore_eos").is_none());
    assert_eq!(ok.generated_text, "w0 w1 w2 w3 w4 w5 ");
    // No usage chunk: the client's tokenizer counts the text; the prompt length is its own.
    assert!(!ok.output_tokens_from_usage);
    assert_eq!((ok.output_tokens, ok.prompt_len), (6, 4));
    // vLLM counts the role-only chunk as the first token: 1 + 6 chunks, 6 gaps.
    assert_eq!(ok.itl_s.len(), 6);
    let m = compute(&out.records, out.duration_s);
    assert_eq!((m.completed, m.failed), (2, 1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poisson_arrivals_send_on_schedule() {
    let script = Script {
        first_delay: Duration::from_millis(5),
        gap: Duration::from_millis(5),
        send_usage: true,
        role_chunk: false,
    };
    let (url, _mock) = start_mock(script).await;
    let c = client(&url, Endpoint::Completions, true);
    let reqs = requests(8, 2, 2);
    let load = LoadConfig {
        request_rate: 20.0,
        burstiness: 1.0,
        max_concurrency: None,
        seed: 3,
    };
    let out = c.run(&reqs, &load, &ProgressBar::hidden()).await.unwrap();
    let expected = arrival_offsets(8, 20.0, 1.0, 3).unwrap();
    assert!((expected[7] - 0.4).abs() < 1e-9);
    for (rec, want) in out.records.iter().zip(&expected) {
        assert!(rec.success);
        assert!(
            rec.start_s >= want - 1e-3 && rec.start_s < want + JITTER,
            "sent at {} instead of {want}",
            rec.start_s
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_server_fails_the_check() {
    // Bind then drop: a loopback port with nothing listening.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let c = client(
        &format!("http://127.0.0.1:{port}"),
        Endpoint::Completions,
        false,
    );
    let err = c
        .check(&requests(1, 2, 2)[0])
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("test request"), "{err}");
}
