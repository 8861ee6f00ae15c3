//! Shared by the server tests: a MockRunner engine with a tiny byte-level tokenizer, a server
//! on a free loopback port, SSE and Prometheus parsing.
#![allow(dead_code)]

pub mod process;

use std::sync::Arc;
use std::time::{Duration, Instant};

use flare::engine::{EngineCore, EngineHandle};
use flare::runner::{MockRunner, ModelRunner, ModelRunnerOutput, SchedulerOutput};
use flare::scheduler::{config::SchedulerConfig, Scheduler, SchedulingPolicy};
use flare::server::{AppState, ServerConfig};
use flare::tokenizer::{test_util, Tokenizer};
use serde_json::{json, Value};
use tokio::sync::oneshot;

pub const BLOCK_SIZE: usize = 16;
/// The test tokenizer's EOS (`<|im_end|>`).
pub const EOS: u32 = 2;
/// ChatML, as SmolLM2 uses, without its default system prompt.
pub const CHATML: &str = "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}";

/// The test tokenizer's id of a single byte (3 control tokens come first).
pub fn byte_id(b: u8) -> u32 {
    3 + b as u32
}

/// A toy model that recites the alphabet: after a letter it says the next one, after `z` it
/// ends (EOS), after anything else it starts at `a`. So a chat prompt (ending in a newline)
/// gets "abc...z" then EOS, and a prompt ending in "x" gets "yz".
pub fn alphabet_token(ctx: &[u32]) -> u32 {
    match ctx.last() {
        Some(&t) if t == byte_id(b'z') => EOS,
        Some(&t) if (byte_id(b'a')..byte_id(b'z')).contains(&t) => t + 1,
        _ => byte_id(b'a'),
    }
}

pub const ALPHABET: &str = "abcdefghijklmnopqrstuvwxyz";

/// MockRunner that takes `delay` per step, like a real forward pass would.
pub struct SlowRunner {
    inner: MockRunner,
    delay: Duration,
}

impl ModelRunner for SlowRunner {
    fn add_sequence(&mut self, id: u64, p: &flare::request::SamplingParams, prompt: &[u32]) {
        self.inner.add_sequence(id, p, prompt);
    }

    fn remove_sequence(&mut self, id: u64) {
        self.inner.remove_sequence(id);
    }

    fn execute(
        &mut self,
        out: &SchedulerOutput,
        _: &dyn flare::runner::SeqTokens,
    ) -> anyhow::Result<ModelRunnerOutput> {
        std::thread::sleep(self.delay);
        self.inner.execute(out)
    }
}

#[derive(Debug, Clone)]
pub struct MockOpts {
    pub num_blocks: usize,
    pub max_model_len: usize,
    pub step_delay: Duration,
    pub max_num_seqs: usize,
    pub policy: SchedulingPolicy,
}

impl Default for MockOpts {
    fn default() -> Self {
        Self {
            num_blocks: 512,
            max_model_len: 256,
            step_delay: Duration::ZERO,
            max_num_seqs: 256,
            policy: SchedulingPolicy::Fcfs,
        }
    }
}

pub fn tokenizer() -> Tokenizer {
    let mut tok = Tokenizer::from_gguf(&test_util::byte_level_content()).unwrap();
    tok.chat_template = Some(CHATML.into());
    tok
}

pub fn mock_engine(opts: &MockOpts) -> (EngineHandle, Arc<Tokenizer>) {
    let tok = Arc::new(tokenizer());
    let opts = opts.clone();
    let engine_tok = tok.clone();
    let handle = EngineHandle::spawn(move || {
        let cfg = SchedulerConfig {
            block_size: BLOCK_SIZE,
            max_num_seqs: opts.max_num_seqs,
            policy: opts.policy,
            ..SchedulerConfig::default()
        };
        let scheduler = Scheduler::new(cfg, opts.num_blocks, opts.max_model_len, vec![EOS])?;
        let inner = MockRunner::with_token_fn(
            opts.num_blocks,
            BLOCK_SIZE,
            Box::new(|_, ctx| alphabet_token(ctx)),
        );
        let runner = SlowRunner {
            inner,
            delay: opts.step_delay,
        };
        let mut core = EngineCore::new(scheduler, runner, engine_tok);
        // Every server test checks the block accounting after every step.
        core.set_check_invariants(true);
        Ok(core)
    })
    .unwrap();
    (handle, tok)
}

/// Anything the tests reach over HTTP: the in-process [`TestServer`], or a `flare serve` child.
pub trait ServerUrl {
    fn url(&self, path: &str) -> String;
}

impl ServerUrl for TestServer {
    fn url(&self, path: &str) -> String {
        TestServer::url(self, path)
    }
}

impl ServerUrl for process::FlareProcess {
    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }
}

pub struct TestServer {
    pub base: String,
    pub state: Arc<AppState>,
    shutdown: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<std::io::Result<bool>>>,
}

impl TestServer {
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// Waits for the server to stop on its own (no signal sent), at most `limit`.
    pub async fn join(mut self, limit: Duration) -> std::io::Result<bool> {
        tokio::time::timeout(limit, self.task.take().unwrap())
            .await
            .expect("the server did not stop on its own")
            .unwrap()
    }

    /// Signals shutdown and waits for the server to drain; true if everything finished.
    pub async fn stop(mut self) -> bool {
        let _ = self.shutdown.take().unwrap().send(());
        self.task.take().unwrap().await.unwrap().unwrap()
    }
}

/// Serves `state` on 127.0.0.1 (a free port) on the current runtime.
pub async fn serve(state: Arc<AppState>) -> TestServer {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let (tx, rx) = oneshot::channel::<()>();
    let task = tokio::spawn(flare::server::serve(
        listener,
        state.clone(),
        async move {
            let _ = rx.await;
        },
        Duration::from_secs(10),
    ));
    TestServer {
        base,
        state,
        shutdown: Some(tx),
        task: Some(task),
    }
}

pub fn config() -> ServerConfig {
    ServerConfig {
        served_model_names: vec!["mock".into(), "mock-alias".into()],
        model_root: "mock-model".into(),
        ..ServerConfig::default()
    }
}

/// A server over the alphabet mock, loaded and ready.
pub async fn mock_server(config: ServerConfig, opts: MockOpts) -> TestServer {
    let state = AppState::new(ServerConfig {
        max_num_seqs: opts.max_num_seqs,
        scheduling_policy: opts.policy,
        ..config
    });
    let (engine, tok) = mock_engine(&opts);
    state.set_loaded(engine, tok, opts.max_model_len, "mock".into());
    serve(state).await
}

pub fn client() -> reqwest::Client {
    // Loopback only: no proxy from the environment may reroute it.
    reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(60))
        .build()
        .unwrap()
}

pub async fn post(c: &reqwest::Client, url: &str, body: Value) -> (u16, Value) {
    let r = c.post(url).json(&body).send().await.unwrap();
    let status = r.status().as_u16();
    let text = r.text().await.unwrap();
    let v = serde_json::from_str(&text).unwrap_or_else(|_| Value::String(text));
    (status, v)
}

pub async fn get(c: &reqwest::Client, url: &str) -> (u16, String) {
    let r = c.get(url).send().await.unwrap();
    (r.status().as_u16(), r.text().await.unwrap())
}

/// The `data:` payloads of an SSE body, `[DONE]` as the string "[DONE]".
pub fn sse_data(body: &str) -> Vec<Value> {
    body.split("\n\n")
        .filter_map(|ev| {
            ev.lines()
                .find_map(|l| l.strip_prefix("data: ").or_else(|| l.strip_prefix("data:")))
        })
        .map(|d| serde_json::from_str(d).unwrap_or_else(|_| Value::String(d.to_string())))
        .collect()
}

pub async fn post_stream(c: &reqwest::Client, url: &str, body: Value) -> Vec<Value> {
    let r = c.post(url).json(&body).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let ct = r.headers()["content-type"].to_str().unwrap().to_string();
    assert!(ct.starts_with("text/event-stream"), "{ct}");
    sse_data(&r.text().await.unwrap())
}

/// Sum of a metric's samples over all label sets (None if absent).
pub fn metric(text: &str, name: &str) -> Option<f64> {
    let mut found = None;
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let Some(rest) = line.strip_prefix(name) else {
            continue;
        };
        if !(rest.starts_with('{') || rest.starts_with(' ')) {
            continue;
        }
        let v: f64 = rest.rsplit(' ').next().unwrap().parse().unwrap();
        *found.get_or_insert(0.0) += v;
    }
    found
}

pub async fn metrics(c: &reqwest::Client, server: &impl ServerUrl) -> String {
    let (s, text) = get(c, &server.url("/metrics")).await;
    assert_eq!(s, 200);
    text
}

/// Polls /metrics until no request runs or waits and no KV block is held.
pub async fn wait_idle(c: &reqwest::Client, server: &impl ServerUrl, limit: Duration) -> Duration {
    let start = Instant::now();
    loop {
        let m = metrics(c, server).await;
        let busy = metric(&m, "flare:num_requests_running").unwrap()
            + metric(&m, "flare:num_requests_waiting").unwrap()
            + metric(&m, "flare:kv_cache_used_blocks").unwrap();
        if busy == 0.0 {
            return start.elapsed();
        }
        assert!(
            start.elapsed() < limit,
            "not idle after {limit:?}: running/waiting/used = {busy}\n{m}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// A chat request for the mock with `extra` fields merged in.
pub fn chat_body(extra: Value) -> Value {
    let mut body = json!({
        "model": "mock",
        "messages": [{"role": "user", "content": "Say the alphabet."}],
    });
    body.as_object_mut()
        .unwrap()
        .extend(extra.as_object().unwrap().clone());
    body
}

/// An OpenAI error object's message, type and param.
pub fn error_of(v: &Value) -> (&str, &str, Value) {
    let e = &v["error"];
    (
        e["message"].as_str().expect("error.message"),
        e["type"].as_str().expect("error.type"),
        e["param"].clone(),
    )
}
