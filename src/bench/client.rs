//! The `flare bench serve` client: streams completions from any OpenAI-compatible server and
//! times every chunk the way `vllm bench serve` does, at Poisson arrivals under a concurrency cap.

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use indicatif::ProgressBar;
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};
use tokio::sync::Semaphore;

use super::arrivals::arrival_offsets;
use super::dataset::{SampleRequest, TextTokenizer};
use super::error::{BenchError, Result};
use super::metrics::RequestRecord;

/// vLLM's client timeout: long generations under heavy load must not be cut off.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(6 * 60 * 60);

/// Which OpenAI API the requests go to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Endpoint {
    /// `POST /v1/completions` with the prompt as text (vLLM's `openai` backend).
    Completions,
    /// `POST /v1/chat/completions`, the prompt as one user message (`openai-chat`).
    ChatCompletions,
}

impl Endpoint {
    pub fn path(&self) -> &'static str {
        match self {
            Endpoint::Completions => "/v1/completions",
            Endpoint::ChatCompletions => "/v1/chat/completions",
        }
    }
}

#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// Scheme, host and port, e.g. `http://127.0.0.1:8000` (no `/v1`).
    pub base_url: String,
    pub endpoint: Endpoint,
    /// The `model` field of each request.
    pub model: String,
    pub ignore_eos: bool,
    /// Sent only when set, so the server's default sampling applies otherwise (as in vLLM).
    pub temperature: Option<f32>,
    pub api_key: Option<String>,
    /// Merged into every request body last (e.g. `{"top_k": 1}`).
    pub extra_body: Map<String, Value>,
}

/// Arrival process and concurrency of one run.
#[derive(Debug, Clone, PartialEq)]
pub struct LoadConfig {
    /// Requests per second; infinity sends all at once.
    pub request_rate: f64,
    /// Gamma shape of the gaps; 1 is Poisson.
    pub burstiness: f64,
    /// Most requests in flight; None: unlimited.
    pub max_concurrency: Option<usize>,
    pub seed: u64,
}

/// Records in request order and the wall time from the first send to the last response.
#[derive(Debug, Clone)]
pub struct RunOutcome {
    pub records: Vec<RequestRecord>,
    pub duration_s: f64,
}

pub struct Client {
    http: reqwest::Client,
    cfg: ClientConfig,
    url: String,
    tokenizer: Option<Arc<dyn TextTokenizer>>,
}

fn trim_base(url: &str) -> &str {
    url.trim_end_matches('/').trim_end_matches("/v1")
}

fn http_client() -> Result<reqwest::Client> {
    // no_proxy: a benchmark measures the server, and loopback traffic must not leave the host.
    Ok(reqwest::Client::builder()
        .no_proxy()
        .timeout(REQUEST_TIMEOUT)
        .build()?)
}

/// The first model a server lists at `/v1/models` (vLLM's default for `--model`).
pub async fn first_model(base_url: &str, api_key: Option<&str>) -> Result<String> {
    let url = format!("{}/v1/models", trim_base(base_url));
    let mut req = http_client()?.get(&url);
    if let Some(key) = api_key {
        req = req.bearer_auth(key);
    }
    let resp = req.send().await?;
    let status = resp.status();
    let body: Value = resp.json().await?;
    if !status.is_success() {
        return Err(BenchError::Status {
            status: status.as_u16(),
            body: body.to_string(),
        });
    }
    body.pointer("/data/0/id")
        .and_then(Value::as_str)
        .map(str::to_string)
        .ok_or_else(|| BenchError::Config(format!("{url} lists no model: {body}")))
}

/// Per-request state while its stream is read.
struct StreamState {
    t_send: Instant,
    last_chunk: Instant,
    first_chunk_seen: bool,
    num_chunks: usize,
}

impl Client {
    /// `tokenizer` counts output tokens when a server sends no usage chunk.
    pub fn new(cfg: ClientConfig, tokenizer: Option<Arc<dyn TextTokenizer>>) -> Result<Self> {
        let url = format!("{}{}", trim_base(&cfg.base_url), cfg.endpoint.path());
        Ok(Self {
            http: http_client()?,
            cfg,
            url,
            tokenizer,
        })
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    /// The JSON body for `req`: streaming, with usage in the last chunk.
    pub fn payload(&self, req: &SampleRequest) -> Value {
        let mut body = json!({
            "model": self.cfg.model,
            "stream": true,
            "stream_options": { "include_usage": true },
        });
        let obj = body.as_object_mut().expect("object literal");
        match self.cfg.endpoint {
            Endpoint::Completions => {
                obj.insert("prompt".into(), json!(req.prompt));
                obj.insert("max_tokens".into(), json!(req.expected_output_len));
            }
            Endpoint::ChatCompletions => {
                obj.insert(
                    "messages".into(),
                    json!([{ "role": "user", "content": req.prompt }]),
                );
                obj.insert(
                    "max_completion_tokens".into(),
                    json!(req.expected_output_len),
                );
            }
        }
        if self.cfg.ignore_eos {
            obj.insert("ignore_eos".into(), json!(true));
        }
        if let Some(t) = self.cfg.temperature {
            obj.insert("temperature".into(), json!(t));
        }
        for (k, v) in &self.cfg.extra_body {
            obj.insert(k.clone(), v.clone());
        }
        body
    }

    /// Sends `req` and times its stream; failures are recorded, not returned.
    pub async fn send(&self, req: &SampleRequest, run_start: Instant) -> RequestRecord {
        let t_send = Instant::now();
        let mut rec = RequestRecord {
            prompt_len: req.prompt_len(),
            expected_output_len: req.expected_output_len,
            start_s: (t_send - run_start).as_secs_f64(),
            ..RequestRecord::default()
        };
        if let Err(e) = self.stream_into(req, t_send, &mut rec).await {
            rec.success = false;
            rec.error = Some(e.to_string());
        }
        rec
    }

    async fn stream_into(
        &self,
        req: &SampleRequest,
        t_send: Instant,
        rec: &mut RequestRecord,
    ) -> Result<()> {
        let mut http = self.http.post(&self.url).json(&self.payload(req));
        if let Some(key) = &self.cfg.api_key {
            http = http.bearer_auth(key);
        }
        let resp = http.send().await?;
        let status = resp.status();
        if !status.is_success() {
            let body = resp.text().await.unwrap_or_default();
            return Err(BenchError::Status {
                status: status.as_u16(),
                body,
            });
        }
        let mut st = StreamState {
            t_send,
            last_chunk: t_send,
            first_chunk_seen: false,
            num_chunks: 0,
        };
        let mut decoder = super::sse::SseDecoder::new();
        let mut bytes = resp.bytes_stream();
        while let Some(chunk) = bytes.next().await {
            let chunk = chunk?;
            // One timestamp per network read: events that arrive together are one arrival.
            let now = Instant::now();
            for data in decoder.push(&chunk) {
                self.on_event(&data, now, &mut st, rec)?;
            }
        }
        if let Some(data) = decoder.finish() {
            self.on_event(&data, Instant::now(), &mut st, rec)?;
        }
        if !st.first_chunk_seen {
            return Err(BenchError::Stream(
                "ended without a chunk carrying a choice".into(),
            ));
        }
        rec.latency_s = (st.last_chunk - st.t_send).as_secs_f64();
        if !rec.output_tokens_from_usage {
            rec.output_tokens = match &self.tokenizer {
                Some(tok) => tok.encode(&rec.generated_text)?.len(),
                None => st.num_chunks,
            };
        }
        rec.success = true;
        Ok(())
    }

    fn on_event(
        &self,
        data: &str,
        now: Instant,
        st: &mut StreamState,
        rec: &mut RequestRecord,
    ) -> Result<()> {
        if data.trim() == "[DONE]" {
            return Ok(());
        }
        let v: Value = serde_json::from_str(data)?;
        if let Some(err) = v.get("error") {
            return Err(BenchError::Stream(format!("server error: {err}")));
        }
        if let Some(choice) = v
            .get("choices")
            .and_then(Value::as_array)
            .and_then(|c| c.first())
        {
            // As in vLLM, every chunk with a choice is a token arrival, even with empty text.
            if st.first_chunk_seen {
                rec.itl_s.push((now - st.last_chunk).as_secs_f64());
            } else {
                st.first_chunk_seen = true;
                rec.ttft_s = (now - st.t_send).as_secs_f64();
            }
            st.last_chunk = now;
            st.num_chunks += 1;
            let text = match self.cfg.endpoint {
                Endpoint::Completions => choice.get("text"),
                Endpoint::ChatCompletions => choice.pointer("/delta/content"),
            };
            if let Some(t) = text.and_then(Value::as_str) {
                rec.generated_text.push_str(t);
            }
        }
        if let Some(usage) = v.get("usage").filter(|u| !u.is_null()) {
            if let Some(n) = usage.get("completion_tokens").and_then(Value::as_u64) {
                rec.output_tokens = n as usize;
                rec.output_tokens_from_usage = true;
            }
            if let Some(n) = usage.get("prompt_tokens").and_then(Value::as_u64) {
                rec.prompt_len = n as usize;
            }
        }
        Ok(())
    }

    /// Sends one request and fails unless it streams back: catches a wrong URL, model name or
    /// API before a whole run is spent on errors.
    pub async fn check(&self, req: &SampleRequest) -> Result<()> {
        let rec = self.send(req, Instant::now()).await;
        match rec.error {
            None => Ok(()),
            Some(e) => Err(BenchError::Config(format!(
                "test request to {} failed: {e}",
                self.url
            ))),
        }
    }

    /// Sends every request at its arrival offset, at most `max_concurrency` at once.
    pub async fn run(
        self: &Arc<Self>,
        requests: &[SampleRequest],
        load: &LoadConfig,
        progress: &ProgressBar,
    ) -> Result<RunOutcome> {
        if load.max_concurrency == Some(0) {
            return Err(BenchError::Config(
                "max concurrency must be at least 1".into(),
            ));
        }
        let offsets = arrival_offsets(
            requests.len(),
            load.request_rate,
            load.burstiness,
            load.seed,
        )?;
        let slots = load.max_concurrency.map(|n| Arc::new(Semaphore::new(n)));
        let start = Instant::now();
        let mut tasks = Vec::with_capacity(requests.len());
        for (req, offset) in requests.iter().zip(offsets) {
            tokio::time::sleep_until((start + Duration::from_secs_f64(offset)).into()).await;
            let arrival_s = start.elapsed().as_secs_f64();
            let (client, req, slots, progress) =
                (self.clone(), req.clone(), slots.clone(), progress.clone());
            tasks.push(tokio::spawn(async move {
                let _slot = match &slots {
                    Some(s) => Some(s.clone().acquire_owned().await.expect("never closed")),
                    None => None,
                };
                let mut rec = client.send(&req, start).await;
                rec.queue_s = (rec.start_s - arrival_s).max(0.0);
                progress.inc(1);
                rec
            }));
        }
        let mut records = Vec::with_capacity(tasks.len());
        for t in tasks {
            records.push(
                t.await
                    .map_err(|e| BenchError::Config(format!("request task: {e}")))?,
            );
        }
        Ok(RunOutcome {
            records,
            duration_s: start.elapsed().as_secs_f64(),
        })
    }
}
