//! Per-key limits and cost control through real HTTP on loopback, over the MockRunner
//! "alphabet" model: tokens and requests per minute, concurrency, the daily budget, the
//! max_tokens cap (clamp and 400), OpenAI's x-ratelimit headers, per-key counters on /metrics,
//! the `priority` field under FCFS, and the priority policy (queue order and preemption; the
//! `--scheduling-policy` flag end to end through the binary and the real SmolLM2 GGUF).

mod common;

use std::time::Duration;

use common::*;
use flare::server::{keys, ServerConfig};
use serde_json::{json, Value};

const KEYS: &str = r#"
[[keys]]
id = "tpm-a"
key = "sk-a-secret"
tokens_per_minute = 300

[[keys]]
id = "tpm-b"
key = "sk-b-secret"
tokens_per_minute = 300

[[keys]]
id = "one-at-a-time"
key = "sk-c-secret"
max_concurrent_requests = 1

[[keys]]
id = "rpm"
key = "sk-d-secret"
requests_per_minute = 2

[[keys]]
id = "clamp"
key = "sk-e-secret"
max_tokens = 3

[[keys]]
id = "reject"
key = "sk-f-secret"
max_tokens = 3
max_tokens_mode = "reject"

[[keys]]
id = "daily"
key = "sk-g-secret"
daily_token_budget = 100
"#;

fn keyed_config() -> ServerConfig {
    ServerConfig {
        api_keys: keys::parse(KEYS).unwrap(),
        ..config()
    }
}

struct Reply {
    status: u16,
    headers: reqwest::header::HeaderMap,
    body: Value,
}

impl Reply {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).map(|v| v.to_str().unwrap())
    }

    fn num(&self, name: &str) -> u64 {
        self.header(name)
            .unwrap_or_else(|| panic!("no {name} header: {:?}", self.headers))
            .parse()
            .unwrap()
    }
}

async fn send(c: &reqwest::Client, url: &str, key: &str, body: Value) -> Reply {
    let r = c
        .post(url)
        .bearer_auth(key)
        .json(&body)
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    let headers = r.headers().clone();
    let text = r.text().await.unwrap();
    let body = serde_json::from_str(&text).unwrap_or(Value::String(text));
    Reply {
        status,
        headers,
        body,
    }
}

/// `6m0s`, `1.5s`, `17ms` -> seconds.
fn reset_secs(s: &str) -> f64 {
    if let Some(ms) = s.strip_suffix("ms") {
        return ms.parse::<f64>().unwrap() / 1000.0;
    }
    let s = s.strip_suffix('s').unwrap();
    match s.split_once('m') {
        Some((m, s)) => m.parse::<f64>().unwrap() * 60.0 + s.parse::<f64>().unwrap(),
        None => s.parse().unwrap(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_over_its_tokens_per_minute_gets_429s_and_another_key_does_not() {
    let server = mock_server(keyed_config(), MockOpts::default()).await;
    let c = client();
    let url = server.url("/v1/chat/completions");
    let body = chat_body(json!({"max_tokens": 30}));

    // Settled to what it used: the headers after the first request show exactly its usage.
    let first = send(&c, &url, "sk-a-secret", body.clone()).await;
    assert_eq!(first.status, 200, "{:?}", first.body);
    let used = first.body["usage"]["total_tokens"].as_u64().unwrap();
    assert_eq!(
        first.body["usage"]["completion_tokens"], 27,
        "the alphabet and EOS"
    );
    assert_eq!(first.num("x-ratelimit-limit-tokens"), 300);
    assert_eq!(first.num("x-ratelimit-remaining-tokens"), 300 - used);
    let reset = reset_secs(first.header("x-ratelimit-reset-tokens").unwrap());
    assert!(reset > 0.0 && reset <= 60.0, "{reset}");

    // Each request reserves prompt + max_tokens up front; keep going until refused.
    let prompt = first.body["usage"]["prompt_tokens"].as_u64().unwrap();
    let mut sent = 1;
    let refused = loop {
        let r = send(&c, &url, "sk-a-secret", body.clone()).await;
        sent += 1;
        if r.status == 429 {
            break r;
        }
        assert_eq!(r.status, 200, "{:?}", r.body);
        assert!(sent < 10, "never limited");
    };
    let fits = (0..).take_while(|k| k * used + prompt + 30 <= 300).count() as u64;
    assert_eq!(
        sent - 1,
        fits,
        "used {used} per request, reserved {}",
        prompt + 30
    );
    assert_eq!(refused.body["error"]["type"], "tokens");
    assert_eq!(refused.body["error"]["code"], "rate_limit_exceeded");
    let msg = refused.body["error"]["message"].as_str().unwrap();
    assert!(
        msg.contains("tokens per min") && msg.contains("300"),
        "{msg}"
    );
    assert_eq!(refused.num("x-ratelimit-limit-tokens"), 300);
    let remaining = refused.num("x-ratelimit-remaining-tokens");
    assert!(
        remaining < prompt + 30,
        "{remaining}: the request would have fit"
    );
    assert_eq!(remaining, 300 - (sent - 1) * used);
    let reset = reset_secs(refused.header("x-ratelimit-reset-tokens").unwrap());
    assert!(reset > 0.0 && reset <= 60.0, "{reset}");
    let retry: u64 = refused.header("retry-after").unwrap().parse().unwrap();
    assert!((1..=60).contains(&retry), "{retry}");

    // Another key is unaffected.
    let other = send(&c, &url, "sk-b-secret", body.clone()).await;
    assert_eq!(other.status, 200, "{:?}", other.body);
    assert_eq!(other.num("x-ratelimit-remaining-tokens"), 300 - used);

    // A request larger than the whole limit can never fit: said so, and no Retry-After.
    let huge = send(
        &c,
        &url,
        "sk-b-secret",
        chat_body(json!({"max_tokens": 200, "n": 2})),
    )
    .await;
    assert_eq!(huge.status, 429);
    assert!(huge.header("retry-after").is_none());
    let msg = huge.body["error"]["message"].as_str().unwrap();
    assert!(msg.contains("too large"), "{msg}");

    // Per-key counters, labelled by id, never by secret.
    let m = metrics(&c, &server).await;
    assert!(!m.contains("secret"), "{m}");
    let line = |name: &str, id: &str| {
        m.lines()
            .find(|l| l.starts_with(name) && l.contains(&format!("key_id=\"{id}\"")))
            .unwrap_or_else(|| panic!("no {name} for {id}:\n{m}"))
            .rsplit(' ')
            .next()
            .unwrap()
            .parse::<f64>()
            .unwrap()
    };
    let ok_a = (sent - 1) as f64;
    assert_eq!(
        line("flare:key_prompt_tokens_total", "tpm-a"),
        ok_a * prompt as f64
    );
    assert_eq!(
        line("flare:key_completion_tokens_total", "tpm-a"),
        ok_a * 27.0
    );
    assert_eq!(line("flare:key_completion_tokens_total", "tpm-b"), 27.0);
    assert!(
        line("flare:key_cached_prompt_tokens_total", "tpm-a") > 0.0,
        "prefix cache hits"
    );
    assert_eq!(line("flare:key_rate_limited_total", "tpm-a"), 1.0);
    assert_eq!(line("flare:key_rate_limited_total", "tpm-b"), 1.0);
    wait_idle(&c, &server, Duration::from_secs(10)).await;
    assert!(server.stop().await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrency_and_requests_per_minute_limits() {
    let opts = MockOpts {
        step_delay: Duration::from_millis(20),
        ..MockOpts::default()
    };
    let server = mock_server(keyed_config(), opts).await;
    let c = client();
    let url = server.url("/v1/chat/completions");

    // One stream open (its client not reading) holds the key's only place.
    let open = c
        .post(&url)
        .bearer_auth("sk-c-secret")
        .json(&chat_body(
            json!({"stream": true, "max_tokens": 200, "ignore_eos": true}),
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(open.status().as_u16(), 200);
    let second = send(&c, &url, "sk-c-secret", chat_body(json!({}))).await;
    assert_eq!(second.status, 429, "{:?}", second.body);
    assert_eq!(second.body["error"]["type"], "requests");
    assert_eq!(second.header("retry-after"), Some("1"));
    // Other keys are not held up.
    assert_eq!(
        send(&c, &url, "sk-a-secret", chat_body(json!({})))
            .await
            .status,
        200
    );
    drop(open);
    // The place is given back once the engine has seen the client go.
    let mut third = send(&c, &url, "sk-c-secret", chat_body(json!({}))).await;
    for _ in 0..200 {
        if third.status != 429 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
        third = send(&c, &url, "sk-c-secret", chat_body(json!({}))).await;
    }
    assert_eq!(third.status, 200, "{:?}", third.body);

    // Two requests a minute: the third is refused with the requests headers.
    for i in 0..2 {
        let r = send(&c, &url, "sk-d-secret", chat_body(json!({"max_tokens": 2}))).await;
        assert_eq!(r.status, 200);
        assert_eq!(r.num("x-ratelimit-limit-requests"), 2);
        assert_eq!(r.num("x-ratelimit-remaining-requests"), 1 - i);
    }
    let r = send(&c, &url, "sk-d-secret", chat_body(json!({"max_tokens": 2}))).await;
    assert_eq!(r.status, 429);
    assert_eq!(r.body["error"]["code"], "rate_limit_exceeded");
    assert_eq!(r.num("x-ratelimit-remaining-requests"), 0);
    let reset = reset_secs(r.header("x-ratelimit-reset-requests").unwrap());
    assert!(reset > 0.0 && reset <= 60.0);
    assert!(r.header("retry-after").is_some());
    wait_idle(&c, &server, Duration::from_secs(10)).await;
    assert!(server.stop().await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_tokens_cap_clamps_or_refuses_and_daily_budget_holds() {
    let server = mock_server(keyed_config(), MockOpts::default()).await;
    let c = client();
    let chat = server.url("/v1/chat/completions");
    let cmpl = server.url("/v1/completions");
    let completion_tokens = |r: &Reply| r.body["usage"]["completion_tokens"].as_u64().unwrap();

    for body in [
        chat_body(json!({"max_tokens": 10})),
        chat_body(json!({"max_completion_tokens": 10})),
        chat_body(json!({})),
    ] {
        let r = send(&c, &chat, "sk-e-secret", body).await;
        assert_eq!(r.status, 200, "{:?}", r.body);
        assert_eq!(completion_tokens(&r), 3);
        assert_eq!(r.body["choices"][0]["message"]["content"], "abc");
        assert_eq!(r.body["choices"][0]["finish_reason"], "length");
    }
    let r = send(
        &c,
        &cmpl,
        "sk-e-secret",
        json!({"prompt": "x", "max_tokens": 50}),
    )
    .await;
    assert_eq!(
        (r.status, completion_tokens(&r)),
        (200, 3),
        "yz and EOS: {:?}",
        r.body
    );

    for (url, body, param) in [
        (&chat, chat_body(json!({"max_tokens": 10})), "max_tokens"),
        (
            &chat,
            chat_body(json!({"max_completion_tokens": 4})),
            "max_completion_tokens",
        ),
        (&cmpl, json!({"prompt": "x", "max_tokens": 4}), "max_tokens"),
    ] {
        let r = send(&c, url, "sk-f-secret", body).await;
        assert_eq!(r.status, 400, "{:?}", r.body);
        let (msg, kind, p) = error_of(&r.body);
        assert_eq!((kind, p), ("invalid_request_error", json!(param)));
        assert!(msg.contains('3'), "{msg}");
    }
    // At the cap, and a default lowered to the cap, are fine in reject mode.
    let r = send(
        &c,
        &chat,
        "sk-f-secret",
        chat_body(json!({"max_tokens": 3})),
    )
    .await;
    assert_eq!((r.status, completion_tokens(&r)), (200, 3));
    let r = send(&c, &chat, "sk-f-secret", chat_body(json!({}))).await;
    assert_eq!((r.status, completion_tokens(&r)), (200, 3));

    // A daily budget of 100 tokens: the first request reserves prompt + 10, uses less.
    let r = send(
        &c,
        &chat,
        "sk-g-secret",
        chat_body(json!({"max_tokens": 10})),
    )
    .await;
    assert_eq!(r.status, 200);
    let used = r.body["usage"]["total_tokens"].as_u64().unwrap();
    assert_eq!(r.num("x-ratelimit-remaining-tokens"), 100 - used);
    let r = send(
        &c,
        &chat,
        "sk-g-secret",
        chat_body(json!({"max_tokens": 60})),
    )
    .await;
    assert_eq!(r.status, 429, "{:?}", r.body);
    assert_eq!(r.body["error"]["code"], "insufficient_quota");
    let reset = reset_secs(r.header("x-ratelimit-reset-tokens").unwrap());
    assert!(reset > 0.0 && reset <= 86_400.0);

    // Keys are required, and the wrong one is refused.
    let r = c
        .post(&chat)
        .json(&chat_body(json!({})))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 401);
    let r = send(&c, &chat, "sk-a-secreT", chat_body(json!({}))).await;
    assert_eq!(r.status, 401);
    wait_idle(&c, &server, Duration::from_secs(10)).await;
    assert!(server.stop().await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn priority_field_is_refused_under_fcfs() {
    let server = mock_server(config(), MockOpts::default()).await;
    let c = client();
    let (s, v) = post(
        &c,
        &server.url("/v1/chat/completions"),
        chat_body(json!({"priority": 3})),
    )
    .await;
    assert_eq!(s, 400, "{v}");
    assert_eq!(error_of(&v).2, json!("priority"));
    let (s, _) = post(
        &c,
        &server.url("/v1/completions"),
        json!({"prompt": "x", "priority": 0}),
    )
    .await;
    assert_eq!(s, 200);
    assert!(server.stop().await);
}

/// Under the priority policy the waiting queue is ordered by the key's priority, then the
/// request's `priority` field, then arrival. One sequence runs at a time, so completions come
/// in admission order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn priority_policy_orders_by_key_then_request_field() {
    let keys = r#"
        [[keys]]
        id = "batch"
        key = "sk-batch"
        priority = 5

        [[keys]]
        id = "interactive"
        key = "sk-interactive"
        priority = -1
    "#;
    let opts = MockOpts {
        max_num_seqs: 1,
        step_delay: Duration::from_millis(5),
        policy: flare::scheduler::SchedulingPolicy::Priority,
        ..MockOpts::default()
    };
    let cfg = ServerConfig {
        api_keys: keys::parse(keys).unwrap(),
        ..config()
    };
    let server = mock_server(cfg, opts).await;
    let c = client();
    let url = server.url("/v1/completions");
    // Holds the only running place until dropped.
    let blocker = c
        .post(&url)
        .bearer_auth("sk-batch")
        .json(&json!({"prompt": "x", "max_tokens": 200, "ignore_eos": true, "stream": true}))
        .send()
        .await
        .unwrap();
    assert_eq!(blocker.status().as_u16(), 200);
    let order = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let mut tasks = Vec::new();
    // (name, key, priority field), sent in this order.
    let reqs = [
        ("batch-0", "sk-batch", 0),
        ("batch-minus-9", "sk-batch", -9),
        ("interactive-3", "sk-interactive", 3),
        ("interactive-0", "sk-interactive", 0),
    ];
    for (i, (name, key, prio)) in reqs.into_iter().enumerate() {
        let (c2, url, order) = (c.clone(), url.clone(), order.clone());
        tasks.push(tokio::spawn(async move {
            let body =
                json!({"prompt": "x", "max_tokens": 20, "ignore_eos": true, "priority": prio});
            let r = send(&c2, &url, key, body).await;
            assert_eq!(r.status, 200, "{name}: {:?}", r.body);
            order.lock().unwrap().push(name);
        }));
        // Each is queued before the next is sent.
        loop {
            let m = metrics(&c, &server).await;
            if metric(&m, "flare:num_requests_waiting").unwrap() as usize == i + 1 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }
    drop(blocker);
    for t in tasks {
        t.await.unwrap();
    }
    assert_eq!(
        *order.lock().unwrap(),
        vec!["interactive-0", "interactive-3", "batch-minus-9", "batch-0"]
    );
    let (s, v) = post(&c, &url, json!({"prompt": "x", "priority": 40000})).await;
    assert_eq!(s, 401, "{v}");
    let r = send(
        &c,
        &url,
        "sk-batch",
        json!({"prompt": "x", "priority": 40000}),
    )
    .await;
    assert_eq!(r.status, 400);
    assert_eq!(error_of(&r.body).2, json!("priority"));
    wait_idle(&c, &server, Duration::from_secs(10)).await;
    assert!(server.stop().await);
}

/// Preemption takes the least important sequence first under the priority policy, and the
/// newest under FCFS. A low-priority stream starts first; a high-priority one joins it; the
/// pool holds one of them to the end but not both. Under priority the later, more important
/// request finishes first (the earlier one is preempted and recomputed); under FCFS the later
/// one is the victim and the earlier one finishes first.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn preemption_takes_the_lowest_priority_first() {
    let keys = r#"
        [[keys]]
        id = "batch"
        key = "sk-batch"
        priority = 5

        [[keys]]
        id = "interactive"
        key = "sk-interactive"
        priority = -1
    "#;
    for policy in [
        flare::scheduler::SchedulingPolicy::Priority,
        flare::scheduler::SchedulingPolicy::Fcfs,
    ] {
        let opts = MockOpts {
            // 200 tokens each need 13 blocks of 16: one fits, two do not.
            num_blocks: 16,
            step_delay: Duration::from_millis(2),
            policy,
            ..MockOpts::default()
        };
        let cfg = ServerConfig {
            api_keys: keys::parse(keys).unwrap(),
            ..config()
        };
        let server = mock_server(cfg, opts).await;
        let c = client();
        let url = server.url("/v1/completions");
        let body = json!({"prompt": "x", "max_tokens": 200, "ignore_eos": true, "stream": true});
        let finished = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let start_stream = |name: &'static str, key: &'static str| {
            let (c, url, body, finished) = (c.clone(), url.clone(), body.clone(), finished.clone());
            let (first_tx, first_rx) = tokio::sync::oneshot::channel();
            let task = tokio::spawn(async move {
                let mut r = c
                    .post(&url)
                    .bearer_auth(key)
                    .json(&body)
                    .send()
                    .await
                    .unwrap();
                assert_eq!(r.status().as_u16(), 200, "{name}");
                let mut text = String::new();
                let mut first_tx = Some(first_tx);
                while let Some(chunk) = r.chunk().await.unwrap() {
                    text.push_str(&String::from_utf8_lossy(&chunk));
                    // Running: a few tokens are out.
                    if text.matches("data: ").count() >= 3 {
                        if let Some(tx) = first_tx.take() {
                            let _ = tx.send(());
                        }
                    }
                }
                let events = sse_data(&text);
                assert_eq!(events.last(), Some(&json!("[DONE]")), "{name}");
                assert!(
                    events
                        .iter()
                        .any(|e| e["choices"][0]["finish_reason"] == "length"),
                    "{name}"
                );
                finished.lock().unwrap().push(name);
            });
            (task, first_rx)
        };
        let (low, low_running) = start_stream("low", "sk-batch");
        low_running.await.unwrap();
        let (high, _) = start_stream("high", "sk-interactive");
        low.await.unwrap();
        high.await.unwrap();
        let m = metrics(&c, &server).await;
        assert!(
            metric(&m, "flare:num_preemptions_total").unwrap() > 0.0,
            "{policy:?}: the pool never ran out"
        );
        let want = match policy {
            flare::scheduler::SchedulingPolicy::Priority => vec!["high", "low"],
            flare::scheduler::SchedulingPolicy::Fcfs => vec!["low", "high"],
        };
        assert_eq!(*finished.lock().unwrap(), want, "{policy:?}");
        wait_idle(&c, &server, Duration::from_secs(10)).await;
        assert!(server.stop().await);
    }
}

/// `--scheduling-policy` end to end through the `flare serve` binary and the real SmolLM2
/// GGUF: without the flag a key file that sets priorities is refused at start, naming the flag;
/// with it, the engine orders its waiting queue by key, then request priority.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scheduling_policy_flag_reaches_the_engine() {
    use common::process::{free_port, FlareProcess};
    let gguf = flare::models::source::default_gguf_path();
    assert!(
        gguf.exists(),
        "{} missing: run `python3 models/fetch_smollm2.py`",
        gguf.display()
    );
    let dir = std::env::temp_dir().join(format!("flare-policy-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let keys_file = dir.join("keys.toml");
    std::fs::write(
        &keys_file,
        "[[keys]]\nid = \"batch\"\nkey = \"sk-batch\"\npriority = 5\n\n\
         [[keys]]\nid = \"interactive\"\nkey = \"sk-interactive\"\npriority = -1\n",
    )
    .unwrap();
    let keys_arg = keys_file.to_str().unwrap();

    let refused = std::process::Command::new(env!("CARGO_BIN_EXE_flare"))
        .arg("serve")
        .arg(&gguf)
        .args(["--api-keys", keys_arg, "--port", &free_port().to_string()])
        .env("HF_HUB_OFFLINE", "1")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success(), "{err}");
    assert!(err.contains("--scheduling-policy priority"), "{err}");

    let server = FlareProcess::start(
        &gguf,
        &[
            "--served-model-name",
            "smollm2",
            "--api-keys",
            keys_arg,
            "--scheduling-policy",
            "priority",
            "--max-num-seqs",
            "1",
            "--max-model-len",
            "1024",
            "--kv-cache-memory",
            "67108864",
        ],
        &[],
    )
    .await;
    let c = client();
    let url = format!("{}/v1/completions", server.base);
    // Holds the only running place until dropped.
    let blocker = c
        .post(&url)
        .bearer_auth("sk-batch")
        .json(
            &json!({"model": "smollm2", "prompt": "Once upon a time", "max_tokens": 900,
            "ignore_eos": true, "stream": true}),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(blocker.status().as_u16(), 200);
    let order = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let mut tasks = Vec::new();
    let reqs = [
        ("batch-0", "sk-batch", 0),
        ("interactive-3", "sk-interactive", 3),
        ("interactive-0", "sk-interactive", 0),
    ];
    for (i, (name, key, prio)) in reqs.into_iter().enumerate() {
        let (c2, url, order) = (c.clone(), url.clone(), order.clone());
        tasks.push(tokio::spawn(async move {
            let body = json!({"model": "smollm2", "prompt": "Hello", "max_tokens": 2,
                "priority": prio});
            let r = send(&c2, &url, key, body).await;
            assert_eq!(r.status, 200, "{name}: {:?}", r.body);
            order.lock().unwrap().push(name);
        }));
        // Each is queued before the next is sent.
        loop {
            let m = metrics(&c, &server).await;
            if metric(&m, "flare:num_requests_waiting").unwrap() as usize == i + 1 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }
    drop(blocker);
    for t in tasks {
        t.await.unwrap();
    }
    assert_eq!(
        *order.lock().unwrap(),
        vec!["interactive-0", "interactive-3", "batch-0"]
    );
    wait_idle(&c, &server, Duration::from_secs(30)).await;
    let _ = std::fs::remove_dir_all(&dir);
}

/// The OpenAPI document says what the server does: security only with keys, and the ranges
/// validation enforces.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openapi_declares_security_only_with_keys_and_the_enforced_ranges() {
    let c = client();
    for keyed in [false, true] {
        let cfg = if keyed { keyed_config() } else { config() };
        let server = mock_server(cfg, MockOpts::default()).await;
        let (s, text) = get(&c, &server.url("/openapi.json")).await;
        assert_eq!(s, 200);
        let doc: Value = serde_json::from_str(&text).unwrap();
        let op = &doc["paths"]["/v1/chat/completions"]["post"];
        assert_eq!(op.get("security").is_some(), keyed, "{op}");
        assert_eq!(op["responses"].get("401").is_some(), keyed);
        let scheme = &doc["components"]["securitySchemes"]["bearer"];
        assert_eq!(!scheme.is_null(), keyed);
        let schemas = &doc["components"]["schemas"];
        // allOf: the shared sampling fields, then chat's own.
        let chat = &schemas["ChatCompletionRequest"]["allOf"][1];
        assert_eq!(chat["properties"]["messages"]["minItems"], 1, "{chat}");
        assert_eq!(chat["properties"]["max_completion_tokens"]["minimum"], 1);
        let sampling = &schemas["SamplingFields"]["properties"];
        let n = &sampling["n"];
        assert_eq!(
            (n["minimum"].clone(), n["maximum"].clone()),
            (json!(1), json!(128)),
            "{schemas}"
        );
        assert_eq!(sampling["max_tokens"]["minimum"], 1);
        assert_eq!(sampling["top_p"]["exclusiveMinimum"], 0);
        assert!(server.stop().await);
    }
}
