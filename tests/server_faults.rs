//! Fault isolation through real HTTP on loopback: a step that fails for one request (a NaN
//! logits row, or a structured-output matcher that fails) ends that request (with an error, or
//! with finish reason `abort` as the candle runner ends an ungrammatical sequence) while the
//! others finish untouched and every block comes back; a panic in the engine thread turns /health to 503 and makes `serve`
//! return an error (the process exits non-zero).

mod common;

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use common::*;
use flare::engine::{EngineCore, EngineHandle};
use flare::request::SamplingParams;
use flare::runner::{MockRunner, ModelRunner, ModelRunnerOutput, SchedulerOutput};
use flare::scheduler::{config::SchedulerConfig, Scheduler};
use flare::server::AppState;
use serde_json::{json, Value};

/// The alphabet mock, with faults keyed by a byte in the prompt: after `#` the fifth sampled
/// row of that sequence is "NaN" (reported as failed, as the candle runner does); after `~` its
/// grammar matcher fails at the third sample (reported as the candle runner's
/// `end_ungrammatical` does: EOS sampled, the sequence finished as `Abort`); `!` panics the
/// engine thread.
struct FaultyRunner {
    inner: MockRunner,
    poisoned: HashSet<u64>,
    ungrammatical: HashSet<u64>,
    samples: HashMap<u64, usize>,
    panics: HashSet<u64>,
}

impl ModelRunner for FaultyRunner {
    fn add_sequence(&mut self, id: u64, p: &SamplingParams, prompt: &[u32]) {
        if prompt.contains(&byte_id(b'#')) {
            self.poisoned.insert(id);
        }
        if prompt.contains(&byte_id(b'~')) {
            self.ungrammatical.insert(id);
        }
        if prompt.contains(&byte_id(b'!')) {
            self.panics.insert(id);
        }
        self.inner.add_sequence(id, p, prompt);
    }

    fn remove_sequence(&mut self, id: u64) {
        self.samples.remove(&id);
        self.inner.remove_sequence(id);
    }

    fn execute(
        &mut self,
        out: &SchedulerOutput,
        _: &dyn flare::runner::SeqTokens,
    ) -> anyhow::Result<ModelRunnerOutput> {
        if let Some(s) = out.seqs.iter().find(|s| self.panics.contains(&s.id)) {
            panic!("injected engine fault for seq {}", s.id);
        }
        std::thread::sleep(Duration::from_millis(2));
        let mut result = self.inner.execute(out)?;
        let (poisoned, samples) = (&self.poisoned, &mut self.samples);
        let mut failed = Vec::new();
        result.sampled.retain(|(id, _)| {
            let n = samples.entry(*id).or_default();
            *n += 1;
            let fail = poisoned.contains(id) && *n == 5;
            if fail {
                failed.push((
                    *id,
                    "the model produced a non-finite logit (NaN)".to_string(),
                ));
            }
            !fail
        });
        result.failed = failed;
        for (id, tokens) in &mut result.sampled {
            if self.ungrammatical.contains(id) && samples[id] == 3 {
                *tokens = vec![EOS];
                result
                    .grammar_finished
                    .push((*id, flare::request::FinishReason::Abort));
            }
        }
        Ok(result)
    }
}

async fn faulty_server() -> TestServer {
    let tok = std::sync::Arc::new(tokenizer());
    let engine_tok = tok.clone();
    let (num_blocks, max_model_len) = (512, 256);
    let engine = EngineHandle::spawn(move || {
        let cfg = SchedulerConfig {
            block_size: BLOCK_SIZE,
            ..SchedulerConfig::default()
        };
        let scheduler = Scheduler::new(cfg, num_blocks, max_model_len, vec![EOS])?;
        let runner = FaultyRunner {
            inner: MockRunner::with_token_fn(
                num_blocks,
                BLOCK_SIZE,
                Box::new(|_, ctx| alphabet_token(ctx)),
            ),
            poisoned: HashSet::new(),
            ungrammatical: HashSet::new(),
            samples: HashMap::new(),
            panics: HashSet::new(),
        };
        let mut core = EngineCore::new(scheduler, runner, engine_tok);
        core.set_check_invariants(true);
        Ok(core)
    })
    .unwrap();
    let state = AppState::new(config());
    state.set_loaded(engine, tok, max_model_len, "mock".into());
    serve(state).await
}

fn say(text: &str, extra: Value) -> Value {
    let mut body = chat_body(extra);
    body["messages"] = json!([{"role": "user", "content": text}]);
    body
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_row_ends_only_its_request() {
    let server = faulty_server().await;
    let c = client();
    let url = server.url("/v1/chat/completions");
    let mut tasks = Vec::new();
    for i in 0..6 {
        let (c, url) = (c.clone(), url.clone());
        let poisoned = i % 3 == 0;
        let stream = i % 2 == 0;
        let text = if poisoned { "poison # here" } else { "fine" };
        let body = say(text, json!({"stream": stream}));
        tasks.push(tokio::spawn(async move {
            let r = c.post(&url).json(&body).send().await.unwrap();
            let status = r.status().as_u16();
            let text = r.text().await.unwrap();
            (poisoned, stream, status, text)
        }));
    }
    let mut failed = 0;
    for t in tasks {
        let (poisoned, stream, status, text) = t.await.unwrap();
        match (poisoned, stream) {
            (false, false) => {
                assert_eq!(status, 200, "{text}");
                let v: Value = serde_json::from_str(&text).unwrap();
                assert_eq!(v["choices"][0]["message"]["content"], ALPHABET);
            }
            (false, true) => {
                assert_eq!(status, 200);
                let events = sse_data(&text);
                let content: String = events
                    .iter()
                    .filter_map(|e| e["choices"][0]["delta"]["content"].as_str())
                    .collect();
                assert_eq!(content, ALPHABET);
            }
            (true, false) => {
                assert_eq!(status, 500, "{text}");
                let v: Value = serde_json::from_str(&text).unwrap();
                assert_eq!(v["error"]["code"], "engine_error");
                assert!(
                    v["error"]["message"].as_str().unwrap().contains("NaN"),
                    "{v}"
                );
                failed += 1;
            }
            (true, true) => {
                assert_eq!(status, 200);
                let events = sse_data(&text);
                let err = events
                    .iter()
                    .find(|e| e.get("error").is_some())
                    .unwrap_or_else(|| panic!("no error event: {text}"));
                assert_eq!(err["error"]["code"], "engine_error");
                // It had streamed its first tokens before the fault.
                let content: String = events
                    .iter()
                    .filter_map(|e| e["choices"][0]["delta"]["content"].as_str())
                    .collect();
                assert_eq!(content, "abcd");
                failed += 1;
            }
        }
    }
    assert_eq!(failed, 2);
    wait_idle(&c, &server, Duration::from_secs(10)).await;
    // The engine went on: it still serves, and it is healthy.
    let (s, v) = post(&c, &url, say("again", json!({}))).await;
    assert_eq!(
        (s, v["choices"][0]["message"]["content"].clone()),
        (200, json!(ALPHABET))
    );
    assert_eq!(get(&c, &server.url("/health")).await.0, 200);
    assert!(server.stop().await);
}

/// A structured-output matcher that fails ends its request with finish reason `abort` after
/// the tokens it had (stream and not), while the others finish untouched.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_grammar_ends_only_its_request() {
    let server = faulty_server().await;
    let c = client();
    let url = server.url("/v1/chat/completions");
    let mut tasks = Vec::new();
    for i in 0..6 {
        let (c, url) = (c.clone(), url.clone());
        let broken = i % 3 == 0;
        let stream = i % 2 == 0;
        let text = if broken { "grammar ~ here" } else { "fine" };
        let body = say(text, json!({"stream": stream}));
        tasks.push(tokio::spawn(async move {
            let r = c.post(&url).json(&body).send().await.unwrap();
            let status = r.status().as_u16();
            (broken, stream, status, r.text().await.unwrap())
        }));
    }
    for t in tasks {
        let (broken, stream, status, text) = t.await.unwrap();
        assert_eq!(status, 200, "{text}");
        let (content, finish) = if stream {
            let events = sse_data(&text);
            let content: String = events
                .iter()
                .filter_map(|e| e["choices"][0]["delta"]["content"].as_str())
                .collect();
            let finish = events
                .iter()
                .find_map(|e| e["choices"][0]["finish_reason"].as_str().map(String::from));
            assert_eq!(events.last(), Some(&json!("[DONE]")), "{text}");
            (content, finish)
        } else {
            let v: Value = serde_json::from_str(&text).unwrap();
            (
                v["choices"][0]["message"]["content"]
                    .as_str()
                    .unwrap()
                    .to_string(),
                v["choices"][0]["finish_reason"].as_str().map(String::from),
            )
        };
        if broken {
            assert_eq!((content.as_str(), finish.as_deref()), ("ab", Some("abort")));
        } else {
            assert_eq!(
                (content.as_str(), finish.as_deref()),
                (ALPHABET, Some("stop"))
            );
        }
    }
    wait_idle(&c, &server, Duration::from_secs(10)).await;
    assert_eq!(get(&c, &server.url("/health")).await.0, 200);
    assert!(server.stop().await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_engine_panic_turns_health_to_503_and_stops_the_server_with_an_error() {
    let server = faulty_server().await;
    let c = client();
    assert_eq!(get(&c, &server.url("/health")).await.0, 200);
    let (s, v) = post(
        &c,
        &server.url("/v1/chat/completions"),
        say("boom !", json!({})),
    )
    .await;
    assert!(s >= 500, "{s} {v}");
    assert!(v.get("error").is_some(), "an OpenAI error object: {v}");
    // Health is 503 from the moment the thread is gone (the server may already be closing).
    if let Ok(r) = c.get(server.url("/health")).send().await {
        assert_eq!(r.status().as_u16(), 503);
    }
    let err = server
        .join(Duration::from_secs(30))
        .await
        .expect_err("serve must fail when the engine dies");
    assert!(err.to_string().contains("engine thread died"), "{err}");
}
